#!/usr/bin/env python3
"""The compressor's quality, end to end through the CLI, on the real stories260K model.

`nibble convert` turns the llama2.c checkpoint into a float32 Hugging Face folder; `nibble
quantize` / `nibble prune` compress it with calibration text (Python docstrings) and `nibble eval`
measures perplexity and KL divergence against the float model on disjoint text (Debian's licence
texts). The assertions are the orderings the methods promise, not exact numbers:
  - the scale search beats min-max scaling (RTN 4-bit g32, `--scales search` vs `minmax`);
  - quantizing the embedding to 8 bits (the default) costs under 3 % of RTN's KL;
  - GPTQ beats round-to-nearest at equal bits and group size (4-bit g32, 3-bit g32);
  - SparseGPT beats magnitude pruning at 2:4 (and Wanda is no worse than magnitude there);
  - every compressed model is worse than the float model (KL > 0), and none is absurd (finite,
    perplexity not far below the float model's).
stories260K's widths (64, 172) are not multiples of the GPTQ layout's 32-bit words for every bit
width, so its checkpoints use the compressed-tensors layout (packed per row).

Usage: quality_test.py --nibble BIN --shared DIR --corpus DIR --work DIR
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out


def compress_and_evaluate(nibble, base, corpus, work, variants, window=256, stride=128, max_tokens=8192):
    """Runs each variant's `nibble quantize|prune` on `base`, then `nibble eval` against it.

    Returns {name: eval report + "compress": the compressor's report}; also used by
    bench/quant_quality.py for the quality table."""
    results = {}
    for name, cmd in variants.items():
        folder = os.path.join(work, name.replace(":", "of"))
        report = json.loads(run([nibble] + cmd + ["--model", base, "--out", folder, "--json"]))
        evaluation = json.loads(run([nibble, "eval", "--model", folder, "--base", base, "--text",
                                     os.path.join(corpus, "eval.txt"), "--window", str(window), "--stride",
                                     str(stride), "--max-tokens", str(max_tokens), "--json"]))
        evaluation["compress"] = report
        results[name] = evaluation
        print(f"{name:26s} ppl {evaluation['perplexity']:9.3f} (base {evaluation['base_perplexity']:.3f})  "
              f"KL mean {evaluation['mean_kl']:.4f} p99 {evaluation['p99_kl']:.4f}  "
              f"top-1 {evaluation['top1_agreement'] * 100:5.1f}%  "
              f"{report['seconds']:.1f} s, peak {report['peak_rss_bytes'] >> 20} MiB", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--nibble", "--shared", "--corpus", "--work"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    stories = os.path.join(args.shared, "models", "stories260K")
    base = os.path.join(args.work, "stories260K-f32")
    run([args.nibble, "convert", "--from", "llama2c", os.path.join(stories, "stories260K.bin"),
         "--tokenizer", os.path.join(stories, "tok512.bin"), "-o", base])
    calib = ["--calib", os.path.join(args.corpus, "calib.txt"), "--calib-samples", "64", "--seq-len", "256"]
    quant = ["--format", "compressed-tensors"]
    variants = {
        "rtn-4bit-g32": ["quantize", "--method", "rtn", "--bits", "4", "--group-size", "32"] + quant,
        "rtn-4bit-g32-minmax": ["quantize", "--method", "rtn", "--bits", "4", "--group-size", "32", "--scales",
                                "minmax"] + quant,
        "rtn-4bit-g32-keep-embeddings": ["quantize", "--method", "rtn", "--bits", "4", "--group-size", "32",
                                         "--keep-embeddings"] + quant,
        "gptq-4bit-g32": ["quantize", "--method", "gptq", "--bits", "4", "--group-size", "32"] + quant + calib,
        "gptq-4bit-g32-actorder": ["quantize", "--method", "gptq", "--bits", "4", "--group-size", "32",
                                   "--act-order"] + quant + calib,
        "rtn-3bit-g32": ["quantize", "--method", "rtn", "--bits", "3", "--group-size", "32"] + quant,
        "gptq-3bit-g32": ["quantize", "--method", "gptq", "--bits", "3", "--group-size", "32"] + quant + calib,
        "magnitude-2:4": ["prune", "--method", "magnitude", "--sparsity", "2:4"],
        "wanda-2:4": ["prune", "--method", "wanda", "--sparsity", "2:4"] + calib,
        "sparsegpt-2:4": ["prune", "--method", "sparsegpt", "--sparsity", "2:4"] + calib,
        "sparsegpt-2:4+gptq-4bit": ["prune", "--method", "sparsegpt", "--sparsity", "2:4", "--then-quantize",
                                    "gptq", "--bits", "4", "--group-size", "32"] + calib,
    }
    results = compress_and_evaluate(args.nibble, base, args.corpus, args.work, variants)

    # Every folder written is also re-derived by the independent numpy validator.
    folders = [os.path.join(args.work, name.replace(":", "of")) for name in variants]
    subprocess.run([sys.executable, os.path.join(HERE, "check_written_checkpoint.py")] + folders, check=True)

    failures = []

    def expect(condition, message):
        if not condition:
            failures.append(message)

    for name, r in results.items():
        expect(math.isfinite(r["perplexity"]) and r["mean_kl"] > 0, f"{name}: perplexity/KL not sane: {r}")
        # KL > 0 is what "worse than the float model" means. Perplexity on this
        # out-of-domain text may come out a little below the base's for a close model
        # (GPTQ 4-bit act-order with the scale search: 117.9 vs 121.5), never far below.
        expect(r["perplexity"] > r["base_perplexity"] * 0.9, f"{name}: far better than the float model? {r}")

    def better(a, b, metric="mean_kl"):
        expect(results[a][metric] < results[b][metric],
               f"{a} should beat {b} on {metric}: {results[a][metric]:.5f} vs {results[b][metric]:.5f}")

    for metric in ("mean_kl", "perplexity"):
        better("rtn-4bit-g32", "rtn-4bit-g32-minmax", metric)
        better("gptq-4bit-g32", "rtn-4bit-g32", metric)
        better("gptq-3bit-g32", "rtn-3bit-g32", metric)
        better("sparsegpt-2:4", "magnitude-2:4", metric)
    # The 8-bit embedding (the default) costs next to nothing: measured 0.1980 vs 0.1978.
    expect(results["rtn-4bit-g32"]["mean_kl"] <= results["rtn-4bit-g32-keep-embeddings"]["mean_kl"] * 1.03,
           "quantizing the embedding to 8 bits should cost under 3 % of RTN's KL")
    expect(results["wanda-2:4"]["mean_kl"] <= results["magnitude-2:4"]["mean_kl"] * 1.05,
           "Wanda should be no worse than magnitude at 2:4")
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        return 1
    print("quality: all orderings hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
