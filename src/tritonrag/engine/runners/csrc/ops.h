// The extension's ops, registered with torch in register.cpp (torch.ops.tritonrag.*).
#pragma once

#include <torch/torch.h>

namespace tritonrag {

torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor block_tables,
                              torch::Tensor context_lens, torch::Tensor query_starts, double scale);
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps);
torch::Tensor rope_kv_write(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor slot_mapping,
                            torch::Tensor k_cache, torch::Tensor v_cache, int64_t num_heads);
torch::Tensor silu_mul(torch::Tensor gate_up);

}  // namespace tritonrag
