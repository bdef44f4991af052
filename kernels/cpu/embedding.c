/* Token embedding lookup and its weight gradient. */
#include <string.h>

#include "cpu_real.h"

/* Column block of the backward pass: every thread owns whole blocks of D and walks all tokens in order,
 * so each dweight element is summed in token order whatever the thread count (no atomics). 64 elements
 * keep neighbouring blocks on different cache lines. */
#define EMB_COL_BLOCK 64

/* Shapes and pointers only: token ids are data, checked on the host where they enter (ops.h). */
static void check_tokens(const char *op, const MgEmbeddingArgs *a) {
    MG_CHECK(a->T >= 0 && a->D > 0 && a->V > 0, "%s: bad shape T=%lld D=%d V=%d (need T >= 0, D > 0, V > 0)",
             op, (long long)a->T, a->D, a->V);
    MG_CHECK(a->T == 0 || a->tokens, "%s: tokens is NULL", op);
}

void CPU_FN(embedding_forward)(const MgBackend *be, const MgEmbeddingArgs *a) {
    (void)be;
    check_tokens("embedding_forward", a);
    const real *w = a->weight;
    real *out = a->out;
    const int64_t T = a->T;
    const size_t D = (size_t)a->D;
#pragma omp parallel for schedule(static) if ((double)T * (double)D > 65536.0)
    for (int64_t t = 0; t < T; t++) memcpy(out + (size_t)t * D, w + (size_t)a->tokens[t] * D, D * sizeof(real));
}

void CPU_FN(embedding_backward)(const MgBackend *be, const MgEmbeddingArgs *a) {
    (void)be;
    check_tokens("embedding_backward", a);
    if (!a->dweight) return;
    const real *dout = a->dout;
    real *dw = a->dweight;
    const int64_t T = a->T;
    const int D = a->D;
    const int nblocks = (D + EMB_COL_BLOCK - 1) / EMB_COL_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && (double)T * (double)D > 65536.0)
    for (int cb = 0; cb < nblocks; cb++) {
        const int j0 = cb * EMB_COL_BLOCK, j1 = MG_MIN(D, j0 + EMB_COL_BLOCK);
        for (int64_t t = 0; t < T; t++) {
            real *row = dw + (size_t)a->tokens[t] * (size_t)D;
            const real *g = dout + (size_t)t * (size_t)D;
#pragma omp simd
            for (int j = j0; j < j1; j++) row[j] += g[j];
        }
    }
}
