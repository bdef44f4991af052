/* CEMA, the complex exponential moving average (spec §2, gradients §11.1), by its direct recurrence
 *     h_t = p x_t + q h_{t-1},   y_t = Re(sum_n gamma_n h_{t,n}) + omega x_t
 * per channel. O(B*D*N*L) work, small next to the layer's matrix products, and exact for any L without
 * the FFT of the official kernels.
 *
 * Work split: one task per (batch row, block of CEMA_BLOCK consecutive channels). x is token-major
 * (B, L, D), so a block reads one short contiguous run of each token row. Time is walked in tiles of
 * CEMA_TILE steps: the tile's x rows are gathered once, then for each order n the block's state stays in
 * registers while it runs through the tile (the loop over the block's channels is one SIMD vector), and
 * its contribution is added to the tile's outputs. States are laid out [n][channel], split re/im.
 *
 * Precision: coefficients, states and gradient sums are double in both builds. With long memory
 * (|q| -> 1) the float32 rounding of q alone perturbs the effective kernel q^m by about m * 6e-8; a float32
 * recurrence was off by 1.9e-5 of max|y| on test_cema's L = 4096 case (|q| up to 0.999), the double one
 * by 6e-8 (output rounding only). CEMA is a small share of a layer's work, so double costs little.
 *
 * Backward saves nothing time-indexed from the forward: it re-walks the recurrence keeping the state at
 * every tile boundary (checkpoints), then, tile by tile from the end, recomputes that tile's states and
 * runs the reverse-time adjoint recurrence over it (spec §11.1):
 *     lambda_t = dy_t conj(gamma) + conj(q) lambda_{t+1},   lambda at L-1 seeded with dh_out,
 *     dx_t = sum_n p Re(lambda_t) + omega dy_t,   dp = sum_t Re(lambda_t) x_t,
 *     dq = sum_t lambda_t conj(h_{t-1}),   dgamma = sum_t dy_t conj(h_t),   dh_in = conj(q) lambda_0,
 * (complex gradients g = dL/dRe + i dL/dIm), then chains p, q, gamma to the raw parameters. Memory per
 * thread is O((L / CEMA_TILE) * N * CEMA_BLOCK); time is about three forward walks. */
#include <string.h>

#include "cpu_real.h"

#define CEMA_MAX_N 64
#define CEMA_TILE 64  /* time steps per tile = checkpoint spacing of the backward */
#define CEMA_BLOCK 16 /* channels per task: the SIMD lanes of every inner loop */

typedef double cema_t; /* internal precision, see the header comment */

static double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

static void cema_validate(const MgCemaArgs *a, const char *op, int backward) {
    MG_CHECK(a->N >= 1 && a->N <= CEMA_MAX_N,
             "%s: CEMA order N=%d is outside [1, %d] (the CPU kernel sizes its per-thread state buffers "
             "for at most %d; use cema_order <= %d)",
             op, a->N, CEMA_MAX_N, CEMA_MAX_N, CEMA_MAX_N);
    MG_CHECK(a->B >= 1 && a->L >= 1 && a->D >= 1, "%s: B, L and D must all be >= 1 (got B=%d L=%d D=%d)", op,
             a->B, a->L, a->D);
    MG_CHECK(a->x && a->alpha && a->delta && a->theta && a->gamma && a->omega,
             "%s: x, alpha, delta, theta, gamma and omega must not be NULL", op);
    if (!backward) MG_CHECK(a->y || a->h_out, "%s: nothing to compute (y and h_out are both NULL)", op);
    else MG_CHECK(a->dy, "%s: dy must not be NULL", op);
}

/* Threads only pay off above a few tens of microseconds of work (gradient checks call tiny sizes). */
MG_MAYBE_UNUSED static int cema_parallel(const MgCemaArgs *a) { return (double)a->B * a->L * a->D * a->N >= 65536.0; }

/* p, Re q, Im q, Re gamma, Im gamma laid out per channel block as [block][n][c], c = channel within the
 * block. The lanes of a partial last block are zero: their states stay 0 and contribute nothing. */
typedef struct {
    cema_t *buf, *p, *qr, *qi, *gr, *gi;
} CemaCoef;

static void cema_coef(const MgBackend *be, const MgCemaArgs *a, CemaCoef *c) {
    const int D = a->D, N = a->N, nblk = (D + CEMA_BLOCK - 1) / CEMA_BLOCK;
    const size_t sz = (size_t)nblk * N * CEMA_BLOCK;
    const real *alpha = a->alpha, *delta = a->delta, *theta = a->theta, *gamma = a->gamma;
    c->buf = cpu_ws_shared(be, 0, 5 * sz * sizeof(cema_t));
    memset(c->buf, 0, 5 * sz * sizeof(cema_t));
    c->p = c->buf;
    c->qr = c->p + sz;
    c->qi = c->qr + sz;
    c->gr = c->qi + sz;
    c->gi = c->gr + sz;
    const double inv_sqrt_n = 1.0 / sqrt((double)N), base = 2.0 * M_PI / N;
    for (int j = 0; j < D; j++) {
        const double om = sigmoid((double)theta[j]);
        for (int n = 0; n < N; n++) {
            const size_t i = (size_t)j * N + n;
            const size_t o = ((size_t)(j / CEMA_BLOCK) * N + n) * CEMA_BLOCK + j % CEMA_BLOCK;
            const double al = sigmoid((double)alpha[i]), de = sigmoid((double)delta[i]);
            const double r = 1.0 - al * de, th = (n + 1) * base * om;
            c->p[o] = al;
            c->qr[o] = r * cos(th);
            c->qi[o] = r * sin(th);
            c->gr[o] = (double)gamma[2 * i] * inv_sqrt_n;
            c->gi[o] = (double)gamma[2 * i + 1] * inv_sqrt_n;
        }
    }
}

/* Gather rows t0..t0+tl-1 of the block's cw channels of a (B, L, D) tensor into tile[tt][c] (zero lanes
 * past cw). */
static void load_tile(const real *src, int L, int D, int b, int t0, int tl, int j0, int cw, cema_t *tile) {
    for (int tt = 0; tt < tl; tt++) {
        const real *row = src + ((size_t)b * L + t0 + tt) * D + j0;
        cema_t *dst = tile + (size_t)tt * CEMA_BLOCK;
        int c = 0;
        for (; c < cw; c++) dst[c] = (cema_t)row[c];
        for (; c < CEMA_BLOCK; c++) dst[c] = 0;
    }
}

/* (B, D, N, 2) interleaved state of channels j0..j0+cw-1 <-> split [n][c] arrays (zero lanes past cw). */
static void load_state(const real *h, int b, int D, int N, int j0, int cw, cema_t *hr, cema_t *hi) {
    memset(hr, 0, sizeof(cema_t) * (size_t)N * CEMA_BLOCK);
    memset(hi, 0, sizeof(cema_t) * (size_t)N * CEMA_BLOCK);
    if (!h) return;
    for (int c = 0; c < cw; c++) {
        const real *src = h + ((size_t)b * D + j0 + c) * N * 2;
        for (int n = 0; n < N; n++) {
            hr[n * CEMA_BLOCK + c] = (cema_t)src[2 * n];
            hi[n * CEMA_BLOCK + c] = (cema_t)src[2 * n + 1];
        }
    }
}

static void store_state(real *h, int b, int D, int N, int j0, int cw, const cema_t *hr, const cema_t *hi) {
    for (int c = 0; c < cw; c++) {
        real *dst = h + ((size_t)b * D + j0 + c) * N * 2;
        for (int n = 0; n < N; n++) {
            dst[2 * n] = (real)hr[n * CEMA_BLOCK + c];
            dst[2 * n + 1] = (real)hi[n * CEMA_BLOCK + c];
        }
    }
}

/* Run order n's states (hr, hi)[c] through tl steps of the tile xb. If yb is not NULL, add
 * Re(gamma_n h_t) to yb[tt]; if (sr, si) are not NULL, record h_t there ([tt][c]). The loop over c is one
 * SIMD vector with no cross-lane work; the state lives in registers across tt. */
static inline void run_order(const cema_t *restrict p, const cema_t *restrict qr, const cema_t *restrict qi,
                             const cema_t *restrict gr, const cema_t *restrict gi, cema_t *restrict hr,
                             cema_t *restrict hi, const cema_t *restrict xb, cema_t *restrict yb, int tl,
                             cema_t *restrict sr, cema_t *restrict si) {
    cema_t r[CEMA_BLOCK], i[CEMA_BLOCK];
    for (int c = 0; c < CEMA_BLOCK; c++) {
        r[c] = hr[c];
        i[c] = hi[c];
    }
    for (int tt = 0; tt < tl; tt++) {
        const cema_t *restrict xt = xb + (size_t)tt * CEMA_BLOCK;
#pragma omp simd
        for (int c = 0; c < CEMA_BLOCK; c++) {
            const cema_t re = qr[c] * r[c] - qi[c] * i[c] + p[c] * xt[c];
            const cema_t im = qr[c] * i[c] + qi[c] * r[c];
            r[c] = re;
            i[c] = im;
        }
        if (yb) {
            cema_t *restrict yt = yb + (size_t)tt * CEMA_BLOCK;
#pragma omp simd
            for (int c = 0; c < CEMA_BLOCK; c++) yt[c] += gr[c] * r[c] - gi[c] * i[c];
        }
        if (sr) {
#pragma omp simd
            for (int c = 0; c < CEMA_BLOCK; c++) {
                sr[(size_t)tt * CEMA_BLOCK + c] = r[c];
                si[(size_t)tt * CEMA_BLOCK + c] = i[c];
            }
        }
    }
    for (int c = 0; c < CEMA_BLOCK; c++) {
        hr[c] = r[c];
        hi[c] = i[c];
    }
}

void CPU_FN(cema_forward)(const MgBackend *be, const MgCemaArgs *a) {
    cema_validate(a, "cema_forward", 0);
    const int B = a->B, L = a->L, D = a->D, N = a->N, nblk = (D + CEMA_BLOCK - 1) / CEMA_BLOCK;
    const real *omega = a->omega;
    real *y = a->y;
    CemaCoef cf;
    cema_coef(be, a, &cf);
    const size_t S = (size_t)N * CEMA_BLOCK, T = (size_t)CEMA_TILE * CEMA_BLOCK;
    cpu_ws_reserve(be, 0, sizeof(cema_t) * (2 * S + 2 * T));

#pragma omp parallel if (cema_parallel(a))
    {
        cema_t *hr = cpu_ws_thread(be, 0);
        cema_t *hi = hr + S, *xb = hi + S, *yb = y ? xb + T : NULL; /* no output: state only */
#pragma omp for schedule(static)
        for (int task = 0; task < B * nblk; task++) {
            const int b = task / nblk, blk = task % nblk, j0 = blk * CEMA_BLOCK;
            const int cw = MG_MIN(CEMA_BLOCK, D - j0);
            const size_t ko = (size_t)blk * N * CEMA_BLOCK;
            cema_t om[CEMA_BLOCK] = {0};
            for (int c = 0; c < cw; c++) om[c] = (cema_t)omega[j0 + c];
            load_state(a->h_in, b, D, N, j0, cw, hr, hi);
            for (int t0 = 0; t0 < L; t0 += CEMA_TILE) {
                const int tl = MG_MIN(CEMA_TILE, L - t0);
                load_tile(a->x, L, D, b, t0, tl, j0, cw, xb);
                if (yb)
                    for (size_t k = 0; k < (size_t)tl * CEMA_BLOCK; k++) yb[k] = om[k % CEMA_BLOCK] * xb[k];
                for (int n = 0; n < N; n++) {
                    const size_t o = ko + (size_t)n * CEMA_BLOCK;
                    run_order(cf.p + o, cf.qr + o, cf.qi + o, cf.gr + o, cf.gi + o, hr + n * CEMA_BLOCK,
                              hi + n * CEMA_BLOCK, xb, yb, tl, NULL, NULL);
                }
                for (int tt = 0; yb && tt < tl; tt++) {
                    real *row = y + ((size_t)b * L + t0 + tt) * D + j0;
                    for (int c = 0; c < cw; c++) row[c] = (real)yb[(size_t)tt * CEMA_BLOCK + c];
                }
            }
            if (a->h_out) store_state(a->h_out, b, D, N, j0, cw, hr, hi);
        }
    }
}

/* Per-(b, channel, n) sums of dL/dp and of the complex gradients of q and gamma (5 values), and per
 * (b, channel) dL/domega; summed over b in order afterwards so the result is thread-count independent. */
enum { P_P = 0, P_QR, P_QI, P_GR, P_GI, P_COUNT };

void CPU_FN(cema_backward)(const MgBackend *be, const MgCemaArgs *a) {
    cema_validate(a, "cema_backward", 1);
    const int B = a->B, L = a->L, D = a->D, N = a->N, nblk = (D + CEMA_BLOCK - 1) / CEMA_BLOCK;
    const int ntile = (L + CEMA_TILE - 1) / CEMA_TILE;
    real *dx = a->dx;
    const int acc = a->accumulate;
    const int need_params = a->dalpha || a->ddelta || a->dtheta || a->dgamma || a->domega;
    CemaCoef cf;
    cema_coef(be, a, &cf);

    double *part = NULL, *part_om = NULL;
    if (need_params) {
        part = cpu_ws_shared(be, 1, (size_t)B * D * N * P_COUNT * sizeof(double));
        part_om = cpu_ws_shared(be, 2, (size_t)B * D * sizeof(double));
    }
    /* Per-thread scratch. State-shaped arrays are [n][c] (S slots), tiles [tt][c] (T slots). */
    const size_t S = (size_t)N * CEMA_BLOCK, T = (size_t)CEMA_TILE * CEMA_BLOCK;
    cpu_ws_reserve(be, 0, (size_t)ntile * 2 * S * sizeof(cema_t));
    cpu_ws_reserve(be, 1, ((2 + P_COUNT) * S + 5 * T) * sizeof(cema_t));

#pragma omp parallel if (cema_parallel(a))
    {
        cema_t *ckpt = cpu_ws_thread(be, 0); /* state entering each tile */
        cema_t *work = cpu_ws_thread(be, 1);
        cema_t *lr = work, *li = lr + S; /* carry conj(q) lambda_{t+1}; dh_out before the last step */
        cema_t *G = li + S;              /* P_COUNT sums over t, [v][n][c] */
        cema_t *xb = G + P_COUNT * S, *dyb = xb + T, *dxb = dyb + T, *sr = dxb + T, *si = sr + T;
#pragma omp for schedule(static)
        for (int task = 0; task < B * nblk; task++) {
            const int b = task / nblk, blk = task % nblk, j0 = blk * CEMA_BLOCK;
            const int cw = MG_MIN(CEMA_BLOCK, D - j0);
            const size_t ko = (size_t)blk * N * CEMA_BLOCK;
            cema_t om[CEMA_BLOCK] = {0}, gom[CEMA_BLOCK] = {0};
            for (int c = 0; c < cw; c++) om[c] = (cema_t)((const real *)a->omega)[j0 + c];
            memset(G, 0, P_COUNT * S * sizeof(cema_t));

            /* Pass 1: checkpoints, ckpt[k] = state entering tile k (h_in for k = 0). */
            load_state(a->h_in, b, D, N, j0, cw, ckpt, ckpt + S);
            for (int k = 0; k + 1 < ntile; k++) {
                cema_t *next = ckpt + (size_t)(k + 1) * 2 * S;
                memcpy(next, ckpt + (size_t)k * 2 * S, 2 * S * sizeof(cema_t));
                load_tile(a->x, L, D, b, k * CEMA_TILE, CEMA_TILE, j0, cw, xb);
                for (int n = 0; n < N; n++) {
                    const size_t o = ko + (size_t)n * CEMA_BLOCK;
                    run_order(cf.p + o, cf.qr + o, cf.qi + o, cf.gr + o, cf.gi + o, next + n * CEMA_BLOCK,
                              next + S + n * CEMA_BLOCK, xb, NULL, CEMA_TILE, NULL, NULL);
                }
            }

            load_state(a->dh_out, b, D, N, j0, cw, lr, li);

            /* Pass 2: tiles from the last to the first; per order n, recompute the tile's states, then
             * walk back through it. */
            for (int k = ntile - 1; k >= 0; k--) {
                const int t0 = k * CEMA_TILE, tl = MG_MIN(CEMA_TILE, L - t0);
                const cema_t *ck = ckpt + (size_t)k * 2 * S;
                load_tile(a->x, L, D, b, t0, tl, j0, cw, xb);
                load_tile(a->dy, L, D, b, t0, tl, j0, cw, dyb);
                for (size_t q = 0; q < (size_t)tl * CEMA_BLOCK; q++) {
                    dxb[q] = om[q % CEMA_BLOCK] * dyb[q];
                    gom[q % CEMA_BLOCK] += dyb[q] * xb[q];
                }
                for (int n = 0; n < N; n++) {
                    const size_t o = ko + (size_t)n * CEMA_BLOCK, on = (size_t)n * CEMA_BLOCK;
                    const cema_t *restrict p = cf.p + o, *restrict qr = cf.qr + o, *restrict qi = cf.qi + o;
                    const cema_t *restrict gr = cf.gr + o, *restrict gi = cf.gi + o;
                    cema_t hr0[CEMA_BLOCK], hi0[CEMA_BLOCK];
                    memcpy(hr0, ck + on, sizeof hr0);
                    memcpy(hi0, ck + S + on, sizeof hi0);
                    run_order(p, qr, qi, gr, gi, hr0, hi0, xb, NULL, tl, sr, si);
                    cema_t Lr[CEMA_BLOCK], Li[CEMA_BLOCK], gp[CEMA_BLOCK], gqr[CEMA_BLOCK], gqi[CEMA_BLOCK];
                    cema_t ggr[CEMA_BLOCK], ggi[CEMA_BLOCK];
                    for (int c = 0; c < CEMA_BLOCK; c++) {
                        Lr[c] = lr[on + c];
                        Li[c] = li[on + c];
                        gp[c] = gqr[c] = gqi[c] = ggr[c] = ggi[c] = 0;
                    }
                    for (int tt = tl - 1; tt >= 0; tt--) {
                        const cema_t *restrict ar = tt > 0 ? sr + (size_t)(tt - 1) * CEMA_BLOCK : ck + on;
                        const cema_t *restrict ai = tt > 0 ? si + (size_t)(tt - 1) * CEMA_BLOCK : ck + S + on;
                        const cema_t *restrict cr = sr + (size_t)tt * CEMA_BLOCK;
                        const cema_t *restrict ci = si + (size_t)tt * CEMA_BLOCK;
                        const cema_t *restrict xt = xb + (size_t)tt * CEMA_BLOCK;
                        const cema_t *restrict dyt = dyb + (size_t)tt * CEMA_BLOCK;
                        cema_t *restrict dxt = dxb + (size_t)tt * CEMA_BLOCK;
#pragma omp simd
                        for (int c = 0; c < CEMA_BLOCK; c++) {
                            const cema_t lre = dyt[c] * gr[c] + Lr[c]; /* lambda_t */
                            const cema_t lim = Li[c] - dyt[c] * gi[c];
                            dxt[c] += p[c] * lre;
                            gp[c] += lre * xt[c];
                            gqr[c] += lre * ar[c] + lim * ai[c];
                            gqi[c] += lim * ar[c] - lre * ai[c];
                            ggr[c] += dyt[c] * cr[c];
                            ggi[c] -= dyt[c] * ci[c];
                            Lr[c] = qr[c] * lre + qi[c] * lim; /* conj(q) lambda_t */
                            Li[c] = qr[c] * lim - qi[c] * lre;
                        }
                    }
                    for (int c = 0; c < CEMA_BLOCK; c++) {
                        lr[on + c] = Lr[c];
                        li[on + c] = Li[c];
                        G[P_P * S + on + c] += gp[c];
                        G[P_QR * S + on + c] += gqr[c];
                        G[P_QI * S + on + c] += gqi[c];
                        G[P_GR * S + on + c] += ggr[c];
                        G[P_GI * S + on + c] += ggi[c];
                    }
                }
                if (dx) {
                    for (int tt = 0; tt < tl; tt++) {
                        real *row = dx + ((size_t)b * L + t0 + tt) * D + j0;
                        const cema_t *src = dxb + (size_t)tt * CEMA_BLOCK;
                        for (int c = 0; c < cw; c++) row[c] = acc ? (real)((cema_t)row[c] + src[c]) : (real)src[c];
                    }
                }
            }
            /* After t = 0 the carry is conj(q) lambda_0 = dL/dh_in. */
            if (a->dh_in) store_state(a->dh_in, b, D, N, j0, cw, lr, li);
            if (need_params) {
                for (int c = 0; c < cw; c++) {
                    double *dst = part + ((size_t)b * D + j0 + c) * N * P_COUNT;
                    for (int v = 0; v < P_COUNT; v++)
                        for (int n = 0; n < N; n++) dst[v * N + n] = G[v * S + (size_t)n * CEMA_BLOCK + c];
                    part_om[(size_t)b * D + j0 + c] = gom[c];
                }
            }
        }
    }

    if (need_params) {
        /* Chain p, q, gamma to the raw parameters (§11.1), with q = r e^{i theta}, r = 1 - alpha delta. */
        const real *alpha = a->alpha, *delta = a->delta, *theta = a->theta;
        real *dalpha = a->dalpha, *ddelta = a->ddelta, *dtheta = a->dtheta, *dgamma = a->dgamma;
        real *domega = a->domega;
        const double inv_sqrt_n = 1.0 / sqrt((double)N), base = 2.0 * M_PI / N;
#pragma omp parallel for schedule(static) if (cema_parallel(a))
        for (int j = 0; j < D; j++) {
            const double om = sigmoid((double)theta[j]);
            double dth = 0.0;
            for (int n = 0; n < N; n++) {
                double g[P_COUNT] = {0};
                for (int b = 0; b < B; b++) {
                    const double *src = part + ((size_t)b * D + j) * N * P_COUNT;
                    for (int v = 0; v < P_COUNT; v++) g[v] += src[v * N + n];
                }
                const size_t i = (size_t)j * N + n;
                const double al = sigmoid((double)alpha[i]), de = sigmoid((double)delta[i]);
                const double r = 1.0 - al * de, th = (n + 1) * base * om;
                const double c = cos(th), sn = sin(th);
                const double d_r = g[P_QR] * c + g[P_QI] * sn;
                const double d_th = g[P_QI] * (r * c) - g[P_QR] * (r * sn); /* Im(gq conj(q)) */
                if (dalpha) dalpha[i] = (real)((double)dalpha[i] + (g[P_P] - de * d_r) * al * (1.0 - al));
                if (ddelta) ddelta[i] = (real)((double)ddelta[i] - al * d_r * de * (1.0 - de));
                if (dgamma) {
                    dgamma[2 * i] = (real)((double)dgamma[2 * i] + g[P_GR] * inv_sqrt_n);
                    dgamma[2 * i + 1] = (real)((double)dgamma[2 * i + 1] + g[P_GI] * inv_sqrt_n);
                }
                dth += d_th * (n + 1) * base;
            }
            if (dtheta) dtheta[j] = (real)((double)dtheta[j] + dth * om * (1.0 - om));
            if (domega) {
                double so = 0.0;
                for (int b = 0; b < B; b++) so += part_om[(size_t)b * D + j];
                domega[j] = (real)((double)domega[j] + so);
            }
        }
    }
}
