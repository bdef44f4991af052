/* Shared helpers of the libFuzzer harnesses (see fuzz_util.h). */
#include "fuzz_util.h"

#include "src/hash.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/common.h"

static jmp_buf g_jmp;
static char g_msg[8192];

static void longjmp_hook(const char *message, const char *file, int line, void *ctx) {
    (void)file;
    (void)line;
    (void)ctx;
    snprintf(g_msg, sizeof g_msg, "%s", message);
    longjmp(g_jmp, 1);
}

int fz_try(void (*fn)(void *ctx), void *ctx) {
    void *prev_ctx = NULL;
    MgErrorHook prev = mg_set_error_hook(longjmp_hook, NULL, &prev_ctx);
    volatile int raised = 0;
    g_msg[0] = 0;
    if (setjmp(g_jmp) == 0) fn(ctx);
    else raised = 1;
    mg_set_error_hook(prev, prev_ctx, NULL);
    return raised;
}

const char *fz_last_error(void) { return g_msg; }

void fz_fail(const char *cond, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "\nfuzz property violated: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (check `%s` failed at %s:%d)\n", cond, file, line);
    abort();
}

static char g_scratch[4096];
static int g_scratch_fd = -1;

static void scratch_cleanup(void) {
    if (g_scratch_fd >= 0) {
        close(g_scratch_fd);
        unlink(g_scratch);
        g_scratch_fd = -1;
    }
}

const char *fz_scratch_file(const void *data, size_t size, const char *suffix) {
    if (g_scratch_fd < 0) {
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir) dir = "/tmp";
        snprintf(g_scratch, sizeof g_scratch, "%s/mg-fuzz-XXXXXX%s", dir, suffix);
        g_scratch_fd = mkstemps(g_scratch, (int)strlen(suffix));
        if (g_scratch_fd < 0) {
            fprintf(stderr, "fuzz: cannot create a scratch file in %s: %s\n", dir, strerror(errno));
            abort();
        }
        atexit(scratch_cleanup);
    }
    if (ftruncate(g_scratch_fd, 0) != 0) abort();
    const unsigned char *p = data;
    for (size_t done = 0; done < size;) {
        ssize_t w = pwrite(g_scratch_fd, p + done, size - done, (off_t)done);
        if (w <= 0) abort();
        done += (size_t)w;
    }
    return g_scratch;
}

uint64_t fz_fnv1a(const void *p, size_t n) { return mg_fnv1a64(p, n); }

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

size_t fz_synthetic_tokenizer(unsigned char *buf, size_t cap) {
    /* normal pieces, best merge first (SP is U+2581, the escaped space) */
#define SP "\xE2\x96\x81"
    static const char *const normal[] = {
        SP "t", "he", SP "the", "in", SP "a", "er", "on", SP "s", "at",
        "en", SP "of", "or", "es", SP "w", "an", SP "and", "ing", SP "in",
        "\xC3\xA9", "\xE2\x82\xAC", SP SP, SP, "e", "t", "a", "o", "i", "n",
        "s", "h", "r", "d", "l", "f", "g", "w", "1", "2", ".", ",", "!", "\xE6\x97\xA5", "\xE6\x9C\xAC",
        "\xE6\x97\xA5\xE6\x9C\xAC"};
    const int n_normal = (int)(sizeof normal / sizeof normal[0]);
    const int V = 3 + 256 + n_normal;
    size_t need = 40 + 8 + (size_t)V * (6 + 16);
    if (cap < need) return 0;
    memset(buf, 0, 40);
    memcpy(buf, "MGTK", 4);
    put_u32(buf + 4, 1);
    put_u32(buf + 8, (uint32_t)V);
    put_u32(buf + 12, 7);
    put_u32(buf + 16, 0);
    put_u32(buf + 20, 1);
    put_u32(buf + 24, 2);
    put_u32(buf + 28, (uint32_t)-1);
    put_u32(buf + 32, 16);
    size_t pos = 40;
    for (int id = 0; id < V; id++) {
        char piece[16];
        float score = 0.0f;
        int type;
        if (id < 3) {
            snprintf(piece, sizeof piece, "%s", id == 0 ? "<unk>" : id == 1 ? "<s>" : "</s>");
            type = id == 0 ? 2 : 3;
        } else if (id < 259) {
            snprintf(piece, sizeof piece, "<0x%02X>", id - 3);
            type = 6;
        } else {
            snprintf(piece, sizeof piece, "%s", normal[id - 259]);
            score = -(float)(id - 259);
            type = 1;
        }
        size_t n = strlen(piece);
        memcpy(buf + pos, &score, 4);
        buf[pos + 4] = (unsigned char)type;
        buf[pos + 5] = (unsigned char)n;
        memcpy(buf + pos + 6, piece, n);
        pos += 6 + n;
    }
    uint64_t h = fz_fnv1a(buf, pos);
    memcpy(buf + pos, &h, 8);
    return pos + 8;
}
