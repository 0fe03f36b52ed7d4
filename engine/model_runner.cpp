#include "engine/model_runner.h"

#include <cmath>
#include <exception>
#include <utility>

#include "common/error.h"

namespace nibble::engine {

ModelRunner::ModelRunner(Model& model, std::int32_t num_blocks, std::int32_t block_size, KvDtype kv_dtype,
                         std::function<void(const StepPlan&)> before_step)
    : model_(model),
      cache_(model.make_kv_cache(num_blocks, block_size, kv_dtype)),
      before_step_(std::move(before_step)) {}

StepOutput ModelRunner::execute(const StepPlan& plan) {
  if (before_step_) before_step_(plan);
  for (const SamplerId id : plan.finished_samplers) choices_.erase(id);
  for (const SamplerSetup& setup : plan.new_samplers) choices_.insert_or_assign(setup.id, Choice{setup, std::nullopt});
  for (const BlockCopy& copy : plan.copies) cache_.copy_block(copy.src, copy.dst, copy.tokens);

  StepOutput out;
  if (plan.sequences.empty()) return out;
  std::vector<BatchEntry> batch;
  batch.reserve(plan.sequences.size());
  std::int64_t rows = 0;
  for (const auto& sequence : plan.sequences) {
    const auto count = static_cast<std::int64_t>(sequence.tokens.size());
    batch.push_back({sequence.tokens, sequence.start, sequence.block_table,
                     sequence.all_rows ? Logits::AllRows : Logits::LastRow});
    rows += sequence.all_rows ? count : 1;
  }
  const auto vocab = static_cast<std::size_t>(model_.vocab_size());
  logits_.resize(static_cast<std::size_t>(rows) * vocab);
  // The one call into the model: a model interface change adapts here only.
  model_.forward_batch(batch, cache_, logits_);

  std::size_t row = 0;
  for (const auto& sequence : plan.sequences) {
    const auto count = static_cast<std::size_t>(sequence.tokens.size());
    const auto row_logits = [&](std::size_t r) { return std::span(logits_).subspan((row + r) * vocab, vocab); };
    if (sequence.all_rows && !sequence.score_targets.empty()) {
      PromptScores scores{sequence.id, {}};
      for (std::size_t r = 0; r < sequence.score_targets.size() && r < count; ++r) {
        scores.steps.push_back(score_token(row_logits(r), sequence.score_targets[r], sequence.score_top));
      }
      out.prompt_scores.push_back(std::move(scores));
    }
    pick(sequence, row_logits(sequence.all_rows ? count - 1 : 0), out);
    row += sequence.all_rows ? count : 1;
  }
  return out;
}

// Picking changes the logits it is given (bias, penalties, temperature), so every
// sampler after the first picks from its own copy, and the first picks last.
void ModelRunner::pick(const ScheduledSequence& sequence, std::span<float> logits, StepOutput& out) {
  if (sequence.samplers.empty()) return;
  const std::size_t first = out.tokens.size();
  out.tokens.resize(first + sequence.samplers.size());
  for (std::size_t i = 1; i < sequence.samplers.size(); ++i) {
    std::vector<float> own(logits.begin(), logits.end());
    auto& sampled = out.tokens[first + i];
    sampled.sampler = sequence.samplers[i];
    pick_into(sampled, own);
  }
  auto& sampled = out.tokens[first];
  sampled.sampler = sequence.samplers.front();
  pick_into(sampled, logits);
}

void ModelRunner::pick_into(SampledToken& sampled, std::span<float> logits) {
  try {
    sampled.step = pick_one(sampled.sampler, logits);
  } catch (const ConstraintDeadEnd& e) {
    sampled.error = e.what();
    sampled.dead_end = true;
  } catch (const std::exception& e) {
    sampled.error = e.what();
  }
}

TokenStep ModelRunner::pick_one(SamplerId id, std::span<float> logits) {
  const auto found = choices_.find(id);
  if (found == choices_.end()) fail("internal error: sampler {} was never set up", id);
  Choice& choice = found->second;
  if (!choice.picker) {
    for (const auto& [token, bias] : choice.setup.logit_bias) {
      if (token < 0 || token >= model_.vocab_size()) fail("logit_bias names token {}, outside the vocabulary", token);
      if (!std::isfinite(bias)) fail("logit_bias for token {} is not finite", token);
    }
    choice.picker.emplace(choice.setup);
  }
  return choice.picker->pick(logits);
}

}  // namespace nibble::engine
