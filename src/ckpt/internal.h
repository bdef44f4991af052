/* Private to src/ckpt/: what several of its files share that is not HDF5 (HDF5 helpers: h5io.h).
 * Nothing outside src/ckpt/ includes this; the public API is checkpoint.h. */
#ifndef MG_CKPT_INTERNAL_H
#define MG_CKPT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint CRCs are defined on little-endian float32 bytes; a big-endian host needs a byte swap here"
#endif

#define NO_HDF5_MSG "this build has no HDF5; install libhdf5-dev and rebuild"

/* util.c: the timing of the current / last save or load of the calling thread (mg_ckpt_last_stats), and
 * the test hook. */
extern _Thread_local MgCkptStats ckpt_stats;
void ckpt_hook(const char *stage, int index);

/* util.c: file-system helpers. Strings returned are malloc'ed. */
char *ckpt_path_join(const char *dir, const char *name); /* name if absolute, else dir/name */
char *ckpt_dir_of(const char *path);                     /* "." for a bare name */
/* fsync a directory so a rename inside it is durable (EINVAL from filesystems that cannot is tolerated). */
int ckpt_fsync_dir(const char *dir, char *err, size_t errlen);
int ckpt_fsync_path(const char *path, char *err, size_t errlen);

/* crc.c: CRC32 of a float32 array's bytes plus a count of NaN/Inf values (first_bad: index of the first,
 * -1 if none), in parallel over 4 MiB blocks whose CRCs are combined in order (the result does not depend
 * on the thread count). */
typedef struct {
    uint32_t crc;
    int64_t nonfinite, first_bad;
} CkptScan;
CkptScan ckpt_scan_f32(const float *x, int64_t n);
/* Extend s, the scan of elements [0, done) of a tensor, by `next`, the scan of the n elements after them
 * (start from s = {0, 0, -1}, done = 0). */
void ckpt_scan_append(CkptScan *s, int64_t done, CkptScan next, int64_t n);

/* tensor_io.c: the tensor I/O over whole host arenas that the pointer-based functions use (src for
 * save, dst for load; index = MgCkptGroup; tensor p at arena + p->offset). h must outlive the I/O. */
typedef struct {
    const float *src[3];
    float *dst[3];
} CkptHostArrays;
MgCkptTensorIO ckpt_host_io(CkptHostArrays *h);
/* The same with a view (checkpoint.h): saves read the arrays in place, without the staging copy. The
 * background writer uses it (less CPU and memory traffic beside a training step). mg_ckpt_save keeps the
 * staging copy: on the test VM's disk a save from the arrays in place measured 1-3 s slower for mega200m
 * (H5Dwrite waits longer in the kernel's dirty-page throttling when nothing paces it). */
MgCkptTensorIO ckpt_host_io_in_place(CkptHostArrays *h);

/* meta.c */
int ckpt_is_reserved(const char *name); /* one of the six root attributes the format defines */
void ckpt_entry_free(MgMetaEntry *e);
/* A slot for `name` (an existing entry is emptied and reused so the order stays stable); check = 1
 * enforces the public naming rules (fatal on a bad name). */
MgMetaEntry *ckpt_meta_slot(MgCkptMeta *m, const char *name, int check);

#endif
