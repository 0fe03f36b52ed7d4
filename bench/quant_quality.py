#!/usr/bin/env python3
"""The compressor's quality table: perplexity and KL divergence of each method, in one run.

For SmolLM2-135M-Instruct (the fp16 base scripts/make-gptq-model dequantizes from the bundled
GGUF) and stories260K (converted from llama2.c, float32): fp16/fp32, RTN-4bit-g128,
GPTQ-4bit-g128 with and without act-order, GPTQ-3bit-g128, 2:4 magnitude / Wanda / SparseGPT,
2:4 SparseGPT + GPTQ-4bit. Calibration: Python standard-library docstrings; evaluation: Debian's
licence texts (tests/quant/make_corpus.py; disjoint). Also records each compression's wall time
and peak memory (the compressor's own report). Writes a markdown table to stdout (and --out).

Usage: bench/quant_quality.py --nibble build/cli/nibble [--models smollm2,stories] [--out FILE]
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quality_module():
    spec = importlib.util.spec_from_file_location("quality_test", os.path.join(REPO, "tests/quant/quality_test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variants(calib, group, quant_format):
    q = ["--format", quant_format]
    g = ["--group-size", str(group)]
    return {
        "RTN 4-bit": ["quantize", "--method", "rtn", "--bits", "4"] + g + q,
        "GPTQ 4-bit": ["quantize", "--method", "gptq", "--bits", "4"] + g + q + calib,
        "GPTQ 4-bit act-order": ["quantize", "--method", "gptq", "--bits", "4", "--act-order"] + g + q + calib,
        "GPTQ 3-bit": ["quantize", "--method", "gptq", "--bits", "3"] + g + q + calib,
        "2:4 magnitude": ["prune", "--method", "magnitude", "--sparsity", "2:4"],
        "2:4 Wanda": ["prune", "--method", "wanda", "--sparsity", "2:4"] + calib,
        "2:4 SparseGPT": ["prune", "--method", "sparsegpt", "--sparsity", "2:4"] + calib,
        "2:4 SparseGPT + GPTQ 4-bit": ["prune", "--method", "sparsegpt", "--sparsity", "2:4", "--then-quantize",
                                       "gptq", "--bits", "4"] + g + calib,
    }


def table(title, results, base_label):
    any_result = next(iter(results.values()))
    lines = [f"### {title}", "",
             "| method | perplexity | KL mean (nats) | KL p99 | top-1 agree | size (MiB) | compress s | peak MiB |",
             "|---|---|---|---|---|---|---|---|",
             f"| {base_label} | {any_result['base_perplexity']:.3f} | 0 | 0 | 100% | "
             f"{any_result['base']['stored_bytes'] / 2**20:.1f} | – | – |"]
    for name, r in results.items():
        c = r["compress"]
        lines.append(f"| {name} | {r['perplexity']:.3f} | {r['mean_kl']:.4f} | {r['p99_kl']:.4f} | "
                     f"{r['top1_agreement'] * 100:.1f}% | {r['model']['stored_bytes'] / 2**20:.1f} | "
                     f"{c['seconds']:.1f} | {c['peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nibble", required=True)
    parser.add_argument("--models", default="stories,smollm2")
    parser.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    parser.add_argument("--model-cache", default=os.environ.get("NIBBLE_MODEL_CACHE", os.path.join(REPO, "models")))
    parser.add_argument("--work", default=os.path.join(REPO, "models", "quant_work", "quality"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--out")
    args = parser.parse_args()
    quality = quality_module()
    corpus = os.path.join(args.work, "corpus")
    subprocess.run([sys.executable, os.path.join(REPO, "tests/quant/make_corpus.py"), corpus], check=True,
                   stdout=subprocess.DEVNULL)
    calib = ["--calib", os.path.join(corpus, "calib.txt"), "--calib-samples", str(args.samples), "--seq-len",
             str(args.seq_len)]
    sections = []
    for model in args.models.split(","):
        work = os.path.join(args.work, model)
        os.makedirs(work, exist_ok=True)
        if model == "stories":
            base = os.path.join(work, "stories260K-f32")
            if not os.path.exists(os.path.join(base, "config.json")):
                stories = os.path.join(args.shared, "models", "stories260K")
                subprocess.run([args.nibble, "convert", "--from", "llama2c", os.path.join(stories, "stories260K.bin"),
                                "--tokenizer", os.path.join(stories, "tok512.bin"), "-o", base], check=True)
            # Widths 64 and 172: group 32 and the per-row packing of compressed-tensors.
            results = quality.compress_and_evaluate(args.nibble, base, corpus, work,
                                                    variants(calib, 32, "compressed-tensors"), window=256,
                                                    stride=128, max_tokens=args.eval_tokens)
            sections.append(table("stories260K (float32 base, group size 32, compressed-tensors)", results,
                                  "fp32 (base)"))
        elif model == "smollm2":
            base = os.path.join(args.model_cache, "quant_work", "smollm2_base")
            if not os.path.exists(os.path.join(base, "model.safetensors")):
                sys.exit(f"{base} is missing: run scripts/make-gptq-model first")
            results = quality.compress_and_evaluate(args.nibble, base, corpus, work, variants(calib, 128, "gptq"),
                                                    window=512, stride=256, max_tokens=args.eval_tokens)
            sections.append(table("SmolLM2-135M-Instruct (fp16 base from the bundled GGUF, group size 128)",
                                  results, "fp16 (base)"))
        else:
            sys.exit(f"unknown model {model}")
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    manifest = json.load(open(os.path.join(corpus, "manifest.json")))
    header = [f"## Compression quality ({datetime.date.today()})", "",
              f"Command: `bench/quant_quality.py --nibble {args.nibble} --models {args.models}` on "
              f"{platform.machine()} ({os.cpu_count()} cores).",
              f"Calibration: {args.samples} runs x {args.seq_len} tokens of {manifest['calib_source']}; "
              f"evaluation: the first {args.eval_tokens} tokens of Debian's licence texts "
              f"({', '.join(os.path.basename(p) for p in manifest['eval_sources'])}), disjoint from it. "
              "KL is KL(base || compressed) of the next-token distributions; sizes are tensor bytes as stored.", ""]
    text = "\n".join(header + sections) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
