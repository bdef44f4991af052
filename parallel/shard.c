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

void mg_reduce_scatter_sum(MgTransport *t, MgDtype dtype, const void *in, int64_t n, void *out) {
    MG_CHECK(dtype == MG_F32 || dtype == MG_F64, "reduce-scatter: dtype %s is not supported", mg_dtype_name(dtype));
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
    if (dtype == MG_F32) {
        float *o = out;
        const float *s = (const float *)recv;
        for (int64_t i = 0; i < len; i++) o[i] = s[i];
        for (int q = 1; q < P; q++)
            for (int64_t i = 0; i < len; i++) o[i] += s[(size_t)q * (size_t)len + (size_t)i];
    } else {
        double *o = out;
        const double *s = (const double *)recv;
        for (int64_t i = 0; i < len; i++) o[i] = s[i];
        for (int q = 1; q < P; q++)
            for (int64_t i = 0; i < len; i++) o[i] += s[(size_t)q * (size_t)len + (size_t)i];
    }
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
