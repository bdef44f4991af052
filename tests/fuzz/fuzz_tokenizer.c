/* libFuzzer harness: the tokenizer file loader and the encoder/decoder (src/tokenizer.c).
 *
 * Input starting with "MGTK": a tokenizer file. Its trailing FNV-1a checksum is recomputed first (so
 * the fuzzer gets past the integrity check into the parser), then it is loaded from a scratch file; a
 * loaded tokenizer encodes a fixed text and the input itself, and every id must be in range and decode.
 * Any other input: UTF-8 text for a fixed synthetic tokenizer (fz_synthetic_tokenizer: byte fallback,
 * dummy prefix). Properties: every id is in [0, V); mg_tokenizer_encode_buf with mg_tokenizer_max_ids
 * ids never runs out; the streaming decode equals the whole decode; and the round trip the tokenizer
 * guarantees (src/tokenizer.h): decode(encode(x, add_bos=1)) == x for valid UTF-8 x. (Text containing
 * U+2581 "▁" is excluded: the tokenizer's escaped space decodes to ' ', as SentencePiece's does.) */
#include <stdlib.h>
#include <string.h>

#include "../../src/common.h"
#include "../../src/tokenizer.h"
#include "fuzz_util.h"

static MgTokenizer *g_tok;

/* valid UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF) without U+2581 */
static int roundtrip_text(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t l = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (l == 0 || i + l > n) return 0;
        unsigned cp = l == 1 ? c : l == 2 ? (c & 0x1F) : l == 3 ? (c & 0x0F) : (c & 0x07);
        for (size_t k = 1; k < l; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((l == 2 && cp < 0x80) || (l == 3 && cp < 0x800) || (l == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp < 0xE000) || cp == 0x2581)
            return 0;
        i += l;
    }
    return 1;
}

/* Encode and decode text with tok; check the properties; require the round trip if asked. */
static void exercise(MgTokenizer *tok, const char *text, size_t n, int require_roundtrip) {
    int V = mg_tokenizer_vocab_size(tok);
    for (int add_bos = 0; add_bos <= 1; add_bos++) {
        MgTokens ids = {0};
        size_t k = mg_tokenizer_encode(tok, text, n, add_bos, &ids);
        fz_assert(k == ids.n, "encode returned %zu but appended %zu ids", k, ids.n);
        fz_assert((int64_t)k <= mg_tokenizer_max_ids(n), "%zu ids for %zu bytes exceed mg_tokenizer_max_ids", k, n);
        for (size_t i = 0; i < k; i++)
            fz_assert(ids.ids[i] >= 0 && ids.ids[i] < V, "id %d at %zu outside [0, %d)", ids.ids[i], i, V);
        int64_t cap = mg_tokenizer_max_ids(n);
        int32_t *buf = malloc(sizeof(int32_t) * (size_t)cap);
        int64_t kb = mg_tokenizer_encode_buf(tok, text, n, add_bos, buf, cap);
        fz_assert(kb == (int64_t)k && (k == 0 || memcmp(buf, ids.ids, k * sizeof(int32_t)) == 0),
                  "encode_buf differs from encode (%lld vs %zu ids)", (long long)kb, k);
        free(buf);
        int64_t len = mg_tokenizer_decode(tok, ids.ids, k, NULL, 0);
        fz_assert(len >= 0, "decode refused ids encode produced");
        char *out = malloc((size_t)len + 1);
        fz_assert(mg_tokenizer_decode(tok, ids.ids, k, out, (size_t)len + 1) == len, "decode length changed");
        /* streaming decode: piece by piece, given the previous id */
        char *st = malloc((size_t)len + 1);
        size_t m = 0;
        for (size_t i = 0; i < k; i++) {
            char piece[1024];
            int l = mg_tokenizer_decode_piece(tok, i ? ids.ids[i - 1] : -1, ids.ids[i], piece, sizeof piece);
            fz_assert(l >= 0 && m + (size_t)l <= (size_t)len, "streaming decode overran the whole decode");
            memcpy(st + m, piece, (size_t)l);
            m += (size_t)l;
        }
        fz_assert(m == (size_t)len && memcmp(st, out, m) == 0, "streaming decode differs from decode");
        if (require_roundtrip && add_bos)
            fz_assert((size_t)len == n && memcmp(out, text, n) == 0,
                      "round trip failed: %zu bytes in, %lld bytes out", n, (long long)len);
        free(st);
        free(out);
        mg_tokens_free(&ids);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static unsigned char file[16384];
    size_t n = fz_synthetic_tokenizer(file, sizeof file);
    char err[4096];
    g_tok = n ? mg_tokenizer_load(fz_scratch_file(file, n, ".tok"), err, sizeof err) : NULL;
    if (!g_tok) {
        fprintf(stderr, "fuzz_tokenizer: the synthetic tokenizer does not load: %s\n", n ? err : "buffer too small");
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 4 && memcmp(data, "MGTK", 4) == 0) {
        if (size < 48) return 0;
        unsigned char *file = malloc(size);
        memcpy(file, data, size);
        uint64_t h = fz_fnv1a(file, size - 8);
        memcpy(file + size - 8, &h, 8);
        char err[4096];
        MgTokenizer *tok = mg_tokenizer_load(fz_scratch_file(file, size, ".tok"), err, sizeof err);
        free(file);
        if (!tok) {
            fz_assert(err[0] != 0, "tokenizer refused without a message");
            return 0;
        }
        static const char sample[] = "Hello world! The \xC3\xA9t\xC3\xA9 of 2024,\tthe \xE6\x97\xA5\xE6\x9C\xAC\n\xFF end";
        exercise(tok, sample, sizeof sample - 1, 0);
        exercise(tok, (const char *)data + 40, size - 48 < 256 ? size - 48 : 256, 0);
        for (int id = 0; id < mg_tokenizer_vocab_size(tok); id++) {
            fz_assert(mg_tokenizer_piece(tok, id) != NULL, "no piece for id %d", id);
            char buf[1024];
            fz_assert(mg_tokenizer_decode_piece(tok, -1, id, buf, sizeof buf) >= 0, "id %d does not decode", id);
        }
        mg_tokenizer_free(tok);
        return 0;
    }
    exercise(g_tok, (const char *)data, size, roundtrip_text(data, size));
    return 0;
}
