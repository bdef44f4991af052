/* Llama-2 SentencePiece BPE tokenizer (see tokenizer.h for the algorithm and docs/data.md for the file). */
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "fileio.h"
#include "hash.h"

#define TOK_MAGIC "MGTK"
#define TOK_VERSION 1u
#define TOK_HEADER_BYTES 40
#define TOK_FILE_MAX (256u << 20) /* a tokenizer file of 32000 pieces is ~0.5 MB */
/* Input bytes normalised and segmented at once: bounds the encoder's working memory (about 40 bytes per
 * byte of a piece) whatever the length of a line or document (see mg_tokenizer_encode). */
#define ENCODE_PIECE_BYTES ((size_t)1 << 16)
/* SentencePiece piece types (sentencepiece_model.proto). */
enum { PT_NORMAL = 1, PT_UNKNOWN = 2, PT_CONTROL = 3, PT_USER_DEFINED = 4, PT_UNUSED = 5, PT_BYTE = 6 };
enum { FLAG_ADD_DUMMY_PREFIX = 1, FLAG_BYTE_FALLBACK = 2, FLAG_ESCAPE_WHITESPACES = 4 };

/* Segments longer than this are encoded but not cached (they are rare and would bloat the cache). */
#define CACHE_MAX_KEY 128
#define CACHE_MAX_ENTRIES (1u << 22)

static const char SPACE_SYM[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 "▁" */

typedef struct {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
    uint32_t used;
} CacheEntry;

typedef struct {
    float score;
    int left, right, size;
} PairCand;

struct MgTokenizer {
    int vocab_size;
    uint32_t flags;
    int unk_id, bos_id, eos_id, pad_id;
    int max_piece_bytes;
    uint64_t fingerprint;
    /* pieces: NUL-terminated strings in one blob */
    char *blob;
    uint32_t *piece_off;
    uint8_t *piece_len;
    float *score;
    uint8_t *type;
    /* decoded text of each id (▁ -> ' ', byte pieces -> the byte) */
    char *dtext;
    uint32_t *dtext_off;
    uint16_t *dtext_len;
    int32_t byte_id[256];
    /* piece string -> id for the pieces BPE may produce or output (NORMAL) */
    int32_t *map;
    uint64_t map_mask;
    size_t piece_bytes; /* input bytes encoded at once (ENCODE_PIECE_BYTES; tests change it) */
    int presplit; /* no piece has "▁" after another character: segments can be encoded independently */
    /* segment cache */
    CacheEntry *cache;
    uint64_t cache_mask;
    uint32_t cache_n;
    char *ckeys;
    size_t ckeys_n, ckeys_cap;
    int32_t *cids;
    size_t cids_n, cids_cap;
    int64_t lookups, hits;
    /* scratch */
    char *norm;
    size_t norm_cap;
    int *sym_start, *sym_len, *sym_prev, *sym_next;
    size_t sym_cap;
    PairCand *heap;
    size_t heap_cap;
    int32_t *seg_ids;
    size_t seg_ids_cap;
};



void mg_tokens_free(MgTokens *t) {
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static void tokens_reserve(MgTokens *t, size_t extra) {
    if (t->n + extra <= t->cap) return;
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < t->n + extra) cap *= 2;
    t->ids = mg_realloc(t->ids, cap * sizeof(int32_t));
    t->cap = cap;
}

static inline void tokens_push(MgTokens *t, int32_t id) {
    if (t->n == t->cap) tokens_reserve(t, 1);
    t->ids[t->n++] = id;
}

static inline uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- piece map --------------------------------------------------------------------------------- */

static int32_t map_find(const MgTokenizer *t, const char *s, size_t n) {
    if (n > (size_t)t->max_piece_bytes) return -1;
    uint64_t i = mg_fnv1a64(s, n) & t->map_mask;
    for (;;) {
        int32_t id = t->map[i];
        if (id < 0) return -1;
        if (t->piece_len[id] == n && memcmp(t->blob + t->piece_off[id], s, n) == 0) return id;
        i = (i + 1) & t->map_mask;
    }
}

static void map_insert(MgTokenizer *t, int32_t id) {
    uint64_t i = mg_fnv1a64(t->blob + t->piece_off[id], t->piece_len[id]) & t->map_mask;
    while (t->map[i] >= 0) i = (i + 1) & t->map_mask;
    t->map[i] = id;
}

/* ---- loading ----------------------------------------------------------------------------------- */

static int parse_byte_piece(const char *s, int n) {
    /* "<0xNN>" with upper-case hex, as SentencePiece writes it */
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

void mg_tokenizer_free(MgTokenizer *t) {
    if (!t) return;
    free(t->blob);
    free(t->piece_off);
    free(t->piece_len);
    free(t->score);
    free(t->type);
    free(t->dtext);
    free(t->dtext_off);
    free(t->dtext_len);
    free(t->map);
    free(t->cache);
    free(t->ckeys);
    free(t->cids);
    free(t->norm);
    free(t->sym_start);
    free(t->sym_len);
    free(t->sym_prev);
    free(t->sym_next);
    free(t->heap);
    free(t->seg_ids);
    free(t);
}

MgTokenizer *mg_tokenizer_load(const char *path, char *err, size_t errlen) {
    const char *hint = "rebuild it with scripts/fetch_data.sh --tokenizer-only";
    /* A regular file of bounded size: a directory, /dev/zero or a FIFO is refused by name (fileio.h). */
    char *raw = NULL;
    size_t raw_len = 0;
    if (mg_read_regular_file(path, "tokenizer file", TOK_FILE_MAX, &raw, &raw_len, err, errlen)) {
        struct stat st;
        if (stat(path, &st) != 0 && errno == ENOENT) {
            size_t l = strlen(err);
            snprintf(err + l, errlen > l ? errlen - l : 0, " (run scripts/fetch_data.sh --tokenizer-only to build it)");
        }
        return NULL;
    }
    long fsize = (long)raw_len;
    if (fsize < TOK_HEADER_BYTES + 8) {
        free(raw);
        mg_errf(err, errlen, "tokenizer file '%s' is too short (%ld bytes) to be a tokenizer; %s", path, fsize, hint);
        return NULL;
    }
    unsigned char *buf = (unsigned char *)raw;
    MgTokenizer *t = NULL;
    if (memcmp(buf, TOK_MAGIC, 4) != 0) {
        mg_errf(err, errlen, "'%s' is not a megalodon tokenizer file (bad magic; expected \"MGTK\"); %s", path, hint);
        goto fail;
    }
    uint32_t version = rd_u32(buf + 4);
    if (version != TOK_VERSION) {
        mg_errf(err, errlen, "tokenizer file '%s' has format version %u but this build reads version %u; %s", path,
                version, TOK_VERSION, hint);
        goto fail;
    }
    uint64_t stored = 0;
    memcpy(&stored, buf + fsize - 8, 8);
    uint64_t fp = mg_fnv1a64(buf, (size_t)fsize - 8);
    if (stored != fp) {
        mg_errf(err, errlen, "tokenizer file '%s' is corrupt or truncated (checksum mismatch); %s", path, hint);
        goto fail;
    }
    t = mg_calloc(1, sizeof(*t));
    t->fingerprint = fp;
    t->vocab_size = (int)rd_u32(buf + 8);
    t->flags = rd_u32(buf + 12);
    t->unk_id = (int32_t)rd_u32(buf + 16);
    t->bos_id = (int32_t)rd_u32(buf + 20);
    t->eos_id = (int32_t)rd_u32(buf + 24);
    t->pad_id = (int32_t)rd_u32(buf + 28);
    t->max_piece_bytes = (int)rd_u32(buf + 32);
    int V = t->vocab_size;
    /* BOS and EOS must be real ids: encode emits BOS, shards mark documents with it */
    if (V <= 0 || V > (1 << 24) || t->unk_id < 0 || t->unk_id >= V || t->bos_id < 0 || t->bos_id >= V ||
        t->eos_id < 0 || t->eos_id >= V || t->max_piece_bytes <= 0 || t->max_piece_bytes > 255) {
        mg_errf(err, errlen,
                "tokenizer file '%s' has an invalid header (vocab_size %d, unk_id %d, bos_id %d, eos_id %d, "
                "max_piece_bytes %d); %s",
                path, V, t->unk_id, t->bos_id, t->eos_id, t->max_piece_bytes, hint);
        goto fail;
    }
    if (!(t->flags & FLAG_ESCAPE_WHITESPACES)) {
        mg_errf(err, errlen, "tokenizer file '%s': only escape_whitespaces=true models are supported", path);
        goto fail;
    }
    t->piece_off = mg_malloc((size_t)V * sizeof(uint32_t));
    t->piece_len = mg_malloc((size_t)V);
    t->score = mg_malloc((size_t)V * sizeof(float));
    t->type = mg_malloc((size_t)V);
    t->blob = mg_malloc((size_t)fsize + (size_t)V);
    size_t pos = TOK_HEADER_BYTES, blob_n = 0, end = (size_t)fsize - 8;
    for (int i = 0; i < V; i++) {
        if (pos + 6 > end) {
            mg_errf(err, errlen, "tokenizer file '%s' ends inside piece %d of %d; %s", path, i, V, hint);
            goto fail;
        }
        memcpy(&t->score[i], buf + pos, 4);
        t->type[i] = buf[pos + 4];
        int n = buf[pos + 5];
        pos += 6;
        if (pos + (size_t)n > end || n > t->max_piece_bytes) {
            mg_errf(err, errlen, "tokenizer file '%s': piece %d has a bad length %d; %s", path, i, n, hint);
            goto fail;
        }
        if (t->type[i] < PT_NORMAL || t->type[i] > PT_BYTE || t->type[i] == PT_USER_DEFINED ||
            t->type[i] == PT_UNUSED) {
            mg_errf(err, errlen,
                    "tokenizer file '%s': piece %d has type %d; only normal, unknown, control and byte pieces "
                    "are supported",
                    path, i, t->type[i]);
            goto fail;
        }
        t->piece_off[i] = (uint32_t)blob_n;
        t->piece_len[i] = (uint8_t)n;
        memcpy(t->blob + blob_n, buf + pos, (size_t)n);
        blob_n += (size_t)n;
        t->blob[blob_n++] = 0;
        pos += (size_t)n;
    }
    if (pos != end) {
        mg_errf(err, errlen, "tokenizer file '%s' has %zu unexpected bytes after the pieces; %s", path, end - pos,
                hint);
        goto fail;
    }
    /* byte pieces */
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int i = 0; i < V; i++) {
        if (t->type[i] != PT_BYTE) continue;
        int b = parse_byte_piece(t->blob + t->piece_off[i], t->piece_len[i]);
        if (b < 0) {
            mg_errf(err, errlen, "tokenizer file '%s': byte piece %d is not of the form <0xNN>", path, i);
            goto fail;
        }
        t->byte_id[b] = i;
    }
    if (t->flags & FLAG_BYTE_FALLBACK)
        for (int b = 0; b < 256; b++)
            if (t->byte_id[b] < 0) {
                mg_errf(err, errlen, "tokenizer file '%s' uses byte fallback but has no piece <0x%02X>", path, b);
                goto fail;
            }
    /* piece map, at most half full */
    uint64_t cap = 1;
    while (cap < 2 * (uint64_t)V) cap <<= 1;
    t->map = mg_malloc(cap * sizeof(int32_t));
    for (uint64_t i = 0; i < cap; i++) t->map[i] = -1;
    t->map_mask = cap - 1;
    t->presplit = 1;
    t->piece_bytes = ENCODE_PIECE_BYTES;
    for (int i = 0; i < V; i++) {
        if (t->type[i] != PT_NORMAL) continue;
        if (map_find(t, t->blob + t->piece_off[i], t->piece_len[i]) >= 0) {
            mg_errf(err, errlen, "tokenizer file '%s': piece %d ('%s') appears twice", path, i, t->blob + t->piece_off[i]);
            goto fail;
        }
        map_insert(t, i);
        const char *s = t->blob + t->piece_off[i];
        int n = t->piece_len[i];
        for (int p = 1; p + 3 <= n; p++)
            if (memcmp(s + p, SPACE_SYM, 3) == 0 && !(p >= 3 && memcmp(s + p - 3, SPACE_SYM, 3) == 0))
                t->presplit = 0;
    }
    /* decoded text of each id */
    t->dtext = mg_malloc(blob_n + 8 * (size_t)V + 16);
    t->dtext_off = mg_malloc((size_t)V * sizeof(uint32_t));
    t->dtext_len = mg_malloc((size_t)V * sizeof(uint16_t));
    size_t dn = 0;
    for (int i = 0; i < V; i++) {
        t->dtext_off[i] = (uint32_t)dn;
        const char *s = t->blob + t->piece_off[i];
        int n = t->piece_len[i];
        if (t->type[i] == PT_BYTE) {
            t->dtext[dn++] = (char)parse_byte_piece(s, n);
        } else if (t->type[i] == PT_CONTROL) {
            /* invisible */
        } else if (t->type[i] == PT_UNKNOWN) {
            memcpy(t->dtext + dn, " \xE2\x81\x87 ", 5);
            dn += 5;
        } else {
            for (int p = 0; p < n;) {
                if (p + 3 <= n && memcmp(s + p, SPACE_SYM, 3) == 0) {
                    t->dtext[dn++] = ' ';
                    p += 3;
                } else {
                    t->dtext[dn++] = s[p++];
                }
            }
        }
        t->dtext_len[i] = (uint16_t)(dn - t->dtext_off[i]);
    }
    free(buf);
    return t;
fail:
    free(buf);
    mg_tokenizer_free(t);
    return NULL;
}

int mg_tokenizer_vocab_size(const MgTokenizer *t) { return t->vocab_size; }
int mg_tokenizer_bos_id(const MgTokenizer *t) { return t->bos_id; }
int mg_tokenizer_eos_id(const MgTokenizer *t) { return t->eos_id; }
uint64_t mg_tokenizer_fingerprint(const MgTokenizer *t) { return t->fingerprint; }
const char *mg_tokenizer_piece(const MgTokenizer *t, int id) {
    return (id < 0 || id >= t->vocab_size) ? NULL : t->blob + t->piece_off[id];
}

void mg_tokenizer_cache_stats(const MgTokenizer *t, int64_t *lookups, int64_t *hits, int64_t *entries) {
    if (lookups) *lookups = t->lookups;
    if (hits) *hits = t->hits;
    if (entries) *entries = t->cache_n;
}

/* ---- BPE on one segment ------------------------------------------------------------------------ */

/* SentencePiece's agenda order: higher score first, then the leftmost pair. */
static inline int cand_before(const PairCand *a, const PairCand *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(MgTokenizer *t, size_t *n, PairCand c) {
    if (*n == t->heap_cap) {
        t->heap_cap = t->heap_cap ? 2 * t->heap_cap : 256;
        t->heap = mg_realloc(t->heap, t->heap_cap * sizeof(PairCand));
    }
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &t->heap[p])) break;
        t->heap[i] = t->heap[p];
        i = p;
    }
    t->heap[i] = c;
}

static PairCand heap_pop(MgTokenizer *t, size_t *n) {
    PairCand top = t->heap[0];
    PairCand last = t->heap[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const PairCand *bc = &last;
        if (l < m && cand_before(&t->heap[l], bc)) {
            best = l;
            bc = &t->heap[l];
        }
        if (r < m && cand_before(&t->heap[r], bc)) best = r;
        if (best == i) break;
        t->heap[i] = t->heap[best];
        i = best;
    }
    if (m > 0) t->heap[i] = last;
    return top;
}

static inline void maybe_add_pair(MgTokenizer *t, const char *seg, size_t *hn, int left, int right) {
    if (left < 0 || right < 0) return;
    int size = t->sym_len[left] + t->sym_len[right];
    int32_t id = map_find(t, seg + t->sym_start[left], (size_t)size);
    if (id < 0) return;
    PairCand c = {t->score[id], left, right, size};
    heap_push(t, hn, c);
}

static inline int utf8_len(unsigned char c) {
    /* the normalised text is valid UTF-8, so the lead byte gives the length */
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Encode one normalised segment into t->seg_ids; returns the count. */
static size_t bpe_segment(MgTokenizer *t, const char *seg, size_t n) {
    if (n + 1 > t->sym_cap) {
        size_t cap = t->sym_cap ? t->sym_cap : 256;
        while (cap < n + 1) cap *= 2;
        t->sym_start = mg_realloc(t->sym_start, cap * sizeof(int));
        t->sym_len = mg_realloc(t->sym_len, cap * sizeof(int));
        t->sym_prev = mg_realloc(t->sym_prev, cap * sizeof(int));
        t->sym_next = mg_realloc(t->sym_next, cap * sizeof(int));
        t->sym_cap = cap;
    }
    int k = 0;
    for (size_t p = 0; p < n;) {
        int l = utf8_len((unsigned char)seg[p]);
        if (p + (size_t)l > n) l = (int)(n - p);
        t->sym_start[k] = (int)p;
        t->sym_len[k] = l;
        t->sym_prev[k] = k - 1;
        t->sym_next[k] = k + 1;
        k++;
        p += (size_t)l;
    }
    t->sym_next[k - 1] = -1;
    size_t hn = 0;
    for (int i = 1; i < k; i++) maybe_add_pair(t, seg, &hn, i - 1, i);
    while (hn > 0) {
        PairCand c = heap_pop(t, &hn);
        int L = c.left, R = c.right;
        if (t->sym_len[L] == 0 || t->sym_len[R] == 0 || t->sym_len[L] + t->sym_len[R] != c.size) continue;
        t->sym_len[L] += t->sym_len[R];
        t->sym_next[L] = t->sym_next[R];
        if (t->sym_next[R] >= 0) t->sym_prev[t->sym_next[R]] = L;
        t->sym_len[R] = 0;
        maybe_add_pair(t, seg, &hn, t->sym_prev[L], L);
        maybe_add_pair(t, seg, &hn, L, t->sym_next[L]);
    }
    /* at most one id per byte */
    if (n > t->seg_ids_cap) {
        t->seg_ids_cap = n > 256 ? n : 256;
        t->seg_ids = mg_realloc(t->seg_ids, t->seg_ids_cap * sizeof(int32_t));
    }
    size_t m = 0;
    for (int i = 0; i >= 0; i = t->sym_next[i]) {
        const char *s = seg + t->sym_start[i];
        int32_t id = map_find(t, s, (size_t)t->sym_len[i]);
        if (id >= 0) {
            t->seg_ids[m++] = id;
        } else if (t->flags & FLAG_BYTE_FALLBACK) {
            for (int b = 0; b < t->sym_len[i]; b++) t->seg_ids[m++] = t->byte_id[(unsigned char)s[b]];
        } else {
            t->seg_ids[m++] = t->unk_id;
        }
    }
    return m;
}

/* ---- segment cache ----------------------------------------------------------------------------- */

static void cache_grow(MgTokenizer *t) {
    uint64_t cap = t->cache ? 2 * (t->cache_mask + 1) : 1u << 14;
    CacheEntry *nc = mg_calloc(cap, sizeof(CacheEntry));
    if (t->cache) {
        for (uint64_t i = 0; i <= t->cache_mask; i++) {
            if (!t->cache[i].used) continue;
            uint64_t j = t->cache[i].hash & (cap - 1);
            while (nc[j].used) j = (j + 1) & (cap - 1);
            nc[j] = t->cache[i];
        }
        free(t->cache);
    }
    t->cache = nc;
    t->cache_mask = cap - 1;
}

/* Append the ids of segment seg[0..n) to out. */
static void encode_segment(MgTokenizer *t, const char *seg, size_t n, MgTokens *out) {
    if (n > CACHE_MAX_KEY) {
        size_t m = bpe_segment(t, seg, n);
        tokens_reserve(out, m);
        memcpy(out->ids + out->n, t->seg_ids, m * sizeof(int32_t));
        out->n += m;
        return;
    }
    t->lookups++;
    if (!t->cache) cache_grow(t);
    uint64_t h = mg_fnv1a64(seg, n);
    uint64_t j = h & t->cache_mask;
    while (t->cache[j].used) {
        CacheEntry *e = &t->cache[j];
        if (e->hash == h && e->key_len == n && memcmp(t->ckeys + e->key_off, seg, n) == 0) {
            t->hits++;
            tokens_reserve(out, e->n_ids);
            memcpy(out->ids + out->n, t->cids + e->ids_off, e->n_ids * sizeof(int32_t));
            out->n += e->n_ids;
            return;
        }
        j = (j + 1) & t->cache_mask;
    }
    size_t m = bpe_segment(t, seg, n);
    tokens_reserve(out, m);
    memcpy(out->ids + out->n, t->seg_ids, m * sizeof(int32_t));
    out->n += m;
    if (t->cache_n >= CACHE_MAX_ENTRIES || t->cids_n + m > UINT32_MAX || t->ckeys_n + n > UINT32_MAX) return;
    if (2 * (uint64_t)(t->cache_n + 1) > t->cache_mask + 1) {
        cache_grow(t);
        j = h & t->cache_mask;
        while (t->cache[j].used) j = (j + 1) & t->cache_mask;
    }
    if (t->ckeys_n + n > t->ckeys_cap) {
        t->ckeys_cap = t->ckeys_cap ? 2 * t->ckeys_cap : 1u << 16;
        while (t->ckeys_n + n > t->ckeys_cap) t->ckeys_cap *= 2;
        t->ckeys = mg_realloc(t->ckeys, t->ckeys_cap);
    }
    if (t->cids_n + m > t->cids_cap) {
        t->cids_cap = t->cids_cap ? 2 * t->cids_cap : 1u << 16;
        while (t->cids_n + m > t->cids_cap) t->cids_cap *= 2;
        t->cids = mg_realloc(t->cids, t->cids_cap * sizeof(int32_t));
    }
    CacheEntry *e = &t->cache[j];
    e->hash = h;
    e->key_off = (uint32_t)t->ckeys_n;
    e->key_len = (uint16_t)n;
    e->ids_off = (uint32_t)t->cids_n;
    e->n_ids = (uint16_t)m;
    e->used = 1;
    memcpy(t->ckeys + t->ckeys_n, seg, n);
    t->ckeys_n += n;
    memcpy(t->cids + t->cids_n, t->seg_ids, m * sizeof(int32_t));
    t->cids_n += m;
    t->cache_n++;
}

/* ---- normalisation and encoding ---------------------------------------------------------------- */

/* Length of the valid UTF-8 character at s[0..n), or 0 if malformed (SentencePiece's DecodeUTF8 rules:
 * no overlong forms, no surrogates, nothing above U+10FFFF). */
static inline int utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (n >= 2 && (c & 0xE0) == 0xC0) {
        unsigned cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
        if ((s[1] & 0xC0) == 0x80 && cp >= 0x80) return 2;
    } else if (n >= 3 && (c & 0xF0) == 0xE0) {
        unsigned cp = ((c & 0x0F) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3F);
        if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && cp >= 0x800 && (cp < 0xD800 || cp >= 0xE000))
            return 3;
    } else if (n >= 4 && (c & 0xF8) == 0xF0) {
        unsigned cp = ((c & 0x07) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3F);
        if ((s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 && cp >= 0x10000 &&
            cp <= 0x10FFFF)
            return 4;
    }
    return 0;
}

/* Normalise and encode one piece of the text; `first`: the piece that starts the text (dummy prefix). */
static void encode_piece(MgTokenizer *t, const char *text, size_t len, int first, MgTokens *out) {
    /* normalise: dummy prefix, ' ' -> ▁, malformed bytes -> U+FFFD (each at most 3 bytes per input byte) */
    size_t need = 3 * len + 3;
    if (need > t->norm_cap) {
        t->norm_cap = need;
        t->norm = mg_realloc(t->norm, need);
    }
    char *nb = t->norm;
    size_t m = 0;
    if (first && (t->flags & FLAG_ADD_DUMMY_PREFIX)) {
        memcpy(nb, SPACE_SYM, 3);
        m = 3;
    }
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c == ' ') {
            memcpy(nb + m, SPACE_SYM, 3);
            m += 3;
            i++;
        } else if (c < 0x80) {
            nb[m++] = (char)c;
            i++;
        } else {
            int l = utf8_valid_len(s + i, len - i);
            if (l == 0) {
                memcpy(nb + m, "\xEF\xBF\xBD", 3);
                m += 3;
                i++;
            } else {
                memcpy(nb + m, s + i, (size_t)l);
                m += (size_t)l;
                i += (size_t)l;
            }
        }
    }
    if (!t->presplit) {
        size_t k = bpe_segment(t, nb, m);
        tokens_reserve(out, k);
        memcpy(out->ids + out->n, t->seg_ids, k * sizeof(int32_t));
        out->n += k;
        return;
    }
    /* segments: a run of ▁ followed by a run of anything else */
    size_t p = 0;
    while (p < m) {
        size_t q = p;
        while (q + 3 <= m && memcmp(nb + q, SPACE_SYM, 3) == 0) q += 3;
        while (q < m && !(q + 3 <= m && (unsigned char)nb[q] == 0xE2 && memcmp(nb + q, SPACE_SYM, 3) == 0)) q++;
        encode_segment(t, nb + p, q - p, out);
        p = q;
    }
}

size_t mg_tokenizer_encode_piece_end(const char *text, size_t len, size_t max) {
    if (len <= max) return len;
    /* the last word boundary in (0, max]: a ' ' that follows something else (a segment starts there) */
    for (size_t q = max; q > 0; q--)
        if (text[q] == ' ' && text[q - 1] != ' ') return q;
    /* none: cut at a character boundary (never before a UTF-8 continuation byte) */
    size_t e = max;
    while (e > 1 && ((unsigned char)text[e] & 0xC0) == 0x80 && max - e < 3) e--;
    return e;
}

size_t mg_tokenizer_set_piece_bytes(MgTokenizer *t, size_t bytes) {
    size_t old = t->piece_bytes;
    t->piece_bytes = bytes < 4 ? 4 : bytes;
    return old;
}

size_t mg_tokenizer_encode(MgTokenizer *t, const char *text, size_t len, int add_bos, MgTokens *out) {
    size_t n0 = out->n;
    if (add_bos) tokens_push(out, t->bos_id);
    /* In pieces of at most ENCODE_PIECE_BYTES, cut at word boundaries: segments never span one, so the ids
     * are those of the whole text (tokenizer.h); only a run of more than ENCODE_PIECE_BYTES without a
     * boundary is cut inside, at a character boundary. */
    for (size_t p = 0; p < len;) {
        size_t e = mg_tokenizer_encode_piece_end(text + p, len - p, t->piece_bytes);
        encode_piece(t, text + p, e, p == 0, out);
        p += e;
    }
    return out->n - n0;
}

int64_t mg_tokenizer_encode_buf(MgTokenizer *t, const char *text, size_t len, int add_bos, int32_t *ids,
                                int64_t cap) {
    MgTokens v = {0};
    size_t n = mg_tokenizer_encode(t, text, len, add_bos, &v);
    int64_t r = -1;
    if ((int64_t)n <= cap) {
        if (n) memcpy(ids, v.ids, n * sizeof(int32_t)); /* v.ids is NULL when nothing was appended */
        r = (int64_t)n;
    }
    mg_tokens_free(&v);
    return r;
}

/* ---- decoding ---------------------------------------------------------------------------------- */

static inline void piece_text(const MgTokenizer *t, int prev, int id, const char **s, int *n) {
    *s = t->dtext + t->dtext_off[id];
    *n = t->dtext_len[id];
    if (prev == t->bos_id && *n > 0 && (*s)[0] == ' ' && t->type[id] == PT_NORMAL &&
        (t->flags & FLAG_ADD_DUMMY_PREFIX)) {
        (*s)++;
        (*n)--;
    }
}

int64_t mg_tokenizer_decode(const MgTokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap) {
    size_t m = 0;
    int prev = -1;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->vocab_size) return -1;
        const char *s;
        int l;
        piece_text(t, prev, id, &s, &l);
        if (cap > 0 && m < cap - 1) memcpy(out + m, s, MG_MIN((size_t)l, cap - 1 - m));
        m += (size_t)l;
        prev = id;
    }
    if (cap > 0) out[MG_MIN(m, cap - 1)] = 0;
    return (int64_t)m;
}

int mg_tokenizer_decode_piece(const MgTokenizer *t, int prev_id, int id, char *buf, size_t cap) {
    if (id < 0 || id >= t->vocab_size) return -1;
    const char *s;
    int l;
    piece_text(t, prev_id, id, &s, &l);
    if (cap == 0) return l;
    size_t w = MG_MIN((size_t)l, cap - 1);
    memcpy(buf, s, w);
    buf[w] = 0;
    return (int)w;
}
