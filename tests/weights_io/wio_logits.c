/* build/tests/wio_logits: the logits of a checkpoint's model on given tokens, for tests/test_weights_io.sh.
 *
 *   wio_logits --ckpt CKPT --tokens TOK.bin --rows B --out LOGITS.bin [--key value ...]
 *
 * TOK.bin holds B x L int32 token ids (little-endian, L = size / 4 / B); LOGITS.bin gets B x L x V float32
 * logits of one forward pass over whole sequences (the model the checkpoint's stored config describes, as
 * `eval` and `sample` build it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/fileio.h"
#include "../../src/model.h"
#include "../../src/run.h"

int main(int argc, char **argv) {
    const char *const extra[] = {"ckpt", "tokens", "rows", "out", NULL};
    const char *vals[4] = {0};
    MgConfig cfg;
    MgModel *m = mg_model_from_checkpoint("wio_logits", argc, argv, extra, vals, &cfg);
    if (!m || !vals[1] || !vals[2] || !vals[3]) {
        fprintf(stderr, "usage: wio_logits --ckpt CKPT --tokens TOK.bin --rows B --out LOGITS.bin\n");
        return 2;
    }
    char err[1024], *data;
    size_t len;
    if (mg_read_regular_file(vals[1], "tokens", (uint64_t)1 << 30, &data, &len, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int B = atoi(vals[2]);
    if (B < 1 || len % (4 * (size_t)B)) {
        fprintf(stderr, "error: %zu bytes of tokens do not split into %d rows of int32\n", len, B);
        return 1;
    }
    int L = (int)(len / 4 / (size_t)B), V = cfg.vocab_size;
    int32_t *tok = malloc(len);
    memcpy(tok, data, len);
    float *logits = malloc(sizeof(float) * (size_t)B * (size_t)L * (size_t)V);
    mg_model_forward_logits(m, tok, B, L, NULL, NULL, logits);
    FILE *f = fopen(vals[3], "wb");
    if (!f || fwrite(logits, sizeof(float), (size_t)B * L * V, f) != (size_t)B * L * V || fclose(f)) {
        fprintf(stderr, "error: cannot write %s\n", vals[3]);
        return 1;
    }
    printf("wrote %s: %d x %d x %d logits\n", vals[3], B, L, V);
    free(tok);
    free(logits);
    free(data);
    mg_model_free(m);
    return 0;
}
