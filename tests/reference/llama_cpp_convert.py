#!/usr/bin/env python3
"""Runs llama.cpp's own convert_hf_to_gguf.py on a tiny test model.

Usage: llama_cpp_convert.py LLAMA_CPP_SRC MODEL_DIR --outfile F --outtype T

LLAMA_CPP_SRC is scripts/get-llama-cpp's source tree (nothing of it is copied here).
The converter runs unchanged but for one thing: its BPE vocabulary step recognizes
a tokenizer's pre-tokenizer only by a hash of a published model's tokenizer output
(get_vocab_base_pre), and a tiny test tokenizer is no published model's, so that
one lookup answers "gpt2" (the tiny tokenizers are GPT-2-style byte-level BPE).
Tensor names, metadata keys, tensor layouts (DeepSeek's kv_b split into k_b / v_b)
and quantization are the converter's. Its own gguf-py, not the venv's gguf
package, is the one imported, so the keys are this llama.cpp version's.
"""
import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src = os.path.abspath(sys.argv[1])
    script = os.path.join(src, "convert_hf_to_gguf.py")
    if not os.path.isfile(script):
        sys.exit(f"llama_cpp_convert.py: no {script} (scripts/get-llama-cpp --source fetches it)")
    sys.path[:0] = [os.path.join(src, "gguf-py"), src]
    from conversion import base  # noqa: E402  (the converter's package, from src)

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt2"
    sys.argv = [script] + sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
