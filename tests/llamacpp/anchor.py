"""What both llama.cpp anchor tests run (perplexity_test.py, gguf_writer_test.py):
llama-perplexity and `nibble eval --protocol chunks` over the same 512-token chunks
of the same text, and the shared command line (--nibble, --llama-bin, --models,
--text, --chunks, --threads)."""
import argparse
import json
import os
import re
import subprocess
import sys
import unittest

NAME = "SmolLM2-135M-Instruct"
PPL_BOUND = 0.005


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def number(pattern, text):
    m = re.search(pattern, text)
    if not m:
        raise AssertionError(f"no {pattern!r} in the output:\n{text[-2000:]}")
    return float(m.group(1))


def llama(args, model, extra):
    """llama-perplexity over the chunks; its whole output."""
    return run([f"{args.llama_bin}/llama-perplexity", "-m", model, "-f", args.text, "-c", "512", "-b", "512",
                "-t", str(args.threads), "--chunks", str(args.chunks)] + extra)


def llama_f32_perplexity(args, model, work_dir):
    """llama-perplexity on `model` widened to F32 by llama-quantize: llama.cpp's own
    decoding of the weights without its 8-bit activation rounding."""
    f32 = os.path.join(work_dir, os.path.basename(model) + ".as-F32.gguf")
    run([f"{args.llama_bin}/llama-quantize", "--allow-requantize", model, f32, "F32", str(args.threads)])
    try:
        return number(r"Final estimate: PPL = ([0-9.]+)", llama(args, f32, []))
    finally:
        os.remove(f32)


def nibble_eval(args, model, base=None, flags=("--float-activations",)):
    """`nibble eval --protocol chunks` over the same chunks (KL statistics with a base); its JSON.
    Float activations unless `flags` says otherwise: the dequantized weights' exact logits,
    which llama-perplexity computes on the F32 copy."""
    cmd = [args.nibble, "eval", "--model", model, "--text", args.text, "--protocol", "chunks", "--window", "512",
           "--chunks", str(args.chunks), "--threads", str(args.threads), "--json", *flags]
    out = run(cmd + (["--base", base] if base else []))
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def main(set_args, add_arguments=lambda parser: None):
    """Parses the shared flags (and the test's own), hands them to the test module
    through `set_args`, and runs its tests."""
    p = argparse.ArgumentParser()
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    add_arguments(p)
    args, rest = p.parse_known_args()
    set_args(args)
    unittest.main(module="__main__", argv=[sys.argv[0], "-v"] + rest)
