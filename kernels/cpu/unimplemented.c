/* TEMPORARY scaffolding while the CPU ops are written in parallel: weak definitions that fail loudly.
 * Each real op (a strong symbol in its own file) overrides its entry. Deleted once every op exists. */
#include "cpu_real.h"

#define MG_WEAK_OP(name, Args)                                                                         \
    __attribute__((weak)) void CPU_FN(name)(const MgBackend *be, const Args *a) {                      \
        (void)be;                                                                                      \
        (void)a;                                                                                       \
        mg_fatal("CPU op %s (%s) is not implemented yet", #name, CPU_PREC);                            \
    }
MG_CPU_OP_LIST(MG_WEAK_OP)
