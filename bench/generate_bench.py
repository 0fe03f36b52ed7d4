#!/usr/bin/env python3
"""Throughput of `nibble generate` on one model: prompt N tokens, generate M tokens.

Each configuration runs --repeat times; the median is reported. As its baseline the
same run measures the portable scalar kernels (NIBBLE_CPU_ISA=scalar), and the
report gives the SIMD build's speed as a ratio of that baseline, so numbers from
different machines can be compared by ratio.

    bench/generate_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompt-tokens 128 --generate 128 --threads 2 --out bench-result.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "Compressed language models trade a little accuracy for a lot of memory. Quantizing weights to four bits "
    "and pruning half of them lets a model that needed a data-center GPU run on a laptop, and a server that "
    "batches many requests can keep every core busy while it streams tokens back to its clients. "
) * 20


def run(binary, model, prompt_ids, generate, threads, isa):
    env = dict(os.environ)
    if isa:
        env["NIBBLE_CPU_ISA"] = isa
    args = [binary, "generate", "-m", model, "--prompt-ids", ",".join(map(str, prompt_ids)), "-n", str(generate),
            "--temperature", "0", "--ignore-eos", "--threads", str(threads), "--json"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "cli", "nibble"))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the scalar-kernel baseline")
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args()

    tokenized = subprocess.run([args.binary, "generate", "-m", args.model, "--prompt", TEXT, "-n", "0", "--json"],
                               capture_output=True, text=True, check=True)
    prompt_ids = json.loads(tokenized.stdout)["prompt_ids"][: args.prompt_tokens]
    if len(prompt_ids) < args.prompt_tokens:
        sys.exit(f"the benchmark text gives only {len(prompt_ids)} tokens")

    def measure(isa):
        runs = [run(args.binary, args.model, prompt_ids, args.generate, args.threads, isa) for _ in range(args.repeat)]
        pick = lambda key: statistics.median(r[key] for r in runs)
        return {
            "backend": runs[0]["backend"],
            "load_seconds": pick("load_seconds"),
            "prefill_tokens_per_second": pick("prefill_tokens_per_second"),
            "decode_tokens_per_second": pick("decode_tokens_per_second"),
            "end_to_end_tokens_per_second": statistics.median(
                args.generate / (r["prefill_seconds"] + r["decode_seconds"]) for r in runs),
            "peak_rss_mib": pick("peak_rss_bytes") / 2**20,
        }

    report = {"model": os.path.basename(args.model), "prompt_tokens": args.prompt_tokens,
              "generated_tokens": args.generate, "threads": args.threads, "repeat": args.repeat,
              "best": measure(None)}
    if not args.no_baseline:
        report["baseline_scalar"] = measure("scalar")
        for key in ["prefill_tokens_per_second", "decode_tokens_per_second"]:
            report[f"speedup_{key}"] = report["best"][key] / report["baseline_scalar"][key]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
