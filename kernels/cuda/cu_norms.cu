/* Row normalisations: RMSNorm, LayerNorm and the shared-Z Q/K normalisation (the CPU reference is
 * kernels/cpu/norms.c; formulas in docs/ops/attention_norms.md).
 *
 * Algorithm
 *  - Forward: every row (T rows of D; for Q/K norm T*H rows of dz = Z/H, each head a row) is reduced by
 *    one "row group" of threads: a warp when the row has at most kWarpRowMax elements (several rows per
 *    block, one per warp), a whole block (up to 1024 threads) for longer rows. The threads of a group
 *    read the row with a stride of the group size (coalesced), sum in fp32, and the group sum is a fixed
 *    shuffle tree (warp_sum) or shuffle tree + per-warp partials in warp order (block_sum). LayerNorm uses
 *    two passes (mean, then the centred sum of squares), no E[x^2] - E[x]^2 cancellation. The statistics
 *    (rstd, mean) are saved in float; the output pass re-reads the row (it is in L1/L2 by then).
 *  - Backward, input gradient: the same row groups; per row the dot products mean(g*xh) (and mean(g) for
 *    LayerNorm) are group sums, then every element is written (or added to when `accumulate`).
 *  - Backward, parameter gradients (dweight/dbias, dgamma/dbeta): deterministic column sums over the rows
 *    in two fixed stages, like the bias gradient of cu_linear.cu. Stage 1: the rows are cut into nb
 *    contiguous row blocks (nb depends on the shape only: T and the width); a thread owns one column of
 *    one row block and sums its rows in order into an fp32 partial in workspace slot 0 (adjacent threads
 *    own adjacent columns, so the loads are coalesced). Stage 2: a thread per column adds the nb partials
 *    in block order and adds the total to the [acc] output. Nothing depends on timing: no atomics, and
 *    every sum has one fixed order.
 *  - Missing saved statistics (saved_* NULL in backward) are recomputed first by the forward kernel in
 *    statistics-only mode into workspace slot 1.
 * Aliasing: ops.h documents none for these ops; the CPU loops happen to allow y == x (RMSNorm, LayerNorm
 * forward) and dx == dy or dx == x (dz == dq, dk or z) in backward, and so do these kernels: a row's
 * reductions complete (a barrier / shuffle) before any of its elements is written, every element is read
 * and written by the same thread, and the parameter-gradient stage runs before the dx kernel. */
#include <math.h>

#include "cu_internal.cuh"

namespace mgcu {

/* Rows of at most this many elements get a warp; longer rows a block. */
static const int kWarpRowMax = 1024;
/* Threads per block for the warp-per-row kernels (8 rows per block). */
static const int kWarpRowThreads = 256;
/* Parameter-gradient stage 1: kColThreads columns per block; row blocks of at least kRowsPerBlock rows,
 * as many as give about kStage1Blocks blocks in all (enough for a large GPU when the rows are short),
 * between kMinRowBlocks and kMaxRowBlocks. */
static const int64_t kRowsPerBlock = 32, kStage1Blocks = 4096, kMinRowBlocks = 128, kMaxRowBlocks = 512;
static const int kColThreads = 128;

/* ---- device helpers ------------------------------------------------------------------------------- */

/* The sum over a row group (a warp, or the block when BLK), returned to every thread of the group. */
template <bool BLK> MG_DEV float group_sum(float v, float *scratch) {
    if (BLK) return block_sum(v, scratch);
    (void)scratch;
    return warp_sum(v);
}

template <class T> MG_DEV void put(T *d, int64_t i, float v, int acc) { d[i] = from_f<T>(acc ? to_f(d[i]) + v : v); }

/* The row-group geometry of the calling thread: first row, row stride, thread index in the group and the
 * group size. Every thread of a group gets the same rows, so reductions are called by whole groups. */
struct RowGroup {
    int64_t row0, step;
    int gt, gs;
};
template <bool BLK> MG_DEV RowGroup row_group() {
    RowGroup g;
    if (BLK) {
        g.row0 = blockIdx.x;
        g.step = gridDim.x;
        g.gt = threadIdx.x;
        g.gs = blockDim.x;
    } else {
        const int64_t rpb = blockDim.x >> 5;
        g.row0 = (int64_t)blockIdx.x * rpb + (threadIdx.x >> 5);
        g.step = (int64_t)gridDim.x * rpb;
        g.gt = threadIdx.x & 31;
        g.gs = 32;
    }
    return g;
}

/* ---- launch geometry ------------------------------------------------------------------------------ */

struct RowCfg {
    bool blk;
    int threads;
    unsigned grid;
};
static RowCfg row_cfg(int64_t rows, int width) {
    RowCfg c;
    if (width <= kWarpRowMax) {
        c.blk = false;
        c.threads = kWarpRowThreads;
        c.grid = grid_for(rows, kWarpRowThreads / 32);
    } else { /* about 8 elements per thread, 128 .. 1024 threads */
        int t = (int)(((int64_t)width + 7) / 8);
        t = (t + 31) / 32 * 32;
        c.blk = true;
        c.threads = t < 128 ? 128 : (t > 1024 ? 1024 : t);
        c.grid = grid_for(rows, 1);
    }
    return c;
}

/* Launch kernel<T, true> or kernel<T, false> with the row configuration of (rows, width). */
#define MG_ROW_LAUNCH(kernel, T, rows, width, be, ...)                                                     \
    do {                                                                                                   \
        const RowCfg rc_ = row_cfg((rows), (width));                                                       \
        if (rc_.blk)                                                                                       \
            MG_LAUNCH((kernel<T, true>), rc_.grid, rc_.threads, 0, stream(be), __VA_ARGS__);               \
        else                                                                                               \
            MG_LAUNCH((kernel<T, false>), rc_.grid, rc_.threads, 0, stream(be), __VA_ARGS__);              \
    } while (0)

/* Number of row blocks of the parameter-gradient stage 1 for T rows and `cols` columns (a function of the
 * shape only, so the summation order is fixed). */
static int row_blocks(int64_t T, int64_t cols) {
    const int64_t col_blocks = (cols + kColThreads - 1) / kColThreads;
    int64_t cap = kStage1Blocks / col_blocks;
    cap = cap < kMinRowBlocks ? kMinRowBlocks : (cap > kMaxRowBlocks ? kMaxRowBlocks : cap);
    int64_t nb = (T + kRowsPerBlock - 1) / kRowsPerBlock;
    return (int)(nb < 1 ? 1 : (nb > cap ? cap : nb));
}

/* Rows [r0, r1) of row block b of nb over T rows (the CPU's balanced partition). */
MG_DEV void block_rows(int64_t T, int b, int nb, int64_t *r0, int64_t *r1) {
    *r0 = T * b / nb;
    *r1 = T * (b + 1) / nb;
}

/* Stage 2: out[j] += sum_b part[b * stride + j] (b in order), j < n. */
template <class T> __global__ void k_colsum_final(const float *part, int nb, int64_t stride, int n, T *out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.0f;
    for (int b = 0; b < nb; b++) s += part[(int64_t)b * stride + j];
    out[j] = from_f<T>(to_f(out[j]) + s);
}

template <class T>
static void colsum_final(const MgBackend *be, const float *part, int nb, int64_t stride, int n, void *out) {
    if (!out) return;
    MG_LAUNCH((k_colsum_final<T>), (unsigned)((n + kColThreads - 1) / kColThreads), kColThreads, 0, stream(be), part,
              nb, stride, n, (T *)out);
}

/* ==================================================================================================== */
/* RMSNorm                                                                                               */

/* y = x * rstd * (1 + w); y == NULL: statistics only. */
template <class T, bool BLK>
__global__ void k_rms_fwd(int64_t rows, int D, float eps, const T *x, const T *w, T *y, float *rstd) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *xr = x + row * D;
        float ss = 0.0f;
        for (int j = g.gt; j < D; j += g.gs) {
            const float v = to_f(xr[j]);
            ss += v * v;
        }
        ss = group_sum<BLK>(ss, red);
        const float r = 1.0f / sqrtf(ss / (float)D + eps);
        if (rstd && g.gt == 0) rstd[row] = r;
        if (!y) continue;
        T *yr = y + row * D;
        for (int j = g.gt; j < D; j += g.gs) {
            float v = to_f(xr[j]) * r;
            if (w) v *= 1.0f + to_f(w[j]);
            yr[j] = from_f<T>(v);
        }
    }
}

/* dx = rstd * (g - xh * mean(g * xh)), g = dy * (1 + w), xh = x * rstd. */
template <class T, bool BLK>
__global__ void k_rms_dx(int64_t rows, int D, const T *x, const T *w, const T *dy, const float *rstd, T *dx,
                         int acc) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *xr = x + row * D, *gr = dy + row * D;
        const float r = rstd[row];
        float dot = 0.0f;
        for (int j = g.gt; j < D; j += g.gs) {
            float gv = to_f(gr[j]);
            if (w) gv *= 1.0f + to_f(w[j]);
            dot += gv * (to_f(xr[j]) * r);
        }
        const float m = group_sum<BLK>(dot, red) / (float)D;
        T *dr = dx + row * D;
        for (int j = g.gt; j < D; j += g.gs) {
            float gv = to_f(gr[j]);
            if (w) gv *= 1.0f + to_f(w[j]);
            put(dr, j, r * (gv - to_f(xr[j]) * r * m), acc);
        }
    }
}

/* Stage 1 of dw: part[b * D + j] = sum over the rows of block b of dy * x * rstd. */
template <class T>
__global__ void k_rms_dw_part(int64_t T_, int D, const T *x, const T *dy, const float *rstd, float *part) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int64_t r0, r1;
    block_rows(T_, blockIdx.y, gridDim.y, &r0, &r1);
    float s = 0.0f;
    for (int64_t t = r0; t < r1; t++) s += to_f(dy[t * D + j]) * (to_f(x[t * D + j]) * rstd[t]);
    part[(int64_t)blockIdx.y * D + j] = s;
}

static void rmsnorm_validate(const MgRMSNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->D >= 1, "%s: bad shape T=%lld D=%d (need T >= 0, D >= 1)", who, (long long)a->T,
             a->D);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

void rmsnorm_forward(const MgBackend *be, const MgRMSNormArgs *a) {
    rmsnorm_validate(a, "rmsnorm_forward");
    if (a->T == 0) return;
    MG_CU_DISPATCH(be, T,
                   MG_ROW_LAUNCH(k_rms_fwd, T, a->T, a->D, be, a->T, a->D, (float)a->eps, (const T *)a->x,
                                 (const T *)a->weight, (T *)a->y, (float *)a->saved_rstd));
}

void rmsnorm_backward(const MgBackend *be, const MgRMSNormArgs *a) {
    rmsnorm_validate(a, "rmsnorm_backward");
    void *dw = a->weight ? a->dweight : NULL;
    if ((!a->dx && !dw) || a->T == 0) return;
    const int64_t T_ = a->T;
    const int D = a->D;
    MG_CU_DISPATCH(be, T, {
        const T *x = (const T *)a->x;
        const float *rstd = (const float *)a->saved_rstd;
        if (!rstd) { /* nothing saved: recompute */
            float *r = (float *)ws(be, 1, sizeof(float) * (size_t)T_);
            MG_ROW_LAUNCH(k_rms_fwd, T, T_, D, be, T_, D, (float)a->eps, x, (const T *)NULL, (T *)NULL, r);
            rstd = r;
        }
        if (dw) { /* before dx: dx may alias dy or x */
            const int nb = row_blocks(T_, D);
            float *part = (float *)ws(be, 0, sizeof(float) * (size_t)nb * (size_t)D);
            dim3 g1((unsigned)((D + kColThreads - 1) / kColThreads), (unsigned)nb);
            MG_LAUNCH((k_rms_dw_part<T>), g1, kColThreads, 0, stream(be), T_, D, x, (const T *)a->dy, rstd, part);
            colsum_final<T>(be, part, nb, D, D, dw);
        }
        if (a->dx)
            MG_ROW_LAUNCH(k_rms_dx, T, T_, D, be, T_, D, x, (const T *)a->weight, (const T *)a->dy, rstd, (T *)a->dx,
                          a->accumulate);
    });
}

/* ==================================================================================================== */
/* LayerNorm                                                                                             */

/* y = (x - mean) * rstd * (1 + w) + b; y == NULL: statistics only. */
template <class T, bool BLK>
__global__ void k_ln_fwd(int64_t rows, int D, float eps, const T *x, const T *w, const T *bias, T *y, float *mean,
                         float *rstd) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *xr = x + row * D;
        float s = 0.0f;
        for (int j = g.gt; j < D; j += g.gs) s += to_f(xr[j]);
        const float mu = group_sum<BLK>(s, red) / (float)D;
        float v = 0.0f;
        for (int j = g.gt; j < D; j += g.gs) {
            const float d = to_f(xr[j]) - mu;
            v += d * d;
        }
        v = group_sum<BLK>(v, red);
        const float r = 1.0f / sqrtf(v / (float)D + eps);
        if (g.gt == 0) {
            if (mean) mean[row] = mu;
            if (rstd) rstd[row] = r;
        }
        if (!y) continue;
        T *yr = y + row * D;
        for (int j = g.gt; j < D; j += g.gs) {
            float o = (to_f(xr[j]) - mu) * r;
            if (w) o *= 1.0f + to_f(w[j]);
            if (bias) o += to_f(bias[j]);
            yr[j] = from_f<T>(o);
        }
    }
}

/* dx = rstd * (g - mean(g) - xh * mean(g * xh)), g = dy * (1 + w), xh = (x - mean) * rstd. */
template <class T, bool BLK>
__global__ void k_ln_dx(int64_t rows, int D, const T *x, const T *w, const T *dy, const float *mean,
                        const float *rstd, T *dx, int acc) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *xr = x + row * D, *gr = dy + row * D;
        const float mu = mean[row], r = rstd[row];
        float sg = 0.0f, sgx = 0.0f;
        for (int j = g.gt; j < D; j += g.gs) {
            float gv = to_f(gr[j]);
            if (w) gv *= 1.0f + to_f(w[j]);
            sg += gv;
            sgx += gv * ((to_f(xr[j]) - mu) * r);
        }
        const float mg = group_sum<BLK>(sg, red) / (float)D;
        const float mgx = group_sum<BLK>(sgx, red) / (float)D;
        T *dr = dx + row * D;
        for (int j = g.gt; j < D; j += g.gs) {
            float gv = to_f(gr[j]);
            if (w) gv *= 1.0f + to_f(w[j]);
            put(dr, j, r * (gv - mg - (to_f(xr[j]) - mu) * r * mgx), acc);
        }
    }
}

/* Stage 1 of dw and db: part[b * 2D + j] = sum dy * xh, part[b * 2D + D + j] = sum dy over block b. */
template <class T>
__global__ void k_ln_dwb_part(int64_t T_, int D, const T *x, const T *dy, const float *mean, const float *rstd,
                              int want_w, int want_b, float *part) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int64_t r0, r1;
    block_rows(T_, blockIdx.y, gridDim.y, &r0, &r1);
    float sw = 0.0f, sb = 0.0f;
    for (int64_t t = r0; t < r1; t++) {
        const float gv = to_f(dy[t * D + j]);
        if (want_w) sw += gv * ((to_f(x[t * D + j]) - mean[t]) * rstd[t]);
        sb += gv;
    }
    float *p = part + (int64_t)blockIdx.y * 2 * D;
    if (want_w) p[j] = sw;
    if (want_b) p[D + j] = sb;
}

static void layernorm_validate(const MgLayerNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->D >= 1, "%s: bad shape T=%lld D=%d (need T >= 0, D >= 1)", who, (long long)a->T,
             a->D);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

void layernorm_forward(const MgBackend *be, const MgLayerNormArgs *a) {
    layernorm_validate(a, "layernorm_forward");
    if (a->T == 0) return;
    MG_CU_DISPATCH(be, T,
                   MG_ROW_LAUNCH(k_ln_fwd, T, a->T, a->D, be, a->T, a->D, (float)a->eps, (const T *)a->x,
                                 (const T *)a->weight, (const T *)a->bias, (T *)a->y, (float *)a->saved_mean,
                                 (float *)a->saved_rstd));
}

void layernorm_backward(const MgBackend *be, const MgLayerNormArgs *a) {
    layernorm_validate(a, "layernorm_backward");
    void *dw = a->weight ? a->dweight : NULL, *db = a->dbias;
    if ((!a->dx && !dw && !db) || a->T == 0) return;
    const int64_t T_ = a->T;
    const int D = a->D;
    MG_CU_DISPATCH(be, T, {
        const T *x = (const T *)a->x;
        const float *mean = (const float *)a->saved_mean, *rstd = (const float *)a->saved_rstd;
        if (!mean || !rstd) { /* nothing saved: recompute both (as the CPU does) */
            float *st = (float *)ws(be, 1, sizeof(float) * 2 * (size_t)T_);
            MG_ROW_LAUNCH(k_ln_fwd, T, T_, D, be, T_, D, (float)a->eps, x, (const T *)NULL, (const T *)NULL,
                          (T *)NULL, st, st + T_);
            mean = st;
            rstd = st + T_;
        }
        if (dw || db) { /* before dx: dx may alias dy or x */
            const int nb = row_blocks(T_, D);
            float *part = (float *)ws(be, 0, sizeof(float) * (size_t)nb * 2 * (size_t)D);
            dim3 g1((unsigned)((D + kColThreads - 1) / kColThreads), (unsigned)nb);
            MG_LAUNCH((k_ln_dwb_part<T>), g1, kColThreads, 0, stream(be), T_, D, x, (const T *)a->dy, mean, rstd,
                      dw != NULL, db != NULL, part);
            colsum_final<T>(be, part, nb, 2 * (int64_t)D, D, dw);
            colsum_final<T>(be, part + D, nb, 2 * (int64_t)D, D, db);
        }
        if (a->dx)
            MG_ROW_LAUNCH(k_ln_dx, T, T_, D, be, T_, D, x, (const T *)a->weight, (const T *)a->dy, mean, rstd,
                          (T *)a->dx, a->accumulate);
    });
}

/* ==================================================================================================== */
/* Q/K normalisation: rows are the T*H (token, head) pairs of dz = Z/H elements (row r starts at r*dz).  */

/* q = zh * (1 + gamma0) + beta0, k = zh * (1 + gamma1) + beta1, zh = z * rstd / sqrt(dz); q and k NULL:
 * statistics only. */
template <class T, bool BLK>
__global__ void k_qk_fwd(int64_t rows, int H, int dz, float eps, float s, const T *z, const T *gm, const T *bt,
                         T *q, T *k, float *rstd) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    const int64_t Z = (int64_t)H * dz;
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *zr = z + row * dz;
        float ss = 0.0f;
        for (int j = g.gt; j < dz; j += g.gs) {
            const float v = to_f(zr[j]);
            ss += v * v;
        }
        ss = group_sum<BLK>(ss, red);
        const float r = 1.0f / sqrtf(ss / (float)dz + eps);
        if (rstd && g.gt == 0) rstd[row] = r;
        if (!q && !k) continue;
        const int64_t c0 = (row % H) * dz; /* channel of element 0 of the row */
        for (int j = g.gt; j < dz; j += g.gs) {
            const int64_t c = c0 + j;
            const float zh = to_f(zr[j]) * r * s;
            if (q) q[row * dz + j] = from_f<T>(zh * (1.0f + (gm ? to_f(gm[c]) : 0.0f)) + (bt ? to_f(bt[c]) : 0.0f));
            if (k)
                k[row * dz + j] =
                    from_f<T>(zh * (1.0f + (gm ? to_f(gm[Z + c]) : 0.0f)) + (bt ? to_f(bt[Z + c]) : 0.0f));
        }
    }
}

/* G = s * (dq * (1 + gamma0) + dk * (1 + gamma1)); dz = rstd * (G - z * rstd * mean(G * z * rstd)). */
template <class T>
MG_DEV float qk_G(const T *dq, const T *dk, const T *gm, int64_t i, int64_t c, int64_t Z, float s) {
    float G = 0.0f;
    if (dq) G += to_f(dq[i]) * (1.0f + (gm ? to_f(gm[c]) : 0.0f));
    if (dk) G += to_f(dk[i]) * (1.0f + (gm ? to_f(gm[Z + c]) : 0.0f));
    return G * s;
}

template <class T, bool BLK>
__global__ void k_qk_dz(int64_t rows, int H, int dz, float s, const T *z, const T *gm, const T *dq, const T *dk,
                        const float *rstd, T *dzp, int acc) {
    __shared__ float red[32];
    const RowGroup g = row_group<BLK>();
    const int64_t Z = (int64_t)H * dz;
    for (int64_t row = g.row0; row < rows; row += g.step) {
        const T *zr = z + row * dz;
        const float r = rstd[row];
        const int64_t c0 = (row % H) * dz, o = row * dz;
        float dot = 0.0f;
        for (int j = g.gt; j < dz; j += g.gs) dot += qk_G(dq, dk, gm, o + j, c0 + j, Z, s) * (to_f(zr[j]) * r);
        const float m = group_sum<BLK>(dot, red) / (float)dz;
        for (int j = g.gt; j < dz; j += g.gs) {
            const float G = qk_G(dq, dk, gm, o + j, c0 + j, Z, s);
            put(dzp, o + j, r * (G - to_f(zr[j]) * r * m), acc);
        }
    }
}

/* Stage 1 of dgamma and dbeta; per row block b the 4Z partials are laid out as dgamma (2 x Z) then dbeta
 * (2 x Z): part[b*4Z + c] = sum dq * zh, [Z + c] sum dk * zh, [2Z + c] sum dq, [3Z + c] sum dk. */
template <class T>
__global__ void k_qk_part(int64_t T_, int H, int dz, float s, const T *z, const T *dq, const T *dk, const float *rstd,
                          int want_g, int want_b, float *part) {
    const int64_t Z = (int64_t)H * dz;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= Z) return;
    const int h = c / dz;
    int64_t r0, r1;
    block_rows(T_, blockIdx.y, gridDim.y, &r0, &r1);
    float gq = 0.0f, gk = 0.0f, bq = 0.0f, bk = 0.0f;
    for (int64_t t = r0; t < r1; t++) {
        const int64_t i = t * Z + c;
        const float zh = want_g ? to_f(z[i]) * rstd[t * H + h] * s : 0.0f;
        if (dq) {
            const float v = to_f(dq[i]);
            gq += v * zh;
            bq += v;
        }
        if (dk) {
            const float v = to_f(dk[i]);
            gk += v * zh;
            bk += v;
        }
    }
    float *p = part + (int64_t)blockIdx.y * 4 * Z;
    if (want_g) {
        p[c] = gq;
        p[Z + c] = gk;
    }
    if (want_b) {
        p[2 * Z + c] = bq;
        p[3 * Z + c] = bk;
    }
}

static void qknorm_validate(const MgQKNormArgs *a, const char *who) {
    MG_CHECK(a->T >= 0 && a->Z >= 1 && a->H >= 1, "%s: bad shape T=%lld Z=%d H=%d", who, (long long)a->T, a->Z,
             a->H);
    MG_CHECK(a->Z % a->H == 0, "%s: Z=%d is not divisible by the number of heads H=%d", who, a->Z, a->H);
    MG_CHECK(a->eps >= 0, "%s: eps must be >= 0 (got %g)", who, a->eps);
}

void qknorm_forward(const MgBackend *be, const MgQKNormArgs *a) {
    qknorm_validate(a, "qknorm_forward");
    if (a->T == 0) return;
    const int H = a->H, dz = a->Z / a->H;
    const int64_t rows = a->T * H;
    const float s = (float)(1.0 / sqrt((double)dz));
    MG_CU_DISPATCH(be, T,
                   MG_ROW_LAUNCH(k_qk_fwd, T, rows, dz, be, rows, H, dz, (float)a->eps, s, (const T *)a->z,
                                 (const T *)a->gamma, (const T *)a->beta, (T *)a->q, (T *)a->k,
                                 (float *)a->saved_rstd));
}

void qknorm_backward(const MgBackend *be, const MgQKNormArgs *a) {
    qknorm_validate(a, "qknorm_backward");
    if ((!a->dz && !a->dgamma && !a->dbeta) || a->T == 0) return;
    const int64_t T_ = a->T;
    const int Z = a->Z, H = a->H, dz = Z / H;
    const int64_t rows = T_ * H;
    const float s = (float)(1.0 / sqrt((double)dz));
    MG_CU_DISPATCH(be, T, {
        const T *z = (const T *)a->z, *dq = (const T *)a->dq, *dk = (const T *)a->dk;
        const float *rstd = (const float *)a->saved_rstd;
        if (!rstd) { /* nothing saved: recompute */
            float *r = (float *)ws(be, 1, sizeof(float) * (size_t)rows);
            MG_ROW_LAUNCH(k_qk_fwd, T, rows, dz, be, rows, H, dz, (float)a->eps, s, z, (const T *)NULL,
                          (const T *)NULL, (T *)NULL, (T *)NULL, r);
            rstd = r;
        }
        if (a->dgamma || a->dbeta) { /* before dz: dz may alias dq or dk */
            const int nb = row_blocks(T_, Z);
            float *part = (float *)ws(be, 0, sizeof(float) * (size_t)nb * 4 * (size_t)Z);
            dim3 g1((unsigned)((Z + kColThreads - 1) / kColThreads), (unsigned)nb);
            MG_LAUNCH((k_qk_part<T>), g1, kColThreads, 0, stream(be), T_, H, dz, s, z, dq, dk, rstd,
                      a->dgamma != NULL, a->dbeta != NULL, part);
            colsum_final<T>(be, part, nb, 4 * (int64_t)Z, 2 * Z, a->dgamma);
            colsum_final<T>(be, part + 2 * (size_t)Z, nb, 4 * (int64_t)Z, 2 * Z, a->dbeta);
        }
        if (a->dz)
            MG_ROW_LAUNCH(k_qk_dz, T, rows, dz, be, rows, H, dz, s, z, (const T *)a->gamma, dq, dk, rstd, (T *)a->dz,
                          a->accumulate);
    });
}

} /* namespace mgcu */
