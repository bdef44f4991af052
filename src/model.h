/* A language model written once against the backend interface (kernels/ops.h): the same code trains in
 * float32 on the CPU, is gradient-checked in float64, and runs on the CUDA backend.
 *
 * The model is a driver (src/model/driver.c) plus one architecture (src/model/megalodon.c; the
 * interface an architecture implements is src/model/arch.h). The driver owns what every architecture
 * shares: the parameter table and the parameter, gradient and master-weight arenas, initialisation, the
 * token embedding, the LM head and loss in row blocks, the activation arena and its plan, carried state
 * and its gradients, the communication hooks, and the recurrent decoder harness. The architecture
 * declares its parameters, its activations and its carried state, and runs its layers forward and
 * backward. See docs/model.md.
 *
 * Memory: parameters and gradients in the backend's compute dtype, fp32 master weights (the same
 * buffer as the parameters when the compute dtype is fp32), and one activation arena sized for the
 * largest (batch, length) seen so far, whose entries carry their own dtype (statistics, log-sum-exp,
 * losses stay in the state dtype). Nothing else is allocated per step. The LM head and the
 * cross-entropy run in blocks of rows so the B x L x V logits never exist at once during training.
 *
 * Carried state: whatever crosses a cut in the time axis (Megalodon: every layer's TimestepNorm
 * statistics and CEMA state, and the final TimestepNorm) goes in and out of a pass (MgModelState), and
 * its gradient goes back (forward_backward's dstate_out / dstate_in). Running a sequence in pieces that
 * pass the state forward and the state gradient backward gives the loss and the gradients of the whole:
 * this is what a sequence-parallel rank does, and what streaming training over long documents uses. */
#ifndef MG_MODEL_H
#define MG_MODEL_H

#include <stdint.h>

#include "../kernels/ops.h"
#include "config.h"
#include "params.h"

typedef struct MgModel MgModel;

/* Carried state (or its gradient) for a batch of B sequences: a list of tensors declared by the
 * architecture, in backend memory (counts int64, the rest in the state dtype). */
typedef struct MgModelState MgModelState;

/* Dropout and layout of one pass. Masks are functions of (seed, global sequence, global position,
 * feature) only, so a batch split over micro-batches, data-parallel ranks or sequence-parallel slices
 * draws exactly the masks of one process running the whole batch. */
typedef struct {
    uint64_t seed;      /* one seed per optimizer step (the same for every micro-batch and rank) */
    int training;       /* 0: dropout off (evaluation, sampling) */
    int64_t seq0;       /* global index (within the step) of this pass's first sequence */
    int64_t seq_stride; /* global index of row b = seq0 + b * seq_stride (0 = 1; a data-parallel rank of DP
                         * holds every DP-th sequence of the step) */
    int64_t pos0;       /* global position of this pass's first token in its sequences (a multiple of
                         * chunk_size when the sequence is cut into pieces) */
    int64_t seq_len;    /* global length of the sequences (0 = this pass's L) */
    int64_t pos1;       /* > 0: a two-piece pass (the zigzag layout of sequence parallelism, architectures
                         * without carried state only): tokens [0, L/2) sit at positions pos0.., tokens
                         * [L/2, L) at pos1.. (pos0 + L/2 <= pos1) */
} MgForwardOpts;

/* ---- communication hooks ------------------------------------------------------------------------------
 * Points where a caller (a parallel runtime) exchanges carried state and gradients. Every member is
 * optional; a NULL MgModelHooks (or NULL member) is skipped and costs nothing.
 *
 * Forward, per layer and per state group (Megalodon: group 0 = the TimestepNorm statistics (count, mean,
 * var), group 1 = the CEMA state h; layer == n_layers is the final TimestepNorm):
 *   state_begin  `local` holds this slice's summary computed from a fresh state (TimestepNorm statistics
 *                of the slice alone; the CEMA state reached from h = 0), for an exclusive scan across
 *                ranks. Work that does not need the incoming state runs next (for CEMA: the value
 *                projection, so the exchange overlaps it).
 *   state_end    the hook writes the incoming state into `in`; the op then runs with it.
 *   state_done   `out` holds this slice's outgoing state (what the sequential chain passes on).
 * When state_begin/state_end are set, the incoming state of every layer comes from the hook (pass
 * state_in = NULL).
 * Backward, per layer and group, in reverse order:
 *   dstate_get   the hook writes the gradient of the outgoing state into `dout` (else dstate_out's, or 0);
 *   dstate_done  `din` holds the gradient of the incoming state.
 * grads_ready: parameter gradients [offset, offset + count) (elements, table layout) are final for this
 *   pass: called in backward order (the top of the table first, the embedding last), so a bucketed
 *   all-reduce can start while the rest of the backward runs. */
#define MG_STATE_GROUP_MAX 4
typedef struct {
    int layer, group;
    const char *name;                    /* "timestep_norm", "cema" */
    int B, L;                            /* this pass's batch and (local) length */
    int n;                               /* tensors in the group */
    const char *tensor[MG_STATE_GROUP_MAX]; /* their names ("count", "mean", "var", "h") */
    MgDtype dtype[MG_STATE_GROUP_MAX];   /* MG_I64 for counts, else the state dtype */
    int64_t numel[MG_STATE_GROUP_MAX];   /* elements (B x per-sequence size) */
    void *local[MG_STATE_GROUP_MAX];     /* state_begin: the slice's summary from a fresh state */
    void *in[MG_STATE_GROUP_MAX];        /* state_end: written by the hook */
    const void *out[MG_STATE_GROUP_MAX]; /* state_done */
    void *dout[MG_STATE_GROUP_MAX];      /* dstate_get: written by the hook (counts have no gradient: NULL) */
    const void *din[MG_STATE_GROUP_MAX]; /* dstate_done */
    const void *op_args;                 /* the op's argument struct (MgTimestepNormArgs, MgCemaArgs): its
                                          * parameters, e.g. to form the CEMA decay q^L of the slice */
} MgStateExchange;

/* Attention across ranks: when a rank's slice is shorter than an attention chunk, its queries also see the
 * keys and values of the earlier slices of their chunk (held by other ranks).
 *   attn_kv       forward, per layer: k and v hold this slice's keys (after RoPE) and values
 *                 (B x L x H x Dqk / Dv); the hook points kctx and vctx at the chunk's keys and values from
 *                 the chunk's start to the end of this slice (B x Lk x H x D, backend memory the hook owns
 *                 and keeps until this layer's backward) and sets Lk.
 *   attn_kv_grad  backward, per layer, twice: done = 0 before the attention backward: the hook sets kctx,
 *                 vctx and Lk as in the forward and points dkctx, dvctx at buffers for their gradients;
 *                 done = 1 after it: the hook writes into dk and dv (this slice's, B x L x H x D) the sum of
 *                 the gradients of this slice's keys and values over the ranks of the chunk.
 * The pass then runs the attention with Lq = L queries that are the last L of the Lk keys. */
typedef struct {
    int layer, B, L, H, Dqk, Dv;
    int64_t pos0;             /* this slice's global position */
    int64_t pos1;             /* > 0: the slice's second piece (zigzag: [L/2, L) at pos1), else 0 */
    int64_t chunk;            /* the chunk's length: min(chunk_size, the sequences' global length) */
    const void *k, *v;        /* this slice's keys and values */
    const void *kctx, *vctx;  /* set by the hook */
    void *dkctx, *dvctx;      /* set by the hook (backward, done = 0) */
    void *dk, *dv;            /* written by the hook (backward, done = 1) */
    int Lk;                   /* set by the hook */
} MgAttnExchange;

typedef struct {
    void *ctx;
    void (*state_begin)(void *ctx, const MgStateExchange *x);
    void (*state_end)(void *ctx, const MgStateExchange *x);
    void (*state_done)(void *ctx, const MgStateExchange *x);
    void (*dstate_get)(void *ctx, const MgStateExchange *x);
    void (*dstate_done)(void *ctx, const MgStateExchange *x);
    /* Backward by a scan instead of dstate_get (optional; with state_begin/end and dstate_done): per layer
     * and group, `din` holds this slice's own part of its incoming-state gradient (the op's backward run
     * with a zero outgoing-state gradient), `in` the incoming state and `local` the slice's summary of the
     * forward; the hook writes the gradient of the outgoing state into `dout`. The op's backward then runs
     * once more for `dout` alone (zero output gradient), adding its share to every gradient and to din. */
    void (*dstate_scan)(void *ctx, const MgStateExchange *x);
    void (*grads_ready)(void *ctx, int64_t offset, int64_t count);
    void *grads_ctx; /* grads_ready's ctx when not NULL (a runtime that adds it to another's hooks) */
    void (*attn_kv)(void *ctx, MgAttnExchange *x);
    void (*attn_kv_grad)(void *ctx, MgAttnExchange *x, int done);
    /* Or the whole attention of a pass that holds part of a chunk, run by the hook (e.g. all-to-all over
     * heads): attn_run computes at->o (and keeps what its backward needs); attn_run_backward writes at->dq,
     * at->dk, at->dv from at->dout. Each returns 1 when it ran, 0 to fall back to attn_kv / the op. */
    int (*attn_run)(void *ctx, const MgAttnExchange *x, const MgAttentionArgs *at);
    int (*attn_run_backward)(void *ctx, const MgAttnExchange *x, const MgAttentionArgs *at);
} MgModelHooks;

/* ---- one pass ------------------------------------------------------------------------------------------- */
typedef struct {
    const int32_t *tokens;          /* [in] B x L host ids, checked against vocab_size here */
    const int32_t *targets;         /* [in] B x L host ids (-1 = ignored); NULL for forward_logits */
    int B, L;
    double grad_scale;              /* the loss gradient's scale (1 / tokens of the global batch) */
    MgForwardOpts opts;             /* dropout and layout ({0}: evaluation, no dropout) */
    const MgModelState *state_in;   /* NULL: fresh sequences */
    MgModelState *state_out;        /* NULL: not wanted */
    const MgModelState *dstate_out; /* backward: gradient w.r.t. state_out (NULL: 0) */
    MgModelState *dstate_in;        /* backward: receives the gradient w.r.t. state_in (NULL: not wanted) */
    const MgModelHooks *hooks;      /* NULL: none */
    double *token_losses;           /* [out] B x L host: each position's loss (0 where the target is ignored);
                                     * NULL: not wanted (long-context evaluation by position) */
} MgPassArgs;

/* Forward, loss, and backward on one micro-batch: gradients ACCUMULATE into the gradient arena. Returns
 * the sum of the per-token losses and writes the number of counted targets to *n_counted. */
double mg_model_step(MgModel *m, const MgPassArgs *a, int64_t *n_counted);
/* Forward and loss only (the same masks as mg_model_step for the same opts). */
double mg_model_eval(MgModel *m, const MgPassArgs *a, int64_t *n_counted);

/* The common cases as plain calls (state and hooks as above; opts NULL = evaluation / no dropout). */
double mg_model_forward_backward(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                                 double grad_scale, const MgForwardOpts *opts, const MgModelState *state_in,
                                 MgModelState *state_out, int64_t *n_counted);
double mg_model_forward_loss(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                             const MgForwardOpts *opts, const MgModelState *state_in, MgModelState *state_out,
                             int64_t *n_counted);
/* Forward only, full logits (B x L x V, compute dtype, host memory) for tests and analysis. */
void mg_model_forward_logits(MgModel *m, const int32_t *tokens, int B, int L, const MgModelState *state_in,
                             MgModelState *state_out, void *logits_host);

/* ---- the model ------------------------------------------------------------------------------------------ */
/* The architecture is cfg->arch ("megalodon" or "llama"); an unknown one is a fatal error naming the known
 * ones. */
MgModel *mg_model_create(const MgConfig *cfg, const MgBackend *be);
void mg_model_free(MgModel *m);

const MgConfig *mg_model_config(const MgModel *m);
const MgParamTable *mg_model_params_table(const MgModel *m);
const MgBackend *mg_model_backend(const MgModel *m);
/* Flat parameter and gradient arenas (backend memory, compute dtype, table layout). */
void *mg_model_params(MgModel *m);
void *mg_model_grads(MgModel *m);
/* fp32 master weights (backend memory, table layout): the same buffer as mg_model_params when the
 * compute dtype is fp32. AdamW updates them (and writes the compute copy); checkpoints hold them. */
float *mg_model_masters(MgModel *m);
int mg_model_has_separate_masters(const MgModel *m);
/* After writing the masters directly (a checkpoint load), refresh the compute-dtype parameters. */
void mg_model_masters_changed(MgModel *m);
/* Pointer to one parameter (or its gradient) by name (compute dtype). */
void *mg_model_param(MgModel *m, const char *name);
void *mg_model_grad(MgModel *m, const char *name);

/* Initialise every parameter from a seed (deterministic; the architecture's initialisation kinds). */
void mg_model_init_weights(MgModel *m, uint64_t seed);
void mg_model_zero_grads(MgModel *m);

/* Element ranges of the gradient buckets in backward order (what grads_ready reports), for a caller that
 * wants to size its all-reduce buffers: fills up to max (offset, count) pairs, returns how many exist. */
int mg_model_grad_buckets(const MgModel *m, int64_t *offsets, int64_t *counts, int max);

/* ---- memory plan ---------------------------------------------------------------------------------------- */
/* Bytes of the activation arena for a (B, L) step. The plan works without a model (for `info`), given the
 * compute and state dtypes. */
size_t mg_activation_plan_bytes(const MgConfig *cfg, MgDtype compute, MgDtype state, int B, int L);
size_t mg_model_activation_bytes(MgModel *m, int B, int L);
void mg_model_print_memory(MgModel *m, int B, int L);
/* Print the (B, L) plan to f: its buffers grouped by name and dtype, with their bytes. */
void mg_activation_plan_print(const MgConfig *cfg, MgDtype compute, MgDtype state, int B, int L, FILE *f);

/* ---- carried state -------------------------------------------------------------------------------------- */
MgModelState *mg_model_state_create(const MgModel *m, int B);
void mg_model_state_free(const MgModel *m, MgModelState *s);
void mg_model_state_reset(const MgModel *m, MgModelState *s); /* a fresh state (Megalodon: count 0, mean 0,
                                                                 * var 1, h 0) */
void mg_model_state_zero(const MgModel *m, MgModelState *s);  /* all zeros: a zero gradient */
void mg_model_state_copy(const MgModel *m, MgModelState *dst, const MgModelState *src);
int mg_model_state_batch(const MgModelState *s);
/* Number of tensors, and tensor i: its layer (n_layers = final), name ("timestep_norm.mean"), dtype,
 * element count and backend pointer. */
int mg_model_state_count(const MgModel *m);
void *mg_model_state_tensor(const MgModel *m, const MgModelState *s, int i, int *layer, const char **name,
                            MgDtype *dtype, int64_t *numel);

/* ---- recurrent (streaming) inference with unlimited context ----------------------------------------------
 * A decoder holds the carried state of every layer plus the architecture's attention cache (Megalodon:
 * keys and values of the current chunk only), so its memory does not depend on how many tokens have been
 * consumed. Everything it needs is allocated by mg_decoder_create; once the backend's op workspace has
 * grown to the largest piece (the first chunk), steps allocate nothing (tests/test_model_state.c). */
typedef struct MgDecoder MgDecoder;
MgDecoder *mg_decoder_create(MgModel *m, int B);
void mg_decoder_free(MgDecoder *d);
void mg_decoder_reset(MgDecoder *d);
/* Consume n tokens per sequence (B x n host array) and write the logits of each of them
 * (B x n x V, compute dtype, host memory; NULL = only keep the last position's logits internally).
 * A stop request (SIGINT/SIGTERM, src/signals.h) makes it return between two pieces with the rest
 * unconsumed (mg_decoder_position says how far it got); the caller checks mg_stop_requested(). */
void mg_decoder_step(MgDecoder *d, const int32_t *tokens, int n, void *logits_host);
/* Logits of the last consumed position (B x V, host float32). */
const float *mg_decoder_last_logits(const MgDecoder *d);
int64_t mg_decoder_position(const MgDecoder *d);
/* The most tokens per sequence the decoder can consume (llama: seq_len, its key/value cache), 0 = unlimited
 * (megalodon). Stepping past it is a fatal error. */
int64_t mg_decoder_context(const MgDecoder *d);
/* The most tokens per sequence this model can see (llama: seq_len, no carried state and RoPE positions
 * trained up to it), 0 = unlimited (megalodon: carried state). The same as mg_decoder_context. */
int64_t mg_model_context(const MgModel *m);
/* Backend bytes the decoder allocated (state, caches, work buffers). */
size_t mg_decoder_bytes(const MgDecoder *d);
/* Without a model: the backend bytes mg_decoder_create(m, B) allocates for its caches and work buffers
 * (mg_decoder_bytes without the two carried states), for a config and dtypes. The memory check uses it. */
size_t mg_decoder_plan_bytes(const MgConfig *cfg, MgDtype compute, MgDtype state, int B);

#endif
