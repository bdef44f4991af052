/* One optimizer step: n_micro micro-batches of batch_size x seq_len tokens (n_micro = batch_tokens /
 * (batch_size * seq_len), at least 1) with their gradients accumulated, the loss as the mean over every
 * target of the step, global-norm clipping, the scheduled learning rate, AdamW. */
#include <math.h>

#include "../common.h"
#include "../rng.h"
#include "trainer.h"

MgStepResult trainer_step(Trainer *t) {
    const MgConfig *c = &t->cfg;
    const MgParamTable *pt = mg_model_params_table(t->model);
    const int B = c->batch_size, L = c->seq_len;
    const int64_t step_tokens = (int64_t)t->n_micro * B * L;
    const int64_t step = t->step + 1;
    double t0 = mg_now();

    /* Forward and backward over each micro-batch; the gradients accumulate, scaled by 1/step_tokens.
     * Dropout masks are functions of (seed, step, the sequence's index within the step, position): the
     * same however the step's sequences are split into micro-batches or ranks, and nothing to save for an
     * exact resume. */
    mg_model_zero_grads(t->model);
    double loss_sum = 0.0;
    int64_t counted = 0;
    const uint64_t step_seed = mg_hash64(c->seed ^ 0x5eedull, (uint64_t)step * 4096u);
    for (int micro = 0; micro < t->n_micro; micro++) {
        mg_loader_next(t->train, B, t->inputs, t->targets);
        int64_t n = 0;
        MgForwardOpts opts = {.seed = step_seed, .training = 1, .seq0 = (int64_t)micro * B, .seq_len = L};
        loss_sum += mg_model_forward_backward(t->model, t->inputs, t->targets, B, L, 1.0 / (double)step_tokens,
                                              &opts, NULL, NULL, &n);
        counted += n;
    }
    double loss = loss_sum / (double)MG_MAX(counted, 1);
    if (!isfinite(loss))
        mg_fatal("the loss became %g at step %lld: training diverged (try a lower lr or grad_clip); the last "
                 "checkpoint is intact",
                 loss, (long long)step);

    /* Global-norm clipping (folded into AdamW as a gradient scale), learning rate, AdamW. */
    double gnorm = sqrt(t->be->sum_squares(t->be, mg_model_grads(t->model), pt->total));
    double clip = (c->grad_clip > 0 && gnorm > c->grad_clip) ? c->grad_clip / (gnorm + 1e-6) : 1.0;
    double lr = mg_schedule_lr(&t->sched, step);
    /* AdamW updates the fp32 masters; a separate compute-dtype copy (bf16) receives them. */
    MgAdamWArgs aw = {.n = pt->total, .param = mg_model_masters(t->model), .grad = mg_model_grads(t->model),
                      .param_out = mg_model_has_separate_masters(t->model) ? mg_model_params(t->model) : NULL,
                      .m = t->m, .v = t->v, .lr = lr, .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->adam_eps,
                      .weight_decay = c->weight_decay, .grad_scale = clip, .step = step};
    t->be->adamw_update(t->be, &aw);
    t->be->synchronize(t->be);

    t->step = step;
    t->tokens_seen += step_tokens;
    return (MgStepResult){.loss = loss, .grad_norm = gnorm, .lr = lr, .seconds = mg_now() - t0};
}
