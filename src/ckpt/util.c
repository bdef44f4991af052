/* Small pieces every part of src/ckpt/ uses: which build this is, the timing of the last save/load, the
 * test hook, and the file-system helpers (paths, fsync). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common.h"
#include "internal.h"

int mg_ckpt_available(void) {
#ifdef MG_HAVE_HDF5
    return 1;
#else
    return 0;
#endif
}

static MgCkptTestHook g_hook = NULL;
void mg_ckpt_set_test_hook(MgCkptTestHook hook) { g_hook = hook; }
void ckpt_hook(const char *stage, int index) {
    if (g_hook) g_hook(stage, index);
}

/* Per thread: a background writer (async.c) saves while the calling thread may load or save nothing else
 * (one HDF5 user at a time), but its figures must not mix with the caller's. */
_Thread_local MgCkptStats ckpt_stats;
MgCkptStats mg_ckpt_last_stats(void) { return ckpt_stats; }

/* ---- file-system helpers ---- */

char *ckpt_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = mg_malloc(n);
    if (name[0] == '/')
        snprintf(p, n, "%s", name);
    else
        snprintf(p, n, "%s%s%s", dir, (dir[0] && dir[strlen(dir) - 1] != '/') ? "/" : "", name);
    return p;
}

char *ckpt_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return mg_strdup(".");
    if (slash == path) return mg_strdup("/");
    char *d = mg_malloc((size_t)(slash - path) + 1);
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = 0;
    return d;
}

int ckpt_fsync_dir(const char *dir, char *err, size_t errlen) {
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

int ckpt_fsync_path(const char *path, char *err, size_t errlen) {
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
