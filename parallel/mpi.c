/* The MPI transport (transport.h): MPI_COMM_WORLD and its sub-communicators. Compiled only with
 * MG_HAVE_MPI (the Makefile defines it where mpicc exists); without it mg_transport_mpi_init reports
 * that the build has no MPI. Errors of MPI itself stay fatal (MPI_ERRORS_ARE_FATAL, the default). */
#include "transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MG_HAVE_MPI
#include <limits.h>
#include <mpi.h>

typedef struct {
    MPI_Comm comm;
    int owned; /* MPI_Comm_free on destroy (not MPI_COMM_WORLD) */
} MpiCtx;

struct MgTpRequest {
    MPI_Request req;
};

static int mpi_count(size_t bytes) {
    if (bytes > (size_t)INT_MAX) mg_fatal("transport mpi: a message of %zu bytes is over INT_MAX", bytes);
    return (int)bytes;
}

static void mpi_send(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    MpiCtx *c = ctx;
    MPI_Send(buf, mpi_count(bytes), MPI_BYTE, peer, tag, c->comm);
}

static void mpi_recv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    MpiCtx *c = ctx;
    MPI_Status st;
    MPI_Recv(buf, mpi_count(bytes), MPI_BYTE, peer, tag, c->comm, &st);
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    if ((size_t)got != bytes)
        mg_fatal("transport mpi: expected %zu bytes from rank %d (tag %d), got %d", bytes, peer, tag, got);
}

static MgTpRequest *mpi_isend(void *ctx, int peer, int tag, const void *buf, size_t bytes) {
    MpiCtx *c = ctx;
    MgTpRequest *r = mg_malloc(sizeof *r);
    MPI_Isend(buf, mpi_count(bytes), MPI_BYTE, peer, tag, c->comm, &r->req);
    return r;
}

static MgTpRequest *mpi_irecv(void *ctx, int peer, int tag, void *buf, size_t bytes) {
    MpiCtx *c = ctx;
    MgTpRequest *r = mg_malloc(sizeof *r);
    MPI_Irecv(buf, mpi_count(bytes), MPI_BYTE, peer, tag, c->comm, &r->req);
    return r;
}

static void mpi_wait(void *ctx, MgTpRequest *r) {
    (void)ctx;
    MPI_Wait(&r->req, MPI_STATUS_IGNORE);
    free(r);
}

static void mpi_all_gather(void *ctx, const void *send, void *recv, size_t bytes) {
    MpiCtx *c = ctx;
    MPI_Allgather(send, mpi_count(bytes), MPI_BYTE, recv, mpi_count(bytes), MPI_BYTE, c->comm);
}

static void mpi_barrier(void *ctx) {
    MpiCtx *c = ctx;
    MPI_Barrier(c->comm);
}

/* Gathered and summed in rank order, so every rank gets the same bits whatever MPI's reduction tree. */
static void mpi_all_reduce_sum(void *ctx, double *buf, size_t n) {
    MpiCtx *c = ctx;
    int P;
    MPI_Comm_size(c->comm, &P);
    if (P == 1 || n == 0) return;
    double *all = mg_malloc(sizeof(double) * n * (size_t)P);
    mpi_all_gather(ctx, buf, all, n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double s = all[i];
        for (int r = 1; r < P; r++) s += all[(size_t)r * n + i];
        buf[i] = s;
    }
    free(all);
}

static void mpi_abort_all(void *ctx, const char *msg) {
    (void)ctx;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "error: rank %d: %s\n", rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

static MgTransport *mpi_wrap(MPI_Comm comm, int owned);

static MgTransport *mpi_split(void *ctx, int color, int key) {
    MpiCtx *c = ctx;
    MPI_Comm sub;
    MPI_Comm_split(c->comm, color, key, &sub);
    return mpi_wrap(sub, 1);
}

static void mpi_destroy(MgTransport *t) {
    MpiCtx *c = t->ctx;
    if (c->owned) MPI_Comm_free(&c->comm);
    free(c);
    free(t);
}

static MgTransport *mpi_wrap(MPI_Comm comm, int owned) {
    MpiCtx *c = mg_calloc(1, sizeof *c);
    c->comm = comm;
    c->owned = owned;
    MgTransport *t = mg_calloc(1, sizeof *t);
    t->kind = "mpi";
    MPI_Comm_rank(comm, &t->rank);
    MPI_Comm_size(comm, &t->size);
    t->ctx = c;
    t->send = mpi_send;
    t->recv = mpi_recv;
    t->isend = mpi_isend;
    t->irecv = mpi_irecv;
    t->wait = mpi_wait;
    t->all_gather = mpi_all_gather;
    t->barrier = mpi_barrier;
    t->all_reduce_sum = mpi_all_reduce_sum;
    t->abort_all = mpi_abort_all;
    t->split = mpi_split;
    t->destroy = mpi_destroy;
    return t;
}

MgTransport *mg_transport_mpi_init(int *argc, char ***argv, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    }
    return mpi_wrap(MPI_COMM_WORLD, 0);
}

void mg_transport_mpi_finalize(MgTransport *world) {
    mg_tp_free(world);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

int mg_transport_mpi_available(void) { return 1; }

#else /* !MG_HAVE_MPI */

MgTransport *mg_transport_mpi_init(int *argc, char ***argv, char *err, size_t errlen) {
    (void)argc;
    (void)argv;
    mg_errf(err, errlen, "this build has no MPI (install an MPI with mpicc, e.g. libopenmpi-dev, and rebuild)");
    return NULL;
}

void mg_transport_mpi_finalize(MgTransport *world) { mg_tp_free(world); }

int mg_transport_mpi_available(void) { return 0; }

#endif
