/* Elementwise activations (SiLU, SwiGLU, product, sum) and counter-based dropout. */
#include <string.h>

#include "cpu_real.h"

/* Below this many elements a parallel region costs more than it saves. */
#define ACT_PAR_MIN 32768

/* sigma(x) from exp(-|x|) <= 1: never overflows, and stays accurate for large negative x where
 * 1 - 1/(1+e) would cancel. */
static inline real sigmoid_r(real x) {
    real e = mg_exp(-fabs(x));
    real r = (real)1 / ((real)1 + e);
    return x >= 0 ? r : e * r;
}

void CPU_FN(act_forward)(const MgBackend *be, const MgActArgs *a) {
    (void)be;
    const int64_t n = a->n;
    MG_CHECK(n >= 0, "act_forward: n=%lld must be >= 0", (long long)n);
    const real *x = a->a, *b = a->b;
    real *y = a->y;
    MG_CHECK(a->kind == MG_ACT_SILU || b, "act_forward: kind %d needs a second input b (b is NULL)", (int)a->kind);
    switch (a->kind) {
    case MG_ACT_SILU:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoid_r(x[i]);
        break;
    case MG_ACT_SWIGLU:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoid_r(x[i]) * b[i];
        break;
    case MG_ACT_MUL:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * b[i];
        break;
    case MG_ACT_ADD:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] + b[i];
        break;
    default: mg_fatal("act_forward: unknown activation kind %d (expected 0..3, see MgActKind)", (int)a->kind);
    }
}

/* Write or accumulate one gradient element. `acc` is loop-invariant, so the compiler unswitches it. */
#define PUT(dst, i, v)                                                                                 \
    do {                                                                                               \
        if (acc) (dst)[i] += (v);                                                                      \
        else (dst)[i] = (v);                                                                           \
    } while (0)

void CPU_FN(act_backward)(const MgBackend *be, const MgActArgs *a) {
    (void)be;
    const int64_t n = a->n;
    MG_CHECK(n >= 0, "act_backward: n=%lld must be >= 0", (long long)n);
    const real *x = a->a, *b = a->b, *dy = a->dy;
    real *da = a->da, *db = a->db;
    const int acc = a->accumulate;
    if (a->kind == MG_ACT_SILU) db = NULL;
    if (!da && !db) return;
    MG_CHECK(a->kind == MG_ACT_SILU || b, "act_backward: kind %d needs a second input b (b is NULL)",
             (int)a->kind);
    /* Every element's inputs are read before its outputs are written, so da/db may alias dy. */
    switch (a->kind) {
    case MG_ACT_SILU:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            real s = sigmoid_r(x[i]);
            real g = dy[i] * s * ((real)1 + x[i] * ((real)1 - s));
            PUT(da, i, g);
        }
        break;
    case MG_ACT_SWIGLU:
        if (da && db) {
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
            for (int64_t i = 0; i < n; i++) {
                real s = sigmoid_r(x[i]), g = dy[i];
                real ga = g * b[i] * s * ((real)1 + x[i] * ((real)1 - s));
                real gb = g * x[i] * s;
                PUT(da, i, ga);
                PUT(db, i, gb);
            }
        } else if (da) {
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
            for (int64_t i = 0; i < n; i++) {
                real s = sigmoid_r(x[i]);
                real ga = dy[i] * b[i] * s * ((real)1 + x[i] * ((real)1 - s));
                PUT(da, i, ga);
            }
        } else {
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
            for (int64_t i = 0; i < n; i++) {
                real gb = dy[i] * x[i] * sigmoid_r(x[i]);
                PUT(db, i, gb);
            }
        }
        break;
    case MG_ACT_MUL:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            real g = dy[i], ga = g * b[i], gb = g * x[i];
            if (da) PUT(da, i, ga);
            if (db) PUT(db, i, gb);
        }
        break;
    case MG_ACT_ADD:
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            real g = dy[i];
            if (da) PUT(da, i, g);
            if (db) PUT(db, i, g);
        }
        break;
    default: mg_fatal("act_backward: unknown activation kind %d (expected 0..3, see MgActKind)", (int)a->kind);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Dropout: element i of the tensor is element counter(i) of the mask stream of `seed` (mg_mask_keep,
 * cpu_real.h; counter() in ops.h: offset + i, or segments placed seg_stride apart), so backward
 * regenerates the mask and a slice of a larger tensor draws the larger tensor's mask. */

static void check_p(const char *op, const MgDropoutArgs *a) {
    MG_CHECK(a->p >= 0.0 && a->p < 1.0, "%s: probability p=%g must be in [0, 1)", op, a->p);
    MG_CHECK(a->n >= 0, "%s: n=%lld must be >= 0", op, (long long)a->n);
    MG_CHECK(a->seg_len >= 0 && (a->seg_len == 0 || a->seg_stride >= a->seg_len),
             "%s: segments of seg_len=%lld must not overlap (seg_stride=%lld must be >= seg_len)", op,
             (long long)a->seg_len, (long long)a->seg_stride);
}

/* dst = mask * src * scale (or += when acc). Shared by forward (x -> y) and backward (dy -> dx). */
static void dropout_apply(const MgDropoutArgs *a, const real *src, real *dst, int acc) {
    const int64_t n = a->n;
    const uint64_t key = mg_fmix64(a->seed), base = a->offset, thr = mg_keep_threshold(a->p);
    const real scale = (real)(1.0 / (1.0 - a->p));
    if (a->seg_len == 0 || a->seg_len >= n) {
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            real v = mg_mask_keep(key, base + (uint64_t)i, thr) ? src[i] * scale : (real)0;
            PUT(dst, i, v);
        }
        return;
    }
    const int64_t len = a->seg_len, nseg = (n + len - 1) / len;
    const uint64_t stride = (uint64_t)a->seg_stride;
#pragma omp parallel for schedule(static) if (n > ACT_PAR_MIN)
    for (int64_t sgi = 0; sgi < nseg; sgi++) {
        const int64_t i0 = sgi * len, i1 = MG_MIN(n, i0 + len);
        const uint64_t b0 = base + (uint64_t)sgi * stride - (uint64_t)i0;
#pragma omp simd
        for (int64_t i = i0; i < i1; i++) {
            real v = mg_mask_keep(key, b0 + (uint64_t)i, thr) ? src[i] * scale : (real)0;
            PUT(dst, i, v);
        }
    }
}

void CPU_FN(dropout_forward)(const MgBackend *be, const MgDropoutArgs *a) {
    (void)be;
    check_p("dropout_forward", a);
    if (a->p == 0.0) {
        if (a->y != a->x) memmove(a->y, a->x, sizeof(real) * (size_t)a->n);
        return;
    }
    dropout_apply(a, a->x, a->y, 0);
}

void CPU_FN(dropout_backward)(const MgBackend *be, const MgDropoutArgs *a) {
    (void)be;
    check_p("dropout_backward", a);
    if (!a->dx) return;
    const real *dy = a->dy;
    real *dx = a->dx;
    if (a->p == 0.0) {
        if (a->accumulate) {
            const int64_t n = a->n;
#pragma omp parallel for simd schedule(static) if (n > ACT_PAR_MIN)
            for (int64_t i = 0; i < n; i++) dx[i] += dy[i];
        } else if (dx != dy) {
            memmove(dx, dy, sizeof(real) * (size_t)a->n);
        }
        return;
    }
    dropout_apply(a, dy, dx, a->accumulate);
}
