/* The trainer's step log: console line and out_dir/log.jsonl. */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <errno.h>
#include <string.h>

#include "../common.h"
#include "../config.h"

void mg_log_print(FILE *out, const MgLogRecord *r, int64_t max_steps) {
    fprintf(out, "step %6lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | MFU %.2f%% | %.1f s",
            (long long)r->step, (long long)max_steps, r->loss, r->lr, r->grad_norm, r->tokens_per_s, 100.0 * r->mfu,
            r->elapsed);
    if (r->has_val) fprintf(out, " | val loss %.4f ppl %.2f", r->val_loss, r->val_ppl);
    fprintf(out, "\n");
    fflush(out);
}

void mg_log_write(FILE *log, const MgLogRecord *r) {
    fprintf(log,
            "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"mfu\": "
            "%.6f, \"elapsed\": %.3f, \"tokens\": %lld",
            (long long)r->step, r->loss, r->lr, r->grad_norm, r->tokens_per_s, r->mfu, r->elapsed, (long long)r->tokens);
    if (r->has_val) fprintf(log, ", \"val_loss\": %.6f, \"val_ppl\": %.4f", r->val_loss, r->val_ppl);
    fprintf(log, "}\n");
    fflush(log);
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

FILE *mg_log_open(const char *out_dir, int resume, int64_t resume_step) {
    char path[MG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/log.jsonl", out_dir);
    if (resume) trim_log(path, resume_step);
    FILE *f = fopen(path, resume ? "a" : "w");
    if (!f) mg_fatal("cannot open the log file '%s': %s", path, strerror(errno));
    return f;
}
