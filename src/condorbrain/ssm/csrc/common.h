// Shared by the compiled CPU ops.
#pragma once

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
