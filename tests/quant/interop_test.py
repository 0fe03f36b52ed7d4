#!/usr/bin/env python3
"""nibble's GPTQ checkpoints in tools nobody here wrote, and nibble's GPTQ against GPTQModel's.

Run by ctest with the Python of scripts/make-gptq-model's venv (torch, transformers, optimum,
GPTQModel). For SmolLM2-135M-Instruct (the fp16 base that script made from the bundled GGUF):

1. `nibble quantize` writes GPTQ checkpoints: 4-bit g128 symmetric (GPTQModel's settings and its
   exact calibration ids, damp 0.05), 4-bit g32 asymmetric with act-order, 3-bit g64.
2. transformers loads each through its GPTQ integration (optimum + GPTQModel, torch kernel), and
   - every quantized linear, dequantized to float32 by GPTQModel's own unpacker, in a float32
     LlamaForCausalLM gives the same logits as nibble serving the folder (relative 1e-3);
   - GPTQModel's own fp16 kernel agrees with nibble on the next token almost everywhere.
3. The perplexity of nibble's g128 checkpoint on held-out text of the calibration's kind (the
   docstrings no calibration run reaches) is within 1% of GPTQModel's checkpoint made from the same
   model and calibration ids, or better. (bench/quant_quality.py measures the cross-domain
   evaluation text, Debian's licence texts, where nibble is about 2% above GPTQModel.)

Usage: interop_test.py --nibble BIN --base DIR --calib-ids FILE --corpus DIR (make_corpus.py's)
                       --gptqmodel-checkpoint DIR --work DIR
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WINDOW = 128


def tool_helpers():
    spec = importlib.util.spec_from_file_location("tool_fixtures", os.path.join(HERE, "make_tool_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def nibble_logits(args, folder):
    prefix = os.path.join(args.work, os.path.basename(folder) + ".nibble")
    run([args.nibble, "eval", "--model", folder, "--text", os.path.join(args.corpus, "eval.txt"), "--window", str(WINDOW),
         "--max-tokens", str(WINDOW), "--json", "--dump-logits", prefix,
         # The weights' own logits: the default int8 activations would add their rounding.
         "--float-activations"])
    ids = json.load(open(prefix + ".ids.json"))
    logits = np.fromfile(prefix + ".logits.f32", dtype=np.float32).reshape(len(ids), -1)
    return ids, logits


def transformers_logits(tools, torch, folder, ids, bits):
    """(GPTQModel's fp16 kernel, float32 model of GPTQModel-dequantized weights) logits for ids."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM
    from transformers import GPTQConfig as HfGPTQConfig

    hf = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float16, device_map="cpu", quantization_config=HfGPTQConfig(bits=bits, backend="gptq_torch")
    ).eval()
    quantized = {}
    for name, module in hf.named_modules():
        if isinstance(module, BaseQuantLinear):
            quantized[name] = tools.gptqmodel_dequant_fp32(module, "gptq", torch)
    if len(quantized) != 7 * hf.config.num_hidden_layers:
        raise AssertionError(f"transformers found {len(quantized)} quantized linears in {folder}")
    with torch.no_grad():
        kernel = hf(torch.tensor([ids])).logits[0].float().numpy()
    del hf
    weights = {k + ".weight": v for k, v in quantized.items()}
    for k, v in tools.stored_tensors(folder).items():
        if k.rsplit(".", 1)[0] not in quantized:
            weights[k] = v.float()
    weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    model = tools.plain_llama_fp32(folder, weights, torch)
    with torch.no_grad():
        dequant = model(torch.tensor([ids])).logits[0].float().numpy()
    return kernel, dequant


def compare(name, ours, dequant, kernel):
    scale = float(np.abs(dequant).max())
    rel = float(np.abs(ours - dequant).max()) / scale
    if not np.isfinite(ours).all():
        raise AssertionError(f"{name}: nibble's logits are not finite")
    top_dequant = float((ours.argmax(-1) == dequant.argmax(-1)).mean())
    top_kernel = float((ours.argmax(-1) == kernel.argmax(-1)).mean())
    kernel_rel = float(np.abs(kernel - dequant).max()) / scale
    print(f"{name}: max |nibble - fp32 reference| / max|logit| = {rel:.2e}; top-1 agreement with it "
          f"{top_dequant:.3f}, with GPTQModel's fp16 kernel {top_kernel:.3f} (kernel vs reference {kernel_rel:.2e})")
    if rel > 1e-3:
        raise AssertionError(f"{name}: nibble's logits differ from the transformers reference by {rel:.2e} relative")
    if top_dequant < 0.99 or top_kernel < 0.9:
        raise AssertionError(f"{name}: next-token agreement too low ({top_dequant:.3f}, {top_kernel:.3f})")


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--nibble", "--base", "--calib-ids", "--corpus", "--gptqmodel-checkpoint", "--work"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--reuse", action="store_true", help="keep checkpoints already in --work (debugging)")
    args = parser.parse_args()
    tools = tool_helpers()
    torch = tools.set_cpu_env()
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, exist_ok=True)

    variants = [  # (name, bits, flags, calibration runs)
        ("g128-sym", 4, ["--group-size", "128", "--sym", "--damp", "0.05"], 64),
        ("g32-asym-actorder", 4, ["--group-size", "32", "--asym", "--act-order"], 16),
        ("3bit-g64", 3, ["--group-size", "64", "--sym"], 16),
    ]
    for name, bits, flags, runs in variants:
        folder = os.path.join(args.work, "smollm2-nibble-" + name)
        if not (args.reuse and os.path.exists(folder)):
            report = run([args.nibble, "quantize", "--model", args.base, "--out", folder, "--method", "gptq",
                          "--bits", str(bits), "--calib", args.calib_ids, "--calib-samples", str(runs),
                          "--seq-len", "256", "--json", "--keep-embeddings", "--format", "gptq"] + flags)
            print(f"{name}: quantized in {report['seconds']:.1f} s, peak {report['peak_rss_bytes'] >> 20} MiB")
        ids, ours = nibble_logits(args, folder)
        kernel, dequant = transformers_logits(tools, torch, folder, ids, bits)
        compare(name, ours, dequant, kernel)

    # The held-out docstrings must start past every calibration token.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    calib_text = open(os.path.join(args.corpus, "calib.txt"), encoding="utf-8").read()
    heldout_text = open(os.path.join(args.corpus, "heldout.txt"), encoding="utf-8").read()
    calib_ids = json.load(open(args.calib_ids))
    before = len(tokenizer(calib_text[: len(calib_text) - len(heldout_text)])["input_ids"])
    if before < sum(len(run_ids) for run_ids in calib_ids):
        raise AssertionError(f"heldout.txt starts after {before} tokens, inside the calibration runs")

    def perplexity(folder, text):
        return run([args.nibble, "eval", "--model", folder, "--text", os.path.join(args.corpus, text), "--window",
                    "512", "--stride", "256", "--max-tokens", "16384", "--json"])["perplexity"]

    ours_folder = os.path.join(args.work, "smollm2-nibble-g128-sym")
    table = {}
    for text in ("heldout.txt",):
        table[text] = (perplexity(args.base, text), perplexity(args.gptqmodel_checkpoint, text),
                       perplexity(ours_folder, text))
        base, theirs, ours = table[text]
        print(f"perplexity on {text}: fp16 base {base:.3f}, GPTQModel 4-bit g128 {theirs:.3f}, "
              f"nibble 4-bit g128 {ours:.3f} ({(ours / theirs - 1) * 100:+.2f}%)")
    base, theirs, ours = table["heldout.txt"]
    if ours > theirs * 1.01:
        raise AssertionError(f"nibble's GPTQ perplexity {ours:.3f} is more than 1% above GPTQModel's {theirs:.3f}")
    print("interop: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
