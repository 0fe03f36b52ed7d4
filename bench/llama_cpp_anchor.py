#!/usr/bin/env python3
"""nibble against llama.cpp on the same GGUF files (issue 19): perplexity and
KL-divergence under llama-perplexity's protocol, and llama-bench's pp512/tg128
against nibble's prefill/decode speed. Prints a Markdown report (the tables of
docs/perf/2026-12-07-llama-cpp-anchor.md) and optionally writes JSON.

  bench/llama_cpp_anchor.py --nibble build/cli/nibble --llama-bin "$(scripts/get-llama-cpp)" \
      --models "$(scripts/make-kquant-models)" --text /tmp/corpus/eval.txt --chunks 16 --threads 2

Quality: for the F16 base, `llama-perplexity --kl-divergence-base` (its PPL, and
the base log-probs it saves) and `nibble eval --protocol chunks`; then per type
`llama-perplexity --kl-divergence` against that file and `nibble eval --protocol
chunks --base F16`, one after the other, so both see the same machine load.
With --exact: llama-perplexity also on each type's weights dequantized to F32
(llama-quantize --allow-requantize ... F32), where llama.cpp multiplies float
activations as nibble does; on the quantized file itself its CPU kernels round
activations to 8 bits (Q8_0/Q8_K) first, which moves PPL by most of a percent.
Speed: rounds of llama-bench (-r 1; as shipped and with OMP_WAIT_POLICY=passive)
and nibble generate alternate, medians kept. Both warm up first, on the
same work (llama-bench does by default; nibble generate --warmup): on this VM memory
left untouched for a second reads several times slower, so a cold first pass would
measure the host, not the kernels.
Both tools get the same --threads. Timings belong here and in docs, never in tests.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

NAME = "SmolLM2-135M-Instruct"
TYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "IQ4_XS", "TQ2_0"]


def run(cmd, **kw):
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout + proc.stderr, time.time() - start


def number(pattern, text):
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"no match for {pattern!r} in:\n{text[-2000:]}")
    return float(m.group(1))


def llama_ppl(args, model, extra):
    cmd = [f"{args.llama_bin}/llama-perplexity", "-m", model, "-f", args.text, "-c", str(args.ctx), "-b",
           str(args.ctx), "-t", str(args.threads), "--chunks", str(args.chunks)] + extra
    return run(cmd)


def nibble_eval(args, model, base=None, flags=("--float-activations",)):
    cmd = [args.nibble, "eval", "--model", model, "--text", args.text, "--protocol", "chunks", "--window",
           str(args.ctx), "--chunks", str(args.chunks), "--threads", str(args.threads), "--json", *flags]
    if base:
        cmd += ["--base", base]
    out, seconds = run(cmd)
    return json.loads(out[out.index("{"):out.rindex("}") + 1]), seconds


def quality(args, work):
    path = lambda t: os.path.join(args.models, f"{NAME}.{t}.gguf")
    kld_file = os.path.join(work, "f16.kld")
    rows = []
    load = [os.getloadavg()[0]]
    out, llama_s = llama_ppl(args, path("F16"), ["--kl-divergence-base", kld_file])
    l_ppl = number(r"Final estimate: PPL = ([0-9.]+)", out)
    l_unc = number(r"Final estimate: PPL = [0-9.]+ \+/- ([0-9.]+)", out)
    n, nibble_s = nibble_eval(args, path("F16"))
    rows.append({"type": "F16", "llama_ppl": l_ppl, "llama_ppl_unc": l_unc, "nibble_ppl": n["perplexity"],
                 "nibble_ppl_unc": n["perplexity_uncertainty"], "tokens_scored": n["tokens_scored"],
                 "llama_s": llama_s, "nibble_s": nibble_s})
    print(f"F16: llama {l_ppl:.4f} nibble {n['perplexity']:.4f}", file=sys.stderr)
    for t in args.types:
        load.append(os.getloadavg()[0])
        out, llama_s = llama_ppl(args, path(t), ["--kl-divergence-base", kld_file, "--kl-divergence"])
        row = {"type": t,
               "llama_ppl": number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out),
               "llama_ppl_unc": number(r"Mean PPL\(Q\)\s*:\s*[0-9.]+ ± +([0-9.]+)", out),
               "llama_kld": number(r"Mean    KLD:\s*([-0-9.]+)", out),
               "llama_kld_p99": number(r"99\.0%   KLD:\s*([-0-9.]+)", out),
               "llama_top1": number(r"Same top p:\s*([0-9.]+)", out) / 100,
               "llama_s": llama_s}
        try:
            n, nibble_s = nibble_eval(args, path(t), path("F16"))
            row.update({"nibble_ppl": n["perplexity"], "nibble_ppl_unc": n["perplexity_uncertainty"],
                        "nibble_kld": n["mean_kl"], "nibble_kld_p99": n["kl_percentiles"]["99"],
                        "nibble_top1": n["top1_agreement"], "tokens_scored": n["tokens_scored"],
                        "nibble_s": nibble_s})
            # nibble's defaults: int8 activations where the CPU has VNNI (as llama.cpp rounds them).
            d, _ = nibble_eval(args, path(t), path("F16"), flags=())
            row.update({"nibble_int8_ppl": d["perplexity"], "nibble_int8_kld": d["mean_kl"],
                        "nibble_int8_kld_p99": d["kl_percentiles"]["99"], "nibble_int8_top1": d["top1_agreement"]})
        except SystemExit as e:  # a type nibble cannot load is a finding, not a crash of the report
            row["nibble_error"] = str(e)[:300]
        rows.append(row)
        print(f"{t}: {row}", file=sys.stderr)
    load.append(os.getloadavg()[0])
    return rows, load


def exact(args, work):
    rows = []
    for t in args.types:
        f32 = os.path.join(work, f"{t}-as-F32.gguf")
        run([f"{args.llama_bin}/llama-quantize", "--allow-requantize",
             os.path.join(args.models, f"{NAME}.{t}.gguf"), f32, "F32", str(args.threads)])
        out, _ = llama_ppl(args, f32, [])
        rows.append({"type": t, "llama_f32_ppl": number(r"Final estimate: PPL = ([0-9.]+)", out)})
        os.remove(f32)
        print(f"{t} as F32: {rows[-1]}", file=sys.stderr)
    return rows


def nibble_json(cmd):
    out, _ = run(cmd)
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def speed_of(args, model):
    """Interleaved rounds on one file: llama-bench (as shipped and passive) and nibble
    generate with its default flags and with --float-activations."""
    # 512 prompt ids from the evaluation text's vocabulary range: any ids do for speed.
    prompt = ",".join(str(100 + (i * 37) % 40000) for i in range(512))
    variants = {"nibble": [], "nibble_float": ["--float-activations"]}
    samples = {f"{who}_{test}": [] for who in ("llama", "llama_passive", *variants) for test in ("pp512", "tg128")}
    load = []
    for _ in range(args.rounds):
        load.append(os.getloadavg()[0])
        # llama.cpp's OpenMP threads spin while they wait; on a machine with more
        # runnable threads than cores that costs it most of its decode speed, so it
        # runs twice: as shipped, and with OMP_WAIT_POLICY=passive (sleeping waits).
        for who, policy in (("llama", None), ("llama_passive", "passive")):
            env = dict(os.environ, **({"OMP_WAIT_POLICY": policy} if policy else {}))
            out, _ = run([f"{args.llama_bin}/llama-bench", "-m", model, "-t", str(args.threads), "-p", "512", "-n",
                          "128", "-r", "1", "-o", "json"], env=env)
            for entry in json.loads(out[out.index("["):out.rindex("]") + 1]):
                samples[f"{who}_{'pp512' if entry['n_prompt'] == 512 else 'tg128'}"].append(entry["avg_ts"])
        for who, flags in variants.items():
            samples[f"{who}_pp512"].append(nibble_json(
                [args.nibble, "generate", "-m", model, "--prompt-ids", prompt, "--prefill-chunk", "512", "-n", "1",
                 "-t", str(args.threads), "--json", "--warmup", *flags])["prefill_tokens_per_second"])
            samples[f"{who}_tg128"].append(nibble_json(
                [args.nibble, "generate", "-m", model, "--prompt-ids", "1", "-n", "129", "--ignore-eos",
                 "-t", str(args.threads), "--json", "--warmup", *flags])["decode_tokens_per_second"])
    load.append(os.getloadavg()[0])
    return {k: statistics.median(v) for k, v in samples.items()}, samples, load


def copy_gbps(threads, megabytes=512):
    """Bytes read plus written per second by `threads` threads copying cold arrays
    (numpy releases the GIL while it copies): the bandwidth decode's weight reads
    are compared with, measured in the same run."""
    import threading
    import numpy as np
    n = megabytes << 20
    src, dst = np.ones(n, dtype=np.uint8), np.zeros(n, dtype=np.uint8)
    part = n // threads
    best = 0.0
    for _ in range(5):
        workers = [threading.Thread(target=np.copyto, args=(dst[i * part:(i + 1) * part], src[i * part:(i + 1) * part]))
                   for i in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * n / (time.perf_counter() - start) / 1e9)
    return best


def speed(args):
    files = args.bench_files or [os.path.join(args.models, f"{NAME}.{args.bench_type}.gguf")]
    out = {}
    for f in files:
        median, samples, load = speed_of(args, f)
        out[os.path.basename(f)] = {"median": median, "samples": samples, "load": load,
                                    "file_bytes": os.path.getsize(os.path.realpath(f)), "copy_gbps": copy_gbps(args.threads)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--models", required=True, help="folder of scripts/make-kquant-models")
    p.add_argument("--text", required=True)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", nargs="*", default=TYPES)
    p.add_argument("--bench-type", default="Q4_K_M")
    p.add_argument("--bench-files", nargs="*", help="GGUF files to time (default: the --bench-type file of --models)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--exact", action="store_true", help="also llama-perplexity on each type dequantized to F32")
    p.add_argument("--json")
    args = p.parse_args()

    report = {"threads": args.threads, "chunks": args.chunks, "ctx": args.ctx, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_quality:
            report["quality"], report["quality_load"] = quality(args, work)
        if args.exact:
            report["exact"] = exact(args, work)
    if not args.skip_speed:
        report["speed"] = speed(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)

    if "quality" in report:
        print(f"Perplexity, llama-perplexity protocol: n_ctx {args.ctx}, {args.chunks} chunks, "
              f"{report['quality'][0]['tokens_scored']} tokens scored, {args.threads} threads; "
              f"load average {', '.join(f'{x:.1f}' for x in report['quality_load'])}\n")
        print("| file | llama.cpp PPL | nibble PPL | gap | llama.cpp KLD | nibble KLD | KLD p99 llama / nibble "
              "| top-1 llama / nibble |")
        print("|---|---|---|---|---|---|---|---|")
        for r in report["quality"]:
            if "nibble_error" in r:
                print(f"| {r['type']} | {r['llama_ppl']:.4f} ± {r['llama_ppl_unc']:.4f} | does not run: "
                      f"{r['nibble_error']} | | {r.get('llama_kld', 0):.5f} | | | |")
                continue
            gap = 100 * (r["nibble_ppl"] / r["llama_ppl"] - 1)
            line = (f"| {r['type']} | {r['llama_ppl']:.4f} ± {r['llama_ppl_unc']:.4f} | "
                    f"{r['nibble_ppl']:.4f} ± {r['nibble_ppl_unc']:.4f} | {gap:+.3f} % |")
            if "llama_kld" in r:
                line += (f" {r['llama_kld']:.5f} | {r['nibble_kld']:.5f} | {r['llama_kld_p99']:.4f} / "
                         f"{r['nibble_kld_p99']:.4f} | {100 * r['llama_top1']:.2f} / {100 * r['nibble_top1']:.2f} % |")
            else:
                line += " (base) | | | |"
            print(line)
        print("\nnibble with its defaults (int8 activations on VNNI) against llama.cpp on the quantized file "
              "(both round activations)\n")
        print("| file | llama.cpp PPL | nibble PPL | llama.cpp KLD | nibble KLD | KLD p99 llama / nibble "
              "| top-1 llama / nibble |")
        print("|---|---|---|---|---|---|---|")
        for r in report["quality"]:
            if "nibble_int8_ppl" in r:
                print(f"| {r['type']} | {r['llama_ppl']:.4f} | {r['nibble_int8_ppl']:.4f} | {r['llama_kld']:.5f} | "
                      f"{r['nibble_int8_kld']:.5f} | {r['llama_kld_p99']:.4f} / {r['nibble_int8_kld_p99']:.4f} | "
                      f"{100 * r['llama_top1']:.2f} / {100 * r['nibble_int8_top1']:.2f} % |")
    if "exact" in report:
        print("\nllama-perplexity on each type's weights dequantized to F32 (float activations)\n")
        print("| type | llama.cpp, F32 copy |")
        print("|---|---|")
        for r in report["exact"]:
            print(f"| {r['type']} | {r['llama_f32_ppl']:.4f} |")
    if "speed" in report:
        for name, r in report["speed"].items():
            s = r["median"]
            print(f"\nSpeed, {name}, {args.threads} threads, median of {args.rounds} interleaved rounds; "
                  f"load average {', '.join(f'{x:.1f}' for x in r['load'])}\n")
            print("| test | llama-bench tok/s | llama-bench, OMP_WAIT_POLICY=passive | nibble (defaults) "
                  "| nibble --float-activations | nibble / llama.cpp (as shipped, passive) |")
            print("|---|---|---|---|---|---|")
            for test in ("pp512", "tg128"):
                lv, pv, nv, fv = (s[f"{w}_{test}"] for w in ("llama", "llama_passive", "nibble", "nibble_float"))
                print(f"| {test} | {lv:.1f} | {pv:.1f} | {nv:.1f} | {fv:.1f} | {nv / lv:.2f}, {nv / pv:.2f} |")
            # Decode reads every weight once per token (the file's bytes, near enough).
            traffic = s["nibble_tg128"] * r["file_bytes"] / 1e9
            print(f"\nnibble decode weight traffic {traffic:.2f} GB/s (read) against a {args.threads}-thread copy "
                  f"of {r['copy_gbps']:.2f} GB/s (read + written) in the same run: {traffic / r['copy_gbps']:.2f}x")


if __name__ == "__main__":
    main()
