/* TimestepNorm (spec §3, gradients §11.2; CPU reference kernels/cpu/timestep_norm.c): a causal grouped
 * mean/variance over time, merged token by token with the block-Welford (Chan) update, then the affine
 * normalisation with scale (1 + w) and offset b.
 *
 * Time is cut into chunks of TSN_C steps (K = ceil(L / TSN_C) per batch row), and every pass over the
 * activations is parallel over (batch row, chunk); only short passes over the K chunk summaries per
 * (batch row, group) are sequential, so B = 1 with a long L keeps the GPU busy.
 *
 * Forward
 *   1. k_tsn_fwd_chunk, a block per (b, chunk): per valid (step, group) the token moments
 *      m = mean_i x, s = mean_i (x - m)^2 (a sub-warp of W lanes per pair, W = pow2 >= D/G/8 so that a
 *      lane sums ~8 channels; two passes over the group's channels), stored in scratch; then one thread
 *      per group merges the chunk's steps in time order (the CPU's per-token update, in double) into the
 *      chunk summary (n, mean, var).
 *   2. k_tsn_fwd_scan, a warp per (b, group): an exclusive scan of the K chunk summaries with the Chan
 *      merge (each lane merges a contiguous run of chunks, then a fixed-shape shuffle scan over the 32
 *      lanes, then each lane re-walks its run), with the carried-in state merged in front. It gives each
 *      chunk's carried-in state and the carried-out state (count_out, mean_out, var_out).
 *   3. k_tsn_fwd_out, a block per (b, chunk) (skipped when y == NULL, statistics only): one thread per
 *      group walks the chunk's steps from the chunk's carried-in state with the CPU's per-token update
 *      (double), writing saved_mean/saved_rstd; then one thread per channel (coalesced over the row)
 *      writes y for the chunk's steps.
 * A merge with an empty side returns the other side unchanged, so a fresh or all-padded prefix keeps the
 * carried-in (mean, var) exactly as the CPU does, and padded steps leave the state alone.
 *
 * Backward. Going back over a valid step t, the gradient (U, V) w.r.t. the running (mean, var) maps as
 *   U <- c1 (U - r sa) - 2 c1 c2 d (V - r^3 ss / 2),   V <- c1 (V - r^3 ss / 2)
 * (c2 = 1/n, c1 = (n-1)/n, d = m_t - mean_{t-1}, sa = sum_i dy (1+w), ss = sum_i dy (1+w)(x - mean_t)):
 * an affine map (U, V) -> (a U + b V + e, a V + f), closed under composition. So:
 *   0. k_tsn_counts, a block per b: the count of valid steps before each chunk (an integer scan).
 *   1. k_tsn_bwd_chunk, a block per (b, chunk): per (step, group) m, sa, ss (sub-warp reductions), then one
 *      thread per group composes the chunk's step maps (reverse time) into the chunk map (in double).
 *   2. k_tsn_bwd_scan, a warp per (b, group): a reverse exclusive scan of the chunk maps applied to
 *      (dmean_out, dvar_out): (U, V) at the end of every chunk, and dmean_in/dvar_in.
 *   3. k_tsn_bwd_out, a block per (b, chunk): one thread per group re-walks the chunk backwards from its
 *      (U, V) with the CPU's formulas, giving the per-step coefficients of dx; then one thread per channel
 *      writes dx for the chunk's steps and sums the chunk's dweight/dbias terms (a column partial).
 *   4. k_tsn_colsum: the partials summed per channel over (b, chunk) in a fixed order, added to dw/db.
 *
 * Determinism: no atomics; every sum and merge has a fixed order and a fixed tree (the shuffle scans have
 * a fixed shape), independent of timing. Precision: token moments and per-chunk column sums in fp32; the
 * running statistics, chunk summaries, maps and scans in double (cheap: they are per (step, group), not
 * per element); saved statistics and carried states are float (the state dtype). */
#include <math.h>

#include "cu_internal.cuh"

namespace mgcu {

enum { TSN_C = 32, TSN_THREADS = 256 };

/* ---- running statistics: (n tokens, mean, population variance); n == 0 is the empty summary ---------- */
struct TsnStat {
    double n, mu, var;
};

/* Chan merge of a (earlier) and b (later); b == (1, m, s) is the CPU's per-token update with c = 1/n. */
MG_DEV TsnStat tsn_merge(TsnStat a, TsnStat b) {
    if (b.n == 0.0) return a;
    if (a.n == 0.0) return b;
    TsnStat r;
    r.n = a.n + b.n;
    const double c = b.n / r.n, d = b.mu - a.mu;
    r.mu = a.mu + c * d;
    r.var = (1.0 - c) * a.var + c * b.var + c * (1.0 - c) * d * d;
    return r;
}

/* The CPU's token update (n += 1; c = 1/n; ...), also from an empty state (then the token replaces it). */
MG_DEV TsnStat tsn_step(TsnStat s, double m, double v) {
    s.n += 1.0;
    const double c = 1.0 / s.n, d = m - s.mu;
    s.mu += c * d;
    s.var = (1.0 - c) * s.var + c * v + c * (1.0 - c) * d * d;
    return s;
}

MG_DEV TsnStat shfl_up_stat(TsnStat s, int o) {
    s.n = __shfl_up_sync(0xffffffffu, s.n, o);
    s.mu = __shfl_up_sync(0xffffffffu, s.mu, o);
    s.var = __shfl_up_sync(0xffffffffu, s.var, o);
    return s;
}

/* ---- affine maps of the backward: (U, V) -> (a U + b V + e, a V + f) -------------------------------- */
struct TsnMap {
    double a, b, e, f;
};

MG_DEV TsnMap map_id() { return TsnMap{1.0, 0.0, 0.0, 0.0}; }

/* p o q: apply q first, then p. */
MG_DEV TsnMap map_compose(TsnMap p, TsnMap q) {
    TsnMap r;
    r.a = p.a * q.a;
    r.b = p.a * q.b + p.b * q.a;
    r.e = p.a * q.e + p.b * q.f + p.e;
    r.f = p.a * q.f + p.f;
    return r;
}

MG_DEV TsnMap shfl_down_map(TsnMap m, int o) {
    m.a = __shfl_down_sync(0xffffffffu, m.a, o);
    m.b = __shfl_down_sync(0xffffffffu, m.b, o);
    m.e = __shfl_down_sync(0xffffffffu, m.e, o);
    m.f = __shfl_down_sync(0xffffffffu, m.f, o);
    return m;
}

/* Sum over aligned groups of W lanes (W a power of two <= 32; the whole warp calls it). */
MG_DEV float sub_sum(float v, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

MG_DEV int imin(int a, int b) { return a < b ? a : b; }

MG_DEV bool is_pad(const uint8_t *mask, int64_t row) { return mask && mask[row]; }

/* ---- forward ------------------------------------------------------------------------------------------ */

/* Block (chunk k, batch row b). ms: B x L x G x 2 (m, s) of valid steps; summ: B x K x G x 3. */
template <class T>
__global__ void __launch_bounds__(TSN_THREADS, 4) k_tsn_fwd_chunk(int L, int D, int G, int dg, int W, int K, const T *x, const uint8_t *mask, float *ms,
                                double *summ) {
    const int k = blockIdx.x, b = blockIdx.y, t0 = k * TSN_C, nt = imin(TSN_C, L - t0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int per_warp = 32 / W, sub = lane / W, sl = lane % W, npairs = nt * G;
    const float inv_dg = 1.0f / (float)dg;
    for (int base = warp * per_warp; base < npairs; base += nwarps * per_warp) {
        const int p = base + sub;
        const int tl = p < npairs ? p / G : 0, g = p < npairs ? p % G : 0;
        const int64_t row = (int64_t)b * L + t0 + tl;
        const bool valid = p < npairs && !is_pad(mask, row);
        const T *xp = x + row * D + (int64_t)g * dg;
        float s1 = 0.0f;
        if (valid)
            for (int i = sl; i < dg; i += W) s1 += to_f(xp[i]);
        const float m = sub_sum(s1, W) * inv_dg;
        float s2 = 0.0f;
        if (valid)
            for (int i = sl; i < dg; i += W) {
                const float d = to_f(xp[i]) - m;
                s2 += d * d;
            }
        s2 = sub_sum(s2, W) * inv_dg;
        if (valid && sl == 0) {
            ms[(row * G + g) * 2] = m;
            ms[(row * G + g) * 2 + 1] = s2;
        }
    }
    __syncthreads(); /* the moments are read back by other threads of the block */
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        TsnStat s{0.0, 0.0, 0.0};
        for (int tl = 0; tl < nt; tl++) {
            const int64_t row = (int64_t)b * L + t0 + tl;
            if (is_pad(mask, row)) continue;
            s = tsn_step(s, (double)ms[(row * G + g) * 2], (double)ms[(row * G + g) * 2 + 1]);
        }
        double *o = summ + (((int64_t)b * K + k) * G + g) * 3;
        o[0] = s.n, o[1] = s.mu, o[2] = s.var;
    }
}

/* A warp per (b, g). carry: B x K x G x 3, the state before each chunk. */
__global__ void k_tsn_fwd_scan(int B, int G, int K, const int64_t *count_in, const float *mean_in, const float *var_in,
                               const double *summ, double *carry, int64_t *count_out, float *mean_out,
                               float *var_out) {
    const int lane = threadIdx.x & 31;
    const int w = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (w >= B * G) return; /* the whole warp */
    const int b = w / G, g = w % G;
    const int per = (K + 31) / 32, lo = imin(K, lane * per), hi = imin(K, lo + per);
    auto chunk = [&](int k) {
        const double *s = summ + (((int64_t)b * K + k) * G + g) * 3;
        return TsnStat{s[0], s[1], s[2]};
    };
    TsnStat acc{0.0, 0.0, 0.0};
    for (int k = lo; k < hi; k++) acc = tsn_merge(acc, chunk(k));
    for (int o = 1; o < 32; o <<= 1) { /* inclusive scan over the lanes, fixed shape */
        const TsnStat prev = shfl_up_stat(acc, o);
        if (lane >= o) acc = tsn_merge(prev, acc);
    }
    TsnStat excl = shfl_up_stat(acc, 1);
    if (lane == 0) excl = TsnStat{0.0, 0.0, 0.0};
    /* a negative count can only come from a corrupted state: treat it as fresh (as the CPU does) */
    const int64_t n0 = count_in && count_in[b] > 0 ? count_in[b] : 0;
    const TsnStat in{(double)n0, mean_in ? (double)mean_in[(int64_t)b * G + g] : 0.0,
                     var_in ? (double)var_in[(int64_t)b * G + g] : 1.0};
    TsnStat cur = tsn_merge(in, excl);
    for (int k = lo; k < hi; k++) {
        double *c = carry + (((int64_t)b * K + k) * G + g) * 3;
        c[0] = cur.n, c[1] = cur.mu, c[2] = cur.var;
        cur = tsn_merge(cur, chunk(k));
    }
    if (lane == 31) { /* its run ends at chunk K-1 (or is empty and starts after it): the final state */
        if (count_out && g == 0) count_out[b] = n0 + (int64_t)acc.n; /* acc.n: the valid steps, exact */
        if (mean_out) mean_out[(int64_t)b * G + g] = (float)cur.mu;
        if (var_out) var_out[(int64_t)b * G + g] = (float)cur.var;
    }
}

/* Block (chunk k, batch row b): the saved statistics, then y. */
template <class T>
__global__ void __launch_bounds__(TSN_THREADS, 4) k_tsn_fwd_out(int L, int D, int G, int dg, int K, double eps, const T *x, const uint8_t *mask,
                              const T *weight, const T *bias, const float *ms, const double *carry, float *smean,
                              float *srstd, T *y) {
    const int k = blockIdx.x, b = blockIdx.y, t0 = k * TSN_C, nt = imin(TSN_C, L - t0);
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        const double *c = carry + (((int64_t)b * K + k) * G + g) * 3;
        TsnStat s{c[0], c[1], c[2]};
        for (int tl = 0; tl < nt; tl++) {
            const int64_t row = (int64_t)b * L + t0 + tl;
            if (!is_pad(mask, row)) s = tsn_step(s, (double)ms[(row * G + g) * 2], (double)ms[(row * G + g) * 2 + 1]);
            smean[row * G + g] = (float)s.mu;
            srstd[row * G + g] = (float)(1.0 / sqrt(s.var + eps));
        }
    }
    __syncthreads(); /* saved_* of the chunk are read back by the channel threads */
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const int g = j / dg;
        const float sc = 1.0f + to_f(weight[j]), bj = to_f(bias[j]);
        for (int tl = 0; tl < nt; tl++) {
            const int64_t row = (int64_t)b * L + t0 + tl;
            float v = 0.0f;
            if (!is_pad(mask, row)) v = (to_f(x[row * D + j]) - smean[row * G + g]) * srstd[row * G + g] * sc + bj;
            y[row * D + j] = from_f<T>(v);
        }
    }
}

/* ---- backward ----------------------------------------------------------------------------------------- */

/* Block per b: nstart[b][k] = clamped count_in + valid steps before chunk k, k = 0..K. */
__global__ void k_tsn_counts(int L, int K, const int64_t *count_in, const uint8_t *mask, int64_t *nstart) {
    __shared__ int64_t tot[TSN_THREADS];
    const int b = blockIdx.x, tid = threadIdx.x, nth = blockDim.x;
    const int per = (K + nth - 1) / nth, lo = imin(K, tid * per), hi = imin(K, lo + per);
    int64_t cnt = 0;
    for (int t = lo * TSN_C; t < imin(L, hi * TSN_C); t++) cnt += !is_pad(mask, (int64_t)b * L + t);
    tot[tid] = cnt;
    __syncthreads();
    if (tid == 0) { /* exclusive scan over the threads' runs (blockDim values, integer: order-free) */
        int64_t run = count_in && count_in[b] > 0 ? count_in[b] : 0;
        for (int i = 0; i < nth; i++) {
            const int64_t v = tot[i];
            tot[i] = run;
            run += v;
        }
        nstart[(int64_t)b * (K + 1) + K] = run;
    }
    __syncthreads();
    int64_t run = tot[tid];
    for (int k = lo; k < hi; k++) {
        nstart[(int64_t)b * (K + 1) + k] = run;
        for (int t = k * TSN_C; t < imin(L, (k + 1) * TSN_C); t++) run += !is_pad(mask, (int64_t)b * L + t);
    }
}

MG_DEV double tsn_mu_prev(const float *smean, const float *mean_in, int G, int g, int b, int t, int64_t row) {
    return t > 0 ? (double)smean[(row - 1) * G + g] : (mean_in ? (double)mean_in[(int64_t)b * G + g] : 0.0);
}

/* Block (chunk k, batch row b). red: B x L x G x 3 (m, sa, ss); maps: B x K x G x 4. */
template <class T>
__global__ void __launch_bounds__(TSN_THREADS, 3) k_tsn_bwd_chunk(int L, int D, int G, int dg, int W, int K, const T *x, const uint8_t *mask,
                                const T *weight, const T *dy, const float *smean, const float *srstd,
                                const float *mean_in, const int64_t *nstart, float *red, double *maps) {
    const int k = blockIdx.x, b = blockIdx.y, t0 = k * TSN_C, nt = imin(TSN_C, L - t0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int per_warp = 32 / W, sub = lane / W, sl = lane % W, npairs = nt * G;
    for (int base = warp * per_warp; base < npairs; base += nwarps * per_warp) {
        const int p = base + sub;
        const int tl = p < npairs ? p / G : 0, g = p < npairs ? p % G : 0;
        const int64_t row = (int64_t)b * L + t0 + tl;
        const bool valid = p < npairs && !is_pad(mask, row);
        float sx = 0.0f, sa = 0.0f, ss = 0.0f;
        if (valid) {
            const float mu = smean[row * G + g];
            const int64_t o = row * D + (int64_t)g * dg;
            for (int i = sl; i < dg; i += W) {
                const float xi = to_f(x[o + i]), gi = to_f(dy[o + i]) * (1.0f + to_f(weight[g * dg + i]));
                sx += xi;
                sa += gi;
                ss += gi * (xi - mu);
            }
        }
        sx = sub_sum(sx, W);
        sa = sub_sum(sa, W);
        ss = sub_sum(ss, W);
        if (valid && sl == 0) {
            float *r = red + (row * G + g) * 3;
            r[0] = sx / (float)dg, r[1] = sa, r[2] = ss;
        }
    }
    __syncthreads(); /* the reductions are read back by the group threads */
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        double n = (double)nstart[(int64_t)b * (K + 1) + k + 1];
        TsnMap M = map_id();
        for (int tl = nt - 1; tl >= 0; tl--) {
            const int64_t row = (int64_t)b * L + t0 + tl;
            if (is_pad(mask, row)) continue;
            const float *rd = red + (row * G + g) * 3;
            const double r = (double)srstd[row * G + g];
            const double delta = (double)rd[0] - tsn_mu_prev(smean, mean_in, G, g, b, t0 + tl, row);
            const double c2 = 1.0 / n, c1 = (n - 1.0) / n, beta = -2.0 * c1 * c2 * delta;
            const double kU = -r * (double)rd[1], kV = -0.5 * r * r * r * (double)rd[2];
            M = map_compose(TsnMap{c1, beta, c1 * kU + beta * kV, c1 * kV}, M);
            n -= 1.0;
        }
        double *o = maps + (((int64_t)b * K + k) * G + g) * 4;
        o[0] = M.a, o[1] = M.b, o[2] = M.e, o[3] = M.f;
    }
}

/* A warp per (b, g). uv: B x K x G x 2, (U, V) at the end of each chunk. */
__global__ void k_tsn_bwd_scan(int B, int G, int K, const float *dmean_out, const float *dvar_out, const double *maps,
                               double *uv, float *dmean_in, float *dvar_in) {
    const int lane = threadIdx.x & 31;
    const int w = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
    if (w >= B * G) return; /* the whole warp */
    const int b = w / G, g = w % G;
    const int per = (K + 31) / 32, lo = imin(K, lane * per), hi = imin(K, lo + per);
    auto chunk = [&](int k) {
        const double *m = maps + (((int64_t)b * K + k) * G + g) * 4;
        return TsnMap{m[0], m[1], m[2], m[3]};
    };
    TsnMap R = map_id(); /* the lane's run: chunk lo's map o ... o chunk hi-1's map */
    for (int k = hi - 1; k >= lo; k--) R = map_compose(chunk(k), R);
    for (int o = 1; o < 32; o <<= 1) { /* inclusive suffix scan over the lanes, fixed shape */
        const TsnMap nx = shfl_down_map(R, o);
        if (lane + o < 32) R = map_compose(R, nx);
    }
    TsnMap E = shfl_down_map(R, 1);
    if (lane == 31) E = map_id();
    const int64_t bg = (int64_t)b * G + g;
    const double U0 = dmean_out ? (double)dmean_out[bg] : 0.0, V0 = dvar_out ? (double)dvar_out[bg] : 0.0;
    double U = E.a * U0 + E.b * V0 + E.e, V = E.a * V0 + E.f;
    for (int k = hi - 1; k >= lo; k--) {
        double *p = uv + (((int64_t)b * K + k) * G + g) * 2;
        p[0] = U, p[1] = V;
        const TsnMap M = chunk(k);
        const double u = M.a * U + M.b * V + M.e;
        V = M.a * V + M.f;
        U = u;
    }
    if (lane == 0) { /* its run starts at chunk 0: the gradient of the carried-in state */
        if (dmean_in) dmean_in[bg] = (float)U;
        if (dvar_in) dvar_in[bg] = (float)V;
    }
}

/* Block (chunk k, batch row b): dx and the chunk's column partials of dweight/dbias (part: 2 x B*K x D). */
template <class T>
__global__ void __launch_bounds__(TSN_THREADS, 4) k_tsn_bwd_out(int L, int D, int G, int dg, int K, const T *x, const uint8_t *mask, const T *weight,
                              const T *dy, const float *smean, const float *srstd, const float *mean_in,
                              const int64_t *nstart, float *red, const double *uv, T *dx, int acc, float *part) {
    const int k = blockIdx.x, b = blockIdx.y, t0 = k * TSN_C, nt = imin(TSN_C, L - t0);
    const float inv_dg = 1.0f / (float)dg;
    if (dx) {
        for (int g = threadIdx.x; g < G; g += blockDim.x) { /* the CPU's reverse walk over the chunk */
            const double *p = uv + (((int64_t)b * K + k) * G + g) * 2;
            double U = p[0], V = p[1], n = (double)nstart[(int64_t)b * (K + 1) + k + 1];
            for (int tl = nt - 1; tl >= 0; tl--) {
                const int64_t row = (int64_t)b * L + t0 + tl;
                if (is_pad(mask, row)) continue;
                float *rd = red + (row * G + g) * 3;
                const double r = (double)srstd[row * G + g];
                const double delta = (double)rd[0] - tsn_mu_prev(smean, mean_in, G, g, b, t0 + tl, row);
                const double dmu = U - r * (double)rd[1], dvar = V - 0.5 * r * r * r * (double)rd[2];
                const double c2 = 1.0 / n, c1 = (n - 1.0) / n;
                const double dm = c2 * dmu + 2.0 * c1 * c2 * delta * dvar, ds = c2 * dvar;
                U = c1 * dmu - 2.0 * c1 * c2 * delta * dvar;
                V = c1 * dvar;
                n -= 1.0;
                rd[1] = (float)dm * inv_dg; /* km: the mean term of dx */
                rd[2] = (float)(2.0 * ds) * inv_dg; /* ks: the coefficient of (x - m) */
            }
        }
        __syncthreads(); /* the coefficients are read back by the channel threads (uniform branch) */
    }
    const int64_t P = (int64_t)gridDim.y * K, pi = (int64_t)b * K + k;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const int g = j / dg;
        const float sc = 1.0f + to_f(weight[j]);
        float pw = 0.0f, pb = 0.0f;
        for (int tl = 0; tl < nt; tl++) {
            const int64_t row = (int64_t)b * L + t0 + tl, e = row * D + j;
            if (is_pad(mask, row)) {
                if (dx && !acc) dx[e] = from_f<T>(0.0f);
                continue;
            }
            const float dyv = to_f(dy[e]), xv = to_f(x[e]), r = srstd[row * G + g];
            if (dx) {
                const float *rd = red + (row * G + g) * 3;
                const float v = dyv * r * sc + rd[1] + rd[2] * (xv - rd[0]);
                dx[e] = from_f<T>(acc ? to_f(dx[e]) + v : v);
            }
            pw += dyv * r * (xv - smean[row * G + g]);
            pb += dyv;
        }
        if (part) {
            part[pi * D + j] = pw;
            part[(P + pi) * D + j] = pb;
        }
    }
}

/* Block (32 x 8) per 32 channels: sum the P partials of each channel in a fixed order, add to dw/db. */
template <class T> __global__ void k_tsn_colsum(int64_t P, int D, const float *part, T *dw, T *db) {
    __shared__ double sw[8][32], sb[8][32];
    const int tx = threadIdx.x, ty = threadIdx.y, j = blockIdx.x * 32 + tx;
    double aw = 0.0, ab = 0.0;
    if (j < D)
        for (int64_t p = ty; p < P; p += 8) {
            aw += (double)part[p * D + j];
            ab += (double)part[(P + p) * D + j];
        }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && j < D) {
        for (int i = 1; i < 8; i++) aw += sw[i][tx], ab += sb[i][tx];
        if (dw) dw[j] = from_f<T>((float)((double)to_f(dw[j]) + aw));
        if (db) db[j] = from_f<T>((float)((double)to_f(db[j]) + ab));
    }
}

/* ---- host wrappers ------------------------------------------------------------------------------------- */

/* Lanes per (step, group) pair: the power of two >= D/G / 8, at most a warp, so that a lane sums about 8
 * channels (good ILP) and the shuffle reductions over the W lanes stay short (log2 W steps per sum). */
static int tsn_lanes(int dg) {
    const int per_lane = (dg + 7) / 8;
    int w = 1;
    while (w < per_lane && w < 32) w <<= 1;
    return w;
}

static unsigned tsn_scan_blocks(int B, int G) { return (unsigned)(((int64_t)B * G + 3) / 4); } /* 4 warps each */

void timestep_norm_forward(const MgBackend *be, const MgTimestepNormArgs *a) {
    mg_timestep_norm_validate(a, "timestep_norm_forward", 0);
    const int B = a->B, L = a->L, D = a->D, G = a->G, dg = D / G, K = (L + TSN_C - 1) / TSN_C, W = tsn_lanes(dg);
    const size_t nstat = (size_t)B * L * G, nsum = (size_t)B * K * G;
    float *ms = (float *)ws(be, 0, sizeof(float) * 2 * nstat);
    double *summ = (double *)ws(be, 1, sizeof(double) * 3 * nsum);
    double *carry = (double *)ws(be, 2, sizeof(double) * 3 * nsum);
    const dim3 grid((unsigned)K, (unsigned)B);
    cudaStream_t st = stream(be);
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_tsn_fwd_chunk<T>), grid, TSN_THREADS, 0, st, L, D, G, dg, W, K,
                                    (const T *)a->x, a->pad_mask, ms, summ));
    MG_LAUNCH(k_tsn_fwd_scan, tsn_scan_blocks(B, G), 128, 0, st, B, G, K, a->count_in, (const float *)a->mean_in,
              (const float *)a->var_in, summ, carry, a->count_out, (float *)a->mean_out, (float *)a->var_out);
    if (!a->y) return; /* statistics only */
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_tsn_fwd_out<T>), grid, TSN_THREADS, 0, st, L, D, G, dg, K, a->eps,
                                    (const T *)a->x, a->pad_mask, (const T *)a->weight, (const T *)a->bias, ms,
                                    carry, (float *)a->saved_mean, (float *)a->saved_rstd, (T *)a->y));
}

void timestep_norm_backward(const MgBackend *be, const MgTimestepNormArgs *a) {
    mg_timestep_norm_validate(a, "timestep_norm_backward", 1);
    const int B = a->B, L = a->L, D = a->D, G = a->G, dg = D / G, K = (L + TSN_C - 1) / TSN_C, W = tsn_lanes(dg);
    const bool need_state = a->dx || a->dmean_in || a->dvar_in, need_params = a->dweight || a->dbias;
    if (!need_state && !need_params) return;
    const size_t nstat = (size_t)B * L * G, nsum = (size_t)B * K * G;
    const int64_t P = (int64_t)B * K;
    const dim3 grid((unsigned)K, (unsigned)B);
    cudaStream_t st = stream(be);
    float *red = NULL;
    double *uv = NULL;
    int64_t *nstart = NULL;
    if (need_state) {
        red = (float *)ws(be, 0, sizeof(float) * 3 * nstat);
        double *maps = (double *)ws(be, 1, sizeof(double) * 4 * nsum);
        uv = (double *)ws(be, 2, sizeof(double) * 2 * nsum);
        nstart = (int64_t *)ws(be, 3, sizeof(int64_t) * (size_t)B * (K + 1));
        MG_LAUNCH(k_tsn_counts, B, TSN_THREADS, 0, st, L, K, a->count_in, a->pad_mask, nstart);
        MG_CU_DISPATCH(be, T, MG_LAUNCH((k_tsn_bwd_chunk<T>), grid, TSN_THREADS, 0, st, L, D, G, dg, W, K,
                                        (const T *)a->x, a->pad_mask, (const T *)a->weight, (const T *)a->dy,
                                        (const float *)a->saved_mean, (const float *)a->saved_rstd,
                                        (const float *)a->mean_in, nstart, red, maps));
        MG_LAUNCH(k_tsn_bwd_scan, tsn_scan_blocks(B, G), 128, 0, st, B, G, K, (const float *)a->dmean_out,
                  (const float *)a->dvar_out, maps, uv, (float *)a->dmean_in, (float *)a->dvar_in);
    }
    if (!a->dx && !need_params) return;
    float *part = need_params ? (float *)ws(be, 4, sizeof(float) * 2 * (size_t)P * D) : NULL;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_tsn_bwd_out<T>), grid, TSN_THREADS, 0, st, L, D, G, dg, K, (const T *)a->x,
                                    a->pad_mask, (const T *)a->weight, (const T *)a->dy, (const float *)a->saved_mean,
                                    (const float *)a->saved_rstd, (const float *)a->mean_in, nstart, red, uv,
                                    (T *)a->dx, a->accumulate, part));
    if (need_params)
        MG_CU_DISPATCH(be, T, MG_LAUNCH((k_tsn_colsum<T>), (unsigned)((D + 31) / 32), dim3(32, 8), 0, st, P, D, part,
                                        (T *)a->dweight, (T *)a->dbias));
}

} /* namespace mgcu */
