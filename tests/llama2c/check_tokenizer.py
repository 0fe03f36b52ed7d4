#!/usr/bin/env python3
"""Checks nibble's llama2.c tokenizer import against SentencePiece.

nibble converts ../shared/models/llama2c-tokenizer/tokenizer.bin (llama2.c format) into
a Hugging Face tokenizer.json. Loaded with the `tokenizers` library, that file must
split every text exactly like `sentencepiece` does with the original tokenizer.model.

    pip install -r tests/requirements.txt   # sentencepiece, tokenizers
    python tests/llama2c/check_tokenizer.py --test-binary build/tests/unit/gguf_test

The gtest binary writes the tokenizer.json (test Llama2c.ConvertsTheLlama2Tokenizer with
NIBBLE_LLAMA2C_TOKENIZER_OUT set); --tokenizer-json checks an existing file instead.
Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "models" / "llama2c-tokenizer"

FIXED_TEXTS = [
    "",
    " ",
    "  ",
    "Hello world",
    "Hello, world!",
    " leading space",
    "trailing space ",
    "two  spaces and   three",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "line one\nline two\n\nline four",
    "tabs\tand\ttabs",
    "numbers 1234567890 3.14159 -42 1e10",
    "punctuation: ;:'\"[]{}()<>/?\\|`~!@#$%^&*-_=+",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "emoji \U0001f600\U0001f680 and \u2603 and \U0001f1fa\U0001f1f8",
    "rare bytes \u0000 \u0001 \u007f \ufffd",
    "def f(x):\n    return x * 2  # comment\n",
    "<b>html</b> &amp; http://example.com/path?query=1",
    "\u2581already has the meta symbol \u2581\u2581",
    "ALL CAPS SENTENCE WITH WORDS",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The quick brown fox jumps over the lazy dog. " * 8,
]


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" " * 12 + "\n\t.,;:!?'\"-()")
        + list("\u00e9\u00fc\u00df\u4e2d\u6587\u65e5\u0416\u03a9\u2603\U0001f600\u0301\u200b")
    )
    words = ["the", "and", "story", "little", "happy", "played", "ing", "tion", "un", "re", "Lily", "Tim"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 30)):
            parts.append(rng.choice(words) if rng.random() < 0.5 else "".join(rng.choices(alphabet, k=rng.randint(1, 6))))
            parts.append(rng.choice([" ", " ", " ", "", "  ", "\n"]))
        out.append("".join(parts))
    return out


def export_tokenizer(test_binary: Path, out_dir: Path) -> Path:
    env = dict(os.environ, NIBBLE_LLAMA2C_TOKENIZER_OUT=str(out_dir))
    subprocess.run([str(test_binary), "--gtest_filter=Llama2c.ConvertsTheLlama2Tokenizer"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return out_dir / "tokenizer.json"


def compare(tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, texts: list[str]) -> int:
    failures = 0
    for text in texts:
        want = sp.encode(text)
        got = tokenizer.encode(text, add_special_tokens=False).ids
        with_bos = tokenizer.encode(text).ids
        decoded = tokenizer.decode(got)
        problems = []
        if got != want:
            problems.append(f"ids differ:\n  sentencepiece {want}\n  tokenizers    {got}")
        if with_bos != [sp.bos_id()] + want:
            problems.append(f"with special tokens: {with_bos[:8]}... does not start with BOS + the same ids")
        if decoded != sp.decode(want):
            problems.append(f"decode differs: {decoded!r} vs {sp.decode(want)!r}")
        if problems:
            failures += 1
            print(f"MISMATCH for {text!r}:\n" + "\n".join(problems), file=sys.stderr)
            if failures >= 10:
                break
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--test-binary", type=Path, help="gguf_test, used to write tokenizer.json")
    source.add_argument("--tokenizer-json", type=Path, help="an already converted tokenizer.json")
    parser.add_argument("--sp-model", type=Path, default=SHARED / "tokenizer.model")
    parser.add_argument("--random", type=int, default=3000, help="number of random texts")
    args = parser.parse_args()

    sp = spm.SentencePieceProcessor(model_file=str(args.sp_model))
    with tempfile.TemporaryDirectory() as scratch:
        path = args.tokenizer_json or export_tokenizer(args.test_binary, Path(scratch))
        tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.get_vocab_size() != sp.get_piece_size():
        print(f"vocab size {tokenizer.get_vocab_size()} != {sp.get_piece_size()}", file=sys.stderr)
        return 1
    for i in range(sp.get_piece_size()):
        if tokenizer.id_to_token(i) != sp.id_to_piece(i):
            print(f"token {i}: {tokenizer.id_to_token(i)!r} != {sp.id_to_piece(i)!r}", file=sys.stderr)
            return 1
    texts = FIXED_TEXTS + random_texts(args.random, seed=1234)
    failures = compare(tokenizer, sp, texts)
    if failures:
        print(f"FAILED: {failures} text(s) tokenize differently", file=sys.stderr)
        return 1
    print(f"OK: {len(texts)} texts tokenize identically ({sp.get_piece_size()} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
