/* Creating files without following a planted symlink: exclusive creation under unpredictable names,
 * temp file + rename, appending only to regular files (fsutil.h). */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

int mg_fs_create_excl(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
}

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t random64(void) {
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
    /* no kernel entropy yet (early boot): the time, pid and a counter are still never reused */
    static uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 48) ^ ++counter);
}

char *mg_fs_temp_name(const char *final_path) {
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = strlen(final_path);
    char *t = mg_malloc(n + 1 + 12 + 4 + 1);
    memcpy(t, final_path, n);
    t[n] = '.';
    uint64_t r = random64(), r2 = random64();
    for (int i = 0; i < 12; i++) {
        uint64_t *src = i < 6 ? &r : &r2;
        t[n + 1 + i] = set[*src % 62];
        *src /= 62;
    }
    memcpy(t + n + 13, ".tmp", 5);
    return t;
}

int mg_fs_create_temp(const char *final_path, char **tmp_out, char *err, size_t errlen) {
    *tmp_out = NULL;
    for (int attempt = 0; attempt < 100; attempt++) {
        char *t = mg_fs_temp_name(final_path);
        int fd = mg_fs_create_excl(t);
        if (fd >= 0) {
            *tmp_out = t;
            return fd;
        }
        int e = errno;
        if (e != EEXIST) {
            mg_errf(err, errlen, "cannot create '%s': %s", t, strerror(e));
            free(t);
            errno = e;
            return -1;
        }
        free(t);
    }
    mg_errf(err, errlen, "cannot create a temporary file next to '%s': 100 unique names were all taken", final_path);
    errno = EEXIST;
    return -1;
}

static int sync_dir_of(const char *path, char *err, size_t errlen) {
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash) dir = mg_strdup(".");
    else if (slash == path) dir = mg_strdup("/");
    else {
        dir = mg_malloc((size_t)(slash - path) + 1);
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = 0;
    }
    int rc = 0, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
        rc = mg_errf(err, errlen, "cannot sync directory '%s': %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

int mg_fs_commit_temp(int fd, char *tmp, const char *final_path, int sync, char *err, size_t errlen) {
    int rc = 0;
    if (fd >= 0) {
        if (sync && fsync(fd) != 0) rc = mg_errf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
        if (close(fd) != 0 && !rc) rc = mg_errf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
    }
    if (!rc && rename(tmp, final_path) != 0)
        rc = mg_errf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, final_path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    if (!rc && sync) rc = sync_dir_of(final_path, err, errlen);
    return rc;
}

int mg_fs_write_file_atomic(const char *path, const void *data, size_t n, int sync, char *err, size_t errlen) {
    char *tmp;
    int fd = mg_fs_create_temp(path, &tmp, err, errlen);
    if (fd < 0) return -1;
    const char *p = data;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            mg_errf(err, errlen, "cannot write '%s': %s", tmp, w < 0 ? strerror(errno) : "no space left");
            close(fd);
            unlink(tmp);
            free(tmp);
            return -1;
        }
        done += (size_t)w;
    }
    return mg_fs_commit_temp(fd, tmp, path, sync, err, errlen);
}

FILE *mg_fs_atomic_open(MgAtomicFile *af, const char *path, char *err, size_t errlen) {
    memset(af, 0, sizeof *af);
    int fd = mg_fs_create_temp(path, &af->tmp, err, errlen);
    if (fd < 0) return NULL;
    af->f = fdopen(fd, "w");
    if (!af->f) {
        mg_errf(err, errlen, "cannot open '%s': %s", af->tmp, strerror(errno));
        close(fd);
        unlink(af->tmp);
        free(af->tmp);
        af->tmp = NULL;
        return NULL;
    }
    af->path = mg_strdup(path);
    return af->f;
}

int mg_fs_atomic_commit(MgAtomicFile *af, int sync, char *err, size_t errlen) {
    int rc = 0;
    if (fflush(af->f) != 0 || ferror(af->f))
        rc = mg_errf(err, errlen, "cannot write '%s': %s", af->tmp, strerror(errno));
    if (!rc && sync && fsync(fileno(af->f)) != 0)
        rc = mg_errf(err, errlen, "cannot write '%s': %s", af->tmp, strerror(errno));
    if (fclose(af->f) != 0 && !rc) rc = mg_errf(err, errlen, "cannot write '%s': %s", af->tmp, strerror(errno));
    af->f = NULL;
    if (rc) {
        unlink(af->tmp);
        free(af->tmp);
    } else {
        rc = mg_fs_commit_temp(-1, af->tmp, af->path, sync, err, errlen);
    }
    af->tmp = NULL;
    free(af->path);
    af->path = NULL;
    return rc;
}

void mg_fs_atomic_abort(MgAtomicFile *af) {
    if (af->f) fclose(af->f);
    if (af->tmp) unlink(af->tmp);
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof *af);
}

static const char *kind_of(mode_t m) { return S_ISLNK(m) ? "a symbolic link" : mg_file_kind((unsigned)m); }

/* After an O_NOFOLLOW open failed or succeeded on something that is not a regular file: a message that
 * names the path and what is there. */
static int refuse_not_regular(const char *path, const char *what, char *err, size_t errlen) {
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return mg_errf(err, errlen,
                       "'%s' is %s, not a regular file: refusing to %s it (nothing is written through a symlink or "
                       "into a special file; remove or rename it and run again)",
                       path, kind_of(st.st_mode), what);
    return 0;
}

/* Open path with `flags` only if it is a regular file, never through a symlink: O_NOFOLLOW, and O_NONBLOCK
 * during the open (a FIFO would otherwise wait for its other end), then fstat. With create_missing, a path
 * that does not exist is created exclusively. `what` ("read", "append to") goes into the messages. Returns
 * the fd (blocking again), or -1 with err and errno. */
static int open_regular(const char *path, int flags, int create_missing, const char *what, char *err, size_t errlen) {
    int fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create_missing) fd = mg_fs_create_excl(path);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || !refuse_not_regular(path, what, err, errlen))
            mg_errf(err, errlen, "cannot open '%s' to %s it: %s", path, what, strerror(e));
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (!refuse_not_regular(path, what, err, errlen))
            mg_errf(err, errlen, "'%s' is not a regular file: refusing to %s it", path, what);
        close(fd);
        errno = EINVAL;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

FILE *mg_fs_open_append(const char *path, char *err, size_t errlen) {
    int fd = open_regular(path, O_WRONLY | O_APPEND, 1, "append to", err, errlen);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "a");
    if (!f) {
        mg_errf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

int mg_fs_open_regular(const char *path, char *err, size_t errlen) {
    return open_regular(path, O_RDONLY, 0, "read", err, errlen);
}

FILE *mg_fs_fopen_replace(const char *path, char *err, size_t errlen) {
    char *tmp;
    int fd = mg_fs_create_temp(path, &tmp, err, errlen);
    if (fd < 0) return NULL;
    if (rename(tmp, path) != 0) {
        mg_errf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return NULL;
    }
    free(tmp);
    FILE *f = fdopen(fd, "w");
    if (!f) {
        mg_errf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        close(fd);
    }
    return f;
}
