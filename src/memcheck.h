/* The memory a run needs, checked against what the machine has before anything large is allocated.
 *
 * `train`, `eval` and `sample` call mg_memory_check right after the configuration is validated: the
 * parameters, gradients, fp32 master weights (when the compute dtype is not fp32), AdamW moments (train),
 * activations (the trainer's arena plan for batch_size x seq_len; sample: the decoder's attention cache),
 * the token buffers, the host snapshot of background checkpoint writes (train with ckpt_async and periodic
 * checkpoints), plus a margin for the op workspace and the runtime, are compared with the memory
 * available to this process: the smallest of MemAvailable (/proc/meminfo), the cgroup's memory.max minus
 * its current use, and RLIMIT_AS / RLIMIT_DATA minus what is already mapped. A run that does not fit is
 * refused with the breakdown and the keys to change, instead of minutes of allocation and an
 * out-of-memory failure. `megalodon info` prints the same breakdown. A distributed training (launched as P
 * processes, docs/parallelism.md) counts per rank: the AdamW moments of its ZeRO-1 shard (1/P), the
 * activations of its slice (seq_len / sp), the attention context of a chunk longer than the slice, and
 * the host buffers of the gradient reduce-scatter.
 *
 * MG_MEMORY_LIMIT_BYTES=N (bytes; K, M, G, T suffixes, powers of 1024) replaces the measured figure (tests
 * use it to simulate a small machine); MG_MEMORY_CHECK=0 turns the check off. docs/training.md. */
#ifndef MG_MEMCHECK_H
#define MG_MEMCHECK_H

#include <stddef.h>
#include <stdio.h>

#include "common.h"
#include "config.h"
#include "params.h"

typedef enum { MG_MEM_TRAIN, MG_MEM_EVAL, MG_MEM_SAMPLE } MgMemUse;

typedef struct {
    double params, grads, masters, moments, activations, data, dist, margin, total; /* bytes per device */
    double snapshot; /* host bytes: the checkpoint snapshot of a training run (mg_train_ckpt_snapshot), else 0 */
    int ranks;       /* processes of the run (train under mpirun/srun: the launch's size; else 1) */
} MgRunMemory;

/* Does a training run of c keep a host snapshot of its fp32 masters and AdamW moments (12 bytes per
 * parameter) to write checkpoints in the background? Yes with ckpt_async, checkpoints in this build, and
 * periodic checkpoints (0 < ckpt_every < the last step: max_steps, or stop_at if earlier). The final,
 * stop_at and signal checkpoints are written by the main thread (the process ends after them). */
int mg_train_ckpt_snapshot(const MgConfig *c);

/* What a run of config c with parameter table t needs per device in compute dtype `compute`. */
void mg_run_memory(const MgConfig *c, const MgParamTable *t, MgDtype compute, MgMemUse use, MgRunMemory *m);

/* Bytes this process can still allocate (see above); where the figure comes from goes to src.
 * Returns a negative number when nothing could be measured. */
double mg_memory_available(char *src, size_t srclen);

/* One line per item, each starting with indent. */
void mg_run_memory_print(const MgRunMemory *m, const MgConfig *c, MgDtype compute, MgMemUse use, const char *indent,
                         FILE *f);

/* 0 when the run fits (or nothing could be measured, or MG_MEMORY_CHECK=0); otherwise -1 with a message
 * that gives the breakdown and names the keys to change. */
int mg_memory_check(const MgConfig *c, MgDtype compute, MgMemUse use, char *err, size_t errlen);

/* This process's rank among the ranks of its node, from the launcher's environment (Open MPI, MPICH,
 * MVAPICH, Slurm, LOCAL_RANK), or -1 when not launched by one: the GPU a rank drives. */
int mg_local_rank(void);

#endif
