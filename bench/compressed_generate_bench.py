#!/usr/bin/env python3
"""`nibble generate` tokens/s on SmolLM2: float32 vs INT4 vs 2:4+INT4, same prompt, same run.

The float32 baseline is the GGUF's own weights expanded to float32 at load
(--expand-quantized), so it runs the engine's dense kernels on exactly the
weights the packed INT4 run uses. Variants whose checkpoint is missing are
reported as missing, never silently dropped. Ratios are against the float32
baseline measured in the same run.

    bench/compressed_generate_bench.py --out bench-compressed.json
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_bench import ROOT, TEXT  # noqa: E402
import subprocess  # noqa: E402

MODELS = os.path.join(ROOT, "models")
VARIANTS = [
    ("f32 (Q4_1 expanded)", os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"), ["--expand-quantized"]),
    ("int4 GGUF Q4_1 packed", os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"), []),
    ("int4 GPTQ g128", os.path.join(MODELS, "smollm2-135m-gptq-g128"), []),
    ("2:4 + int4 (compressed-tensors)", os.path.join(MODELS, "smollm2-135m-2of4-w4a16"), []),
]


def run(binary, model, extra, prompt_ids, generate, threads):
    args = [binary, "generate", "-m", model, "--prompt-ids", ",".join(map(str, prompt_ids)), "-n", str(generate),
            "--temperature", "0", "--ignore-eos", "--threads", str(threads), "--json", *extra]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "cli", "nibble"))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args()

    tokenized = subprocess.run([args.binary, "generate", "-m", VARIANTS[0][1], "--prompt", TEXT, "-n", "0", "--json"],
                               capture_output=True, text=True, check=True)
    prompt_ids = json.loads(tokenized.stdout)["prompt_ids"][: args.prompt_tokens]

    results = {}
    for label, model, extra in VARIANTS:
        if not os.path.exists(model):
            results[label] = {"missing": model}
            continue
        runs = [run(args.binary, model, extra, prompt_ids, args.generate, args.threads) for _ in range(args.repeat)]
        pick = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        results[label] = {
            "model": os.path.relpath(model, ROOT),
            "prefill_tokens_per_second": pick("prefill_tokens_per_second"),
            "decode_tokens_per_second": pick("decode_tokens_per_second"),
            "weight_mib": runs[0]["weights"]["bytes"] / 2**20,
            "quantized_file_mib": runs[0]["weights"]["quantized_file_bytes"] / 2**20,
            "quantized_resident_mib": runs[0]["weights"]["quantized_resident_bytes"] / 2**20,
            "peak_rss_mib": pick("peak_rss_bytes") / 2**20,
            "load_seconds": pick("load_seconds"),
            "kinds": runs[0]["weights"]["kinds"],
        }
    baseline = results[VARIANTS[0][0]]
    for label, result in results.items():
        if "missing" in result or "missing" in baseline:
            continue
        for key in ["prefill_tokens_per_second", "decode_tokens_per_second"]:
            result[f"x_f32_{key.split('_')[0]}"] = result[key] / baseline[key]
    report = {"prompt_tokens": args.prompt_tokens, "generated_tokens": args.generate, "threads": args.threads,
              "repeat": args.repeat, "variants": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
