/* The trainer's checkpoints: what a checkpoint records beyond the weights and moments (step, tokens,
 * data cursor and mixture, schedule, config; docs/checkpoint.md lists these extras), saving, resuming a
 * run from one, continual pre-training from one, and mg_model_from_checkpoint for eval and sample. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint.h"
#include "../common.h"
#include "../memcheck.h"
#include "../run.h"
#include "../signals.h"
#include "../../parallel/shard.h"
#include "trainer.h"

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

static void save_file(Trainer *t, const char *why);
static void save_background(Trainer *t, const char *why, double t0, int moments_gathered, double waited);

/* A distributed run writes the one-process layout: rank 0 gathers the AdamW moment shards (ZeRO-1) and
 * writes the file with its full weights (every rank holds the same weights); the others send their shards
 * and go on. So a checkpoint of P ranks loads on any P and sp. In the background (bg, rank 0 only), the
 * shards are gathered straight into the snapshot, and the writer thread writes it. */
static void save_distributed(Trainer *t, const char *why, int bg, double waited) {
    MgDist *d = &t->dist;
    const MgBackend *be = t->be;
    const int64_t n = mg_model_params_table(t->model)->total;
    const double t0 = mg_now();
    float *full_m = NULL, *full_v = NULL;
    if (d->is_root && bg) {
        full_m = t->ckpt_snap + n;
        full_v = t->ckpt_snap + 2 * n;
    } else if (d->is_root) {
        full_m = be->alloc(be, sizeof(float) * (size_t)n);
        full_v = be->alloc(be, sizeof(float) * (size_t)n);
    }
    /* backend memory is host memory on the CPU; a device backend stages through its own transport */
    mg_gather_shards_to_root(d->world, sizeof(float), t->m, full_m, n);
    mg_gather_shards_to_root(d->world, sizeof(float), t->v, full_v, n);
    if (!d->is_root) return;
    if (bg) {
        save_background(t, why, t0, 1, waited);
        return;
    }
    float *m = t->m, *v = t->v;
    t->m = full_m;
    t->v = full_v;
    save_file(t, why);
    t->m = m;
    t->v = v;
    be->free(be, full_m);
    be->free(be, full_v);
}

void trainer_shard_moments(Trainer *t) {
    MgDist *d = &t->dist;
    const MgBackend *be = t->be;
    const size_t bytes = sizeof(float) * (size_t)MG_MAX(d->shard_len, 1);
    float *m = be->alloc(be, bytes), *v = be->alloc(be, bytes);
    be->copy(be, m, t->m + d->shard_off, sizeof(float) * (size_t)d->shard_len);
    be->copy(be, v, t->v + d->shard_off, sizeof(float) * (size_t)d->shard_len);
    be->free(be, t->m);
    be->free(be, t->v);
    t->m = m;
    t->v = v;
}

static void save_file(Trainer *t, const char *why) {
    if (!mg_ckpt_available()) {
        printf("checkpoint (%s) skipped: this build has no HDF5\n", why);
        return;
    }
    MgCkptMeta meta;
    fill_meta(t, &meta);
    char err[4096], path[MG_PATH_MAX + 64];
    double t0 = mg_now();
    MgModelCkptIO ctx = {t->be, mg_model_masters(t->model), t->m, t->v};
    MgCkptTensorIO io = mg_model_ckpt_io(&ctx);
    int rc = mg_ckpt_dir_save_io(t->cfg.out_dir, mg_model_params_table(t->model), &io, 1, &meta, t->cfg.ckpt_keep,
                                 path, sizeof path, err, sizeof err);
    mg_ckpt_meta_free(&meta);
    if (rc) mg_fatal("saving the %s checkpoint failed: %s (the previous checkpoint is intact)", why, err);
    MgCkptStats s = mg_ckpt_last_stats();
    printf("saved %s checkpoint %s (%.1f MB in %.2f s, %.0f MB/s)\n", why, path, s.bytes / 1e6, mg_now() - t0,
           s.seconds > 0 ? s.bytes / 1e6 / s.seconds : 0.0);
    fflush(stdout);
}

/* ---- background saves ------------------------------------------------------------------------------ */

/* The writer thread, when the file is published (or the write failed: the main thread reports that when it
 * collects the write, after the step in progress). It reads only the ckpt_why / ckpt_wait_s / ckpt_snap_s
 * of its own save: the main thread sets them just before it starts a writer, never while one is pending. */
static void on_written(const MgCkptAsyncResult *r, void *ctx) {
    const Trainer *t = ctx;
    if (r->rc) return;
    char wait[64] = "";
    if (t->ckpt_wait_s >= 0.005) snprintf(wait, sizeof wait, "waited %.2f s for the previous write, ", t->ckpt_wait_s);
    printf("saved %s checkpoint %s (%.1f MB: %ssnapshot %.2f s, write %.2f s in the background, %.0f MB/s)\n",
           t->ckpt_why, r->path, r->stats.bytes / 1e6, wait, t->ckpt_snap_s, r->seconds,
           r->seconds > 0 ? r->stats.bytes / 1e6 / r->seconds : 0.0);
    fflush(stdout);
}

/* Collect the background write if it has ended (wait = 1: wait for it). A failed write ends the run, with
 * the exit status of a failed synchronous save. */
static void collect_write(Trainer *t, int wait) {
    MgCkptAsyncResult r;
    int got = wait ? mg_ckpt_async_wait(t->ckpt_writer, &r) : mg_ckpt_async_poll(t->ckpt_writer, &r);
    if (got && r.rc)
        mg_fatal("saving the %s checkpoint of step %lld failed in the background: %s; the run stops here, after "
                 "step %lld (the previous checkpoint is intact: --resume auto continues from it)",
                 t->ckpt_why, (long long)r.step, r.err, (long long)t->step);
}

void trainer_ckpt_poll(Trainer *t) {
    if (t->ckpt_writer) collect_write(t, 0);
}

/* dst[0..n) = src[0..n) from backend memory. The CPU backend's memory is host memory and its to_host a
 * plain copy: in parallel over 1 MiB blocks (the copy is what blocks the step loop). */
static void snapshot_copy(const MgBackend *be, float *dst, const float *src, int64_t n) {
    if (strncmp(be->name, "cpu", 3) != 0) {
        be->to_host(be, dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const int64_t B = (int64_t)1 << 18;
    const int64_t nb = (n + B - 1) / B;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t lo = b * B, len = MG_MIN(B, n - lo);
        be->to_host(be, dst + lo, src + lo, sizeof(float) * (size_t)len);
    }
}

/* Rank 0 with a writer: the masters (and, unless the caller gathered them there, the moments) into the
 * snapshot, the meta, and the writer started; t0 is when the step loop stopped for this save (after waiting
 * `waited` seconds for the previous write). */
static void save_background(Trainer *t, const char *why, double t0, int moments_gathered, double waited) {
    const MgParamTable *pt = mg_model_params_table(t->model);
    const int64_t n = pt->total;
    float *snap = t->ckpt_snap;
    MgCkptMeta meta;
    fill_meta(t, &meta);
    snapshot_copy(t->be, snap, mg_model_masters(t->model), n);
    if (!moments_gathered) {
        snapshot_copy(t->be, snap + n, t->m, n);
        snapshot_copy(t->be, snap + 2 * n, t->v, n);
    }
    snprintf(t->ckpt_why, sizeof t->ckpt_why, "%s", why);
    t->ckpt_snap_s = mg_now() - t0;
    t->ckpt_wait_s = waited;
    char err[4096];
    if (mg_ckpt_async_start(t->ckpt_writer, t->cfg.out_dir, pt, snap, snap + n, snap + 2 * n, &meta, t->cfg.ckpt_keep,
                            err, sizeof err) == 0)
        return;
    /* no thread: the snapshot is written here */
    fprintf(stderr, "warning: %s; writing the %s checkpoint in the step loop\n", err, why);
    char path[MG_PATH_MAX + 64];
    double t1 = mg_now();
    int rc = mg_ckpt_dir_save(t->cfg.out_dir, pt, snap, snap + n, snap + 2 * n, &meta, t->cfg.ckpt_keep, path,
                              sizeof path, err, sizeof err);
    mg_ckpt_meta_free(&meta);
    if (rc) mg_fatal("saving the %s checkpoint failed: %s (the previous checkpoint is intact)", why, err);
    MgCkptStats s = mg_ckpt_last_stats();
    printf("saved %s checkpoint %s (%.1f MB in %.2f s, %.0f MB/s)\n", why, path, s.bytes / 1e6,
           mg_now() - t1 + t->ckpt_snap_s, s.seconds > 0 ? s.bytes / 1e6 / s.seconds : 0.0);
    fflush(stdout);
}

void trainer_save(Trainer *t, const char *why, int background) {
    double waited = 0;
    if (t->ckpt_writer && mg_ckpt_async_pending(t->ckpt_writer)) { /* never two writers */
        const double w0 = mg_now();
        collect_write(t, 1);
        waited = mg_now() - w0;
    }
    const int bg = background && t->ckpt_writer; /* rank 0 only: the other ranks just send their shards */
    if (t->dist.P > 1) save_distributed(t, why, bg, waited);
    else if (bg) save_background(t, why, mg_now(), 0, waited);
    else save_file(t, why);
}

/* An exit with a write in flight (a fatal error in the step loop: exit() runs this) waits for it, so the
 * checkpoint being written is published rather than left as a temp file. */
static Trainer *g_exit_trainer = NULL;
static void wait_at_exit(void) {
    Trainer *t = g_exit_trainer;
    if (!t || !mg_ckpt_async_pending(t->ckpt_writer)) return;
    fprintf(stderr, "note: waiting for the %s checkpoint being written in the background before exiting\n",
            t->ckpt_why);
    MgCkptAsyncResult r;
    if (mg_ckpt_async_wait(t->ckpt_writer, &r) && r.rc)
        fprintf(stderr, "error: saving the %s checkpoint of step %lld failed in the background: %s (the previous "
                        "checkpoint is intact)\n",
                t->ckpt_why, (long long)r.step, r.err);
}

void trainer_ckpt_setup(Trainer *t) {
    const MgConfig *c = &t->cfg;
    if (!t->dist.is_root || !mg_train_ckpt_snapshot(c)) return;
    const int64_t next = (t->step / c->ckpt_every + 1) * c->ckpt_every; /* the first periodic save ahead */
    if (next >= t->last_step) return;
    const int64_t n = mg_model_params_table(t->model)->total;
    const size_t bytes = sizeof(float) * 3 * (size_t)n;
    char b[32];
    float *snap = malloc(bytes);
    if (!snap) {
        printf("note: no memory for the checkpoint snapshot (%s, ckpt_async): every checkpoint is written in the "
               "step loop, which waits for it\n",
               mg_format_bytes((double)bytes, b, sizeof b));
        fflush(stdout);
        return;
    }
    /* touch every page now: the first save's copy then does not pay the page faults in the step loop */
    const int64_t B = (int64_t)1 << 18, nb = (3 * n + B - 1) / B;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nb; i++) memset(snap + i * B, 0, sizeof(float) * (size_t)MG_MIN(B, 3 * n - i * B));
    t->ckpt_snap = snap;
    t->ckpt_writer = mg_ckpt_async_create(on_written, t, 1);
    static int registered = 0;
    if (!registered && atexit(wait_at_exit) == 0) registered = 1;
    g_exit_trainer = t;
}

void trainer_ckpt_finish(Trainer *t) {
    if (g_exit_trainer == t) g_exit_trainer = NULL;
    if (t->ckpt_writer) collect_write(t, 1);
    mg_ckpt_async_free(t->ckpt_writer);
    t->ckpt_writer = NULL;
    free(t->ckpt_snap);
    t->ckpt_snap = NULL;
}

/* Load weights (and moments if with_optimizer) from path into the trainer's model: into the fp32 masters
 * (staged through the host), then the compute-dtype parameters follow. Returns 0, or -1 with the reason in
 * err; t->interrupted is set when a stop request ended the load (not damage). A failed load may have
 * overwritten some tensors; a successful one overwrites every tensor of the groups it loads. */
static int try_load(Trainer *t, const char *path, int with_optimizer, MgCkptMeta *meta, char *err, size_t errlen) {
    MgModelCkptIO ctx = {t->be, mg_model_masters(t->model), t->m, t->v};
    MgCkptTensorIO io = mg_model_ckpt_io(&ctx);
    if (mg_ckpt_load_io(path, mg_model_params_table(t->model), &io, with_optimizer, meta, err, errlen)) {
        if (mg_stop_requested()) t->interrupted = 1;
        return -1;
    }
    mg_model_masters_changed(t->model);
    return 0;
}

/* try_load, fatal on any failure but an interruption (-1, t->interrupted set). */
static int load_weights(Trainer *t, const char *path, int with_optimizer, MgCkptMeta *meta) {
    char err[4096];
    if (try_load(t, path, with_optimizer, meta, err, sizeof err) == 0) return 0;
    if (!t->interrupted) mg_fatal("%s", err);
    return -1;
}

/* The resumed run's counters and data position from the loaded checkpoint's meta (freed here). */
static void resume_meta(Trainer *t, const char *resume_path, MgCkptMeta meta) {
    const MgConfig *c = &t->cfg;
    char err[8192];
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
}

void trainer_resume(Trainer *t, const char *resume_path) {
    MgCkptMeta meta;
    /* a damaged file is refused: no fallback from an explicit path; -1: interrupted (t->interrupted) */
    if (load_weights(t, resume_path, 1, &meta)) return;
    resume_meta(t, resume_path, meta);
}

void trainer_resume_auto(Trainer *t, const char *first) {
    char **list = NULL;
    int n = mg_ckpt_dir_list(t->cfg.out_dir, &list);
    if (n < 0) n = 0;
    /* first (what `latest` names, or the newest with valid root attributes), then the others, newest first */
    int tried = 0, loaded = 0;
    char err[4096];
    for (int i = -1; i < n && !loaded && !t->interrupted; i++) {
        const char *path = i < 0 ? first : list[i];
        if (i >= 0 && !strcmp(path, first)) continue;
        tried++;
        MgCkptMeta meta;
        if (try_load(t, path, 1, &meta, err, sizeof err)) {
            if (!t->interrupted) fprintf(stderr, "warning: resume auto: skipping damaged checkpoint %s: %s\n", path, err);
            continue;
        }
        if (tried > 1)
            fprintf(stderr, "warning: resume auto: using %s, the newest checkpoint that passed verification (%d newer "
                            "skipped, see above)\n",
                    path, tried - 1);
        resume_meta(t, path, meta); /* before the list (path may point into it) is freed */
        loaded = 1;
    }
    for (int k = 0; k < n; k++) free(list[k]);
    free(list);
    if (loaded || t->interrupted) return;
    mg_fatal("resume auto: none of the %d checkpoint%s in '%s' passed verification (see the warnings above); nothing "
             "was written: move the damaged files out of out_dir to start a new run there",
             tried, tried == 1 ? "" : "s", t->cfg.out_dir);
}

void trainer_init_from(Trainer *t) {
    const MgConfig *c = &t->cfg;
    MgCkptMeta meta;
    if (load_weights(t, c->init_from, c->init_optimizer, &meta)) return;
    printf("initialised from %s (step %lld of its run)%s; new schedule: re-warm over %lld steps to lr %g\n",
           c->init_from, (long long)meta.step, c->init_optimizer ? " with its AdamW moments" : "",
           (long long)t->sched.warmup_steps, c->lr);
    mg_ckpt_meta_free(&meta);
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
    if (mg_memory_check(&cfg, mg_config_compute_dtype(&cfg), strcmp(cmd, "sample") ? MG_MEM_EVAL : MG_MEM_SAMPLE, err,
                        sizeof err))
        mg_fatal("%s", err);
    mg_set_threads(cfg.threads);
    MgModel *m = mg_model_create(&cfg, mg_backend_for(&cfg));
    MgModelCkptIO ctx = {mg_model_backend(m), mg_model_masters(m), NULL, NULL};
    MgCkptTensorIO io = mg_model_ckpt_io(&ctx);
    if (mg_ckpt_load_io(path, mg_model_params_table(m), &io, 0, NULL, err, sizeof err)) {
        if (!mg_stop_requested()) mg_fatal("%s", err);
        mg_model_free(m); /* interrupted: the caller reports it */
        return NULL;
    }
    mg_model_masters_changed(m);
    *cfg_out = cfg;
    return m;
}
