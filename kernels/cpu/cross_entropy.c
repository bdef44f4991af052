/* Softmax cross-entropy fused with its gradient, one row per token. */
#include <string.h>

#include "cpu_real.h"

void CPU_FN(cross_entropy)(const MgBackend *be, const MgCrossEntropyArgs *a) {
    (void)be;
    const int64_t T = a->T;
    const int V = a->V, ign = a->ignore_index;
    MG_CHECK(T >= 0 && V > 0, "cross_entropy: bad shape T=%lld V=%d (need T >= 0, V > 0)", (long long)T, V);
    MG_CHECK(T == 0 || (a->logits && a->targets && a->losses), "cross_entropy: logits, targets and losses must "
             "not be NULL");
    /* Target ids are data, checked on the host where they enter (ops.h); here an id outside [0, V) that is
     * not ignore_index is treated as ignored rather than read out of bounds. */
    const real *logits = a->logits;
    real *losses = a->losses, *dlogits = a->dlogits;
    const double gs = a->grad_scale;
#pragma omp parallel for schedule(static) if (T > 1 && (double)T * V > 32768.0)
    for (int64_t t = 0; t < T; t++) {
        const real *x = logits + (size_t)t * V;
        real *d = dlogits ? dlogits + (size_t)t * V : NULL;
        const int32_t y = a->targets[t];
        if (y == ign || y < 0 || y >= V) {
            if (losses) losses[t] = 0;
            if (d) memset(d, 0, sizeof(real) * (size_t)V);
            continue;
        }
        /* Read before the row is overwritten when d aliases x. */
        const real xy = x[y];
        real m = x[0];
#pragma omp simd reduction(max : m)
        for (int j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
        /* s = sum_j exp(x_j - m) = ties + rest, where the maxima (each exactly exp(0) = 1) are counted in
         * `ties` and kept out of `rest`: a confident row (rest ~ 1e-11) keeps its digits in log1p(rest)
         * and in p - 1. The exps run vectorised (mg_exp); each block of 512 terms is summed in the working
         * precision and the blocks in double, since rows are up to 32000 wide. With d, e_j is parked in d[j]. */
        acc_t rest = 0;
        int ties = 0;
        for (int j0 = 0; j0 < V; j0 += 512) {
            const int j1 = j0 + 512 < V ? j0 + 512 : V;
            real part = 0;
            int nt = 0;
            if (d) {
#pragma omp simd reduction(+ : part, nt)
                for (int j = j0; j < j1; j++) {
                    const real xj = x[j]; /* before d[j] is written: d may alias x */
                    const real e = mg_exp(xj - m);
                    part += xj == m ? (real)0 : e;
                    nt += xj == m;
                    d[j] = e;
                }
            } else {
#pragma omp simd reduction(+ : part, nt)
                for (int j = j0; j < j1; j++) {
                    real e = mg_exp(x[j] - m);
                    part += x[j] == m ? (real)0 : e;
                    nt += x[j] == m;
                }
            }
            rest += (acc_t)part;
            ties += nt;
        }
        rest += (acc_t)(ties - 1);
        const acc_t s = 1 + rest;
        if (losses) losses[t] = (real)(((acc_t)m - (acc_t)xy) + log1p(rest));
        if (d) {
            const real r = (real)(gs / s);
#pragma omp simd
            for (int j = 0; j < V; j++) d[j] *= r;
            /* gs * (p_y - 1) = -gs * (mass of the other entries) / s, without forming p_y - 1. */
            const acc_t other = xy == m ? rest : s - (acc_t)mg_exp(xy - m);
            d[y] = (real)(-gs * (other / s));
        }
    }
}
