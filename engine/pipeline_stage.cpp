#include "engine/pipeline_stage.h"

#include <algorithm>

#include "common/error.h"

namespace nibble::engine {

PipelineStage plan_pipeline_stage(std::int64_t num_layers, int stage, int stages, int micro_batches) {
  if (stages < 1 || stage < 0 || stage >= stages) fail("pipeline stage {} of {} does not exist", stage, stages);
  if (num_layers < stages) {
    fail("pipeline-parallel size {} exceeds the model's {} layers: every stage needs at least one", stages,
         num_layers);
  }
  if (micro_batches < 1) fail("pipeline micro-batches must be at least 1, got {}", micro_batches);
  const std::int64_t base = num_layers / stages, extra = num_layers % stages;
  PipelineStage out;
  out.stage = stage;
  out.stages = stages;
  out.first_layer = stage * base + std::min<std::int64_t>(stage, extra);
  out.end_layer = out.first_layer + base + (stage < extra ? 1 : 0);
  out.micro_batches = micro_batches;
  return out;
}

namespace {

// The layer index of a "layers.N." or "blk.N." part of `name`, or -1 for a global tensor.
std::int64_t layer_of(std::string_view name) {
  for (const std::string_view key : {std::string_view("layers."), std::string_view("blk.")}) {
    for (std::size_t at = name.find(key); at != std::string_view::npos; at = name.find(key, at + 1)) {
      if (at > 0 && name[at - 1] != '.') continue;
      std::int64_t layer = 0;
      std::size_t i = at + key.size();
      const std::size_t digits = i;
      for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) layer = layer * 10 + (name[i] - '0');
      if (i > digits && i < name.size() && name[i] == '.') return layer;
    }
  }
  return -1;
}

}  // namespace

bool stage_keeps(const PipelineStage& stage, std::string_view name, bool tied_embedding) {
  if (const std::int64_t layer = layer_of(name); layer >= 0) {
    return layer >= stage.first_layer && layer < stage.end_layer;
  }
  const bool embedding = name.find("embed") != std::string_view::npos || name.starts_with("token_embd");
  if (embedding) return stage.first() || (stage.last() && tied_embedding);
  return stage.last();
}

std::vector<std::size_t> micro_batch_bounds(std::span<const std::int64_t> rows, int parts) {
  std::int64_t total = 0;
  for (const auto r : rows) total += r;
  std::vector<std::size_t> bounds{0};
  // A run ends once it holds its share of the rows still to place, so one long
  // sequence does not leave the later runs empty.
  std::int64_t placed = 0, in_run = 0;
  int runs_left = std::max(parts, 1);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    in_run += rows[i];
    const std::int64_t share = (total - placed + runs_left - 1) / runs_left;
    const std::size_t after = rows.size() - i - 1;
    // Cut once the run holds its share, or when every sequence left is needed
    // to give each later run one (or there are fewer sequences than runs).
    if (runs_left > 1 && after > 0 && (in_run >= share || after <= static_cast<std::size_t>(runs_left - 1))) {
      bounds.push_back(i + 1);
      placed += in_run;
      in_run = 0;
      --runs_left;
    }
  }
  bounds.push_back(rows.size());
  if (rows.empty()) bounds.pop_back();
  return bounds;
}

}  // namespace nibble::engine
