#pragma once
// The layer-wise proxy Hessian GPTQ and SparseGPT minimise against:
// H = 2/n * sum over calibration tokens of x x^T, for the inputs x of one linear
// layer. Accumulated batch by batch (running mean, as the reference
// implementations do) so the activations of only one batch are alive at a time.
#include <cstdint>
#include <span>
#include <vector>

namespace nibble::kernels {
class Backend;
}

namespace nibble::quant {

// mean over rows of x_j^2 for each column j of x [rows, cols]: the diagonal of the
// uncentred second-moment matrix, what RTN's scale search weights columns by.
std::vector<double> column_second_moments(std::span<const float> x, std::int64_t rows, std::int64_t cols);

class Hessian {
 public:
  explicit Hessian(std::int64_t dim);
  std::int64_t dim() const { return dim_; }
  std::int64_t samples() const { return samples_; }
  // Adds `rows` input rows x [rows, dim] (row-major float32). The Gram matrix is
  // formed by the backend's float32 matmul and accumulated in float64.
  void add(std::span<const float> x, std::int64_t rows, kernels::Backend& backend);
  // H[i][j], row-major dim x dim, float64.
  const std::vector<double>& values() const { return h_; }
  std::vector<double>& values() { return h_; }
  // ||X_j||_2 over all samples seen, for each input column j (Wanda's activation norm).
  std::vector<double> column_norms() const;

 private:
  std::int64_t dim_;
  std::int64_t samples_ = 0;
  std::vector<double> h_;
};

}  // namespace nibble::quant
