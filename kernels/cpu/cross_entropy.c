/* Softmax cross-entropy fused with its gradient, one row per token. */
#include <string.h>

#include "cpu_real.h"

void CPU_FN(cross_entropy)(const MgBackend *be, const MgCrossEntropyArgs *a) {
    (void)be;
    const int64_t T = a->T;
    const int V = a->V, ign = a->ignore_index;
    MG_CHECK(T >= 0 && V > 0, "cross_entropy: bad shape T=%lld V=%d (need T >= 0, V > 0)", (long long)T, V);
    /* Validated serially before the parallel region so the first bad row is the one reported. */
    for (int64_t t = 0; t < T; t++) {
        int32_t y = a->targets[t];
        if (y != ign && (y < 0 || y >= V))
            mg_fatal("cross_entropy: target id %d at row %lld is outside the vocabulary [0, %d) and is not "
                     "ignore_index (%d); check the data's tokenizer and the model's vocab_size",
                     (int)y, (long long)t, V, ign);
    }
    const real *logits = a->logits;
    real *losses = a->losses, *dlogits = a->dlogits;
    const double gs = a->grad_scale;
#pragma omp parallel for schedule(static) if (T > 1 && (double)T * V > 32768.0)
    for (int64_t t = 0; t < T; t++) {
        const real *x = logits + (size_t)t * V;
        real *d = dlogits ? dlogits + (size_t)t * V : NULL;
        const int32_t y = a->targets[t];
        if (y == ign) {
            if (losses) losses[t] = 0;
            if (d) memset(d, 0, sizeof(real) * (size_t)V);
            continue;
        }
        /* Read before the row is overwritten when d aliases x. */
        const real xy = x[y];
        int jm = 0; /* first position of the maximum: its term exp(0) = 1 is kept out of the sum */
        for (int j = 1; j < V; j++)
            if (x[j] > x[jm]) jm = j;
        const real m = x[jm];
        /* exp in the storage precision (each term within ~1 ulp), summed in double: rows are up to 32000
         * wide, where a float sum would lose ~3 digits. rest = s - 1 is summed without the 1, so a confident
         * row (rest ~ 1e-11) keeps its digits in log1p(rest) and in p - 1. With d, e_j is parked in d[j]. */
        acc_t rest = 0;
        if (d) {
            for (int j = 0; j < V; j++) {
                real e = exp(x[j] - m);
                d[j] = e;
                rest += j == jm ? 0 : (acc_t)e;
            }
        } else {
            for (int j = 0; j < V; j++) rest += j == jm ? 0 : (acc_t)exp(x[j] - m);
        }
        const acc_t s = 1 + rest;
        if (losses) losses[t] = (real)(((acc_t)m - (acc_t)xy) + log1p(rest));
        if (d) {
            const real r = (real)(gs / s);
#pragma omp simd
            for (int j = 0; j < V; j++) d[j] *= r;
            /* gs * (p_y - 1) = -gs * (mass of the other entries) / s, without forming p_y - 1. */
            const acc_t other = y == jm ? rest : s - (acc_t)(real)exp(xy - m);
            d[y] = (real)(-gs * (other / s));
        }
    }
}
