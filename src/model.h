/* The Megalodon language model graph (spec §1-§5), written once against the backend interface
 * (kernels/ops.h): the same code trains in float32 on the CPU, is gradient-checked in float64, and will
 * run on the CUDA backend.
 *
 * Memory: one flat arena each for parameters and gradients (layout = the parameter table, src/params.h)
 * and one activation arena sized for the largest (batch, length) seen so far. Nothing else is allocated
 * per step. The LM head and the cross-entropy run in blocks of rows so the B x L x V logits never exist
 * at once during training.
 *
 * Carried state: every layer's TimestepNorm statistics and CEMA state (plus the final TimestepNorm) can
 * be passed in and out of a forward pass (MgModelState). This is what sequence parallelism (a rank
 * receives the state of the previous rank's slice) and streaming inference build on. */
#ifndef MG_MODEL_H
#define MG_MODEL_H

#include <stdint.h>

#include "../kernels/ops.h"
#include "config.h"
#include "params.h"

/* Carried state for a batch of B sequences: per layer (TimestepNorm count/mean/var, CEMA h) and the
 * final TimestepNorm. Buffers live in backend memory (state dtype). */
typedef struct {
    int B, n_layers, G, D, N;
    int64_t *tsn_count;   /* (n_layers + 1) x B, host memory (counts are small integers) */
    void *tsn_mean;       /* (n_layers + 1) x B x G; index n_layers = final norm */
    void *tsn_var;        /* (n_layers + 1) x B x G */
    void *cema_h;         /* n_layers x B x D x N x 2 */
} MgModelState;

typedef struct MgModel MgModel;

/* Dropout seeds for one forward pass (ignored when every dropout probability is 0). */
typedef struct {
    uint64_t seed;
    int training;         /* 0: dropout off (evaluation, sampling) */
} MgForwardOpts;

MgModel *mg_model_create(const MgConfig *cfg, const MgBackend *be);
void mg_model_free(MgModel *m);

const MgConfig *mg_model_config(const MgModel *m);
const MgParamTable *mg_model_params_table(const MgModel *m);
const MgBackend *mg_model_backend(const MgModel *m);
/* Flat parameter and gradient arenas (backend memory, backend dtype, table layout). */
void *mg_model_params(MgModel *m);
void *mg_model_grads(MgModel *m);
/* Pointer to one parameter (or its gradient) by name. */
void *mg_model_param(MgModel *m, const char *name);
void *mg_model_grad(MgModel *m, const char *name);

/* Initialise every parameter per spec §1.5 / §2.2 from a seed (deterministic). */
void mg_model_init_weights(MgModel *m, uint64_t seed);
void mg_model_zero_grads(MgModel *m);

/* Training step on one micro-batch: forward, loss, and backward (gradients ACCUMULATE into the
 * gradient arena). tokens, targets: B x L host arrays. The loss gradient is scaled by grad_scale (use
 * 1 / tokens in the global batch for a mean over the global batch). Returns the sum of the per-token
 * losses of this micro-batch and writes the number of counted targets (target != -1) to *n_counted.
 * state_in may be NULL (fresh sequences); state_out, if non-NULL, receives the final carried state. */
double mg_model_forward_backward(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                                 double grad_scale, const MgForwardOpts *opts, const MgModelState *state_in,
                                 MgModelState *state_out, int64_t *n_counted);

/* Forward only: returns the summed loss over counted targets. opts NULL = evaluation (no dropout);
 * with opts->training set, dropout masks are exactly those mg_model_forward_backward uses for the same
 * seed (gradient checks rely on this). */
double mg_model_forward_loss(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                             const MgForwardOpts *opts, const MgModelState *state_in, MgModelState *state_out,
                             int64_t *n_counted);

/* Forward only, full logits (B x L x V, backend dtype, host memory) for tests and analysis. */
void mg_model_forward_logits(MgModel *m, const int32_t *tokens, int B, int L, const MgModelState *state_in,
                             MgModelState *state_out, void *logits_host);

/* Bytes of the activation arena for a (B, L) step, and a one-line summary printer. The plan works
 * without a model (for `info`): act_bytes per stored value (4 fp32, 2 bf16), state_bytes per carried
 * statistic / loss value (4, or 8 in the float64 build). */
size_t mg_model_activation_bytes(MgModel *m, int B, int L);
size_t mg_activation_plan_bytes(const MgConfig *cfg, int act_bytes, int state_bytes, int B, int L);
void mg_model_print_memory(MgModel *m, int B, int L);

/* ---- carried state ---- */
MgModelState *mg_model_state_create(const MgModel *m, int B);
void mg_model_state_free(const MgModel *m, MgModelState *s);
void mg_model_state_reset(const MgModel *m, MgModelState *s); /* fresh: count 0, mean 0, var 1, h 0 */
void mg_model_state_copy(const MgModel *m, MgModelState *dst, const MgModelState *src);

/* ---- recurrent (streaming) inference with unlimited context ----
 * A decoder holds the carried state of every layer plus a key/value cache of the current attention
 * chunk only, so its memory does not depend on how many tokens have been consumed. */
typedef struct MgDecoder MgDecoder;
MgDecoder *mg_decoder_create(MgModel *m, int B);
void mg_decoder_free(MgDecoder *d);
void mg_decoder_reset(MgDecoder *d);
/* Consume n tokens per sequence (B x n host array) and write the logits of each of them
 * (B x n x V, backend dtype, host memory; NULL = only keep the last position's logits internally). */
void mg_decoder_step(MgDecoder *d, const int32_t *tokens, int n, void *logits_host);
/* Logits of the last consumed position (B x V, host float32). */
const float *mg_decoder_last_logits(const MgDecoder *d);
int64_t mg_decoder_position(const MgDecoder *d);
size_t mg_decoder_bytes(const MgDecoder *d);

#endif
