#!/usr/bin/env python3
"""nibble eval --protocol chunks against llama.cpp's llama-perplexity on the same
GGUF files and text (issue 19), on the same chunks:

  * the F16 base: the same number of scored tokens and perplexity within 0.5 %;
  * each quantized type: perplexity within 0.5 % of llama-perplexity on the same
    weights dequantized to F32, and nibble's KL divergence from the F16 base no
    larger than llama.cpp's --kl-divergence on the quantized file.

Why the F32 copy: on a quantized file llama.cpp's CPU kernels round every
activation row to 8 bits (Q8_0 / Q8_K) before the dot products; nibble keeps
float activations. That alone moves llama.cpp's perplexity by 0.6-0.9 % on
SmolLM2 (docs/perf/2026-12-07-llama-cpp-anchor.md), so "within 0.5 % of
llama-perplexity on the quantized file" does not hold and is not asserted; the
gap is printed. llama-perplexity on the F32 copy multiplies float activations by
exactly the file's weights, which is what nibble computes.

Registered by tests/CMakeLists.txt (label llamacpp) only where scripts/get-llama-cpp
and scripts/make-kquant-models have run; CI does not build llama.cpp.

  tests/llamacpp/perplexity_test.py --nibble build/cli/nibble --llama-bin DIR \
      --models models/smollm2-kquant --text eval.txt --types Q4_K_M Q6_K --chunks 4
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

NAME = "SmolLM2-135M-Instruct"
ARGS = None
PPL_BOUND = 0.005


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def number(pattern, text):
    m = re.search(pattern, text)
    if not m:
        raise AssertionError(f"no {pattern!r} in llama-perplexity's output:\n{text[-2000:]}")
    return float(m.group(1))


class LlamaPerplexityAnchor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory()
        cls.base = os.path.join(ARGS.models, f"{NAME}.F16.gguf")
        cls.kld = os.path.join(cls.work.name, "base.kld")
        out = cls.llama(cls.base, ["--kl-divergence-base", cls.kld])
        cls.base_ppl = number(r"Final estimate: PPL = ([0-9.]+)", out)
        cls.chunks = int(number(r"calculating perplexity over ([0-9]+) chunks", out))

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    @staticmethod
    def llama(model, extra):
        return run([f"{ARGS.llama_bin}/llama-perplexity", "-m", model, "-f", ARGS.text, "-c", "512", "-b", "512",
                    "-t", str(ARGS.threads), "--chunks", str(ARGS.chunks)] + extra)

    @staticmethod
    def nibble(model, base=None):
        cmd = [ARGS.nibble, "eval", "--model", model, "--text", ARGS.text, "--protocol", "chunks", "--window", "512",
               "--chunks", str(ARGS.chunks), "--threads", str(ARGS.threads), "--json"]
        out = run(cmd + (["--base", base] if base else []))
        return json.loads(out[out.index("{"):out.rindex("}") + 1])

    def test_f16_base(self):
        result = self.nibble(self.base)
        self.assertEqual(result["windows"], self.chunks)
        self.assertEqual(result["tokens_scored"], self.chunks * 255)
        gap = result["perplexity"] / self.base_ppl - 1
        print(f"F16: llama.cpp {self.base_ppl:.4f}, nibble {result['perplexity']:.4f} ({100 * gap:+.3f} %)")
        self.assertLess(abs(gap), PPL_BOUND)

    def test_quantized_types(self):
        for t in ARGS.types:
            with self.subTest(type=t):
                model = os.path.join(ARGS.models, f"{NAME}.{t}.gguf")
                out = self.llama(model, ["--kl-divergence-base", self.kld, "--kl-divergence"])
                llama_ppl = number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out)
                llama_kld = number(r"Mean    KLD:\s*([-0-9.]+)", out)
                f32 = os.path.join(self.work.name, f"{t}-as-F32.gguf")
                run([f"{ARGS.llama_bin}/llama-quantize", "--allow-requantize", model, f32, "F32", str(ARGS.threads)])
                exact_ppl = number(r"Final estimate: PPL = ([0-9.]+)", self.llama(f32, []))
                os.remove(f32)
                result = self.nibble(model, self.base)
                gap = result["perplexity"] / exact_ppl - 1
                print(f"{t}: PPL nibble {result['perplexity']:.4f}, llama.cpp on the F32 copy {exact_ppl:.4f} "
                      f"({100 * gap:+.3f} %), llama.cpp on the file {llama_ppl:.4f} "
                      f"({100 * (result['perplexity'] / llama_ppl - 1):+.3f} %); "
                      f"KLD nibble {result['mean_kl']:.5f}, llama.cpp {llama_kld:.5f}")
                self.assertEqual(result["tokens_scored"], self.chunks * 255)
                self.assertLess(abs(gap), PPL_BOUND)
                # llama.cpp keeps the base's log-probs in 16 bits and drops base
                # probabilities below e^-16 (nibble: every term, float64); that
                # moves its KLD by far less than its activation rounding adds.
                self.assertLessEqual(result["mean_kl"], llama_kld)

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--types", nargs="+", default=["Q4_K_M", "Q6_K"])
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v"] + rest)
