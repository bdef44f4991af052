/* Token shards and the data loader (see data.h; byte layout in docs/data.md). */
#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"
#include "fsutil.h"
#include "hash.h"

static const char *REPREPARE = "re-run `megalodon prepare` (docs/data.md) to rebuild it";


static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

uint64_t mg_shard_file_bytes(uint64_t n_tokens, uint64_t n_docs, uint32_t token_bytes) {
    return align8(MG_SHARD_HEADER_BYTES + n_tokens * token_bytes) + 8 * n_docs;
}

/* ---- writing ----------------------------------------------------------------------------------- */

int mg_shard_write(const char *path, const int32_t *tokens, uint64_t n_tokens, const uint64_t *doc_starts,
                   uint64_t n_docs, int vocab_size, int bos_id, uint64_t fingerprint, char *err, size_t errlen) {
    if (vocab_size <= 0) return mg_errf(err, errlen, "shard '%s': vocab_size %d must be > 0", path, vocab_size);
    if (bos_id < -1 || bos_id >= vocab_size)
        return mg_errf(err, errlen, "shard '%s': bos_id %d must be -1 (documents not marked) or a token id in [0, %d)",
                       path, bos_id, vocab_size);
    for (uint64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            return mg_errf(err, errlen, "shard '%s': token id %d at position %llu is outside [0, %d)", path,
                           tokens[i], (unsigned long long)i, vocab_size);
    for (uint64_t d = 0; d < n_docs; d++) {
        if (doc_starts[d] >= n_tokens || (d == 0 && doc_starts[0] != 0) || (d > 0 && doc_starts[d] <= doc_starts[d - 1]))
            return mg_errf(err, errlen, "shard '%s': document start %llu (document %llu) is out of order or range",
                           path, (unsigned long long)doc_starts[d], (unsigned long long)d);
        if (bos_id >= 0 && tokens[doc_starts[d]] != bos_id)
            return mg_errf(err, errlen, "shard '%s': document %llu does not start with BOS (%d)", path,
                           (unsigned long long)d, bos_id);
    }
    uint32_t tb = vocab_size <= 65536 ? 2 : 4;
    unsigned char hdr[MG_SHARD_HEADER_BYTES] = {0};
    memcpy(hdr, MG_SHARD_MAGIC, 8); /* includes the terminating NUL */
    put_u32(hdr + 8, MG_SHARD_VERSION);
    put_u32(hdr + 12, (uint32_t)vocab_size);
    put_u32(hdr + 16, tb);
    put_u32(hdr + 20, (uint32_t)bos_id);
    put_u64(hdr + 24, n_tokens);
    put_u64(hdr + 32, n_docs);
    put_u64(hdr + 40, fingerprint);
    /* a temp file under a unique name, created exclusively, renamed over path: nothing is written through
     * a planted symlink (fsutil.h) */
    MgAtomicFile af;
    char e0[1024];
    FILE *f = mg_fs_atomic_open(&af, path, e0, sizeof e0);
    if (!f) return mg_errf(err, errlen, "cannot create shard '%s': %s", path, e0);
    int ok = fwrite(hdr, 1, sizeof hdr, f) == sizeof hdr;
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = mg_malloc((size_t)CHUNK * 4);
    for (uint64_t i = 0; ok && i < n_tokens; i += CHUNK) {
        uint64_t m = MG_MIN((uint64_t)CHUNK, n_tokens - i);
        for (uint64_t j = 0; j < m; j++) {
            uint32_t v = (uint32_t)tokens[i + j];
            if (tb == 2) {
                buf[2 * j] = (unsigned char)v;
                buf[2 * j + 1] = (unsigned char)(v >> 8);
            } else {
                put_u32(buf + 4 * j, v);
            }
        }
        ok = fwrite(buf, tb, m, f) == m;
    }
    uint64_t pad = align8(MG_SHARD_HEADER_BYTES + n_tokens * tb) - (MG_SHARD_HEADER_BYTES + n_tokens * tb);
    static const unsigned char zeros[8] = {0};
    if (ok && pad) ok = fwrite(zeros, 1, pad, f) == pad;
    for (uint64_t d = 0; ok && d < n_docs; d++) {
        unsigned char b8[8];
        put_u64(b8, doc_starts[d]);
        ok = fwrite(b8, 1, 8, f) == 8;
    }
    free(buf);
    if (!ok) {
        int e = errno;
        mg_fs_atomic_abort(&af);
        return mg_errf(err, errlen, "writing shard '%s' failed: %s (disk full?)", path, strerror(e));
    }
    if (mg_fs_atomic_commit(&af, 0, e0, sizeof e0))
        return mg_errf(err, errlen, "writing shard '%s' failed: %s (disk full?)", path, e0);
    return 0;
}

/* ---- reading ----------------------------------------------------------------------------------- */

static int parse_header(const char *path, const unsigned char *h, uint64_t file_bytes, MgShardInfo *info, char *err,
                        size_t errlen) {
    if (file_bytes < MG_SHARD_HEADER_BYTES)
        return mg_errf(err, errlen, "shard '%s' is truncated: %llu bytes, but the header alone is %d bytes; %s", path,
                       (unsigned long long)file_bytes, MG_SHARD_HEADER_BYTES, REPREPARE);
    if (memcmp(h, MG_SHARD_MAGIC, 8) != 0)
        return mg_errf(err, errlen,
                       "'%s' is not a megalodon token shard (bad magic; expected \"MGSHARD\"); point the data "
                       "path at the output of `megalodon prepare`",
                       path);
    info->version = get_u32(h + 8);
    info->vocab_size = get_u32(h + 12);
    info->token_bytes = get_u32(h + 16);
    info->bos_id = (int32_t)get_u32(h + 20);
    info->n_tokens = get_u64(h + 24);
    info->n_docs = get_u64(h + 32);
    info->tokenizer_fingerprint = get_u64(h + 40);
    if (info->version > MG_SHARD_VERSION)
        return mg_errf(err, errlen,
                       "shard '%s' has format version %u, newer than this build reads (%u); update megalodon or "
                       "re-run `megalodon prepare` with this build",
                       path, info->version, MG_SHARD_VERSION);
    if (info->version == 0) return mg_errf(err, errlen, "shard '%s' has format version 0 (corrupt); %s", path, REPREPARE);
    if (info->vocab_size == 0 || info->vocab_size > (uint32_t)INT32_MAX || (info->token_bytes != 2 && info->token_bytes != 4) ||
        (info->token_bytes == 2) != (info->vocab_size <= 65536))
        return mg_errf(err, errlen, "shard '%s' has a corrupt header (vocab_size %u, token width %u bytes); %s", path,
                       info->vocab_size, info->token_bytes, REPREPARE);
    if (info->bos_id < -1 || (info->bos_id >= 0 && (uint32_t)info->bos_id >= info->vocab_size))
        return mg_errf(err, errlen,
                       "shard '%s' has a corrupt header: bos_id %d is neither -1 (documents not marked) nor a token id "
                       "in [0, %u); %s",
                       path, info->bos_id, info->vocab_size, REPREPARE);
    if (info->n_tokens > (UINT64_MAX >> 4) || info->n_docs > (UINT64_MAX >> 4))
        return mg_errf(err, errlen, "shard '%s' has a corrupt header (counts out of range); %s", path, REPREPARE);
    uint64_t want = mg_shard_file_bytes(info->n_tokens, info->n_docs, info->token_bytes);
    if (want != file_bytes)
        return mg_errf(err, errlen,
                       "shard '%s' is %s: its header says %llu tokens and %llu documents (%llu bytes) but the file "
                       "has %llu bytes; %s",
                       path, file_bytes < want ? "truncated" : "corrupt (longer than its header says)",
                       (unsigned long long)info->n_tokens, (unsigned long long)info->n_docs,
                       (unsigned long long)want, (unsigned long long)file_bytes, REPREPARE);
    return 0;
}

int mg_shard_read_info(const char *path, MgShardInfo *info, char *err, size_t errlen) {
    uint64_t size = 0;
    int fd = mg_open_regular_file(path, "shard", &size, err, errlen); /* a FIFO or device is refused */
    if (fd < 0) return -1;
    unsigned char h[MG_SHARD_HEADER_BYTES] = {0};
    ssize_t got = size >= MG_SHARD_HEADER_BYTES ? pread(fd, h, sizeof h, 0) : 0;
    close(fd);
    (void)got;
    return parse_header(path, h, size, info, err, errlen);
}

void mg_shard_close(MgShard *s) {
    if (s->map) munmap(s->map, s->map_bytes);
    free(s->path);
    memset(s, 0, sizeof *s);
}

int mg_shard_open(MgShard *s, const char *path, int expect_vocab, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    uint64_t size = 0;
    int fd = mg_open_regular_file(path, "shard", &size, err, errlen); /* a FIFO or device is refused */
    if (fd < 0) return -1;
    unsigned char h[MG_SHARD_HEADER_BYTES] = {0};
    if (size >= MG_SHARD_HEADER_BYTES && pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h) {
        close(fd);
        return mg_errf(err, errlen, "cannot read shard '%s': %s", path, strerror(errno));
    }
    if (parse_header(path, h, size, &s->info, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    if (expect_vocab > 0 && s->info.vocab_size != (uint32_t)expect_vocab) {
        close(fd);
        return mg_errf(err, errlen,
                       "shard '%s' was made with a vocabulary of %u tokens but the model's vocab_size is %d; use "
                       "shards made with the model's tokenizer (re-run `megalodon prepare`) or set vocab_size = %u",
                       path, s->info.vocab_size, expect_vocab, s->info.vocab_size);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return mg_errf(err, errlen, "cannot map shard '%s': %s", path, strerror(errno));
    s->map = map;
    s->map_bytes = (size_t)size;
    s->path = mg_strdup(path);
    s->tokens = (const unsigned char *)map + MG_SHARD_HEADER_BYTES;
    s->doc_starts =
        (const uint64_t *)((const unsigned char *)map + align8(MG_SHARD_HEADER_BYTES + s->info.n_tokens * s->info.token_bytes));
    /* one pass over every token: a bad id would otherwise index past the embedding table */
    uint32_t V = s->info.vocab_size;
    uint64_t n = s->info.n_tokens, bad = UINT64_MAX;
    if (s->info.token_bytes == 2) {
        const uint16_t *t16 = (const uint16_t *)s->tokens; /* little-endian host (x86-64, aarch64) */
        uint32_t mx = 0;
        for (uint64_t i = 0; i < n; i++) mx = t16[i] > mx ? t16[i] : mx;
        if (mx >= V)
            for (uint64_t i = 0; i < n; i++)
                if (t16[i] >= V) {
                    bad = i;
                    break;
                }
    } else {
        for (uint64_t i = 0; i < n; i++)
            if ((uint32_t)mg_shard_token(s, i) >= V) {
                bad = i;
                break;
            }
    }
    if (bad != UINT64_MAX) {
        mg_errf(err, errlen, "shard '%s' is corrupt: token id %u at position %llu is >= its vocab_size %u; %s", path,
                (uint32_t)mg_shard_token(s, bad), (unsigned long long)bad, V, REPREPARE);
        mg_shard_close(s);
        return -1;
    }
    for (uint64_t d = 0; d < s->info.n_docs; d++) {
        uint64_t o = s->doc_starts[d];
        if (o >= n || (d == 0 && o != 0) || (d > 0 && o <= s->doc_starts[d - 1]) ||
            (s->info.bos_id >= 0 && mg_shard_token(s, o) != s->info.bos_id)) {
            mg_errf(err, errlen, "shard '%s' is corrupt: document %llu starts at %llu, which is %s; %s", path,
                    (unsigned long long)d, (unsigned long long)o,
                    o >= n ? "past the end" : (d == 0 && o != 0) || (d > 0 && o <= s->doc_starts[d - 1]) ? "out of order"
                                                                                                        : "not a BOS token",
                    REPREPARE);
            mg_shard_close(s);
            return -1;
        }
    }
    return 0;
}

/* ---- hashing and permutations ------------------------------------------------------------------ */

static inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) {
    return mg_splitmix64(mg_splitmix64(mg_splitmix64(a) ^ b) ^ c);
}

/* A keyed bijection of [0, n): a 4-round balanced Feistel network on the smallest even number of bits
 * covering n, with cycle walking (re-applying until the value falls inside [0, n); fewer than 4 steps on
 * average). No table, so the loader cursor stays a few integers whatever the data size. */
static uint64_t permute(uint64_t key, uint64_t i, uint64_t n) {
    if (n <= 1) return 0;
    int bits = 64 - __builtin_clzll(n - 1);
    if (bits < 2) bits = 2;
    if (bits & 1) bits++;
    int h = bits / 2;
    uint64_t mask = (h == 64) ? ~0ull : ((1ull << h) - 1);
    uint64_t x = i;
    do {
        uint64_t L = x >> h, R = x & mask;
        for (uint64_t r = 0; r < 4; r++) {
            uint64_t F = mg_splitmix64(key ^ (r << 58) ^ R) & mask;
            uint64_t nl = R;
            R = L ^ F;
            L = nl;
        }
        x = (L << h) | R;
    } while (x >= n);
    return x;
}

/* ---- loader ------------------------------------------------------------------------------------ */

typedef struct {
    char *path;
    double weight;
    int n_shards;
    MgShard *shards;
    uint64_t *shard_begin; /* first token index of each shard in the source's stream; [n_shards] = total */
    uint64_t n_tokens, n_docs, n_windows;
    int64_t count; /* windows handed out (all ranks) */
} Source;

struct MgLoader {
    int eval;
    int n_src;
    Source *src;
    double *cum; /* cumulative normalised weights */
    int seq_len;
    uint64_t seed;
    int dp_rank, dp_size;
    int64_t samples; /* global samples consumed */
    uint64_t total_windows;
    char *spec_norm;
    int32_t *win;
};

#define STATE_MAGIC 0x4D474C4400000001ll /* "MGLD", state layout 1 */
#define STATE_FIXED 6
#define STATE_PER_SRC 3

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* List the shard files of a source path (a file, or a directory's *.bin in name order). */
static int list_shards(const char *path, char ***out, int *n_out, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0)
        return mg_errf(err, errlen, "data source '%s': %s; run `megalodon prepare` (docs/data.md) or fix the path",
                       path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        *out = mg_malloc(sizeof(char *));
        (*out)[0] = mg_strdup(path);
        *n_out = 1;
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        return mg_errf(err, errlen, "data source '%s' is %s, neither a shard file nor a directory of shards", path,
                       mg_file_kind(st.st_mode));
    DIR *d = opendir(path);
    if (!d) return mg_errf(err, errlen, "cannot list data directory '%s': %s", path, strerror(errno));
    int n = 0, cap = 16;
    char **names = mg_malloc((size_t)cap * sizeof(char *));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".bin")) continue;
        if (n == cap) {
            cap *= 2;
            names = mg_realloc(names, (size_t)cap * sizeof(char *));
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = mg_malloc(len);
        snprintf(names[n], len, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    if (n == 0) {
        free(names);
        return mg_errf(err, errlen, "data directory '%s' has no *.bin shards; run `megalodon prepare --out ...` first",
                       path);
    }
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    *out = names;
    *n_out = n;
    return 0;
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n')) s[--n] = 0;
    size_t i = 0;
    while (s[i] == ' ' || s[i] == '\t') i++;
    if (i) memmove(s, s + i, n - i + 1);
}

void mg_loader_close(MgLoader *l) {
    if (!l) return;
    for (int s = 0; s < l->n_src; s++) {
        Source *S = &l->src[s];
        for (int i = 0; i < S->n_shards; i++) mg_shard_close(&S->shards[i]);
        free(S->shards);
        free(S->shard_begin);
        free(S->path);
    }
    free(l->src);
    free(l->cum);
    free(l->spec_norm);
    free(l->win);
    free(l);
}

static MgLoader *open_common(const char *spec, int vocab_size, int seq_len, uint64_t seed, int dp_rank, int dp_size,
                             int eval, char *err, size_t errlen) {
    if (!spec || !spec[0]) {
        mg_errf(err, errlen, "no data given (empty data spec); set train_data/val_data to a shard directory");
        return NULL;
    }
    if (seq_len <= 0) {
        mg_errf(err, errlen, "seq_len must be > 0 (got %d)", seq_len);
        return NULL;
    }
    if (dp_size <= 0 || dp_rank < 0 || dp_rank >= dp_size) {
        mg_errf(err, errlen, "data-parallel rank %d of %d is invalid", dp_rank, dp_size);
        return NULL;
    }
    MgLoader *l = mg_calloc(1, sizeof *l);
    l->eval = eval;
    l->seq_len = seq_len;
    l->seed = seed;
    l->dp_rank = dp_rank;
    l->dp_size = dp_size;
    l->win = mg_malloc(((size_t)seq_len + 1) * sizeof(int32_t));
    /* parse "path[:w],path[:w],..." */
    char *copy = mg_strdup(spec);
    int cap = 4;
    l->src = mg_calloc((size_t)cap, sizeof(Source));
    for (char *tok = copy, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next) *next++ = 0;
        trim(tok);
        if (!tok[0]) {
            mg_errf(err, errlen, "data spec '%s' has an empty entry (syntax: path[:weight],path[:weight],...)", spec);
            goto fail;
        }
        double w = 1.0;
        char *colon = strrchr(tok, ':');
        if (colon && colon[1]) {
            char *end = NULL;
            errno = 0;
            double v = strtod(colon + 1, &end);
            if (end && *end == 0 && errno == 0) {
                if (!(v > 0) || !isfinite(v)) {
                    mg_errf(err, errlen, "data spec '%s': weight '%s' of source '%.*s' must be a number > 0", spec,
                            colon + 1, (int)(colon - tok), tok);
                    goto fail;
                }
                w = v;
                *colon = 0;
                trim(tok);
                if (!tok[0]) {
                    mg_errf(err, errlen, "data spec '%s': a weight without a path", spec);
                    goto fail;
                }
            }
        }
        size_t n = strlen(tok);
        while (n > 1 && tok[n - 1] == '/') tok[--n] = 0;
        if (l->n_src == cap) {
            cap *= 2;
            l->src = mg_realloc(l->src, (size_t)cap * sizeof(Source));
        }
        Source *S = &l->src[l->n_src++];
        memset(S, 0, sizeof *S);
        S->path = mg_strdup(tok);
        S->weight = w;
    }
    free(copy);
    copy = NULL;
    if (l->n_src == 0) {
        mg_errf(err, errlen, "data spec '%s' names no source", spec);
        goto fail;
    }
    double wsum = 0;
    for (int s = 0; s < l->n_src; s++) wsum += l->src[s].weight;
    l->cum = mg_malloc((size_t)l->n_src * sizeof(double));
    double acc = 0;
    for (int s = 0; s < l->n_src; s++) {
        l->src[s].weight /= wsum;
        acc += l->src[s].weight;
        l->cum[s] = acc;
    }
    l->cum[l->n_src - 1] = 1.0;
    /* open every shard */
    uint64_t fp_seen = 0;
    const char *fp_file = NULL;
    for (int s = 0; s < l->n_src; s++) {
        Source *S = &l->src[s];
        char **names = NULL;
        int n = 0;
        if (list_shards(S->path, &names, &n, err, errlen) != 0) goto fail;
        S->shards = mg_calloc((size_t)n, sizeof(MgShard));
        S->shard_begin = mg_malloc(((size_t)n + 1) * sizeof(uint64_t));
        int rc = 0;
        for (int i = 0; i < n; i++) {
            if (rc == 0) {
                rc = mg_shard_open(&S->shards[i], names[i], vocab_size, err, errlen);
                if (rc == 0) S->n_shards++;
            }
            free(names[i]);
        }
        free(names);
        if (rc != 0) goto fail;
        uint64_t tot = 0;
        for (int i = 0; i < S->n_shards; i++) {
            MgShard *sh = &S->shards[i];
            S->shard_begin[i] = tot;
            tot += sh->info.n_tokens;
            S->n_docs += sh->info.n_docs;
            uint64_t fp = sh->info.tokenizer_fingerprint;
            if (fp) {
                if (fp_seen && fp != fp_seen) {
                    mg_errf(err, errlen,
                            "shards '%s' and '%s' were made with different tokenizers (fingerprints %016llx and "
                            "%016llx); prepare all data with the same tokenizer",
                            fp_file, sh->path, (unsigned long long)fp_seen, (unsigned long long)fp);
                    goto fail;
                }
                fp_seen = fp;
                fp_file = sh->path;
            }
        }
        S->shard_begin[S->n_shards] = tot;
        S->n_tokens = tot;
        S->n_windows = tot > (uint64_t)seq_len ? (tot - 1) / (uint64_t)seq_len : 0;
        if (S->n_windows == 0) {
            mg_errf(err, errlen,
                    "data source '%s' has %llu tokens, too few for one sequence of seq_len + 1 = %d tokens; use a "
                    "smaller seq_len or more data",
                    S->path, (unsigned long long)tot, seq_len + 1);
            goto fail;
        }
        l->total_windows += S->n_windows;
    }
    /* normalised spec text */
    size_t len = 1;
    for (int s = 0; s < l->n_src; s++) len += strlen(l->src[s].path) + 32;
    l->spec_norm = mg_malloc(len);
    size_t off = 0;
    for (int s = 0; s < l->n_src; s++)
        off += (size_t)snprintf(l->spec_norm + off, len - off, "%s%s:%.10g", s ? "," : "", l->src[s].path,
                                l->src[s].weight);
    return l;
fail:
    free(copy);
    mg_loader_close(l);
    return NULL;
}

MgLoader *mg_loader_open(const char *spec, int vocab_size, int seq_len, uint64_t seed, int dp_rank, int dp_size,
                         char *err, size_t errlen) {
    return open_common(spec, vocab_size, seq_len, seed, dp_rank, dp_size, 0, err, errlen);
}

MgLoader *mg_loader_open_eval(const char *spec, int vocab_size, int seq_len, int dp_rank, int dp_size, char *err,
                              size_t errlen) {
    return open_common(spec, vocab_size, seq_len, 0, dp_rank, dp_size, 1, err, errlen);
}

/* Copy n tokens starting at stream position pos of a source (may cross shard boundaries). */
static void source_copy(const Source *S, uint64_t pos, uint64_t n, int32_t *out) {
    int lo = 0, hi = S->n_shards - 1;
    while (lo < hi) { /* last shard whose begin <= pos */
        int mid = (lo + hi + 1) / 2;
        if (S->shard_begin[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    int i = lo;
    uint64_t k = 0;
    while (k < n) {
        const MgShard *sh = &S->shards[i];
        uint64_t local = pos + k - S->shard_begin[i];
        if (local >= sh->info.n_tokens) {
            i++;
            continue;
        }
        uint64_t m = MG_MIN(n - k, sh->info.n_tokens - local);
        if (sh->info.token_bytes == 2) {
            const uint16_t *t16 = (const uint16_t *)sh->tokens + local;
            for (uint64_t j = 0; j < m; j++) out[k + j] = t16[j];
        } else {
            for (uint64_t j = 0; j < m; j++) out[k + j] = mg_shard_token(sh, local + j);
        }
        k += m;
    }
}

static int choose_source(const MgLoader *l, int64_t g) {
    if (l->n_src == 1) return 0;
    double u = (double)(hash3(l->seed, 0x6D69787475726521ull, (uint64_t)g) >> 11) * 0x1p-53;
    for (int s = 0; s < l->n_src - 1; s++)
        if (u < l->cum[s]) return s;
    return l->n_src - 1;
}

static void emit(MgLoader *l, const Source *S, uint64_t window, int b, int32_t *inputs, int32_t *targets) {
    int T = l->seq_len;
    source_copy(S, window * (uint64_t)T, (uint64_t)T + 1, l->win);
    if (inputs) memcpy(inputs + (size_t)b * T, l->win, (size_t)T * sizeof(int32_t));
    if (targets) memcpy(targets + (size_t)b * T, l->win + 1, (size_t)T * sizeof(int32_t));
}

void mg_loader_next(MgLoader *l, int B, int32_t *inputs, int32_t *targets) {
    for (int b = 0; b < B; b++) {
        if (l->eval) {
            for (int j = 0; j < l->dp_size; j++) {
                uint64_t e = (uint64_t)(l->samples + j) % l->total_windows;
                int s = 0;
                while (e >= l->src[s].n_windows) e -= l->src[s].n_windows, s++;
                l->src[s].count++;
                if (j == l->dp_rank) emit(l, &l->src[s], e, b, inputs, targets);
            }
        } else {
            for (int j = 0; j < l->dp_size; j++) {
                int s = choose_source(l, l->samples + j);
                Source *S = &l->src[s];
                int64_t c = S->count++;
                if (j != l->dp_rank) continue;
                uint64_t epoch = (uint64_t)c / S->n_windows, pos = (uint64_t)c % S->n_windows;
                uint64_t key = hash3(l->seed, (uint64_t)s, epoch);
                emit(l, S, permute(key, pos, S->n_windows), b, inputs, targets);
            }
        }
        l->samples += l->dp_size;
    }
}

void mg_loader_rewind(MgLoader *l) {
    l->samples = 0;
    for (int s = 0; s < l->n_src; s++) l->src[s].count = 0;
}

int mg_loader_state_len(const MgLoader *l) { return STATE_FIXED + STATE_PER_SRC * l->n_src; }

void mg_loader_state_get(const MgLoader *l, int64_t *out) {
    out[0] = STATE_MAGIC;
    out[1] = l->n_src;
    out[2] = l->seq_len;
    out[3] = (int64_t)l->seed;
    out[4] = l->eval;
    out[5] = l->samples;
    for (int s = 0; s < l->n_src; s++) {
        int64_t wbits;
        memcpy(&wbits, &l->src[s].weight, 8);
        out[STATE_FIXED + STATE_PER_SRC * s + 0] = (int64_t)l->src[s].n_windows;
        out[STATE_FIXED + STATE_PER_SRC * s + 1] = l->src[s].count;
        out[STATE_FIXED + STATE_PER_SRC * s + 2] = wbits;
    }
}

int mg_loader_state_set(MgLoader *l, const int64_t *in, int n, char *err, size_t errlen) {
    if (n < STATE_FIXED || in[0] != STATE_MAGIC)
        return mg_errf(err, errlen, "the saved data-loader state is not one this build understands");
    if (in[1] != l->n_src || n != mg_loader_state_len(l))
        return mg_errf(err, errlen, "the saved data-loader state has %lld sources but the data spec '%s' has %d",
                       (long long)in[1], l->spec_norm, l->n_src);
    if (in[4] != l->eval)
        return mg_errf(err, errlen, "the saved data-loader state is for a %s loader, not a %s one",
                       in[4] ? "validation" : "training", l->eval ? "validation" : "training");
    if (in[2] != l->seq_len)
        return mg_errf(err, errlen, "the saved data-loader state is for seq_len %lld but seq_len is %d",
                       (long long)in[2], l->seq_len);
    if (!l->eval && (uint64_t)in[3] != l->seed)
        return mg_errf(err, errlen, "the saved data-loader state is for seed %llu but the seed is %llu",
                       (unsigned long long)in[3], (unsigned long long)l->seed);
    if (in[5] < 0) return mg_errf(err, errlen, "the saved data-loader state is corrupt (negative sample count)");
    for (int s = 0; s < l->n_src; s++) {
        const int64_t *p = in + STATE_FIXED + STATE_PER_SRC * s;
        double w;
        memcpy(&w, &p[2], 8);
        if ((uint64_t)p[0] != l->src[s].n_windows)
            return mg_errf(err, errlen,
                           "data source %d ('%s') now has %llu windows of seq_len %d but had %lld when the state was "
                           "saved (the data changed); restore the data or start the loader afresh",
                           s, l->src[s].path, (unsigned long long)l->src[s].n_windows, l->seq_len, (long long)p[0]);
        if (!(fabs(w - l->src[s].weight) <= 1e-9))
            return mg_errf(err, errlen,
                           "data source %d ('%s') has weight %.6g but had %.6g when the state was saved", s,
                           l->src[s].path, l->src[s].weight, w);
        if (p[1] < 0) return mg_errf(err, errlen, "the saved data-loader state is corrupt (negative count)");
    }
    l->samples = in[5];
    for (int s = 0; s < l->n_src; s++) l->src[s].count = in[STATE_FIXED + STATE_PER_SRC * s + 1];
    return 0;
}

const char *mg_loader_spec_normalised(const MgLoader *l) { return l->spec_norm; }
int mg_loader_seq_len(const MgLoader *l) { return l->seq_len; }
int mg_loader_num_sources(const MgLoader *l) { return l->n_src; }
const char *mg_loader_source_path(const MgLoader *l, int s) { return l->src[s].path; }
double mg_loader_source_weight(const MgLoader *l, int s) { return l->src[s].weight; }
int64_t mg_loader_source_tokens(const MgLoader *l, int s) { return (int64_t)l->src[s].n_tokens; }
int64_t mg_loader_source_docs(const MgLoader *l, int s) { return (int64_t)l->src[s].n_docs; }
int64_t mg_loader_source_windows(const MgLoader *l, int s) { return (int64_t)l->src[s].n_windows; }
int64_t mg_loader_source_count(const MgLoader *l, int s) { return l->src[s].count; }
int64_t mg_loader_samples(const MgLoader *l) { return l->samples; }
int64_t mg_loader_total_windows(const MgLoader *l) { return (int64_t)l->total_windows; }
