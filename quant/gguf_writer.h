#pragma once
// Writes a compressed model as one GGUF v3 file llama.cpp loads unmodified
// (llama-perplexity, llama-server): every linear module in the block type the
// recipe gives it (encoded by compress_model, RTN or GPTQ through a BlockCodec),
// the token embedding and output matrix quantized by the block encoder, norms and
// other small tensors copied (norms in F32). The source is a GGUF file (the
// F16/BF16/F32 one llama.cpp's converter writes), whose key/values (hyperparameters,
// tokenizer, chat template) are copied with general.file_type set to the recipe's,
// or a Hugging Face folder of a llama/qwen2 model with a byte-level BPE tokenizer,
// whose key/values are written as llama.cpp's converter does (gguf_hf_metadata.h).
// q/k rows go back to llama.cpp's interleaved order for architectures stored that way.
//
// Recipes (--type): a plain type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
// for every linear module and an untied token embedding; the output matrix (or
// the tied embedding that serves as it) in Q6_K (Q8_0 for Q8_0). Q4_K_M: Q4_K,
// with Q6_K for attn_v and ffn_down in the first and last eighth of the layers
// and every third layer between (layer % 3 == 1): the layers whose value and
// down projections llama.cpp's "M" mixes also favour, chosen by a rule of ours.
// A K-quant needs rows of whole 256-weight super-blocks; other rows fall back to
// the 32-weight type of the next size up (Q4_K -> Q5_0, Q5_K -> Q5_1,
// Q6_K -> Q8_0), as llama-quantize does; an embedding or output whose rows
// are not whole 32-blocks stays F16, and such a linear module is refused.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "loader/architecture.h"
#include "loader/model_source.h"
#include "quant/module_writer.h"

namespace nibble::quant {

struct GgufRecipe {
  std::string name = "Q4_K";  // as given to --type
  GgmlType base = GgmlType::Q4_K;
  bool mixed = false;  // Q4_K_M
  // --target-bpw: each linear module's type, chosen from data (bit_allocation.h);
  // they override the rule for those modules. The token embedding and output keep
  // the rule's types, and general.file_type is that of the type most modules got.
  std::map<std::string, GgmlType> module_types;

  // Throws nibble::Error naming the accepted recipes for anything else.
  static GgufRecipe parse(const std::string& name);
  // llama.cpp's general.file_type (LLAMA_FTYPE_MOSTLY_*) for the recipe.
  std::uint32_t file_type() const;
  // The type of a tensor with `role` in `layer` of `layers`, rows of `cols` weights.
  // `tied`: the token embedding also serves as the output matrix.
  GgmlType type_for(TensorRole role, std::int64_t layer, std::int64_t layers, std::int64_t cols, bool tied) const;
};

class GgufWriter : public ModuleWriter {
 public:
  // `source` must stay alive until finish(). Throws nibble::Error for an
  // architecture nibble cannot name in GGUF (when finishing, for HF sources).
  GgufWriter(const ModelSource& source, std::filesystem::path out, GgufRecipe recipe, std::string tool_version = {});
  ~GgufWriter() override;

  std::optional<GgmlType> block_type(const std::string& module, std::int64_t rows, std::int64_t cols) const override;
  void add_blocks(const std::string& module, GgmlType type, std::vector<std::byte> blocks, std::int64_t rows,
                  std::int64_t cols) override;
  // The uniform quantizer's formats have no GGUF form: refused.
  void add_quantized(const std::string& module, const QuantizedMatrix& matrix) override;
  void add_pruned(const std::string& module, std::span<const float> weights, std::int64_t rows,
                  std::int64_t cols) override;
  bool reads_gguf_source() const override { return true; }  // and HF folders
  bool writes_experts() const override { return false; }  // 3-D ffn_*_exps tensors: not written yet
  // Writes the file (under a temporary name, renamed when complete).
  void finish() override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace nibble::quant
