/* Row normalisations: RMSNorm, LayerNorm and the shared-Z Q/K normalisation (spec §1.3, §4).
 *
 * Row statistics are accumulated in double (acc_t) in both precisions; the saved rstd/mean are stored in
 * the storage dtype. Parameter gradients are reduced deterministically: rows are cut into a number of
 * contiguous blocks that depends only on T (never on the thread count), each block sums its rows in order
 * into its own double buffer, and the block buffers are added in block order at the end. */
#include <string.h>

#include "cpu_real.h"

/* Number of row blocks for deterministic parameter-gradient reduction: enough blocks to keep 2..64
 * threads busy, few enough that the partial buffers (nblocks x width doubles) stay small. */
static int64_t norm_row_blocks(int64_t T) {
    const int64_t min_rows = 16, max_blocks = 64;
    int64_t nb = (T + min_rows - 1) / min_rows;
    return nb < 1 ? 1 : (nb > max_blocks ? max_blocks : nb);
}

/* Sums the nb partial rows of `part` (nb x n doubles) in block order and adds them to out (n reals). */
static void add_partials(real *out, const double *part, int64_t nb, int n) {
    for (int j = 0; j < n; j++) {
        double s = 0.0;
        for (int64_t b = 0; b < nb; b++) s += part[(size_t)b * n + j];
        out[j] += (real)s;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm                                                                                           */

static void rmsnorm_validate(const MgRMSNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->D >= 1, "%s: bad shape T=%lld D=%d (need T >= 0, D >= 1)", who, (long long)a->T,
             a->D);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

void CPU_FN(rmsnorm_forward)(const MgBackend *be, const MgRMSNormArgs *a) {
    (void)be;
    rmsnorm_validate(a, "rmsnorm_forward");
    const int D = a->D;
    const real *x = a->x, *w = a->weight;
    real *y = a->y, *rs = a->saved_rstd;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < a->T; t++) {
        const real *xr = x + (size_t)t * D;
        real *yr = y + (size_t)t * D;
        acc_t ss = 0;
        for (int j = 0; j < D; j++) ss += (acc_t)xr[j] * xr[j];
        const real r = (real)(1.0 / sqrt(ss / D + a->eps));
        if (rs) rs[t] = r;
        if (w)
            for (int j = 0; j < D; j++) yr[j] = xr[j] * r * (1 + w[j]);
        else
            for (int j = 0; j < D; j++) yr[j] = xr[j] * r;
    }
}

/* With xh = x*rstd and g = dy*(1+w): dx = rstd * (g - xh * mean(g*xh)), dw = sum_t dy*xh. */
void CPU_FN(rmsnorm_backward)(const MgBackend *be, const MgRMSNormArgs *a) {
    rmsnorm_validate(a, "rmsnorm_backward");
    const int D = a->D;
    const int64_t T = a->T;
    const real *x = a->x, *w = a->weight, *dy = a->dy, *rs = a->saved_rstd;
    real *dx = a->dx, *dw = w ? a->dweight : NULL;
    if (!dx && !dw) return;
    const int64_t nb = norm_row_blocks(T);
    double *part = dw ? cpu_ws_zeroed(be, 0, sizeof(double) * (size_t)nb * D) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t t0 = T * b / nb, t1 = T * (b + 1) / nb;
        double *pw = part ? part + (size_t)b * D : NULL;
        for (int64_t t = t0; t < t1; t++) {
            const real *xr = x + (size_t)t * D, *gr = dy + (size_t)t * D;
            real r;
            if (rs) {
                r = rs[t];
            } else { /* nothing saved: recompute */
                acc_t ss = 0;
                for (int j = 0; j < D; j++) ss += (acc_t)xr[j] * xr[j];
                r = (real)(1.0 / sqrt(ss / D + a->eps));
            }
            if (pw)
                for (int j = 0; j < D; j++) pw[j] += (double)gr[j] * ((double)xr[j] * r);
            if (!dx) continue;
            acc_t dot = 0;
            for (int j = 0; j < D; j++) {
                real g = w ? gr[j] * (1 + w[j]) : gr[j];
                dot += (acc_t)g * (xr[j] * r);
            }
            const real m = (real)(dot / D);
            real *dr = dx + (size_t)t * D;
            for (int j = 0; j < D; j++) {
                real g = w ? gr[j] * (1 + w[j]) : gr[j];
                real v = r * (g - xr[j] * r * m);
                dr[j] = a->accumulate ? dr[j] + v : v;
            }
        }
    }
    if (part) {
        add_partials(dw, part, nb, D);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* LayerNorm                                                                                         */

static void layernorm_validate(const MgLayerNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->D >= 1, "%s: bad shape T=%lld D=%d (need T >= 0, D >= 1)", who, (long long)a->T,
             a->D);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

/* Two-pass mean and population variance in double (no cancellation from E[x^2] - E[x]^2). */
static void layernorm_stats(const real *xr, int D, double eps, real *mean, real *rstd) {
    acc_t s = 0;
    for (int j = 0; j < D; j++) s += xr[j];
    const acc_t mu = s / D;
    acc_t v = 0;
    for (int j = 0; j < D; j++) {
        acc_t d = xr[j] - mu;
        v += d * d;
    }
    *mean = (real)mu;
    *rstd = (real)(1.0 / sqrt(v / D + eps));
}

void CPU_FN(layernorm_forward)(const MgBackend *be, const MgLayerNormArgs *a) {
    (void)be;
    layernorm_validate(a, "layernorm_forward");
    const int D = a->D;
    const real *x = a->x, *w = a->weight, *bias = a->bias;
    real *y = a->y, *sm = a->saved_mean, *sr = a->saved_rstd;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < a->T; t++) {
        const real *xr = x + (size_t)t * D;
        real *yr = y + (size_t)t * D;
        real mu, r;
        layernorm_stats(xr, D, a->eps, &mu, &r);
        if (sm) sm[t] = mu;
        if (sr) sr[t] = r;
        for (int j = 0; j < D; j++) {
            real v = (xr[j] - mu) * r;
            if (w) v *= 1 + w[j];
            if (bias) v += bias[j];
            yr[j] = v;
        }
    }
}

/* With xh = (x-mean)*rstd, g = dy*(1+w): dx = rstd * (g - mean(g) - xh * mean(g*xh)),
 * dw = sum_t dy*xh, db = sum_t dy. */
void CPU_FN(layernorm_backward)(const MgBackend *be, const MgLayerNormArgs *a) {
    layernorm_validate(a, "layernorm_backward");
    const int D = a->D;
    const int64_t T = a->T;
    const real *x = a->x, *w = a->weight, *dy = a->dy, *sm = a->saved_mean, *sr = a->saved_rstd;
    real *dx = a->dx, *dw = w ? a->dweight : NULL, *db = a->dbias;
    if (!dx && !dw && !db) return;
    const int64_t nb = norm_row_blocks(T);
    /* per block: D entries for dweight then D for dbias */
    double *part = (dw || db) ? cpu_ws_zeroed(be, 0, sizeof(double) * (size_t)nb * 2 * D) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t t0 = T * b / nb, t1 = T * (b + 1) / nb;
        double *pw = part ? part + (size_t)b * 2 * D : NULL, *pb = pw ? pw + D : NULL;
        for (int64_t t = t0; t < t1; t++) {
            const real *xr = x + (size_t)t * D, *gr = dy + (size_t)t * D;
            real mu, r;
            if (sm && sr) {
                mu = sm[t];
                r = sr[t];
            } else {
                layernorm_stats(xr, D, a->eps, &mu, &r);
            }
            if (pw)
                for (int j = 0; j < D; j++) {
                    pw[j] += (double)gr[j] * ((double)(xr[j] - mu) * r);
                    pb[j] += gr[j];
                }
            if (!dx) continue;
            acc_t sg = 0, sgx = 0;
            for (int j = 0; j < D; j++) {
                real g = w ? gr[j] * (1 + w[j]) : gr[j];
                sg += g;
                sgx += (acc_t)g * ((xr[j] - mu) * r);
            }
            const real mg = (real)(sg / D), mgx = (real)(sgx / D);
            real *dr = dx + (size_t)t * D;
            for (int j = 0; j < D; j++) {
                real g = w ? gr[j] * (1 + w[j]) : gr[j];
                real v = r * (g - mg - (xr[j] - mu) * r * mgx);
                dr[j] = a->accumulate ? dr[j] + v : v;
            }
        }
    }
    if (part) {
        /* the partial sums are interleaved per block (dw | db), so reduce each half separately */
        for (int j = 0; j < D; j++) {
            double sw = 0.0, sb = 0.0;
            for (int64_t b = 0; b < nb; b++) {
                sw += part[(size_t)b * 2 * D + j];
                sb += part[(size_t)b * 2 * D + D + j];
            }
            if (dw) dw[j] += (real)sw;
            if (db) db[j] += (real)sb;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Q/K normalisation                                                                                  */

static void qknorm_validate(const MgQKNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->Z >= 1 && a->H >= 1, "%s: bad shape T=%lld Z=%d H=%d", who, (long long)a->T, a->Z,
             a->H);
    MG_CHECK(a->Z % a->H == 0, "%s: Z=%d is not divisible by the number of heads H=%d", who, a->Z, a->H);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

static real qknorm_head_rstd(const real *zh, int dz, double eps) {
    acc_t ss = 0;
    for (int j = 0; j < dz; j++) ss += (acc_t)zh[j] * zh[j];
    return (real)(1.0 / sqrt(ss / dz + eps));
}

void CPU_FN(qknorm_forward)(const MgBackend *be, const MgQKNormArgs *a) {
    (void)be;
    qknorm_validate(a, "qknorm_forward");
    const int Z = a->Z, H = a->H, dz = Z / H;
    const real inv_sqrt_dz = (real)(1.0 / sqrt((double)dz));
    const real *z = a->z, *gm = a->gamma, *bt = a->beta;
    real *q = a->q, *k = a->k, *rs = a->saved_rstd;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < a->T; t++) {
        for (int h = 0; h < H; h++) {
            const size_t o = (size_t)t * Z + (size_t)h * dz;
            const real r = qknorm_head_rstd(z + o, dz, a->eps);
            if (rs) rs[(size_t)t * H + h] = r;
            for (int j = 0; j < dz; j++) {
                const int c = h * dz + j;
                const real zh = z[o + j] * r * inv_sqrt_dz;
                if (q) q[o + j] = zh * (1 + (gm ? gm[c] : 0)) + (bt ? bt[c] : 0);
                if (k) k[o + j] = zh * (1 + (gm ? gm[Z + c] : 0)) + (bt ? bt[Z + c] : 0);
            }
        }
    }
}

/* With zh = z*rstd, s = 1/sqrt(dz), G = s*(dq*(1+g0) + dk*(1+g1)):
 * dz = rstd * (G - zh * mean(G*zh)) per head; dgamma_{0,1} += s*d{q,k}*zh, dbeta_{0,1} += d{q,k}. */
void CPU_FN(qknorm_backward)(const MgBackend *be, const MgQKNormArgs *a) {
    qknorm_validate(a, "qknorm_backward");
    const int Z = a->Z, H = a->H, dz = Z / H;
    const int64_t T = a->T;
    const real s = (real)(1.0 / sqrt((double)dz));
    const real *z = a->z, *gm = a->gamma, *dq = a->dq, *dk = a->dk, *rs = a->saved_rstd;
    real *dzp = a->dz, *dg = a->dgamma, *dbt = a->dbeta;
    if (!dzp && !dg && !dbt) return;
    const int64_t nb = norm_row_blocks(T);
    /* per block: dgamma (2Z) then dbeta (2Z) */
    double *part = (dg || dbt) ? cpu_ws_zeroed(be, 0, sizeof(double) * (size_t)nb * 4 * Z) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t t0 = T * b / nb, t1 = T * (b + 1) / nb;
        double *pg = part ? part + (size_t)b * 4 * Z : NULL, *pb = pg ? pg + 2 * Z : NULL;
        for (int64_t t = t0; t < t1; t++) {
            for (int h = 0; h < H; h++) {
                const size_t o = (size_t)t * Z + (size_t)h * dz;
                const real r = rs ? rs[(size_t)t * H + h] : qknorm_head_rstd(z + o, dz, a->eps);
                if (pg)
                    for (int j = 0; j < dz; j++) {
                        const int c = h * dz + j;
                        const double zh = (double)z[o + j] * r * s;
                        if (dq) {
                            pg[c] += dq[o + j] * zh;
                            pb[c] += dq[o + j];
                        }
                        if (dk) {
                            pg[Z + c] += dk[o + j] * zh;
                            pb[Z + c] += dk[o + j];
                        }
                    }
                if (!dzp) continue;
                acc_t dot = 0;
                for (int j = 0; j < dz; j++) {
                    const int c = h * dz + j;
                    real G = 0;
                    if (dq) G += dq[o + j] * (1 + (gm ? gm[c] : 0));
                    if (dk) G += dk[o + j] * (1 + (gm ? gm[Z + c] : 0));
                    dot += (acc_t)(G * s) * (z[o + j] * r);
                }
                const real m = (real)(dot / dz);
                for (int j = 0; j < dz; j++) {
                    const int c = h * dz + j;
                    real G = 0;
                    if (dq) G += dq[o + j] * (1 + (gm ? gm[c] : 0));
                    if (dk) G += dk[o + j] * (1 + (gm ? gm[Z + c] : 0));
                    real v = r * (G * s - z[o + j] * r * m);
                    dzp[o + j] = a->accumulate ? dzp[o + j] + v : v;
                }
            }
        }
    }
    if (part) {
        for (int j = 0; j < 2 * Z; j++) {
            double sg = 0.0, sb = 0.0;
            for (int64_t b = 0; b < nb; b++) {
                sg += part[(size_t)b * 4 * Z + j];
                sb += part[(size_t)b * 4 * Z + 2 * Z + j];
            }
            if (dg) dg[j] += (real)sg;
            if (dbt) dbt[j] += (real)sb;
        }
    }
}
