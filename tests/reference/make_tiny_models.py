#!/usr/bin/env python3
"""Tiny random Hugging Face models covering each architecture path, with transformers' logits.

Every variant of the Llama family that nibble's engine implements gets a model small
enough to commit (~100 KB), saved by transformers itself, plus the logits that
transformers computes for a fixed token sequence at every position. The engine test
(tests/unit/tiny_models_test.cpp) loads each folder and must reproduce the logits.

Regenerate (needs torch, transformers; not needed by CI):
    python3 tests/reference/make_tiny_models.py [variant ...]   # all variants when none is named

Writes tests/fixtures/tiny/<name>/ (config.json, model*.safetensors, logits.f32 =
float32 little-endian [tokens, vocab], tokens.json).
"""
import json
import os
import sys

import torch
import transformers
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

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
}


def main() -> None:
    torch.manual_seed(1234)
    tokens = torch.randint(3, 128, (1, SEQUENCE_LENGTH), generator=torch.Generator().manual_seed(7))
    chosen = sys.argv[1:] or list(VARIANTS)
    for name in chosen:
        model_class, config, dtype, shard_size = VARIANTS[name]
        out = os.path.join(ROOT, name)
        os.makedirs(out, exist_ok=True)
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))
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
        model.to(dtype).save_pretrained(out, max_shard_size=shard_size or "10GB")
        # The reference runs in float32 on the stored (possibly bf16/fp16) weights,
        # which is what nibble computes.
        reference = model_class.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = reference(tokens).logits[0].float().numpy().astype("<f4")
        logits.tofile(os.path.join(out, "logits.f32"))
        with open(os.path.join(out, "tokens.json"), "w") as f:
            json.dump({"tokens": tokens[0].tolist(), "transformers": transformers.__version__,
                       "torch": torch.__version__}, f)
        print(name, sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
