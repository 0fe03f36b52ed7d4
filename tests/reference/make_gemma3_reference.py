#!/usr/bin/env python3
"""Reference outputs of Gemma 3 270M (the real GGUF Q4_K_M file) from Hugging Face transformers.

nibble's engine test (tests/unit/gemma3_reference_test.cpp) compares its own
logits, greedy tokens and prompt token ids with these. transformers is an
independent implementation: it dequantizes the GGUF file with the `gguf` package
(undoing llama.cpp's w + 1 in the norm weights itself) and runs its PyTorch
Gemma 3 in float32 on the CPU, with its own tokenizer converted from the file's
vocabulary.

The logits are 5 x 262144 floats (5 MB), too large to commit: CTest runs this
script in scripts/make-gptq-model's venv (torch, transformers, gguf) before the
C++ test, where that venv and scripts/get-gemma3-270m's file exist. Outputs made
from the same file by the same script and library versions are kept (a few minutes
of CPU saved per run).

    python3 tests/reference/make_gemma3_reference.py models/gemma-3-270m-q4_k_m.gguf OUT_DIR

Writes into OUT_DIR:
    gemma3_reference.json     prompts, their token ids, 32 greedy tokens each and the
                              top-1/top-2 logit gap before each of them, versions
    gemma3_last_logits.f32    float32 little-endian [prompts, vocab]: logits at the
                              last prompt position
"""
import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    # Gemma's chat format, the way its template renders a user turn.
    "<start_of_turn>user\nWhat is the boiling point of water at sea level?<end_of_turn>\n<start_of_turn>model\n",
    "Once upon a time, in a small village by the sea, there lived",
    # Long enough (> 512 tokens) that the local layers' sliding window cuts in.
    "Here is a list of numbers: " + ", ".join(str(i * 7 % 1000) for i in range(300)) + ". The next number is",
]
GREEDY_TOKENS = 32


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def inputs_key(gguf_path: str) -> str:
    """What decides the outputs: the file, this script and the libraries that run it."""
    digest = hashlib.sha256()
    for part in (sha256_of(gguf_path), sha256_of(os.path.abspath(__file__)), torch.__version__,
                 transformers.__version__, importlib.metadata.version("gguf")):
        digest.update(part.encode())
    return digest.hexdigest()


def main() -> None:
    gguf_path, out_dir = os.path.abspath(sys.argv[1]), sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    key = inputs_key(gguf_path)
    record = os.path.join(out_dir, "gemma3_reference.json")
    if os.path.exists(record) and os.path.exists(os.path.join(out_dir, "gemma3_last_logits.f32")):
        with open(record) as f:
            if json.load(f).get("inputs_key") == key:
                print(f"{record} is up to date")
                return
    torch.manual_seed(0)
    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases, last_logits = [], []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].float()
            last_logits.append(logits.numpy().astype("<f4"))
            past = out.past_key_values
            generated, gaps = [], []
            for _ in range(GREEDY_TOKENS):
                top2 = torch.topk(logits, 2).values
                gaps.append(float(top2[0] - top2[1]))
                token = int(torch.argmax(logits))
                generated.append(token)
                out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": generated,
                      "greedy_text": tokenizer.decode(generated), "top2_gaps": gaps})
        print(f"{prompt[:40]!r} ({len(ids)} tokens): {tokenizer.decode(generated)[:80]!r} "
              f"(min gap {min(gaps):.4f})")

    np.stack(last_logits).tofile(os.path.join(out_dir, "gemma3_last_logits.f32"))
    with open(os.path.join(out_dir, "gemma3_reference.json"), "w") as f:
        json.dump({"model": name, "model_sha256": sha256_of(gguf_path), "inputs_key": key,
                   "vocab_size": int(last_logits[0].shape[0]),
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                "gguf": importlib.metadata.version("gguf")},
                   "cases": cases}, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
