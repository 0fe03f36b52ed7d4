#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (committed; run again after changing this).

Seeds are small and made from the repository's own files or synthetically, never
from model weights:
  gguf/            tiny synthetic GGUF models (gguf==0.19.0, tests/requirements.txt):
                   llama and qwen2 metadata, every tensor type the reader knows, a
                   byte-level BPE vocabulary; plus truncated copies
  safetensors/     byte 0 picks the file (fuzz/harness/safetensors.cpp): a small
                   synthetic model.safetensors, the repository's tiny-model and
                   quantized-fixture config.json and quantize_config.json files
  tokenizer/       texts to encode and id strings to decode, for both tokenizers
  jinja/           chat templates (the e2e ChatML one, SmolLM2's own when the model
                   is there, hand-written ones using macros, filters, namespace,
                   loop controls) each with messages
  openai_request/  completion and chat request bodies
  http_request/    raw HTTP/1.x requests: keep-alive, pipelining, chunked bodies,
                   Expect: 100-continue, framing the server must reject

  python3 fuzz/make_seeds.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import glob
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(harness, data, name=None):
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.join(CORPUS, harness)
    os.makedirs(directory, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


BPE_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "Ġa", "ab", "abc", "Ċ", "h", "i", "hi"]
BPE_MERGES = ["Ġ a", "a b", "ab c", "h i"]


def gguf_model(arch, tensor_types):
    import gguf
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.gguf")
        writer = gguf.GGUFWriter(path, arch)
        hidden, layers, heads, vocab = 32, 1, 2, len(BPE_TOKENS)
        writer.add_context_length(64)
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(64)
        writer.add_block_count(layers)
        writer.add_head_count(heads)
        writer.add_head_count_kv(1)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0)
        writer.add_vocab_size(vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm" if arch == "llama" else "qwen2")
        writer.add_token_list(BPE_TOKENS)
        writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
        writer.add_token_merges(BPE_MERGES)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
        rng = np.random.default_rng(0)
        shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,),
                  "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (hidden // 2, hidden),
                  "blk.0.attn_v.weight": (hidden // 2, hidden), "blk.0.attn_output.weight": (hidden, hidden),
                  "blk.0.ffn_gate.weight": (64, hidden), "blk.0.ffn_up.weight": (64, hidden),
                  "blk.0.ffn_down.weight": (hidden, 64), "blk.0.attn_norm.weight": (hidden,),
                  "blk.0.ffn_norm.weight": (hidden,)}
        for i, (name, shape) in enumerate(shapes.items()):
            data = rng.standard_normal(shape).astype(np.float32)
            kind = tensor_types[i % len(tensor_types)] if len(shape) == 2 else gguf.GGMLQuantizationType.F32
            if kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(name, data.astype(np.float16))
            elif kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, data)
            else:
                packed = gguf.quants.quantize(data, kind)
                writer.add_tensor(name, packed, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(path, "rb") as f:
            return f.read()


def gguf_seeds():
    import gguf
    q = gguf.GGMLQuantizationType
    for arch, types in [("llama", [q.F32, q.F16]), ("llama", [q.Q8_0, q.Q4_0, q.Q4_1]), ("qwen2", [q.BF16, q.F16])]:
        data = gguf_model(arch, types)
        write("gguf", data)
        # The header and metadata alone (the tensor data cut off): the size checks' seed.
        write("gguf", data[: min(len(data), 1500)])


def safetensors_file(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, array, dtype in tensors:
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds():
    rng = np.random.default_rng(1)
    write("safetensors", b"\x00" + safetensors_file([
        ("model.embed_tokens.weight", rng.standard_normal((4, 8)).astype(np.float32), "F32"),
        ("model.norm.weight", np.ones(8, np.float16), "F16"),
        ("lm_head.weight", rng.integers(0, 65535, (4, 8), dtype=np.uint16), "BF16"),
        ("qweight", rng.integers(-2**31, 2**31 - 1, (2, 4), dtype=np.int32), "I32"),
        ("zero_size", np.zeros((0, 3), np.float32), "F32"),
    ], metadata={"format": "pt"}))
    write("safetensors", b"\x00" + safetensors_file([]))
    for config in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "tiny", "*", "config.json")) +
                         glob.glob(os.path.join(ROOT, "tests", "quant", "fixtures", "*", "config.json"))):
        with open(config, "rb") as f:
            write("safetensors", b"\x01" + f.read())
    for quantize in sorted(glob.glob(os.path.join(ROOT, "tests", "quant", "fixtures", "*", "quantize_config.json"))):
        with open(quantize, "rb") as f:
            write("safetensors", b"\x02" + f.read())


TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnewlines", "<|im_start|>user\nhi<|im_end|>",
         "naïve café — 日本語のテキスト 🙂👍🏽", "1234567890 3.14159 -42", "don't won't I'm",
         "<s>[INST] hi [/INST]", "\xff\xfe broken utf-8 \xc3", "a" * 200]


def tokenizer_seeds():
    for tokenizer in (0, 1):
        for text in TEXTS:
            data = text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1")
            write("tokenizer", bytes([tokenizer]) + data)
        ids = [1, 2, 3, 100, 200, 300, 1000, 30000, 49151, 31999, 0]
        write("tokenizer", bytes([tokenizer | 2]) + b"".join(struct.pack("<H", i) for i in ids))


CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEMPLATES = [
    CHATML,
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}<<SYS>>{{ m.content | trim }}<</SYS>>"
    "{% elif m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}"
    "{% endfor %}",
    "{% macro render(m, depth=0) %}{{ m.role | upper }}: {{ m.content | default('') }}{% endmacro %}"
    "{% for m in messages %}{{ render(m) }}{% if loop.last %}!{% endif %}{% endfor %}",
    "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'system' %}"
    "{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}{{ messages | length }}"
    "{{ tools | tojson }}{% for i in range(3) %}{{ i }}{% if i == 1 %}{% break %}{% endif %}{% endfor %}",
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    "{{ messages | map(attribute='content') | join(', ') }}{{ strftime_now('%d %b %Y') }}",
    "{%- for m in messages -%}\n  {{- m.content[1:3] ~ (m.name if m.name is defined else '') -}}\n"
    "{%- endfor -%}{{ 'x' * 3 }}{{ [1, 2, 3] | sum }}{{ {'a': 1}.items() | list }}{{ 'A-b'.split('-') }}",
]
MESSAGES = [
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "only {{ user }} <|im_end|>"}],
    [],
]


def jinja_seeds(model):
    templates = list(TEMPLATES)
    if model and os.path.exists(model):
        import gguf
        reader = gguf.GGUFReader(model)
        field = reader.fields["tokenizer.chat_template"]
        templates.append(bytes(field.parts[field.data[0]]).decode())
    for i, template in enumerate(templates):
        write("jinja", template.encode() + b"\0" + json.dumps(MESSAGES[i % len(MESSAGES)]).encode())


def openai_seeds():
    bodies = [
        {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "n": 2,
         "stop": ["\n", "."], "logprobs": 2, "echo": True, "seed": 7},
        {"model": "m", "prompt": [[1, 2, 3], "text"], "stream": True, "stream_options": {"include_usage": True},
         "logit_bias": {"50": -100, "7": 5.5}, "best_of": 3, "n": 2, "frequency_penalty": 0.5},
        {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi", "name": "x"},
                                    {"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
         "max_completion_tokens": 16, "logprobs": True, "top_logprobs": 3, "user": "u", "ignore_eos": True},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "temperature": 0,
         "presence_penalty": -2, "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1},
    ]
    for body in bodies:
        write("openai_request", json.dumps(body))
    write("openai_request", '{"prompt": "x", "max_tokens": 1e400, "n": 1.0, "temperature": -0.0}')
    write("openai_request", '[1, 2]')


HTTP = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    b"{\"prompt\":1}\n",
    b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"POST /stream HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
    b"GARBAGE\r\n\r\n",
]


def http_seeds():
    for request in HTTP:
        write("http_request", request)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = parser.parse_args()
    gguf_seeds()
    safetensors_seeds()
    tokenizer_seeds()
    jinja_seeds(args.model)
    openai_seeds()
    http_seeds()


if __name__ == "__main__":
    main()
