#!/usr/bin/env python3
"""`nibble convert --from gguf --tokenizer-only` against Hugging Face `tokenizers`:
for each GGUF vocabulary (the gpt2, llama3 and qwen2 byte-level fixtures, the
SentencePiece-style llama2 one, and the bundled SmolLM2), the written tokenizer.json,
loaded by `tokenizers`, must give the reference ids of every case in
tests/tokenizer/references/<style>.json, which nibble's own GGUF tokenizer gives too
(tokenizer_test's ReferenceTest), so the two agree id for id.

    check_gguf_tokenizer_json.py NIBBLE_BIN FIXTURES_DIR MODEL_CACHE
"""
import json
import os
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    nibble, fixtures, models = sys.argv[1:4]
    # (GGUF, reference style, whether the GGUF carries add_special's template)
    sources = [(os.path.join(fixtures, "gpt2.gguf"), "gpt2", False),
               (os.path.join(fixtures, "llama3.gguf"), "llama3", False),
               (os.path.join(fixtures, "qwen2.gguf"), "qwen2", False),
               (os.path.join(fixtures, "llama2.gguf"), "llama2", True),
               (os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2", True)]
    failures = checked = 0
    for gguf, style, add_special in sources:
        with tempfile.TemporaryDirectory(prefix="nibble-tokenizer-json-") as out:
            result = subprocess.run([nibble, "convert", "--from", "gguf", "--tokenizer-only", gguf, "--out", out],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                print(f"FAIL {style}: nibble convert exited {result.returncode}: {result.stderr}")
                failures += 1
                continue
            tokenizer = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        with open(os.path.join(HERE, "references", f"{style}.json")) as f:
            cases = json.load(f)["cases"]
        for case in cases:
            checked += 1
            got = tokenizer.encode(case["text"], add_special_tokens=False).ids
            if got != case["ids"]:
                failures += 1
                print(f"FAIL {style} {case['text'][:60]!r}: {got[:16]} != {case['ids'][:16]}")
            if add_special:
                got = tokenizer.encode(case["text"]).ids
                if got != case["ids_add_special"]:
                    failures += 1
                    print(f"FAIL {style} (add_special) {case['text'][:60]!r}: {got[:16]} != {case['ids_add_special'][:16]}")
            decoded = tokenizer.decode(case["ids_add_special"], skip_special_tokens=False)
            if decoded != case["decoded"]:
                failures += 1
                print(f"FAIL {style} decode {case['text'][:60]!r}: {decoded[:60]!r} != {case['decoded'][:60]!r}")
        print(f"{style}: {len(cases)} cases from {os.path.basename(gguf)}")
    print(f"{checked} cases, {failures} failures")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
