/* Damaged checkpoints are never read as a different valid state (docs/checkpoint.md "What a load
 * verifies"). A real checkpoint of the tiny model with AdamW moments and the trainer's extras is written,
 * then mutated, deterministically: every bit of the superblock and of the object headers of the groups
 * (where a damaged optimizer group once read as "weights only"), one bit of every other metadata byte,
 * a stride of bits through the tensor data, zeroed blocks, truncations at many lengths (0, every object
 * header and data boundary) and extensions. Each mutant is loaded as `train --resume` loads it (weights,
 * both moments, meta) and must either be refused or give back bit-identical weights, moments, step,
 * tokens, config and extras; reading its meta alone (what `--resume auto`, eval and sample look at first)
 * must likewise fail or give the identical meta with the optimizer present. No HDF5 object may stay open
 * after a load (refused or not). A few mutants also go through `megalodon ckpt info`. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/checkpoint.h"
#include "../src/common.h"
#include "../src/params.h"
#include "test_util.h"

#ifdef MG_HAVE_HDF5
#include <hdf5.h>

typedef struct {
    int64_t off, len;
    char what[300];
} Region;

static struct {
    MgParamTable t;
    float *p, *m, *v;    /* the state written */
    float *lp, *lm, *lv; /* what a mutant loads */
    MgCkptMeta meta;
    char path[512];
    int fd;
    unsigned char *orig;
    int64_t size;
    int64_t mutants, refused, identical, bad;
    char bad_list[2048];
} G;

static int meta_equal(const MgCkptMeta *a, const MgCkptMeta *b) {
    if (a->step != b->step || a->tokens_seen != b->tokens_seen || a->n_extra != b->n_extra) return 0;
    if (strcmp(a->config_text ? a->config_text : "", b->config_text ? b->config_text : "")) return 0;
    for (int i = 0; i < a->n_extra; i++) {
        const MgMetaEntry *x = &a->extra[i], *y = &b->extra[i];
        if (strcmp(x->name, y->name) || x->type != y->type || x->n != y->n || x->is_array != y->is_array) return 0;
        int same = x->type == MG_META_STR   ? !strcmp(x->str, y->str)
                   : x->type == MG_META_I64 ? !x->n || !memcmp(x->i64, y->i64, 8 * (size_t)x->n)
                                            : !x->n || !memcmp(x->f64, y->f64, 8 * (size_t)x->n);
        if (!same) return 0;
    }
    return 1;
}

static void note_bad(const char *desc, const char *why) {
    G.bad++;
    size_t n = strlen(G.bad_list);
    if (G.bad <= 4) snprintf(G.bad_list + n, sizeof(G.bad_list) - n, "%s[%s: %s]", n ? "; " : "", desc, why);
}

/* Load the file as it is now and classify the result. */
static void check_mutant(const char *desc) {
    char err[2048];
    G.mutants++;
    if (getenv("MG_MUT_PROGRESS") && G.mutants % 2000 == 0)
        fprintf(stderr, "%lld mutants %.1f s\n", (long long)G.mutants, mg_now());
    MgCkptMeta mm;
    int mrc = mg_ckpt_read_meta(G.path, &mm, err, sizeof(err));
    int meta_ok = mrc != 0 || (mm.has_optimizer && meta_equal(&mm, &G.meta));
    mg_ckpt_meta_free(&mm);
    size_t bytes = sizeof(float) * (size_t)G.t.total;
    memset(G.lp, 0xa5, bytes);
    memset(G.lm, 0xa5, bytes);
    memset(G.lv, 0xa5, bytes);
    MgCkptMeta lm;
    int rc = mg_ckpt_load(G.path, &G.t, G.lp, G.lm, G.lv, &lm, err, sizeof(err));
    int same = rc == 0 && !memcmp(G.lp, G.p, bytes) && !memcmp(G.lm, G.m, bytes) && !memcmp(G.lv, G.v, bytes) &&
               meta_equal(&lm, &G.meta);
    mg_ckpt_meta_free(&lm);
    ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_ids != 0) {
        note_bad(desc, "HDF5 objects left open after the load");
        H5close(); /* start clean for the next mutant */
        return;
    }
    if (!meta_ok)
        note_bad(desc, "its meta read as a different state (or without the optimizer)");
    else if (rc == 0 && !same)
        note_bad(desc, "loaded without error but differs from what was saved");
    else if (rc == 0)
        G.identical++;
    else
        G.refused++;
}

static void pwrite_all(int64_t off, const void *buf, int64_t len) {
    MG_CHECK(pwrite(G.fd, buf, (size_t)len, off) == (ssize_t)len, "pwrite failed");
}

static void flip(int64_t off, int bit) {
    unsigned char b = G.orig[off] ^ (unsigned char)(1u << bit);
    pwrite_all(off, &b, 1);
    char d[96];
    snprintf(d, sizeof(d), "bit %d of byte %lld flipped", bit, (long long)off);
    check_mutant(d);
    pwrite_all(off, &G.orig[off], 1);
}

static void zero_block(int64_t off, int64_t len) {
    if (off >= G.size) return;
    len = MG_MIN(len, G.size - off);
    unsigned char *z = calloc(1, (size_t)len);
    pwrite_all(off, z, len);
    free(z);
    char d[96];
    snprintf(d, sizeof(d), "%lld bytes zeroed at %lld", (long long)len, (long long)off);
    check_mutant(d);
    pwrite_all(off, &G.orig[off], len);
}

static void truncate_to(int64_t len) {
    if (len < 0 || len >= G.size) return;
    MG_CHECK(ftruncate(G.fd, len) == 0, "ftruncate failed");
    char d[96];
    snprintf(d, sizeof(d), "truncated to %lld bytes", (long long)len);
    check_mutant(d);
    pwrite_all(len, &G.orig[len], G.size - len);
}

static void extend(const void *buf, int64_t len, const char *what) {
    pwrite_all(G.size, buf, len);
    char d[96];
    snprintf(d, sizeof(d), "%lld bytes of %s appended", (long long)len, what);
    check_mutant(d);
    MG_CHECK(ftruncate(G.fd, G.size) == 0, "ftruncate failed");
}

/* The object headers of the groups and datasets, and the data of every tensor, of the written file. */
static int file_layout(Region *hdr, int *nhdr, int cap_hdr, Region *data, int *ndata, int cap_data) {
    *nhdr = *ndata = 0;
    hid_t f = H5Fopen(G.path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return -1;
    const char *groups[5] = {"/", "model", "optimizer", "optimizer/m", "optimizer/v"};
    for (int g = 0; g < 5; g++) {
        H5O_info_t oi;
        if (H5Oget_info_by_name1(f, groups[g], &oi, H5P_DEFAULT) < 0) return -1;
        if (*nhdr < cap_hdr) {
            Region *r = &hdr[(*nhdr)++];
            r->off = (int64_t)oi.addr;
            r->len = (int64_t)oi.hdr.space.total;
            snprintf(r->what, sizeof(r->what), "group %s", groups[g]);
        }
    }
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < G.t.count; i++) {
            char path[256];
            snprintf(path, sizeof(path), "%s/%s", mg_ckpt_group_name(g), G.t.params[i].name);
            H5O_info_t oi;
            if (H5Oget_info_by_name1(f, path, &oi, H5P_DEFAULT) < 0) return -1;
            if (*nhdr < cap_hdr) {
                Region *r = &hdr[(*nhdr)++];
                r->off = (int64_t)oi.addr;
                r->len = (int64_t)oi.hdr.space.total;
                snprintf(r->what, sizeof(r->what), "header of %s", path);
            }
            hid_t ds = H5Dopen2(f, path, H5P_DEFAULT);
            if (ds < 0) return -1;
            if (*ndata < cap_data) {
                Region *r = &data[(*ndata)++];
                r->off = (int64_t)H5Dget_offset(ds);
                r->len = (int64_t)H5Dget_storage_size(ds);
                snprintf(r->what, sizeof(r->what), "data of %s", path);
            }
            H5Dclose(ds);
        }
    H5Fclose(f);
    return 0;
}

static int in_data(const Region *data, int ndata, int64_t off) {
    for (int i = 0; i < ndata; i++)
        if (off >= data[i].off && off < data[i].off + data[i].len) return 1;
    return 0;
}

static void write_checkpoint(void) {
    MgConfig c;
    tu_tiny_megalodon(&c, 32); /* every kind of tensor, made small: the campaign's cost is per byte of data */
    c.n_layers = 1;
    c.model_dim = 16;
    c.z_dim = 8;
    c.value_dim = 16;
    c.ffn_hidden_dim = 32;
    c.norm_num_groups = 2;
    mg_param_table_build(&c, &G.t);
    size_t n = (size_t)G.t.total;
    G.p = mg_malloc(4 * n), G.m = mg_malloc(4 * n), G.v = mg_malloc(4 * n);
    G.lp = mg_malloc(4 * n), G.lm = mg_malloc(4 * n), G.lv = mg_malloc(4 * n);
    for (size_t i = 0; i < n; i++) { /* the state after a few AdamW steps: every moment non-zero */
        G.p[i] = (float)(0.02 * tu_normal());
        G.m[i] = (float)(1e-3 * tu_normal());
        G.v[i] = (float)(1e-6 * tu_uniform() + 1e-9);
    }
    mg_ckpt_meta_init(&G.meta);
    G.meta.step = 2;
    G.meta.tokens_seen = 64;
    mg_ckpt_meta_set_config(&G.meta, "arch = megalodon\nvocab_size = 64\nmodel_dim = 64\nlr = 0.001\n");
    int64_t st[4] = {1, 2, 977, 0};
    mg_ckpt_meta_set_i64_array(&G.meta, "loader_state", st, 4);
    mg_ckpt_meta_set_str(&G.meta, "train_data", "data/train");
    int64_t counts[1] = {2};
    double weights[1] = {1.0};
    mg_ckpt_meta_set_i64_array(&G.meta, "mixture_counts", counts, 1);
    mg_ckpt_meta_set_f64_array(&G.meta, "mixture_weights", weights, 1);
    mg_ckpt_meta_set_i64(&G.meta, "seed", 1234);
    double sched[6] = {1e-3, 0.1, 0.1, 10, 100, 1};
    mg_ckpt_meta_set_f64_array(&G.meta, "schedule", sched, 6);
    mg_ckpt_meta_set_f64(&G.meta, "lr", 2e-4);
    mg_ckpt_meta_set_str(&G.meta, "init_from", "");
    char err[1024];
    MG_CHECK(mg_ckpt_save(G.path, &G.t, G.p, G.m, G.v, &G.meta, err, sizeof(err)) == 0, "save: %s", err);
}

/* ---- specific damage: counters, a missing optimizer, an absurd shape ---- */

static void copy_to(const char *dst) {
    FILE *f = mg_fopen(dst, "wb");
    MG_CHECK(fwrite(G.orig, 1, (size_t)G.size, f) == (size_t)G.size, "write");
    fclose(f);
}

/* Save the state with other step / tokens_seen; loading must fail naming `needle`. */
static void expect_counter_refused(const char *name, int64_t step, int64_t tokens, const char *needle) {
    char path[600], err[2048] = "";
    snprintf(path, sizeof(path), "%s.counter", G.path);
    int64_t s0 = G.meta.step, t0 = G.meta.tokens_seen;
    G.meta.step = step;
    G.meta.tokens_seen = tokens;
    int wrc = mg_ckpt_save(path, &G.t, G.p, G.m, G.v, &G.meta, err, sizeof(err));
    G.meta.step = s0;
    G.meta.tokens_seen = t0;
    MgCkptMeta back;
    mg_ckpt_meta_init(&back);
    int rc = wrc ? 0 : mg_ckpt_load(path, &G.t, G.lp, G.lm, G.lv, &back, err, sizeof(err));
    mg_ckpt_meta_free(&back);
    tu_check(wrc == 0 && rc != 0 && strstr(err, needle) != NULL, name, "%s", err);
    unlink(path);
}

static void specific_damage(void) {
    expect_counter_refused("negative_step_refused", -1, 64, "'step' = -1");
    expect_counter_refused("absurd_step_refused", (int64_t)1 << 60, (int64_t)1 << 60, "'step' = 1152921504606846976");
    expect_counter_refused("negative_tokens_refused", 0, -5, "'tokens_seen' = -5");
    expect_counter_refused("tokens_below_step_refused", 10, 5, "'tokens_seen' = 5 below 'step' = 10");

    /* The optimizer groups gone from a file that records them: refused, never "weights only". */
    char path[600], err[2048] = "";
    snprintf(path, sizeof(path), "%s.noopt", G.path);
    copy_to(path);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    int ok = f >= 0 && H5Ldelete(f, "optimizer", H5P_DEFAULT) >= 0;
    if (f >= 0) H5Fclose(f);
    MgCkptMeta mm;
    int rc = mg_ckpt_read_meta(path, &mm, err, sizeof(err));
    tu_check(ok && rc != 0 && strstr(err, "group '/optimizer/m' is missing but the file records"),
             "missing_optimizer_refused_not_weights_only", "%s", rc ? err : "read as a valid checkpoint");
    mg_ckpt_meta_free(&mm);
    /* Without the record (a file another tool wrote from the documented format), the same file is a
     * weights-only checkpoint: only files that do not say otherwise may load as weights only. */
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ok = f >= 0 && H5Adelete(f, MG_CKPT_ATTR_COUNTS) >= 0;
    if (f >= 0) H5Fclose(f);
    rc = mg_ckpt_read_meta(path, &mm, err, sizeof(err));
    tu_check(ok && rc == 0 && !mm.has_optimizer, "unrecorded_file_without_optimizer_is_weights_only", "%s",
             rc ? err : "weights only");
    mg_ckpt_meta_free(&mm);
    unlink(path);

    /* A tensor whose shape claims 2^60 elements (chunked, nothing allocated, so the file stays small):
     * refused by listing (what `ckpt info` allocates from) before any allocation. */
    snprintf(path, sizeof(path), "%s.huge", G.path);
    copy_to(path);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    char dpath[256];
    snprintf(dpath, sizeof(dpath), "model/%s", G.t.params[0].name);
    ok = f >= 0 && H5Ldelete(f, dpath, H5P_DEFAULT) >= 0;
    hsize_t dims[2] = {(hsize_t)1 << 30, (hsize_t)1 << 30}, chunk[2] = {1, 1};
    hid_t sp = H5Screate_simple(2, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 2, chunk);
    hid_t ds = ok ? H5Dcreate2(f, dpath, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    uint32_t crc = 0;
    hid_t asp = H5Screate(H5S_SCALAR);
    hid_t a = ds >= 0 ? H5Acreate2(ds, "crc32", H5T_STD_U32LE, asp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    ok = ok && a >= 0 && H5Awrite(a, H5T_NATIVE_UINT32, &crc) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(asp);
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (f >= 0) H5Fclose(f);
    MgCkptReader *r = ok ? mg_ckpt_open(path, NULL, err, sizeof(err)) : NULL;
    MgCkptTensorInfo *list = NULL;
    int n = 0;
    rc = r ? mg_ckpt_list(r, "model", &list, &n, err, sizeof(err)) : 0;
    tu_check(r && rc != 0 && strstr(err, "claims more than"), "absurd_shape_refused_before_allocation", "%s",
             !r ? err : rc ? err : "listed");
    free(list);
    mg_ckpt_close(r);
    int lrc = mg_ckpt_load(path, &G.t, G.lp, G.lm, G.lv, NULL, err, sizeof(err));
    tu_check(lrc != 0, "absurd_shape_load_refused", "%s", err);
    unlink(path);
}

static void campaign(void) {
    struct stat st;
    MG_CHECK(stat(G.path, &st) == 0, "stat");
    G.size = (int64_t)st.st_size;
    G.orig = mg_malloc((size_t)G.size);
    FILE *f = mg_fopen(G.path, "rb");
    MG_CHECK(fread(G.orig, 1, (size_t)G.size, f) == (size_t)G.size, "read");
    fclose(f);
    enum { CAP = 1024 };
    static Region hdr[CAP], data[CAP];
    int nhdr, ndata;
    MG_CHECK(file_layout(hdr, &nhdr, CAP, data, &ndata, CAP) == 0, "cannot read the layout of '%s'", G.path);
    G.fd = open(G.path, O_RDWR);
    MG_CHECK(G.fd >= 0, "open");

    /* The unmutated file loads identically (the comparison itself works). */
    check_mutant("unmutated");
    tu_check(G.identical == 1 && G.bad == 0, "mutation_baseline_loads_identical", "%lld bytes, %d tensors x 3",
             (long long)G.size, G.t.count);
    G.mutants = G.identical = 0;

    /* Bit flips. The default campaign: every bit of the superblock and of the first 48 bytes of each
     * group's object header (signature, version, flags, sizes, the first messages); one bit of every
     * second byte of the rest of the group headers and of every 11th byte of the other metadata (dataset
     * headers, B-trees, heaps, free space); the bit index rotates, so every position is hit. For a deep
     * run: MG_MUT_FULL=1 flips one bit of every metadata byte (about 3 times longer), MG_MUT_FULL=2 all
     * 8 bits of every metadata byte (about 30 times longer). */
    const char *fe = getenv("MG_MUT_FULL");
    int full = fe ? atoi(fe) : 0;
    unsigned char *cls = mg_calloc((size_t)G.size, 1); /* 3: all bits; 2: one bit; 1: one bit every 11th */
    for (int64_t o = 0; o < G.size; o++) cls[o] = in_data(data, ndata, o) ? 0 : 1;
    for (int i = 0; i < 5; i++)
        for (int64_t o = hdr[i].off; o < hdr[i].off + hdr[i].len && o < G.size; o++)
            cls[o] = o < hdr[i].off + 48 ? 3 : 2;
    for (int64_t o = 0; o < MG_MIN(48, G.size); o++) cls[o] = 3;
    int64_t n_dense = 0, n_meta = 0, n_data = 0, k = 0;
    for (int64_t o = 0; o < G.size; o++) {
        if (cls[o] == 3 || (cls[o] && full == 2)) {
            for (int b = 0; b < 8; b++) flip(o, b);
            n_dense++;
        } else if ((cls[o] == 2 && o % 2 == 0) || (cls[o] == 1 && o % 11 == 0) || (cls[o] && full)) {
            flip(o, (int)(k++ & 7));
            n_meta++;
        }
    }
    free(cls);
    for (int i = 0; i < ndata; i++) { /* first and last byte of each tensor, and a stride in between */
        int64_t step = MG_MAX(1, data[i].len / 6);
        for (int64_t o = data[i].off; o < data[i].off + data[i].len; o += step, n_data++) flip(o, (int)(o & 7));
        flip(data[i].off + data[i].len - 1, 7);
        n_data++;
    }
    int64_t after_flips = G.mutants;

    /* Zeroed blocks of several sizes: at every object header and data start, and seeded random places. */
    static const int64_t sizes[] = {1, 8, 64, 512, 4096, 65536};
    for (int i = 0; i < nhdr; i++) zero_block(hdr[i].off, sizes[i % 6]);
    for (int i = 0; i < ndata; i += 7) zero_block(data[i].off, sizes[i % 6]);
    for (int k = 0; k < 60; k++) zero_block((int64_t)(tu_uniform() * (double)G.size), sizes[k % 6]);
    int64_t after_zero = G.mutants;

    /* Truncations: 0, the first bytes, every header boundary, every data boundary, random lengths. */
    for (int64_t len = 0; len <= 64; len += 8) truncate_to(len);
    for (int i = 0; i < nhdr; i++) {
        truncate_to(hdr[i].off);
        truncate_to(hdr[i].off + hdr[i].len / 2);
        truncate_to(hdr[i].off + hdr[i].len);
    }
    for (int i = 0; i < ndata; i++) {
        truncate_to(data[i].off);
        truncate_to(data[i].off + data[i].len - 1);
    }
    for (int k = 0; k < 20; k++) truncate_to((int64_t)(tu_uniform() * (double)G.size));
    truncate_to(G.size - 1);
    int64_t after_trunc = G.mutants;

    /* Extensions: zeros, garbage, a copy of the file's own start (a second HDF5 signature). */
    unsigned char *junk = mg_malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i++) junk[i] = (unsigned char)(tu_uniform() * 256);
    unsigned char *zeros = mg_calloc(1 << 20, 1);
    extend(zeros, 1, "zeros");
    extend(zeros, 4096, "zeros");
    extend(zeros, 1 << 20, "zeros");
    extend(junk, 100, "garbage");
    extend(junk, 8192, "garbage");
    extend(G.orig, MG_MIN(4096, G.size), "the file's own first bytes");
    free(junk);
    free(zeros);
    close(G.fd);

    tu_check(G.bad == 0 && G.refused > 0, "mutants_refused_or_identical",
             "%lld mutants (%lld bit flips: every bit of %lld metadata bytes, one bit of %lld other metadata "
             "bytes, %lld in data; %lld zeroed blocks; %lld truncations; %lld extensions): %lld refused, "
             "%lld identical, %lld accepted as something else%s%s",
             (long long)G.mutants, (long long)after_flips, (long long)n_dense, (long long)n_meta, (long long)n_data,
             (long long)(after_zero - after_flips), (long long)(after_trunc - after_zero),
             (long long)(G.mutants - after_trunc), (long long)G.refused, (long long)G.identical, (long long)G.bad,
             G.bad ? ": " : "", G.bad_list);
}
#endif

int main(void) {
    tu_init("test_ckpt_mutation");
#ifdef MG_HAVE_HDF5
    if (!mg_ckpt_available()) {
        tu_skip("ckpt_mutation", "this build cannot write checkpoints (zlib missing)");
        return tu_finish();
    }
    alarm(600); /* a hang on a damaged file is a failure, not a stuck suite */
    char dir[] = "/tmp/mg_test_mut.XXXXXX";
    MG_CHECK(mkdtemp(dir), "mkdtemp");
    snprintf(G.path, sizeof(G.path), "%s/ckpt.h5", dir);
    write_checkpoint();
    campaign();
    specific_damage();
    unlink(G.path);
    free(G.orig);
    rmdir(dir);
#else
    tu_skip("ckpt_mutation", "this build has no HDF5 (install libhdf5-dev: make deps)");
#endif
    return tu_finish();
}
