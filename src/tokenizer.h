/* The Llama-2 tokenizer (SentencePiece BPE, 32000 pieces) in plain C.
 *
 * Encoding reproduces SentencePiece 0.1.97 with the Llama-2 model exactly (checked token for token against
 * python3-sentencepiece in tests/test_tokenizer.c):
 *   - identity normalisation: the text is not changed, except that every malformed UTF-8 byte becomes
 *     U+FFFD (one per byte) as SentencePiece does;
 *   - dummy prefix: "▁" (U+2581) is put in front of a non-empty text; every ' ' (0x20 only) becomes "▁";
 *     tabs, newlines and other white space stay as they are (they end up as byte pieces);
 *   - BPE: start from single characters, repeatedly merge the adjacent pair whose concatenation is a piece
 *     with the highest score (ties: the leftmost pair);
 *   - byte fallback: a character that is not a piece becomes its UTF-8 bytes, piece "<0xNN>" (id 3 + NN).
 * Digits never merge (the vocabulary has no multi-digit piece), which is Llama's split_digits.
 *
 * Speed: the normalised text is cut before every "▁" that follows a character other than "▁" (no piece
 * of this vocabulary spans such a point, checked when the file is loaded; otherwise the whole text is one
 * segment), and each segment's ids are cached in a hash table, so repeated words cost one lookup.
 *
 * The tokenizer file (data/tokenizer/llama2.tok, built by scripts/build_tokenizer.py; byte layout in
 * docs/data.md) holds the pieces, their scores and types, and the special ids.
 *
 * An MgTokenizer is not thread-safe while encoding (the cache); use one per thread. */
#ifndef MG_TOKENIZER_H
#define MG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct MgTokenizer MgTokenizer;

/* A growable id vector; mg_tokenizer_encode appends to it. Zero-initialise, free with mg_tokens_free. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} MgTokens;
void mg_tokens_free(MgTokens *t);

/* Load a tokenizer file. Returns NULL and writes a message naming the file and the problem to err. */
MgTokenizer *mg_tokenizer_load(const char *path, char *err, size_t errlen);
void mg_tokenizer_free(MgTokenizer *tok);

int mg_tokenizer_vocab_size(const MgTokenizer *tok);
int mg_tokenizer_bos_id(const MgTokenizer *tok); /* 1 */
int mg_tokenizer_eos_id(const MgTokenizer *tok); /* 2 */
/* A 64-bit hash of the file's content, stored in token shards to record which tokenizer made them. */
uint64_t mg_tokenizer_fingerprint(const MgTokenizer *tok);
/* The piece as stored (e.g. "▁Hello", "<0x0A>"), NUL-terminated; NULL for an id out of range. */
const char *mg_tokenizer_piece(const MgTokenizer *tok, int id);

/* Encode text[0..len) (UTF-8; any bytes accepted) and append the ids to out, preceded by BOS if add_bos.
 * Returns the number of ids appended. An empty text gives no ids (only BOS if asked).
 * Working memory is bounded whatever the length of the text: it is normalised and encoded in pieces of
 * at most 64 KiB cut at word boundaries (a ' ' after a non-space), where no segment and so no piece of the
 * Llama-2 vocabulary crosses: the ids are exactly those of the whole text. Only a run of more than
 * 64 KiB without a space is cut inside (at a UTF-8 character boundary) and may get different ids there;
 * so may a tokenizer without word segmentation (see above) for texts longer than 64 KiB. */
size_t mg_tokenizer_encode(MgTokenizer *tok, const char *text, size_t len, int add_bos, MgTokens *out);
/* Where the first piece of text[0..len) ends when pieces hold at most max bytes (max >= 4): len if it fits,
 * else the last word boundary in (0, max], else a character boundary near max. */
size_t mg_tokenizer_encode_piece_end(const char *text, size_t len, size_t max);
/* Tests: change the piece size (default 64 KiB, at least 4); returns the previous one. */
size_t mg_tokenizer_set_piece_bytes(MgTokenizer *tok, size_t bytes);
/* The same into a caller buffer: returns the count, or -1 if more than cap ids would be needed.
 * mg_tokenizer_max_ids(len) ids always suffice. */
int64_t mg_tokenizer_encode_buf(MgTokenizer *tok, const char *text, size_t len, int add_bos, int32_t *ids,
                                int64_t cap);
static inline int64_t mg_tokenizer_max_ids(size_t len) { return 3 * (int64_t)len + 4; }

/* Decode ids to text, snprintf-style: writes at most cap-1 bytes and a NUL, returns the full length.
 * "▁" becomes ' ', byte pieces become their raw byte, <s> and </s> give nothing, <unk> gives " ⁇ ".
 * The space that starts the first piece after a BOS (the dummy prefix) is dropped, so
 * decode(encode(x, add_bos=1)) == x for every valid UTF-8 x. Ids out of range are an error (-1). */
int64_t mg_tokenizer_decode(const MgTokenizer *tok, const int32_t *ids, size_t n, char *out, size_t cap);
/* Streaming decode of one id given the id before it (-1 if none): the bytes it adds to the text.
 * Returns the length written (at most cap-1, NUL-terminated), or -1 for an id out of range. */
int mg_tokenizer_decode_piece(const MgTokenizer *tok, int prev_id, int id, char *buf, size_t cap);

/* Cache statistics (for benchmarks): segments looked up, cache hits, entries. */
void mg_tokenizer_cache_stats(const MgTokenizer *tok, int64_t *lookups, int64_t *hits, int64_t *entries);

#endif
