#include "loader/architecture.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <optional>
#include <utility>

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

// Mixtral: Llama's attention; every layer's MLP is a sparse MoE block
// (block_sparse_moe, experts' w1/w3/w2 = gate/up/down). llama.cpp writes Mixtral
// as "llama" with expert tensors, so its GGUF names are Llama's.
constexpr std::array kMixtralNames{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::Key, "self_attn.k_proj", "attn_k"},
    TensorName{TensorRole::Value, "self_attn.v_proj", "attn_v"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::MlpNorm, "post_attention_layernorm", "ffn_norm"},
    TensorName{TensorRole::Router, "block_sparse_moe.gate", "ffn_gate_inp"},
    TensorName{TensorRole::ExpertGate, "block_sparse_moe.experts.{}.w1", "ffn_gate_exps"},
    TensorName{TensorRole::ExpertUp, "block_sparse_moe.experts.{}.w3", "ffn_up_exps"},
    TensorName{TensorRole::ExpertDown, "block_sparse_moe.experts.{}.w2", "ffn_down_exps"},
};

// Qwen2-MoE: Qwen2's attention (q/k/v biases); sparse layers route over experts
// and add a shared expert scaled by sigmoid(shared_expert_gate); layers in
// mlp_only_layers (or off decoder_sparse_step) keep a dense MLP under Llama's names.
constexpr std::array kQwen2MoeNames{
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
    TensorName{TensorRole::Router, "mlp.gate", "ffn_gate_inp"},
    TensorName{TensorRole::ExpertGate, "mlp.experts.{}.gate_proj", "ffn_gate_exps"},
    TensorName{TensorRole::ExpertUp, "mlp.experts.{}.up_proj", "ffn_up_exps"},
    TensorName{TensorRole::ExpertDown, "mlp.experts.{}.down_proj", "ffn_down_exps"},
    TensorName{TensorRole::SharedGate, "mlp.shared_expert.gate_proj", "ffn_gate_shexp"},
    TensorName{TensorRole::SharedUp, "mlp.shared_expert.up_proj", "ffn_up_shexp"},
    TensorName{TensorRole::SharedDown, "mlp.shared_expert.down_proj", "ffn_down_shexp"},
    TensorName{TensorRole::SharedExpertGate, "mlp.shared_expert_gate", "ffn_gate_inp_shexp"},
};

// Qwen3-MoE: Qwen3's attention (QK-norm, no biases), routed experts without a
// shared one, dense layers where mlp_only_layers says.
constexpr std::array kQwen3MoeNames{
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
    TensorName{TensorRole::Router, "mlp.gate", "ffn_gate_inp"},
    TensorName{TensorRole::ExpertGate, "mlp.experts.{}.gate_proj", "ffn_gate_exps"},
    TensorName{TensorRole::ExpertUp, "mlp.experts.{}.up_proj", "ffn_up_exps"},
    TensorName{TensorRole::ExpertDown, "mlp.experts.{}.down_proj", "ffn_down_exps"},
};

// DeepSeek-V2/V3: multi-head latent attention (a low-rank query, or a plain
// q_proj when q_lora_rank is null; one compressed kv latent per token), dense MLPs
// in the first first_k_dense_replace layers and routed experts with shared ones
// (no gate on them) after. llama.cpp writes both as "deepseek2" under these GGUF
// names; its converter splits kv_b_proj into attn_k_b (W_UK transposed) and
// attn_v_b (older files keep the whole attn_kv_b), which the GGUF reader joins back
// into kv_b_proj (loader/gguf_mla.h), so neither half is a role here.
constexpr std::array kDeepseekNames{
    TensorName{TensorRole::TokenEmbedding, "model.embed_tokens", "token_embd"},
    TensorName{TensorRole::FinalNorm, "model.norm", "output_norm"},
    TensorName{TensorRole::LmHead, "lm_head", "output"},
    TensorName{TensorRole::AttentionNorm, "input_layernorm", "attn_norm"},
    TensorName{TensorRole::Query, "self_attn.q_proj", "attn_q"},
    TensorName{TensorRole::QueryA, "self_attn.q_a_proj", "attn_q_a"},
    TensorName{TensorRole::QueryANorm, "self_attn.q_a_layernorm", "attn_q_a_norm"},
    TensorName{TensorRole::QueryB, "self_attn.q_b_proj", "attn_q_b"},
    TensorName{TensorRole::KvA, "self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"},
    TensorName{TensorRole::KvANorm, "self_attn.kv_a_layernorm", "attn_kv_a_norm"},
    TensorName{TensorRole::KvB, "self_attn.kv_b_proj", "attn_kv_b"},
    TensorName{TensorRole::AttentionOutput, "self_attn.o_proj", "attn_output"},
    TensorName{TensorRole::MlpNorm, "post_attention_layernorm", "ffn_norm"},
    TensorName{TensorRole::Gate, "mlp.gate_proj", "ffn_gate"},
    TensorName{TensorRole::Up, "mlp.up_proj", "ffn_up"},
    TensorName{TensorRole::Down, "mlp.down_proj", "ffn_down"},
    TensorName{TensorRole::Router, "mlp.gate", "ffn_gate_inp"},
    // GGUF "blk.N.exp_probs_b.bias"; the Hugging Face name has no suffix (a buffer).
    TensorName{TensorRole::RouterBias, "mlp.gate.e_score_correction_bias", "exp_probs_b"},
    TensorName{TensorRole::ExpertGate, "mlp.experts.{}.gate_proj", "ffn_gate_exps"},
    TensorName{TensorRole::ExpertUp, "mlp.experts.{}.up_proj", "ffn_up_exps"},
    TensorName{TensorRole::ExpertDown, "mlp.experts.{}.down_proj", "ffn_down_exps"},
    TensorName{TensorRole::SharedGate, "mlp.shared_experts.gate_proj", "ffn_gate_shexp"},
    TensorName{TensorRole::SharedUp, "mlp.shared_experts.up_proj", "ffn_up_shexp"},
    TensorName{TensorRole::SharedDown, "mlp.shared_experts.down_proj", "ffn_down_shexp"},
};

constexpr Architecture deepseek(std::string_view hf_architecture, std::string_view model_type,
                                std::string_view gguf_name) {
  Architecture entry{hf_architecture, model_type, gguf_name, false, false, false, MlpActivation::Silu, kDeepseekNames};
  entry.latent_attention = true;
  return entry;
}

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
    // Mixtral GGUF files say "llama" (with expert tensors); the GGUF reader picks
    // this entry for a llama file with llama.expert_count > 0.
    Architecture{"MixtralForCausalLM", "mixtral", "", false, false, true, MlpActivation::Silu, kMixtralNames, false,
                 false, false, /*norm_topk_prob_default=*/true},
    Architecture{"Qwen2MoeForCausalLM", "qwen2_moe", "qwen2moe", true, false, false, MlpActivation::Silu,
                 kQwen2MoeNames, true},
    Architecture{"Qwen3MoeForCausalLM", "qwen3_moe", "qwen3moe", false, true, false, MlpActivation::Silu,
                 kQwen3MoeNames, true},
    // llama.cpp writes V2 and V3 alike as "deepseek2"; the GGUF reader picks the V3
    // entry for sigmoid expert gating (expert_gating_func 2), V3's routing.
    deepseek("DeepseekV2ForCausalLM", "deepseek_v2", "deepseek2"),
    deepseek("DeepseekV3ForCausalLM", "deepseek_v3", ""),
};

// "mlp.experts.{}.up_proj" split around its index placeholder; nullopt for names without one.
std::optional<std::pair<std::string_view, std::string_view>> split_expert_name(std::string_view hf) {
  const auto at = hf.find("{}");
  if (at == std::string_view::npos) return std::nullopt;
  return std::pair{hf.substr(0, at), hf.substr(at + 2)};
}

// A whole non-negative decimal number, or nullopt.
std::optional<std::int64_t> parse_index(std::string_view text) {
  std::int64_t value = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || text.empty() || value < 0) return std::nullopt;
  return value;
}

std::string join(std::string_view Architecture::*field) {
  std::string out;
  for (const auto& entry : kArchitectures) {
    const std::string_view name = entry.*field;
    if (!name.empty()) out += (out.empty() ? "" : ", ") + std::string(name);
  }
  return out;
}

}  // namespace

bool is_expert_role(TensorRole role) {
  return role == TensorRole::ExpertGate || role == TensorRole::ExpertUp || role == TensorRole::ExpertDown;
}

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
    if (is_expert_role(role)) fail("internal error: an expert's module needs its index (expert_module)");
    return is_global(role) ? std::string(name.hf) : fmt::format("model.layers.{}.{}", layer, name.hf);
  }
  fail("architecture {} has no tensor of role {}", hf_architecture, static_cast<int>(role));
}

std::string Architecture::expert_module(TensorRole role, std::int64_t layer, std::int64_t expert) const {
  for (const auto& name : names) {
    if (name.role != role) continue;
    const auto parts = split_expert_name(name.hf);
    if (!parts) fail("internal error: role {} of {} is not a routed expert's", static_cast<int>(role), hf_architecture);
    return fmt::format("model.layers.{}.{}{}{}", layer, parts->first, expert, parts->second);
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
    if (is_global(name.role)) continue;
    if (const auto parts = split_expert_name(name.hf)) {
      if (part.size() <= parts->first.size() + parts->second.size() || !part.starts_with(parts->first) ||
          !part.ends_with(parts->second)) {
        continue;
      }
      const auto index = parse_index(
          part.substr(parts->first.size(), part.size() - parts->first.size() - parts->second.size()));
      if (index) return ModuleRef{name.role, layer, *index};
    } else if (part == name.hf) {
      return ModuleRef{name.role, layer};
    }
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
    // A 3-D expert tensor stands for many modules: gguf_expert_tensor().
    if (!is_global(name.role) && !is_expert_role(name.role) && !name.gguf.empty() && part == name.gguf) {
      // A tensor that is no module's weight keeps its Hugging Face name whole.
      if (name.role == TensorRole::RouterBias) return HfTensor{fmt::format("model.layers.{}.{}", layer, name.hf), name.role};
      return HfTensor{fmt::format("model.layers.{}.{}.{}", layer, name.hf, suffix), name.role};
    }
  }
  return std::nullopt;
}

std::optional<GgufExpertTensor> gguf_expert_tensor(const Architecture& architecture, std::string_view gguf_name) {
  constexpr std::string_view kPrefix = "blk.", kSuffix = ".weight";
  if (!gguf_name.starts_with(kPrefix) || !gguf_name.ends_with(kSuffix)) return std::nullopt;
  const std::string_view stem = gguf_name.substr(kPrefix.size(), gguf_name.size() - kPrefix.size() - kSuffix.size());
  const auto dot = stem.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const auto layer = parse_index(stem.substr(0, dot));
  if (!layer) return std::nullopt;
  const std::string_view part = stem.substr(dot + 1);
  for (const auto& name : architecture.names) {
    if (is_expert_role(name.role) && part == name.gguf) return GgufExpertTensor{name.role, *layer};
  }
  return std::nullopt;
}

}  // namespace nibble
