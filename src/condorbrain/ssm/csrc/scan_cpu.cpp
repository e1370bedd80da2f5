// Compiled CPU selective scan: forward and backward, float32 and float64.
//
// Why hand-written: a pure-PyTorch scan must materialise (batch, dim, L, N) tensors for every elementwise step, so
// on a CPU it is bound by memory traffic (tens of MB per layer per pass). Here each (batch, channel) row keeps its
// N-vector state in registers / L1 and streams over time once; the loop over N is vectorised (an inline float32
// exp, compile-time N for common sizes). No existing package ships a CPU selective scan with a backward pass.
//
// The recurrence, per row r = (b, d) and state index n:
//     h_t[n] = exp(delta_t * A[n]) * h_{t-1}[n] + delta_t * u_t * B_t[n]
//     y_t    = sum_n C_t[n] * h_t[n]
// D, z, delta_bias and softplus are applied by the caller in PyTorch (elementwise, autograd handles them).
//
// Memory: the forward pass stores only the state entering each chunk of `chunk` steps (batch, dim, nchunks, N);
// the backward pass recomputes the states of one chunk at a time into a thread-local buffer, then runs the
// adjoint recurrence backwards:
//     lam_t  = C_t g_t + exp(delta_{t+1} A) lam_{t+1}          (lam_t = dLoss/dh_t)
//     dB_t  += lam_t delta_t u_t,  du_t = delta_t <lam_t, B_t>, dC_t += g_t h_t,
//     ddelta_t = <lam_t, A * exp(delta_t A) * h_{t-1} + u_t B_t>,  dA += lam_t delta_t exp(delta_t A) h_{t-1}
//
// Layout of B and C: element (b, d, t, n) lives at  b*sb + (d / dpg)*sg + t*st + n  (n contiguous), which covers
// time-invariant (dim, N), shared (batch, L, N) and grouped (batch, G, L, N) inputs without copies.
//
// Threads: rows are split into contiguous blocks over an OpenMP team. dA, dB and dC receive contributions from
// many rows, so each thread accumulates into its own slice of a (nthreads, ...) buffer that the caller sums.

#include <omp.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

struct Layout {
  int64_t sb, sg, st, dpg;
  inline int64_t row_offset(int64_t b, int64_t d) const { return b * sb + (d / dpg) * sg; }
};

template <typename T, int64_t NC>
void scan_fwd(int64_t batch, int64_t dim, int64_t L, int64_t N_rt, const T* __restrict u, const T* __restrict delta,
              const T* __restrict A, const T* __restrict B, Layout lb, const T* __restrict C,
              Layout lc, const T* __restrict h0, T* __restrict y, T* __restrict h_last, T* __restrict ckpt,
              int64_t chunk, int nthreads) {
  const int64_t N = NC > 0 ? NC : N_rt;  // compile-time N for the common sizes (see CB_DISPATCH_N)
  const int64_t rows = batch * dim;
  const int64_t nchunks = (L + chunk - 1) / chunk;
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / dim, d = r % dim;
      const T* ur = u + r * L;
      const T* dr = delta + r * L;
      const T* Ar = A + d * N;
      const T* Br = B + lb.row_offset(b, d);
      const T* Cr = C + lc.row_offset(b, d);
      T* yr = y + r * L;
      T* ck = ckpt + r * nchunks * N;
      std::vector<T> hbuf(N);
      T* __restrict h = hbuf.data();
      for (int64_t n = 0; n < N; ++n) h[n] = h0 ? h0[r * N + n] : T(0);
      for (int64_t t = 0; t < L; ++t) {
        if (t % chunk == 0) std::memcpy(ck + (t / chunk) * N, h, sizeof(T) * N);
        const T dt = dr[t];
        const T dtu = dt * ur[t];
        const T* __restrict Bt = Br + t * lb.st;
        const T* __restrict Ct = Cr + t * lc.st;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = fast_exp(dt * Ar[n]) * h[n] + dtu * Bt[n];
          acc += h[n] * Ct[n];
        }
        yr[t] = acc;
      }
      std::memcpy(h_last + r * N, h, sizeof(T) * N);
    }
  }
}

template <typename T, int64_t NC>
void scan_bwd(int64_t batch, int64_t dim, int64_t L, int64_t N_rt, const T* __restrict u, const T* __restrict delta,
              const T* __restrict A, const T* __restrict B, Layout lb, const T* __restrict C,
              Layout lc, const T* __restrict ckpt, const T* __restrict dy, const T* __restrict dh_last,
              T* __restrict du, T* __restrict ddelta, T* __restrict dA_priv, int64_t dA_numel,
              T* __restrict dB_priv, int64_t dB_numel, T* __restrict dC_priv, int64_t dC_numel, T* __restrict dh0,
              int64_t chunk, int nthreads) {
  const int64_t N = NC > 0 ? NC : N_rt;  // compile-time N for the common sizes (see CB_DISPATCH_N)
  const int64_t rows = batch * dim;
  const int64_t nchunks = (L + chunk - 1) / chunk;
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
    const int tid = omp_get_thread_num();
    T* dA_t = dA_priv + tid * dA_numel;
    T* dB_t = dB_priv + tid * dB_numel;
    T* dC_t = dC_priv + tid * dC_numel;
    std::vector<T> hs_buf(chunk * N), as_buf(chunk * N), lam_buf(N), dA_buf(N);
    T* __restrict hs = hs_buf.data();
    T* __restrict as = as_buf.data();
    T* __restrict lam = lam_buf.data();
    T* __restrict dAr = dA_buf.data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / dim, d = r % dim;
      const T* ur = u + r * L;
      const T* dr = delta + r * L;
      const T* Ar = A + d * N;
      const int64_t off_b = lb.row_offset(b, d), off_c = lc.row_offset(b, d);
      const T* Br = B + off_b;
      const T* Cr = C + off_c;
      T* dBr = dB_t + off_b;
      T* dCr = dC_t + off_c;
      const T* ck = ckpt + r * nchunks * N;
      for (int64_t n = 0; n < N; ++n) {
        lam[n] = dh_last ? dh_last[r * N + n] : T(0);
        dAr[n] = 0;
      }
      for (int64_t c = nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk, t1 = std::min(L, t0 + chunk);
        // Recompute this chunk's states h_t (and decays) from the checkpoint.
        const T* hp = ck + c * N;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t k = t - t0;
          const T dt = dr[t];
          const T dtu = dt * ur[t];
          const T* __restrict Bt = Br + t * lb.st;
          T* __restrict hk = hs + k * N;
          T* __restrict ak = as + k * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            ak[n] = fast_exp(dt * Ar[n]);
            hk[n] = ak[n] * hp[n] + dtu * Bt[n];
          }
          hp = hk;
        }
        // Adjoint recurrence backwards through the chunk.
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t k = t - t0;
          const T g = dy[r * L + t];
          const T dt = dr[t];
          const T ut = ur[t];
          const T dtu = dt * ut;
          const T* __restrict Bt = Br + t * lb.st;
          const T* __restrict Ct = Cr + t * lc.st;
          T* __restrict dBt = dBr + t * lb.st;
          T* __restrict dCt = dCr + t * lc.st;
          const T* __restrict hk = hs + k * N;
          const T* __restrict hprev = k > 0 ? hs + (k - 1) * N : ck + c * N;
          const T* __restrict ak = as + k * N;
          T du_acc = 0, ddt_acc = 0;
#pragma omp simd reduction(+ : du_acc, ddt_acc)
          for (int64_t n = 0; n < N; ++n) {
            const T l = lam[n] + g * Ct[n];
            dCt[n] += g * hk[n];
            dBt[n] += l * dtu;
            du_acc += l * Bt[n];
            const T s = l * ak[n] * hprev[n];
            ddt_acc += s * Ar[n] + l * Bt[n] * ut;
            dAr[n] += s * dt;
            lam[n] = ak[n] * l;
          }
          du[r * L + t] = du_acc * dt;
          ddelta[r * L + t] = ddt_acc;
        }
      }
      if (dh0)
        for (int64_t n = 0; n < N; ++n) dh0[r * N + n] = lam[n];
      for (int64_t n = 0; n < N; ++n) dA_t[d * N + n] += dAr[n];
    }
  }
}

}  // namespace

#define CB_EXPORT extern "C" __attribute__((visibility("default")))

#define CB_DEFINE(T, SUFFIX)                                                                                         \
  CB_EXPORT void cb_scan_fwd_##SUFFIX(int64_t batch, int64_t dim, int64_t L, int64_t N, const T* u, const T* delta, \
                                      const T* A, const T* B, int64_t b_sb, int64_t b_sg,              \
                                      int64_t b_st, int64_t b_dpg, const T* C, int64_t c_sb, int64_t c_sg,           \
                                      int64_t c_st, int64_t c_dpg, const T* h0, T* y, T* h_last, T* ckpt,            \
                                      int64_t chunk, int nthreads) {                                                 \
    CB_DISPATCH_N(N, scan_fwd, T, batch, dim, L, N, u, delta, A, B, Layout{b_sb, b_sg, b_st, b_dpg}, C,                     \
                Layout{c_sb, c_sg, c_st, c_dpg}, h0, y, h_last, ckpt, chunk, nthreads);                              \
  }                                                                                                                  \
  CB_EXPORT void cb_scan_bwd_##SUFFIX(                                                                               \
      int64_t batch, int64_t dim, int64_t L, int64_t N, const T* u, const T* delta, const T* A,       \
      const T* B, int64_t b_sb, int64_t b_sg, int64_t b_st, int64_t b_dpg, const T* C, int64_t c_sb, int64_t c_sg,   \
      int64_t c_st, int64_t c_dpg, const T* ckpt, const T* dy, const T* dh_last, T* du, T* ddelta, T* dA_priv,       \
      int64_t dA_numel, T* dB_priv, int64_t dB_numel, T* dC_priv, int64_t dC_numel, T* dh0, int64_t chunk,           \
      int nthreads) {                                                                                                \
    CB_DISPATCH_N(N, scan_bwd, T, batch, dim, L, N, u, delta, A, B, Layout{b_sb, b_sg, b_st, b_dpg}, C,                     \
                Layout{c_sb, c_sg, c_st, c_dpg}, ckpt, dy, dh_last, du, ddelta, dA_priv, dA_numel, dB_priv,          \
                dB_numel, dC_priv, dC_numel, dh0, chunk, nthreads);                                                  \
  }

CB_DEFINE(float, f32)
CB_DEFINE(double, f64)

CB_EXPORT int cb_abi_version() { return 1; }
