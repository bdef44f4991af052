/* The trainer's log (src/train/log.c): the JSON writer (non-finite numbers as null, escaped strings,
 * output that a strict JSON reader accepts), the step reader and the trim of log.jsonl on resume. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, strlen(text), f);
    fclose(f);
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
    const char *s = "a\"b\\c/d\ne\tf\rg\x01h\x1fi \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f|"
                    "\x80|\xff|\xe2\x82|\xc0\xaf|\xed\xa0\x80|end";
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
                 "{\"empty\":\"\",\"k\\\"ey\":\"a\\\"b\\\\c/d\\ne\\tf\\rg\\u0001h\\u001fi "
                 "\\u00e9 \\u20ac \\ud83d\\ude00 "
                 "\\u007f|\\ufffd|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|end\"}\n";
        /* the long record: check its start and size rather than spelling out 100 000 x */
        size_t wl = strlen(want);
        int ok = canon && !strncmp(canon, want, wl);
        if (ok) {
            const char *last = canon + wl;
            /* {"huge":1e+300,"long":"  x...x  "}\n */
            ok = !strncmp(last, "{\"huge\":1e+300,\"long\":\"xxxx", 26) && strlen(last) == 23 + big + 3;
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

static int step_of(const char *line, int64_t *step) { return mg_log_parse_step(line, strlen(line), step); }

static void test_parse_step(void) {
    static const struct {
        const char *line;
        int64_t step; /* -1: no readable step */
    } cases[] = {
        {"{\"step\": 12, \"loss\": 1.0}\n", 12},
        {"{\"step\":12}", 12},
        {"  {\n\t\"loss\" :1.0 ,\r\n \"step\"\t:\t34 }  \n", 34},
        {"{\"a\": {\"step\": 99, \"b\": [1, {\"step\": 98}]}, \"s\": \"\\\"step\\\": 97\", \"step\": 5}", 5},
        {"{\"st\\u0065p\": 6}", 6},
        {"{\"a\": {}, \"b\": [], \"c\": [true, false, null, -0.5e-3, \"]\"], \"step\": 3}", 3},
        {"{\"step\": 7, \"step\": 8}", 8},
        {"{\"step\": 1.2e1}", 12},
        {"{\"step\": 9, \"loss\": 1.2", 9},      /* cut short while being written */
        {"{\"step\": 10, \"loss\": nan}", 10},   /* damage after the step */
        {"{\"loss\": 1.0, \"st", -1},
        {"{\"step\": \"11\"}", -1},
        {"{\"step\": 1.5}", -1},
        {"{\"step\": null}", -1},
        {"{\"step\": -}", -1},
        {"{\"steps\": 3, \"Step\": 4, \"step \": 5}", -1},
        {"{\"step\\u0000\": 3}", -1},
        {"{\"x\": [1, 2, {\"y\": tru}], \"step\": 3}", -1}, /* the step comes after damage: unreadable */
        {"[{\"step\": 3}]", -1},
        {"step: 3", -1},
        {"{}", -1},
        {"", -1},
        {"\n", -1},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t step = -1;
        int rc = step_of(cases[i].line, &step);
        int64_t got = rc == 0 ? step : -1;
        if (got != cases[i].step) {
            bad++;
            printf("# case %zu: %s -> %lld, expected %lld\n", i, cases[i].line, (long long)got,
                   (long long)cases[i].step);
        }
    }
    tu_check(bad == 0, "the step of a line: any spacing and member order, nested and quoted 'step' ignored, "
                       "damage refused", "%d of %zu cases wrong", bad, sizeof cases / sizeof cases[0]);
    /* Deep nesting is refused, not a stack overflow. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    size_t n = (size_t)sprintf(deep, "{\"x\": ");
    for (size_t i = 0; i < depth; i++) deep[n++] = '[';
    for (size_t i = 0; i < depth; i++) deep[n++] = ']';
    n += (size_t)sprintf(deep + n, ", \"step\": 3}");
    int64_t step = 0;
    tu_check(mg_log_parse_step(deep, n, &step) == -1, "100 000 nested arrays: refused", "ok");
    free(deep);
}

/* Files "log.jsonl.<random>.tmp" left in g_dir (temp files of mg_log_trim). */
static int count_tmp(void) { return tu_count_files(g_dir, "^log\\.jsonl\\..*\\.tmp$", 1); }

static void open_log_resume(void *dir) {
    FILE *f = mg_log_open(dir, 1, 1);
    if (f) fclose(f);
}

static void test_trim(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/log.jsonl", g_dir);
    size_t big = 20000;
    char *pad = malloc(big + 1);
    memset(pad, 'y', big);
    pad[big] = 0;
    /* kept lines, in order */
    const char *keep1 = "{\"step\": 1, \"loss\": 2.0}\n";
    const char *keep2 = "{\"step\":2,\"loss\":1.9}\n";
    const char *keep3 = "{ \"loss\" : 1.8 ,\t\"step\"\t:  3 }\n";
    const char *keep4 =
        "{\"eval\": {\"step\": 99}, \"tags\": [\"step\", 100], \"s\": \"\\\"step\\\": 100\", \"step\": 4}\n";
    const char *junk1 = "not json at all\n";
    const char *junk2 = "{\"loss\": 1.0}\n";
    const char *junk3 = "\n";
    char *keep5 = malloc(big + 64), *drop2 = malloc(big + 64);
    sprintf(keep5, "{\"step\": 5, \"note\": \"%s\"}\n", pad);  /* longer than any fixed line buffer */
    sprintf(drop2, "{\"note\": \"%s\", \"step\": 8}\n", pad);  /* its step comes after 20 kB */
    const char *drop1 = "{\"loss\": 0.5, \"step\":6}\n";
    const char *drop3 = "{\"st\\u0065p\": 7}\n";
    const char *drop4 = "{\"step\": 9, \"loss\": 1.2"; /* cut short by a crash: no newline */
    size_t total = 0;
    const char *parts[] = {keep1, drop1, keep2, junk1, keep3, drop2, keep4, junk2, drop3, keep5, junk3, drop4};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) total += strlen(parts[i]);
    char *text = malloc(total + 1), *want = malloc(total + 1);
    text[0] = want[0] = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        strcat(text, parts[i]);
        if (parts[i] != drop1 && parts[i] != drop2 && parts[i] != drop3 && parts[i] != drop4) strcat(want, parts[i]);
    }
    write_file(path, text);
    MgLogTrim st;
    char err[512] = "";
    int rc = mg_log_trim(path, 5, &st, err, sizeof err);
    char *got = read_file(path, NULL);
    tu_check(rc == 0 && got && !strcmp(got, want),
             "trim keeps the steps up to the checkpoint and the lines it cannot read",
             "rc %d %s; %zu bytes, want %zu", rc, err, got ? strlen(got) : 0, strlen(want));
    tu_check(st.kept == 8 && st.dropped == 4 && st.unparsed == 3, "trim counts kept, dropped and unreadable lines",
             "kept %lld dropped %lld unreadable %lld", (long long)st.kept, (long long)st.dropped,
             (long long)st.unparsed);
    tu_check(count_tmp() == 0, "trim leaves no temporary file", "%d left", count_tmp());
    free(got);

    /* nothing to drop: the file stays as it was */
    struct stat before, after;
    stat(path, &before);
    rc = mg_log_trim(path, 100, &st, err, sizeof err);
    got = read_file(path, NULL);
    stat(path, &after);
    tu_check(rc == 0 && !strcmp(got, want) && before.st_ino == after.st_ino && st.dropped == 0 &&
                 count_tmp() == 0,
             "trim with nothing to drop leaves the log untouched", "rc %d dropped %lld", rc, (long long)st.dropped);
    free(got);

    /* a kept last line without its newline gets one, so the next record starts on its own line */
    write_file(path, "{\"step\": 1}\n{\"step\": 2}");
    rc = mg_log_trim(path, 2, &st, err, sizeof err);
    got = read_file(path, NULL);
    tu_check(rc == 0 && !strcmp(got, "{\"step\": 1}\n{\"step\": 2}\n"), "trim ends a cut last line", "%s", flat(got));
    free(got);

    /* a missing log is fine; a temporary file that cannot be created leaves the log as it was */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.jsonl", g_dir);
    rc = mg_log_trim(missing, 1, &st, err, sizeof err);
    tu_check(rc == 0 && st.kept == 0 && access(missing, F_OK) != 0, "trim of a missing log: nothing to do", "rc %d",
             rc);
    write_file(path, "{\"step\": 1}\n{\"step\": 2}\n");
    /* the temporary file cannot be written: a file size limit of 4 bytes (SIGXFSZ ignored, so writes fail
     * with EFBIG) */
    struct rlimit old_lim, small;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    small = old_lim;
    small.rlim_cur = 4;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    err[0] = 0;
    rc = mg_log_trim(path, 1, &st, err, sizeof err);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    signal(SIGXFSZ, old_sig);
    got = read_file(path, NULL);
    tu_check(rc == -1 && strstr(err, ".tmp") && !strcmp(got, "{\"step\": 1}\n{\"step\": 2}\n") && count_tmp() == 0,
             "trim that cannot write its temporary file fails and keeps the log", "rc %d: %s", rc, err);
    free(got);

    /* planted symlinks: log.jsonl pointing at a file elsewhere is neither read nor written through */
    char victim[300];
    snprintf(victim, sizeof victim, "%s/victim.txt", g_dir);
    write_file(victim, "{\"step\": 1}\n{\"step\": 9}\n");
    unlink(path);
    if (symlink(victim, path) != 0) perror("symlink");
    err[0] = 0;
    rc = mg_log_trim(path, 1, &st, err, sizeof err);
    got = read_file(victim, NULL);
    struct stat lst;
    tu_check(rc == -1 && strstr(err, path) && strstr(err, "symbolic link") &&
                 !strcmp(got, "{\"step\": 1}\n{\"step\": 9}\n") && lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode),
             "trim refuses a symlinked log and leaves its target alone", "rc %d: %s", rc, err);
    free(got);
    tu_expect_failure("resumed log: a symlinked log.jsonl is refused, not appended to", open_log_resume, g_dir,
                      "symbolic link");
    got = read_file(victim, NULL);
    tu_check(!strcmp(got, "{\"step\": 1}\n{\"step\": 9}\n"), "resumed log: the symlink's target is unchanged", "%s",
             flat(got));
    free(got);
    unlink(path); /* (an earlier version's trim could have replaced it) */
    if (symlink(victim, path) != 0) perror("symlink");
    FILE *lf = mg_log_open(g_dir, 0, 0); /* a new run: a new file replaces the link */
    fputs("{\"step\": 1}\n", lf);
    fclose(lf);
    got = read_file(victim, NULL);
    char *mine = read_file(path, NULL);
    tu_check(lstat(path, &lst) == 0 && S_ISREG(lst.st_mode) && !strcmp(got, "{\"step\": 1}\n{\"step\": 9}\n") &&
                 !strcmp(mine, "{\"step\": 1}\n") && count_tmp() == 0,
             "new run: log.jsonl replaces a symlink with a new file, the target is unchanged", "%s", flat(got));
    free(got);
    free(mine);
    /* a directory at log.jsonl: the resumed run refuses it, naming the path */
    unlink(path);
    mkdir(path, 0700);
    tu_expect_failure("resumed log: a directory at log.jsonl is refused", open_log_resume, g_dir, "a directory");
    rmdir(path);
    unlink(victim);
    free(text);
    free(want);
    free(keep5);
    free(drop2);
    free(pad);
}

int main(void) {
    tu_init("test_trainlog");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_json_writer();
    test_parse_step();
    test_trim();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", g_dir);
    return tu_finish();
}
