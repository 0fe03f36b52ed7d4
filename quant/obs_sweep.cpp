#include "quant/obs_sweep.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>

#include "common/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace nibble::quant {

std::int64_t SparsitySpec::removed_in(std::int64_t begin, std::int64_t end) const {
  if (kind != Kind::Unstructured) return 0;
  return std::llround(fraction * static_cast<double>(end)) - std::llround(fraction * static_cast<double>(begin));
}

void SparsitySpec::validate(std::int64_t cols) const {
  switch (kind) {
    case Kind::None:
      return;
    case Kind::Unstructured:
      if (!(fraction >= 0.0 && fraction < 1.0)) fail("unstructured sparsity {} is outside [0, 1)", fraction);
      return;
    case Kind::NofM:
      if (!(n > 0 && n < m)) fail("{}:{} sparsity is invalid (removes n of every m columns, 0 < n < m)", n, m);
      if (cols % m != 0) fail("{}:{} sparsity needs a multiple of {} input columns, got {}", n, m, m, cols);
      return;
  }
  fail("unknown sparsity kind {}", static_cast<int>(kind));
}

SparsitySpec SparsitySpec::unstructured(double fraction) {
  SparsitySpec spec;
  spec.kind = Kind::Unstructured;
  spec.fraction = fraction;
  spec.validate(0);
  return spec;
}

SparsitySpec SparsitySpec::n_of_m(int n, int m) {
  SparsitySpec spec;
  spec.kind = Kind::NofM;
  spec.n = n;
  spec.m = m;
  spec.validate(m);
  return spec;
}

namespace {

using Index = std::int64_t;

std::size_t at(Index i) { return static_cast<std::size_t>(i); }

// The threads the float64 work and the row sweep run on (the lazy-update GEMM runs
// on the backend's own). Ranges are split into chunks that threads claim.
class Workers {
 public:
  explicit Workers(int threads) : pool_(std::max(1, threads)) {}
  int size() const { return pool_.size(); }

  // task(begin, end, worker) for consecutive chunks of [0, total). The first error a
  // task throws is rethrown here (the pool's tasks must not throw).
  template <typename Task>
  void for_chunks(Index total, Index chunk, const Task& task) {
    if (total <= 0) return;
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    pool_.parallel_for((total + chunk - 1) / chunk, [&](std::int64_t index, int worker) {
      if (failed.load(std::memory_order_relaxed)) return;
      try {
        task(index * chunk, std::min(total, (index + 1) * chunk), worker);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    });
    if (error) std::rethrow_exception(error);
  }

 private:
  kernels::cpu::ThreadPool pool_;
};

// ---------------------------------------------------------------------------
// float64 dense kernels for factorizing H: O(K^3), so register-tiled and
// cache-blocked. Each is an always-inline body compiled twice, for AVX2+FMA and
// for any x86-64, and picked at run time like the CPU backend's kernels.

// C[m x n] -= A[m x k] * B[k x n], all row-major with leading dimensions.
struct Product {
  double* c;
  Index ldc;
  const double* a;
  Index lda;
  const double* b;
  Index ldb;
  Index m, n, k;
};

constexpr Index kProductDepth = 128;  // a 4 x depth slice of A stays in L1 ...
constexpr Index kProductWidth = 256;  // ... and a packed depth x width panel of B in L2

[[gnu::always_inline]] inline void subtract_product_body(const Product& p, double* packed) {
  // Four doubles, loaded and stored unaligned straight from memory.
  typedef double Vec4 __attribute__((vector_size(32), aligned(8), may_alias));
  for (Index t0 = 0; t0 < p.k; t0 += kProductDepth) {
    const Index t1 = std::min(t0 + kProductDepth, p.k), depth = t1 - t0;
    for (Index j0 = 0; j0 < p.n; j0 += kProductWidth) {
      const Index j1 = std::min(j0 + kProductWidth, p.n), strips = (j1 - j0) / 8;
      // B's rows are often a multiple of 4 KiB apart, so reading 8 columns down them
      // would hit one L1 set; packed, each 8-column strip is contiguous.
      for (Index s = 0; s < strips; ++s) {
        for (Index t = 0; t < depth; ++t) {
          const double* from = p.b + (t0 + t) * p.ldb + j0 + 8 * s;
          double* to = packed + (s * depth + t) * 8;
          for (int c = 0; c < 8; ++c) to[c] = from[c];
        }
      }
      Index i = 0;
      for (; i + 4 <= p.m; i += 4) {
        const double* a0 = p.a + i * p.lda + t0;
        const double* a1 = a0 + p.lda;
        const double* a2 = a1 + p.lda;
        const double* a3 = a2 + p.lda;
        for (Index s = 0; s < strips; ++s) {
          // A 4 x 8 tile of C in eight accumulators, all in registers.
          Vec4 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
          const double* b = packed + s * depth * 8;
          for (Index t = 0; t < depth; ++t) {
            const Vec4 b0 = *reinterpret_cast<const Vec4*>(b + t * 8);
            const Vec4 b1 = *reinterpret_cast<const Vec4*>(b + t * 8 + 4);
            c00 += a0[t] * b0;
            c01 += a0[t] * b1;
            c10 += a1[t] * b0;
            c11 += a1[t] * b1;
            c20 += a2[t] * b0;
            c21 += a2[t] * b1;
            c30 += a3[t] * b0;
            c31 += a3[t] * b1;
          }
          double* c = p.c + i * p.ldc + j0 + 8 * s;
          *reinterpret_cast<Vec4*>(c) -= c00;
          *reinterpret_cast<Vec4*>(c + 4) -= c01;
          *reinterpret_cast<Vec4*>(c + p.ldc) -= c10;
          *reinterpret_cast<Vec4*>(c + p.ldc + 4) -= c11;
          *reinterpret_cast<Vec4*>(c + 2 * p.ldc) -= c20;
          *reinterpret_cast<Vec4*>(c + 2 * p.ldc + 4) -= c21;
          *reinterpret_cast<Vec4*>(c + 3 * p.ldc) -= c30;
          *reinterpret_cast<Vec4*>(c + 3 * p.ldc + 4) -= c31;
        }
      }
      // The rows and columns left over from whole tiles.
      for (Index r = 0; r < p.m; ++r) {
        const Index column_begin = r < i ? j0 + 8 * strips : j0;
        double* c = p.c + r * p.ldc;
        for (Index t = t0; t < t1; ++t) {
          const double a = p.a[r * p.lda + t];
          const double* b = p.b + t * p.ldb;
          for (Index j = column_begin; j < j1; ++j) c[j] -= a * b[j];
        }
      }
    }
  }
}

// Forward substitution on whole rows: for i in [0, rows), with L lower triangular,
//   x_i := (x_i - sum_{t < i} L[i][t] x_t) / L[i][i],
// x_i being row i of X [rows, len] (the rows before it already solved).
[[gnu::always_inline]] inline void solve_lower_rows_body(const double* l, Index ldl, double* x, Index ldx, Index rows,
                                                          Index len) {
  for (Index i = 0; i < rows; ++i) {
    double* row = x + i * ldx;
    for (Index t = 0; t < i; ++t) {
      const double factor = l[i * ldl + t];
      const double* solved = x + t * ldx;
      for (Index c = 0; c < len; ++c) row[c] -= factor * solved[c];
    }
    const double inverse = 1.0 / l[i * ldl + i];
    for (Index c = 0; c < len; ++c) row[c] *= inverse;
  }
}

[[gnu::target("avx2,fma")]] void subtract_product_avx2(const Product& p, double* packed) {
  subtract_product_body(p, packed);
}
void subtract_product_generic(const Product& p, double* packed) { subtract_product_body(p, packed); }
[[gnu::target("avx2,fma")]] void solve_lower_rows_avx2(const double* l, Index ldl, double* x, Index ldx, Index rows,
                                                       Index len) {
  solve_lower_rows_body(l, ldl, x, ldx, rows, len);
}
void solve_lower_rows_generic(const double* l, Index ldl, double* x, Index ldx, Index rows, Index len) {
  solve_lower_rows_body(l, ldl, x, ldx, rows, len);
}

bool use_avx2() { return kernels::cpu::active_isa() != kernels::cpu::Isa::Scalar; }

void subtract_product(const Product& p) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0) return;
  thread_local std::vector<double> packed(at(kProductDepth * kProductWidth));
  if (use_avx2()) {
    subtract_product_avx2(p, packed.data());
  } else {
    subtract_product_generic(p, packed.data());
  }
}

void solve_lower_rows(const double* l, Index ldl, double* x, Index ldx, Index rows, Index len) {
  if (use_avx2()) {
    solve_lower_rows_avx2(l, ldl, x, ldx, rows, len);
  } else {
    solve_lower_rows_generic(l, ldl, x, ldx, rows, len);
  }
}

constexpr Index kPanel = 64;         // columns factored (or rows inverted) per step
constexpr Index kRowChunk = 64;      // rows per task of a trailing update
constexpr Index kColumnChunk = 256;  // columns per task of a triangular solve

// Right-looking blocked Cholesky of the symmetric n x n matrix `a` (its lower
// triangle is read): on success `a` holds L (H = L L^T) with zeros above the
// diagonal and -1 is returned; otherwise the pivot that was not positive.
Index cholesky_lower_in_place(std::vector<double>& a, Index n, Workers& workers) {
  std::vector<double> panel_t;  // the panel below the diagonal block, transposed
  for (Index k0 = 0; k0 < n; k0 += kPanel) {
    const Index k1 = std::min(k0 + kPanel, n), width = k1 - k0, below = n - k1;
    // The diagonal block; earlier panels' updates are already in it.
    for (Index j = k0; j < k1; ++j) {
      double pivot = a[at(j * n + j)];
      for (Index t = k0; t < j; ++t) pivot -= a[at(j * n + t)] * a[at(j * n + t)];
      if (!(pivot > 0.0) || !std::isfinite(pivot)) return j;
      const double diagonal = std::sqrt(pivot);
      a[at(j * n + j)] = diagonal;
      for (Index i = j + 1; i < k1; ++i) {
        double value = a[at(i * n + j)];
        for (Index t = k0; t < j; ++t) value -= a[at(i * n + t)] * a[at(j * n + t)];
        a[at(i * n + j)] = value / diagonal;
      }
    }
    if (below == 0) break;
    // Panel below: P := P L11^-T, solved on P^T so each step is a contiguous row operation.
    panel_t.resize(at(width * below));
    for (Index i = 0; i < below; ++i) {
      for (Index t = 0; t < width; ++t) panel_t[at(t * below + i)] = a[at((k1 + i) * n + k0 + t)];
    }
    workers.for_chunks(below, kColumnChunk, [&](Index begin, Index end, int) {
      solve_lower_rows(a.data() + k0 * n + k0, n, panel_t.data() + begin, below, width, end - begin);
    });
    for (Index i = 0; i < below; ++i) {
      for (Index t = 0; t < width; ++t) a[at((k1 + i) * n + k0 + t)] = panel_t[at(t * below + i)];
    }
    // Trailing update of the lower triangle, in row blocks: A22 -= P P^T. The
    // strip above the diagonal inside each block is computed too and ignored.
    workers.for_chunks(below, kRowChunk, [&](Index begin, Index end, int) {
      const Index i0 = k1 + begin, i1 = k1 + end;
      subtract_product(Product{a.data() + i0 * n + k1, n, a.data() + i0 * n + k0, n, panel_t.data(), below, i1 - i0,
                               i1 - k1, width});
    });
  }
  for (Index i = 0; i < n; ++i) std::fill(a.begin() + i * n + i + 1, a.begin() + (i + 1) * n, 0.0);
  return -1;
}

// Replaces lower-triangular L (zeros above the diagonal) by L^-1, block row by
// block row: X_i = L_ii^-1 (E_i - L[i, :i] X[:i, :i]).
void invert_lower_in_place(std::vector<double>& a, Index n, Workers& workers) {
  std::vector<double> rows;
  for (Index i0 = 0; i0 < n; i0 += kPanel) {
    const Index i1 = std::min(i0 + kPanel, n), width = i1 - i0;
    rows.assign(at(width * i1), 0.0);
    for (Index r = 0; r < width; ++r) rows[at(r * i1 + i0 + r)] = 1.0;
    // Columns are independent. X[:i0, :i0] is lower triangular, so columns
    // [begin, end) only need X's rows from `begin` on; L_ii is still in place
    // (rows i0.. of `a` are overwritten only after the solve).
    workers.for_chunks(i1, kColumnChunk, [&](Index begin, Index end, int) {
      if (begin < i0) {
        subtract_product(Product{rows.data() + begin, i1, a.data() + i0 * n + begin, n, a.data() + begin * n + begin, n,
                                 width, std::min(end, i0) - begin, i0 - begin});
      }
      solve_lower_rows(a.data() + i0 * n + i0, n, rows.data() + begin, i1, width, end - begin);
    });
    for (Index r = 0; r < width; ++r) std::copy_n(rows.begin() + r * i1, i1, a.begin() + (i0 + r) * n);
  }
}

// ---------------------------------------------------------------------------
// The sweep.

// Validated options and everything about the sweep that depends only on column
// positions (not on weights): the order, the groups, where selections happen.
struct SweepPlan {
  Index rows = 0, cols = 0, block_size = 0;
  std::optional<QuantSpec> quantize;  // with a block codec: its block as the group size
  const BlockCodec* codec = nullptr;
  SparsitySpec sparsity;
  bool static_groups = false;
  Index groups = 1;
  std::vector<Index> order;                    // sweep position -> input column
  std::vector<std::int32_t> group_at;          // sweep position -> group

  Index group_size() const { return quantize->group_size; }
  // Whether groups are fit while sweeping (rather than before it) and position i starts one.
  bool group_starts(Index i) const {
    if (!quantize || static_groups) return false;
    return group_size() > 0 ? i % group_size() == 0 : i == 0;
  }
  Index group_end(Index i) const { return group_size() > 0 ? std::min(i + group_size(), cols) : cols; }
  bool unstructured_starts(Index i) const {
    return sparsity.kind == SparsitySpec::Kind::Unstructured && i % block_size == 0;
  }
  Index unstructured_end(Index i) const { return std::min(i + block_size, cols); }
  bool n_of_m_starts(Index i) const { return sparsity.kind == SparsitySpec::Kind::NofM && i % sparsity.m == 0; }

  // Columns [i, end) must hold every earlier update when the sweep reaches i.
  Index current_until(Index i) const {
    Index end = i;
    if (group_starts(i)) end = std::max(end, group_end(i));
    if (unstructured_starts(i)) end = std::max(end, unstructured_end(i));
    if (n_of_m_starts(i)) end = std::max(end, i + sparsity.m);
    return end;
  }
  // The lazy block starting at `begin`: block_size columns, ended early where
  // something starting inside it needs columns past its end (see the header).
  Index block_end(Index begin) const {
    const Index end = std::min(begin + block_size, cols);
    for (Index i = begin + 1; i < end; ++i) {
      if (current_until(i) > end) return i;
    }
    return end;
  }
};

SweepPlan make_plan(Index rows, Index cols, const SweepOptions& options) {
  SweepPlan plan;
  plan.rows = rows;
  plan.cols = cols;
  plan.block_size = options.block_size;
  plan.quantize = options.quantize;
  plan.sparsity = options.sparsity;
  plan.static_groups = options.static_groups;
  if (rows <= 0 || cols <= 0) fail("cannot sweep a [{}, {}] matrix", rows, cols);
  if (options.block_size <= 0) fail("block size must be positive, got {}", options.block_size);
  if (!(options.damp >= 0.0 && std::isfinite(options.damp))) fail("damping {} is not a non-negative number", options.damp);
  options.sparsity.validate(cols);
  if (options.act_order && options.sparsity.active()) fail("act_order together with pruning is not supported");
  if (options.group_aware_order) {
    if (options.act_order) fail("group-aware order and act_order are two different column orders; choose one");
    if (options.sparsity.active()) fail("group-aware order together with pruning is not supported");
    if ((!options.quantize || options.quantize->group_size <= 0) && options.block_codec == nullptr) {
      fail("group-aware order needs quantization groups");
    }
    if (options.static_groups) fail("group-aware order fits each group as the sweep reaches it; drop static groups");
  }
  if (options.block_codec != nullptr) {
    const BlockCodec& codec = *options.block_codec;
    if (options.quantize) fail("choose either a uniform quantizer or a block codec, not both");
    if (options.act_order) fail("{} blocks are contiguous columns; act_order cannot be stored", ggml_type_name(codec.type()));
    if (options.sparsity.active()) fail("pruning together with GGUF blocks is not supported");
    if (options.static_groups) fail("GGUF blocks are fit as the sweep reaches them; drop static groups");
    if (cols % codec.elements() != 0) {
      fail("{} input columns are not a whole number of {} blocks of {}", cols, ggml_type_name(codec.type()),
           codec.elements());
    }
    plan.codec = &codec;
    // The group bookkeeping (boundaries, lazy-block ends) is the uniform path's with
    // a group of one block; the 8 bits only satisfy QuantSpec and are never used.
    plan.quantize = QuantSpec{8, codec.elements(), true, 0};
  }
  if (plan.quantize) {
    plan.quantize->validate();
    plan.groups = plan.quantize->groups(cols);
  }
  return plan;
}

// GAR's sweep order (SweepOptions::group_aware_order): whole groups by their largest
// diagonal entry, columns within a group by theirs, the short tail group last.
template <typename ByDiagonal>
std::vector<Index> group_aware_order(const std::vector<double>& diagonal, Index group_size, const ByDiagonal& by_diagonal) {
  const auto cols = static_cast<Index>(diagonal.size());
  const Index full_groups = cols / group_size;
  std::vector<Index> groups(at(full_groups));
  std::iota(groups.begin(), groups.end(), Index{0});
  std::vector<double> largest(at(full_groups));
  for (Index g = 0; g < full_groups; ++g) {
    largest[at(g)] = *std::max_element(diagonal.begin() + g * group_size, diagonal.begin() + (g + 1) * group_size);
  }
  std::stable_sort(groups.begin(), groups.end(), [&](Index a, Index b) { return largest[at(a)] > largest[at(b)]; });
  std::vector<Index> order;
  order.reserve(at(cols));
  for (const Index g : groups) {
    const auto first = static_cast<std::ptrdiff_t>(order.size());
    for (Index k = g * group_size; k < (g + 1) * group_size; ++k) order.push_back(k);
    std::stable_sort(order.begin() + first, order.end(), by_diagonal);
  }
  for (Index k = full_groups * group_size; k < cols; ++k) order.push_back(k);
  return order;
}

struct Factorization {
  std::vector<double> u;  // upper Cholesky factor of H^-1 in sweep order, [cols, cols]
  std::vector<Index> order;
  std::vector<std::uint8_t> dead;  // per input column
};

// Dead columns, the sweep order, damping and U, all in float64. U comes from one
// Cholesky and one triangular inverse: with J the reversal permutation and
// J H J = L L^T, H^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is upper triangular
// with a positive diagonal, so it is the upper factor; computing H^-1 and then its
// Cholesky factor (GPTQ's reference) gives the same matrix at twice the cost.
Factorization factorize(const Hessian& hessian, Index cols, const SweepOptions& options, Workers& workers) {
  const std::vector<double>& h = hessian.values();
  for (std::size_t i = 0; i < h.size(); ++i) {
    if (!std::isfinite(h[i])) fail("Hessian entry ({}, {}) is {}", at(i) / at(cols), at(i) % at(cols), h[i]);
  }
  Factorization f;
  std::vector<double> diagonal(at(cols));
  f.dead.assign(at(cols), 0);
  for (Index j = 0; j < cols; ++j) {
    const double value = h[at(j * cols + j)];
    f.dead[at(j)] = value == 0.0 ? 1 : 0;
    diagonal[at(j)] = value == 0.0 ? 1.0 : value;
  }
  f.order.resize(at(cols));
  std::iota(f.order.begin(), f.order.end(), Index{0});
  const auto by_diagonal = [&](Index a, Index b) { return diagonal[at(a)] > diagonal[at(b)]; };
  if (options.act_order) {
    std::stable_sort(f.order.begin(), f.order.end(), by_diagonal);
  } else if (options.group_aware_order) {
    f.order = group_aware_order(
        diagonal, options.block_codec != nullptr ? options.block_codec->elements() : options.quantize->group_size,
        by_diagonal);
  }
  const double damping =
      options.damp * std::accumulate(diagonal.begin(), diagonal.end(), 0.0) / static_cast<double>(cols);

  // Reversed sweep order: row a of `work` is sweep position cols - 1 - a.
  std::vector<double> work(at(cols * cols));
  for (Index a = 0; a < cols; ++a) {
    const Index row = f.order[at(cols - 1 - a)];
    for (Index b = 0; b <= a; ++b) work[at(a * cols + b)] = h[at(row * cols + f.order[at(cols - 1 - b)])];
    work[at(a * cols + a)] = diagonal[at(row)] + damping;
  }
  const Index failed = cholesky_lower_in_place(work, cols, workers);
  if (failed >= 0) {
    fail("the Hessian is not positive definite even after damping by {} x its mean diagonal (at input column {}); "
         "raise the damping or calibrate on more data",
         options.damp, f.order[at(cols - 1 - failed)]);
  }
  invert_lower_in_place(work, cols, workers);
  std::reverse(work.begin(), work.end());  // J X J: element (a, b) moves to (n-1-a, n-1-b)
  f.u = std::move(work);
  return f;
}

// Per-column importance for fit_group's search, scaled to mean 1 so float holds it
// whatever the activations' magnitude; empty when there is none (or all are 0).
std::vector<float> normalized_importance(std::span<const double> importance) {
  double sum = 0.0;
  for (const double h : importance) {
    if (!(h >= 0.0) || !std::isfinite(h)) fail("column importance {} is not a finite non-negative number", h);
    sum += h;
  }
  if (!(sum > 0.0)) return {};
  const double mean = sum / static_cast<double>(importance.size());
  std::vector<float> out(importance.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(importance[i] / mean);
  return out;
}

// The sweep's state, in sweep order (columns permuted by plan.order).
class Sweep {
 public:
  // `importance`: per sweep position (H_jj), weighting each group's scale search or each
  // block's fit; empty: none.
  Sweep(const SweepPlan& plan, std::vector<float> weights, std::vector<double> u, std::vector<std::uint8_t> pruned,
        std::vector<GroupParams> params, std::vector<float> importance, Workers& workers)
      : plan_(plan),
        rows_(plan.rows),
        cols_(plan.cols),
        w_(std::move(weights)),
        u_(std::move(u)),
        pruned_(std::move(pruned)),
        params_(std::move(params)),
        block_params_(plan.codec != nullptr ? static_cast<std::size_t>(rows_ * plan.groups) : 0),
        importance_(std::move(importance)),
        out_(w_.size()),
        codes_(plan.quantize ? w_.size() : 0),
        row_loss_(at(rows_), 0.0),
        workers_(workers),
        scratch_(at(workers.size())) {}

  void run(kernels::Backend& backend) {
    for (Index begin = 0; begin < cols_;) {
      const Index end = plan_.block_end(begin);
      sweep_block(begin, end);
      if (end < cols_) lazy_update(begin, end, backend);
      begin = end;
    }
  }

  double loss() const { return std::accumulate(row_loss_.begin(), row_loss_.end(), 0.0); }
  const std::vector<float>& compressed() const { return out_; }
  const std::vector<std::uint8_t>& codes() const { return codes_; }
  const std::vector<GroupParams>& params() const { return params_; }
  std::vector<BlockCodec::Params>& block_params() { return block_params_; }

 private:
  // What one thread needs to sweep a row.
  struct RowScratch {
    std::vector<double> row, scores;
    std::vector<float> group_values, group_importance;
  };
  static constexpr Index kRowsPerTask = 16;

  void sweep_block(Index begin, Index end) {
    const Index width = end - begin;
    block_u_.resize(at(width * width));
    for (Index j = 0; j < width; ++j) {
      std::copy_n(u_.begin() + (begin + j) * cols_ + begin, width, block_u_.begin() + j * width);
    }
    block_error_.resize(at(rows_ * width));
    workers_.for_chunks(rows_, kRowsPerTask, [&](Index first, Index last, int worker) {
      for (Index r = first; r < last; ++r) sweep_row(r, begin, end, scratch_[at(worker)]);
    });
  }

  // Rows are independent inside a block: each row's columns are fixed in order,
  // each error spread over the row's later block columns at once.
  void sweep_row(Index r, Index begin, Index end, RowScratch& scratch) {
    const Index width = end - begin;
    std::vector<double>& row = scratch.row;
    row.resize(at(width));
    const float* source = w_.data() + r * cols_;
    for (Index j = 0; j < width; ++j) row[at(j)] = source[begin + j];
    // A column's value with every update so far: the block's from `row`, later ones
    // from w_ (current there only for the columns plan_.block_end guarantees).
    const auto current = [&](Index c) { return c < end ? row[at(c - begin)] : static_cast<double>(source[c]); };
    std::uint8_t* pruned = pruned_.data() + r * cols_;
    const int maxq = plan_.quantize ? plan_.quantize->maxq() : 0;

    for (Index i = begin; i < end; ++i) {
      if (plan_.unstructured_starts(i)) {
        const Index unit_end = plan_.unstructured_end(i);
        choose_pruned(current, pruned, i, unit_end, plan_.sparsity.removed_in(i, unit_end), scratch.scores);
      }
      if (plan_.n_of_m_starts(i)) {
        choose_pruned(current, pruned, i, i + plan_.sparsity.m, plan_.sparsity.n, scratch.scores);
      }
      if (plan_.group_starts(i) && plan_.codec != nullptr) {
        fit_block(r, i, current, scratch);
      } else if (plan_.group_starts(i)) {
        scratch.group_values.clear();
        for (Index c = i; c < plan_.group_end(i); ++c) {
          scratch.group_values.push_back(pruned[c] ? 0.0f : static_cast<float>(current(c)));
        }
        scratch.group_importance.clear();
        if (!importance_.empty()) {
          const auto first = importance_.begin() + i;
          scratch.group_importance.assign(first, first + (plan_.group_end(i) - i));
        }
        params_[at(r * plan_.groups + plan_.group_at[at(i)])] =
            fit_group(scratch.group_values, *plan_.quantize, scratch.group_importance);
      }

      const Index j = i - begin;
      const double w = row[at(j)];
      float q = static_cast<float>(w);
      if (plan_.codec != nullptr) {
        const BlockCodec::Params& p = block_params_[at(r * plan_.groups + plan_.group_at[at(i)])];
        const int element = static_cast<int>(plan_.order[at(i)] % plan_.codec->elements());
        const std::uint8_t code = plan_.codec->quantize(q, element, p);
        codes_[at(r * cols_ + i)] = code;
        q = plan_.codec->value(code, element, p);
      } else if (plan_.quantize) {
        const GroupParams& p = params_[at(r * plan_.groups + plan_.group_at[at(i)])];
        const int code = pruned[i] ? p.zero : quantize_code(q, p, maxq);
        codes_[at(r * cols_ + i)] = static_cast<std::uint8_t>(code);
        q = dequantize_code(code, p);
      } else if (pruned[i]) {
        q = 0.0f;
      }
      out_[at(r * cols_ + i)] = q;
      const double error = (w - q) / u_[at(i * cols_ + i)];
      row_loss_[at(r)] += error * error;
      block_error_[at(r * width + j)] = static_cast<float>(error);
      const double* u_row = block_u_.data() + j * width;
      for (Index c = j + 1; c < width; ++c) row[at(c)] -= error * u_row[c];
    }
  }

  // The block that sweep position i starts: its columns (in column order, which
  // group-aware order may differ from sweep order) as updated so far.
  template <typename Current>
  void fit_block(Index r, Index i, const Current& current, RowScratch& scratch) {
    const Index n = plan_.codec->elements();
    scratch.group_values.assign(at(n), 0.0f);
    scratch.group_importance.assign(at(n), 1.0f);
    for (Index c = i; c < plan_.group_end(i); ++c) {
      const Index element = plan_.order[at(c)] % n;
      scratch.group_values[at(element)] = static_cast<float>(current(c));
      if (!importance_.empty()) scratch.group_importance[at(element)] = importance_[at(c)];
    }
    block_params_[at(r * plan_.groups + plan_.group_at[at(i)])] =
        plan_.codec->fit(scratch.group_values, scratch.group_importance);
  }

  // SparseGPT's rule: the lowest w^2 / U_cc^2 in columns [begin, end) of one row;
  // weights pruned already (preserve_zeros) go first and count towards `count`.
  template <typename Current>
  void choose_pruned(const Current& current, std::uint8_t* pruned, Index begin, Index end, Index count,
                     std::vector<double>& scores) const {
    scores.resize(at(end - begin));
    for (Index c = begin; c < end; ++c) {
      const double w = current(c), d = u_[at(c * cols_ + c)];
      scores[at(c - begin)] = pruned[c] ? -std::numeric_limits<double>::infinity() : w * w / (d * d);
    }
    mark_lowest_scores(scores, count, std::span<std::uint8_t>(pruned + begin, at(end - begin)));
  }

  // W[:, end:] -= E U[begin:end, end:], E the block's scaled errors: the float32
  // GEMM that dominates the sweep, as x w^T with w = U[begin:end, end:]^T.
  void lazy_update(Index begin, Index end, kernels::Backend& backend) {
    const Index width = end - begin, rest = cols_ - end;
    factor_t_.resize(at(rest * width));
    for (Index b = 0; b < width; ++b) {
      const double* u_row = u_.data() + (begin + b) * cols_ + end;
      for (Index c = 0; c < rest; ++c) factor_t_[at(c * width + b)] = static_cast<float>(u_row[c]);
    }
    update_.resize(at(rows_ * rest));
    backend.linear(block_error_.data(), rows_, kernels::Matrix{DType::F32, rest, width, factor_t_.data()}, nullptr,
                   update_.data());
    workers_.for_chunks(rows_, kRowsPerTask, [&](Index first, Index last, int) {
      for (Index r = first; r < last; ++r) {
        float* row = w_.data() + r * cols_ + end;
        const float* update = update_.data() + r * rest;
        for (Index c = 0; c < rest; ++c) row[c] -= update[c];
      }
    });
  }

  const SweepPlan& plan_;
  Index rows_, cols_;
  std::vector<float> w_;     // [rows, cols]: fixed columns stale, later ones lazily updated
  std::vector<double> u_;    // [cols, cols]
  std::vector<std::uint8_t> pruned_;  // [rows, cols]
  std::vector<GroupParams> params_;   // [rows, groups]
  std::vector<BlockCodec::Params> block_params_;  // [rows, groups] with a block codec
  std::vector<float> importance_;     // [cols] in sweep order, or empty
  std::vector<float> out_;            // [rows, cols]: the compressed weights
  std::vector<std::uint8_t> codes_;   // [rows, cols] when quantizing
  std::vector<double> row_loss_;
  Workers& workers_;
  std::vector<RowScratch> scratch_;   // per worker
  // The current block's U and scaled errors [rows, block]; the lazy update's operands.
  std::vector<double> block_u_;
  std::vector<float> block_error_, factor_t_, update_;
};

// Codes, scales and zero points in nibble's format-neutral form; group_of_col and
// codes in input-column order. Its values are exactly dequantize_code's.
QuantizedMatrix make_quantized_matrix(Index rows, Index cols, const QuantSpec& spec, Index groups,
                                      std::vector<std::int32_t> group_of_col, std::vector<std::uint8_t> codes,
                                      const std::vector<GroupParams>& params, bool sparse_2_4) {
  QuantizedMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.bits = spec.bits;
  m.groups = groups;
  m.group_of_col = std::move(group_of_col);
  m.codes = std::move(codes);
  m.offset = QuantizedMatrix::Offset::ZeroPoint;
  m.scales.resize(params.size());
  m.zeros.resize(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    m.scales[i] = params[i].scale;
    m.zeros[i] = static_cast<std::uint8_t>(params[i].zero);
  }
  m.scale_dtype = DType::F16;
  m.sparse_2_4 = sparse_2_4;
  m.validate();
  return m;
}

// Codes [rows, cols] in input-column order and each block's parameters as GGUF rows.
std::vector<std::byte> pack_blocks(const BlockCodec& codec, Index rows, Index cols, std::span<const std::uint8_t> codes,
                                   const std::vector<BlockCodec::Params>& params) {
  const Index n = codec.elements(), blocks = cols / n;
  std::vector<std::byte> out(at(rows * blocks * codec.bytes()));
  for (Index r = 0; r < rows; ++r) {
    for (Index b = 0; b < blocks; ++b) {
      codec.pack(params[at(r * blocks + b)], codes.subspan(at(r * cols + b * n), at(n)),
                 out.data() + (r * blocks + b) * codec.bytes());
    }
  }
  return out;
}

void check_weights(std::span<const float> weights, Index rows, Index cols) {
  if (rows <= 0 || cols <= 0 || weights.size() != at(rows * cols)) {
    fail("{} weights do not form a [{}, {}] matrix", weights.size(), rows, cols);
  }
  for (std::size_t i = 0; i < weights.size(); ++i) {
    if (!std::isfinite(weights[i])) fail("weight at row {} column {} is {}", at(i) / at(cols), at(i) % at(cols), weights[i]);
  }
}

}  // namespace

SweepResult obs_sweep(std::span<const float> weights, std::int64_t rows, std::int64_t cols, const Hessian& hessian,
                      const SweepOptions& options) {
  check_weights(weights, rows, cols);
  if (hessian.dim() != cols) fail("Hessian of dimension {} for a matrix of {} input columns", hessian.dim(), cols);
  SweepPlan plan = make_plan(rows, cols, options);
  std::unique_ptr<kernels::CpuBackend> own_backend;
  if (options.backend == nullptr) own_backend = std::make_unique<kernels::CpuBackend>();
  kernels::Backend& backend = options.backend != nullptr ? *options.backend : *own_backend;
  // As many threads as the backend has when it says (a CPU backend), else one per core.
  const auto* cpu_backend = dynamic_cast<const kernels::CpuBackend*>(&backend);
  Workers workers(cpu_backend != nullptr ? cpu_backend->threads()
                                         : static_cast<int>(std::thread::hardware_concurrency()));
  Factorization f = factorize(hessian, cols, options, workers);
  plan.order = f.order;

  // Weights with dead columns zeroed, then in sweep order.
  std::vector<float> original(weights.begin(), weights.end());
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c) {
      if (f.dead[at(c)]) original[at(r * cols + c)] = 0.0f;
    }
  }
  std::vector<float> swept(original.size());
  std::vector<std::uint8_t> pruned(original.size(), 0);
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < cols; ++i) {
      swept[at(r * cols + i)] = original[at(r * cols + plan.order[at(i)])];
      if (options.preserve_zeros) pruned[at(r * cols + i)] = weights[at(r * cols + plan.order[at(i)])] == 0.0f;
    }
  }

  // H_jj weights each group's scale search and each GGUF block's fit (it is the
  // error's weight when the columns are taken alone); only those read it. A block
  // codec counts a dead column (H_jj = 0) as 1, as factorize() does, so a block
  // of dead columns still has weights to fit.
  std::vector<float> importance;
  if (plan.codec != nullptr || (plan.quantize && plan.quantize->scales == ScaleChoice::Search)) {
    std::vector<double> diagonal(at(cols));
    for (Index j = 0; j < cols; ++j) {
      const double h = hessian.values()[at(j * cols + j)];
      diagonal[at(j)] = plan.codec != nullptr && h == 0.0 ? 1.0 : h;
    }
    importance = normalized_importance(diagonal);
  }
  std::vector<GroupParams> params;
  plan.group_at.assign(at(cols), 0);
  if (plan.quantize) {
    params.resize(at(rows * plan.groups));
    const Index group_size = plan.group_size() > 0 ? plan.group_size() : cols;
    for (Index i = 0; i < cols; ++i) {
      // Static and group-aware groups are the plain contiguous ones, wherever the sweep meets them.
      const Index column = options.static_groups || options.group_aware_order ? plan.order[at(i)] : i;
      plan.group_at[at(i)] = static_cast<std::int32_t>(column / group_size);
    }
    if (options.static_groups) {
      for (Index r = 0; r < rows; ++r) {
        for (Index g = 0; g < plan.groups; ++g) {
          const Index first = g * group_size, size = std::min(group_size, cols - first);
          const std::span<const float> group(original.data() + r * cols + first, at(size));
          const std::span<const float> weights_of_group =
              importance.empty() ? std::span<const float>{} : std::span<const float>(importance).subspan(at(first), at(size));
          params[at(r * plan.groups + g)] = fit_group(group, *plan.quantize, weights_of_group);
        }
      }
    }
  }

  std::vector<float> swept_importance;
  for (Index i = 0; i < cols && !importance.empty(); ++i) swept_importance.push_back(importance[at(plan.order[at(i)])]);
  Sweep sweep(plan, std::move(swept), std::move(f.u), std::move(pruned), std::move(params), std::move(swept_importance),
              workers);
  sweep.run(backend);

  // Back to input-column order.
  SweepResult result;
  result.loss = sweep.loss();
  result.weights.resize(original.size());
  std::vector<std::uint8_t> codes(plan.quantize ? original.size() : 0);
  std::vector<std::int32_t> group_of_col(at(cols));
  for (Index i = 0; i < cols; ++i) group_of_col[at(plan.order[at(i)])] = plan.group_at[at(i)];
  for (Index r = 0; r < rows; ++r) {
    for (Index i = 0; i < cols; ++i) {
      const std::size_t from = at(r * cols + i), to = at(r * cols + plan.order[at(i)]);
      result.weights[to] = sweep.compressed()[from];
      if (plan.quantize) codes[to] = sweep.codes()[from];
    }
  }
  if (plan.codec != nullptr) {
    result.blocks = pack_blocks(*plan.codec, rows, cols, codes, sweep.block_params());
    result.weights = decode_rows(plan.codec->type(), result.blocks, rows, cols);
  } else if (plan.quantize) {
    const bool sparse_2_4 = plan.sparsity.kind == SparsitySpec::Kind::NofM && plan.sparsity.m == 4 && plan.sparsity.n >= 2;
    result.quantized = make_quantized_matrix(rows, cols, *plan.quantize, plan.groups, std::move(group_of_col),
                                             std::move(codes), sweep.params(), sparse_2_4);
  }
  return result;
}

SweepResult round_to_nearest(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                             const QuantSpec& spec, std::span<const double> importance) {
  check_weights(weights, rows, cols);
  spec.validate();
  if (!importance.empty() && importance.size() != at(cols)) {
    fail("{} column importances for a matrix of {} input columns", importance.size(), cols);
  }
  const std::vector<float> weighting = normalized_importance(importance);
  const Index group_size = spec.group_size > 0 ? spec.group_size : cols;
  const Index groups = spec.groups(cols);
  const int maxq = spec.maxq();
  SweepResult result;
  result.weights.resize(weights.size());
  std::vector<std::uint8_t> codes(weights.size());
  std::vector<GroupParams> params(at(rows * groups));
  std::vector<double> row_loss(at(rows), 0.0);
  // Rows are independent; the scale search makes them worth spreading over the cores.
  // Each row's loss is summed alone and the rows in order, so the result does not
  // depend on the thread count.
  Workers workers(static_cast<int>(std::thread::hardware_concurrency()));
  workers.for_chunks(rows, 16, [&](Index first_row, Index last_row, int) {
    for (Index r = first_row; r < last_row; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const Index first = r * cols + g * group_size, size = std::min(group_size, cols - g * group_size);
        const GroupParams p = fit_group(
            weights.subspan(at(first), at(size)), spec,
            weighting.empty() ? std::span<const float>{}
                              : std::span<const float>(weighting).subspan(at(g * group_size), at(size)));
        params[at(r * groups + g)] = p;
        for (Index k = first; k < first + size; ++k) {
          const int code = quantize_code(weights[at(k)], p, maxq);
          codes[at(k)] = static_cast<std::uint8_t>(code);
          result.weights[at(k)] = dequantize_code(code, p);
          const double error = static_cast<double>(weights[at(k)]) - result.weights[at(k)];
          row_loss[at(r)] += error * error;
        }
      }
    }
  });
  result.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  result.quantized =
      make_quantized_matrix(rows, cols, spec, groups, contiguous_groups(cols, spec.group_size), std::move(codes), params,
                            false);
  return result;
}

SweepResult round_to_nearest_blocks(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                                    const BlockCodec& codec, std::span<const float> importance) {
  check_weights(weights, rows, cols);
  SweepResult result;
  result.blocks = encode_rows(codec, weights, rows, cols, importance);
  result.weights = decode_rows(codec.type(), result.blocks, rows, cols);
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c) {
      const double e = static_cast<double>(weights[at(r * cols + c)]) - result.weights[at(r * cols + c)];
      result.loss += (importance.empty() ? 1.0 : importance[at(c)]) * e * e;
    }
  }
  return result;
}

}  // namespace nibble::quant
