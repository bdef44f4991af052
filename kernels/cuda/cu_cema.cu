/* CEMA (not implemented yet: each op stops with a message). */
#include "cu_internal.cuh"

namespace mgcu {

void cema_forward(const MgBackend *be, const MgCemaArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: cema_forward is not implemented yet");
}

void cema_backward(const MgBackend *be, const MgCemaArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: cema_backward is not implemented yet");
}

} /* namespace mgcu */
