/* Detecting a multi-process launch from the launcher's environment variables (launch.h). */
#include "launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* A non-negative integer environment variable; -1 when unset or not a number. */
static long env_int(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > 100000000L) return -1;
    return v;
}

int mg_launch_detect(MgLaunch *l) {
    /* size_only: the rank variable alone does not mean several processes (Slurm sets SLURM_PROCID=0..
     * in a batch script too; only srun sets SLURM_STEP_NUM_TASKS) */
    static const struct {
        const char *size, *rank, *launcher;
        int size_only;
    } vars[] = {
        {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "mpirun (Open MPI)", 0},
        {"PMI_SIZE", "PMI_RANK", "mpirun/mpiexec (MPICH, Intel MPI or PMI)", 0},
        {"MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "mpirun (MVAPICH2)", 0},
        {NULL, "PMIX_RANK", "a PMIx launcher (mpirun, prterun or srun)", 0},
        {"SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun (Slurm)", 1},
    };
    l->size = 1;
    l->rank = 0;
    l->launcher = NULL;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        long size = vars[i].size ? env_int(vars[i].size) : -1, rank = env_int(vars[i].rank);
        if (size > 1 || (rank > 0 && !vars[i].size_only)) {
            l->size = size > 1 ? (int)size : 0;
            l->rank = rank > 0 ? (int)rank : 0;
            l->launcher = vars[i].launcher;
            return 1;
        }
    }
    return 0;
}

int mg_launch_require_single(const char *cmd, int distributed, char *err, size_t errlen) {
    MgLaunch l;
    if (!mg_launch_detect(&l)) return 0;
    if (l.rank > 0) { /* rank 0 says it, once */
        if (errlen) err[0] = 0;
        return -1;
    }
    char n[32];
    if (l.size > 0) snprintf(n, sizeof n, "%d processes", l.size);
    else snprintf(n, sizeof n, "several processes");
    if (distributed)
        return mg_errf(err, errlen,
                       "megalodon %s: started as %s by %s, but this build has no MPI, so the processes cannot form "
                       "one run and would all write the same files: install Open MPI (scripts/setup.sh does) and "
                       "rebuild (make), or run one process (mpirun -np 1, srun -n 1)",
                       cmd, n, l.launcher);
    return mg_errf(err, errlen,
                   "megalodon %s: started as %s by %s, but `%s` runs in one process and the processes would all "
                   "write the same files: run it without mpirun/srun, or with one process (mpirun -np 1, srun -n 1); "
                   "distributed runs are `megalodon train` (docs/parallelism.md)",
                   cmd, n, l.launcher, cmd);
}
