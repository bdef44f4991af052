/* Creating files without following a planted symlink (docs/training.md, "What is never written").
 *
 * Every file the project creates goes through one of these:
 *   - a new file under a name nobody can predict, created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW):
 *     mg_fs_create_temp, mg_fs_temp_name for libraries that create the file themselves with an exclusive
 *     flag (HDF5's H5F_ACC_EXCL);
 *   - a whole file replaced atomically: written to such a temp file in the same directory, then renamed
 *     over the final name (a rename replaces a symlink there, it never writes through it):
 *     mg_fs_atomic_open / mg_fs_atomic_commit / mg_fs_atomic_abort, mg_fs_write_file_atomic;
 *   - an existing file appended to: mg_fs_open_append opens it only if it is a regular file, refusing a
 *     symlink, directory, FIFO or device with a message naming the path.
 * Error functions fill err (mg_errf style) and leave errno as the cause. */
#ifndef MG_FSUTIL_H
#define MG_FSUTIL_H

#include <stddef.h>
#include <stdio.h>

/* Create `path` as a new file (mode 0666 & ~umask), never following a symlink: fails with EEXIST when
 * anything, a dangling symlink included, is already there. Returns an fd (O_CLOEXEC) or -1 (errno). */
int mg_fs_create_excl(const char *path);

/* A fresh unique name next to `final_path`: "<final_path>.XXXXXXXXXXXX.tmp" (12 random characters),
 * malloc'ed. Only useful with an exclusive create (the name is unpredictable, not reserved). */
char *mg_fs_temp_name(const char *final_path);

/* Create a new temp file next to final_path exclusively (retrying on a name clash). Returns the fd and
 * the malloc'ed name in *tmp_out, or -1 with err filled. */
int mg_fs_create_temp(const char *final_path, char **tmp_out, char *err, size_t errlen);

/* rename(tmp, final_path) after an optional fsync of fd (fd < 0: none) and close; on any failure the
 * temp file is removed. Frees tmp. With sync, the directory is synced too. Returns 0 or -1 (err). */
int mg_fs_commit_temp(int fd, char *tmp, const char *final_path, int sync, char *err, size_t errlen);

/* Write n bytes to path atomically (temp file + rename). */
int mg_fs_write_file_atomic(const char *path, const void *data, size_t n, int sync, char *err, size_t errlen);

/* A stdio stream on a temp file that becomes `path` on commit. */
typedef struct {
    FILE *f;
    char *tmp, *path;
} MgAtomicFile;
FILE *mg_fs_atomic_open(MgAtomicFile *af, const char *path, char *err, size_t errlen);
/* Flush, optionally fsync, close and rename into place; removes the temp file on failure. */
int mg_fs_atomic_commit(MgAtomicFile *af, int sync, char *err, size_t errlen);
void mg_fs_atomic_abort(MgAtomicFile *af);

/* Open `path` to append to: an existing regular file is opened in place (O_APPEND | O_NOFOLLOW, checked
 * with fstat), a missing one is created exclusively; a symlink, directory, FIFO, socket or device there is
 * refused with a message naming the path. Returns a stream or NULL (err). */
FILE *mg_fs_open_append(const char *path, char *err, size_t errlen);

/* Open an existing file for reading only if it is a regular file and not a symlink (O_NOFOLLOW +
 * fstat). Returns an fd (O_CLOEXEC) or -1 (err; errno ENOENT when it does not exist). */
int mg_fs_open_regular(const char *path, char *err, size_t errlen);

/* Create a stream that replaces `path` at once: an empty temp file created exclusively and renamed over
 * path before anything is written (for files written for a long time, like a log). NULL (err) on failure. */
FILE *mg_fs_fopen_replace(const char *path, char *err, size_t errlen);

#endif
