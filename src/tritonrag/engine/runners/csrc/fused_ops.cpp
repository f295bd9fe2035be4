// The decoder's small elementwise steps, fused: one pass and one op call where torch needs several.
//
// At batch 1 a decode step is ~1,000 small torch ops, whose dispatch and (for the larger
// ones) thread fork/join cost as much as the matmuls; in a prefill chunk the same ops are
// separate passes over [T, hidden] tensors. Each kernel here rounds exactly where torch's
// op sequence rounds (products and sums in fp32, then to the tensor's dtype), so only
// summation order differs (RMSNorm's mean of squares): the same numbers as Hugging Face's
// Llama code, fp32 or bf16, to the last bit or so.
//
//   rms_norm        weight * (x * rsqrt(mean(x^2) + eps)).to(dtype)            (x in fp32)
//   add_rms_norm    residual += x (in dtype), then rms_norm(residual)
//   rope_kv_write   q, k = RoPE (rotate_half) of the fused QKV projection; k and v written
//                   to the paged cache at slot_mapping; returns q
//   silu_mul        silu(gate) * up of the fused gate/up projection
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "cpu_vec.h"
#include "ops.h"

namespace tritonrag {
namespace {

constexpr int64_t kGrainElements = 131072;  // rows per thread task: at least this many elements (~0.1 ms)

int64_t grain(int64_t row_elements) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_elements)); }

template <typename T>
void norm_row(const T* x, const T* w, int64_t N, float eps, T* out) {
  V16 acc = V16::zero();
  for (int64_t i = 0; i < N; i += 16) {
    const V16 v = V16::load(x + i);
    acc = fma(v, v, acc);
  }
  const float r = 1.0f / std::sqrt(acc.sum() / static_cast<float>(N) + eps);
  const V16 rv = V16::set1(r);
  for (int64_t i = 0; i < N; i += 16) (V16::load(w + i) * round_to<T>(V16::load(x + i) * rv)).store(out + i);
}

void check_norm(const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [T, N] CPU tensor");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous(), "weight must be [N]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight and x must share a dtype");
  TORCH_CHECK(x.size(1) % 16 == 0, "N must be a multiple of 16, got ", x.size(1));
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_norm(x, weight);
  auto out = torch::empty_like(x);
  const int64_t T = x.size(0), N = x.size(1);
  dispatch_float_types(x.scalar_type(), "rms_norm", [&](auto zero) {
    using S = decltype(zero);
    const S* xp = reinterpret_cast<const S*>(x.const_data_ptr());
    const S* wp = reinterpret_cast<const S*>(weight.const_data_ptr());
    S* op = reinterpret_cast<S*>(out.data_ptr());
    at::parallel_for(0, T, grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) norm_row(xp + t * N, wp, N, static_cast<float>(eps), op + t * N);
    });
  });
  return out;
}

torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps) {
  check_norm(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.is_contiguous() && residual.scalar_type() == x.scalar_type(),
              "residual must be a contiguous tensor like x");
  auto out = torch::empty_like(x);
  const int64_t T = x.size(0), N = x.size(1);
  dispatch_float_types(x.scalar_type(), "add_rms_norm", [&](auto zero) {
    using S = decltype(zero);
    const S* xp = reinterpret_cast<const S*>(x.const_data_ptr());
    const S* wp = reinterpret_cast<const S*>(weight.const_data_ptr());
    S* rp = reinterpret_cast<S*>(residual.data_ptr());
    S* op = reinterpret_cast<S*>(out.data_ptr());
    at::parallel_for(0, T, grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        S* r = rp + t * N;
        for (int64_t i = 0; i < N; i += 16) (V16::load(xp + t * N + i) + V16::load(r + i)).store(r + i);
        norm_row(r, wp, N, static_cast<float>(eps), op + t * N);
      }
    });
  });
  return out;
}

namespace {

// out = x * cos + rotate_half(x) * sin, each product and the sum rounded to T as torch rounds them.
template <typename T>
void rope_head(const T* x, const T* cos, const T* sin, int64_t D, T* out) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const V16 x1 = V16::load(x + i), x2 = V16::load(x + half + i);
    const V16 a1 = round_to<T>(x1 * V16::load(cos + i)), b1 = round_to<T>(vneg(x2) * V16::load(sin + i));
    const V16 a2 = round_to<T>(x2 * V16::load(cos + half + i)), b2 = round_to<T>(x1 * V16::load(sin + half + i));
    (a1 + b1).store(out + i);
    (a2 + b2).store(out + half + i);
  }
}

}  // namespace

// qkv [T, (H + 2 KVH) D]; cos, sin [T, D]; slot_mapping [T] int64; caches [num_blocks, block_size, KVH, D]
// -> q [T, H, D] with RoPE applied; the rotated keys and the values are written to the caches.
torch::Tensor rope_kv_write(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor slot_mapping,
                            torch::Tensor k_cache, torch::Tensor v_cache, int64_t num_heads) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 2 && qkv.is_contiguous(), "qkv must be a contiguous [T, W] CPU tensor");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "caches must be contiguous [num_blocks, block_size, KVH, D]");
  const int64_t T = qkv.size(0), KVH = k_cache.size(2), D = k_cache.size(3), H = num_heads;
  const int64_t W = (H + 2 * KVH) * D, slots = k_cache.size(0) * k_cache.size(1);
  TORCH_CHECK(qkv.size(1) == W, "qkv has ", qkv.size(1), " columns, expected (H + 2 KVH) D = ", W);
  TORCH_CHECK(D % 32 == 0, "head dim must be a multiple of 32, got ", D);
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D && cos.is_contiguous() &&
                  sin.is_contiguous(),
              "cos and sin must be contiguous [T, D]");
  TORCH_CHECK(cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type() &&
                  k_cache.scalar_type() == qkv.scalar_type() && v_cache.scalar_type() == qkv.scalar_type(),
              "qkv, cos, sin and the caches must share a dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kLong && slot_mapping.numel() == T, "slot_mapping must be [T] int64");
  slot_mapping = slot_mapping.contiguous();
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(slot[t] >= 0 && slot[t] < slots, "slot ", slot[t], " is outside the cache");
  auto q = torch::empty({T, H, D}, qkv.options());
  dispatch_float_types(qkv.scalar_type(), "rope_kv_write", [&](auto zero) {
    using S = decltype(zero);
    const S* src = reinterpret_cast<const S*>(qkv.const_data_ptr());
    const S* cp = reinterpret_cast<const S*>(cos.const_data_ptr());
    const S* sp = reinterpret_cast<const S*>(sin.const_data_ptr());
    S* qp = reinterpret_cast<S*>(q.data_ptr());
    S* kp = reinterpret_cast<S*>(k_cache.data_ptr());
    S* vp = reinterpret_cast<S*>(v_cache.data_ptr());
    at::parallel_for(0, T, grain(W), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const S* row = src + t * W;
        for (int64_t j = 0; j < H + KVH; ++j) {
          S* dst = j < H ? qp + (t * H + j) * D : kp + (slot[t] * KVH + j - H) * D;
          rope_head(row + j * D, cp + t * D, sp + t * D, D, dst);
        }
        std::memcpy(vp + slot[t] * KVH * D, row + (H + KVH) * D, KVH * D * sizeof(S));
      }
    });
  });
  return q;
}

// gate_up [T, 2 I] (gate | up) -> silu(gate) * up [T, I]
torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.device().is_cpu() && gate_up.dim() == 2 && gate_up.is_contiguous(),
              "gate_up must be a contiguous [T, 2 I] CPU tensor");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  TORCH_CHECK(gate_up.size(1) == 2 * I && I % 16 == 0, "gate_up's width must be 2 I with I a multiple of 16");
  auto out = torch::empty({T, I}, gate_up.options());
  dispatch_float_types(gate_up.scalar_type(), "silu_mul", [&](auto zero) {
    using S = decltype(zero);
    const S* src = reinterpret_cast<const S*>(gate_up.const_data_ptr());
    S* op = reinterpret_cast<S*>(out.data_ptr());
    at::parallel_for(0, T, grain(2 * I), [&](int64_t begin, int64_t end) {
      const V16 one = V16::set1(1.0f);
      for (int64_t t = begin; t < end; ++t)
        for (int64_t i = 0; i < I; i += 16) {
          const V16 g = V16::load(src + t * 2 * I + i);
          const V16 act = round_to<S>(g / (one + exp(vneg(g))));
          (act * V16::load(src + t * 2 * I + I + i)).store(op + t * I + i);
        }
    });
  });
  return out;
}

}  // namespace tritonrag
