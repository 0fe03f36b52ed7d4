#pragma once
// Pipeline parallelism: which layers one stage of a model split into stages
// runs, and how a step's sequences are cut into micro-batches so that the
// stages work at the same time (docs/parallel.md). Plain arithmetic, the same
// on every rank, so every stage cuts a step the same way without talking.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace nibble::engine {

struct PipelineStage {
  int stage = 0;   // 0 embeds the tokens (and gets the logits back), stages - 1 computes them
  int stages = 1;
  std::int64_t first_layer = 0;  // this stage runs layers [first_layer, end_layer)
  std::int64_t end_layer = 0;
  // A step's sequences go through the stages in up to this many groups: while
  // stage s runs group g, stage s - 1 runs group g + 1.
  int micro_batches = 1;

  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
  std::int64_t layers() const { return end_layer - first_layer; }
};

// Stage `stage` of `stages` over `num_layers` layers: as even as possible, the
// earlier stages taking the one extra layer (the last stage also runs lm_head,
// and stage 0's rank, which also schedules, then sizes the KV cache for the
// most layers any stage holds). Throws nibble::Error for more stages than
// layers, a stage outside [0, stages) or fewer than one micro-batch.
PipelineStage plan_pipeline_stage(std::int64_t num_layers, int stage, int stages, int micro_batches);

// Whether stage `stage` keeps the stored tensor `name` ("model.layers.7.mlp...",
// GGUF's "blk.7...."): its layers' tensors; the embedding on the first stage and,
// when lm_head is tied to it, the last; every other global tensor (final norm,
// lm_head) on the last. What DecoderModel binds, by name, for sizing a stage.
bool stage_keeps(const PipelineStage& stage, std::string_view name, bool tied_embedding);

// Cuts a step whose sequences have `rows` rows each (in order) into at most
// `parts` runs of consecutive sequences with about equal rows; returns the
// index of each run's first sequence and, last, rows.size(). A sequence is never
// split, so a step with fewer sequences than `parts` has fewer runs.
std::vector<std::size_t> micro_batch_bounds(std::span<const std::int64_t> rows, int parts);

}  // namespace nibble::engine
