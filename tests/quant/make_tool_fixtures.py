#!/usr/bin/env python3
"""Quantized checkpoints made by real third-party tools, plus reference logits.

nibble's GPTQ / AWQ / compressed-tensors loaders and kernels are checked against these
fixtures. Every checkpoint under fixtures/<name>/ is exactly what the tool saved (minus
tokenizer files and the tool's own logs); nibble plays no part in making them.

What it does
  1. `base`: builds a tiny random LlamaForCausalLM (fixed seed, fp16 weights; hidden 128,
     intermediate 256, 2 layers, 4 heads, 2 kv heads, vocab 256, untied lm_head, random
     RMSNorm weights) and a 256-symbol byte-level tokenizer (the tools insist on one).
  2. `gptqmodel`: quantizes it with GPTQModel (GPTQ v1 / v2, 2/3/4/8 bits, act-order,
     per-channel, and AWQ GEMM), using a fixed random-token calibration set.
  3. `llmcompressor`: W4A16 / W8A16 compressed-tensors `pack-quantized` checkpoints
     (llm-compressor 0.14 + compressed-tensors 0.19).
  4. `llmcompressor-sparse`: SparseGPT 2:4 checkpoints, alone and with W4A16. Newer
     compressed-tensors (>= 0.15) dropped the sparse compressors, so this stage needs the last
     pair that has them: llm-compressor 0.10.0.2 + compressed-tensors 0.14.0.1.
  5. `manifest`: merges the per-fixture records into fixtures/manifest.json.

References (per fixture, computed by the tool's own code, never by nibble)
  * transformers loads the saved quantized checkpoint on the CPU (GPTQ/AWQ through
    optimum + gptqmodel with the pure-torch kernels; compressed-tensors through its
    transformers integration, which decompresses with compressed-tensors' code).
  * Every quantized linear is then dequantized to float32 by the tool's own unpacking code
    (GPTQModel's `dequantize_weight`, GPTQModel's AWQ `dequantize_gemm`, compressed-tensors'
    compressor `decompress`) with the stored scales widened to float32 first, so each weight is
    exactly fp32(q - z) * fp32(scale), with no fp16 rounding of the product.
  * Those weights and the stored non-quantized tensors (widened to float32) go into a plain
    float32 transformers LlamaForCausalLM, whose all-position logits are the reference.
  * The fp16 forward of the transformers-loaded quantized model (the tool's own fp16
    kernel) is recorded as a cross-check (`crosscheck_fp16_max_abs_diff`).

Regenerate (see README.md next to this file for the venvs):
    python3 tests/quant/make_tool_fixtures.py all \
        --gptqmodel-python /work/venvs/quant/bin/python \
        --llmc-python /work/venvs/llmc/bin/python \
        --llmc-sparse-python /work/venvs/llmc010/bin/python

Outputs: tests/quant/fixtures/<name>/{config.json, quantize_config.json?, recipe.yaml?,
generation_config.json, model.safetensors, reference_logits_<i>.f32, dequant_<module>.f32}
and tests/quant/fixtures/manifest.json. Scratch goes to models/quant_work/ (gitignored).
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")
DEFAULT_WORK = os.path.join(REPO, "models", "quant_work")

MODEL_SEED = 0
CALIB_SEED = 1
N_CALIB, CALIB_LEN = 32, 64
VOCAB = 256
# Fixed inputs; the logits of every position are the reference.
INPUT_IDS = [
    [1, 144, 153, 99, 238, 238, 253, 244, 127, 157, 213, 87],
    [141, 129, 189, 181, 50, 0, 157, 154, 144, 215, 51, 255],
]
DEQUANT_MODULE = "model.layers.0.self_attn.k_proj"
KEEP_FILES = ("config.json", "quantize_config.json", "generation_config.json", "recipe.yaml")

# name -> GPTQModel config kwargs. act_group_aware ("GAR") is GPTQModel's default for
# desc_act=False; it must be off for desc_act=True and for group_size=-1.
GPTQMODEL_VARIANTS = {
    "gptq_w4_g32_sym": dict(cls="GPTQConfig", bits=4, group_size=32, sym=True, desc_act=False, format="gptq"),
    "gptq_w4_g64_asym_actorder": dict(
        cls="GPTQConfig", bits=4, group_size=64, sym=False, desc_act=True, act_group_aware=False, format="gptq"
    ),
    "gptq_v2_w4_g128_asym": dict(cls="GPTQConfig", bits=4, group_size=128, sym=False, desc_act=False, format="gptq_v2"),
    "gptq_w8_g128_sym": dict(cls="GPTQConfig", bits=8, group_size=128, sym=True, desc_act=False, format="gptq"),
    "gptq_w2_g32_asym": dict(cls="GPTQConfig", bits=2, group_size=32, sym=False, desc_act=False, format="gptq"),
    "gptq_w3_g32_asym": dict(cls="GPTQConfig", bits=3, group_size=32, sym=False, desc_act=False, format="gptq"),
    "gptq_w4_perchannel_sym": dict(
        cls="GPTQConfig", bits=4, group_size=-1, sym=True, desc_act=False, act_group_aware=False, format="gptq"
    ),
}
# Made only with --extras (kept out of the committed set to save space): GPTQModel's own AWQ
# GEMM export. Its tensors follow the same layout as AutoAWQ's (check_fixture_formats.py passes
# on it); only config.json differs (extra GPTQModel keys) and a quantize_config.json is added.
GPTQMODEL_EXTRAS = {
    "awq_gemm_w4_g64_gptqmodel": dict(cls="AWQConfig", bits=4, group_size=64, sym=False, format="gemm"),
}
LLMC_VARIANTS = ["ct_w4a16_g128_sym", "ct_w4a16_g32_asym", "ct_w8a16_g128_sym"]
LLMC_SPARSE_VARIANTS = ["ct_sparse24", "ct_sparse24_w4a16"]


# ----------------------------------------------------------------------------- helpers
def set_cpu_env():
    # Be gentle with a shared 2-core machine; no torch.compile (GPTQModel compiles its
    # dequantizer with inductor otherwise). GPTQModel 7.7.0 sizes its CPU pool as
    # (cores+1)//2 = 1 on 2 cores but then asks for 2 loader workers and fails; force 2.
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    return torch


def calib_ids():
    import torch

    g = torch.Generator().manual_seed(CALIB_SEED)
    return [torch.randint(0, VOCAB, (CALIB_LEN,), generator=g).tolist() for _ in range(N_CALIB)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_checkpoint(src, name):
    """Copies what the tool saved (minus tokenizer files and logs) into fixtures/<name>/."""
    dst = os.path.join(FIXTURES, name)
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    kept, dropped = [], []
    for fn in sorted(os.listdir(src)):
        if fn in KEEP_FILES or fn.endswith(".safetensors") or fn == "model.safetensors.index.json":
            shutil.copy2(os.path.join(src, fn), os.path.join(dst, fn))
            kept.append(fn)
        else:
            dropped.append(fn)
    return dst, kept, dropped


def forward_logits(model, torch):
    out = []
    with torch.no_grad():
        for ids in INPUT_IDS:
            out.append(model(torch.tensor([ids])).logits[0].float().cpu())
    return out


def plain_llama_fp32(folder, weights, torch):
    """A float32 transformers Llama holding `weights` (a full float32 state dict)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(folder)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.float32
    model = LlamaForCausalLM(cfg).float().eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return model


def stored_tensors(folder):
    from safetensors.torch import load_file

    out = {}
    for fn in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update(load_file(fn))
    return out


def write_reference(name, folder, ref_model, crosscheck_logits, dequant_weight, torch, work):
    """Writes reference_logits_<i>.f32 and dequant_<module>.f32; returns manifest fields."""
    ref = forward_logits(ref_model, torch)
    base = torch.load(os.path.join(work, "base", "base_logits.pt"))
    files = []
    for i, lg in enumerate(ref):
        fn = f"reference_logits_{i}.f32"
        lg.numpy().astype("<f4").tofile(os.path.join(folder, fn))
        files.append(fn)
    dq_fn = f"dequant_{DEQUANT_MODULE}.f32"
    w = dequant_weight.detach().float().contiguous()
    w.numpy().astype("<f4").tofile(os.path.join(folder, dq_fn))
    fields = {
        "input_ids": INPUT_IDS,
        "logits_files": files,
        "logits_shape": [[len(ids), VOCAB] for ids in INPUT_IDS],
        "max_abs_logit": max(float(lg.abs().max()) for lg in ref),
        "dequant": {"module": DEQUANT_MODULE, "file": dq_fn, "shape": list(w.shape), "dtype": "float32"},
        "max_abs_diff_vs_unquantized": max(float((a - b).abs().max()) for a, b in zip(ref, base)),
    }
    if crosscheck_logits is not None:
        fields["crosscheck_fp16_max_abs_diff"] = max(
            float((a - b).abs().max()) for a, b in zip(ref, crosscheck_logits)
        )
    return fields


def finish_record(name, folder, record, work):
    files = {}
    for fn in sorted(os.listdir(folder)):
        files[fn] = {"bytes": os.path.getsize(os.path.join(folder, fn)), "sha256": sha256(os.path.join(folder, fn))}
    record["name"] = name
    record["folder"] = os.path.relpath(folder, FIXTURES)
    record["files"] = files
    record["total_bytes"] = sum(v["bytes"] for v in files.values())
    os.makedirs(os.path.join(work, "manifest_parts"), exist_ok=True)
    with open(os.path.join(work, "manifest_parts", name + ".json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"[{name}] {record['total_bytes']} bytes, max|logit| {record['max_abs_logit']:.4f}, "
          f"crosscheck {record.get('crosscheck_fp16_max_abs_diff')}, "
          f"vs unquantized {record['max_abs_diff_vs_unquantized']:.4f}", flush=True)


# ----------------------------------------------------------------------------- stage: base
def make_tokenizer():
    """256 byte-level symbols, no merges: id == byte value (GPT-2 byte-to-unicode map)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_to_char = {b: chr(c) for b, c in zip(bs, cs)}
    vocab = {byte_to_char[b]: b for b in range(256)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=byte_to_char[1], eos_token=byte_to_char[2], pad_token=byte_to_char[0]
    )


def stage_base(work):
    torch = set_cpu_env()
    from transformers import LlamaConfig, LlamaForCausalLM

    out = os.path.join(work, "base")
    if os.path.isdir(out):
        shutil.rmtree(out)
    torch.manual_seed(MODEL_SEED)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # make RMSNorm weights matter
                p.uniform_(0.5, 1.5)
    model = model.to(torch.float16)
    model.config.dtype = torch.float16
    model.save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    # float32 logits of the unquantized fp16 weights, to report each fixture's quantization error
    model32 = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.save(forward_logits(model32, torch), os.path.join(out, "base_logits.pt"))
    print("base model written to", out)


# ----------------------------------------------------------------------------- stage: gptqmodel
def gptqmodel_dequant_fp32(module, fmt, torch):
    """float32 [out, in] weight of a GPTQModel quant linear, unpacked by GPTQModel's code."""
    if fmt == "awq":
        from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

        w = dequantize_gemm(module.qweight, module.qzeros, module.scales.float(), module.bits, module.group_size)
        return w[:, : module.out_features].t().contiguous()
    from gptqmodel.nn_modules.qlinear import PackableQuantLinear

    scales = module.scales
    try:
        module.scales = scales.float()
        w = PackableQuantLinear.dequantize_weight(module, num_itr=1)  # generic (uncached) unpacker
    finally:
        module.scales = scales
    fp16 = module.dequantize_weight()  # the kernel's own (fp16) path, as a sanity check
    if float((fp16.float() - w).abs().max()) > 1e-2 * float(w.abs().max()):
        raise RuntimeError("GPTQModel fp16 and fp32 dequantization disagree")
    return w.t().contiguous()


def stage_gptqmodel(work, only, extras=False):
    torch = set_cpu_env()
    import gptqmodel
    from gptqmodel import AWQConfig, GPTQConfig, GPTQModel
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM
    from transformers import AwqConfig as HfAwqConfig
    from transformers import GPTQConfig as HfGPTQConfig

    os.chdir(work)  # GPTQModel writes ./logs/
    base = os.path.join(work, "base")
    calib = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calib_ids()]
    variants = dict(GPTQMODEL_VARIANTS, **(GPTQMODEL_EXTRAS if extras else {}))
    for name, spec in variants.items():
        if only and name not in only:
            continue
        spec = dict(spec)
        cls = {"GPTQConfig": GPTQConfig, "AWQConfig": AWQConfig}[spec.pop("cls")]
        qcfg = cls(offload_to_disk=False, **spec)
        out = os.path.join(work, "out", name)
        if os.path.isdir(out):
            shutil.rmtree(out)
        t0 = time.time()
        model = GPTQModel.load(base, qcfg, dtype=torch.float16)
        model.quantize(calib, batch_size=1)
        model.save(out)
        seconds = time.time() - t0
        del model
        folder, kept, dropped = copy_checkpoint(out, name)

        # transformers loads the saved checkpoint (optimum + gptqmodel, pure-torch kernels)
        fmt = "awq" if spec["format"] == "gemm" else "gptq"
        hf_q = HfAwqConfig(bits=4, backend="torch_awq") if fmt == "awq" else HfGPTQConfig(bits=4, backend="gptq_torch")
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map="cpu", quantization_config=hf_q)
        hf.eval()
        cross = forward_logits(hf, torch)
        kernels = set()
        weights = {}
        qmods = {}
        for mname, mod in hf.named_modules():
            if isinstance(mod, BaseQuantLinear):
                kernels.add(type(mod).__name__)
                qmods[mname] = mod
                weights[mname + ".weight"] = gptqmodel_dequant_fp32(mod, fmt, torch)
        for k, v in stored_tensors(folder).items():
            if k.rsplit(".", 1)[0] not in qmods:
                weights[k] = v.float()
        ref_model = plain_llama_fp32(folder, weights, torch)
        rec = write_reference(name, folder, ref_model, cross, weights[DEQUANT_MODULE + ".weight"], torch, work)
        with open(os.path.join(folder, "config.json")) as f:
            qc = json.load(f)["quantization_config"]
        rec.update(
            tool="gptqmodel", tool_version=gptqmodel.__version__,
            format="awq" if fmt == "awq" else "gptq",
            checkpoint_format=qc.get("checkpoint_format", qc.get("format")),
            bits=spec["bits"], group_size=spec["group_size"], sym=spec["sym"],
            zero_point=(not spec["sym"]) if fmt == "awq" else None,
            desc_act=spec.get("desc_act", False), act_group_aware=qcfg.act_group_aware if fmt == "gptq" else None,
            sparsity=None, quantization_seconds=round(seconds, 2), dropped_files=dropped,
            quantized_modules=sorted(qmods),
            reference=(
                "transformers " + __import__("transformers").__version__ + " loaded the saved checkpoint on CPU "
                f"(optimum + gptqmodel, kernel {sorted(kernels)}); every quantized linear was dequantized to "
                "float32 by GPTQModel's own unpacker ("
                + ("gptqmodel.quantization.awq.utils.packing_utils.dequantize_gemm" if fmt == "awq"
                   else "PackableQuantLinear.dequantize_weight, after v1->v2 zero conversion on load")
                + ") with scales widened to float32; those weights plus the stored fp16 tensors widened to "
                "float32 ran in a float32 transformers LlamaForCausalLM. crosscheck = same checkpoint through "
                "the tool's fp16 torch kernel."
            ),
        )
        finish_record(name, folder, rec, work)
        del hf, ref_model


# ----------------------------------------------------------------------------- stage: autoawq
AUTOAWQ_VARIANTS = {"awq_gemm_w4_g64": dict(w_bit=4, q_group_size=64, zero_point=True, version="GEMM")}


def stage_autoawq(work, only):
    torch = set_cpu_env()
    import awq
    import transformers
    from awq import AutoAWQForCausalLM
    from awq.utils.packing_utils import dequantize_gemm

    os.chdir(work)
    base = os.path.join(work, "base")
    for name, qc in AUTOAWQ_VARIANTS.items():
        if only and name not in only:
            continue
        out = os.path.join(work, "out", name)
        if os.path.isdir(out):
            shutil.rmtree(out)
        model = AutoAWQForCausalLM.from_pretrained(base, torch_dtype=torch.float16)
        t0 = time.time()
        # token-id lists are taken as-is (no tokenizer, no dataset download)
        model.quantize(make_tokenizer(), quant_config=dict(qc), calib_data=calib_ids(),
                       max_calib_samples=N_CALIB, max_calib_seq_len=CALIB_LEN)
        model.save_quantized(out)
        seconds = time.time() - t0
        del model
        folder, kept, dropped = copy_checkpoint(out, name)
        # No CPU kernel in AutoAWQ: dequantize every WQLinear_GEMM with AutoAWQ's own unpacker
        stored = stored_tensors(folder)
        weights, qmods = {}, []
        for k in stored:
            if k.endswith(".qweight"):
                p = k[: -len(".qweight")]
                qmods.append(p)
                w = dequantize_gemm(stored[p + ".qweight"], stored[p + ".qzeros"], stored[p + ".scales"].float(),
                                    qc["w_bit"], qc["q_group_size"])
                weights[p + ".weight"] = w.t().contiguous()
        for k, v in stored.items():
            if k.rsplit(".", 1)[0] not in qmods:
                weights[k] = v.float()
        ref_model = plain_llama_fp32(folder, weights, torch)
        rec = write_reference(name, folder, ref_model, None, weights[DEQUANT_MODULE + ".weight"], torch, work)
        rec.update(
            tool="autoawq", tool_version=awq.__version__, format="awq", checkpoint_format="gemm",
            bits=qc["w_bit"], group_size=qc["q_group_size"], sym=not qc["zero_point"], zero_point=qc["zero_point"],
            desc_act=False, sparsity=None, quantization_seconds=round(seconds, 2), dropped_files=dropped,
            quantized_modules=sorted(qmods), crosscheck_pending=True,
            reference=(
                "AutoAWQ has no CPU kernel, so every quantized linear was dequantized to float32 by AutoAWQ's own "
                "awq.utils.packing_utils.dequantize_gemm (scales widened to float32) and, with the stored fp16 "
                f"tensors widened to float32, ran in a float32 transformers {transformers.__version__} "
                "LlamaForCausalLM. crosscheck = transformers 5 + gptqmodel loading the same checkpoint with "
                "its fp16 torch_awq kernel (stage crosscheck)."
            ),
        )
        finish_record(name, folder, rec, work)


def stage_crosscheck(work):
    """fp16 forward of checkpoints whose tool has no CPU runtime, through transformers + gptqmodel."""
    torch = set_cpu_env()
    import numpy as np
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers import AwqConfig as HfAwqConfig

    os.chdir(work)
    for p in sorted(glob.glob(os.path.join(work, "manifest_parts", "*.json"))):
        with open(p) as f:
            rec = json.load(f)
        if not rec.pop("crosscheck_pending", False):
            continue
        folder = os.path.join(FIXTURES, rec["folder"])
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map="cpu",
                                                  quantization_config=HfAwqConfig(bits=4, backend="torch_awq")).eval()
        cross = forward_logits(hf, torch)
        diff = 0.0
        for lg, fn in zip(cross, rec["logits_files"]):
            ref = np.fromfile(os.path.join(folder, fn), dtype="<f4").reshape(lg.shape)
            diff = max(diff, float(np.abs(ref - lg.numpy()).max()))
        rec["crosscheck_fp16_max_abs_diff"] = diff
        rec["reference"] += f" (crosscheck run with transformers {transformers.__version__})"
        with open(p, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"[{rec['name']}] crosscheck {diff}", flush=True)


# ----------------------------------------------------------------------------- stage: llm-compressor
def ct_reference(name, folder, work, torch, extra):
    """transformers + compressed-tensors decompression; float32 weights via the compressor."""
    import compressed_tensors
    import transformers
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    def load(dtype):
        import inspect

        params = inspect.signature(CompressedTensorsConfig.__init__).parameters
        # transformers >= 5.x: dequantize=True; 4.x: run_compressed=False
        qc = CompressedTensorsConfig(**({"dequantize": True} if "dequantize" in params else {"run_compressed": False}))
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=qc).eval()

    hf16 = load(torch.float16)
    cross = forward_logits(hf16, torch)
    w16 = {k: v for k, v in hf16.state_dict().items()}
    del hf16
    # float32 load: the stored fp16 scales are widened before compressed-tensors decompresses,
    # so each weight is exactly fp32(q - z) * fp32(scale).
    hf32 = load(torch.float32)
    weights = {k: v.float() for k, v in hf32.state_dict().items() if k.endswith(".weight")}
    stored = stored_tensors(folder)
    for k, v in stored.items():  # non-quantized tensors straight from the file
        if k in weights and v.is_floating_point():
            weights[k] = v.float()
    for k, v in weights.items():
        if k in w16 and float((w16[k].float() - v).abs().max()) > 1e-2 * max(float(v.abs().max()), 1e-6):
            raise RuntimeError(f"fp16/fp32 decompression disagree on {k}")
    ref_model = plain_llama_fp32(folder, weights, torch)
    rec = write_reference(name, folder, ref_model, cross, weights[DEQUANT_MODULE + ".weight"], torch, work)
    if extra.get("sparsity") == "2:4":  # every run of 4 inputs of every targeted linear has >= 2 zeros
        lin = [k for k in weights if ".layers." in k and k.endswith("_proj.weight")]
        rec["verified_2of4"] = all(
            bool(((weights[k].reshape(weights[k].shape[0], -1, 4) == 0).sum(-1) >= 2).all()) for k in lin
        )
    rec["reference"] = (
        f"transformers {transformers.__version__} loaded the saved checkpoint on CPU with "
        f"CompressedTensorsConfig(dequantize / run_compressed=False), i.e. compressed-tensors "
        f"{compressed_tensors.__version__} decompressed every module with its own compressor; loaded with "
        "dtype=float32 so the stored fp16 scales are widened before dequantization (weights exactly "
        "fp32(q - z) * fp32(scale)); those weights plus the stored fp16 tensors widened to float32 ran in a "
        "float32 transformers LlamaForCausalLM. crosscheck = the same load with dtype=float16."
    )
    with open(os.path.join(folder, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    rec.update(extra)
    groups = qc.get("config_groups") or {}
    if groups:  # bits / group size / symmetry as the tool recorded them
        (grp,) = groups.values()
        w = grp["weights"]
        rec.update(bits=w["num_bits"], group_size=w["group_size"] if w["strategy"] == "group" else -1,
                   sym=w["symmetric"], weight_strategy=w["strategy"], actorder=w.get("actorder"))
    rec["quantized_modules"] = sorted(k[: -len(".weight_packed")] for k in stored if k.endswith(".weight_packed"))
    rec["checkpoint_format"] = qc.get("format")
    rec["sparsity_format"] = (qc.get("sparsity_config") or {}).get("format")
    return rec


def llmc_calib_dataset():
    from datasets import Dataset

    ids = calib_ids()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


def run_oneshot(name, recipe, work, torch, save_kwargs=None):
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    base = os.path.join(work, "base")
    out = os.path.join(work, "out", name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
    t0 = time.time()
    # the base folder's tokenizer files are written by transformers 5; older transformers cannot
    # read them back, so hand llm-compressor the same tokenizer built in-process
    oneshot(model=model, tokenizer=make_tokenizer(), dataset=llmc_calib_dataset(), recipe=recipe,
            num_calibration_samples=N_CALIB,
            max_seq_length=CALIB_LEN, shuffle_calibration_samples=False, pipeline="sequential")
    model.save_pretrained(out, save_compressed=True, **(save_kwargs or {}))
    return out, time.time() - t0


def stage_llmcompressor(work, only, sparse):
    torch = set_cpu_env()
    import compressed_tensors
    import llmcompressor
    from llmcompressor.modifiers.quantization import GPTQModifier

    os.chdir(work)
    names = LLMC_SPARSE_VARIANTS if sparse else LLMC_VARIANTS
    for name in names:
        if only and name not in only:
            continue
        meta = dict(sparsity=None, desc_act=False)
        save_kwargs = None
        if name == "ct_w4a16_g128_sym":
            recipe = [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
        elif name == "ct_w4a16_g32_asym":
            from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

            scheme = QuantizationScheme(
                targets=["Linear"],
                weights=QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32,
                                         actorder="weight"),
            )
            recipe = [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
        elif name == "ct_w8a16_g128_sym":
            recipe = [GPTQModifier(targets="Linear", scheme="W8A16", ignore=["lm_head"])]
        elif name in ("ct_sparse24", "ct_sparse24_w4a16"):
            from llmcompressor.modifiers.obcq import SparseGPTModifier

            recipe = [SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"])]
            meta.update(sparsity="2:4", bits=16, group_size=None, sym=None)
            if name == "ct_sparse24_w4a16":
                recipe.append(GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]))
                # llm-compressor's default for 2:4 + W4A16 is "marlin-24": a GPU tile layout that
                # compressed-tensors cannot decompress (NotImplementedError), transformers cannot
                # load on CPU and vLLM has dropped. Ask for the standard packed format instead;
                # the 2:4 structure is then recorded as sparsity_config {format: dense, 2:4}.
                save_kwargs = {"quantization_format": "pack-quantized"}
        else:
            raise ValueError(name)
        out, seconds = run_oneshot(name, recipe, work, torch, save_kwargs)
        folder, kept, dropped = copy_checkpoint(out, name)
        meta.update(tool="llmcompressor", tool_version=llmcompressor.__version__,
                    compressed_tensors_version=compressed_tensors.__version__, format="compressed-tensors",
                    quantization_seconds=round(seconds, 2), dropped_files=dropped)
        rec = ct_reference(name, folder, work, torch, meta)
        finish_record(name, folder, rec, work)


# ----------------------------------------------------------------------------- stage: manifest
def stage_manifest(work):
    parts = sorted(glob.glob(os.path.join(work, "manifest_parts", "*.json")))
    fixtures = []
    for p in parts:
        with open(p) as f:
            fixtures.append(json.load(f))
    order = (list(GPTQMODEL_VARIANTS) + list(AUTOAWQ_VARIANTS) + list(GPTQMODEL_EXTRAS) + LLMC_VARIANTS
             + LLMC_SPARSE_VARIANTS)
    fixtures.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else 999)
    manifest = {
        "description": "Quantized checkpoints of one tiny random Llama made by third-party tools; see README.md",
        "generator": "tests/quant/make_tool_fixtures.py",
        "model": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 256,
                  "tie_word_embeddings": False, "dtype": "float16", "seed": MODEL_SEED},
        "calibration": {"kind": "uniform random token ids", "seed": CALIB_SEED, "samples": N_CALIB,
                        "seq_len": CALIB_LEN},
        "input_ids": INPUT_IDS,
        "logits_layout": "little-endian float32, [seq_len, vocab] row-major, one file per input sequence",
        "dequant_layout": "little-endian float32, [out_features, in_features] row-major",
        "fixtures": fixtures,
    }
    with open(os.path.join(FIXTURES, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(r["total_bytes"] for r in fixtures)
    print(f"manifest: {len(fixtures)} fixtures, {total} bytes")


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["all", "base", "gptqmodel", "autoawq", "crosscheck", "llmcompressor",
                                      "llmcompressor-sparse", "manifest"])
    ap.add_argument("--work", default=DEFAULT_WORK)
    ap.add_argument("--only", nargs="*", default=None, help="fixture names to (re)make")
    ap.add_argument("--extras", action="store_true", help="also make the GPTQModel AWQ export")
    ap.add_argument("--base-python", default=sys.executable)
    ap.add_argument("--gptqmodel-python", default="/work/venvs/quant/bin/python")
    ap.add_argument("--autoawq-python", default="/work/venvs/awq/bin/python")
    ap.add_argument("--llmc-python", default="/work/venvs/llmc/bin/python")
    ap.add_argument("--llmc-sparse-python", default="/work/venvs/llmc010/bin/python")
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    os.makedirs(FIXTURES, exist_ok=True)
    if args.stage == "all":
        me = os.path.abspath(__file__)
        if not args.only:  # start clean so no stale fixture or manifest record survives
            shutil.rmtree(os.path.join(work, "manifest_parts"), ignore_errors=True)
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            for d in os.listdir(FIXTURES):
                if os.path.isdir(os.path.join(FIXTURES, d)):
                    shutil.rmtree(os.path.join(FIXTURES, d))
        for stage, py in [("base", args.base_python), ("gptqmodel", args.gptqmodel_python),
                          ("autoawq", args.autoawq_python), ("crosscheck", args.gptqmodel_python),
                          ("llmcompressor", args.llmc_python), ("llmcompressor-sparse", args.llmc_sparse_python),
                          ("manifest", args.base_python)]:
            print(f"=== {stage} ({py})", flush=True)
            cmd = [py, me, stage, "--work", work] + (["--only", *args.only] if args.only else [])
            if args.extras and stage == "gptqmodel":
                cmd.append("--extras")
            subprocess.run(cmd, check=True)
    elif args.stage == "base":
        stage_base(work)
    elif args.stage == "gptqmodel":
        stage_gptqmodel(work, args.only, args.extras)
    elif args.stage == "autoawq":
        stage_autoawq(work, args.only)
    elif args.stage == "crosscheck":
        stage_crosscheck(work)
    elif args.stage == "llmcompressor":
        stage_llmcompressor(work, args.only, sparse=False)
    elif args.stage == "llmcompressor-sparse":
        stage_llmcompressor(work, args.only, sparse=True)
    elif args.stage == "manifest":
        stage_manifest(work)


if __name__ == "__main__":
    main()
