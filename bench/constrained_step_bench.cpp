// Decode steps of N sequences (default 16) through the model runner, each picking
// its token with sampling, unconstrained and constrained by a JSON Schema grammar,
// stepped in turn in the same run: what structured outputs add to a step. The grammar's
// mask cache starts cold (a new compiled grammar, as for a schema seen the first
// time) and is then measured warm (the same schema again, as a server's LRU of
// compiled grammars gives repeated requests). A sequence whose output completes
// (an end token) starts over with a fresh constraint state.
//
//   constrained_step_bench --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]
//                          [--sequences 16] [--steps 64]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/decoder_model.h"
#include "engine/model_runner.h"
#include "grammar/compiled_grammar.h"
#include "grammar/json_schema.h"
#include "grammar/tokenizer_vocabulary.h"
#include "kernels/cpu/cpu_backend.h"
#include "loader/model_source.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace nibble;
using engine::SamplerId;

constexpr std::int32_t kBlockSize = 16;

// A Pydantic-like schema: strings, an enum, an integer, a list of objects.
constexpr const char* kSchema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "favourite": {"enum": ["red", "green", "blue"]},
    "pets": {"type": "array", "items": {"type": "object",
      "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
      "required": ["name", "legs"], "additionalProperties": false}},
    "story": {"type": "string"}
  },
  "required": ["name", "age", "favourite", "pets", "story"],
  "additionalProperties": false
})";

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// `sequences` sequences over `prompt` in their own runner (own KV cache), prefilled,
// then decoding one step per call.
class Lane {
 public:
  Lane(engine::Model& model, const std::vector<TokenId>& prompt, const std::vector<TokenId>& end_tokens, int sequences,
       int steps, std::shared_ptr<const engine::TokenConstraint> constraint)
      : prompt_(prompt),
        end_tokens_(end_tokens),
        blocks_each_(static_cast<std::int32_t>((static_cast<std::int64_t>(prompt.size()) + steps + kBlockSize) / kBlockSize)),
        runner_(model, blocks_each_ * sequences, kBlockSize),
        constraint_(std::move(constraint)),
        sampler_(static_cast<std::size_t>(sequences)),
        tables_(static_cast<std::size_t>(sequences)) {
    engine::StepPlan plan;
    for (int s = 0; s < sequences; ++s) {
      auto& table = tables_[static_cast<std::size_t>(s)];
      for (std::int32_t b = 0; b < blocks_each_; ++b) table.push_back(s * blocks_each_ + b);
      auto first = setup(s);
      sampler_[static_cast<std::size_t>(s)] = first.id;
      plan.new_samplers.push_back(first);
      plan.sequences.push_back({static_cast<engine::SequenceId>(s), prompt_, 0, table, false, {}, 0, {first.id}});
    }
    out_ = runner_.execute(plan);  // prefill, untimed
  }

  // One decode step; its milliseconds.
  double step() {
    engine::StepPlan next;
    for (std::size_t s = 0; s < sampler_.size(); ++s) {
      const auto& picked = out_.tokens[s];
      TokenId token = picked.step.token;
      const bool ended = !picked.error.empty() ||
                         std::find(end_tokens_.begin(), end_tokens_.end(), token) != end_tokens_.end();
      if (ended) {
        // The output is complete: the next one starts with a fresh state.
        next.finished_samplers.push_back(sampler_[s]);
        auto again = setup(static_cast<int>(s));
        sampler_[s] = again.id;
        next.new_samplers.push_back(again);
        token = prompt_.back();
        ++restarts;
      }
      next.sequences.push_back({static_cast<engine::SequenceId>(s), {token},
                                static_cast<std::int64_t>(prompt_.size()) + position_, tables_[s], false, {}, 0,
                                {sampler_[s]}});
    }
    const auto t0 = std::chrono::steady_clock::now();
    out_ = runner_.execute(next);
    const std::chrono::duration<double, std::milli> dt = std::chrono::steady_clock::now() - t0;
    ++position_;
    return dt.count();
  }

  int restarts = 0;

 private:
  engine::SamplerSetup setup(int s) {
    engine::SamplerSetup out;
    out.id = next_sampler_++;
    out.sampling.temperature = 0.8;
    out.sampling.top_p = 0.95;
    out.sampling.seed = static_cast<std::uint64_t>(s + 1);
    out.constraint = constraint_;
    return out;
  }

  std::vector<TokenId> prompt_;
  std::vector<TokenId> end_tokens_;
  std::int32_t blocks_each_;
  engine::ModelRunner runner_;
  std::shared_ptr<const engine::TokenConstraint> constraint_;
  std::vector<SamplerId> sampler_;
  std::vector<std::vector<std::int32_t>> tables_;
  engine::StepOutput out_;
  SamplerId next_sampler_ = 1;
  std::int64_t position_ = 0;
};

struct Pass {
  std::vector<double> plain, constrained;
  int restarts = 0;
};

// Unconstrained and constrained lanes step by step in turn, so load changes on a
// shared machine fall on both alike.
Pass interleaved(engine::Model& model, const std::vector<TokenId>& prompt, const std::vector<TokenId>& end_tokens,
                 int sequences, int steps, const std::shared_ptr<const engine::TokenConstraint>& constraint) {
  Lane plain(model, prompt, end_tokens, sequences, steps, nullptr);
  Lane constrained(model, prompt, end_tokens, sequences, steps, constraint);
  Pass pass;
  for (int k = 0; k < steps; ++k) {
    pass.plain.push_back(plain.step());
    pass.constrained.push_back(constrained.step());
  }
  pass.restarts = constrained.restarts;
  return pass;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode-step cost of constrained (JSON Schema) sequences against unconstrained ones"};
  std::string model_path;
  int threads = 2, sequences = 16, steps = 64;
  app.add_option("--model", model_path, "model file or folder")->required();
  app.add_option("--threads", threads, "backend threads");
  app.add_option("--sequences", sequences, "sequences per step");
  app.add_option("--steps", steps, "timed decode steps per run");
  CLI11_PARSE(app, argc, argv);

  const auto source = open_model(model_path);
  const auto tokenizer = load_tokenizer(model_path);
  kernels::CpuBackend backend(kernels::CpuBackendOptions{threads, false});
  engine::DecoderModel model(source, backend);
  std::vector<TokenId> end_tokens = tokenizer->eos_ids();
  const auto prompt = tokenizer->encode("Describe a person and their pets as JSON with a long story:\n", true);
  const auto vocabulary = grammar::vocabulary_of(*tokenizer, static_cast<std::size_t>(model.vocab_size()), end_tokens);
  const auto schema = grammar::json_schema_grammar(nlohmann::ordered_json::parse(kSchema));

  fmt::print("{} | {} sequences, {} decode steps per pass, prompt {} tokens\n", backend.name(), sequences, steps,
             prompt.size());
  const auto compiled = std::make_shared<grammar::CompiledGrammar>(schema, vocabulary);
  fmt::print("{:<30} {:>16} {:>18} {:>10} {:>9}\n", "pass", "plain median ms", "JSON Schema med ms", "ratio",
             "restarts");
  const auto report = [&](const char* name, const Pass& p) {
    const double a = median(p.plain), b = median(p.constrained);
    fmt::print("{:<30} {:>16.2f} {:>18.2f} {:>9.3f}x {:>9}\n", name, a, b, b / a, p.restarts);
  };
  report("cold mask cache (new schema)", interleaved(model, prompt, end_tokens, sequences, steps, compiled));
  report("warm mask cache (same schema)", interleaved(model, prompt, end_tokens, sequences, steps, compiled));
  report("warm again", interleaved(model, prompt, end_tokens, sequences, steps, compiled));
  fmt::print("masks cached: {} (one per grammar stack seen)\n", compiled->cached_masks());
  return 0;
}
