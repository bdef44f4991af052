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
 * The key-side gradients of a task are summed over its row blocks in a fixed order.
 *
 * Block mode (ring attention): the call holds one block of a chunk's queries and one block of its keys;
 * the causal limit is set by their chunk rows (off = q_row0 - k_row0), the forward returns the block's own
 * softmax (merged by attention_merge), and the backward uses the whole row's lse and
 * Di = rowsum(dO * O) of the merged output instead of the block's own sum. */
#include <string.h>

#include "cpu_real.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define ATT_RB 128 /* query rows per block */

typedef MgAttGeom AttGeom;

/* Pointers of one task's chunk: row 0 of the chunk for head h, row stride H*D. */
typedef struct {
    const real *q, *k, *v, *dout;
    real *o, *dq, *dk, *dv;
    real *lse; /* nq entries, contiguous */
    real *delta; /* block-mode backward: nq entries, rowsum(dO * O) */
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
    int nk, qoff, koff, active;    /* row length of the index, and the global rows of local query 0, key 0 */
} DropMask;

static DropMask drop_mask(const MgAttentionArgs *a, const AttGeom *g, int64_t task) {
    const int64_t C = a->drop_chunk_len;
    DropMask d = {0, 0, 0, C > 0 ? (int)C : g->nk, C > 0 ? g->off : 0, 0, a->drop_p > 0.0};
    if (a->block) {
        d.qoff = (int)a->q_row0;
        d.koff = (int)a->k_row0;
    }
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
 * (the diagonal key i + off is never dropped). A row whose visible keys are all dropped (block mode
 * only: a block without the diagonal) gets probabilities 0 and lse -inf. */
static void softmax_rows(real *S, int ldS, int i0, int rb, int kend, int off, const real *lse_in,
                         real *lse_out, const DropMask *dm) {
    for (int r = 0; r < rb; r++) {
        real *s = S + (size_t)r * ldS;
        const int diag = i0 + r + off, vis = MG_MIN(kend, diag + 1); /* keys [0, vis) are visible */
        if (dm && dm->active) {
            const uint64_t row = dm->base + (uint64_t)(dm->qoff + i0 + r) * (uint64_t)dm->nk + (uint64_t)dm->koff;
            for (int j = 0; j < vis; j++)
                if (j != diag && !mg_mask_keep(dm->key, row + (uint64_t)j, dm->threshold)) s[j] = -INFINITY;
        }
        if (lse_in) {
            const real l = lse_in[i0 + r];
            for (int j = 0; j < vis; j++) s[j] = s[j] == -INFINITY ? (real)0 : mg_exp(s[j] - l);
        } else {
            real m = s[0];
            for (int j = 1; j < vis; j++) m = s[j] > m ? s[j] : m;
            if (m == -INFINITY) { /* every visible key dropped */
                for (int j = 0; j < kend; j++) s[j] = 0;
                if (lse_out) lse_out[i0 + r] = -INFINITY;
                continue;
            }
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
            real di;
            if (t->delta) {
                di = t->delta[i0 + r];
            } else {
                acc_t Di = 0;
                for (int j = 0; j < vis; j++) Di += (acc_t)p[j] * d[j];
                di = (real)Di;
            }
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
    const AttGeom g = mg_attention_geometry(a, "attention_forward");
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
    const AttGeom g = mg_attention_geometry(a, "attention_backward");
    const int64_t ntasks = (int64_t)a->B * g.nchunks * a->H;
    if (ntasks == 0 || (!a->dq && !a->dk && !a->dv)) return;
    MG_CHECK(a->dout, "attention_backward: dout is NULL");
    MG_CHECK(!a->block || (a->saved_lse && a->o),
             "attention_backward: block mode needs saved_lse and o of the whole rows (merged over every block)");
    /* Without a saved log-sum-exp, recompute it into a scratch buffer with a forward-style pass. */
    real *lse_tmp = NULL;
    MgAttentionArgs aa = *a;
    if (!a->saved_lse) {
        lse_tmp = cpu_ws_shared(be, 0, sizeof(real) * (size_t)a->B * a->H * a->Lq);
        aa.saved_lse = lse_tmp;
    }
    const size_t blk = (size_t)MG_MIN(ATT_RB, g.nq) * g.nk;
    cpu_ws_reserve(be, 0, sizeof(real) * (2 * blk + (a->block ? (size_t)g.nq : 0)));
#pragma omp parallel
    {
        real *P = cpu_ws_thread(be, 0), *dP = P + blk;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            AttTask t = attention_task(&aa, &g, task, 1);
            if (a->block) { /* Di = rowsum(dO * O) of the merged output */
                const int ldv = a->H * a->Dv;
                const int64_t b = task / a->H, h = task % a->H;
                const real *o = (const real *)a->o + ((size_t)b * a->Lq * a->H + (size_t)h) * a->Dv;
                t.delta = dP + blk;
                for (int i = 0; i < g.nq; i++) {
                    acc_t d = 0;
                    for (int e = 0; e < a->Dv; e++) d += (acc_t)t.dout[(size_t)i * ldv + e] * o[(size_t)i * ldv + e];
                    t.delta[i] = (real)d;
                }
            }
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

void CPU_FN(attention_merge)(const MgBackend *be, const MgAttnMergeArgs *a) {
    (void)be;
    MG_CHECK(a->B >= 0 && a->Lq >= 0 && a->H >= 1 && a->Dv >= 1, "attention_merge: bad shape B=%d Lq=%d H=%d Dv=%d",
             a->B, a->Lq, a->H, a->Dv);
    MG_CHECK(a->o && a->lse && a->o_b && a->lse_b, "attention_merge: o, lse, o_b and lse_b must not be NULL");
    const int64_t rows = (int64_t)a->B * a->Lq * a->H;
    const int H = a->H, Lq = a->Lq, Dv = a->Dv;
#pragma omp parallel for schedule(static) if (rows * Dv > 65536)
    for (int64_t r = 0; r < rows; r++) { /* r = (b * Lq + i) * H + h, the layout of o */
        const int64_t h = r % H, bi = r / H, i = bi % Lq, b = bi / Lq;
        real *lse = (real *)a->lse + ((size_t)b * H + (size_t)h) * Lq + (size_t)i;
        const real lb = ((const real *)a->lse_b)[((size_t)b * H + (size_t)h) * Lq + (size_t)i];
        real *o = (real *)a->o + (size_t)r * Dv;
        const real *ob = (const real *)a->o_b + (size_t)r * Dv;
        if (lb == -INFINITY) continue; /* the block adds nothing */
        if (*lse == -INFINITY) {
            memcpy(o, ob, sizeof(real) * (size_t)Dv);
            *lse = lb;
            continue;
        }
        const real m = *lse > lb ? *lse : lb;
        const real wa = mg_exp(*lse - m), wb = mg_exp(lb - m), inv = (real)1 / (wa + wb);
        for (int e = 0; e < Dv; e++) o[e] = (o[e] * wa + ob[e] * wb) * inv;
        *lse = (real)(m + log(wa + wb));
    }
}
