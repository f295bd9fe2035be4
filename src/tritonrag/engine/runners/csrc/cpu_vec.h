// 16 fp32 lanes: what every kernel here computes in, whatever the tensors' dtype.
//
// bfloat16 and float16 are widened on load and rounded (to nearest even, as torch rounds)
// on store, so a kernel is written once for fp32, bf16 and fp16. With AVX-512 (this
// project's CPUs) V16 is one zmm register; elsewhere a float[16] the compiler vectorizes
// as it can, so the extension still builds and runs on any x86-64 or ARM host.
//
// The extension is compiled with -ffp-contract=off: a*b + c stays two roundings unless a
// kernel asks for fma(), so the elementwise kernels round exactly as torch's ops do.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define TRITONRAG_AVX512 1
#endif

namespace tritonrag {

using bf16 = c10::BFloat16;
using f16 = c10::Half;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The value a dtype stores for x: identity for float, round to nearest even for bf16 / fp16.
template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}
template <>
inline float round_to<float>(float x) {
  return x;
}

#ifdef TRITONRAG_AVX512

// The register type without __m512's may_alias attribute: an array of V16 accumulators may then be
// kept in registers even where the loop also reads floats (with __m512, GCC re-stored them each step).
typedef float V16Reg __attribute__((vector_size(64)));

struct V16 {
  V16Reg v;

  static V16 zero() { return {_mm512_setzero_ps()}; }
  static V16 set1(float x) { return {_mm512_set1_ps(x)}; }
  static V16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static V16 load(const bf16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static V16 load(const f16* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
  // the first n lanes from p, the rest 0
  static V16 load_n(const float* p, int n) { return {_mm512_maskz_loadu_ps(mask(n), p)}; }

  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(bf16* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits()); }
  void store(f16* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  void store_n(float* p, int n) const { _mm512_mask_storeu_ps(p, mask(n), v); }

  // round to nearest even as c10::BFloat16 does (NaN -> 0x7FC0): the bits torch would store
  __m256i bf16_bits() const {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
  }

  static __mmask16 mask(int n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1); }

  float sum() const { return _mm512_reduce_add_ps(v); }
  float max() const { return _mm512_reduce_max_ps(v); }
  float min() const { return _mm512_reduce_min_ps(v); }
};

inline V16 operator+(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V16 operator-(V16 a, V16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V16 operator*(V16 a, V16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V16 operator/(V16 a, V16 b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V16 fma(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a * b + c, one rounding
inline V16 vmax(V16 a, V16 b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V16 vneg(V16 a) { return {_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)))}; }
inline V16 sqrt(V16 a) { return {_mm512_sqrt_ps(a.v)}; }
using Mask16 = __mmask16;
// lanes whose query position is at or after key_pos: the keys a causal query sees
inline Mask16 sees(float key_pos, V16 query_pos) { return _mm512_cmp_ps_mask(_mm512_set1_ps(key_pos), query_pos.v, _CMP_LE_OQ); }
// lanes where keep is false become -inf
inline V16 keep_or_neg_inf(V16 a, Mask16 keep) { return {_mm512_mask_blend_ps(keep, _mm512_set1_ps(kNegInf), a.v)}; }

// The value a dtype stores for each lane (see round_to).
template <typename T>
inline V16 round_to(V16 x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x.bf16_bits()), 16))};
  } else if constexpr (std::is_same_v<T, f16>) {
    return {_mm512_cvtph_ps(_mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))};
  } else {
    return x;
  }
}

// e^x, relative error ~2e-7 over the whole float range: e^x = 2^n e^r, n = round(x / ln 2),
// r = x - n ln 2 (ln 2 split in two so r stays exact), |r| <= ln 2 / 2, e^r by its degree-7
// Taylor polynomial; 2^n applied by scalef, which underflows to 0 and overflows to inf
// as expf does. -inf gives 0, NaN stays NaN.
inline V16 exp(V16 x) {
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x.v, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 out = _mm512_scalef_ps(p, n);
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q), out, x.v)};
}

#else  // portable: a float[16] the compiler vectorizes as it can

struct V16 {
  float v[16];

  static V16 zero() { return set1(0.0f); }
  static V16 set1(float x) {
    V16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = x;
    return r;
  }
  template <typename T>
  static V16 load(const T* p) {
    V16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = static_cast<float>(p[i]);
    return r;
  }
  static V16 load_n(const float* p, int n) {
    V16 r = zero();
    for (int i = 0; i < n && i < 16; ++i) r.v[i] = p[i];
    return r;
  }
  template <typename T>
  void store(T* p) const {
    for (int i = 0; i < 16; ++i) p[i] = static_cast<T>(v[i]);
  }
  void store_n(float* p, int n) const {
    for (int i = 0; i < n && i < 16; ++i) p[i] = v[i];
  }
  float sum() const {
    float s = 0;
    for (float x : v) s += x;
    return s;
  }
  float max() const {
    float m = v[0];
    for (float x : v) m = std::max(m, x);
    return m;
  }
  float min() const {
    float m = v[0];
    for (float x : v) m = std::min(m, x);
    return m;
  }
};

#define TRITONRAG_V16_BINARY(NAME, EXPR)  \
  inline V16 NAME(V16 a, V16 b) {         \
    V16 r;                                \
    for (int i = 0; i < 16; ++i) r.v[i] = EXPR; \
    return r;                             \
  }
TRITONRAG_V16_BINARY(operator+, a.v[i] + b.v[i])
TRITONRAG_V16_BINARY(operator-, a.v[i] - b.v[i])
TRITONRAG_V16_BINARY(operator*, a.v[i] * b.v[i])
TRITONRAG_V16_BINARY(operator/, a.v[i] / b.v[i])
TRITONRAG_V16_BINARY(vmax, std::max(a.v[i], b.v[i]))
#undef TRITONRAG_V16_BINARY

inline V16 fma(V16 a, V16 b, V16 c) {
  V16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
inline V16 vneg(V16 a) {
  V16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = -a.v[i];
  return r;
}
inline V16 sqrt(V16 a) {
  V16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::sqrt(a.v[i]);
  return r;
}
inline V16 exp(V16 a) {
  V16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::exp(a.v[i]);
  return r;
}
using Mask16 = uint32_t;
inline Mask16 sees(float key_pos, V16 query_pos) {
  Mask16 m = 0;
  for (int i = 0; i < 16; ++i) m |= static_cast<Mask16>(key_pos <= query_pos.v[i]) << i;
  return m;
}
inline V16 keep_or_neg_inf(V16 a, Mask16 keep) {
  for (int i = 0; i < 16; ++i)
    if (!((keep >> i) & 1)) a.v[i] = kNegInf;
  return a;
}
template <typename T>
inline V16 round_to(V16 x) {
  for (float& f : x.v) f = round_to<T>(f);
  return x;
}

#endif

}  // namespace tritonrag

namespace tritonrag {

// fn(T{}) with T the C++ type of a float32, bfloat16 or float16 tensor; other dtypes are refused.
template <typename Fn>
void dispatch_float_types(c10::ScalarType type, const char* op, Fn&& fn) {
  switch (type) {
    case c10::ScalarType::Float: return fn(float{});
    case c10::ScalarType::BFloat16: return fn(bf16{});
    case c10::ScalarType::Half: return fn(f16{});
    default: TORCH_CHECK(false, op, ": dtype ", type, " is not supported (float32, bfloat16, float16)");
  }
}

}  // namespace tritonrag
