/* The transport wrappers, the generic collectives and the one-rank transport (transport.h). */
#include "transport.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_peer(const MgTransport *t, int peer, int tag, const char *what) {
    if (peer < 0 || peer >= t->size || peer == t->rank)
        mg_fatal("transport %s: %s to peer %d: must be another rank of 0..%d (this is rank %d)", t->kind,
                 what, peer, t->size - 1, t->rank);
    if (tag < 0 || tag > MG_TP_TAG_MAX)
        mg_fatal("transport %s: %s with tag %d: must be 0..%d", t->kind, what, tag, MG_TP_TAG_MAX);
}

void mg_tp_send(MgTransport *t, int peer, int tag, const void *buf, size_t bytes) {
    check_peer(t, peer, tag, "send");
    t->send(t->ctx, peer, tag, buf, bytes);
}

void mg_tp_recv(MgTransport *t, int peer, int tag, void *buf, size_t bytes) {
    check_peer(t, peer, tag, "recv");
    t->recv(t->ctx, peer, tag, buf, bytes);
}

MgTpRequest *mg_tp_isend(MgTransport *t, int peer, int tag, const void *buf, size_t bytes) {
    check_peer(t, peer, tag, "isend");
    return t->isend(t->ctx, peer, tag, buf, bytes);
}

MgTpRequest *mg_tp_irecv(MgTransport *t, int peer, int tag, void *buf, size_t bytes) {
    check_peer(t, peer, tag, "irecv");
    return t->irecv(t->ctx, peer, tag, buf, bytes);
}

void mg_tp_wait(MgTransport *t, MgTpRequest *req) {
    if (req) t->wait(t->ctx, req);
}

void mg_tp_all_gather(MgTransport *t, const void *send, void *recv, size_t bytes) {
    t->all_gather(t->ctx, send, recv, bytes);
}

void mg_tp_barrier(MgTransport *t) { t->barrier(t->ctx); }

void mg_tp_all_reduce_sum(MgTransport *t, double *buf, size_t n) { t->all_reduce_sum(t->ctx, buf, n); }

void mg_tp_abort_all(MgTransport *t, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    t->abort_all(t->ctx, msg);
    abort(); /* an implementation that returned */
}

MgTransport *mg_tp_split(MgTransport *t, int color, int key) { return t->split(t->ctx, color, key); }

void mg_tp_free(MgTransport *t) {
    if (t) t->destroy(t);
}

/* ---- generic collectives ---------------------------------------------------------------------------- */
/* Every rank sends its block to every other rank (nonblocking), then receives from each in rank order. */
void mg_tp_generic_all_gather(MgTransport *t, const void *send, void *recv, size_t bytes) {
    int P = t->size, me = t->rank;
    memcpy((char *)recv + (size_t)me * bytes, send, bytes);
    if (P == 1) return;
    MgTpRequest **reqs = mg_malloc(sizeof(MgTpRequest *) * (size_t)P);
    for (int r = 0; r < P; r++)
        reqs[r] = r == me ? NULL : t->isend(t->ctx, r, MG_TP_TAG_GATHER, send, bytes);
    for (int r = 0; r < P; r++)
        if (r != me) t->recv(t->ctx, r, MG_TP_TAG_GATHER, (char *)recv + (size_t)r * bytes, bytes);
    for (int r = 0; r < P; r++)
        if (reqs[r]) t->wait(t->ctx, reqs[r]);
    free(reqs);
}

void mg_tp_generic_barrier(MgTransport *t) {
    if (t->size == 1) return;
    char one = 1, *all = mg_malloc((size_t)t->size);
    mg_tp_generic_all_gather(t, &one, all, 1);
    free(all);
}

void mg_tp_generic_all_reduce_sum(MgTransport *t, double *buf, size_t n) {
    if (t->size == 1 || n == 0) return;
    double *all = mg_malloc(sizeof(double) * n * (size_t)t->size);
    mg_tp_generic_all_gather(t, buf, all, n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double s = all[i];
        for (int r = 1; r < t->size; r++) s += all[(size_t)r * n + i];
        buf[i] = s;
    }
    free(all);
}

/* ---- self ------------------------------------------------------------------------------------------- */
MG_NORETURN static void self_send(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    (void)ctx; (void)tag; (void)buf; (void)bytes;
    mg_fatal("transport self: send to rank %d: a one-rank transport has no peer", peer);
}
MG_NORETURN static void self_recv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    (void)ctx; (void)tag; (void)buf; (void)bytes;
    mg_fatal("transport self: recv from rank %d: a one-rank transport has no peer", peer);
}
static MgTpRequest *self_isend(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    self_send(ctx, peer, tag, buf, bytes);
}
static MgTpRequest *self_irecv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    self_recv(ctx, peer, tag, buf, bytes);
}
static void self_wait(void *ctx, MgTpRequest *req) {
    (void)ctx; (void)req;
    mg_fatal("transport self: wait on a request that cannot exist");
}
static void self_all_gather(void *ctx, const void *send, void *recv, size_t bytes) {
    (void)ctx;
    memmove(recv, send, bytes);
}
static void self_barrier(void *ctx) { (void)ctx; }
static void self_all_reduce_sum(void *ctx, double *buf, size_t n) { (void)ctx; (void)buf; (void)n; }
static void self_abort_all(void *ctx, const char *msg) {
    (void)ctx;
    mg_fatal("%s", msg);
}
static MgTransport *self_split(void *ctx, int color, int key) {
    (void)ctx; (void)color; (void)key;
    return mg_transport_self();
}
static void self_destroy(MgTransport *t) { free(t); }

MgTransport *mg_transport_self(void) {
    MgTransport *t = mg_calloc(1, sizeof *t);
    t->kind = "self";
    t->rank = 0;
    t->size = 1;
    t->send = self_send;
    t->recv = self_recv;
    t->isend = self_isend;
    t->irecv = self_irecv;
    t->wait = self_wait;
    t->all_gather = self_all_gather;
    t->barrier = self_barrier;
    t->all_reduce_sum = self_all_reduce_sum;
    t->abort_all = self_abort_all;
    t->split = self_split;
    t->destroy = self_destroy;
    return t;
}
