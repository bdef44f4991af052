/* The trainer's step log: console line and out_dir/log.jsonl. */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "../common.h"
#include "../config.h"

/* ---- JSON writer --------------------------------------------------------------------------------- */
static void json_reserve(MgJson *j, size_t more) {
    if (j->len + more + 1 <= j->cap) return;
    size_t cap = j->cap ? j->cap : 256;
    while (cap < j->len + more + 1) cap *= 2;
    j->buf = mg_realloc(j->buf, cap);
    j->cap = cap;
}

static void json_put(MgJson *j, const char *s, size_t n) {
    json_reserve(j, n);
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = 0;
}

static MG_PRINTF(2, 3) void json_printf(MgJson *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) mg_fatal("formatting a log value failed");
    json_reserve(j, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(j->buf + j->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    j->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at p (at most `left` bytes), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *p, size_t left) {
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) n = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) n = 3, lo = p[0] == 0xE0 ? 0xA0 : 0x80, hi = p[0] == 0xED ? 0x9F : 0xBF;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) n = 4, lo = p[0] == 0xF0 ? 0x90 : 0x80, hi = p[0] == 0xF4 ? 0x8F : 0xBF;
    else return 0;
    if (left < n || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static void json_string(MgJson *j, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    json_put(j, "\"", 1);
    while (left > 0) {
        unsigned char ch = *p;
        size_t n = ch < 0x80 ? 1 : utf8_len(p, left);
        if (n == 0) { /* not UTF-8: the replacement character */
            json_put(j, "\\ufffd", 6);
            n = 1;
        } else if (n > 1) json_put(j, (const char *)p, n);
        else if (ch == '"') json_put(j, "\\\"", 2);
        else if (ch == '\\') json_put(j, "\\\\", 2);
        else if (ch == '\n') json_put(j, "\\n", 2);
        else if (ch == '\r') json_put(j, "\\r", 2);
        else if (ch == '\t') json_put(j, "\\t", 2);
        else if (ch < 0x20) json_printf(j, "\\u%04x", ch);
        else json_put(j, (const char *)p, 1);
        p += n;
        left -= n;
    }
    json_put(j, "\"", 1);
}

static void json_key(MgJson *j, const char *key) {
    if (j->members++) json_put(j, ", ", 2);
    json_string(j, key);
    json_put(j, ": ", 2);
}

void mg_json_begin(MgJson *j) {
    memset(j, 0, sizeof *j);
    json_put(j, "{", 1);
}

void mg_json_int(MgJson *j, const char *key, int64_t v) {
    json_key(j, key);
    json_printf(j, "%lld", (long long)v);
}

void mg_json_fixed(MgJson *j, const char *key, double v, int decimals) {
    json_key(j, key);
    if (isfinite(v)) json_printf(j, "%.*f", decimals, v);
    else json_put(j, "null", 4);
}

void mg_json_sci(MgJson *j, const char *key, double v, int decimals) {
    json_key(j, key);
    if (isfinite(v)) json_printf(j, "%.*e", decimals, v);
    else json_put(j, "null", 4);
}

void mg_json_str(MgJson *j, const char *key, const char *s) {
    json_key(j, key);
    json_string(j, s);
}

const char *mg_json_end(MgJson *j) {
    json_put(j, "}", 1);
    return j->buf;
}

void mg_json_free(MgJson *j) {
    free(j->buf);
    memset(j, 0, sizeof *j);
}

/* ---- the step log -------------------------------------------------------------------------------- */
void mg_log_print(FILE *out, const MgLogRecord *r, int64_t max_steps) {
    fprintf(out, "step %6lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | MFU %.2f%% | %.1f s",
            (long long)r->step, (long long)max_steps, r->loss, r->lr, r->grad_norm, r->tokens_per_s, 100.0 * r->mfu,
            r->elapsed);
    if (r->has_val) fprintf(out, " | val loss %.4f ppl %.2f", r->val_loss, r->val_ppl);
    fprintf(out, "\n");
    fflush(out);
}

void mg_log_write(FILE *log, const MgLogRecord *r) {
    MgJson j;
    mg_json_begin(&j);
    mg_json_int(&j, "step", r->step);
    mg_json_fixed(&j, "loss", r->loss, 6);
    mg_json_sci(&j, "lr", r->lr, 6);
    mg_json_fixed(&j, "grad_norm", r->grad_norm, 6);
    mg_json_fixed(&j, "tokens_per_s", r->tokens_per_s, 1);
    mg_json_fixed(&j, "mfu", r->mfu, 6);
    mg_json_fixed(&j, "elapsed", r->elapsed, 3);
    mg_json_int(&j, "tokens", r->tokens);
    if (r->has_val) {
        mg_json_fixed(&j, "val_loss", r->val_loss, 6);
        mg_json_fixed(&j, "val_ppl", r->val_ppl, 4);
    }
    fprintf(log, "%s\n", mg_json_end(&j));
    fflush(log);
    mg_json_free(&j);
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
