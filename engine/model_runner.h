#pragma once
// Executes StepPlans: owns what a step needs besides the weights (the paged KV
// cache, every choice's sampling state, the logits buffer) and turns a plan into
// a StepOutput. It decides nothing: which sequences run, which blocks they use and
// when a choice starts or ends all come in the plan (scheduler/step_scheduler.h).
#include <cstdint>
#include <functional>
#include <optional>
#include <unordered_map>
#include <vector>

#include "engine/model.h"
#include "engine/paged_kv_cache.h"
#include "engine/step_plan.h"
#include "engine/token_picker.h"

namespace nibble::engine {

class ModelRunner {
 public:
  // `model` must outlive the runner.
  // `before_step`, when set, sees every plan before it runs (tensor parallelism:
  // rank 0 sends it to the other ranks, engine/plan_broadcast.h).
  ModelRunner(Model& model, std::int32_t num_blocks, std::int32_t block_size,
              KvDtype kv_dtype = KvDtype::Float32, std::function<void(const StepPlan&)> before_step = {});

  // Copies blocks, runs one forward over the plan's sequences, scores prompt tokens
  // and picks each listed sampler's token. Throws when the forward fails (then no
  // slot of the step can be trusted); a sampler that cannot pick reports an error
  // in its SampledToken instead.
  StepOutput execute(const StepPlan& plan);

  std::int64_t vocab_size() const { return model_.vocab_size(); }
  const PagedKvCache& cache() const { return cache_; }

 private:
  struct Choice {
    SamplerSetup setup;
    std::optional<TokenPicker> picker;  // made at the first pick, where an error ends only this choice
  };

  void pick(const ScheduledSequence& sequence, std::span<float> logits, StepOutput& out);
  void pick_into(SampledToken& sampled, std::span<float> logits);  // errors into `sampled`
  TokenStep pick_one(SamplerId id, std::span<float> logits);

  Model& model_;
  PagedKvCache cache_;
  std::unordered_map<SamplerId, Choice> choices_;
  std::vector<float> logits_;
  std::function<void(const StepPlan&)> before_step_;
};

}  // namespace nibble::engine
