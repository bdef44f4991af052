/* Collectives on backend memory for the data-parallel step (docs/parallelism.md, "GPUs"): the gradient
 * reduce-scatter into the ZeRO-1 shards and the all-gather of the updated parameters, on device buffers,
 * so that a GPU run moves them GPU to GPU (NCCL) instead of through host memory.
 *
 * The shards are those of parallel/shard.h (rank r owns [r * ceil(n/P), min(n, (r+1) * ceil(n/P)))).
 * Implementations:
 *   nccl    NCCL on the backend's compute stream, its communicator bootstrapped through the transport
 *           (parallel/nccl.c; builds with NCCL only). Sums in NCCL's order: deterministic for a fixed
 *           number of ranks and topology, not the rank order of the host path.
 *   staged  the same calls through host memory and the transport's rank-order collectives: the device
 *           path's logic (conversions, shards, in-place gathers) on any backend, and the bits of the host
 *           path. A test vehicle for machines without GPUs; every backend supports it. */
#ifndef MG_PARALLEL_DEVCOMM_H
#define MG_PARALLEL_DEVCOMM_H

#include <stdint.h>

#include "../kernels/ops.h"
#include "transport.h"

typedef struct MgDevComm MgDevComm;
struct MgDevComm {
    const char *kind; /* "nccl" or "staged" */
    int rank, size;
    const MgBackend *be;
    MgTransport *t;
    void *ctx;
    /* out[0 .. len_r) = the sum over ranks of in[shard r] (fp32, n elements in, backend memory; collective) */
    void (*reduce_scatter_f32)(MgDevComm *c, const float *in, float *out, int64_t n);
    /* In place: buf[shard q] receives rank q's buf[shard q] for every q (n elements of es bytes, backend
     * memory; collective) */
    void (*all_gather)(MgDevComm *c, void *buf, int64_t n, size_t es);
    void (*destroy)(MgDevComm *c);
};

/* Collective over t. NULL with a message in err when the kind cannot run here (no NCCL in the build, a
 * backend without a GPU stream, NCCL failing to start). */
MgDevComm *mg_devcomm_create(const char *kind, MgTransport *t, const MgBackend *be, char *err, size_t errlen);
void mg_devcomm_free(MgDevComm *c);
/* 1 iff this build has NCCL */
int mg_devcomm_nccl_built(void);

/* parallel/nccl.c */
MgDevComm *mg_devcomm_nccl_create(MgTransport *t, const MgBackend *be, char *err, size_t errlen);

#endif
