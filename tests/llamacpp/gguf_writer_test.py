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
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from anchor import NAME, PPL_BOUND, llama, llama_f32_perplexity, main, nibble_eval, number, run  # noqa: E402

ARGS = None


class NibbleGgufInLlamaCpp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory()
        cls.base = os.path.join(ARGS.models, f"{NAME}.F16.gguf")
        cls.kld = os.path.join(cls.work.name, "base.kld")
        llama(ARGS, cls.base, ["--kl-divergence-base", cls.kld])
        cls.out = os.path.join(cls.work.name, "nibble.Q4_K_M.gguf")
        run([ARGS.nibble, "quantize", "--model", cls.base, "--format", "gguf", "--type", "Q4_K_M", "--method", "rtn",
             "-o", cls.out, "--threads", str(ARGS.threads)])

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    def test_logits_agree(self):
        out = llama(ARGS, self.out, ["--kl-divergence-base", self.kld, "--kl-divergence"])
        llama_ppl = number(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", out)
        llama_kld = number(r"Mean    KLD:\s*([-0-9.]+)", out)
        exact_ppl = llama_f32_perplexity(ARGS, self.out, self.work.name)
        result = nibble_eval(ARGS, self.out, self.base)
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


def set_args(args):
    global ARGS
    ARGS = args


if __name__ == "__main__":
    main(set_args)
