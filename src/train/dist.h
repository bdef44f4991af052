/* The trainer's distributed runtime (docs/parallelism.md): the process grid of an mpirun/srun launch,
 * sequence parallelism (the model's state-exchange hooks, parallel/sp.h), the data-parallel gradient
 * reduction and the ZeRO-1 optimizer shard (parallel/shard.h). A one-process run has P = 1 and takes
 * none of these paths: its step is the single-process step, bit for bit. */
#ifndef MG_TRAIN_DIST_H
#define MG_TRAIN_DIST_H

#include <stdint.h>

#include "../../parallel/grid.h"
#include "../../parallel/sp.h"
#include "../config.h"
#include "../model.h"

typedef struct {
    int P, rank, is_root;  /* world size, this rank, rank == 0 */
    int mpi;               /* world is MPI_COMM_WORLD (finalized by mg_dist_end) */
    MgTransport *world;
    MgGrid grid;           /* dp_size x sp_size; valid after mg_dist_configure */
    int configured;
    MgSp *sp;              /* NULL when sp_size == 1 */
    int64_t shard_off, shard_len; /* this rank's ZeRO-1 shard of the parameter arena */
    void *gshard;          /* the reduced gradient shard (backend memory, compute dtype) */
    void *host_grads;      /* P > 1: the gradient arena staged in host memory for the reduction */
    struct MgShardReducer *reducer; /* P > 1: the gradient reduce-scatter, bucket by bucket */
    MgModelHooks last_hooks; /* the hooks of a step's last micro-batch: SP + grads_ready */
    const MgBackend *be;
    void *grads;           /* the model's gradient arena (backend memory) */
    struct MgDevComm *dc;  /* dp_comm nccl/staged: the collectives on backend memory (NULL: the host path) */
    float *g32, *gs32;     /* dc with a non-fp32 compute dtype: the gradient in fp32, and its reduced shard */
} MgDist;

/* Before anything else in a command: join the launch. Under mpirun/srun with P > 1 processes (and a
 * build with MPI) this initialises MPI and installs an error hook that prints a fatal message with the
 * rank and ends every rank; non-root ranks then send stdout to /dev/null (rank 0 speaks for the run).
 * A build without MPI launched as P > 1 processes has been refused by main already. */
void mg_dist_start(MgDist *d, int *argc, char ***argv);
/* The grid for the resolved config: checks that P, sp, seq_len, chunk_size and the batch fit together,
 * and that every rank runs the same executable and config; on failure every rank exits with status 1
 * and rank 0 prints the one message. Then the SP hooks and the ZeRO-1 shard. */
void mg_dist_configure(MgDist *d, const MgConfig *c, const MgBackend *be, int64_t n_params);
void mg_dist_end(MgDist *d);

/* Layout of one micro-batch on this rank: the sequences of DP group dp are every DP-th of the step; an SP
 * rank holds columns [sp * L/S, (sp + 1) * L/S). */
int mg_dist_local_len(const MgDist *d, const MgConfig *c);
/* Copy this rank's columns of a B x L array into out (B x L/S). */
void mg_dist_slice(const MgDist *d, const MgConfig *c, int B, const int32_t *full, int32_t *out);
/* The pass options of micro-batch `micro` (B sequences per DP rank) of a step with dropout seed `seed`. */
MgForwardOpts mg_dist_opts(const MgDist *d, const MgConfig *c, uint64_t seed, int training, int micro, int B);
/* The model hooks of this rank (NULL when sp_size == 1). */
const MgModelHooks *mg_dist_hooks(const MgDist *d);
/* The hooks of a step's last micro-batch (P > 1): the SP hooks plus grads_ready, which starts the gradient
 * reduce-scatter bucket by bucket while the backward runs. grads: the model's gradient arena. */
const MgModelHooks *mg_dist_last_hooks(MgDist *d, void *grads);
/* After the last micro-batch: this rank's reduced gradient shard into out (host memory). */
void mg_dist_reduce_finish(MgDist *d, void *out);
/* After each mg_model_step: complete the SP sends. */
void mg_dist_pass_done(MgDist *d);
/* Element-wise sum over all ranks (rank order; identical on every rank). */
void mg_dist_sum(MgDist *d, double *v, int n);

/* Collective: print (rank 0) the sequence-parallel exchange's cost over `steps` steps: seconds per step in
 * the forward scans and the backward gradient messages (mean and max over ranks), bytes and messages per
 * step and rank. Nothing without sequence parallelism. */
void mg_dist_report(MgDist *d, int64_t steps, int n_layers, FILE *f);

/* Text check for errors that every rank detects alike: rank 0 prints "error: msg", every rank exits 1. */
MG_NORETURN void mg_dist_fail(MgDist *d, const char *msg);

#endif
