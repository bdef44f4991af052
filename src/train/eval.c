/* Validation loss: used by the trainer on evaluation steps and by `megalodon eval`. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../cli.h"
#include "../common.h"
#include "../run.h"
#include "../signals.h"
#include "trainer.h"

static int eval_batches_max(const MgLoader *val, int B) {
    int64_t w = mg_loader_total_windows(val);
    return (int)MG_MIN(MG_MAX(1, w / MG_MAX(B, 1)), INT_MAX);
}

int mg_eval_batches_effective(const MgLoader *val, int B, int requested, const char *what, FILE *f) {
    const int max = eval_batches_max(val, B);
    if (requested <= 0) return max;
    if (requested > max) {
        if (f)
            fprintf(f,
                    "note: %s %d is more than one pass over the validation data (%lld windows = %d micro-batches of "
                    "%d); using %d\n",
                    what, requested, (long long)mg_loader_total_windows(val), max, B, max);
        return max;
    }
    return requested;
}

double mg_evaluate(MgModel *model, MgLoader *val, int B, int L, int batches, int64_t *tokens_out) {
    mg_loader_rewind(val);
    /* never more than one pass: 0 means one pass, and a larger request would only repeat windows */
    batches = mg_eval_batches_effective(val, B, batches, "eval_batches", NULL);
    int32_t *in = mg_malloc(sizeof(int32_t) * (size_t)B * L), *tg = mg_malloc(sizeof(int32_t) * (size_t)B * L);
    double sum = 0.0;
    int64_t count = 0;
    int stopped = 0;
    for (int i = 0; i < batches && !(stopped = mg_stop_requested() != 0); i++) {
        mg_loader_next(val, B, in, tg);
        int64_t n = 0;
        sum += mg_model_forward_loss(model, in, tg, B, L, NULL, NULL, NULL, &n);
        count += n;
    }
    free(in);
    free(tg);
    if (tokens_out) *tokens_out = count;
    return stopped ? NAN : sum / (double)MG_MAX(count, 1);
}

/* `megalodon eval --ckpt F --data PATH [--batches N] [--key value ...]` prints "val_loss X". */
int cmd_eval(int argc, char **argv) {
    static const char *const extra[] = {"ckpt", "data", "batches", NULL};
    const char *vals[3] = {0};
    MgConfig cfg;
    mg_signals_install();
    MgModel *m = mg_model_from_checkpoint("eval", argc, argv, extra, vals, &cfg);
    if (!m) return mg_stop_report("eval stopped while loading the checkpoint");
    const char *data = vals[1] ? vals[1] : cfg.val_data;
    int batches = 0;
    if (vals[2]) {
        char *end;
        errno = 0;
        long long v = strtoll(vals[2], &end, 10);
        if (!vals[2][0] || *end || errno || v < 0 || v > INT_MAX)
            mg_fatal("--batches '%s' must be a whole number in [0, %d] (0 = one full pass)", vals[2], INT_MAX);
        batches = (int)v;
    }
    char err[4096];
    MgLoader *l = mg_loader_open_eval(data, cfg.vocab_size, cfg.seq_len, 0, 1, err, sizeof err);
    if (!l) mg_fatal("--data: %s", err);
    batches = mg_eval_batches_effective(l, cfg.batch_size, batches, "--batches", stdout);
    double t0 = mg_now();
    int64_t tokens = 0;
    printf("eval: %s, %d x %d tokens per batch\n", data, cfg.batch_size, cfg.seq_len);
    fflush(stdout);
    double loss = mg_evaluate(m, l, cfg.batch_size, cfg.seq_len, batches, &tokens);
    if (mg_stop_requested()) {
        mg_loader_close(l);
        mg_model_free(m);
        return mg_stop_report("eval stopped before the end; no val_loss printed");
    }
    printf("val_loss %.6f\n", loss);
    printf("val_ppl %.4f\n", exp(loss));
    printf("tokens %lld (%d x %d per batch), %.1f s\n", (long long)tokens, cfg.batch_size, cfg.seq_len, mg_now() - t0);
    mg_loader_close(l);
    mg_model_free(m);
    return 0;
}

/* The trainer's validation loss. One process: mg_evaluate. P ranks: the same micro-batches as one process
 * (the loader is read in full on every rank), micro-batch k evaluated by data-parallel group k % DP, each
 * sequence cut into the SP slices; sums over every rank. A stop request does not cut it short (every rank
 * must run the same passes); the step loop stops right after. */
double trainer_evaluate(Trainer *t) {
    const MgConfig *c = &t->cfg;
    MgDist *d = &t->dist;
    if (d->P == 1) return mg_evaluate(t->model, t->val, c->batch_size, c->seq_len, c->eval_batches, NULL);
    const int B = c->batch_size, L = c->seq_len, Ls = mg_dist_local_len(d, c);
    const int DP = d->grid.dp_size;
    mg_loader_rewind(t->val);
    const int batches = mg_eval_batches_effective(t->val, B, c->eval_batches, "eval_batches", NULL);
    int32_t *in = mg_malloc(sizeof(int32_t) * (size_t)B * L), *tg = mg_malloc(sizeof(int32_t) * (size_t)B * L);
    int32_t *il = mg_malloc(sizeof(int32_t) * (size_t)B * Ls), *tl = mg_malloc(sizeof(int32_t) * (size_t)B * Ls);
    double red[2] = {0.0, 0.0};
    for (int i = 0; i < batches; i++) {
        mg_loader_next(t->val, B, in, tg);
        if (i % DP != d->grid.dp) continue;
        mg_dist_slice(d, c, B, in, il);
        mg_dist_slice(d, c, B, tg, tl);
        MgForwardOpts o = mg_dist_opts(d, c, 0, 0, 0, B);
        MgPassArgs a = {.tokens = il, .targets = tl, .B = B, .L = Ls, .opts = o, .hooks = mg_dist_hooks(d)};
        int64_t n = 0;
        red[0] += mg_model_eval(t->model, &a, &n);
        red[1] += (double)n;
        mg_dist_pass_done(d);
    }
    mg_dist_sum(d, red, 2);
    free(in);
    free(tg);
    free(il);
    free(tl);
    return red[0] / (red[1] > 0 ? red[1] : 1.0);
}
