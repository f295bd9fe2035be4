// The paged attention op: argument checks and the dtype dispatch (the kernels: paged_attention_kernels.h).
#include <torch/torch.h>

#include "ops.h"
#include "paged_attention_kernels.h"

namespace tritonrag {

// q [T, H, D]; caches [num_blocks, block_size, KVH, D]; block_tables [S, max_blocks] int64;
// context_lens [S] int64; query_starts [S + 1] int64 (sequence s owns rows [starts[s], starts[s+1])) -> [T, H, D].
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor block_tables,
                              torch::Tensor context_lens, torch::Tensor query_starts, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu(), "paged_attention runs on the CPU");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "bad q or cache shape");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && v_cache.scalar_type() == k_cache.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0 && q.size(2) == k_cache.size(3), "heads do not match the cache");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && context_lens.scalar_type() == torch::kLong &&
                  query_starts.scalar_type() == torch::kLong,
              "block_tables, context_lens and query_starts must be int64");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  const int64_t S = context_lens.size(0);
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == S && query_starts.size(0) == S + 1,
              "one block table, context length and query start per sequence");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  query_starts = query_starts.contiguous();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t* starts = query_starts.data_ptr<int64_t>();
  TORCH_CHECK(starts[0] == 0 && starts[S] == q.size(0), "query_starts must run from 0 to the number of query rows");
  for (int64_t s = 0; s < S; ++s) {
    const int64_t q_len = starts[s + 1] - starts[s];
    TORCH_CHECK(q_len >= 1 && q_len <= lens[s], "sequence ", s, ": ", q_len, " queries for context length ", lens[s]);
    TORCH_CHECK(lens[s] <= block_tables.size(1) * k_cache.size(1), "context length ", lens[s],
                " does not fit the block table");
  }
  auto out = torch::empty_like(q);
  const int64_t D = q.size(2);
  TORCH_CHECK(D == 64 || D == 128, "head dim ", D, " is not compiled in (64, 128)");
  dispatch_float_types(q.scalar_type(), "paged_attention", [&](auto zero) {
    attention::paged_attention_typed<decltype(zero)>(q, k_cache, v_cache, block_tables, starts, lens, S, scale, out);
  });
  return out;
}

// The decode-only form: q [n, H, D], one query per sequence at its last position.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale) {
  auto starts = torch::arange(q.size(0) + 1, torch::kLong);
  return paged_attention(q, k_cache, v_cache, block_tables, context_lens, starts, scale);
}

}  // namespace tritonrag
