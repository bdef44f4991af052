/* `megalodon sample` and the sampling helpers. The model runs recurrently: every layer's CEMA state and
 * TimestepNorm statistics are carried, plus a key/value cache of the current attention chunk, so the
 * prompt and the generated text can be arbitrarily long at constant memory. */
#include "sample.h"

#include <math.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "fileio.h"
#include "run.h"
#include "signals.h"
#include "tokenizer.h"

typedef struct {
    float p;
    int id;
} Cand;

static int cand_desc(const void *a, const void *b) {
    float x = ((const Cand *)a)->p, y = ((const Cand *)b)->p;
    if (x > y) return -1;
    if (x < y) return 1;
    return ((const Cand *)a)->id - ((const Cand *)b)->id;
}

int mg_sample_token(float *logits, int V, const MgSamplerOpts *o, MgRng *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (o->temperature <= 0.0) return best;
    /* softmax at temperature T, in double for the normaliser */
    double mx = logits[best], sum = 0.0;
    Cand *c = mg_malloc(sizeof(Cand) * (size_t)V);
    for (int i = 0; i < V; i++) {
        double e = exp(((double)logits[i] - mx) / o->temperature);
        c[i].p = (float)e;
        c[i].id = i;
        sum += e;
    }
    int n = V;
    if ((o->top_k > 0 && o->top_k < V) || o->top_p < 1.0) {
        qsort(c, (size_t)V, sizeof(Cand), cand_desc);
        if (o->top_k > 0 && o->top_k < n) n = o->top_k;
        if (o->top_p < 1.0) {
            double total = 0.0, acc = 0.0;
            for (int i = 0; i < n; i++) total += c[i].p;
            for (int i = 0; i < n; i++) {
                acc += c[i].p;
                if (acc >= o->top_p * total) {
                    n = i + 1;
                    break;
                }
            }
        }
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += c[i].p;
    }
    double r = mg_rng_uniform(rng) * sum, acc = 0.0;
    int pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) {
            pick = c[i].id;
            break;
        }
    }
    free(c);
    return pick;
}

/* Generate up to max_new tokens after the prompt ids; streams decoded text to out. Returns tokens made.
 * A stop request (signals.h) ends it between two tokens (or two pieces of the prompt). */
static int generate(MgModel *m, MgTokenizer *tok, const int32_t *prompt, int n_prompt, int max_new,
                    const MgSamplerOpts *so, MgRng *rng, FILE *out, double *seconds) {
    const int V = mg_model_config(m)->vocab_size;
    MgDecoder *d = mg_decoder_create(m, 1);
    const int64_t ctx = mg_decoder_context(d); /* llama: its key/value cache holds seq_len positions */
    if (ctx > 0) {
        if (n_prompt > ctx)
            mg_fatal("the prompt has %d tokens but this %s model's context is %lld (seq_len): shorten the prompt",
                     n_prompt, mg_model_config(m)->arch, (long long)ctx);
        if (n_prompt + max_new > ctx) {
            fprintf(stderr, "note: generating at most %lld tokens: the prompt (%d) and the new tokens fill the "
                            "context of %lld positions (seq_len)\n",
                    (long long)(ctx - n_prompt), n_prompt, (long long)ctx);
            max_new = (int)(ctx - n_prompt);
        }
    }
    double t0 = mg_now();
    mg_decoder_step(d, prompt, n_prompt, NULL);
    float *logits = mg_malloc(sizeof(float) * (size_t)V);
    int prev = prompt[n_prompt - 1], made = 0;
    char piece[512];
    for (int i = 0; i < max_new && !mg_stop_requested(); i++) {
        memcpy(logits, mg_decoder_last_logits(d), sizeof(float) * (size_t)V);
        int32_t next = mg_sample_token(logits, V, so, rng);
        if (next == mg_tokenizer_eos_id(tok)) break;
        mg_tokenizer_decode_piece(tok, prev, next, piece, sizeof piece);
        fputs(piece, out);
        fflush(out);
        prev = next;
        made++;
        if (i + 1 < max_new) mg_decoder_step(d, &next, 1, NULL);
    }
    if (seconds) *seconds = mg_now() - t0;
    free(logits);
    mg_decoder_free(d);
    return made;
}

void mg_sample_during_training(MgModel *m, const MgConfig *cfg, FILE *out) {
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(cfg->tokenizer, err, sizeof err);
    if (!tok) {
        fprintf(out, "(sample skipped: %s)\n", err);
        return;
    }
    static const char *prompt = "The";
    MgTokens ids = {0};
    mg_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids);
    MgSamplerOpts so = {cfg->temperature, cfg->top_k, cfg->top_p};
    MgRng rng;
    mg_rng_seed(&rng, cfg->seed);
    fprintf(out, "sample: %s", prompt);
    generate(m, tok, ids.ids, (int)ids.n, cfg->max_new_tokens, &so, &rng, out, NULL);
    fprintf(out, "\n");
    mg_tokens_free(&ids);
    mg_tokenizer_free(tok);
}

/* `megalodon sample --ckpt F --prompt TEXT [--max_new_tokens N --temperature T --top_k K --top_p P --seed S]` */
int cmd_sample(int argc, char **argv) {
    static const char *const extra[] = {"ckpt", "prompt", "prompt_file", NULL};
    const char *vals[3] = {0};
    MgConfig cfg;
    mg_signals_install();
    MgModel *m = mg_model_from_checkpoint("sample", argc, argv, extra, vals, &cfg);
    if (!m) return mg_stop_report("sample stopped while loading the checkpoint");
    char err[1024];
    MgTokenizer *tok = mg_tokenizer_load(cfg.tokenizer, err, sizeof err);
    if (!tok) mg_fatal("%s (set --tokenizer, or run scripts/fetch_data.sh)", err);
    if (mg_tokenizer_vocab_size(tok) != cfg.vocab_size)
        mg_fatal("the tokenizer %s has %d pieces but the model's vocab_size is %d", cfg.tokenizer,
                 mg_tokenizer_vocab_size(tok), cfg.vocab_size);
    char *text = NULL;
    if (vals[2]) {
        /* a regular file of at most 16 MiB (a directory, /dev/zero or a FIFO is refused by name) */
        size_t n;
        if (mg_read_regular_file(vals[2], "--prompt_file", (uint64_t)16 << 20, &text, &n, err, sizeof err))
            mg_fatal("%s", err);
    } else {
        text = mg_strdup(vals[1] ? vals[1] : "");
    }
    MgTokens ids = {0};
    mg_tokenizer_encode(tok, text, strlen(text), 1, &ids);
    MgSamplerOpts so = {cfg.temperature, cfg.top_k, cfg.top_p};
    MgRng rng;
    mg_rng_seed(&rng, cfg.seed);
    printf("%s", text);
    fflush(stdout);
    double secs = 0;
    int made = generate(m, tok, ids.ids, (int)ids.n, cfg.max_new_tokens, &so, &rng, stdout, &secs);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "[%zu prompt tokens, %d generated, %.1f tokens/s, temperature %g, top_k %d, top_p %g]\n", ids.n,
            made, (double)(ids.n + (size_t)made) / (secs > 0 ? secs : 1e-9), cfg.temperature, cfg.top_k, cfg.top_p);
    free(text);
    mg_tokens_free(&ids);
    mg_tokenizer_free(tok);
    mg_model_free(m);
    return mg_stop_requested() ? mg_stop_report("sample stopped early; the text above is what was generated") : 0;
}
