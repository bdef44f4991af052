/* Precision-generic CPU code. Every file in kernels/cpu/ is compiled twice: once as float32 (the
 * training build) and once with -DMG_FP64 as float64 (gradient checks, state-carrying exactness tests).
 * Write kernels with `real` and name every external function CPU_FN(name): it becomes
 * cpu_<name>_f32 or cpu_<name>_f64, so both precisions link into one binary side by side.
 * <tgmath.h> makes exp/sqrt/... pick the float or double version from the argument type. */
#ifndef MG_CPU_REAL_H
#define MG_CPU_REAL_H

#include <math.h>
#include <stdint.h>
#include <tgmath.h>

#include "../ops.h"
#include "cpu_ops.h"

#ifdef MG_FP64
typedef double real;
#define MG_REAL_DTYPE MG_F64
#define CPU_FN(name) cpu_##name##_f64
#define CPU_PREC "f64"
#else
typedef float real;
#define MG_REAL_DTYPE MG_F32
#define CPU_FN(name) cpu_##name##_f32
#define CPU_PREC "f32"
#endif

/* Accumulator type for reductions that must not lose precision in the float32 build. */
typedef double acc_t;

/* exp for hot elementwise loops (softmax, cross-entropy, SiLU). float64 build: libm's exp, exact to the
 * last bit as gradient checks need. float32 build: a branch-free version that GCC vectorises inside
 * `omp simd` loops (libm's expf is only vectorised under -ffast-math): exp(x) = 2^k exp(r) with
 * k = round(x / ln 2) (the 1.5*2^23 rounding trick), r = x - k ln 2 in two parts (Cody-Waite), and the
 * classic degree-7 minimax polynomial for exp(r) on |r| <= ln2/2 (as in Cephes' expf). Worst relative
 * error 8.4e-8 (1.4 ulp) over the normal range, exp(0) == 1 exactly; inputs are clamped to
 * [-87.34, 88.72]: below, the result is 0 (flushing what libm would return as a subnormal); above, the
 * largest value (3.4e38) stands in for +inf. */
#ifdef MG_FP64
static inline double mg_exp(double x) { return exp(x); }
#else
static inline float mg_exp(float x) {
    const float x0 = x;
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.72283f ? 88.72283f : x;
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
               1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union {
        int32_t i;
        float f;
    } u;
    u.i = ((int32_t)k + 127) << 23;
    return x0 < -87.33654f ? 0.0f : p * u.f;
}
#endif

/* Counter-based dropout masks, shared by dropout and attention's DropKey. Element `index` of a stream
 * draws u = (h >> 11) * 2^-53 from h = fmix64(fmix64(seed) + index * 0x9E3779B97F4A7C15) (fmix64 =
 * splitmix64's finaliser) and is kept iff u >= p, i.e. iff (h >> 11) >= ceil(p * 2^53) (an exact integer
 * compare). A pure function of (seed, index): backward regenerates the mask, another backend can
 * reproduce it. */
static inline uint64_t mg_fmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t mg_keep_threshold(double p) { return (uint64_t)ceil(p * 0x1.0p53); }
/* key = mg_fmix64(seed), computed once per stream. */
static inline int mg_mask_keep(uint64_t key, uint64_t index, uint64_t threshold) {
    return (mg_fmix64(key + index * 0x9E3779B97F4A7C15ull) >> 11) >= threshold;
}

#endif
