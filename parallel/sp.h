/* Sequence parallelism for the model: the implementation of the model's communication hooks
 * (MgModelHooks, src/model.h) over the SP group of a process grid (docs/parallelism.md).
 *
 * Each SP rank runs a pass over its slice of whole attention chunks of the same B sequences
 * (MgForwardOpts.pos0 = sp * L_local, seq_len = the global length). Per layer and state group:
 *
 *   forward   the model hands over the slice's summary from a fresh state (TimestepNorm: count, mean, var;
 *             CEMA: the state reached from h = 0); this module forms the scan element (Welford triple
 *             (count, mean, M2 = var * count); CEMA affine map (q^L, h)), runs the exclusive state scan of
 *             parallel/state_scan.h with the configured algorithm over the SP group, and writes the
 *             incoming state, with which the op then runs. Exchanged and composed in float32 (float64
 *             when the backend's state dtype is float64).
 *   backward  the reverse chain: the gradient of a rank's outgoing state is the gradient of the next
 *             rank's incoming state, received from rank sp + 1 (zero on the last rank) before the op's
 *             backward, and the rank's own incoming-state gradient is sent to rank sp - 1 (nonblocking)
 *             after it. Ranks form a wavefront across the layers: rank r runs layer l's state backward
 *             once rank r + 1 has finished it.
 *
 * Everything here is exact: P ranks compute the function of one process (up to the rounding of the
 * float32 state at slice boundaries and of the summation order). */
#ifndef MG_PARALLEL_SP_H
#define MG_PARALLEL_SP_H

#include "../src/model.h"
#include "state_scan.h"
#include "transport.h"

typedef struct MgSp MgSp;

/* Timing and traffic counters since creation (or the last mg_sp_stats_reset). */
typedef struct {
    double fwd_seconds;   /* wall time inside the forward exchanges (scan + conversions) */
    double bwd_seconds;   /* wall time waiting for / sending state gradients */
    int64_t fwd_scans;    /* scans run */
    int64_t bwd_messages; /* state-gradient messages sent */
    int64_t bytes_sent;   /* estimate: scan summaries (once per scan and rank) + gradient messages */
} MgSpStats;

/* sp_group: the SP ranks of this DP group (rank = position in the sequence); borrowed. be: the model's
 * backend (state tensors live in its memory). pieces: MG_SCAN_PIPELINED's slices (clamped to the
 * channels of each scan). */
MgSp *mg_sp_create(MgTransport *sp_group, const MgBackend *be, MgScanAlgo algo, int pieces);
void mg_sp_free(MgSp *s);
/* The hooks to put in MgPassArgs.hooks for every pass of this rank (forward + backward, or forward only
 * for evaluation). grads_ready is left NULL. */
const MgModelHooks *mg_sp_hooks(MgSp *s);
/* Attention when a chunk is longer than a slice (docs/parallelism.md, "Attention across ranks"):
 *   GATHER    each rank all-gathers the chunk's keys and values and attends with its own queries
 *   ALLTOALL  (Ulysses) an all-to-all turns the chunk's sequence-split q, k, v into head-split ones, each
 *             rank attends over the whole chunk for H / k heads, and an all-to-all brings the output back;
 *             needs the k ranks of a chunk to divide the head count
 *   AUTO      ALLTOALL when the heads divide, else GATHER (the default) */
typedef enum { MG_SP_ATTN_AUTO = 0, MG_SP_ATTN_GATHER, MG_SP_ATTN_ALLTOALL } MgSpAttn;
void mg_sp_set_attention(MgSp *s, MgSpAttn mode);
/* Backward by reverse scans with the forward's algorithm (on), instead of the reverse chain (off, the
 * default): each layer's op backward then runs twice (its own part, then the part of the later slices). */
void mg_sp_set_scan_backward(MgSp *s, int on);
int mg_sp_attention_parse(const char *name, MgSpAttn *out); /* "auto", "gather", "alltoall"; 0 or -1 */

/* Complete the nonblocking sends of the last backward pass (call after every mg_model_step). */
void mg_sp_finish(MgSp *s);
MgSpStats mg_sp_stats(const MgSp *s);
MgScanAlgo mg_sp_algo(const MgSp *s);
void mg_sp_stats_reset(MgSp *s);

/* Parse a scan algorithm name ("chain", "pipelined", "allgather", "doubling" or "recursive-doubling");
 * returns 0 or -1. */
int mg_scan_algo_parse(const char *name, MgScanAlgo *out);

#endif
