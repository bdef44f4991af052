/* The reader: open a checkpoint and validate its format (mg_ckpt_open, mg_ckpt_read_meta), list and read
 * single tensors (the tools), and load a whole checkpoint against a parameter table, staged through a
 * tensor I/O (mg_ckpt_load_io) or into host arrays (mg_ckpt_load). */
#ifdef MG_HAVE_HDF5

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../signals.h"
#include "h5io.h"

struct MgCkptReader {
    hid_t file;
    char *path;
    int64_t file_size; /* no tensor may claim more bytes than this (a damaged shape is refused before malloc) */
    int has_counts;    /* the file records tensor_counts (every file this version writes) */
    int64_t counts[3]; /* tensors in /model, /optimizer/m, /optimizer/v, by that record */
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
        if (e->i64[0] < 0 || e->i64[0] > MG_CKPT_COUNTER_MAX) {
            mg_errf(err, errlen,
                   "checkpoint '%s' has '%s' = %lld, outside [0, 2^53]: the file is damaged (or not written by "
                   "megalodon); use an older checkpoint",
                   path, ints[i], (long long)e->i64[0]);
            return -1;
        }
    }
    if (meta->tokens_seen < meta->step) {
        mg_errf(err, errlen,
               "checkpoint '%s' has 'tokens_seen' = %lld below 'step' = %lld (every step trains on at least one "
               "token): the file is damaged; use an older checkpoint",
               path, (long long)meta->tokens_seen, (long long)meta->step);
        return -1;
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
        if (ckpt_is_reserved(all->extra[i].name)) continue;
        MgMetaEntry *slot = ckpt_meta_slot(meta, all->extra[i].name, 0);
        *slot = all->extra[i];
        memset(&all->extra[i], 0, sizeof(MgMetaEntry));
    }
    return 0;
}

/* 1: /<group> exists and is a group; 0: it does not exist; -1: it exists (or may) but cannot be read,
 * or is not a group (damage, never taken for absence). */
static int group_state(MgCkptReader *r, const char *group) {
    int ex = ckpt_h5_link_exists(r->file, group);
    if (ex <= 0) return ex;
    H5O_info_t info;
    if (H5Oget_info_by_name1(r->file, group, &info, H5P_DEFAULT) < 0) {
        ckpt_h5_note();
        return -1;
    }
    return info.type == H5O_TYPE_GROUP ? 1 : -1;
}

int mg_ckpt_has_group(MgCkptReader *r, const char *group) {
    ckpt_h5_init();
    return group_state(r, group) == 1;
}

static int group_index(const char *group) {
    for (int gi = 0; gi < 3; gi++)
        if (!strcmp(group, mg_ckpt_group_name(gi))) return gi;
    return -1;
}

/* Which tensor groups the file holds, checked against its tensor_counts record (files without one, such
 * as those written by other tools from the documented format, are checked for consistency only): a group
 * that cannot be read, or that the record says exists but is absent (or the reverse), is an error. */
static int check_groups(MgCkptReader *r, const MgCkptMeta *all, MgCkptMeta *meta, char *err, size_t errlen) {
    const MgMetaEntry *c = mg_ckpt_meta_find(all, MG_CKPT_ATTR_COUNTS);
    if (c) {
        if (c->type != MG_META_I64 || c->n != 3) {
            mg_errf(err, errlen, "checkpoint '%s' has a malformed '" MG_CKPT_ATTR_COUNTS "' attribute (damaged?)",
                   r->path);
            return -1;
        }
        for (int gi = 0; gi < 3; gi++) r->counts[gi] = c->i64[gi];
        int ok = r->counts[0] >= 1 && r->counts[0] <= 1000000 && r->counts[1] == r->counts[2] &&
                 (r->counts[1] == 0 || r->counts[1] == r->counts[0]);
        if (!ok) {
            mg_errf(err, errlen,
                   "checkpoint '%s' has an impossible '" MG_CKPT_ATTR_COUNTS "' = [%lld, %lld, %lld] (damaged?)",
                   r->path, (long long)r->counts[0], (long long)r->counts[1], (long long)r->counts[2]);
            return -1;
        }
        r->has_counts = 1;
    }
    int st[3];
    for (int gi = 0; gi < 3; gi++) {
        const char *g = mg_ckpt_group_name(gi);
        st[gi] = group_state(r, g);
        if (st[gi] < 0) {
            mg_errf(err, errlen,
                   "checkpoint '%s': group '/%s' exists but cannot be read (damaged; not taken for an absent group): "
                   "%s",
                   r->path, g, REASON());
            return -1;
        }
        if (r->has_counts && st[gi] != (r->counts[gi] > 0)) {
            mg_errf(err, errlen,
                   "checkpoint '%s': group '/%s' is %s but the file records %lld tensors in it (damaged, or "
                   "altered after it was written)",
                   r->path, g, st[gi] ? "present" : "missing", (long long)r->counts[gi]);
            return -1;
        }
    }
    if (st[1] != st[2]) {
        mg_errf(err, errlen, "checkpoint '%s' has /%s but no /%s (damaged, or not written by megalodon)", r->path,
               mg_ckpt_group_name(st[1] ? 1 : 2), mg_ckpt_group_name(st[1] ? 2 : 1));
        return -1;
    }
    meta->has_optimizer = st[1] == 1 && st[2] == 1;
    return 0;
}

MgCkptReader *mg_ckpt_open(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen) {
    ckpt_h5_init();
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
    char bad[MG_CKPT_META_NAME_MAX];
    if (ckpt_h5_read_attrs(file, &all, bad, sizeof(bad))) {
        if (bad[0])
            mg_errf(err, errlen, "cannot read attribute '%s' of checkpoint '%s' (damaged?): %s", bad, path,
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
    MgCkptReader *r = mg_calloc(1, sizeof(*r));
    r->file = file;
    r->path = mg_strdup(path);
    struct stat st;
    r->file_size = stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
    int grc = check_groups(r, &all, &meta, err, errlen);
    mg_ckpt_meta_free(&all);
    if (grc) {
        mg_ckpt_meta_free(&meta);
        mg_ckpt_close(r);
        return NULL;
    }
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

/* Shape, dtype and stored CRC32 of an open dataset. A shape claiming more float32 bytes than the whole
 * file holds is refused here, before anyone allocates for it; so is a crc32 attribute that exists but
 * cannot be read (only an absent one means "no checksum"). -1 with the reason in why. */
static int tensor_info(const MgCkptReader *r, hid_t ds, const char *name, MgCkptTensorInfo *ti, char *why,
                       size_t whylen) {
    memset(ti, 0, sizeof(*ti));
    snprintf(ti->name, sizeof(ti->name), "%s", name);
    snprintf(why, whylen, "unknown error");
    hid_t sp = H5Dget_space(ds), ft = H5Dget_type(ds), a = -1, at = -1;
    int rc = -1, h5 = 1;
    if (sp < 0 || ft < 0) goto done;
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0) goto done;
    if (nd > 4) {
        snprintf(why, whylen, "%d dimensions (at most 4)", nd);
        h5 = 0;
        goto done;
    }
    hsize_t dims[4] = {0};
    if (H5Sget_simple_extent_dims(sp, dims, NULL) < 0) goto done;
    ti->ndim = nd;
    ti->numel = 1;
    int64_t limit = r->file_size / 4; /* the most float32 values the file can hold */
    for (int i = 0; i < nd; i++) {
        if (dims[i] > (hsize_t)limit || (dims[i] > 0 && ti->numel > limit / (int64_t)dims[i])) {
            snprintf(why, whylen, "its shape claims more than the %lld float32 values the whole file can hold",
                     (long long)limit);
            h5 = 0;
            goto done;
        }
        ti->shape[i] = (int64_t)dims[i];
        ti->numel *= (int64_t)dims[i];
    }
    H5T_class_t cls = H5Tget_class(ft);
    if (cls < 0) goto done;
    ti->is_f32 = cls == H5T_FLOAT && H5Tget_size(ft) == 4;
    htri_t ex = H5Aexists(ds, "crc32");
    if (ex < 0) goto done;
    if (ex > 0) {
        a = H5Aopen(ds, "crc32", H5P_DEFAULT);
        if (a < 0 || (at = H5Aget_type(a)) < 0) goto done;
        if (H5Tget_class(at) != H5T_INTEGER) {
            snprintf(why, whylen, "its crc32 attribute is not an integer");
            h5 = 0;
            goto done;
        }
        unsigned int c = 0;
        if (H5Aread(a, H5T_NATIVE_UINT, &c) < 0) goto done;
        ti->has_crc = 1;
        ti->crc = c;
    }
    rc = 0;
done:
    if (rc && h5) {
        ckpt_h5_note();
        snprintf(why, whylen, "%s", REASON());
    }
    ckpt_h5_close(a);
    ckpt_h5_close(at);
    ckpt_h5_close(sp);
    ckpt_h5_close(ft);
    return rc;
}

typedef struct {
    const MgCkptReader *r;
    MgCkptTensorInfo *list;
    int64_t *order;
    int n, cap, failed;
    char bad[96], why[300];
} ListIter;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    ListIter *it = data;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) {
        ckpt_h5_note();
        snprintf(it->why, sizeof(it->why), "%s", REASON());
        goto fail;
    }
    if (H5Iget_type(o) != H5I_DATASET) { /* a subgroup: not part of our format, skip */
        ckpt_h5_close(o);
        return 0;
    }
    if (it->n == it->cap) {
        it->cap = it->cap ? 2 * it->cap : 64;
        it->list = mg_realloc(it->list, sizeof(MgCkptTensorInfo) * (size_t)it->cap);
        it->order = mg_realloc(it->order, sizeof(int64_t) * (size_t)it->cap);
    }
    it->order[it->n] = info->corder_valid ? (int64_t)info->corder : -1;
    const int too_long = strlen(name) >= sizeof(it->list[0].name);
    if (too_long) snprintf(it->why, sizeof(it->why), "name too long");
    if (too_long || tensor_info(it->r, o, name, &it->list[it->n], it->why, sizeof(it->why)) != 0) {
        ckpt_h5_close(o);
        goto fail;
    }
    it->n++;
    ckpt_h5_close(o);
    return 0;
fail:
    it->failed = 1;
    snprintf(it->bad, sizeof(it->bad), "%s", name);
    return -1;
}

int mg_ckpt_list(MgCkptReader *r, const char *group, MgCkptTensorInfo **out, int *n, char *err, size_t errlen) {
    ckpt_h5_init();
    *out = NULL;
    *n = 0;
    int st = group_state(r, group);
    if (st < 0) {
        mg_errf(err, errlen, "checkpoint '%s': group '/%s' exists but cannot be read (damaged): %s", r->path, group,
               REASON());
        return -1;
    }
    if (st == 0) return 0;
    hid_t g = H5Gopen2(r->file, group, H5P_DEFAULT);
    if (g < 0) {
        mg_errf(err, errlen, "cannot open group '/%s' of checkpoint '%s': %s", group, r->path, REASON());
        return -1;
    }
    ListIter it = {0};
    it.r = r;
    hsize_t idx = 0;
    /* by name, then sorted by creation order (see AttrIter): our files list in table order */
    herr_t rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &it);
    if (rc >= 0) ckpt_sort_by_order(it.list, sizeof(MgCkptTensorInfo), it.n, it.order);
    free(it.order);
    if (rc < 0) ckpt_h5_note();
    H5Gclose(g);
    if (rc < 0) {
        if (it.failed)
            mg_errf(err, errlen, "checkpoint '%s': cannot read tensor '/%s/%s' (damaged?): %s", r->path, group,
                   it.bad, it.why);
        else
            mg_errf(err, errlen, "cannot list group '/%s' of checkpoint '%s' (damaged?): %s", group, r->path, REASON());
        free(it.list);
        return -1;
    }
    int gi = group_index(group);
    if (r->has_counts && gi >= 0 && it.n != r->counts[gi]) {
        mg_errf(err, errlen,
               "checkpoint '%s': group '/%s' holds %d tensors but the file records %lld (damaged, or altered after "
               "it was written)",
               r->path, group, it.n, (long long)r->counts[gi]);
        free(it.list);
        return -1;
    }
    *out = it.list;
    *n = it.n;
    return 0;
}

/* ---- reading tensors ---- */

/* A tensor dataset opened for reading. */
typedef struct {
    hid_t ds;
    char dpath[256]; /* "<group>/<name>" */
    MgCkptTensorInfo ti;
} OpenTensor;

/* Open /<group>/<name> and check that it holds numel elements. */
static int tensor_open(MgCkptReader *r, const char *group, const char *name, int64_t numel, OpenTensor *o, char *err,
                       size_t errlen) {
    snprintf(o->dpath, sizeof(o->dpath), "%s/%s", group, name);
    o->ds = -1;
    int ex = ckpt_h5_link_exists(r->file, o->dpath);
    if (ex <= 0) {
        if (ex == 0)
            mg_errf(err, errlen, "checkpoint '%s' has no tensor '/%s'", r->path, o->dpath);
        else
            mg_errf(err, errlen, "checkpoint '%s': cannot tell whether tensor '/%s' exists (damaged): %s", r->path,
                   o->dpath, REASON());
        return -1;
    }
    o->ds = H5Dopen2(r->file, o->dpath, H5P_DEFAULT);
    if (o->ds < 0) {
        mg_errf(err, errlen, "cannot open tensor '/%s' in checkpoint '%s': %s", o->dpath, r->path, REASON());
        return -1;
    }
    char why[300];
    if (tensor_info(r, o->ds, name, &o->ti, why, sizeof(why)) != 0)
        mg_errf(err, errlen, "cannot read the shape, type or checksum of tensor '/%s' in checkpoint '%s' (damaged?): %s",
                o->dpath, r->path, why);
    else if (o->ti.numel != numel)
        mg_errf(err, errlen, "tensor '/%s' in checkpoint '%s' has %lld elements, expected %lld", o->dpath, r->path,
                (long long)o->ti.numel, (long long)numel);
    else
        return 0;
    H5Dclose(o->ds);
    o->ds = -1;
    return -1;
}

/* Read elements [start, start + count) (row-major flat index) of an open tensor into dst[0..count). */
static int tensor_read(MgCkptReader *r, const OpenTensor *o, int64_t start, int64_t count, float *dst, char *err,
                       size_t errlen) {
    if (count == 0) return 0;
    hid_t fspace = H5S_ALL, mspace = H5S_ALL;
    herr_t rc = 0;
    if (!(start == 0 && count == o->ti.numel)) {
        hsize_t cnt = (hsize_t)count;
        fspace = H5Dget_space(o->ds);
        mspace = H5Screate_simple(1, &cnt, NULL);
        rc = (fspace < 0 || mspace < 0 || ckpt_h5_select_range(fspace, o->ti.ndim, o->ti.shape, start, count) < 0)
                 ? -1
                 : 0;
    }
    double t0 = mg_now();
    if (rc == 0) rc = H5Dread(o->ds, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, dst);
    ckpt_stats.io_seconds += mg_now() - t0;
    if (rc < 0) ckpt_h5_note();
    if (fspace != H5S_ALL) ckpt_h5_close(fspace);
    if (mspace != H5S_ALL) ckpt_h5_close(mspace);
    if (rc < 0) {
        mg_errf(err, errlen, "cannot read tensor '/%s' from checkpoint '%s' (truncated or damaged?): %s", o->dpath,
                r->path, REASON());
        return -1;
    }
    return 0;
}

static CkptScan timed_scan(const float *x, int64_t n) {
    double t0 = mg_now();
    CkptScan s = ckpt_scan_f32(x, n);
    ckpt_stats.crc_seconds += mg_now() - t0;
    return s;
}

/* The stored CRC32 (when the file has one) against the CRC of the data read. */
static int crc_check(const MgCkptReader *r, const OpenTensor *o, uint32_t crc, char *err, size_t errlen) {
    if (o->ti.has_crc && o->ti.is_f32 && crc != o->ti.crc) {
        mg_errf(err, errlen,
                "tensor '/%s' in checkpoint '%s' is corrupt: CRC32 of its data is 0x%08x, the file records 0x%08x (the "
                "file was damaged after it was written; use an older checkpoint)",
                o->dpath, r->path, crc, o->ti.crc);
        return -1;
    }
    return 0;
}

int mg_ckpt_read_tensor(MgCkptReader *r, const char *group, const char *name, float *dst, int64_t numel, char *err,
                        size_t errlen) {
    ckpt_h5_init();
    OpenTensor o;
    if (tensor_open(r, group, name, numel, &o, err, errlen)) return -1;
    int rc = tensor_read(r, &o, 0, numel, dst, err, errlen);
    H5Dclose(o.ds);
    if (rc) return -1;
    ckpt_stats.bytes += (double)numel * 4;
    return crc_check(r, &o, timed_scan(dst, numel).crc, err, errlen);
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

/* ---- whole checkpoints through a tensor I/O ---- */

static int stage_put(const MgCkptTensorIO *io, const MgCkptReader *r, int gi, const MgParam *P, int64_t start,
                     int64_t count, const float *src, char *err, size_t errlen) {
    char e2[400] = "";
    double t0 = mg_now();
    int rc = io->put(io->ctx, gi, P, start, count, src, e2, sizeof(e2));
    ckpt_stats.xfer_seconds += mg_now() - t0;
    if (rc != 0)
        mg_errf(err, errlen, "cannot load checkpoint '%s': putting elements [%lld, %lld) of tensor '/%s/%s' failed: %s",
                r->path, (long long)start, (long long)(start + count), mg_ckpt_group_name(gi), P->name,
                e2[0] ? e2 : "(the tensor I/O gave no reason)");
    return rc != 0 ? -1 : 0;
}

/* One tensor: read into the staging buffer, checked (CRC32, NaN/Inf), then put; see checkpoint.h for the
 * two passes of a tensor larger than the staging buffer. */
static int load_tensor(MgCkptReader *r, const MgCkptTensorIO *io, int gi, const MgParam *P, float *stage,
                       int64_t cap, char *err, size_t errlen) {
    OpenTensor o;
    if (tensor_open(r, mg_ckpt_group_name(gi), P->name, P->numel, &o, err, errlen)) return -1;
    int rc = -1;
    CkptScan s = {0, 0, -1}, again = {0, 0, -1};
    for (int64_t at = 0; at < P->numel; at += cap) { /* pass 1: read and check */
        int64_t n = MG_MIN(cap, P->numel - at);
        if (tensor_read(r, &o, at, n, stage, err, errlen)) goto done;
        ckpt_scan_append(&s, at, timed_scan(stage, n), n);
    }
    if (crc_check(r, &o, s.crc, err, errlen)) goto done;
    if (s.nonfinite) {
        mg_errf(err, errlen,
                "tensor '/%s' in checkpoint '%s' holds %lld NaN/Inf values (first at element %lld): the run "
                "had diverged when it was saved; use an older checkpoint",
                o.dpath, r->path, (long long)s.nonfinite, (long long)s.first_bad);
        goto done;
    }
    if (P->numel <= cap) {
        rc = P->numel ? stage_put(io, r, gi, P, 0, P->numel, stage, err, errlen) : 0;
        goto done;
    }
    for (int64_t at = 0; at < P->numel; at += cap) { /* pass 2: read again and put */
        int64_t n = MG_MIN(cap, P->numel - at);
        if (tensor_read(r, &o, at, n, stage, err, errlen)) goto done;
        ckpt_scan_append(&again, at, timed_scan(stage, n), n);
        if (stage_put(io, r, gi, P, at, n, stage, err, errlen)) goto done;
    }
    if (again.crc != s.crc) {
        mg_errf(err, errlen,
                "tensor '/%s' in checkpoint '%s' read back differently the second time (CRC32 0x%08x, then 0x%08x): "
                "is the file being changed, or the disk failing?",
                o.dpath, r->path, s.crc, again.crc);
        goto done;
    }
    rc = 0;
done:
    H5Dclose(o.ds);
    if (rc == 0) ckpt_stats.bytes += (double)P->numel * 4;
    return rc;
}

int mg_ckpt_load_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    MgCkptMeta *meta_out, char *err, size_t errlen) {
    ckpt_h5_init();
    memset(&ckpt_stats, 0, sizeof(ckpt_stats));
    if (meta_out) mg_ckpt_meta_init(meta_out); /* valid (empty) on failure too */
    double t_start = mg_now();
    if (!io || !io->put || io->stage_elems < 0) {
        mg_errf(err, errlen, "mg_ckpt_load_io('%s'): the tensor I/O needs a put function and stage_elems >= 0",
                path);
        return -1;
    }
    MgCkptMeta meta;
    MgCkptReader *r = mg_ckpt_open(path, &meta, err, errlen);
    if (!r) return -1;
    int rc = -1;
    if (with_optimizer && !meta.has_optimizer) {
        mg_errf(err, errlen,
               "checkpoint '%s' holds weights only (no /optimizer/m and /optimizer/v): it cannot resume the optimizer; "
               "start from its weights without optimizer state instead",
               path);
        goto done;
    }
    const char *groups[3] = {"model", "optimizer/m", "optimizer/v"};
    int ngroups = with_optimizer ? 3 : 1;
    float *stage = NULL;
    MgCkptTensorInfo *lists[3] = {NULL, NULL, NULL};
    int counts[3] = {0, 0, 0};
    /* Validate every group's names, shapes and dtypes before reading any data. */
    for (int gi = 0; gi < ngroups; gi++) {
        if (group_state(r, groups[gi]) != 1) {
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
    int64_t cap = mg_ckpt_stage_elems(t, io);
    stage = mg_malloc(sizeof(float) * (size_t)cap);
    for (int gi = 0; gi < ngroups; gi++)
        for (int p = 0; p < t->count; p++) {
            if (mg_stop_requested()) { /* between tensors: loading only reads, so stopping here is clean */
                mg_errf(err, errlen, "loading checkpoint '%s' was interrupted by %s", path, mg_stop_signal_name());
                goto free_lists;
            }
            if (load_tensor(r, io, gi, &t->params[p], stage, cap, err, errlen)) goto free_lists;
        }
    rc = 0;
free_lists:
    free(stage);
    for (int gi = 0; gi < 3; gi++) free(lists[gi]);
done:
    mg_ckpt_close(r);
    if (rc == 0 && meta_out)
        *meta_out = meta;
    else
        mg_ckpt_meta_free(&meta);
    ckpt_stats.seconds = mg_now() - t_start;
    return rc;
}

int mg_ckpt_load(const char *path, const MgParamTable *t, float *params, float *m, float *v, MgCkptMeta *meta_out,
                 char *err, size_t errlen) {
    if ((m == NULL) != (v == NULL)) {
        memset(&ckpt_stats, 0, sizeof(ckpt_stats));
        if (meta_out) mg_ckpt_meta_init(meta_out);
        mg_errf(err, errlen, "mg_ckpt_load('%s'): pass both optimizer moments m and v, or neither", path);
        return -1;
    }
    CkptHostArrays h = {{NULL, NULL, NULL}, {params, m, v}};
    MgCkptTensorIO io = ckpt_host_io(&h);
    return mg_ckpt_load_io(path, t, &io, m != NULL, meta_out, err, errlen);
}

#endif /* MG_HAVE_HDF5 */
