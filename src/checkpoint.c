/* Checkpoints in HDF5 (format and guarantees: docs/checkpoint.md). */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common.h"

#ifdef MG_HAVE_HDF5
#include <hdf5.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint CRCs are defined on little-endian float32 bytes; a big-endian host needs a byte swap here"
#endif

/* Helpers only the HDF5 build calls. */
#if defined(__GNUC__)
#define HDF5_ONLY __attribute__((unused))
#else
#define HDF5_ONLY
#endif

#define NO_HDF5_MSG "this build has no HDF5; install libhdf5-dev and rebuild"


int mg_ckpt_available(void) {
#ifdef MG_HAVE_HDF5
    return 1;
#else
    return 0;
#endif
}

static MgCkptTestHook g_hook = NULL;
void mg_ckpt_set_test_hook(MgCkptTestHook hook) { g_hook = hook; }
HDF5_ONLY static void hook(const char *stage, int index) {
    if (g_hook) g_hook(stage, index);
}

static MgCkptStats g_stats;
MgCkptStats mg_ckpt_last_stats(void) { return g_stats; }

/* ======================================================================================================
 * CRC32 (reflected, polynomial 0xEDB88320: the zlib / PNG / Python zlib.crc32 CRC), slice-by-8.
 * ====================================================================================================== */

#define CRC_POLY 0xedb88320u
static uint32_t crc_tab[8][256];
static uint32_t crc_x2n[32]; /* x^(2^n) mod P, for combining */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* a(x) * b(x) mod P(x), bit-reflected representation (zlib's multmodp). */
static uint32_t crc_multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
    }
    return p;
}

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_tab[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++) crc_tab[k][i] = (crc_tab[k - 1][i] >> 8) ^ crc_tab[0][crc_tab[k - 1][i] & 0xff];
    uint32_t p = 1u << 30; /* x^1 */
    crc_x2n[0] = p;
    for (int n = 1; n < 32; n++) crc_x2n[n] = p = crc_multmodp(p, p);
}

uint32_t mg_crc32_update(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
              crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t mg_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    pthread_once(&crc_once, crc_init);
    /* crc(A||B) = crc(A) * x^(8 len_b) mod P  xor  crc(B) */
    uint32_t p = 1u << 31; /* x^0 */
    unsigned k = 3;        /* 8 len_b = len_b * 2^3 */
    for (uint64_t n = len_b; n; n >>= 1, k++)
        if (n & 1) p = crc_multmodp(crc_x2n[k & 31], p);
    return crc_multmodp(p, crc_a) ^ crc_b;
}

/* CRC32 of a float32 array's bytes plus a count of NaN/Inf values, in parallel over 4 MiB blocks whose
 * CRCs are combined in order (the result does not depend on the thread count). */
typedef struct {
    uint32_t crc;
    int64_t nonfinite, first_bad;
} Scan;

HDF5_ONLY static Scan scan_f32(const float *x, int64_t n) {
    const int64_t B = (int64_t)1 << 20;
    int64_t nb = (n + B - 1) / B;
    Scan s = {0, 0, -1};
    if (nb == 0) return s;
    uint32_t *crcs = mg_malloc(sizeof(uint32_t) * (size_t)nb);
    int64_t *bad = mg_malloc(sizeof(int64_t) * (size_t)nb), *first = mg_malloc(sizeof(int64_t) * (size_t)nb);
    pthread_once(&crc_once, crc_init);
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * B, hi = MG_MIN(n, lo + B);
        const uint32_t *u = (const uint32_t *)(const void *)(x + lo);
        int64_t cnt = 0;
        for (int64_t i = 0; i < hi - lo; i++) cnt += (u[i] & 0x7f800000u) == 0x7f800000u;
        int64_t f = -1;
        if (cnt)
            for (int64_t i = 0; i < hi - lo; i++)
                if ((u[i] & 0x7f800000u) == 0x7f800000u) {
                    f = lo + i;
                    break;
                }
        bad[b] = cnt;
        first[b] = f;
        crcs[b] = mg_crc32_update(0, x + lo, (size_t)(hi - lo) * 4);
    }
    for (int64_t b = 0; b < nb; b++) {
        int64_t len = MG_MIN(n, (b + 1) * B) - b * B;
        s.crc = b == 0 ? crcs[0] : mg_crc32_combine(s.crc, crcs[b], (uint64_t)len * 4);
        if (bad[b] && s.first_bad < 0) s.first_bad = first[b];
        s.nonfinite += bad[b];
    }
    free(crcs);
    free(bad);
    free(first);
    return s;
}

/* ======================================================================================================
 * Metadata
 * ====================================================================================================== */

static const char *const RESERVED[] = {"format", "format_version", "step", "tokens_seen", "config"};

static int is_reserved(const char *name) {
    for (size_t i = 0; i < sizeof(RESERVED) / sizeof(RESERVED[0]); i++)
        if (!strcmp(name, RESERVED[i])) return 1;
    return 0;
}

void mg_ckpt_meta_init(MgCkptMeta *m) {
    memset(m, 0, sizeof(*m));
    m->format_version = MG_CKPT_FORMAT_VERSION;
}

static void entry_free(MgMetaEntry *e) {
    free(e->i64);
    free(e->f64);
    free(e->str);
    memset(e, 0, sizeof(*e));
}

void mg_ckpt_meta_free(MgCkptMeta *m) {
    for (int i = 0; i < m->n_extra; i++) entry_free(&m->extra[i]);
    free(m->extra);
    free(m->config_text);
    mg_ckpt_meta_init(m);
}

void mg_ckpt_meta_set_config(MgCkptMeta *m, const char *config_text) {
    free(m->config_text);
    m->config_text = config_text ? mg_strdup(config_text) : NULL;
}

const MgMetaEntry *mg_ckpt_meta_find(const MgCkptMeta *m, const char *name) {
    for (int i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name)) return &m->extra[i];
    return NULL;
}

/* A slot for `name` (existing entries are emptied and reused so the order stays stable). */
static MgMetaEntry *meta_slot(MgCkptMeta *m, const char *name, int check) {
    if (check) {
        MG_CHECK(name && name[0] && strlen(name) < MG_CKPT_META_NAME_MAX && !strchr(name, '/'),
                 "checkpoint attribute name '%s' is invalid (1..%d characters, no '/')", name ? name : "(null)",
                 MG_CKPT_META_NAME_MAX - 1);
        MG_CHECK(!is_reserved(name), "checkpoint attribute name '%s' is reserved; pick another name", name);
    }
    for (int i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name)) {
            entry_free(&m->extra[i]);
            snprintf(m->extra[i].name, sizeof(m->extra[i].name), "%s", name);
            return &m->extra[i];
        }
    if (m->n_extra == m->cap_extra) {
        m->cap_extra = m->cap_extra ? 2 * m->cap_extra : 8;
        m->extra = mg_realloc(m->extra, sizeof(MgMetaEntry) * (size_t)m->cap_extra);
    }
    MgMetaEntry *e = &m->extra[m->n_extra++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    return e;
}

void mg_ckpt_meta_set_i64_array(MgCkptMeta *m, const char *name, const int64_t *values, int64_t n) {
    MG_CHECK(n >= 0, "checkpoint attribute '%s': negative length", name);
    MgMetaEntry *e = meta_slot(m, name, 1);
    e->type = MG_META_I64;
    e->is_array = 1;
    e->n = n;
    e->i64 = mg_malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (n) memcpy(e->i64, values, sizeof(int64_t) * (size_t)n);
}

void mg_ckpt_meta_set_i64(MgCkptMeta *m, const char *name, int64_t value) {
    mg_ckpt_meta_set_i64_array(m, name, &value, 1);
    ((MgMetaEntry *)mg_ckpt_meta_find(m, name))->is_array = 0;
}

void mg_ckpt_meta_set_f64_array(MgCkptMeta *m, const char *name, const double *values, int64_t n) {
    MG_CHECK(n >= 0, "checkpoint attribute '%s': negative length", name);
    MgMetaEntry *e = meta_slot(m, name, 1);
    e->type = MG_META_F64;
    e->is_array = 1;
    e->n = n;
    e->f64 = mg_malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (n) memcpy(e->f64, values, sizeof(double) * (size_t)n);
}

void mg_ckpt_meta_set_f64(MgCkptMeta *m, const char *name, double value) {
    mg_ckpt_meta_set_f64_array(m, name, &value, 1);
    ((MgMetaEntry *)mg_ckpt_meta_find(m, name))->is_array = 0;
}

void mg_ckpt_meta_set_str(MgCkptMeta *m, const char *name, const char *value) {
    MgMetaEntry *e = meta_slot(m, name, 1);
    e->type = MG_META_STR;
    e->n = 1;
    e->str = mg_strdup(value ? value : "");
}

static const MgMetaEntry *meta_get(const MgCkptMeta *m, const char *name, MgMetaType type, int64_t n, char *err,
                                   size_t errlen) {
    static const char *tn[] = {"int64", "double", "string"};
    const MgMetaEntry *e = mg_ckpt_meta_find(m, name);
    if (!e) {
        mg_errf(err, errlen, "checkpoint has no attribute '%s'", name);
        return NULL;
    }
    if (e->type != type) {
        mg_errf(err, errlen, "checkpoint attribute '%s' is a %s, expected a %s", name, tn[e->type], tn[type]);
        return NULL;
    }
    if (n >= 0 && e->n != n) {
        mg_errf(err, errlen, "checkpoint attribute '%s' holds %lld values, expected %lld", name, (long long)e->n,
               (long long)n);
        return NULL;
    }
    return e;
}

int mg_ckpt_meta_get_i64(const MgCkptMeta *m, const char *name, int64_t *out, char *err, size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_I64, 1, err, errlen);
    if (!e) return -1;
    *out = e->i64[0];
    return 0;
}

int mg_ckpt_meta_get_i64_array(const MgCkptMeta *m, const char *name, int64_t *out, int64_t n, char *err,
                               size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_I64, n, err, errlen);
    if (!e) return -1;
    if (n) memcpy(out, e->i64, sizeof(int64_t) * (size_t)n);
    return 0;
}

int mg_ckpt_meta_get_f64(const MgCkptMeta *m, const char *name, double *out, char *err, size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_F64, 1, err, errlen);
    if (!e) return -1;
    *out = e->f64[0];
    return 0;
}

int mg_ckpt_meta_get_f64_array(const MgCkptMeta *m, const char *name, double *out, int64_t n, char *err,
                               size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_F64, n, err, errlen);
    if (!e) return -1;
    if (n) memcpy(out, e->f64, sizeof(double) * (size_t)n);
    return 0;
}

const char *mg_ckpt_meta_get_str(const MgCkptMeta *m, const char *name) {
    const MgMetaEntry *e = mg_ckpt_meta_find(m, name);
    return e && e->type == MG_META_STR ? e->str : NULL;
}

int64_t mg_ckpt_size_estimate(const MgParamTable *t, int with_optimizer) {
    return t->total * 4 * (with_optimizer ? 3 : 1);
}

/* ======================================================================================================
 * Small POSIX helpers
 * ====================================================================================================== */

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = mg_malloc(n);
    if (name[0] == '/')
        snprintf(p, n, "%s", name);
    else
        snprintf(p, n, "%s%s%s", dir, (dir[0] && dir[strlen(dir) - 1] != '/') ? "/" : "", name);
    return p;
}

HDF5_ONLY static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return mg_strdup(".");
    if (slash == path) return mg_strdup("/");
    char *d = mg_malloc((size_t)(slash - path) + 1);
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = 0;
    return d;
}

/* fsync a directory so a rename inside it is durable. Filesystems that cannot sync directories
 * (EINVAL) are tolerated. */
static int fsync_dir(const char *dir, char *err, size_t errlen) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        mg_errf(err, errlen, "cannot open directory '%s' to sync it: %s", dir, strerror(errno));
        return -1;
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL) {
        mg_errf(err, errlen, "cannot sync directory '%s': %s", dir, strerror(e));
        return -1;
    }
    return 0;
}

HDF5_ONLY static int fsync_path(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        mg_errf(err, errlen, "cannot reopen '%s' to sync it: %s", path, strerror(errno));
        return -1;
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) {
        mg_errf(err, errlen, "cannot sync '%s' to disk: %s", path, strerror(e));
        return -1;
    }
    return 0;
}

/* ======================================================================================================
 * HDF5 implementation
 * ====================================================================================================== */
#ifdef MG_HAVE_HDF5

#define MG_COMPACT_MAX 65535 /* the largest compact link / attribute count HDF5 accepts */

static char g_reason[300];
static void h5_init(void) {
    static int done = 0;
    if (!done) {
        /* No HDF5 clean-up at process exit: after a failed metadata write (I/O error) HDF5 1.10 leaves the
         * file half-closed and its exit handler then crashes. Every file here is closed explicitly. */
        H5dont_atexit();
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we print our own messages */
        done = 1;
    }
    H5Eclear2(H5E_DEFAULT);
    snprintf(g_reason, sizeof(g_reason), "unknown HDF5 error");
}

typedef struct {
    char first[200];
    int have, err_no;
} ErrWalk;

static herr_t err_walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
    (void)n;
    ErrWalk *w = data;
    if (e->desc && e->desc[0]) {
        const char *p = strstr(e->desc, "errno = ");
        if (p && !w->err_no) w->err_no = atoi(p + 8);
        if (!w->have) {
            snprintf(w->first, sizeof(w->first), "%s", e->desc);
            w->have = 1;
        }
    }
    return 0;
}

/* The reason behind the current HDF5 error, short: an OS error if a system call failed (disk full, file
 * too large, permission), else HDF5's innermost message. Clears the stack. */
static const char *h5_reason(char *buf, size_t n) {
    ErrWalk w;
    memset(&w, 0, sizeof(w));
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, err_walk_cb, &w);
    H5Eclear2(H5E_DEFAULT);
    if (w.err_no > 0)
        snprintf(buf, n, "%s (errno %d)", strerror(w.err_no), w.err_no);
    else if (w.have)
        snprintf(buf, n, "HDF5: %s", w.first);
    else
        snprintf(buf, n, "unknown HDF5 error");
    return buf;
}

/* The reason is captured at the failing call (note()), before cleanup calls clear HDF5's error stack;
 * a later note() with an empty stack keeps it. Reset at the start of each public operation. */
static void note(void) {
    if (H5Eget_num(H5E_DEFAULT) > 0) h5_reason(g_reason, sizeof(g_reason));
}
#define REASON() (note(), g_reason)

static void close_id(hid_t id) {
    if (id < 0) return;
    switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
    }
}

/* ---- attributes ---- */

static int attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int is_array, int64_t n,
                      const void *data) {
    hid_t space = -1, a = -1;
    int rc = -1;
    if (!is_array)
        space = H5Screate(H5S_SCALAR);
    else if (n == 0)
        space = H5Screate(H5S_NULL);
    else {
        hsize_t d = (hsize_t)n;
        space = H5Screate_simple(1, &d, NULL);
    }
    if (space < 0) goto done;
    a = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) goto done;
    if ((is_array && n == 0) || H5Awrite(a, mtype, data) >= 0) rc = 0;
done:
    if (rc) note();
    close_id(a);
    close_id(space);
    return rc;
}

/* Strings are fixed-length (the text plus its NUL), stored inside the checksummed object header:
 * variable-length strings would live in HDF5's global heap, which has no checksum, and HDF5 1.10 crashes
 * reading a damaged one. */
static int attr_write_str(hid_t loc, const char *name, const char *s) {
    const char *p = s ? s : "";
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(p) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = attr_write(loc, name, t, t, 0, 1, p);
    H5Tclose(t);
    return rc;
}

static int attr_write_i64(hid_t loc, const char *name, int64_t v) {
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 1, &v);
}

/* Read one attribute into a meta entry (any integer -> int64, any float -> double, any string). Returns 0,
 * 1 if the attribute has a type outside our format (skipped), -1 on an HDF5 error. */
static int attr_read(hid_t a, const char *name, MgMetaEntry *e) {
    int rc = -1;
    hid_t ft = H5Aget_type(a), sp = H5Aget_space(a), mt = -1;
    if (ft < 0 || sp < 0) goto done;
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    H5T_class_t cls = H5Tget_class(ft);
    H5S_class_t scls = H5Sget_simple_extent_type(sp);
    hssize_t np = scls == H5S_NULL ? 0 : H5Sget_simple_extent_npoints(sp);
    if (np < 0) goto done;
    e->is_array = scls != H5S_SCALAR;
    e->n = np;
    if (cls == H5T_INTEGER) {
        e->type = MG_META_I64;
        e->i64 = mg_calloc((size_t)(np ? np : 1), sizeof(int64_t));
        if (np && H5Aread(a, H5T_NATIVE_INT64, e->i64) < 0) goto done;
    } else if (cls == H5T_FLOAT) {
        e->type = MG_META_F64;
        e->f64 = mg_calloc((size_t)(np ? np : 1), sizeof(double));
        if (np && H5Aread(a, H5T_NATIVE_DOUBLE, e->f64) < 0) goto done;
    } else if (cls == H5T_STRING && scls == H5S_SCALAR) {
        e->type = MG_META_STR;
        e->n = 1;
        e->is_array = 0;
        htri_t vl = H5Tis_variable_str(ft);
        if (vl < 0) goto done;
        if (vl) {
            mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(ft));
            char *s = NULL;
            if (H5Aread(a, mt, &s) < 0) goto done;
            e->str = mg_strdup(s ? s : "");
            H5free_memory(s);
        } else {
            size_t sz = H5Tget_size(ft);
            mt = H5Tcopy(ft);
            e->str = mg_calloc(sz + 1, 1);
            if (H5Aread(a, mt, e->str) < 0) goto done;
        }
    } else {
        rc = 1;
        goto done;
    }
    rc = 0;
done:
    if (rc < 0) note();
    if (rc != 0) entry_free(e);
    close_id(mt);
    close_id(ft);
    close_id(sp);
    return rc;
}

/* Iteration is by name (the index every HDF5 file has) and the result is then sorted by the creation
 * order HDF5 records: iterating a creation-order index that a file lacks fails, and retrying a failed
 * iteration is where HDF5 1.10 can crash on damaged files. */
typedef struct {
    MgCkptMeta *all; /* every attribute, reserved ones included */
    int64_t *order;  /* creation order of all->extra[i], or -1 if not recorded */
    int cap_order;
    int failed;
    char name[MG_CKPT_META_NAME_MAX];
} AttrIter;

typedef struct {
    int64_t key;
    int index;
} OrderKey;

static int cmp_order(const void *a, const void *b) {
    const OrderKey *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key ? 1 : x->index - y->index;
}

/* Permute n elements of `size` bytes in `base` so that `order` ascends (if every order is known). */
static void sort_by_order(void *base, size_t size, int n, const int64_t *order) {
    if (n < 2) return;
    for (int i = 0; i < n; i++)
        if (order[i] < 0) return;
    OrderKey *k = mg_malloc(sizeof(OrderKey) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) k[i] = (OrderKey){order[i], i};
    qsort(k, (size_t)n, sizeof(OrderKey), cmp_order);
    char *tmp = mg_malloc(size * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) memcpy(tmp + size * (size_t)i, (char *)base + size * (size_t)k[i].index, size);
    memcpy(base, tmp, size * (size_t)n);
    free(tmp);
    free(k);
}

static herr_t attr_iter_cb(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    AttrIter *it = data;
    if (strlen(name) >= MG_CKPT_META_NAME_MAX) return 0; /* not one of ours */
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) {
        note();
        it->failed = 1;
        snprintf(it->name, sizeof(it->name), "%s", name);
        return -1;
    }
    MgMetaEntry e;
    int rc = attr_read(a, name, &e);
    H5Aclose(a);
    if (rc < 0) {
        it->failed = 1;
        snprintf(it->name, sizeof(it->name), "%s", name);
        return -1;
    }
    if (rc == 0) {
        MgMetaEntry *slot = meta_slot(it->all, name, 0);
        *slot = e;
        int i = (int)(slot - it->all->extra);
        if (i >= it->cap_order) {
            it->cap_order = 2 * i + 16;
            it->order = mg_realloc(it->order, sizeof(int64_t) * (size_t)it->cap_order);
        }
        it->order[i] = info->corder_valid ? (int64_t)info->corder : -1;
    }
    return 0;
}

/* ---- the reader ---- */

struct MgCkptReader {
    hid_t file;
    char *path;
};

static int stat_checkpoint(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            mg_errf(err, errlen, "checkpoint '%s' does not exist", path);
        else
            mg_errf(err, errlen, "cannot access checkpoint '%s': %s", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        mg_errf(err, errlen,
               "'%s' is a directory, not a checkpoint file (a run directory? its newest checkpoint is "
               "named in '%s/latest')",
               path, path);
        return -1;
    }
    return 0;
}

/* Move the reserved attributes of `all` into meta, the others into meta's extras; validate them. */
static int meta_from_attrs(const char *path, MgCkptMeta *all, MgCkptMeta *meta, char *err, size_t errlen) {
    mg_ckpt_meta_init(meta);
    const MgMetaEntry *f = mg_ckpt_meta_find(all, "format");
    if (!f) {
        mg_errf(err, errlen, "'%s' is an HDF5 file but not a megalodon checkpoint (no root attribute 'format')", path);
        return -1;
    }
    if (f->type != MG_META_STR || strcmp(f->str, MG_CKPT_FORMAT) != 0) {
        mg_errf(err, errlen, "'%s' is an HDF5 file but not a megalodon checkpoint (format '%s', expected '%s')", path,
               f->type == MG_META_STR ? f->str : "(not a string)", MG_CKPT_FORMAT);
        return -1;
    }
    const MgMetaEntry *v = mg_ckpt_meta_find(all, "format_version");
    if (!v || v->type != MG_META_I64 || v->n != 1) {
        mg_errf(err, errlen, "checkpoint '%s' has no integer 'format_version' attribute (damaged?)", path);
        return -1;
    }
    if (v->i64[0] > MG_CKPT_FORMAT_VERSION) {
        mg_errf(err, errlen,
               "checkpoint '%s' was written by a newer version of megalodon (format v%lld > v%d): upgrade megalodon",
               path, (long long)v->i64[0], MG_CKPT_FORMAT_VERSION);
        return -1;
    }
    if (v->i64[0] < 1) {
        mg_errf(err, errlen, "checkpoint '%s' has an invalid format_version %lld", path, (long long)v->i64[0]);
        return -1;
    }
    meta->format_version = (int)v->i64[0];
    const char *ints[2] = {"step", "tokens_seen"};
    int64_t *dst[2] = {&meta->step, &meta->tokens_seen};
    for (int i = 0; i < 2; i++) {
        const MgMetaEntry *e = mg_ckpt_meta_find(all, ints[i]);
        if (!e || e->type != MG_META_I64 || e->n != 1) {
            mg_errf(err, errlen, "checkpoint '%s' has no integer '%s' attribute (damaged, or not written by megalodon)",
                   path, ints[i]);
            return -1;
        }
        *dst[i] = e->i64[0];
    }
    const MgMetaEntry *c = mg_ckpt_meta_find(all, "config");
    if (!c || c->type != MG_META_STR) {
        mg_errf(err, errlen, "checkpoint '%s' has no string 'config' attribute (damaged, or not written by megalodon)",
               path);
        return -1;
    }
    meta->config_text = c->str;
    ((MgMetaEntry *)c)->str = NULL;
    for (int i = 0; i < all->n_extra; i++) {
        if (is_reserved(all->extra[i].name)) continue;
        MgMetaEntry *slot = meta_slot(meta, all->extra[i].name, 0);
        *slot = all->extra[i];
        memset(&all->extra[i], 0, sizeof(MgMetaEntry));
    }
    return 0;
}

static int link_exists(hid_t loc, const char *path) {
    /* H5Lexists fails on a path whose intermediate group is missing, so test level by level. */
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (H5Lexists(loc, buf, H5P_DEFAULT) <= 0) return 0;
            if (!c) return 1;
            *p = c;
        }
    }
}

int mg_ckpt_has_group(MgCkptReader *r, const char *group) {
    h5_init();
    if (!link_exists(r->file, group)) return 0;
    H5O_info_t info;
    if (H5Oget_info_by_name1(r->file, group, &info, H5P_DEFAULT) < 0) return 0;
    return info.type == H5O_TYPE_GROUP;
}

MgCkptReader *mg_ckpt_open(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen) {
    h5_init();
    if (meta_out) mg_ckpt_meta_init(meta_out);
    if (stat_checkpoint(path, err, errlen)) return NULL;
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        if (is < 0)
            mg_errf(err, errlen, "cannot read '%s': %s", path, REASON());
        else
            mg_errf(err, errlen, "'%s' is not an HDF5 file (no HDF5 signature): not a checkpoint, or damaged", path);
        return NULL;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        mg_errf(err, errlen, "cannot open checkpoint '%s' (truncated or damaged file?): %s", path, REASON());
        return NULL;
    }
    MgCkptMeta all, meta;
    mg_ckpt_meta_init(&all);
    mg_ckpt_meta_init(&meta);
    AttrIter it = {&all, NULL, 0, 0, ""};
    hsize_t idx = 0;
    herr_t rc = H5Aiterate2(file, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_iter_cb, &it);
    if (rc >= 0) sort_by_order(all.extra, sizeof(MgMetaEntry), all.n_extra, it.order);
    free(it.order);
    if (rc < 0) {
        if (it.failed)
            mg_errf(err, errlen, "cannot read attribute '%s' of checkpoint '%s' (damaged?): %s", it.name, path,
                   REASON());
        else
            mg_errf(err, errlen, "cannot read the attributes of checkpoint '%s' (damaged?): %s", path, REASON());
        mg_ckpt_meta_free(&all);
        H5Fclose(file);
        return NULL;
    }
    if (meta_from_attrs(path, &all, &meta, err, errlen)) {
        mg_ckpt_meta_free(&all);
        mg_ckpt_meta_free(&meta);
        H5Fclose(file);
        return NULL;
    }
    mg_ckpt_meta_free(&all);
    MgCkptReader *r = mg_calloc(1, sizeof(*r));
    r->file = file;
    r->path = mg_strdup(path);
    meta.has_optimizer = mg_ckpt_has_group(r, "optimizer/m") && mg_ckpt_has_group(r, "optimizer/v");
    if (meta_out)
        *meta_out = meta;
    else
        mg_ckpt_meta_free(&meta);
    return r;
}

void mg_ckpt_close(MgCkptReader *r) {
    if (!r) return;
    H5Fclose(r->file);
    free(r->path);
    free(r);
}

static int tensor_info(hid_t ds, const char *name, MgCkptTensorInfo *ti) {
    memset(ti, 0, sizeof(*ti));
    snprintf(ti->name, sizeof(ti->name), "%s", name);
    hid_t sp = H5Dget_space(ds), ft = H5Dget_type(ds);
    int rc = -1;
    if (sp < 0 || ft < 0) goto done;
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0 || nd > 4) goto done;
    hsize_t dims[4] = {0};
    H5Sget_simple_extent_dims(sp, dims, NULL);
    ti->ndim = nd;
    ti->numel = 1;
    for (int i = 0; i < nd; i++) {
        ti->shape[i] = (int64_t)dims[i];
        ti->numel *= (int64_t)dims[i];
    }
    ti->is_f32 = H5Tget_class(ft) == H5T_FLOAT && H5Tget_size(ft) == 4;
    rc = 0;
    if (H5Aexists(ds, "crc32") > 0) {
        hid_t a = H5Aopen(ds, "crc32", H5P_DEFAULT);
        unsigned int c = 0;
        if (a >= 0 && H5Aread(a, H5T_NATIVE_UINT, &c) >= 0) {
            ti->has_crc = 1;
            ti->crc = c;
        }
        close_id(a);
    }
done:
    if (rc) note();
    close_id(sp);
    close_id(ft);
    return rc;
}

typedef struct {
    MgCkptTensorInfo *list;
    int64_t *order;
    int n, cap, failed;
    char bad[96];
} ListIter;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    ListIter *it = data;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) {
        note();
        goto fail;
    }
    if (H5Iget_type(o) != H5I_DATASET) { /* a subgroup: not part of our format, skip */
        close_id(o);
        return 0;
    }
    if (it->n == it->cap) {
        it->cap = it->cap ? 2 * it->cap : 64;
        it->list = mg_realloc(it->list, sizeof(MgCkptTensorInfo) * (size_t)it->cap);
        it->order = mg_realloc(it->order, sizeof(int64_t) * (size_t)it->cap);
    }
    it->order[it->n] = info->corder_valid ? (int64_t)info->corder : -1;
    if (strlen(name) >= sizeof(it->list[0].name) || tensor_info(o, name, &it->list[it->n]) != 0) {
        close_id(o);
        goto fail;
    }
    it->n++;
    close_id(o);
    return 0;
fail:
    it->failed = 1;
    snprintf(it->bad, sizeof(it->bad), "%s", name);
    return -1;
}

int mg_ckpt_list(MgCkptReader *r, const char *group, MgCkptTensorInfo **out, int *n, char *err, size_t errlen) {
    h5_init();
    *out = NULL;
    *n = 0;
    if (!mg_ckpt_has_group(r, group)) return 0;
    hid_t g = H5Gopen2(r->file, group, H5P_DEFAULT);
    if (g < 0) {
        mg_errf(err, errlen, "cannot open group '/%s' of checkpoint '%s': %s", group, r->path, REASON());
        return -1;
    }
    ListIter it = {0};
    hsize_t idx = 0;
    /* by name, then sorted by creation order (see AttrIter): our files list in table order */
    herr_t rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &it);
    if (rc >= 0) sort_by_order(it.list, sizeof(MgCkptTensorInfo), it.n, it.order);
    free(it.order);
    if (rc < 0) note();
    H5Gclose(g);
    if (rc < 0) {
        if (it.failed)
            mg_errf(err, errlen, "checkpoint '%s': cannot read tensor '/%s/%s' (more than 4 dimensions, or damaged): %s",
                   r->path, group, it.bad, REASON());
        else
            mg_errf(err, errlen, "cannot list group '/%s' of checkpoint '%s' (damaged?): %s", group, r->path, REASON());
        free(it.list);
        return -1;
    }
    *out = it.list;
    *n = it.n;
    return 0;
}

static int read_tensor_scan(MgCkptReader *r, const char *group, const char *name, float *dst, int64_t numel,
                            Scan *scan_out, char *err, size_t errlen) {
    h5_init();
    char dpath[256];
    snprintf(dpath, sizeof(dpath), "%s/%s", group, name);
    if (!link_exists(r->file, dpath)) {
        mg_errf(err, errlen, "checkpoint '%s' has no tensor '/%s'", r->path, dpath);
        return -1;
    }
    hid_t ds = H5Dopen2(r->file, dpath, H5P_DEFAULT);
    if (ds < 0) {
        mg_errf(err, errlen, "cannot open tensor '/%s' in checkpoint '%s': %s", dpath, r->path, REASON());
        return -1;
    }
    MgCkptTensorInfo ti;
    if (tensor_info(ds, name, &ti) != 0) {
        mg_errf(err, errlen, "cannot read the shape of tensor '/%s' in checkpoint '%s': %s", dpath, r->path, REASON());
        H5Dclose(ds);
        return -1;
    }
    if (ti.numel != numel) {
        mg_errf(err, errlen, "tensor '/%s' in checkpoint '%s' has %lld elements, expected %lld", dpath, r->path,
               (long long)ti.numel, (long long)numel);
        H5Dclose(ds);
        return -1;
    }
    double t0 = mg_now();
    herr_t rc = numel ? H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) : 0;
    g_stats.io_seconds += mg_now() - t0;
    if (rc < 0) note();
    H5Dclose(ds);
    if (rc < 0) {
        mg_errf(err, errlen, "cannot read tensor '/%s' from checkpoint '%s' (truncated or damaged?): %s", dpath, r->path,
               REASON());
        return -1;
    }
    g_stats.bytes += (double)numel * 4;
    t0 = mg_now();
    Scan s = scan_f32(dst, numel);
    g_stats.crc_seconds += mg_now() - t0;
    if (ti.has_crc && ti.is_f32 && s.crc != ti.crc) {
        mg_errf(err, errlen,
               "tensor '/%s' in checkpoint '%s' is corrupt: CRC32 of its data is 0x%08x, the file records 0x%08x (the "
               "file was damaged after it was written; use an older checkpoint)",
               dpath, r->path, s.crc, ti.crc);
        return -1;
    }
    if (scan_out) *scan_out = s;
    return 0;
}

int mg_ckpt_read_tensor(MgCkptReader *r, const char *group, const char *name, float *dst, int64_t numel, char *err,
                        size_t errlen) {
    return read_tensor_scan(r, group, name, dst, numel, NULL, err, errlen);
}

int mg_ckpt_read_meta(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen) {
    MgCkptReader *r = mg_ckpt_open(path, meta_out, err, errlen);
    if (!r) return -1;
    mg_ckpt_close(r);
    return 0;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

int mg_ckpt_load(const char *path, const MgParamTable *t, float *params, float *m, float *v, MgCkptMeta *meta_out,
                 char *err, size_t errlen) {
    h5_init();
    memset(&g_stats, 0, sizeof(g_stats));
    if (meta_out) mg_ckpt_meta_init(meta_out); /* valid (empty) on failure too */
    double t_start = mg_now();
    if ((m == NULL) != (v == NULL)) {
        mg_errf(err, errlen, "mg_ckpt_load('%s'): pass both optimizer moments m and v, or neither", path);
        return -1;
    }
    MgCkptMeta meta;
    MgCkptReader *r = mg_ckpt_open(path, &meta, err, errlen);
    if (!r) return -1;
    int rc = -1;
    if (m && !meta.has_optimizer) {
        mg_errf(err, errlen,
               "checkpoint '%s' holds weights only (no /optimizer/m and /optimizer/v): it cannot resume the optimizer; "
               "start from its weights without optimizer state instead",
               path);
        goto done;
    }
    const char *groups[3] = {"model", "optimizer/m", "optimizer/v"};
    float *bases[3] = {params, m, v};
    int ngroups = m ? 3 : 1;
    MgCkptTensorInfo *lists[3] = {NULL, NULL, NULL};
    int counts[3] = {0, 0, 0};
    /* Validate every group's names, shapes and dtypes before reading any data. */
    for (int gi = 0; gi < ngroups; gi++) {
        if (!mg_ckpt_has_group(r, groups[gi])) {
            mg_errf(err, errlen, "checkpoint '%s' has no group '/%s' (damaged, or not written by megalodon)", path,
                   groups[gi]);
            goto free_lists;
        }
        if (mg_ckpt_list(r, groups[gi], &lists[gi], &counts[gi], err, errlen)) goto free_lists;
        for (int i = 0; i < counts[gi]; i++) {
            if (mg_param_find(t, lists[gi][i].name) < 0) {
                mg_errf(err, errlen,
                       "checkpoint '%s' has tensor '/%s/%s', which this model does not have: the checkpoint was "
                       "written with a different model config (see `megalodon ckpt info %s`)",
                       path, groups[gi], lists[gi][i].name, path);
                goto free_lists;
            }
        }
        for (int p = 0; p < t->count; p++) {
            const MgParam *P = &t->params[p];
            const MgCkptTensorInfo *ti = NULL;
            for (int i = 0; i < counts[gi] && !ti; i++)
                if (!strcmp(lists[gi][i].name, P->name)) ti = &lists[gi][i];
            if (!ti) {
                mg_errf(err, errlen,
                       "checkpoint '%s' has no tensor '/%s/%s', which this model needs: the checkpoint was written "
                       "with a different model config (see `megalodon ckpt info %s`)",
                       path, groups[gi], P->name, path);
                goto free_lists;
            }
            int same = ti->ndim == P->ndim;
            for (int d = 0; same && d < P->ndim; d++) same = ti->shape[d] == P->shape[d];
            if (!same) {
                char a[96], b[96];
                shape_str(a, sizeof(a), ti->ndim, ti->shape);
                shape_str(b, sizeof(b), P->ndim, P->shape);
                mg_errf(err, errlen,
                       "tensor '/%s/%s' has shape %s in checkpoint '%s' but this model expects %s: the checkpoint's "
                       "config differs from this run's (see `megalodon ckpt info %s`)",
                       groups[gi], P->name, a, path, b, path);
                goto free_lists;
            }
            if (!ti->is_f32) {
                mg_errf(err, errlen, "tensor '/%s/%s' in checkpoint '%s' is not float32", groups[gi], P->name, path);
                goto free_lists;
            }
        }
    }
    for (int gi = 0; gi < ngroups; gi++) {
        for (int p = 0; p < t->count; p++) {
            const MgParam *P = &t->params[p];
            Scan s;
            if (read_tensor_scan(r, groups[gi], P->name, bases[gi] + P->offset, P->numel, &s, err, errlen))
                goto free_lists;
            if (s.nonfinite) {
                mg_errf(err, errlen,
                       "tensor '/%s/%s' in checkpoint '%s' holds %lld NaN/Inf values (first at element %lld): the run "
                       "had diverged when it was saved; use an older checkpoint",
                       groups[gi], P->name, path, (long long)s.nonfinite, (long long)s.first_bad);
                goto free_lists;
            }
        }
    }
    rc = 0;
free_lists:
    for (int gi = 0; gi < 3; gi++) free(lists[gi]);
done:
    mg_ckpt_close(r);
    if (rc == 0 && meta_out)
        *meta_out = meta;
    else
        mg_ckpt_meta_free(&meta);
    g_stats.seconds = mg_now() - t_start;
    return rc;
}

/* ---- the writer ---- */

struct MgCkptWriter {
    hid_t file;
    char *path, *tmp;
    /* The group and dataset last created stay open: put() right after add() then needs no lookup by
     * name, which costs time linear in the group size with compact (in-header) link storage. */
    hid_t group, ds;
    char group_name[64], ds_path[256];
};

static void writer_close_cached(MgCkptWriter *w) {
    if (w->ds >= 0) H5Dclose(w->ds);
    if (w->group >= 0) H5Gclose(w->group);
    w->ds = w->group = -1;
    w->group_name[0] = w->ds_path[0] = 0;
}

/* Give up on a temp file. HDF5 1.10 cannot close a file whose metadata it fails to write (disk full,
 * I/O error): H5Fclose fails, the file stays half-open, and the library crashes at process exit. So
 * the file descriptor under HDF5 is first pointed at an anonymous in-memory file (the data is
 * discarded anyway); the close then succeeds and the disk blocks of the temp file are released. */
static void writer_discard(MgCkptWriter *w, char *err, size_t errlen) {
    if (w->file >= 0) {
        writer_close_cached(w);
        void *handle = NULL;
        if (H5Fget_vfd_handle(w->file, H5P_DEFAULT, &handle) >= 0 && handle) {
            int fd = *(int *)handle; /* the sec2 driver's handle is its file descriptor */
            int sink = memfd_create("megalodon-ckpt-discard", 0);
            if (sink < 0) {
                FILE *tf = tmpfile();
                sink = tf ? dup(fileno(tf)) : -1;
                if (tf) fclose(tf);
            }
            if (sink >= 0) {
                dup2(sink, fd);
                close(sink);
            }
        }
        if (H5Fclose(w->file) < 0) /* fclose degree STRONG: closes anything still open */
            fprintf(stderr,
                    "warning: HDF5 1.10 cannot release the abandoned file '%s' after the failed write (%s); its disk "
                    "space is freed, some memory stays in use\n",
                    w->tmp, REASON());
        H5Eclear2(H5E_DEFAULT);
    }
    int removed = unlink(w->tmp) == 0 || errno == ENOENT;
    if (err && errlen && err[0]) {
        size_t n = strlen(err);
        snprintf(err + n, errlen - n,
                 removed ? "; nothing was replaced (the partial '%s' was removed)"
                         : "; nothing was replaced (remove the partial '%s')",
                 w->tmp);
    }
    free(w->path);
    free(w->tmp);
    free(w);
}

void mg_ckpt_writer_abort(MgCkptWriter *w) {
    if (w) writer_discard(w, NULL, 0);
}

MgCkptWriter *mg_ckpt_writer_begin(const char *path, const MgCkptMeta *meta, char *err, size_t errlen) {
    h5_init();
    MgCkptWriter *w = mg_calloc(1, sizeof(*w));
    w->file = w->group = w->ds = -1;
    w->path = mg_strdup(path);
    size_t n = strlen(path) + 5;
    w->tmp = mg_malloc(n);
    snprintf(w->tmp, n, "%s.tmp", path);
    if (unlink(w->tmp) != 0 && errno != ENOENT) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': cannot remove the stale temp file '%s': %s", path, w->tmp,
               strerror(errno));
        writer_discard(w, err, errlen);
        return NULL;
    }
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* Creation order is tracked so tools list tensors in table order; the v1.8+ object format puts
     * checksums on all metadata, so a damaged header is detected instead of misread. */
    H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    H5Pset_attr_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    /* Links and attributes stay in the (checksummed) object headers instead of moving to "dense" storage
     * (fractal heap + B-tree) past 8 entries: HDF5 1.10 can crash on a damaged dense link table. */
    H5Pset_link_phase_change(fcpl, MG_COMPACT_MAX, MG_COMPACT_MAX);
    H5Pset_attr_phase_change(fcpl, MG_COMPACT_MAX, MG_COMPACT_MAX);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (w->file < 0) note();
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (w->file < 0) {
        mg_errf(err, errlen, "cannot create checkpoint file '%s': %s", w->path, REASON());
        writer_discard(w, err, errlen);
        return NULL;
    }
    int ok = attr_write_str(w->file, "format", MG_CKPT_FORMAT) == 0 &&
             attr_write_i64(w->file, "format_version", MG_CKPT_FORMAT_VERSION) == 0 &&
             attr_write_i64(w->file, "step", meta->step) == 0 &&
             attr_write_i64(w->file, "tokens_seen", meta->tokens_seen) == 0 &&
             attr_write_str(w->file, "config", meta->config_text) == 0;
    for (int i = 0; ok && i < meta->n_extra; i++) {
        const MgMetaEntry *e = &meta->extra[i];
        if (is_reserved(e->name)) continue;
        if (e->type == MG_META_I64)
            ok = attr_write(w->file, e->name, H5T_STD_I64LE, H5T_NATIVE_INT64, e->is_array, e->n, e->i64) == 0;
        else if (e->type == MG_META_F64)
            ok = attr_write(w->file, e->name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, e->is_array, e->n, e->f64) == 0;
        else
            ok = attr_write_str(w->file, e->name, e->str) == 0;
    }
    if (!ok) {
        mg_errf(err, errlen, "cannot write the attributes of checkpoint '%s': %s", w->path, REASON());
        writer_discard(w, err, errlen);
        return NULL;
    }
    return w;
}

/* Open (creating if needed) a group path like "optimizer/m". */
static hid_t ensure_group(hid_t file, const char *group) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", group);
    for (char *p = buf;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            htri_t ex = H5Lexists(file, buf, H5P_DEFAULT);
            if (ex < 0) {
                note();
                return -1;
            }
            if (!ex) {
                hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
                H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
                H5Pset_link_phase_change(gcpl, MG_COMPACT_MAX, MG_COMPACT_MAX);
                hid_t g = H5Gcreate2(file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
                if (g < 0) note();
                H5Pclose(gcpl);
                if (g < 0) return -1;
                H5Gclose(g);
            }
            if (!c) break;
            *p = c;
        }
    }
    return H5Gopen2(file, group, H5P_DEFAULT);
}

int mg_ckpt_writer_add(MgCkptWriter *w, const char *group, const MgParam *p, uint32_t crc, char *err, size_t errlen) {
    h5_init();
    if (w->ds >= 0) H5Dclose(w->ds);
    w->ds = -1;
    w->ds_path[0] = 0;
    if (w->group < 0 || strcmp(w->group_name, group) != 0) {
        if (w->group >= 0) H5Gclose(w->group);
        w->group = ensure_group(w->file, group);
        snprintf(w->group_name, sizeof(w->group_name), "%s", w->group >= 0 ? group : "");
    }
    hid_t g = w->group;
    if (g < 0) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': creating group '/%s' failed: %s", w->path, group, REASON());
        return -1;
    }
    hsize_t dims[4];
    for (int i = 0; i < p->ndim; i++) dims[i] = (hsize_t)p->shape[i];
    hid_t space = H5Screate_simple(p->ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* Contiguous, no filters, no fill: one H5Dwrite streams the tensor to disk at full speed. */
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(g, p->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int rc = -1;
    if (ds >= 0 && attr_write(ds, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, 1, &crc) == 0) rc = 0;
    if (rc)
        mg_errf(err, errlen, "cannot write checkpoint '%s': creating tensor '/%s/%s' failed: %s", w->path, group,
               p->name, REASON());
    if (rc == 0) {
        w->ds = ds;
        snprintf(w->ds_path, sizeof(w->ds_path), "%s/%s", group, p->name);
    } else
        close_id(ds);
    close_id(dcpl);
    close_id(space);
    return rc;
}

/* Select the row-major flat element range [s, e) of the sub-array at `prefix` (dims < dim fixed) as a
 * union of at most 2 ndim - 1 hyperslabs. HDF5 visits hyperslab selections in row-major order, so a 1-D
 * memory buffer maps onto the range element by element. */
static int select_flat(hid_t space, int ndim, const hsize_t *shape, int dim, hsize_t *prefix, hsize_t s, hsize_t e) {
    if (s >= e) return 0;
    hsize_t inner = 1;
    for (int k = dim + 1; k < ndim; k++) inner *= shape[k];
    if (s % inner) {
        hsize_t r = s / inner;
        prefix[dim] = r;
        if ((e - 1) / inner == r) return select_flat(space, ndim, shape, dim + 1, prefix, s - r * inner, e - r * inner);
        if (select_flat(space, ndim, shape, dim + 1, prefix, s - r * inner, inner)) return -1;
        s = (r + 1) * inner;
    }
    hsize_t r0 = s / inner, r1 = e / inner;
    if (r1 > r0) {
        hsize_t start[4], count[4];
        for (int k = 0; k < ndim; k++) {
            start[k] = k < dim ? prefix[k] : k == dim ? r0 : 0;
            count[k] = k < dim ? 1 : k == dim ? r1 - r0 : shape[k];
        }
        if (H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL) < 0) return -1;
    }
    if (e % inner) {
        prefix[dim] = r1;
        return select_flat(space, ndim, shape, dim + 1, prefix, 0, e % inner);
    }
    return 0;
}

int mg_ckpt_writer_put(MgCkptWriter *w, const char *group, const MgParam *p, int64_t start, int64_t count,
                       const float *src, char *err, size_t errlen) {
    char dpath[256];
    h5_init();
    snprintf(dpath, sizeof(dpath), "%s/%s", group, p->name);
    if (start < 0 || count < 0 || start + count > p->numel) {
        mg_errf(err, errlen, "internal error: slice [%lld, %lld) outside tensor '%s' of %lld elements", (long long)start,
               (long long)(start + count), p->name, (long long)p->numel);
        return -1;
    }
    if (count == 0) return 0;
    int cached = w->ds >= 0 && !strcmp(w->ds_path, dpath);
    hid_t ds = cached ? w->ds : H5Dopen2(w->file, dpath, H5P_DEFAULT);
    if (ds < 0) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': tensor '/%s' was not created: %s", w->path, dpath, REASON());
        return -1;
    }
    hid_t fspace = H5S_ALL, mspace = H5S_ALL;
    herr_t rc = 0;
    if (!(start == 0 && count == p->numel)) {
        hsize_t shape[4], prefix[4] = {0}, cnt = (hsize_t)count;
        for (int i = 0; i < p->ndim; i++) shape[i] = (hsize_t)p->shape[i];
        fspace = H5Dget_space(ds);
        mspace = H5Screate_simple(1, &cnt, NULL);
        rc = (fspace < 0 || mspace < 0 || H5Sselect_none(fspace) < 0 ||
              select_flat(fspace, p->ndim, shape, 0, prefix, (hsize_t)start, (hsize_t)(start + count)) < 0)
                 ? -1
                 : 0;
    }
    double t0 = mg_now();
    if (rc == 0) rc = H5Dwrite(ds, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, src);
    g_stats.io_seconds += mg_now() - t0;
    if (rc < 0)
        mg_errf(err, errlen, "cannot write checkpoint '%s': writing tensor '/%s' failed: %s", w->path, dpath, REASON());
    else
        g_stats.bytes += (double)count * 4;
    if (fspace != H5S_ALL) close_id(fspace);
    if (mspace != H5S_ALL) close_id(mspace);
    if (!cached) H5Dclose(ds);
    return rc < 0 ? -1 : 0;
}

int mg_ckpt_writer_commit(MgCkptWriter *w, char *err, size_t errlen) {
    h5_init();
    double t0 = mg_now();
    /* Reserve the disk blocks of the whole file (up to HDF5's end of allocation, without changing the
     * size) before HDF5 writes its metadata: a full disk then fails here, cleanly, instead of inside
     * HDF5's flush, which cannot recover from a failed write (see writer_discard). */
    writer_close_cached(w);
    hook("before-reserve", 0);
    hsize_t eoa = 0;
    void *handle = NULL;
    if (H5Fget_filesize(w->file, &eoa) >= 0 && H5Fget_vfd_handle(w->file, H5P_DEFAULT, &handle) >= 0 && handle) {
        int fd = *(int *)handle;
        if (eoa > 0 && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)eoa) != 0 && errno != EOPNOTSUPP &&
            errno != ENOSYS) {
            mg_errf(err, errlen, "cannot write checkpoint '%s': reserving %llu bytes of disk space failed: %s", w->path,
                   (unsigned long long)eoa, strerror(errno));
            writer_discard(w, err, errlen);
            return -1;
        }
    }
    H5Eclear2(H5E_DEFAULT);
    hook("before-close", 0);
    if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': flushing failed: %s", w->path, REASON());
        writer_discard(w, err, errlen);
        return -1;
    }
    herr_t rc = H5Fclose(w->file);
    w->file = -1;
    if (rc < 0) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': closing failed: %s", w->path, REASON());
        writer_discard(w, err, errlen);
        return -1;
    }
    if (fsync_path(w->tmp, err, errlen)) {
        writer_discard(w, err, errlen);
        return -1;
    }
    hook("before-rename", 0);
    if (rename(w->tmp, w->path) != 0) {
        mg_errf(err, errlen, "cannot rename '%s' to '%s': %s", w->tmp, w->path, strerror(errno));
        writer_discard(w, err, errlen);
        return -1;
    }
    char *dir = dir_of(w->path);
    int drc = fsync_dir(dir, err, errlen);
    free(dir);
    free(w->path);
    free(w->tmp);
    free(w);
    g_stats.sync_seconds += mg_now() - t0;
    return drc;
}

/* Fail before HDF5 writes anything when the file cannot fit (free space, `ulimit -f`): the common
 * disk-full case then never reaches HDF5's error paths. The estimate errs on the large side. */
static int preflight(const char *path, const MgParamTable *t, int ngroups, const MgCkptMeta *meta, char *err,
                     size_t errlen) {
    double need = (double)t->total * 4 * ngroups + (1 << 20) + 2048.0 * t->count * ngroups;
    need += meta->config_text ? (double)strlen(meta->config_text) : 0;
    for (int i = 0; i < meta->n_extra; i++)
        need +=
            1024 + (meta->extra[i].type == MG_META_STR ? (double)strlen(meta->extra[i].str) : 8.0 * meta->extra[i].n);
    char a[32], b[32];
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (double)rl.rlim_cur < need) {
        mg_errf(err, errlen,
               "cannot write checkpoint '%s': it needs about %s but the file size limit (ulimit -f) is %s; nothing was "
               "written",
               path, mg_format_bytes(need, a, sizeof(a)), mg_format_bytes((double)rl.rlim_cur, b, sizeof(b)));
        return -1;
    }
    char *dir = dir_of(path);
    struct statvfs vfs;
    int rc = 0;
    if (statvfs(dir, &vfs) == 0) {
        double avail = (double)vfs.f_bavail * (double)vfs.f_frsize;
        if (avail < need) {
            mg_errf(err, errlen,
                   "cannot write checkpoint '%s': it needs about %s but only %s is free there (disk full); nothing was "
                   "written and earlier checkpoints are kept",
                   path, mg_format_bytes(need, a, sizeof(a)), mg_format_bytes(avail, b, sizeof(b)));
            rc = -1;
        }
    }
    free(dir);
    return rc;
}

int mg_ckpt_save(const char *path, const MgParamTable *t, const float *params, const float *m, const float *v,
                 const MgCkptMeta *meta, char *err, size_t errlen) {
    h5_init();
    memset(&g_stats, 0, sizeof(g_stats));
    double t_start = mg_now();
    if ((m == NULL) != (v == NULL)) {
        mg_errf(err, errlen, "mg_ckpt_save('%s'): pass both optimizer moments m and v, or neither", path);
        return -1;
    }
    const char *groups[3] = {"model", "optimizer/m", "optimizer/v"};
    const float *bases[3] = {params, m, v};
    int ngroups = m ? 3 : 1;
    /* Checksums first, and refuse NaN/Inf: a diverged state must not become `latest` and push good
     * checkpoints out of the rotation. */
    uint32_t *crcs = mg_malloc(sizeof(uint32_t) * (size_t)(3 * t->count + 1));
    double t0 = mg_now();
    for (int gi = 0; gi < ngroups; gi++)
        for (int p = 0; p < t->count; p++) {
            const MgParam *P = &t->params[p];
            Scan s = scan_f32(bases[gi] + P->offset, P->numel);
            if (s.nonfinite) {
                mg_errf(err, errlen,
                       "refusing to save checkpoint '%s': tensor '/%s/%s' holds %lld NaN/Inf values (first at element "
                       "%lld); the run has diverged, earlier checkpoints are kept",
                       path, groups[gi], P->name, (long long)s.nonfinite, (long long)s.first_bad);
                free(crcs);
                return -1;
            }
            crcs[gi * t->count + p] = s.crc;
        }
    g_stats.crc_seconds = mg_now() - t0;
    if (preflight(path, t, ngroups, meta, err, errlen)) {
        free(crcs);
        return -1;
    }
    MgCkptWriter *w = mg_ckpt_writer_begin(path, meta, err, errlen);
    if (!w) {
        free(crcs);
        return -1;
    }
    int k = 0;
    for (int gi = 0; gi < ngroups; gi++)
        for (int p = 0; p < t->count; p++) {
            const MgParam *P = &t->params[p];
            if (mg_ckpt_writer_add(w, groups[gi], P, crcs[gi * t->count + p], err, errlen) ||
                mg_ckpt_writer_put(w, groups[gi], P, 0, P->numel, bases[gi] + P->offset, err, errlen)) {
                writer_discard(w, err, errlen);
                free(crcs);
                return -1;
            }
            hook("tensor", k++);
        }
    free(crcs);
    int rc = mg_ckpt_writer_commit(w, err, errlen);
    g_stats.seconds = mg_now() - t_start;
    return rc;
}

#else /* !MG_HAVE_HDF5 ------------------------------------------------------------------------------- */

struct MgCkptReader {
    int unused;
};
struct MgCkptWriter {
    int unused;
};

int mg_ckpt_save(const char *path, const MgParamTable *t, const float *params, const float *m, const float *v,
                 const MgCkptMeta *meta, char *err, size_t errlen) {
    (void)t, (void)params, (void)m, (void)v, (void)meta;
    mg_errf(err, errlen, "cannot write checkpoint '%s': " NO_HDF5_MSG, path);
    return -1;
}
int mg_ckpt_load(const char *path, const MgParamTable *t, float *params, float *m, float *v, MgCkptMeta *meta_out,
                 char *err, size_t errlen) {
    (void)t, (void)params, (void)m, (void)v;
    if (meta_out) mg_ckpt_meta_init(meta_out);
    mg_errf(err, errlen, "cannot read checkpoint '%s': " NO_HDF5_MSG, path);
    return -1;
}
int mg_ckpt_read_meta(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen) {
    if (meta_out) mg_ckpt_meta_init(meta_out);
    mg_errf(err, errlen, "cannot read checkpoint '%s': " NO_HDF5_MSG, path);
    return -1;
}
MgCkptReader *mg_ckpt_open(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen) {
    if (meta_out) mg_ckpt_meta_init(meta_out);
    mg_errf(err, errlen, "cannot read checkpoint '%s': " NO_HDF5_MSG, path);
    return NULL;
}
void mg_ckpt_close(MgCkptReader *r) { (void)r; }
int mg_ckpt_has_group(MgCkptReader *r, const char *group) {
    (void)r, (void)group;
    return 0;
}
int mg_ckpt_list(MgCkptReader *r, const char *group, MgCkptTensorInfo **out, int *n, char *err, size_t errlen) {
    (void)r, (void)group;
    *out = NULL;
    *n = 0;
    mg_errf(err, errlen, NO_HDF5_MSG);
    return -1;
}
int mg_ckpt_read_tensor(MgCkptReader *r, const char *group, const char *name, float *dst, int64_t numel, char *err,
                        size_t errlen) {
    (void)r, (void)group, (void)name, (void)dst, (void)numel;
    mg_errf(err, errlen, NO_HDF5_MSG);
    return -1;
}
MgCkptWriter *mg_ckpt_writer_begin(const char *path, const MgCkptMeta *meta, char *err, size_t errlen) {
    (void)meta;
    mg_errf(err, errlen, "cannot write checkpoint '%s': " NO_HDF5_MSG, path);
    return NULL;
}
int mg_ckpt_writer_add(MgCkptWriter *w, const char *group, const MgParam *p, uint32_t crc, char *err, size_t errlen) {
    (void)w, (void)group, (void)p, (void)crc;
    mg_errf(err, errlen, NO_HDF5_MSG);
    return -1;
}
int mg_ckpt_writer_put(MgCkptWriter *w, const char *group, const MgParam *p, int64_t start, int64_t count,
                       const float *src, char *err, size_t errlen) {
    (void)w, (void)group, (void)p, (void)start, (void)count, (void)src;
    mg_errf(err, errlen, NO_HDF5_MSG);
    return -1;
}
int mg_ckpt_writer_commit(MgCkptWriter *w, char *err, size_t errlen) {
    (void)w;
    mg_errf(err, errlen, NO_HDF5_MSG);
    return -1;
}
void mg_ckpt_writer_abort(MgCkptWriter *w) { (void)w; }

#endif /* MG_HAVE_HDF5 */

/* ======================================================================================================
 * Run directory
 * ====================================================================================================== */

static int mkdir_p(const char *dir, char *err, size_t errlen) {
    char *buf = mg_strdup(dir);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
                mg_errf(err, errlen, "cannot create checkpoint directory '%s' (at '%s'): %s", dir, buf, strerror(errno));
                free(buf);
                return -1;
            }
            struct stat st;
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
                mg_errf(err, errlen, "cannot create checkpoint directory '%s': '%s' exists and is not a directory", dir,
                       buf);
                free(buf);
                return -1;
            }
            if (!c) break;
            *p = c;
        }
    }
    free(buf);
    return 0;
}

int mg_ckpt_dir_check_writable(const char *out_dir, int64_t need_bytes, char *err, size_t errlen) {
    if (!mg_ckpt_available()) {
        mg_errf(err, errlen, "cannot write checkpoints to '%s': " NO_HDF5_MSG, out_dir);
        return -1;
    }
    if (!out_dir || !out_dir[0]) {
        mg_errf(err, errlen, "no checkpoint directory given (set out_dir)");
        return -1;
    }
    if (mkdir_p(out_dir, err, errlen)) return -1;
    char name[64];
    snprintf(name, sizeof(name), ".megalodon_write_test.%ld", (long)getpid());
    char *probe = path_join(out_dir, name);
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = -1;
    if (fd < 0) {
        mg_errf(err, errlen, "checkpoint directory '%s' is not writable: cannot create '%s': %s", out_dir, probe,
               strerror(errno));
        goto done;
    }
    char block[4096];
    memset(block, 0x5a, sizeof(block));
    ssize_t wr = write(fd, block, sizeof(block));
    int e = errno;
    if (wr != (ssize_t)sizeof(block) || fsync(fd) != 0) {
        if (wr >= 0 && wr != (ssize_t)sizeof(block))
            e = ENOSPC;
        else if (wr >= 0)
            e = errno;
        mg_errf(err, errlen, "checkpoint directory '%s' is not writable: writing '%s' failed: %s", out_dir, probe,
               strerror(e));
        close(fd);
        unlink(probe);
        goto done;
    }
    close(fd);
    unlink(probe);
    if (need_bytes > 0) {
        struct statvfs vfs;
        if (statvfs(out_dir, &vfs) == 0) {
            double avail = (double)vfs.f_bavail * (double)vfs.f_frsize;
            if (avail < (double)need_bytes) {
                char a[32], b[32];
                mg_errf(
                    err, errlen,
                    "checkpoint directory '%s' has only %s free but a checkpoint needs %s: free some space or choose "
                    "another out_dir",
                    out_dir, mg_format_bytes(avail, a, sizeof(a)), mg_format_bytes((double)need_bytes, b, sizeof(b)));
                goto done;
            }
        }
    }
    rc = 0;
done:
    free(probe);
    return rc;
}

/* "ckpt_<digits>.h5" -> step; -1 for any other name. */
static int64_t ckpt_name_step(const char *name) {
    if (strncmp(name, "ckpt_", 5) != 0) return -1;
    const char *p = name + 5, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || strcmp(q, ".h5") != 0 || q - p > 18) return -1;
    return strtoll(p, NULL, 10);
}

typedef struct {
    int64_t step;
    char *name;
} CkptEntry;

static int cmp_step_desc(const void *a, const void *b) {
    const CkptEntry *x = a, *y = b;
    return x->step < y->step ? 1 : x->step > y->step ? -1 : strcmp(x->name, y->name);
}

/* ckpt_*.h5 files of dir, newest (highest step) first. Returns count, -1 if dir cannot be read (errno). */
static int list_ckpts(const char *dir, CkptEntry **out) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0, cap = 0;
    CkptEntry *list = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t s = ckpt_name_step(de->d_name);
        if (s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            list = mg_realloc(list, sizeof(CkptEntry) * (size_t)cap);
        }
        list[n].step = s;
        list[n].name = mg_strdup(de->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(list, (size_t)n, sizeof(CkptEntry), cmp_step_desc);
    *out = list;
    return n;
}

static void free_ckpts(CkptEntry *l, int n) {
    for (int i = 0; i < n; i++) free(l[i].name);
    free(l);
}

/* Remove temp files left by a save that was killed (they are never complete checkpoints). */
static void remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        int ours = (!strncmp(de->d_name, "ckpt_", 5) && n > 7 && !strcmp(de->d_name + n - 7, ".h5.tmp")) ||
                   !strcmp(de->d_name, "latest.tmp");
        if (!ours) continue;
        char *p = path_join(dir, de->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
}

static int write_latest(const char *out_dir, const char *name, char *err, size_t errlen) {
    char *tmp = path_join(out_dir, "latest.tmp"), *dst = path_join(out_dir, "latest");
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        mg_errf(err, errlen, "cannot create '%s': %s", tmp, strerror(errno));
        goto done;
    }
    char line[300];
    int len = snprintf(line, sizeof(line), "%s\n", name);
    ssize_t wr = write(fd, line, (size_t)len);
    int e = wr < 0 ? errno : ENOSPC;
    if (wr != len || fsync(fd) != 0) {
        if (wr == len) e = errno;
        mg_errf(err, errlen, "cannot write '%s': %s", tmp, strerror(e));
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (close(fd) != 0) {
        mg_errf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, dst) != 0) {
        mg_errf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, dst, strerror(errno));
        unlink(tmp);
        goto done;
    }
    rc = fsync_dir(out_dir, err, errlen);
done:
    free(tmp);
    free(dst);
    return rc;
}

int mg_ckpt_dir_save(const char *out_dir, const MgParamTable *t, const float *params, const float *m, const float *v,
                     const MgCkptMeta *meta, int keep, char *path_out, size_t path_len, char *err, size_t errlen) {
    if (meta->step < 0) {
        mg_errf(err, errlen, "cannot save a checkpoint for negative step %lld", (long long)meta->step);
        return -1;
    }
    char name[64];
    snprintf(name, sizeof(name), "ckpt_%08lld.h5", (long long)meta->step);
    if (mkdir_p(out_dir, err, errlen)) return -1;
    char *path = path_join(out_dir, name);
    if (path_out && path_len) snprintf(path_out, path_len, "%s", path);
    remove_stale_tmp(out_dir);
    int rc = mg_ckpt_save(path, t, params, m, v, meta, err, errlen);
    if (rc == 0) {
        char e2[512];
        if (write_latest(out_dir, name, e2, sizeof(e2))) {
            mg_errf(err, errlen, "wrote checkpoint '%s' but could not update the pointer file: %s", path, e2);
            rc = -1;
        }
    }
    if (rc == 0 && keep > 0) {
        CkptEntry *list;
        int n = list_ckpts(out_dir, &list);
        int kept = 0;
        /* The file just written always survives; the others fill the remaining keep - 1 places by step. */
        for (int i = 0; i < n; i++) {
            if (!strcmp(list[i].name, name)) continue;
            if (kept < keep - 1) {
                kept++;
                continue;
            }
            char *old = path_join(out_dir, list[i].name);
            if (unlink(old) != 0)
                fprintf(stderr, "warning: cannot delete old checkpoint '%s': %s\n", old, strerror(errno));
            free(old);
        }
        if (n > 0) free_ckpts(list, n);
    }
    free(path);
    return rc;
}

int mg_ckpt_dir_latest(const char *out_dir, char *path_out, size_t path_len, char *err, size_t errlen) {
    if (!mg_ckpt_available()) {
        mg_errf(err, errlen, "cannot read checkpoints in '%s': " NO_HDF5_MSG, out_dir);
        return -1;
    }
    struct stat st;
    if (stat(out_dir, &st) != 0) {
        if (errno == ENOENT) {
            mg_errf(err, errlen, "no checkpoint directory '%s'", out_dir);
            return 1;
        }
        mg_errf(err, errlen, "cannot access checkpoint directory '%s': %s", out_dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        mg_errf(err, errlen, "'%s' is not a directory", out_dir);
        return -1;
    }
    char e2[600];
    char *lp = path_join(out_dir, "latest");
    FILE *f = fopen(lp, "r");
    char *pointed = NULL;
    if (f) {
        char line[1024] = "";
        if (fgets(line, sizeof(line), f)) {
            size_t n = strlen(line);
            while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
        }
        fclose(f);
        if (line[0]) {
            pointed = path_join(out_dir, line);
            if (mg_ckpt_read_meta(pointed, NULL, e2, sizeof(e2)) == 0) {
                snprintf(path_out, path_len, "%s", pointed);
                free(pointed);
                free(lp);
                return 0;
            }
            fprintf(stderr,
                    "warning: '%s' names an unusable checkpoint (%s); looking for the newest valid one in '%s'\n", lp,
                    e2, out_dir);
        } else {
            fprintf(stderr, "warning: '%s' is empty; looking for the newest valid checkpoint in '%s'\n", lp, out_dir);
        }
    }
    CkptEntry *list;
    int n = list_ckpts(out_dir, &list);
    if (n < 0) {
        mg_errf(err, errlen, "cannot list checkpoint directory '%s': %s", out_dir, strerror(errno));
        free(pointed);
        free(lp);
        return -1;
    }
    if (!f && n > 0)
        fprintf(stderr, "warning: '%s' is missing; looking for the newest valid checkpoint in '%s'\n", lp, out_dir);
    int rc = 1;
    for (int i = 0; i < n; i++) {
        char *p = path_join(out_dir, list[i].name);
        if (pointed && !strcmp(p, pointed)) {
            free(p);
            continue;
        }
        if (mg_ckpt_read_meta(p, NULL, e2, sizeof(e2)) == 0) {
            snprintf(path_out, path_len, "%s", p);
            fprintf(stderr, "warning: using '%s'\n", p);
            free(p);
            rc = 0;
            break;
        }
        fprintf(stderr, "warning: skipping unusable checkpoint: %s\n", e2);
        free(p);
    }
    if (rc == 1) mg_errf(err, errlen, "no usable checkpoint in '%s'", out_dir);
    if (n > 0) free_ckpts(list, n);
    free(pointed);
    free(lp);
    return rc;
}
