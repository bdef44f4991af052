/* Multi-process launches (mpirun / mpiexec / srun), detected from the environment the launcher sets, so
 * that `train` joins the process grid (docs/parallelism.md) and the commands that run in one process
 * refuse to run as several, which would all write the same files. No MPI call is made here. */
#ifndef MG_LAUNCH_H
#define MG_LAUNCH_H

#include <stddef.h>

typedef struct {
    int size;             /* processes started together; 0 = several, count unknown (only a rank > 0 seen) */
    int rank;             /* this process's rank, 0 when unknown */
    const char *launcher; /* "mpirun (Open MPI)", "srun (Slurm)", ...; NULL for a single process */
} MgLaunch;

/* Fill l from the environment; returns 1 if this process is one of several, else 0 (size 1, rank 0).
 * Open MPI (OMPI_COMM_WORLD_SIZE/RANK), MPICH / Intel MPI / Hydra and PMI-2 (PMI_SIZE/RANK), MVAPICH2
 * (MV2_COMM_WORLD_SIZE/RANK), PMIx (PMIX_RANK), Slurm's srun (SLURM_STEP_NUM_TASKS, SLURM_PROCID). A Slurm
 * job's SLURM_NTASKS alone is not a launch: a batch script with --ntasks=4 that runs megalodon directly
 * starts one process. */
int mg_launch_detect(MgLaunch *l);

/* 0 when running as one process; otherwise -1 and a message in err (empty on ranks other than 0, so that
 * one message is printed in all) saying that `cmd` runs in one process. distributed: `cmd` can run as
 * several processes in a build with MPI (train); then the message says that this build has none. */
int mg_launch_require_single(const char *cmd, int distributed, char *err, size_t errlen);

#endif
