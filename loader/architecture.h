#pragma once
// The one table of the decoder architectures nibble runs: how Hugging Face and
// GGUF files name each tensor of a decoder, and which blocks a layer is built
// from. The loader renames GGUF tensors by it, the config parser recognizes
// architectures by it, the engine binds its blocks by it and the compressor finds
// its modules by it. Adding an architecture is adding an entry here (and a block
// in engine/blocks when it needs an op no block has yet).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace nibble {

// What a tensor is to a decoder, whatever a file calls it.
enum class TensorRole : std::uint8_t {
  TokenEmbedding,     // [vocab, hidden]
  FinalNorm,          // [hidden]
  LmHead,             // [vocab, hidden]; absent when tied to the embedding
  AttentionNorm,      // per layer: before attention
  Query,              // q/k/v/o projections
  Key,
  Value,
  AttentionOutput,
  QueryNorm,          // RMSNorm over each head of q / k (QK-norm)
  KeyNorm,
  PostAttentionNorm,  // on the attention output, before the residual add
  MlpNorm,            // before the MLP
  Gate,               // gated MLP: down(act(gate(x)) * up(x))
  Up,
  Down,
  PostMlpNorm,        // on the MLP output, before the residual add
  // Fused tensors (Phi-3): several roles' rows one after another in one file
  // tensor. The loader splits them back into their parts (fused_parts), so the
  // engine only ever sees the parts.
  QueryKeyValue,      // [q; k; v] rows
  GateUp,             // [gate; up] rows
  // Mixture of experts (Mixtral, Qwen MoE). A routed expert's name holds its index
  // where the table writes "{}" ("mlp.experts.{}.gate_proj"); GGUF keeps all of a
  // layer's experts in one 3-D tensor ("ffn_gate_exps") that the loader views
  // expert by expert.
  Router,             // [experts, hidden]: one score per expert and token
  ExpertGate,         // routed expert e's gated MLP: [moe_intermediate, hidden] ...
  ExpertUp,
  ExpertDown,         // ... and [hidden, moe_intermediate]
  SharedGate,         // the shared expert every token runs (Qwen2-MoE)
  SharedUp,
  SharedDown,
  SharedExpertGate,   // [1, hidden]: sigmoid(x . w) scales the shared expert's output (Qwen2-MoE)
  RouterBias,         // [experts]: added to the router's scores for the choice only (DeepSeek-V3's
                      // e_score_correction_bias; a tensor, not a module: no ".weight")
  // Multi-head latent attention (DeepSeek-V2/V3). Query is q_proj when the model
  // has no low-rank query (q_lora_rank null).
  QueryA,             // [q_lora_rank, hidden]
  QueryANorm,         // [q_lora_rank]
  QueryB,             // [heads * (qk_nope + qk_rope), q_lora_rank]
  KvA,                // [kv_lora_rank + qk_rope, hidden]: the latent c_kv and the shared rotary key
  KvANorm,            // [kv_lora_rank]
  KvB,                // [heads * (qk_nope + v_head), kv_lora_rank]: per head W_UK rows, then W_UV rows
};

// Whether `role` names one routed expert's matrix (its names carry the index).
bool is_expert_role(TensorRole role);

// The roles a fused role holds, in row order; empty for every other role.
std::span<const TensorRole> fused_parts(TensorRole role);

enum class MlpActivation : std::uint8_t {
  Silu,      // SwiGLU
  GeluTanh,  // GeGLU with GELU's tanh approximation ("gelu_pytorch_tanh", Gemma)
};

struct TensorName {
  TensorRole role;
  std::string_view hf;    // per layer: after "model.layers.N."; global: the whole module name
  std::string_view gguf;  // per layer: after "blk.N."; global: the whole tensor name without ".weight"
};

struct Architecture {
  std::string_view hf_architecture;  // config.json "architectures" entry: "LlamaForCausalLM"
  std::string_view model_type;       // config.json "model_type": "llama"
  std::string_view gguf_name;        // GGUF general.architecture ("" when llama.cpp has none)
  bool attention_bias = false;       // q/k/v carry biases unless config.json says otherwise
  bool qk_norm = false;
  bool gguf_rope_rows_interleaved = false;  // llama.cpp's converter permuted q/k rows
  MlpActivation activation = MlpActivation::Silu;
  std::span<const TensorName> names;
  // config.json's sliding_window counts only when use_sliding_window is true
  // (Qwen2, Qwen3 ship a window they do not use).
  bool sliding_window_needs_flag = false;
  // Every RMSNorm (QK-norms included) scales by (1 + w): the stored weights are
  // offsets from one (Gemma). llama.cpp's converter writes w + 1 into GGUF files;
  // the GGUF reader subtracts the one again, as transformers' GGUF loader does,
  // so tensors mean the same whatever the file.
  bool norm_weight_offset_one = false;
  // The token embedding is multiplied by sqrt(hidden_size), rounded to the
  // model's dtype (Gemma); lm_head, when tied, reads the unscaled table.
  bool scaled_embedding = false;
  // Mixture of experts: the routed experts' top-k weights are renormalized to sum
  // to one unless config.json's norm_topk_prob says otherwise (Mixtral always
  // renormalizes and has no such key; Qwen MoE defaults to false).
  bool norm_topk_prob_default = false;
  // Multi-head latent attention (DeepSeek) instead of q/k/v heads; its MoE settings
  // use DeepSeek's names (n_routed_experts, n_shared_experts, first_k_dense_replace).
  bool latent_attention = false;

  // The file-independent name of `role`'s module in layer `layer` (ignored for
  // global roles): "model.layers.3.self_attn.q_proj", "lm_head".
  std::string module(TensorRole role, std::int64_t layer = 0) const;
  // A routed expert's module: "model.layers.3.mlp.experts.5.up_proj".
  std::string expert_module(TensorRole role, std::int64_t layer, std::int64_t expert) const;
  bool has(TensorRole role) const;
  // Whether any tensor is stored fused (QueryKeyValue, GateUp).
  bool has_fused() const;
  // The inverse of module(): the role and layer of "model.layers.3.mlp.up_proj";
  // nullopt for a name the architecture does not use.
  struct ModuleRef {
    TensorRole role;
    std::int64_t layer = 0;
    std::int64_t expert = -1;  // a routed expert's index; -1 for every other role
  };
  std::optional<ModuleRef> parse_module(std::string_view module) const;
};

// By a config.json "architectures" entry, or its model_type; nullptr when unknown.
const Architecture* find_hf_architecture(std::string_view architecture);
const Architecture* find_model_type(std::string_view model_type);
// The entry a GGUF general.architecture maps to; nullptr when unknown.
const Architecture* find_gguf_architecture(std::string_view gguf_name);
// The ModelConfig::architecture string's entry; throws nibble::Error for an unknown one.
const Architecture& architecture_of(std::string_view hf_architecture);
// "LlamaForCausalLM, MistralForCausalLM, ..." / "llama, qwen2" for error messages.
std::string supported_hf_architectures();
std::string supported_gguf_architectures();

// A GGUF tensor name ("blk.3.attn_q.weight") as the Hugging Face name it stands
// for ("model.layers.3.self_attn.q_proj.weight") and its role; nullopt for names
// the architecture does not use.
struct HfTensor {
  std::string name;
  TensorRole role;
};
std::optional<HfTensor> hf_tensor_of_gguf(const Architecture& architecture, std::string_view gguf_name);

// GGUF's 3-D expert tensors ("blk.3.ffn_up_exps.weight", [experts, rows, cols]):
// the role and layer, so the loader can view expert e's rows as
// expert_module(role, layer, e); nullopt for any other name.
struct GgufExpertTensor {
  TensorRole role;
  std::int64_t layer = 0;
};
std::optional<GgufExpertTensor> gguf_expert_tensor(const Architecture& architecture, std::string_view gguf_name);

}  // namespace nibble
