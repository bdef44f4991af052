/* One optimizer step: n_micro micro-batches of batch_size x seq_len tokens (n_micro = batch_tokens /
 * (batch_size * seq_len), at least 1) with their gradients accumulated, the loss as the mean over every
 * target of the step, global-norm clipping, the scheduled learning rate, AdamW. */
#include <math.h>

#include "../../parallel/devcomm.h"
#include "../../parallel/shard.h"
#include "../common.h"
#include "../rng.h"
#include "../signals.h"
#include "trainer.h"

/* P ranks: reduce-scatter the gradients into this rank's shard (summed in rank order), the exact global
 * norm from the shards, AdamW on the shard (ZeRO-1), all-gather the updated parameters. The CPU backend's
 * memory is host memory; a device backend will run the same collectives with its own transport. */
static double update_distributed(Trainer *t, int64_t step, double *lr_out) {
    const MgConfig *c = &t->cfg;
    MgDist *d = &t->dist;
    const MgBackend *be = t->be;
    const int64_t n = mg_model_params_table(t->model)->total;
    const size_t es = mg_dtype_size(be->dtype);
    if (d->dc) {
        /* on backend memory: the gradient in fp32, reduce-scattered, this rank's shard back in the compute
         * dtype (the host path's arithmetic: a float sum rounded once) */
        const void *grads = mg_model_grads(t->model);
        float *g32 = d->g32 ? d->g32 : (float *)grads, *gs32 = d->gs32 ? d->gs32 : (float *)d->gshard;
        if (d->g32) {
            MgConvertArgs cv = {.n = n, .src_dtype = be->dtype, .dst_dtype = MG_F32, .src = grads, .dst = g32};
            be->convert(be, &cv);
        }
        d->dc->reduce_scatter_f32(d->dc, g32, gs32, n);
        if (d->gs32 && d->shard_len > 0) {
            MgConvertArgs cv = {.n = d->shard_len, .src_dtype = MG_F32, .dst_dtype = be->dtype, .src = gs32,
                                .dst = d->gshard};
            be->convert(be, &cv);
        }
    } else {
        be->synchronize(be);
        /* the last micro-batch's backward started the reduce-scatter bucket by bucket (mg_dist_last_hooks) */
        mg_dist_reduce_finish(d, d->host_grads); /* this rank's shard, in front */
        be->to_device(be, d->gshard, d->host_grads, (size_t)d->shard_len * es);
    }
    double ss = d->shard_len > 0 ? be->sum_squares(be, d->gshard, d->shard_len) : 0.0;
    mg_dist_sum(d, &ss, 1);
    const double gnorm = sqrt(ss);
    const double clip = (c->grad_clip > 0 && gnorm > c->grad_clip) ? c->grad_clip / (gnorm + 1e-6) : 1.0;
    const double lr = mg_schedule_lr(&t->sched, step);
    const int sep = mg_model_has_separate_masters(t->model);
    float *masters = mg_model_masters(t->model);
    char *params = mg_model_params(t->model);
    if (d->shard_len > 0) {
        MgAdamWArgs aw = {.n = d->shard_len, .param = masters + d->shard_off, .grad = d->gshard,
                          .param_out = sep ? params + (size_t)d->shard_off * es : NULL, .m = t->m, .v = t->v,
                          .lr = lr, .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->adam_eps,
                          .weight_decay = c->weight_decay, .grad_scale = clip, .step = step};
        be->adamw_update(be, &aw);
    }
    if (d->dc) {
        d->dc->all_gather(d->dc, masters, n, sizeof(float));
        if (sep) d->dc->all_gather(d->dc, params, n, es);
    } else {
        be->synchronize(be);
        mg_all_gather_shards(d->world, sizeof(float), masters, n);
        if (sep) mg_all_gather_shards(d->world, es, params, n);
    }
    *lr_out = lr;
    return gnorm;
}

MgStepResult trainer_step(Trainer *t) {
    const MgConfig *c = &t->cfg;
    const MgParamTable *pt = mg_model_params_table(t->model);
    const int B = c->batch_size, L = c->seq_len, Ls = mg_dist_local_len(&t->dist, c);
    const int64_t step_tokens = t->step_tokens;
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
        if (t->dist.P == 1) {
            MgForwardOpts opts = {.seed = step_seed, .training = 1, .seq0 = (int64_t)micro * B, .seq_len = L};
            loss_sum += mg_model_forward_backward(t->model, t->inputs, t->targets, B, L, 1.0 / (double)step_tokens,
                                                  &opts, NULL, NULL, &n);
        } else { /* this rank's sequences (every DP-th of the step) and columns (its SP slice) */
            if (t->in_local != t->inputs) {
                mg_dist_slice(&t->dist, c, B, t->inputs, t->in_local);
                mg_dist_slice(&t->dist, c, B, t->targets, t->tg_local);
            }
            const int last = micro == t->n_micro - 1;
            MgPassArgs a = {.tokens = t->in_local, .targets = t->tg_local, .B = B, .L = Ls,
                            .grad_scale = 1.0 / (double)step_tokens,
                            .opts = mg_dist_opts(&t->dist, c, step_seed, 1, micro, B),
                            .hooks = last ? mg_dist_last_hooks(&t->dist, mg_model_grads(t->model))
                                          : mg_dist_hooks(&t->dist)};
            loss_sum += mg_model_step(t->model, &a, &n);
            mg_dist_pass_done(&t->dist);
        }
        counted += n;
    }
    if (t->dist.P > 1) { /* the step's loss over every rank, and whether any rank was asked to stop */
        double red[3] = {loss_sum, (double)counted, mg_stop_requested() ? 1.0 : 0.0};
        mg_dist_sum(&t->dist, red, 3);
        loss_sum = red[0];
        counted = (int64_t)red[1];
        t->stop_agreed = red[2] > 0;
    }
    double loss = loss_sum / (double)MG_MAX(counted, 1);
    if (!isfinite(loss))
        mg_fatal("the loss became %g at step %lld: training diverged (try a lower lr or grad_clip); the last "
                 "checkpoint is intact",
                 loss, (long long)step);

    if (t->dist.P > 1) {
        double lr;
        const double gnorm = update_distributed(t, step, &lr);
        t->step = step;
        t->tokens_seen += step_tokens;
        return (MgStepResult){.loss = loss, .grad_norm = gnorm, .lr = lr, .seconds = mg_now() - t0};
    }
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
