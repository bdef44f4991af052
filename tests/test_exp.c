/* mg_exp, the float32 vectorisable exp of kernels/cpu/cpu_real.h (softmax, cross-entropy, SiLU), against
 * double-precision exp: the documented accuracy (relative error <= 8.4e-8, 1.4 ulp) over its whole
 * range [-87.33654, 88.72283], every float of the two ends swept exhaustively (88.0..88.72283, where
 * 2^k needs k = 128, and -87.33654..-80), finite and monotone results there, exp(0) == 1, and the
 * documented behaviour outside: FLT_MAX above, 0 below, NaN in -> NaN out. The values go through an
 * `omp simd` loop, as in the kernels, so the vectorised code is what is tested. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_real.h" /* float32 configuration: MG_FP64 is not defined for test programs */
#include "test_util.h"

#ifdef MG_FP64
#error "test_exp tests the float32 mg_exp"
#endif

#define REL_TOL 8.4e-8 /* documented in cpu_real.h */
#define ULP_TOL 1.4

static float f_of_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* y[i] = mg_exp(x[i]) in a vectorisable loop (like the kernels' loops). */
static void __attribute__((noinline)) exp_simd(const float *x, float *y, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] = mg_exp(x[i]);
}

typedef struct {
    long n, nonfinite, subnormal, nonmonotone;
    double worst_rel, worst_ulp;
    float worst_x, bad_x;
    float prev_y;
    int have_prev;
} Sweep;

static void sweep_add(Sweep *s, const float *x, const float *y, int n, int check_monotone) {
    for (int i = 0; i < n; i++) {
        const double ref = exp((double)x[i]);
        if (!isfinite(y[i])) {
            if (!s->nonfinite++) s->bad_x = x[i];
            continue;
        }
        if (y[i] < FLT_MIN) s->subnormal++;
        const double rel = fabs((double)y[i] - ref) / ref;
        int e;
        frexp(ref, &e); /* ref in [2^(e-1), 2^e): a float ulp there is 2^(e-24) */
        const double ulp = fabs((double)y[i] - ref) / ldexp(1.0, e - 24);
        if (rel > s->worst_rel) s->worst_rel = rel, s->worst_x = x[i];
        if (ulp > s->worst_ulp) s->worst_ulp = ulp;
        if (check_monotone && s->have_prev && y[i] < s->prev_y) s->nonmonotone++;
        s->prev_y = y[i];
        s->have_prev = 1;
        s->n++;
    }
}

/* Every float from lo up to hi (inclusive), in increasing order. */
static Sweep sweep_all(float lo, float hi) {
    enum { BATCH = 4096 };
    static float x[BATCH], y[BATCH];
    Sweep s = {0};
    float v = lo;
    int done = 0;
    while (!done) {
        int n = 0;
        while (n < BATCH && !done) {
            x[n++] = v;
            if (v >= hi) done = 1;
            v = nextafterf(v, INFINITY);
        }
        exp_simd(x, y, n);
        sweep_add(&s, x, y, n, 1);
    }
    return s;
}

static void report(const char *what, const Sweep *s, int want_monotone) {
    char name[160];
    snprintf(name, sizeof name, "mg_exp_%s_finite_and_normal", what);
    char first[64] = "";
    if (s->nonfinite) snprintf(first, sizeof first, " (the first at x=%.9g)", s->bad_x);
    tu_check(s->nonfinite == 0 && s->subnormal == 0 && s->n > 0, name, "%ld finite values, %ld non-finite%s, %ld below FLT_MIN",
             s->n, s->nonfinite, first, s->subnormal);
    snprintf(name, sizeof name, "mg_exp_%s_relative_error", what);
    tu_check(s->worst_rel <= REL_TOL, name, "worst %.3e at x=%.9g (%.2f ulp), tolerance %.1e / %.1f ulp", s->worst_rel,
             s->worst_x, s->worst_ulp, REL_TOL, ULP_TOL);
    snprintf(name, sizeof name, "mg_exp_%s_ulp_error", what);
    tu_check(s->worst_ulp <= ULP_TOL, name, "worst %.3f ulp, tolerance %.1f", s->worst_ulp, ULP_TOL);
    if (want_monotone) {
        snprintf(name, sizeof name, "mg_exp_%s_monotone", what);
        tu_check(s->nonmonotone == 0, name, "%ld decreases between consecutive floats", s->nonmonotone);
    }
}

int main(void) {
    tu_init("test_exp");
    const float lo = MG_EXP_LO, hi = MG_EXP_HI;

    /* The documented range is exactly the floats whose exp is a normal float32. */
    tu_check(exp((double)hi) <= FLT_MAX && exp((double)nextafterf(hi, INFINITY)) > FLT_MAX &&
                 exp((double)lo) >= FLT_MIN && exp((double)nextafterf(lo, -INFINITY)) < FLT_MIN,
             "mg_exp_range_is_the_normal_range", "[%.9g, %.9g]", lo, hi);

    /* Exhaustive at both ends. */
    Sweep top = sweep_all(88.0f, hi);
    report("top_88.0_to_88.72283", &top, 1);
    Sweep bottom = sweep_all(lo, -80.0f);
    report("bottom_-87.33654_to_-80", &bottom, 1);

    /* The whole range, every 61st float bit pattern (about 3.7e7 values, both signs, down to 1e-45). */
    {
        enum { BATCH = 4096 };
        static float x[BATCH], y[BATCH];
        Sweep s = {0};
        const uint32_t stride = 61;
        for (int neg = 0; neg < 2; neg++) {
            const uint32_t last = neg ? bits_of(lo) & 0x7FFFFFFFu : bits_of(hi);
            int n = 0;
            for (uint32_t b = 0; b <= last; b += stride) {
                x[n++] = f_of_bits(neg ? b | 0x80000000u : b);
                if (n == BATCH || b + stride > last) {
                    exp_simd(x, y, n);
                    sweep_add(&s, x, y, n, 0);
                    n = 0;
                }
            }
        }
        report("whole_range_strided", &s, 0);
    }

    /* Special values, through the same vector loop. */
    {
        const float above[] = {nextafterf(hi, INFINITY), 88.8f, 89.0f, 100.0f, 1e30f, FLT_MAX, INFINITY};
        const float below[] = {nextafterf(lo, -INFINITY), -88.0f, -100.0f, -1e30f, -FLT_MAX, -INFINITY};
        const int na = (int)(sizeof above / sizeof above[0]), nb = (int)(sizeof below / sizeof below[0]);
        float x[32], y[32];
        int n = 0;
        x[n++] = 0.0f;
        x[n++] = -0.0f;
        x[n++] = hi;
        x[n++] = lo;
        for (int i = 0; i < na; i++) x[n++] = above[i];
        for (int i = 0; i < nb; i++) x[n++] = below[i];
        const int nan0 = n;
        x[n++] = NAN;
        x[n++] = -NAN;
        x[n++] = f_of_bits(0x7FC00001u); /* quiet NaNs with payloads */
        x[n++] = f_of_bits(0xFFC001FFu);
        x[n++] = f_of_bits(0x7F800001u); /* signalling NaN */
        exp_simd(x, y, n);

        tu_check(y[0] == 1.0f && y[1] == 1.0f, "mg_exp_of_zero_is_one", "exp(0) = %.9g, exp(-0) = %.9g", y[0], y[1]);
        tu_check(isfinite(y[2]) && y[2] < FLT_MAX && y[2] > 3.4e38f, "mg_exp_at_top_of_range_finite",
                 "exp(%.9g) = %.9g", hi, y[2]);
        tu_check(y[3] >= FLT_MIN && y[3] < 1.2e-38f, "mg_exp_at_bottom_of_range_normal", "exp(%.9g) = %.9g", lo, y[3]);
        int ok = 1;
        for (int i = 0; i < na; i++) ok &= y[4 + i] == FLT_MAX;
        tu_check(ok, "mg_exp_above_range_is_flt_max", "exp(%.9g) = %.9g, exp(inf) = %.9g", above[0], y[4], y[4 + na - 1]);
        ok = 1;
        for (int i = 0; i < nb; i++) ok &= y[4 + na + i] == 0.0f;
        tu_check(ok, "mg_exp_below_range_is_zero", "exp(%.9g) = %.9g, exp(-inf) = %.9g", below[0], y[4 + na],
                 y[4 + na + nb - 1]);
        /* monotone across the clamping boundaries */
        tu_check(top.prev_y == y[2] && y[2] <= y[4] && y[3] > y[4 + na],
                 "mg_exp_monotone_across_clamps", "exp(hi) %.9g <= %.9g above; exp(lo) %.9g > %.9g below", y[2], y[4],
                 y[3], y[4 + na]);
        ok = 1;
        for (int i = nan0; i < n; i++) ok &= isnan(y[i]);
        tu_check(ok, "mg_exp_nan_propagates", "%d NaN inputs (signs, payloads, signalling) give NaN", n - nan0);
    }
    return tu_finish();
}
