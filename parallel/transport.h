/* A small message-passing interface between the ranks of a run: what the sequence-parallel state scan
 * and the process grid need (docs/parallelism.md). A transport is a struct of function pointers plus a
 * ctx, so that a backend can supply its own (the CUDA backend will implement it with NCCL).
 *
 * Implementations:
 *   self   one rank (size 1), no communication library; in every build.
 *   local  P ranks inside one process, one thread each, exchanging through a shared mailbox; for tests
 *          of the algorithms without MPI (parallel/transport_local.c).
 *   mpi    MPI_COMM_WORLD or a sub-communicator (parallel/mpi.c, compiled with MG_HAVE_MPI only; without
 *          it mg_transport_mpi_init reports that the build has no MPI).
 *
 * Semantics shared by all: point-to-point messages between a pair of ranks with the same tag arrive in
 * the order sent, and a receive names its exact source, tag and size (a size mismatch is fatal).
 * Tags are 0..MG_TP_TAG_MAX; tags above MG_TP_TAG_USER_MAX are reserved for the transport's own
 * collectives. Collectives (all_gather, barrier, all_reduce_sum, split) must be called by every rank
 * of the transport in the same order. Failures of the transport itself are fatal (mg_fatal); abort_all
 * ends every rank with a message. */
#ifndef MG_PARALLEL_TRANSPORT_H
#define MG_PARALLEL_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "../src/common.h"

#define MG_TP_TAG_USER_MAX 30000
#define MG_TP_TAG_MAX 32767

/* A pending nonblocking send or receive, completed (and freed) by mg_tp_wait. */
typedef struct MgTpRequest MgTpRequest;

typedef struct MgTransport MgTransport;
struct MgTransport {
    const char *kind; /* "self", "local", "mpi" */
    int rank, size;
    void *ctx;
    /* Blocking: send returns when buf may be reused; recv when the message is in buf. */
    void (*send)(void *ctx, int peer, int tag, const void *buf, size_t bytes);
    void (*recv)(void *ctx, int peer, int tag, void *buf, size_t bytes);
    /* Nonblocking: buf must stay valid (and, for isend, unchanged) until wait. */
    MgTpRequest *(*isend)(void *ctx, int peer, int tag, const void *buf, size_t bytes);
    MgTpRequest *(*irecv)(void *ctx, int peer, int tag, void *buf, size_t bytes);
    void (*wait)(void *ctx, MgTpRequest *req);
    /* recv[r * bytes ..] = rank r's send[0 .. bytes) for every r (send may not alias recv). */
    void (*all_gather)(void *ctx, const void *send, void *recv, size_t bytes);
    void (*barrier)(void *ctx);
    /* Element-wise sum over ranks, in place, the same bits on every rank. */
    void (*all_reduce_sum)(void *ctx, double *buf, size_t n);
    /* Print the message once per calling rank and end every rank with a non-zero status. */
    void (*abort_all)(void *ctx, const char *msg); /* must not return */
    /* A new transport over the ranks that passed the same color, ranked by (key, old rank).
     * Collective. Free it with mg_tp_free (before its parent). */
    MgTransport *(*split)(void *ctx, int color, int key);
    /* Release ctx and the transport struct itself (not the parent's). */
    void (*destroy)(MgTransport *t);
};

/* The one-rank transport (a heap struct; mg_tp_free releases it). Point-to-point calls are fatal: a
 * single rank has no peer. */
MgTransport *mg_transport_self(void);

/* MPI_COMM_WORLD (calls MPI_Init_thread(FUNNELED) if MPI is not initialised yet). Returns NULL and
 * writes err when the build has no MPI. mg_transport_mpi_finalize frees it and calls MPI_Finalize. */
MgTransport *mg_transport_mpi_init(int *argc, char ***argv, char *err, size_t errlen);
void mg_transport_mpi_finalize(MgTransport *world);
int mg_transport_mpi_available(void); /* 1 iff built with MG_HAVE_MPI */

/* P endpoints in one process (see parallel/transport_local.c); endpoint r is used by one thread only.
 * Free every endpoint with mg_tp_free; the shared mailbox goes with the last. */
void mg_transport_local_create(int P, MgTransport **endpoints);

/* Thin wrappers that validate the peer and tag (fatal on a bad one). */
void mg_tp_send(MgTransport *t, int peer, int tag, const void *buf, size_t bytes);
void mg_tp_recv(MgTransport *t, int peer, int tag, void *buf, size_t bytes);
MgTpRequest *mg_tp_isend(MgTransport *t, int peer, int tag, const void *buf, size_t bytes);
MgTpRequest *mg_tp_irecv(MgTransport *t, int peer, int tag, void *buf, size_t bytes);
void mg_tp_wait(MgTransport *t, MgTpRequest *req);
void mg_tp_all_gather(MgTransport *t, const void *send, void *recv, size_t bytes);
void mg_tp_barrier(MgTransport *t);
void mg_tp_all_reduce_sum(MgTransport *t, double *buf, size_t n);
MG_NORETURN void mg_tp_abort_all(MgTransport *t, const char *fmt, ...) MG_PRINTF(2, 3);
MgTransport *mg_tp_split(MgTransport *t, int color, int key);
void mg_tp_free(MgTransport *t);

/* Collectives written over send/recv, for transports without native ones (self, local). Deterministic:
 * all_reduce_sum adds the ranks' contributions in rank order on every rank. */
void mg_tp_generic_all_gather(MgTransport *t, const void *send, void *recv, size_t bytes);
void mg_tp_generic_barrier(MgTransport *t);
void mg_tp_generic_all_reduce_sum(MgTransport *t, double *buf, size_t n);

/* Internal tags of the generic collectives. */
#define MG_TP_TAG_GATHER (MG_TP_TAG_USER_MAX + 1)
#define MG_TP_TAG_SPLIT (MG_TP_TAG_USER_MAX + 2)

#endif
