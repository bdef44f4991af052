/* The local transport: P ranks in one process, one thread each (transport.h). Messages are copied into
 * a shared mailbox under one mutex; a send never blocks (like an eager MPI send), a receive waits for the
 * oldest message from its source with its tag. A sub-transport from split gets a mailbox of its own,
 * created by its lowest old rank and handed to the others through the parent. abort_all is fatal for
 * the calling thread only (a test harness hook decides what that means). */
#include "transport.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct LocalMsg {
    int src, dst, tag;
    size_t bytes;
    struct LocalMsg *next;
    unsigned char data[];
} LocalMsg;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    LocalMsg *head, *tail;
    int size;
    int refs; /* endpoints not yet freed */
} LocalBox;

typedef struct {
    LocalBox *box;
    int rank;
} LocalEp;

struct MgTpRequest {
    int is_recv;
    int peer, tag;
    void *buf;
    size_t bytes;
};

static void local_send(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    LocalEp *e = ctx;
    LocalMsg *m = mg_malloc(sizeof *m + (bytes ? bytes : 1));
    m->src = e->rank;
    m->dst = peer;
    m->tag = tag;
    m->bytes = bytes;
    m->next = NULL;
    if (bytes) memcpy(m->data, buf, bytes);
    pthread_mutex_lock(&e->box->mu);
    if (e->box->tail)
        e->box->tail->next = m;
    else
        e->box->head = m;
    e->box->tail = m;
    pthread_cond_broadcast(&e->box->cv);
    pthread_mutex_unlock(&e->box->mu);
}

static void local_recv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    LocalEp *e = ctx;
    LocalBox *b = e->box;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        LocalMsg *prev = NULL;
        for (LocalMsg *m = b->head; m; prev = m, m = m->next) {
            if (m->dst != e->rank || m->src != peer || m->tag != tag) continue;
            if (prev)
                prev->next = m->next;
            else
                b->head = m->next;
            if (b->tail == m) b->tail = prev;
            pthread_mutex_unlock(&b->mu);
            if (m->bytes != bytes)
                mg_fatal("transport local: rank %d expected %zu bytes from rank %d (tag %d), got %zu", e->rank,
                         bytes, peer, tag, m->bytes);
            if (bytes) memcpy(buf, m->data, bytes);
            free(m);
            return;
        }
        pthread_cond_wait(&b->cv, &b->mu);
    }
}

static MgTpRequest *local_isend(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    local_send(ctx, peer, tag, buf, bytes); /* buffered: complete at once */
    MgTpRequest *r = mg_calloc(1, sizeof *r);
    return r;
}

static MgTpRequest *local_irecv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    (void)ctx;
    MgTpRequest *r = mg_calloc(1, sizeof *r);
    r->is_recv = 1;
    r->peer = peer;
    r->tag = tag;
    r->buf = buf;
    r->bytes = bytes;
    return r;
}

static void local_wait(void *ctx, MgTpRequest *r) {
    if (r->is_recv) local_recv(ctx, r->peer, r->tag, r->buf, r->bytes);
    free(r);
}

static MgTransport *local_endpoint(LocalBox *box, int rank);

static void local_all_gather(void *ctx, const void *send, void *recv, size_t bytes) {
    LocalEp *e = ctx;
    MgTransport t = {.kind = "local", .rank = e->rank, .size = e->box->size, .ctx = e};
    t.send = local_send;
    t.recv = local_recv;
    t.isend = local_isend;
    t.wait = local_wait;
    mg_tp_generic_all_gather(&t, send, recv, bytes);
}

static void local_barrier(void *ctx) {
    LocalEp *e = ctx;
    char one = 1, *all = mg_malloc((size_t)e->box->size);
    local_all_gather(ctx, &one, all, 1);
    free(all);
}

static void local_all_reduce_sum(void *ctx, double *buf, size_t n) {
    LocalEp *e = ctx;
    int P = e->box->size;
    if (P == 1 || n == 0) return;
    double *all = mg_malloc(sizeof(double) * n * (size_t)P);
    local_all_gather(ctx, buf, all, n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double s = all[i];
        for (int r = 1; r < P; r++) s += all[(size_t)r * n + i];
        buf[i] = s;
    }
    free(all);
}

static void local_abort_all(void *ctx, const char *msg) {
    LocalEp *e = ctx;
    mg_fatal("rank %d: %s", e->rank, msg);
}

static MgTransport *local_split(void *ctx, int color, int key) {
    LocalEp *e = ctx;
    int P = e->box->size;
    int mine[2] = {color, key};
    int *all = mg_malloc(sizeof(int) * 2 * (size_t)P);
    local_all_gather(ctx, mine, all, sizeof mine);
    int n = 0, new_rank = 0, lowest = -1;
    for (int r = 0; r < P; r++) {
        if (all[2 * r] != color) continue;
        if (lowest < 0) lowest = r;
        n++;
        if (all[2 * r + 1] < key || (all[2 * r + 1] == key && r < e->rank)) new_rank++;
    }
    LocalBox *box;
    if (e->rank == lowest) {
        box = mg_calloc(1, sizeof *box);
        pthread_mutex_init(&box->mu, NULL);
        pthread_cond_init(&box->cv, NULL);
        box->size = n;
        box->refs = n;
        for (int r = 0; r < P; r++)
            if (r != e->rank && all[2 * r] == color) local_send(ctx, r, MG_TP_TAG_SPLIT, &box, sizeof box);
    } else {
        local_recv(ctx, lowest, MG_TP_TAG_SPLIT, &box, sizeof box);
    }
    free(all);
    return local_endpoint(box, new_rank);
}

static void local_destroy(MgTransport *t) {
    LocalEp *e = t->ctx;
    LocalBox *b = e->box;
    pthread_mutex_lock(&b->mu);
    int last = --b->refs == 0;
    pthread_mutex_unlock(&b->mu);
    if (last) {
        for (LocalMsg *m = b->head, *next; m; m = next) {
            next = m->next;
            free(m);
        }
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        free(b);
    }
    free(e);
    free(t);
}

static MgTransport *local_endpoint(LocalBox *box, int rank) {
    LocalEp *e = mg_calloc(1, sizeof *e);
    e->box = box;
    e->rank = rank;
    MgTransport *t = mg_calloc(1, sizeof *t);
    t->kind = "local";
    t->rank = rank;
    t->size = box->size;
    t->ctx = e;
    t->send = local_send;
    t->recv = local_recv;
    t->isend = local_isend;
    t->irecv = local_irecv;
    t->wait = local_wait;
    t->all_gather = local_all_gather;
    t->barrier = local_barrier;
    t->all_reduce_sum = local_all_reduce_sum;
    t->abort_all = local_abort_all;
    t->split = local_split;
    t->destroy = local_destroy;
    return t;
}

void mg_transport_local_create(int P, MgTransport **endpoints) {
    MG_CHECK(P >= 1, "mg_transport_local_create: P=%d must be >= 1", P);
    LocalBox *box = mg_calloc(1, sizeof *box);
    pthread_mutex_init(&box->mu, NULL);
    pthread_cond_init(&box->cv, NULL);
    box->size = P;
    box->refs = P;
    for (int r = 0; r < P; r++) endpoints[r] = local_endpoint(box, r);
}
