#!/usr/bin/env python3
"""Writes the block-quantized kernel and loader cases into a temp dir at test time.

    python tests/gguf/make_block_cases.py --out DIR

For every block type nibble keeps packed (Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K
IQ4_NL IQ4_XS TQ1_0 TQ2_0) DIR/kernels/<TYPE>.gguf holds fresh random blocks `w`
([N, K], odd N), their dequantization by gguf-py (`w_ref`, float32), 64 random
activation rows `x` and `y = x @ w_ref.T` computed in float64 (stored as float32).
Q8_K has no gguf-py dequantizer; its reference is d * q written out here from the
format (a float32 scale, then 256 int8 codes).

DIR/mixed_llama.gguf is a three-layer llama whose projections mix types as a Q4_K_M
or Q3_K_L file does (q/k one type, v and down another, gate/up a third), quantized
by gguf-py where it has a quantizer and otherwise random blocks; DIR/iq2.gguf holds
an IQ2_XXS tensor the loader must refuse by name. Nothing here is committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

TYPES = [Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_K, Q.IQ4_NL, Q.IQ4_XS, Q.TQ1_0, Q.TQ2_0]
# Byte offsets of each block's fp16 scale fields (Q8_K: one float32); random bytes
# there would be NaN or huge, so they get sane values and everything else is random.
HALF_FIELDS = {Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2],
               Q.Q6_K: [208], Q.IQ4_NL: [0], Q.IQ4_XS: [0], Q.TQ1_0: [52], Q.TQ2_0: [64]}


def random_blocks(rng: np.random.Generator, qtype: Q, rows: int, cols: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    if qtype == Q.Q8_K:
        d = rng.uniform(0.001, 0.02, size=(blocks.shape[0], 1)).astype(np.float32)
        blocks[:, 0:4] = d.view(np.uint8)
    else:
        for offset in HALF_FIELDS[qtype]:
            d = (rng.uniform(0.002, 0.05, size=(blocks.shape[0], 1)) * rng.choice([-1, 1], size=(blocks.shape[0], 1)))
            blocks[:, offset:offset + 2] = d.astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, cols // block * size)


def dequantized(data: np.ndarray, qtype: Q, rows: int, cols: int) -> np.ndarray:
    if qtype == Q.Q8_K:
        blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1])
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(rows, cols)
    return dequantize(data, qtype).astype(np.float32).reshape(rows, cols)


def write_kernel_case(out: Path, rng: np.random.Generator, qtype: Q) -> None:
    block = GGML_QUANT_SIZES[qtype][0]
    rows, cols = 37, block * (7 if block == 32 else 3)
    w = random_blocks(rng, qtype, rows, cols)
    w_ref = dequantized(w, qtype, rows, cols)
    x = rng.standard_normal((64, cols)).astype(np.float32)
    y = x.astype(np.float64) @ w_ref.astype(np.float64).T
    writer = GGUFWriter(out / f"{qtype.name}.gguf", arch="blocks")
    writer.add_tensor("w", w, raw_dtype=qtype)
    writer.add_tensor("w_ref", w_ref)
    writer.add_tensor("x", x)
    writer.add_tensor("y", y.astype(np.float32))
    finish(writer)


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def stored(rng: np.random.Generator, values: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return values.astype(np.float32)
    try:
        return quantize(values.astype(np.float32), qtype)
    except NotImplementedError:
        return random_blocks(rng, qtype, values.shape[0], values.shape[1])


def write_mixed_llama(path: Path, rng: np.random.Generator) -> None:
    # Per layer: (q/k, v, o, gate/up, down) types, as llama.cpp's K-quant mixes vary them;
    # together with the embedding (Q6_K) and output (TQ1_0) every block type appears.
    mixes = [(Q.Q4_K, Q.Q6_K, Q.Q5_1, Q.Q3_K, Q.Q5_K), (Q.IQ4_XS, Q.Q8_K, Q.Q5_0, Q.TQ2_0, Q.IQ4_NL),
             (Q.Q2_K, Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q3_K)]
    hidden, heads, kv_heads, ffn, vocab, layers = 256, 4, 2, 512, 32, len(mixes)
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    writer = GGUFWriter(path, arch="llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(vocab - 3)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, shape: tuple[int, ...], qtype: Q, scale: float = 0.05) -> None:
        data = stored(rng, rng.standard_normal(shape) * scale, qtype)
        writer.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q6_K, 1.0)
    for layer, (qk, v, o, gate_up, down) in enumerate(mixes):
        add(f"blk.{layer}.attn_norm.weight", (hidden,), Q.F32, 1.0)
        add(f"blk.{layer}.attn_q.weight", (hidden, hidden), qk)
        add(f"blk.{layer}.attn_k.weight", (kv, hidden), qk)
        add(f"blk.{layer}.attn_v.weight", (kv, hidden), v)
        add(f"blk.{layer}.attn_output.weight", (hidden, hidden), o)
        add(f"blk.{layer}.ffn_norm.weight", (hidden,), Q.F32, 1.0)
        add(f"blk.{layer}.ffn_gate.weight", (ffn, hidden), gate_up)
        add(f"blk.{layer}.ffn_up.weight", (ffn, hidden), gate_up)
        add(f"blk.{layer}.ffn_down.weight", (hidden, ffn), down)
    add("output_norm.weight", (hidden,), Q.F32, 1.0)
    add("output.weight", (vocab, hidden), Q.TQ1_0)
    finish(writer)


def write_iq2(path: Path, rng: np.random.Generator) -> None:
    writer = GGUFWriter(path, arch="blocks")
    writer.add_tensor("blk.0.attn_k.weight", rng.integers(0, 256, size=(4, GGML_QUANT_SIZES[Q.IQ2_XXS][1]), dtype=np.uint8),
                      raw_dtype=Q.IQ2_XXS)
    finish(writer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng()  # fresh blocks every run
    (args.out / "kernels").mkdir(parents=True, exist_ok=True)
    for qtype in TYPES:
        write_kernel_case(args.out / "kernels", rng, qtype)
    write_mixed_llama(args.out / "mixed_llama.gguf", rng)
    write_iq2(args.out / "iq2.gguf", rng)


if __name__ == "__main__":
    main()
