/* Files are created without following planted symlinks (src/fsutil.h) and nothing outside out_dir is
 * read as a checkpoint or written: the primitives themselves, the out_dir write probe, checkpoint temp
 * files, `latest` (written and read), and the detection of a multi-process launch (src/launch.h).
 * Every symlink points at a "victim" file outside the directory, which must stay byte-for-byte unchanged.
 * docs/training.md, "What is never written". */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/checkpoint.h"
#include "../src/common.h"
#include "../src/config.h"
#include "../src/fsutil.h"
#include "../src/launch.h"
#include "../src/params.h"
#include "test_util.h"

static char g_dir[] = "/tmp/mg_test_fsutil.XXXXXX";
static char g_victim[700]; /* outside every directory the code under test writes to */
static const char VICTIM_TEXT[] = "victim: must never change\n";

static char *path_in(const char *dir, const char *name) {
    static char buf[8][700];
    static int k = 0;
    char *p = buf[k++ & 7];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) mg_fatal("cannot write %s", path);
    close(fd);
}

/* The file's contents ("" if it cannot be read), malloc'ed. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    char *buf = mg_calloc(1, 1 << 16);
    if (f) {
        size_t n = fread(buf, 1, (1 << 16) - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    return buf;
}

static int victim_intact(void) {
    char *t = read_text(g_victim);
    int ok = !strcmp(t, VICTIM_TEXT);
    free(t);
    return ok;
}

static int is_link(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
}

static int is_regular(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void plant(const char *link) {
    unlink(link);
    if (symlink(g_victim, link) != 0) mg_fatal("symlink %s: %s", link, strerror(errno));
}

static void test_primitives(void) {
    char d[600], err[2048] = "";
    snprintf(d, sizeof d, "%s/prim", g_dir);
    mkdir(d, 0755);

    /* exclusive creation: an existing symlink (to a file, or dangling) is never opened */
    char *p = path_in(d, "new.txt");
    plant(p);
    int fd = mg_fs_create_excl(p);
    int e = errno;
    tu_check(fd < 0 && e == EEXIST && victim_intact(), "create_excl_refuses_symlink", "fd %d errno %d", fd, e);
    if (fd >= 0) close(fd);
    unlink(p);
    if (symlink(path_in(d, "missing-target"), p) != 0) mg_fatal("symlink");
    fd = mg_fs_create_excl(p);
    tu_check(fd < 0 && errno == EEXIST && access(path_in(d, "missing-target"), F_OK) != 0,
             "create_excl_refuses_dangling_symlink", "fd %d", fd);
    if (fd >= 0) close(fd);
    unlink(p);

    /* temp names: unique, next to the final name, ending in .tmp */
    char *a = mg_fs_temp_name(p), *b = mg_fs_temp_name(p);
    size_t n = strlen(p);
    tu_check(strcmp(a, b) && !strncmp(a, p, n) && a[n] == '.' && strlen(a) == n + 17 && !strcmp(a + n + 13, ".tmp"),
             "temp_names_unique", "%s %s", a, b);
    free(a);
    free(b);

    /* whole-file replacement through temp + rename replaces a symlink, never writes through it */
    plant(p);
    int rc = mg_fs_write_file_atomic(p, "new\n", 4, 1, err, sizeof err);
    char *got = read_text(p);
    tu_check(rc == 0 && is_regular(p) && !strcmp(got, "new\n") && victim_intact() && tu_count_files(d, "\\.tmp$", 1) == 0,
             "write_atomic_replaces_symlink", "rc %d %s", rc, err);
    free(got);
    plant(p);
    MgAtomicFile af;
    FILE *f = mg_fs_atomic_open(&af, p, err, sizeof err);
    if (f) fputs("stream\n", f);
    rc = f ? mg_fs_atomic_commit(&af, 0, err, sizeof err) : -1;
    got = read_text(p);
    tu_check(rc == 0 && is_regular(p) && !strcmp(got, "stream\n") && victim_intact() && tu_count_files(d, "\\.tmp$", 1) == 0,
             "atomic_stream_replaces_symlink", "rc %d %s", rc, err);
    free(got);
    plant(p);
    f = mg_fs_atomic_open(&af, p, err, sizeof err);
    if (f) fputs("dropped\n", f);
    mg_fs_atomic_abort(&af);
    tu_check(is_link(p) && victim_intact() && tu_count_files(d, "\\.tmp$", 1) == 0, "atomic_abort_leaves_nothing", "ok");
    plant(p);
    f = mg_fs_fopen_replace(p, err, sizeof err);
    if (f) {
        fputs("log\n", f);
        fclose(f);
    }
    got = read_text(p);
    tu_check(f && is_regular(p) && !strcmp(got, "log\n") && victim_intact() && tu_count_files(d, "\\.tmp$", 1) == 0,
             "fopen_replace_replaces_symlink", "%s", err);
    free(got);

    /* appending: a regular file in place, a missing one created, anything else refused by name */
    f = mg_fs_open_append(p, err, sizeof err);
    if (f) {
        fputs("more\n", f);
        fclose(f);
    }
    got = read_text(p);
    tu_check(f && !strcmp(got, "log\nmore\n"), "append_to_regular_file", "%s", got);
    free(got);
    char *q = path_in(d, "fresh.log");
    f = mg_fs_open_append(q, err, sizeof err);
    if (f) fclose(f);
    tu_check(f && is_regular(q), "append_creates_missing_file", "%s", err);
    plant(p);
    err[0] = 0;
    f = mg_fs_open_append(p, err, sizeof err);
    tu_check(!f && strstr(err, p) && strstr(err, "symbolic link") && victim_intact(), "append_refuses_symlink", "%s",
             err);
    if (f) fclose(f);
    char *fifo = path_in(d, "fifo");
    mkfifo(fifo, 0600);
    err[0] = 0;
    f = mg_fs_open_append(fifo, err, sizeof err); /* must not block waiting for a reader */
    tu_check(!f && strstr(err, "FIFO"), "append_refuses_fifo_without_blocking", "%s", err);
    if (f) fclose(f);
    err[0] = 0;
    fd = mg_fs_open_regular(p, err, sizeof err);
    tu_check(fd < 0 && strstr(err, "symbolic link"), "open_regular_refuses_symlink", "%s", err);
    if (fd >= 0) close(fd);
}

static void test_launch(void) {
    static const char *const all[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK",
                                      "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "PMIX_RANK",
                                      "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_NTASKS", NULL};
    static const struct {
        const char *env; /* "NAME=VALUE NAME=VALUE" */
        int several, rank0_message;
    } cases[] = {
        {"", 0, 0},
        {"OMPI_COMM_WORLD_SIZE=1 OMPI_COMM_WORLD_RANK=0", 0, 0},
        {"OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0", 1, 1},
        {"OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1", 1, 0},
        {"PMI_SIZE=4 PMI_RANK=0", 1, 1},
        {"PMI_SIZE=1 PMI_RANK=0", 0, 0},
        {"MV2_COMM_WORLD_SIZE=3 MV2_COMM_WORLD_RANK=0", 1, 1},
        {"PMIX_RANK=1", 1, 0},
        {"PMIX_RANK=0", 0, 0},
        {"SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0 SLURM_NTASKS=2", 1, 1},
        {"SLURM_STEP_NUM_TASKS=1 SLURM_PROCID=0 SLURM_NTASKS=1", 0, 0},
        /* a batch script of a job with --ntasks=4 running megalodon directly: one process */
        {"SLURM_NTASKS=4 SLURM_PROCID=0", 0, 0},
        {"OMPI_COMM_WORLD_SIZE=junk", 0, 0},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int k = 0; all[k]; k++) unsetenv(all[k]);
        char buf[200];
        snprintf(buf, sizeof buf, "%s", cases[i].env);
        for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
            char *eq = strchr(tok, '=');
            *eq = 0;
            setenv(tok, eq + 1, 1);
        }
        MgLaunch l;
        char err[1024] = "x";
        int several = mg_launch_detect(&l);
        int rc = mg_launch_require_single("eval", 0, err, sizeof err);
        char err2[1024] = "x";
        int rc2 = mg_launch_require_single("train", 1, err2, sizeof err2);
        int good = several == cases[i].several && (rc != 0) == cases[i].several && (rc2 != 0) == cases[i].several &&
                   (cases[i].rank0_message ? strstr(err, "runs in one process") && strstr(err, "processes") != NULL &&
                                                 strstr(err2, "has no MPI") != NULL
                                           : !cases[i].several || (err[0] == 0 && err2[0] == 0));
        if (!good) printf("# launch case '%s': detect %d rc %d err '%s'\n", cases[i].env, several, rc, err);
        ok &= good;
    }
    for (int k = 0; all[k]; k++) unsetenv(all[k]);
    tu_check(ok, "launch_detection", "%zu environments (Open MPI, MPICH/PMI, MVAPICH2, PMIx, Slurm)",
             sizeof cases / sizeof cases[0]);
}

#ifdef MG_HAVE_HDF5
typedef struct {
    MgParamTable t;
    float *p, *m, *v;
} Model;

static void model_init(Model *s) {
    MgConfig c;
    memset(&c, 0, sizeof c);
    snprintf(c.arch, sizeof c.arch, "megalodon");
    c.vocab_size = 64;
    c.n_layers = 1;
    c.model_dim = 16;
    c.num_heads = 2;
    c.z_dim = 8;
    c.value_dim = 32;
    c.ffn_hidden_dim = 48;
    c.cema_ndim = 4;
    c.norm_num_groups = 2;
    c.chunk_size = 16;
    c.seq_len = 32;
    c.swiglu = 1;
    mg_param_table_build(&c, &s->t);
    size_t n = (size_t)s->t.total;
    s->p = mg_malloc(n * 4);
    s->m = mg_malloc(n * 4);
    s->v = mg_malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        s->p[i] = (float)tu_normal();
        s->m[i] = 0.001f * (float)i;
        s->v[i] = 1e-6f;
    }
}

static void model_free(Model *s) {
    free(s->p);
    free(s->m);
    free(s->v);
    mg_param_table_free(&s->t);
}

static int save_step(const char *dir, const Model *s, int64_t step, char *err, size_t errlen) {
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    meta.step = step;
    meta.tokens_seen = step * 64; /* a real run trains on tokens every step (the reader checks it) */
    mg_ckpt_meta_set_config(&meta, "arch = megalodon\n");
    int rc = mg_ckpt_dir_save(dir, &s->t, s->p, s->m, s->v, &meta, 0, NULL, 0, err, errlen);
    mg_ckpt_meta_free(&meta);
    return rc;
}

static void test_run_dir(const Model *s) {
    char d[600], err[4096] = "", got[1024];
    snprintf(d, sizeof d, "%s/run", g_dir);
    mkdir(d, 0755);

    /* the write probe: a symlink at the name earlier versions used (".megalodon_write_test.<pid>") and at
     * the fixed prefix is not followed */
    char old_probe[64];
    snprintf(old_probe, sizeof old_probe, ".megalodon_write_test.%ld", (long)getpid());
    plant(path_in(d, old_probe));
    plant(path_in(d, ".megalodon_write_test"));
    int rc = mg_ckpt_dir_check_writable(d, 0, err, sizeof err);
    tu_check(rc == 0 && victim_intact() && is_link(path_in(d, old_probe)) && tu_count_files(d, "\\.tmp$", 1) == 0,
             "write_probe_does_not_follow_symlinks", "rc %d %s", rc, err);
    unlink(path_in(d, old_probe));
    unlink(path_in(d, ".megalodon_write_test"));

    /* a save with symlinks planted at every name it writes: the final checkpoint, its temp names (this
     * version's are unpredictable; earlier versions' fixed ones), `latest` and `latest.tmp` */
    static const char *const names[] = {"ckpt_00000010.h5", "ckpt_00000010.h5.tmp", "latest", "latest.tmp", NULL};
    for (int i = 0; names[i]; i++) plant(path_in(d, names[i]));
    rc = save_step(d, s, 10, err, sizeof err);
    char *latest = read_text(path_in(d, "latest"));
    MgCkptMeta back;
    float *p2 = mg_calloc((size_t)s->t.total, 4);
    int loads = rc == 0 && mg_ckpt_load(path_in(d, "ckpt_00000010.h5"), &s->t, p2, NULL, NULL, &back, err,
                                        sizeof err) == 0;
    if (loads) mg_ckpt_meta_free(&back);
    tu_check(rc == 0 && victim_intact() && is_regular(path_in(d, "ckpt_00000010.h5")) &&
                 is_regular(path_in(d, "latest")) && !strcmp(latest, "ckpt_00000010.h5\n") && loads &&
                 !memcmp(p2, s->p, (size_t)s->t.total * 4) && tu_count_files(d, "\\.tmp$", 1) == 0,
             "save_replaces_planted_symlinks_never_writes_through", "rc %d %s; latest '%s'", rc, err, latest);
    free(latest);
    free(p2);

    /* `latest` naming a file outside out_dir (a path with '/', '..', an absolute path) or a symlink: refused */
    char outside[600];
    snprintf(outside, sizeof outside, "%s/outside", g_dir);
    mkdir(outside, 0755);
    rc = save_step(outside, s, 20, err, sizeof err); /* a valid checkpoint elsewhere, newer than the run's */
    static const char *const bad[] = {"../outside/ckpt_00000020.h5", NULL /* absolute, below */, "..", "sub/x.h5"};
    char abs[700];
    snprintf(abs, sizeof abs, "%s/ckpt_00000020.h5", outside);
    int ok = rc == 0;
    for (int i = 0; i < 4; i++) {
        char line[800];
        snprintf(line, sizeof line, "%s\n", bad[i] ? bad[i] : abs);
        unlink(path_in(d, "latest"));
        write_text(path_in(d, "latest"), line);
        err[0] = got[0] = 0;
        rc = mg_ckpt_dir_latest(d, got, sizeof got, err, sizeof err);
        int good = rc == -1 && got[0] == 0 && strstr(err, "outside out_dir") && strstr(err, "delete");
        if (!good) printf("# latest '%s': rc %d got '%s' err '%s'\n", bad[i] ? bad[i] : abs, rc, got, err);
        ok &= good;
    }
    tu_check(ok, "latest_naming_a_path_outside_out_dir_refused", "%s", err);
    /* latest names a symlink in out_dir that leads outside */
    if (symlink(abs, path_in(d, "ckpt_00000030.h5")) != 0) mg_fatal("symlink");
    unlink(path_in(d, "latest"));
    write_text(path_in(d, "latest"), "ckpt_00000030.h5\n");
    err[0] = got[0] = 0;
    rc = mg_ckpt_dir_latest(d, got, sizeof got, err, sizeof err);
    tu_check(rc == -1 && got[0] == 0 && strstr(err, "symbolic link"), "latest_naming_a_symlink_refused", "rc %d %s",
             rc, err);
    /* `latest` itself a symlink: refused */
    unlink(path_in(d, "latest"));
    if (symlink(path_in(outside, "latest"), path_in(d, "latest")) != 0) mg_fatal("symlink");
    err[0] = got[0] = 0;
    rc = mg_ckpt_dir_latest(d, got, sizeof got, err, sizeof err);
    tu_check(rc == -1 && got[0] == 0 && strstr(err, "symbolic link") && strstr(err, "latest"),
             "latest_itself_a_symlink_refused", "rc %d %s", rc, err);
    /* without `latest`, the scan skips the symlinked (newer) ckpt_00000030.h5 for the run's own step 10 */
    unlink(path_in(d, "latest"));
    got[0] = 0;
    rc = mg_ckpt_dir_latest(d, got, sizeof got, err, sizeof err);
    tu_check(rc == 0 && !strcmp(got, path_in(d, "ckpt_00000010.h5")), "scan_skips_symlinked_checkpoint",
             "rc %d got '%s'", rc, got);
    /* the list --resume auto falls back on (a damaged newest checkpoint) skips it as well */
    char **list = NULL;
    int n = mg_ckpt_dir_list(d, &list);
    int only_own = n >= 1;
    for (int i = 0; i < n; i++) {
        only_own &= strstr(list[i], "ckpt_00000030.h5") == NULL;
        free(list[i]);
    }
    free(list);
    tu_check(only_own, "resume_fallback_list_skips_symlinked_checkpoint", "%d candidates", n);
}
#endif

int main(void) {
    tu_init("test_fsutil");
    if (!mkdtemp(g_dir)) mg_fatal("mkdtemp: %s", strerror(errno));
    char vdir[600];
    snprintf(vdir, sizeof vdir, "%s/victim-dir", g_dir);
    mkdir(vdir, 0755);
    snprintf(g_victim, sizeof g_victim, "%s/victim.txt", vdir);
    write_text(g_victim, VICTIM_TEXT);
    test_primitives();
    test_launch();
#ifdef MG_HAVE_HDF5
    Model s;
    model_init(&s);
    test_run_dir(&s);
    model_free(&s);
#else
    tu_skip("fsutil_checkpoints", "this build has no HDF5: the checkpoint-directory checks need it; install "
                                  "libhdf5-dev (make deps) and rebuild");
#endif
    tu_check(victim_intact(), "victim_file_unchanged_at_the_end", "%s", g_victim);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    return tu_finish();
}
