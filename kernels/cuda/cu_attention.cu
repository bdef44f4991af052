/* Chunk-wise causal softmax attention (spec §5) and the merge of partial attentions: flash-attention style
 * tiled kernels, the same function as kernels/cpu/attention.c.
 *
 * Tiles. A task is (batch row, chunk, head); its queries and keys are cut into tiles of AT_B = 64 rows.
 * Every kernel runs 256 threads as a 16 x 16 grid (tx = tid % 16, ty = tid / 16) over a 64 x 64 tile:
 * thread (ty, tx) owns the 4 x 4 elements (ty + 16 a, tx + 16 c), a, c in 0..3, held in registers.
 *  - A score-like tile X Y^T (S = Q K^T over Dqk, dP = dO V^T over Dv) is summed over the inner size in
 *    slices of 32 staged in shared memory (As, Bs: 64 x 33 floats, coalesced row loads).
 *  - The second product (P V, P^T dO, dS^T Q, dS K) takes the 64 x 64 P / dS tile from shared memory and
 *    a 64 x 64 operand tile (V, dO, Q or K rows, one 64-column slice) staged over As/Bs.
 *  - A wide output (Dv, or Dqk for dK/dQ) is cut into 64-column slices, one block per slice; each slice's
 *    block recomputes the scores (cheap when Dqk is small against Dv, as in Megalodon).
 * Scores exist only as one 64 x 64 tile per block; no score matrix is stored.
 *
 * Forward: one block per (task, query tile, Dv slice) loops over the key tiles up to the causal limit
 * with the online softmax (fp32 running max m and sum l per row, the accumulator rescaled by exp(m - m')),
 * then o = acc / l and lse = m + log(l) (written by the slice-0 block). A row whose visible keys are all
 * dropped (block mode only) gets o = 0, lse = -inf, as on the CPU.
 *
 * Backward (no atomics):
 *   lse (only when none was saved)               k_att_fwd without o;
 *   Di = sum_j P_ij dP_ij                        k_att_di_exact, one block per query tile (the CPU's
 *                                                definition: a bf16-rounded O would cost dq tens of
 *                                                percent at the cancellations of dS = P (dP - Di));
 *   block mode: Di = rowsum(dO * O)              k_att_di, one warp per row (o of the merged rows, ops.h);
 *   dV[key tile, Dv slice]   = sum over query tiles of P^T dO           k_att_dv, one block per key tile
 *                                                (inside k_att_dk when Dv <= 64: the same P);
 *   dK[key tile, Dqk slice]  = sum over query tiles of dS^T Q           k_att_dk, one block per key tile;
 *   dQ[query tile, Dqk slice] = sum over key tiles of dS K              k_att_dq, one block per query tile;
 * with P = exp(S - lse) recomputed per tile and dS = P * (dP - Di) * scale, dP = dO V^T.
 * Every output element is owned by one thread of one block and summed in a fixed order (inner sizes in
 * order, then tiles in order), so results are bitwise reproducible.
 *
 * DropKey: the counter-based mask of ops.h (mask_keep, bit for bit the CPU's), index
 * base + (qoff + i) * nkd + koff + j with the CPU's base (global sequence, chunk and head), regenerated
 * wherever a score tile is recomputed. The query's own key (j == i + off) is never dropped.
 *
 * Merge: one warp per (batch, row, head); lane 0 reads and writes the row's lse (broadcast by a shuffle),
 * the lanes combine o over Dv. */
#include <math.h>

#include "cu_internal.cuh"

namespace mgcu {

enum { AT_B = 64, AT_T = 256, AT_DS = 32, AT_LDS = AT_DS + 1, AT_LDP = AT_B + 1 };

typedef MgAttGeom AttGeom; /* kernels/validate.c */

/* The DropKey mask of a call; the per-task base is computed on the device (see att_task). */
struct AttDrop {
    int active;
    int nkd, qoff, koff; /* row length of the index; global rows of local query 0 and key 0 */
    uint64_t key, thr;
    int64_t seq0, stride, chunks, chunk0, head0, Hg, C;
};

template <class T> struct AttP {
    const T *q, *k, *v, *o, *dout;
    T *out, *dq, *dk, *dv;
    float *lse_out;      /* forward: log-sum-exp (NULL: not written) */
    const float *lse;    /* backward: saved log-sum-exp */
    const float *di;     /* backward: rowsum(dO * O), laid out like lse */
    int H, Dqk, Dv, Lq, Lk;
    float scale;
    int acc;
    AttGeom g;
    AttDrop d;
};

/* The pointers of one task: row 0 of its chunk for head h (row strides H*Dqk and H*Dv). */
template <class T> struct AttTask {
    int64_t qoff, koff, voff, ooff, loff; /* element offsets of q, k, v, o/dout rows, and of lse */
    uint64_t base;                        /* DropKey index base */
};

template <class T> MG_DEV AttTask<T> att_task(const AttP<T> &p, int64_t task) {
    AttTask<T> t;
    const int H = p.H;
    const int64_t h = task % H, bc = task / H, ci = bc % p.g.nchunks, b = bc / p.g.nchunks;
    const int64_t qrow = b * p.Lq + ci * p.g.nq, krow = b * p.Lk + ci * p.g.nk;
    t.qoff = (qrow * H + h) * p.Dqk;
    t.koff = (krow * H + h) * p.Dqk;
    t.voff = (krow * H + h) * p.Dv;
    t.ooff = (qrow * H + h) * p.Dv;
    t.loff = (b * H + h) * p.Lq + ci * p.g.nq;
    t.base = 0;
    if (p.d.active) {
        const uint64_t gtask =
            ((uint64_t)(p.d.seq0 + b * p.d.stride) * (uint64_t)p.d.chunks + (uint64_t)(p.d.chunk0 + ci)) *
                (uint64_t)p.d.Hg +
            (uint64_t)(h + p.d.head0);
        t.base = p.d.C > 0 ? gtask * (uint64_t)p.d.C * (uint64_t)p.d.C : gtask * (uint64_t)p.g.nq * (uint64_t)p.g.nk;
    }
    return t;
}

/* acc[a][c] += sum_d A[ty + 16a][d] * Bm[tx + 16c][d], d in [0, D): rows beyond na / nb count as 0.
 * As, Bs: shared 64 x AT_LDS each. Starts with a barrier (so the caller's previous use of As/Bs is done);
 * the caller must synchronise before overwriting As/Bs afterwards. */
template <class T>
MG_DEV void tile_dot(float acc[4][4], const T *A, int64_t lda, int na, const T *Bm, int64_t ldb, int nb, int D,
                     float *As, float *Bs) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    for (int d0 = 0; d0 < D; d0 += AT_DS) {
        const int nd = D - d0 < AT_DS ? D - d0 : AT_DS;
        __syncthreads();
        for (int e = tid; e < AT_B * AT_DS; e += AT_T) {
            const int r = e / AT_DS, dd = e % AT_DS;
            As[r * AT_LDS + dd] = r < na && dd < nd ? to_f(A[r * lda + d0 + dd]) : 0.0f;
            Bs[r * AT_LDS + dd] = r < nb && dd < nd ? to_f(Bm[r * ldb + d0 + dd]) : 0.0f;
        }
        __syncthreads();
        for (int dd = 0; dd < nd; dd++) {
            float x[4], y[4];
            for (int a = 0; a < 4; a++) x[a] = As[(ty + 16 * a) * AT_LDS + dd];
            for (int c = 0; c < 4; c++) y[c] = Bs[(tx + 16 * c) * AT_LDS + dd];
            for (int a = 0; a < 4; a++)
                for (int c = 0; c < 4; c++) acc[a][c] = fmaf(x[a], y[c], acc[a][c]);
        }
    }
}

/* Y (64 x 64 floats, shared) = rows [0, nr) and columns [c0, c0 + nc) of a strided matrix, zeros outside. */
template <class T> MG_DEV void load_tile(float *Y, const T *src, int64_t ld, int nr, int c0, int nc) {
    for (int e = threadIdx.x; e < AT_B * AT_B; e += AT_T) {
        const int r = e / AT_B, c = e % AT_B;
        Y[e] = r < nr && c < nc ? to_f(src[r * ld + c0 + c]) : 0.0f;
    }
}

/* acc[a][c] += sum_{k < n} P(ty + 16a, k) * Y[k][tx + 16c], with P(r, k) = Ps[r][k] (trans = 0) or
 * Ps[k][r] (trans = 1); Ps is 64 x AT_LDP, Y 64 x 64, both in shared memory. */
MG_DEV void tile_pv(float acc[4][4], const float *Ps, const float *Y, int n, bool trans) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    for (int k = 0; k < n; k++) {
        float x[4], y[4];
        for (int a = 0; a < 4; a++) x[a] = trans ? Ps[k * AT_LDP + ty + 16 * a] : Ps[(ty + 16 * a) * AT_LDP + k];
        for (int c = 0; c < 4; c++) y[c] = Y[k * AT_B + tx + 16 * c];
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++) acc[a][c] = fmaf(x[a], y[c], acc[a][c]);
    }
}

/* Sum / max over the 16 threads (tx) that share a row of the tile: lanes differing in their low 4 bits. */
MG_DEV float row16_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
MG_DEV float row16_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Scaled, masked scores of query tile i0 (nqr rows) and key tile j0 (nkr keys) in place: a score that is
 * not visible (beyond the tile, after the query's own key i + off) or dropped becomes -inf. */
template <class T>
MG_DEV void mask_scores(float s[4][4], const AttP<T> &p, const AttTask<T> &t, int i0, int nqr, int j0, int nkr) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    for (int a = 0; a < 4; a++) {
        const int il = ty + 16 * a, i = i0 + il, diag = i + p.g.off;
        const uint64_t row = t.base + (uint64_t)(p.d.qoff + i) * (uint64_t)p.d.nkd + (uint64_t)p.d.koff;
        for (int c = 0; c < 4; c++) {
            const int jl = tx + 16 * c, j = j0 + jl;
            float x = s[a][c] * p.scale;
            if (il >= nqr || jl >= nkr || j > diag) x = -INFINITY;
            else if (p.d.active && j != diag && !mask_keep(p.d.key, row + (uint64_t)j, p.d.thr)) x = -INFINITY;
            s[a][c] = x;
        }
    }
}

/* Backward: the probabilities P = exp(S - lse) of a tile (0 where masked). */
template <class T>
MG_DEV void tile_probs(float s[4][4], const AttP<T> &p, const AttTask<T> &t, int i0, int nqr, int j0, int nkr) {
    const int ty = threadIdx.x >> 4;
    mask_scores(s, p, t, i0, nqr, j0, nkr);
    for (int a = 0; a < 4; a++) {
        const int il = ty + 16 * a;
        const float l = il < nqr ? p.lse[t.loff + i0 + il] : -INFINITY;
        for (int c = 0; c < 4; c++) s[a][c] = s[a][c] == -INFINITY || l == -INFINITY ? 0.0f : expf(s[a][c] - l);
    }
}

/* Backward: dS = P * (dP - Di) * scale of a tile, dP = dO V^T (P in s, overwritten by dS). */
template <class T>
MG_DEV void tile_ds(float s[4][4], const AttP<T> &p, const AttTask<T> &t, int i0, int nqr, int j0, int nkr,
                    float *As, float *Bs) {
    const int ty = threadIdx.x >> 4;
    const int64_t ldv = (int64_t)p.H * p.Dv;
    float dp[4][4] = {};
    tile_dot(dp, p.dout + t.ooff + i0 * ldv, ldv, nqr, p.v + t.voff + j0 * ldv, ldv, nkr, p.Dv, As, Bs);
    for (int a = 0; a < 4; a++) {
        const int il = ty + 16 * a;
        const float di = il < nqr ? p.di[t.loff + i0 + il] : 0.0f;
        for (int c = 0; c < 4; c++) s[a][c] = s[a][c] * (dp[a][c] - di) * p.scale;
    }
}

/* Writes acc (rows r0 + ty + 16a < nr, columns c0 + tx + 16c < nc) into dst (row stride ld); += when add. */
template <class T>
MG_DEV void store_tile(const float acc[4][4], T *dst, int64_t ld, int nr, int c0, int nc, int add) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    for (int a = 0; a < 4; a++) {
        const int r = ty + 16 * a;
        if (r >= nr) continue;
        for (int c = 0; c < 4; c++) {
            const int col = tx + 16 * c;
            if (c0 + col >= nc) continue;
            T *e = dst + r * ld + c0 + col;
            *e = from_f<T>(add ? to_f(*e) + acc[a][c] : acc[a][c]);
        }
    }
}

/* ---- forward: block = (task, query tile, Dv slice); with out == NULL only lse (one slice) ---------- */
template <class T> __global__ void __launch_bounds__(AT_T) k_att_fwd(AttP<T> p, int nqt, int nvs) {
    __shared__ float s_ab[2 * AT_B * AT_LDS];
    __shared__ float s_p[AT_B * AT_LDP];
    float *As = s_ab, *Bs = s_ab + AT_B * AT_LDS;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    int64_t bid = blockIdx.x;
    const int vs = (int)(bid % nvs);
    bid /= nvs;
    const int qt = nqt - 1 - (int)(bid % nqt); /* the longest (last) query tiles start first */
    const AttTask<T> t = att_task(p, bid / nqt);
    const int64_t ldq = (int64_t)p.H * p.Dqk, ldv = (int64_t)p.H * p.Dv;
    const int i0 = qt * AT_B, nqr = p.g.nq - i0 < AT_B ? p.g.nq - i0 : AT_B;
    const int kend = p.g.nk < i0 + nqr + p.g.off ? p.g.nk : i0 + nqr + p.g.off;
    const int c0 = vs * AT_B;
    float m[4], l[4], acc[4][4];
    for (int a = 0; a < 4; a++) {
        m[a] = -INFINITY;
        l[a] = 0.0f;
        for (int c = 0; c < 4; c++) acc[a][c] = 0.0f;
    }
    for (int j0 = 0; j0 < kend; j0 += AT_B) {
        const int nkr = kend - j0 < AT_B ? kend - j0 : AT_B;
        float s[4][4] = {};
        tile_dot(s, p.q + t.qoff + i0 * ldq, ldq, nqr, p.k + t.koff + j0 * ldq, ldq, nkr, p.Dqk, As, Bs);
        mask_scores(s, p, t, i0, nqr, j0, nkr);
        for (int a = 0; a < 4; a++) {
            float mt = fmaxf(fmaxf(s[a][0], s[a][1]), fmaxf(s[a][2], s[a][3]));
            const float mn = fmaxf(m[a], row16_max(mt));
            float sum = 0.0f;
            if (mn == -INFINITY) { /* nothing visible in this row yet */
                for (int c = 0; c < 4; c++) s[a][c] = 0.0f;
            } else {
                const float alpha = expf(m[a] - mn); /* 0 while m = -inf */
                for (int c = 0; c < 4; c++) {
                    s[a][c] = s[a][c] == -INFINITY ? 0.0f : expf(s[a][c] - mn);
                    sum += s[a][c];
                    acc[a][c] *= alpha;
                }
                l[a] *= alpha;
                m[a] = mn;
            }
            l[a] += row16_sum(sum);
        }
        if (p.out) {
            __syncthreads(); /* As/Bs reads of tile_dot are done: the V tile goes there */
            for (int a = 0; a < 4; a++)
                for (int c = 0; c < 4; c++) s_p[(ty + 16 * a) * AT_LDP + tx + 16 * c] = s[a][c];
            load_tile(s_ab, p.v + t.voff + j0 * ldv, ldv, nkr, c0, p.Dv - c0);
            __syncthreads();
            tile_pv(acc, s_p, s_ab, nkr, false);
        }
    }
    for (int a = 0; a < 4; a++) {
        const bool empty = m[a] == -INFINITY;
        const float inv = empty ? 0.0f : 1.0f / l[a];
        for (int c = 0; c < 4; c++) acc[a][c] = empty ? 0.0f : acc[a][c] * inv;
        const int il = ty + 16 * a;
        if (p.lse_out && vs == 0 && tx == 0 && il < nqr)
            p.lse_out[t.loff + i0 + il] = empty ? -INFINITY : m[a] + logf(l[a]);
    }
    if (p.out) store_tile(acc, p.out + t.ooff + i0 * ldv, ldv, nqr, c0, p.Dv, 0);
}

/* ---- backward ------------------------------------------------------------------------------------- */
/* Di = rowsum(dO * O) per (b, i, h), one warp per row, stored like lse (B x H x Lq). */
template <class T>
__global__ void k_att_di(int64_t rows, int H, int Lq, int Dv, const T *dout, const T *o, float *di) {
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    if (r < rows)
        for (int e = lane; e < Dv; e += 32) s = fmaf(to_f(dout[r * Dv + e]), to_f(o[r * Dv + e]), s);
    s = warp_sum(s);
    if (r < rows && lane == 0) {
        const int64_t h = r % H, bi = r / H, i = bi % Lq, b = bi / Lq;
        di[(b * H + h) * Lq + i] = s;
    }
}

/* Di = sum_j P_ij dP_ij (= rowsum(dO * O) of the unrounded O), block = (task, query tile): the CPU's
 * definition, free of the rounding of a stored O (used outside block mode). */
template <class T> __global__ void __launch_bounds__(AT_T) k_att_di_exact(AttP<T> p, int nqt, float *di) {
    __shared__ float s_ab[2 * AT_B * AT_LDS];
    float *As = s_ab, *Bs = s_ab + AT_B * AT_LDS;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t bid = blockIdx.x;
    const int qt = nqt - 1 - (int)(bid % nqt); /* the longest (last) query tiles start first */
    const AttTask<T> t = att_task(p, bid / nqt);
    const int64_t ldq = (int64_t)p.H * p.Dqk, ldv = (int64_t)p.H * p.Dv;
    const int i0 = qt * AT_B, nqr = p.g.nq - i0 < AT_B ? p.g.nq - i0 : AT_B;
    const int kend = p.g.nk < i0 + nqr + p.g.off ? p.g.nk : i0 + nqr + p.g.off;
    float part[4] = {};
    for (int j0 = 0; j0 < kend; j0 += AT_B) {
        const int nkr = kend - j0 < AT_B ? kend - j0 : AT_B;
        float s[4][4] = {}, dp[4][4] = {};
        tile_dot(s, p.q + t.qoff + i0 * ldq, ldq, nqr, p.k + t.koff + j0 * ldq, ldq, nkr, p.Dqk, As, Bs);
        tile_probs(s, p, t, i0, nqr, j0, nkr);
        tile_dot(dp, p.dout + t.ooff + i0 * ldv, ldv, nqr, p.v + t.voff + j0 * ldv, ldv, nkr, p.Dv, As, Bs);
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++) part[a] = fmaf(s[a][c], dp[a][c], part[a]);
    }
    for (int a = 0; a < 4; a++) {
        const float v = row16_sum(part[a]);
        const int il = ty + 16 * a;
        if (tx == 0 && il < nqr) di[t.loff + i0 + il] = v;
    }
}

/* First query tile that sees key tile j0: queries i >= j0 - off. */
MG_DEV int first_qtile(int j0, int off) { return j0 - off > 0 ? (j0 - off) / AT_B * AT_B : 0; }

/* dV: block = (task, key tile, Dv slice), sum over query tiles of P^T dO. */
template <class T> __global__ void __launch_bounds__(AT_T) k_att_dv(AttP<T> p, int nkt, int nvs) {
    __shared__ float s_ab[2 * AT_B * AT_LDS];
    __shared__ float s_p[AT_B * AT_LDP];
    float *As = s_ab, *Bs = s_ab + AT_B * AT_LDS;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    int64_t bid = blockIdx.x;
    const int vs = (int)(bid % nvs);
    bid /= nvs;
    const int kt = (int)(bid % nkt);
    const AttTask<T> t = att_task(p, bid / nkt);
    const int64_t ldq = (int64_t)p.H * p.Dqk, ldv = (int64_t)p.H * p.Dv;
    const int j0 = kt * AT_B, nkr = p.g.nk - j0 < AT_B ? p.g.nk - j0 : AT_B, c0 = vs * AT_B;
    float acc[4][4] = {};
    for (int i0 = first_qtile(j0, p.g.off); i0 < p.g.nq; i0 += AT_B) {
        const int nqr = p.g.nq - i0 < AT_B ? p.g.nq - i0 : AT_B;
        float s[4][4] = {};
        tile_dot(s, p.q + t.qoff + i0 * ldq, ldq, nqr, p.k + t.koff + j0 * ldq, ldq, nkr, p.Dqk, As, Bs);
        tile_probs(s, p, t, i0, nqr, j0, nkr);
        __syncthreads();
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++) s_p[(ty + 16 * a) * AT_LDP + tx + 16 * c] = s[a][c];
        load_tile(s_ab, p.dout + t.ooff + i0 * ldv, ldv, nqr, c0, p.Dv - c0);
        __syncthreads();
        tile_pv(acc, s_p, s_ab, nqr, true);
    }
    store_tile(acc, p.dv + t.voff + j0 * ldv, ldv, nkr, c0, p.Dv, p.acc);
}

/* dK: block = (task, key tile, Dqk slice), sum over query tiles of dS^T Q. With_dv (Dv <= 64): the
 * Dqk-slice-0 block also sums dV = P^T dO from the same P, so no separate dV pass recomputes S. */
template <class T> __global__ void __launch_bounds__(AT_T) k_att_dk(AttP<T> p, int nkt, int nds, int with_dv) {
    __shared__ float s_ab[2 * AT_B * AT_LDS];
    __shared__ float s_p[AT_B * AT_LDP];
    float *As = s_ab, *Bs = s_ab + AT_B * AT_LDS;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    int64_t bid = blockIdx.x;
    const int ds = (int)(bid % nds);
    bid /= nds;
    const int kt = (int)(bid % nkt);
    const AttTask<T> t = att_task(p, bid / nkt);
    const int64_t ldq = (int64_t)p.H * p.Dqk, ldv = (int64_t)p.H * p.Dv;
    const int j0 = kt * AT_B, nkr = p.g.nk - j0 < AT_B ? p.g.nk - j0 : AT_B, c0 = ds * AT_B;
    const bool dv = with_dv && ds == 0;
    float acc[4][4] = {}, accv[4][4] = {};
    for (int i0 = first_qtile(j0, p.g.off); i0 < p.g.nq; i0 += AT_B) {
        const int nqr = p.g.nq - i0 < AT_B ? p.g.nq - i0 : AT_B;
        float s[4][4] = {};
        tile_dot(s, p.q + t.qoff + i0 * ldq, ldq, nqr, p.k + t.koff + j0 * ldq, ldq, nkr, p.Dqk, As, Bs);
        tile_probs(s, p, t, i0, nqr, j0, nkr);
        if (dv) { /* dV += P^T dO (the whole Dv in one slice) */
            __syncthreads();
            for (int a = 0; a < 4; a++)
                for (int c = 0; c < 4; c++) s_p[(ty + 16 * a) * AT_LDP + tx + 16 * c] = s[a][c];
            load_tile(s_ab, p.dout + t.ooff + i0 * ldv, ldv, nqr, 0, p.Dv);
            __syncthreads();
            tile_pv(accv, s_p, s_ab, nqr, true);
        }
        tile_ds(s, p, t, i0, nqr, j0, nkr, As, Bs); /* starts with a barrier: s_p, s_ab are free again */
        __syncthreads();
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++) s_p[(ty + 16 * a) * AT_LDP + tx + 16 * c] = s[a][c];
        load_tile(s_ab, p.q + t.qoff + i0 * ldq, ldq, nqr, c0, p.Dqk - c0);
        __syncthreads();
        tile_pv(acc, s_p, s_ab, nqr, true);
    }
    store_tile(acc, p.dk + t.koff + j0 * ldq, ldq, nkr, c0, p.Dqk, p.acc);
    if (dv) store_tile(accv, p.dv + t.voff + j0 * ldv, ldv, nkr, 0, p.Dv, p.acc);
}

/* dQ: block = (task, query tile, Dqk slice), sum over key tiles of dS K. */
template <class T> __global__ void __launch_bounds__(AT_T) k_att_dq(AttP<T> p, int nqt, int nds) {
    __shared__ float s_ab[2 * AT_B * AT_LDS];
    __shared__ float s_p[AT_B * AT_LDP];
    float *As = s_ab, *Bs = s_ab + AT_B * AT_LDS;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    int64_t bid = blockIdx.x;
    const int ds = (int)(bid % nds);
    bid /= nds;
    const int qt = nqt - 1 - (int)(bid % nqt); /* the longest (last) query tiles start first */
    const AttTask<T> t = att_task(p, bid / nqt);
    const int64_t ldq = (int64_t)p.H * p.Dqk;
    const int i0 = qt * AT_B, nqr = p.g.nq - i0 < AT_B ? p.g.nq - i0 : AT_B, c0 = ds * AT_B;
    const int kend = p.g.nk < i0 + nqr + p.g.off ? p.g.nk : i0 + nqr + p.g.off;
    float acc[4][4] = {};
    for (int j0 = 0; j0 < kend; j0 += AT_B) {
        const int nkr = kend - j0 < AT_B ? kend - j0 : AT_B;
        float s[4][4] = {};
        tile_dot(s, p.q + t.qoff + i0 * ldq, ldq, nqr, p.k + t.koff + j0 * ldq, ldq, nkr, p.Dqk, As, Bs);
        tile_probs(s, p, t, i0, nqr, j0, nkr);
        tile_ds(s, p, t, i0, nqr, j0, nkr, As, Bs);
        __syncthreads();
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++) s_p[(ty + 16 * a) * AT_LDP + tx + 16 * c] = s[a][c];
        load_tile(s_ab, p.k + t.koff + j0 * ldq, ldq, nkr, c0, p.Dqk - c0);
        __syncthreads();
        tile_pv(acc, s_p, s_ab, nkr, false);
    }
    store_tile(acc, p.dq + t.qoff + i0 * ldq, ldq, nqr, c0, p.Dqk, p.acc);
}

/* ---- merge: one warp per (b, i, h) row ------------------------------------------------------------ */
template <class T>
__global__ void k_att_merge(int64_t rows, int H, int Lq, int Dv, T *o, float *lse, const T *ob, const float *lse_b) {
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return; /* whole warps only: r is the same for every lane */
    const int64_t h = r % H, bi = r / H, i = bi % Lq, b = bi / Lq, li = (b * H + h) * Lq + i;
    float la = 0.0f, lb = 0.0f;
    if (lane == 0) la = lse[li], lb = lse_b[li]; /* only lane 0 touches lse: no race with its write */
    la = __shfl_sync(0xffffffffu, la, 0);
    lb = __shfl_sync(0xffffffffu, lb, 0);
    if (lb == -INFINITY) return; /* the block adds nothing */
    T *orow = o + r * Dv;
    const T *brow = ob + r * Dv;
    if (la == -INFINITY) {
        for (int e = lane; e < Dv; e += 32) orow[e] = brow[e];
        if (lane == 0) lse[li] = lb;
        return;
    }
    const float m = fmaxf(la, lb), wa = expf(la - m), wb = expf(lb - m), inv = 1.0f / (wa + wb);
    for (int e = lane; e < Dv; e += 32) orow[e] = from_f<T>((to_f(orow[e]) * wa + to_f(brow[e]) * wb) * inv);
    if (lane == 0) lse[li] = m + logf(wa + wb);
}

/* ---- host ------------------------------------------------------------------------------------------ */
/* The DropKey parameters of a call (the CPU's drop_mask, less the per-task base). */
static AttDrop attention_drop(const MgAttentionArgs *a, const AttGeom &g) {
    AttDrop d = {};
    const int64_t C = a->drop_chunk_len;
    d.active = a->drop_p > 0.0;
    d.nkd = C > 0 ? (int)C : g.nk;
    d.qoff = C > 0 ? g.off : 0;
    d.koff = 0;
    if (a->block) {
        d.qoff = (int)a->q_row0;
        d.koff = (int)a->k_row0;
    }
    if (d.active) {
        d.key = mg_fmix64(a->drop_seed);
        d.thr = (uint64_t)ceil(a->drop_p * 0x1.0p53); /* the CPU's mg_keep_threshold */
    }
    d.seq0 = a->drop_seq0;
    d.stride = a->drop_seq_stride > 0 ? a->drop_seq_stride : 1;
    d.chunks = a->drop_chunks > 0 ? a->drop_chunks : g.nchunks;
    d.chunk0 = a->drop_chunk0;
    d.head0 = a->drop_heads > 0 ? a->drop_head0 : 0;
    d.Hg = a->drop_heads > 0 ? a->drop_heads : a->H;
    d.C = C;
    return d;
}

template <class T> static AttP<T> att_params(const MgAttentionArgs *a, const AttGeom &g) {
    AttP<T> p = {};
    p.q = (const T *)a->q;
    p.k = (const T *)a->k;
    p.v = (const T *)a->v;
    p.o = (const T *)a->o;
    p.dout = (const T *)a->dout;
    p.H = a->H;
    p.Dqk = a->Dqk;
    p.Dv = a->Dv;
    p.Lq = a->Lq;
    p.Lk = a->Lk;
    p.scale = (float)a->scale;
    p.acc = a->accumulate;
    p.g = g;
    p.d = attention_drop(a, g);
    return p;
}

static int cdiv(int n, int d) { return (n + d - 1) / d; }

/* Forward launch: o (NULL: lse only) and lse (NULL: not written). */
template <class T> static void launch_fwd(const MgBackend *be, AttP<T> p, int64_t ntasks, T *o, float *lse) {
    p.out = o;
    p.lse_out = lse;
    const int nqt = cdiv(p.g.nq, AT_B), nvs = o ? cdiv(p.Dv, AT_B) : 1;
    MG_LAUNCH((k_att_fwd<T>), (unsigned)(ntasks * nqt * nvs), AT_T, 0, stream(be), p, nqt, nvs);
}

void attention_forward(const MgBackend *be, const MgAttentionArgs *a) {
    const AttGeom g = mg_attention_geometry(a, "attention_forward");
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H;
    if (ntasks == 0) return;
    MG_CHECK(a->o, "attention_forward: output o is NULL");
    MG_CU_DISPATCH(be, T, launch_fwd<T>(be, att_params<T>(a, g), ntasks, (T *)a->o, (float *)a->saved_lse));
}

template <class T> static void attention_backward_t(const MgBackend *be, const MgAttentionArgs *a, const AttGeom &g) {
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H, nl = (int64_t)a->B * a->H * a->Lq;
    AttP<T> p = att_params<T>(a, g);
    /* Without a saved log-sum-exp, recompute it with the forward (lse only, no o). */
    const float *lse = (const float *)a->saved_lse;
    if (!lse) {
        float *lse_tmp = (float *)ws(be, 1, sizeof(float) * (size_t)nl);
        launch_fwd<T>(be, p, ntasks, (T *)NULL, lse_tmp);
        lse = lse_tmp;
    }
    p.lse = lse;
    /* Di: block mode, rowsum(dO * O) of the merged rows (ops.h); otherwise the CPU's sum_j P_ij dP_ij,
     * which does not see the rounding of a stored O (with bf16 storage that rounding alone gives dq
     * errors of tens of percent at the cancellations of dS = P (dP - Di)). */
    float *di = (float *)ws(be, 0, sizeof(float) * (size_t)nl);
    const int nqt = cdiv(g.nq, AT_B), nkt = cdiv(g.nk, AT_B), nds = cdiv(a->Dqk, AT_B), nvs = cdiv(a->Dv, AT_B);
    if (!a->dq && !a->dk) /* dV needs no Di */
        ;
    else if (a->block)
        MG_LAUNCH((k_att_di<T>), (unsigned)((nl + 7) / 8), 256, 0, stream(be), nl, a->H, a->Lq, a->Dv, p.dout,
                  (const T *)a->o, di);
    else
        MG_LAUNCH((k_att_di_exact<T>), (unsigned)(ntasks * nqt), AT_T, 0, stream(be), p, nqt, di);
    p.di = di;
    p.dq = (T *)a->dq;
    p.dk = (T *)a->dk;
    p.dv = (T *)a->dv;
    const int fuse_dv = p.dk && p.dv && nvs == 1; /* narrow values: dV rides along in the dK pass */
    if (p.dv && !fuse_dv)
        MG_LAUNCH((k_att_dv<T>), (unsigned)(ntasks * nkt * nvs), AT_T, 0, stream(be), p, nkt, nvs);
    if (p.dk) MG_LAUNCH((k_att_dk<T>), (unsigned)(ntasks * nkt * nds), AT_T, 0, stream(be), p, nkt, nds, fuse_dv);
    if (p.dq) MG_LAUNCH((k_att_dq<T>), (unsigned)(ntasks * nqt * nds), AT_T, 0, stream(be), p, nqt, nds);
}

void attention_backward(const MgBackend *be, const MgAttentionArgs *a) {
    const AttGeom g = mg_attention_geometry(a, "attention_backward");
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H;
    if (ntasks == 0 || (!a->dq && !a->dk && !a->dv)) return;
    MG_CHECK(a->dout, "attention_backward: dout is NULL");
    MG_CHECK(!a->block || (a->saved_lse && a->o),
             "attention_backward: block mode needs saved_lse and o of the whole rows (merged over every block)");
    MG_CU_DISPATCH(be, T, attention_backward_t<T>(be, a, g));
}

void attention_merge(const MgBackend *be, const MgAttnMergeArgs *a) {
    MG_CHECK(a->B >= 0 && a->Lq >= 0 && a->H >= 1 && a->Dv >= 1, "attention_merge: bad shape B=%d Lq=%d H=%d Dv=%d",
             a->B, a->Lq, a->H, a->Dv);
    MG_CHECK(a->o && a->lse && a->o_b && a->lse_b, "attention_merge: o, lse, o_b and lse_b must not be NULL");
    const int64_t rows = (int64_t)a->B * a->Lq * a->H;
    if (rows == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_att_merge<T>), (unsigned)((rows + 7) / 8), 256, 0, stream(be), rows, a->H, a->Lq, a->Dv,
                                    (T *)a->o, (float *)a->lse, (const T *)a->o_b, (const float *)a->lse_b));
}

} /* namespace mgcu */
