/* Checkpoints: round trip, interoperability (h5py), validation of bad files, crash safety (file size
 * limit, SIGKILL mid-save), rotation and the `latest` pointer. docs/checkpoint.md. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/checkpoint.h"
#include "../src/common.h"
#include "../src/params.h"
#include "test_util.h"

#ifdef MG_HAVE_HDF5
#include <hdf5.h>
#endif

/* Helpers the build without HDF5 does not use. */
#define HDF5_ONLY __attribute__((unused))

static char g_dir[256];

static void make_cfg(MgConfig *c, int vocab, int layers, int d) {
    memset(c, 0, sizeof(*c));
    snprintf(c->arch, sizeof(c->arch), "megalodon");
    c->vocab_size = vocab;
    c->n_layers = layers;
    c->model_dim = d;
    c->num_heads = 2;
    c->z_dim = d / 2;
    c->value_dim = 2 * d;
    c->ffn_hidden_dim = 3 * d;
    c->cema_ndim = 4;
    c->norm_num_groups = 2;
    c->chunk_size = 16;
    c->seq_len = 32;
    c->swiglu = 1;
}

typedef struct {
    MgParamTable t;
    float *p, *m, *v;
} State;

static void state_init(State *s, const MgConfig *c) {
    mg_param_table_build(c, &s->t);
    size_t n = (size_t)s->t.total;
    s->p = mg_malloc(n * 4);
    s->m = mg_malloc(n * 4);
    s->v = mg_malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        s->p[i] = (float)tu_normal();
        s->m[i] = (float)(1e-3 * tu_normal());
        s->v[i] = (float)(1e-6 * tu_uniform() + 1e-9);
    }
}

HDF5_ONLY static void state_zero_like(State *dst, const State *src) {
    dst->t = src->t; /* shares the table */
    size_t n = (size_t)src->t.total;
    dst->p = mg_calloc(n, 4);
    dst->m = mg_calloc(n, 4);
    dst->v = mg_calloc(n, 4);
}

static void state_free_arrays(State *s) {
    free(s->p);
    free(s->m);
    free(s->v);
}

HDF5_ONLY static int state_equal(const State *a, const State *b, int with_opt) {
    size_t n = (size_t)a->t.total * 4;
    return !memcmp(a->p, b->p, n) && (!with_opt || (!memcmp(a->m, b->m, n) && !memcmp(a->v, b->v, n)));
}

static void fill_meta(MgCkptMeta *meta, int64_t step) {
    mg_ckpt_meta_init(meta);
    meta->step = step;
    meta->tokens_seen = step * 8192 + 7;
    mg_ckpt_meta_set_config(meta, "arch = megalodon\nmodel_dim = 16\n# comment line\nlr = 0.0003\n");
    int64_t rng[4] = {INT64_MIN, -1, 0x123456789abcdefLL, INT64_MAX};
    mg_ckpt_meta_set_i64_array(meta, "rng_state", rng, 4);
    int64_t cursor[1] = {42};
    mg_ckpt_meta_set_i64_array(meta, "loader_cursor", cursor, 1); /* an array of one stays an array */
    mg_ckpt_meta_set_i64_array(meta, "empty_cursor", NULL, 0);
    mg_ckpt_meta_set_i64(meta, "micro_step", -17);
    mg_ckpt_meta_set_f64(meta, "lr_scale", 0.1 + 0.2);
    double sched[3] = {1e-300, -0.0, 3.141592653589793};
    mg_ckpt_meta_set_f64_array(meta, "schedule", sched, 3);
    mg_ckpt_meta_set_str(meta, "data_mixture", "dirA:0.95,dirB:0.05\nline two \xc3\xa9");
}

HDF5_ONLY static int meta_equal(const MgCkptMeta *a, const MgCkptMeta *b, char *why, size_t n) {
    if (a->step != b->step || a->tokens_seen != b->tokens_seen) return snprintf(why, n, "step/tokens"), 0;
    if (strcmp(a->config_text ? a->config_text : "", b->config_text ? b->config_text : ""))
        return snprintf(why, n, "config"), 0;
    if (a->n_extra != b->n_extra) return snprintf(why, n, "n_extra %d vs %d", a->n_extra, b->n_extra), 0;
    for (int i = 0; i < a->n_extra; i++) {
        const MgMetaEntry *x = &a->extra[i], *y = &b->extra[i]; /* order is preserved */
        if (strcmp(x->name, y->name) || x->type != y->type || x->n != y->n || x->is_array != y->is_array)
            return snprintf(why, n, "entry %d: %s/%d/%lld/%d vs %s/%d/%lld/%d", i, x->name, x->type, (long long)x->n,
                            x->is_array, y->name, y->type, (long long)y->n, y->is_array),
                   0;
        int same = x->type == MG_META_STR   ? !strcmp(x->str, y->str)
                   : x->type == MG_META_I64 ? !x->n || !memcmp(x->i64, y->i64, 8 * (size_t)x->n)
                                            : !x->n || !memcmp(x->f64, y->f64, 8 * (size_t)x->n);
        if (!same) return snprintf(why, n, "entry %s value", x->name), 0;
    }
    return 1;
}

/* A path in the test directory; the buffer is reused after 8 calls. */
static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k = 0;
    char *p = buf[k++ & 7];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

HDF5_ONLY static int64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

HDF5_ONLY static void copy_file(const char *src, const char *dst, int64_t len) {
    FILE *a = mg_fopen(src, "rb"), *b = mg_fopen(dst, "wb");
    char buf[65536];
    int64_t left = len;
    size_t r;
    while (left > 0 && (r = fread(buf, 1, (size_t)MG_MIN(left, (int64_t)sizeof(buf)), a)) > 0) {
        fwrite(buf, 1, r, b);
        left -= (int64_t)r;
    }
    fclose(a);
    fclose(b);
}

HDF5_ONLY static void flip_byte(const char *path, int64_t off) {
    int fd = open(path, O_RDWR);
    unsigned char c;
    if (pread(fd, &c, 1, off) == 1) {
        c ^= 0x5a;
        if (pwrite(fd, &c, 1, off) != 1) perror("pwrite");
    }
    close(fd);
}


/* ---------------------------------------------------------------------------------------------------- */

static void test_crc(void) {
    if (!mg_crc32_available()) {
        printf("# skip CRC32 tests: this build has no zlib\n");
        return;
    }
    /* Independently published values: the CRC-32 "check" value of the catalogue of CRC parameters, and
     * zlib.crc32(b"The quick brown fox jumps over the lazy dog"). */
    uint32_t c = mg_crc32_update(0, "123456789", 9);
    tu_check(c == 0xCBF43926u, "crc32_check_value", "crc32(\"123456789\") = 0x%08x, expected 0xcbf43926", c);
    const char *fox = "The quick brown fox jumps over the lazy dog";
    uint32_t cf = mg_crc32_update(0, fox, strlen(fox));
    uint32_t c0 = mg_crc32_update(0x12345678u, NULL, 0); /* empty data leaves the CRC as it is */
    tu_check(cf == 0x414FA339u && c0 == 0x12345678u && mg_crc32_update(0, "", 0) == 0, "crc32_known_values",
             "fox 0x%08x (expected 0x414fa339), empty update 0x%08x", cf, c0);
    /* combine over megabytes (as the scan combines its 4 MiB blocks) equals the CRC of the concatenation */
    size_t big = (size_t)5 << 20;
    unsigned char *bb = mg_malloc(big);
    for (size_t i = 0; i < big; i++) bb[i] = (unsigned char)(i * 2654435761u >> 13);
    uint32_t whole_big = mg_crc32_update(0, bb, big);
    size_t cut[2] = {(size_t)4 << 20, 12345};
    int big_ok = 1;
    for (int k = 0; k < 2; k++)
        big_ok &= mg_crc32_combine(mg_crc32_update(0, bb, cut[k]), mg_crc32_update(0, bb + cut[k], big - cut[k]),
                                   big - cut[k]) == whole_big;
    free(bb);
    tu_check(big_ok, "crc32_combine_megabytes", "5 MiB split at 4 MiB and at 12345 bytes");
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(tu_uniform() * 256);
    int bad = 0;
    for (int split = 0; split <= 1000; split += 37) {
        uint32_t whole = mg_crc32_update(0, buf, 1000);
        uint32_t a = mg_crc32_update(0, buf, (size_t)split),
                 b = mg_crc32_update(0, buf + split, (size_t)(1000 - split));
        uint32_t inc = mg_crc32_update(a, buf + split, (size_t)(1000 - split));
        if (mg_crc32_combine(a, b, (uint64_t)(1000 - split)) != whole || inc != whole) bad++;
    }
    tu_check(bad == 0, "crc32_combine_and_incremental", "%d of 28 splits wrong", bad);
}

static void test_meta_getters(void) {
    MgCkptMeta m;
    fill_meta(&m, 5);
    char err[256] = "";
    int64_t x = 0, arr[4];
    double d = 0;
    int ok = mg_ckpt_meta_get_i64(&m, "micro_step", &x, err, sizeof(err)) == 0 && x == -17;
    ok &= mg_ckpt_meta_get_i64_array(&m, "rng_state", arr, 4, err, sizeof(err)) == 0 && arr[0] == INT64_MIN;
    ok &= mg_ckpt_meta_get_f64(&m, "lr_scale", &d, err, sizeof(err)) == 0 && d == 0.1 + 0.2;
    ok &= mg_ckpt_meta_get_str(&m, "data_mixture") != NULL;
    ok &= mg_ckpt_meta_get_i64(&m, "loader_cursor", &x, err, sizeof(err)) == 0 && x == 42;
    tu_check(ok, "meta_getters", "%s", err);
    int bad1 = mg_ckpt_meta_get_i64_array(&m, "rng_state", arr, 3, err, sizeof(err)) == -1 && strstr(err, "4 values");
    int bad2 = mg_ckpt_meta_get_f64(&m, "rng_state", &d, err, sizeof(err)) == -1 && strstr(err, "int64");
    int bad3 = mg_ckpt_meta_get_i64(&m, "nope", &x, err, sizeof(err)) == -1 && strstr(err, "no attribute 'nope'");
    tu_check(bad1 && bad2 && bad3, "meta_getter_errors", "last message: %s", err);
    mg_ckpt_meta_set_i64(&m, "micro_step", 3); /* replace keeps one entry */
    int n = m.n_extra;
    tu_check(mg_ckpt_meta_get_i64(&m, "micro_step", &x, err, sizeof(err)) == 0 && x == 3 && n == 7, "meta_replace",
             "n_extra %d", n);
    mg_ckpt_meta_free(&m);
}

#ifndef MG_HAVE_HDF5

static int g_no_hdf5_calls = 0;
static int no_hdf5_get(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, float *dst, char *err,
                       size_t errlen) {
    (void)ctx, (void)group, (void)p, (void)start, (void)count, (void)dst, (void)err, (void)errlen;
    return g_no_hdf5_calls++, -1;
}
static int no_hdf5_put(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, const float *src,
                       char *err, size_t errlen) {
    (void)ctx, (void)group, (void)p, (void)start, (void)count, (void)src, (void)err, (void)errlen;
    return g_no_hdf5_calls++, -1;
}

static void test_no_hdf5(void) {
    MgConfig c;
    make_cfg(&c, 32, 1, 8);
    State s;
    state_init(&s, &c);
    MgCkptMeta meta;
    fill_meta(&meta, 1);
    char err[512] = "";
    int rc = mg_ckpt_save(tmp_path("x.h5"), &s.t, s.p, s.m, s.v, &meta, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "no HDF5") && strstr(err, "libhdf5-dev"), "no_hdf5_save", "%s", err);
    rc = mg_ckpt_load(tmp_path("x.h5"), &s.t, s.p, NULL, NULL, NULL, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "no HDF5"), "no_hdf5_load", "%s", err);
    rc = mg_ckpt_dir_check_writable(g_dir, 0, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "no HDF5"), "no_hdf5_dir_check", "%s", err);
    MgCkptTensorIO io = {NULL, no_hdf5_get, no_hdf5_put, 0, NULL};
    int rc1 = mg_ckpt_save_io(tmp_path("x.h5"), &s.t, &io, 1, &meta, err, sizeof(err));
    int ok1 = rc1 == -1 && strstr(err, "no HDF5");
    int rc2 = mg_ckpt_load_io(tmp_path("x.h5"), &s.t, &io, 1, NULL, err, sizeof(err));
    int ok2 = rc2 == -1 && strstr(err, "no HDF5");
    int rc3 = mg_ckpt_dir_save_io(g_dir, &s.t, &io, 1, &meta, 2, NULL, 0, err, sizeof(err));
    tu_check(ok1 && ok2 && rc3 == -1 && strstr(err, "no HDF5") && g_no_hdf5_calls == 0, "no_hdf5_tensor_io",
             "%d tensor I/O calls; %s", g_no_hdf5_calls, err);
    mg_ckpt_meta_free(&meta);
    state_free_arrays(&s);
    mg_param_table_free(&s.t);
}

#else

static int expect_load_error(const char *name, const char *path, const State *s, int with_opt, const char *needle) {
    State d;
    state_zero_like(&d, s);
    char err[1024] = "";
    int rc = mg_ckpt_load(path, &s->t, d.p, with_opt ? d.m : NULL, with_opt ? d.v : NULL, NULL, err, sizeof(err));
    int ok = rc == -1 && err[0] && (!needle || strstr(err, needle));
    tu_check(ok, name, "rc %d, message: %s", rc, err);
    state_free_arrays(&d);
    return ok;
}

static void test_round_trip(const State *s, const char *path) {
    MgCkptMeta meta, back;
    fill_meta(&meta, 1234);
    char err[1024] = "", why[512] = "";
    int rc = mg_ckpt_save(path, &s->t, s->p, s->m, s->v, &meta, err, sizeof(err));
    tu_check(rc == 0, "save", "%s", err);
    MgCkptStats st = mg_ckpt_last_stats();
    tu_check(st.bytes == (double)s->t.total * 12 && st.seconds > 0, "save_stats", "bytes %.0f expected %lld", st.bytes,
             (long long)s->t.total * 12);
    tu_check(tu_count_files(g_dir, "rt\\.h5\\..*\\.tmp$", 0) == 0, "save_leaves_no_tmp", "temp file gone");
    State d;
    state_zero_like(&d, s);
    rc = mg_ckpt_load(path, &s->t, d.p, d.m, d.v, &back, err, sizeof(err));
    tu_check(rc == 0 && state_equal(s, &d, 1), "round_trip_bit_exact", "rc %d %s", rc, err);
    tu_check(rc == 0 && meta_equal(&meta, &back, why, sizeof(why)) && back.format_version == 1 && back.has_optimizer,
             "round_trip_meta", "%s", why);
    mg_ckpt_meta_free(&back);
    /* read_meta without the table */
    rc = mg_ckpt_read_meta(path, &back, err, sizeof(err));
    tu_check(rc == 0 && meta_equal(&meta, &back, why, sizeof(why)), "read_meta", "%s %s", err, why);
    mg_ckpt_meta_free(&back);
    /* weights only from a full checkpoint */
    memset(d.p, 0, (size_t)s->t.total * 4);
    rc = mg_ckpt_load(path, &s->t, d.p, NULL, NULL, NULL, err, sizeof(err));
    tu_check(rc == 0 && state_equal(s, &d, 0), "load_weights_only_from_full", "%s", err);
    /* weights-only checkpoint */
    const char *wo = tmp_path("weights_only.h5");
    rc = mg_ckpt_save(wo, &s->t, s->p, NULL, NULL, &meta, err, sizeof(err));
    memset(d.p, 0, (size_t)s->t.total * 4);
    int rc2 = mg_ckpt_load(wo, &s->t, d.p, NULL, NULL, &back, err, sizeof(err));
    tu_check(rc == 0 && rc2 == 0 && state_equal(s, &d, 0) && !back.has_optimizer, "weights_only_round_trip", "%s", err);
    mg_ckpt_meta_free(&back);
    tu_check(file_size(wo) < file_size(path) / 2, "weights_only_is_smaller", "%lld vs %lld", (long long)file_size(wo),
             (long long)file_size(path));
    expect_load_error("weights_only_refuses_optimizer", wo, s, 1, "weights only");
    mg_ckpt_meta_free(&meta);
    state_free_arrays(&d);
}

/* Attributes beyond the 64 KiB an object header message can hold (e.g. per-shard data-loader cursors). */
static void test_large_attributes(const State *s) {
    const char *path = tmp_path("large_attrs.h5");
    MgCkptMeta meta, back;
    fill_meta(&meta, 3);
    int64_t n = 100000;
    int64_t *cur = mg_malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) cur[i] = i * 7919 - 3;
    mg_ckpt_meta_set_i64_array(&meta, "shard_cursors", cur, n);
    char *big = mg_malloc(200001);
    for (int i = 0; i < 200000; i++) big[i] = (char)('a' + i % 26);
    big[200000] = 0;
    mg_ckpt_meta_set_config(&meta, big);
    for (int i = 0; i < 40; i++) {
        char name[32];
        snprintf(name, sizeof(name), "extra_%02d", i);
        mg_ckpt_meta_set_f64(&meta, name, i * 0.5);
    }
    char err[1024] = "", why[512] = "";
    int rc = mg_ckpt_save(path, &s->t, s->p, NULL, NULL, &meta, err, sizeof(err));
    int rc2 = rc ? -1 : mg_ckpt_read_meta(path, &back, err, sizeof(err));
    tu_check(rc == 0 && rc2 == 0 && meta_equal(&meta, &back, why, sizeof(why)), "large_attributes_round_trip",
             "100000-element int64 array, 200 KB config, 40 more scalars: %s %s", err, why);
    if (rc2 == 0) mg_ckpt_meta_free(&back);
    mg_ckpt_meta_free(&meta);
    free(cur);
    free(big);
}

/* Slices written in arbitrary pieces (as ranks of a sharded optimizer would) with a CRC combined from
 * the pieces' CRCs must give the same file content as a whole-tensor write. */
static void test_sliced_writer(const State *s) {
    const char *path = tmp_path("sliced.h5");
    MgCkptMeta meta;
    fill_meta(&meta, 7);
    char err[1024] = "";
    MgCkptWriter *w = mg_ckpt_writer_begin(path, &meta, err, sizeof(err));
    int ok = w != NULL;
    const char *groups[3] = {"model", "optimizer/m", "optimizer/v"};
    const float *bases[3] = {s->p, s->m, s->v};
    int pieces_total = 0;
    for (int g = 0; g < 3 && ok; g++)
        for (int i = 0; i < s->t.count && ok; i++) {
            const MgParam *P = &s->t.params[i];
            const float *x = bases[g] + P->offset;
            /* random cut points */
            int64_t cuts[6];
            int nc = 0;
            cuts[nc++] = 0;
            for (int k = 0; k < 4; k++) cuts[nc++] = (int64_t)(tu_uniform() * (double)P->numel);
            cuts[nc++] = P->numel;
            for (int a = 1; a < nc; a++)
                for (int b = a; b > 0 && cuts[b] < cuts[b - 1]; b--) {
                    int64_t tmp = cuts[b];
                    cuts[b] = cuts[b - 1];
                    cuts[b - 1] = tmp;
                }
            uint32_t crc = 0;
            for (int k = 0; k + 1 < nc; k++) {
                int64_t len = cuts[k + 1] - cuts[k];
                uint32_t pc = mg_crc32_update(0, x + cuts[k], (size_t)len * 4);
                crc = k == 0 ? pc : mg_crc32_combine(crc, pc, (uint64_t)len * 4);
            }
            ok = mg_ckpt_writer_add(w, groups[g], P, crc, err, sizeof(err)) == 0;
            /* write the pieces in reverse order to show order does not matter */
            for (int k = nc - 2; k >= 0 && ok; k--, pieces_total++)
                ok = mg_ckpt_writer_put(w, groups[g], P, cuts[k], cuts[k + 1] - cuts[k], x + cuts[k], err,
                                        sizeof(err)) == 0;
        }
    if (ok)
        ok = mg_ckpt_writer_commit(w, err, sizeof(err)) == 0;
    else
        mg_ckpt_writer_abort(w);
    State d;
    state_zero_like(&d, s);
    int rc = ok ? mg_ckpt_load(path, &s->t, d.p, d.m, d.v, NULL, err, sizeof(err)) : -1;
    tu_check(ok && rc == 0 && state_equal(s, &d, 1), "sliced_writer_bit_exact", "%d pieces; %s", pieces_total, err);
    state_free_arrays(&d);
    mg_ckpt_meta_free(&meta);
}

/* The file is readable without our code: h5py reads a tensor and the attributes, and zlib.crc32 of each
 * dataset's bytes equals its crc32 attribute (the documented definition). */
static void test_h5py(const State *s, const char *path) {
    if (system("/usr/bin/python3 -c 'import h5py, numpy' > /dev/null 2>&1") != 0) {
        tu_skip("h5py_interoperability", "/usr/bin/python3 cannot import h5py and numpy "
                                         "(install python3-h5py python3-numpy: make deps)");
        return;
    }
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 -c '\n"
             "import sys, zlib, h5py, numpy as np\n"
             "f = h5py.File(sys.argv[1], \"r\")\n"
             "x = f[\"model/layers.1.attn.wz.weight\"][()]\n"
             "print(\"sum %%.17g\" %% np.sum(x.astype(np.float64)))\n"
             "print(\"shape\", \"x\".join(map(str, x.shape)), x.dtype)\n"
             "bad = 0; n = 0\n"
             "for g in (\"model\", \"optimizer/m\", \"optimizer/v\"):\n"
             "    for k, d in f[g].items():\n"
             "        n += 1; bad += zlib.crc32(d[()].astype(\"<f4\").tobytes()) != int(d.attrs[\"crc32\"])\n"
             "print(\"crc\", n, bad)\n"
             "s = lambda x: x.decode() if isinstance(x, bytes) else x\n"
             "print(\"attrs\", s(f.attrs[\"format\"]), int(f.attrs[\"format_version\"]), int(f.attrs[\"step\"]), "
             "int(f.attrs[\"rng_state\"][0]), s(f.attrs[\"data_mixture\"]).split(\",\")[0])\n"
             "' '%s' 2>&1",
             path);
    FILE *f = popen(cmd, "r");
    char line[512];
    double sum = NAN;
    int ncrc = -1, nbad = -1, step = -1, fv = -1;
    long long rng0 = 0;
    char shape[64] = "", dtype[32] = "", fmt[64] = "", mix[64] = "", out[2048] = "";
    while (f && fgets(line, sizeof(line), f)) {
        strncat(out, line, sizeof(out) - strlen(out) - 1);
        sscanf(line, "sum %lf", &sum);
        sscanf(line, "shape %63s %31s", shape, dtype);
        sscanf(line, "crc %d %d", &ncrc, &nbad);
        sscanf(line, "attrs %63s %d %d %lld %63s", fmt, &fv, &step, &rng0, mix);
    }
    int st = f ? pclose(f) : -1;
    const MgParam *P = mg_param_get(&s->t, "layers.1.attn.wz.weight");
    double ref = 0;
    for (int64_t i = 0; i < P->numel; i++) ref += s->p[P->offset + i];
    char want_shape[64];
    snprintf(want_shape, sizeof(want_shape), "%lldx%lld", (long long)P->shape[0], (long long)P->shape[1]);
    tu_check(st == 0 && fabs(sum - ref) <= 1e-9 * (1 + fabs(ref)) && !strcmp(shape, want_shape) &&
                 !strcmp(dtype, "float32"),
             "h5py_reads_tensor", "sum %.17g vs %.17g, shape %s; python said: %s", sum, ref, shape, out);
    tu_check(ncrc == 3 * s->t.count && nbad == 0, "h5py_zlib_crc32_matches", "%d datasets, %d mismatches", ncrc, nbad);
    tu_check(!strcmp(fmt, "megalodon-checkpoint") && fv == 1 && step == 1234 && rng0 == INT64_MIN &&
                 !strcmp(mix, "dirA:0.95"),
             "h5py_reads_attributes", "%s", out);
    if (access("/usr/bin/h5dump", X_OK) == 0) {
        snprintf(cmd, sizeof(cmd), "/usr/bin/h5dump -H '%s' > /dev/null 2>&1", path);
        tu_check(system(cmd) == 0, "h5dump_reads_file", "h5dump -H exit status 0");
    } else {
        tu_skip("h5dump_reads_file", "/usr/bin/h5dump not found (install hdf5-tools: make deps)");
    }

    /* The other direction: a file written by h5py from the documented format alone (h5py defaults:
     * variable-length strings, no creation order, no crc32 attributes) loads, bit-exact. */
    const char *py_file = tmp_path("written_by_h5py.h5");
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 -c '\n"
             "import sys, h5py, numpy as np\n"
             "src = h5py.File(sys.argv[1], \"r\"); dst = h5py.File(sys.argv[2], \"w\")\n"
             "for k, v in src.attrs.items():\n"
             "    dst.attrs[k] = v.decode() if isinstance(v, bytes) else v\n"
             "for g in (\"model\", \"optimizer/m\", \"optimizer/v\"):\n"
             "    for k, d in src[g].items():\n"
             "        dst[g + \"/\" + k] = np.asarray(d[()], dtype=np.float32)\n"
             "' '%s' '%s' 2>&1",
             path, py_file);
    int st2 = system(cmd);
    State d;
    state_zero_like(&d, s);
    MgCkptMeta back;
    char err[1024] = "";
    int rc = st2 == 0 ? mg_ckpt_load(py_file, &s->t, d.p, d.m, d.v, &back, err, sizeof(err)) : -1;
    int64_t rng[4] = {0};
    const char *mix2 = rc == 0 ? mg_ckpt_meta_get_str(&back, "data_mixture") : NULL;
    int meta_ok = rc == 0 && back.step == 1234 && back.config_text && strstr(back.config_text, "lr = 0.0003") &&
                  mg_ckpt_meta_get_i64_array(&back, "rng_state", rng, 4, err, sizeof(err)) == 0 &&
                  rng[0] == INT64_MIN && mix2 && !strncmp(mix2, "dirA:0.95", 9);
    tu_check(st2 == 0 && rc == 0 && state_equal(s, &d, 1) && meta_ok, "h5py_written_file_loads",
             "python status %d, load rc %d %s", st2, rc, err);
    if (rc == 0) mg_ckpt_meta_free(&back);
    state_free_arrays(&d);
}

static void test_bad_files(const State *s, const char *good) {
    expect_load_error("missing_file", tmp_path("does_not_exist.h5"), s, 1, "does not exist");
    expect_load_error("directory_instead_of_file", g_dir, s, 1, "is a directory");
    const char *rnd = tmp_path("random.h5");
    FILE *f = mg_fopen(rnd, "wb");
    for (int i = 0; i < 5000; i++) fputc((int)(tu_uniform() * 256), f);
    fclose(f);
    expect_load_error("random_bytes_not_hdf5", rnd, s, 1, "not an HDF5 file");
    f = mg_fopen(tmp_path("empty.h5"), "wb");
    fclose(f);
    expect_load_error("empty_file", tmp_path("empty.h5"), s, 1, "not an HDF5 file");

    /* truncated copies */
    int64_t size = file_size(good);
    int64_t points[] = {8, 100, 1000, size / 8, size / 4, size / 2, 3 * size / 4, size - 4096, size - 1};
    int ok = 0, n = (int)(sizeof(points) / sizeof(points[0]));
    char last[1024] = "";
    for (int i = 0; i < n; i++) {
        const char *tp = tmp_path("trunc.h5");
        copy_file(good, tp, points[i]);
        State d;
        state_zero_like(&d, s);
        int rc = mg_ckpt_load(tp, &s->t, d.p, d.m, d.v, NULL, last, sizeof(last));
        ok += rc == -1 && last[0];
        state_free_arrays(&d);
    }
    tu_check(ok == n, "truncated_files_refused", "%d of %d truncation points refused; e.g. %s", ok, n, last);
}

/* HDF5 keeps no checksum on raw data: a flipped byte inside a tensor is read back silently. The per-tensor
 * CRC32 attribute makes the load fail with a clear message. */
static void test_corrupt_data(const State *s, const char *good) {
    const char *cp = tmp_path("flipped.h5");
    copy_file(good, cp, file_size(good));
    hid_t file = H5Fopen(cp, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(file, "model/embed.weight", H5P_DEFAULT);
    haddr_t off = H5Dget_offset(ds);
    hsize_t bytes = H5Dget_storage_size(ds);
    H5Dclose(ds);
    H5Fclose(file);
    flip_byte(cp, (int64_t)off + (int64_t)bytes / 2);
    /* HDF5 by itself: */
    file = H5Fopen(cp, H5F_ACC_RDONLY, H5P_DEFAULT);
    ds = H5Dopen2(file, "model/embed.weight", H5P_DEFAULT);
    const MgParam *P = mg_param_get(&s->t, "embed.weight");
    float *buf = mg_malloc((size_t)P->numel * 4);
    herr_t hr = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    int differs = memcmp(buf, s->p + P->offset, (size_t)P->numel * 4) != 0;
    H5Dclose(ds);
    H5Fclose(file);
    free(buf);
    printf("# HDF5 alone read the damaged tensor: %s, data %s\n", hr >= 0 ? "without error" : "with an error",
           differs ? "differs" : "same");
    tu_check(hr >= 0 && differs, "hdf5_alone_misses_raw_data_damage", "(this documents why the CRC exists)");
    expect_load_error("flipped_data_byte_caught_by_crc32", cp, s, 1, "CRC32");

    /* Random single-byte flips anywhere in the file, each loaded in a child process: the outcome must be a
     * clean error or (flip in unused bytes) bit-identical data, never a crash or silently wrong data. */
    int64_t size = file_size(good);
    int clean_err = 0, same = 0, wrong = 0, crashed = 0, trials = 48;
    for (int t = 0; t < trials; t++) {
        int64_t pos = t < 8 ? (int64_t)(tu_uniform() * 2048) : (int64_t)(tu_uniform() * (double)size);
        copy_file(good, cp, size);
        flip_byte(cp, pos);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            State d;
            state_zero_like(&d, s);
            char err[1024];
            int rc = mg_ckpt_load(cp, &s->t, d.p, d.m, d.v, NULL, err, sizeof(err));
            _exit(rc == -1 ? (err[0] ? 10 : 13) : state_equal(s, &d, 1) ? 11 : 12);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status))
            crashed++;
        else if (WEXITSTATUS(status) == 10)
            clean_err++;
        else if (WEXITSTATUS(status) == 11)
            same++;
        else
            wrong++;
    }
    tu_check(crashed == 0 && wrong == 0, "random_byte_flips_never_crash_or_misread",
             "%d trials: %d clean errors, %d harmless (unused bytes), %d wrong data, %d crashes", trials, clean_err,
             same, wrong, crashed);
}

/* Rewrite a root attribute / a tensor in place with HDF5 (to fabricate files our writer never makes). */
static void set_format_version(const char *path, int64_t v) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
}

static void inject_nan(const char *path, const char *dpath, int64_t numel, int64_t at, int fix_crc) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, dpath, H5P_DEFAULT);
    float *x = mg_malloc((size_t)numel * 4);
    H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
    x[at] = NAN;
    x[at + 1] = INFINITY;
    H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
    if (fix_crc) {
        uint32_t c = mg_crc32_update(0, x, (size_t)numel * 4);
        hid_t a = H5Aopen(ds, "crc32", H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_UINT32, &c);
        H5Aclose(a);
    }
    free(x);
    H5Dclose(ds);
    H5Fclose(f);
}

static void test_validation(const State *s, const char *good) {
    char err[1024];
    /* a table from a different config */
    MgConfig c2;
    make_cfg(&c2, 64, 2, 32); /* model_dim 32 instead of 16 */
    State o;
    state_init(&o, &c2);
    int rc = mg_ckpt_load(good, &o.t, o.p, o.m, o.v, NULL, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "embed.weight") && strstr(err, "[64, 16]") && strstr(err, "[64, 32]") &&
                 strstr(err, "config"),
             "shape_mismatch_names_tensor_and_shapes", "%s", err);
    state_free_arrays(&o);
    mg_param_table_free(&o.t);
    make_cfg(&c2, 64, 3, 16); /* one more layer */
    state_init(&o, &c2);
    rc = mg_ckpt_load(good, &o.t, o.p, o.m, o.v, NULL, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "layers.2.") && strstr(err, "config"), "missing_tensor_named", "%s", err);
    state_free_arrays(&o);
    mg_param_table_free(&o.t);
    make_cfg(&c2, 64, 2, 16);
    c2.share_emb = 1; /* no lm_head */
    state_init(&o, &c2);
    rc = mg_ckpt_load(good, &o.t, o.p, o.m, o.v, NULL, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "lm_head.weight") && strstr(err, "does not have"), "extra_tensor_named", "%s",
             err);
    state_free_arrays(&o);
    mg_param_table_free(&o.t);

    /* newer format version */
    const char *nv = tmp_path("newer.h5");
    copy_file(good, nv, file_size(good));
    set_format_version(nv, 2);
    expect_load_error("newer_format_version_refused", nv, s, 1, "newer version of megalodon (format v2 > v1): upgrade");
    MgCkptMeta m;
    rc = mg_ckpt_read_meta(nv, &m, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "v2 > v1"), "newer_format_version_read_meta", "%s", err);

    /* not our format */
    hid_t f = H5Fcreate(tmp_path("other.h5"), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    expect_load_error("foreign_hdf5_file_refused", tmp_path("other.h5"), s, 1, "not a megalodon checkpoint");

    /* NaN/Inf */
    const MgParam *P = mg_param_get(&s->t, "layers.0.ffn.fc2.weight");
    const char *np = tmp_path("nan.h5");
    copy_file(good, np, file_size(good));
    inject_nan(np, "model/layers.0.ffn.fc2.weight", P->numel, 5, 1);
    expect_load_error("nan_in_parameter_refused", np, s, 1, "layers.0.ffn.fc2.weight' in checkpoint");
    State d;
    state_zero_like(&d, s);
    mg_ckpt_load(np, &s->t, d.p, d.m, d.v, NULL, err, sizeof(err));
    tu_check(strstr(err, "2 NaN/Inf") && strstr(err, "element 5"), "nan_message_counts", "%s", err);
    state_free_arrays(&d);
    /* saving NaN is refused too, and leaves nothing behind */
    State bad;
    state_zero_like(&bad, s);
    memcpy(bad.p, s->p, (size_t)s->t.total * 4);
    memcpy(bad.m, s->m, (size_t)s->t.total * 4);
    memcpy(bad.v, s->v, (size_t)s->t.total * 4);
    bad.v[s->t.total - 1] = NAN;
    MgCkptMeta meta;
    fill_meta(&meta, 9);
    rc = mg_ckpt_save(tmp_path("nan_save.h5"), &s->t, bad.p, bad.m, bad.v, &meta, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "optimizer/v/lm_head.weight") && access(tmp_path("nan_save.h5"), F_OK) != 0 &&
                 tu_count_files(g_dir, "nan_save\\.h5\\..*\\.tmp$", 0) == 0,
             "nan_save_refused", "%s", err);
    state_free_arrays(&bad);
    mg_ckpt_meta_free(&meta);
}

/* ---- run directory ---- */

static int latest_step(const char *dir, char *path, size_t n) {
    char err[512];
    if (mg_ckpt_dir_latest(dir, path, n, err, sizeof(err)) != 0) return -1;
    MgCkptMeta m;
    if (mg_ckpt_read_meta(path, &m, err, sizeof(err))) return -1;
    int64_t st = m.step;
    mg_ckpt_meta_free(&m);
    return (int)st;
}

static int loads_ok(const char *path, const State *s, int64_t *step) {
    State d;
    state_zero_like(&d, s);
    char err[1024];
    MgCkptMeta m;
    int rc = mg_ckpt_load(path, &s->t, d.p, d.m, d.v, &m, err, sizeof(err));
    if (rc == 0 && step) *step = m.step;
    if (rc == 0)
        mg_ckpt_meta_free(&m);
    else
        printf("# load of %s failed: %s\n", path, err);
    int ok = rc == 0 && state_equal(s, &d, 1);
    state_free_arrays(&d);
    return ok;
}

/* ---- staged tensor I/O ---- */

/* A stand-in for an accelerator: the tensors live in float64 "device" arrays (table layout) that only
 * get/put touch, converting to and from float32. Every request is recorded: how often each element was
 * asked for, the largest count, requests outside the tensor or above the bound, which tensors were put. */
typedef struct {
    const MgParamTable *t;
    double *arr[3];
    int64_t bound;             /* the documented staging bound the requests must respect */
    int64_t max_count, calls;  /* largest count asked for, number of calls */
    int bad_requests;          /* outside the tensor, or count > bound, or count == 0 */
    int32_t *seen;             /* per group and element: times asked */
    unsigned char *put_tensor; /* per group and tensor index: put at least once */
    int64_t fail_at;           /* the call (0-based) that fails with fail_msg; -1: none */
    int drift;                 /* get: an element asked for a second time comes back different */
} Dev;

static void dev_init(Dev *d, const MgParamTable *t, const State *from, int64_t bound) {
    memset(d, 0, sizeof(*d));
    d->t = t;
    size_t n = (size_t)t->total;
    for (int g = 0; g < 3; g++) {
        d->arr[g] = tu_dalloc(n);
        const float *src = !from ? NULL : g == 0 ? from->p : g == 1 ? from->m : from->v;
        for (size_t i = 0; src && i < n; i++) d->arr[g][i] = src[i];
    }
    d->bound = bound;
    d->seen = mg_calloc(3 * n, sizeof(int32_t));
    d->put_tensor = mg_calloc(3 * (size_t)t->count, 1);
    d->fail_at = -1;
}

static void dev_free(Dev *d) {
    for (int g = 0; g < 3; g++) free(d->arr[g]);
    free(d->seen);
    free(d->put_tensor);
}

/* Bookkeeping shared by get and put; returns -1 when this call is the one to fail. */
static int dev_request(Dev *d, int group, const MgParam *p, int64_t start, int64_t count, char *err, size_t errlen) {
    int64_t call = d->calls++;
    if (call == d->fail_at) {
        snprintf(err, errlen, "device lost (injected at call %lld)", (long long)call);
        return -1;
    }
    if (group < 0 || group > 2 || start < 0 || count <= 0 || start + count > p->numel || count > d->bound)
        d->bad_requests++;
    d->max_count = MG_MAX(d->max_count, count);
    for (int64_t i = 0; i < count; i++) d->seen[(size_t)group * (size_t)d->t->total + (size_t)(p->offset + start + i)]++;
    return 0;
}

static int dev_get(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, float *dst, char *err,
                   size_t errlen) {
    Dev *d = ctx;
    if (dev_request(d, group, p, start, count, err, errlen)) return -1;
    const double *x = d->arr[group] + p->offset + start;
    for (int64_t i = 0; i < count; i++) {
        dst[i] = (float)x[i];
        if (d->drift && d->seen[(size_t)group * (size_t)d->t->total + (size_t)(p->offset + start + i)] > 1)
            dst[i] += 1.0f;
    }
    return 0;
}

static int dev_put(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, const float *src, char *err,
                   size_t errlen) {
    Dev *d = ctx;
    if (dev_request(d, group, p, start, count, err, errlen)) return -1;
    double *x = d->arr[group] + p->offset + start;
    for (int64_t i = 0; i < count; i++) x[i] = src[i];
    d->put_tensor[(size_t)group * (size_t)d->t->count + (size_t)(p - d->t->params)] = 1;
    return 0;
}

static MgCkptTensorIO dev_io(Dev *d, int64_t stage_elems) {
    MgCkptTensorIO io = {d, dev_get, dev_put, stage_elems, NULL}; /* no view: every tensor through get */
    return io;
}

/* Every element of the first ngroups groups asked for exactly `times` times (a tensor that fits the bound:
 * once; a larger one: twice), counting the tensors larger than the bound. */
static int dev_coverage_ok(const Dev *d, int ngroups, int times_small, int times_large, int *n_large) {
    *n_large = 0;
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < d->t->count; i++) {
            const MgParam *P = &d->t->params[i];
            int large = P->numel > d->bound;
            if (g == 0) *n_large += large;
            int want = g < ngroups ? (large ? times_large : times_small) : 0;
            for (int64_t k = 0; k < P->numel; k++)
                if (d->seen[(size_t)g * (size_t)d->t->total + (size_t)(P->offset + k)] != want) return 0;
        }
    return 1;
}

/* 1 if the device arrays hold exactly the float32 values of s (the first ngroups groups). */
static int dev_equals_state(const Dev *d, const State *s, int ngroups) {
    const float *src[3] = {s->p, s->m, s->v};
    for (int g = 0; g < ngroups; g++)
        for (int64_t i = 0; i < s->t.total; i++)
            if (d->arr[g][i] != (double)src[g][i]) return 0;
    return 1;
}

/* Number of tensors whose stored bytes (read straight from the files at the dataset offsets HDF5 reports)
 * or crc32 attributes differ between two checkpoints of table t; -1 if a file cannot be read. */
static int tensor_bytes_differ(const char *a, const char *b, const MgParamTable *t, int ngroups) {
    const char *path[2] = {a, b};
    hid_t f[2];
    int fd[2];
    for (int k = 0; k < 2; k++) {
        f[k] = H5Fopen(path[k], H5F_ACC_RDONLY, H5P_DEFAULT);
        fd[k] = open(path[k], O_RDONLY);
    }
    int differ = f[0] < 0 || f[1] < 0 || fd[0] < 0 || fd[1] < 0 ? -1 : 0;
    for (int g = 0; g < ngroups && differ >= 0; g++)
        for (int i = 0; i < t->count && differ >= 0; i++) {
            char dpath[256];
            snprintf(dpath, sizeof(dpath), "%s/%s", g == 0 ? "model" : g == 1 ? "optimizer/m" : "optimizer/v",
                     t->params[i].name);
            size_t bytes = (size_t)t->params[i].numel * 4;
            unsigned char *buf[2] = {mg_malloc(bytes + 1), mg_malloc(bytes + 1)};
            unsigned int crc[2] = {0, 0};
            int ok = 1;
            for (int k = 0; k < 2; k++) {
                hid_t ds = H5Dopen2(f[k], dpath, H5P_DEFAULT);
                haddr_t off = ds >= 0 ? H5Dget_offset(ds) : HADDR_UNDEF;
                ok &= ds >= 0 && off != HADDR_UNDEF && H5Dget_storage_size(ds) == bytes &&
                      pread(fd[k], buf[k], bytes, (off_t)off) == (ssize_t)bytes;
                hid_t at = ds >= 0 ? H5Aopen(ds, "crc32", H5P_DEFAULT) : -1;
                ok &= at >= 0 && H5Aread(at, H5T_NATIVE_UINT, &crc[k]) >= 0;
                if (at >= 0) H5Aclose(at);
                if (ds >= 0) H5Dclose(ds);
            }
            if (!ok)
                differ = -1;
            else if (memcmp(buf[0], buf[1], bytes) != 0 || crc[0] != crc[1])
                differ++;
            free(buf[0]);
            free(buf[1]);
        }
    for (int k = 0; k < 2; k++) {
        if (f[k] >= 0) H5Fclose(f[k]);
        if (fd[k] >= 0) close(fd[k]);
    }
    return differ;
}

static void test_tensor_io(const State *s, const char *good) {
    char err[1024] = "";
    MgCkptMeta meta;
    fill_meta(&meta, 1234);
    int64_t largest = 0;
    for (int i = 0; i < s->t.count; i++) largest = MG_MAX(largest, s->t.params[i].numel);
    const int64_t bound = 100; /* smaller than most tensors here, so they go through in ranges */
    Dev d;
    dev_init(&d, &s->t, s, bound);
    MgCkptTensorIO io = dev_io(&d, bound);
    tu_check(mg_ckpt_stage_elems(&s->t, &io) == bound && largest > bound, "stage_elems_bound",
             "bound %lld, largest tensor %lld", (long long)mg_ckpt_stage_elems(&s->t, &io), (long long)largest);
    MgCkptTensorIO io_default = dev_io(&d, 0);
    tu_check(mg_ckpt_stage_elems(&s->t, &io_default) == largest, "stage_elems_default_is_largest_tensor",
             "%lld vs %lld", (long long)mg_ckpt_stage_elems(&s->t, &io_default), (long long)largest);

    /* save from the float64 "device" through a 100-element staging buffer: the same tensor bytes and
     * CRCs as the pointer-based save of the same values */
    const char *dev_file = tmp_path("from_device.h5");
    int rc = mg_ckpt_save_io(dev_file, &s->t, &io, 1, &meta, err, sizeof(err));
    MgCkptStats st = mg_ckpt_last_stats();
    int n_large = 0, cov = dev_coverage_ok(&d, 3, 1, 2, &n_large);
    tu_check(rc == 0 && tensor_bytes_differ(good, dev_file, &s->t, 3) == 0, "save_io_same_tensor_bytes_as_save",
             "rc %d %s", rc, err);
    tu_check(rc == 0 && d.max_count == bound && d.bad_requests == 0 && cov && n_large > 0,
             "save_io_requests_within_bound",
             "%lld calls, largest %lld (bound %lld), %d bad; each element asked once (twice in the %d tensors "
             "larger than the bound): %s",
             (long long)d.calls, (long long)d.max_count, (long long)bound, d.bad_requests, n_large,
             cov ? "yes" : "no");
    tu_check(rc == 0 && st.bytes == (double)s->t.total * 12 && st.xfer_seconds > 0, "save_io_stats",
             "bytes %.0f, get %.6f s", st.bytes, st.xfer_seconds);
    dev_free(&d);

    /* load into a zeroed device, through the same bound: bit-exact, requests within the bound; both files */
    const char *files[2] = {dev_file, good};
    for (int k = 0; k < 2; k++) {
        dev_init(&d, &s->t, NULL, bound);
        io = dev_io(&d, bound);
        MgCkptMeta back;
        char why[512] = "";
        rc = mg_ckpt_load_io(files[k], &s->t, &io, 1, &back, err, sizeof(err));
        cov = dev_coverage_ok(&d, 3, 1, 1, &n_large);
        tu_check(rc == 0 && dev_equals_state(&d, s, 3) && meta_equal(&meta, &back, why, sizeof(why)) &&
                     d.max_count == bound && d.bad_requests == 0 && cov,
                 k == 0 ? "load_io_of_save_io_file_bit_exact" : "load_io_of_pointer_saved_file_bit_exact",
                 "rc %d %s %s; %lld calls, largest %lld, %d bad, each element put once: %s", rc, err, why,
                 (long long)d.calls, (long long)d.max_count, d.bad_requests, cov ? "yes" : "no");
        if (rc == 0) mg_ckpt_meta_free(&back);
        dev_free(&d);
    }
    /* the default bound: one put per tensor, weights only */
    dev_init(&d, &s->t, NULL, largest);
    io = dev_io(&d, 0);
    rc = mg_ckpt_load_io(good, &s->t, &io, 0, NULL, err, sizeof(err));
    cov = dev_coverage_ok(&d, 1, 1, 1, &n_large);
    tu_check(rc == 0 && dev_equals_state(&d, s, 1) && d.calls == s->t.count && d.max_count == largest && cov,
             "load_io_default_bound_one_put_per_tensor", "rc %d %s; %lld calls for %d tensors", rc, err,
             (long long)d.calls, s->t.count);
    dev_free(&d);

    /* get failing midway: the save fails with get's message, no temp file, the previous file intact */
    const char *prev = tmp_path("io_fail.h5");
    rc = mg_ckpt_save(prev, &s->t, s->p, s->m, s->v, &meta, err, sizeof(err));
    dev_init(&d, &s->t, s, bound);
    d.fail_at = 37;
    io = dev_io(&d, bound);
    MgCkptMeta meta2;
    fill_meta(&meta2, 999);
    int rc2 = mg_ckpt_save_io(prev, &s->t, &io, 1, &meta2, err, sizeof(err));
    int64_t step = -1;
    tu_check(rc == 0 && rc2 == -1 && strstr(err, "device lost (injected at call 37)") && strstr(err, prev) &&
                 tu_count_files(g_dir, "io_fail\\.h5\\..*\\.tmp$", 0) == 0 && loads_ok(prev, s, &step) && step == 1234,
             "save_io_get_failure_keeps_previous", "%s", err);
    /* get returning other values the second time it is asked for a range of a large tensor */
    d.fail_at = -1;
    d.drift = 1;
    memset(d.seen, 0, sizeof(int32_t) * 3 * (size_t)s->t.total);
    rc2 = mg_ckpt_save_io(prev, &s->t, &io, 1, &meta2, err, sizeof(err));
    tu_check(rc2 == -1 && strstr(err, "changed while it was being saved") &&
                 tu_count_files(g_dir, "io_fail\\.h5\\..*\\.tmp$", 0) == 0 &&
                 loads_ok(prev, s, &step) && step == 1234,
             "save_io_detects_data_changing_between_passes", "%s", err);
    dev_free(&d);
    mg_ckpt_meta_free(&meta2);

    /* put failing: the load fails with put's message and returns no metadata */
    dev_init(&d, &s->t, NULL, bound);
    d.fail_at = 5;
    io = dev_io(&d, bound);
    MgCkptMeta back;
    rc = mg_ckpt_load_io(good, &s->t, &io, 1, &back, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "device lost (injected at call 5)") && strstr(err, good) && back.n_extra == 0 &&
                 back.config_text == NULL,
             "load_io_put_failure_reports_message", "%s", err);
    dev_free(&d);

    /* a tensor with NaN/Inf is never put; the tensors before it (table order) were */
    const MgParam *P = mg_param_get(&s->t, "layers.0.ffn.fc2.weight");
    int bad_index = (int)(P - s->t.params);
    const char *np = tmp_path("nan_io.h5");
    copy_file(good, np, file_size(good));
    inject_nan(np, "model/layers.0.ffn.fc2.weight", P->numel, 5, 1);
    for (int k = 0; k < 2; k++) {
        int64_t b = k == 0 ? largest : bound;
        dev_init(&d, &s->t, NULL, b);
        io = dev_io(&d, b);
        rc = mg_ckpt_load_io(np, &s->t, &io, 1, NULL, err, sizeof(err));
        int before = 1;
        for (int i = 0; i < bad_index; i++) before &= d.put_tensor[i];
        tu_check(rc == -1 && strstr(err, "NaN/Inf") && before && !d.put_tensor[bad_index] &&
                     !d.put_tensor[bad_index + 1],
                 k == 0 ? "load_io_nan_tensor_never_put" : "load_io_nan_tensor_never_put_ranges",
                 "bound %lld; %d tensors before it put: %s; it: %s; %s", (long long)b, bad_index, before ? "yes" : "no",
                 d.put_tensor[bad_index] ? "put" : "not put", err);
        dev_free(&d);
    }
    mg_ckpt_meta_free(&meta);
}

static void test_rotation_and_latest(const State *s) {
    char dir[400], err[1024] = "", path[600];
    snprintf(dir, sizeof(dir), "%s/run_rot", g_dir);
    int rc = mg_ckpt_dir_check_writable(dir, 1 << 20, err, sizeof(err));
    tu_check(rc == 0, "check_writable_creates_dir", "%s", err);
    MgCkptMeta meta;
    int allok = 1;
    for (int step = 1; step <= 6; step++) {
        fill_meta(&meta, step * 10);
        allok &= mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 3, path, sizeof(path), err, sizeof(err)) == 0;
        mg_ckpt_meta_free(&meta);
    }
    int n = tu_count_files(dir, ".h5$", 0);
    char p40[600], p60[600], p30[600];
    snprintf(p30, sizeof(p30), "%s/ckpt_00000030.h5", dir);
    snprintf(p40, sizeof(p40), "%s/ckpt_00000040.h5", dir);
    snprintf(p60, sizeof(p60), "%s/ckpt_00000060.h5", dir);
    tu_check(allok && n == 3 && access(p30, F_OK) != 0 && access(p40, F_OK) == 0 && !strcmp(path, p60),
             "rotation_keeps_newest_3", "%d files, last %s, %s", n, path, err);
    char got[600];
    tu_check(latest_step(dir, got, sizeof(got)) == 60 && !strcmp(got, p60), "latest_names_newest", "%s", got);
    /* fallback: pointer missing */
    char lp[600];
    snprintf(lp, sizeof(lp), "%s/latest", dir);
    unlink(lp);
    tu_check(latest_step(dir, got, sizeof(got)) == 60, "latest_missing_falls_back_to_scan", "%s", got);
    /* fallback: pointer names a damaged file */
    FILE *f = mg_fopen(lp, "w");
    fprintf(f, "ckpt_00000060.h5\n");
    fclose(f);
    truncate(p60, file_size(p60) / 2);
    tu_check(latest_step(dir, got, sizeof(got)) == 50, "latest_bad_target_falls_back", "%s", got);
    /* pointer names a file that does not exist */
    f = mg_fopen(lp, "w");
    fprintf(f, "ckpt_00000099.h5\n");
    fclose(f);
    tu_check(latest_step(dir, got, sizeof(got)) == 50, "latest_dangling_falls_back", "%s", got);
    /* a new save after all this fixes the pointer; keep <= 0 keeps everything */
    fill_meta(&meta, 70);
    rc = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 0, path, sizeof(path), err, sizeof(err));
    mg_ckpt_meta_free(&meta);
    tu_check(rc == 0 && latest_step(dir, got, sizeof(got)) == 70 && tu_count_files(dir, ".h5$", 0) == 4, "keep_0_keeps_all",
             "%d files", tu_count_files(dir, ".h5$", 0));
    /* empty and missing directories: no checkpoint, not an error */
    char empty[400];
    snprintf(empty, sizeof(empty), "%s/run_empty", g_dir);
    mkdir(empty, 0755);
    tu_check(mg_ckpt_dir_latest(empty, got, sizeof(got), err, sizeof(err)) == 1, "latest_empty_dir_is_fresh_run", "%s",
             err);
    snprintf(empty, sizeof(empty), "%s/run_missing", g_dir);
    tu_check(mg_ckpt_dir_latest(empty, got, sizeof(got), err, sizeof(err)) == 1, "latest_missing_dir_is_fresh_run",
             "%s", err);
}

/* ---- background saves (mg_ckpt_async_*) ---- */

typedef struct {
    int calls, rc, other_thread, published, stop_signals_blocked, nice;
    int64_t step;
    char path[sizeof(((MgCkptAsyncResult *)0)->path)], err[sizeof(((MgCkptAsyncResult *)0)->err)];
} AsyncSeen;
static pthread_t g_main_thread;
static void async_done(const MgCkptAsyncResult *r, void *ctx) {
    AsyncSeen *a = ctx;
    a->calls++;
    a->rc = r->rc;
    a->step = r->step;
    snprintf(a->path, sizeof(a->path), "%s", r->path);
    snprintf(a->err, sizeof(a->err), "%s", r->err);
    a->other_thread = !pthread_equal(pthread_self(), g_main_thread);
    /* published when this runs: the file in place and `latest` naming it */
    char dir[sizeof(a->path)], got[600];
    snprintf(dir, sizeof(dir), "%s", r->path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    a->published = r->rc == 0 && access(r->path, F_OK) == 0 && latest_step(dir, got, sizeof(got)) == (int)r->step &&
                   !strcmp(got, r->path);
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    a->stop_signals_blocked = sigismember(&cur, SIGINT) && sigismember(&cur, SIGTERM) && sigismember(&cur, SIGUSR1);
#ifdef __linux__
    a->nice = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
#else
    a->nice = 19;
#endif
}

static void test_async_save(const State *s) {
    char sync_dir[400], bg_dir[400], err[1024] = "", path[600];
    snprintf(sync_dir, sizeof(sync_dir), "%s/run_sync", g_dir);
    snprintf(bg_dir, sizeof(bg_dir), "%s/run_bg", g_dir);
    g_main_thread = pthread_self();
    MgCkptMeta meta;
    fill_meta(&meta, 10);
    int rc = mg_ckpt_dir_save(sync_dir, &s->t, s->p, s->m, s->v, &meta, 3, path, sizeof(path), err, sizeof(err));
    mg_ckpt_meta_free(&meta);
    tu_check(rc == 0, "async_reference_sync_save", "%s", err);

    AsyncSeen seen;
    memset(&seen, 0, sizeof(seen));
    MgCkptAsync *a = mg_ckpt_async_create(async_done, &seen, 1);
    setenv("MG_CKPT_TEST_WRITE_DELAY_MS", "300", 1); /* the write stays in flight while we try a second one */
    fill_meta(&meta, 10);
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, s->p, s->m, s->v, &meta, 3, err, sizeof(err));
    tu_check(rc == 0 && meta.n_extra == 0 && meta.config_text == NULL && mg_ckpt_async_pending(a),
             "async_start_takes_the_meta", "rc %d, %d extras left, %s", rc, meta.n_extra, err);
    MgCkptMeta meta2;
    fill_meta(&meta2, 20);
    err[0] = 0;
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, s->p, s->m, s->v, &meta2, 3, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "never more than one writer") && meta2.n_extra > 0,
             "async_second_start_refused_until_collected", "%s", err);
    MgCkptAsyncResult r;
    memset(&r, 0, sizeof(r));
    int got = mg_ckpt_async_wait(a, &r);
    const int main_nice = getpriority(PRIO_PROCESS, 0);
    tu_check(got == 1 && r.rc == 0 && r.step == 10 && !mg_ckpt_async_pending(a) && seen.calls == 1 &&
                 seen.other_thread && seen.published && seen.stop_signals_blocked && seen.nice == 19 &&
                 main_nice != 19 && r.stats.bytes == 3.0 * 4 * (double)s->t.total && r.seconds > 0,
             "async_write_published_by_the_writer_thread",
             "collected %d, rc %d (%s), step %lld, %d callback(s), other thread %d, published when the callback ran %d, "
             "stop signals blocked %d, writer nice %d (caller %d), %.0f bytes",
             got, r.rc, r.err, (long long)r.step, seen.calls, seen.other_thread, seen.published,
             seen.stop_signals_blocked, seen.nice, main_nice, r.stats.bytes);
    /* the same file as a synchronous save: every tensor's bytes and CRC, and the root attributes */
    char pa[600], pb[600], why[256] = "";
    snprintf(pa, sizeof(pa), "%s/ckpt_00000010.h5", sync_dir);
    snprintf(pb, sizeof(pb), "%s/ckpt_00000010.h5", bg_dir);
    MgCkptMeta ma, mb;
    int same_meta = mg_ckpt_read_meta(pa, &ma, err, sizeof(err)) == 0 && mg_ckpt_read_meta(pb, &mb, err, sizeof(err)) == 0 &&
                    meta_equal(&ma, &mb, why, sizeof(why));
    mg_ckpt_meta_free(&ma);
    mg_ckpt_meta_free(&mb);
    int differ = tensor_bytes_differ(pa, pb, &s->t, 3);
    int64_t step = -1;
    tu_check(differ == 0 && same_meta && loads_ok(pb, s, &step) && step == 10, "async_file_equals_sync_file",
             "%d tensors differ, meta %s %s", differ, same_meta ? "same" : "differs:", why);
    tu_check(mg_ckpt_async_wait(a, &r) == 0 && mg_ckpt_async_poll(a, &r) == 0, "async_nothing_left_to_collect", "-");

    /* the second save now starts; polling collects it once it has ended */
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, s->p, s->m, s->v, &meta2, 3, err, sizeof(err));
    int polls = 0;
    while (rc == 0 && !mg_ckpt_async_poll(a, &r)) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        polls++;
    }
    tu_check(rc == 0 && r.rc == 0 && r.step == 20 && latest_step(bg_dir, path, sizeof(path)) == 20,
             "async_poll_collects_the_next_write", "rc %d, %s, %d polls", rc, r.err, polls);
    unsetenv("MG_CKPT_TEST_WRITE_DELAY_MS");

    /* a failing write: reported with the file and the reason, the earlier checkpoints untouched */
    const char *file = tmp_path("async_not_a_dir");
    FILE *f = mg_fopen(file, "w");
    fclose(f);
    char bad_dir[600];
    snprintf(bad_dir, sizeof(bad_dir), "%s/run", file);
    fill_meta(&meta, 30);
    memset(&seen, 0, sizeof(seen));
    rc = mg_ckpt_async_start(a, bad_dir, &s->t, s->p, s->m, s->v, &meta, 3, err, sizeof(err));
    got = mg_ckpt_async_wait(a, &r);
    tu_check(rc == 0 && got == 1 && r.rc == -1 && strstr(r.err, "async_not_a_dir") &&
                 strstr(r.err, "not a directory") && seen.calls == 1 && seen.rc == -1 &&
                 latest_step(bg_dir, path, sizeof(path)) == 20,
             "async_failure_reported", "rc %d, result %d: %s", rc, r.rc, r.err);

    /* the snapshot is read in place: a NaN in it is still refused (the file is not written), and a
     * weights-only save (m = v = NULL) works */
    State bad;
    state_zero_like(&bad, s);
    memcpy(bad.p, s->p, (size_t)s->t.total * 4);
    bad.p[s->t.total / 2] = NAN;
    fill_meta(&meta, 35);
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, bad.p, s->m, s->v, &meta, 3, err, sizeof(err));
    got = mg_ckpt_async_wait(a, &r);
    int nan_refused = rc == 0 && got == 1 && r.rc == -1 && strstr(r.err, "NaN/Inf") &&
                      latest_step(bg_dir, path, sizeof(path)) == 20;
    char nan_msg[300];
    snprintf(nan_msg, sizeof(nan_msg), "%.299s", r.err);
    state_free_arrays(&bad);
    fill_meta(&meta, 36);
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, s->p, NULL, NULL, &meta, 3, err, sizeof(err));
    got = mg_ckpt_async_wait(a, &r);
    MgCkptMeta wm;
    int weights_only = rc == 0 && got == 1 && r.rc == 0 && mg_ckpt_read_meta(r.path, &wm, err, sizeof(err)) == 0 &&
                       !wm.has_optimizer && wm.step == 36;
    if (rc == 0 && got == 1 && r.rc == 0) mg_ckpt_meta_free(&wm);
    tu_check(nan_refused && weights_only, "async_in_place_refuses_nan_and_writes_weights_only",
             "NaN: %s; weights only: %d", nan_msg, weights_only);

    /* freeing with a write in flight waits for it */
    fill_meta(&meta, 40);
    rc = mg_ckpt_async_start(a, bg_dir, &s->t, s->p, s->m, s->v, &meta, 3, err, sizeof(err));
    mg_ckpt_async_free(a);
    tu_check(rc == 0 && latest_step(bg_dir, path, sizeof(path)) == 40 && tu_count_files(bg_dir, ".tmp$", 0) == 0,
             "async_free_waits_for_the_write", "%s", path);
    mg_ckpt_meta_free(&meta);
    mg_ckpt_meta_free(&meta2);
}

static void test_check_writable(void) {
    char err[1024] = "", p[600];
    const char *file = tmp_path("a_regular_file");
    FILE *f = mg_fopen(file, "w");
    fclose(f);
    snprintf(p, sizeof(p), "%s/sub/dir", file);
    int rc = mg_ckpt_dir_check_writable(p, 0, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, file) && strstr(err, "not a directory"), "check_writable_under_regular_file", "%s",
             err);
    rc = mg_ckpt_dir_check_writable("/proc/megalodon_ckpt_test", 0, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "/proc/megalodon_ckpt_test"), "check_writable_proc", "%s", err);
    rc = mg_ckpt_dir_check_writable(g_dir, INT64_MAX / 2, err, sizeof(err));
    tu_check(rc == -1 && strstr(err, "free"), "check_writable_needs_space", "%s", err);
}

/* Disk full, two ways. (1) The child saves under a small RLIMIT_FSIZE (SIGXFSZ ignored, so writes would
 * fail with EFBIG): the pre-flight size check refuses before anything is written. (2) The HDF5 file
 * descriptor is swapped for /dev/full at a known point of the save (through the test hook), so HDF5's own
 * writes fail with ENOSPC mid-file or while flushing metadata. Either way the previous checkpoint and
 * `latest` survive, no temp file remains, nothing stays open inside HDF5, and the process exits normally
 * afterwards (HDF5 1.10 crashes at exit if a failed file was left half-closed). */
static const char *g_full_stage = NULL;
static int g_full_index = -1;
static void full_hook(const char *stage, int index) {
    if (strcmp(stage, g_full_stage) || (g_full_index >= 0 && index != g_full_index)) return;
    for (int fd = 3; fd < 256; fd++) {
        char link[64], target[512];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n <= 0) continue;
        target[n] = 0;
        if (n > 4 && !strcmp(target + n - 4, ".tmp") && strstr(target, ".h5.")) { /* ckpt_*.h5.<random>.tmp */
            int full = open("/dev/full", O_WRONLY);
            dup2(full, fd);
            close(full);
        }
    }
}

static void test_disk_full(const State *s) {
    char dir[400], err[1024] = "", path[600];
    snprintf(dir, sizeof(dir), "%s/run_full", g_dir);
    MgCkptMeta meta;
    fill_meta(&meta, 100);
    int rc = mg_ckpt_dir_check_writable(dir, 0, err, sizeof(err));
    if (rc == 0) rc = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 3, path, sizeof(path), err, sizeof(err));
    mg_ckpt_meta_free(&meta);
    int64_t full = file_size(path);
    struct {
        int64_t limit;     /* RLIMIT_FSIZE, or 0 */
        const char *stage; /* /dev/full from this hook point, or NULL */
        int index;
        const char *expect;
    } cases[] = {
        {1024, NULL, 0, "file size limit"},
        {full / 2, NULL, 0, "file size limit"},
        {full - 2048, NULL, 0, "file size limit"},
        {0, "tensor", 0, "No space left on device"},
        {0, "tensor", 2 * s->t.count + 5, "No space left on device"},
        {0, "before-reserve", -1, "reserving"},
        {0, "before-close", -1, "No space left on device"},
    };
    int n = (int)(sizeof(cases) / sizeof(cases[0]));
    int ok = rc == 0, passed = 0;
    char msg[1024] = "", msgs[2][1024] = {"", ""};
    for (int i = 0; i < n; i++) {
        int pfd[2];
        if (pipe(pfd) != 0) break;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            close(pfd[0]);
            if (cases[i].limit) {
                signal(SIGXFSZ, SIG_IGN);
                struct rlimit rl = {(rlim_t)cases[i].limit, (rlim_t)cases[i].limit};
                setrlimit(RLIMIT_FSIZE, &rl);
            } else {
                g_full_stage = cases[i].stage;
                g_full_index = cases[i].index;
                mg_ckpt_set_test_hook(full_hook);
            }
            MgCkptMeta m2;
            fill_meta(&m2, 200 + i);
            char e[1024] = "", p2[600];
            int r = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &m2, 3, p2, sizeof(p2), e, sizeof(e));
            mg_ckpt_meta_free(&m2);
            if (write(pfd[1], e, strlen(e) + 1) < 0) _exit(3);
            /* A failed metadata flush (the last case, an I/O error the reservation cannot prevent) leaves
             * HDF5 unable to close the file; everywhere else nothing may stay open inside HDF5. */
            ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
            int flush_case = cases[i].stage && !strcmp(cases[i].stage, "before-close");
            exit(r != -1 ? 1 : (open_ids != 0 && !flush_case) ? 2 : 0); /* a normal exit, with atexit handlers */
        }
        close(pfd[1]);
        memset(msg, 0, sizeof(msg));
        ssize_t got = read(pfd[0], msg, sizeof(msg) - 1);
        (void)got;
        close(pfd[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        char p2[600];
        snprintf(p2, sizeof(p2), "%s/ckpt_%08d.h5", dir, 200 + i);
        int64_t step = -1;
        char lat[600];
        int good = WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(msg, cases[i].expect) && strstr(msg, dir) &&
                   access(p2, F_OK) != 0 && tu_count_files(dir, ".tmp$", 0) == 0 &&
                   latest_step(dir, lat, sizeof(lat)) == 100 && loads_ok(lat, s, &step) && step == 100;
        if (!good) printf("# case %d: status 0x%x, message: %s\n", i, status, msg);
        passed += good;
        snprintf(msgs[cases[i].limit ? 0 : 1], sizeof(msgs[0]), "%s", msg);
    }
    ok &= passed == n;
    tu_check(ok, "disk_full_keeps_previous_checkpoint",
             "%d of %d cases (file size limits 1 KiB..%lld bytes; ENOSPC at the first tensor, mid-file and at the "
             "metadata flush); e.g. \"%s\" and \"%s\"",
             passed, n, (long long)(full - 2048), msgs[0], msgs[1]);
}

/* SIGKILL during a save, at known points (through the test hook) and at random times. */
static int g_hook_fd = -1, g_hook_target = -1;
static const char *g_hook_stage = NULL;
static void kill_hook(const char *stage, int index) {
    if (strcmp(stage, g_hook_stage) || (g_hook_target >= 0 && index != g_hook_target)) return;
    char c = 'x';
    if (write(g_hook_fd, &c, 1) != 1) _exit(5);
    for (;;) pause();
}

static void test_kill_during_save(const State *s) {
    char dir[400], err[1024] = "", path[600];
    snprintf(dir, sizeof(dir), "%s/run_kill", g_dir);
    MgCkptMeta meta;
    fill_meta(&meta, 100);
    int rc = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 2, path, sizeof(path), err, sizeof(err));
    mg_ckpt_meta_free(&meta);
    struct {
        const char *stage;
        int index;
    } points[] = {{"tensor", 0}, {"tensor", s->t.count + 3}, {"before-close", -1}, {"before-rename", -1}};
    int ok = rc == 0;
    for (int i = 0; i < 4; i++) {
        int pfd[2];
        if (pipe(pfd) != 0) break;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(pfd[0]);
            g_hook_fd = pfd[1];
            g_hook_stage = points[i].stage;
            g_hook_target = points[i].index;
            mg_ckpt_set_test_hook(kill_hook);
            MgCkptMeta m2;
            fill_meta(&m2, 200);
            char e[1024];
            mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &m2, 2, NULL, 0, e, sizeof(e));
            _exit(7); /* the hook never returns */
        }
        close(pfd[1]);
        char c;
        ssize_t got = read(pfd[0], &c, 1);
        close(pfd[0]);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        char p2[600], lat[600];
        snprintf(p2, sizeof(p2), "%s/ckpt_00000200.h5", dir);
        int64_t step = -1;
        int good = got == 1 && WIFSIGNALED(status) && access(p2, F_OK) != 0 &&
                   latest_step(dir, lat, sizeof(lat)) == 100 && loads_ok(lat, s, &step) && step == 100;
        if (!good) printf("# kill at %s %d: got %zd status %d\n", points[i].stage, points[i].index, got, status);
        ok &= good;
    }
    int leftover = tu_count_files(dir, ".tmp$", 0);
    tu_check(ok && leftover == 1, "kill_at_known_points_keeps_previous", "4 kill points; %d temp file left behind",
             leftover);
    /* the next save cleans the stale temp file */
    fill_meta(&meta, 300);
    rc = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 2, path, sizeof(path), err, sizeof(err));
    mg_ckpt_meta_free(&meta);
    tu_check(rc == 0 && tu_count_files(dir, ".tmp$", 0) == 0 && tu_count_files(dir, ".h5$", 0) == 2, "next_save_removes_stale_tmp",
             "%s", err);

    /* random kill times while the child saves one checkpoint after another */
    int trials = 6, good_trials = 0, mid = 0;
    for (int t = 0; t < trials; t++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            for (int k = 1;; k++) {
                MgCkptMeta m2;
                fill_meta(&m2, 1000 * (t + 1) + k);
                char e[1024];
                if (mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &m2, 2, NULL, 0, e, sizeof(e))) _exit(3);
                mg_ckpt_meta_free(&m2);
            }
        }
        struct timespec ts = {0, (long)(5e6 + tu_uniform() * 40e6)};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        char lat[600];
        int64_t step = -1;
        int st = latest_step(dir, lat, sizeof(lat));
        int good = WIFSIGNALED(status) && st >= 0 && loads_ok(lat, s, &step) && step == st;
        mid += tu_count_files(dir, ".tmp$", 0) > 0;
        good_trials += good;
        if (!good) printf("# random kill %d: status %d latest %d\n", t, status, st);
    }
    tu_check(good_trials == trials, "kill_at_random_times_leaves_loadable_latest",
             "%d of %d trials; %d were killed mid-write (temp file present)", good_trials, trials, mid);
}

#endif /* MG_HAVE_HDF5 */

int main(void) {
    tu_init("test_checkpoint");
    snprintf(g_dir, sizeof(g_dir), "/tmp/mg_test_ckpt.XXXXXX");
    if (!mkdtemp(g_dir)) mg_fatal("mkdtemp: %s", strerror(errno));
    test_crc();
    test_meta_getters();
#ifndef MG_HAVE_HDF5
    test_no_hdf5();
    tu_skip("checkpoint_hdf5", "this build has no HDF5: only the no-HDF5 error paths were tested; "
                               "install libhdf5-dev (make deps) and rebuild");
#else
    double t0 = mg_now();
    MgConfig c;
    make_cfg(&c, 64, 2, 16);
    State s;
    state_init(&s, &c);
    printf("# small model: %d tensors, %lld parameters\n", s.t.count, (long long)s.t.total);
    static char good[512];
    snprintf(good, sizeof(good), "%s", tmp_path("rt.h5"));
    test_round_trip(&s, good);
    test_sliced_writer(&s);
    test_tensor_io(&s, good);
    test_large_attributes(&s);
    test_h5py(&s, good);
    test_bad_files(&s, good);
    test_corrupt_data(&s, good);
    test_validation(&s, good);
    test_check_writable();
    test_rotation_and_latest(&s);
    test_async_save(&s);
    state_free_arrays(&s);
    mg_param_table_free(&s.t);
    /* a larger model (about 1.1M parameters, 13 MB with moments) so kills and size limits land mid-write */
    MgConfig cb;
    make_cfg(&cb, 4096, 4, 64);
    State b;
    state_init(&b, &cb);
    printf("# larger model: %d tensors, %lld parameters\n", b.t.count, (long long)b.t.total);
    test_disk_full(&b);
    test_kill_during_save(&b);
    state_free_arrays(&b);
    mg_param_table_free(&b.t);
    printf("# checkpoint tests took %.1f s\n", mg_now() - t0);
#endif
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    return tu_finish();
}
