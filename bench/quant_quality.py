#!/usr/bin/env python3
"""The compressor's one quality table (issue 23): for each method x format x bits, file
size, KL divergence from the base (mean, p99), top-1 agreement and perplexity, by
`nibble eval --protocol chunks --base` and, for every file llama.cpp can read (GGUF), by
`llama-perplexity --kl-divergence` on the same text and chunks. One run, all rows.

Models:
  smollm2  SmolLM2-135M-Instruct. Base: its F16 GGUF **dequantized from the shipped Q4_1**
           (scripts/make-kquant-models), and for folder outputs the same weights as a
           Hugging Face folder (scripts/make-gptq-model's quant_work/smollm2_base) whose
           tokenizer.json is the GGUF's vocabulary (nibble convert --tokenizer-only), so
           both bases tokenize the text into the same ids.
  stories  stories260K, a real float32 base (llama2.c, converted by nibble convert). Its
           feed-forward width 172 is not whole 32-weight blocks, so no GGUF rows (nibble's
           writer and llama.cpp's 32-blocks need them); llama.cpp reads no folder.
Calibration: tests/quant/make_corpus.py's calib.txt (Python docstrings); evaluation: its
eval.txt (Debian licence texts, disjoint). llama-quantize's imatrix is made from the same
calibration text and amount (llama-imatrix).

  bench/quant_quality.py --nibble build/cli/nibble --llama-bin DIR --kquant DIR \
      --smollm2 DIR --shared ../shared --work DIR [--models smollm2,stories] [--only LABEL...]

Results go to WORK/results.json as each row finishes (rerunning skips finished rows,
--render prints the table from it) and the Markdown table to stdout.
"""
import argparse
import json
import os
import shutil
import sys
import time

from bench_run import number, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOL = "SmolLM2-135M-Instruct"


def json_of(text):
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def stored_bytes(path):
    """A GGUF file's size, or a folder's .safetensors bytes (what the weights take)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def smollm2_rows(args, work, calib):
    base_gguf = os.path.join(args.kquant, f"{SMOL}.F16.gguf")
    base_folder = os.path.join(work, "base")
    if not os.path.exists(os.path.join(base_folder, "tokenizer.json")):
        os.makedirs(base_folder)
        for f in os.listdir(args.smollm2):
            if f not in ("tokenizer.json", "tokenizer_config.json"):
                os.symlink(os.path.join(os.path.abspath(args.smollm2), f), os.path.join(base_folder, f))
        tok = os.path.join(work, "tokenizer")
        run([args.nibble, "convert", "--from", "gguf", base_gguf, "--tokenizer-only", "-o", tok])
        for f in os.listdir(tok):
            shutil.copy(os.path.join(tok, f), base_folder)
    lb = args.llama_bin
    t = str(args.threads)

    def imatrix():
        out = os.path.join(work, "imatrix.gguf")
        if not os.path.exists(out):
            run([f"{lb}/llama-imatrix", "-m", base_gguf, "-f", args.calib_text, "-o", out, "-c", str(args.seq_len),
                 "--chunks", str(args.samples), "-t", t])
        return out

    def llama(ftype, with_imatrix=False):
        return lambda out: run([f"{lb}/llama-quantize"] + (["--imatrix", imatrix()] if with_imatrix else []) +
                               [base_gguf, out, ftype, t])

    def nibble_folder(flags):
        return lambda out: run([args.nibble, "quantize", "--model", base_folder, "--out", out, "--threads", t,
                                "--json"] + flags)

    def nibble_gguf(flags):
        return lambda out: run([args.nibble, "quantize", "--model", base_gguf, "--format", "gguf", "-o", out,
                                "--threads", t, "--json"] + flags)

    g32 = ["--bits", "4", "--group-size", "32"]
    # Cheap rows first, so a cut-short run still has them. 5.53 bits per weight over the
    # layers' linear modules is llama.cpp's Q4_K_M mix on this model (5.534): the same bytes.
    rows = [  # (label, method, format, file name, maker)
        ("llama-quantize Q4_0", "RTN (absmax)", "GGUF Q4_0", "llama.Q4_0.gguf", llama("Q4_0")),
        ("nibble RTN 4-bit g32", "RTN", "compressed-tensors", "rtn-g32", nibble_folder(["--method", "rtn"] + g32)),
        ("nibble RTN 4-bit g32 --asym", "RTN", "compressed-tensors", "rtn-g32-asym",
         nibble_folder(["--method", "rtn", "--asym"] + g32)),
        ("nibble RTN 4-bit g32 --calib", "RTN + importance", "compressed-tensors", "rtn-g32-calib",
         nibble_folder(["--method", "rtn"] + g32 + calib)),
        ("nibble Q4_0 RTN", "RTN", "GGUF Q4_0", "nibble.Q4_0.rtn.gguf",
         nibble_gguf(["--type", "Q4_0", "--method", "rtn"])),
        ("llama-quantize Q4_K_M", "RTN (K-quant search)", "GGUF Q4_K_M", "llama.Q4_K_M.gguf", llama("Q4_K_M")),
        ("llama-quantize Q4_K_M + imatrix", "RTN + imatrix", "GGUF Q4_K_M", "llama.Q4_K_M.imatrix.gguf",
         llama("Q4_K_M", True)),
        ("nibble Q4_K_M RTN + importance", "RTN + importance", "GGUF Q4_K_M", "nibble.Q4_K_M.rtn-imp.gguf",
         nibble_gguf(["--type", "Q4_K_M", "--method", "rtn"] + calib)),
        ("nibble --target-bpw 5.53 RTN + importance", "RTN + importance", "GGUF mix", "nibble.bpw5.53.rtn-imp.gguf",
         nibble_gguf(["--target-bpw", "5.53", "--method", "rtn"] + calib)),
        ("nibble GPTQ 4-bit g32", "GPTQ", "compressed-tensors", "gptq-g32",
         nibble_folder(["--method", "gptq"] + g32 + calib)),
        ("nibble Q4_K_M GPTQ", "GPTQ", "GGUF Q4_K_M", "nibble.Q4_K_M.gptq.gguf",
         nibble_gguf(["--type", "Q4_K_M", "--method", "gptq"] + calib)),
        ("nibble --target-bpw 5.53 GPTQ", "GPTQ", "GGUF mix", "nibble.bpw5.53.gptq.gguf",
         nibble_gguf(["--target-bpw", "5.53", "--method", "gptq"] + calib)),
        ("nibble GPTQ 4-bit g32 --format gptq", "GPTQ", "GPTQ v1", "gptq-g32-v1",
         nibble_folder(["--method", "gptq", "--format", "gptq"] + g32 + calib)),
    ]
    return base_gguf, base_folder, rows


def stories_rows(args, work, calib):
    base = os.path.join(work, "stories260K-f32")
    if not os.path.exists(os.path.join(base, "config.json")):
        stories = os.path.join(args.shared, "models", "stories260K")
        run([args.nibble, "convert", "--from", "llama2c", os.path.join(stories, "stories260K.bin"), "--tokenizer",
             os.path.join(stories, "tok512.bin"), "-o", base])

    def nibble_folder(flags):
        return lambda out: run([args.nibble, "quantize", "--model", base, "--out", out, "--threads",
                                str(args.threads), "--json"] + flags)

    g32 = ["--group-size", "32"]
    rows = []
    for bits in ("4", "3"):
        b = ["--bits", bits] + g32
        rows += [
            (f"nibble RTN {bits}-bit g32 --scales minmax", "RTN (min-max)", "compressed-tensors",
             f"rtn{bits}-minmax", nibble_folder(["--method", "rtn", "--scales", "minmax"] + b)),
            (f"nibble RTN {bits}-bit g32", "RTN", "compressed-tensors", f"rtn{bits}",
             nibble_folder(["--method", "rtn"] + b)),
            (f"nibble RTN {bits}-bit g32 --asym", "RTN", "compressed-tensors", f"rtn{bits}-asym",
             nibble_folder(["--method", "rtn", "--asym"] + b)),
            (f"nibble RTN {bits}-bit g32 --calib", "RTN + importance", "compressed-tensors", f"rtn{bits}-calib",
             nibble_folder(["--method", "rtn"] + b + calib)),
            (f"nibble GPTQ {bits}-bit g32", "GPTQ", "compressed-tensors", f"gptq{bits}",
             nibble_folder(["--method", "gptq"] + b + calib)),
        ]
    return base, rows


def evaluate(args, out, base_nibble, kld, window, chunks, llama_readable):
    ev = json_of(run([args.nibble, "eval", "--model", out, "--base", base_nibble, "--text", args.text, "--protocol",
                      "chunks", "--window", str(window), "--chunks", str(chunks), "--threads",
                      str(args.threads), "--json"]))
    row = {"bytes": stored_bytes(out), "nibble_kl": ev["mean_kl"], "nibble_kl_p99": ev["p99_kl"],
           "nibble_top1": ev["top1_agreement"], "nibble_ppl": ev["perplexity"],
           "base_ppl": ev.get("base_perplexity")}
    if llama_readable:
        text = run([f"{args.llama_bin}/llama-perplexity", "-m", out, "--kl-divergence-base", kld, "--kl-divergence",
                    "-f", args.text, "-c", str(window), "-b", str(window), "-t", str(args.threads), "--chunks",
                    str(chunks)])
        row.update({"llama_kl": number(r"Mean    KLD:\s*([-0-9.]+)", text),
                    "llama_kl_p99": number(r"99\.0%\s*KLD:\s*([-0-9.]+)", text),
                    "llama_top1": number(r"Same top p:\s*([0-9.]+)", text) / 100,
                    "llama_ppl": number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", text)})
    return row


def render(results):
    lines = []
    for model, section in results.items():
        lines += [f"### {section['title']}", "", section["note"], "",
                  "| checkpoint | method | format | size (bytes) | MiB | KL mean (nibble / llama.cpp) | "
                  "KL p99 (nibble / llama.cpp) | top-1 (nibble / llama.cpp) | ppl (nibble / llama.cpp) |",
                  "|---|---|---|---:|---:|---|---|---|---|"]
        base = section.get("base", {})
        lines.append(f"| base | — | {base.get('format', '')} | {base.get('bytes', 0):,} | "
                     f"{base.get('bytes', 0) / 2**20:.1f} | — | — | — | "
                     f"{base.get('nibble_ppl', float('nan')):.3f} / "
                     f"{base['llama_ppl']:.3f} |" if "llama_ppl" in base else
                     f"| base | — | {base.get('format', '')} | {base.get('bytes', 0):,} | "
                     f"{base.get('bytes', 0) / 2**20:.1f} | — | — | — | {base.get('nibble_ppl', float('nan')):.3f} / — |")

        def pair(r, key, fmt):
            ours = format(r[f"nibble_{key}"], fmt)
            theirs = format(r[f"llama_{key}"], fmt) if f"llama_{key}" in r else "—"
            return f"{ours} / {theirs}"

        for label, r in section["rows"].items():
            lines.append(f"| {label} | {r['method']} | {r['format']} | {r['bytes']:,} | {r['bytes'] / 2**20:.1f} | "
                         f"{pair(r, 'kl', '.4f')} | {pair(r, 'kl_p99', '.3f')} | {pair(r, 'top1', '.3f')} | "
                         f"{pair(r, 'ppl', '.3f')} |")
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", help="llama.cpp's build/bin (llama-quantize, llama-imatrix, llama-perplexity)")
    p.add_argument("--kquant", help="scripts/make-kquant-models' folder (the SmolLM2 F16 GGUF)")
    p.add_argument("--smollm2", help="scripts/make-gptq-model's quant_work/smollm2_base")
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    p.add_argument("--work", required=True)
    p.add_argument("--models", default="stories,smollm2")
    p.add_argument("--only", nargs="*", default=None, help="row labels to run (default: all)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--chunks", type=int, default=8, help="SmolLM2: chunks of 512 tokens")
    p.add_argument("--stories-chunks", type=int, default=32, help="stories260K: chunks of 256 tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render", action="store_true", help="print the table of WORK/results.json and exit")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results_path = os.path.join(args.work, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    if args.render:
        print(render(results))
        return
    corpus = os.path.join(args.work, "corpus")
    run([sys.executable, os.path.join(REPO, "tests/quant/make_corpus.py"), corpus])
    args.calib_text = os.path.join(corpus, "calib.txt")
    args.text = os.path.join(corpus, "eval.txt")
    calib = ["--calib", args.calib_text, "--calib-samples", str(args.samples), "--seq-len", str(args.seq_len)]

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)

    for model in args.models.split(","):
        work = os.path.join(args.work, model)
        os.makedirs(work, exist_ok=True)
        if model == "smollm2":
            base_gguf, base_nibble, rows = smollm2_rows(args, work, calib)
            window, chunks = 512, args.chunks
            kld = os.path.join(work, "base.kld")
            if not os.path.exists(kld):
                text = run([f"{args.llama_bin}/llama-perplexity", "-m", base_gguf, "--kl-divergence-base", kld, "-f",
                            args.text, "-c", str(window), "-b", str(window), "-t", str(args.threads), "--chunks",
                            str(args.chunks)])
                results.setdefault(model, {})["base_llama_ppl"] = number(r"Final estimate: PPL = ([0-9.]+)", text)
            section = results.setdefault(model, {})
            section["title"] = f"{SMOL} (F16 base dequantized from the shipped Q4_1 GGUF)"
            section["note"] = ("Base: the F16 GGUF widened from the bundled **Q4_1** (not the original bf16 "
                               "release); folder outputs start from the same weights as a Hugging Face folder. "
                               f"{args.chunks} chunks of {window} tokens, second halves scored.")
            section["base"] = {"format": "GGUF F16", "bytes": os.path.getsize(base_gguf),
                               "llama_ppl": section.get("base_llama_ppl")}
        elif model == "stories":
            base_nibble, rows = stories_rows(args, work, calib)
            base_gguf, kld, window, chunks = None, None, 256, args.stories_chunks
            section = results.setdefault(model, {})
            section["title"] = "stories260K (float32 base)"
            section["note"] = ("A real float32 base (llama2.c). No GGUF rows: its feed-forward width 172 is not "
                               "whole 32-weight blocks; llama.cpp reads no folder, so its columns are empty. "
                               f"{chunks} chunks of {window} tokens, second halves scored.")
            section["base"] = {"format": "safetensors F32", "bytes": stored_bytes(base_nibble)}
        else:
            raise SystemExit(f"unknown model {model}")
        section.setdefault("rows", {})
        save()
        for label, method, fmt, name, make in rows:
            if args.only and label not in args.only:
                continue
            if label in section["rows"]:
                continue
            out = os.path.join(work, name)
            start = time.time()
            if not os.path.exists(out):
                make(out)
            seconds = time.time() - start
            # SmolLM2 rows are scored against the F16 GGUF (the folder base holds the same
            # weights and vocabulary: KL 0 between them), stories260K against its folder.
            row = evaluate(args, out, base_gguf or base_nibble, kld, window, chunks, out.endswith(".gguf"))
            row.update({"method": method, "format": fmt, "compress_seconds": seconds})
            if row.get("base_ppl") is not None:
                section["base"]["nibble_ppl"] = row["base_ppl"]
            section["rows"][label] = row
            save()
            print(json.dumps({label: row}), file=sys.stderr, flush=True)
    print(render(results))


if __name__ == "__main__":
    main()
