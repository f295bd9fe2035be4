// Decode attention straight from the paged KV cache (CPU).
//
// One query token per sequence attends over its `context_len` keys, read through its
// block table where they lie in the pool. The torch path first gathers every
// sequence's keys and values into a padded copy and then runs SDPA over the copy: on
// a 2-core CPU that reads the cache, writes it and reads it again, and decode at
// concurrency 32 is bound by memory bandwidth. Here each key and value is read once.
//
// Work item = (sequence, KV head): its G = H / KVH query heads share every key read.
// Scores go to a per-thread buffer, then one softmax pass, then the value pass.
// Accumulation is fp32 whatever the cache dtype.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) for x <= 0 (softmax numerators), vectorizable: e^x = 2^n e^r with
// n = round(x / ln 2) and r = x - n ln 2 (ln 2 split in two so r stays exact), |r| <= ln 2 / 2,
// e^r by its degree-7 Taylor polynomial (truncation < 1e-8). Below -87 expf underflows: 0.
inline float exp_nonpositive(float x) {
  if (x < -87.0f) return 0.0f;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, sizeof p);
  return p;
}

// fn(t, row of token t) for t in [0, len), block by block: no division per token, and
// the next block is prefetched while this one is read.
template <typename T, typename Fn>
inline void for_each_token(const int64_t* table, int64_t len, int64_t block_size, const T* cache,
                           int64_t block_stride, int64_t row, Fn&& fn) {
  for (int64_t b = 0, t = 0; t < len; ++b) {
    const T* block = cache + table[b] * block_stride;
    if (t + block_size < len) {
      const char* next = reinterpret_cast<const char*>(cache + table[b + 1] * block_stride);
      for (int64_t off = 0; off < block_stride * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(next + off);
    }
    const int64_t end = std::min(t + block_size, len);
    for (const T* token = block; t < end; ++t, token += row) fn(t, token);
  }
}

// One sequence: its query heads [H, D] against `len` keys read block by block. The
// head dim is a template parameter so the per-token loops unroll and stay in registers.
template <typename T, int D>
void attend_one(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                const int64_t* table, int64_t len, int64_t block_size, int64_t KVH, int64_t G, float scale,
                float* __restrict__ qf, float* __restrict__ acc, std::vector<float>& scores, T* __restrict__ out) {
  const int64_t H = KVH * G, row = KVH * D, block_stride = block_size * row;
  for (int64_t i = 0; i < H * D; ++i) qf[i] = static_cast<float>(q[i]) * scale;
  scores.resize(H * len);
  float* __restrict__ sc = scores.data();
  for_each_token(table, len, block_size, k_cache, block_stride, row, [&](int64_t t, const T* key) {   // sc[h * G + g][t]
    for (int64_t h = 0; h < KVH; ++h)
      for (int64_t g = 0; g < G; ++g) {
        const float* qh = qf + (h * G + g) * D;
        const T* kh = key + h * D;
        float sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int d = 0; d < D; ++d) sum += qh[d] * static_cast<float>(kh[d]);
        sc[(h * G + g) * len + t] = sum;
      }
  });
  for (int64_t r = 0; r < H; ++r) {   // softmax numerators in place; acc row r is scaled by 1/sum at the end
    float* s = sc + r * len;
    float max_score = -std::numeric_limits<float>::infinity(), sum = 0;
#pragma omp simd reduction(max : max_score)
    for (int64_t t = 0; t < len; ++t) max_score = std::max(max_score, s[t]);
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; ++t) sum += (s[t] = exp_nonpositive(s[t] - max_score));
    const float inv = 1.0f / sum;
    for (int64_t t = 0; t < len; ++t) s[t] *= inv;
  }
  std::fill(acc, acc + H * D, 0.0f);
  for_each_token(table, len, block_size, v_cache, block_stride, row, [&](int64_t t, const T* value) {   // acc[h * G + g] += p * v[h]
    for (int64_t h = 0; h < KVH; ++h)
      for (int64_t g = 0; g < G; ++g) {
        const float p = sc[(h * G + g) * len + t];
        float* a = acc + (h * G + g) * D;
        const T* vh = value + h * D;
#pragma omp simd
        for (int d = 0; d < D; ++d) a[d] += p * static_cast<float>(vh[d]);
      }
  });
  for (int64_t i = 0; i < H * D; ++i) out[i] = static_cast<T>(acc[i]);
}

template <typename T, int D>
void decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                      const torch::Tensor& block_tables, const torch::Tensor& context_lens, double scale,
                      torch::Tensor& out) {
  const int64_t H = q.size(1), block_size = k_cache.size(1), KVH = k_cache.size(2), G = H / KVH;
  const int64_t max_blocks = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  at::parallel_for(0, q.size(0), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(H * D), acc(H * D), scores;
    for (int64_t s = begin; s < end; ++s)
      attend_one<T, D>(qp + s * H * D, kp, vp, tables + s * max_blocks, lens[s], block_size, KVH, G,
                       static_cast<float>(scale), qf.data(), acc.data(), scores, op + s * H * D);
  });
}

}  // namespace

// q [n, H, D]; caches [num_blocks, block_size, KVH, D]; block_tables [n, max_blocks] int64;
// context_lens [n] int64 -> out [n, H, D].
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu(), "paged_decode_attention runs on the CPU");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "bad q or cache shape");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && v_cache.scalar_type() == k_cache.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0 && q.size(2) == k_cache.size(3), "heads do not match the cache");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && context_lens.scalar_type() == torch::kLong,
              "block_tables and context_lens must be int64");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && context_lens.size(0) == q.size(0), "one table and length per query");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  for (int64_t s = 0; s < q.size(0); ++s)
    TORCH_CHECK(lens[s] >= 1 && lens[s] <= block_tables.size(1) * k_cache.size(1),
                "context length ", lens[s], " does not fit the block table");
  auto out = torch::empty_like(q);
  const int64_t D = q.size(2);
  TORCH_CHECK(D == 64 || D == 128, "head dim ", D, " is not compiled in (64, 128)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    if (D == 64)
      decode_attention<scalar_t, 64>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
    else
      decode_attention<scalar_t, 128>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention read through block tables from the paged KV cache (CPU)");
}
