// Compiled CPU causal depthwise convolution with an optional fused SiLU: forward and backward, float32/float64.
//
// Why hand-written: torch's depthwise Conv1d on the CPU runs (B, C, L) with a slow backward (about as long as the
// whole selective scan at the benchmark config), and Mamba's layers feed it a transposed view of the in_proj
// output, which costs two more copies. Here the input is read where it lies, channel-last (B, L, C) with unit
// channel stride, and the K taps are vectorised over channels.
//
//   pre[b, t, c] = bias[c] + sum_{k<K} w[k, c] * xin[b, t - K + 1 + k, c]
//   y = silu(pre) (or pre),   xin[b, s] = x[b, s] for s >= 0, and state[b, K + s] for s < 0 (the carried past)
//
// Backward recomputes pre (K FMAs) instead of storing it. Each batch row is one work item; dw and dbias are
// accumulated per thread (a (nthreads, K, C) buffer the caller sums).

#include <omp.h>

#include "common.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// The input row feeding tap k of step t: x[b, s] for s = t - K + 1 + k >= 0, the carried state before that, or
// null (zeros) when there is no state.
template <typename T>
inline const T* tap_input(int64_t b, int64_t t, int64_t k, int64_t K, int64_t C, const T* x, int64_t x_sb,
                          int64_t x_st, const T* state) {
  const int64_t s = t - K + 1 + k;
  if (s >= 0) return x + b * x_sb + s * x_st;
  return state ? state + (b * K + K + s) * C : nullptr;
}

// pre[c] = bias[c] + sum_k w[k, c] * xin[b, t - K + 1 + k, c]: the pre-activation of step t (both passes use it).
template <typename T>
inline void pre_activation(int64_t b, int64_t t, int64_t C, int64_t K, const T* __restrict x, int64_t x_sb,
                           int64_t x_st, const T* __restrict w, const T* __restrict bias, const T* __restrict state,
                           T* __restrict pre) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) pre[c] = bias ? bias[c] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict xs = tap_input(b, t, k, K, C, x, x_sb, x_st, state);
    if (!xs) continue;
    const T* __restrict wk = w + k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) pre[c] += wk[c] * xs[c];
  }
}

template <typename T>
void conv_fwd(int64_t batch, int64_t L, int64_t C, int64_t K, const T* __restrict x, int64_t x_sb, int64_t x_st,
              const T* __restrict w /*(K, C)*/, const T* __restrict bias /*(C) or null*/,
              const T* __restrict state /*(B, K, C) or null*/, int silu, T* __restrict y /*(B, L, C)*/,
              int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < L; ++t) {
        T* __restrict yt = y + (b * L + t) * C;
        pre_activation(b, t, C, K, x, x_sb, x_st, w, bias, state, yt);
        if (silu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yt[c] = yt[c] * sigmoid(yt[c]);
        }
      }
    }
  }
}

template <typename T>
void conv_bwd(int64_t batch, int64_t L, int64_t C, int64_t K, const T* __restrict x, int64_t x_sb, int64_t x_st,
              const T* __restrict w, const T* __restrict bias, const T* __restrict state, int silu,
              const T* __restrict dy /*(B, L, C)*/, T* __restrict dx /*(B, L, C), zeroed*/,
              T* __restrict dstate /*(B, K, C), zeroed, or null*/, T* __restrict dw_priv /*(nthreads, K, C)*/,
              T* __restrict dbias_priv /*(nthreads, C)*/, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
    const int tid = omp_get_thread_num();
    T* __restrict dw = dw_priv + tid * K * C;
    T* __restrict db = dbias_priv + tid * C;
    std::vector<T> gbuf(C);
    T* __restrict g = gbuf.data();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < L; ++t) {
        const T* __restrict dyt = dy + (b * L + t) * C;
        if (silu) {  // recompute pre, then g = dy * silu'(pre)
          pre_activation(b, t, C, K, x, x_sb, x_st, w, bias, state, g);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T sg = sigmoid(g[c]);
            g[c] = dyt[c] * sg * (T(1) + g[c] * (T(1) - sg));
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) g[c] = dyt[c];
        }
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) db[c] += g[c];
        for (int64_t k = 0; k < K; ++k) {
          const T* __restrict xs = tap_input(b, t, k, K, C, x, x_sb, x_st, state);
          if (!xs) continue;
          const int64_t s = t - K + 1 + k;  // where this tap's gradient goes: dx, the carried state's, or nowhere
          T* __restrict dxs = s >= 0 ? dx + (b * L + s) * C : (dstate ? dstate + (b * K + K + s) * C : nullptr);
          const T* __restrict wk = w + k * C;
          T* __restrict dwk = dw + k * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) dwk[c] += g[c] * xs[c];
          if (dxs) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) dxs[c] += wk[c] * g[c];
          }
        }
      }
    }
  }
}

}  // namespace

#define CB_EXPORT extern "C" __attribute__((visibility("default")))

#define CB_DEFINE_CONV(T, SUFFIX)                                                                                   \
  CB_EXPORT void cb_conv_fwd_##SUFFIX(int64_t batch, int64_t L, int64_t C, int64_t K, const T* x, int64_t x_sb,  \
                                      int64_t x_st, const T* w, const T* bias, const T* state, int silu, T* y,     \
                                      int nthreads) {                                                              \
    conv_fwd<T>(batch, L, C, K, x, x_sb, x_st, w, bias, state, silu, y, nthreads);                                \
  }                                                                                                                \
  CB_EXPORT void cb_conv_bwd_##SUFFIX(int64_t batch, int64_t L, int64_t C, int64_t K, const T* x, int64_t x_sb,  \
                                      int64_t x_st, const T* w, const T* bias, const T* state, int silu,           \
                                      const T* dy, T* dx, T* dstate, T* dw_priv, T* dbias_priv, int nthreads) {    \
    conv_bwd<T>(batch, L, C, K, x, x_sb, x_st, w, bias, state, silu, dy, dx, dstate, dw_priv, dbias_priv,         \
                nthreads);                                                                                         \
  }

CB_DEFINE_CONV(float, f32)
CB_DEFINE_CONV(double, f64)
