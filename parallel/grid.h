/* The process grid of a distributed run: P = DP x SP ranks (docs/parallelism.md). Data-parallel groups
 * hold different sequences; the SP ranks of one group hold consecutive slices of the same sequences and
 * are contiguous in the world: world rank = dp * SP + sp. */
#ifndef MG_PARALLEL_GRID_H
#define MG_PARALLEL_GRID_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

typedef struct {
    int P, dp_size, sp_size; /* P = dp_size * sp_size */
    int rank, dp, sp;        /* this rank's world rank and its coordinates */
    MgTransport *world;      /* borrowed */
    MgTransport *sp_group;   /* the sp_size ranks of this DP group (rank = sp) */
    MgTransport *dp_group;   /* the dp_size ranks with this sp (rank = dp) */
} MgGrid;

/* Validate the shape: P >= 1, 1 <= sp <= P, sp divides P. Writes dp_size. Returns 0 or -1 with a message
 * naming the numbers (and what would work). No communication: every rank gets the same answer. */
int mg_grid_shape(int P, int sp, int *dp_size, char *err, size_t errlen);
/* The coordinates of a world rank. */
void mg_grid_coords(int rank, int sp_size, int *dp, int *sp);
/* Validate, then build the grid and its two sub-transports (collective over world). Returns 0, or -1
 * with the same message on every rank (nothing created). */
int mg_grid_create(MgTransport *world, int sp, MgGrid *g, char *err, size_t errlen);
void mg_grid_destroy(MgGrid *g);

/* Agreement check (collective): every rank hashes its executable (/proc/self/exe) and `text` (e.g. the
 * resolved config); the hashes are gathered and compared with rank 0's. Returns 0 if all agree, else -1
 * with the same message on every rank, naming the ranks that differ and in what, e.g.
 *   "ranks disagree with rank 0: rank 2 (config hash 0x... vs 0x...)". */
int mg_grid_agree(MgTransport *t, const char *text, char *err, size_t errlen);
/* The same with the hashes given (tests; a build where /proc/self/exe cannot be read passes 0). */
int mg_grid_agree_hashes(MgTransport *t, uint64_t exe_hash, uint64_t text_hash, char *err, size_t errlen);
/* FNV-1a 64 of a file's bytes; 0 with a message in err if it cannot be read. */
uint64_t mg_grid_file_hash(const char *path, char *err, size_t errlen);

#endif
