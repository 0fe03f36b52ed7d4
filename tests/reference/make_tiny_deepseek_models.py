#!/usr/bin/env python3
"""Tiny random DeepSeek-V2 / V3 models and transformers' outputs for them, made at test time.

Nothing here is committed but this script: CTest runs it (tests/unit/CMakeLists.txt,
fixture tiny_deepseek_models) in scripts/make-gptq-model's venv and
deepseek_reference_test checks nibble against what it writes. Both models have
multi-head latent attention with YaRN rope scaling (mscale != mscale_all_dim, so
both the cos/sin factor and the softmax scale's mscale^2 matter), a dense first
layer then MoE layers with group-limited routing (n_group 4, topk_group 2) and
shared experts:

  deepseek_v3  DeepseekV3ForCausalLM: q_lora_rank set (q_a_proj / q_a_layernorm /
               q_b_proj), sigmoid routing with a random e_score_correction_bias,
               top-k renormalized, x routed_scaling_factor, interleaved rope
  deepseek_v2  DeepseekV2ForCausalLM: q_lora_rank null (plain q_proj, as V2-Lite),
               softmax routing, group_limited_greedy, x routed_scaling_factor
  deepseek_v3_fp8  deepseek_v3's architecture in DeepSeek-V3's own FP8 checkpoint
               format (quant_method "fp8", e4m3 `weight` + float32 `weight_scale_inv`,
               here 16x16 blocks so matrices have several and partial ones): every
               projection and expert, kv_b_proj included; the reference is transformers
               over the weights the file means (codes times scales)
  deepseek_v3_no_kv_b  deepseek_v3 without layer 1's kv_b_proj (a load must fail by name)
  deepseek_v3_chat  deepseek_v3's architecture over a real vocabulary, for `nibble serve`
               and the OpenAI SDK suite (tests/e2e/openai_sdk_test.py, DeepseekV3): the
               Llama 2 SentencePiece tokenizer (SHARED_DIR/models/llama2c-tokenizer, 32000
               pieces) plus DeepSeek-V3's <｜User｜> / <｜Assistant｜> turn markers as added
               special tokens, a chat template of DeepSeek-V3's shape, bfloat16 weights
               (about 4 MB); no reference outputs (see make_chat_model)
  deepseek_v3_chat_fp8  the same model as DeepSeek-V3 ships: every projection and expert
               in FP8 blocks (e4m3 + float32 weight_scale_inv, as deepseek_v3_fp8), the
               rest (embeddings, norms, routers, lm_head) in bfloat16

  deepseek_v3_gguf, deepseek_v2_gguf (with LLAMA_CPP_SRC, scripts/get-llama-cpp's source
               tree): the models in llama.cpp's deepseek2 GGUF, made by its own
               converter (GGUF_VARIANTS below); *_q8_0 the same in Q8_0

and OUT_DIR/yarn_reference.json: YaRN inverse frequencies and attention factors that
transformers' _compute_yarn_parameters gives for a few settings (YARN_CASES).

Usage: make_tiny_deepseek_models.py OUT_DIR [LLAMA_CPP_SRC]
(SHARED_DIR is $NIBBLE_SHARED_DIR, else the project's ../shared; without its Llama 2
tokenizer deepseek_v3_chat is not made.)
Writes OUT_DIR/<name>/: the model (float32 safetensors), logits.f32 (float32
[SEQUENCE_LENGTH, vocab] for tokens.json's sequence), reference.json ({"vocab_size",
"cases": [{"prompt_ids", "greedy_ids", "top2_gaps"}], "yarn": {"inv_freq",
"attention_factor", "softmax_scale"}}: 5 prompts, GREEDY_TOKENS greedy tokens each;
the rotary frequencies and factors transformers' own YaRN code computed for the
model) and last_logits.f32 ([cases, vocab]). A model is redrawn (next seed) until
every greedy step's top-2 gap is above MIN_GAP, so float32 summation order cannot
flip a token.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

# The same reference outputs (logits, greedy tokens with their top-2 gaps) as the MoE fixtures.
from make_tiny_moe_models import outputs  # noqa: E402

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
              v_head_dim=12, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
              first_k_dense_replace=1, rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1,
              eos_token_id=None, tie_word_embeddings=False)
SEQUENCE_LENGTH = 40
PROMPT_LENGTHS = [1, 4, 7, 12, 20]
MIN_GAP = 1e-3


def yarn(mscale, mscale_all_dim):
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": mscale, "mscale_all_dim": mscale_all_dim}


V3 = dict(q_lora_rank=24, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True)
V2 = dict(q_lora_rank=None, n_shared_experts=2, routed_scaling_factor=1.5, norm_topk_prob=False,
          topk_method="group_limited_greedy")
VARIANTS = {
    "deepseek_v3": (DeepseekV3ForCausalLM, lambda: DeepseekV3Config(**COMMON, **V3, rope_parameters=yarn(0.9, 1.1))),
    "deepseek_v2": (DeepseekV2ForCausalLM, lambda: DeepseekV2Config(**COMMON, **V2, rope_parameters=yarn(1.0, 0.8))),
}
# The same two models as llama.cpp's converter writes them ("deepseek2"), made only
# when its source tree is given. Two differences from the models above, both what
# published DeepSeek configs have: mscale equals mscale_all_dim (the converter keeps
# only 0.1 * mscale_all_dim, as yarn_log_multiplier, and llama.cpp runs every
# deepseek2 file as if the two were equal, so a file made from mscale != mscale_all_dim
# means another model than its source), and scoring_func is named (the converter
# writes expert_gating_func from it; without it llama.cpp assumes softmax). Each
# folder holds the Hugging Face model with a tiny byte-level BPE tokenizer
# (tiny_tokenizer()), transformers' outputs and model.gguf (--outtype f32, read back
# bit-identical to the safetensors); <name>_q8_0/ holds the --outtype q8_0 file
# (Q8_0 where rows split into 32-blocks, F16 elsewhere, as the converter decides)
# with transformers' outputs over the weights gguf-py dequantizes from it.
GGUF_VARIANTS = {
    "deepseek_v3_gguf": (DeepseekV3ForCausalLM, lambda: DeepseekV3Config(
        **COMMON, **V3, rope_parameters=yarn(1.1, 1.1), scoring_func="sigmoid")),
    "deepseek_v2_gguf": (DeepseekV2ForCausalLM, lambda: DeepseekV2Config(
        **COMMON, **V2, rope_parameters=yarn(0.8, 0.8), scoring_func="softmax")),
}


def random_model(model_class, config, seed):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)  # 1.0 would hide a missing multiply
            elif name.endswith("mlp.gate.weight"):
                param.normal_(0, 0.5)  # routers decisive enough that float32 rounding never flips a choice
            else:
                param.normal_(0, 0.2)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0, 0.1)  # zero would hide a bias read or applied wrongly
    return model


def yarn_numbers(model):
    """What transformers' YaRN code computed for this model: the rotary inverse
    frequencies, the cos/sin factor and the attention's softmax scale."""
    rotary = model.model.rotary_emb
    return {"inv_freq": [float(x) for x in rotary.inv_freq.tolist()],
            "attention_factor": float(rotary.attention_scaling),
            "softmax_scale": float(model.model.layers[0].self_attn.scaling)}


# YaRN settings whose frequencies and factors transformers' own function computes
# for the unit test (yarn_reference.json): DeepSeek-V3's published ones (every
# regime of the ramp over 32 frequencies), a non-truncated range, and no mscales.
YARN_CASES = [
    {"dim": 64, "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
     "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "max_position_embeddings": 163840},
    {"dim": 64, "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 16.0,
     "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 0.5, "truncate": False, "max_position_embeddings": 65536},
    {"dim": 32, "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 2048,
     "max_position_embeddings": 8192},
]


def yarn_reference():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cases = []
    for case in YARN_CASES:
        params = {k: v for k, v in case.items() if k not in ("dim", "max_position_embeddings")}
        params["rope_type"] = "yarn"
        config = DeepseekV3Config(**{**COMMON, "qk_rope_head_dim": case["dim"],
                                     "max_position_embeddings": case["max_position_embeddings"]},
                                  rope_parameters=params)
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
        cases.append({"settings": case, "inv_freq": [float(x) for x in inv_freq.tolist()],
                      "attention_factor": float(attention_factor)})
    return cases


FP8_MAX = 448.0
FP8_BLOCK = 16


def fp8_blocks(weight):
    """e4m3 codes, the float32 [ceil(N/B), ceil(K/B)] scales, and codes x scales in float32."""
    n, k = weight.shape
    rows, cols = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    scales = torch.empty(rows, cols, dtype=torch.float32)
    for i in range(rows):
        for j in range(cols):
            block = weight[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
            scales[i, j] = block.abs().max() / FP8_MAX
    expanded = scales.repeat_interleave(FP8_BLOCK, 0)[:n].repeat_interleave(FP8_BLOCK, 1)[:, :k]
    codes = (weight / expanded).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes, scales, codes.to(torch.float32) * expanded


def make_fp8(root, name, tokens, prompts):
    """The V3 model with every projection stored as DeepSeek's FP8 blocks, and
    transformers' outputs over the weights that file means; redrawn like the others."""
    model_class, make_config = VARIANTS["deepseek_v3"]
    out = os.path.join(root, name)
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    for attempt in range(50):
        model = random_model(model_class, make_config(), seed + attempt)
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        path = os.path.join(out, "model.safetensors")
        stored = safetensors.torch.load_file(path)
        meant, quantized = {}, 0
        for key, tensor in list(stored.items()):
            if key.endswith("_proj.weight") and tensor.dim() == 2:
                codes, scales, dequantized = fp8_blocks(tensor)
                meant[key] = dequantized
                stored[key] = codes
                stored[key[: -len("weight")] + "weight_scale_inv"] = scales
                quantized += 1
            else:
                meant[key] = tensor
        held = os.path.join(root, name + ".dequantized")
        shutil.rmtree(held, ignore_errors=True)
        shutil.copytree(out, held)
        safetensors.torch.save_file(meant, os.path.join(held, "model.safetensors"), metadata={"format": "pt"})
        reference = model_class.from_pretrained(held, dtype=torch.float32, attn_implementation="eager").eval()
        shutil.rmtree(held)
        logits, last, cases = outputs(reference, tokens, prompts)
        if min(min(c["top2_gaps"]) for c in cases) > MIN_GAP:
            break
    else:
        sys.exit(f"{name}: no seed in 50 gives greedy top-2 gaps above {MIN_GAP}")
    safetensors.torch.save_file(stored, path, metadata={"format": "pt"})
    config = json.load(open(os.path.join(out, "config.json")))
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    logits.tofile(os.path.join(out, "logits.f32"))
    last.tofile(os.path.join(out, "last_logits.f32"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"vocab_size": VOCAB, "cases": cases, "yarn": yarn_numbers(reference),
                   "quantized_modules": quantized}, f)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "seed": seed + attempt}, f)
    print(name, "seed", seed + attempt, quantized, "FP8 modules")


HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_tokenizer(out):
    """A byte-level BPE of VOCAB tokens for convert_hf_to_gguf.py (which needs a
    tokenizer) and nibble's GGUF tokenizer: tests/tokenizer/data/gpt2's first 95
    tokens (<|endoftext|> and printable ASCII), space and newline, then its merges
    in order while they fit."""
    with open(os.path.join(HERE, "..", "tokenizer", "data", "gpt2", "tokenizer.json")) as f:
        spec = json.load(f)
    vocab = {token: i for token, i in spec["model"]["vocab"].items() if i < 95}
    for token in ("\u0120", "\u010a"):  # byte-level space and newline
        vocab[token] = len(vocab)
    merges = []
    for merge in spec["model"]["merges"]:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        if len(vocab) < VOCAB and a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append(f"{a} {b}")
    spec["model"]["vocab"], spec["model"]["merges"] = vocab, merges
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>"}, f)


# DeepSeek-V3's chat format (its tokenizer_config.json's template without the tool
# calls): BOS, the system prompt, then <｜User｜>question<｜Assistant｜>answer<EOS>...
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] %}{% endif %}"
    "{% endfor %}"
    "{{ ns.system }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
CHAT_MARKERS = ["<｜User｜>", "<｜Assistant｜>"]


def llama2_tokenizer_json(model_file):
    """Hugging Face's tokenizer.json for a SentencePiece BPE model file, as transformers'
    LlamaConverter writes it (its SentencePieceExtractor's merges: every split of a
    piece into two pieces, ranked by the piece's score), without the sentencepiece
    package. Returns (tokenizer.json, the ids no text is made of: unk, control, bytes)."""
    from transformers.convert_slow_tokenizer import import_protobuf
    proto = import_protobuf().ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    normal, unknown, control, byte = 1, 2, 3, 6  # sentencepiece's ModelProto.SentencePiece.Type
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for piece, score, kind in pieces:
        if kind != normal:
            continue
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    special = [i for i, (_, _, kind) in enumerate(pieces) if kind in (unknown, control)]
    not_text = [i for i, (_, _, kind) in enumerate(pieces) if kind != normal]
    space = "\u2581"

    def replace(pattern, content):
        return {"type": "Replace", "pattern": {"String": pattern}, "content": content}

    bos = pieces[proto.trainer_spec.bos_id][0]
    bos_token = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"SpecialToken": {"id": bos, "type_id": 1}}]
    sequence = [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}]
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": pieces[i][0], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i in special],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace(" ", space)]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [bos_token[0], sequence[0]],
                           "pair": [bos_token[0], sequence[0], bos_token[1], sequence[1]],
                           "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [replace(space, " "), {"type": "ByteFallback"}, {"type": "Fuse"},
                                                      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": pieces[proto.trainer_spec.unk_id][0],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [[left, right] for left, right, _ in merges]},
    }
    return spec, not_text


def make_chat_model(root, shared):
    """deepseek_v3_chat: deepseek_v3's architecture (MLA with YaRN, grouped sigmoid
    routing, a shared expert) over the Llama 2 vocabulary plus DeepSeek-V3's two turn
    markers, for `nibble serve` with text and chat requests. Random, so what it says
    is noise, with one exception made on purpose: the lm_head rows of the tokens that
    are no text (unk, BOS, EOS, the 256 byte-fallback pieces, the turn markers) are
    zero, so their logit is exactly 0 while the largest of 32000 random logits is far
    above it: greedy decoding only ever picks whole text pieces (a lone byte of a
    UTF-8 character has no text of its own) and never ends early on EOS; sampling may
    still pick any token. There is no transformers reference: deepseek_v3 is that
    check, this model is for the serving paths."""
    model_file = os.path.join(shared, "models", "llama2c-tokenizer", "tokenizer.model")
    if not os.path.exists(model_file):
        print(f"deepseek_v3_chat not made: no {model_file}")
        return
    spec, not_text = llama2_tokenizer_json(model_file)
    base = len(spec["model"]["vocab"])  # the turn markers' ids follow the pieces'
    for i, marker in enumerate(CHAT_MARKERS):
        spec["added_tokens"].append({"id": base + i, "content": marker, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    vocab_size = base + len(CHAT_MARKERS)
    name = "deepseek_v3_chat"
    out = os.path.join(root, name)
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    config = DeepseekV3Config(**{**COMMON, "vocab_size": vocab_size, "eos_token_id": 2}, **V3,
                              rope_parameters=yarn(0.9, 1.1))
    model = random_model(DeepseekV3ForCausalLM, config, seed)
    with torch.no_grad():
        model.lm_head.weight[not_text + list(range(base, vocab_size))] = 0
    shutil.rmtree(out, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(out)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(spec, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                   "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 256,
                   "chat_template": CHAT_TEMPLATE}, f, ensure_ascii=False, indent=2)
    print(name, "seed", seed, "vocab", vocab_size, sorted(os.listdir(out)))

    fp8 = out + "_fp8"
    shutil.rmtree(fp8, ignore_errors=True)
    shutil.copytree(out, fp8)
    path = os.path.join(fp8, "model.safetensors")
    stored = safetensors.torch.load_file(path)
    quantized = 0
    for key, tensor in list(stored.items()):
        if key.endswith("_proj.weight") and tensor.dim() == 2:
            stored[key], stored[key[: -len("weight")] + "weight_scale_inv"], _ = fp8_blocks(tensor.float())
            quantized += 1
    safetensors.torch.save_file(stored, path, metadata={"format": "pt"})
    with open(os.path.join(fp8, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    with open(os.path.join(fp8, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(name + "_fp8", quantized, "FP8 modules")


def convert(llama_cpp, model_dir, outfile, outtype):
    """llama.cpp's convert_hf_to_gguf.py, run by llama_cpp_convert.py."""
    subprocess.run([sys.executable, os.path.join(HERE, "llama_cpp_convert.py"), llama_cpp, model_dir,
                    "--outfile", outfile, "--outtype", outtype], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


# Hugging Face name (per layer: after "model.layers.N.") -> llama.cpp's deepseek2
# tensor (gguf-py's constants), for reading the files back independently of nibble.
GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q", "self_attn.q_a_proj.weight": "attn_q_a",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm", "self_attn.q_b_proj.weight": "attn_q_b",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa", "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm",
    "self_attn.o_proj.weight": "attn_output", "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
    "mlp.gate.weight": "ffn_gate_inp", "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp", "mlp.shared_experts.down_proj.weight": "ffn_down_shexp",
}


def read_gguf(path, like):
    """The Hugging Face state dict `like` with every value as the GGUF at `path` holds
    it (gguf-py's dequantization): experts out of the 3-D ffn_*_exps tensors, kv_b_proj
    from attn_k_b (per head W_UK transposed) and attn_v_b. Also the number of
    matrices stored quantized that nibble keeps packed: experts one each, the token
    table too (it is bound like a linear layer), attn_k_b / attn_v_b not (they load
    as kv_b_proj's float32)."""
    import gguf
    reader = gguf.GGUFReader(path)
    stored, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        stored[t.name] = torch.from_numpy(
            np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape))
        types[t.name] = t.tensor_type
    out, quantized = {}, 0
    for key, value in like.items():
        parts = key.split(".")
        if key in GGUF_GLOBAL:
            name = GGUF_GLOBAL[key]
        elif key.endswith("e_score_correction_bias"):
            name = f"blk.{parts[2]}.exp_probs_b.bias"
        elif ".mlp.experts." in key:  # model.layers.L.mlp.experts.E.gate_proj.weight
            name = f"blk.{parts[2]}.ffn_{parts[6][:-len('_proj')]}_exps.weight"
            out[key] = stored[name][int(parts[5])]
            quantized += types[name] == gguf.GGMLQuantizationType.Q8_0
            continue
        elif key.endswith("kv_b_proj.weight"):
            k_b, v_b = stored[f"blk.{parts[2]}.attn_k_b.weight"], stored[f"blk.{parts[2]}.attn_v_b.weight"]
            out[key] = torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(value.shape)
            continue
        else:
            name = f"blk.{parts[2]}.{GGUF_LAYER['.'.join(parts[3:])]}.weight"
        out[key] = stored[name].reshape(value.shape)
        quantized += types[name] == gguf.GGMLQuantizationType.Q8_0
    return out, quantized


def weights_model(model_class, config_dir, state):
    """transformers' model of config_dir's config over the weights `state`."""
    held = config_dir + ".weights"
    shutil.rmtree(held, ignore_errors=True)
    os.makedirs(held)
    shutil.copy(os.path.join(config_dir, "config.json"), held)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(held, "model.safetensors"),
                                metadata={"format": "pt"})
    model = model_class.from_pretrained(held, dtype=torch.float32, attn_implementation="eager").eval()
    shutil.rmtree(held)
    return model


def write_reference(out, model, logits, last, cases, tokens, seed, extra=None):
    logits.tofile(os.path.join(out, "logits.f32"))
    last.tofile(os.path.join(out, "last_logits.f32"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"vocab_size": VOCAB, "cases": cases, "yarn": yarn_numbers(model), **(extra or {})}, f)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "seed": seed, "transformers": transformers.__version__,
                   "torch": torch.__version__}, f)


def make_gguf(root, name, llama_cpp, tokens, prompts):
    """GGUF_VARIANTS[name]: the model, its f32 and q8_0 GGUF files and the references;
    redrawn until both references' greedy top-2 gaps are above MIN_GAP."""
    model_class, make_config = GGUF_VARIANTS[name]
    out, out_q8 = os.path.join(root, name), os.path.join(root, name + "_q8_0")
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    for attempt in range(50):
        model = random_model(model_class, make_config(), seed + attempt)
        logits, last, cases = outputs(model, tokens, prompts)
        if min(min(c["top2_gaps"]) for c in cases) <= MIN_GAP:
            continue
        for folder in (out, out_q8):
            shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(out)
        tiny_tokenizer(out)
        convert(llama_cpp, out, os.path.join(out, "model.gguf"), "f32")
        # As saved (one tensor per expert), not model.state_dict() (transformers fuses experts in memory).
        state = safetensors.torch.load_file(os.path.join(out, "model.safetensors"))
        held, _ = read_gguf(os.path.join(out, "model.gguf"), state)
        for key, value in state.items():
            if not torch.equal(held[key], value):
                sys.exit(f"{name}: the f32 GGUF does not hold {key} as the model has it")
        os.makedirs(out_q8)
        shutil.copy(os.path.join(out, "config.json"), out_q8)
        convert(llama_cpp, out, os.path.join(out_q8, "model.gguf"), "q8_0")
        held, quantized = read_gguf(os.path.join(out_q8, "model.gguf"), state)
        dequantized = weights_model(model_class, out, held)
        q8_logits, q8_last, q8_cases = outputs(dequantized, tokens, prompts)
        if quantized > 0 and min(min(c["top2_gaps"]) for c in q8_cases) > MIN_GAP:
            break
    else:
        sys.exit(f"{name}: no seed in 50 gives greedy top-2 gaps above {MIN_GAP}")
    write_reference(out, model, logits, last, cases, tokens, seed + attempt)
    write_reference(out_q8, dequantized, q8_logits, q8_last, q8_cases, tokens, seed + attempt,
                    {"quantized_modules": quantized})
    print(name, "seed", seed + attempt, quantized, "Q8_0 modules")


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    root = os.path.abspath(sys.argv[1])
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(3, VOCAB, (1, SEQUENCE_LENGTH), generator=generator)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    for name, (model_class, make_config) in VARIANTS.items():
        out = os.path.join(root, name)
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        for attempt in range(50):
            model = random_model(model_class, make_config(), seed + attempt)
            logits, last, cases = outputs(model, tokens, prompts)
            if min(min(c["top2_gaps"]) for c in cases) > MIN_GAP:
                break
        else:
            sys.exit(f"{name}: no seed in 50 gives greedy top-2 gaps above {MIN_GAP}")
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        logits.tofile(os.path.join(out, "logits.f32"))
        last.tofile(os.path.join(out, "last_logits.f32"))
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump({"vocab_size": VOCAB, "cases": cases, "yarn": yarn_numbers(model)}, f)
        with open(os.path.join(out, "tokens.json"), "w") as f:
            json.dump({"tokens": tokens[0].tolist(), "seed": seed + attempt, "transformers": transformers.__version__,
                       "torch": torch.__version__}, f)
        print(name, "seed", seed + attempt, sorted(os.listdir(out)))

    make_fp8(root, "deepseek_v3_fp8", tokens, prompts)
    make_chat_model(root, os.environ.get("NIBBLE_SHARED_DIR") or os.path.join(HERE, "..", "..", "..", "shared"))
    if len(sys.argv) == 3:
        for name in GGUF_VARIANTS:
            make_gguf(root, name, os.path.abspath(sys.argv[2]), tokens, prompts)
    with open(os.path.join(root, "yarn_reference.json"), "w") as f:
        json.dump(yarn_reference(), f)

    # The V3 model with one layer's kv_b_proj missing.
    broken = os.path.join(root, "deepseek_v3_no_kv_b")
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(os.path.join(root, "deepseek_v3"), broken)
    path = os.path.join(broken, "model.safetensors")
    tensors = safetensors.torch.load_file(path)
    del tensors["model.layers.1.self_attn.kv_b_proj.weight"]
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
