/* TimestepNorm (not implemented yet: each op stops with a message). */
#include "cu_internal.cuh"

namespace mgcu {

void timestep_norm_forward(const MgBackend *be, const MgTimestepNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: timestep_norm_forward is not implemented yet");
}

void timestep_norm_backward(const MgBackend *be, const MgTimestepNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: timestep_norm_backward is not implemented yet");
}

} /* namespace mgcu */
