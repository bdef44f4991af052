/* `megalodon prepare`: text files -> token shards (train/val), and `megalodon tokenize`: encode/decode
 * for humans and tests. Formats and the split rule are described in docs/data.md. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "data.h"
#include "fileio.h"
#include "fsutil.h"
#include "hash.h"
#include "signals.h"
#include "tokenizer.h"

#define DEFAULT_TOKENIZER "data/tokenizer/llama2.tok"

/* ---- small helpers ----------------------------------------------------------------------------- */

/* A text input: a regular file (a directory, a device such as /dev/zero or a FIFO is refused by name). */
static int read_file(const char *path, char **data, size_t *len, char *err, size_t errlen) {
    return mg_read_regular_file(path, "input", (uint64_t)SIZE_MAX / 2, data, len, err, errlen);
}

/* "\n\n\n" style escapes: \n \t \r \f \v \\ \xNN. Returns the decoded length, or -1. */
static int unescape(const char *in, char *out, size_t cap) {
    size_t n = 0;
    for (const char *p = in; *p; p++) {
        if (n + 1 >= cap) return -1;
        if (*p != '\\') {
            out[n++] = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'f': out[n++] = '\f'; break;
        case 'v': out[n++] = '\v'; break;
        case '\\': out[n++] = '\\'; break;
        case 'x': {
            int v = 0, k = 0;
            while (k < 2 && ((p[1] >= '0' && p[1] <= '9') || ((p[1] | 32) >= 'a' && (p[1] | 32) <= 'f'))) {
                p++;
                v = v * 16 + (*p <= '9' ? *p - '0' : (*p | 32) - 'a' + 10);
                k++;
            }
            if (k == 0) return -1;
            out[n++] = (char)v;
            break;
        }
        default: return -1;
        }
    }
    out[n] = 0;
    return (int)n;
}

static int only_space(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f' || s[i] == '\v')) return 0;
    return 1;
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_symlink(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
}

/* ---- prepare ----------------------------------------------------------------------------------- */

typedef struct {
    char *path;
    char *sep; /* NULL: the whole file is one document */
    int sep_len;
} Input;

typedef struct {
    uint64_t begin, len; /* in the token buffer */
    int val;
} Doc;

static void prepare_usage(FILE *f) {
    fprintf(f,
            "usage: megalodon prepare --out DIR [options] INPUT...\n"
            "\n"
            "Tokenize text files into token shards DIR/train/*.bin and DIR/val/*.bin (format: docs/data.md).\n"
            "An INPUT is a text file or a directory (its files, in name order, hidden files skipped).\n"
            "Each file is one document, or several when --doc_sep is in effect. Every document starts with BOS.\n"
            "\n"
            "options:\n"
            "  --tokenizer FILE     tokenizer file (default %s)\n"
            "  --out DIR            output directory (required); old *.bin shards in DIR/train and DIR/val are replaced\n"
            "  --val_fraction F     share of tokens held out for validation, by whole documents (default 0.01)\n"
            "  --seed N             seed of the train/val split (default 1)\n"
            "  --shard_tokens N     at most N tokens per shard (default 100000000; a longer document gets its own)\n"
            "  --doc_sep SEP        split the INPUTs named AFTER this option into documents at SEP (escapes \\n \\t\n"
            "                       \\r \\f \\v \\\\ \\xNN; e.g. '\\n\\n\\n\\n'); --doc_sep none turns it off again\n"
            "  --file_list FILE     read more INPUTs from FILE, one per line ('#' comments)\n"
            "  --quiet              no progress lines\n",
            DEFAULT_TOKENIZER);
}

static int remove_old_shards(const char *dir) {
    if (is_symlink(dir)) return 0; /* never delete anything in the target of a planted symlink */
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        /* temp files of a killed prepare ("*.bin.<random>.tmp") go too, uncounted; unlink removes a
         * symlink itself, never its target */
        int tmp = l > 4 && !strcmp(e->d_name + l - 4, ".tmp") && strstr(e->d_name, ".bin.");
        if (!tmp && (l < 4 || strcmp(e->d_name + l - 4, ".bin") != 0)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) == 0 && !tmp) n++;
    }
    closedir(d);
    return n;
}

static int make_dir(const char *p) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", p);
    for (char *s = buf + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(buf, 0755);
            *s = '/';
        }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return is_dir(buf) ? 0 : -1;
}

/* Write the documents with val == which into DIR/<name>/<name>_NNNNN.bin. Returns shard count, or -1
 * (an error, reported), or -2 on a stop request (checked before each shard; the caller removes them). */
static int write_split(const char *out, const char *name, const Doc *docs, int64_t n_docs, int which,
                       const MgTokens *toks, uint64_t shard_tokens, int vocab, int bos, uint64_t fp, int quiet,
                       uint64_t *tok_total) {
    char dir[4096], path[4200], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", out, name);
    if (is_symlink(dir)) { /* shards are written into OUT itself, not wherever a symlink there leads */
        fprintf(stderr,
                "error: '%s' is a symbolic link: refusing to write shards through it or to remove old shards in its "
                "target; remove it (or choose another --out) and run again\n",
                dir);
        return -1;
    }
    if (make_dir(dir) != 0) {
        fprintf(stderr, "error: cannot create directory '%s': %s\n", dir, strerror(errno));
        return -1;
    }
    int removed = remove_old_shards(dir);
    if (removed && !quiet) printf("prepare: removed %d old shard(s) from %s\n", removed, dir);
    int32_t *buf = NULL;
    uint64_t *starts = NULL;
    size_t buf_cap = 0, starts_cap = 0;
    uint64_t nb = 0, ns = 0;
    int shards = 0;
    *tok_total = 0;
    for (int64_t i = 0; i <= n_docs; i++) {
        int flush = (i == n_docs) ? nb > 0 : (docs[i].val == which && nb > 0 && nb + docs[i].len > shard_tokens);
        if (flush && mg_stop_requested()) {
            free(buf);
            free(starts);
            return -2;
        }
        if (flush) {
            snprintf(path, sizeof path, "%s/%s_%05d.bin", dir, name, shards);
            if (mg_shard_write(path, buf, nb, starts, ns, vocab, bos, fp, err, sizeof err) != 0) {
                fprintf(stderr, "error: %s\n", err);
                free(buf);
                free(starts);
                return -1;
            }
            shards++;
            *tok_total += nb;
            nb = ns = 0;
        }
        if (i == n_docs || docs[i].val != which) continue;
        if (nb + docs[i].len > buf_cap) {
            buf_cap = MG_MAX(2 * buf_cap, nb + docs[i].len);
            buf = mg_realloc(buf, buf_cap * sizeof(int32_t));
        }
        if (ns + 1 > starts_cap) {
            starts_cap = starts_cap ? 2 * starts_cap : 1024;
            starts = mg_realloc(starts, starts_cap * sizeof(uint64_t));
        }
        memcpy(buf + nb, toks->ids + docs[i].begin, docs[i].len * sizeof(int32_t));
        starts[ns++] = nb;
        nb += docs[i].len;
    }
    free(buf);
    free(starts);
    return shards;
}

static void add_input(Input **in, int *n, int *cap, const char *path, const char *sep, int sep_len) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *in = mg_realloc(*in, (size_t)*cap * sizeof(Input));
    }
    Input *x = &(*in)[(*n)++];
    x->path = mg_strdup(path);
    x->sep = sep ? mg_strdup(sep) : NULL;
    x->sep_len = sep_len;
}

/* Expand a path argument: a file is itself, a directory gives its non-hidden regular files in name order. */
static int add_path(Input **in, int *n, int *cap, const char *path, const char *sep, int sep_len) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "error: input '%s': %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (!S_ISREG(st.st_mode)) {
            fprintf(stderr, "error: input '%s' is %s; give text files or directories of them\n", path,
                    mg_file_kind(st.st_mode));
            return -1;
        }
        add_input(in, n, cap, path, sep, sep_len);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "error: cannot list input directory '%s': %s\n", path, strerror(errno));
        return -1;
    }
    int m = 0, mc = 64;
    char **names = mg_malloc((size_t)mc * sizeof(char *));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        char *full = mg_malloc(len);
        snprintf(full, len, "%s/%s", path, e->d_name);
        struct stat s2;
        if (stat(full, &s2) != 0 || !S_ISREG(s2.st_mode)) {
            free(full);
            continue;
        }
        if (m == mc) {
            mc *= 2;
            names = mg_realloc(names, (size_t)mc * sizeof(char *));
        }
        names[m++] = full;
    }
    closedir(d);
    if (m == 0) {
        fprintf(stderr, "error: input directory '%s' has no files\n", path);
        free(names);
        return -1;
    }
    qsort(names, (size_t)m, sizeof(char *), cmp_cstr);
    for (int i = 0; i < m; i++) {
        add_input(in, n, cap, names[i], sep, sep_len);
        free(names[i]);
    }
    free(names);
    return 0;
}

static int parse_u64(const char *opt, const char *v, uint64_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!v[0] || *end || errno || v[0] == '-') {
        fprintf(stderr, "error: %s expects a non-negative integer, got '%s'\n", opt, v);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_prepare(int argc, char **argv) {
    const char *tok_path = DEFAULT_TOKENIZER, *out = NULL;
    double val_fraction = 0.01;
    uint64_t seed = 1, shard_tokens = 100000000ull;
    int quiet = 0;
    char sep[256];
    int sep_len = -1; /* -1: no separator in effect */
    Input *inputs = NULL;
    int n_in = 0, cap_in = 0, rc = 1;
    int had_input_arg = 0;
    mg_signals_install();
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            prepare_usage(stdout);
            return 0;
        }
        if (a[0] == '-' && a[1] == '-') {
            char key[64];
            const char *val = NULL;
            const char *eq = strchr(a, '=');
            if (eq) {
                snprintf(key, sizeof key, "%.*s", (int)(eq - a), a);
                val = eq + 1;
            } else {
                snprintf(key, sizeof key, "%s", a);
            }
            if (!strcmp(key, "--quiet")) {
                quiet = 1;
                continue;
            }
            if (!val) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "error: option %s needs a value (see megalodon prepare --help)\n", key);
                    goto done;
                }
                val = argv[++i];
            }
            if (!strcmp(key, "--tokenizer")) tok_path = val;
            else if (!strcmp(key, "--out")) out = val;
            else if (!strcmp(key, "--val_fraction")) {
                char *end = NULL;
                val_fraction = strtod(val, &end);
                if (!val[0] || *end || !(val_fraction >= 0 && val_fraction < 1)) {
                    fprintf(stderr, "error: --val_fraction must be a number in [0, 1), got '%s'\n", val);
                    goto done;
                }
            } else if (!strcmp(key, "--seed")) {
                if (parse_u64(key, val, &seed)) goto done;
            } else if (!strcmp(key, "--shard_tokens")) {
                if (parse_u64(key, val, &shard_tokens)) goto done;
                if (shard_tokens == 0) {
                    fprintf(stderr, "error: --shard_tokens must be > 0\n");
                    goto done;
                }
            } else if (!strcmp(key, "--doc_sep")) {
                if (!strcmp(val, "none") || !val[0]) {
                    sep_len = -1;
                } else if ((sep_len = unescape(val, sep, sizeof sep)) <= 0) {
                    fprintf(stderr, "error: --doc_sep '%s' is not a valid separator (escapes: \\n \\t \\r \\f \\v \\\\ \\xNN)\n",
                            val);
                    goto done;
                }
            } else if (!strcmp(key, "--file_list")) {
                /* a regular file of at most 64 MiB, one path per line (each at most 4095 bytes) */
                char *list, lerr[1024];
                size_t list_len;
                if (mg_read_regular_file(val, "--file_list", (uint64_t)64 << 20, &list, &list_len, lerr, sizeof lerr)) {
                    fprintf(stderr, "error: %s\n", lerr);
                    goto done;
                }
                int bad = 0, lineno = 0;
                for (char *q = list; !bad && q < list + list_len;) {
                    char *e = memchr(q, '\n', (size_t)(list + list_len - q));
                    size_t l = e ? (size_t)(e - q) : (size_t)(list + list_len - q);
                    lineno++;
                    char line[4096];
                    if (l >= sizeof line) {
                        fprintf(stderr, "error: --file_list '%s' line %d is %zu bytes long; a path is at most %zu\n", val,
                                lineno, l, sizeof line - 1);
                        bad = 1;
                        break;
                    }
                    memcpy(line, q, l);
                    line[l] = 0;
                    q += l + (e ? 1 : 0);
                    if (strlen(line) != l) {
                        fprintf(stderr, "error: --file_list '%s' line %d contains a NUL byte (is it a text file?)\n", val,
                                lineno);
                        bad = 1;
                        break;
                    }
                    while (l && (line[l - 1] == '\r' || line[l - 1] == ' ')) line[--l] = 0;
                    if (!l || line[0] == '#') continue;
                    had_input_arg = 1;
                    if (add_path(&inputs, &n_in, &cap_in, line, sep_len > 0 ? sep : NULL, sep_len)) bad = 1;
                }
                free(list);
                if (bad) goto done;
            } else {
                fprintf(stderr, "error: unknown option '%s' for prepare (see megalodon prepare --help)\n", key);
                goto done;
            }
        } else {
            had_input_arg = 1;
            if (add_path(&inputs, &n_in, &cap_in, a, sep_len > 0 ? sep : NULL, sep_len)) goto done;
        }
    }
    if (!out) {
        fprintf(stderr, "error: prepare needs --out DIR (see megalodon prepare --help)\n");
        goto done;
    }
    if (!had_input_arg || n_in == 0) {
        fprintf(stderr, "error: prepare needs at least one input text file or directory (see megalodon prepare --help)\n");
        goto done;
    }
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(tok_path, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    int vocab = mg_tokenizer_vocab_size(tok), bos = mg_tokenizer_bos_id(tok);
    double t0 = mg_now();
    uint64_t total_bytes = 0;
    for (int i = 0; i < n_in; i++) {
        struct stat st;
        if (stat(inputs[i].path, &st) == 0) total_bytes += (uint64_t)st.st_size;
    }
    if (!quiet)
        printf("prepare: %d input file(s), %.1f MB, tokenizer %s (%d pieces)\n", n_in, total_bytes / 1e6, tok_path,
               vocab);
    MgTokens toks = {0};
    Doc *docs = NULL;
    int64_t n_docs = 0, docs_cap = 0, skipped = 0;
    uint64_t done_bytes = 0;
    double last_print = t0;
    for (int i = 0; i < n_in && !mg_stop_requested(); i++) {
        char *text;
        size_t len;
        if (read_file(inputs[i].path, &text, &len, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            mg_tokenizer_free(tok);
            mg_tokens_free(&toks);
            free(docs);
            goto done;
        }
        size_t p = 0;
        while (p <= len) {
            size_t q = len;
            if (inputs[i].sep) {
                char *hit = memmem(text + p, len - p, inputs[i].sep, (size_t)inputs[i].sep_len);
                if (hit) q = (size_t)(hit - text);
            }
            if (q > p && !only_space(text + p, q - p)) {
                if (n_docs == docs_cap) {
                    docs_cap = docs_cap ? 2 * docs_cap : 1024;
                    docs = mg_realloc(docs, (size_t)docs_cap * sizeof(Doc));
                }
                Doc *d = &docs[n_docs];
                d->begin = toks.n;
                d->len = mg_tokenizer_encode(tok, text + p, q - p, 1, &toks);
                d->val = 0;
                n_docs++;
            } else if (q > p) {
                skipped++; /* white space only */
            }
            if (q == len || mg_stop_requested()) break; /* a stop request: between two documents */
            p = q + (size_t)inputs[i].sep_len;
        }
        done_bytes += len;
        free(text);
        double now = mg_now();
        if (!quiet && (now - last_print > 2.0 || i == n_in - 1)) {
            printf("prepare: tokenized %d/%d files, %.1f/%.1f MB, %.2f M tokens, %.1f MB/s\n", i + 1, n_in,
                   done_bytes / 1e6, total_bytes / 1e6, toks.n / 1e6, done_bytes / 1e6 / (now - t0 + 1e-9));
            fflush(stdout);
            last_print = now;
        }
    }
    double t_tok = mg_now() - t0;
    if (mg_stop_requested()) { /* nothing written yet: the old shards, if any, are untouched */
        mg_tokenizer_free(tok);
        mg_tokens_free(&toks);
        free(docs);
        rc = mg_stop_report("prepare stopped while tokenizing; nothing was written");
        goto done;
    }
    if (n_docs == 0) {
        fprintf(stderr, "error: the inputs contain no text (every document was empty or white space)\n");
        mg_tokenizer_free(tok);
        free(docs);
        goto done;
    }
    /* train/val split by whole documents: visit documents in a seeded random order and hold one out
     * whenever it still fits under the token target, so validation never exceeds val_fraction */
    uint64_t total_tokens = toks.n, val_tokens = 0;
    int64_t n_val = 0;
    if (val_fraction > 0 && n_docs >= 2) {
        uint64_t target = (uint64_t)floor(val_fraction * (double)total_tokens);
        int64_t *order = mg_malloc((size_t)n_docs * sizeof(int64_t));
        for (int64_t i = 0; i < n_docs; i++) order[i] = i;
        for (int64_t i = n_docs - 1; i > 0; i--) { /* seeded Fisher-Yates */
            uint64_t r = mg_splitmix64(seed ^ mg_splitmix64((uint64_t)i + 0x51ull)) % (uint64_t)(i + 1);
            int64_t tmp = order[i];
            order[i] = order[r];
            order[r] = tmp;
        }
        int64_t smallest = 0;
        for (int64_t k = 0; k < n_docs; k++) {
            Doc *d = &docs[order[k]];
            if (d->len < docs[smallest].len) smallest = order[k];
            if (val_tokens + d->len <= target) {
                d->val = 1;
                val_tokens += d->len;
                n_val++;
            }
        }
        if (n_val == 0) {
            docs[smallest].val = 1;
            val_tokens = docs[smallest].len;
            n_val = 1;
            printf("prepare: warning: every document is longer than the validation target (%llu tokens); holding out "
                   "the smallest one (%llu tokens, %.2f%%). Split files into documents with --doc_sep for a finer split.\n",
                   (unsigned long long)target, (unsigned long long)val_tokens, 100.0 * val_tokens / total_tokens);
        }
        free(order);
    } else if (val_fraction > 0) {
        printf("prepare: warning: only one document, so no validation split (use --doc_sep to split the input)\n");
    }
    if (make_dir(out) != 0) {
        fprintf(stderr, "error: cannot create output directory '%s': %s\n", out, strerror(errno));
        mg_tokenizer_free(tok);
        mg_tokens_free(&toks);
        free(docs);
        goto done;
    }
    uint64_t fp = mg_tokenizer_fingerprint(tok);
    uint64_t tr_tok = 0, va_tok = 0;
    int tr_sh = write_split(out, "train", docs, n_docs, 0, &toks, shard_tokens, vocab, bos, fp, quiet, &tr_tok);
    int va_sh = tr_sh < 0 ? -1 : 0;
    if (tr_sh >= 0 && n_val > 0)
        va_sh = write_split(out, "val", docs, n_docs, 1, &toks, shard_tokens, vocab, bos, fp, quiet, &va_tok);
    else if (tr_sh >= 0) {
        char vdir[4096];
        snprintf(vdir, sizeof vdir, "%s/val", out);
        int removed = remove_old_shards(vdir);
        if (removed && !quiet) printf("prepare: removed %d old shard(s) from %s\n", removed, vdir);
    }
    double t_all = mg_now() - t0;
    if (tr_sh == -2 || va_sh == -2) {
        /* stopped between shards: the old shards are gone already, so remove the new ones too (and an
         * older prepare.txt), leaving no set of shards that looks complete */
        char sub[4200];
        for (int k = 0; k < 2; k++) {
            snprintf(sub, sizeof sub, "%s/%s", out, k ? "val" : "train");
            remove_old_shards(sub);
        }
        snprintf(sub, sizeof sub, "%s/prepare.txt", out);
        remove(sub);
        rc = mg_stop_report("prepare stopped while writing shards; the shards written so far were removed");
    } else if (tr_sh >= 0 && va_sh >= 0) {
        int tb = vocab <= 65536 ? 2 : 4;
        /* a short record next to the shards, for humans and for scripts/prepare_data.sh */
        char ipath[4200];
        snprintf(ipath, sizeof ipath, "%s/prepare.txt", out);
        MgAtomicFile af; /* a new file renamed over prepare.txt: never written through a symlink */
        char aerr[4400];
        FILE *f = mg_fs_atomic_open(&af, ipath, aerr, sizeof aerr);
        if (!f) fprintf(stderr, "prepare: warning: %s\n", aerr);
        if (f) {
            fprintf(f, "tokenizer %s\ntokenizer_fingerprint %016llx\nvocab_size %d\nval_fraction %g\nseed %llu\n"
                       "shard_tokens %llu\ninputs %d\ninput_bytes %llu\ndocuments %lld\ntrain_documents %lld\n"
                       "val_documents %lld\ntokens %llu\ntrain_tokens %llu\nval_tokens %llu\ntrain_shards %d\n"
                       "val_shards %d\n",
                    tok_path, (unsigned long long)fp, vocab, val_fraction, (unsigned long long)seed,
                    (unsigned long long)shard_tokens, n_in, (unsigned long long)total_bytes, (long long)n_docs,
                    (long long)(n_docs - n_val), (long long)n_val, (unsigned long long)total_tokens,
                    (unsigned long long)tr_tok, (unsigned long long)va_tok, tr_sh, va_sh);
            if (mg_fs_atomic_commit(&af, 0, aerr, sizeof aerr)) fprintf(stderr, "prepare: warning: %s\n", aerr);
        }
        printf("prepare: %lld documents (%lld train, %lld val)%s, %llu tokens (%llu train, %llu val = %.2f%%)\n",
               (long long)n_docs, (long long)(n_docs - n_val), (long long)n_val,
               skipped ? " (white-space-only pieces skipped)" : "", (unsigned long long)total_tokens,
               (unsigned long long)tr_tok, (unsigned long long)va_tok, 100.0 * va_tok / total_tokens);
        printf("prepare: wrote %d train + %d val shard(s) to %s/{train,val} (%.1f MB), %.2f tokens/byte\n", tr_sh,
               va_sh, out, (double)(mg_shard_file_bytes(tr_tok, 0, tb) + mg_shard_file_bytes(va_tok, 0, tb)) / 1e6,
               (double)total_tokens / (double)(total_bytes ? total_bytes : 1));
        printf("prepare: %.1f MB of text in %.2f s (tokenizing %.2f s = %.1f MB/s)\n", total_bytes / 1e6, t_all, t_tok,
               total_bytes / 1e6 / (t_tok + 1e-9));
        rc = 0;
    }
    mg_tokenizer_free(tok);
    mg_tokens_free(&toks);
    free(docs);
done:
    for (int i = 0; i < n_in; i++) {
        free(inputs[i].path);
        free(inputs[i].sep);
    }
    free(inputs);
    return rc;
}

/* ---- tokenize ---------------------------------------------------------------------------------- */

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: megalodon tokenize [--tokenizer FILE] (--text TEXT | --file PATH | --decode \"IDS\") [options]\n"
            "\n"
            "  --text TEXT      print the ids of TEXT (BOS first), space-separated\n"
            "  --file PATH      the same for a file's contents ('-' = stdin)\n"
            "  --decode IDS     print the text of ids (separated by spaces or commas)\n"
            "  --no_bos         do not put BOS (1) first\n"
            "  --pieces         print id:piece pairs instead of bare ids\n"
            "  --count          print only counts and the speed (tokens, bytes, MB/s)\n"
            "  --tokenizer FILE tokenizer file (default %s)\n",
            DEFAULT_TOKENIZER);
}

int cmd_tokenize(int argc, char **argv) {
    const char *tok_path = DEFAULT_TOKENIZER, *text = NULL, *file = NULL, *decode = NULL;
    int bos = 1, pieces = 0, count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            tokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no_bos")) bos = 0;
        else if (!strcmp(a, "--pieces")) pieces = 1;
        else if (!strcmp(a, "--count")) count = 1;
        else if (!strcmp(a, "--tokenizer") || !strcmp(a, "--text") || !strcmp(a, "--file") || !strcmp(a, "--decode")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: option %s needs a value (see megalodon tokenize --help)\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--tokenizer")) tok_path = v;
            else if (!strcmp(a, "--text")) text = v;
            else if (!strcmp(a, "--file")) file = v;
            else decode = v;
        } else {
            fprintf(stderr, "error: unknown argument '%s' for tokenize (see megalodon tokenize --help)\n", a);
            return 2;
        }
    }
    if ((text != NULL) + (file != NULL) + (decode != NULL) != 1) {
        fprintf(stderr, "error: tokenize needs exactly one of --text, --file, --decode (see megalodon tokenize --help)\n");
        return 2;
    }
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(tok_path, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int V = mg_tokenizer_vocab_size(tok), rc = 0;
    if (decode) {
        MgTokens ids = {0};
        const char *p = decode;
        while (*p) {
            while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n' || *p == '[' || *p == ']') p++;
            if (!*p) break;
            char *end = NULL;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno) {
                fprintf(stderr, "error: --decode: '%.*s' is not an integer token id\n", (int)strcspn(p, " ,"), p);
                rc = 1;
                break;
            }
            if (v < 0 || v >= V) {
                fprintf(stderr, "error: --decode: token id %ld is outside the vocabulary [0, %d)\n", v, V);
                rc = 1;
                break;
            }
            if (ids.n == ids.cap) {
                ids.cap = ids.cap ? 2 * ids.cap : 64;
                ids.ids = mg_realloc(ids.ids, ids.cap * sizeof(int32_t));
            }
            ids.ids[ids.n++] = (int32_t)v;
            p = end;
        }
        if (rc == 0) {
            int64_t n = mg_tokenizer_decode(tok, ids.ids, ids.n, NULL, 0);
            char *buf = mg_malloc((size_t)n + 1);
            mg_tokenizer_decode(tok, ids.ids, ids.n, buf, (size_t)n + 1);
            fwrite(buf, 1, (size_t)n, stdout);
            printf("\n");
            free(buf);
        }
        mg_tokens_free(&ids);
        mg_tokenizer_free(tok);
        return rc;
    }
    char *data = NULL;
    size_t len = 0;
    if (file) {
        if (!strcmp(file, "-")) {
            size_t cap = 1 << 16;
            data = mg_malloc(cap);
            size_t got;
            while ((got = fread(data + len, 1, cap - len, stdin)) > 0) {
                len += got;
                if (len == cap) data = mg_realloc(data, cap *= 2);
            }
        } else if (read_file(file, &data, &len, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            mg_tokenizer_free(tok);
            return 1;
        }
    } else {
        len = strlen(text);
        data = mg_malloc(len + 1);
        memcpy(data, text, len);
    }
    MgTokens ids = {0};
    double t0 = mg_now();
    mg_tokenizer_encode(tok, data, len, bos, &ids);
    double dt = mg_now() - t0;
    if (count) {
        printf("%zu tokens, %zu bytes, %.3f s, %.1f MB/s\n", ids.n, len, dt, len / 1e6 / (dt + 1e-12));
    } else {
        for (size_t i = 0; i < ids.n; i++) {
            if (pieces) printf("%s%d:%s", i ? " " : "", ids.ids[i], mg_tokenizer_piece(tok, ids.ids[i]));
            else printf("%s%d", i ? " " : "", ids.ids[i]);
        }
        printf("\n");
    }
    mg_tokens_free(&ids);
    free(data);
    mg_tokenizer_free(tok);
    return 0;
}
