#!/usr/bin/env python3
"""GGUF files written by `nibble quantize --format gguf` in llama.cpp (issue 23):

  * llama-perplexity loads the file unmodified (SmolLM2's F16 GGUF quantized by
    nibble, --type Q4_K_M, RTN) and scores it;
  * nibble and llama.cpp agree on its logits: nibble's perplexity (eval --protocol
    chunks, the same chunks) within 0.5 % of llama-perplexity on the same weights
    widened to F32 by llama-quantize (llama.cpp's own decoder of nibble's blocks;
    on the quantized file itself llama.cpp rounds activations to 8 bits, see
    perplexity_test.py), and nibble's KL divergence from the F16 base no larger
    than llama.cpp's --kl-divergence on the file;
  * gguf-py reads it back with the source's tokenizer and chat template.

Registered by tests/CMakeLists.txt (label llamacpp) only where scripts/get-llama-cpp
and scripts/make-kquant-models have run.

  tests/llamacpp/gguf_writer_test.py --nibble build/cli/nibble --llama-bin DIR \
      --models models/smollm2-kquant --text eval.txt --chunks 4
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
        raise AssertionError(f"no {pattern!r} in the output:\n{text[-2000:]}")
    return float(m.group(1))


class NibbleGgufInLlamaCpp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory()
        cls.base = os.path.join(ARGS.models, f"{NAME}.F16.gguf")
        cls.kld = os.path.join(cls.work.name, "base.kld")
        cls.llama(cls.base, ["--kl-divergence-base", cls.kld])
        cls.out = os.path.join(cls.work.name, "nibble.Q4_K_M.gguf")
        run([ARGS.nibble, "quantize", "--model", cls.base, "--format", "gguf", "--type", "Q4_K_M", "--method", "rtn",
             "-o", cls.out, "--threads", str(ARGS.threads)])

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    @staticmethod
    def llama(model, extra):
        return run([f"{ARGS.llama_bin}/llama-perplexity", "-m", model, "-f", ARGS.text, "-c", "512", "-b", "512",
                    "-t", str(ARGS.threads), "--chunks", str(ARGS.chunks)] + extra)

    def test_logits_agree(self):
        out = self.llama(self.out, ["--kl-divergence-base", self.kld, "--kl-divergence"])
        llama_ppl = number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out)
        llama_kld = number(r"Mean    KLD:\s*([-0-9.]+)", out)
        f32 = os.path.join(self.work.name, "nibble-as-F32.gguf")
        run([f"{ARGS.llama_bin}/llama-quantize", "--allow-requantize", self.out, f32, "F32", str(ARGS.threads)])
        exact_ppl = number(r"Final estimate: PPL = ([0-9.]+)", self.llama(f32, []))
        os.remove(f32)
        cmd = [ARGS.nibble, "eval", "--model", self.out, "--text", ARGS.text, "--protocol", "chunks", "--window", "512",
               "--chunks", str(ARGS.chunks), "--threads", str(ARGS.threads), "--json", "--base", self.base]
        text = run(cmd)
        result = json.loads(text[text.index("{"):text.rindex("}") + 1])
        gap = result["perplexity"] / exact_ppl - 1
        print(f"nibble Q4_K_M: PPL nibble {result['perplexity']:.4f}, llama.cpp on the F32 copy {exact_ppl:.4f} "
              f"({100 * gap:+.3f} %), llama.cpp on the file {llama_ppl:.4f}; "
              f"KLD nibble {result['mean_kl']:.5f}, llama.cpp {llama_kld:.5f}")
        self.assertEqual(result["tokens_scored"], ARGS.chunks * 255)
        self.assertLess(abs(gap), PPL_BOUND)
        self.assertLessEqual(result["mean_kl"], llama_kld)
        self.assertGreater(result["mean_kl"], 0.0)

    def test_gguf_py_reads_metadata_back(self):
        from gguf import GGUFReader
        source, written = GGUFReader(self.base), GGUFReader(self.out)
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template",
                    "tokenizer.ggml.eos_token_id", "llama.block_count", "llama.rope.freq_base"]:
            self.assertEqual(written.fields[key].contents(), source.fields[key].contents(), key)
        self.assertEqual(written.fields["general.file_type"].contents(), 15)
        self.assertEqual([t.name for t in written.tensors], [t.name for t in source.tensors])
        self.assertLess(os.path.getsize(self.out), 0.45 * os.path.getsize(self.base))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--nibble", required=True)
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v"] + rest)
