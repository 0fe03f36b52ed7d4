#pragma once
// llama.cpp's "deepseek2" GGUF files as nibble's DeepSeek model: the MLA and MoE
// metadata keys become ModelConfig fields, and the kv_b_proj that its converter
// splits in two is joined back.
#include <string>
#include <vector>

#include "loader/gguf.h"
#include "loader/model_config.h"

namespace nibble {

// Latent attention, YaRN and DeepSeek routing from deepseek2 keys `prefix`
// ("deepseek2."), on a config whose common fields (sizes, heads, layers, norm eps,
// rope base, vocabulary) are already read. Throws nibble::Error naming the file and
// key for a missing or absurd value.
void deepseek_from_gguf(const GgufFile& gguf, const std::string& prefix, ModelConfig& config);

// Which DeepSeek a deepseek2 file is: "DeepseekV3ForCausalLM" when its experts are
// gated by a sigmoid (expert_gating_func 2), else "DeepseekV2ForCausalLM".
std::string deepseek_architecture_of(const GgufFile& gguf);

// Hugging Face's kv_b_proj [heads * (nope + v), rank] (per head W_UK's nope rows,
// then W_UV's v rows) from the converter's halves: attn_k_b [heads, rank, nope]
// (W_UK transposed, for absorbing it into the query) and attn_v_b [heads, v, rank],
// decoded to float32 whatever their type.
std::vector<float> join_kv_b(const GgufTensor& k_b, const GgufTensor& v_b, const MlaConfig& mla, std::int64_t heads);

}  // namespace nibble
