/* `megalodon train`: set-up, the run loop, teardown. What one step does is trainer_step (step.c); the
 * log is log.c, evaluation eval.c, checkpoints ckpt.c. docs/training.md describes the behaviour. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "../checkpoint.h"
#include "../cli.h"
#include "../common.h"
#include "../fsutil.h"
#include "../info.h"
#include "../memcheck.h"
#include "../params.h"
#include "../run.h"
#include "../sample.h"
#include "../signals.h"
#include "log.h"
#include "trainer.h"

/* Is `step` one of every n-th steps (n = 0: never)? */
static int every(int64_t step, int64_t n) { return n > 0 && step % n == 0; }

/* ---- set-up -------------------------------------------------------------------------------------- */
/* Fail before any work if the output directory cannot hold our checkpoints. */
static void check_out_dir(const MgConfig *c) {
    char err[8192];
    MgParamTable probe;
    mg_param_table_build(c, &probe);
    if (mg_ckpt_available()) {
        if (mg_ckpt_dir_check_writable(c->out_dir, mg_ckpt_size_estimate(&probe, 1), err, sizeof err)) mg_fatal("%s", err);
    } else {
        if (mkdir(c->out_dir, 0777) && errno != EEXIST) mg_fatal("cannot create out_dir '%s': %s", c->out_dir, strerror(errno));
        fprintf(stderr, "warning: this build has no HDF5, so no checkpoints will be written\n");
    }
    mg_param_table_free(&probe);
}

static int dir_has_checkpoints(const char *out_dir, char *newest, size_t n) {
    char err[8192];
    int rc = mg_ckpt_dir_latest(out_dir, newest, n, err, sizeof err);
    if (rc < 0 && mg_ckpt_available()) mg_fatal("%s", err); /* e.g. a `latest` naming a file outside out_dir */
    return rc == 0;
}

/* Where do we start? The checkpoint to resume from goes to resume_path ("" = a new run). */
static void choose_start(const MgConfig *c, char *resume_path, size_t n) {
    resume_path[0] = 0;
    if (!strcmp(c->resume, "auto")) {
        if (!dir_has_checkpoints(c->out_dir, resume_path, n)) {
            resume_path[0] = 0;
            char **l = NULL;
            int k = mg_ckpt_available() ? mg_ckpt_dir_list(c->out_dir, &l) : 0;
            for (int i = 0; i < k; i++) free(l[i]);
            free(l);
            if (k > 0)
                mg_fatal("resume auto: '%s' holds %d checkpoint file%s but none is usable (see the warnings above); "
                         "nothing was written: move them out of out_dir to start a new run there",
                         c->out_dir, k, k == 1 ? "" : "s");
            printf("resume auto: no checkpoint in %s, starting a new run\n", c->out_dir);
        }
    } else if (c->resume[0]) {
        snprintf(resume_path, n, "%s", c->resume);
    } else {
        char newest[MG_PATH_MAX + 64];
        if (mg_ckpt_available() && dir_has_checkpoints(c->out_dir, newest, sizeof newest))
            mg_fatal("out_dir '%s' already holds checkpoints (newest: %s): pass --resume auto to continue that run, "
                     "or choose another --out_dir (nothing was overwritten)",
                     c->out_dir, newest);
    }
}

static void open_data(Trainer *t) {
    const MgConfig *c = &t->cfg;
    const MgDist *d = &t->dist;
    const int DP = d->configured ? d->grid.dp_size : 1, dp = d->configured ? d->grid.dp : 0;
    char err[8192];
    /* DP group dp reads the step's sequences dp, dp + DP, ...; its SP ranks read the same windows */
    t->train = mg_loader_open(c->train_data, c->vocab_size, c->seq_len, c->seed, dp, DP, err, sizeof err);
    if (!t->train) mg_fatal("train_data: %s", err);
    if (c->val_data[0]) {
        t->val = mg_loader_open_eval(c->val_data, c->vocab_size, c->seq_len, 0, 1, err, sizeof err);
        if (!t->val) mg_fatal("val_data: %s (set --val_data \"\" to train without validation)", err);
    }
    int64_t micro_tokens = (int64_t)c->batch_size * c->seq_len;
    t->n_micro = c->batch_tokens > 0 ? (int)(c->batch_tokens / micro_tokens / DP) : 1;
    t->step_tokens = (int64_t)t->n_micro * DP * micro_tokens;
    t->inputs = mg_malloc(sizeof(int32_t) * (size_t)micro_tokens);
    t->targets = mg_malloc(sizeof(int32_t) * (size_t)micro_tokens);
    if (d->configured && d->grid.sp_size > 1) {
        t->in_local = mg_malloc(sizeof(int32_t) * (size_t)(micro_tokens / d->grid.sp_size));
        t->tg_local = mg_malloc(sizeof(int32_t) * (size_t)(micro_tokens / d->grid.sp_size));
    } else {
        t->in_local = t->inputs;
        t->tg_local = t->targets;
    }
}

/* The model, the AdamW moments and the learning-rate schedule (re-warmed for init_from). */
static void create_model(Trainer *t) {
    const MgConfig *c = &t->cfg;
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
}

static void write_config_txt(const MgConfig *c) {
    char path[MG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.txt", c->out_dir);
    /* a new file renamed over config.txt: a symlink planted there is replaced, never written through */
    MgAtomicFile af;
    char err[2 * MG_PATH_MAX + 256];
    FILE *f = mg_fs_atomic_open(&af, path, err, sizeof err);
    if (f) {
        mg_config_print(c, f);
        if (mg_fs_atomic_commit(&af, 0, err, sizeof err)) f = NULL;
    }
    if (!f) fprintf(stderr, "warning: %s\n", err);
}

static void print_header(Trainer *t) {
    const MgConfig *c = &t->cfg;
    const MgParamTable *pt = mg_model_params_table(t->model);
    char b1[32], b2[32];
    if (!strcmp(c->arch, "llama"))
        printf("megalodon train: %s, %d layers, d %d, %d heads, %d key/value heads, f %d (SwiGLU), context %d\n",
               c->arch, c->n_layers, c->model_dim, c->num_heads, c->num_kv_heads > 0 ? c->num_kv_heads : c->num_heads,
               c->ffn_hidden_dim, c->seq_len);
    else
        printf("megalodon train: %s, %d layers, d %d, %d heads, z %d, v %d, f %d%s, N %d, G %d, chunk %d\n", c->arch,
               c->n_layers, c->model_dim, c->num_heads, c->z_dim, c->value_dim, c->ffn_hidden_dim,
               c->swiglu ? " (SwiGLU)" : "", c->cema_ndim, c->norm_num_groups, c->chunk_size);
    char b3[32];
    printf("parameters: %lld (%s in fp32); optimizer state %s", (long long)pt->total,
           mg_format_bytes(4.0 * (double)pt->total, b1, sizeof b1), mg_format_bytes(8.0 * (double)pt->total, b2, sizeof b2));
    if (t->ckpt_snap)
        printf("; checkpoint snapshot %s (host memory: periodic checkpoints are written in the background, ckpt_async)",
               mg_format_bytes(12.0 * (double)pt->total, b3, sizeof b3));
    printf("\n");
    printf("batch: %d x %d tokens per micro-batch, %d micro-batch%s per step = %lld tokens per step\n", c->batch_size,
           c->seq_len, t->n_micro, t->n_micro == 1 ? "" : "es", (long long)t->step_tokens);
    if (t->dist.P > 1)
        printf("ranks: %d = %d data-parallel group%s x sp %d (each rank: %d micro-batch%s of %d x %d tokens per step; "
               "sp_scan %s; sp_attention %s%s; AdamW moments sharded over the %d ranks)\n",
               t->dist.P, t->dist.grid.dp_size, t->dist.grid.dp_size == 1 ? "" : "s", t->dist.grid.sp_size, t->n_micro,
               t->n_micro == 1 ? "" : "es", c->batch_size, mg_dist_local_len(&t->dist, c),
               t->dist.grid.sp_size > 1 && strcmp(c->arch, "llama") ? c->sp_scan : "-",
               t->dist.grid.sp_size > 1 ? c->sp_attention : "-",
               t->dist.grid.sp_size > 1 && !strcmp(c->sp_layout, "zigzag") ? ", sp_layout zigzag" : "", t->dist.P);
    mg_model_print_memory(t->model, c->batch_size, c->seq_len);
    printf("backend: %s, %d threads\n", t->be->name, mg_get_threads());
    int64_t train_tokens = 0;
    for (int i = 0; i < mg_loader_num_sources(t->train); i++) train_tokens += mg_loader_source_tokens(t->train, i);
    printf("data: train %s (%lld tokens)", mg_loader_spec_normalised(t->train), (long long)train_tokens);
    if (t->val) printf(", val %s (%lld windows)", c->val_data, (long long)mg_loader_total_windows(t->val));
    printf("\n");
    if (t->val) mg_eval_batches_effective(t->val, c->batch_size, c->eval_batches, "eval_batches", stdout);
    char desc[256];
    t->peak_flops = mg_peak_flops(c, desc, sizeof desc) * t->dist.P; /* every rank brings its own peak */
    t->flops_per_token = mg_flops_per_token(c, pt);
    printf("MFU: %.3g FLOPs per token (6 x matmul params + causal attention, design.md) / %s%s\n",
           t->flops_per_token, desc, t->dist.P > 1 ? " per rank, x the ranks" : "");
    printf("schedule: %s, peak lr %g, warm-up %lld steps, floor %g x lr, %lld steps%s\n", c->lr_schedule,
           t->sched.peak_lr, (long long)t->sched.warmup_steps, t->sched.min_lr_ratio, (long long)t->sched.max_steps,
           t->init_from[0] ? " (re-warm: continual pre-training)" : "");
    printf("out_dir: %s\n", c->out_dir);
    fflush(stdout);
}

/* Config, output directory, starting point (resume / init_from / fresh weights), data, model, optimizer
 * state, log, header, signal handlers. Exits with a clear message on any problem. */
static void trainer_setup(Trainer *t, int argc, char **argv) {
    memset(t, 0, sizeof *t);
    mg_dist_start(&t->dist, &argc, &argv); /* an mpirun/srun launch: P ranks (docs/parallelism.md) */
    mg_signals_install(); /* first: a signal while loading a checkpoint stops the set-up cleanly */
    /* A file size limit (ulimit -f) reached while writing makes the write fail (EFBIG): a checkpoint save
     * then fails with its message and removes its temp file, in the background writer too, instead of
     * SIGXFSZ ending the process mid-write. */
    signal(SIGXFSZ, SIG_IGN);
    MgConfig *c = &t->cfg;
    char err[8192];
    mg_config_defaults(c);
    mg_config_from_args(c, argc, argv, NULL, NULL);
    if (mg_config_validate(c, err, sizeof err)) mg_fatal("%s", err);
    /* the dtype from the config: no backend instance yet (on a GPU a second one would hold memory) */
    if (mg_memory_check(c, mg_config_compute_dtype(c), MG_MEM_TRAIN, err, sizeof err)) mg_fatal("%s", err);
    if (t->dist.P == 1 && c->sp > 1)
        mg_fatal("sp = %d needs %d or more processes (mpirun -np P, P a multiple of sp); this is one process: "
                 "launch it with mpirun/srun, or use sp = 1",
                 c->sp, c->sp);
    t->be_owned = mg_backend_open(c); /* also sets the thread count */
    t->be = t->be_owned;
    MgDist *d = &t->dist;
    if (d->P > 1) {
        /* the grid, layout and agreement checks come first: nothing is written by a launch that cannot run */
        MgParamTable pt;
        mg_param_table_build(c, &pt);
        mg_dist_configure(d, c, t->be, pt.total);
        mg_param_table_free(&pt);
    }
    if (d->is_root) check_out_dir(c); /* rank 0 writes; the others read what it made */
    if (d->P > 1) mg_tp_barrier(d->world);
    char resume_path[MG_PATH_MAX + 64];
    choose_start(c, resume_path, sizeof resume_path);
    open_data(t);
    create_model(t);
    if (resume_path[0] && !strcmp(c->resume, "auto")) trainer_resume_auto(t, resume_path);
    else if (resume_path[0]) trainer_resume(t, resume_path);
    else if (c->init_from[0]) trainer_init_from(t);
    else mg_model_init_weights(t->model, c->seed);
    if (d->P > 1) { /* every rank agrees whether set-up was interrupted */
        double v = t->interrupted;
        mg_dist_sum(d, &v, 1);
        t->interrupted = v > 0;
    }
    if (t->interrupted) return;
    if (d->P > 1) trainer_shard_moments(t);
    t->last_step = c->stop_at > 0 ? MG_MIN(c->stop_at, c->max_steps) : c->max_steps;
    if (d->is_root) {
        t->log = mg_log_open(c->out_dir, resume_path[0] != 0, t->step);
        write_config_txt(c);
    }
    trainer_ckpt_setup(t);
    print_header(t);
    t->t_start = mg_now();
}

static void trainer_free(Trainer *t) {
    trainer_ckpt_finish(t); /* a checkpoint still being written is published (or its failure reported) first */
    if (t->log) fclose(t->log);
    mg_loader_close(t->train);
    if (t->val) mg_loader_close(t->val);
    t->be->free(t->be, t->m);
    t->be->free(t->be, t->v);
    if (t->in_local != t->inputs) free(t->in_local);
    if (t->tg_local != t->targets) free(t->tg_local);
    free(t->inputs);
    free(t->targets);
    mg_model_free(t->model);
    if (t->dist.gshard) t->be->free(t->be, t->dist.gshard);
    mg_backend_destroy(t->be_owned);
    mg_dist_end(&t->dist);
}

/* ---- the run ------------------------------------------------------------------------------------- */
/* Stop now? One process: a SIGINT/SIGTERM seen; P ranks: one seen by any rank by the end of the last step
 * (the step's reduction carries it), so that every rank stops after the same step. */
static int stop_now(const Trainer *t) { return t->dist.P > 1 ? t->stop_agreed : mg_stop_requested() != 0; }

/* Log the step just done: always to log.jsonl, to the console every log_every steps, on the first and
 * last step and on validation steps. */
static void log_step(Trainer *t, const MgStepResult *r, int has_val, double val_loss) {
    const MgConfig *c = &t->cfg;
    const double step_tokens = (double)t->step_tokens;
    MgLogRecord rec = {.step = t->step, .tokens = t->tokens_seen, .loss = r->loss, .lr = r->lr,
                       .grad_norm = r->grad_norm, .tokens_per_s = step_tokens / r->seconds,
                       .elapsed = mg_now() - t->t_start, .has_val = has_val, .val_loss = val_loss,
                       .val_ppl = exp(val_loss)};
    rec.mfu = t->flops_per_token * rec.tokens_per_s / t->peak_flops;
    if (every(t->step, c->log_every) || t->step == 1 || t->step == t->last_step || has_val)
        mg_log_print(stdout, &rec, c->max_steps);
    if (t->log) mg_log_write(t->log, &rec);
}

int cmd_train(int argc, char **argv) {
    Trainer T, *t = &T;
    trainer_setup(t, argc, argv);
    if (t->interrupted) { /* stopped while loading the checkpoint to start from: nothing trained, nothing saved */
        trainer_free(t);
        return mg_stop_report("training stopped during set-up, before its first step; nothing was written");
    }
    const MgConfig *c = &t->cfg;
    int64_t last_saved = t->step;
    while (t->step < t->last_step) {
        MgStepResult r = trainer_step(t);
        t->steps_run++;
        trainer_ckpt_poll(t); /* a background write that failed ends the run here */
        const int64_t step = t->step;

        int do_eval = t->val && (every(step, c->eval_every) || step == c->max_steps);
        double val_loss = NAN;
        if (do_eval) val_loss = trainer_evaluate(t);
        if (do_eval && stop_now(t)) do_eval = 0; /* an evaluation cut short is not logged */
        log_step(t, &r, do_eval, val_loss);

        if (every(step, c->sample_every) && !stop_now(t) && t->dist.is_root)
            mg_sample_during_training(t->model, c, stdout); /* rank 0 holds every weight */

        if (stop_now(t)) {
            printf("received %s at step %lld: writing a checkpoint and stopping\n", mg_stop_signal_name(),
                   (long long)step);
            trainer_save(t, "signal", 0); /* after the write in flight, if any */
            trainer_free(t);
            return 0;
        }
        if (every(step, c->ckpt_every) && step != t->last_step) {
            trainer_save(t, "periodic", 1); /* in the background with ckpt_async */
            last_saved = step;
        }
    }
    /* the last save, after the write in flight if any: the process ends once it is written */
    if (t->step > last_saved) trainer_save(t, t->step >= c->max_steps ? "final" : "stop_at", 0);
    trainer_ckpt_finish(t); /* a periodic write still in flight (no final save: nothing trained) */
    printf("done: %lld steps, %lld tokens, %.1f s\n", (long long)t->step, (long long)t->tokens_seen,
           mg_now() - t->t_start);
    mg_dist_report(&t->dist, t->steps_run, c->n_layers, stdout);
    trainer_free(t);
    return 0;
}
