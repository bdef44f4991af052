/* `megalodon ckpt info|diff|bench`: inspect and compare checkpoints without knowing the model config
 * (every tensor in the file is listed and read), and measure save/load throughput. docs/checkpoint.md. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli.h"
#include "common.h"
#include "config.h"
#include "hash.h"
#include "params.h"

static const char *const GROUPS[3] = {"model", "optimizer/m", "optimizer/v"};

static void ckpt_usage(FILE *f) {
    fprintf(f, "usage: megalodon ckpt info FILE [--no-config]\n"
               "       megalodon ckpt diff A B\n"
               "       megalodon ckpt bench [--dir DIR] [--config F | --mparams M] [--seed S] [--step N] [--weights-only]\n"
               "                            [--out FILE --keep]\n"
               "\n"
               "info   format version, step, tokens, extra attributes, the stored config, and every tensor's shape,\n"
               "       element count and L2 norm (with the optimizer moments' norms when present). Reading verifies\n"
               "       every tensor's CRC32 (the last line says how many; a tensor without one is named as not verified)\n"
               "       and counts NaN/Inf. Exit 0 if the file is a valid checkpoint, 1 if not.\n"
               "diff   per tensor (model and optimizer) the max absolute and max relative difference\n"
               "       |a-b| / max(|a|,|b|), differences in step/tokens/config/attributes, and a final line\n"
               "       'summary: compared=.. identical=.. differing=.. only_a=.. only_b=.. shape_mismatch=..\n"
               "       max_abs_diff=.. max_rel_diff=..'. Exit 0 whenever both files could be read (also when\n"
               "       they differ), 1 on a read error.\n"
               "bench  write a synthetic checkpoint of about M million parameters (default 10) with AdamW\n"
               "       moments (3 x 4 bytes per parameter) to DIR (default /tmp), read it back (dropping it from\n"
               "       the page cache first), and print MB/s. The file is removed unless --keep.\n");
}

static void print_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static void print_entry(const MgMetaEntry *e) {
    static const char *tn[] = {"int64", "double", "string"};
    char type[48];
    if (e->type == MG_META_STR || !e->is_array)
        snprintf(type, sizeof(type), "%s", tn[e->type]);
    else
        snprintf(type, sizeof(type), "%s[%lld]", tn[e->type], (long long)e->n);
    printf("  %-24s %-12s ", e->name, type);
    if (e->type == MG_META_STR) {
        printf("\"");
        for (const char *p = e->str; *p; p++) {
            if (*p == '\n')
                printf("\\n");
            else if (*p == '"')
                printf("\\\"");
            else
                putchar(*p);
        }
        printf("\"\n");
        return;
    }
    int64_t shown = MG_MIN(e->n, 16);
    for (int64_t i = 0; i < shown; i++) {
        if (e->type == MG_META_I64)
            printf("%s%lld", i ? " " : "", (long long)e->i64[i]);
        else
            printf("%s%.17g", i ? " " : "", e->f64[i]);
    }
    if (e->n > shown) printf(" ... (%lld more)", (long long)(e->n - shown));
    printf("\n");
}

static double l2(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return sqrt(s);
}

static int64_t count_nonfinite(const float *x, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += !isfinite(x[i]);
    return c;
}

static const MgCkptTensorInfo *find_info(const MgCkptTensorInfo *l, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(l[i].name, name)) return &l[i];
    return NULL;
}

static int ckpt_info(const char *path, int show_config) {
    char err[1024];
    MgCkptMeta meta;
    MgCkptReader *r = mg_ckpt_open(path, &meta, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int problems = 0, verified = 0, unverified = 0;
    printf("checkpoint:  %s\n", path);
    printf("format:      %s v%d\n", MG_CKPT_FORMAT, meta.format_version);
    printf("step:        %lld\n", (long long)meta.step);
    printf("tokens_seen: %lld\n", (long long)meta.tokens_seen);
    printf("optimizer:   %s\n", meta.has_optimizer ? "yes (/optimizer/m, /optimizer/v)" : "no (weights only)");
    printf("attributes:  %d\n", meta.n_extra);
    for (int i = 0; i < meta.n_extra; i++) print_entry(&meta.extra[i]);
    if (show_config) {
        printf("config:\n");
        const char *c = meta.config_text ? meta.config_text : "";
        while (*c) {
            const char *nl = strchr(c, '\n');
            int len = nl ? (int)(nl - c) : (int)strlen(c);
            printf("  | %.*s\n", len, c);
            c += len + (nl ? 1 : 0);
        }
    }
    MgCkptTensorInfo *lists[3] = {NULL, NULL, NULL};
    int counts[3] = {0, 0, 0};
    int ng = meta.has_optimizer ? 3 : 1;
    for (int g = 0; g < ng; g++)
        if (mg_ckpt_list(r, GROUPS[g], &lists[g], &counts[g], err, sizeof(err))) {
            fprintf(stderr, "error: %s\n", err);
            problems++;
        }
    int64_t total = 0;
    for (int i = 0; i < counts[0]; i++) total += lists[0][i].numel;
    char b[32];
    printf("tensors:     %d in /model, %lld elements (%s as float32)\n", counts[0], (long long)total,
           mg_format_bytes((double)total * 4, b, sizeof(b)));
    printf("  %-40s %-18s %12s %14s", "name", "shape", "elements", "l2");
    if (ng == 3) printf(" %14s %14s", "m_l2", "v_l2");
    printf("\n");
    double total_sq = 0;
    for (int i = 0; i < counts[0]; i++) {
        const MgCkptTensorInfo *ti = &lists[0][i];
        char shape[96];
        print_shape(shape, sizeof(shape), ti->ndim, ti->shape);
        printf("  %-40s %-18s %12lld", ti->name, shape, (long long)ti->numel);
        float *buf = mg_malloc(sizeof(float) * (size_t)(ti->numel ? ti->numel : 1));
        char notes[2048] = "";
        for (int g = 0; g < ng; g++) {
            const MgCkptTensorInfo *gi = g ? find_info(lists[g], counts[g], ti->name) : ti;
            if (!gi || gi->numel != ti->numel) {
                printf(" %14s", "missing");
                problems++;
                continue;
            }
            if (mg_ckpt_read_tensor(r, GROUPS[g], ti->name, buf, ti->numel, err, sizeof(err))) {
                printf(" %14s", "ERROR");
                snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes), "\n    error: %s", err);
                problems++;
                continue;
            }
            if (gi->has_crc && gi->is_f32)
                verified++;
            else {
                unverified++;
                snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes),
                         "\n    %s: no stored CRC32, NOT verified", GROUPS[g]);
            }
            double n2 = l2(buf, ti->numel);
            if (g == 0) total_sq += n2 * n2;
            printf(" %14.6e", n2);
            int64_t bad = count_nonfinite(buf, ti->numel);
            if (bad) {
                snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes), "\n    %s: %lld NaN/Inf values",
                         GROUPS[g], (long long)bad);
                problems++;
            }
            if (!gi->is_f32) {
                snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes), "\n    %s: not stored as float32",
                         GROUPS[g]);
                problems++;
            }
        }
        printf("%s\n", notes);
        free(buf);
    }
    for (int g = 1; g < ng; g++)
        for (int i = 0; i < counts[g]; i++)
            if (!find_info(lists[0], counts[0], lists[g][i].name)) {
                printf("  /%s/%s has no counterpart in /model\n", GROUPS[g], lists[g][i].name);
                problems++;
            }
    printf("total l2:    %.6e\n", sqrt(total_sq));
    if (problems) {
        printf("problems:    %d (see above)\n", problems);
        fprintf(stderr, "error: checkpoint '%s' failed verification: %d problem%s (see above)\n", path, problems,
                problems == 1 ? "" : "s");
    } else if (unverified)
        printf("status:      ok (%d tensors read, no NaN/Inf; %d of them have no stored CRC32, so those were NOT "
               "verified)\n",
               verified + unverified, unverified);
    else
        printf("status:      ok (%d tensors, all checksums verified, no NaN/Inf)\n", verified);
    for (int g = 0; g < 3; g++) free(lists[g]);
    mg_ckpt_close(r);
    mg_ckpt_meta_free(&meta);
    return problems ? 1 : 0;
}

/* ---- diff ---- */

static int entry_equal(const MgMetaEntry *a, const MgMetaEntry *b) {
    if (a->type != b->type || a->n != b->n || a->is_array != b->is_array) return 0;
    if (a->type == MG_META_STR) return !strcmp(a->str, b->str);
    if (a->type == MG_META_I64) return !a->n || !memcmp(a->i64, b->i64, sizeof(int64_t) * (size_t)a->n);
    return !a->n || !memcmp(a->f64, b->f64, sizeof(double) * (size_t)a->n);
}

/* Lines of text (owned copy + array of pointers into it). */
static char **split_lines(const char *text, int *n, char **store) {
    *store = mg_strdup(text ? text : "");
    int cap = 16, k = 0;
    char **l = mg_malloc(sizeof(char *) * (size_t)cap);
    for (char *p = *store; *p;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        if (k == cap) l = mg_realloc(l, sizeof(char *) * (size_t)(cap *= 2));
        l[k++] = p;
        if (!nl) break;
        p = nl + 1;
    }
    *n = k;
    return l;
}

static int has_line(char **l, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (!strcmp(l[i], s)) return 1;
    return 0;
}

static int cmd_diff(const char *pa, const char *pb) {
    char err[1024];
    MgCkptMeta ma, mb;
    MgCkptReader *ra = mg_ckpt_open(pa, &ma, err, sizeof(err));
    if (!ra) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    MgCkptReader *rb = mg_ckpt_open(pb, &mb, err, sizeof(err));
    if (!rb) {
        fprintf(stderr, "error: %s\n", err);
        mg_ckpt_close(ra);
        mg_ckpt_meta_free(&ma);
        return 1;
    }
    int rc = 0;
    printf("a: %s (step %lld)\nb: %s (step %lld)\n", pa, (long long)ma.step, pb, (long long)mb.step);
    if (ma.step != mb.step) printf("step: %lld vs %lld\n", (long long)ma.step, (long long)mb.step);
    if (ma.tokens_seen != mb.tokens_seen)
        printf("tokens_seen: %lld vs %lld\n", (long long)ma.tokens_seen, (long long)mb.tokens_seen);
    if (ma.format_version != mb.format_version)
        printf("format_version: %d vs %d\n", ma.format_version, mb.format_version);
    /* config: lines present in only one of them (the resolved config is one `key = value` per line). */
    char *sa, *sb;
    int na, nb;
    char **la = split_lines(ma.config_text, &na, &sa), **lb = split_lines(mb.config_text, &nb, &sb);
    int cdiff = 0;
    for (int i = 0; i < na; i++)
        if (!has_line(lb, nb, la[i])) printf("config - %s\n", la[i]), cdiff++;
    for (int i = 0; i < nb; i++)
        if (!has_line(la, na, lb[i])) printf("config + %s\n", lb[i]), cdiff++;
    printf("config: %s\n", cdiff ? "differs (lines above)" : "same");
    free(la), free(lb), free(sa), free(sb);
    for (int i = 0; i < ma.n_extra; i++) {
        const MgMetaEntry *o = mg_ckpt_meta_find(&mb, ma.extra[i].name);
        if (!o)
            printf("attribute %s: only in a\n", ma.extra[i].name);
        else if (!entry_equal(&ma.extra[i], o))
            printf("attribute %s: differs\n", ma.extra[i].name);
    }
    for (int i = 0; i < mb.n_extra; i++)
        if (!mg_ckpt_meta_find(&ma, mb.extra[i].name)) printf("attribute %s: only in b\n", mb.extra[i].name);

    long compared = 0, identical = 0, differing = 0, only_a = 0, only_b = 0, shape_mm = 0;
    double gmax_abs = 0, gmax_rel = 0;
    printf("%-48s %14s %14s\n", "tensor", "max_abs_diff", "max_rel_diff");
    for (int g = 0; g < 3 && rc == 0; g++) {
        MgCkptTensorInfo *a = NULL, *b = NULL;
        int nA = 0, nB = 0;
        if (mg_ckpt_list(ra, GROUPS[g], &a, &nA, err, sizeof(err)) ||
            mg_ckpt_list(rb, GROUPS[g], &b, &nB, err, sizeof(err))) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
            free(a);
            break;
        }
        for (int i = 0; i < nA && rc == 0; i++) {
            const MgCkptTensorInfo *x = &a[i], *y = find_info(b, nB, x->name);
            if (!y) {
                printf("%s/%s: only in a\n", GROUPS[g], x->name);
                only_a++;
                continue;
            }
            int same = x->ndim == y->ndim;
            for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == y->shape[d];
            if (!same) {
                char s1[96], s2[96];
                print_shape(s1, sizeof(s1), x->ndim, x->shape);
                print_shape(s2, sizeof(s2), y->ndim, y->shape);
                printf("%s/%s: shape %s vs %s\n", GROUPS[g], x->name, s1, s2);
                shape_mm++;
                continue;
            }
            size_t n = (size_t)(x->numel ? x->numel : 1);
            float *xa = mg_malloc(sizeof(float) * n), *xb = mg_malloc(sizeof(float) * n);
            if (mg_ckpt_read_tensor(ra, GROUPS[g], x->name, xa, x->numel, err, sizeof(err)) ||
                mg_ckpt_read_tensor(rb, GROUPS[g], x->name, xb, x->numel, err, sizeof(err))) {
                fprintf(stderr, "error: %s\n", err);
                rc = 1;
            } else {
                double mabs = 0, mrel = 0;
                for (int64_t k = 0; k < x->numel; k++) {
                    double u = xa[k], w = xb[k];
                    if (isnan(u) || isnan(w)) {
                        if (!(isnan(u) && isnan(w))) mabs = mrel = INFINITY;
                        continue;
                    }
                    if (u == w) continue; /* also equal infinities */
                    double ad = fabs(u - w), den = fmax(fabs(u), fabs(w));
                    double rd = den > 0 ? ad / den : 0;
                    if (!(ad <= mabs)) mabs = ad;
                    if (!(rd <= mrel)) mrel = rd;
                }
                compared++;
                if (mabs == 0)
                    identical++;
                else
                    differing++;
                if (mabs > gmax_abs) gmax_abs = mabs;
                if (mrel > gmax_rel) gmax_rel = mrel;
                char full[160];
                snprintf(full, sizeof(full), "%s/%s", GROUPS[g], x->name);
                printf("%-48s %14.6e %14.6e\n", full, mabs, mrel);
            }
            free(xa);
            free(xb);
        }
        for (int i = 0; i < nB; i++)
            if (!find_info(a, nA, b[i].name)) {
                printf("%s/%s: only in b\n", GROUPS[g], b[i].name);
                only_b++;
            }
        free(a);
        free(b);
    }
    if (rc == 0)
        printf("summary: compared=%ld identical=%ld differing=%ld only_a=%ld only_b=%ld shape_mismatch=%ld "
               "max_abs_diff=%.9e max_rel_diff=%.9e\n",
               compared, identical, differing, only_a, only_b, shape_mm, gmax_abs, gmax_rel);
    mg_ckpt_close(ra);
    mg_ckpt_close(rb);
    mg_ckpt_meta_free(&ma);
    mg_ckpt_meta_free(&mb);
    return rc;
}

/* ---- bench ---- */

/* A Megalodon-shaped config with about `target` parameters, filled by hand (no config parsing). */
static void synth_config(MgConfig *c, double target) {
    memset(c, 0, sizeof(*c));
    snprintf(c->arch, sizeof(c->arch), "megalodon");
    int big = target >= 1e8;
    c->vocab_size = big ? 32000 : 1024;
    c->model_dim = big ? 1024 : 128;
    c->num_heads = big ? 4 : 2;
    c->z_dim = big ? 256 : 64;
    c->value_dim = big ? 2048 : 256;
    c->ffn_hidden_dim = big ? 2560 : 320;
    c->cema_ndim = 16;
    c->norm_num_groups = 32;
    c->chunk_size = 2048;
    c->seq_len = 2048;
    c->swiglu = 1;
    c->n_layers = 1;
    MgParamTable t;
    mg_param_table_build(c, &t);
    double fixed = (double)t.total, per_layer;
    mg_param_table_free(&t);
    c->n_layers = 2;
    mg_param_table_build(c, &t);
    per_layer = (double)t.total - fixed;
    mg_param_table_free(&t);
    fixed -= per_layer;
    c->n_layers = (int)MG_MAX(1.0, floor((target - fixed) / per_layer + 0.5));
}

static int ckpt_bench(int argc, char **argv) {
    const char *dir = "/tmp", *out = NULL, *config = NULL;
    double mparams = 10;
    uint64_t seed = 1;
    long long step = 1000;
    int keep = 0, weights_only = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--keep"))
            keep = 1;
        else if (!strcmp(a, "--weights-only"))
            weights_only = 1;
        else if (!val) {
            fprintf(stderr, "error: ckpt bench: unknown option or missing value '%s'\n", a);
            return 2;
        } else if (!strcmp(a, "--dir"))
            dir = val, i++;
        else if (!strcmp(a, "--out"))
            out = val, i++;
        else if (!strcmp(a, "--mparams"))
            mparams = atof(val), i++;
        else if (!strcmp(a, "--config"))
            config = val, i++;
        else if (!strcmp(a, "--seed"))
            seed = strtoull(val, NULL, 10), i++;
        else if (!strcmp(a, "--step"))
            step = atoll(val), i++;
        else {
            fprintf(stderr, "error: ckpt bench: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!(mparams > 0)) {
        fprintf(stderr, "error: ckpt bench: --mparams must be > 0\n");
        return 2;
    }
    MgConfig c;
    if (config) {
        /* The exact tensor set of a real config (e.g. configs/mega200m.conf). */
        char cerr[2048];
        mg_config_defaults(&c);
        if (mg_config_load_file(&c, config, cerr, sizeof(cerr))) {
            fprintf(stderr, "error: %s\n", cerr);
            return 2;
        }
    } else {
        synth_config(&c, mparams * 1e6);
    }
    MgParamTable t;
    mg_param_table_build(&c, &t);
    size_t n = (size_t)t.total;
    float *p = mg_malloc_aligned(n * 4), *m = weights_only ? NULL : mg_malloc_aligned(n * 4),
          *v = weights_only ? NULL : mg_malloc_aligned(n * 4);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mg_splitmix64_next(&s);
        p[i] = (float)((double)(r >> 40) / (double)(1 << 24) - 0.5) * 0.1f;
        if (m) m[i] = (float)((double)((r >> 16) & 0xffffff) / (double)(1 << 24) - 0.5) * 1e-3f;
        if (v) v[i] = (float)((double)(r & 0xffff) / 65536.0) * 1e-6f;
    }
    char path[4096];
    if (out)
        snprintf(path, sizeof(path), "%s", out);
    else
        snprintf(path, sizeof(path), "%s/megalodon_ckpt_bench_%ld.h5", dir, (long)getpid());
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    meta.step = step;
    meta.tokens_seen = step * 4096;
    char cfg[512];
    snprintf(cfg, sizeof(cfg),
             "# synthetic checkpoint written by `megalodon ckpt bench`\narch = megalodon\nvocab_size = %d\nn_layers = "
             "%d\nmodel_dim = %d\nz_dim = %d\nvalue_dim = %d\nffn_hidden_dim = %d\ncema_ndim = %d\nswiglu = 1\nseed = "
             "%llu\n",
             c.vocab_size, c.n_layers, c.model_dim, c.z_dim, c.value_dim, c.ffn_hidden_dim, c.cema_ndim,
             (unsigned long long)seed);
    mg_ckpt_meta_set_config(&meta, cfg);
    int64_t rngstate[4] = {(int64_t)seed, 2, 3, 4};
    mg_ckpt_meta_set_i64_array(&meta, "rng_state", rngstate, 4);
    mg_ckpt_meta_set_f64(&meta, "lr_scale", 0.5);
    mg_ckpt_meta_set_str(&meta, "data_mixture", "synthetic:1.0");
    char err[1024], b1[32];
    printf("ckpt bench: %lld parameters (%d layers, d=%d, V=%d), %s%s -> %s\n", (long long)t.total, c.n_layers,
           c.model_dim, c.vocab_size, mg_format_bytes((double)mg_ckpt_size_estimate(&t, !weights_only), b1, sizeof(b1)),
           weights_only ? " (weights only)" : " (params + m + v)", path);
    fflush(stdout);
    int rc = 0;
    if (mg_ckpt_save(path, &t, p, m, v, &meta, err, sizeof(err))) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
        goto done;
    }
    MgCkptStats st = mg_ckpt_last_stats();
    printf("save: %.3f s, %.1f MB/s (crc+nan scan %.3f s, H5Dwrite %.3f s, flush+close+fsync+rename %.3f s, "
           "staging copies %.3f s)\n",
           st.seconds, st.bytes / 1e6 / st.seconds, st.crc_seconds, st.io_seconds, st.sync_seconds, st.xfer_seconds);
    /* Drop the file from the page cache so the load measures the disk, not memory. */
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    memset(p, 0, n * 4);
    MgCkptMeta back;
    if (mg_ckpt_load(path, &t, p, m, v, &back, err, sizeof(err))) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
        goto done;
    }
    mg_ckpt_meta_free(&back);
    st = mg_ckpt_last_stats();
    printf("load: %.3f s, %.1f MB/s (H5Dread %.3f s, crc+nan scan %.3f s, staging copies %.3f s)\n", st.seconds,
           st.bytes / 1e6 / st.seconds, st.io_seconds, st.crc_seconds, st.xfer_seconds);
done:
    if (!keep) unlink(path);
    mg_ckpt_meta_free(&meta);
    mg_free_aligned(p);
    mg_free_aligned(m);
    mg_free_aligned(v);
    mg_param_table_free(&t);
    return rc;
}

int cmd_ckpt(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        ckpt_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!mg_ckpt_available()) {
        fprintf(stderr, "error: megalodon ckpt: this build has no HDF5; install libhdf5-dev and rebuild\n");
        return 1;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "info")) {
        const char *file = NULL;
        int show_config = 1;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--no-config"))
                show_config = 0;
            else if (argv[i][0] == '-' || file) {
                fprintf(stderr, "error: ckpt info: unexpected argument '%s'\n", argv[i]);
                return 2;
            } else
                file = argv[i];
        }
        if (!file) {
            ckpt_usage(stderr);
            return 2;
        }
        return ckpt_info(file, show_config);
    }
    if (!strcmp(sub, "diff")) {
        if (argc != 4) {
            ckpt_usage(stderr);
            return 2;
        }
        return cmd_diff(argv[2], argv[3]);
    }
    if (!strcmp(sub, "bench")) return ckpt_bench(argc - 2, argv + 2);
    fprintf(stderr, "error: unknown ckpt command '%s'\n\n", sub);
    ckpt_usage(stderr);
    return 2;
}
