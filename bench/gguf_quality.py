#!/usr/bin/env python3
"""nibble's GGUF output against llama-quantize on the same F16 base (issue 23):
file size, KL divergence (mean, p99) and perplexity of each file against the F16
base, by `nibble eval --protocol chunks --base` and by `llama-perplexity
--kl-divergence`, on the same held-out text. Prints a Markdown table (the one in
docs/perf/2026-12-07-gguf-writer.md) and optionally writes JSON.

  bench/gguf_quality.py --nibble build/cli/nibble --llama-bin DIR --models DIR \
      --calib corpus/calib.txt --text corpus/eval.txt --chunks 12 --threads 2

Files: llama-quantize Q4_K_M without and with an importance matrix (llama-imatrix on
the calibration text; needs the llama-imatrix target built), and nibble's
--type Q4_K / Q4_K_M by RTN (no data), RTN with calibration importance, and GPTQ,
all from the same F16 GGUF and the same calibration text.
"""
import argparse
import json
import os
import sys
import tempfile

from bench_run import number, run

NAME = "SmolLM2-135M-Instruct"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--models", required=True, help="scripts/make-kquant-models' folder (the F16 base)")
    p.add_argument("--calib", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--work", default=None, help="keep the files here (default: a temporary folder)")
    p.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or tmp.name
    os.makedirs(work, exist_ok=True)
    base = os.path.join(args.models, f"{NAME}.F16.gguf")
    lb = args.llama_bin
    calib = ["--calib", args.calib, "--calib-samples", str(args.calib_samples), "--seq-len", str(args.seq_len)]

    def llama_quantize(out, imatrix=None):
        if not os.path.exists(out):
            run([f"{lb}/llama-quantize"] + (["--imatrix", imatrix] if imatrix else []) +
                [base, out, "Q4_K_M", str(args.threads)])

    def imatrix_file():
        out = os.path.join(work, "imatrix.gguf")
        if not os.path.exists(out):
            # The same text and amount nibble calibrates on: calib_samples chunks of seq_len tokens.
            run([f"{lb}/llama-imatrix", "-m", base, "-f", args.calib, "-o", out, "-c", str(args.seq_len),
                 "--chunks", str(args.calib_samples), "-t", str(args.threads)])
        return out

    def nibble(out, recipe, method, extra):
        if not os.path.exists(out):
            run([args.nibble, "quantize", "--model", base, "--format", "gguf", "--type", recipe, "--method", method,
                 "-o", out, "--threads", str(args.threads)] + extra)

    variants = [
        ("llama-quantize Q4_K_M", "llama.Q4_K_M.gguf", lambda o: llama_quantize(o)),
        ("llama-quantize Q4_K_M + imatrix", "llama.Q4_K_M.imatrix.gguf", lambda o: llama_quantize(o, imatrix_file())),
        ("nibble Q4_K RTN", "nibble.Q4_K.rtn.gguf", lambda o: nibble(o, "Q4_K", "rtn", [])),
        ("nibble Q4_K RTN + importance", "nibble.Q4_K.rtn-imp.gguf", lambda o: nibble(o, "Q4_K", "rtn", calib)),
        ("nibble Q4_K GPTQ", "nibble.Q4_K.gptq.gguf", lambda o: nibble(o, "Q4_K", "gptq", calib)),
        ("nibble Q4_K_M RTN + importance", "nibble.Q4_K_M.rtn-imp.gguf", lambda o: nibble(o, "Q4_K_M", "rtn", calib)),
        ("nibble Q4_K_M GPTQ", "nibble.Q4_K_M.gptq.gguf", lambda o: nibble(o, "Q4_K_M", "gptq", calib)),
    ]
    ppl_args = ["-f", args.text, "-c", "512", "-b", "512", "-t", str(args.threads), "--chunks", str(args.chunks)]
    kld = os.path.join(work, "base.kld")
    base_out = run([f"{lb}/llama-perplexity", "-m", base, "--kl-divergence-base", kld] + ppl_args)
    rows = [{"label": "F16 base", "bytes": os.path.getsize(base),
             "llama_ppl": number(r"Final estimate: PPL = ([0-9.]+)", base_out)}]
    for label, name, make in variants:
        if args.only and label not in args.only:
            continue
        out = os.path.join(work, name)
        make(out)
        text = run([f"{lb}/llama-perplexity", "-m", out, "--kl-divergence-base", kld, "--kl-divergence"] + ppl_args)
        ev = run([args.nibble, "eval", "--model", out, "--base", base, "--text", args.text, "--protocol", "chunks",
                  "--window", "512", "--chunks", str(args.chunks), "--threads", str(args.threads), "--json"])
        ev = json.loads(ev[ev.index("{"):ev.rindex("}") + 1])
        rows.append({"label": label, "bytes": os.path.getsize(out),
                     "llama_ppl": number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", text),
                     "llama_kl": number(r"Mean    KLD:\s*([-0-9.]+)", text),
                     "llama_kl_p99": number(r"99\.0%\s*KLD:\s*([-0-9.]+)", text),
                     "nibble_ppl": ev["perplexity"], "nibble_kl": ev["mean_kl"], "nibble_kl_p99": ev["p99_kl"],
                     "nibble_top1": ev["top1_agreement"]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    lines = ["| file | size MiB | KL mean (nibble / llama.cpp) | KL p99 (nibble / llama.cpp) | top-1 (nibble) "
             "| ppl (nibble / llama.cpp) |", "|---|---|---|---|---|---|"]
    for r in rows:
        mib = r["bytes"] / 2**20
        if "llama_kl" not in r:
            lines.append(f"| {r['label']} | {mib:.1f} | — | — | — | — / {r['llama_ppl']:.3f} |")
            continue
        lines.append(f"| {r['label']} | {mib:.1f} | {r['nibble_kl']:.4f} / {r['llama_kl']:.4f} | "
                     f"{r['nibble_kl_p99']:.3f} / {r['llama_kl_p99']:.3f} | {r['nibble_top1']:.3f} | "
                     f"{r['nibble_ppl']:.3f} / {r['llama_ppl']:.3f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
