/* Linear layer y = x W^T + b on top of cpu_gemm. */
#include <limits.h>
#include <string.h>

#include "cpu_real.h"

/* Columns of dbias summed per thread; each column is a sequential sum over rows in row order. */
#define LIN_BIAS_BLOCK 256

static void check_shape(const char *op, const MgLinearArgs *a) {
    MG_CHECK(a->in > 0 && a->out > 0, "%s: in_features=%d and out_features=%d must be positive", op, a->in,
             a->out);
    /* cpu_gemm takes int dimensions (BLAS convention). */
    MG_CHECK(a->T >= 0 && a->T <= INT_MAX, "%s: T=%lld rows is outside [0, %d]; split the batch", op,
             (long long)a->T, INT_MAX);
}

void CPU_FN(linear_forward)(const MgBackend *be, const MgLinearArgs *a) {
    (void)be;
    check_shape("linear_forward", a);
    const int T = (int)a->T, in = a->in, out = a->out;
    real *y = a->y;
    real beta = 0;
    if (a->bias) {
        /* Seeding y with the bias and letting the GEMM accumulate (beta = 1) saves a second pass over y. */
        const real *b = a->bias;
#pragma omp parallel for schedule(static) if ((double)T * out > 65536.0)
        for (int t = 0; t < T; t++) memcpy(y + (size_t)t * out, b, sizeof(real) * (size_t)out);
        beta = 1;
    }
    CPU_FN(gemm)(0, 1, T, out, in, (real)1, a->x, in, a->weight, in, beta, y, out);
}

void CPU_FN(linear_backward)(const MgBackend *be, const MgLinearArgs *a) {
    (void)be;
    check_shape("linear_backward", a);
    const int T = (int)a->T, in = a->in, out = a->out;
    const real *dy = a->dy;
    if (a->dx) /* dx (T x in) = dy (T x out) W (out x in) */
        CPU_FN(gemm)(0, 0, T, in, out, (real)1, dy, out, a->weight, in, a->accumulate ? (real)1 : (real)0,
                     a->dx, in);
    if (a->dweight) /* dW (out x in) += dy^T x */
        CPU_FN(gemm)(1, 0, out, in, T, (real)1, dy, out, a->x, in, (real)1, a->dweight, in);
    if (a->dbias) {
        real *db = a->dbias;
        const int nblocks = (out + LIN_BIAS_BLOCK - 1) / LIN_BIAS_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && (double)T * out > 65536.0)
        for (int cb = 0; cb < nblocks; cb++) {
            const int j0 = cb * LIN_BIAS_BLOCK, n = MG_MIN(out, j0 + LIN_BIAS_BLOCK) - j0;
            acc_t s[LIN_BIAS_BLOCK] = {0};
            for (int t = 0; t < T; t++) {
                const real *row = dy + (size_t)t * out + j0;
#pragma omp simd
                for (int j = 0; j < n; j++) s[j] += (acc_t)row[j];
            }
            for (int j = 0; j < n; j++) db[j0 + j] = (real)((acc_t)db[j0 + j] + s[j]);
        }
    }
}
