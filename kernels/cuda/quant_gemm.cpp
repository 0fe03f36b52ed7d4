// Host side of the quantized GEMM: launch planning and argument checks. The
// kernels are in w4a16_gemm.cu / sparse24_gemm.cu (quant_gemm_kernel.cuh).
#include "kernels/cuda/quant_gemm.h"

#include <algorithm>

#include "common/error.h"

namespace nibble::kernels::cuda {
namespace {

// Fewer chunks than this per split would spend more on the pipeline's prologue
// and the partial sums than the split gains.
constexpr std::int64_t kMinChunksPerSplit = 2;
constexpr std::int64_t kMaxSplits = 64;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

int quant_gemm_m_tiles(std::int64_t m) { return m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8; }

QuantGemmPlan plan_quant_gemm(std::int64_t m, const QuantLayoutDims& dims, int sm_count, int blocks_per_sm,
                              std::int64_t workspace_floats_available) {
  if (m <= 0) fail("quantized GEMM over {} rows", m);
  QuantGemmPlan plan;
  plan.m_tiles = quant_gemm_m_tiles(m);
  plan.m_blocks = ceil_div(m, plan.m_tiles * layout::kTokensPerMma);
  plan.n_blocks = dims.n_blocks();
  const std::int64_t k_chunks = dims.k_chunks();
  const std::int64_t blocks = plan.n_blocks * plan.m_blocks;
  const std::int64_t target = std::int64_t{std::max(1, sm_count)} * std::max(1, blocks_per_sm);
  std::int64_t splits = 1;
  if (blocks < target) {
    splits = std::min({ceil_div(target, blocks), k_chunks / kMinChunksPerSplit, kMaxSplits});
    const std::int64_t per_split_floats = m * dims.n_pad;
    splits = std::min(splits, per_split_floats > 0 ? workspace_floats_available / per_split_floats : 0);
    splits = std::max<std::int64_t>(splits, 1);
  }
  plan.chunks_per_split = ceil_div(k_chunks, splits);
  plan.splits = ceil_div(k_chunks, plan.chunks_per_split);  // no empty split
  if (plan.splits > 1) {
    plan.workspace_floats = plan.splits * m * dims.n_pad;
    plan.counters = plan.n_blocks * plan.m_blocks;
  }
  return plan;
}

int quant_gemm_blocks_per_sm(QuantFormat format, int m_tiles) {
  switch (format) {
    case QuantFormat::Dense4:
      return detail::blocks_per_sm_dense4(m_tiles);
    case QuantFormat::Dense8:
      return detail::blocks_per_sm_dense8(m_tiles);
    case QuantFormat::Sparse4:
      return detail::blocks_per_sm_sparse4(m_tiles);
    case QuantFormat::Q4K:
    case QuantFormat::Q5K:
    case QuantFormat::Q6K:
    case QuantFormat::Q50:
    case QuantFormat::Q51:
      return detail::blocks_per_sm_kquant(format, m_tiles);
  }
  fail("unknown quantized format {}", static_cast<int>(format));
}

void quant_gemm(const QuantGemmPlan& plan, const QuantWeightsView& w, const std::uint16_t* x, std::int64_t ldx,
                std::int64_t m, float* y, std::int64_t ldy, const float* bias, float* workspace, int* counters,
                cudaStream_t stream) {
  const QuantLayoutDims& d = w.dims;
  if (m <= 0) return;
  if (w.weights == nullptr || w.scales == nullptr || w.tile_group == nullptr || x == nullptr || y == nullptr ||
      (layout::kquant_has_sub_scales(d.format) && w.sub_scales == nullptr)) {
    fail("quantized GEMM: null pointer");
  }
  if (ldx < d.k_pad || ldx % 8 != 0 || reinterpret_cast<std::uintptr_t>(x) % 16 != 0) {
    fail("quantized GEMM: activations need rows of >= {} halves, a multiple of 8, 16-byte aligned (ldx {})", d.k_pad,
         ldx);
  }
  if (ldy < d.rows) fail("quantized GEMM: output rows of {} floats for {} outputs", ldy, d.rows);
  if (d.n_pad % layout::kBlockN != 0 || d.k_pad % layout::kChunkK != 0 || d.k_pad == 0) {
    fail("quantized GEMM: layout [{}, {}] is not padded to whole blocks", d.n_pad, d.k_pad);
  }
  const std::int64_t m_capacity = plan.m_tiles * layout::kTokensPerMma * plan.m_blocks;
  if (m_capacity < m || plan.n_blocks != d.n_blocks() || plan.chunks_per_split * plan.splits < d.k_chunks()) {
    fail("quantized GEMM: the plan does not cover [{}, {}] x {} rows", d.rows, d.cols, m);
  }
  if (plan.splits > 1 && (workspace == nullptr || counters == nullptr || plan.workspace_floats < plan.splits * m * d.n_pad)) {
    fail("quantized GEMM: a {}-way split needs a workspace and counters", plan.splits);
  }
  if (plan.m_blocks > 65535 || plan.splits > 65535 || d.n_blocks() > 0x7fffffff || d.k_chunks() > 0x7fffffff ||
      m > 0x7fffffff) {
    fail("quantized GEMM: [{}, {}] x {} rows is too large for one launch", d.rows, d.cols, m);
  }
  const detail::QuantGemmLaunch launch{&plan, &w, x, ldx, m, y, ldy, bias, workspace, counters, stream};
  switch (d.format) {
    case QuantFormat::Dense4:
      return detail::launch_dense4(launch);
    case QuantFormat::Dense8:
      return detail::launch_dense8(launch);
    case QuantFormat::Sparse4:
      return detail::launch_sparse4(launch);
    case QuantFormat::Q4K:
    case QuantFormat::Q5K:
    case QuantFormat::Q6K:
    case QuantFormat::Q50:
    case QuantFormat::Q51:
      return detail::launch_kquant(launch);
  }
}

}  // namespace nibble::kernels::cuda
