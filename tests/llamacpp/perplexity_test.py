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
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from anchor import NAME, PPL_BOUND, llama, llama_f32_perplexity, main, nibble_eval, number  # noqa: E402

ARGS = None


class LlamaPerplexityAnchor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory()
        cls.base = os.path.join(ARGS.models, f"{NAME}.F16.gguf")
        cls.kld = os.path.join(cls.work.name, "base.kld")
        out = llama(ARGS, cls.base, ["--kl-divergence-base", cls.kld])
        cls.base_ppl = number(r"Final estimate: PPL = ([0-9.]+)", out)
        cls.chunks = int(number(r"calculating perplexity over ([0-9]+) chunks", out))

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    def test_f16_base(self):
        result = nibble_eval(ARGS, self.base)
        self.assertEqual(result["windows"], self.chunks)
        self.assertEqual(result["tokens_scored"], self.chunks * 255)
        gap = result["perplexity"] / self.base_ppl - 1
        print(f"F16: llama.cpp {self.base_ppl:.4f}, nibble {result['perplexity']:.4f} ({100 * gap:+.3f} %)")
        self.assertLess(abs(gap), PPL_BOUND)

    def test_quantized_types(self):
        for t in ARGS.types:
            with self.subTest(type=t):
                model = os.path.join(ARGS.models, f"{NAME}.{t}.gguf")
                out = llama(ARGS, model, ["--kl-divergence-base", self.kld, "--kl-divergence"])
                llama_ppl = number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out)
                llama_kld = number(r"Mean    KLD:\s*([-0-9.]+)", out)
                exact_ppl = llama_f32_perplexity(ARGS, model, self.work.name)
                result = nibble_eval(ARGS, model, self.base)
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

def set_args(args):
    global ARGS
    ARGS = args


if __name__ == "__main__":
    main(set_args, lambda p: p.add_argument("--types", nargs="+", default=["Q4_K_M", "Q6_K"]))
