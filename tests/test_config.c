/* Configuration system: parsing of every key type, comments/quotes/whitespace, command-line override
 * order, every error message (file, line, key, suggestion), cross-key validation, the exact text round
 * trip, and that every repo config loads, validates and has the parameter count the spec gives. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/info.h"
#include "../src/params.h"
#include "../src/model.h"
#include "test_util.h"

static char g_dir[256];
static char g_err[8192];

static const char *write_file(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

/* Load text as a file named `name`; returns the load status, message in g_err. */
static int load(MgConfig *c, const char *name, const char *text) {
    g_err[0] = 0;
    return mg_config_load_file(c, write_file(name, text), g_err, sizeof(g_err));
}

/* Check that loading `text` fails and that the message contains every string in `needles` (NULL-ended). */
static void expect_load_error(const char *check, const char *text, const char *const *needles) {
    MgConfig c;
    mg_config_defaults(&c);
    int r = load(&c, "bad.conf", text);
    int ok = r == -1;
    const char *missing = NULL;
    for (int i = 0; needles[i]; i++)
        if (!strstr(g_err, needles[i])) {
            ok = 0;
            missing = needles[i];
            break;
        }
    tu_check(ok, check, "status %d, message \"%s\"%s%s%s", r, g_err, missing ? "; missing \"" : "",
             missing ? missing : "", missing ? "\"" : "");
}

#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

static const char *TINY = "n_layers = 2\nmodel_dim = 64\nnum_heads = 2\nz_dim = 32\nvalue_dim = 64\n"
                          "ffn_hidden_dim = 128\nswiglu = true\ncema_ndim = 4\nnorm_num_groups = 4\n"
                          "chunk_size = 16\nseq_len = 32\nbatch_size = 4\nmax_steps = 20\nwarmup_steps = 5\n";

static void base(MgConfig *c) {
    mg_config_defaults(c);
    if (mg_config_load_text(c, TINY, "tiny", g_err, sizeof(g_err))) {
        printf("cannot load the base config: %s\n", g_err);
        exit(1);
    }
}

static void expect_invalid(const char *check, const MgConfig *c, const char *const *needles) {
    g_err[0] = 0;
    int r = mg_config_validate(c, g_err, sizeof(g_err));
    int ok = r == -1;
    const char *missing = NULL;
    for (int i = 0; needles[i]; i++)
        if (!strstr(g_err, needles[i])) {
            ok = 0;
            missing = needles[i];
            break;
        }
    tu_check(ok, check, "status %d, message \"%s\"%s%s%s", r, g_err, missing ? "; missing \"" : "",
             missing ? missing : "", missing ? "\"" : "");
}

static void test_defaults(void) {
    MgConfig c;
    mg_config_defaults(&c);
    int ok = c.cema_ndim == 16 && c.norm_eps == 1e-5 && c.rope_base == 10000 && c.chunk_size == 2048 &&
             c.dropout == 0 && c.attention_dropout == 0 && c.hidden_dropout == 0 && !c.swiglu && !c.scale_emb &&
             !c.share_emb && !strcmp(c.arch, "megalodon") && c.vocab_size == 32000 && c.beta1 == 0.9 &&
             c.beta2 == 0.95 && c.adam_eps == 1e-8 && c.weight_decay == 0.1 && c.grad_clip == 1.0 &&
             !strcmp(c.lr_schedule, "cosine") && c.warmup_init_ratio == 0 && c.min_lr_ratio == 0.1 &&
             !strcmp(c.out_dir, "runs/default") && c.seed == 1 && !strcmp(c.device, "cpu") && c.threads == 0 &&
             !strcmp(c.tokenizer, "data/tokenizer/llama2.tok") && !strcmp(c.train_data, "data/corpus/train") &&
             !strcmp(c.val_data, "data/corpus/val") && c.temperature == 1.0 && c.top_k == 0 && c.top_p == 1.0 &&
             c.max_new_tokens == 64 && c.ckpt_keep == 3 && c.eval_batches == 8 && c.log_every == 1 &&
             !strcmp(c.precision, "auto") && c.n_layers == 0 && c.model_dim == 0 && c.resume[0] == 0 &&
             c.rewarm_steps == -1;
    tu_check(ok, "defaults", "official ModelConf defaults, AdamW 0.9/0.95/1e-8, sizes 0");
    expect_invalid("defaults_need_sizes", &c, NEEDLES("set n_layers, model_dim, num_heads", "(e.g. in a config file from configs/"));
}

static void test_types(void) {
    MgConfig c;
    mg_config_defaults(&c);
    const char *text = "n_layers = 7\n"
                       "batch_tokens = 1099511627776\n"
                       "seed = 18446744073709551615\n"
                       "lr = 3.5e-4\n"
                       "rope_base = +1e5\n"
                       "swiglu = yes\n"
                       "scale_emb = TRUE\n"
                       "share_emb = 1\n"
                       "init_optimizer = no\n"
                       "lr_schedule = linear\n"
                       "precision = bf16\n"
                       "train_data = data/a:0.9,data/b:0.1\n"
                       "out_dir = \"runs/with space # not a comment \\\"q\\\" \\\\ end\"\n"
                       "tokenizer = 'single \"quoted\" \\n'\n"
                       "resume = \"\"\n"
                       "rewarm_steps = -1\n";
    int r = load(&c, "types.conf", text);
    tu_check(r == 0, "parse_status", "%s", r ? g_err : "every type loads");
    tu_check(c.n_layers == 7, "parse_int", "n_layers %d", c.n_layers);
    tu_check(c.batch_tokens == 1099511627776LL, "parse_int64", "%lld", (long long)c.batch_tokens);
    tu_check(c.seed == 18446744073709551615ULL, "parse_uint64", "%llu", (unsigned long long)c.seed);
    tu_check(c.lr == 3.5e-4 && c.rope_base == 1e5, "parse_double", "lr %.17g rope_base %g", c.lr, c.rope_base);
    tu_check(c.swiglu == 1 && c.scale_emb == 1 && c.share_emb == 1 && c.init_optimizer == 0, "parse_bool",
             "yes/TRUE/1/no -> %d %d %d %d", c.swiglu, c.scale_emb, c.share_emb, c.init_optimizer);
    tu_check(!strcmp(c.lr_schedule, "linear") && !strcmp(c.precision, "bf16"), "parse_choice", "%s %s",
             c.lr_schedule, c.precision);
    tu_check(!strcmp(c.train_data, "data/a:0.9,data/b:0.1"), "parse_bare_string", "'%s'", c.train_data);
    tu_check(!strcmp(c.out_dir, "runs/with space # not a comment \"q\" \\ end"), "parse_double_quoted",
             "'%s'", c.out_dir);
    tu_check(!strcmp(c.tokenizer, "single \"quoted\" \\n"), "parse_single_quoted", "'%s'", c.tokenizer);
    tu_check(c.resume[0] == 0 && c.rewarm_steps == -1, "parse_empty_and_negative", "resume '%s' rewarm %lld",
             c.resume, (long long)c.rewarm_steps);
}

static void test_syntax(void) {
    MgConfig c;
    mg_config_defaults(&c);
    const char *text = "# a comment line\n"
                       "\n"
                       "   \t\n"
                       "  model_dim=96   # trailing comment\r\n"
                       "\tz_dim\t=\t48\t\n"
                       "value_dim = 80#comment right after\n"
                       "   # indented comment = with equals\n"
                       "out_dir = runs/x   \n"
                       "val_data = \"v\"   # comment after quotes\n"
                       "norm_eps = 1e-6"; /* no final newline */
    int r = load(&c, "syntax.conf", text);
    tu_check(r == 0 && c.model_dim == 96 && c.z_dim == 48 && c.value_dim == 80 && !strcmp(c.out_dir, "runs/x") &&
                 !strcmp(c.val_data, "v") && c.norm_eps == 1e-6,
             "comments_whitespace_crlf", "%s d %d z %d v %d out '%s' val '%s' eps %g", r ? g_err : "ok",
             c.model_dim, c.z_dim, c.value_dim, c.out_dir, c.val_data, c.norm_eps);
    /* Loading a second file on top keeps what it does not set (a file may set a key once, but two files may
     * both set it). */
    r = load(&c, "second.conf", "model_dim = 128\n");
    tu_check(r == 0 && c.model_dim == 128 && c.z_dim == 48, "load_on_top", "d %d z %d", c.model_dim, c.z_dim);
}

static void test_errors(void) {
    expect_load_error("err_unknown_key", "n_layers = 2\n\nmodle_dim = 64\n",
                      NEEDLES("bad.conf:3:", "unknown key 'modle_dim'", "did you mean 'model_dim'?"));
    expect_load_error("err_unknown_key_suggest_substring", "layers = 2\n",
                      NEEDLES("bad.conf:1:", "unknown key 'layers'", "did you mean 'n_layers'?"));
    expect_load_error("err_unknown_key_suggest_typo", "warmup_step = 10\n",
                      NEEDLES("bad.conf:1:", "did you mean 'warmup_steps'?"));
    expect_load_error("err_missing_equals", "# header\nmodel_dim 64   # no equals\n",
                      NEEDLES("bad.conf:2:", "missing '='", "'model_dim 64'"));
    expect_load_error("err_equals_only_in_comment", "model_dim 64 # = here\n", NEEDLES("bad.conf:1:", "missing '='"));
    expect_load_error("err_missing_key", "  = 4\n", NEEDLES("bad.conf:1:", "missing key"));
    expect_load_error("err_duplicate", "seq_len = 32\nlr = 1e-3\n\nseq_len = 64\n",
                      NEEDLES("bad.conf:4:", "duplicate key 'seq_len'", "line 1"));
    expect_load_error("err_malformed_int", "n_layers = 12x\n",
                      NEEDLES("bad.conf:1:", "n_layers", "malformed integer '12x'"));
    expect_load_error("err_int_with_space", "n_layers = 1 2\n", NEEDLES("bad.conf:1:", "n_layers", "malformed integer '1 2'"));
    expect_load_error("err_int_float", "seq_len = 32.0\n", NEEDLES("seq_len", "malformed integer '32.0'"));
    expect_load_error("err_int_overflow", "model_dim = 2147483648\n", NEEDLES("bad.conf:1:", "model_dim", "too large"));
    expect_load_error("err_int64_overflow", "max_steps = 99999999999999999999\n", NEEDLES("max_steps", "too large"));
    expect_load_error("err_negative_size", "z_dim = 8\nmodel_dim = -4\n",
                      NEEDLES("bad.conf:2:", "model_dim", "-4 is out of range", ">= 0"));
    expect_load_error("err_probability", "dropout = 1.0\n", NEEDLES("bad.conf:1:", "dropout", "out of range", "[0, 1)"));
    expect_load_error("err_probability_negative", "beta2 = -0.1\n", NEEDLES("beta2", "out of range", "[0, 1)"));
    expect_load_error("err_top_p_zero", "top_p = 0\n", NEEDLES("top_p", "(0, 1]"));
    expect_load_error("err_lr_zero", "lr = 0\n", NEEDLES("lr", "must be > 0"));
    expect_load_error("err_malformed_double", "lr = 1e-3x\n", NEEDLES("bad.conf:1:", "lr", "malformed number '1e-3x'"));
    expect_load_error("err_nan", "lr = nan\n", NEEDLES("lr", "not a finite number"));
    expect_load_error("err_bool", "swiglu = maybe\n",
                      NEEDLES("bad.conf:1:", "swiglu", "'maybe' is not a bool", "true/false", "yes/no"));
    expect_load_error("err_choice", "lr_schedule = cosin\n",
                      NEEDLES("bad.conf:1:", "lr_schedule", "'cosin' is not one of: cosine, constant, linear"));
    expect_load_error("err_choice_precision", "precision = fp16\n", NEEDLES("precision", "fp32, bf16"));
    expect_load_error("err_uint_negative", "seed = -1\n", NEEDLES("seed", "malformed unsigned integer '-1'"));
    expect_load_error("err_missing_value", "n_layers =   # nothing\n", NEEDLES("bad.conf:1:", "n_layers", "missing value"));
    expect_load_error("err_unterminated_quote", "out_dir = \"runs/x\n", NEEDLES("bad.conf:1:", "out_dir", "unterminated"));
    expect_load_error("err_after_quote", "out_dir = \"runs/x\" y\n", NEEDLES("out_dir", "after the closing quote"));
    expect_load_error("err_bad_key_chars", "model.dim = 4\n", NEEDLES("bad.conf:1:", "malformed key 'model.dim'"));

    char big[3000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    char text[3100];
    snprintf(text, sizeof(text), "out_dir = %s\n", big);
    expect_load_error("err_string_too_long", text, NEEDLES("out_dir", "value too long"));

    MgConfig c;
    mg_config_defaults(&c);
    int r = mg_config_set(&c, "modeldim", "4", "command line", g_err, sizeof(g_err));
    tu_check(r == -1 && strstr(g_err, "command line: unknown key 'modeldim'") && strstr(g_err, "'model_dim'"),
             "err_set_unknown", "%s", g_err);
    r = mg_config_load_file(&c, "/nonexistent/dir/x.conf", g_err, sizeof(g_err));
    tu_check(r == -1 && strstr(g_err, "/nonexistent/dir/x.conf"), "err_missing_file", "%s", g_err);
    /* A failed set leaves the key unchanged. */
    mg_config_defaults(&c);
    mg_config_set(&c, "chunk_size", "12x", "t", g_err, sizeof(g_err));
    tu_check(c.chunk_size == 2048, "err_leaves_value", "chunk_size %d", c.chunk_size);
}

static void test_validation(void) {
    MgConfig c;
    base(&c);
    g_err[0] = 0;
    tu_check(mg_config_validate(&c, g_err, sizeof(g_err)) == 0, "valid_base", "%s", g_err);

    base(&c);
    c.n_layers = 0;
    expect_invalid("val_n_layers", &c, NEEDLES("set n_layers (e.g. in a config file from configs/"));
    base(&c);
    c.vocab_size = 0;
    expect_invalid("val_vocab", &c, NEEDLES("vocab_size"));
    base(&c);
    c.norm_num_groups = 5;
    expect_invalid("val_groups", &c, NEEDLES("model_dim 64 is not divisible by norm_num_groups 5", "e.g. 4 or 8"));
    base(&c);
    c.z_dim = 33;
    expect_invalid("val_z_heads", &c, NEEDLES("z_dim 33 is not divisible by num_heads 2", "32 or 34"));
    base(&c);
    c.value_dim = 63;
    expect_invalid("val_v_heads", &c, NEEDLES("value_dim 63 is not divisible by num_heads 2"));
    base(&c);
    c.z_dim = 18;
    expect_invalid("val_rope_even", &c, NEEDLES("z_dim/num_heads = 18/2 = 9 is odd", "RoPE", "must be even"));
    base(&c);
    c.cema_ndim = 65;
    expect_invalid("val_cema_ndim_high", &c, NEEDLES("cema_ndim = 65", "[1, 64]"));
    base(&c);
    c.cema_ndim = 0;
    expect_invalid("val_cema_ndim_zero", &c, NEEDLES("cema_ndim = 0", "[1, 64]"));
    base(&c);
    c.seq_len = 40;
    expect_invalid("val_seq_chunk", &c,
                   NEEDLES("seq_len 40 does not fit chunk_size 16", "seq_len 32, 48 or anything below 16",
                           "chunk_size 10"));
    /* Valid relations: below one chunk, or whole chunks. */
    int ok = 1;
    const int good[] = {1, 8, 15, 16, 48, 160};
    for (int i = 0; i < 6; i++) {
        base(&c);
        c.seq_len = good[i];
        if (mg_config_validate(&c, g_err, sizeof(g_err))) ok = 0;
    }
    tu_check(ok, "val_seq_chunk_ok", "seq_len 1, 8, 15, 16, 48, 160 with chunk 16 are valid");
    base(&c);
    c.batch_tokens = 1000;
    expect_invalid("val_batch_tokens", &c,
                   NEEDLES("batch_tokens 1000 is not a multiple of batch_size*seq_len = 4*32 = 128", "896 or 1024"));
    base(&c);
    c.batch_tokens = 1024;
    tu_check(mg_config_validate(&c, g_err, sizeof(g_err)) == 0, "val_batch_tokens_ok", "1024 = 8 micro-batches");
    base(&c);
    strcpy(c.lr_schedule, "exponential");
    expect_invalid("val_lr_schedule", &c, NEEDLES("lr_schedule 'exponential'", "cosine, constant, linear"));
    base(&c);
    c.warmup_steps = 21;
    expect_invalid("val_warmup", &c, NEEDLES("warmup_steps 21 exceeds max_steps 20"));
    base(&c);
    c.max_steps = 0;
    expect_invalid("val_max_steps", &c, NEEDLES("set max_steps"));
    base(&c);
    c.init_optimizer = 1;
    expect_invalid("val_init_optimizer", &c, NEEDLES("init_optimizer", "init_from"));
    base(&c);
    c.dropout = 1.0;
    expect_invalid("val_range_in_struct", &c, NEEDLES("dropout = 1 is out of range", "[0, 1)"));
    base(&c);
    c.seq_len = 40;
    c.z_dim = 33;
    expect_invalid("val_several", &c, NEEDLES("2 problems", "z_dim 33", "seq_len 40"));
}

static void test_args(void) {
    const char *path = write_file("args.conf", TINY);
    MgConfig c;
    mg_config_defaults(&c);
    char cfg_arg[600];
    snprintf(cfg_arg, sizeof(cfg_arg), "--config=%s", path);
    /* --config comes last on the line but is loaded first; later flags override earlier ones. */
    char *argv[] = {"train",    "--lr",     "1e-3",    "--model_dim", "128",  "--lr=2e-3", "--ckpt",
                    "ck.h5",    "--seq-len", "48",     "--out_dir",   "a b",  cfg_arg,     NULL};
    int argc = 13;
    const char *extra_keys[] = {"ckpt", "prompt", NULL};
    const char *extra_values[2] = {"junk", "junk"};
    mg_config_from_args(&c, argc, argv, extra_keys, extra_values);
    tu_check(c.lr == 2e-3 && c.model_dim == 128 && c.seq_len == 48 && c.n_layers == 2 && !strcmp(c.out_dir, "a b"),
             "args_override_order", "lr %g d %d seq_len %d n_layers %d out '%s'", c.lr, c.model_dim, c.seq_len,
             c.n_layers, c.out_dir);
    tu_check(extra_values[0] && !strcmp(extra_values[0], "ck.h5") && extra_values[1] == NULL, "args_extra_keys",
             "ckpt '%s' prompt %s", extra_values[0] ? extra_values[0] : "(null)", extra_values[1] ? "set" : "NULL");
}

typedef struct {
    char **argv;
    int argc;
} ArgsCtx;

static void args_child(void *vctx) {
    const ArgsCtx *a = vctx;
    MgConfig c;
    mg_config_defaults(&c);
    const char *extra[] = {"ckpt", NULL};
    const char *vals[1];
    mg_config_from_args(&c, a->argc, a->argv, extra, vals);
}

/* Run mg_config_from_args in a child; returns its exit status and its stdout+stderr in out. */
static int run_args_child(char **argv, int argc, char *out, size_t outlen) {
    ArgsCtx a = {argv, argc};
    return tu_run_child(args_child, &a, out, outlen);
}

static void expect_args_error(const char *check, char **argv, int argc, int want_status, const char *needle) {
    static char out[65536];
    int st = run_args_child(argv, argc, out, sizeof(out));
    char shown[300];
    snprintf(shown, sizeof(shown), "%.299s", out);
    for (char *p = shown; *p; p++)
        if (*p == '\n') *p = ' ';
    tu_check(st == want_status && strstr(out, needle), check, "exit %d (want %d), output \"%s\"", st, want_status,
             shown);
}

static void test_args_errors(void) {
    char *a1[] = {"info", "--n_layers", "2", "stray", NULL};
    expect_args_error("args_bare_argument", a1, 4, 1, "unexpected argument 'stray'");
    char *a2[] = {"info", "--n_layers", NULL};
    expect_args_error("args_missing_value_last", a2, 2, 1, "option --n_layers needs a value");
    char *a3[] = {"info", "--resume", "--lr", "1e-3", NULL};
    expect_args_error("args_missing_value_flag", a3, 4, 1, "option --resume needs a value");
    char *a4[] = {"info", "--n_layer", "2", NULL};
    expect_args_error("args_unknown_key", a4, 3, 1, "unknown key 'n_layer' (did you mean 'n_layers'?");
    char *a5[] = {"info", "--n_layers", "two", NULL};
    expect_args_error("args_bad_value", a5, 3, 1, "command line: n_layers: malformed integer 'two'");
    char *a6[] = {"info", "--config", "x.conf", "--config", "y.conf", NULL};
    expect_args_error("args_config_twice", a6, 5, 1, "--config given twice");
    char *a7[] = {"info", "--config", "/nonexistent.conf", NULL};
    expect_args_error("args_config_missing", a7, 3, 1, "/nonexistent.conf");
    char *a8[] = {"info", "--lr", "1e-3", "--help", NULL};
    expect_args_error("args_help", a8, 4, 0, "--ckpt VALUE");
    expect_args_error("args_help_lists_keys", a8, 4, 0, "--norm_num_groups INT");
}

/* Random valid values for every field, so the round trip covers the whole struct. */
static double rnd_pos(void) { return exp(40.0 * (tu_uniform() - 0.5)) * (1.0 + tu_uniform()); }
/* rnd_pos() scaled down below a key's upper bound (docs/config.md) */
static double rnd_pos_max(double max) {
    double v = rnd_pos();
    while (v > max) v /= 1e3;
    return v;
}
static void rnd_string(char *dst, size_t cap) {
    static const char alphabet[] = "abcXYZ019 _-/.:,#=\"'\\\t";
    size_t n = (size_t)(tu_uniform() * 40);
    if (n >= cap) n = cap - 1;
    memset(dst, 0, cap);
    for (size_t i = 0; i < n; i++) dst[i] = alphabet[(size_t)(tu_uniform() * (sizeof(alphabet) - 1))];
}
static int rnd_int(int hi) { return (int)(tu_uniform() * hi); }

static void randomize(MgConfig *c) {
    mg_config_defaults(c);
    strcpy(c->arch, "megalodon");
    c->vocab_size = rnd_int(100000);
    c->n_layers = rnd_int(100);
    c->model_dim = rnd_int(10000);
    c->num_heads = rnd_int(64);
    c->z_dim = rnd_int(5000);
    c->value_dim = rnd_int(5000);
    c->ffn_hidden_dim = rnd_int(50000);
    c->cema_ndim = rnd_int(64);
    c->norm_num_groups = rnd_int(128);
    c->chunk_size = rnd_int(65536);
    c->rope_base = rnd_pos_max(1e12);
    c->norm_eps = tu_uniform() < 0.2 ? 5e-324 : rnd_pos_max(1); /* a subnormal must survive too */
    c->swiglu = tu_uniform() < 0.5;
    c->scale_emb = tu_uniform() < 0.5;
    c->share_emb = tu_uniform() < 0.5;
    c->dropout = tu_uniform();
    c->attention_dropout = tu_uniform() < 0.3 ? 0.1 : tu_uniform();
    c->hidden_dropout = tu_uniform() / 3.0;
    rnd_string(c->train_data, sizeof(c->train_data));
    rnd_string(c->val_data, sizeof(c->val_data));
    c->seq_len = rnd_int(1 << 20);
    c->batch_size = rnd_int(1000);
    c->batch_tokens = (int64_t)(tu_uniform() * 1099511627776.0);
    c->lr = rnd_pos_max(10);
    strcpy(c->lr_schedule, tu_uniform() < 0.5 ? "linear" : "constant");
    c->warmup_steps = (int64_t)(tu_uniform() * 1e12);
    c->warmup_init_ratio = tu_uniform();
    c->min_lr_ratio = tu_uniform() < 0.2 ? 1.0 : tu_uniform();
    c->beta1 = tu_uniform();
    c->beta2 = 1.0 - 1e-3 * tu_uniform();
    c->adam_eps = rnd_pos_max(1);
    c->weight_decay = tu_uniform() < 0.2 ? 0.0 : rnd_pos_max(100);
    c->grad_clip = rnd_pos();
    c->max_steps = (int64_t)(tu_uniform() * 1e12);
    c->eval_every = (int64_t)(tu_uniform() * 1e10);
    c->eval_batches = rnd_int(1000);
    c->log_every = 1 + (int64_t)(tu_uniform() * 1e6);
    c->sample_every = rnd_int(100000);
    c->temperature = tu_uniform() < 0.2 ? 0.0 : rnd_pos_max(100);
    c->top_k = rnd_int(1000);
    c->top_p = 1.0 - tu_uniform();
    c->max_new_tokens = rnd_int(100000);
    rnd_string(c->out_dir, sizeof(c->out_dir));
    c->seed = ((uint64_t)(tu_uniform() * 4294967296.0) << 32) ^ (uint64_t)(tu_uniform() * 4294967296.0);
    c->threads = rnd_int(256);
    strcpy(c->device, tu_uniform() < 0.5 ? "cpu" : "cuda");
    strcpy(c->precision, tu_uniform() < 0.5 ? "fp32" : "bf16");
    rnd_string(c->tokenizer, sizeof(c->tokenizer));
    c->ckpt_every = (int64_t)(tu_uniform() * 1e9);
    c->ckpt_keep = rnd_int(100);
    rnd_string(c->resume, sizeof(c->resume));
    rnd_string(c->init_from, sizeof(c->init_from));
    c->init_optimizer = tu_uniform() < 0.5;
    c->rewarm_steps = (int64_t)(tu_uniform() * 1e6) - 1;
}

static void test_round_trip(void) {
    int fails = 0, iters = 200;
    char first_fail[512] = "";
    for (int it = 0; it < iters; it++) {
        MgConfig a, b;
        if (it == 0) mg_config_defaults(&a);
        else randomize(&a);
        char *text = mg_config_to_text(&a);
        /* Start b from different values, so every key must be written by the text. */
        randomize(&b);
        int r = mg_config_load_text(&b, text, "round-trip", g_err, sizeof(g_err));
        if (r || memcmp(&a, &b, sizeof(a))) {
            if (!fails++) snprintf(first_fail, sizeof(first_fail), "iteration %d: %.400s", it, r ? g_err : "struct differs");
        } else {
            char *again = mg_config_to_text(&b);
            if (strcmp(text, again) && !fails++) snprintf(first_fail, sizeof(first_fail), "text differs at %d", it);
            free(again);
        }
        free(text);
    }
    tu_check(fails == 0, "round_trip_bitwise", "%d/%d configs to_text -> load_text equal byte for byte%s%s", iters - fails,
             iters, fails ? "; first failure " : "", first_fail);

    /* mg_config_print writes the same text. */
    MgConfig c;
    base(&c);
    char *text = mg_config_to_text(&c), *printed = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&printed, &len);
    mg_config_print(&c, f);
    fclose(f);
    tu_check(!strcmp(text, printed) && strstr(text, "# ---- model ----") && strstr(text, "# ---- ckpt ----"),
             "print_matches_text", "grouped, %zu bytes", len);

    /* Every key the text names is documented in the usage, and vice versa the usage has no unknown keys. */
    char *usage = NULL;
    f = open_memstream(&usage, &len);
    mg_config_usage(f);
    fclose(f);
    int nkeys = 0, undocumented = 0;
    char missing[128] = "";
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (*line != '#' && *line != '\n') {
            char key[64];
            if (sscanf(line, "%63s", key) == 1) {
                nkeys++;
                char flag[80];
                snprintf(flag, sizeof(flag), "--%s ", key);
                if (!strstr(usage, flag)) undocumented++, snprintf(missing, sizeof(missing), "%s", key);
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    int usage_keys = 0;
    for (char *p = usage; (p = strstr(p, "\n  --")); p++) usage_keys++;
    tu_check(undocumented == 0 && nkeys == usage_keys && nkeys >= 55, "usage_lists_every_key",
             "%d keys in the text, %d in the usage%s%s", nkeys, usage_keys, undocumented ? ", missing " : "", missing);
    free(usage);
    free(printed);
    free(text);
}

static int64_t param_count(const MgConfig *c) {
    MgParamTable t;
    mg_param_table_build(c, &t);
    int64_t n = t.total;
    mg_param_table_free(&t);
    return n;
}

static void test_repo_configs(void) {
    DIR *d = opendir("configs");
    if (!d) {
        tu_check(0, "repo_configs", "cannot open configs/ (run from the repository root)");
        return;
    }
    int n = 0, bad = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".conf")) continue;
        char path[512];
        snprintf(path, sizeof(path), "configs/%s", e->d_name);
        MgConfig c;
        mg_config_defaults(&c);
        int r = mg_config_load_file(&c, path, g_err, sizeof(g_err));
        if (!r) r = mg_config_validate(&c, g_err, sizeof(g_err));
        char name[80];
        snprintf(name, sizeof(name), "repo_config_%.*s", (int)(len - 5), e->d_name);
        tu_check(r == 0, name, "%s", r ? g_err : "loads and validates");
        bad += r != 0;
        n++;
        const struct {
            const char *file;
            int64_t params;
        } expect[] = {{"mega200m.conf", 220627968LL}, {"mega1.3b.conf", 1342832640LL}, {"megalodon-7b.conf", 7385817088LL}};
        for (int i = 0; i < 3; i++)
            if (!r && !strcmp(e->d_name, expect[i].file)) {
                snprintf(name, sizeof(name), "params_%.*s", (int)(len - 5), e->d_name);
                int64_t got = param_count(&c);
                tu_check(got == expect[i].params, name, "%lld parameters, spec %lld", (long long)got,
                         (long long)expect[i].params);
            }
        if (!r && !strcmp(e->d_name, "small.conf")) {
            int64_t got = param_count(&c);
            tu_check(got >= 10000000 && got <= 20000000, "params_small", "%lld in [10M, 20M]", (long long)got);
        }
    }
    closedir(d);
    tu_check(n >= 5 && bad == 0, "repo_configs_all", "%d configs", n);
}

/* Activations, measured for real: the bytes a model actually allocates through its backend when it first
 * runs a (B, L) training step, against info's estimate for the same step. */
static double measured_activation_bytes(const MgConfig *c, int B, int L) {
    const MgBackend *be = tu_counting_backend(&mg_cpu_backend_f32);
    MgModel *m = mg_model_create(c, be);
    mg_model_init_weights(m, 1);
    const int64_t T = (int64_t)B * L;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)T), *tgt = malloc(sizeof(int32_t) * (size_t)T);
    for (int64_t i = 0; i < T; i++) tok[i] = tgt[i] = (int32_t)((i * 7919) % c->vocab_size);
    const size_t before = tu_counting_stats().live;
    int64_t n = 0;
    mg_model_forward_backward(m, tok, tgt, B, L, 1.0 / (double)T, NULL, NULL, NULL, &n);
    const size_t after = tu_counting_stats().live;
    mg_model_free(m);
    free(tok);
    free(tgt);
    return (double)(after - before);
}

static void test_activation_model(void) {
    MgConfig c;
    base(&c);
    double got = mg_activation_bytes(&c, 4, 32, 4), want = measured_activation_bytes(&c, 4, 32);
    tu_check(got == want && got > 0, "activation_bytes_equal_what_a_training_step_allocates",
             "info %.0f bytes, a real step allocated %.0f", got, want);
    double big = mg_activation_bytes(&c, 8, 64, 4), bigm = measured_activation_bytes(&c, 8, 64);
    tu_check(big == bigm, "activation_bytes_equal_what_a_training_step_allocates_8x64",
             "info %.0f bytes, a real step allocated %.0f", big, bigm);
    /* bf16 halves the stored values (the fp32 loss block stays) */
    double half = mg_activation_bytes(&c, 4, 32, 2);
    tu_check(half < 0.55 * got && half > 0.45 * got, "activation_bytes_bf16_about_half", "%.0f vs %.0f", half, got);
    /* linear in tokens once the head block is full: 2x tokens -> 2x the token-proportional part */
    double a1 = mg_activation_bytes(&c, 32, 32, 4), a2 = mg_activation_bytes(&c, 64, 32, 4),
           a3 = mg_activation_bytes(&c, 128, 32, 4);
    tu_check(fabs((a3 - a2) - 2 * (a2 - a1)) <= 64.0 * 60, "activation_bytes_linear_in_tokens",
             "%.0f, %.0f, %.0f bytes for 1024, 2048, 4096 tokens", a1, a2, a3);
}

int main(void) {
    tu_init("test_config");
    snprintf(g_dir, sizeof(g_dir), "/tmp/mg_test_config_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_defaults();
    test_types();
    test_syntax();
    test_errors();
    test_validation();
    test_args();
    test_args_errors();
    test_round_trip();
    test_repo_configs();
    test_activation_model();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd)) printf("# could not remove %s\n", g_dir);
    return tu_finish();
}
