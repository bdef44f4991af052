/* build/megalodon: the one command-line tool. `megalodon <subcommand> [--key value ...]`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/cpu/cpu_ops.h"
#include "../kernels/ops.h"
#include "cli.h"
#include "../parallel/transport.h"
#include "launch.h"

static const MgCommand COMMANDS[] = {
    {"train", cmd_train, "train a model: --config F [--key value ...] (docs/training.md)"},
    {"eval", cmd_eval, "validation loss of a checkpoint: --ckpt F --data PATH"},
    {"eval-positions", cmd_eval_positions, "validation loss by position in a context of --context N tokens (may exceed seq_len)"},
    {"passkey", cmd_passkey, "synthetic pass-key retrieval accuracy by depth and context length"},
    {"sample", cmd_sample, "generate text from a checkpoint: --ckpt F --prompt TEXT"},
    {"features", cmd_features, "print what this build was compiled with (BLAS, OpenMP, MPI, HDF5, CUDA)"},
    {"info", cmd_info, "parameter count, FLOPs and memory of a config, without allocating the model"},
    {"prepare", cmd_prepare, "tokenize text files into train/val token shards (docs/data.md)"},
    {"tokenize", cmd_tokenize, "encode text to token ids, or decode ids to text"},
    {"bench", cmd_bench, "training-step throughput (tokens/s, MFU) and peak memory on random tokens"},
    {"ckpt", cmd_ckpt, "inspect checkpoints: info FILE, diff A B (and bench: save/load MB/s)"},
    {"import", cmd_import, "weights in: a Hugging Face Llama directory or official Megalodon state dicts -> checkpoint"},
    {"export", cmd_export, "weights out: a llama checkpoint -> a Hugging Face directory (safetensors + config.json)"},
    {"plot", cmd_plot, "PNG curves of runs' log.jsonl: RUN_DIR... (runs scripts/plot_runs.py)"},
};
static const int NCOMMANDS = (int)(sizeof(COMMANDS) / sizeof(COMMANDS[0]));

static void usage(FILE *f) {
    fprintf(f, "usage: megalodon <command> [options]\n\ncommands:\n");
    for (int i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-14s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\n`megalodon <command> --help` describes a command's options.\n");
}

int cmd_features(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("BLAS:   %s\n", cpu_blas_info());
#ifdef _OPENMP
    printf("OpenMP: yes (%d threads)\n", mg_get_threads());
#else
    printf("OpenMP: no\n");
#endif
#ifdef MG_HAVE_MPI
    printf("MPI:    yes\n");
#else
    printf("MPI:    no\n");
#endif
#ifdef MG_HAVE_HDF5
    printf("HDF5:   yes\n");
#else
    printf("HDF5:   no (checkpoints disabled)\n");
#endif
    printf("CUDA:   not yet (CPU backends: %s, %s)\n", mg_cpu_backend_f32.name, mg_cpu_backend_f64.name);
    return 0;
}

/* `megalodon plot ARGS`: runs scripts/plot_runs.py ARGS of the source tree this binary sits in
 * (BUILD_DIR/megalodon -> BUILD_DIR/../scripts/plot_runs.py) with Debian's /usr/bin/python3 (which has
 * python3-matplotlib), or the python3 on PATH where there is none. */
int cmd_plot(int argc, char **argv) {
    char root[4096], script[4200];
    ssize_t n = readlink("/proc/self/exe", root, sizeof root - 1);
    if (n <= 0 || n >= (ssize_t)sizeof root - 1) {
        fprintf(stderr, "error: plot: cannot find this binary's path (/proc/self/exe); run scripts/plot_runs.py\n");
        return 1;
    }
    root[n] = 0;
    for (int up = 0; up < 2; up++) { /* .../build/megalodon -> ... */
        char *slash = strrchr(root, '/');
        if (slash) *slash = 0;
    }
    snprintf(script, sizeof script, "%s/scripts/plot_runs.py", root[0] ? root : "");
    if (access(script, R_OK)) {
        fprintf(stderr, "error: plot: cannot read %s (%s): `megalodon plot` runs the script of the source tree "
                "whose build directory holds this binary; run scripts/plot_runs.py from the repository\n",
                script, strerror(errno));
        return 1;
    }
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char **args = malloc(((size_t)argc + 2) * sizeof *args);
    if (!args) return 1;
    args[0] = (char *)python;
    args[1] = script;
    for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
    args[argc + 1] = NULL;
    fflush(NULL);
    execvp(python, args);
    fprintf(stderr, "error: plot: cannot run %s: %s (install python3 and python3-matplotlib: make deps)\n", python,
            strerror(errno));
    free(args);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], COMMANDS[i].name)) continue;
        /* A launch as several processes (mpirun -np 2, srun -n 2) is a distributed run of `train` in a build
         * with MPI (docs/parallelism.md); every other command that works on files refuses it before anything
         * is written, and so does train in a build without MPI; features, info and tokenize only print. */
        char err[1024];
        const int train = !strcmp(argv[1], "train");
        if (strcmp(argv[1], "features") && strcmp(argv[1], "info") && strcmp(argv[1], "tokenize") &&
            !(train && mg_transport_mpi_available()) &&
            mg_launch_require_single(argv[1], train, err, sizeof err)) {
            if (err[0]) fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        return COMMANDS[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "error: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
