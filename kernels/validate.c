/* Argument checks shared by every backend: the same shapes are refused with the same messages whichever
 * backend runs the op (ops.h: ops validate their arguments on the host before any work). */
#include "ops.h"

MgAttGeom mg_attention_geometry(const MgAttentionArgs *a, const char *who) {
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
    MgAttGeom g;
    if (a->block) {
        MG_CHECK(a->k_row0 >= 0 && a->q_row0 >= a->k_row0,
                 "%s: block mode needs 0 <= k_row0 <= q_row0 (got q_row0=%lld, k_row0=%lld): a key block after the "
                 "queries has no visible key",
                 who, (long long)a->q_row0, (long long)a->k_row0);
        MG_CHECK(a->drop_p == 0.0 ||
                     (a->drop_chunk_len > 0 && a->q_row0 + a->Lq <= a->drop_chunk_len && a->k_row0 + a->Lk <= a->drop_chunk_len),
                 "%s: block mode with DropKey needs drop_chunk_len = the chunk's length, holding rows q_row0 + Lq "
                 "and k_row0 + Lk (got %lld, %lld, %lld)",
                 who, (long long)a->drop_chunk_len, (long long)(a->q_row0 + a->Lq), (long long)(a->k_row0 + a->Lk));
        MG_CHECK(a->q_row0 - a->k_row0 <= (int64_t)1 << 30, "%s: q_row0 - k_row0 too large", who);
        g.nchunks = 1;
        g.nq = a->Lq;
        g.nk = a->Lk;
        g.off = (int)(a->q_row0 - a->k_row0);
        return g;
    }
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

void mg_timestep_norm_validate(const MgTimestepNormArgs *a, const char *op, int backward) {
    MG_CHECK(a->B >= 1 && a->L >= 1 && a->D >= 1 && a->G >= 1,
             "%s: B, L, D and G must all be >= 1 (got B=%d L=%d D=%d G=%d)", op, a->B, a->L, a->D, a->G);
    MG_CHECK(a->D % a->G == 0, "%s: D=%d is not divisible by the number of groups G=%d; pick G dividing D", op,
             a->D, a->G);
    MG_CHECK(a->eps >= 0.0, "%s: eps must be >= 0 (got %g)", op, a->eps);
    MG_CHECK((a->count_in == NULL) == (a->mean_in == NULL) && (a->mean_in == NULL) == (a->var_in == NULL),
             "%s: pass all three of count_in, mean_in, var_in (carried state) or none of them (fresh state)",
             op);
    MG_CHECK(a->x && a->weight && a->bias, "%s: x, weight and bias must not be NULL", op);
    if (backward || a->y)
        MG_CHECK(a->saved_mean && a->saved_rstd, "%s: saved_mean and saved_rstd (B x L x G) must not be NULL", op);
    if (backward) MG_CHECK(a->dy, "%s: dy must not be NULL", op);
    else MG_CHECK(a->y || a->count_out || a->mean_out || a->var_out,
                  "%s: nothing to compute (y and every carried-out state pointer are NULL)", op);
}
