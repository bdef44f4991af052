/* The trainer's private interface (src/train/), shared by its files:
 *   trainer.c  cmd_train: set-up, the run loop, teardown
 *   step.c     one optimizer step
 *   log.c      the console step line and out_dir/log.jsonl (log.h)
 *   eval.c     the validation loss; `megalodon eval`
 *   ckpt.c     the trainer's checkpoints (save, resume, init_from); mg_model_from_checkpoint
 * Everything that decides the next step (weights, moments, step, data cursor; dropout masks derive from
 * (seed, step)) is in the checkpoint, so a resumed run continues bit-identically. */
#ifndef MG_TRAIN_TRAINER_H
#define MG_TRAIN_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "../checkpoint.h"
#include "../config.h"
#include "../data.h"
#include "../model.h"
#include "../schedule.h"
#include "dist.h"

typedef struct {
    MgConfig cfg;
    const MgBackend *be;
    MgBackend *be_owned;     /* the instance this run created (be == be_owned) */
    MgModel *model;
    float *m, *v;            /* AdamW moments (backend memory, fp32) */
    MgSchedule sched;
    int64_t step, tokens_seen; /* optimizer steps done, tokens trained on */
    int64_t last_step;       /* the run stops after this step: stop_at if set, else max_steps */
    MgLoader *train, *val;   /* val is NULL without val_data */
    int n_micro;             /* micro-batches per optimizer step on this rank (data-parallel: of every DP group) */
    int64_t step_tokens;     /* tokens per optimizer step, all ranks together */
    int32_t *inputs, *targets; /* one micro-batch, batch_size x seq_len */
    int32_t *in_local, *tg_local; /* sequence parallel: this rank's columns of them (else the same buffers) */
    MgDist dist;             /* the process grid (P = 1: a plain one-process run) */
    int64_t steps_run;       /* steps run by this process (since start or resume) */
    int stop_agreed;         /* P > 1: a stop request seen by any rank at the end of the last step */
    FILE *log;               /* out_dir/log.jsonl */
    double flops_per_token, peak_flops;
    double t_start;          /* mg_now() when the step loop started */
    char init_from[MG_PATH_MAX];
    int interrupted;         /* set-up stopped on SIGINT/SIGTERM (while loading a checkpoint): nothing to save */
    /* checkpoints written in the background (ckpt.c; docs/checkpoint.md, "Background saves") */
    MgCkptAsync *ckpt_writer; /* rank 0 with a snapshot: periodic saves go to it; NULL: every save is synchronous */
    float *ckpt_snap;        /* the host snapshot: fp32 masters, m, v (3 x parameters), owned */
    /* the write in flight (set just before its writer starts; the writer prints them) */
    char ckpt_why[16];       /* its occasion ("periodic") */
    double ckpt_wait_s;      /* seconds the step loop waited for the write before it */
    double ckpt_snap_s;      /* seconds the step loop was blocked for its snapshot (and the gather) */
} Trainer;

/* What one optimizer step measured. */
typedef struct {
    double loss;      /* mean loss over every target of the step's batch */
    double grad_norm; /* global L2 norm of the gradient before clipping */
    double lr;
    double seconds;   /* wall time of the step */
} MgStepResult;

/* step.c: run optimizer step t->step + 1 and advance t->step and t->tokens_seen. Exits with an error if
 * the loss is not finite. */
MgStepResult trainer_step(Trainer *t);

/* eval.c: mean loss over `batches` micro-batches (B x L) of the eval loader from its start (0 = one full
 * pass); the number of targets counted goes to tokens_out if not NULL. On a stop request (signals.h) it
 * stops between batches and returns NAN. */
double mg_evaluate(MgModel *model, MgLoader *val, int B, int L, int batches, int64_t *tokens_out);
/* The batches a pass will run for `requested` (0 = one full pass): never more than one validation pass,
 * max(1, windows / B) micro-batches (more would only revisit the same windows); prints a note to f when
 * it caps. */
int mg_eval_batches_effective(const MgLoader *val, int B, int requested, const char *what, FILE *f);

/* ckpt.c */
/* Set up background saves (after the start step and last_step are known): on rank 0, with ckpt_async and a
 * periodic checkpoint ahead, the host snapshot (12 bytes per parameter) and the writer; without the memory
 * for the snapshot, a note, and every save stays synchronous. */
void trainer_ckpt_setup(Trainer *t);
/* Write out_dir/ckpt_<step>.h5 (or say that this build cannot); `why` names the occasion in the message.
 * A write still in flight is waited for first (never two writers). background = 1 (periodic saves): with a
 * writer, the step loop is blocked only while the state is copied into the snapshot, and the writer thread
 * writes and publishes the file, printing "saved ..." then; otherwise (and for the saves the process ends
 * after) the file is written here. Exits with an error if saving fails, or if the write it waited for had
 * failed (the previous checkpoint is intact). */
void trainer_save(Trainer *t, const char *why, int background);
/* After each step: collect a background write that has ended; exits with an error if it failed. */
void trainer_ckpt_poll(Trainer *t);
/* Before the process ends: wait for the write in flight (exits with an error if it failed) and free the
 * snapshot and the writer. */
void trainer_ckpt_finish(Trainer *t);
/* Continue the run of checkpoint `path`: weights, AdamW moments, step, tokens seen, data cursor. A stop
 * request while loading sets t->interrupted and returns (trainer_init_from too). */
void trainer_resume(Trainer *t, const char *path);
/* resume auto: `first` (mg_ckpt_dir_latest), else the newest other ckpt_*.h5 of out_dir that loads with
 * full verification, each skipped one named on stderr; fatal if none does. */
void trainer_resume_auto(Trainer *t, const char *first);
/* Distributed runs (P > 1): keep only this rank's ZeRO-1 shard of the AdamW moments (after loading). */
void trainer_shard_moments(Trainer *t);
/* The validation loss of the run (eval_batches micro-batches), over every rank of a distributed run. */
double trainer_evaluate(Trainer *t);
/* Continual pre-training: the weights (and, with init_optimizer, the moments) of cfg.init_from. */
void trainer_init_from(Trainer *t);

#endif
