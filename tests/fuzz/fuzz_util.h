/* Shared helpers of the libFuzzer harnesses in tests/fuzz/ (how to build and run them: docs/fuzzing.md).
 *
 * A harness feeds one input to a parser and must come back for the next: bad input is the normal
 * "rejected" outcome, never a crash, a leak, an exit or a hang. Library code reports errors through the
 * error hook (src/common.h); fz_try installs a hook that longjmps back, so an mg_fatal raised while
 * parsing is a rejection too. A crash, a sanitizer report, a leak or a violated property (fz_assert) is a
 * finding: libFuzzer stops and writes the input as crash-<sha1>. */
#ifndef MG_FUZZ_UTIL_H
#define MG_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Run fn(ctx) with the longjmp error hook installed. Returns 1 if it raised an error (message in
 * fz_last_error()), 0 if it returned normally. Whatever fn had allocated when the error was raised is
 * not freed, so a parser whose error path leaks under mg_fatal shows up as a leak (that is intended: the
 * parsers report bad input through their err argument, and mg_fatal is for programming errors). */
int fz_try(void (*fn)(void *ctx), void *ctx);
const char *fz_last_error(void);

/* Write data to this process's scratch file (created once with mkstemp under $TMPDIR or /tmp, removed
 * at exit) and return its path; for parsers that only take a path. suffix: e.g. ".bin" (the name must
 * not contain ':' or ','; mkstemps names do not). */
const char *fz_scratch_file(const void *data, size_t size, const char *suffix);

/* A violated property: print what and abort (libFuzzer records the input as a crash). */
#define fz_assert(cond, ...)                                                                             \
    do {                                                                                                 \
        if (!(cond)) fz_fail(#cond, __FILE__, __LINE__, __VA_ARGS__);                                    \
    } while (0)
void fz_fail(const char *cond, const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

/* FNV-1a-64 (the tokenizer file's checksum). */
uint64_t fz_fnv1a(const void *p, size_t n);

/* A small synthetic tokenizer file in the format of docs/data.md (unk, bos, eos, the 256 byte pieces
 * <0x00>..<0xFF> at ids 3..258, then a few dozen normal pieces with merges; flags 7: dummy prefix, byte
 * fallback, escaped white space). Writes at most cap bytes into buf; returns the file's size (or 0 if cap
 * is too small). Not a third-party file: every piece is made up here. */
size_t fz_synthetic_tokenizer(unsigned char *buf, size_t cap);

#endif
