/* The writer: a checkpoint file built tensor by tensor (mg_ckpt_writer_begin / add / put / commit /
 * abort) into `<path>.<random>.tmp` (a unique name, created exclusively) and renamed into place
 * crash-safely; on top of it mg_ckpt_save_io, which stages every tensor through a tensor I/O, and
 * mg_ckpt_save, the same for host arrays. */
#ifdef MG_HAVE_HDF5

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../common.h"
#include "../fsutil.h"
#include "h5io.h"

struct MgCkptWriter {
    hid_t file;
    char *path, *tmp;
    int created; /* tmp is ours to remove (it was created by us) */
    /* The group and dataset last created stay open: put() right after add() then needs no lookup by
     * name, which costs time linear in the group size with compact (in-header) link storage. */
    hid_t group, ds;
    char group_name[64], ds_path[256];
    int64_t counts[3]; /* tensors added per MgCkptGroup, recorded as the root attribute tensor_counts */
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
    int removed = !w->created || unlink(w->tmp) == 0 || errno == ENOENT;
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
    ckpt_h5_init();
    MgCkptWriter *w = mg_calloc(1, sizeof(*w));
    w->file = w->group = w->ds = -1;
    w->path = mg_strdup(path);
    w->tmp = mg_fs_temp_name(path);
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
    /* The temp file has a name nobody can predict and is created exclusively (O_CREAT | O_EXCL: an existing
     * file or symlink there is never opened), so nothing is written through a planted symlink. */
    w->file = H5Fcreate(w->tmp, H5F_ACC_EXCL, fcpl, fapl);
    for (int attempt = 0; w->file < 0 && attempt < 10 && faccessat(AT_FDCWD, w->tmp, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
         attempt++) {
        H5Eclear2(H5E_DEFAULT); /* a name clash (vanishingly rare): another unique name */
        free(w->tmp);
        w->tmp = mg_fs_temp_name(path);
        w->file = H5Fcreate(w->tmp, H5F_ACC_EXCL, fcpl, fapl);
    }
    if (w->file < 0) ckpt_h5_note();
    w->created = w->file >= 0;
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (w->file < 0) {
        mg_errf(err, errlen, "cannot create checkpoint file '%s': %s", w->path, REASON());
        writer_discard(w, err, errlen);
        return NULL;
    }
    int ok = ckpt_h5_attr_write_str(w->file, "format", MG_CKPT_FORMAT) == 0 &&
             ckpt_h5_attr_write_i64(w->file, "format_version", MG_CKPT_FORMAT_VERSION) == 0 &&
             ckpt_h5_attr_write_i64(w->file, "step", meta->step) == 0 &&
             ckpt_h5_attr_write_i64(w->file, "tokens_seen", meta->tokens_seen) == 0 &&
             ckpt_h5_attr_write_str(w->file, "config", meta->config_text) == 0;
    for (int i = 0; ok && i < meta->n_extra; i++) {
        const MgMetaEntry *e = &meta->extra[i];
        if (ckpt_is_reserved(e->name)) continue;
        if (e->type == MG_META_I64)
            ok = ckpt_h5_attr_write(w->file, e->name, H5T_STD_I64LE, H5T_NATIVE_INT64, e->is_array, e->n, e->i64) == 0;
        else if (e->type == MG_META_F64)
            ok = ckpt_h5_attr_write(w->file, e->name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, e->is_array, e->n, e->f64) == 0;
        else
            ok = ckpt_h5_attr_write_str(w->file, e->name, e->str) == 0;
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
                ckpt_h5_note();
                return -1;
            }
            if (!ex) {
                hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
                H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
                H5Pset_link_phase_change(gcpl, MG_COMPACT_MAX, MG_COMPACT_MAX);
                hid_t g = H5Gcreate2(file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
                if (g < 0) ckpt_h5_note();
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
    ckpt_h5_init();
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
    if (ds >= 0 && ckpt_h5_attr_write(ds, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, 1, &crc) == 0) rc = 0;
    if (rc)
        mg_errf(err, errlen, "cannot write checkpoint '%s': creating tensor '/%s/%s' failed: %s", w->path, group,
               p->name, REASON());
    if (rc == 0) {
        for (int gi = 0; gi < 3; gi++)
            if (!strcmp(group, mg_ckpt_group_name(gi))) w->counts[gi]++;
        w->ds = ds;
        snprintf(w->ds_path, sizeof(w->ds_path), "%s/%s", group, p->name);
    } else
        ckpt_h5_close(ds);
    ckpt_h5_close(dcpl);
    ckpt_h5_close(space);
    return rc;
}

int mg_ckpt_writer_put(MgCkptWriter *w, const char *group, const MgParam *p, int64_t start, int64_t count,
                       const float *src, char *err, size_t errlen) {
    char dpath[256];
    ckpt_h5_init();
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
        hsize_t cnt = (hsize_t)count;
        fspace = H5Dget_space(ds);
        mspace = H5Screate_simple(1, &cnt, NULL);
        rc = (fspace < 0 || mspace < 0 || ckpt_h5_select_range(fspace, p->ndim, p->shape, start, count) < 0) ? -1 : 0;
    }
    double t0 = mg_now();
    if (rc == 0) rc = H5Dwrite(ds, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, src);
    ckpt_stats.io_seconds += mg_now() - t0;
    if (rc < 0)
        mg_errf(err, errlen, "cannot write checkpoint '%s': writing tensor '/%s' failed: %s", w->path, dpath, REASON());
    else
        ckpt_stats.bytes += (double)count * 4;
    if (fspace != H5S_ALL) ckpt_h5_close(fspace);
    if (mspace != H5S_ALL) ckpt_h5_close(mspace);
    if (!cached) H5Dclose(ds);
    return rc < 0 ? -1 : 0;
}

int mg_ckpt_writer_commit(MgCkptWriter *w, char *err, size_t errlen) {
    ckpt_h5_init();
    double t0 = mg_now();
    /* Reserve the disk blocks of the whole file (up to HDF5's end of allocation, without changing the
     * size) before HDF5 writes its metadata: a full disk then fails here, cleanly, instead of inside
     * HDF5's flush, which cannot recover from a failed write (see writer_discard). */
    writer_close_cached(w);
    /* What the file must hold, so a reader can tell a damaged group from an absent one (docs/checkpoint.md
     * "What a load verifies"). */
    if (ckpt_h5_attr_write(w->file, MG_CKPT_ATTR_COUNTS, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, 3, w->counts)) {
        mg_errf(err, errlen, "cannot write checkpoint '%s': writing the attribute '" MG_CKPT_ATTR_COUNTS "' failed: %s",
                w->path, REASON());
        writer_discard(w, err, errlen);
        return -1;
    }
    ckpt_hook("before-reserve", 0);
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
    ckpt_hook("before-close", 0);
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
    if (ckpt_fsync_path(w->tmp, err, errlen)) {
        writer_discard(w, err, errlen);
        return -1;
    }
    ckpt_hook("before-rename", 0);
    if (rename(w->tmp, w->path) != 0) {
        mg_errf(err, errlen, "cannot rename '%s' to '%s': %s", w->tmp, w->path, strerror(errno));
        writer_discard(w, err, errlen);
        return -1;
    }
    char *dir = ckpt_dir_of(w->path);
    int drc = ckpt_fsync_dir(dir, err, errlen);
    free(dir);
    free(w->path);
    free(w->tmp);
    free(w);
    ckpt_stats.sync_seconds += mg_now() - t0;
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
    char *dir = ckpt_dir_of(path);
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

/* ---- whole checkpoints through a tensor I/O ---- */

/* Test aid (checkpoint.h): MG_CKPT_TEST_WRITE_DELAY_MS=N holds every save N ms with its temp file open. */
static void test_write_delay(void) {
    const char *s = getenv("MG_CKPT_TEST_WRITE_DELAY_MS");
    long ms = s && *s ? strtol(s, NULL, 10) : 0;
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* get() elements [start, start + count) of tensor P into dst; the message names the file and tensor. */
static int stage_get(const MgCkptTensorIO *io, const char *path, int gi, const MgParam *P, int64_t start,
                     int64_t count, float *dst, char *err, size_t errlen) {
    char e2[400] = "";
    double t0 = mg_now();
    int rc = io->get(io->ctx, gi, P, start, count, dst, e2, sizeof(e2));
    ckpt_stats.xfer_seconds += mg_now() - t0;
    if (rc != 0)
        mg_errf(err, errlen, "cannot write checkpoint '%s': getting elements [%lld, %lld) of tensor '/%s/%s' failed: %s",
                path, (long long)start, (long long)(start + count), mg_ckpt_group_name(gi), P->name,
                e2[0] ? e2 : "(the tensor I/O gave no reason)");
    return rc != 0 ? -1 : 0;
}

static CkptScan stage_scan(const float *x, int64_t n) {
    double t0 = mg_now();
    CkptScan s = ckpt_scan_f32(x, n);
    ckpt_stats.crc_seconds += mg_now() - t0;
    return s;
}

/* Refuse NaN/Inf: a diverged state must not become `latest` and push good checkpoints out of the rotation. */
static int refuse_nonfinite(const MgCkptWriter *w, const char *group, const MgParam *P, CkptScan s, char *err,
                            size_t errlen) {
    if (!s.nonfinite) return 0;
    mg_errf(err, errlen,
            "refusing to save checkpoint '%s': tensor '/%s/%s' holds %lld NaN/Inf values (first at element "
            "%lld); the run has diverged, earlier checkpoints are kept",
            w->path, group, P->name, (long long)s.nonfinite, (long long)s.first_bad);
    return -1;
}

/* One tensor: read in place through io->view when it offers one, else staged (the buffer *stage of cap
 * elements is allocated on first use); checksummed and scanned, created with its CRC32 and written (see
 * checkpoint.h for the two passes of a tensor larger than the staging buffer). */
static int save_tensor(MgCkptWriter *w, const MgCkptTensorIO *io, int gi, const MgParam *P, float **stage,
                       int64_t cap, char *err, size_t errlen) {
    const char *group = mg_ckpt_group_name(gi);
    const float *in_place = io->view ? io->view(io->ctx, gi, P) : NULL;
    if (in_place) {
        CkptScan s = stage_scan(in_place, P->numel);
        if (refuse_nonfinite(w, group, P, s, err, errlen) || mg_ckpt_writer_add(w, group, P, s.crc, err, errlen))
            return -1;
        return mg_ckpt_writer_put(w, group, P, 0, P->numel, in_place, err, errlen);
    }
    if (!*stage) *stage = mg_malloc(sizeof(float) * (size_t)cap);
    float *buf = *stage;
    int one_pass = P->numel <= cap;
    CkptScan s = {0, 0, -1};
    for (int64_t at = 0; at < P->numel; at += cap) { /* pass 1: CRC32 and NaN/Inf */
        int64_t n = MG_MIN(cap, P->numel - at);
        if (stage_get(io, w->path, gi, P, at, n, buf, err, errlen)) return -1;
        CkptScan c = stage_scan(buf, n);
        ckpt_scan_append(&s, at, c, n);
    }
    if (refuse_nonfinite(w, group, P, s, err, errlen)) return -1;
    if (mg_ckpt_writer_add(w, group, P, s.crc, err, errlen)) return -1;
    if (one_pass) return mg_ckpt_writer_put(w, group, P, 0, P->numel, buf, err, errlen);
    CkptScan again = {0, 0, -1};
    for (int64_t at = 0; at < P->numel; at += cap) { /* pass 2: the same ranges again, written */
        int64_t n = MG_MIN(cap, P->numel - at);
        if (stage_get(io, w->path, gi, P, at, n, buf, err, errlen)) return -1;
        ckpt_scan_append(&again, at, stage_scan(buf, n), n);
        if (mg_ckpt_writer_put(w, group, P, at, n, buf, err, errlen)) return -1;
    }
    if (again.crc != s.crc) {
        mg_errf(err, errlen,
                "cannot write checkpoint '%s': tensor '/%s/%s' changed while it was being saved (its two reads "
                "through the tensor I/O differ: is it still being written to?)",
                w->path, group, P->name);
        return -1;
    }
    return 0;
}

int mg_ckpt_save_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    const MgCkptMeta *meta, char *err, size_t errlen) {
    ckpt_h5_init();
    memset(&ckpt_stats, 0, sizeof(ckpt_stats));
    double t_start = mg_now();
    if (!io || !io->get || io->stage_elems < 0) {
        mg_errf(err, errlen, "mg_ckpt_save_io('%s'): the tensor I/O needs a get function and stage_elems >= 0",
                path);
        return -1;
    }
    int ngroups = with_optimizer ? 3 : 1;
    if (preflight(path, t, ngroups, meta, err, errlen)) return -1;
    int64_t cap = mg_ckpt_stage_elems(t, io);
    MgCkptWriter *w = mg_ckpt_writer_begin(path, meta, err, errlen);
    if (!w) return -1;
    test_write_delay();
    float *stage = NULL; /* allocated by the first tensor that is not read in place */
    int k = 0;
    for (int gi = 0; gi < ngroups; gi++)
        for (int p = 0; p < t->count; p++) {
            if (save_tensor(w, io, gi, &t->params[p], &stage, cap, err, errlen)) {
                free(stage);
                writer_discard(w, err, errlen);
                return -1;
            }
            ckpt_hook("tensor", k++);
        }
    free(stage);
    int rc = mg_ckpt_writer_commit(w, err, errlen);
    ckpt_stats.seconds = mg_now() - t_start;
    return rc;
}

int mg_ckpt_save(const char *path, const MgParamTable *t, const float *params, const float *m, const float *v,
                 const MgCkptMeta *meta, char *err, size_t errlen) {
    if ((m == NULL) != (v == NULL)) {
        memset(&ckpt_stats, 0, sizeof(ckpt_stats));
        mg_errf(err, errlen, "mg_ckpt_save('%s'): pass both optimizer moments m and v, or neither", path);
        return -1;
    }
    CkptHostArrays h = {{params, m, v}, {NULL, NULL, NULL}};
    MgCkptTensorIO io = ckpt_host_io(&h);
    return mg_ckpt_save_io(path, t, &io, m != NULL, meta, err, errlen);
}

#endif /* MG_HAVE_HDF5 */
