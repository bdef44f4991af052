/* Every size is bounded before anything is allocated, and inputs that are not
 * what they claim are refused by name. Per-key upper bounds (the largest value passes, one more is refused
 * with the key and its bound), products of keys (tokens per micro-batch, micro-batches per step, tokens
 * per run), exact sizes at the bounds (no overflow), "did you mean" suggestions with other frameworks'
 * names, config files that are a directory, /dev/zero, a FIFO, too large or with a too-long line, the
 * up-front memory check against a simulated small machine, and shards whose bos_id is neither -1 nor a
 * token id, or that are not regular files. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/common.h"
#include "../src/config.h"
#include "../src/data.h"
#include "../src/info.h"
#include "../src/memcheck.h"
#include "../src/model.h"
#include "../src/params.h"
#include "test_util.h"

static char g_dir[256];
static char g_err[8192];

static const char *TINY = "n_layers = 2\nmodel_dim = 64\nnum_heads = 2\nz_dim = 32\nvalue_dim = 64\n"
                          "ffn_hidden_dim = 128\nswiglu = true\ncema_ndim = 4\nnorm_num_groups = 4\n"
                          "chunk_size = 16\nseq_len = 32\nbatch_size = 4\nmax_steps = 20\nwarmup_steps = 5\n";

static void base(MgConfig *c) {
    mg_config_defaults(c);
    if (mg_config_load_text(c, TINY, "tiny", g_err, sizeof g_err)) {
        printf("cannot load the base config: %s\n", g_err);
        exit(1);
    }
}

static int has_all(const char *s, const char *const *needles, const char **missing) {
    for (int i = 0; needles[i]; i++)
        if (!strstr(s, needles[i])) {
            *missing = needles[i];
            return 0;
        }
    return 1;
}
#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

static void expect_invalid(const char *check, const MgConfig *c, const char *const *needles) {
    g_err[0] = 0;
    const char *missing = "";
    int r = mg_config_validate(c, g_err, sizeof g_err);
    tu_check(r == -1 && has_all(g_err, needles, &missing), check, "status %d, message \"%s\"%s%s", r, g_err,
             *missing ? "; missing " : "", missing);
}

/* ---- per-key bounds -------------------------------------------------------------------------------- */
static const struct {
    const char *key, *max, *over;
} BOUNDS[] = {
    {"vocab_size", "16777216", "16777217"}, {"n_layers", "1024", "1025"},
    {"model_dim", "65536", "65537"},         {"num_heads", "1024", "1025"},
    {"z_dim", "65536", "65537"},             {"value_dim", "262144", "262145"},
    {"ffn_hidden_dim", "262144", "262145"},  {"cema_ndim", "64", "65"},
    {"norm_num_groups", "65536", "65537"},   {"chunk_size", "65536", "65537"},
    {"rope_base", "1e12", "1.1e12"},         {"norm_eps", "1", "1.5"},
    {"seq_len", "1048576", "2147483647"},    {"batch_size", "65536", "65537"},
    {"batch_tokens", "1099511627776", "1099511627777"}, {"lr", "10", "11"},
    {"warmup_steps", "1000000000000", "1000000000001"}, {"adam_eps", "1", "2"},
    {"weight_decay", "100", "101"},          {"grad_clip", "1e12", "2e12"},
    {"max_steps", "1000000000000", "9223372036854775807"}, {"eval_every", "1000000000000", "1000000000001"},
    {"eval_batches", "16777216", "2147483647"}, {"log_every", "1000000000000", "1000000000001"},
    {"sample_every", "1000000000", "1000000001"}, {"temperature", "100", "101"},
    {"top_k", "16777216", "16777217"},       {"max_new_tokens", "1048576", "1048577"},
    {"threads", "4096", "4097"},             {"stop_at", "1000000000000", "1000000000001"},
    {"peak_tflops", "1e9", "2e9"},           {"ckpt_every", "1000000000000", "1000000000001"},
    {"ckpt_keep", "1000000", "1000001"},     {"rewarm_steps", "1000000000000", "1000000000001"},
};

static void test_key_bounds(void) {
    int bad = 0;
    char what[512] = "";
    for (size_t i = 0; i < sizeof BOUNDS / sizeof BOUNDS[0]; i++) {
        MgConfig c;
        mg_config_defaults(&c);
        int ok_max = mg_config_set(&c, BOUNDS[i].key, BOUNDS[i].max, "command line", g_err, sizeof g_err) == 0;
        int r = mg_config_set(&c, BOUNDS[i].key, BOUNDS[i].over, "command line", g_err, sizeof g_err);
        char need[96];
        snprintf(need, sizeof need, "command line: %s: %s is out of range: at most", BOUNDS[i].key, BOUNDS[i].over);
        if (!ok_max || r != -1 || !strstr(g_err, need)) {
            if (!bad) snprintf(what, sizeof what, "%s: max accepted %d, over refused %d, message \"%.300s\"", BOUNDS[i].key,
                               ok_max, r == -1, g_err);
            bad++;
        }
    }
    tu_check(!bad, "every_numeric_key_has_an_upper_bound", "%zu keys: the bound is accepted, one more is refused "
             "naming the key and the bound%s%s", sizeof BOUNDS / sizeof BOUNDS[0], bad ? "; " : "", what);

    /* the report of the issue: seq_len 2147483647 gave a suggestion of "-2147483648" */
    MgConfig c;
    base(&c);
    int r = mg_config_set(&c, "seq_len", "2147483647", "command line", g_err, sizeof g_err);
    tu_check(r == -1 && strstr(g_err, "seq_len") && strstr(g_err, "at most 1048576") && !strstr(g_err, "-2147483648"),
             "seq_len_2147483647_refused_with_its_bound", "%s", g_err);
    /* structs filled in code get the same bounds from mg_config_validate */
    base(&c);
    c.num_heads = 1 << 30;
    c.z_dim = 1 << 30;
    c.value_dim = 1 << 30;
    expect_invalid("validate_checks_upper_bounds", &c,
                   NEEDLES("num_heads = 1073741824 is out of range: at most 1024", "z_dim = 1073741824",
                           "value_dim = 1073741824"));
    tu_check(!strstr(g_err, "-2147483648"), "validate_suggestions_do_not_overflow", "%s", g_err);
    base(&c);
    c.seq_len = 1048576;
    c.chunk_size = 65536 - 1;
    expect_invalid("chunk_suggestion_without_overflow", &c, NEEDLES("seq_len 1048576 does not fit chunk_size 65535"));
    tu_check(!strstr(g_err, "-"), "chunk_suggestion_has_no_negative_number", "%s", g_err);
}

/* ---- products of keys ------------------------------------------------------------------------------ */
static void test_products(void) {
    MgConfig c;
    base(&c);
    c.batch_size = 65536;
    c.seq_len = 1024;
    c.chunk_size = 1024;
    expect_invalid("micro_batch_tokens_bounded", &c,
                   NEEDLES("batch_size x seq_len = 65536 x 1024 = 67108864 tokens per micro-batch", "16777216",
                           "lower batch_size or seq_len"));
    base(&c);
    c.batch_tokens = 1099511627776LL; /* 2^40 / 128 tokens = 2^33 micro-batches */
    expect_invalid("micro_batches_per_step_bounded", &c, NEEDLES("batch_tokens 1099511627776", "micro-batches", "1048576"));
    base(&c);
    c.batch_size = 4096;
    c.seq_len = 4096;
    c.chunk_size = 4096;
    c.batch_tokens = 4096LL * 4096 * 65536;
    c.max_steps = 1000000000000LL;
    c.warmup_steps = 0;
    expect_invalid("run_tokens_bounded", &c, NEEDLES("max_steps x tokens per step", "lower max_steps or batch_tokens"));
}

/* ---- sizes at the bounds are exact -------------------------------------------------------------------- */
static void test_sizes_at_bounds(void) {
    MgConfig c;
    base(&c);
    c.vocab_size = 16777216;
    c.n_layers = 1024;
    c.model_dim = 65536;
    c.num_heads = 1024;
    c.z_dim = 65536;
    c.value_dim = 262144;
    c.ffn_hidden_dim = 262144;
    c.cema_ndim = 64;
    c.norm_num_groups = 65536;
    c.chunk_size = 65536;
    c.seq_len = 65536;
    c.batch_size = 256; /* 2^24 tokens per micro-batch */
    c.max_steps = 1000;
    int r = mg_config_validate(&c, g_err, sizeof g_err);
    tu_check(r == 0, "largest_config_validates", "%s", g_err);
    MgParamTable t;
    mg_param_table_build(&c, &t);
    /* the same count in long double: every product is far below 2^63, so the int64 sum is exact */
    const long double V = c.vocab_size, d = c.model_dim, z = c.z_dim, v = c.value_dim, f = c.ffn_hidden_dim,
                      N = c.cema_ndim, nl = c.n_layers;
    long double per_layer = 2 * d + 2 * d * N + d + 2 * d * N + d + d + z * d + z + 2 * (v * d + v) + d * d + d +
                            d * v + 4 * z + 2 * d + 3 * f * d;
    long double want = 2 * V * d + nl * per_layer + 2 * d;
    tu_check((long double)t.total == want && t.total > 0, "parameter_count_exact_at_the_bounds",
             "%lld parameters (%.3Le expected)", (long long)t.total, want);
    size_t act = mg_activation_plan_bytes(&c, MG_F32, MG_F32, c.batch_size, c.seq_len);
    /* a lower bound of the plan in long double: every layer keeps at least 10 T x d activations */
    long double T = (long double)c.batch_size * c.seq_len;
    tu_check(act > 0 && (long double)act > 10 * T * d * 4 * nl && (long double)act < 1e19L,
             "activation_plan_exact_at_the_bounds", "%.4Le bytes", (long double)act);
    MgRunMemory m;
    mg_run_memory(&c, &t, MG_F32, MG_MEM_TRAIN, &m);
    tu_check(isfinite(m.total) && m.total > (double)act && m.params == 4.0 * (double)t.total,
             "memory_estimate_exact_at_the_bounds", "%.4e bytes", m.total);
    mg_param_table_free(&t);
}

/* ---- suggestions -------------------------------------------------------------------------------------- */
static void test_suggestions(void) {
    static const struct {
        const char *typed, *want;
    } S[] = {
        {"learning_rate", "lr"},          {"hidden_size", "model_dim"},        {"num_hidden_layers", "n_layers"},
        {"num_attention_heads", "num_heads"}, {"intermediate_size", "ffn_hidden_dim"}, {"max_seq_len", "seq_len"},
        {"gradient_clipping", "grad_clip"}, {"Model-Dim", "model_dim"},      {"learning_rat", "lr"},
        {"output_dir", "out_dir"},        {"n_layer", "n_layers"},            {"modle_dim", "model_dim"},
    };
    int bad = 0;
    char what[600] = "";
    for (size_t i = 0; i < sizeof S / sizeof S[0]; i++) {
        MgConfig c;
        mg_config_defaults(&c);
        int r = mg_config_set(&c, S[i].typed, "1", "command line", g_err, sizeof g_err);
        char need[128];
        snprintf(need, sizeof need, "unknown key '%s' (did you mean '%s'?", S[i].typed, S[i].want);
        if (r != -1 || !strstr(g_err, need)) {
            if (!bad) snprintf(what, sizeof what, "%s -> \"%.400s\"", S[i].typed, g_err);
            bad++;
        }
    }
    tu_check(!bad, "did_you_mean_names_of_other_frameworks", "%zu names%s%s", sizeof S / sizeof S[0], bad ? ": " : "",
             what);
    MgConfig c;
    mg_config_defaults(&c);
    int r = mg_config_set(&c, "xyzzy_plugh", "1", "command line", g_err, sizeof g_err);
    tu_check(r == -1 && strstr(g_err, "unknown key 'xyzzy_plugh'") && !strstr(g_err, "did you mean"),
             "no_suggestion_when_nothing_is_close", "%s", g_err);
}

/* ---- config files that are not config files ------------------------------------------------------------ */
static void expect_file_refused(const char *check, const char *path, const char *const *needles) {
    MgConfig c;
    mg_config_defaults(&c);
    g_err[0] = 0;
    const char *missing = "";
    int r = mg_config_load_file(&c, path, g_err, sizeof g_err);
    tu_check(r == -1 && has_all(g_err, needles, &missing), check, "status %d, \"%s\"%s%s", r, g_err,
             *missing ? "; missing " : "", missing);
}

static void test_config_files(void) {
    expect_file_refused("config_dev_zero_refused", "/dev/zero",
                        NEEDLES("config file '/dev/zero'", "character device", "not a regular file"));
    expect_file_refused("config_directory_refused", g_dir, NEEDLES("config file '", "is a directory"));
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo.conf", g_dir);
    if (mkfifo(fifo, 0600) == 0)
        expect_file_refused("config_fifo_refused_without_blocking", fifo, NEEDLES("fifo.conf", "FIFO"));
    else
        tu_check(0, "config_fifo_refused_without_blocking", "mkfifo %s failed", fifo);
    char big[300];
    snprintf(big, sizeof big, "%s/big.conf", g_dir);
    FILE *f = fopen(big, "wb");
    for (int i = 0; f && i < (1 << 20) / 32 + 2; i++) fputs("# a comment line of 32 bytes ..\n", f);
    if (f) fclose(f);
    expect_file_refused("config_larger_than_1MiB_refused", big, NEEDLES("big.conf", "too large", "1.00 MiB"));
    char longl[300];
    snprintf(longl, sizeof longl, "%s/long.conf", g_dir);
    f = fopen(longl, "wb");
    if (f) {
        fputs("n_layers = 2\n# fine\nout_dir = \"", f);
        for (int i = 0; i < 5000; i++) fputc('x', f);
        fputs("\"\n", f);
        fclose(f);
    }
    expect_file_refused("config_long_line_refused_with_its_number", longl, NEEDLES("long.conf:3:", "line too long"));
}

/* ---- the up-front memory check --------------------------------------------------------------------------- */
static void test_memory_check(void) {
    MgConfig c;
    base(&c);
    setenv("MG_MEMORY_LIMIT_BYTES", "300M", 1);
    int r = mg_memory_check(&c, MG_F32, MG_MEM_TRAIN, g_err, sizeof g_err);
    tu_check(r == 0, "memory_check_passes_when_it_fits", "%s", r ? g_err : "tiny config under 300 MiB");
    c.batch_size = 4096; /* 131072 tokens per micro-batch: several GiB of activations */
    const char *missing = "";
    r = mg_memory_check(&c, MG_F32, MG_MEM_TRAIN, g_err, sizeof g_err);
    tu_check(r == -1 && has_all(g_err, NEEDLES("not enough memory for this training run", "300.00 MiB is available",
                                               "MG_MEMORY_LIMIT_BYTES=300M", "activations", "batch_size", "seq_len",
                                               "batch_tokens", "AdamW moments"),
                                &missing),
             "memory_check_refuses_a_batch_too_large_naming_the_keys", "%s%s%s", g_err, *missing ? "; missing " : "",
             missing);
    base(&c);
    c.model_dim = 4096;
    c.ffn_hidden_dim = 16384;
    c.value_dim = 8192;
    c.z_dim = 1024;
    c.norm_num_groups = 64;
    r = mg_memory_check(&c, MG_F32, MG_MEM_TRAIN, g_err, sizeof g_err);
    tu_check(r == -1 && strstr(g_err, "most of it is the model") && strstr(g_err, "model_dim"),
             "memory_check_names_the_model_keys_when_the_model_is_too_large", "%s", g_err);
    r = mg_memory_check(&c, MG_F32, MG_MEM_SAMPLE, g_err, sizeof g_err);
    tu_check(r == -1 && strstr(g_err, "sampling"), "memory_check_for_sample", "%s", g_err);
    setenv("MG_MEMORY_CHECK", "0", 1);
    r = mg_memory_check(&c, MG_F32, MG_MEM_TRAIN, g_err, sizeof g_err);
    tu_check(r == 0, "memory_check_can_be_turned_off", "MG_MEMORY_CHECK=0: status %d", r);
    unsetenv("MG_MEMORY_CHECK");
    unsetenv("MG_MEMORY_LIMIT_BYTES");
    char src[1024];
    double avail = mg_memory_available(src, sizeof src);
    tu_check(avail > 0, "memory_available_measured", "%.3g bytes (%s)", avail, src);
}

/* ---- shards ------------------------------------------------------------------------------------------------ */
static void test_shards(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/s.bin", g_dir);
    int32_t tok[8] = {1, 5, 6, 7, 1, 8, 9, 10};
    uint64_t starts[2] = {0, 4};
    g_err[0] = 0;
    int r = mg_shard_write(path, tok, 8, starts, 2, 32000, 1, 0, g_err, sizeof g_err);
    MgShard s;
    tu_check(r == 0 && mg_shard_open(&s, path, 32000, g_err, sizeof g_err) == 0, "shard_round_trip", "%s", g_err);
    if (r == 0) mg_shard_close(&s);
    r = mg_shard_write(path, tok, 8, starts, 2, 32000, -7, 0, g_err, sizeof g_err);
    tu_check(r == -1 && strstr(g_err, "bos_id -7"), "shard_write_refuses_negative_bos_id", "%s", g_err);
    /* a header patched to bos_id -7, and to a bos_id past the vocabulary */
    const int32_t patch[2] = {-7, 32000};
    for (int k = 0; k < 2; k++) {
        mg_shard_write(path, tok, 8, starts, 2, 32000, 1, 0, g_err, sizeof g_err);
        FILE *f = fopen(path, "r+b");
        uint32_t v = (uint32_t)patch[k];
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
        if (f) {
            fseek(f, 20, SEEK_SET);
            fwrite(b, 1, 4, f);
            fclose(f);
        }
        r = mg_shard_open(&s, path, 32000, g_err, sizeof g_err);
        if (r == 0) mg_shard_close(&s);
        char need[64];
        snprintf(need, sizeof need, "bos_id %d is neither -1", patch[k]);
        MgShardInfo info;
        int r2 = mg_shard_read_info(path, &info, g_err + 4000, sizeof g_err - 4000);
        tu_check(r == -1 && strstr(g_err, need) && strstr(g_err, "s.bin") && r2 == -1,
                 k == 0 ? "shard_negative_bos_id_refused" : "shard_bos_id_past_vocabulary_refused", "%s", g_err);
    }
    /* a bos_id of -1 (documents not marked) stays valid */
    g_err[0] = 0;
    r = mg_shard_write(path, tok, 8, starts, 2, 32000, -1, 0, g_err, sizeof g_err);
    tu_check(r == 0 && mg_shard_open(&s, path, 32000, g_err, sizeof g_err) == 0, "shard_bos_id_minus_one_accepted",
             "%s", g_err);
    if (r == 0) mg_shard_close(&s);
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/f.bin", g_dir);
    r = mkfifo(fifo, 0600);
    int r1 = mg_shard_open(&s, fifo, 32000, g_err, sizeof g_err);
    tu_check(r == 0 && r1 == -1 && strstr(g_err, "f.bin") && strstr(g_err, "FIFO"), "shard_fifo_refused_without_blocking",
             "%s", g_err);
    r1 = mg_shard_open(&s, "/dev/zero", 32000, g_err, sizeof g_err);
    tu_check(r1 == -1 && strstr(g_err, "/dev/zero") && strstr(g_err, "character device"), "shard_dev_zero_refused", "%s",
             g_err);
    MgLoader *l = mg_loader_open_eval("/dev/zero", 32000, 16, 0, 1, g_err, sizeof g_err);
    tu_check(!l && strstr(g_err, "/dev/zero") && strstr(g_err, "character device"), "data_source_dev_zero_refused", "%s",
             g_err);
    if (l) mg_loader_close(l);
}

int main(void) {
    tu_init("test_sizes");
    snprintf(g_dir, sizeof g_dir, "/tmp/mg_test_sizes_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_key_bounds();
    test_products();
    test_sizes_at_bounds();
    test_suggestions();
    test_config_files();
    test_memory_check();
    test_shards();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) printf("# could not remove %s\n", g_dir);
    return tu_finish();
}
