// rlhfkit_int8::requantize: re-quantise an fbgemm-packed int8 weight in place
// (rlhfkit.generation.quant, rollout_quant = "int8").
//
// fbgemm's prepack (torch.ops.quantized.linear_prepack) rewrites every weight into its blocked
// layout with a scalar loop (~4 ns a weight, single-threaded): most of an int8 refresh. After an
// optimizer step only 0.03-0.2% of the rounded int8 values change, so this rounds the new fp32
// rows as quant._round_into does (scale_n = max(max_k w_nk, -min_k w_nk, 1e-12) / 127, q =
// round-half-even(w / scale_n)), in one pass over w, and writes just the values that changed into
// the packed buffer (fbgemm's own PackBMatrix::addr gives each one's place) and into q (which
// holds what the packed copy holds), moves the column offsets (sum_k q_nk) by the change, and
// sets the per-channel scales (and the bias): the packed weight is then what a fresh prepack of
// the new rounding would be (tests/test_quant.py compares both, bit for bit).
//
// torch ships fbgemm_utils.h, which declares PackedLinearWeight, but not the asmjit headers it
// includes, so its data members are declared here as torch 2.13's header has them; the Python
// side runs a self-test on a small weight before it uses this (int8_patch.patcher), so a torch
// whose layout differs falls back to the prepack instead of writing in the wrong place.
#include <ATen/Parallel.h>
#include <ATen/native/quantized/PackedParams.h>
#include <fbgemm/Fbgemm.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

struct PackedLinearWeight : public LinearPackedParamsBase {  // fbgemm_utils.h's data members
  std::unique_ptr<fbgemm::PackBMatrix<int8_t>> w;
  std::optional<at::Tensor> bias_;
  std::vector<int32_t> col_offsets;
  std::vector<float> w_scale;
  std::vector<int32_t> w_zp;
  c10::QScheme q_scheme;
};

namespace {

// One row: q = round(w / s) into q_row; each changed value also into the packed buffer (column
// n of B = q^T). Returns the change of the row's sum; counts the changed values into `changed`.
// The AVX2 body and the scalar tail compute the same IEEE float division and rounding.
template <bool kAvx2>
int32_t round_row(const float* w, int8_t* q, int64_t K, float s, int8_t* buf, const fbgemm::PackBMatrix<int8_t>* B,
                  int32_t n, int64_t& changed);

inline void write(int8_t* q, int64_t k, int8_t v, int8_t* buf, const fbgemm::PackBMatrix<int8_t>* B, int32_t n,
                  int32_t& delta, int64_t& changed) {
  delta += (int32_t)v - (int32_t)q[k];
  q[k] = v;
  buf[B->addr((int32_t)k, n)] = v;  // B is q transposed: (k, n)
  ++changed;
}

// max(max_k w_k, -min_k w_k) over a row (finite weights)
template <bool kAvx2>
float row_absmax(const float* w, int64_t K);

template <>
float row_absmax<false>(const float* w, int64_t K) {
  float hi = w[0], lo = w[0];
  for (int64_t k = 1; k < K; ++k) {
    hi = std::max(hi, w[k]);
    lo = std::min(lo, w[k]);
  }
  return std::max(hi, -lo);
}

template <>
__attribute__((target("avx2"))) float row_absmax<true>(const float* w, int64_t K) {
  if (K < 8) return row_absmax<false>(w, K);
  __m256 hi = _mm256_loadu_ps(w), lo = hi;
  int64_t k = 8;
  for (; k + 8 <= K; k += 8) {
    const __m256 x = _mm256_loadu_ps(w + k);
    hi = _mm256_max_ps(hi, x);
    lo = _mm256_min_ps(lo, x);
  }
  float h[8], l[8];
  _mm256_storeu_ps(h, hi);
  _mm256_storeu_ps(l, lo);
  float a = std::max(*std::max_element(h, h + 8), -*std::min_element(l, l + 8));
  for (; k < K; ++k) a = std::max(a, std::max(w[k], -w[k]));
  return a;
}

template <>
int32_t round_row<false>(const float* w, int8_t* q, int64_t K, float s, int8_t* buf,
                         const fbgemm::PackBMatrix<int8_t>* B, int32_t n, int64_t& changed) {
  int32_t delta = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int8_t v = (int8_t)std::nearbyint(w[k] / s);
    if (v != q[k]) write(q, k, v, buf, B, n, delta, changed);
  }
  return delta;
}

template <>
__attribute__((target("avx2"))) int32_t round_row<true>(const float* w, int8_t* q, int64_t K, float s, int8_t* buf,
                                                        const fbgemm::PackBMatrix<int8_t>* B, int32_t n,
                                                        int64_t& changed) {
  int32_t delta = 0;
  const __m256 vs = _mm256_set1_ps(s);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i i32 = _mm256_cvtps_epi32(r);  // |r| <= 127: exact
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    const uint64_t word = (uint64_t)_mm_cvtsi128_si64(_mm_packs_epi16(i16, i16));  // the 8 int8 values
    uint64_t old;
    std::memcpy(&old, q + k, 8);
    if (word == old) continue;  // nearly always
    int8_t v[8];
    std::memcpy(v, &word, 8);
    for (int j = 0; j < 8; ++j)
      if (v[j] != q[k + j]) write(q, k + j, v[j], buf, B, n, delta, changed);
  }
  for (; k < K; ++k) {
    const int8_t v = (int8_t)std::nearbyint(w[k] / s);
    if (v != q[k]) write(q, k, v, buf, B, n, delta, changed);
  }
  return delta;
}

int64_t requantize(const c10::intrusive_ptr<LinearPackedParamsBase>& packed, const at::Tensor& w, int64_t row0,
                   const at::Tensor& q, const at::Tensor& scale, const std::optional<at::Tensor>& bias, bool avx2) {
  auto* p = dynamic_cast<PackedLinearWeight*>(packed.get());
  TORCH_CHECK(p != nullptr, "requantize: not an fbgemm int8 linear weight");
  TORCH_CHECK(p->q_scheme == c10::kPerChannelAffine, "requantize: the weight is not quantised per channel");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.dim() == 2 && !w.requires_grad(),
              "requantize: w must be a contiguous (n, K) float32 tensor without grad");
  const int64_t n = w.size(0), K = w.size(1);
  TORCH_CHECK(q.scalar_type() == at::kChar && q.is_contiguous() && q.sizes() == w.sizes(),
              "requantize: q must be a contiguous (n, K) int8 tensor");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n,
              "requantize: scale must be (n,) float32");
  fbgemm::PackBMatrix<int8_t>* B = p->w.get();
  const int64_t N = (int64_t)p->col_offsets.size();
  TORCH_CHECK(B->numRows() == K && B->numCols() == N && (int64_t)p->w_scale.size() == N && row0 >= 0 && row0 + n <= N,
              "requantize: rows [row0, row0 + n) x K are not inside the packed weight");
  TORCH_CHECK(!bias.has_value() || (p->bias_.has_value() && bias->numel() == N),
              "requantize: a bias for a weight packed without one, or of the wrong size");
  const float* wp = w.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  int8_t* buf = B->getBuf();
  avx2 = avx2 && __builtin_cpu_supports("avx2");  // avx2=False: the scalar loops (the tests compare both)
  std::atomic<int64_t> changed{0};
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t r = begin; r < end; ++r) {
      const float* wr = wp + r * K;
      const float s = std::max(avx2 ? row_absmax<true>(wr, K) : row_absmax<false>(wr, K), 1e-12f) / 127.0f;
      const int32_t col = (int32_t)(row0 + r);
      const int32_t delta = avx2 ? round_row<true>(wr, qp + r * K, K, s, buf, B, col, local)
                                 : round_row<false>(wr, qp + r * K, K, s, buf, B, col, local);
      p->col_offsets[col] += delta;  // sum_k q_nk - w_zp_n * K, with w_zp_n = 0
      p->w_scale[col] = s;
      sp[r] = s;
    }
    changed += local;
  });
  if (bias.has_value()) p->bias_->copy_(*bias);
  return changed.load();
}

}  // namespace

TORCH_LIBRARY(rlhfkit_int8, m) {
  m.def("requantize(__torch__.torch.classes.quantized.LinearPackedParamsBase packed, Tensor w, int row0, Tensor(a!) q, "
        "Tensor(b!) scale, Tensor? bias, bool avx2=True) -> int",
        requantize);
}
