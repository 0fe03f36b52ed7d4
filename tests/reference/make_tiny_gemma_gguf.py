#!/usr/bin/env python3
"""Tiny random Gemma 2 and Gemma 3 models written as GGUF, with transformers' logits.

The *_gguf variants are models written as llama.cpp's converter
(convert_hf_to_gguf.py) writes Gemma: its metadata keys, tensor names, F16 matrices,
F32 norm weights stored as w + 1, a SentencePiece-style vocabulary. Their logits are
transformers' own from that file (`from_pretrained(..., gguf_file=)`), so the GGUF
reader, the renaming and what GGUF leaves to the reader are checked against an
independent loader. transformers fills what the file leaves out with the config's
defaults (query_pre_attn_scalar 256, Gemma 3's layer pattern of 6), so these models
keep head_dim 256 and fewer than six layers, where those agree with llama.cpp's
reading. tests/unit/tiny_models_test.cpp reads them (TinyGgufModel).

Regenerate (needs torch, transformers, gguf; not needed by CI):
    python3 tests/reference/make_tiny_gemma_gguf.py [gemma2_gguf gemma3_gguf]

Writes tests/fixtures/tiny/<name>/ (model.gguf, logits.f32, tokens.json).
"""
import importlib.metadata
import json
import os
import sys

import gguf
import numpy as np
import torch
import transformers
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from make_tiny_models import fresh_dir, random_model, reference_tokens

GGUF_COMMON = dict(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
                   num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1,
                   pad_token_id=0, max_position_embeddings=256, sliding_window=8, query_pre_attn_scalar=256,
                   hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
GGUF_VARIANTS = {
    # Local then global layer, soft-capping at transformers' defaults (the GGUF keys
    # say the same; transformers does not read them).
    "gemma2_gguf": (Gemma2ForCausalLM, Gemma2Config(**GGUF_COMMON, rope_theta=10000.0, attn_logit_softcapping=50.0,
                                                    final_logit_softcapping=30.0), "gemma2"),
    # Two local layers (Gemma 3's pattern of 6) with QK-norm, a global base that is not
    # the local one.
    "gemma3_gguf": (Gemma3ForCausalLM, Gemma3TextConfig(
        **GGUF_COMMON, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        "gemma3"),
}

# Hugging Face module -> llama.cpp tensor name (gguf-py's tensor_mapping for Gemma).
GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm",
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(hf_name: str) -> str:
    module, _, suffix = hf_name.rpartition(".")
    if module in GGUF_NAMES:
        return f"{GGUF_NAMES[module]}.{suffix}"
    parts = module.split(".")  # model.layers.N.<rest>
    return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:])]}.{suffix}"


def write_gguf(model, config, arch: str, path: str) -> None:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny random {arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_sliding_window(config.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    else:
        writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    # A SentencePiece-style vocabulary as the converter writes Gemma's: <pad> <eos> <bos> <unk>, then pieces.
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"\u2581t{i}" for i in range(4, config.vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 4 + [-float(i) for i in range(4, config.vocab_size)])
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] +
                           [gguf.TokenType.NORMAL] * (config.vocab_size - 4))
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(config.pad_token_id)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding; the converter skips it
        data = tensor.float().numpy()
        if name.endswith("norm.weight"):
            data = (data + 1).astype(np.float32)  # the converter stores Gemma's (1 + w) as w + 1
        elif data.ndim == 2:
            data = data.astype(np.float16)
        writer.add_tensor(gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_gguf_variant(name: str, tokens: torch.Tensor) -> None:
    model_class, config, arch = GGUF_VARIANTS[name]
    out = fresh_dir(name)
    model = random_model(model_class, config)
    write_gguf(model, config, arch, os.path.join(out, "model.gguf"))
    reference = model_class.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32,
                                            attn_implementation="eager").eval()
    with torch.no_grad():
        logits = reference(tokens).logits[0].float().numpy().astype("<f4")
    logits.tofile(os.path.join(out, "logits.f32"))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "transformers": transformers.__version__, "torch": torch.__version__,
                   "gguf": importlib.metadata.version("gguf")}, f)
    print(name, sorted(os.listdir(out)))


def main() -> None:
    torch.manual_seed(1234)
    tokens = reference_tokens()
    chosen = sys.argv[1:] or list(GGUF_VARIANTS)
    unknown = set(chosen) - set(GGUF_VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)} (known: {', '.join(GGUF_VARIANTS)})")
    for name in chosen:
        make_gguf_variant(name, tokens)


if __name__ == "__main__":
    main()
