/* Checkpoints: one HDF5 file per checkpoint (format: docs/checkpoint.md), written crash-safely
 * (temp file, fsync, rename, fsync of the directory), read back with validation (format, version, every
 * tensor's presence, shape and dtype, a CRC32 per tensor, no NaN/Inf), and a run directory with rotation
 * and a `latest` pointer.
 *
 * Every function that can fail returns 0 on success and -1 on failure with a one-line message in err
 * (naming the file and what to do); nothing here exits the process, so the trainer decides whether an
 * error is fatal. In a build without HDF5 (make NO_HDF5=1) everything compiles and the file functions
 * fail with "this build has no HDF5; install libhdf5-dev and rebuild".
 *
 * Call from one thread at a time (the tensor scans use OpenMP inside): while a background save
 * (mg_ckpt_async_*, below) is in flight, no other function of this file that reads or writes a file may
 * run in any thread (HDF5 is not reentrant; a thread-safe build would only serialise the calls). The first
 * call in a thread switches off HDF5's error printing for that thread, and the first in the process its
 * exit-time clean-up (H5dont_atexit; see docs/checkpoint.md): any other HDF5 file this program opens must
 * be closed explicitly. */
#ifndef MG_CHECKPOINT_H
#define MG_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "../params.h"

#define MG_CKPT_FORMAT "megalodon-checkpoint"
#define MG_CKPT_FORMAT_VERSION 1
#define MG_CKPT_META_NAME_MAX 64
/* The root attribute the writer adds last: int64[3], the tensors in /model, /optimizer/m, /optimizer/v.
 * A reader checks the file against it (a damaged group is then never taken for an absent one). */
#define MG_CKPT_ATTR_COUNTS "tensor_counts"
/* step and tokens_seen beyond this (2^53, where doubles stop counting exactly) are refused as damage. */
#define MG_CKPT_COUNTER_MAX ((int64_t)1 << 53)

/* 1 if this build can read and write checkpoints (compiled with HDF5). */
int mg_ckpt_available(void);

/* ---- metadata: the root attributes ------------------------------------------------------------------ */

typedef enum { MG_META_I64 = 0, MG_META_F64 = 1, MG_META_STR = 2 } MgMetaType;

/* One trainer-defined root attribute ("extra"): an int64 or double scalar or 1-D array, or a string. */
typedef struct {
    char name[MG_CKPT_META_NAME_MAX];
    MgMetaType type;
    int is_array; /* 0: scalar (n == 1); 1: 1-D array of n elements (n may be 0 or 1) */
    int64_t n;    /* elements (1 for strings) */
    int64_t *i64; /* MG_META_I64: n values */
    double *f64;  /* MG_META_F64: n values */
    char *str;    /* MG_META_STR: NUL-terminated UTF-8 */
} MgMetaEntry;

typedef struct {
    int format_version; /* filled by readers; writers always write MG_CKPT_FORMAT_VERSION */
    int64_t step;
    int64_t tokens_seen;
    char *config_text; /* owned; the resolved config (mg_config_to_text); NULL is stored as "" */
    int has_optimizer; /* filled by readers: the file holds /optimizer/m and /optimizer/v */
    int n_extra, cap_extra;
    MgMetaEntry *extra; /* owned; in insertion (writer) / file (reader) order */
} MgCkptMeta;

void mg_ckpt_meta_init(MgCkptMeta *m);
void mg_ckpt_meta_free(MgCkptMeta *m);                                /* frees everything owned and re-initialises */
void mg_ckpt_meta_set_config(MgCkptMeta *m, const char *config_text); /* copies */
/* Setting a name that exists replaces it. Names are 1..63 characters without '/' and must not be one of
 * the reserved root attributes (format, format_version, step, tokens_seen, config, tensor_counts): a bad name is a
 * programming error (fatal). Values are copied. */
void mg_ckpt_meta_set_i64(MgCkptMeta *m, const char *name, int64_t value);
void mg_ckpt_meta_set_i64_array(MgCkptMeta *m, const char *name, const int64_t *values, int64_t n);
void mg_ckpt_meta_set_f64(MgCkptMeta *m, const char *name, double value);
void mg_ckpt_meta_set_f64_array(MgCkptMeta *m, const char *name, const double *values, int64_t n);
void mg_ckpt_meta_set_str(MgCkptMeta *m, const char *name, const char *value);
const MgMetaEntry *mg_ckpt_meta_find(const MgCkptMeta *m, const char *name);
/* Typed getters for the trainer: 0 on success; -1 (with a message naming the attribute) if it is absent,
 * has another type, or (arrays) holds a different number of elements than n. A scalar reads as an array
 * of one and vice versa. */
int mg_ckpt_meta_get_i64(const MgCkptMeta *m, const char *name, int64_t *out, char *err, size_t errlen);
int mg_ckpt_meta_get_i64_array(const MgCkptMeta *m, const char *name, int64_t *out, int64_t n, char *err,
                               size_t errlen);
int mg_ckpt_meta_get_f64(const MgCkptMeta *m, const char *name, double *out, char *err, size_t errlen);
int mg_ckpt_meta_get_f64_array(const MgCkptMeta *m, const char *name, double *out, int64_t n, char *err, size_t errlen);
const char *mg_ckpt_meta_get_str(const MgCkptMeta *m, const char *name); /* NULL if absent or not a string */

/* ---- whole checkpoints -------------------------------------------------------------------------------- */

/* Write params (and, unless m == NULL, the AdamW moments m and v, same layout as params) and the meta to
 * `path`, crash-safely: `<path>.<random>.tmp` is created exclusively (never through a symlink), written,
 * flushed, closed, fsync'ed and renamed over `path`, and the directory is fsync'ed. On any failure (disk
 * full, file size limit, I/O error, a NaN/Inf in the data) the temp file is removed, an existing `path` is
 * left untouched, and -1 is returned.
 * (mg_ckpt_save_io below with a tensor I/O that copies from these host arrays.) */
int mg_ckpt_save(const char *path, const MgParamTable *t, const float *params, const float *m, const float *v,
                 const MgCkptMeta *meta, char *err, size_t errlen);

/* Read a checkpoint into params (and m, v unless m == NULL) laid out by table t, validating the format,
 * the version, every tensor's presence, shape and dtype against t (no tensors beyond t either), each
 * tensor's CRC32, and that no value is NaN/Inf. Asking for m/v from a weights-only checkpoint is an error.
 * meta_out (may be NULL) is initialised (old contents are not freed) and filled, left empty on failure;
 * free it with mg_ckpt_meta_free. On failure the output arrays may be partially overwritten (the tensors
 * before the failing one; see mg_ckpt_load_io, which this calls with a tensor I/O that copies into them). */
int mg_ckpt_load(const char *path, const MgParamTable *t, float *params, float *m, float *v, MgCkptMeta *meta_out,
                 char *err, size_t errlen);

/* Only the root attributes (step, config text, extras, has_optimizer), no tensor data: how a resume
 * rebuilds the config (and so the table) from the checkpoint before loading it. */
int mg_ckpt_read_meta(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen);

/* Bytes a checkpoint of table t occupies (tensor data only; HDF5 metadata adds a few hundred KB). */
int64_t mg_ckpt_size_estimate(const MgParamTable *t, int with_optimizer);

/* Timing of the last save or load (any of the mg_ckpt_save* / mg_ckpt_load* functions) in the calling
 * thread (for MB/s reports; a background write's figures come with its MgCkptAsyncResult). */
typedef struct {
    double bytes;        /* tensor bytes written or read */
    double seconds;      /* whole call */
    double io_seconds;   /* H5Dwrite / H5Dread calls */
    double sync_seconds; /* save only: H5Fflush + close + fsync + rename + directory fsync */
    double crc_seconds;  /* CRC32 + NaN/Inf scan */
    double xfer_seconds; /* inside the tensor I/O's get / put (host copies, or device transfers) */
} MgCkptStats;
MgCkptStats mg_ckpt_last_stats(void);

/* ---- staged tensor I/O: checkpoints of tensors that are not (all) in host memory ----------------------
 * mg_ckpt_save / mg_ckpt_load above take whole host float32 arenas. When the parameters and optimizer
 * moments live elsewhere (an accelerator, another dtype, a sharded arena), the _io variants below move
 * every tensor through one host staging buffer, asking the caller's MgCkptTensorIO for element ranges:
 *
 *   save: get(range) -> staging buffer -> CRC32 + NaN/Inf scan -> H5Dwrite
 *   load: H5Dread -> staging buffer -> CRC32 + NaN/Inf scan -> put(range)
 *
 * The staging buffer holds mg_ckpt_stage_elems(t, io) float32 values: io->stage_elems (0: the default
 * MG_CKPT_STAGE_DEFAULT, 64 Mi elements = 256 MiB), reduced to the largest tensor of the table. It is
 * allocated once per call, and no get or put is ever asked for more elements than that (nor for 0).
 * get and put are called from the calling thread, one call at a time, group by group (model, m, v),
 * tensors in table order, ranges in ascending order.
 *
 * A tensor that fits (numel <= the bound, every tensor of today's models with the default) is handled in
 * one get or put of the whole tensor, and on load is checked before put sees any of it. A larger tensor is
 * handled in ranges of at most the bound, in order, in two passes, because its CRC32 covers the whole
 * tensor: save calls get for every range twice (once to checksum and scan, once to write; the two must
 * return the same values, or the save fails with "changed while it was being saved" instead of writing a
 * file whose CRC does not match), and load reads the ranges twice from the file (once to verify, then
 * again to put; the second read is checksummed too and a difference fails the load). */

/* Tensor groups, as passed to get / put. */
typedef enum { MG_CKPT_GROUP_MODEL = 0, MG_CKPT_GROUP_M = 1, MG_CKPT_GROUP_V = 2 } MgCkptGroup;
/* "model", "optimizer/m", "optimizer/v" (the HDF5 group names); "?" for anything else. */
const char *mg_ckpt_group_name(int group);

#define MG_CKPT_STAGE_DEFAULT ((int64_t)1 << 26)

typedef struct {
    void *ctx; /* passed back to get and put */
    /* Save: copy elements [start, start + count) (row-major flat index) of tensor p of `group`
     * (MgCkptGroup) as float32 into host memory dst[0..count). Return 0, or -1 with a message in err. */
    int (*get)(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, float *dst, char *err,
               size_t errlen);
    /* Load: receive the verified host float32 values src[0..count) of elements [start, start + count) of
     * tensor p of `group`. src is valid only during the call. Return 0, or -1 with a message in err. */
    int (*put)(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, const float *src, char *err,
               size_t errlen);
    int64_t stage_elems; /* the staging bound in elements; 0: MG_CKPT_STAGE_DEFAULT */
    /* Optional (save; NULL = none): the whole tensor p of `group` as host float32 values (numel, row-major)
     * that stay unchanged until the save returns, or NULL for this tensor. A tensor offered so is scanned and
     * written in place, in one pass, without get and without the staging copy; the others go through get.
     * The I/O over host arrays of mg_ckpt_save / mg_ckpt_dir_save offers every tensor. */
    const float *(*view)(void *ctx, int group, const MgParam *p);
} MgCkptTensorIO;

/* The staging buffer's size in elements for table t and io (see above); never more than io->stage_elems
 * (or the default) and never more than the largest tensor of t. */
int64_t mg_ckpt_stage_elems(const MgParamTable *t, const MgCkptTensorIO *io);

/* mg_ckpt_save with the tensors read through io->get (groups 0..2 with with_optimizer, else group 0 only).
 * Same file, same guarantees: crash-safe, NaN/Inf refused (the check runs per tensor as it is staged, so
 * a refused save may have written part of the temp file, which is removed), and any failure of get makes
 * the save fail with get's message, the temp file removed and an existing `path` untouched. */
int mg_ckpt_save_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    const MgCkptMeta *meta, char *err, size_t errlen);

/* mg_ckpt_load with the tensors handed to io->put, after the same validation as mg_ckpt_load: the format
 * and every tensor's name, shape and dtype before any data is read, then per tensor its CRC32 and the
 * NaN/Inf scan on the staged data before put sees it. Tensors are put in table order, model first, then
 * m, then v. On failure (a damaged tensor, a read error, put failing: the message then includes put's),
 * the tensors put before the failing one keep their new values; a tensor that fails its CRC32 or NaN/Inf
 * check is never put (a larger-than-the-buffer one is checked in full by its first pass), but a large one
 * may be partly put when its second read differs from the first or when put fails midway. The caller
 * decides whether to reinitialise or give up. A stop request (SIGINT/SIGTERM, src/signals.h) ends the
 * load between two tensors: -1 with "... was interrupted by SIGINT" (the caller checks mg_stop_requested()). */
int mg_ckpt_load_io(const char *path, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                    MgCkptMeta *meta_out, char *err, size_t errlen);

/* ---- tensor-level access (tools: ckpt info / diff) ---------------------------------------------------- */

typedef struct MgCkptReader MgCkptReader;

typedef struct {
    char name[96]; /* e.g. "layers.0.attn.wz.weight" */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    int is_f32; /* stored as 4-byte IEEE float */
    int has_crc;
    uint32_t crc; /* stored CRC32 (zlib polynomial) of the little-endian float32 bytes */
} MgCkptTensorInfo;

/* Open and validate the format and version; meta_out (may be NULL) gets the root attributes. */
MgCkptReader *mg_ckpt_open(const char *path, MgCkptMeta *meta_out, char *err, size_t errlen);
void mg_ckpt_close(MgCkptReader *r);
/* group: "model", "optimizer/m" or "optimizer/v". 1 if present. */
int mg_ckpt_has_group(MgCkptReader *r, const char *group);
/* The tensors of a group in the order they were written (the table order for our files). *out is
 * malloc'ed (free it); a missing group gives 0 tensors. */
int mg_ckpt_list(MgCkptReader *r, const char *group, MgCkptTensorInfo **out, int *n, char *err, size_t errlen);
/* Read one tensor (numel must match) and verify its CRC32 when the file has one. Does not check for
 * NaN/Inf (the tools report them). */
int mg_ckpt_read_tensor(MgCkptReader *r, const char *group, const char *name, float *dst, int64_t numel, char *err,
                        size_t errlen);

/* ---- the writer mg_ckpt_save is built on ------------------------------------------------------------
 * Exposed for the distributed milestone (docs/checkpoint.md "Distributed runs"): tensors are created
 * whole (with their CRC32, which ranks combine with mg_crc32_combine from per-slice CRCs) and filled by
 * element ranges of the flat row-major tensor, so a rank holding a slice of the optimizer arena writes
 * just its part. Serially: begin, then add + put for every tensor, then commit (or abort). */

typedef struct MgCkptWriter MgCkptWriter;

/* Create `<path>.<random>.tmp` exclusively and write the root attributes. */
MgCkptWriter *mg_ckpt_writer_begin(const char *path, const MgCkptMeta *meta, char *err, size_t errlen);
/* Create dataset /<group>/<p->name> (group "model", "optimizer/m" or "optimizer/v") with p's shape,
 * float32, contiguous, and its crc32 attribute. */
int mg_ckpt_writer_add(MgCkptWriter *w, const char *group, const MgParam *p, uint32_t crc, char *err, size_t errlen);
/* Write elements [start, start + count) (row-major flat index into the tensor) from src[0..count). */
int mg_ckpt_writer_put(MgCkptWriter *w, const char *group, const MgParam *p, int64_t start, int64_t count,
                       const float *src, char *err, size_t errlen);
/* Flush, close, fsync, rename over the final name, fsync the directory. Frees w (also on failure, when the
 * temp file is removed). */
int mg_ckpt_writer_commit(MgCkptWriter *w, char *err, size_t errlen);
/* Close and remove the temp file; frees w. */
void mg_ckpt_writer_abort(MgCkptWriter *w);

/* ---- run directory: out_dir/ckpt_<step:08>.h5, out_dir/latest, rotation ------------------------------- */

/* Create out_dir (and parents) if needed and prove it is writable (a probe file is written, fsync'ed and
 * removed); with need_bytes > 0 also check that the filesystem has that much free space. Call before
 * training so a bad out_dir fails in the first second, not at the first checkpoint. Fails in a build
 * without HDF5, since no checkpoint could be written. */
int mg_ckpt_dir_check_writable(const char *out_dir, int64_t need_bytes, char *err, size_t errlen);

/* Save out_dir/ckpt_<meta->step, 8 digits>.h5 (mg_ckpt_save), then atomically point out_dir/latest at
 * it, then delete the oldest ckpt_*.h5 (by step) beyond the newest `keep` (keep <= 0: keep all; the file
 * just written is never deleted). Stale *.tmp files of earlier crashed saves are removed first.
 * path_out (may be NULL) receives the file written. A failure to delete old files is not an error. */
int mg_ckpt_dir_save(const char *out_dir, const MgParamTable *t, const float *params, const float *m, const float *v,
                     const MgCkptMeta *meta, int keep, char *path_out, size_t path_len, char *err, size_t errlen);
/* The same through a tensor I/O (mg_ckpt_save_io). */
int mg_ckpt_dir_save_io(const char *out_dir, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                        const MgCkptMeta *meta, int keep, char *path_out, size_t path_len, char *err,
                        size_t errlen);

/* The newest complete checkpoint of out_dir: the one `latest` names if it opens and has a valid format,
 * else (with a warning on stderr) the highest-step ckpt_*.h5 that does. Returns 0 and fills path_out;
 * 1 when out_dir holds no usable checkpoint (a fresh run; err says why); -1 on an error such as an
 * unreadable directory. Only the root attributes are validated here; mg_ckpt_load checks the data.
 * Nothing outside out_dir is loaded: -1 (refused, err says what to do) when `latest` is not a regular file
 * or names anything but a bare file name in out_dir, or a symlink; symlinked ckpt_*.h5 are skipped. */
int mg_ckpt_dir_latest(const char *out_dir, char *path_out, size_t path_len, char *err, size_t errlen);

/* Every ckpt_*.h5 file of out_dir (full paths), highest step first, whatever their state: how
 * `train --resume auto` finds an older checkpoint when the newest fails to load. Returns the count (0 with
 * *paths_out NULL when there is none), -1 if the directory cannot be read (errno). Free each path and the
 * array. */
int mg_ckpt_dir_list(const char *out_dir, char ***paths_out);

/* ---- background saves: mg_ckpt_dir_save in a writer thread (async.c) ----------------------------------
 * The caller copies what it saves into host arrays it keeps unchanged (a snapshot), starts the write and
 * goes on; one writer thread then runs mg_ckpt_dir_save on the snapshot (temp file, fsync, rename,
 * `latest`, rotation: the same file and the same guarantees as a synchronous save) and exits. There is
 * never more than one writer: a write must be collected (mg_ckpt_async_wait or _poll) before the next
 * one starts. Between start and collection the caller must not touch the snapshot, nor call any other
 * checkpoint function that reads or writes a file (see the top of this file). The writer blocks SIGINT,
 * SIGTERM and SIGUSR1 (a stop request reaches the caller's threads, never interrupts the write), runs at
 * the lowest CPU priority (nice 19, on Linux; the caller's threads keep theirs) and runs its checksum scans
 * on `threads` OpenMP threads. */

typedef struct MgCkptAsync MgCkptAsync;

typedef struct {
    int rc;                      /* 0: published (renamed into place, `latest` updated); -1: failed, see err */
    int64_t step;                /* meta->step of the save */
    char path[4096 + 64];        /* the checkpoint file (written, or the one that failed) */
    char err[4096];              /* rc == -1: the reason, naming the file (earlier checkpoints are intact) */
    MgCkptStats stats;           /* the save's timing, as mg_ckpt_last_stats in the writer thread */
    double seconds;              /* from the writer's start to publication (or failure) */
} MgCkptAsyncResult;

/* Called in the writer thread when the save has ended, published or failed, before the write can be
 * collected: e.g. to print "saved ..." at the moment the file is published. */
typedef void (*MgCkptAsyncDone)(const MgCkptAsyncResult *r, void *ctx);

/* A writer slot. done (may be NULL) and ctx as above; threads: OpenMP threads of the writer's scans
 * (<= 0: 1). */
MgCkptAsync *mg_ckpt_async_create(MgCkptAsyncDone done, void *ctx, int threads);
/* Start mg_ckpt_dir_save(out_dir, t, params, m, v, meta, keep) in a new writer thread. *meta is moved into
 * the writer (and left empty, initialised); t, params, m and v (m = v = NULL: weights only) must stay
 * alive and unchanged until the write is collected. -1 with a message (nothing started) while an earlier
 * write is not collected, or if the thread cannot be created. */
int mg_ckpt_async_start(MgCkptAsync *a, const char *out_dir, const MgParamTable *t, const float *params,
                        const float *m, const float *v, MgCkptMeta *meta, int keep, char *err, size_t errlen);
/* 1 from start until the write is collected. */
int mg_ckpt_async_pending(const MgCkptAsync *a);
/* Collect the write if it has ended, without waiting: 1 (its result in *r), else 0 (none pending, or
 * still running). */
int mg_ckpt_async_poll(MgCkptAsync *a, MgCkptAsyncResult *r);
/* Wait for the pending write to end and collect it: 1 (its result in *r), 0 if none was pending (or when
 * called from the writer thread itself, e.g. by an exit handler). */
int mg_ckpt_async_wait(MgCkptAsync *a, MgCkptAsyncResult *r);
/* Wait for a pending write (its result is dropped) and free a. NULL is fine. */
void mg_ckpt_async_free(MgCkptAsync *a);

/* ---- CRC32 (zlib polynomial, same values as zlib.crc32 / Python's zlib.crc32) ------------------------- */

/* Computed by zlib (crc32_z, crc32_combine64). A build without zlib has no checkpoints either:
 * mg_crc32_available() is 0 there and calling the two functions below is a fatal error. */
int mg_crc32_available(void);
/* crc(A||B) from crc = crc(A) and B = data[0..len); start with crc = 0. */
uint32_t mg_crc32_update(uint32_t crc, const void *data, size_t len);
/* CRC of A||B from crc(A), crc(B) and len(B): lets ranks checksum their slices of a tensor separately. */
uint32_t mg_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* Testing only: called at named points of a save ("tensor" after each tensor with its running index,
 * "before-close", "before-rename"), so a test can kill the process at a known point. NULL = off.
 * Also for tests: the environment variable MG_CKPT_TEST_WRITE_DELAY_MS=N makes every save (synchronous or
 * in the background) sleep N milliseconds once its temp file exists, before the first tensor, so a test
 * can hold a write in flight. */
typedef void (*MgCkptTestHook)(const char *stage, int index);
void mg_ckpt_set_test_hook(MgCkptTestHook hook);

#endif
