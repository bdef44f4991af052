/* The HDF5 helpers the reader and the writer share: initialisation and error capture, attributes (root
 * attributes <-> MgCkptMeta entries), link tests and element-range selections. */
#ifdef MG_HAVE_HDF5

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "h5io.h"

/* Per thread: a thread-safe HDF5 build (Debian's is one) keeps an error stack, and its automatic
 * printing, per thread, and a background checkpoint writer (async.c) calls HDF5 from its own thread. */
static _Thread_local char g_reason[300];
void ckpt_h5_init(void) {
    static _Thread_local int done = 0;
    if (!done) {
        /* No HDF5 clean-up at process exit: after a failed metadata write (I/O error) HDF5 1.10 leaves the
         * file half-closed and its exit handler then crashes. Every file here is closed explicitly. (The first
         * thread's call counts; a later one only returns an error.) */
        H5dont_atexit();
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we print our own messages (per thread, see above) */
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

/* The reason is captured at the failing call (ckpt_h5_note()), before cleanup calls clear HDF5's error
 * stack; a later ckpt_h5_note() with an empty stack keeps it. Reset at the start of each public operation. */
void ckpt_h5_note(void) {
    if (H5Eget_num(H5E_DEFAULT) > 0) h5_reason(g_reason, sizeof(g_reason));
}

const char *ckpt_h5_reason(void) {
    ckpt_h5_note();
    return g_reason;
}

void ckpt_h5_close(hid_t id) {
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

int ckpt_h5_attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int is_array, int64_t n,
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
    if (rc) ckpt_h5_note();
    ckpt_h5_close(a);
    ckpt_h5_close(space);
    return rc;
}

/* Strings are fixed-length (the text plus its NUL), stored inside the checksummed object header:
 * variable-length strings would live in HDF5's global heap, which has no checksum, and HDF5 1.10 crashes
 * reading a damaged one. */
int ckpt_h5_attr_write_str(hid_t loc, const char *name, const char *s) {
    const char *p = s ? s : "";
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(p) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = ckpt_h5_attr_write(loc, name, t, t, 0, 1, p);
    H5Tclose(t);
    return rc;
}

int ckpt_h5_attr_write_i64(hid_t loc, const char *name, int64_t v) {
    return ckpt_h5_attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 1, &v);
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
    if (rc < 0) ckpt_h5_note();
    if (rc != 0) ckpt_entry_free(e);
    ckpt_h5_close(mt);
    ckpt_h5_close(ft);
    ckpt_h5_close(sp);
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
void ckpt_sort_by_order(void *base, size_t size, int n, const int64_t *order) {
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
        ckpt_h5_note();
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
        MgMetaEntry *slot = ckpt_meta_slot(it->all, name, 0);
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

int ckpt_h5_read_attrs(hid_t loc, MgCkptMeta *all, char *bad, size_t badlen) {
    AttrIter it = {all, NULL, 0, 0, ""};
    hsize_t idx = 0;
    herr_t rc = H5Aiterate2(loc, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_iter_cb, &it);
    if (rc >= 0) ckpt_sort_by_order(all->extra, sizeof(MgMetaEntry), all->n_extra, it.order);
    free(it.order);
    if (rc < 0) ckpt_h5_note();
    snprintf(bad, badlen, "%s", it.failed ? it.name : "");
    return rc < 0 ? -1 : 0;
}

/* ---- links and selections ---- */

int ckpt_h5_link_exists(hid_t loc, const char *path) {
    /* H5Lexists fails on a path whose intermediate group is missing, so test level by level. */
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            htri_t ex = H5Lexists(loc, buf, H5P_DEFAULT);
            if (ex < 0) {
                ckpt_h5_note();
                return -1; /* could not be told: a damaged object header, not "absent" */
            }
            if (ex == 0) return 0;
            if (!c) return 1;
            *p = c;
        }
    }
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

int ckpt_h5_select_range(hid_t space, int ndim, const int64_t *shape, int64_t start, int64_t count) {
    hsize_t dims[4], prefix[4] = {0};
    for (int i = 0; i < ndim; i++) dims[i] = (hsize_t)shape[i];
    if (H5Sselect_none(space) < 0) return -1;
    return select_flat(space, ndim, dims, 0, prefix, (hsize_t)start, (hsize_t)(start + count));
}

#endif /* MG_HAVE_HDF5 */
