#include "info.h"
#include "model.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "memcheck.h"
#include "run.h"

/* H100 SXM bf16 dense peak (design.md), used only to put FLOPs per step in seconds. */
#define H100_BF16_PEAK 989.4e12

double mg_activation_bytes(const MgConfig *c, int B, int L, int act_bytes) {
    /* Exactly the trainer's activation arena (the model driver plans it); statistics, log-sum-exp and
     * losses stay fp32 whatever the activation dtype. */
    MG_CHECK(act_bytes == 2 || act_bytes == 4, "activation bytes per value must be 2 (bf16) or 4 (fp32), got %d",
             act_bytes);
    return (double)mg_activation_plan_bytes(c, act_bytes == 2 ? MG_BF16 : MG_F32, MG_F32, B, L);
}

void mg_memory_estimate(const MgConfig *c, const MgParamTable *t, MgMemoryEstimate *m) {
    memset(m, 0, sizeof(*m));
    const int bf16 = !strcmp(mg_config_precision(c), "bf16");
    m->param_bytes = bf16 ? 2 : 4;
    m->act_bytes = bf16 ? 2 : 4;
    const double n = (double)t->total;
    m->params = n * m->param_bytes;
    m->grads = n * m->param_bytes;
    m->moments = n * 2 * 4.0;
    m->master = bf16 ? n * 4.0 : 0.0;
    m->activations = mg_activation_bytes(c, c->batch_size, c->seq_len, m->act_bytes);
    m->total = m->params + m->grads + m->moments + m->master + m->activations;
}

/* 7385817088 -> "7,385,817,088" */
static const char *commas(int64_t x, char *buf, size_t n) {
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%" PRId64, x < 0 ? -x : x);
    size_t len = strlen(tmp), j = 0;
    if (x < 0 && j + 1 < n) buf[j++] = '-';
    for (size_t i = 0; i < len && j + 2 < n; i++) {
        buf[j++] = tmp[i];
        if ((len - i - 1) % 3 == 0 && i + 1 < len) buf[j++] = ',';
    }
    buf[j] = 0;
    return buf;
}

/* Decimal SI prefix: 7.39e9 -> "7.39 G". */
static const char *si(double x, const char *unit, char *buf, size_t n) {
    const char *p[] = {"", "k", "M", "G", "T", "P", "E", "Z"};
    int i = 0;
    while (fabs(x) >= 1000.0 && i < 7) {
        x /= 1000.0;
        i++;
    }
    snprintf(buf, n, i ? "%.3g %s%s" : "%.0f %s%s", x, p[i], unit);
    return buf;
}

/* Parameter counts the way model names say them: 7.39e9 -> "7.39 B". */
static const char *human_count(double x, char *buf, size_t n) {
    const char *p[] = {"", " K", " M", " B", " T"};
    int i = 0;
    while (x >= 1000.0 && i < 4) {
        x /= 1000.0;
        i++;
    }
    snprintf(buf, n, i ? "%.3g%s" : "%.0f%s", x, p[i]);
    return buf;
}

/* Per-layer modules, in the order of the parameter table; a parameter name after "layers.{i}." is matched
 * by prefix. */
typedef struct {
    const char *prefix, *label;
} Module;
static const Module MODULES[] = {
    {"attn.norm.", "attn TimestepNorm"}, {"attn.cema.", "attn CEMA"},  {"attn.rmsnorm.", "attn RMSNorm"},
    {"attn.wz.", "attn wz (shared Q/K)"}, {"attn.wv.", "attn wv (values)"}, {"attn.wr.", "attn wr (reset gate)"},
    {"attn.wh1.", "attn wh1"},           {"attn.wh2.", "attn wh2"},   {"attn.qk_", "attn Q/K affine"},
    {"ffn.norm.", "ffn LayerNorm"},      {"ffn.fc1.", "ffn fc1"},     {"ffn.fc3.", "ffn fc3"},
    {"ffn.fc2.", "ffn fc2"},
};
static const Module LLAMA_MODULES[] = {
    {"attn_norm.", "attn RMSNorm"}, {"attn.wq.", "attn wq"},        {"attn.wk.", "attn wk"},
    {"attn.wv.", "attn wv"},        {"attn.wo.", "attn wo"},        {"ffn_norm.", "ffn RMSNorm"},
    {"ffn.fc1.", "ffn fc1 (w1, gate)"}, {"ffn.fc3.", "ffn fc3 (w3, up)"}, {"ffn.fc2.", "ffn fc2 (w2, down)"},
};
#define NMODULES ((int)(sizeof(MODULES) / sizeof(MODULES[0])))
#define NLLAMA_MODULES ((int)(sizeof(LLAMA_MODULES) / sizeof(LLAMA_MODULES[0])))

static int module_of(const Module *mods, int n, const char *name) {
    const char *p = strchr(name, '.'); /* after "layers" */
    p = p ? strchr(p + 1, '.') : NULL; /* after the layer index */
    if (!p) return -1;
    p++;
    for (int i = 0; i < n; i++)
        if (!strncmp(p, mods[i].prefix, strlen(mods[i].prefix))) return i;
    return -1;
}

void mg_info_print(const MgConfig *c, FILE *f) {
    MgParamTable t;
    mg_param_table_build(c, &t);
    char a[64], b[64], e[64], g[64];

    const int llama = !strcmp(c->arch, "llama");
    const Module *mods = llama ? LLAMA_MODULES : MODULES;
    const int nmods = llama ? NLLAMA_MODULES : NMODULES;
    if (llama) {
        const int kv = c->num_kv_heads > 0 ? c->num_kv_heads : c->num_heads;
        fprintf(f, "model: %s, %d layers, d %d, %d heads (%d per head), %d key/value head%s%s, f %d SwiGLU, "
                   "context %d, V %d, rope_base %g, %s head%s\n",
                c->arch, c->n_layers, c->model_dim, c->num_heads, c->model_dim / c->num_heads, kv, kv == 1 ? "" : "s",
                kv < c->num_heads ? " (grouped-query)" : "", c->ffn_hidden_dim, c->seq_len, c->vocab_size,
                c->rope_base, c->share_emb ? "tied" : "untied", c->scale_emb ? ", embeddings scaled by sqrt(d)" : "");
    } else {
        fprintf(f, "model: %s, %d layers, d %d, %d heads, z %d (%d per head), v %d (%d per head), f %d %s, "
                   "N %d, G %d, chunk %d, V %d, rope_base %g, %s head%s\n",
                c->arch, c->n_layers, c->model_dim, c->num_heads, c->z_dim, c->z_dim / c->num_heads, c->value_dim,
                c->value_dim / c->num_heads, c->ffn_hidden_dim, c->swiglu ? "SwiGLU" : "silu", c->cema_ndim,
                c->norm_num_groups, c->chunk_size, c->vocab_size, c->rope_base, c->share_emb ? "tied" : "untied",
                c->scale_emb ? ", embeddings scaled by sqrt(d)" : "");
    }

    /* ---- parameters ---- */
    int64_t embed = 0, head = 0, final_norm = 0, layers = 0, other = 0, mod[NMODULES] = {0}, unmatched = 0;
    for (int i = 0; i < t.count; i++) {
        const MgParam *p = &t.params[i];
        if (p->layer >= 0) {
            layers += p->numel;
            int m = module_of(mods, nmods, p->name);
            if (m >= 0) mod[m] += p->numel;
            else unmatched += p->numel;
        } else if (!strncmp(p->name, "embed.", 6)) {
            embed += p->numel;
        } else if (!strncmp(p->name, "lm_head.", 8)) {
            head += p->numel;
        } else if (!strncmp(p->name, "final_norm.", 11)) {
            final_norm += p->numel;
        } else {
            other += p->numel;
        }
    }
    const double total = (double)t.total;
    fprintf(f, "\nparameters: %s (%s)\n", commas(t.total, a, sizeof(a)), human_count(total, b, sizeof(b)));
    fprintf(f, "  %-26s %16s  %5.1f%%\n", "embedding (V x d)", commas(embed, a, sizeof(a)), 100.0 * embed / total);
    const int L = c->n_layers;
    fprintf(f, "  %-26s %16s  %5.1f%%   (%s per layer)\n", "layers", commas(layers, a, sizeof(a)),
            100.0 * layers / total, commas(L ? layers / L : 0, b, sizeof(b)));
    for (int m = 0; m < nmods; m++) {
        if (!mod[m]) continue;
        fprintf(f, "    %-24s %16s per layer  %5.1f%%\n", mods[m].label, commas(L ? mod[m] / L : 0, a, sizeof(a)),
                100.0 * mod[m] / total);
    }
    if (unmatched)
        fprintf(f, "    %-24s %16s per layer\n", "other", commas(L ? unmatched / L : 0, a, sizeof(a)));
    fprintf(f, "  %-26s %16s  %5.1f%%\n", llama ? "final RMSNorm" : "final TimestepNorm", commas(final_norm, a, sizeof(a)), 100.0 * final_norm / total);
    if (c->share_emb)
        fprintf(f, "  %-26s %16s   (tied to the embedding)\n", "LM head (V x d)", "0");
    else
        fprintf(f, "  %-26s %16s  %5.1f%%\n", "LM head (V x d)", commas(head, a, sizeof(a)), 100.0 * head / total);
    if (other) fprintf(f, "  %-26s %16s\n", "other", commas(other, a, sizeof(a)));
    fprintf(f, "  %-26s %16s   (used in matrix products, incl. the LM head, excl. the embedding)\n",
            "matmul parameters", commas(t.matmul_total, a, sizeof(a)));

    /* ---- FLOPs ---- */
    const double fpt = mg_flops_per_token(c, &t);
    const double attn = fpt - 6.0 * (double)t.matmul_total;
    const int64_t micro = (int64_t)c->batch_size * c->seq_len;
    const int64_t step_tokens = c->batch_tokens > 0 ? c->batch_tokens : micro;
    fprintf(f, "\nFLOPs per token (training): %s = 6 x %s matmul params (%s) + %s %s\n",
            si(fpt, "FLOP", a, sizeof(a)), commas(t.matmul_total, b, sizeof(b)),
            si(6.0 * (double)t.matmul_total, "FLOP", e, sizeof(e)), llama ? "causal attention" : "chunk attention",
            si(attn, "FLOP", g, sizeof(g)));
    if (llama) {
        fprintf(f, "  convention: 6 x (parameters in matrix products, incl. the LM head) + per layer 6*(L/2)*2d\n"
                   "  for causal attention over the whole sequence (QK^T and PV over the H query heads, forward +\n"
                   "  2x backward, causal useful FLOPs) with L = seq_len = %d; norms and the embedding lookup are\n"
                   "  not counted\n",
                c->seq_len);
    } else {
        const int c_eff = MG_MIN(c->chunk_size, c->seq_len);
        fprintf(f, "  convention: 6 x (parameters in matrix products, incl. the LM head) + per layer 6*(c/2)*(z+v)\n"
                   "  for chunk attention (QK^T and PV, forward + 2x backward, causal useful FLOPs) with\n"
                   "  c = min(chunk_size, seq_len) = %d; CEMA, norms and the embedding lookup are not counted\n",
                c_eff);
    }
    fprintf(f, "tokens per step: %s = %" PRId64 " micro-batch%s of %d x %d (batch_size x seq_len)\n",
            commas(step_tokens, a, sizeof(a)), step_tokens / micro, step_tokens / micro == 1 ? "" : "es",
            c->batch_size, c->seq_len);
    const double fps = fpt * (double)step_tokens;
    fprintf(f, "FLOPs per step: %s (%.3e); one H100 at its bf16 dense peak (989.4 TFLOP/s) would take "
               "%.3g s per step\n",
            si(fps, "FLOP", a, sizeof(a)), fps, fps / H100_BF16_PEAK);
    if (c->max_steps > 0) {
        double run_tokens = (double)step_tokens * (double)c->max_steps;
        fprintf(f, "run: %" PRId64 " steps = %s tokens (%.3g tokens per parameter), %s\n", c->max_steps,
                human_count(run_tokens, a, sizeof(a)), run_tokens / total, si(fps * (double)c->max_steps, "FLOP", b, sizeof(b)));
    }

    /* ---- memory ---- */
    MgMemoryEstimate m;
    mg_memory_estimate(c, &t, &m);
    const char *pn = m.param_bytes == 2 ? "bf16" : "fp32";
    fprintf(f, "\nmemory per device for one training step (micro-batch %d x %d tokens, precision %s):\n",
            c->batch_size, c->seq_len, mg_config_precision(c));
    char lbl[64];
    snprintf(lbl, sizeof(lbl), "parameters (%s)", pn);
    fprintf(f, "  %-30s %12s\n", lbl, mg_format_bytes(m.params, a, sizeof(a)));
    snprintf(lbl, sizeof(lbl), "gradients (%s)", pn);
    fprintf(f, "  %-30s %12s\n", lbl, mg_format_bytes(m.grads, a, sizeof(a)));
    fprintf(f, "  %-30s %12s\n", "AdamW moments (fp32, 2 x)", mg_format_bytes(m.moments, a, sizeof(a)));
    if (m.master > 0) fprintf(f, "  %-30s %12s\n", "master weights (fp32)", mg_format_bytes(m.master, a, sizeof(a)));
    snprintf(lbl, sizeof(lbl), "activations (%s)", pn);
    fprintf(f, "  %-30s %12s\n", lbl, mg_format_bytes(m.activations, a, sizeof(a)));
    fprintf(f, "  %-30s %12s\n", "total", mg_format_bytes(m.total, a, sizeof(a)));
    fprintf(f, "  assumes one device holds the whole model and its optimizer state (no data-parallel sharding\n"
               "  yet; sequence parallelism would divide the activations by its size)\n");
    /* what `train` checks before it allocates (memcheck.h), for this machine */
    {
        const MgDtype dt = mg_config_compute_dtype(c); /* no backend needed: info runs without the device */
        MgRunMemory rm;
        mg_run_memory(c, &t, dt, MG_MEM_TRAIN, &rm);
        char src[900];
        double avail = mg_memory_available(src, sizeof src);
        fprintf(f, "\nmemory check of `train` on this machine (device %s, %s):\n", c->device, mg_dtype_name(dt));
        mg_run_memory_print(&rm, c, dt, MG_MEM_TRAIN, "  ", f);
        if (avail < 0)
            fprintf(f, "  available: unknown here (no /proc/meminfo, cgroup or rlimit figure); not checked\n");
        else
            fprintf(f, "  available: %s (%s): %s\n", mg_format_bytes(avail, a, sizeof a), src,
                    rm.total <= avail ? "fits"
                                      : "does NOT fit: `train` refuses it (lower batch_size or seq_len for activations, "
                                        "model_dim, n_layers, ffn_hidden_dim or vocab_size for the model)");
    }
    fprintf(f, "\nactivations by buffer (the trainer's arena plan; statistics stay fp32):\n");
    mg_activation_plan_print(c, m.act_bytes == 2 ? MG_BF16 : MG_F32, MG_F32, c->batch_size, c->seq_len, f);
    mg_param_table_free(&t);
}

int cmd_info(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: megalodon info --config FILE [--KEY VALUE ...]   (e.g. --config configs/tiny.conf;\n"
                        "       `megalodon info --help` lists every key)\n");
        return 2;
    }
    MgConfig c;
    mg_config_defaults(&c);
    mg_config_from_args(&c, argc, argv, NULL, NULL);
    char err[4096];
    if (mg_config_validate(&c, err, sizeof(err))) mg_fatal("%s", err);
    mg_info_print(&c, stdout);
    return 0;
}
