/* Whole-file reads that refuse what is not a regular file (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

const char *mg_file_kind(unsigned mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

int mg_open_regular_file(const char *path, const char *what, uint64_t *size, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return mg_errf(err, errlen, "cannot open %s '%s': %s", what, path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mg_errf(err, errlen, "cannot stat %s '%s': %s", what, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mg_errf(err, errlen, "%s '%s' is %s, not a regular file", what, path, mg_file_kind(st.st_mode));
    }
    /* back to blocking reads (a regular file never blocks, but keep the usual semantics) */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *size = (uint64_t)st.st_size;
    return fd;
}

int mg_read_regular_file(const char *path, const char *what, uint64_t max_bytes, char **data, size_t *len, char *err,
                         size_t errlen) {
    *data = NULL;
    *len = 0;
    uint64_t size = 0;
    int fd = mg_open_regular_file(path, what, &size, err, errlen);
    if (fd < 0) return -1;
    if (size > max_bytes) {
        close(fd);
        char a[32], b[32];
        return mg_errf(err, errlen, "%s '%s' is too large: %s, the limit is %s", what, path,
                       mg_format_bytes((double)size, a, sizeof a), mg_format_bytes((double)max_bytes, b, sizeof b));
    }
    /* The size may change while we read (a file being written): read at most max_bytes + 1 to notice. */
    size_t cap = (size_t)size + 1, n = 0;
    char *buf = mg_malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if ((uint64_t)n > max_bytes) break;
            cap = (size_t)MG_MIN((uint64_t)cap * 2, max_bytes + 1);
            buf = mg_realloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return mg_errf(err, errlen, "error reading %s '%s': %s", what, path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    if ((uint64_t)n > max_bytes) {
        free(buf);
        char b[32];
        return mg_errf(err, errlen, "%s '%s' grew past the limit of %s while it was read", what, path,
                       mg_format_bytes((double)max_bytes, b, sizeof b));
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}
