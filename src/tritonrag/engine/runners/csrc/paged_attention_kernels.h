// Attention of a packed batch (decodes and prefill chunks together) read in place from the paged KV cache.
//
// Sequence s owns query rows [query_starts[s], query_starts[s+1]) at positions
// [context_len - q_len, context_len) and attends causally to its keys [0, context_len),
// read through its block table where they lie in the pool (the step's own keys are
// written there first). Nothing is gathered, padded or copied, and one call serves
// every layer's whole batch.
//
// Two kernels, one per shape of work:
//   decode (q_len == 1): work item = (sequence, KV head). The G query heads of the KV
//     head share each key read: scores, one softmax pass, then the value pass.
//   prefill tile (up to 16 query tokens of one sequence and one KV head): the 16 tokens
//     are the 16 lanes of a vector, so each key costs D fused multiply-adds per query
//     head (bf16: D / 2 vdpbf16ps) with no horizontal sums, and keys stream through an
//     online softmax (flash attention's running max and sum) 16 at a time.
// Keys and values are widened to fp32 as they are read (bf16 prefill: multiplied as bf16
// pairs); all accumulation is fp32, whatever the cache dtype. Work items run longest first,
// taken by whichever thread is free.
#pragma once

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <atomic>
#include <memory>
#include <numeric>
#include <vector>

#include "cpu_vec.h"

namespace tritonrag::attention {


constexpr int kTile = 16;                // query tokens per prefill tile: one per lane
constexpr int64_t kInlineWork = 300000;  // below this many multiply-adds (~0.1 ms), one thread does it all

struct Cache {
  int64_t block_size, row, block_stride;  // tokens per block; elements per token (KVH * D) and per block
  template <typename T>
  const T* token(const T* base, const int64_t* table, int64_t pos, int64_t head, int64_t D) const {
    return base + table[pos / block_size] * block_stride + (pos % block_size) * row + head * D;
  }
};

struct Item {
  int64_t seq, head, first;  // sequence, KV head, first query of the tile (decodes: 0)
  int64_t count;             // queries in the tile (decodes: 1)
  int64_t work;              // multiply-adds, roughly: the scheduling order
};

template <typename T>
inline void prefetch_rows(const T* p, int64_t rows, int64_t stride, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(p + r * stride) + off);
}

// One decode: query row q [H, D] (head h's G heads used) over `len` keys.
template <typename T, int D, int G>
void attend_decode(const T* q, const T* kc, const T* vc, const int64_t* table, int64_t len, const Cache& c,
                   int64_t h, float scale, std::vector<float>& buf, T* out) {
  constexpr int NV = D / 16;
  V16 qv[G][NV];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i) qv[g][i] = V16::load(q + (h * G + g) * D + 16 * i) * V16::set1(scale);
  buf.resize(G * len + 16);
  float* sc = buf.data();  // sc[g * len + t]
  const int64_t bs = c.block_size;
  for (int64_t b = 0, t = 0; t < len; ++b) {
    const T* key = kc + table[b] * c.block_stride + h * D;
    if (t + bs < len) prefetch_rows(kc + table[b + 1] * c.block_stride + h * D, bs, c.row, D);
    for (const int64_t end = std::min(t + bs, len); t < end; ++t, key += c.row) {
      V16 k[NV];
      for (int i = 0; i < NV; ++i) k[i] = V16::load(key + 16 * i);
      for (int g = 0; g < G; ++g) {
        V16 acc = qv[g][0] * k[0];
        for (int i = 1; i < NV; ++i) acc = fma(qv[g][i], k[i], acc);
        sc[g * len + t] = acc.sum();
      }
    }
  }
  float total[G];
  for (int g = 0; g < G; ++g) {  // softmax numerators in place; normalised at the end
    float* s = sc + g * len;
    V16 mx = V16::set1(kNegInf);
    int64_t t = 0;
    for (; t + 16 <= len; t += 16) mx = vmax(mx, V16::load(s + t));
    float m = mx.max();
    for (; t < len; ++t) m = std::max(m, s[t]);
    V16 sum = V16::zero();
    for (t = 0; t + 16 <= len; t += 16) {
      const V16 e = exp(V16::load(s + t) - V16::set1(m));
      e.store(s + t);
      sum = sum + e;
    }
    if (t < len) {
      const int n = static_cast<int>(len - t);
      const V16 e = exp(V16::load_n(s + t, n) - V16::set1(m));
      e.store_n(s + t, n);
      total[g] = sum.sum() + (V16::load_n(s + t, n)).sum();
    } else {
      total[g] = sum.sum();
    }
  }
  V16 acc[G][NV];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i) acc[g][i] = V16::zero();
  for (int64_t b = 0, t = 0; t < len; ++b) {
    const T* value = vc + table[b] * c.block_stride + h * D;
    if (t + bs < len) prefetch_rows(vc + table[b + 1] * c.block_stride + h * D, bs, c.row, D);
    for (const int64_t end = std::min(t + bs, len); t < end; ++t, value += c.row) {
      V16 v[NV];
      for (int i = 0; i < NV; ++i) v[i] = V16::load(value + 16 * i);
      for (int g = 0; g < G; ++g) {
        const V16 p = V16::set1(sc[g * len + t]);
        for (int i = 0; i < NV; ++i) acc[g][i] = fma(p, v[i], acc[g][i]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    const V16 inv = V16::set1(1.0f / total[g]);
    for (int i = 0; i < NV; ++i) (acc[g][i] * inv).store(out + (h * G + g) * D + 16 * i);
  }
}

// The 16-lane scores of 16 keys: out[j] = sum_d q[d] * k[j][d]. Its own function with restrict
// pointers, so the 16 accumulators stay in registers (written inline, GCC stored them every step).
template <int D>
__attribute__((always_inline)) inline void tile_scores(const V16* __restrict__ q, const float* __restrict__ k,
                                                       V16* __restrict__ out) {
  V16 acc[kTile];
#pragma GCC unroll 16
  for (int j = 0; j < kTile; ++j) acc[j] = V16::zero();
  for (int d = 0; d < D; ++d) {
    const V16 qd = q[d];
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) acc[j] = fma(qd, V16::set1(k[j * D + d]), acc[j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < kTile; ++j) out[j] = acc[j];
}

// o[i] += sum_j p[j] * v[j][i] for 16 output dims i (lane = query token), over nk keys.
template <int D>
__attribute__((always_inline)) inline void tile_values(const V16* __restrict__ p, const float* __restrict__ v,
                                                       int64_t nk, V16* __restrict__ o) {
  V16 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = o[i];
  for (int64_t j = 0; j < nk; ++j) {
    const V16 pj = p[j];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = fma(pj, V16::set1(v[j * D + i]), acc[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) o[i] = acc[i];
}

// A tile's products in fp32 fused multiply-adds, on keys and values widened to fp32 as a chunk
// is loaded: any dtype, any CPU.
template <typename T, int D, int G>
struct FmaTileMath {
  V16 q[G][D];        // query heads, lane = token; pre-scaled
  float k[kTile][D];  // this chunk's keys and values (rows past the chunk: 0)
  float v[kTile][D];

  void load_queries(const T* rows, int64_t H, int64_t count, int64_t h, float scale) {
    for (int g = 0; g < G; ++g) {
      float lanes[D][16] = {};
      for (int64_t i = 0; i < count; ++i)
        for (int d = 0; d < D; ++d) lanes[d][i] = static_cast<float>(rows[i * H * D + (h * G + g) * D + d]) * scale;
      for (int d = 0; d < D; ++d) q[g][d] = V16::load(lanes[d]);
    }
  }
  // keys and values j < nk at key0 + j * row, value0 + j * row
  void load_chunk(const T* key0, const T* value0, int64_t row, int64_t nk) {
    for (int64_t j = 0; j < kTile; ++j) {
      if (j < nk) {
        for (int d = 0; d < D; d += 16) {
          V16::load(key0 + j * row + d).store(k[j] + d);
          V16::load(value0 + j * row + d).store(v[j] + d);
        }
      } else {
        std::fill(k[j], k[j] + D, 0.0f);
        std::fill(v[j], v[j] + D, 0.0f);
      }
    }
  }
  void scores(int g, V16* out) const { tile_scores<D>(q[g], k[0], out); }
  void values(int, const V16* p, int64_t nk, V16* o) const {
    for (int d0 = 0; d0 < D; d0 += 16) tile_values<D>(p, v[0] + d0, nk, o + d0);
  }
};

#if defined(TRITONRAG_AVX512) && defined(__AVX512BF16__)
#define TRITONRAG_BF16_DOT 1

// bf16 tensors on a CPU with AVX-512 BF16 (Zen 4, Sapphire Rapids): vdpbf16ps multiplies pairs of
// bf16 and adds both products to an fp32 lane, twice the multiply-adds of an fp32 FMA per
// instruction. Scores: each query lane holds its (q[2i], q[2i+1]) pair, each key's pair is
// broadcast straight from the cache. Values: the softmax weights are rounded to bf16 in key pairs
// (as torch's flash attention does for bf16) and each chunk's values are repacked into
// (v[2p][d], v[2p+1][d]) pairs. Accumulation stays fp32.
template <int D, int G>
struct Bf16TileMath {
  __m512i q[G][D / 2];                      // lane = token: its (q[2i], q[2i + 1]) pair
  alignas(64) uint32_t vpack[kTile / 2][D];  // (v[2p][d], v[2p + 1][d])
  const bf16* keys[kTile];
  alignas(64) bf16 zeros[D] = {};
  float scale = 1.0f;

  void load_queries(const bf16* rows, int64_t H, int64_t count, int64_t h, float s) {
    scale = s;  // applied to the fp32 scores: q stays exactly the model's bf16
    for (int g = 0; g < G; ++g) {
      alignas(64) uint32_t lanes[D / 2][16] = {};
      for (int64_t i = 0; i < count; ++i) {
        const bf16* row = rows + i * H * D + (h * G + g) * D;
        for (int p = 0; p < D / 2; ++p) std::memcpy(&lanes[p][i], row + 2 * p, 4);
      }
      for (int p = 0; p < D / 2; ++p) q[g][p] = _mm512_load_si512(lanes[p]);
    }
  }
  void load_chunk(const bf16* key0, const bf16* value0, int64_t row, int64_t nk) {
    for (int64_t j = 0; j < kTile; ++j) keys[j] = j < nk ? key0 + j * row : zeros;
    // 16-bit element k of the result: a[k] or b[k] interleaved, for d0 + k and d0 + 16 + k
    alignas(64) static const uint16_t lo_index[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    alignas(64) static const uint16_t hi_index[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                      24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_load_si512(lo_index), hi = _mm512_load_si512(hi_index);
    for (int64_t p = 0; p < kTile / 2; ++p) {
      const bf16* a = 2 * p < nk ? value0 + 2 * p * row : zeros;
      const bf16* b = 2 * p + 1 < nk ? value0 + (2 * p + 1) * row : zeros;
      for (int d0 = 0; d0 < D; d0 += 32) {
        const __m512i va = _mm512_loadu_si512(a + d0), vb = _mm512_loadu_si512(b + d0);
        _mm512_store_si512(&vpack[p][d0], _mm512_permutex2var_epi16(va, lo, vb));
        _mm512_store_si512(&vpack[p][d0 + 16], _mm512_permutex2var_epi16(va, hi, vb));
      }
    }
  }
  void scores(int g, V16* out) const {
    __m512 acc[kTile];
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) acc[j] = _mm512_setzero_ps();
    for (int p = 0; p < D / 2; ++p) {
      const __m512bh qp = (__m512bh)q[g][p];
#pragma GCC unroll 16
      for (int j = 0; j < kTile; ++j) {
        int32_t pair;
        std::memcpy(&pair, keys[j] + 2 * p, 4);
        acc[j] = _mm512_dpbf16_ps(acc[j], qp, (__m512bh)_mm512_set1_epi32(pair));
      }
    }
    const __m512 s = _mm512_set1_ps(scale);
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) out[j] = V16{(V16Reg)_mm512_mul_ps(acc[j], s)};
  }
  void values(int, const V16* p, int64_t nk, V16* o) const {
    const int64_t pairs = (nk + 1) / 2;
    __m512i weights[kTile / 2];
    for (int64_t k = 0; k < pairs; ++k) {  // lane = token: (p[2k], p[2k + 1]) as bf16
      const __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh((__m512)p[2 * k].v));
      const __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh((__m512)p[2 * k + 1].v));
      weights[k] = _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
    }
    for (int d0 = 0; d0 < D; d0 += 16) {
      __m512 acc[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) acc[i] = (__m512)o[d0 + i].v;
      for (int64_t k = 0; k < pairs; ++k) {
        const __m512bh w = (__m512bh)weights[k];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], w, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(vpack[k][d0 + i])));
      }
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) o[d0 + i] = V16{(V16Reg)acc[i]};
    }
  }
};
#endif

template <typename T, int D, int G>
struct TileMathFor {
  using type = FmaTileMath<T, D, G>;
};
#ifdef TRITONRAG_BF16_DOT
template <int D, int G>
struct TileMathFor<bf16, D, G> {
  using type = Bf16TileMath<D, G>;
};
#endif

// Per-thread memory of the prefill tile kernel.
template <typename T, int D, int G>
struct TileScratch {
  typename TileMathFor<T, D, G>::type math;
  V16 o[G][D];  // unnormalised outputs, lane = token
  float out[D][16];
};

// Queries [first, first + count) of one sequence (rows q[i * H * D]) and KV head h, over
// their causal keys, in chunks of up to 16 keys that stay inside one cache block.
template <typename T, int D, int G>
void attend_tile(const T* q, int64_t H, const T* kc, const T* vc, const int64_t* table, int64_t context_len,
                 int64_t q_len, int64_t first, int64_t count, const Cache& c, int64_t h, float scale,
                 TileScratch<T, D, G>& s, T* out) {
  const int64_t base = context_len - q_len + first;  // position of the tile's first query
  const int64_t last = base + count - 1;
  float pos[16];
  for (int i = 0; i < 16; ++i) pos[i] = static_cast<float>(base + std::min<int64_t>(i, count - 1));
  const V16 qpos = V16::load(pos);
  s.math.load_queries(q + first * H * D, H, count, h, scale);
  V16 m[G], l[G];
  for (int g = 0; g < G; ++g) {
    m[g] = V16::set1(kNegInf), l[g] = V16::zero();
    for (int d = 0; d < D; ++d) s.o[g][d] = V16::zero();
  }
  for (int64_t k0 = 0; k0 <= last;) {
    const int64_t nk = std::min<int64_t>({kTile, c.block_size - k0 % c.block_size, last + 1 - k0});
    s.math.load_chunk(c.token(kc, table, k0, h, D), c.token(vc, table, k0, h, D), c.row, nk);
    const bool masked = k0 + nk - 1 > base || nk < kTile;  // a key past some query's position, or past the chunk
    for (int g = 0; g < G; ++g) {
      V16 sc[kTile];
      s.math.scores(g, sc);
      if (masked)
        for (int j = 0; j < kTile; ++j) sc[j] = keep_or_neg_inf(sc[j], j < nk ? sees(k0 + j, qpos) : Mask16(0));
      V16 mx = sc[0];
      for (int j = 1; j < kTile; ++j) mx = vmax(mx, sc[j]);
      const V16 m_new = vmax(m[g], mx);
      const V16 correction = exp(m[g] - m_new);  // 0 on the first chunk (m = -inf)
      V16 sum = V16::zero();
      for (int j = 0; j < kTile; ++j) sc[j] = exp(sc[j] - m_new), sum = sum + sc[j];
      l[g] = fma(l[g], correction, sum);
      if (correction.min() < 1.0f)
        for (int d = 0; d < D; ++d) s.o[g][d] = s.o[g][d] * correction;
      s.math.values(g, sc, nk, s.o[g]);
      m[g] = m_new;
    }
    k0 += nk;
  }
  for (int g = 0; g < G; ++g) {
    const V16 inv = V16::set1(1.0f) / l[g];
    for (int d = 0; d < D; ++d) (s.o[g][d] * inv).store(s.out[d]);
    for (int64_t i = 0; i < count; ++i) {
      T* row = out + (first + i) * H * D + (h * G + g) * D;
      for (int d = 0; d < D; ++d) row[d] = static_cast<T>(s.out[d][i]);
    }
  }
}

inline std::vector<Item> plan(const int64_t* starts, const int64_t* lens, int64_t S, int64_t KVH, int64_t G, int64_t D) {
  std::vector<Item> items;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t q_len = starts[s + 1] - starts[s];
    for (int64_t h = 0; h < KVH; ++h) {
      if (q_len == 1) {
        items.push_back({s, h, 0, 1, lens[s] * G * (2 * D / 16 + 8)});
        continue;
      }
      for (int64_t first = 0; first < q_len; first += kTile) {
        const int64_t keys = lens[s] - q_len + std::min(first + kTile, q_len);
        items.push_back({s, h, first, std::min<int64_t>(kTile, q_len - first), keys * G * 2 * D});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.work > b.work; });
  return items;
}

template <typename T, int D, int G>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& block_tables, const int64_t* starts, const int64_t* lens, int64_t S, double scale,
         torch::Tensor& out) {
  const int64_t H = q.size(1), KVH = k_cache.size(2), max_blocks = block_tables.size(1);
  const Cache c{k_cache.size(1), KVH * D, k_cache.size(1) * KVH * D};
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const std::vector<Item> items = plan(starts, lens, S, KVH, G, D);
  const int64_t work = std::accumulate(items.begin(), items.end(), int64_t{0}, [](int64_t a, const Item& i) { return a + i.work; });
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t, int64_t) {
    std::vector<float> buf;
    std::unique_ptr<TileScratch<T, D, G>> tile;
    for (int64_t n; (n = next.fetch_add(1)) < static_cast<int64_t>(items.size());) {
      const Item& it = items[n];
      const int64_t* table = tables + it.seq * max_blocks;
      const int64_t row0 = starts[it.seq];
      if (starts[it.seq + 1] - row0 == 1) {
        attend_decode<T, D, G>(qp + row0 * H * D, kp, vp, table, lens[it.seq], c, it.head, scale, buf, op + row0 * H * D);
      } else {
        if (!tile) tile = std::make_unique<TileScratch<T, D, G>>();
        attend_tile<T, D, G>(qp + row0 * H * D, H, kp, vp, table, lens[it.seq], starts[it.seq + 1] - row0, it.first,
                             it.count, c, it.head, scale, *tile, op + row0 * H * D);
      }
    }
  };
  if (work < kInlineWork || at::get_num_threads() == 1)
    worker(0, 1);
  else
    at::parallel_for(0, at::get_num_threads(), 1, worker);  // one task per thread; each takes items until none are left
}

template <typename T, int D>
void dispatch_groups(int64_t G, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& tables, const int64_t* starts, const int64_t* lens, int64_t S, double scale,
                     torch::Tensor& out) {
  switch (G) {
#ifndef TRITONRAG_DEV_BUILD  // a quicker build for kernel work: SmolLM2's G = 3 only
    case 1: return run<T, D, 1>(q, k, v, tables, starts, lens, S, scale, out);
    case 2: return run<T, D, 2>(q, k, v, tables, starts, lens, S, scale, out);
    case 4: return run<T, D, 4>(q, k, v, tables, starts, lens, S, scale, out);
    case 8: return run<T, D, 8>(q, k, v, tables, starts, lens, S, scale, out);
#endif
    case 3: return run<T, D, 3>(q, k, v, tables, starts, lens, S, scale, out);
    default: TORCH_CHECK(false, "query heads per KV head ", G, " is not compiled in (1, 2, 3, 4, 8)");
  }
}


// One dtype's whole call; explicitly instantiated in paged_attention_<dtype>.cpp, one translation
// unit per dtype so the build compiles them in parallel.
template <typename T>
void paged_attention_typed(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                           const torch::Tensor& block_tables, const int64_t* starts, const int64_t* lens, int64_t S,
                           double scale, torch::Tensor& out) {
  const int64_t D = q.size(2), G = q.size(1) / k_cache.size(2);
  if (D == 64)
    dispatch_groups<T, 64>(G, q, k_cache, v_cache, block_tables, starts, lens, S, scale, out);
  else
    dispatch_groups<T, 128>(G, q, k_cache, v_cache, block_tables, starts, lens, S, scale, out);
}

#define TRITONRAG_PAGED_ATTENTION_INSTANCE(T)                                                                      \
  template void paged_attention_typed<T>(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,       \
                                         const torch::Tensor&, const int64_t*, const int64_t*, int64_t, double, \
                                         torch::Tensor&)
extern TRITONRAG_PAGED_ATTENTION_INSTANCE(float);
extern TRITONRAG_PAGED_ATTENTION_INSTANCE(bf16);
extern TRITONRAG_PAGED_ATTENTION_INSTANCE(f16);

}  // namespace tritonrag::attention
