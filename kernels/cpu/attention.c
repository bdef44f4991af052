/* Chunk-wise causal softmax attention (spec §5).
 *
 * Work is split into independent tasks (batch row, chunk, head); each task writes a disjoint part of every
 * output (o, lse, dq, dk, dv), so the result does not depend on the thread count. Within a task the query
 * rows are processed in blocks of ATT_RB rows. A row block [i0, i1) only sees keys [0, kend) with
 * kend = i1 + off (off = Lk - Lq in decoding, 0 in training), so every GEMM runs over the causal
 * trapezoid and the work above the diagonal is skipped up to one RB x RB triangle per block.
 *
 * Memory: per thread one RB x nk score block (forward) plus one RB x nk block for dP (backward), never a
 * full score matrix. The forward saves only the log-sum-exp of each score row; the backward recomputes
 * S = scale Q K^T for the row block with the same GEMM shapes and P = exp(S - lse).
 *
 * Backward per row block (P, dP, dS restricted to the visible keys):
 *   dV[0:kend]  += P^T dO_rows
 *   dP           = dO_rows V[0:kend]^T
 *   Di           = sum_j P_ij dP_ij              (= rowsum(dO * O), without needing O)
 *   dS           = P * (dP - Di) * scale
 *   dQ_rows      = dS K[0:kend]
 *   dK[0:kend]  += dS^T Q_rows
 * The key-side gradients of a task are summed over its row blocks in a fixed order. */
#include <string.h>

#include "cpu_real.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define ATT_RB 128 /* query rows per block */

typedef struct {
    int nchunks;     /* chunks per batch row */
    int nq, nk, off; /* queries and keys per chunk; query i sees keys j <= i + off */
} AttGeom;

static AttGeom attention_geometry(const MgAttentionArgs *a, const char *who) {
    MG_CHECK(a->B >= 0 && a->H >= 1 && a->Dqk >= 1 && a->Dv >= 1,
             "%s: bad shape B=%d H=%d Dqk=%d Dv=%d (need B >= 0, H, Dqk, Dv >= 1)", who, a->B, a->H, a->Dqk,
             a->Dv);
    MG_CHECK(a->Lq >= 1 && a->Lk >= 1, "%s: bad lengths Lq=%d Lk=%d (need >= 1)", who, a->Lq, a->Lk);
    MG_CHECK(a->chunk >= 1, "%s: chunk=%d must be >= 1", who, a->chunk);
    MG_CHECK(a->drop_p >= 0.0 && a->drop_p < 1.0, "%s: drop_p=%g must be in [0, 1)", who, a->drop_p);
    MG_CHECK(a->drop_heads >= 0 && (a->drop_heads == 0 || (a->drop_head0 >= 0 && a->drop_head0 + a->H <= a->drop_heads)),
             "%s: heads %lld.. of %lld do not hold the H=%d heads of this call", who, (long long)a->drop_head0,
             (long long)a->drop_heads, a->H);
    MG_CHECK(a->drop_chunk_len >= 0 && (a->drop_chunk_len == 0 || a->Lk <= a->drop_chunk_len),
             "%s: drop_chunk_len=%lld must be 0 or hold the Lk=%d keys", who, (long long)a->drop_chunk_len, a->Lk);
    MG_CHECK(a->q && a->k && a->v, "%s: q, k and v must not be NULL", who);
    AttGeom g;
    if (a->Lq == a->Lk) {
        const int L = a->Lq, c = MG_MIN(a->chunk, L);
        MG_CHECK(L % c == 0,
                 "%s: sequence length L=%d is not a multiple of the attention chunk size %d; use a length that "
                 "is a multiple of the chunk size (or at most one chunk)",
                 who, L, a->chunk);
        g.nchunks = L / c;
        g.nq = g.nk = c;
        g.off = 0;
    } else {
        MG_CHECK(a->Lq < a->Lk && a->Lk <= a->chunk,
                 "%s: decoding needs Lq < Lk <= chunk (got Lq=%d, Lk=%d, chunk=%d): the queries are the last Lq "
                 "of Lk keys inside one chunk; flush the cache at chunk boundaries",
                 who, a->Lq, a->Lk, a->chunk);
        g.nchunks = 1;
        g.nq = a->Lq;
        g.nk = a->Lk;
        g.off = a->Lk - a->Lq;
    }
    return g;
}

/* Pointers of one task's chunk: row 0 of the chunk for head h, row stride H*D. */
typedef struct {
    const real *q, *k, *v, *dout;
    real *o, *dq, *dk, *dv;
    real *lse; /* nq entries, contiguous */
} AttTask;

static AttTask attention_task(const MgAttentionArgs *a, const AttGeom *g, int64_t task, int for_backward) {
    const int H = a->H;
    const int h = (int)(task % H);
    const int64_t bc = task / H;
    const int ci = (int)(bc % g->nchunks), b = (int)(bc / g->nchunks);
    const size_t qrow = (size_t)b * a->Lq + (size_t)ci * g->nq; /* token index of the chunk's query 0 */
    const size_t krow = (size_t)b * a->Lk + (size_t)ci * g->nk;
    AttTask t;
    memset(&t, 0, sizeof t);
    t.q = (const real *)a->q + (qrow * H + h) * a->Dqk;
    t.k = (const real *)a->k + (krow * H + h) * a->Dqk;
    t.v = (const real *)a->v + (krow * H + h) * a->Dv;
    if (a->saved_lse) t.lse = (real *)a->saved_lse + ((size_t)b * H + h) * a->Lq + (size_t)ci * g->nq;
    if (!for_backward) {
        t.o = (real *)a->o + (qrow * H + h) * a->Dv;
    } else {
        t.dout = (const real *)a->dout + (qrow * H + h) * a->Dv;
        if (a->dq) t.dq = (real *)a->dq + (qrow * H + h) * a->Dqk;
        if (a->dk) t.dk = (real *)a->dk + (krow * H + h) * a->Dqk;
        if (a->dv) t.dv = (real *)a->dv + (krow * H + h) * a->Dv;
    }
    return t;
}

/* S[r, 0:kend] = scale * Q_rows K[0:kend]^T for query rows [i0, i0+rb). */
static void scores(const MgAttentionArgs *a, const AttTask *t, int i0, int rb, int kend, real *S, int ldS) {
    const int ldq = a->H * a->Dqk;
    CPU_FN(gemm)(0, 1, rb, kend, a->Dqk, (real)a->scale, t->q + (size_t)i0 * ldq, ldq, t->k, ldq, (real)0, S,
                 ldS);
}

/* DropKey mask of one task (see MgAttentionArgs): dropped scores become -inf before the softmax. */
typedef struct {
    uint64_t key, threshold, base; /* base = task * nq * nk (task * C * C with drop_chunk_len = C) */
    int nk, qoff, active;          /* row length of the index, and the global row of local query 0 */
} DropMask;

static DropMask drop_mask(const MgAttentionArgs *a, const AttGeom *g, int64_t task) {
    const int64_t C = a->drop_chunk_len;
    DropMask d = {0, 0, 0, C > 0 ? (int)C : g->nk, C > 0 ? g->off : 0, a->drop_p > 0.0};
    if (d.active) {
        d.key = mg_fmix64(a->drop_seed);
        d.threshold = mg_keep_threshold(a->drop_p);
        /* task = (b * nchunks + ci) * H + h locally; the mask index uses the global sequence and chunk */
        const int H = a->H;
        const int64_t bc = task / H, ci = bc % g->nchunks, b = bc / g->nchunks;
        const int64_t h = task % H + (a->drop_heads > 0 ? a->drop_head0 : 0), Hg = a->drop_heads > 0 ? a->drop_heads : H;
        const int64_t chunks = a->drop_chunks > 0 ? a->drop_chunks : g->nchunks;
        const uint64_t gtask =
            ((uint64_t)(a->drop_seq0 + b * (a->drop_seq_stride > 0 ? a->drop_seq_stride : 1)) * (uint64_t)chunks +
             (uint64_t)(a->drop_chunk0 + ci)) * (uint64_t)Hg +
            (uint64_t)h;
        d.base = C > 0 ? gtask * (uint64_t)C * (uint64_t)C : gtask * (uint64_t)g->nq * (uint64_t)g->nk;
    }
    return d;
}

/* Turns the score rows into probabilities in place (zeros above the causal limit, up to kend).
 * With lse_in the probabilities are exp(S - lse) (backward); otherwise the row max is subtracted, the
 * sum is taken in double, and lse_out (if any) receives max + log(sum). Dropped keys get probability 0
 * (the diagonal key i + off is never dropped). */
static void softmax_rows(real *S, int ldS, int i0, int rb, int kend, int off, const real *lse_in,
                         real *lse_out, const DropMask *dm) {
    for (int r = 0; r < rb; r++) {
        real *s = S + (size_t)r * ldS;
        const int vis = MG_MIN(kend, i0 + r + off + 1); /* keys [0, vis) are visible */
        if (dm && dm->active) {
            const uint64_t row = dm->base + (uint64_t)(dm->qoff + i0 + r) * (uint64_t)dm->nk;
            for (int j = 0; j < vis - 1; j++)
                if (!mg_mask_keep(dm->key, row + (uint64_t)j, dm->threshold)) s[j] = -INFINITY;
        }
        if (lse_in) {
            const real l = lse_in[i0 + r];
            for (int j = 0; j < vis; j++) s[j] = s[j] == -INFINITY ? (real)0 : mg_exp(s[j] - l);
        } else {
            real m = s[0];
            for (int j = 1; j < vis; j++) m = s[j] > m ? s[j] : m;
            acc_t sum = 0;
            for (int j = 0; j < vis; j++) {
                s[j] = s[j] == -INFINITY ? (real)0 : mg_exp(s[j] - m);
                sum += s[j];
            }
            const real inv = (real)(1.0 / sum);
            for (int j = 0; j < vis; j++) s[j] *= inv;
            if (lse_out) lse_out[i0 + r] = (real)(m + log(sum));
        }
        for (int j = vis; j < kend; j++) s[j] = 0;
    }
}

static void attention_forward_task(const MgAttentionArgs *a, const AttGeom *g, const AttTask *t, real *S,
                                   const DropMask *dm) {
    const int ldS = g->nk, ldv = a->H * a->Dv;
    for (int i0 = 0; i0 < g->nq; i0 += ATT_RB) {
        const int rb = MG_MIN(ATT_RB, g->nq - i0), kend = MG_MIN(g->nk, i0 + rb + g->off);
        scores(a, t, i0, rb, kend, S, ldS);
        softmax_rows(S, ldS, i0, rb, kend, g->off, NULL, t->lse, dm);
        CPU_FN(gemm)(0, 0, rb, a->Dv, kend, (real)1, S, ldS, t->v, ldv, (real)0, t->o + (size_t)i0 * ldv, ldv);
    }
}

/* Sets rows [0, n) of a strided (n x d, row stride ld) block to zero. */
static void zero_rows(real *p, int n, int d, int ld) {
    for (int i = 0; i < n; i++) memset(p + (size_t)i * ld, 0, sizeof(real) * (size_t)d);
}

static void attention_backward_task(const MgAttentionArgs *a, const AttGeom *g, const AttTask *t, real *P,
                                    real *dP, const DropMask *dm) {
    const int ldS = g->nk, ldq = a->H * a->Dqk, ldv = a->H * a->Dv;
    const real scale = (real)a->scale;
    const int need_ds = t->dq || t->dk;
    /* key-side gradients are summed over row blocks, so start from zero unless accumulating */
    if (!a->accumulate) {
        if (t->dk) zero_rows(t->dk, g->nk, a->Dqk, ldq);
        if (t->dv) zero_rows(t->dv, g->nk, a->Dv, ldv);
    }
    for (int i0 = 0; i0 < g->nq; i0 += ATT_RB) {
        const int rb = MG_MIN(ATT_RB, g->nq - i0), kend = MG_MIN(g->nk, i0 + rb + g->off);
        const real *dO = t->dout + (size_t)i0 * ldv;
        scores(a, t, i0, rb, kend, P, ldS);
        softmax_rows(P, ldS, i0, rb, kend, g->off, t->lse, NULL, dm);
        if (t->dv) CPU_FN(gemm)(1, 0, kend, a->Dv, rb, (real)1, P, ldS, dO, ldv, (real)1, t->dv, ldv);
        if (!need_ds) continue;
        CPU_FN(gemm)(0, 1, rb, kend, a->Dv, (real)1, dO, ldv, t->v, ldv, (real)0, dP, ldS);
        for (int r = 0; r < rb; r++) {
            const real *p = P + (size_t)r * ldS;
            real *d = dP + (size_t)r * ldS;
            const int vis = MG_MIN(kend, i0 + r + g->off + 1);
            acc_t Di = 0;
            for (int j = 0; j < vis; j++) Di += (acc_t)p[j] * d[j];
            const real di = (real)Di;
            for (int j = 0; j < vis; j++) d[j] = p[j] * (d[j] - di) * scale;
            for (int j = vis; j < kend; j++) d[j] = 0;
        }
        if (t->dq)
            CPU_FN(gemm)(0, 0, rb, a->Dqk, kend, (real)1, dP, ldS, t->k, ldq, a->accumulate ? (real)1 : (real)0,
                         t->dq + (size_t)i0 * ldq, ldq);
        if (t->dk)
            CPU_FN(gemm)(1, 0, kend, a->Dqk, rb, (real)1, dP, ldS, t->q + (size_t)i0 * ldq, ldq, (real)1, t->dk,
                         ldq);
    }
}

void CPU_FN(attention_forward)(const MgBackend *be, const MgAttentionArgs *a) {
    const AttGeom g = attention_geometry(a, "attention_forward");
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H;
    if (ntasks == 0) return;
    MG_CHECK(a->o, "attention_forward: output o is NULL");
    cpu_ws_reserve(be, 0, sizeof(real) * (size_t)MG_MIN(ATT_RB, g.nq) * g.nk);
    /* Always a parallel region (even for one task) so that BLAS runs single-threaded inside it and
     * every output element is produced by the same sequence of operations whatever the thread count. */
#pragma omp parallel
    {
        real *S = cpu_ws_thread(be, 0);
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            const AttTask t = attention_task(a, &g, task, 0);
            const DropMask dm = drop_mask(a, &g, task);
            attention_forward_task(a, &g, &t, S, &dm);
        }
    }
}

void CPU_FN(attention_backward)(const MgBackend *be, const MgAttentionArgs *a) {
    const AttGeom g = attention_geometry(a, "attention_backward");
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H;
    if (ntasks == 0 || (!a->dq && !a->dk && !a->dv)) return;
    MG_CHECK(a->dout, "attention_backward: dout is NULL");
    /* Without a saved log-sum-exp, recompute it into a scratch buffer with a forward-style pass. */
    real *lse_tmp = NULL;
    MgAttentionArgs aa = *a;
    if (!a->saved_lse) {
        lse_tmp = cpu_ws_shared(be, 0, sizeof(real) * (size_t)a->B * a->H * a->Lq);
        aa.saved_lse = lse_tmp;
    }
    const size_t blk = (size_t)MG_MIN(ATT_RB, g.nq) * g.nk;
    cpu_ws_reserve(be, 0, sizeof(real) * 2 * blk);
#pragma omp parallel
    {
        real *P = cpu_ws_thread(be, 0), *dP = P + blk;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            const AttTask t = attention_task(&aa, &g, task, 1);
            const DropMask dm = drop_mask(&aa, &g, task);
            if (lse_tmp)
                for (int i0 = 0; i0 < g.nq; i0 += ATT_RB) {
                    const int rb = MG_MIN(ATT_RB, g.nq - i0), kend = MG_MIN(g.nk, i0 + rb + g.off);
                    scores(&aa, &t, i0, rb, kend, P, g.nk);
                    softmax_rows(P, g.nk, i0, rb, kend, g.off, NULL, t.lse, &dm);
                }
            attention_backward_task(&aa, &g, &t, P, dP, &dm);
        }
    }
}
