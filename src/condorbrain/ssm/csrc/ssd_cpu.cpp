// Compiled CPU SSD scan (Mamba-2: scalar decay per head): forward and backward, float32 and float64.
//
// Why hand-written: at CPU sizes the chunked matmul form of SSD spends its time in many small einsums and
// (b, h, c, T, T) temporaries. Here one work item is one (batch, head): its (P, N) state stays in L1/L2, one exp
// per step, and B_t, C_t are loaded once per step for all P channels of the head. Reads x, B, C where they lie
// (slices of the conv output) through strides.
//
// Per item (b, h), group g = h / (H / G), state S (P x N):
//   a_t = exp(dt_t A_h);  S_t = a_t S_{t-1} + dt_t x_t B_t^T;  y_t = S_t C_t
// Backward, with Lam_t = dLoss/dS_t = a_{t+1} Lam_{t+1} + dy_t C_t^T:
//   dx_t = dt_t Lam_t B_t;  dB_t += Lam_t^T (dt_t x_t);  dC_t += S_t^T dy_t;
//   ddt_t = <Lam_t B_t, x_t> + A a_t <Lam_t, S_{t-1}>;  dA_h += dt_t a_t <Lam_t, S_{t-1}>
// The forward keeps the state entering every K-th step; the backward recomputes K states at a time.
// dA, dB, dC are accumulated per thread (heads of a group share B and C) into buffers the caller sums.

#include <omp.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

struct SSDShape {
  int64_t batch, L, H, P, G, N, K;  // K: steps between stored states
  int64_t x_sb, x_st;               // x (b, t, h, p) at b*x_sb + t*x_st + h*P + p
  int64_t bc_sb, bc_st;             // B/C (b, t, g, n) at b*sb + t*st + g*N + n
  int64_t c_sb, c_st;
};

template <typename T, int64_t NC>
void ssd_fwd(const SSDShape& s, const T* __restrict x, const T* __restrict dt /*(b, L, H)*/,
             const T* __restrict A /*(H)*/, const T* __restrict B, const T* __restrict C,
             const T* __restrict h0 /*(b, H, P, N) or null*/, T* __restrict y /*(b, L, H, P)*/,
             T* __restrict h_last /*(b, H, P, N)*/, T* __restrict ckpt /*(b, H, nck, P, N) or null*/, int nthreads) {
  const int64_t N = NC > 0 ? NC : s.N;
  const int64_t PN = s.P * N, nck = (s.L + s.K - 1) / s.K, hpg = s.H / s.G;
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
    std::vector<T> buf(PN);
    T* __restrict S = buf.data();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < s.batch * s.H; ++item) {
      const int64_t b = item / s.H, h = item % s.H, g = h / hpg;
      if (h0)
        std::memcpy(S, h0 + item * PN, sizeof(T) * PN);
      else
        std::fill(S, S + PN, T(0));
      for (int64_t t = 0; t < s.L; ++t) {
        if (ckpt && t % s.K == 0) std::memcpy(ckpt + (item * nck + t / s.K) * PN, S, sizeof(T) * PN);
        const T dtv = dt[(b * s.L + t) * s.H + h];
        const T a = fast_exp(dtv * A[h]);
        const T* __restrict xr = x + b * s.x_sb + t * s.x_st + h * s.P;
        const T* __restrict Br = B + b * s.bc_sb + t * s.bc_st + g * N;
        const T* __restrict Cr = C + b * s.c_sb + t * s.c_st + g * N;
        T* __restrict yr = y + ((b * s.L + t) * s.H + h) * s.P;
        for (int64_t p = 0; p < s.P; ++p) {
          const T u = dtv * xr[p];
          T* __restrict Sp = S + p * N;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            Sp[n] = a * Sp[n] + u * Br[n];
            acc += Sp[n] * Cr[n];
          }
          yr[p] = acc;
        }
      }
      std::memcpy(h_last + item * PN, S, sizeof(T) * PN);
    }
  }
}

template <typename T, int64_t NC>
void ssd_bwd(const SSDShape& s, const T* __restrict x, const T* __restrict dt, const T* __restrict A,
             const T* __restrict B, const T* __restrict C, const T* __restrict ckpt, const T* __restrict dy,
             const T* __restrict dh_last, T* __restrict dx /*(b, L, H, P)*/, T* __restrict ddt /*(b, L, H)*/,
             T* __restrict dA_priv /*(nthreads, H)*/, T* __restrict dB_priv /*(nthreads, b, L, G, N)*/,
             T* __restrict dC_priv, T* __restrict dh0 /*(b, H, P, N) or null*/, int nthreads) {
  const int64_t N = NC > 0 ? NC : s.N;
  const int64_t PN = s.P * N, nck = (s.L + s.K - 1) / s.K, hpg = s.H / s.G;
  const int64_t bc_numel = s.batch * s.L * s.G * N;
#pragma omp parallel num_threads(nthreads)
  {
    FtzGuard ftz;
    const int tid = omp_get_thread_num();
    T* dA_t = dA_priv + tid * s.H;
    T* dB_t = dB_priv + tid * bc_numel;
    T* dC_t = dC_priv + tid * bc_numel;
    std::vector<T> hs_buf(s.K * PN), as_buf(s.K), lam_buf(PN), dBa(N), dCa(N);
    T* __restrict Hs = hs_buf.data();
    T* __restrict as = as_buf.data();
    T* __restrict lam = lam_buf.data();
    T* __restrict dBacc = dBa.data();
    T* __restrict dCacc = dCa.data();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < s.batch * s.H; ++item) {
      const int64_t b = item / s.H, h = item % s.H, g = h / hpg;
      const T Ah = A[h];
      if (dh_last)
        std::memcpy(lam, dh_last + item * PN, sizeof(T) * PN);
      else
        std::fill(lam, lam + PN, T(0));
      T dA_acc = 0;
      for (int64_t c = nck - 1; c >= 0; --c) {
        const int64_t t0 = c * s.K, t1 = std::min(s.L, t0 + s.K);
        const T* Sprev = ckpt + (item * nck + c) * PN;
        for (int64_t t = t0; t < t1; ++t) {  // recompute S_t for this block
          const int64_t k = t - t0;
          const T dtv = dt[(b * s.L + t) * s.H + h];
          const T a = fast_exp(dtv * Ah);
          as[k] = a;
          const T* __restrict xr = x + b * s.x_sb + t * s.x_st + h * s.P;
          const T* __restrict Br = B + b * s.bc_sb + t * s.bc_st + g * N;
          T* __restrict Sk = Hs + k * PN;
          for (int64_t p = 0; p < s.P; ++p) {
            const T u = dtv * xr[p];
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) Sk[p * N + n] = a * Sprev[p * N + n] + u * Br[n];
          }
          Sprev = Sk;
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t k = t - t0;
          const T dtv = dt[(b * s.L + t) * s.H + h];
          const T a = as[k];
          const T* __restrict xr = x + b * s.x_sb + t * s.x_st + h * s.P;
          const T* __restrict Br = B + b * s.bc_sb + t * s.bc_st + g * N;
          const T* __restrict Cr = C + b * s.c_sb + t * s.c_st + g * N;
          const T* __restrict g_t = dy + ((b * s.L + t) * s.H + h) * s.P;
          const T* __restrict Sk = Hs + k * PN;
          const T* __restrict Sp = k > 0 ? Hs + (k - 1) * PN : ckpt + (item * nck + c) * PN;
          T* __restrict dxr = dx + ((b * s.L + t) * s.H + h) * s.P;
          std::fill(dBacc, dBacc + N, T(0));
          std::fill(dCacc, dCacc + N, T(0));
          T ssum = 0, ddt_x = 0;
          for (int64_t p = 0; p < s.P; ++p) {
            const T gp = g_t[p];
            const T u = dtv * xr[p];
            T* __restrict lp = lam + p * N;
            const T* __restrict Skp = Sk + p * N;
            const T* __restrict Spp = Sp + p * N;
            T lb = 0, sp = 0;
#pragma omp simd reduction(+ : lb, sp)
            for (int64_t n = 0; n < N; ++n) {
              const T l = lp[n] + gp * Cr[n];
              dCacc[n] += gp * Skp[n];
              dBacc[n] += l * u;
              lb += l * Br[n];
              sp += l * Spp[n];
              lp[n] = a * l;
            }
            dxr[p] = dtv * lb;
            ddt_x += xr[p] * lb;
            ssum += sp;
          }
          ddt[(b * s.L + t) * s.H + h] = ddt_x + Ah * a * ssum;
          dA_acc += dtv * a * ssum;
          T* __restrict dBr = dB_t + ((b * s.L + t) * s.G + g) * N;
          T* __restrict dCr = dC_t + ((b * s.L + t) * s.G + g) * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            dBr[n] += dBacc[n];
            dCr[n] += dCacc[n];
          }
        }
      }
      if (dh0) std::memcpy(dh0 + item * PN, lam, sizeof(T) * PN);
      dA_t[h] += dA_acc;
    }
  }
}

}  // namespace

#define CB_EXPORT extern "C" __attribute__((visibility("default")))

#define CB_SSD_SHAPE                                                                                              \
  SSDShape s{batch, L, H, P, G, N, K, x_sb, x_st, b_sb, b_st, c_sb, c_st};

#define CB_DEFINE_SSD(T, SUFFIX)                                                                                  \
  CB_EXPORT void cb_ssd_fwd_##SUFFIX(int64_t batch, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N,       \
                                     int64_t K, const T* x, int64_t x_sb, int64_t x_st, const T* dt, const T* A, \
                                     const T* B, int64_t b_sb, int64_t b_st, const T* C, int64_t c_sb,           \
                                     int64_t c_st, const T* h0, T* y, T* h_last, T* ckpt, int nthreads) {        \
    CB_SSD_SHAPE                                                                                                  \
    CB_DISPATCH_N(N, ssd_fwd, T, s, x, dt, A, B, C, h0, y, h_last, ckpt, nthreads);                                                 \
  }                                                                                                               \
  CB_EXPORT void cb_ssd_bwd_##SUFFIX(int64_t batch, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N,       \
                                     int64_t K, const T* x, int64_t x_sb, int64_t x_st, const T* dt, const T* A, \
                                     const T* B, int64_t b_sb, int64_t b_st, const T* C, int64_t c_sb,           \
                                     int64_t c_st, const T* ckpt, const T* dy, const T* dh_last, T* dx, T* ddt,  \
                                     T* dA_priv, T* dB_priv, T* dC_priv, T* dh0, int nthreads) {                  \
    CB_SSD_SHAPE                                                                                                  \
    CB_DISPATCH_N(N, ssd_bwd, T, s, x, dt, A, B, C, ckpt, dy, dh_last, dx, ddt, dA_priv, dB_priv, dC_priv, dh0, nthreads);         \
  }

CB_DEFINE_SSD(float, f32)
CB_DEFINE_SSD(double, f64)
