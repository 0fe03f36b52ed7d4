#!/usr/bin/env python3
"""Reference numbers for the SmolLM2-135M-Instruct Q4_1 GGUF, from gguf-py + numpy.

    pip install -r tests/requirements.txt   # gguf, numpy
    python tests/gguf/smollm2_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf > tests/gguf/smollm2_reference.json

For a few tensors (under HF names, q/k rows un-permuted to the HF layout) it records
the float64 sum of the dequantized values and the exact bits of a few elements.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TENSORS = {
    "token_embd.weight": ("model.embed_tokens.weight", None),
    "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", "llama.attention.head_count"),
    "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", "llama.attention.head_count_kv"),
    "blk.0.ffn_down.weight": ("model.layers.0.mlp.down_proj.weight", None),
    "blk.29.attn_norm.weight": ("model.layers.29.input_layernorm.weight", None),
}


def gguf_to_hf_rope_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's LlamaModel.permute (HF -> GGUF)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, rows // n_head // 2, 2, -1).swapaxes(1, 2).reshape(weights.shape)


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def main(path: str) -> None:
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    out = {}
    for gguf_name, (hf_name, heads_key) in TENSORS.items():
        tensor = by_name[gguf_name]
        shape = [int(d) for d in reversed(tensor.shape)]
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        if heads_key is not None:
            values = gguf_to_hf_rope_rows(values, int(field(reader, heads_key)))
        flat = values.reshape(-1)
        cols = shape[-1]
        # Rows 1, 2, 33 and 97 move under the q/k row permutation; the rest are spread out.
        picks = sorted({0, 1, 31, 32, flat.size // 3, flat.size // 2 + 7, flat.size - 1} |
                       ({cols + 3, 2 * cols + 5, 33 * cols + 7, 97 * cols} if len(shape) == 2 else set()))
        out[hf_name] = {
            "type": tensor.tensor_type.name,
            "shape": shape,
            "sum": float(flat.astype(np.float64).sum()),
            "elements": {str(i): int(flat[i:i + 1].view(np.uint32)[0]) for i in picks},
        }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
