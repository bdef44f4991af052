/* Sharded collectives (shard.h) written over the transport's point-to-point calls. */
#include "shard.h"

#include <stdlib.h>
#include <string.h>

enum { TAG_RS = MG_TP_TAG_USER_MAX - 8, TAG_AG, TAG_GATHER };

void mg_shard_range(int64_t n, int P, int r, int64_t *off, int64_t *len) {
    const int64_t blk = (n + P - 1) / P;
    int64_t o = MG_MIN((int64_t)r * blk, n), e = MG_MIN(o + blk, n);
    *off = o;
    *len = e - o;
}

/* out[i] = recv[0][i] + recv[1][i] + ... + recv[P-1][i], added in that order (P blocks of len). */
static void sum_in_rank_order(MgDtype dtype, const char *recv, int P, int64_t len, void *out) {
    if (dtype == MG_F32) {
        float *o = out;
        const float *s = (const float *)recv;
        for (int64_t i = 0; i < len; i++) o[i] = s[i];
        for (int q = 1; q < P; q++)
            for (int64_t i = 0; i < len; i++) o[i] += s[(size_t)q * (size_t)len + (size_t)i];
    } else if (dtype == MG_BF16) {
        /* bf16 gradients (the CUDA backend): summed in float in rank order, rounded once */
        uint16_t *o = out;
        const uint16_t *s = (const uint16_t *)recv;
        for (int64_t i = 0; i < len; i++) {
            float acc = 0.0f;
            for (int q = 0; q < P; q++) {
                union {
                    uint32_t u;
                    float f;
                } x = {(uint32_t)s[(size_t)q * (size_t)len + (size_t)i] << 16};
                acc += x.f;
            }
            union {
                float f;
                uint32_t u;
            } y = {acc};
            o[i] = (y.u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((y.u >> 16) | 0x40)
                                                     : (uint16_t)((y.u + 0x7fffu + ((y.u >> 16) & 1u)) >> 16);
        }
    } else {
        double *o = out;
        const double *s = (const double *)recv;
        for (int64_t i = 0; i < len; i++) o[i] = s[i];
        for (int q = 1; q < P; q++)
            for (int64_t i = 0; i < len; i++) o[i] += s[(size_t)q * (size_t)len + (size_t)i];
    }
}

void mg_reduce_scatter_sum(MgTransport *t, MgDtype dtype, const void *in, int64_t n, void *out) {
    MG_CHECK(dtype == MG_F32 || dtype == MG_F64 || dtype == MG_BF16, "reduce-scatter: dtype %s is not supported",
             mg_dtype_name(dtype));
    const int P = t->size, r = t->rank;
    const size_t es = mg_dtype_size(dtype);
    int64_t off, len;
    mg_shard_range(n, P, r, &off, &len);
    if (P == 1) {
        memcpy(out, in, (size_t)len * es);
        return;
    }
    char *recv = mg_malloc((size_t)P * (size_t)MG_MAX(len, 1) * es);
    MgTpRequest **req = mg_malloc(sizeof *req * (size_t)(2 * P));
    int nr = 0;
    for (int q = 0; q < P; q++) {
        if (q == r) continue;
        int64_t qo, ql;
        mg_shard_range(n, P, q, &qo, &ql);
        if (ql > 0) req[nr++] = mg_tp_isend(t, q, TAG_RS, (const char *)in + (size_t)qo * es, (size_t)ql * es);
        if (len > 0) req[nr++] = mg_tp_irecv(t, q, TAG_RS, recv + (size_t)q * (size_t)len * es, (size_t)len * es);
    }
    memcpy(recv + (size_t)r * (size_t)len * es, (const char *)in + (size_t)off * es, (size_t)len * es);
    for (int i = 0; i < nr; i++) mg_tp_wait(t, req[i]);
    sum_in_rank_order(dtype, recv, P, len, out);
    free(req);
    free(recv);
}

void mg_all_gather_shards(MgTransport *t, size_t es, void *buf, int64_t n) {
    const int P = t->size, r = t->rank;
    if (P == 1) return;
    int64_t off, len;
    mg_shard_range(n, P, r, &off, &len);
    MgTpRequest **req = mg_malloc(sizeof *req * (size_t)(2 * P));
    int nr = 0;
    for (int q = 0; q < P; q++) {
        if (q == r) continue;
        int64_t qo, ql;
        mg_shard_range(n, P, q, &qo, &ql);
        if (len > 0) req[nr++] = mg_tp_isend(t, q, TAG_AG, (const char *)buf + (size_t)off * es, (size_t)len * es);
        if (ql > 0) req[nr++] = mg_tp_irecv(t, q, TAG_AG, (char *)buf + (size_t)qo * es, (size_t)ql * es);
    }
    for (int i = 0; i < nr; i++) mg_tp_wait(t, req[i]);
    free(req);
}

void mg_gather_shards_to_root(MgTransport *t, size_t es, const void *mine, void *root_buf, int64_t n) {
    const int P = t->size, r = t->rank;
    int64_t off, len;
    mg_shard_range(n, P, r, &off, &len);
    if (r != 0) {
        if (len > 0) mg_tp_send(t, 0, TAG_GATHER, mine, (size_t)len * es);
        return;
    }
    memcpy(root_buf, mine, (size_t)len * es); /* rank 0's shard starts at 0 */
    for (int q = 1; q < P; q++) {
        mg_shard_range(n, P, q, &off, &len);
        if (len > 0) mg_tp_recv(t, q, TAG_GATHER, (char *)root_buf + (size_t)off * es, (size_t)len * es);
    }
}

/* ---- the reduce-scatter in pieces ------------------------------------------------------------------------- */
enum { TAG_BUCKET = MG_TP_TAG_USER_MAX - 5 };

struct MgShardReducer {
    MgTransport *t;
    MgDtype dtype;
    size_t es;
    int64_t n, off, len; /* the array, and this rank's shard */
    char *recv;          /* P x len: every rank's copy of this rank's shard (own one included) */
    MgTpRequest **req;
    int n_req, cap_req;
    int64_t reported;
};

MgShardReducer *mg_shard_reducer_create(MgTransport *t, MgDtype dtype, int64_t n) {
    MG_CHECK(dtype == MG_F32 || dtype == MG_F64 || dtype == MG_BF16, "shard reducer: dtype %s is not supported",
             mg_dtype_name(dtype));
    MgShardReducer *r = mg_calloc(1, sizeof *r);
    r->t = t;
    r->dtype = dtype;
    r->es = mg_dtype_size(dtype);
    r->n = n;
    mg_shard_range(n, t->size, t->rank, &r->off, &r->len);
    r->recv = mg_malloc((size_t)t->size * (size_t)MG_MAX(r->len, 1) * r->es);
    return r;
}

static void push_req(MgShardReducer *r, MgTpRequest *q) {
    if (r->n_req == r->cap_req) {
        r->cap_req = r->cap_req ? 2 * r->cap_req : 64;
        r->req = mg_realloc(r->req, sizeof *r->req * (size_t)r->cap_req);
    }
    r->req[r->n_req++] = q;
}

void mg_shard_reducer_ready(MgShardReducer *r, const void *host, int64_t off, int64_t len) {
    const int P = r->t->size, me = r->t->rank;
    MG_CHECK(off >= 0 && len >= 0 && off + len <= r->n, "shard reducer: range [%lld, %lld) outside [0, %lld)",
             (long long)off, (long long)(off + len), (long long)r->n);
    r->reported += len;
    for (int q = 0; q < P; q++) {
        int64_t qo, ql;
        mg_shard_range(r->n, P, q, &qo, &ql);
        const int64_t a = MG_MAX(off, qo), e = MG_MIN(off + len, qo + ql);
        if (a >= e) continue;
        if (q == me) {
            memcpy(r->recv + ((size_t)me * (size_t)r->len + (size_t)(a - r->off)) * r->es,
                   (const char *)host + (size_t)a * r->es, (size_t)(e - a) * r->es);
            /* and every other rank's part of this range of my shard */
            for (int p = 0; p < P; p++)
                if (p != me)
                    push_req(r, mg_tp_irecv(r->t, p, TAG_BUCKET,
                                            r->recv + ((size_t)p * (size_t)r->len + (size_t)(a - r->off)) * r->es,
                                            (size_t)(e - a) * r->es));
        } else {
            push_req(r, mg_tp_isend(r->t, q, TAG_BUCKET, (const char *)host + (size_t)a * r->es, (size_t)(e - a) * r->es));
        }
    }
}

int64_t mg_shard_reducer_pending(const MgShardReducer *r) { return r->reported; }

void mg_shard_reducer_finish(MgShardReducer *r, void *out) {
    MG_CHECK(r->reported == r->n, "shard reducer: %lld of %lld elements were reported this round",
             (long long)r->reported, (long long)r->n);
    for (int i = 0; i < r->n_req; i++) mg_tp_wait(r->t, r->req[i]);
    r->n_req = 0;
    r->reported = 0;
    const int P = r->t->size;
    const int64_t len = r->len;
    sum_in_rank_order(r->dtype, r->recv, P, len, out);
}

void mg_shard_reducer_free(MgShardReducer *r) {
    if (!r) return;
    for (int i = 0; i < r->n_req; i++) mg_tp_wait(r->t, r->req[i]);
    free(r->req);
    free(r->recv);
    free(r);
}
