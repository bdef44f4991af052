/* Backend lookup, creation and destruction by name, and thread control. */
#include <string.h>

#include "cpu/cpu_ops.h"
#include "cuda/mg_cuda.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MG_HAVE_BLAS
void openblas_set_num_threads(int num_threads);
#endif

static int is_cuda_name(const char *name) { return !strcmp(name, "cuda") || !strncmp(name, "cuda-", 5); }
static int is_emu_name(const char *name) { return !strncmp(name, "cuda-emu", 8); }

/* The CPU template for a name, or NULL (err says why). */
static const MgBackend *cpu_template(const char *name, char *err, size_t errlen) {
    if (!strcmp(name, "cpu") || !strcmp(name, "cpu-f32")) return &mg_cpu_backend_f32;
    if (!strcmp(name, "cpu-f64")) return &mg_cpu_backend_f64;
    mg_errf(err, errlen,
            "unknown device '%s' (expected one of: cpu, cpu-f32, cpu-f64, cuda, cuda-fp32, cuda-emu, cuda-emu-fp32)",
            name);
    return NULL;
}

static MgBackend *cuda_create(const char *name, int device, int local_rank, char *err, size_t errlen) {
    if (is_emu_name(name)) {
#ifdef MG_HAVE_CUDA_EMU
        (void)local_rank; /* the emulator is one device */
        return mg_cuda_emu_backend_create(name, device, err, errlen);
#else
        mg_errf(err, errlen, "device '%s': this build has no CUDA emulator (it needs a C++17 compiler; rebuild without "
                "NO_CUDA_EMU=1)", name);
        return NULL;
#endif
    }
#ifdef MG_HAVE_CUDA
    if (local_rank > 0) device = mg_cuda_device_for_local_rank(local_rank);
    return mg_cuda_backend_create(name, device, err, errlen);
#else
    (void)device, (void)local_rank;
    mg_errf(err, errlen,
            "device '%s': this build has no CUDA backend (it was built without nvcc, or with NO_CUDA=1: install the "
            "CUDA toolkit, or set CUDA_HOME, and run make again), or use --device cpu",
            name);
    return NULL;
#endif
}

MgBackend *mg_backend_create(const char *name, int device, const MgBackendOptions *opts, char *err, size_t errlen) {
    if (opts && opts->threads > 0) mg_set_threads(opts->threads);
    if (is_cuda_name(name)) return cuda_create(name, device, opts ? opts->local_rank : 0, err, errlen);
    const MgBackend *tmpl = cpu_template(name, err, errlen);
    if (!tmpl) return NULL;
    if (device != 0) {
        mg_errf(err, errlen, "device '%s' has one device (id 0); got device id %d", name, device);
        return NULL;
    }
    MgBackend *be = mg_malloc(sizeof(MgBackend));
    *be = *tmpl;
    be->device = device;
    be->ctx = cpu_ctx_create();
    return be;
}

void mg_backend_destroy(MgBackend *be) {
    if (!be) return;
    MG_CHECK(be != &mg_cpu_backend_f32 && be != &mg_cpu_backend_f64,
             "mg_backend_destroy: the default instances are never destroyed");
    if (is_cuda_name(be->name)) {
#ifdef MG_HAVE_CUDA_EMU
        if (is_emu_name(be->name)) {
            mg_cuda_emu_backend_destroy(be);
            return;
        }
#endif
#ifdef MG_HAVE_CUDA
        mg_cuda_backend_destroy(be);
        return;
#endif
    }
    cpu_ctx_destroy(be->ctx);
    free(be);
}

/* Default instances of the CUDA backends, created on first use (one per name). */
#define MAX_DEFAULTS 8
static struct {
    char name[32];
    MgBackend *be;
} defaults[MAX_DEFAULTS];
static int ndefaults;

const MgBackend *mg_backend_get(const char *name) {
    char err[1024];
    if (is_cuda_name(name)) {
        for (int i = 0; i < ndefaults; i++)
            if (!strcmp(defaults[i].name, name)) return defaults[i].be;
        MgBackend *be = cuda_create(name, 0, 0, err, sizeof err);
        if (!be) mg_fatal("%s", err);
        MG_CHECK(ndefaults < MAX_DEFAULTS, "mg_backend_get: too many default backends");
        snprintf(defaults[ndefaults].name, sizeof defaults[ndefaults].name, "%s", name);
        defaults[ndefaults++].be = be;
        return be;
    }
    const MgBackend *be = cpu_template(name, err, sizeof err);
    if (!be) mg_fatal("%s", err);
    return be;
}

void mg_set_threads(int n) {
    if (n <= 0) return;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
#ifdef MG_HAVE_BLAS
    openblas_set_num_threads(n);
#endif
}

int mg_get_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
