#!/usr/bin/env python3
"""Reference outputs of SmolLM2-135M-Instruct (GGUF Q4_1) from Hugging Face transformers.

nibble's engine test (tests/unit/reference_test.cpp) compares its own logits and
greedy tokens with these. transformers is an independent implementation: it
dequantizes the GGUF file with the `gguf` package and runs its PyTorch Llama model
in float32 on the CPU.

Regenerate (needs torch, transformers, accelerate, gguf; none of them are needed by CI):
    scripts/get-model
    python3 tests/reference/make_smollm2_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf

Writes, next to this script:
    smollm2_reference.json     prompts, their token ids, 64 greedy tokens each, the
                               smallest top-1/top-2 logit gap seen along the way
    smollm2_last_logits.f32    float32 little-endian [prompts, vocab]: logits at the
                               last prompt position
Versions used for the committed files are recorded in the JSON.
"""
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
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the boiling point of water at sea level?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>user\nTranslate to French: I like green apples.<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY_TOKENS = 64


def main() -> None:
    gguf_path = os.path.abspath(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32
    )
    model.eval()

    cases = []
    last_logits = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].float()
            last_logits.append(logits.numpy().astype("<f4"))
            past = out.past_key_values
            generated, min_gap = [], float("inf")
            for _ in range(GREEDY_TOKENS):
                top2 = torch.topk(logits, 2).values
                min_gap = min(min_gap, float(top2[0] - top2[1]))
                token = int(torch.argmax(logits))
                generated.append(token)
                out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
        cases.append(
            {
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": generated,
                "greedy_text": tokenizer.decode(generated),
                "min_top2_gap": min_gap,
            }
        )
        print(f"{prompt[:40]!r}: {tokenizer.decode(generated)[:80]!r} (min gap {min_gap:.4f})")

    np.stack(last_logits).tofile(os.path.join(here, "smollm2_last_logits.f32"))
    with open(os.path.join(here, "smollm2_reference.json"), "w") as f:
        json.dump(
            {
                "model": os.path.basename(gguf_path),
                "vocab_size": int(last_logits[0].shape[0]),
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "gguf": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "unknown",
                },
                "cases": cases,
            },
            f,
            indent=1,
            ensure_ascii=False,
        )


if __name__ == "__main__":
    main()
