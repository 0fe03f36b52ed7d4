#!/usr/bin/env python3
"""Writes the small GGUF fixtures under tests/gguf/fixtures/ and their expected values.

The files are committed; rerun this only to change them (output is deterministic):

    pip install -r tests/requirements.txt   # gguf, numpy
    python tests/gguf/make_fixtures.py

Expected values come from gguf-py itself (gguf.quants.dequantize), so the C++ reader is
checked against an independent implementation, bit for bit. Floats are stored as their
uint32 bit patterns so the comparison is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parent / "fixtures"
TYPE_NAMES = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16", Q.Q4_0: "Q4_0", Q.Q4_1: "Q4_1", Q.Q8_0: "Q8_0"}


def stored(values: np.ndarray, qtype: Q) -> np.ndarray:
    """The on-disk form of `values` as GGUFWriter.add_tensor wants it."""
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return quantize(values.astype(np.float32), qtype)


def decoded(data: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype in (Q.F32, Q.F16):
        return data.astype(np.float32)
    return dequantize(data, qtype).astype(np.float32)


def bits(values: np.ndarray) -> list[int]:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).ravel().tolist()


def add(writer: GGUFWriter, expected: list, name: str, values: np.ndarray, qtype: Q, record: bool = True) -> np.ndarray:
    data = stored(values, qtype)
    writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    result = decoded(data, qtype).reshape(values.shape)
    if record:
        expected.append({"name": name, "type": TYPE_NAMES[qtype], "shape": list(values.shape), "bits": bits(result)})
    return result


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_types(rng: np.random.Generator) -> None:
    """Metadata of every value type and one tensor of each supported ggml type."""
    writer = GGUFWriter(OUT / "types.gguf", arch="test")
    writer.add_custom_alignment(64)
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4000000000)
    writer.add_int32("test.i32", -2000000000)
    writer.add_uint64("test.u64", 10000000000000000000)
    writer.add_int64("test.i64", -9000000000000000000)
    writer.add_float32("test.f32", 0.15625)
    writer.add_float64("test.f64", -2.5e-300)
    writer.add_bool("test.bool_true", True)
    writer.add_bool("test.bool_false", False)
    writer.add_string("test.string", "héllo ▁wörld")
    writer.add_key_value("test.empty_string", "", V.STRING)  # add_string skips empty strings
    writer.add_array("test.strings", ["a", "", "▁b c"])
    writer.add_key_value("test.i16s", [-1, 2, -3], V.ARRAY, sub_type=V.INT16)
    writer.add_key_value("test.u64s", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    writer.add_key_value("test.f32s", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    writer.add_key_value("test.f64s", [0.1], V.ARRAY, sub_type=V.FLOAT64)
    writer.add_array("test.bools", [True, False, True])
    writer.add_array("test.nested", [[1, 2], [3], [4, 5, 6]])
    writer.add_array("test.nested_strings", [["x", "y"], ["z"]])

    expected: list = []
    add(writer, expected, "f32", rng.standard_normal((3, 8)), Q.F32)
    add(writer, expected, "f16", rng.standard_normal((2, 3, 8)), Q.F16)
    add(writer, expected, "bf16", rng.standard_normal((4, 8)) * 1e3, Q.BF16)
    add(writer, expected, "q4_0", rng.standard_normal((2, 64)), Q.Q4_0)
    add(writer, expected, "q4_1", rng.standard_normal((3, 32)) + 0.5, Q.Q4_1)
    add(writer, expected, "q8_0", rng.standard_normal((2, 2, 64)) * 0.02, Q.Q8_0)
    finish(writer)
    (OUT / "types.expected.json").write_text(json.dumps({"tensors": expected}) + "\n")


def hf_to_gguf_rope_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def tokens(writer: GGUFWriter, vocab: int) -> None:
    pieces = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(vocab - 3)]
    writer.add_token_list(pieces)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def write_tiny_llama(rng: np.random.Generator) -> None:
    """A one-layer "llama" with untied output and q/k rows as llama.cpp stores them."""
    hidden, heads, kv_heads, ffn, vocab = 32, 4, 2, 64, 16
    head_dim = hidden // heads
    writer = GGUFWriter(OUT / "tiny_llama.gguf", arch="llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(2)
    tokens(writer, vocab)

    expected: list = []
    kv = kv_heads * head_dim
    add(writer, expected, "token_embd.weight", rng.standard_normal((vocab, hidden)), Q.F32, record=False)
    add(writer, expected, "blk.0.attn_norm.weight", rng.standard_normal(hidden), Q.F32, record=False)
    q_hf = rng.standard_normal((hidden, hidden))
    k_hf = rng.standard_normal((kv, hidden))
    add(writer, expected, "blk.0.attn_q.weight", hf_to_gguf_rope_rows(q_hf, heads), Q.F16, record=False)
    add(writer, expected, "blk.0.attn_k.weight", hf_to_gguf_rope_rows(k_hf, kv_heads), Q.Q8_0, record=False)
    add(writer, expected, "blk.0.attn_v.weight", rng.standard_normal((kv, hidden)), Q.Q4_0, record=False)
    add(writer, expected, "blk.0.attn_output.weight", rng.standard_normal((hidden, hidden)), Q.Q4_1, record=False)
    add(writer, expected, "blk.0.ffn_norm.weight", rng.standard_normal(hidden), Q.F32, record=False)
    add(writer, expected, "blk.0.ffn_gate.weight", rng.standard_normal((ffn, hidden)), Q.BF16, record=False)
    add(writer, expected, "blk.0.ffn_up.weight", rng.standard_normal((ffn, hidden)), Q.F32, record=False)
    add(writer, expected, "blk.0.ffn_down.weight", rng.standard_normal((hidden, ffn)), Q.Q8_0, record=False)
    add(writer, expected, "output_norm.weight", rng.standard_normal(hidden), Q.F32, record=False)
    add(writer, expected, "output.weight", rng.standard_normal((vocab, hidden)), Q.F32, record=False)
    finish(writer)

    # HF layout computed without any un-permutation: quantization is per row, so
    # storing permuted rows and decoding equals decoding the HF rows directly.
    hf = [
        {"name": "model.layers.0.self_attn.q_proj.weight", "shape": list(q_hf.shape),
         "bits": bits(decoded(stored(q_hf, Q.F16), Q.F16))},
        {"name": "model.layers.0.self_attn.k_proj.weight", "shape": list(k_hf.shape),
         "bits": bits(decoded(stored(k_hf, Q.Q8_0), Q.Q8_0))},
    ]
    (OUT / "tiny_llama.expected.json").write_text(json.dumps({"tensors": hf}) + "\n")


def write_tiny_qwen2(rng: np.random.Generator) -> None:
    """A one-layer "qwen2": tied embeddings, q/k/v biases, rows never permuted."""
    hidden, heads, kv_heads, ffn, vocab = 32, 4, 2, 64, 16
    kv = kv_heads * hidden // heads
    writer = GGUFWriter(OUT / "tiny_qwen2.gguf", arch="qwen2")
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1000000.0)
    writer.add_file_type(1)
    tokens(writer, vocab)
    writer.add_uint32("tokenizer.ggml.eot_token_id", 5)

    ignored: list = []
    add(writer, ignored, "token_embd.weight", rng.standard_normal((vocab, hidden)), Q.F16)
    for name, shape in [("attn_norm.weight", (hidden,)), ("attn_q.bias", (hidden,)), ("attn_k.bias", (kv,)),
                        ("attn_v.bias", (kv,)), ("ffn_norm.weight", (hidden,))]:
        add(writer, ignored, f"blk.0.{name}", rng.standard_normal(shape), Q.F32)
    for name, shape in [("attn_q.weight", (hidden, hidden)), ("attn_k.weight", (kv, hidden)),
                        ("attn_v.weight", (kv, hidden)), ("attn_output.weight", (hidden, hidden)),
                        ("ffn_gate.weight", (ffn, hidden)), ("ffn_up.weight", (ffn, hidden)),
                        ("ffn_down.weight", (hidden, ffn))]:
        add(writer, ignored, f"blk.0.{name}", rng.standard_normal(shape), Q.F16)
    add(writer, ignored, "output_norm.weight", rng.standard_normal(hidden), Q.F32)
    finish(writer)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    write_types(rng)
    write_tiny_llama(rng)
    write_tiny_qwen2(rng)


if __name__ == "__main__":
    main()
