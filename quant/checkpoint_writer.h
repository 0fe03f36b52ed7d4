#pragma once
// Writes a compressed model as a Hugging Face folder other tools read:
//   Gptq               AutoGPTQ/GPTQModel layout, checkpoint_format "gptq" (v1: stored
//                      zero = zero - 1): qweight/qzeros/scales/g_idx per quantized module,
//                      quantize_config.json and config.json "quantization_config"; what
//                      vLLM, transformers (optimum/GPTQModel) and nibble load.
//   CompressedTensors  llm-compressor's compressed-tensors: "pack-quantized" W{bits}A16
//                      modules; pruned fp16 modules as "sparse-24-bitmask" (2:4) or
//                      "sparse-bitmask" (unstructured); 2:4 + quantized as pack-quantized
//                      with a sparsity_config declaring the 2:4 structure.
// The token embedding may be added quantized too (nibble quantize's default): GPTQ
// records it as `"embed_tokens": true` in quantization_config, a key only nibble
// reads (transformers/GPTQModel/vLLM would leave model.embed_tokens.weight missing);
// compressed-tensors as the "Embedding" target of the scheme, which nibble reads.
// `nibble quantize --keep-embeddings` writes folders the other readers load.
// Every other tensor (embeddings, norms, an unquantized lm_head) is copied from the
// source in its stored dtype; tokenizer, generation config and chat template files are
// copied. Modules are packed as they are added, so only the packed form is held.
// What the formats cannot hold is refused when added (nibble::Error naming the module):
// scales not exactly representable in fp16 (both formats store fp16), GPTQ v1 zero
// points outside [1, 2^bits - 1] (v1 stores zero - 1; readers disagree on all-ones),
// symmetric zero points other than 2^(bits-1), pruned-only modules in GPTQ, and
// quantized modules of an unstructured-pruned compressed-tensors model.
// Interop limits: transformers' GPTQ path ignores GPTQModel's `dynamic` rules and a
// quantized lm_head (GPTQModel and vLLM honour them); GPTQModel.load refuses asymmetric
// v1 checkpoints not made by GPTQModel itself (transformers loads them);
// compressed-tensors >= 0.19 rejects actorder "group" (stored g_idx), which 0.14 reads.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "common/quantized_matrix.h"
#include "loader/model_source.h"
#include "quant/module_writer.h"

namespace nibble::quant {

enum class CheckpointFormat : std::uint8_t { Gptq, CompressedTensors };

// What the folder's configs record about how it was made.
struct CheckpointSettings {
  CheckpointFormat format = CheckpointFormat::Gptq;
  // Quantization (when any module is added quantized).
  int bits = 4;
  std::int64_t group_size = 128;  // -1: per output channel
  // Bits of a quantized token embedding and lm_head when they differ from `bits`
  // (0: the same): GPTQ records them as a "+:" dynamic rule (GPTQModel's per-module
  // override), compressed-tensors as a second scheme targeting "Embedding" and lm_head.
  int embedding_bits = 0;
  bool sym = true;
  bool desc_act = false;
  bool static_groups = false;
  bool group_aware_order = false;  // GPTQ swept groups in GAR order (recorded as meta act_group_aware)
  double damp = 0.01;
  std::string method = "gptq";  // "gptq" or "rtn", recorded in quantize_config's meta
  // Pruning (when any module is added pruned).
  std::string sparsity_structure;  // "", "2:4" or "unstructured"
  std::string pruning_method;      // "magnitude", "wanda", "sparsegpt"
  double sparsity = 0.0;           // target fraction removed
  std::string tool_version;        // nibble's version, recorded as the quantizer
};

class CheckpointWriter : public ModuleWriter {
 public:
  // `source` must stay alive until finish(): its untouched tensors and files are copied then.
  CheckpointWriter(const ModelSource& source, std::filesystem::path out, CheckpointSettings settings);
  ~CheckpointWriter() override;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // A linear module ("model.layers.0.mlp.up_proj", "lm_head") or the token embedding
  // ("model.embed_tokens") quantized: codes, scales and zeros
  // (group_of_col = g_idx). Throws nibble::Error when the matrix does not fit the
  // settings (bits, group size, contiguous groups without desc_act, a 2:4 claim it does
  // not follow) or the source (no such weight, another shape), or was added already.
  // matrix.sparse_2_4 declares the module 2:4-pruned (needs sparsity_structure "2:4").
  void add_quantized(const std::string& module, const QuantizedMatrix& matrix) override;
  // A linear module pruned but not quantized: float weights [rows, cols] with zeros
  // where pruned, stored in the source's dtype for that weight (compressed-tensors only;
  // 2:4 runs may keep at most 2 nonzeros). Stored plainly when quantized modules exist.
  void add_pruned(const std::string& module, std::span<const float> weights, std::int64_t rows, std::int64_t cols) override;
  // Writes model.safetensors and the configs, copies the rest. Throws on I/O errors;
  // writes into a temporary folder renamed into place, so a failure leaves no half model.
  void finish() override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace nibble::quant
