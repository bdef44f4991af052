/* RMSNorm, LayerNorm and the shared-Z Q/K normalisation (not implemented yet: each op stops with a message). */
#include "cu_internal.cuh"

namespace mgcu {

void rmsnorm_forward(const MgBackend *be, const MgRMSNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: rmsnorm_forward is not implemented yet");
}

void rmsnorm_backward(const MgBackend *be, const MgRMSNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: rmsnorm_backward is not implemented yet");
}

void layernorm_forward(const MgBackend *be, const MgLayerNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: layernorm_forward is not implemented yet");
}

void layernorm_backward(const MgBackend *be, const MgLayerNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: layernorm_backward is not implemented yet");
}

void qknorm_forward(const MgBackend *be, const MgQKNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: qknorm_forward is not implemented yet");
}

void qknorm_backward(const MgBackend *be, const MgQKNormArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: qknorm_backward is not implemented yet");
}

} /* namespace mgcu */
