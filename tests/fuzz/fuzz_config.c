/* libFuzzer harness: the config parser (src/config.c).
 *
 * Input: if the first byte is 0x01, the rest is a command line, one argument per '\n'-separated line
 * (mg_config_from_args, as every subcommand parses it); otherwise the whole input is config-file text
 * (mg_config_load_text, up to a NUL byte: the file loader refuses NUL bytes before parsing).
 * Outcomes: rejected with a message, or accepted; an accepted config is validated, and its resolved
 * text (mg_config_to_text, what checkpoints store) must parse back to the same config: property
 * to_text(load(to_text(c))) == to_text(c). */
#include <stdlib.h>
#include <string.h>

#include "../../src/common.h"
#include "../../src/config.h"
#include "fuzz_util.h"

typedef struct {
    int argc;
    char **argv;
    MgConfig *c;
    const char *vals[2];
} ArgsCtx;

static void parse_args(void *p) {
    ArgsCtx *a = p;
    static const char *const extra[] = {"ckpt", NULL};
    mg_config_from_args(a->c, a->argc, a->argv, extra, a->vals);
}

static void check_roundtrip(const MgConfig *c) {
    char err[4096];
    if (mg_config_validate(c, err, sizeof err) != 0) fz_assert(err[0] != 0, "validate failed without a message");
    char *text = mg_config_to_text(c);
    MgConfig back;
    mg_config_defaults(&back);
    int rc = mg_config_load_text(&back, text, "resolved", err, sizeof err);
    fz_assert(rc == 0, "the resolved config does not parse back: %s\n--- text ---\n%s", err, text);
    char *text2 = mg_config_to_text(&back);
    fz_assert(strcmp(text, text2) == 0, "the resolved config changes when read back:\n%s\n--- became ---\n%s", text,
              text2);
    free(text2);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    MgConfig c;
    mg_config_defaults(&c);
    char err[4096];
    if (size > 0 && data[0] == 0x01) {
        /* a command line: argv[0] = "fuzz", then one argument per line */
        char *buf = malloc(size);
        memcpy(buf, data + 1, size - 1);
        buf[size - 1] = 0;
        int argc = 1;
        for (size_t i = 0; i + 1 < size; i++) argc += buf[i] == '\n';
        argc += size > 1;
        char **argv = calloc((size_t)argc + 1, sizeof(char *));
        argv[0] = "fuzz";
        int k = 1;
        if (size > 1) {
            argv[k++] = buf;
            for (size_t i = 0; i + 1 < size; i++)
                if (buf[i] == '\n') {
                    buf[i] = 0;
                    argv[k++] = buf + i + 1;
                }
        }
        argv[k] = NULL;
        /* --help prints usage and exits 0 (by design); --config reads a file: neither is the parser's
         * business here. */
        int skip = 0;
        for (int i = 1; i < k; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") || !strncmp(argv[i], "--config", 8)) skip = 1;
        if (!skip) {
            ArgsCtx a = {k, argv, &c, {NULL, NULL}};
            if (fz_try(parse_args, &a) == 0) check_roundtrip(&c);
            else fz_assert(fz_last_error()[0] != 0, "an argument error without a message");
        }
        free(argv);
        free(buf);
        return 0;
    }
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    if (mg_config_load_text(&c, text, "fuzz.conf", err, sizeof err) == 0) check_roundtrip(&c);
    else fz_assert(err[0] != 0, "a config rejected without a message");
    free(text);
    return 0;
}
