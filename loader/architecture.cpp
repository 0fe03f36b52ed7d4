#include "loader/architecture.h"

#include <algorithm>
#include <array>
#include <charconv>

#include <fmt/format.h>

#include "common/error.h"

namespace nibble {
namespace {

bool is_global(TensorRole role) {
  return role == TensorRole::TokenEmbedding || role == TensorRole::FinalNorm || role == TensorRole::LmHead;
}

// The Llama layout, shared by every architecture that descends from it.
constexpr std::array kLlamaNames{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::MlpNorm, "post_attention_layernorm", "ffn_norm"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", "ffn_gate"},
    TensorName{TensorRole::Up, "mlp.up_proj", "ffn_up"},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
};

// Qwen3: the Llama layout plus an RMSNorm over each q and k head.
constexpr std::array kQwen3Names{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::QueryNorm, "self_attn.q_norm", "attn_q_norm"},
    TensorName{TensorRole::KeyNorm, "self_attn.k_norm", "attn_k_norm"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::MlpNorm, "post_attention_layernorm", "ffn_norm"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", "ffn_gate"},
    TensorName{TensorRole::Up, "mlp.up_proj", "ffn_up"},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
};

// Phi-3: q/k/v in one qkv_proj and gate/up in one gate_up_proj (llama.cpp: attn_qkv,
// and ffn_up holding both halves). The parts keep their Llama names, which is what
// the loader exposes after splitting; llama.cpp also reads phi3 files with separate
// attn_q/attn_k/attn_v, so those map too. A separate gate or up never occurs in a
// phi3 GGUF (its ffn_up is the fused pair), so they have no GGUF name.
constexpr std::array kPhi3Names{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::QueryKeyValue, "self_attn.qkv_proj", "attn_qkv"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::MlpNorm, "post_attention_layernorm", "ffn_norm"},
    TensorName{TensorRole::GateUp, "mlp.gate_up_proj", "ffn_up"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", ""},
    TensorName{TensorRole::Up, "mlp.up_proj", ""},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
};

// Gemma 2: norms before and after both attention and the MLP. Hugging Face's
// post_attention_layernorm is the post-norm here (in Llama it is the MLP's input
// norm); pre_feedforward_layernorm is the MLP's input norm.
constexpr std::array kGemma2Names{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::PostAttentionNorm, "post_attention_layernorm", "post_attention_norm"},
    TensorName{TensorRole::MlpNorm, "pre_feedforward_layernorm", "ffn_norm"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", "ffn_gate"},
    TensorName{TensorRole::Up, "mlp.up_proj", "ffn_up"},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
    TensorName{TensorRole::PostMlpNorm, "post_feedforward_layernorm", "post_ffw_norm"},
};
// Gemma 3: Gemma 2's layout plus QK-norm.
constexpr std::array kGemma3Names{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::PostAttentionNorm, "post_attention_layernorm", "post_attention_norm"},
    TensorName{TensorRole::MlpNorm, "pre_feedforward_layernorm", "ffn_norm"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", "ffn_gate"},
    TensorName{TensorRole::Up, "mlp.up_proj", "ffn_up"},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
    TensorName{TensorRole::PostMlpNorm, "post_feedforward_layernorm", "post_ffw_norm"},
    TensorName{TensorRole::QueryNorm, "self_attn.q_norm", "attn_q_norm"},
    TensorName{TensorRole::KeyNorm, "self_attn.k_norm", "attn_k_norm"},
};

constexpr std::array kQkvParts{TensorRole::Query, TensorRole::Key, TensorRole::Value};
constexpr std::array kGateUpParts{TensorRole::Gate, TensorRole::Up};

constexpr std::array kArchitectures{
    Architecture{"LlamaForCausalLM", "llama", "llama", false, false, true, MlpActivation::Silu, kLlamaNames},
    // llama.cpp writes Mistral files as "llama"; the first entry above claims them.
    Architecture{"MistralForCausalLM", "mistral", "", false, false, true, MlpActivation::Silu, kLlamaNames},
    Architecture{"Qwen2ForCausalLM", "qwen2", "qwen2", true, false, false, MlpActivation::Silu, kLlamaNames, true},
    Architecture{"Qwen3ForCausalLM", "qwen3", "qwen3", false, true, false, MlpActivation::Silu, kQwen3Names, true},
    Architecture{"Phi3ForCausalLM", "phi3", "phi3", false, false, false, MlpActivation::Silu, kPhi3Names},
    // Gemma's q/k rows are rotate-half in both formats (llama.cpp runs it as NEOX rope).
    Architecture{"Gemma2ForCausalLM", "gemma2", "gemma2", false, false, false, MlpActivation::GeluTanh, kGemma2Names,
                 false, true, true},
    Architecture{"Gemma3ForCausalLM", "gemma3_text", "gemma3", false, true, false, MlpActivation::GeluTanh,
                 kGemma3Names, false, true, true},
};

std::string join(std::string_view Architecture::*field) {
  std::string out;
  for (const auto& entry : kArchitectures) {
    const std::string_view name = entry.*field;
    if (!name.empty()) out += (out.empty() ? "" : ", ") + std::string(name);
  }
  return out;
}

}  // namespace

std::span<const TensorRole> fused_parts(TensorRole role) {
  switch (role) {
    case TensorRole::QueryKeyValue: return kQkvParts;
    case TensorRole::GateUp: return kGateUpParts;
    default: return {};
  }
}

std::string Architecture::module(TensorRole role, std::int64_t layer) const {
  for (const auto& name : names) {
    if (name.role != role) continue;
    return is_global(role) ? std::string(name.hf) : fmt::format("model.layers.{}.{}", layer, name.hf);
  }
  fail("architecture {} has no tensor of role {}", hf_architecture, static_cast<int>(role));
}

bool Architecture::has(TensorRole role) const {
  return std::ranges::any_of(names, [role](const TensorName& name) { return name.role == role; });
}

bool Architecture::has_fused() const {
  return std::ranges::any_of(names, [](const TensorName& name) { return !fused_parts(name.role).empty(); });
}

std::optional<Architecture::ModuleRef> Architecture::parse_module(std::string_view module) const {
  for (const auto& name : names) {
    if (is_global(name.role) && module == name.hf) return ModuleRef{name.role, 0};
  }
  constexpr std::string_view kPrefix = "model.layers.";
  if (!module.starts_with(kPrefix)) return std::nullopt;
  const std::string_view rest = module.substr(kPrefix.size());
  std::int64_t layer = -1;
  const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
  if (error != std::errc() || end == rest.data() || layer < 0 || end == rest.data() + rest.size() || *end != '.') {
    return std::nullopt;
  }
  const std::string_view part = rest.substr(static_cast<std::size_t>(end - rest.data()) + 1);
  for (const auto& name : names) {
    if (!is_global(name.role) && part == name.hf) return ModuleRef{name.role, layer};
  }
  return std::nullopt;
}

const Architecture* find_hf_architecture(std::string_view architecture) {
  for (const auto& entry : kArchitectures) {
    if (entry.hf_architecture == architecture) return &entry;
  }
  return nullptr;
}

const Architecture* find_model_type(std::string_view model_type) {
  for (const auto& entry : kArchitectures) {
    if (entry.model_type == model_type) return &entry;
  }
  return nullptr;
}

const Architecture* find_gguf_architecture(std::string_view gguf_name) {
  for (const auto& entry : kArchitectures) {
    if (!entry.gguf_name.empty() && entry.gguf_name == gguf_name) return &entry;
  }
  return nullptr;
}

const Architecture& architecture_of(std::string_view hf_architecture) {
  if (const Architecture* entry = find_hf_architecture(hf_architecture)) return *entry;
  fail("unsupported architecture '{}' (supported: {})", hf_architecture, supported_hf_architectures());
}

std::string supported_hf_architectures() { return join(&Architecture::hf_architecture); }
std::string supported_gguf_architectures() { return join(&Architecture::gguf_name); }

std::optional<HfTensor> hf_tensor_of_gguf(const Architecture& architecture, std::string_view gguf_name) {
  const auto suffix_at = gguf_name.rfind('.');
  if (suffix_at == std::string_view::npos) return std::nullopt;
  const std::string_view suffix = gguf_name.substr(suffix_at + 1);
  if (suffix != "weight" && suffix != "bias") return std::nullopt;
  const std::string_view stem = gguf_name.substr(0, suffix_at);
  for (const auto& name : architecture.names) {
    if (is_global(name.role) && stem == name.gguf) return HfTensor{fmt::format("{}.{}", name.hf, suffix), name.role};
  }
  if (!stem.starts_with("blk.")) return std::nullopt;
  const auto layer_end = stem.find('.', 4);
  if (layer_end == std::string_view::npos || layer_end == 4) return std::nullopt;
  const std::string_view layer = stem.substr(4, layer_end - 4);
  if (!std::ranges::all_of(layer, [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  const std::string_view part = stem.substr(layer_end + 1);
  for (const auto& name : architecture.names) {
    if (!is_global(name.role) && !name.gguf.empty() && part == name.gguf) {
      return HfTensor{fmt::format("model.layers.{}.{}.{}", layer, name.hf, suffix), name.role};
    }
  }
  return std::nullopt;
}

}  // namespace nibble
