/* Precision-generic CPU code. Every file in kernels/cpu/ is compiled twice: once as float32 (the
 * training build) and once with -DMG_FP64 as float64 (gradient checks, state-carrying exactness tests).
 * Write kernels with `real` and name every external function CPU_FN(name): it becomes
 * cpu_<name>_f32 or cpu_<name>_f64, so both precisions link into one binary side by side.
 * <tgmath.h> makes exp/sqrt/... pick the float or double version from the argument type. */
#ifndef MG_CPU_REAL_H
#define MG_CPU_REAL_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <tgmath.h>

#include "../../src/hash.h"
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
 * classic degree-7 minimax polynomial for exp(r) on |r| <= ln2/2 (as in Cephes' expf).
 *
 * Range and accuracy (tests/test_exp.c sweeps it against double exp):
 *   - x in [-87.33654, 88.72283] (the floats whose exp is a normal float32): finite, worst relative error
 *     8.4e-8 (1.4 ulp); exp(0) == 1 exactly; monotone at both ends.
 *   - x > 88.72283 (including +inf): FLT_MAX (3.4028235e38) stands in for +inf.
 *   - x < -87.33654 (including -inf): 0 (flushing what libm would return as a subnormal).
 *   - NaN: NaN.
 * k reaches 128 for x >= 127.5 ln 2 = 88.376, where the float exponent field of 2^k would be 255 (inf);
 * so 2^k is applied as two normal factors 2^k1 * 2^k2 (k1 = floor(k/2), k2 = k - k1, both in [-63, 64]):
 * each product is exact (a power of two times a normal float), so the only rounding is the polynomial's.
 * k's bits are taken from the low mantissa bits of the rounding sum t (t = 1.5*2^23 + k exactly), which
 * avoids a float-to-int conversion (undefined for NaN); the shifts run on unsigned integers. */
#ifdef MG_FP64
static inline double mg_exp(double x) { return exp(x); }
#else
#define MG_EXP_LO (-87.33654f) /* the smallest float with exp(x) >= FLT_MIN */
#define MG_EXP_HI 88.72283f    /* the largest float with exp(x) <= FLT_MAX */
static inline float mg_exp(float x) {
    const float x0 = x;
    x = x < MG_EXP_LO ? MG_EXP_LO : x;
    x = x > MG_EXP_HI ? MG_EXP_HI : x;
    const float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5*2^23 + k, k = round(x / ln 2) */
    const float k = t - 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
               1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union {
        uint32_t i;
        float f;
    } ut, u1, u2;
    ut.f = t;
    /* kb = k + 128 in [2, 256]: t's bit pattern is 0x4B400000 + k */
    const uint32_t kb = ut.i - (0x4B400000u - 128u);
    u1.i = ((kb >> 1) + 63u) << 23;        /* 2^k1, k1 = floor(k / 2): biased exponent k1 + 127 */
    u2.i = (kb - (kb >> 1) + 63u) << 23;   /* 2^k2, k2 = k - k1 */
    const float y = (p * u1.f) * u2.f;
    return x0 < MG_EXP_LO ? 0.0f : x0 > MG_EXP_HI ? FLT_MAX : y;
}
#endif

/* Counter-based dropout masks, shared by dropout and attention's DropKey. Element `index` of a stream
 * draws u = (h >> 11) * 2^-53 from h = fmix64(fmix64(seed) + index * 0x9E3779B97F4A7C15) (fmix64 =
 * splitmix64's finaliser, mg_fmix64 in src/hash.h) and is kept iff u >= p, i.e. iff
 * (h >> 11) >= ceil(p * 2^53) (an exact integer compare). A pure function of (seed, index): backward
 * regenerates the mask, another backend can reproduce it. */
static inline uint64_t mg_keep_threshold(double p) { return (uint64_t)ceil(p * 0x1.0p53); }
/* key = mg_fmix64(seed), computed once per stream. */
static inline int mg_mask_keep(uint64_t key, uint64_t index, uint64_t threshold) {
    return (mg_fmix64(key + index * MG_SPLITMIX64_GAMMA) >> 11) >= threshold;
}

#endif
