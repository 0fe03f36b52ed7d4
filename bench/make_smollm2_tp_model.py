#!/usr/bin/env python3
"""A SmolLM2-135M-shaped GGUF that tensor parallelism can split 2 (and 4) ways.

SmolLM2-135M has 9 query heads, so `--tensor-parallel-size 2` refuses it. This
writes the same shape where it matters for a decode step's cost (hidden 576, 30
layers, MLP 1536, vocabulary 49152, tied embedding) but with 8 query heads of 72
and 4 key/value heads, random weights quantized to Q4_0 (Q8_0 for the
embedding, as llama.cpp's Q4_0 files do), and the real model's tokenizer and
metadata copied from the bundled GGUF. Only for timing: its text is noise.

    .cache/venvs/gptq/bin/python bench/make_smollm2_tp_model.py \
        models/SmolLM2-135M-Instruct.Q4_1.gguf .cache/bench/smollm2-tp8.gguf

The output belongs in a git-ignored cache (.cache/ or /tmp): never commit weights.
"""
import os
import sys

import gguf
import numpy as np

HEADS, KV_HEADS, HEAD_DIM = 8, 4, 72
# Keys this script sets itself; every other key of the source (tokenizer,
# chat template, rope base, norm epsilon, ...) is copied as it is.
OVERRIDDEN = {"llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
              "general.file_type", "general.name", "general.architecture"}


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in OVERRIDDEN:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def add_quantized(writer: gguf.GGUFWriter, name: str, rows: int, cols: int, qtype, rng) -> None:
    # Scaled like an initialized linear layer, so activations stay finite over 30 layers.
    weights = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float32)
    writer.add_tensor(name, gguf.quants.quantize(weights, qtype), raw_dtype=qtype)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, out = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(source)
    hidden = int(reader.fields["llama.embedding_length"].contents())
    layers = int(reader.fields["llama.block_count"].contents())
    ffn = int(reader.fields["llama.feed_forward_length"].contents())
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    if HEADS * HEAD_DIM != hidden:
        sys.exit(f"{HEADS} heads of {HEAD_DIM} do not make the source's hidden size {hidden}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("SmolLM2-135M-shaped, 8 heads, random Q4_0 (benchmark only)")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    copy_metadata(reader, writer)
    rng = np.random.default_rng(17)
    q4, q8 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0
    add_quantized(writer, "token_embd.weight", vocab, hidden, q8, rng)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    kv = KV_HEADS * HEAD_DIM
    for layer in range(layers):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name, rows, cols in (("attn_q", hidden, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden),
                                 ("attn_output", hidden, hidden), ("ffn_gate", ffn, hidden),
                                 ("ffn_up", ffn, hidden), ("ffn_down", hidden, ffn)):
            add_quantized(writer, prefix + name + ".weight", rows, cols, q4, rng)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out}: {layers} layers, {HEADS} heads of {HEAD_DIM}, {KV_HEADS} kv heads, vocab {vocab}")


if __name__ == "__main__":
    main()
