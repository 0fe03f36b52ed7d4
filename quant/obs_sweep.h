#pragma once
// GPTQ and SparseGPT are one algorithm (the "optimal brain" column sweep of
// Frantar & Alistarh): walk the input columns of W [rows, cols] in order, fix each
// column (quantize it, prune part of it, or both), and spread the error it makes
// over the columns not yet fixed through the Cholesky factor of H^-1, in lazy
// blocks of `block_size` columns. GPTQ is the sweep with a quantizer and no
// pruning; SparseGPT is the sweep with a mask chosen block by block by
// w^2 / [H^-1]_jj^2; SparseGPT+GPTQ is both at once (the paper's joint variant).
//
// Numerics: H (after dead columns and damping), its factorization and the factor U
// (upper Cholesky factor of H^-1: H^-1 = U^T U) are float64; the weights not yet
// reached are float32, updated in the lazy-block step by a float32 GEMM on the
// backend; the columns of the block being swept are float64.
//
// Groups: ceil(cols / group_size) of them, the last one shorter when group_size does
// not divide cols (as GPTQ/AutoGPTQ do). Without act_order, column k is in group
// k / group_size, and the group's scale is fit (fit_group) when the sweep reaches its
// first column, on the group's weights as updated by every column fixed before it
// (GPTQ). With act_order the columns are swept in order of decreasing H_jj (stable)
// and groups are formed in that order: sweep position i is in group i / group_size,
// so group_of_col[k] is (position of k) / group_size, AutoGPTQ's g_idx.
// static_groups fits every group (k / group_size) on the weights before the sweep.
// With QuantSpec::scales == Search, each fit weights its columns' errors by H_jj.
// group_size -1: one group per row, fit before the first column.
// "Updated by every column fixed before it" is exact: where a group (or a pruning
// unit, below) starts inside a lazy block and reaches past its end, the block ends
// early there, so the group's columns hold every earlier update when it is fit.
// The result is the same as with fixed blocks in exact arithmetic; only which
// columns are updated lazily changes.
//
// Pruning (SparseGPT): weights are removed by score w^2 / U_jj^2 (the current w),
//   NofM: when the sweep reaches a column k with k % m == 0, the n lowest of
//     columns k..k+m-1 of each row;
//   Unstructured: when it reaches a column k with k % block_size == 0, in each row
//     the lowest SparsitySpec::removed_in(k, k + block_size) of those block columns,
//     so every row loses exactly removed_in(0, cols) weights in all.
// Pruned weights become exactly 0 (code == zero point when quantized) and stay 0;
// their error is spread like any other column's. With quantization, a group's scale
// is fit with the weights already pruned at that point counted as 0 (weights whose
// mask is chosen later count with their current value). Ties in any selection go to
// the lower column. act_order together with pruning is rejected.
//
// GGUF blocks (SweepOptions::block_codec): the same sweep with a block codec in
// place of the uniform group quantizer. A group is one block (32 or 256 input
// columns, contiguous, cols a multiple of it); when the sweep reaches a block's
// first column (any of its columns under group-aware order) the codec fits the
// whole block's parameters (the K-quants' super-block d/dmin and every sub-block
// scale/min) on the block's weights as updated by every column fixed before it,
// weighting each column by H_jj (the imatrix's information); each column is then
// rounded to the nearest code under those fixed parameters, and its error spread
// as above. Not with act_order (blocks must be contiguous) or pruning.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/quantized_matrix.h"
#include "quant/block_codec.h"
#include "quant/group_quantizer.h"
#include "quant/hessian.h"

namespace nibble::kernels {
class Backend;
}

namespace nibble::quant {

// Which weights a pruning step removes.
struct SparsitySpec {
  enum class Kind : std::uint8_t { None, Unstructured, NofM };
  Kind kind = Kind::None;
  double fraction = 0.0;  // Unstructured: share of each row removed (0.5, 0.7)
  int n = 2, m = 4;       // NofM: n of every aligned m input columns are removed (2:4 keeps 2 of 4)

  static SparsitySpec none() { return {}; }
  static SparsitySpec unstructured(double fraction);  // fraction in [0, 1)
  static SparsitySpec n_of_m(int n, int m);           // 0 < n < m
  bool active() const { return kind != Kind::None; }
  // Unstructured: how many of the input columns [begin, end) of a row are removed,
  // round(fraction * end) - round(fraction * begin), so consecutive ranges add up
  // to exactly round(fraction * cols) per row. 0 for other kinds.
  std::int64_t removed_in(std::int64_t begin, std::int64_t end) const;
  // Throws nibble::Error for a fraction outside [0, 1), n:m outside 0 < n < m, or
  // m not dividing `cols`.
  void validate(std::int64_t cols) const;
};

// The selection rule every pruning method shares: sets pruned[i] = 1 for the `count`
// entries with the lowest scores (ties: the lower index first); entries already
// marked stay marked.
void mark_lowest_scores(std::span<const double> scores, std::int64_t count, std::span<std::uint8_t> pruned);

struct SweepOptions {
  std::optional<QuantSpec> quantize;  // nullopt: prune only, the weights stay float
  // Quantize into GGUF blocks instead (quantize must then be nullopt); see the header.
  const BlockCodec* block_codec = nullptr;
  SparsitySpec sparsity;
  bool act_order = false;      // GPTQ: fix columns in order of decreasing H_jj (not with pruning)
  bool static_groups = false;  // GPTQ: fit every group's scale before the sweep (with act_order)
  // GPTQ without act_order, group_size > 0: sweep whole groups in order of their
  // largest H_jj, and each group's columns by decreasing H_jj, while the groups stay
  // the plain contiguous ones (g_idx k / group_size, so no act-order layout is
  // needed to read the result). A shorter last group is swept last, in column order.
  // Group-aware reordering (GAR), as GPTQModel does by default.
  bool group_aware_order = false;
  // Weights that are exactly zero on entry stay zero (already pruned by magnitude or
  // Wanda, then quantized): their errors are spread like any other column's. With
  // sparsity as well, they are pruned first and count towards each share.
  bool preserve_zeros = false;
  double damp = 0.01;          // added to H's diagonal: damp * mean(diag H)
  std::int64_t block_size = 128;
  // Runs the float32 GEMM of the lazy updates (nothing else may use it meanwhile).
  // Null: a CPU backend made for the call. The float64 factorization and the
  // row-by-row sweep run on as many threads as a CPU backend has (one per core for
  // other backends).
  kernels::Backend* backend = nullptr;
};

struct SweepResult {
  // The weights as compressed (dequantized when quantized, zeros where pruned), [rows, cols].
  std::vector<float> weights;
  // Set when options.quantize: codes, scales and zeros in nibble's format-neutral
  // form; group_of_col is GPTQ's g_idx (non-monotone under act_order).
  std::optional<QuantizedMatrix> quantized;
  // Set with a block codec: the rows' GGUF blocks, rows one after another; `weights`
  // is then exactly what the loader's decoder reads back from them.
  std::vector<std::byte> blocks;
  // The proxy loss the sweep accumulated: the sum over every fixed weight of
  // (w - q)^2 / [H_F^-1]_jj = (w - q)^2 / U_jj^2, w its value when fixed and H_F the
  // damped Hessian of the columns not yet fixed. In exact arithmetic this telescopes
  // to tr((W - Q) H (W - Q)^T) for the damped H (no factor 1/2). round_to_nearest
  // reports sum (w - q)^2, the same loss for H = I.
  double loss = 0.0;
};

// `weights` [rows, cols] row-major, `hessian` of dim == cols. Throws nibble::Error
// for inconsistent sizes or options (bits, group size, n:m not dividing cols, ...),
// NaN/Inf in the weights or H, or an H that is not positive definite after damping.
// Dead input columns (H_jj == 0) are treated as GPTQ does: weights zeroed, H_jj set
// to 1 (before the damping, which is damp * mean(diag H)).
SweepResult obs_sweep(std::span<const float> weights, std::int64_t rows, std::int64_t cols, const Hessian& hessian,
                      const SweepOptions& options);

// Round-to-nearest: every group quantized on its own, no error feedback. The baseline.
// `importance` (empty, or one non-negative value per input column: the calibration
// inputs' second moments, llama.cpp's imatrix) weights spec.scales == Search; the
// reported loss stays the unweighted sum (w - q)^2.
SweepResult round_to_nearest(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                             const QuantSpec& spec, std::span<const double> importance = {});

// Round-to-nearest into GGUF blocks: every block fitted on its own (BlockCodec::fit),
// `importance` empty or one weight per input column (e.g. Hessian::diagonal). The
// loss is sum importance * (w - q)^2.
SweepResult round_to_nearest_blocks(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                                    const BlockCodec& codec, std::span<const float> importance = {});

// Pruning without weight updates. Magnitude: the smallest |w| go (per row for
// Unstructured, per aligned group for NofM). Wanda: score |w_ij| * ||X_j||_2 with
// the activation norms from `column_norms` (Hessian::column_norms), compared per row.
// Unstructured removes removed_in(0, cols) = round(fraction * cols) of every row.
// Ties go to the lower column (mark_lowest_scores).
std::vector<float> prune_magnitude(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                                   const SparsitySpec& sparsity);
std::vector<float> prune_wanda(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                               std::span<const double> column_norms, const SparsitySpec& sparsity);

}  // namespace nibble::quant
