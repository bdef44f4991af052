/* Device collectives over NCCL (devcomm.h): the data-parallel gradient reduce-scatter and parameter
 * all-gather GPU to GPU, on the backend's compute stream, so they are ordered after the backward's
 * kernels and before AdamW's without a host synchronisation.
 *
 * NCCL's reduce-scatter and all-gather take P equal blocks; the shards of shard.h are ceil(n/P) elements
 * with a short (or empty) last one, so the collectives run on a padded copy of P * ceil(n/P) elements
 * (a device-to-device copy of the gradient, small next to the transfer). The communicator is created
 * from a unique id that rank 0 makes and the transport's all-gather hands to every rank (the MPI
 * bootstrap); each rank has already selected its GPU (the backend instance did). */
#include "devcomm.h"
#include "shard.h"

#include <stdlib.h>
#include <string.h>

#ifdef MG_HAVE_NCCL
#include <nccl.h>

typedef struct {
    ncclComm_t comm;
    void *pad;      /* P * blk elements, the padded collective buffer */
    size_t pad_bytes;
} Nccl;

#define NCCL_CHECK(call)                                                                                     \
    do {                                                                                                     \
        ncclResult_t r_ = (call);                                                                            \
        if (r_ != ncclSuccess)                                                                               \
            mg_fatal("NCCL: %s failed at %s:%d: %s (%s; NCCL_DEBUG=INFO shows why)", #call, __FILE__, __LINE__, \
                     ncclGetErrorString(r_), ncclGetLastError(NULL));                                        \
    } while (0)

static void *pad_buffer(MgDevComm *c, size_t bytes) {
    Nccl *x = c->ctx;
    if (bytes > x->pad_bytes) {
        if (x->pad) c->be->free(c->be, x->pad);
        x->pad = c->be->alloc(c->be, bytes);
        x->pad_bytes = bytes;
    }
    return x->pad;
}

static void nccl_reduce_scatter(MgDevComm *c, const float *in, float *out, int64_t n) {
    Nccl *x = c->ctx;
    const int P = c->size;
    const int64_t blk = (n + P - 1) / P;
    int64_t off, len;
    mg_shard_range(n, P, c->rank, &off, &len); /* shard.h's shards: P blocks of blk, the last short */
    float *pad = pad_buffer(c, sizeof(float) * (size_t)(blk * P));
    c->be->copy(c->be, pad, in, sizeof(float) * (size_t)n);
    if (blk * P > n) c->be->memset0(c->be, pad + n, sizeof(float) * (size_t)(blk * P - n)); /* the padding adds 0 */
    float *mine = pad + (size_t)c->rank * (size_t)blk;
    cudaStream_t st = (cudaStream_t)c->be->native_stream(c->be, MG_STREAM_COMPUTE);
    NCCL_CHECK(ncclReduceScatter(pad, mine, (size_t)blk, ncclFloat32, ncclSum, x->comm, st));
    c->be->copy(c->be, out, mine, sizeof(float) * (size_t)len);
}

static void nccl_all_gather(MgDevComm *c, void *buf, int64_t n, size_t es) {
    Nccl *x = c->ctx;
    const int P = c->size;
    const int64_t blk = (n + P - 1) / P;
    int64_t off, len;
    mg_shard_range(n, P, c->rank, &off, &len); /* shard.h's shards: P blocks of blk, the last short */
    char *pad = pad_buffer(c, es * (size_t)(blk * P));
    char *mine = pad + es * (size_t)c->rank * (size_t)blk;
    c->be->copy(c->be, mine, (char *)buf + es * (size_t)off, es * (size_t)len);
    cudaStream_t st = (cudaStream_t)c->be->native_stream(c->be, MG_STREAM_COMPUTE);
    /* in place: the send buffer is this rank's block of the receive buffer; bytes, so any element size */
    NCCL_CHECK(ncclAllGather(mine, pad, es * (size_t)blk, ncclUint8, x->comm, st));
    c->be->copy(c->be, buf, pad, es * (size_t)n);
}

static void nccl_destroy(MgDevComm *c) {
    Nccl *x = c->ctx;
    c->be->synchronize(c->be);
    if (x->pad) c->be->free(c->be, x->pad);
    ncclCommDestroy(x->comm);
    free(x);
    free(c);
}

MgDevComm *mg_devcomm_nccl_create(MgTransport *t, const MgBackend *be, char *err, size_t errlen) {
    if (!be->native_stream || !be->native_stream(be, MG_STREAM_COMPUTE)) {
        mg_errf(err, errlen, "dp_comm = nccl needs a GPU backend (device = cuda); backend %s has no CUDA stream",
                be->name);
        return NULL;
    }
    ncclUniqueId id, *all = mg_malloc(sizeof(ncclUniqueId) * (size_t)t->size);
    memset(&id, 0, sizeof id);
    if (t->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    mg_tp_all_gather(t, &id, all, sizeof id);
    id = all[0];
    free(all);
    Nccl *x = mg_calloc(1, sizeof *x);
    ncclResult_t r = ncclCommInitRank(&x->comm, t->size, id, t->rank);
    if (r != ncclSuccess) {
        mg_errf(err, errlen, "NCCL could not start over %d ranks: %s (NCCL_DEBUG=INFO shows why; dp_comm = host "
                "works without it)", t->size, ncclGetErrorString(r));
        free(x);
        return NULL;
    }
    MgDevComm *c = mg_calloc(1, sizeof *c);
    c->kind = "nccl";
    c->rank = t->rank;
    c->size = t->size;
    c->be = be;
    c->t = t;
    c->ctx = x;
    c->reduce_scatter_f32 = nccl_reduce_scatter;
    c->all_gather = nccl_all_gather;
    c->destroy = nccl_destroy;
    return c;
}

int mg_devcomm_nccl_built(void) { return 1; }

#else

MgDevComm *mg_devcomm_nccl_create(MgTransport *t, const MgBackend *be, char *err, size_t errlen) {
    (void)t, (void)be;
    mg_errf(err, errlen, "dp_comm = nccl: this build has no NCCL (nccl.h and libnccl were not found under "
            "CUDA_HOME when it was built; install NCCL and run make again, or use dp_comm = host)");
    return NULL;
}

int mg_devcomm_nccl_built(void) { return 0; }

#endif
