#!/usr/bin/env python3
"""Tiny random Llama / Qwen3 models with FP8 e4m3 weights, and a float64 reference.

No weights are committed: CTest runs this (in scripts/make-gptq-model's venv: torch
with float8_e4m3fn, transformers, safetensors) before tests/unit/fp8_models_test.cpp.
Each variant's linear layers are quantized to e4m3 with scale blocks, saved as the
checkpoint family stores them, and dequantized back (codes widened exactly, times the
stored scale) into a float64 transformers model: the "dequantize-then-run" reference
issue 18 asks for where transformers itself needs a GPU for FP8.

Variants:
  llama_fp8_block128   DeepSeek-V3 / Qwen3-*-FP8 format: quant_method "fp8",
                       weight_block_size [128, 128], `weight` F8_E4M3 +
                       `weight_scale_inv` F32 [ceil(N/128), ceil(K/128)]. Hidden 160 and
                       intermediate 200, so last blocks are partial in both dimensions.
  qwen3_fp8_block32    the same format with [32, 32] blocks, QK-norm, tied embeddings,
                       intermediate 136 (a partial block).
  llama_ct_fp8_channel compressed-tensors float-quantized, strategy channel,
                       `weight_scale` BF16 [N, 1] (llm-compressor's FP8_DYNAMIC).
  llama_ct_fp8_block   compressed-tensors float-quantized, strategy block
                       [64, 64], `weight_scale` F32 (llm-compressor's FP8_BLOCK).

    python3 tests/reference/make_tiny_fp8_models.py OUT_DIR

Writes OUT_DIR/<variant>/: config.json, model.safetensors, logits.f32 (float32
little-endian [tokens, vocab], the float64 run's logits at every position of
`tokens`) and reference.json (that sequence; 5 prompts with 32 greedy tokens each
and the smallest top-1/top-2 logit gap met on the way; the parameter count and the
bytes of the FP8 codes and their scales, for `nibble inspect`).
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

FP8_MAX = 448.0
SEQUENCE_LENGTH = 40
GREEDY_TOKENS = 32
PROMPTS = 5
# Greedy decoding is compared token for token; prompts whose float64 run meets a
# top-1/top-2 gap below this (relative to the largest |logit|) are replaced, so an
# fp32 rounding cannot legitimately flip a token.
MIN_GAP = 1e-3

COMMON = dict(vocab_size=256, num_hidden_layers=2, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              max_position_embeddings=256, rope_theta=10000.0)

VARIANTS = {
    "llama_fp8_block128": (LlamaForCausalLM, LlamaConfig(
        **COMMON, hidden_size=160, intermediate_size=200, num_attention_heads=5, num_key_value_heads=1,
        head_dim=32, tie_word_embeddings=False), ("fp8", 128, 128)),
    "qwen3_fp8_block32": (Qwen3ForCausalLM, Qwen3Config(
        **COMMON, hidden_size=96, intermediate_size=136, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, tie_word_embeddings=True, use_sliding_window=False), ("fp8", 32, 32)),
    "llama_ct_fp8_channel": (LlamaForCausalLM, LlamaConfig(
        **COMMON, hidden_size=96, intermediate_size=136, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False), ("ct-channel", 1, 0)),
    "llama_ct_fp8_block": (LlamaForCausalLM, LlamaConfig(
        **COMMON, hidden_size=160, intermediate_size=200, num_attention_heads=5, num_key_value_heads=1,
        head_dim=32, tie_word_embeddings=False), ("ct-block", 64, 64)),
}


def random_model(model_class, config):
    """float64 random weights large enough that the logits are far from uniform."""
    config._attn_implementation = "eager"
    model = model_class(config).to(torch.float64)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.2)
    return model


def quantize(weight, block_rows, block_cols, scale_dtype):
    """e4m3 codes and the [ceil(N/br), ceil(K/bc)] scale grid (block_cols 0: whole rows).

    The scale is rounded to its stored dtype first, so codes * stored scale is the
    checkpoint's exact meaning."""
    n, k = weight.shape
    bc = block_cols or k
    grid_rows, grid_cols = math.ceil(n / block_rows), math.ceil(k / bc)
    scales = torch.empty(grid_rows, grid_cols, dtype=torch.float64)
    for i in range(grid_rows):
        for j in range(grid_cols):
            block = weight[i * block_rows:(i + 1) * block_rows, j * bc:(j + 1) * bc]
            scales[i, j] = block.abs().max() / FP8_MAX
    scales = scales.to(scale_dtype).to(torch.float64)
    expanded = scales.repeat_interleave(block_rows, 0)[:n].repeat_interleave(bc, 1)[:, :k]
    codes = (weight / expanded).clamp(-FP8_MAX, FP8_MAX).to(torch.float32).to(torch.float8_e4m3fn)
    dequantized = codes.to(torch.float64) * expanded
    return codes, scales.to(scale_dtype), dequantized


def quantization_config(kind, block_rows, block_cols):
    if kind == "fp8":
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": [block_rows, block_cols]}
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
    if kind == "ct-channel":
        weights["strategy"] = "channel"
    else:
        weights.update(strategy="block", block_structure=[block_rows, block_cols])
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "version": "0.12.2",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                                "dynamic": True, "symmetric": True}}},
            "ignore": ["lm_head"]}


def greedy(model, prompt):
    ids = list(prompt)
    smallest_gap = math.inf
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top = torch.topk(logits, 2).values
            smallest_gap = min(smallest_gap, float((top[0] - top[1]) / logits.abs().max()))
            ids.append(int(logits.argmax()))
    return ids[len(prompt):], smallest_gap


def make(out_root, name, model_class, config, scheme):
    kind, block_rows, block_cols = scheme
    torch.manual_seed(sum(map(ord, name)))
    model = random_model(model_class, config).eval()
    tensors = {}
    scale_dtype = torch.bfloat16 if kind == "ct-channel" else torch.float32
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or module_name.endswith("lm_head"):
                continue
            codes, scales, dequantized = quantize(module.weight.data, block_rows, block_cols, scale_dtype)
            module.weight.copy_(dequantized)  # the reference runs on exactly what the file means
            tensors[module_name + ".weight"] = codes.contiguous()
            tensors[module_name + (".weight_scale_inv" if kind == "fp8" else ".weight_scale")] = scales.contiguous()
        for param_name, param in model.state_dict().items():
            if param_name not in tensors and not (config.tie_word_embeddings and param_name == "lm_head.weight"):
                tensors[param_name] = param.to(torch.float32).contiguous()
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_dict()
    hf_config["architectures"] = [model_class.__name__]
    hf_config["torch_dtype"] = "bfloat16"
    hf_config["quantization_config"] = quantization_config(kind, block_rows, block_cols)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)

    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(3, config.vocab_size, (1, SEQUENCE_LENGTH), generator=generator)
    with torch.no_grad():
        model(tokens).logits[0].to(torch.float32).numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
    cases = []
    attempts = 0
    while len(cases) < PROMPTS:
        attempts += 1
        if attempts > 50:
            sys.exit(f"{name}: no {PROMPTS} prompts with a top-2 gap of at least {MIN_GAP}")
        length = int(torch.randint(1, 12, (1,), generator=generator))
        prompt = torch.randint(3, config.vocab_size, (length,), generator=generator).tolist()
        ids, gap = greedy(model, prompt)
        if gap >= MIN_GAP:
            cases.append({"prompt_ids": prompt, "greedy_ids": ids, "smallest_gap": gap})
    fp8_bytes = sum(t.numel() * t.element_size() for name_, t in tensors.items()
                    if t.dtype == torch.float8_e4m3fn or name_.endswith((".weight_scale_inv", ".weight_scale")))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "vocab_size": config.vocab_size, "cases": cases,
                   "parameters": sum(p.numel() for p in model.parameters()), "fp8_bytes": fp8_bytes,
                   "transformers": transformers.__version__, "torch": torch.__version__}, f)
    print(name, sorted(os.listdir(out)), f"{attempts} prompts tried")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_fp8_models.py OUT_DIR")
    for name, (model_class, config, scheme) in VARIANTS.items():
        make(sys.argv[1], name, model_class, config, scheme)


if __name__ == "__main__":
    main()
