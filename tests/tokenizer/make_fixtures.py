#!/usr/bin/env python3
"""Test-time fixtures for tokenizer_test (run by ctest as `tokenizer_fixtures`).

Writes into OUT, from real data that must not be committed and from the committed
small tokenizers:
  llama2/tokenizer.json + tokenizer_config.json   Llama-2's tokenizer.model converted the
                                                   way make_references.py does (legacy)
  llama2-spm/tokenizer.model + tokenizer_config.json   the model itself, for libsentencepiece
  llama2.gguf                                      GGUF "llama" vocabulary of the same model
  gpt2.gguf, llama3.gguf, qwen2.gguf               GGUF "gpt2" vocabularies of the committed
                                                   byte-level tokenizers (pre = gpt2, llama-bpe, qwen2)
Missing real data is skipped (the C++ tests then skip too); missing Python packages fail.

  python3 tests/tokenizer/make_fixtures.py --shared ../shared --out build/tokenizer_fixtures
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    for style, pre in (("gpt2", "gpt2"), ("llama3", "llama-bpe"), ("qwen2", "qwen2")):
        tokref.gguf_from_byte_level_json(os.path.join(HERE, "data", style, "tokenizer.json"),
                                         os.path.join(args.out, f"{style}.gguf"), pre)

    model = os.path.join(args.shared, "models", "llama2c-tokenizer", "tokenizer.model")
    if not os.path.exists(model):
        print(f"{model} not found: Llama-2 fixtures skipped")
        return
    config = tokref.spm_tokenizer_config(model)
    hf_dir = os.path.join(args.out, "llama2")
    os.makedirs(hf_dir, exist_ok=True)
    tokref.spm_tokenizer(model, legacy=True).save(os.path.join(hf_dir, "tokenizer.json"))
    spm_dir = os.path.join(args.out, "llama2-spm")
    os.makedirs(spm_dir, exist_ok=True)
    shutil.copyfile(model, os.path.join(spm_dir, "tokenizer.model"))
    for folder in (hf_dir, spm_dir):
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    tokref.gguf_from_spm(model, os.path.join(args.out, "llama2.gguf"))


if __name__ == "__main__":
    main()
