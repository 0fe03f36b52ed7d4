#pragma once
// `nibble quantize --format gguf --target-bpw B`: a mixed GGUF recipe from data.
//
// Each linear module of the decoder layers has a ladder of candidate block types
// (candidate_types: rows of whole 256-weight super-blocks Q4_K, Q5_K, Q6_K, Q8_0;
// other rows of 32-weight blocks Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), and for each a cost
// measured on the calibration text: the module's activation-weighted squared error
//   sum_rows sum_j E[x_j^2] (w_ij - q_ij)^2
// with the type's importance-weighted round-to-nearest blocks (llama.cpp's imatrix
// weighting), i.e. the expected squared error the module adds to its output per
// token when its input columns are uncorrelated. It is a proxy for the KL the
// module's quantization costs, cheap enough to evaluate for every module and type
// (measure_block_costs, on a sample of each module's rows).
//
// allocate_bits then starts every module at its cheapest type and, greedily, takes
// the upgrade (to any dearer type of one module) with the largest error reduction
// per extra byte that still fits the budget, until none fits: the average bits per
// weight over the allocated modules ends at most at the target and, when the ladder
// steps are small against the model, just below it. The token embedding and output
// matrix are not allocated (the base recipe's types); the achieved figure is over
// the decoder layers' linear modules, where llama.cpp's mixes differ too.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "loader/gguf.h"
#include "loader/model_source.h"
#include "quant/compressor.h"

namespace nibble::quant {

struct TypeCost {
  GgmlType type;
  double error = 0;  // the activation-weighted squared error (see above), over all rows
};

struct ModuleCosts {
  std::string module;
  std::int64_t rows = 0, cols = 0;
  std::vector<TypeCost> options;  // candidate_types(cols) order: cheapest first
};

struct Allocation {
  std::map<std::string, GgmlType> types;  // by module
  double bits_per_weight = 0;             // achieved, over the allocated modules
  double error = 0;                       // the sum of the chosen options' errors
};

// The block types a module with rows of `cols` weights may take, cheapest first;
// empty when `cols` is not a multiple of 32.
std::vector<GgmlType> candidate_types(std::int64_t cols);

// Bits per weight of `type` (its block bytes * 8 / block weights).
double type_bits_per_weight(GgmlType type);

// The greedy allocation above. Throws nibble::Error when `target_bpw` is below
// what the cheapest types already take, or a module has no options.
Allocation allocate_bits(std::span<const ModuleCosts> modules, double target_bpw);

// One module's costs: weights [rows, cols], `importance` the inputs' mean x_j^2
// per column (empty: all 1), measured on at most `sample_rows` evenly spaced rows
// and scaled to all rows.
ModuleCosts block_costs(const std::string& module, std::span<const float> weights, std::int64_t rows,
                        std::int64_t cols, std::span<const float> importance, std::int64_t sample_rows = 64);

// Runs the float model over `calibration` and, for every linear module of every
// decoder layer, measures each candidate type's cost on at most `sample_rows`
// evenly spaced rows (scaled to all rows).
std::vector<ModuleCosts> measure_block_costs(const ModelSource& source, const CalibrationRuns& calibration,
                                             kernels::Backend& backend, std::int64_t sample_rows = 64,
                                             const Progress& progress = {});

}  // namespace nibble::quant
