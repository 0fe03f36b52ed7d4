#!/usr/bin/env python3
"""Tiny random mixture-of-experts models and transformers' outputs for them, made at test time.

Nothing here is committed but this script: CTest runs it (tests/unit/CMakeLists.txt,
fixture tiny_moe_models) in scripts/make-gptq-model's venv and moe_reference_test
checks nibble against what it writes. Each architecture gets a model of a few
hundred KB saved by transformers itself (per-expert tensors, which is also how
the Hub's Mixtral / Qwen MoE checkpoints store them):

  mixtral_moe      MixtralForCausalLM: 4 experts, top-2 renormalized, every layer sparse;
                   plus model.gguf as llama.cpp writes Mixtral ("llama" with expert tensors,
                   q/k rows permuted, ffn_gate_exps in Q8_0) and gguf_* outputs
  qwen2_moe_shared Qwen2MoeForCausalLM: 8 experts, top-2 not renormalized, a shared expert
                   with its sigmoid gate, q/k/v biases, layer 1 dense (mlp_only_layers)
  qwen3_moe_qknorm Qwen3MoeForCausalLM: 8 experts, top-2 renormalized, QK-norm, head_dim 16;
                   plus model.gguf written as llama.cpp's converter writes qwen3moe
                   (3-D ffn_*_exps tensors, ffn_up_exps in Q8_0) and gguf_* outputs for
                   the weights as that file stores them
  qwen2_moe_gptq   Qwen2MoeForCausalLM quantized by GPTQModel (4-bit, group 32): every
                   expert, the shared expert and attention as per-expert GPTQ modules

Usage: make_tiny_moe_models.py OUT_DIR
Writes OUT_DIR/<name>/: the model, logits.f32 (float32 [SEQUENCE_LENGTH, vocab] for
tokens.json's sequence), reference.json ({"vocab_size", "cases": [{"prompt_ids",
"greedy_ids", "top2_gaps"}]}: 5 prompts, GREEDY_TOKENS greedy tokens each) and
last_logits.f32 ([cases, vocab]: each prompt's last-position logits). A model is
redrawn (next seed) until every greedy step's top-2 gap is above MIN_GAP, so
float32 summation order cannot flip a token.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers import (MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
              rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1, eos_token_id=None,
              tie_word_embeddings=False)
SEQUENCE_LENGTH = 40
PROMPT_LENGTHS = [1, 4, 7, 12, 20]
GREEDY_TOKENS = 32
MIN_GAP = 1e-3

VARIANTS = {
    "mixtral_moe": (MixtralForCausalLM, lambda: MixtralConfig(
        **COMMON, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, rope_theta=1e6)),
    "qwen2_moe_shared": (Qwen2MoeForCausalLM, lambda: Qwen2MoeConfig(
        **COMMON, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, norm_topk_prob=False, mlp_only_layers=[1], use_sliding_window=False)),
    "qwen3_moe_qknorm": (Qwen3MoeForCausalLM, lambda: Qwen3MoeConfig(
        **COMMON, num_hidden_layers=2, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
        norm_topk_prob=True, mlp_only_layers=[], use_sliding_window=False)),
}
GGUF_VARIANTS = {"qwen3_moe_qknorm": ("qwen3moe", {"ffn_up_exps.weight": "Q8_0"}),
                 "mixtral_moe": ("llama", {"ffn_gate_exps.weight": "Q8_0"})}
# Quantized by GPTQModel (4-bit, group 32, per-expert modules as it writes them); the
# reference runs transformers over the weights dequantized from the file by
# dequantize_gptq() below (float64, then float32), independent of nibble's reader.
GPTQ_VARIANTS = {
    "qwen2_moe_gptq": (Qwen2MoeForCausalLM, lambda: Qwen2MoeConfig(
        **{**COMMON, "hidden_size": 64, "intermediate_size": 64}, num_hidden_layers=2, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64, norm_topk_prob=True,
        use_sliding_window=False)),
}


def random_model(model_class, config, seed):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)  # 1.0 would hide a missing multiply
            elif "bias" in name:
                param.normal_(0, 0.5)
            elif name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight"):
                param.normal_(0, 0.5)  # routers decisive enough that float32 rounding never flips a choice
            else:
                param.normal_(0, 0.2)
    return model


def greedy(model, prompt):
    """GREEDY_TOKENS argmax tokens (one full forward per step) and each step's top-2 gap."""
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):], gaps


def outputs(model, tokens, prompts):
    """(all-position logits, last-position logits per prompt, cases) of `model`."""
    with torch.no_grad():
        logits = model(tokens).logits[0].float().numpy().astype("<f4")
        last = np.stack([model(torch.tensor([p])).logits[0, -1].float().numpy() for p in prompts]).astype("<f4")
    cases = []
    for p in prompts:
        ids, gaps = greedy(model, p)
        cases.append({"prompt_ids": p, "greedy_ids": ids, "top2_gaps": gaps})
    return logits, last, cases


def write_outputs(out, prefix, logits, last, cases):
    logits.tofile(os.path.join(out, prefix + "logits.f32"))
    last.tofile(os.path.join(out, prefix + "last_logits.f32"))
    with open(os.path.join(out, prefix + "reference.json"), "w") as f:
        json.dump({"vocab_size": VOCAB, "cases": cases}, f)


def write_gguf(out, arch_name, quantized, config):
    """model.gguf as convert_hf_to_gguf.py's Qwen2MoeModel / Qwen3MoeModel / LlamaModel
    (Mixtral) write it: each layer's experts stacked into 3-D ffn_{gate,up,down}_exps
    tensors [experts, rows, cols]; for llama, q/k rows permuted as LlamaModel.permute does.
    Returns {hf name: the values the file holds} for the reference."""
    import gguf
    arch = {"qwen3moe": gguf.MODEL_ARCH.QWEN3MOE, "qwen2moe": gguf.MODEL_ARCH.QWEN2MOE,
            "llama": gguf.MODEL_ARCH.LLAMA}[arch_name]
    mixtral = arch_name == "llama"
    experts = config.num_local_experts if mixtral else config.num_experts
    head_dim = config.hidden_size // config.num_attention_heads if mixtral else config.head_dim
    writer = gguf.GGUFWriter(os.path.join(out, "model.gguf"), arch=arch_name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    if mixtral:
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(config.vocab_size - 3)])
    writer.add_bos_token_id(config.bos_token_id)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    # The per-expert tensors as saved (in memory transformers 5 fuses them into 3-D parameters).
    state = {k: v.float() for k, v in safetensors.torch.load_file(os.path.join(out, "model.safetensors")).items()}
    stored = {}
    tensors = []  # (gguf name, float32 values, hf names it holds)
    for layer in range(config.num_hidden_layers):
        parts = ((("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")) if mixtral else
                 (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")))
        prefix = "block_sparse_moe" if mixtral else "mlp"
        for hf_part, gguf_part in parts:
            hf_names = [f"model.layers.{layer}.{prefix}.experts.{e}.{hf_part}.weight" for e in range(experts)]
            tensors.append((f"blk.{layer}.{gguf_part}.weight", torch.stack([state.pop(n) for n in hf_names]).numpy(),
                            hf_names))
    for hf_name, values in state.items():
        values = values.numpy()
        if mixtral and (hf_name.endswith("q_proj.weight") or hf_name.endswith("k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            # LlamaModel.permute: each head's rotate-half rows interleaved, as llama.cpp reads them.
            values = (values.reshape(heads, 2, values.shape[0] // heads // 2, *values.shape[1:])
                      .swapaxes(1, 2).reshape(values.shape))
        tensors.append((names.get_name(hf_name, try_suffixes=(".weight", ".bias")), values, [hf_name]))
    for name, values, hf_names in tensors:
        qtype = next((getattr(gguf.GGMLQuantizationType, t) for p, t in quantized.items() if name.endswith(p)), None)
        if qtype is None:
            writer.add_tensor(name, values)
            held = values
        else:
            data = gguf.quants.quantize(values, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            held = gguf.quants.dequantize(data, qtype).reshape(values.shape)
        if len(hf_names) == 1 and qtype is None:
            stored[hf_names[0]] = state[hf_names[0]]  # as saved (llama's q/k before their permutation)
        elif len(hf_names) == 1:
            stored[hf_names[0]] = torch.from_numpy(np.ascontiguousarray(held))
        else:
            for e, hf_name in enumerate(hf_names):
                stored[hf_name] = torch.from_numpy(np.ascontiguousarray(held[e]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = os.path.abspath(sys.argv[1])
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(3, VOCAB, (1, SEQUENCE_LENGTH), generator=generator)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    for name, (model_class, make_config) in VARIANTS.items():
        out = os.path.join(root, name)
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        for attempt in range(50):
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            model = random_model(model_class, make_config(), seed + attempt)
            results = {"": outputs(model, tokens, prompts)}
            model.save_pretrained(out)
            if name in GGUF_VARIANTS:
                arch_name, quantized = GGUF_VARIANTS[name]
                stored = write_gguf(out, arch_name, quantized, model.config)
                results["gguf_"] = outputs(weights_model(root, name, model_class, stored), tokens, prompts)
            if all(min(min(c["top2_gaps"]) for c in cases) > MIN_GAP for _, _, cases in results.values()):
                break
        else:
            sys.exit(f"{name}: no seed in 50 gives greedy top-2 gaps above {MIN_GAP}")
        for prefix, (logits, last, cases) in results.items():
            write_outputs(out, prefix, logits, last, cases)
        with open(os.path.join(out, "tokens.json"), "w") as f:
            json.dump({"tokens": tokens[0].tolist(), "seed": seed + attempt, "transformers": transformers.__version__,
                       "torch": torch.__version__}, f)
        print(name, "seed", seed + attempt, sorted(os.listdir(out)))
    for name, (model_class, make_config) in GPTQ_VARIANTS.items():
        make_gptq(root, name, model_class, make_config, tokens, prompts)


def dequantize_gptq(tensors, module):
    """float32 [out, in] of a GPTQ (v1 zero points) module: w = scale * (q - (z + 1)) by g_idx."""
    qweight = tensors[module + ".qweight"].numpy().astype(np.uint32)   # [in / 8, out]
    qzeros = tensors[module + ".qzeros"].numpy().astype(np.uint32)     # [groups, out / 8]
    scales = tensors[module + ".scales"].float().numpy().astype(np.float64)  # [groups, out]
    g_idx = tensors[module + ".g_idx"].numpy().astype(np.int64)        # [in]
    shifts = np.arange(8, dtype=np.uint32) * 4
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])  # [in, out]
    z = ((qzeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], -1) + 1  # [groups, out]
    w = scales[g_idx] * (q.astype(np.float64) - z[g_idx])
    return torch.from_numpy(w.T.astype(np.float32).copy())


def make_gptq(root, name, model_class, make_config, tokens, prompts):
    """A float16 model quantized by GPTQModel on random calibration tokens, and the
    reference over its dequantized weights; redrawn like the others."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel 7.7 on 2 cores: see make_tool_fixtures.py
    from gptqmodel import GPTQConfig, GPTQModel
    out, base = os.path.join(root, name), os.path.join(root, name + ".base")
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    calibration = torch.randint(3, VOCAB, (32, 32), generator=torch.Generator().manual_seed(5)).tolist()
    for attempt in range(5):
        for folder in (out, base):
            shutil.rmtree(folder, ignore_errors=True)
        random_model(model_class, make_config(), seed + attempt).to(torch.float16).save_pretrained(base)
        config = GPTQConfig(bits=4, group_size=32, sym=True, desc_act=False, format="gptq", offload_to_disk=False)
        here = os.getcwd()
        os.chdir(root)  # GPTQModel writes ./logs/
        try:
            quantized = GPTQModel.load(base, config, dtype=torch.float16)
            quantized.quantize([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration],
                               batch_size=4)
            quantized.save(out)
        finally:
            os.chdir(here)
        tensors = safetensors.torch.load_file(os.path.join(out, "model.safetensors"))
        modules = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
        if not any(".experts." in m for m in modules):
            sys.exit(f"{name}: GPTQModel quantized no expert")
        stored = {k: v.float() for k, v in tensors.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
        for module in modules:
            stored[module + ".weight"] = dequantize_gptq(tensors, module)
        held = os.path.join(root, name + ".dequantized")
        shutil.rmtree(held, ignore_errors=True)
        os.makedirs(held)
        plain = json.load(open(os.path.join(out, "config.json")))
        plain.pop("quantization_config", None)
        json.dump(plain, open(os.path.join(held, "config.json"), "w"))
        safetensors.torch.save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(held, "model.safetensors"),
                                    metadata={"format": "pt"})
        model = model_class.from_pretrained(held, dtype=torch.float32, attn_implementation="eager").eval()
        shutil.rmtree(held)
        results = outputs(model, tokens, prompts)
        if min(min(c["top2_gaps"]) for c in results[2]) > MIN_GAP:
            break
    else:
        sys.exit(f"{name}: no seed in 5 gives greedy top-2 gaps above {MIN_GAP}")
    shutil.rmtree(base)
    write_outputs(out, "", *results)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "seed": seed + attempt, "quantized_modules": len(modules)}, f)
    print(name, "seed", seed + attempt, len(modules), "GPTQ modules")


def weights_model(root, name, model_class, stored):
    """transformers' model over the weights as the GGUF stores them (gguf's own
    dequantization), loaded from a checkpoint of them so transformers lays them out itself."""
    held = os.path.join(root, name + ".gguf_weights")
    shutil.rmtree(held, ignore_errors=True)
    os.makedirs(held)
    shutil.copy(os.path.join(root, name, "config.json"), held)
    safetensors.torch.save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(held, "model.safetensors"),
                                metadata={"format": "pt"})
    model = model_class.from_pretrained(held, dtype=torch.float32, attn_implementation="eager").eval()
    shutil.rmtree(held)
    return model


if __name__ == "__main__":
    main()
