/* `megalodon import` and `megalodon export`: weights in and out of our checkpoints (docs/weights.md).
 *
 *   import hf DIR OUT.h5                        a Hugging Face Llama(-2) directory (config.json and
 *                                               model.safetensors, or shards with model.safetensors.index.json)
 *   import megalodon-torch --config C F... OUT  state dicts saved by the official Megalodon code (torch.save),
 *                                               converted by scripts/torch_to_safetensors.py
 *   export hf CKPT OUTDIR [--shards N]          one of our arch = llama checkpoints as a Hugging Face directory
 *
 * An import writes a weights-only checkpoint (step 0) through the checkpoint writer, so the file carries
 * every tensor's CRC32, the resolved config and the usual metadata, and `train --init_from`, `eval` and
 * `sample` take it. Tensors are converted one at a time (memory: the largest tensor, twice). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli.h"
#include "common.h"
#include "config.h"
#include "fileio.h"
#include "fsutil.h"
#include "params.h"
#include "weights/json.h"
#include "weights/safetensors.h"

#define ERRLEN 4096

/* ---- a set of safetensors files seen as one name space --------------------------------------------- */

typedef struct {
    int nfiles;
    MgStFile *files;
    int n;                  /* tensors over all files */
    const MgStTensor **t;   /* n */
    int *file_of;           /* n */
    char *used;             /* n: taken by the mapping */
    const char *label;      /* names the files in messages instead of their paths (a converted temp file) */
} Source;

static void source_free(Source *s) {
    for (int i = 0; i < s->nfiles; i++) mg_st_close(&s->files[i]);
    free(s->files);
    free(s->t);
    free(s->file_of);
    free(s->used);
    memset(s, 0, sizeof *s);
}

static int source_open(Source *s, int nfiles, char **paths, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    s->files = mg_calloc((size_t)nfiles, sizeof *s->files);
    for (int i = 0; i < nfiles; i++) {
        if (mg_st_open(paths[i], &s->files[i], err, errlen)) {
            s->nfiles = i;
            source_free(s);
            return -1;
        }
        s->nfiles = i + 1;
        s->n += s->files[i].n;
    }
    s->t = mg_malloc(sizeof *s->t * (size_t)(s->n + 1));
    s->file_of = mg_malloc(sizeof *s->file_of * (size_t)(s->n + 1));
    s->used = mg_calloc((size_t)s->n + 1, 1);
    int k = 0;
    for (int i = 0; i < nfiles; i++)
        for (int j = 0; j < s->files[i].n; j++) {
            const MgStTensor *t = &s->files[i].t[j];
            for (int q = 0; q < k; q++)
                if (!strcmp(s->t[q]->name, t->name)) {
                    int rc = mg_errf(err, errlen,
                                     "tensor '%s' is in both '%s' and '%s': shards must hold disjoint tensors "
                                     "(model-parallel shards that split one tensor are not supported; consolidate "
                                     "them to model_parallel_size 1 first)",
                                     t->name, s->files[s->file_of[q]].path, s->files[i].path);
                    source_free(s);
                    return rc;
                }
            s->t[k] = t;
            s->file_of[k] = i;
            k++;
        }
    return 0;
}

static int source_find(const Source *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i]->name, name)) return i;
    return -1;
}

static int read_f32(const Source *s, int idx, float *dst, char *err, size_t errlen) {
    return mg_st_read_f32(&s->files[s->file_of[idx]], s->t[idx], dst, err, errlen);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Shapes equal after dropping every dimension of size 1 (the official CEMA parameters carry trailing 1s). */
static int same_squeezed(int na, const int64_t *a, int nb, const int64_t *b) {
    int i = 0, j = 0;
    for (;;) {
        while (i < na && a[i] == 1) i++;
        while (j < nb && b[j] == 1) j++;
        if (i == na || j == nb) return i == na && j == nb;
        if (a[i] != b[j]) return 0;
        i++;
        j++;
    }
}

/* ---- the mappings ------------------------------------------------------------------------------------ */

enum { X_COPY = 0, X_NORM, X_PERM };

typedef struct {
    char src[160];
    int kind;      /* X_COPY, X_NORM (gamma -> gamma - 1 or back), X_PERM (q/k rows, per head) */
    int heads;     /* X_PERM */
    int squeeze;   /* shapes may differ by size-1 dimensions */
} Map;

/* Our Llama name -> the Hugging Face name. */
static int map_llama(const MgConfig *c, const char *name, Map *m) {
    memset(m, 0, sizeof *m);
    int i, n = 0;
    char rest[96];
    if (!strcmp(name, "embed.weight")) return snprintf(m->src, sizeof m->src, "model.embed_tokens.weight"), 0;
    if (!strcmp(name, "final_norm.weight")) {
        m->kind = X_NORM;
        return snprintf(m->src, sizeof m->src, "model.norm.weight"), 0;
    }
    if (!strcmp(name, "lm_head.weight")) return snprintf(m->src, sizeof m->src, "lm_head.weight"), 0;
    if (sscanf(name, "layers.%d.%95s%n", &i, rest, &n) != 2) return -1;
    static const struct {
        const char *ours, *hf;
        int kind;
    } L[] = {{"attn_norm.weight", "input_layernorm.weight", X_NORM},
             {"attn.wq.weight", "self_attn.q_proj.weight", X_PERM},
             {"attn.wk.weight", "self_attn.k_proj.weight", X_PERM},
             {"attn.wv.weight", "self_attn.v_proj.weight", X_COPY},
             {"attn.wo.weight", "self_attn.o_proj.weight", X_COPY},
             {"ffn_norm.weight", "post_attention_layernorm.weight", X_NORM},
             {"ffn.fc1.weight", "mlp.gate_proj.weight", X_COPY},
             {"ffn.fc3.weight", "mlp.up_proj.weight", X_COPY},
             {"ffn.fc2.weight", "mlp.down_proj.weight", X_COPY}};
    for (size_t k = 0; k < sizeof L / sizeof L[0]; k++)
        if (!strcmp(rest, L[k].ours)) {
            snprintf(m->src, sizeof m->src, "model.layers.%d.%s", i, L[k].hf);
            m->kind = L[k].kind;
            m->heads = !strcmp(L[k].ours, "attn.wq.weight") ? c->num_heads
                                                              : (c->num_kv_heads ? c->num_kv_heads : c->num_heads);
            return 0;
        }
    return -1;
}

/* Our Megalodon name -> the official code's state-dict name. */
static int map_mega(const char *name, Map *m) {
    memset(m, 0, sizeof *m);
    int i, n = 0;
    char rest[96];
    if (!strcmp(name, "embed.weight")) return snprintf(m->src, sizeof m->src, "embed.weight"), 0;
    if (!strcmp(name, "lm_head.weight")) return snprintf(m->src, sizeof m->src, "output.output.weight"), 0;
    if (!strncmp(name, "final_norm.", 11)) return snprintf(m->src, sizeof m->src, "output.%s", name), 0;
    if (sscanf(name, "layers.%d.%95s%n", &i, rest, &n) != 2) return -1;
    if (!strncmp(rest, "attn.norm.", 10))
        snprintf(m->src, sizeof m->src, "layers.%d.mega.timenorm.%s", i, rest + 10);
    else if (!strcmp(rest, "attn.qk_gamma"))
        snprintf(m->src, sizeof m->src, "layers.%d.mega.gamma", i);
    else if (!strcmp(rest, "attn.qk_beta"))
        snprintf(m->src, sizeof m->src, "layers.%d.mega.beta", i);
    else if (!strncmp(rest, "attn.", 5))
        snprintf(m->src, sizeof m->src, "layers.%d.mega.%s", i, rest + 5);
    else if (!strncmp(rest, "ffn.", 4))
        snprintf(m->src, sizeof m->src, "layers.%d.nffn.%s", i, rest + 4);
    else
        return -1;
    m->squeeze = strstr(rest, "cema.") != NULL;
    return 0;
}

/* HF rotate-half rows -> our interleaved rows, per head: ours[h*dh + 2j + p] = hf[h*dh + p*dh/2 + j]
 * (to_hf = 0), or the inverse (to_hf = 1). */
static void permute_rows(const float *src, float *dst, int64_t rows, int64_t cols, int heads, int to_hf) {
    int64_t dh = rows / heads;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t j = 0; j < dh / 2; j++)
            for (int p = 0; p < 2; p++) {
                int64_t ours = h * dh + 2 * j + p, hf = h * dh + p * (dh / 2) + j;
                const float *s = src + (to_hf ? ours : hf) * cols;
                memcpy(dst + (to_hf ? hf : ours) * cols, s, sizeof(float) * (size_t)cols);
            }
}

/* ---- writing a checkpoint from a source ------------------------------------------------------------- */

typedef int (*IgnoreFn)(const Source *s, int idx, const MgConfig *c, char *err, size_t errlen);

static int write_checkpoint(const char *out, const MgConfig *c, const Source *s, int llama, const char *origin,
                            const char *kind, IgnoreFn ignore, char *err, size_t errlen) {
    MgParamTable table;
    mg_param_table_build(c, &table);
    Source *sw = (Source *)s;
    int rc = 0;
    /* 1. every tensor of the table has a source of the right shape */
    int *src_of = mg_malloc(sizeof *src_of * (size_t)table.count);
    int64_t maxn = 1;
    for (int k = 0; k < table.count && !rc; k++) {
        const MgParam *p = &table.params[k];
        Map m;
        if ((llama ? map_llama(c, p->name, &m) : map_mega(p->name, &m)))
            mg_fatal("import: no mapping for parameter '%s' (a bug)", p->name);
        int idx = source_find(s, m.src);
        if (idx < 0) {
            const char *hint = "";
            if (!strcmp(p->name, "lm_head.weight"))
                hint = llama ? " (a model with tied embeddings has tie_word_embeddings = true in config.json)"
                             : " (a model whose output layer shares the embedding needs share_emb = true in the config)";
            else if (strstr(p->name, "fc3"))
                hint = llama ? "" : " (a model without SwiGLU needs swiglu = false in the config)";
            rc = mg_errf(err, errlen,
                         "%s: tensor '%s' (our '%s') is missing; every tensor of the model must be present%s", origin,
                         m.src, p->name, hint);
            break;
        }
        const MgStTensor *t = s->t[idx];
        int ok = m.squeeze ? same_squeezed(t->ndim, t->shape, p->ndim, p->shape) && t->numel == p->numel
                           : t->ndim == p->ndim && !memcmp(t->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim);
        if (!ok) {
            char a[96], b[96];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, p->ndim, p->shape);
            rc = mg_errf(err, errlen,
                         "%s: tensor '%s' has shape %s but the config gives our '%s' the shape %s: the config "
                         "does not describe this checkpoint (check its sizes)",
                         origin, t->name, a, p->name, b);
            break;
        }
        src_of[k] = idx;
        sw->used[idx] = 1;
        if (p->numel > maxn) maxn = p->numel;
    }
    /* 2. nothing left over: each remaining source tensor is either knowingly ignored or refused */
    for (int i = 0; i < s->n && !rc; i++) {
        if (s->used[i]) continue;
        int r = ignore ? ignore(s, i, c, err, errlen) : 0;
        if (r < 0) rc = -1;
        else if (r == 0)
            rc = mg_errf(err, errlen,
                         "%s: tensor '%s' (in '%s') is not part of a %s model with this config: unknown name, or "
                         "a feature this model lacks; nothing was written",
                         origin, s->t[i]->name, s->label ? s->label : s->files[s->file_of[i]].path,
                         llama ? "Llama" : "Megalodon");
    }
    if (rc) {
        free(src_of);
        mg_param_table_free(&table);
        return -1;
    }
    /* 3. write */
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    char *text = mg_config_to_text(c);
    mg_ckpt_meta_set_config(&meta, text);
    free(text);
    mg_ckpt_meta_set_str(&meta, "imported_from", origin);
    mg_ckpt_meta_set_str(&meta, "import_format", kind);
    MgCkptWriter *w = mg_ckpt_writer_begin(out, &meta, err, errlen);
    mg_ckpt_meta_free(&meta);
    if (!w) {
        free(src_of);
        mg_param_table_free(&table);
        return -1;
    }
    float *buf = malloc(sizeof(float) * (size_t)maxn), *tmp = malloc(sizeof(float) * (size_t)maxn);
    if (!buf || !tmp) rc = mg_errf(err, errlen, "import: out of memory for a tensor of %lld elements", (long long)maxn);
    for (int k = 0; k < table.count && !rc; k++) {
        const MgParam *p = &table.params[k];
        Map m;
        if (llama) map_llama(c, p->name, &m);
        else map_mega(p->name, &m);
        if (read_f32(s, src_of[k], buf, err, errlen)) {
            rc = -1;
            break;
        }
        float *x = buf;
        if (m.kind == X_NORM) {
            for (int64_t e = 0; e < p->numel; e++) x[e] = x[e] - 1.0f;
        } else if (m.kind == X_PERM) {
            permute_rows(buf, tmp, p->shape[0], p->shape[1], m.heads, 0);
            x = tmp;
        }
        int64_t bad = 0, first = -1;
        for (int64_t e = 0; e < p->numel; e++)
            if (!isfinite(x[e])) {
                if (first < 0) first = e;
                bad++;
            }
        if (bad) {
            rc = mg_errf(err, errlen, "%s: tensor '%s' holds %lld NaN/Inf values (first at element %lld); nothing was written",
                         origin, m.src, (long long)bad, (long long)first);
            break;
        }
        uint32_t crc = mg_crc32_update(0, x, sizeof(float) * (size_t)p->numel);
        if (mg_ckpt_writer_add(w, "model", p, crc, err, errlen) ||
            mg_ckpt_writer_put(w, "model", p, 0, p->numel, x, err, errlen))
            rc = -1;
    }
    free(buf);
    free(tmp);
    free(src_of);
    if (rc) mg_ckpt_writer_abort(w);
    else rc = mg_ckpt_writer_commit(w, err, errlen);
    if (!rc) printf("wrote %s: %d tensors, %lld parameters (arch = %s), weights only\n", out, table.count,
                    (long long)table.total, c->arch);
    mg_param_table_free(&table);
    return rc;
}

/* ---- import hf ------------------------------------------------------------------------------------------ */

static int json_get_int(const MgJv *j, const char *key, int required, int64_t *out, const char *path, char *err,
                        size_t errlen) {
    const MgJv *v = mg_jv_get(j, key);
    if (!v || v->type == MG_JV_NULL) {
        if (required) return mg_errf(err, errlen, "%s: key '%s' is missing (a Llama config.json has it)", path, key);
        return 1;
    }
    if (mg_jv_int(v, out) || *out <= 0)
        return mg_errf(err, errlen, "%s: key '%s' must be a positive integer", path, key);
    return 0;
}

static int set_key(MgConfig *c, const char *key, const char *val, char *err, size_t errlen) {
    return mg_config_set(c, key, val, "import", err, errlen);
}

static int set_int(MgConfig *c, const char *key, int64_t v, char *err, size_t errlen) {
    char b[32];
    snprintf(b, sizeof b, "%lld", (long long)v);
    return set_key(c, key, b, err, errlen);
}

/* config.json -> our config (arch = llama). */
static int hf_config(const char *dir, MgConfig *c, char *err, size_t errlen) {
    char path[MG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text;
    size_t len;
    if (mg_read_regular_file(path, "Hugging Face config", (uint64_t)16 << 20, &text, &len, err, errlen)) return -1;
    char jerr[256];
    MgJv *j = mg_jv_parse(text, len, jerr, sizeof jerr);
    free(text);
    if (!j || j->type != MG_JV_OBJ) {
        mg_jv_free(j);
        return mg_errf(err, errlen, "%s is not a JSON object: %s", path, j ? "another JSON value" : jerr);
    }
    int rc = 0;
    const MgJv *mt = mg_jv_get(j, "model_type");
    if (mt && (mt->type != MG_JV_STR || strcmp(mt->str, "llama"))) {
        rc = mg_errf(err, errlen, "%s: model_type is '%s', not 'llama': only Llama checkpoints can be imported", path,
                     mt->type == MG_JV_STR ? mt->str : "?");
        goto done;
    }
    const MgJv *v;
    if ((v = mg_jv_get(j, "hidden_act")) && (v->type != MG_JV_STR || strcmp(v->str, "silu"))) {
        rc = mg_errf(err, errlen, "%s: hidden_act is '%s'; our Llama uses SwiGLU with silu only", path,
                     v->type == MG_JV_STR ? v->str : "?");
        goto done;
    }
    if ((v = mg_jv_get(j, "rope_scaling")) && v->type != MG_JV_NULL) {
        rc = mg_errf(err, errlen, "%s: rope_scaling is set; RoPE scaling (linear, dynamic, llama3, yarn) is not "
                     "supported, only plain RoPE (rope_scaling: null)", path);
        goto done;
    }
    static const char *const biases[2] = {"attention_bias", "mlp_bias"};
    for (int b = 0; b < 2; b++)
        if ((v = mg_jv_get(j, biases[b])) && v->type == MG_JV_BOOL && v->boolean) {
            rc = mg_errf(err, errlen, "%s: %s is true; our Llama has no biases", path, biases[b]);
            goto done;
        }
    int64_t d, f, nl, H, Hkv, V, ctx = 4096, hd;
    if ((rc = json_get_int(j, "hidden_size", 1, &d, path, err, errlen)) ||
        (rc = json_get_int(j, "intermediate_size", 1, &f, path, err, errlen)) ||
        (rc = json_get_int(j, "num_hidden_layers", 1, &nl, path, err, errlen)) ||
        (rc = json_get_int(j, "num_attention_heads", 1, &H, path, err, errlen)) ||
        (rc = json_get_int(j, "vocab_size", 1, &V, path, err, errlen)))
        goto done;
    if ((rc = json_get_int(j, "num_key_value_heads", 0, &Hkv, path, err, errlen)) < 0) goto done;
    if (rc == 1) Hkv = H;
    if ((rc = json_get_int(j, "max_position_embeddings", 0, &ctx, path, err, errlen)) < 0) goto done;
    if ((rc = json_get_int(j, "head_dim", 0, &hd, path, err, errlen)) < 0) goto done;
    if (rc == 0 && hd * H != d) {
        rc = mg_errf(err, errlen, "%s: head_dim = %lld differs from hidden_size / num_attention_heads = %lld; not supported",
                     path, (long long)hd, (long long)(d / H));
        goto done;
    }
    rc = 0;
    double eps = 1e-6, theta = 10000.0;
    if ((v = mg_jv_get(j, "rms_norm_eps")) && v->type != MG_JV_NULL) {
        if (v->type != MG_JV_NUM || !(v->num > 0)) {
            rc = mg_errf(err, errlen, "%s: rms_norm_eps must be a positive number", path);
            goto done;
        }
        eps = v->num;
    }
    if ((v = mg_jv_get(j, "rope_theta")) && v->type != MG_JV_NULL) {
        if (v->type != MG_JV_NUM || !(v->num > 0)) {
            rc = mg_errf(err, errlen, "%s: rope_theta must be a positive number", path);
            goto done;
        }
        theta = v->num;
    }
    int tied = (v = mg_jv_get(j, "tie_word_embeddings")) && v->type == MG_JV_BOOL && v->boolean;
    char num[64];
    if ((rc = set_key(c, "arch", "llama", err, errlen)) || (rc = set_int(c, "vocab_size", V, err, errlen)) ||
        (rc = set_int(c, "n_layers", nl, err, errlen)) || (rc = set_int(c, "model_dim", d, err, errlen)) ||
        (rc = set_int(c, "num_heads", H, err, errlen)) || (rc = set_int(c, "num_kv_heads", Hkv, err, errlen)) ||
        (rc = set_int(c, "ffn_hidden_dim", f, err, errlen)) || (rc = set_int(c, "seq_len", ctx, err, errlen)) ||
        (rc = set_key(c, "share_emb", tied ? "true" : "false", err, errlen)) ||
        (rc = set_key(c, "scale_emb", "false", err, errlen)))
        goto done;
    snprintf(num, sizeof num, "%.17g", eps);
    if ((rc = set_key(c, "norm_eps", num, err, errlen))) goto done;
    snprintf(num, sizeof num, "%.17g", theta);
    if ((rc = set_key(c, "rope_base", num, err, errlen))) goto done;
    /* training keys a valid config needs; `train --init_from` takes them from its own config */
    if ((rc = set_key(c, "batch_size", "1", err, errlen)) || (rc = set_key(c, "max_steps", "1", err, errlen))) goto done;
done:
    mg_jv_free(j);
    return rc ? -1 : 0;
}

static int ignore_hf(const Source *s, int idx, const MgConfig *c, char *err, size_t errlen) {
    (void)c;
    (void)err;
    (void)errlen;
    /* older Hugging Face checkpoints store the RoPE inverse frequencies, a buffer recomputed from rope_theta */
    const char *n = s->t[idx]->name, *suf = ".self_attn.rotary_emb.inv_freq";
    size_t ln = strlen(n), ls = strlen(suf);
    return ln > ls && !strcmp(n + ln - ls, suf);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* The safetensors files of a Hugging Face directory: model.safetensors, or the index's shards. */
static int hf_files(const char *dir, char ***files_out, int *n_out, char *err, size_t errlen) {
    char path[MG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char **files = NULL;
    int n = 0;
    if (exists(path)) {
        char *text;
        size_t len;
        if (mg_read_regular_file(path, "safetensors index", (uint64_t)64 << 20, &text, &len, err, errlen)) return -1;
        char jerr[256];
        MgJv *j = mg_jv_parse(text, len, jerr, sizeof jerr);
        free(text);
        const MgJv *wm = j ? mg_jv_get(j, "weight_map") : NULL;
        if (!wm || wm->type != MG_JV_OBJ) {
            mg_jv_free(j);
            return mg_errf(err, errlen, "%s: %s", path, j ? "no \"weight_map\" object" : jerr);
        }
        for (int i = 0; i < wm->n; i++) {
            const MgJv *fn = wm->items[i];
            if (fn->type != MG_JV_STR || !fn->str[0] || strchr(fn->str, '/') || !strcmp(fn->str, "..")) {
                mg_jv_free(j);
                for (int k = 0; k < n; k++) free(files[k]);
                free(files);
                return mg_errf(err, errlen, "%s: weight_map entry of '%s' is not a file name in the directory", path,
                               wm->keys[i]);
            }
            char full[MG_PATH_MAX + 300];
            snprintf(full, sizeof full, "%s/%s", dir, fn->str);
            int seen = 0;
            for (int k = 0; k < n && !seen; k++) seen = !strcmp(files[k], full);
            if (!seen) {
                files = mg_realloc(files, sizeof *files * (size_t)(n + 1));
                files[n++] = mg_strdup(full);
            }
        }
        mg_jv_free(j);
        if (!n) return mg_errf(err, errlen, "%s: the weight_map is empty", path);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (!exists(path))
            return mg_errf(err, errlen,
                           "'%s' holds neither model.safetensors nor model.safetensors.index.json (PyTorch .bin "
                           "checkpoints are not read: convert them to safetensors first)",
                           dir);
        files = mg_malloc(sizeof *files);
        files[n++] = mg_strdup(path);
    }
    *files_out = files;
    *n_out = n;
    return 0;
}

static int import_hf(const char *dir, const char *out, char *err, size_t errlen) {
    if (!is_dir(dir)) return mg_errf(err, errlen, "'%s' is not a directory (import hf takes a Hugging Face model directory)", dir);
    MgConfig c;
    mg_config_defaults(&c);
    if (hf_config(dir, &c, err, errlen)) return -1;
    if (mg_config_validate(&c, err, errlen)) return -1;
    char **files = NULL;
    int nf = 0;
    if (hf_files(dir, &files, &nf, err, errlen)) return -1;
    Source s;
    int rc = source_open(&s, nf, files, err, errlen);
    for (int i = 0; i < nf; i++) free(files[i]);
    free(files);
    if (rc) return -1;
    rc = write_checkpoint(out, &c, &s, 1, dir, "huggingface-llama", ignore_hf, err, errlen);
    source_free(&s);
    return rc;
}

/* ---- import megalodon-torch ------------------------------------------------------------------------- */

/* Buffers of the official code that are not parameters: rope.freqs (checked against rope_base), the
 * TimestepNorm priors (accepted only with prior_count 0: our TimestepNorm starts from no prior). */
static int ignore_mega(const Source *s, int idx, const MgConfig *c, char *err, size_t errlen) {
    const MgStTensor *t = s->t[idx];
    const char *n = t->name;
    size_t ln = strlen(n);
#define ENDS(suf) (ln >= strlen(suf) && !strcmp(n + ln - strlen(suf), suf))
    if (!strcmp(n, "rope.freqs")) {
        int64_t dz = c->z_dim / c->num_heads;
        if (t->numel != dz / 2)
            return mg_errf(err, errlen, "rope.freqs has %lld values but z_dim / num_heads / 2 = %lld: check num_heads",
                           (long long)t->numel, (long long)(dz / 2));
        float *fr = mg_malloc(sizeof(float) * (size_t)(t->numel + 1));
        if (read_f32(s, idx, fr, err, errlen)) {
            free(fr);
            return -1;
        }
        for (int64_t j = 0; j < t->numel; j++) {
            double want = 1.0 / pow(c->rope_base, (double)(2 * j) / (double)dz);
            if (fabs(fr[j] - want) > 1e-5 * want) {
                /* freqs[1] = base^(-2/dz) */
                double got = fr[j], base = t->numel > 1 ? pow(1.0 / fr[1], (double)dz / 2.0) : 0.0;
                free(fr);
                return mg_errf(err, errlen,
                               "rope.freqs does not match rope_base = %g (element %lld is %g, expected %g; the "
                               "checkpoint's base looks like %g): set rope_base in the config",
                               c->rope_base, (long long)j, got, want, base);
            }
        }
        free(fr);
        return 1;
    }
    if (ENDS(".prior_count")) {
        int64_t v[1] = {0};
        if (t->numel != 1 || mg_st_read_i64(&s->files[s->file_of[idx]], t, v, err, errlen))
            return t->numel != 1 ? mg_errf(err, errlen, "%s should hold one count", n) : -1;
        if (v[0] != 0)
            return mg_errf(err, errlen,
                           "%s = %lld: a TimestepNorm with a learned prior is not supported (our TimestepNorm starts "
                           "from count 0)",
                           n, (long long)v[0]);
        return 1;
    }
    if (ENDS(".prior_mean") || ENDS(".prior_logv")) return 1; /* unused with prior_count 0 (checked above) */
    if (ENDS(".nffn.alpha"))
        return mg_errf(err, errlen, "%s: the FFN output rescaling (rescale_nffn) is not supported by our model", n);
    if (c->share_emb && !strcmp(n, "output.output.weight")) { /* tied: must be the embedding */
        int e = source_find(s, "embed.weight");
        if (e < 0 || s->t[e]->numel != t->numel) return mg_errf(err, errlen, "output.output.weight differs from embed.weight in size");
        float *a = mg_malloc(sizeof(float) * (size_t)t->numel), *b = mg_malloc(sizeof(float) * (size_t)t->numel);
        int r = read_f32(s, idx, a, err, errlen) || read_f32(s, e, b, err, errlen) ? -1 : 1;
        if (r == 1 && memcmp(a, b, sizeof(float) * (size_t)t->numel))
            r = mg_errf(err, errlen,
                        "share_emb = true but output.output.weight differs from embed.weight: set share_emb = false "
                        "in the config");
        free(a);
        free(b);
        return r;
    }
    return 0;
#undef ENDS
}

/* The source tree's scripts/NAME for this binary (BUILD/megalodon -> BUILD/../scripts/NAME). */
static int script_path(const char *name, char *out, size_t n, char *err, size_t errlen) {
    char root[4096];
    ssize_t k = readlink("/proc/self/exe", root, sizeof root - 1);
    if (k <= 0 || k >= (ssize_t)sizeof root - 1) return mg_errf(err, errlen, "cannot find this binary's path (/proc/self/exe)");
    root[k] = 0;
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(root, '/');
        if (slash) *slash = 0;
    }
    snprintf(out, n, "%s/scripts/%s", root, name);
    if (access(out, R_OK))
        return mg_errf(err, errlen, "cannot read %s (%s): import megalodon-torch runs the script of the source tree "
                       "whose build directory holds this binary", out, strerror(errno));
    return 0;
}

static int run_helper(char **argv, char *err, size_t errlen) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return mg_errf(err, errlen, "cannot start %s: %s", argv[0], strerror(errno));
    if (pid == 0) {
        execv(argv[0], argv);
        fprintf(stderr, "error: cannot run %s: %s (install python3 with torch: make deps)\n", argv[0], strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return mg_errf(err, errlen, "waiting for %s: %s", argv[1], strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st))
        return mg_errf(err, errlen, "%s failed (%s %d; its message is above)", argv[1],
                       WIFEXITED(st) ? "exit status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    return 0;
}

static int import_mega(const char *conf, int nfiles, char **files, const char *out, char *err, size_t errlen) {
    MgConfig c;
    mg_config_defaults(&c);
    if (mg_config_load_file(&c, conf, err, errlen)) return -1;
    if (strcmp(c.arch, "megalodon"))
        return mg_errf(err, errlen, "%s: arch is '%s'; import megalodon-torch needs a Megalodon config", conf, c.arch);
    /* training keys a valid config needs, when the model config leaves them out (as the import's placeholders) */
    if (c.batch_size <= 0) c.batch_size = 1;
    if (c.max_steps <= 0) c.max_steps = 1;
    if (mg_config_validate(&c, err, errlen)) return -1;
    char script[4200];
    if (script_path("torch_to_safetensors.py", script, sizeof script, err, errlen)) return -1;
    char *tmp = mg_fs_temp_name(out);
    char **argv = mg_malloc(sizeof *argv * (size_t)(nfiles + 6));
    int a = 0;
    argv[a++] = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    argv[a++] = script;
    argv[a++] = "--out";
    argv[a++] = tmp;
    for (int i = 0; i < nfiles; i++) argv[a++] = files[i];
    argv[a] = NULL;
    int rc = run_helper(argv, err, errlen);
    free(argv);
    if (!rc) {
        Source s;
        char *one[1] = {tmp};
        rc = source_open(&s, 1, one, err, errlen);
        if (!rc) {
            char origin[MG_PATH_MAX + 64];
            snprintf(origin, sizeof origin, "%s%s", files[0], nfiles > 1 ? " (+ shards)" : "");
            s.label = "the state dicts";
            rc = write_checkpoint(out, &c, &s, 0, origin, "megalodon-torch", ignore_mega, err, errlen);
            source_free(&s);
        }
    }
    unlink(tmp);
    free(tmp);
    return rc;
}

/* ---- export hf ------------------------------------------------------------------------------------------ */

static int write_text(const char *path, const char *text, char *err, size_t errlen) {
    return mg_fs_write_file_atomic(path, text, strlen(text), 1, err, errlen);
}

static int export_hf(const char *ckpt, const char *outdir, int shards, char *err, size_t errlen) {
    MgCkptMeta meta;
    MgCkptReader *r = mg_ckpt_open(ckpt, &meta, err, errlen);
    if (!r) return -1;
    MgConfig c;
    mg_config_defaults(&c);
    int rc = mg_config_load_text(&c, meta.config_text ? meta.config_text : "", ckpt, err, errlen);
    mg_ckpt_meta_free(&meta);
    if (!rc && strcmp(c.arch, "llama"))
        rc = mg_errf(err, errlen, "%s: arch is '%s'; export hf writes Llama checkpoints only (Hugging Face has no Megalodon format)",
                     ckpt, c.arch);
    if (!rc && c.scale_emb)
        rc = mg_errf(err, errlen, "%s: scale_emb = true has no Hugging Face Llama equivalent; cannot export", ckpt);
    if (rc) {
        mg_ckpt_close(r);
        return -1;
    }
    MgParamTable table;
    mg_param_table_build(&c, &table);
    MgCkptTensorInfo *info = NULL;
    int ninfo = 0;
    if (mg_ckpt_list(r, "model", &info, &ninfo, err, errlen)) {
        mg_param_table_free(&table);
        mg_ckpt_close(r);
        return -1;
    }
    if (ninfo != table.count) rc = mg_errf(err, errlen, "%s holds %d model tensors, its config %d", ckpt, ninfo, table.count);
    int64_t maxn = 1, total = 0;
    for (int k = 0; k < table.count && !rc; k++) {
        const MgParam *p = &table.params[k];
        int found = 0;
        for (int i = 0; i < ninfo; i++)
            if (!strcmp(info[i].name, p->name)) found = info[i].numel == p->numel;
        if (!found) rc = mg_errf(err, errlen, "%s: tensor '%s' is missing or has another size than its config gives", ckpt, p->name);
        if (p->numel > maxn) maxn = p->numel;
        total += p->numel;
    }
    free(info);
    if (shards < 1 || shards > table.count) {
        if (!rc) rc = mg_errf(err, errlen, "--shards must be between 1 and %d (the number of tensors)", table.count);
    }
    if (!rc && mkdir(outdir, 0777) && errno != EEXIST)
        rc = mg_errf(err, errlen, "cannot create directory '%s': %s", outdir, strerror(errno));
    if (!rc && !is_dir(outdir)) rc = mg_errf(err, errlen, "'%s' exists and is not a directory", outdir);
    /* config.json */
    if (!rc) {
        char cj[4096], path[MG_PATH_MAX + 64];
        int Hkv = c.num_kv_heads ? c.num_kv_heads : c.num_heads;
        snprintf(cj, sizeof cj,
                 "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
                 "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
                 "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
                 "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %.17g,\n"
                 "  \"rope_theta\": %.17g,\n  \"rope_scaling\": null,\n  \"hidden_act\": \"silu\",\n"
                 "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n  \"tie_word_embeddings\": %s,\n"
                 "  \"initializer_range\": 0.02,\n  \"torch_dtype\": \"float32\"\n}\n",
                 c.model_dim, c.ffn_hidden_dim, c.n_layers, c.num_heads, Hkv, c.model_dim / c.num_heads, c.vocab_size,
                 c.seq_len, c.norm_eps, c.rope_base, c.share_emb ? "true" : "false");
        snprintf(path, sizeof path, "%s/config.json", outdir);
        rc = write_text(path, cj, err, errlen);
    }
    /* shards: consecutive runs of the table of about total / shards elements each, none empty */
    int *shard_of = mg_calloc((size_t)table.count + 1, sizeof(int));
    {
        int64_t acc = 0;
        int sh = 0;
        for (int k = 0; k < table.count; k++) {
            int nonempty = k > 0 && shard_of[k - 1] == sh;
            if (sh < shards - 1 && nonempty &&
                (acc + table.params[k].numel / 2 > (total * (sh + 1)) / shards || table.count - k == shards - 1 - sh))
                sh++;
            shard_of[k] = sh;
            acc += table.params[k].numel;
        }
    }
    float *buf = malloc(sizeof(float) * (size_t)maxn), *tmp = malloc(sizeof(float) * (size_t)maxn);
    if (!rc && (!buf || !tmp)) rc = mg_errf(err, errlen, "export: out of memory for a tensor of %lld elements", (long long)maxn);
    int64_t inexact = 0;
    char (*fnames)[64] = mg_calloc((size_t)shards, sizeof *fnames);
    for (int sh = 0; sh < shards && !rc; sh++) {
        if (shards == 1) snprintf(fnames[sh], sizeof fnames[sh], "model.safetensors");
        else snprintf(fnames[sh], sizeof fnames[sh], "model-%05d-of-%05d.safetensors", sh + 1, shards);
        int n = 0;
        for (int k = 0; k < table.count; k++) n += shard_of[k] == sh;
        const char **names = mg_malloc(sizeof *names * (size_t)(n + 1));
        int *ndims = mg_malloc(sizeof *ndims * (size_t)(n + 1));
        int64_t (*shapes)[4] = mg_malloc(sizeof *shapes * (size_t)(n + 1));
        Map *maps = mg_malloc(sizeof *maps * (size_t)(n + 1));
        int *idx = mg_malloc(sizeof *idx * (size_t)(n + 1));
        int q = 0;
        for (int k = 0; k < table.count; k++) {
            if (shard_of[k] != sh) continue;
            map_llama(&c, table.params[k].name, &maps[q]);
            names[q] = maps[q].src;
            ndims[q] = table.params[k].ndim;
            memcpy(shapes[q], table.params[k].shape, sizeof shapes[q]);
            idx[q++] = k;
        }
        char path[MG_PATH_MAX + 128];
        snprintf(path, sizeof path, "%s/%s", outdir, fnames[sh]);
        MgStWriter w;
        rc = mg_st_write_begin(&w, path, n, names, ndims, (const int64_t(*)[4])shapes, err, errlen);
        for (int i = 0; i < n && !rc; i++) {
            const MgParam *p = &table.params[idx[i]];
            if (mg_ckpt_read_tensor(r, "model", p->name, buf, p->numel, err, errlen)) {
                rc = -1;
                break;
            }
            float *x = buf;
            if (maps[i].kind == X_NORM) {
                for (int64_t e = 0; e < p->numel; e++) {
                    float g = buf[e] + 1.0f;
                    inexact += g - 1.0f != buf[e];
                    buf[e] = g;
                }
            } else if (maps[i].kind == X_PERM) {
                permute_rows(buf, tmp, p->shape[0], p->shape[1], maps[i].heads, 1);
                x = tmp;
            }
            rc = mg_st_write_data(&w, x, p->numel, err, errlen);
        }
        if (rc) {
            if (w.af.f) mg_st_write_abort(&w);
        } else {
            rc = mg_st_write_commit(&w, err, errlen);
        }
        free(names);
        free(ndims);
        free(shapes);
        free(maps);
        free(idx);
    }
    if (!rc && shards > 1) { /* model.safetensors.index.json */
        size_t cap = 256 + (size_t)table.count * 256, pos = 0;
        char *ix = mg_malloc(cap);
        pos += (size_t)snprintf(ix + pos, cap - pos, "{\n  \"metadata\": {\"total_size\": %lld},\n  \"weight_map\": {",
                                (long long)total * 4);
        for (int k = 0; k < table.count; k++) {
            Map m;
            map_llama(&c, table.params[k].name, &m);
            pos += (size_t)snprintf(ix + pos, cap - pos, "%s\n    ", k ? "," : "");
            mg_jv_quote(ix, cap, &pos, m.src);
            pos += (size_t)snprintf(ix + pos, cap - pos, ": ");
            mg_jv_quote(ix, cap, &pos, fnames[shard_of[k]]);
        }
        pos += (size_t)snprintf(ix + pos, cap - pos, "\n  }\n}\n");
        char path[MG_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", outdir);
        rc = write_text(path, ix, err, errlen);
        free(ix);
    }
    if (!rc) {
        printf("wrote %s: config.json and %d safetensors file%s (%d tensors, %lld parameters, float32)\n", outdir,
               shards, shards > 1 ? "s + model.safetensors.index.json" : "", table.count, (long long)total);
        if (inexact)
            printf("note: %lld norm values w had 1 + w rounded in float32 (|w| small): importing this export gives "
                   "them back within 2^-24 of the original, not bit for bit\n",
                   (long long)inexact);
    }
    free(fnames);
    free(buf);
    free(tmp);
    free(shard_of);
    mg_param_table_free(&table);
    mg_ckpt_close(r);
    return rc;
}

/* ---- commands ------------------------------------------------------------------------------------------ */

static void import_usage(FILE *f) {
    fprintf(f, "usage: megalodon import hf DIR OUT.h5\n"
               "       megalodon import megalodon-torch --config CONF FILE... OUT.h5\n"
               "\n"
               "hf               a Hugging Face Llama(-2) directory: config.json and model.safetensors, or sharded\n"
               "                 model-0000K-of-0000N.safetensors with model.safetensors.index.json (F32, BF16, F16\n"
               "                 or F64 tensors). The config becomes arch = llama (hidden_size -> model_dim,\n"
               "                 max_position_embeddings -> seq_len, rope_theta -> rope_base, ...), q/k rows go back\n"
               "                 from rotate-half to interleaved RoPE pairs, norm scales g are stored as g - 1.\n"
               "megalodon-torch  state dicts written by torch.save from the official Megalodon code (one file, or\n"
               "                 several holding disjoint tensors), read with /usr/bin/python3 + torch through\n"
               "                 scripts/torch_to_safetensors.py. CONF (our config) gives what the weights cannot\n"
               "                 tell (num_heads, norm_num_groups, chunk_size, norm_eps, rope_base, ...); every\n"
               "                 shape is checked against it.\n"
               "\n"
               "OUT.h5 is a weights-only checkpoint (step 0) for `train --init_from`, `eval --ckpt` and `sample\n"
               "--ckpt`; `megalodon ckpt info OUT.h5` verifies it. docs/weights.md has the name tables.\n");
}

static void export_usage(FILE *f) {
    fprintf(f, "usage: megalodon export hf CKPT OUTDIR [--shards N]\n"
               "\n"
               "Writes an arch = llama checkpoint as a Hugging Face Llama directory: config.json and float32\n"
               "model.safetensors, or with --shards N > 1 model-0000K-of-0000N.safetensors and\n"
               "model.safetensors.index.json. The inverse of `import hf` (docs/weights.md).\n");
}

int cmd_import(int argc, char **argv) {
    char err[ERRLEN];
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        import_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!mg_ckpt_available()) {
        fprintf(stderr, "error: this build has no HDF5; install libhdf5-dev and rebuild\n");
        return 1;
    }
    int rc;
    if (!strcmp(argv[1], "hf")) {
        if (argc != 4) {
            import_usage(stderr);
            return 2;
        }
        rc = import_hf(argv[2], argv[3], err, sizeof err);
    } else if (!strcmp(argv[1], "megalodon-torch")) {
        const char *conf = NULL;
        char **pos = mg_malloc(sizeof *pos * (size_t)argc);
        int np = 0;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--config") && i + 1 < argc) conf = argv[++i];
            else if (!strncmp(argv[i], "--", 2)) {
                fprintf(stderr, "error: import megalodon-torch: unknown option '%s'\n", argv[i]);
                free(pos);
                return 2;
            } else pos[np++] = argv[i];
        }
        if (!conf || np < 2) {
            fprintf(stderr, "error: import megalodon-torch needs --config CONF, at least one FILE and OUT.h5\n");
            import_usage(stderr);
            free(pos);
            return 2;
        }
        rc = import_mega(conf, np - 1, pos, pos[np - 1], err, sizeof err);
        free(pos);
    } else {
        fprintf(stderr, "error: import: unknown format '%s' (hf or megalodon-torch)\n", argv[1]);
        return 2;
    }
    if (rc) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    return 0;
}

int cmd_export(int argc, char **argv) {
    char err[ERRLEN];
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        export_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "hf")) {
        fprintf(stderr, "error: export: unknown format '%s' (hf)\n", argv[1]);
        return 2;
    }
    int shards = 1;
    char *pos[2];
    int np = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--shards") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 99999) {
                fprintf(stderr, "error: --shards takes a positive integer\n");
                return 2;
            }
            shards = (int)v;
        } else if (!strncmp(argv[i], "--", 2) || np == 2) {
            export_usage(stderr);
            return 2;
        } else {
            pos[np++] = argv[i];
        }
    }
    if (np != 2) {
        export_usage(stderr);
        return 2;
    }
    if (export_hf(pos[0], pos[1], shards, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    return 0;
}
