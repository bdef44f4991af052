/* A build without HDF5 (make NO_HDF5=1, or libhdf5-dev or zlib missing): the reader and writer functions,
 * each failing with NO_HDF5_MSG ("this build has no HDF5; install libhdf5-dev and rebuild"). The metadata,
 * CRC, tensor I/O and run-directory files are built as usual (the run directory's calls into these fail). */
#ifndef MG_HAVE_HDF5

#include "../common.h"
#include "internal.h"

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
int mg_ckpt_save_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    const MgCkptMeta *meta, char *err, size_t errlen) {
    (void)t, (void)io, (void)with_optimizer, (void)meta;
    mg_errf(err, errlen, "cannot write checkpoint '%s': " NO_HDF5_MSG, path);
    return -1;
}
int mg_ckpt_load_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    MgCkptMeta *meta_out, char *err, size_t errlen) {
    (void)t, (void)io, (void)with_optimizer;
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

#endif /* !MG_HAVE_HDF5 */
