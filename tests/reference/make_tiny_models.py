#!/usr/bin/env python3
"""Tiny random Hugging Face models covering each architecture path, with transformers' logits.

Every variant of the Llama family that nibble's engine implements gets a model small
enough to commit (~100 KB), saved by transformers itself, plus the logits that
transformers computes for a fixed token sequence at every position. The engine test
(tests/unit/tiny_models_test.cpp) loads each folder and must reproduce the logits.

Regenerate (needs torch, transformers, gguf; not needed by CI):
    python3 tests/reference/make_tiny_models.py [NAME ...]   # all variants, or only these

Writes tests/fixtures/tiny/<name>/ (config.json, model*.safetensors, logits.f32 =
float32 little-endian [tokens, vocab], tokens.json). Variants with a GGUF_VARIANTS
entry also get model.gguf, written with the gguf package as llama.cpp's
convert_hf_to_gguf.py writes that architecture (names from gguf's own tensor map,
rows in Hugging Face order, fused tensors kept fused), and gguf_logits.f32 when its
quantized tensors make its weights differ from the safetensors ones. Variants whose
rope depends on the sequence length (LongRoPE) also get stepped_logits.f32: the
logits transformers gives when the first STEPPED_PREFILL tokens are one forward
call and every later token its own call over the cache. The Gemma GGUF twins
written as llama.cpp writes Gemma come from make_tiny_gemma_gguf.py.
"""
import json
import math
import os
import sys
import zlib

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers import Phi3Config, Phi3ForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tiny")
COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
SEQUENCE_LENGTH = 40

VARIANTS = {
    # GQA, separate lm_head, Llama 3.1 rope scaling with a short original context so
    # that all three frequency bands occur at these sizes.
    "llama_llama3_rope": (LlamaForCausalLM, LlamaConfig(
        **COMMON, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}), torch.float32, None),
    # q/k/v biases, tied embeddings, bf16 storage.
    "qwen2_bias_tied_bf16": (Qwen2ForCausalLM, Qwen2Config(
        **COMMON, max_position_embeddings=256, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False), torch.bfloat16, None),
    # Sliding-window attention shorter than the sequence, fp16 storage.
    "mistral_sliding_window_f16": (MistralForCausalLM, MistralConfig(
        **COMMON, max_position_embeddings=256, rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False),
        torch.float16, None),
    # Linear rope scaling, sharded checkpoint with an index file.
    "llama_linear_rope_sharded": (LlamaForCausalLM, LlamaConfig(
        **COMMON, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 2.0}), torch.float32, "20KB"),
}


# Qwen3 and Phi-3 (a block of their own so other architectures' entries merge cleanly).
VARIANTS.update({
    # QK-norm, an explicit head_dim (16) unlike hidden / heads (8), tied embeddings, bf16.
    "qwen3_qk_norm_tied_bf16": (Qwen3ForCausalLM, Qwen3Config(
        **COMMON, head_dim=16, max_position_embeddings=256, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False), torch.bfloat16, None),
    # Fused qkv_proj and gate_up_proj, a sliding window shorter than the sequence, fp16.
    "phi3_fused_sliding_f16": (Phi3ForCausalLM, Phi3Config(
        **COMMON, max_position_embeddings=256, original_max_position_embeddings=256, rope_theta=10000.0,
        sliding_window=12, pad_token_id=None, tie_word_embeddings=False), torch.float16, None),
    # LongRoPE (Phi-3-128k / Phi-3.5) with an original context of 16 < SEQUENCE_LENGTH, so
    # both factor sets occur (see stepped_logits.f32), and partial rotary as Phi-4-mini
    # has it (0.75 of a 16-wide head: 12 features, 6 factors each).
    "phi3_longrope_partial_f16": (Phi3ForCausalLM, Phi3Config(
        **{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}, max_position_embeddings=64,
        original_max_position_embeddings=16, rope_theta=10000.0, partial_rotary_factor=0.75, pad_token_id=None,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.9, 2.6, 3.5, 4.1],
                      "long_factor": [1.5, 2.7, 4.4, 7.9, 12.5, 19.0]},
        tie_word_embeddings=False), torch.float16, None),
})
# Seeded by their name, so each can be regenerated alone with the same weights (the
# variants above draw from one generator in order, so only all of them together are).
# Gemma 2 and Gemma 3 (their GGUF twins: make_tiny_gemma_gguf.py).
VARIANTS.update({
    # Gemma 2: GeGLU-tanh, (1 + w) norms before and after attention and MLP, sqrt(d)
    # embedding scale, local (window 8 < the sequence) and global layers alternating,
    # a query scale that is not head_dim's (q_dim 64 != hidden 32), attention and
    # final-logit soft-capping low enough to bite on random weights.
    "gemma2_softcap_sliding": (Gemma2ForCausalLM, Gemma2Config(
        **COMMON, head_dim=16, max_position_embeddings=256, rope_theta=10000.0, sliding_window=8,
        query_pre_attn_scalar=24, attn_logit_softcapping=3.0, final_logit_softcapping=2.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention"]), torch.float32, None),
    # Gemma 3: Gemma 2's blocks plus QK-norm, no soft-capping, local layers on
    # both sides of a global one, two rope bases with linear scaling on the global
    # layers only (transformers 5's per-layer-type rope_parameters).
    "gemma3_qknorm_local_global": (Gemma3ForCausalLM, Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 3}, head_dim=16, max_position_embeddings=256, sliding_window=8,
        query_pre_attn_scalar=20, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        torch.float32, None),
})

NAME_SEEDED = {"qwen3_qk_norm_tied_bf16", "phi3_fused_sliding_f16", "phi3_longrope_partial_f16"}
STEPPED = {"phi3_longrope_partial_f16"}
STEPPED_PREFILL = 13

# name -> (gguf architecture, {tensor name pattern: ggml type}); unnamed tensors keep
# the checkpoint's float type. Quantized fused tensors are split at load, so the
# fused Phi-3 has Q8_0 (unpacked codes) and Q5_0 (blocks kept packed) ones.
GGUF_VARIANTS = {
    "qwen3_qk_norm_tied_bf16": ("qwen3", {}),
    "phi3_fused_sliding_f16": ("phi3", {"attn_qkv.weight": "Q8_0", "ffn_up.weight": "Q5_0"}),
    "phi3_longrope_partial_f16": ("phi3", {}),
}


def write_gguf(out, arch_name, quantized, model, config):
    """model.gguf from `model`, as convert_hf_to_gguf.py's Qwen3Model / Phi3MiniModel write it."""
    import gguf
    import numpy as np
    arch = {"qwen3": gguf.MODEL_ARCH.QWEN3, "phi3": gguf.MODEL_ARCH.PHI3}[arch_name]
    writer = gguf.GGUFWriter(os.path.join(out, "model.gguf"), arch=arch_name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if arch_name == "qwen3":  # TextModel writes key/value lengths when config.json has head_dim
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if arch_name == "phi3":  # Phi3MiniModel.set_gguf_parameters / generate_extra_tensors
        rope = config.rope_parameters
        original = rope.get("original_max_position_embeddings", config.original_max_position_embeddings)
        writer.add_rope_scaling_orig_ctx_len(original)
        rope_dims = int(rope.get("partial_rotary_factor", 1.0) * config.hidden_size) // config.num_attention_heads
        writer.add_rope_dimension_count(rope_dims)
        writer.add_sliding_window(config.sliding_window or 0)
        if rope.get("long_factor"):
            scale = config.max_position_embeddings / original
            writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
            writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
            writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(config.vocab_size - 3)])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    stored = {}  # hf name -> the values the GGUF holds, for the reference
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        qtype = next((getattr(gguf.GGMLQuantizationType, t) for p, t in quantized.items() if name.endswith(p)), None)
        values = tensor.detach().float().numpy()
        if qtype is not None:
            data = gguf.quants.quantize(values, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            stored[hf_name] = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(values.shape).copy())
        elif tensor.dtype == torch.bfloat16:
            writer.add_tensor(name, tensor.detach().view(torch.int16).numpy().view(np.uint16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif tensor.dtype == torch.float16 and tensor.dim() > 1:
            writer.add_tensor(name, tensor.detach().numpy())
        else:  # norms in float32, as the converter keeps 1-D tensors
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def stepped_logits(model, tokens):
    """Logits with the first STEPPED_PREFILL tokens in one call, then one call per token over the cache."""
    with torch.no_grad():
        first = model(tokens[:, :STEPPED_PREFILL], use_cache=True)
        rows, cache = [first.logits[0]], first.past_key_values
        for i in range(STEPPED_PREFILL, tokens.shape[1]):
            step = model(tokens[:, i:i + 1], past_key_values=cache, use_cache=True)
            rows.append(step.logits[0])
            cache = step.past_key_values
    return torch.cat(rows).float().numpy().astype("<f4")


def fresh_dir(name: str) -> str:
    """tests/fixtures/tiny/<name>/, emptied."""
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    return out


def random_model(model_class, config):
    """A model of `config` with random weights (eager attention, the reference's)."""
    config._attn_implementation = "eager"
    model = model_class(config)
    # Norm weights at 1.0 would hide a missing norm multiply; randomize them.
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name and model_class in (Gemma2ForCausalLM, Gemma3ForCausalLM):
                param.uniform_(-0.5, 0.5)  # Gemma's norms scale by 1 + w
            elif "norm" in param_name:
                param.uniform_(0.5, 1.5)
            elif "bias" in param_name:
                param.normal_(0, 0.5)
            else:
                param.normal_(0, 0.2)
    return model


def reference_tokens() -> torch.Tensor:
    """The token sequence every tiny model's logits are computed for."""
    return torch.randint(3, 128, (1, SEQUENCE_LENGTH), generator=torch.Generator().manual_seed(7))


def main() -> None:
    torch.manual_seed(1234)
    tokens = reference_tokens()
    chosen = sys.argv[1:] or list(VARIANTS)
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    for name, (model_class, config, dtype, shard_size) in VARIANTS.items():
        if name not in chosen:
            continue
        if name in NAME_SEEDED:
            torch.manual_seed(zlib.crc32(name.encode()))
        out = fresh_dir(name)
        model = random_model(model_class, config)
        model.to(dtype).save_pretrained(out, max_shard_size=shard_size or "10GB")
        # The reference runs in float32 on the stored (possibly bf16/fp16) weights,
        # which is what nibble computes.
        reference = model_class.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = reference(tokens).logits[0].float().numpy().astype("<f4")
        logits.tofile(os.path.join(out, "logits.f32"))
        if name in STEPPED:
            stepped_logits(reference, tokens).tofile(os.path.join(out, "stepped_logits.f32"))
        if name in GGUF_VARIANTS:
            arch_name, quantized = GGUF_VARIANTS[name]
            stored = write_gguf(out, arch_name, quantized, reference if dtype == torch.float32 else
                                model_class.from_pretrained(out, dtype=dtype), config)
            if quantized:
                # transformers over the weights as the GGUF stores them (gguf's own dequantization).
                with torch.no_grad():
                    for param_name, values in stored.items():
                        reference.get_parameter(param_name).copy_(values)
                    reference(tokens).logits[0].float().numpy().astype("<f4").tofile(
                        os.path.join(out, "gguf_logits.f32"))
        with open(os.path.join(out, "tokens.json"), "w") as f:
            json.dump({"tokens": tokens[0].tolist(), "transformers": transformers.__version__,
                       "torch": torch.__version__}, f)
        print(name, sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
