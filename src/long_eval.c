/* Long-context evaluation (docs/evaluation.md):
 *
 *   `megalodon eval-positions`: the validation loss as a function of the position in a context of N tokens,
 *   in bins. N may exceed seq_len: megalodon runs each window recurrently in pieces (whole attention chunks,
 *   seq_len by default) that carry the model state, so memory does not grow with N; llama (no carried state,
 *   RoPE positions trained up to seq_len) is refused above its seq_len.
 *
 *   `megalodon passkey`: synthetic pass-key retrieval. A prompt of filler sentences holds the line "The pass
 *   key is NNNNN. Remember it." at a chosen depth and ends with "What is the pass key? The pass key is"; the
 *   model answers greedily and is right when the digits it gives are the key. The prompts are a pure
 *   function of (seed, context, depth, trial); `--dump_prompts` writes them for inspection and tests. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "data.h"
#include "fsutil.h"
#include "memcheck.h"
#include "rng.h"
#include "run.h"
#include "signals.h"
#include "tokenizer.h"
#include "train/trainer.h"

/* ---- shared: options, the model, output files ------------------------------------------------------------ */

static int64_t parse_int(const char *opt, const char *s, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!s[0] || *end || errno || v < lo || v > hi)
        mg_fatal("%s '%s' must be a whole number in [%lld, %lld]", opt, s, (long long)lo, (long long)hi);
    return v;
}

/* A comma-separated list of whole numbers in [lo, hi] (at most max of them); returns the count. */
static int parse_int_list(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out, int max) {
    int n = 0;
    const char *p = s;
    char item[64];
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len >= sizeof item) mg_fatal("%s '%s': expected numbers separated by commas", opt, s);
        if (n == max) mg_fatal("%s '%s': at most %d values", opt, s, max);
        memcpy(item, p, len);
        item[len] = 0;
        out[n++] = parse_int(opt, item, lo, hi);
        if (!comma) break;
        p = comma + 1;
    }
    return n;
}

static int parse_depths(const char *s, double *out, int max) {
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !(v >= 0.0 && v <= 1.0) || (*end && *end != ','))
            mg_fatal("--depths '%s': expected fractions in [0, 1] separated by commas (0 = the start of the "
                     "context, 1 = right before the question)",
                     s);
        if (n == max) mg_fatal("--depths '%s': at most %d values", s, max);
        out[n++] = v;
        if (!*end) break;
        p = end + 1;
    }
    return n;
}

/* The model named by --ckpt (its stored config, overridden by the command line, and its weights), or a
 * randomly initialised one from --config and --init_seed (to try the tools without training). extra[0] is
 * "ckpt", extra[1] "init_seed". */
static MgModel *load_model(const char *cmd, int argc, char **argv, const char *const *extra, const char **vals,
                           MgConfig *cfg) {
    MgConfig probe;
    mg_config_defaults(&probe);
    mg_config_from_args(&probe, argc, argv, extra, vals);
    if (vals[0] && vals[1])
        mg_fatal("%s: give --ckpt FILE or --init_seed S (a randomly initialised model), not both", cmd);
    if (vals[0]) return mg_model_from_checkpoint(cmd, argc, argv, extra, vals, cfg);
    if (!vals[1])
        mg_fatal("%s needs --ckpt FILE (a checkpoint written by `megalodon train`), or --config FILE --init_seed S "
                 "for a randomly initialised model (to try the tool)",
                 cmd);
    const uint64_t seed = (uint64_t)parse_int("--init_seed", vals[1], 0, INT64_MAX);
    char err[4096];
    if (mg_config_validate(&probe, err, sizeof err)) mg_fatal("%s", err);
    const MgBackend *be = mg_backend_for(&probe);
    if (mg_memory_check(&probe, be ? be->dtype : MG_F32, MG_MEM_EVAL, err, sizeof err)) mg_fatal("%s", err);
    mg_set_threads(probe.threads);
    MgModel *m = mg_model_create(&probe, be);
    mg_model_init_weights(m, seed);
    *cfg = probe;
    return m;
}

/* The refusal for a model without carried state (llama) asked for more than its context. */
static void check_context(const MgModel *m, const char *cmd, int64_t N) {
    const int64_t ctx = mg_model_context(m);
    if (ctx > 0 && N > ctx)
        mg_fatal("%s: a context of %lld tokens is more than this %s model's %lld (seq_len): it carries no state "
                 "from one piece of a sequence to the next, so it cannot run a longer context in pieces, and its "
                 "RoPE positions were trained only up to seq_len; use a context of at most %lld, or a megalodon "
                 "model, which runs recurrently over any length",
                 cmd, (long long)N, mg_model_config(m)->arch, (long long)ctx, (long long)ctx);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static FILE *out_open(MgAtomicFile *af, const char *opt, const char *path) {
    char err[4096];
    FILE *f = mg_fs_atomic_open(af, path, err, sizeof err);
    if (!f) mg_fatal("%s: %s", opt, err);
    return f;
}

static void out_commit(MgAtomicFile *af, const char *opt) {
    char err[4096];
    if (mg_fs_atomic_commit(af, 0, err, sizeof err)) mg_fatal("%s: %s", opt, err);
}

/* ---- eval-positions ---------------------------------------------------------------------------------------- */

/* `megalodon eval-positions (--ckpt F | --config F --init_seed S) [--data PATH] [--context N] [--bin K]
 *  [--piece P] [--carry_state 0|1] [--eval_batches E] [--batch_size B] [--out FILE.json|FILE.csv]`
 * --carry_state 0 starts every piece from a fresh state (an ablation: what the model loses without it). */
int cmd_eval_positions(int argc, char **argv) {
    static const char *const extra[] = {"ckpt", "init_seed", "data", "context", "bin", "piece", "out", "carry_state",
                                        NULL};
    const char *vals[8] = {0};
    MgConfig cfg;
    mg_signals_install();
    MgModel *m = load_model("eval-positions", argc, argv, extra, vals, &cfg);
    if (!m) return mg_stop_report("eval-positions stopped while loading the checkpoint");
    const char *data = vals[2] ? vals[2] : cfg.val_data;
    const int64_t N = vals[3] ? parse_int("--context", vals[3], 1, INT_MAX / 2) : cfg.seq_len;
    const int64_t bin = vals[4] ? parse_int("--bin", vals[4], 1, N) : MG_MAX(1, N / 16);
    check_context(m, "eval-positions", N);
    const int recurrent = mg_model_context(m) == 0; /* carries state: can run N in pieces */
    const int ch = cfg.chunk_size;
    int64_t P = N;
    if (vals[5]) {
        P = parse_int("--piece", vals[5], 1, N);
        if (!recurrent && P != N)
            mg_fatal("--piece %lld: this %s model carries no state between pieces, so it runs the whole context "
                     "(%lld tokens) in one pass",
                     (long long)P, cfg.arch, (long long)N);
    } else if (recurrent) {
        P = MG_MIN(N, MG_MAX((int64_t)ch, (int64_t)cfg.seq_len / ch * ch));
    }
    if (P < N && (N % ch || P % ch))
        mg_fatal("--context %lld in pieces of %lld: both must be multiples of chunk_size (%d), since pieces carry "
                 "the state across whole attention chunks (e.g. --context %lld)",
                 (long long)N, (long long)P, ch, (long long)((N + ch - 1) / ch * ch));
    const int carry = vals[7] ? (int)parse_int("--carry_state", vals[7], 0, 1) : 1;
    const int B = cfg.batch_size;
    {   /* the memory check for a pass of B x P tokens, when that is more than training's B x seq_len */
        MgConfig c2 = cfg;
        c2.seq_len = (int)P;
        char err[4096];
        const MgBackend *be = mg_model_backend(m);
        if (P > cfg.seq_len && mg_memory_check(&c2, be->dtype, MG_MEM_EVAL, err, sizeof err))
            mg_fatal("%s (passes of %lld tokens: use a smaller --piece)", err, (long long)P);
    }
    char err[4096];
    MgLoader *l = mg_loader_open_eval(data, cfg.vocab_size, (int)N, 0, 1, err, sizeof err);
    if (!l) mg_fatal("--data: %s", err);
    const int batches = mg_eval_batches_effective(l, B, cfg.eval_batches, "--eval_batches", stdout);
    const int64_t npieces = (N + P - 1) / P;
    printf("eval-positions: %s, context %lld, %d x %d windows (%s), ", data, (long long)N, batches, B, cfg.arch);
    if (npieces > 1)
        printf("recurrent in %lld pieces of %lld tokens %s (seq_len %d)\n", (long long)npieces, (long long)P,
               carry ? "carrying the state" : "each from a fresh state (--carry_state 0)", cfg.seq_len);
    else
        printf("one pass of %lld tokens (seq_len %d)\n", (long long)N, cfg.seq_len);
    fflush(stdout);

    const size_t BN = (size_t)B * (size_t)N, BP = (size_t)B * (size_t)P;
    int32_t *in = mg_malloc(sizeof(int32_t) * BN), *tg = mg_malloc(sizeof(int32_t) * BN);
    int32_t *pin = mg_malloc(sizeof(int32_t) * BP), *ptg = mg_malloc(sizeof(int32_t) * BP);
    double *plos = mg_malloc(sizeof(double) * BP);
    double *pos_sum = mg_calloc((size_t)N, sizeof(double));
    int64_t *pos_cnt = mg_calloc((size_t)N, sizeof(int64_t));
    MgModelState *st[2] = {NULL, NULL};
    if (npieces > 1) {
        st[0] = mg_model_state_create(m, B);
        st[1] = mg_model_state_create(m, B);
    }
    const double t0 = mg_now();
    double total = 0.0;
    int64_t total_n = 0;
    for (int i = 0; i < batches && !mg_stop_requested(); i++) {
        mg_loader_next(l, B, in, tg);
        int cur = 0;
        for (int64_t p0 = 0; p0 < N && !mg_stop_requested(); p0 += P) {
            const int64_t Lp = MG_MIN(P, N - p0);
            for (int b = 0; b < B; b++) {
                memcpy(pin + (size_t)b * Lp, in + (size_t)b * N + p0, sizeof(int32_t) * (size_t)Lp);
                memcpy(ptg + (size_t)b * Lp, tg + (size_t)b * N + p0, sizeof(int32_t) * (size_t)Lp);
            }
            MgPassArgs a = {.tokens = pin, .targets = ptg, .B = B, .L = (int)Lp, .token_losses = plos};
            a.opts.pos0 = p0;
            a.opts.seq_len = N;
            a.state_in = p0 > 0 && carry ? st[cur] : NULL;
            a.state_out = p0 + Lp < N && carry ? st[1 - cur] : NULL;
            int64_t n = 0;
            total += mg_model_eval(m, &a, &n);
            total_n += n;
            cur = 1 - cur;
            for (int b = 0; b < B; b++)
                for (int64_t t = 0; t < Lp; t++) {
                    if (ptg[(size_t)b * Lp + t] < 0) continue;
                    pos_sum[p0 + t] += plos[(size_t)b * Lp + t];
                    pos_cnt[p0 + t]++;
                }
        }
    }
    const double secs = mg_now() - t0;
    int rc = 0;
    if (mg_stop_requested()) {
        rc = mg_stop_report("eval-positions stopped before the end; no table printed");
    } else {
        const int64_t nbins = (N + bin - 1) / bin;
        double *bsum = mg_calloc((size_t)nbins, sizeof(double));
        int64_t *bcnt = mg_calloc((size_t)nbins, sizeof(int64_t));
        for (int64_t t = 0; t < N; t++) {
            bsum[t / bin] += pos_sum[t];
            bcnt[t / bin] += pos_cnt[t];
        }
        printf("%10s %10s %10s %10s\n", "bin_start", "bin_end", "mean_loss", "tokens");
        for (int64_t k = 0; k < nbins; k++)
            printf("%10lld %10lld %10.6f %10lld\n", (long long)(k * bin), (long long)MG_MIN(N, (k + 1) * bin),
                   bcnt[k] ? bsum[k] / (double)bcnt[k] : NAN, (long long)bcnt[k]);
        const double mean = total / (double)MG_MAX(total_n, 1);
        printf("mean_loss %.8f\n", mean);
        printf("tokens %lld (%d windows of %lld), %.1f s\n", (long long)total_n, batches * B, (long long)N, secs);
        if (vals[6]) {
            MgAtomicFile af;
            FILE *f = out_open(&af, "--out", vals[6]);
            if (ends_with(vals[6], ".csv")) {
                fprintf(f, "bin_start,bin_end,mean_loss,tokens\n");
                for (int64_t k = 0; k < nbins; k++)
                    fprintf(f, "%lld,%lld,%.9g,%lld\n", (long long)(k * bin), (long long)MG_MIN(N, (k + 1) * bin),
                            bcnt[k] ? bsum[k] / (double)bcnt[k] : NAN, (long long)bcnt[k]);
            } else {
                fprintf(f, "{\"model\": ");
                json_string(f, vals[0] ? vals[0] : "random init");
                fprintf(f, ", \"arch\": ");
                json_string(f, cfg.arch);
                fprintf(f, ", \"data\": ");
                json_string(f, data);
                fprintf(f,
                        ", \"context\": %lld, \"seq_len\": %d, \"piece\": %lld, \"carry_state\": %s, \"bin\": %lld, "
                        "\"windows\": %d, \"tokens\": %lld, \"mean_loss\": %.17g, \"bins\": [",
                        (long long)N, cfg.seq_len, (long long)P, carry ? "true" : "false", (long long)bin, batches * B,
                        (long long)total_n, mean);
                for (int64_t k = 0; k < nbins; k++) {
                    fprintf(f, "%s\n  {\"start\": %lld, \"end\": %lld, \"tokens\": %lld, \"loss\": ", k ? "," : "",
                            (long long)(k * bin), (long long)MG_MIN(N, (k + 1) * bin), (long long)bcnt[k]);
                    if (bcnt[k]) fprintf(f, "%.17g}", bsum[k] / (double)bcnt[k]);
                    else fprintf(f, "null}");
                }
                fprintf(f, "\n]}\n");
            }
            out_commit(&af, "--out");
            printf("wrote %s\n", vals[6]);
        }
        free(bsum);
        free(bcnt);
    }
    if (st[0]) {
        mg_model_state_free(m, st[0]);
        mg_model_state_free(m, st[1]);
    }
    free(in);
    free(tg);
    free(pin);
    free(ptg);
    free(plos);
    free(pos_sum);
    free(pos_cnt);
    mg_loader_close(l);
    mg_model_free(m);
    return rc;
}

/* ---- passkey ----------------------------------------------------------------------------------------------- */

static const char *const FILLER[] = {"The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                                     "There and back again."};
#define NFILLER ((int)(sizeof FILLER / sizeof FILLER[0]))
static const char *const QUESTION = "What is the pass key? The pass key is";

typedef struct {
    MgTokens filler[NFILLER]; /* each sentence's ids, no BOS (" sentence" inside a text) */
    MgTokens question;
} PkPieces;

static void pk_pieces_init(PkPieces *pp, MgTokenizer *tok) {
    memset(pp, 0, sizeof *pp);
    for (int i = 0; i < NFILLER; i++) mg_tokenizer_encode(tok, FILLER[i], strlen(FILLER[i]), 0, &pp->filler[i]);
    mg_tokenizer_encode(tok, QUESTION, strlen(QUESTION), 0, &pp->question);
}

static void pk_pieces_free(PkPieces *pp) {
    for (int i = 0; i < NFILLER; i++) mg_tokens_free(&pp->filler[i]);
    mg_tokens_free(&pp->question);
}

typedef struct {
    char key[8];          /* five digits */
    MgTokens ids;         /* BOS, the text's ids */
    char *text;           /* the prompt as text (without BOS) */
    int64_t key_pos;      /* index in ids of the key line's first token */
    int64_t filler_tokens;
    int sentences;        /* filler sentences in all */
} PkPrompt;

static void append(MgTokens *t, const int32_t *ids, size_t n) {
    if (t->n + n > t->cap) {
        t->cap = MG_MAX(t->n + n, 2 * t->cap + 16);
        t->ids = realloc(t->ids, t->cap * sizeof(int32_t));
        if (!t->ids) mg_fatal("out of memory building a pass-key prompt");
    }
    memcpy(t->ids + t->n, ids, n * sizeof(int32_t));
    t->n += n;
}

static void text_append(char **s, size_t *len, size_t *cap, const char *add) {
    size_t k = strlen(add);
    if (*len + k + 2 > *cap) {
        *cap = MG_MAX(*len + k + 2, 2 * *cap + 256);
        *s = realloc(*s, *cap);
        if (!*s) mg_fatal("out of memory building a pass-key prompt");
    }
    if (*len) (*s)[(*len)++] = ' ';
    memcpy(*s + *len, add, k + 1);
    *len += k;
}

/* The prompt for (seed, context N, depth, trial): at most N - room tokens (room: the answer's tokens), as
 * many filler sentences as fit (cycled from a seeded start), the key line after round(depth x sentences) of
 * them, then the question. The key and the start depend only on (seed, N, depth, trial). Returns 0, or -1 if
 * N is too short for the key line and the question. */
static int pk_make(MgTokenizer *tok, const PkPieces *pp, uint64_t seed, int64_t N, double depth, int64_t trial,
                   int room, PkPrompt *pr) {
    memset(pr, 0, sizeof *pr);
    const uint64_t h = mg_hash64(mg_hash64(mg_hash64(seed, (uint64_t)N), (uint64_t)llround(depth * 1e6)),
                                 (uint64_t)trial);
    snprintf(pr->key, sizeof pr->key, "%05u", (unsigned)(10000 + h % 90000));
    const int start = (int)((h >> 32) % NFILLER);
    char line[96];
    snprintf(line, sizeof line, "The pass key is %s. Remember it.", pr->key);
    MgTokens key_ids = {0};
    mg_tokenizer_encode(tok, line, strlen(line), 0, &key_ids);
    const int64_t budget = N - room, fixed = 1 + (int64_t)key_ids.n + (int64_t)pp->question.n;
    if (fixed > budget) {
        mg_tokens_free(&key_ids);
        return -1;
    }
    int n = 0;
    int64_t used = fixed;
    while (used + (int64_t)pp->filler[(start + n) % NFILLER].n <= budget) used += (int64_t)pp->filler[(start + n++) % NFILLER].n;
    pr->sentences = n;
    pr->filler_tokens = used - fixed;
    const int before = (int)llround(depth * n);
    const int32_t bos = mg_tokenizer_bos_id(tok);
    append(&pr->ids, &bos, 1);
    size_t tl = 0, tc = 0;
    for (int i = 0; i <= n; i++) {
        if (i == before) {
            pr->key_pos = (int64_t)pr->ids.n;
            append(&pr->ids, key_ids.ids, key_ids.n);
            text_append(&pr->text, &tl, &tc, line);
        }
        if (i == n) break;
        const int s = (start + i) % NFILLER;
        append(&pr->ids, pp->filler[s].ids, pp->filler[s].n);
        text_append(&pr->text, &tl, &tc, FILLER[s]);
    }
    append(&pr->ids, pp->question.ids, pp->question.n);
    text_append(&pr->text, &tl, &tc, QUESTION);
    mg_tokens_free(&key_ids);
    /* the ids are those of the whole text (the tokenizer cuts before every word, so sentences encode alone) */
    MgTokens check = {0};
    mg_tokenizer_encode(tok, pr->text, tl, 1, &check);
    if (check.n != pr->ids.n || memcmp(check.ids, pr->ids.ids, check.n * sizeof(int32_t)))
        mg_fatal("passkey: the prompt's ids differ from the encoding of its text (%zu vs %zu ids); this tokenizer "
                 "does not cut text at word boundaries",
                 pr->ids.n, check.n);
    mg_tokens_free(&check);
    return 0;
}

static void pk_free(PkPrompt *pr) {
    mg_tokens_free(&pr->ids);
    free(pr->text);
}

/* The answer is right when its first run of digits (after leading spaces) is the key. */
static int pk_correct(const char *answer, const char *key) {
    while (*answer == ' ') answer++;
    size_t n = 0;
    while (isdigit((unsigned char)answer[n])) n++;
    return n == strlen(key) && !strncmp(answer, key, n);
}

#define PK_MAX 64

/* `megalodon passkey (--ckpt F | --config F --init_seed S) --context N1,N2 [--depths 0,0.5,1] [--trials K]
 *  [--seed S] [--answer_tokens A] [--dump_prompts FILE] [--out FILE.json] [--oracle 1]` */
int cmd_passkey(int argc, char **argv) {
    static const char *const extra[] = {"ckpt", "init_seed", "context", "depths", "trials", "answer_tokens",
                                        "dump_prompts", "out", "oracle", NULL};
    const char *vals[9] = {0};
    MgConfig cfg;
    mg_signals_install();
    MgModel *m = load_model("passkey", argc, argv, extra, vals, &cfg);
    if (!m) return mg_stop_report("passkey stopped while loading the checkpoint");
    int64_t ctxs[PK_MAX];
    double depths[PK_MAX];
    const int nc = vals[2] ? parse_int_list("--context", vals[2], 1, INT_MAX / 2, ctxs, PK_MAX)
                           : (ctxs[0] = cfg.seq_len, 1);
    const int nd = parse_depths(vals[3] ? vals[3] : "0,0.25,0.5,0.75,1", depths, PK_MAX);
    const int64_t trials = vals[4] ? parse_int("--trials", vals[4], 1, 1000000) : 5;
    const int A = vals[5] ? (int)parse_int("--answer_tokens", vals[5], 1, 64) : 8;
    const int oracle = vals[8] ? (int)parse_int("--oracle", vals[8], 0, 1) : 0;
    const uint64_t seed = cfg.seed;
    for (int c = 0; c < nc; c++) check_context(m, "passkey", ctxs[c]);
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(cfg.tokenizer, err, sizeof err);
    if (!tok) mg_fatal("%s (set --tokenizer, or run scripts/fetch_data.sh)", err);
    if (mg_tokenizer_vocab_size(tok) != cfg.vocab_size)
        mg_fatal("the tokenizer %s has %d pieces but the model's vocab_size is %d", cfg.tokenizer,
                 mg_tokenizer_vocab_size(tok), cfg.vocab_size);
    PkPieces pp;
    pk_pieces_init(&pp, tok);
    MgAtomicFile dump_af, out_af;
    FILE *dump = vals[6] ? out_open(&dump_af, "--dump_prompts", vals[6]) : NULL;
    const int V = cfg.vocab_size;
    MgDecoder *d = oracle ? NULL : mg_decoder_create(m, 1);
    int64_t *right = mg_calloc((size_t)nc * (size_t)nd, sizeof(int64_t));
    printf("passkey: %s model, seed %llu, %lld trials per cell, greedy answers of %d tokens%s\n", cfg.arch,
           (unsigned long long)seed, (long long)trials, A, oracle ? " (oracle: the expected key stands for the "
                                                                    "model's answer)" : "");
    fflush(stdout);
    const double t0 = mg_now();
    char answer[1024], piece[512];
    for (int c = 0; c < nc && !mg_stop_requested(); c++)
        for (int k = 0; k < nd && !mg_stop_requested(); k++)
            for (int64_t tr = 0; tr < trials && !mg_stop_requested(); tr++) {
                PkPrompt pr;
                if (pk_make(tok, &pp, seed, ctxs[c], depths[k], tr, A, &pr))
                    mg_fatal("passkey: a context of %lld tokens is too short for the key line, the question and "
                             "%d answer tokens",
                             (long long)ctxs[c], A);
                size_t al = 0;
                answer[0] = 0;
                if (oracle) {
                    snprintf(answer, sizeof answer, " %s", pr.key);
                } else {
                    mg_decoder_reset(d);
                    mg_decoder_step(d, pr.ids.ids, (int)pr.ids.n, NULL);
                    int32_t prev = pr.ids.ids[pr.ids.n - 1];
                    for (int j = 0; j < A && !mg_stop_requested(); j++) {
                        const float *lg = mg_decoder_last_logits(d);
                        int32_t best = 0;
                        for (int v = 1; v < V; v++)
                            if (lg[v] > lg[best]) best = v;
                        if (best == mg_tokenizer_eos_id(tok)) break;
                        int w = mg_tokenizer_decode_piece(tok, prev, best, piece, sizeof piece);
                        if (w > 0 && al + (size_t)w < sizeof answer) {
                            memcpy(answer + al, piece, (size_t)w + 1);
                            al += (size_t)w;
                        }
                        prev = best;
                        if (j + 1 < A) mg_decoder_step(d, &best, 1, NULL);
                    }
                }
                const int ok = pk_correct(answer, pr.key);
                right[(size_t)c * nd + k] += ok;
                if (dump) {
                    fprintf(dump, "{\"context\": %lld, \"depth\": %.17g, \"trial\": %lld, \"key\": \"%s\", "
                                  "\"tokens\": %zu, \"key_pos\": %lld, \"filler_tokens\": %lld, \"sentences\": %d, "
                                  "\"answer\": ",
                            (long long)ctxs[c], depths[k], (long long)tr, pr.key, pr.ids.n, (long long)pr.key_pos,
                            (long long)pr.filler_tokens, pr.sentences);
                    json_string(dump, answer);
                    fprintf(dump, ", \"correct\": %s, \"text\": ", ok ? "true" : "false");
                    json_string(dump, pr.text);
                    fprintf(dump, ", \"ids\": [");
                    for (size_t i = 0; i < pr.ids.n; i++) fprintf(dump, "%s%d", i ? ", " : "", pr.ids.ids[i]);
                    fprintf(dump, "]}\n");
                }
                pk_free(&pr);
            }
    const double secs = mg_now() - t0;
    int rc = 0;
    if (mg_stop_requested()) {
        if (dump) mg_fs_atomic_abort(&dump_af);
        rc = mg_stop_report("passkey stopped before the end; no table printed");
    } else {
        printf("accuracy by depth (rows) and context length in tokens (columns), %lld trials each\n",
               (long long)trials);
        printf("%8s", "depth");
        for (int c = 0; c < nc; c++) printf(" %8lld", (long long)ctxs[c]);
        printf("\n");
        for (int k = 0; k < nd; k++) {
            printf("%8.3g", depths[k]);
            for (int c = 0; c < nc; c++) printf(" %8.3f", (double)right[(size_t)c * nd + k] / (double)trials);
            printf("\n");
        }
        printf("%8s", "mean");
        int64_t all = 0;
        for (int c = 0; c < nc; c++) {
            int64_t s = 0;
            for (int k = 0; k < nd; k++) s += right[(size_t)c * nd + k];
            all += s;
            printf(" %8.3f", (double)s / (double)(trials * nd));
        }
        printf("\naccuracy %.6f (%lld of %lld), %.1f s\n", (double)all / (double)(trials * nd * nc), (long long)all,
               (long long)(trials * nd * nc), secs);
        if (dump) {
            out_commit(&dump_af, "--dump_prompts");
            printf("wrote %s\n", vals[6]);
        }
        if (vals[7]) {
            FILE *f = out_open(&out_af, "--out", vals[7]);
            fprintf(f, "{\"model\": ");
            json_string(f, vals[0] ? vals[0] : "random init");
            fprintf(f, ", \"arch\": ");
            json_string(f, cfg.arch);
            fprintf(f, ", \"seed\": %llu, \"trials\": %lld, \"answer_tokens\": %d, \"oracle\": %s, \"contexts\": [",
                    (unsigned long long)seed, (long long)trials, A, oracle ? "true" : "false");
            for (int c = 0; c < nc; c++) fprintf(f, "%s%lld", c ? ", " : "", (long long)ctxs[c]);
            fprintf(f, "], \"depths\": [");
            for (int k = 0; k < nd; k++) fprintf(f, "%s%.17g", k ? ", " : "", depths[k]);
            fprintf(f, "], \"accuracy\": [");
            for (int k = 0; k < nd; k++) {
                fprintf(f, "%s[", k ? ", " : "");
                for (int c = 0; c < nc; c++)
                    fprintf(f, "%s%.17g", c ? ", " : "", (double)right[(size_t)c * nd + k] / (double)trials);
                fprintf(f, "]");
            }
            fprintf(f, "]}\n");
            out_commit(&out_af, "--out");
            printf("wrote %s\n", vals[7]);
        }
    }
    free(right);
    if (d) mg_decoder_free(d);
    pk_pieces_free(&pp);
    mg_tokenizer_free(tok);
    mg_model_free(m);
    return rc;
}
