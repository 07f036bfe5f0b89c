// rlhfkit_int8::patch: re-quantise an fbgemm-packed int8 weight in place (rlhfkit.generation.quant).
//
// fbgemm's prepack (torch.ops.quantized.linear_prepack) rewrites every weight into its blocked
// layout with a scalar loop (~4 ns a weight, single-threaded): most of an int8 refresh. After an
// optimizer step only 0.03-0.2% of the rounded int8 values change, so this writes just those into
// the packed buffer (fbgemm's own PackBMatrix::addr gives each one's place), moves the column
// offsets (sum_k q_nk) by the change, and sets the per-channel scales and the bias: the packed
// weight is then what a fresh prepack of q_new would be (tests/test_quant.py compares both).
//
// torch ships fbgemm_utils.h, which declares PackedLinearWeight, but not the asmjit headers it
// includes, so its members are declared here as that header has them (torch 2.4-2.13); the
// Python side runs a self-test on a small weight before it uses this (quant._patcher), so a torch
// whose layout differs falls back to the prepack instead of writing in the wrong place.
#include <ATen/Parallel.h>
#include <ATen/native/quantized/PackedParams.h>
#include <fbgemm/Fbgemm.h>
#include <torch/library.h>

#include <atomic>
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

int64_t patch(const c10::intrusive_ptr<LinearPackedParamsBase>& packed, const at::Tensor& q_new,
              const at::Tensor& q_old, const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  auto* p = dynamic_cast<PackedLinearWeight*>(packed.get());
  TORCH_CHECK(p != nullptr, "patch: not an fbgemm int8 linear weight");
  TORCH_CHECK(p->q_scheme == c10::kPerChannelAffine, "patch: the weight is not quantised per channel");
  TORCH_CHECK(q_new.scalar_type() == at::kChar && q_old.scalar_type() == at::kChar && q_new.is_contiguous() &&
                  q_old.is_contiguous() && q_new.dim() == 2 && q_new.sizes() == q_old.sizes(),
              "patch: q_new and q_old must be contiguous (N, K) int8 tensors of one shape");
  const int64_t N = q_new.size(0), K = q_new.size(1);
  fbgemm::PackBMatrix<int8_t>* B = p->w.get();
  TORCH_CHECK(B->numRows() == K && B->numCols() == N && (int64_t)p->col_offsets.size() == N &&
                  (int64_t)p->w_scale.size() == N,
              "patch: q's shape is not the packed weight's");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == N,
              "patch: scale must be (N,) float32");
  TORCH_CHECK(bias.has_value() == p->bias_.has_value(), "patch: bias given for a weight packed without one, or not given");
  const int8_t* qn = q_new.data_ptr<int8_t>();
  const int8_t* qo = q_old.data_ptr<int8_t>();
  const float* s = scale.data_ptr<float>();
  int8_t* buf = B->getBuf();
  std::atomic<int64_t> changed{0};
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* a = qn + n * K;
      const int8_t* b = qo + n * K;
      int32_t delta = 0;
      int64_t k = 0;
      for (; k < K; k += 8) {  // 8 values at a time; equal words (nearly all) are skipped
        if (k + 8 <= K) {
          uint64_t wa, wb;
          std::memcpy(&wa, a + k, 8);
          std::memcpy(&wb, b + k, 8);
          if (wa == wb) continue;
        }
        for (int64_t j = k; j < std::min<int64_t>(k + 8, K); ++j) {
          if (a[j] != b[j]) {
            buf[B->addr((int32_t)j, (int32_t)n)] = a[j];  // B is q transposed: (k, n)
            delta += (int32_t)a[j] - (int32_t)b[j];
            ++local;
          }
        }
      }
      p->col_offsets[n] += delta;  // sum_k q_nk - w_zp_n * K, with w_zp_n = 0
      p->w_scale[n] = s[n];
    }
    changed += local;
  });
  if (bias.has_value()) p->bias_->copy_(*bias);
  return changed.load();
}

}  // namespace

TORCH_LIBRARY(rlhfkit_int8, m) {
  m.def("patch(__torch__.torch.classes.quantized.LinearPackedParamsBase packed, Tensor q_new, Tensor q_old, "
        "Tensor scale, Tensor? bias) -> int",
        patch);
}
