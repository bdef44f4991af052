/* `megalodon train` and `megalodon eval`.
 *
 * One optimizer step = n_micro micro-batches of batch_size x seq_len tokens (n_micro =
 * batch_tokens / (batch_size * seq_len), at least 1), gradients accumulated, global-norm clipping, AdamW.
 * Everything that decides the next step (weights, moments, step, data cursor; dropout masks derive from
 * (seed, step)) is in the checkpoint, so a resumed run continues bit-identically. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "cli.h"
#include "common.h"
#include "config.h"
#include "data.h"
#include "info.h"
#include "model.h"
#include "params.h"
#include "rng.h"
#include "run.h"
#include "sample.h"
#include "schedule.h"

static volatile sig_atomic_t g_stop_signal = 0;
static void on_signal(int sig) { g_stop_signal = sig; }

typedef struct {
    MgConfig cfg;
    const MgBackend *be;
    MgModel *model;
    float *m, *v;            /* AdamW moments (backend memory, fp32) */
    MgSchedule sched;
    int64_t step, tokens_seen;
    MgLoader *train, *val;
    int n_micro;
    int32_t *inputs, *targets;
    FILE *log;
    double flops_per_token, peak_flops;
    char init_from[MG_PATH_MAX];
} Trainer;

static void die_err(const char *err) { mg_fatal("%s", err); }

/* ---- checkpoints --------------------------------------------------------------------------------- */
static void fill_meta(Trainer *t, MgCkptMeta *meta) {
    mg_ckpt_meta_init(meta);
    meta->step = t->step;
    meta->tokens_seen = t->tokens_seen;
    char *text = mg_config_to_text(&t->cfg);
    mg_ckpt_meta_set_config(meta, text);
    free(text);
    int n = mg_loader_state_len(t->train);
    int64_t *st = mg_malloc(sizeof(int64_t) * (size_t)n);
    mg_loader_state_get(t->train, st);
    mg_ckpt_meta_set_i64_array(meta, "loader_state", st, n);
    free(st);
    mg_ckpt_meta_set_str(meta, "train_data", mg_loader_spec_normalised(t->train));
    /* The mixture as realised so far: windows drawn from each source, next to the requested weights. */
    int ns = mg_loader_num_sources(t->train);
    int64_t *counts = mg_malloc(sizeof(int64_t) * (size_t)ns);
    double *weights = mg_malloc(sizeof(double) * (size_t)ns);
    for (int i = 0; i < ns; i++) {
        counts[i] = mg_loader_source_count(t->train, i);
        weights[i] = mg_loader_source_weight(t->train, i);
    }
    mg_ckpt_meta_set_i64_array(meta, "mixture_counts", counts, ns);
    mg_ckpt_meta_set_f64_array(meta, "mixture_weights", weights, ns);
    free(counts);
    free(weights);
    mg_ckpt_meta_set_i64(meta, "seed", (int64_t)t->cfg.seed);
    double sched[6] = {t->sched.peak_lr, t->sched.warmup_init_ratio, t->sched.min_lr_ratio,
                       (double)t->sched.warmup_steps, (double)t->sched.max_steps, (double)t->sched.kind};
    mg_ckpt_meta_set_f64_array(meta, "schedule", sched, 6);
    mg_ckpt_meta_set_f64(meta, "lr", mg_schedule_lr(&t->sched, t->step > 0 ? t->step : 1));
    mg_ckpt_meta_set_str(meta, "init_from", t->init_from);
}

static void save_checkpoint(Trainer *t, const char *why) {
    if (!mg_ckpt_available()) {
        printf("checkpoint (%s) skipped: this build has no HDF5\n", why);
        return;
    }
    MgCkptMeta meta;
    fill_meta(t, &meta);
    char err[4096], path[MG_PATH_MAX + 64];
    double t0 = mg_now();
    int rc = mg_ckpt_dir_save(t->cfg.out_dir, mg_model_params_table(t->model), mg_model_params(t->model), t->m, t->v,
                              &meta, t->cfg.ckpt_keep, path, sizeof path, err, sizeof err);
    mg_ckpt_meta_free(&meta);
    if (rc) mg_fatal("saving the %s checkpoint failed: %s (the previous checkpoint is intact)", why, err);
    MgCkptStats s = mg_ckpt_last_stats();
    printf("saved %s checkpoint %s (%.1f MB in %.2f s, %.0f MB/s)\n", why, path, s.bytes / 1e6, mg_now() - t0,
           s.seconds > 0 ? s.bytes / 1e6 / s.seconds : 0.0);
    fflush(stdout);
}

/* Load weights (and moments if m != NULL) from path into the trainer's model. */
static void load_weights(Trainer *t, const char *path, int with_optimizer, MgCkptMeta *meta) {
    char err[4096];
    if (mg_ckpt_load(path, mg_model_params_table(t->model), mg_model_params(t->model), with_optimizer ? t->m : NULL,
                     with_optimizer ? t->v : NULL, meta, err, sizeof err))
        mg_fatal("%s", err);
}

/* ---- evaluation ---------------------------------------------------------------------------------- */
/* Mean loss over `batches` micro-batches of the eval loader from its start (0 = one full pass). */
static double evaluate(MgModel *model, MgLoader *val, int B, int L, int batches, int64_t *tokens_out) {
    mg_loader_rewind(val);
    if (batches <= 0) {
        int64_t w = mg_loader_total_windows(val);
        batches = (int)MG_MAX(1, w / B);
    }
    int32_t *in = mg_malloc(sizeof(int32_t) * (size_t)B * L), *tg = mg_malloc(sizeof(int32_t) * (size_t)B * L);
    double sum = 0.0;
    int64_t count = 0;
    for (int i = 0; i < batches; i++) {
        mg_loader_next(val, B, in, tg);
        int64_t n = 0;
        sum += mg_model_forward_loss(model, in, tg, B, L, NULL, NULL, NULL, &n);
        count += n;
    }
    free(in);
    free(tg);
    if (tokens_out) *tokens_out = count;
    return sum / (double)MG_MAX(count, 1);
}

/* ---- set-up -------------------------------------------------------------------------------------- */
static int dir_has_checkpoints(const char *out_dir, char *newest, size_t n) {
    char err[1024];
    int rc = mg_ckpt_dir_latest(out_dir, newest, n, err, sizeof err);
    return rc == 0;
}

/* After a crash the log may hold steps newer than the checkpoint we resume from; those steps will run
 * again, so drop their lines (rewritten through a temporary file and a rename). */
static void trim_log(const char *path, int64_t last_step) {
    FILE *in = fopen(path, "r");
    if (!in) return;
    char tmp[MG_PATH_MAX + 48];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return;
    }
    char line[4096];
    int64_t dropped = 0;
    while (fgets(line, sizeof line, in)) {
        const char *k = strstr(line, "\"step\": ");
        long long step = k ? atoll(k + 8) : 0;
        if (step > last_step) dropped++;
        else fputs(line, out);
    }
    fclose(in);
    if (fclose(out) == 0 && rename(tmp, path) == 0) {
        if (dropped) printf("log.jsonl: dropped %lld lines of steps after %lld (they run again)\n", (long long)dropped,
                            (long long)last_step);
    } else {
        remove(tmp);
    }
}

static void open_log(Trainer *t, int append) {
    char path[MG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/log.jsonl", t->cfg.out_dir);
    if (append) trim_log(path, t->step);
    t->log = fopen(path, append ? "a" : "w");
    if (!t->log) mg_fatal("cannot open the log file '%s': %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/config.txt", t->cfg.out_dir);
    FILE *f = fopen(path, "w");
    if (f) {
        mg_config_print(&t->cfg, f);
        fclose(f);
    }
}

static void print_header(Trainer *t) {
    const MgConfig *c = &t->cfg;
    const MgParamTable *pt = mg_model_params_table(t->model);
    char b1[32], b2[32];
    printf("megalodon train: %s, %d layers, d %d, %d heads, z %d, v %d, f %d%s, N %d, G %d, chunk %d\n", c->arch,
           c->n_layers, c->model_dim, c->num_heads, c->z_dim, c->value_dim, c->ffn_hidden_dim,
           c->swiglu ? " (SwiGLU)" : "", c->cema_ndim, c->norm_num_groups, c->chunk_size);
    printf("parameters: %lld (%s in fp32); optimizer state %s\n", (long long)pt->total,
           mg_format_bytes(4.0 * (double)pt->total, b1, sizeof b1), mg_format_bytes(8.0 * (double)pt->total, b2, sizeof b2));
    printf("batch: %d x %d tokens per micro-batch, %d micro-batch%s per step = %lld tokens per step\n", c->batch_size,
           c->seq_len, t->n_micro, t->n_micro == 1 ? "" : "es", (long long)t->n_micro * c->batch_size * c->seq_len);
    mg_model_print_memory(t->model, c->batch_size, c->seq_len);
    printf("backend: %s, %d threads\n", t->be->name, mg_get_threads());
    int64_t train_tokens = 0;
    for (int i = 0; i < mg_loader_num_sources(t->train); i++) train_tokens += mg_loader_source_tokens(t->train, i);
    printf("data: train %s (%lld tokens)", mg_loader_spec_normalised(t->train), (long long)train_tokens);
    if (t->val) printf(", val %s (%lld windows)", c->val_data, (long long)mg_loader_total_windows(t->val));
    printf("\n");
    char desc[256];
    t->peak_flops = mg_peak_flops(c, desc, sizeof desc);
    t->flops_per_token = mg_flops_per_token(c, pt);
    printf("MFU: %.3g FLOPs per token (6 x matmul params + causal chunk attention, design.md) / %s\n",
           t->flops_per_token, desc);
    printf("schedule: %s, peak lr %g, warm-up %lld steps, floor %g x lr, %lld steps%s\n", c->lr_schedule,
           t->sched.peak_lr, (long long)t->sched.warmup_steps, t->sched.min_lr_ratio, (long long)t->sched.max_steps,
           t->init_from[0] ? " (re-warm: continual pre-training)" : "");
    printf("out_dir: %s\n", c->out_dir);
    fflush(stdout);
}

int cmd_train(int argc, char **argv) {
    Trainer T;
    memset(&T, 0, sizeof T);
    Trainer *t = &T;
    char err[8192];
    mg_config_defaults(&t->cfg);
    mg_config_from_args(&t->cfg, argc, argv, NULL, NULL);
    MgConfig *c = &t->cfg;
    if (mg_config_validate(c, err, sizeof err)) die_err(err);
    mg_set_threads(c->threads);
    t->be = mg_backend_for(c);
    MG_CHECK(t->be->dtype == MG_F32, "training needs a float32 backend (got %s)", t->be->name);

    /* Fail before any work if the output directory cannot hold our checkpoints. */
    MgParamTable probe;
    mg_param_table_build(c, &probe);
    if (mg_ckpt_available()) {
        if (mg_ckpt_dir_check_writable(c->out_dir, mg_ckpt_size_estimate(&probe, 1), err, sizeof err)) die_err(err);
    } else {
        if (mkdir(c->out_dir, 0777) && errno != EEXIST) mg_fatal("cannot create out_dir '%s': %s", c->out_dir, strerror(errno));
        fprintf(stderr, "warning: this build has no HDF5, so no checkpoints will be written\n");
    }
    mg_param_table_free(&probe);

    /* Where do we start? */
    char resume_path[MG_PATH_MAX + 64] = "";
    if (!strcmp(c->resume, "auto")) {
        if (!dir_has_checkpoints(c->out_dir, resume_path, sizeof resume_path)) {
            resume_path[0] = 0;
            printf("resume auto: no checkpoint in %s, starting a new run\n", c->out_dir);
        }
    } else if (c->resume[0]) {
        snprintf(resume_path, sizeof resume_path, "%s", c->resume);
    } else {
        char newest[MG_PATH_MAX + 64];
        if (mg_ckpt_available() && dir_has_checkpoints(c->out_dir, newest, sizeof newest))
            mg_fatal("out_dir '%s' already holds checkpoints (newest: %s): pass --resume auto to continue that run, "
                     "or choose another --out_dir (nothing was overwritten)",
                     c->out_dir, newest);
    }

    /* Data. */
    t->train = mg_loader_open(c->train_data, c->vocab_size, c->seq_len, c->seed, 0, 1, err, sizeof err);
    if (!t->train) mg_fatal("train_data: %s", err);
    if (c->val_data[0]) {
        t->val = mg_loader_open_eval(c->val_data, c->vocab_size, c->seq_len, 0, 1, err, sizeof err);
        if (!t->val) mg_fatal("val_data: %s (set --val_data \"\" to train without validation)", err);
    }
    int64_t micro_tokens = (int64_t)c->batch_size * c->seq_len;
    t->n_micro = c->batch_tokens > 0 ? (int)(c->batch_tokens / micro_tokens) : 1;
    t->inputs = mg_malloc(sizeof(int32_t) * (size_t)micro_tokens);
    t->targets = mg_malloc(sizeof(int32_t) * (size_t)micro_tokens);

    /* Model and optimizer state. */
    t->model = mg_model_create(c, t->be);
    const MgParamTable *pt = mg_model_params_table(t->model);
    t->m = t->be->alloc(t->be, sizeof(float) * (size_t)pt->total);
    t->v = t->be->alloc(t->be, sizeof(float) * (size_t)pt->total);
    if (mg_schedule_kind(c->lr_schedule, &t->sched.kind)) mg_fatal("unknown lr_schedule '%s'", c->lr_schedule);
    t->sched.peak_lr = c->lr;
    t->sched.warmup_init_ratio = c->warmup_init_ratio;
    t->sched.min_lr_ratio = c->min_lr_ratio;
    t->sched.warmup_steps = c->warmup_steps;
    t->sched.max_steps = c->max_steps;
    if (c->init_from[0]) {
        snprintf(t->init_from, sizeof t->init_from, "%s", c->init_from);
        if (c->rewarm_steps >= 0) t->sched.warmup_steps = c->rewarm_steps;
    }

    if (resume_path[0]) {
        MgCkptMeta meta;
        load_weights(t, resume_path, 1, &meta);
        t->step = meta.step;
        t->tokens_seen = meta.tokens_seen;
        const char *spec = mg_ckpt_meta_get_str(&meta, "train_data");
        if (spec && strcmp(spec, mg_loader_spec_normalised(t->train)) != 0)
            mg_fatal("checkpoint %s was trained on train_data '%s' but this run has '%s': pass --train_data '%s' to "
                     "resume it, or start a new run with --init_from",
                     resume_path, spec, mg_loader_spec_normalised(t->train), spec);
        int n = mg_loader_state_len(t->train);
        int64_t *st = mg_malloc(sizeof(int64_t) * (size_t)n);
        if (mg_ckpt_meta_get_i64_array(&meta, "loader_state", st, n, err, sizeof err)) mg_fatal("%s: %s", resume_path, err);
        if (mg_loader_state_set(t->train, st, n, err, sizeof err)) mg_fatal("%s: %s", resume_path, err);
        free(st);
        mg_ckpt_meta_free(&meta);
        printf("resumed from %s at step %lld (%lld tokens seen)\n", resume_path, (long long)t->step,
               (long long)t->tokens_seen);
        if (t->step >= c->max_steps) printf("note: the checkpoint is already at max_steps = %lld\n", (long long)c->max_steps);
    } else if (c->init_from[0]) {
        MgCkptMeta meta;
        load_weights(t, c->init_from, c->init_optimizer, &meta);
        printf("initialised from %s (step %lld of its run)%s; new schedule: re-warm over %lld steps to lr %g\n",
               c->init_from, (long long)meta.step, c->init_optimizer ? " with its AdamW moments" : "",
               (long long)t->sched.warmup_steps, c->lr);
        mg_ckpt_meta_free(&meta);
    } else {
        mg_model_init_weights(t->model, c->seed);
    }
    open_log(t, resume_path[0] != 0);
    print_header(t);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const double t_start = mg_now();
    const int B = c->batch_size, L = c->seq_len;
    const int64_t step_tokens = (int64_t)t->n_micro * B * L;
    const int64_t last_step = c->stop_at > 0 ? MG_MIN(c->stop_at, c->max_steps) : c->max_steps;
    int64_t last_saved = t->step;
    while (t->step < last_step) {
        const int64_t step = t->step + 1;
        double t0 = mg_now();
        mg_model_zero_grads(t->model);
        double loss_sum = 0.0;
        int64_t counted = 0;
        for (int micro = 0; micro < t->n_micro; micro++) {
            mg_loader_next(t->train, B, t->inputs, t->targets);
            int64_t n = 0;
            /* dropout masks depend only on (seed, step, micro-batch): nothing to save for exact resume */
            MgForwardOpts opts = {.seed = mg_hash64(c->seed ^ 0x5eedull, (uint64_t)step * 4096u + (uint64_t)micro),
                                  .training = 1};
            loss_sum += mg_model_forward_backward(t->model, t->inputs, t->targets, B, L, 1.0 / (double)step_tokens,
                                                  &opts, NULL, NULL, &n);
            counted += n;
        }
        double loss = loss_sum / (double)MG_MAX(counted, 1);
        if (!isfinite(loss))
            mg_fatal("the loss became %g at step %lld: training diverged (try a lower lr or grad_clip); the last "
                     "checkpoint is intact",
                     loss, (long long)step);
        double gnorm = sqrt(t->be->sum_squares(t->be, mg_model_grads(t->model), pt->total));
        double clip = (c->grad_clip > 0 && gnorm > c->grad_clip) ? c->grad_clip / (gnorm + 1e-6) : 1.0;
        double lr = mg_schedule_lr(&t->sched, step);
        MgAdamWArgs aw = {.n = pt->total, .param = mg_model_params(t->model), .grad = mg_model_grads(t->model),
                          .m = t->m, .v = t->v, .lr = lr, .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->adam_eps,
                          .weight_decay = c->weight_decay, .grad_scale = clip, .step = step};
        t->be->adamw_update(t->be, &aw);
        t->be->synchronize(t->be);
        t->step = step;
        t->tokens_seen += step_tokens;
        double dt = mg_now() - t0;
        double tps = (double)step_tokens / dt;
        double mfu = t->flops_per_token * tps / t->peak_flops;

        int do_eval = t->val && ((c->eval_every > 0 && step % c->eval_every == 0) || step == c->max_steps);
        double val_loss = NAN;
        if (do_eval) val_loss = evaluate(t->model, t->val, B, L, c->eval_batches, NULL);

        if (step % c->log_every == 0 || step == 1 || step == last_step || do_eval) {
            printf("step %6lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | MFU %.2f%% | %.1f s",
                   (long long)step, (long long)c->max_steps, loss, lr, gnorm, tps, 100.0 * mfu, mg_now() - t_start);
            if (do_eval) printf(" | val loss %.4f ppl %.2f", val_loss, exp(val_loss));
            printf("\n");
            fflush(stdout);
        }
        fprintf(t->log,
                "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"mfu\": "
                "%.6f, \"elapsed\": %.3f, \"tokens\": %lld",
                (long long)step, loss, lr, gnorm, tps, mfu, mg_now() - t_start, (long long)t->tokens_seen);
        if (do_eval) fprintf(t->log, ", \"val_loss\": %.6f, \"val_ppl\": %.4f", val_loss, exp(val_loss));
        fprintf(t->log, "}\n");
        fflush(t->log);

        if (c->sample_every > 0 && step % c->sample_every == 0) mg_sample_during_training(t->model, c, stdout);

        if (g_stop_signal) {
            printf("received %s at step %lld: writing a checkpoint and stopping\n",
                   g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM", (long long)step);
            save_checkpoint(t, "signal");
            fclose(t->log);
            return 0;
        }
        if (c->ckpt_every > 0 && step % c->ckpt_every == 0 && step != last_step) {
            save_checkpoint(t, "periodic");
            last_saved = step;
        }
    }
    if (t->step > last_saved) save_checkpoint(t, t->step >= c->max_steps ? "final" : "stop_at");
    printf("done: %lld steps, %lld tokens, %.1f s\n", (long long)t->step, (long long)t->tokens_seen, mg_now() - t_start);
    fclose(t->log);
    mg_loader_close(t->train);
    if (t->val) mg_loader_close(t->val);
    t->be->free(t->be, t->m);
    t->be->free(t->be, t->v);
    free(t->inputs);
    free(t->targets);
    mg_model_free(t->model);
    return 0;
}

/* `megalodon eval --ckpt F --data PATH [--batches N] [--key value ...]` prints "val_loss X". */
int cmd_eval(int argc, char **argv) {
    static const char *const extra[] = {"ckpt", "data", "batches", NULL};
    const char *vals[3] = {0};
    MgConfig cfg;
    MgModel *m = mg_model_from_checkpoint("eval", argc, argv, extra, vals, &cfg);
    const char *data = vals[1] ? vals[1] : cfg.val_data;
    int batches = vals[2] ? atoi(vals[2]) : 0;
    char err[4096];
    MgLoader *l = mg_loader_open_eval(data, cfg.vocab_size, cfg.seq_len, 0, 1, err, sizeof err);
    if (!l) mg_fatal("--data: %s", err);
    double t0 = mg_now();
    int64_t tokens = 0;
    double loss = evaluate(m, l, cfg.batch_size, cfg.seq_len, batches, &tokens);
    printf("val_loss %.6f\n", loss);
    printf("val_ppl %.4f\n", exp(loss));
    printf("tokens %lld (%d x %d per batch), %.1f s\n", (long long)tokens, cfg.batch_size, cfg.seq_len, mg_now() - t0);
    mg_loader_close(l);
    mg_model_free(m);
    return 0;
}
MgModel *mg_model_from_checkpoint(const char *cmd, int argc, char **argv, const char *const *extra_keys,
                                  const char **extra_values, MgConfig *cfg_out) {
    /* --ckpt must be known before the stored config can be read, so the arguments are parsed twice:
     * once on a scratch config for the subcommand's own flags, then on top of the stored config. */
    MgConfig probe;
    mg_config_defaults(&probe);
    mg_config_from_args(&probe, argc, argv, extra_keys, extra_values);
    const char *path = extra_values[0];
    if (!path) mg_fatal("%s needs --ckpt FILE (a checkpoint written by `megalodon train`)", cmd);
    char err[4096];
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    if (mg_ckpt_read_meta(path, &meta, err, sizeof err)) mg_fatal("%s", err);
    MgConfig cfg;
    mg_config_defaults(&cfg);
    char origin[MG_PATH_MAX + 32];
    snprintf(origin, sizeof origin, "%s (stored config)", path);
    if (mg_config_load_text(&cfg, meta.config_text ? meta.config_text : "", origin, err, sizeof err))
        mg_fatal("%s", err);
    mg_config_from_args(&cfg, argc, argv, extra_keys, extra_values);
    mg_ckpt_meta_free(&meta);
    if (mg_config_validate(&cfg, err, sizeof err)) mg_fatal("%s", err);
    mg_set_threads(cfg.threads);
    MgModel *m = mg_model_create(&cfg, mg_backend_for(&cfg));
    if (mg_ckpt_load(path, mg_model_params_table(m), mg_model_params(m), NULL, NULL, NULL, err, sizeof err))
        mg_fatal("%s", err);
    *cfg_out = cfg;
    return m;
}
