/* The trainer's step log: console line and out_dir/log.jsonl. */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "../common.h"
#include "../config.h"
#include "../fsutil.h"

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

/* ---- reading a line's step back ----------------------------------------------------------------- */
/* A small strict JSON scanner over [p, e): just enough to find the top-level "step" member of a line. */
typedef struct {
    const char *p, *e;
} Scan;

static void scan_ws(Scan *s) {
    while (s->p < s->e && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n')) s->p++;
}

static int scan_eat(Scan *s, char ch) {
    if (s->p < s->e && *s->p == ch) {
        s->p++;
        return 1;
    }
    return 0;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        unsigned d = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0')
                   : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                   : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                            : 16u;
        if (d == 16) return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* A string at s->p. Its ASCII decoding goes to out (NUL-terminated) if out is not NULL; characters
 * outside ASCII (and NUL) decode as 0x7f, and a string longer than outlen - 1 is cut (returns 1).
 * Returns -1 if it is not a well-formed JSON string, else 0. */
static int scan_string(Scan *s, char *out, size_t outlen) {
    if (!scan_eat(s, '"')) return -1;
    size_t n = 0;
    int cut = 0;
    while (s->p < s->e) {
        unsigned char ch = (unsigned char)*s->p++;
        unsigned cp = ch;
        if (ch == '"') {
            if (out) out[n] = 0;
            return cut;
        }
        if (ch < 0x20) return -1;
        if (ch == '\\') {
            if (s->p >= s->e) return -1;
            char esc = *s->p++;
            switch (esc) {
            case '"': case '\\': case '/': cp = (unsigned char)esc; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (s->e - s->p < 4 || hex4(s->p, &cp)) return -1;
                s->p += 4;
                break;
            default: return -1;
            }
        }
        if (out) {
            if (n + 1 < outlen) out[n++] = cp > 0 && cp < 0x80 ? (char)cp : 0x7f;
            else cut = 1;
        }
    }
    return -1;
}

/* A JSON number at s->p; returns -1 if there is none. */
static int scan_number(Scan *s) {
    const char *p = s->p, *e = s->e;
#define MG_DIGIT(q) ((q) < e && *(q) >= '0' && *(q) <= '9')
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') p++;
    else if (MG_DIGIT(p)) while (MG_DIGIT(p)) p++;
    else return -1;
    if (p < e && *p == '.') {
        p++;
        if (!MG_DIGIT(p)) return -1;
        while (MG_DIGIT(p)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!MG_DIGIT(p)) return -1;
        while (MG_DIGIT(p)) p++;
    }
#undef MG_DIGIT
    s->p = p;
    return 0;
}

static int scan_literal(Scan *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->e - s->p) < n || memcmp(s->p, word, n)) return -1;
    s->p += n;
    return 0;
}

/* Skip one JSON value (objects and arrays nested at most 64 deep). */
static int scan_value(Scan *s, int depth) {
    scan_ws(s);
    if (s->p >= s->e || depth > 64) return -1;
    char ch = *s->p;
    if (ch == '"') return scan_string(s, NULL, 0) < 0 ? -1 : 0;
    if (ch == 't') return scan_literal(s, "true");
    if (ch == 'f') return scan_literal(s, "false");
    if (ch == 'n') return scan_literal(s, "null");
    if (ch == '{' || ch == '[') {
        const char close = ch == '{' ? '}' : ']';
        s->p++;
        scan_ws(s);
        if (scan_eat(s, close)) return 0;
        for (;;) {
            if (ch == '{') {
                scan_ws(s);
                if (scan_string(s, NULL, 0) < 0) return -1;
                scan_ws(s);
                if (!scan_eat(s, ':')) return -1;
            }
            if (scan_value(s, depth + 1)) return -1;
            scan_ws(s);
            if (scan_eat(s, close)) return 0;
            if (!scan_eat(s, ',')) return -1;
        }
    }
    return scan_number(s);
}

int mg_log_parse_step(const char *line, size_t len, int64_t *step) {
    Scan s = {line, line + len};
    int found = 0;
    int64_t value = 0;
    scan_ws(&s);
    if (!scan_eat(&s, '{')) return -1;
    scan_ws(&s);
    if (scan_eat(&s, '}')) return -1;
    for (;;) {
        char key[8];
        scan_ws(&s);
        int kr = scan_string(&s, key, sizeof key);
        if (kr < 0) break;
        scan_ws(&s);
        if (!scan_eat(&s, ':')) break;
        scan_ws(&s);
        const char *v0 = s.p;
        if (kr == 0 && !strcmp(key, "step") && scan_number(&s) == 0) {
            /* an integer, possibly written as 12.0 or 1.2e1; anything else is not a step */
            char num[64];
            size_t n = (size_t)(s.p - v0);
            if (n < sizeof num) {
                memcpy(num, v0, n);
                num[n] = 0;
                double v = strtod(num, NULL);
                if (v == floor(v) && fabs(v) <= 9007199254740992.0) { /* 2^53: exact in a double */
                    value = (int64_t)v;
                    found = 1; /* a repeated key: the last one counts, as in most JSON readers */
                }
            }
        } else if (scan_value(&s, 0)) {
            break;
        }
        scan_ws(&s);
        if (!scan_eat(&s, ',')) break; /* '}' ends the object; anything else is damage (a step before it counts) */
    }
    if (found) *step = value;
    return found ? 0 : -1;
}

/* ---- trimming the log on resume ------------------------------------------------------------------ */
int mg_log_trim(const char *path, int64_t last_step, MgLogTrim *st, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    /* read only a regular file (never through a symlink); write a new file under a unique name, created
     * exclusively, that replaces the log by rename (fsutil.h) */
    int ifd = mg_fs_open_regular(path, err, errlen);
    if (ifd < 0) return errno == ENOENT ? 0 : -1;
    FILE *in = fdopen(ifd, "r");
    if (!in) {
        close(ifd);
        return mg_errf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
    }
    MgAtomicFile af;
    FILE *out = mg_fs_atomic_open(&af, path, err, errlen);
    if (!out) {
        fclose(in);
        return -1;
    }
    const char *tmp = af.tmp;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int changed = 0;
    while ((n = getline(&line, &cap, in)) > 0) {
        int64_t step;
        int parsed = mg_log_parse_step(line, (size_t)n, &step) == 0;
        if (parsed && step > last_step) {
            st->dropped++;
            changed = 1;
            continue;
        }
        st->kept++;
        if (!parsed) st->unparsed++;
        fwrite(line, 1, (size_t)n, out);
        if (line[n - 1] != '\n') { /* a last line without its newline: records appended later start anew */
            fputc('\n', out);
            changed = 1;
        }
    }
    free(line);
    int rc = 0;
    if (ferror(in)) rc = mg_errf(err, errlen, "reading '%s' failed", path);
    fclose(in);
    if (fflush(out) || ferror(out)) {
        if (!rc) rc = mg_errf(err, errlen, "writing '%s' failed: %s", tmp, strerror(errno));
    }
    if (rc || !changed) mg_fs_atomic_abort(&af);
    else rc = mg_fs_atomic_commit(&af, 1, err, errlen);
    return rc;
}

FILE *mg_log_open(const char *out_dir, int resume, int64_t resume_step) {
    char path[MG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/log.jsonl", out_dir);
    if (resume) {
        MgLogTrim st;
        char err[2 * MG_PATH_MAX + 128];
        if (mg_log_trim(path, resume_step, &st, err, sizeof err)) {
            fprintf(stderr, "warning: %s; log.jsonl keeps its lines of steps after %lld, which run again\n", err,
                    (long long)resume_step);
        } else {
            if (st.dropped)
                printf("log.jsonl: dropped %lld lines of steps after %lld (they run again)\n", (long long)st.dropped,
                       (long long)resume_step);
            if (st.unparsed) printf("log.jsonl: kept %lld lines without a readable step\n", (long long)st.unparsed);
        }
    }
    /* a fresh run replaces whatever is there (a symlink included) by a new file; a resumed one appends
     * only to a regular file (fsutil.h) */
    char err[2 * MG_PATH_MAX + 256];
    FILE *f = resume ? mg_fs_open_append(path, err, sizeof err) : mg_fs_fopen_replace(path, err, sizeof err);
    if (!f) mg_fatal("cannot open the log file: %s", err);
    return f;
}
