/* Up-front memory check (memcheck.h, docs/training.md). */
#include "memcheck.h"
#ifdef MG_HAVE_CUDA
#include "../kernels/cuda/mg_cuda.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "checkpoint.h"
#include "launch.h"
#include "model.h"

#define MARGIN_FIXED (64.0 * 1024 * 1024) /* op workspace, allocator, OpenMP and BLAS runtime */
#define MARGIN_SHARE 0.05

int mg_train_ckpt_snapshot(const MgConfig *c) {
    const int64_t last = c->stop_at > 0 ? MG_MIN(c->stop_at, c->max_steps) : c->max_steps;
    return c->ckpt_async && c->ckpt_every > 0 && c->ckpt_every < last && mg_ckpt_available();
}

void mg_run_memory(const MgConfig *c, const MgParamTable *t, MgDtype compute, MgMemUse use, MgRunMemory *m) {
    memset(m, 0, sizeof *m);
    const double n = (double)t->total, es = (double)mg_dtype_size(compute);
    const double B = c->batch_size, L = c->seq_len;
    MgLaunch launch;
    const int P = use == MG_MEM_TRAIN && mg_launch_detect(&launch) && launch.size > 1 ? launch.size : 1;
    const int S = use == MG_MEM_TRAIN && c->sp > 1 && c->sp <= P ? c->sp : 1;
    m->ranks = P;
    m->params = n * es;
    m->grads = n * es; /* the model holds a gradient arena whatever the command */
    m->masters = compute == MG_F32 ? 0.0 : n * 4.0;
    if (use == MG_MEM_TRAIN) m->moments = 2.0 * ceil(n / P) * 4.0; /* ZeRO-1: this rank's shard */
    /* the checkpoint snapshot: on rank 0, which gathers every shard, the whole masters, m and v */
    if (use == MG_MEM_TRAIN && mg_train_ckpt_snapshot(c)) m->snapshot = 3.0 * n * 4.0;
    if (P > 1) {
        /* the gradients staged on the host, the reduce-scatter's P copies of the shard, the reduced shard */
        m->dist = 2.0 * n * es + ceil(n / P) * es;
        const int llama = !strcmp(c->arch, "llama");
        const double Ls = L / S, cg = mg_config_attention_span(c);
        if (S > 1 && Ls < cg) { /* a chunk over k ranks (docs/parallelism.md, "Attention across ranks") */
            const int k = (int)(cg / Ls), heads_divide = c->num_heads % k == 0;
            /* keys and values of one token (llama: expanded to every query head, 2 x model_dim) */
            const double kv = B * (llama ? 2.0 * c->model_dim : (double)(c->z_dim + c->value_dim)) * es;
            if (!strcmp(c->sp_attention, "gather")) /* the chunk's context kept per layer, its gradients */
                m->dist += cg * kv * (c->n_layers + 2.0);
            else if (!strcmp(c->sp_attention, "alltoall") || (!strcmp(c->sp_attention, "auto") && heads_divide))
                m->dist += 2.0 * Ls * kv * (c->n_layers + 2.0); /* per layer its heads' q, k, v, o of the chunk */
            else /* ring: backend k, v, o, dk, dv, a received partial; five host messages of k and v */
                m->dist += 11.0 * Ls * kv;
        }
    }
    if (use == MG_MEM_SAMPLE) {
        /* the decoder (sample's batch of one): the caches and work buffers it allocates on the backend, and
         * its host copies of the logits (float and float64) */
        m->activations = (double)mg_decoder_plan_bytes(c, compute, MG_F32, 1) + 12.0 * (double)c->vocab_size;
    } else {
        m->activations = (double)mg_activation_plan_bytes(c, compute, MG_F32, c->batch_size, c->seq_len / S);
        m->data = 2.0 * B * L * sizeof(int32_t) * (use == MG_MEM_TRAIN && c->val_data[0] ? 2 : 1);
    }
    double sum = m->params + m->grads + m->masters + m->moments + m->snapshot + m->activations + m->data + m->dist;
    m->margin = MARGIN_FIXED + MARGIN_SHARE * sum;
    m->total = sum + m->margin;
}

/* "123", "64M", "2G" (powers of 1024) -> bytes; -1 if malformed. */
static double parse_bytes(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v >= 0) || !isfinite(v)) return -1;
    switch (toupper((unsigned char)*end)) {
    case 0: return v;
    case 'K': v *= 1024.0; break;
    case 'M': v *= 1048576.0; break;
    case 'G': v *= 1073741824.0; break;
    case 'T': v *= 1099511627776.0; break;
    default: return -1;
    }
    end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    return *end ? -1 : v;
}

/* The first number after `key` in a "key: value kB" file (/proc/meminfo, /proc/self/status), in bytes. */
static double proc_kb(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    double v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtod(line + kl + 1, NULL) * 1024.0;
            break;
        }
    fclose(f);
    return v;
}

/* A file holding one number (or "max"): the number, or -1. */
static double file_number(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (!isdigit((unsigned char)buf[0])) return -1;
    return strtod(buf, NULL);
}

/* cgroup v2 (this process's group, from /proc/self/cgroup), else v1's memory controller: limit - usage. */
static double cgroup_available(char *which, size_t n) {
    char rel[600] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f) {
        char line[600];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "0::", 3)) {
                snprintf(rel, sizeof rel, "%s", line + 3);
                rel[strcspn(rel, "\n")] = 0;
            }
        fclose(f);
    }
    char pmax[700], pcur[700];
    snprintf(pmax, sizeof pmax, "/sys/fs/cgroup%s/memory.max", rel);
    snprintf(pcur, sizeof pcur, "/sys/fs/cgroup%s/memory.current", rel);
    double lim = file_number(pmax), cur = file_number(pcur);
    if (lim >= 0) {
        snprintf(which, n, "the cgroup limit %s minus its use", pmax);
        return lim - MG_MAX(cur, 0.0);
    }
    lim = file_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    cur = file_number("/sys/fs/cgroup/memory/memory.usage_in_bytes");
    if (lim >= 0 && lim < 1e18) {
        snprintf(which, n, "the cgroup limit memory.limit_in_bytes minus its use");
        return lim - MG_MAX(cur, 0.0);
    }
    return -1;
}

double mg_memory_available(char *src, size_t srclen) {
    const char *env = getenv("MG_MEMORY_LIMIT_BYTES");
    if (env && *env) {
        double v = parse_bytes(env);
        if (v >= 0) {
            snprintf(src, srclen, "MG_MEMORY_LIMIT_BYTES=%s", env);
            return v;
        }
        fprintf(stderr, "warning: MG_MEMORY_LIMIT_BYTES='%s' is not a byte count (e.g. 123456789 or 64M); ignored\n", env);
    }
    double best = -1;
    snprintf(src, srclen, "unknown");
    double v = proc_kb("/proc/meminfo", "MemAvailable");
    if (v >= 0) {
        best = v;
        snprintf(src, srclen, "MemAvailable in /proc/meminfo");
    }
    char which[800];
    v = cgroup_available(which, sizeof which);
    if (v >= 0 && (best < 0 || v < best)) {
        best = v;
        snprintf(src, srclen, "%s", which);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        double used = proc_kb("/proc/self/status", "VmSize");
        v = (double)rl.rlim_cur - MG_MAX(used, 0.0);
        if (best < 0 || v < best) {
            best = v;
            snprintf(src, srclen, "RLIMIT_AS (ulimit -v) minus the address space in use");
        }
    }
    if (getrlimit(RLIMIT_DATA, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        double used = proc_kb("/proc/self/status", "VmData");
        v = (double)rl.rlim_cur - MG_MAX(used, 0.0);
        if (best < 0 || v < best) {
            best = v;
            snprintf(src, srclen, "RLIMIT_DATA (ulimit -d) minus the data in use");
        }
    }
    return best < 0 ? -1 : MG_MAX(best, 0.0);
}

void mg_run_memory_print(const MgRunMemory *m, const MgConfig *c, MgDtype compute, MgMemUse use, const char *indent,
                         FILE *f) {
    char a[32], lbl[96];
    const char *dn = mg_dtype_name(compute);
    snprintf(lbl, sizeof lbl, "parameters (%s)", dn);
    fprintf(f, "%s%-34s %12s\n", indent, lbl, mg_format_bytes(m->params, a, sizeof a));
    snprintf(lbl, sizeof lbl, "gradients (%s)", dn);
    fprintf(f, "%s%-34s %12s\n", indent, lbl, mg_format_bytes(m->grads, a, sizeof a));
    if (m->masters > 0) fprintf(f, "%s%-34s %12s\n", indent, "master weights (fp32)", mg_format_bytes(m->masters, a, sizeof a));
    if (m->moments > 0) {
        if (m->ranks > 1) snprintf(lbl, sizeof lbl, "AdamW moments (fp32, 2 x, 1/%d shard)", m->ranks);
        else snprintf(lbl, sizeof lbl, "AdamW moments (fp32, 2 x)");
        fprintf(f, "%s%-34s %12s\n", indent, lbl, mg_format_bytes(m->moments, a, sizeof a));
    }
    if (m->snapshot > 0)
        fprintf(f, "%s%-34s %12s\n", indent, "checkpoint snapshot (ckpt_async)", mg_format_bytes(m->snapshot, a, sizeof a));
    const int S = use == MG_MEM_TRAIN && m->ranks > 1 && c->sp > 1 ? c->sp : 1;
    if (use == MG_MEM_SAMPLE)
        snprintf(lbl, sizeof lbl, "decoder (attention cache, %s %d)", strcmp(c->arch, "llama") ? "chunk" : "context",
                 strcmp(c->arch, "llama") ? c->chunk_size : c->seq_len);
    else
        snprintf(lbl, sizeof lbl, "activations (%d x %d tokens)", c->batch_size, c->seq_len / S);
    fprintf(f, "%s%-34s %12s\n", indent, lbl, mg_format_bytes(m->activations, a, sizeof a));
    if (m->data > 0) fprintf(f, "%s%-34s %12s\n", indent, "token buffers", mg_format_bytes(m->data, a, sizeof a));
    if (m->dist > 0)
        fprintf(f, "%s%-34s %12s\n", indent, "distributed (reduction, attention)", mg_format_bytes(m->dist, a, sizeof a));
    fprintf(f, "%s%-34s %12s\n", indent, "workspace and runtime margin", mg_format_bytes(m->margin, a, sizeof a));
    fprintf(f, "%s%-34s %12s\n", indent, "total", mg_format_bytes(m->total, a, sizeof a));
}

/* This process's rank among the ranks of its node, from the launcher's environment (-1 if not launched by
 * one): each rank of an mpirun/srun job then drives the GPU of its local rank. */
int mg_local_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                                       "SLURM_LOCALID", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *s = getenv(vars[i]);
        if (!s || !*s) continue;
        char *end;
        long v = strtol(s, &end, 10);
        if (end != s && !*end && v >= 0 && v < 1000000) return (int)v;
    }
    return -1;
}

/* Ranks of this launch on this node (they share its memory): from the launcher's environment, else 1. */
static int local_ranks(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
                                       "SLURM_STEP_TASKS_PER_NODE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *s = getenv(vars[i]);
        if (!s || !*s) continue;
        char *end;
        long v = strtol(s, &end, 10); /* Slurm's "4(x2),3" starts with this node's count when uniform */
        if (end != s && v >= 1 && v <= 1000000) return (int)v;
    }
    return 1;
}

int mg_memory_check(const MgConfig *c, MgDtype compute, MgMemUse use, char *err, size_t errlen) {
    const char *off = getenv("MG_MEMORY_CHECK");
    if (off && !strcmp(off, "0")) return 0;
    char src[900];
    double avail = mg_memory_available(src, sizeof src);
    const int gpu = !strcmp(c->device, "cuda");
#ifdef MG_HAVE_CUDA
    if (gpu) {
        /* each rank has a GPU of its own (its local rank's): the model, optimizer and activations live
         * there; the checkpoint snapshot and token buffers stay in host memory */
        const int lr = mg_local_rank(), dev = lr > 0 ? mg_cuda_device_for_local_rank(lr) : 0;
        double fr = 0.0, tot = 0.0;
        avail = mg_cuda_memory_info(dev, &fr, &tot) == 0 ? fr : -1.0;
        snprintf(src, sizeof src, "free memory of GPU %d, of %.1f GiB", dev, tot / 1073741824.0);
    }
#endif
    if (avail < 0) return 0; /* unknown (or no GPU: creating the backend says so) */
    MgParamTable t;
    mg_param_table_build(c, &t);
    MgRunMemory m;
    mg_run_memory(c, &t, compute, use, &m);
    mg_param_table_free(&t);
    const int local = m.ranks > 1 && !gpu ? local_ranks() : 1;
    /* every rank on the node holds its own share; only rank 0 holds the checkpoint snapshot (host memory) */
    const double node = gpu ? m.total - m.snapshot - m.data : m.total * local - m.snapshot * (local - 1);
    if (node <= avail) return 0;
    char need[32], have[32], p[32], g[32], ms[32], mo[32], sn[32], ac[32], da[32], mg[32], dist[128] = "";
    mg_format_bytes(m.total, need, sizeof need);
    mg_format_bytes(avail, have, sizeof have);
    if (local > 1) {
        char all[32];
        snprintf(dist, sizeof dist, " (x %d ranks on this node = %s)", local,
                 mg_format_bytes(node, all, sizeof all));
    }
    mg_format_bytes(m.params, p, sizeof p);
    mg_format_bytes(m.grads, g, sizeof g);
    mg_format_bytes(m.masters, ms, sizeof ms);
    mg_format_bytes(m.moments, mo, sizeof mo);
    mg_format_bytes(m.snapshot, sn, sizeof sn);
    mg_format_bytes(m.activations, ac, sizeof ac);
    mg_format_bytes(m.data, da, sizeof da);
    mg_format_bytes(m.margin, mg, sizeof mg);
    const double model = m.params + m.grads + m.masters + m.moments + m.snapshot;
    const char *keys;
    if (use == MG_MEM_SAMPLE)
        keys = "the model itself is too large here: it needs a machine with more memory (or a smaller model: "
               "model_dim, n_layers, ffn_hidden_dim, vocab_size; chunk_size for the decoder's cache)";
    else if (m.activations >= model)
        keys = "most of it is activations: lower batch_size or seq_len (batch_tokens keeps the tokens per step "
               "with more micro-batches, i.e. gradient accumulation), or make the model smaller (model_dim, "
               "n_layers, ffn_hidden_dim, value_dim)";
    else
        keys = "most of it is the model and its optimizer state: lower model_dim, n_layers, ffn_hidden_dim, "
               "value_dim or vocab_size (batch_size and seq_len only change the activations)";
    char snap_note[256] = "";
    if (m.snapshot > 0)
        snprintf(snap_note, sizeof snap_note,
                 " ckpt_async = false saves the checkpoint snapshot (%s), at the price of a step loop that waits for "
                 "each checkpoint write.",
                 sn);
    return mg_errf(err, errlen,
                   "not enough memory for this %s: it needs about %s per device%s but %s is available (%s): "
                   "parameters %s, gradients %s%s%s%s%s%s%s, %s %s, token buffers %s, workspace margin %s; %s.%s "
                   "(MG_MEMORY_CHECK=0 skips this check.)",
                   use == MG_MEM_TRAIN ? "training run" : use == MG_MEM_EVAL ? "evaluation" : "sampling", need, dist, have,
                   src, p, g, m.masters > 0 ? ", fp32 masters " : "", m.masters > 0 ? ms : "",
                   m.moments > 0 ? ", AdamW moments " : "", m.moments > 0 ? mo : "",
                   m.snapshot > 0 ? ", checkpoint snapshot " : "", m.snapshot > 0 ? sn : "",
                   use == MG_MEM_SAMPLE ? "decoder" : "activations", ac, da, mg, keys, snap_note);
}
