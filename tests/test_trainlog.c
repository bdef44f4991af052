/* The trainer's log (src/train/log.c): the JSON writer (non-finite numbers as null, escaped strings,
 * output that a strict JSON reader accepts). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/train/log.h"
#include "test_util.h"

#define PY "/usr/bin/python3"

static char g_dir[] = "/tmp/mg_trainlog.XXXXXX";

static char *read_file(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[len] = 0;
    if (len_out) *len_out = len;
    return buf;
}

/* s on one line for a check's message: newlines shown as " / ", at most 600 characters. */
static const char *flat(const char *s) {
    static char buf[700];
    size_t n = 0;
    if (!s) return "(none)";
    for (; *s && n < 600; s++) {
        if (*s == '\n') n += (size_t)snprintf(buf + n, sizeof buf - n, " / ");
        else buf[n++] = *s;
    }
    buf[n] = 0;
    return buf;
}

/* Run python3's json module, strictly (NaN/Infinity refused), over every line of path; returns its
 * output (each object re-written canonically: sorted keys, ASCII escapes, no spaces), or NULL if
 * python3 failed. */
static char *python_canonical(const char *path) {
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             PY " -c 'import json, sys\n"
                "def bad(c): raise ValueError(\"not JSON: \" + c)\n"
                "for l in open(sys.argv[1], encoding=\"utf-8\"):\n"
                "    print(json.dumps(json.loads(l, parse_constant=bad), sort_keys=True, separators=(\",\", \":\")))\n"
                "' %s 2>&1",
             path);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    if (pclose(p) != 0) {
        printf("# python3 said: %s\n", buf);
        free(buf);
        return NULL;
    }
    return buf;
}

static void test_json_writer(void) {
    MgJson j;
    mg_json_begin(&j);
    tu_check(!strcmp(mg_json_end(&j), "{}"), "empty object", "%s", j.buf);
    mg_json_free(&j);

    mg_json_begin(&j);
    mg_json_int(&j, "step", 7);
    mg_json_int(&j, "tokens", -9007199254740993LL);
    mg_json_fixed(&j, "loss", 1.5, 6);
    mg_json_sci(&j, "lr", 6e-4, 6);
    mg_json_fixed(&j, "neg_zero", -0.0, 2);
    mg_json_fixed(&j, "inf", INFINITY, 6);
    mg_json_fixed(&j, "ninf", -INFINITY, 6);
    mg_json_fixed(&j, "nan", NAN, 4);
    mg_json_sci(&j, "sci_inf", INFINITY, 6);
    mg_json_sci(&j, "sci_nan", -NAN, 6);
    const char *numbers = mg_json_end(&j);
    const char *want_numbers = "{\"step\": 7, \"tokens\": -9007199254740993, \"loss\": 1.500000, \"lr\": 6.000000e-04, "
                               "\"neg_zero\": -0.00, \"inf\": null, \"ninf\": null, \"nan\": null, \"sci_inf\": null, "
                               "\"sci_nan\": null}";
    tu_check(!strcmp(numbers, want_numbers), "numbers: fixed and scientific, inf/-inf/nan written as null", "%s",
             numbers);
    char *numbers_copy = strdup(numbers);
    mg_json_free(&j);

    /* quote, backslash, slash, newline, tab, CR, other control characters, UTF-8 (2 to 4 bytes), DEL, and
     * bytes that are not UTF-8 (a lone continuation byte, 0xff, a cut sequence, an overlong encoding, a
     * UTF-16 surrogate) */
    const char *s = "a\"b\\c/d\ne\tf\rg\x01h\x1fi \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f|\x80|\xff|\xe2\x82|\xc0\xaf|"
                    "\xed\xa0\x80|end";
    mg_json_begin(&j);
    mg_json_str(&j, "k\"ey", s);
    mg_json_str(&j, "empty", "");
    const char *strings = mg_json_end(&j);
    const char *want_strings =
        "{\"k\\\"ey\": \"a\\\"b\\\\c/d\\ne\\tf\\rg\\u0001h\\u001fi \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f|"
        "\\ufffd|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|end\", \"empty\": \"\"}";
    tu_check(!strcmp(strings, want_strings), "strings: escapes, UTF-8 kept, invalid bytes as U+FFFD", "%s", strings);
    char *strings_copy = strdup(strings);
    mg_json_free(&j);

    /* a long value grows the buffer */
    size_t big = 100000;
    char *longs = malloc(big + 1);
    memset(longs, 'x', big);
    longs[big] = 0;
    mg_json_begin(&j);
    mg_json_str(&j, "long", longs);
    mg_json_fixed(&j, "huge", 1e300, 1);
    const char *longj = mg_json_end(&j);
    tu_check(j.len == strlen(longj) && strlen(longj) > big + 300 && !strncmp(longj + 10, longs, 1000),
             "long values (100 kB string, 1e300 in fixed notation)", "%zu bytes", j.len);
    char *long_copy = strdup(longj);
    mg_json_free(&j);
    free(longs);

    /* a full log record with overflowed values, through mg_log_write */
    char path[256];
    snprintf(path, sizeof path, "%s/records.jsonl", g_dir);
    FILE *f = fopen(path, "w");
    MgLogRecord r = {.step = 12, .tokens = 3072, .loss = 2.5, .lr = 1e-3, .grad_norm = INFINITY,
                     .tokens_per_s = INFINITY, .mfu = NAN, .elapsed = 1.25, .has_val = 1, .val_loss = 800.0,
                     .val_ppl = exp(800.0)};
    mg_log_write(f, &r);
    r.step = 13;
    r.has_val = 0;
    r.grad_norm = 0.5;
    mg_log_write(f, &r);
    fclose(f);
    char *rec = read_file(path, NULL);
    const char *want_rec =
        "{\"step\": 12, \"loss\": 2.500000, \"lr\": 1.000000e-03, \"grad_norm\": null, \"tokens_per_s\": null, "
        "\"mfu\": null, \"elapsed\": 1.250, \"tokens\": 3072, \"val_loss\": 800.000000, \"val_ppl\": null}\n"
        "{\"step\": 13, \"loss\": 2.500000, \"lr\": 1.000000e-03, \"grad_norm\": 0.500000, \"tokens_per_s\": null, "
        "\"mfu\": null, \"elapsed\": 1.250, \"tokens\": 3072}\n";
    tu_check(rec && !strcmp(rec, want_rec), "log records: fields in order, overflowed values as null", "%s", flat(rec));

    /* Python's json module, strict, reads every line and decodes what was meant. */
    if (access(PY, X_OK) != 0) {
        printf("# %s not found: the python3 parse checks are skipped\n", PY);
    } else {
        FILE *all = fopen(path, "a");
        fprintf(all, "%s\n%s\n%s\n", numbers_copy, strings_copy, long_copy);
        fclose(all);
        char *canon = python_canonical(path);
        const char *want =
                 "{\"elapsed\":1.25,\"grad_norm\":null,\"loss\":2.5,\"lr\":0.001,\"mfu\":null,\"step\":12,"
                 "\"tokens\":3072,\"tokens_per_s\":null,\"val_loss\":800.0,\"val_ppl\":null}\n"
                 "{\"elapsed\":1.25,\"grad_norm\":0.5,\"loss\":2.5,\"lr\":0.001,\"mfu\":null,\"step\":13,"
                 "\"tokens\":3072,\"tokens_per_s\":null}\n"
                 "{\"inf\":null,\"loss\":1.5,\"lr\":0.0006,\"nan\":null,\"neg_zero\":-0.0,\"ninf\":null,"
                 "\"sci_inf\":null,\"sci_nan\":null,\"step\":7,\"tokens\":-9007199254740993}\n"
                 "{\"empty\":\"\",\"k\\\"ey\":\"a\\\"b\\\\c/d\\ne\\tf\\rg\\u0001h\\u001fi \\u00e9 \\u20ac \\ud83d\\ude00 "
                 "\\u007f|\\ufffd|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|end\"}\n";
        /* the long record: check its start and size rather than spelling out 100 000 x */
        size_t wl = strlen(want);
        int ok = canon && !strncmp(canon, want, wl);
        if (ok) {
            const char *last = canon + wl;
            ok = !strncmp(last, "{\"huge\":1e+300,\"long\":\"xxxx", 26) && strlen(last) == 23 + big + 3; /* {"huge":1e+300,"long":" x... "}\n */
        }
        tu_check(ok, "python3's json module (NaN/Infinity refused) parses every line and decodes the intended values",
                 "%s", canon ? flat(canon) : "python3 failed");
        free(canon);
    }
    free(rec);
    free(numbers_copy);
    free(strings_copy);
    free(long_copy);
}

int main(void) {
    tu_init("test_trainlog");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_json_writer();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", g_dir);
    return tu_finish();
}
