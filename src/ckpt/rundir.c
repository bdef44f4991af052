/* The run directory: out_dir/ckpt_<step:08>.h5 files, the `latest` pointer and rotation
 * (mg_ckpt_dir_check_writable, mg_ckpt_dir_save / mg_ckpt_dir_save_io, mg_ckpt_dir_latest). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../common.h"
#include "../fsutil.h"
#include "internal.h"

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
    /* The probe gets a name nobody can predict and is created exclusively: a symlink planted in out_dir
     * is never followed (fsutil.h). */
    char *base = ckpt_path_join(out_dir, ".megalodon_write_test"), *probe = NULL, e0[1024];
    int fd = mg_fs_create_temp(base, &probe, e0, sizeof e0);
    int rc = -1;
    if (fd < 0) {
        mg_errf(err, errlen, "checkpoint directory '%s' is not writable: %s", out_dir, e0);
        free(base);
        goto done;
    }
    free(base);
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

/* Remove temp files left by a save that was killed (they are never complete checkpoints): the unique
 * names of this version ("ckpt_<step>.h5.<random>.tmp", "latest.<random>.tmp", fsutil.h) and the fixed
 * ones of earlier versions ("ckpt_<step>.h5.tmp", "latest.tmp"). unlink() removes a symlink itself. */
static void remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        size_t n = strlen(nm);
        int tmp_end = n > 4 && !strcmp(nm + n - 4, ".tmp");
        int ours = tmp_end && ((!strncmp(nm, "ckpt_", 5) && strstr(nm, ".h5.")) || !strncmp(nm, "latest.", 7));
        if (!ours) continue;
        char *p = ckpt_path_join(dir, nm);
        unlink(p);
        free(p);
    }
    closedir(d);
}

/* `latest` is replaced atomically: a new file under a unique name, fsync'ed, renamed over `latest` (a
 * symlink planted there is replaced, never written through), then the directory is fsync'ed. */
static int write_latest(const char *out_dir, const char *name, char *err, size_t errlen) {
    char *dst = ckpt_path_join(out_dir, "latest");
    char line[300];
    int len = snprintf(line, sizeof(line), "%s\n", name);
    int rc = mg_fs_write_file_atomic(dst, line, (size_t)len, 1, err, errlen);
    free(dst);
    return rc;
}

int mg_ckpt_dir_save_io(const char *out_dir, const MgParamTable *t, const MgCkptTensorIO *io, int with_optimizer,
                        const MgCkptMeta *meta, int keep, char *path_out, size_t path_len, char *err,
                        size_t errlen) {
    if (meta->step < 0) {
        mg_errf(err, errlen, "cannot save a checkpoint for negative step %lld", (long long)meta->step);
        return -1;
    }
    char name[64];
    snprintf(name, sizeof(name), "ckpt_%08lld.h5", (long long)meta->step);
    if (mkdir_p(out_dir, err, errlen)) return -1;
    char *path = ckpt_path_join(out_dir, name);
    if (path_out && path_len) snprintf(path_out, path_len, "%s", path);
    remove_stale_tmp(out_dir);
    int rc = mg_ckpt_save_io(path, t, io, with_optimizer, meta, err, errlen);
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
            char *old = ckpt_path_join(out_dir, list[i].name);
            if (unlink(old) != 0)
                fprintf(stderr, "warning: cannot delete old checkpoint '%s': %s\n", old, strerror(errno));
            free(old);
        }
        if (n > 0) free_ckpts(list, n);
    }
    free(path);
    return rc;
}

int mg_ckpt_dir_save(const char *out_dir, const MgParamTable *t, const float *params, const float *m, const float *v,
                     const MgCkptMeta *meta, int keep, char *path_out, size_t path_len, char *err, size_t errlen) {
    if ((m == NULL) != (v == NULL)) {
        mg_errf(err, errlen, "mg_ckpt_dir_save('%s'): pass both optimizer moments m and v, or neither", out_dir);
        return -1;
    }
    CkptHostArrays h = {{params, m, v}, {NULL, NULL, NULL}};
    MgCkptTensorIO io = ckpt_host_io(&h);
    return mg_ckpt_dir_save_io(out_dir, t, &io, m != NULL, meta, keep, path_out, path_len, err, errlen);
}

/* A ckpt_*.h5 found by listing out_dir is a candidate only if it is a regular file: checkpoints in out_dir
 * are never read through a symlink (which could lead anywhere). Says so on stderr when it skips one. */
static int candidate_ok(const char *p) {
    struct stat lst;
    if (lstat(p, &lst) == 0 && !S_ISREG(lst.st_mode)) {
        fprintf(stderr, "warning: skipping '%s': it is not a regular file (checkpoints in out_dir are never read "
                        "through a symlink)\n",
                p);
        return 0;
    }
    return 1;
}

#define LATEST_ADVICE                                                                                       \
    "if you did not put it there, someone else may have: check the directory, then delete '%s' (resume then "   \
    "uses the newest checkpoint in out_dir) or pass --resume with a checkpoint file you trust"

/* `latest` must name a checkpoint inside out_dir: a bare file name (no '/', not "." or ".."), and that file,
 * if it exists, a regular file, not a symlink (which could lead anywhere). -1 (err) refuses. */
static int latest_refused(const char *out_dir, const char *lp, const char *name, char *err, size_t errlen) {
    if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
        return mg_errf(err, errlen,
                       "'%s' names '%s', which is not a file in '%s' (it holds a bare checkpoint name such as "
                       "ckpt_00000040.h5): refusing to load a checkpoint from outside out_dir; " LATEST_ADVICE,
                       lp, name, out_dir, lp);
    char *p = ckpt_path_join(out_dir, name);
    struct stat st;
    int rc = 0;
    if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode))
        rc = mg_errf(err, errlen,
                     "'%s' names '%s', which is a symbolic link: refusing to load a checkpoint through it (it may "
                     "lead outside out_dir); " LATEST_ADVICE,
                     lp, p, lp);
    free(p);
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
    char *lp = ckpt_path_join(out_dir, "latest");
    /* `latest` is read only as a regular file (not through a symlink) */
    int lfd = mg_fs_open_regular(lp, e2, sizeof(e2));
    if (lfd < 0 && errno != ENOENT) {
        mg_errf(err, errlen, "%s; refusing to use it: " LATEST_ADVICE, e2, lp);
        free(lp);
        return -1;
    }
    FILE *f = lfd >= 0 ? fdopen(lfd, "r") : NULL;
    if (lfd >= 0 && !f) close(lfd);
    char *pointed = NULL;
    if (f) {
        char line[1024] = "";
        if (fgets(line, sizeof(line), f)) {
            size_t n = strlen(line);
            while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
        }
        fclose(f);
        if (line[0] && latest_refused(out_dir, lp, line, err, errlen)) {
            free(lp);
            return -1;
        }
        if (line[0]) {
            pointed = ckpt_path_join(out_dir, line);
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
        char *p = ckpt_path_join(out_dir, list[i].name);
        if (pointed && !strcmp(p, pointed)) {
            free(p);
            continue;
        }
        if (!candidate_ok(p)) {
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

int mg_ckpt_dir_list(const char *out_dir, char ***paths_out) {
    *paths_out = NULL;
    CkptEntry *list;
    int n = list_ckpts(out_dir, &list);
    if (n <= 0) return n;
    char **paths = mg_malloc(sizeof(char *) * (size_t)n);
    int m = 0;
    for (int i = 0; i < n; i++) {
        char *p = ckpt_path_join(out_dir, list[i].name);
        if (!candidate_ok(p)) {
            free(p);
            continue;
        }
        paths[m++] = p;
    }
    free_ckpts(list, n);
    if (m == 0) {
        free(paths);
        paths = NULL;
    }
    *paths_out = paths;
    return m;
}
