// torch.ops.tritonrag.*: registered with the dispatcher, so they show in torch.profiler by name.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(tritonrag, m) {
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, "
      "Tensor query_starts, float scale) -> Tensor");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, "
      "float scale) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor(a!) residual, Tensor weight, float eps) -> Tensor");
  m.def(
      "rope_kv_write(Tensor qkv, Tensor cos, Tensor sin, Tensor slot_mapping, Tensor(a!) k_cache, "
      "Tensor(b!) v_cache, int num_heads) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
}

TORCH_LIBRARY_IMPL(tritonrag, CPU, m) {
  m.impl("paged_attention", &tritonrag::paged_attention);
  m.impl("paged_decode_attention", &tritonrag::paged_decode_attention);
  m.impl("rms_norm", &tritonrag::rms_norm);
  m.impl("add_rms_norm", &tritonrag::add_rms_norm);
  m.impl("rope_kv_write", &tritonrag::rope_kv_write);
  m.impl("silu_mul", &tritonrag::silu_mul);
}
