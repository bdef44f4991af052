/* TimestepNorm (spec §3, gradients §11.2): causal grouped mean/variance over time, merged token by token
 * with the block-Welford (Chan) update, then an affine normalisation with scale (1 + w) and offset b.
 *
 * Parallel over (batch row, group): each task walks t sequentially, which for the CPU's handful of
 * threads exposes enough parallelism (B*G tasks) without the sub-range scan of the CUDA kernel.
 * The running statistics are kept in double in both builds: the merge subtracts nearly equal numbers
 * once the count is large, and carrying them in double costs nothing here. */
#include <string.h>

#include "cpu_real.h"

/* Threads only pay off above a few tens of microseconds of work (gradient checks call tiny sizes). */
MG_MAYBE_UNUSED static int tsn_parallel(const MgTimestepNormArgs *a) { return (double)a->B * a->L * a->D >= 32768.0; }

void CPU_FN(timestep_norm_forward)(const MgBackend *be, const MgTimestepNormArgs *a) {
    (void)be;
    mg_timestep_norm_validate(a, "timestep_norm_forward", 0);
    const int B = a->B, L = a->L, D = a->D, G = a->G, dg = D / G;
    const real *x = a->x, *w = a->weight, *bias = a->bias;
    const real *mean_in = a->mean_in, *var_in = a->var_in;
    real *y = a->y, *smean = a->saved_mean, *srstd = a->saved_rstd;
    real *mean_out = a->mean_out, *var_out = a->var_out;
    const uint8_t *mask = a->pad_mask;
    const double eps = a->eps, inv_dg = 1.0 / dg;

#pragma omp parallel for schedule(static) if (tsn_parallel(a))
    for (int task = 0; task < B * G; task++) {
        const int b = task / G, g = task % G;
        const size_t bg = (size_t)b * G + g;
        /* a negative count can only come from a corrupted state: treat it as fresh */
        int64_t n = a->count_in && a->count_in[b] > 0 ? a->count_in[b] : 0;
        double mu = mean_in ? (double)mean_in[bg] : 0.0;
        double var = var_in ? (double)var_in[bg] : 1.0;
        const real *wg = w + (size_t)g * dg, *bgp = bias + (size_t)g * dg;
        for (int t = 0; t < L; t++) {
            const size_t row = (size_t)b * L + t;
            const real *xt = x + row * D + (size_t)g * dg;
            const int pad = mask && mask[row];
            if (!pad) {
                double m = 0.0;
                for (int i = 0; i < dg; i++) m += (double)xt[i];
                m *= inv_dg;
                double s = 0.0;
                for (int i = 0; i < dg; i++) {
                    double d = (double)xt[i] - m;
                    s += d * d;
                }
                s *= inv_dg;
                n += 1;
                const double c = 1.0 / (double)n, delta = m - mu;
                mu += c * delta;
                var = (1.0 - c) * var + c * s + c * (1.0 - c) * delta * delta;
            }
            if (!y) continue; /* statistics only */
            const double rstd = 1.0 / sqrt(var + eps);
            smean[row * G + g] = (real)mu;
            srstd[row * G + g] = (real)rstd;
            real *yt = y + row * D + (size_t)g * dg;
            if (pad) {
                for (int i = 0; i < dg; i++) yt[i] = 0;
            } else {
                for (int i = 0; i < dg; i++)
                    yt[i] = (real)(((double)xt[i] - mu) * rstd * (1.0 + (double)wg[i]) + (double)bgp[i]);
            }
        }
        if (a->count_out && g == 0) a->count_out[b] = n;
        if (mean_out) mean_out[bg] = (real)mu;
        if (var_out) var_out[bg] = (real)var;
    }
}

/* Reverse walk of §11.2 per (b, g). (U, V) carry dL/d(mu, var) of the running state after step t; they
 * start from the gradient of the carried-out state and end as the gradient of the carried-in state.
 * Parameter gradients go to per-batch-row partials (each task owns a disjoint slice), then are summed
 * over b in order, so the result does not depend on the thread count. */
void CPU_FN(timestep_norm_backward)(const MgBackend *be, const MgTimestepNormArgs *a) {
    mg_timestep_norm_validate(a, "timestep_norm_backward", 1);
    const int B = a->B, L = a->L, D = a->D, G = a->G, dg = D / G;
    const real *x = a->x, *w = a->weight, *dy = a->dy;
    const real *smean = a->saved_mean, *srstd = a->saved_rstd;
    const real *mean_in = a->mean_in, *dmean_out = a->dmean_out, *dvar_out = a->dvar_out;
    real *dx = a->dx, *dmean_in = a->dmean_in, *dvar_in = a->dvar_in;
    const uint8_t *mask = a->pad_mask;
    const int acc = a->accumulate;
    const int need_params = a->dweight || a->dbias;
    const double inv_dg = 1.0 / dg;

    double *pw = NULL, *pb = NULL;
    if (need_params) {
        pw = cpu_ws_shared(be, 0, sizeof(double) * (size_t)B * D);
        pb = cpu_ws_shared(be, 1, sizeof(double) * (size_t)B * D);
        memset(pw, 0, sizeof(double) * (size_t)B * D);
        memset(pb, 0, sizeof(double) * (size_t)B * D);
    }

#pragma omp parallel for schedule(static) if (tsn_parallel(a))
    for (int task = 0; task < B * G; task++) {
        const int b = task / G, g = task % G;
        const size_t bg = (size_t)b * G + g;
        int64_t n = a->count_in && a->count_in[b] > 0 ? a->count_in[b] : 0;
        for (int t = 0; t < L; t++) n += !(mask && mask[(size_t)b * L + t]);
        double U = dmean_out ? (double)dmean_out[bg] : 0.0;
        double V = dvar_out ? (double)dvar_out[bg] : 0.0;
        const real *wg = w + (size_t)g * dg;
        double *pwg = pw ? pw + (size_t)b * D + (size_t)g * dg : NULL;
        double *pbg = pb ? pb + (size_t)b * D + (size_t)g * dg : NULL;
        for (int t = L - 1; t >= 0; t--) {
            const size_t row = (size_t)b * L + t;
            const real *xt = x + row * D + (size_t)g * dg;
            const real *dyt = dy + row * D + (size_t)g * dg;
            real *dxt = dx ? dx + row * D + (size_t)g * dg : NULL;
            if (mask && mask[row]) {
                if (dxt && !acc) memset(dxt, 0, sizeof(real) * (size_t)dg);
                continue;
            }
            const double mu = (double)smean[row * G + g], r = (double)srstd[row * G + g];
            const double mu_prev =
                t > 0 ? (double)smean[(row - 1) * G + g] : (mean_in ? (double)mean_in[bg] : 0.0);
            double m = 0.0, sa = 0.0, ss = 0.0;
            for (int i = 0; i < dg; i++) {
                const double xi = (double)xt[i], gi = (double)dyt[i] * (1.0 + (double)wg[i]);
                m += xi;
                sa += gi;
                ss += gi * (xi - mu);
            }
            m *= inv_dg;
            const double dmu = U - r * sa;
            const double dvar = V - 0.5 * r * r * r * ss;
            const double c2 = 1.0 / (double)n, c1 = (double)(n - 1) / (double)n, delta = m - mu_prev;
            const double dm = c2 * dmu + 2.0 * c1 * c2 * delta * dvar;
            const double ds = c2 * dvar;
            U = c1 * dmu - 2.0 * c1 * c2 * delta * dvar;
            V = c1 * dvar;
            n -= 1;
            if (dxt) {
                const double km = dm * inv_dg, ks = 2.0 * inv_dg * ds;
                for (int i = 0; i < dg; i++) {
                    const double xi = (double)xt[i];
                    const double v = (double)dyt[i] * r * (1.0 + (double)wg[i]) + km + ks * (xi - m);
                    dxt[i] = acc ? (real)((double)dxt[i] + v) : (real)v;
                }
            }
            if (pwg)
                for (int i = 0; i < dg; i++) {
                    pwg[i] += (double)dyt[i] * r * ((double)xt[i] - mu);
                    pbg[i] += (double)dyt[i];
                }
        }
        if (dmean_in) dmean_in[bg] = (real)U;
        if (dvar_in) dvar_in[bg] = (real)V;
    }

    if (need_params) {
        real *dw = a->dweight, *db = a->dbias;
#pragma omp parallel for schedule(static) if (tsn_parallel(a))
        for (int i = 0; i < D; i++) {
            double sw = 0.0, sb = 0.0;
            for (int b = 0; b < B; b++) {
                sw += pw[(size_t)b * D + i];
                sb += pb[(size_t)b * D + i];
            }
            if (dw) dw[i] = (real)((double)dw[i] + sw);
            if (db) db[i] = (real)((double)db[i] + sb);
        }
    }
}
