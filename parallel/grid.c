/* The process grid and the agreement check (grid.h). */
#include "grid.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/hash.h"

int mg_grid_shape(int P, int sp, int *dp_size, char *err, size_t errlen) {
    if (P < 1) return mg_errf(err, errlen, "process grid: %d ranks: need at least 1", P);
    if (sp < 1) return mg_errf(err, errlen, "process grid: sequence parallel size %d must be >= 1", sp);
    if (sp > P)
        return mg_errf(err, errlen, "process grid: sequence parallel size %d is more than the %d ranks of the run", sp, P);
    if (P % sp)
        return mg_errf(err, errlen,
                       "process grid: sequence parallel size %d does not divide the %d ranks of the run (P = DP x SP; "
                       "use an SP that divides %d, or %d ranks)",
                       sp, P, P, (P / sp + 1) * sp);
    if (dp_size) *dp_size = P / sp;
    return 0;
}

void mg_grid_coords(int rank, int sp_size, int *dp, int *sp) {
    *dp = rank / sp_size;
    *sp = rank % sp_size;
}

int mg_grid_create(MgTransport *world, int sp, MgGrid *g, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    int dp_size;
    if (mg_grid_shape(world->size, sp, &dp_size, err, errlen)) return -1;
    g->P = world->size;
    g->dp_size = dp_size;
    g->sp_size = sp;
    g->rank = world->rank;
    mg_grid_coords(g->rank, sp, &g->dp, &g->sp);
    g->world = world;
    g->sp_group = mg_tp_split(world, g->dp, g->sp);
    g->dp_group = mg_tp_split(world, g->sp, g->dp);
    MG_CHECK(g->sp_group->size == sp && g->sp_group->rank == g->sp, "grid: SP group of size %d rank %d",
             g->sp_group->size, g->sp_group->rank);
    MG_CHECK(g->dp_group->size == dp_size && g->dp_group->rank == g->dp, "grid: DP group of size %d rank %d",
             g->dp_group->size, g->dp_group->rank);
    return 0;
}

void mg_grid_destroy(MgGrid *g) {
    mg_tp_free(g->sp_group);
    mg_tp_free(g->dp_group);
    memset(g, 0, sizeof *g);
}

uint64_t mg_grid_file_hash(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        mg_errf(err, errlen, "%s: %s", path, strerror(errno));
        return 0;
    }
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a 64, streamed (src/hash.h's mg_fnv1a64 over the whole file) */
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++) {
            h ^= buf[i];
            h *= 0x100000001B3ull;
        }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        mg_errf(err, errlen, "%s: read error", path);
        return 0;
    }
    return h;
}

int mg_grid_agree_hashes(MgTransport *t, uint64_t exe_hash, uint64_t text_hash, char *err, size_t errlen) {
    int P = t->size;
    uint64_t mine[2] = {exe_hash, text_hash};
    uint64_t *all = mg_malloc(sizeof mine * (size_t)P);
    mg_tp_all_gather(t, mine, all, sizeof mine);
    /* Every rank runs the same comparison on the same gathered data, so every rank reports the same. */
    char msg[1024] = "";
    size_t len = 0;
    int bad = 0;
    for (int r = 1; r < P; r++) {
        int exe = all[2 * r] != all[0], txt = all[2 * r + 1] != all[1];
        if (!exe && !txt) continue;
        if (bad++ < 4 && len < sizeof msg) {
            int w = snprintf(msg + len, sizeof msg - len, "%srank %d (", bad > 1 ? "; " : "", r);
            len += w > 0 ? (size_t)w : 0;
            if (exe && len < sizeof msg) {
                w = snprintf(msg + len, sizeof msg - len, "executable hash 0x%016llx vs 0x%016llx",
                             (unsigned long long)all[2 * r], (unsigned long long)all[0]);
                len += w > 0 ? (size_t)w : 0;
            }
            if (txt && len < sizeof msg) {
                w = snprintf(msg + len, sizeof msg - len, "%sconfig hash 0x%016llx vs 0x%016llx", exe ? ", " : "",
                             (unsigned long long)all[2 * r + 1], (unsigned long long)all[1]);
                len += w > 0 ? (size_t)w : 0;
            }
            if (len < sizeof msg) {
                w = snprintf(msg + len, sizeof msg - len, ")");
                len += w > 0 ? (size_t)w : 0;
            }
        }
    }
    free(all);
    if (!bad) return 0;
    return mg_errf(err, errlen,
                   "%d of %d ranks disagree with rank 0 (every rank must run the same executable with the same "
                   "config): %s%s",
                   bad, P, msg, bad > 4 ? "; ..." : "");
}

int mg_grid_agree(MgTransport *t, const char *text, char *err, size_t errlen) {
    char e[256];
    uint64_t exe = mg_grid_file_hash("/proc/self/exe", e, sizeof e); /* 0 where it cannot be read */
    uint64_t txt = mg_fnv1a64(text ? text : "", text ? strlen(text) : 0);
    return mg_grid_agree_hashes(t, exe, txt, err, errlen);
}
