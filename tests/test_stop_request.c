/* The stop request (src/signals.h) in-process: a real SIGINT/SIGTERM is recorded instead of ending the
 * process, a second one would (the handler resets itself), and the loops that poll the request stop:
 * checkpoint loading between tensors (nothing put) and the decoder between pieces. tests/test_signals.sh
 * interrupts the commands themselves (eval, sample, prepare, train). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/checkpoint.h"
#include "../src/common.h"
#include "../src/model.h"
#include "../src/params.h"
#include "../src/run.h"
#include "../src/signals.h"
#include "test_util.h"

static int handler_is_default(int sig) {
    struct sigaction sa;
    sigaction(sig, NULL, &sa);
    return sa.sa_handler == SIG_DFL;
}

static void test_handlers(void) {
    const int sigs[2] = {SIGINT, SIGTERM};
    const int status[2] = {130, 143};
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "SIGTERM" : "SIGINT";
        mg_signals_install();
        int before = mg_stop_requested();
        raise(sigs[k]); /* would end the process without the handler */
        char what[64];
        snprintf(what, sizeof what, "stop_request %s", name);
        tu_check(before == 0 && mg_stop_requested() == sigs[k] && mg_stop_exit_status() == status[k] &&
                     !strcmp(mg_stop_signal_name(), name),
                 what, "recorded %d (want %d), exit status %d (want %d), name %s", mg_stop_requested(), sigs[k],
                 mg_stop_exit_status(), status[k], mg_stop_signal_name());
        snprintf(what, sizeof what, "second %s ends the process", name);
        tu_check(handler_is_default(sigs[k]), what, "the handler reset itself to the default action");
        mg_signals_reset();
        snprintf(what, sizeof what, "reset after %s", name);
        tu_check(mg_stop_requested() == 0 && handler_is_default(SIGINT) && handler_is_default(SIGTERM), what,
                 "request cleared, default actions restored");
    }
}

#ifdef MG_HAVE_HDF5
static void test_ckpt_load(const char *dir) {
    MgConfig c, tiny;
    mg_config_defaults(&c); /* a complete config, stored in the checkpoint for mg_model_from_checkpoint */
    tu_tiny_megalodon(&tiny, 97);
    c.vocab_size = tiny.vocab_size;
    c.n_layers = tiny.n_layers;
    c.model_dim = tiny.model_dim;
    c.num_heads = tiny.num_heads;
    c.z_dim = tiny.z_dim;
    c.value_dim = tiny.value_dim;
    c.ffn_hidden_dim = tiny.ffn_hidden_dim;
    c.cema_ndim = tiny.cema_ndim;
    c.norm_num_groups = tiny.norm_num_groups;
    c.chunk_size = tiny.chunk_size;
    c.seq_len = tiny.seq_len;
    c.batch_size = 1;
    c.max_steps = 10;
    MgParamTable t;
    mg_param_table_build(&c, &t);
    const size_t n = (size_t)t.total;
    float *p = mg_malloc(n * 4), *m = mg_malloc(n * 4), *v = mg_malloc(n * 4), *q = mg_calloc(n, 4);
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)tu_normal();
        m[i] = (float)(1e-3 * tu_normal());
        v[i] = (float)(1e-6 * tu_uniform());
    }
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/stop.h5", dir);
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    meta.step = 7;
    meta.tokens_seen = 7 * 64; /* every step trains on tokens (the reader checks it) */
    char *text = mg_config_to_text(&c);
    mg_ckpt_meta_set_config(&meta, text);
    free(text);
    if (mg_ckpt_save(path, &t, p, m, v, &meta, err, sizeof err)) mg_fatal("saving %s: %s", path, err);
    mg_ckpt_meta_free(&meta);

    mg_signals_install();
    raise(SIGINT);
    err[0] = 0;
    int rc = mg_ckpt_load(path, &t, q, NULL, NULL, NULL, err, sizeof err);
    int untouched = 1;
    for (size_t i = 0; i < n && untouched; i++) untouched = q[i] == 0.0f;
    tu_check(rc == -1 && strstr(err, "interrupted by SIGINT") && untouched, "ckpt load stops on SIGINT",
             "rc %d, \"%s\", arrays untouched: %s", rc, err, untouched ? "yes" : "no");
    mg_signals_reset();
    rc = mg_ckpt_load(path, &t, q, NULL, NULL, NULL, err, sizeof err);
    tu_check(rc == 0 && !memcmp(p, q, n * 4), "ckpt load after reset", "rc %d, weights equal: %s", rc,
             rc == 0 && !memcmp(p, q, n * 4) ? "yes" : "no");

    /* eval and sample build their model through mg_model_from_checkpoint: NULL (and the model freed, which
     * the leak-checking build verifies) when the load was interrupted */
    static const char *const extra[] = {"ckpt", NULL};
    const char *vals[1] = {0};
    char *argv[] = {"eval", "--ckpt", path, NULL};
    MgConfig got;
    mg_stop_request(SIGINT);
    MgModel *model = mg_model_from_checkpoint("eval", 3, argv, extra, vals, &got);
    tu_check(model == NULL, "model from checkpoint: NULL on SIGINT", "%s", model ? "a model" : "NULL");
    mg_signals_reset();
    model = mg_model_from_checkpoint("eval", 3, argv, extra, vals, &got);
    tu_check(model != NULL, "model from checkpoint after reset", "%s", model ? "a model" : "NULL");
    if (model) mg_model_free(model);
    remove(path);
    free(p);
    free(m);
    free(v);
    free(q);
    mg_param_table_free(&t);
}
#endif

static void test_decoder(void) {
    MgConfig c;
    tu_tiny_megalodon(&c, 61);
    MgModel *m = mg_model_create(&c, &mg_cpu_backend_f32);
    mg_model_init_weights(m, 3);
    MgDecoder *d = mg_decoder_create(m, 1);
    int32_t ids[40];
    tu_random_ids(ids, 40, 61);
    mg_stop_request(SIGTERM);
    mg_decoder_step(d, ids, 40, NULL);
    int64_t stopped = mg_decoder_position(d);
    mg_signals_reset();
    mg_decoder_step(d, ids, 40, NULL);
    int64_t after = mg_decoder_position(d);
    tu_check(stopped == 0 && after == 40, "decoder stops between pieces", "position %lld with a stop request "
             "(want 0), %lld after it was cleared (want 40)", (long long)stopped, (long long)after);
    mg_decoder_free(d);
    mg_model_free(m);
}

int main(void) {
    tu_init("test_stop_request");
    test_handlers();
    test_decoder();
#ifdef MG_HAVE_HDF5
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/mg_test_stop.XXXXXX");
    if (!mkdtemp(dir)) mg_fatal("mkdtemp: %s", strerror(errno));
    test_ckpt_load(dir);
    rmdir(dir);
#else
    tu_skip("ckpt load stops on SIGINT", "this build has no HDF5; install libhdf5-dev (make deps) and rebuild");
#endif
    return tu_finish();
}
