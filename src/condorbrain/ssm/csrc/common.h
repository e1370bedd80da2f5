// Shared by the compiled CPU ops.
#pragma once

#include <cmath>
#include <cstring>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
// Flush-to-zero / denormals-are-zero for the calling thread while in scope, restored after. A decaying state can
// otherwise wander into subnormal floats (below 1.2e-38), where x86 arithmetic runs up to 100x slower; flushing them
// to zero changes results by less than 1e-38 absolute. torch's own kernels are unaffected (the mode is restored).
struct FtzGuard {
  unsigned int saved;
  FtzGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FtzGuard() { _mm_setcsr(saved); }
};
#else
struct FtzGuard {};
#endif

// exp for float32 that GCC inlines and vectorises (Cephes expf: range reduction by ln 2 and a degree-6 polynomial;
// relative error about 2 ulp; arguments clamped to [-87, 88], so exp of a very negative argument is 1.6e-38, not 0
// -- flushed to zero by FtzGuard as soon as it multiplies anything below 1). About 1.3x faster than a libmvec call
// in the scan's inner loop. float64 keeps std::exp (libmvec), which the 1e-10 float64 tests rely on.
static inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const unsigned int bits = static_cast<unsigned int>(static_cast<int>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
static inline double fast_exp(double x) { return std::exp(x); }

// Call FN<T, n> with a compile-time state size for the common sizes (straight-line, fully vectorised inner loops;
// about 1.25x faster at N = 16), FN<T, 0> (runtime size) otherwise.
#define CB_DISPATCH_N(N, FN, T, ...)          \
  switch (N) {                                \
    case 8: FN<T, 8>(__VA_ARGS__); break;     \
    case 16: FN<T, 16>(__VA_ARGS__); break;   \
    case 32: FN<T, 32>(__VA_ARGS__); break;   \
    case 64: FN<T, 64>(__VA_ARGS__); break;   \
    case 128: FN<T, 128>(__VA_ARGS__); break; \
    default: FN<T, 0>(__VA_ARGS__);           \
  }
