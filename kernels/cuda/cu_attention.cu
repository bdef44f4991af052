/* chunk attention and the merge of partial attentions (not implemented yet: each op stops with a message). */
#include "cu_internal.cuh"

namespace mgcu {

void attention_forward(const MgBackend *be, const MgAttentionArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: attention_forward is not implemented yet");
}

void attention_backward(const MgBackend *be, const MgAttentionArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: attention_backward is not implemented yet");
}

void attention_merge(const MgBackend *be, const MgAttnMergeArgs *a) {
    (void)be, (void)a;
    mg_fatal("cuda backend: attention_merge is not implemented yet");
}

} /* namespace mgcu */
