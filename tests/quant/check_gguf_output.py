#!/usr/bin/env python3
"""`nibble quantize --format gguf` read back by gguf-py, llama.cpp's own Python
package (issue 23), without llama.cpp itself (CI-safe):

  * a tiny F32 llama GGUF (hidden 256, so every module is whole K-quant blocks)
    is made here with gguf-py's GGUFWriter, q/k rows in llama.cpp's order;
  * for every --type nibble writes, GGUFReader opens the file, the key/values are
    the source's (tokenizer, hyperparameters) with general.file_type set, every
    tensor has the recipe's type, and gguf.quants.dequantize of each tensor is
    within the type's error bound of the source tensor *in the file's row order*
    (so q/k rows were put back in llama.cpp's interleaved order, and every byte
    of every block layout means to gguf-py what nibble meant).

    tests/quant/check_gguf_output.py --nibble build/cli/nibble --work DIR
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize

ARGS = None
HIDDEN, FFN, VOCAB, LAYERS, HEADS, KV_HEADS = 256, 512, 64, 2, 4, 2
# Relative squared error bound per type (sum (w - q)^2 / sum w^2 of one tensor).
BOUND = {"Q4_0": 0.02, "Q4_1": 0.02, "Q5_0": 0.006, "Q5_1": 0.006, "Q8_0": 1e-4, "Q4_K": 0.02, "Q5_K": 0.006,
         "Q6_K": 0.0015}
FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K": 14, "Q4_K_M": 15, "Q5_K": 16, "Q6_K": 18}


def make_base(path):
    rng = np.random.default_rng(23)
    writer = GGUFWriter(path, arch="llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    tensors = {}

    def add(name, shape, ones=False):
        # Heavy-ish tails and per-row scales, like trained weights.
        values = np.ones(shape, np.float32) if ones else (
            rng.standard_t(4, size=shape) * 0.02 * rng.lognormal(0, 0.5, size=(shape[0], 1))).astype(np.float32)
        tensors[name] = values
        writer.add_tensor(name, values)

    add("token_embd.weight", (VOCAB, HIDDEN))
    for layer in range(LAYERS):
        b = f"blk.{layer}."
        add(b + "attn_norm.weight", (HIDDEN,), ones=True)
        add(b + "attn_q.weight", (HIDDEN, HIDDEN))
        add(b + "attn_k.weight", (HIDDEN // HEADS * KV_HEADS, HIDDEN))
        add(b + "attn_v.weight", (HIDDEN // HEADS * KV_HEADS, HIDDEN))
        add(b + "attn_output.weight", (HIDDEN, HIDDEN))
        add(b + "ffn_norm.weight", (HIDDEN,), ones=True)
        add(b + "ffn_gate.weight", (FFN, HIDDEN))
        add(b + "ffn_up.weight", (FFN, HIDDEN))
        add(b + "ffn_down.weight", (HIDDEN, FFN))
    add("output_norm.weight", (HIDDEN,), ones=True)
    add("output.weight", (VOCAB, HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def permute(w, n_head):
    """convert_hf_to_gguf.py's q/k permutation (HF rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
            "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def make_hf_folder(folder, tensors):
    """The tiny model as a Hugging Face folder: config.json, F32 model.safetensors
    (written here by hand: an 8-byte header length, a JSON header, the data),
    a byte-level BPE tokenizer.json and a chat template."""
    os.makedirs(folder, exist_ok=True)
    hf = {}
    for name, values in tensors.items():
        stem = name[:-len(".weight")]
        if stem.startswith("blk."):
            _, layer, part = stem.split(".", 2)
            hf_name = f"model.layers.{layer}.{HF_NAMES[part]}.weight"
            if part == "attn_q":
                values = unpermute(values, HEADS)
            elif part == "attn_k":
                values = unpermute(values, KV_HEADS)
        else:
            hf_name = f"{HF_NAMES[stem]}.weight"
        hf[hf_name] = np.ascontiguousarray(values, dtype=np.float32)
    header, offset = {}, 0
    for name, values in hf.items():
        header[name] = {"dtype": "F32", "shape": list(values.shape), "data_offsets": [offset, offset + values.nbytes]}
        offset += values.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for values in hf.values():
            f.write(values.tobytes())
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
              "bos_token_id": 0, "eos_token_id": VOCAB - 1}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    vocab = {f"t{i}": i for i in range(VOCAB - 1)}
    tokenizer = {"version": "1.0", "added_tokens": [{"id": VOCAB - 1, "content": "<eos>", "special": True,
                                                     "single_word": False, "lstrip": False, "rstrip": False,
                                                     "normalized": False}],
                 "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                                       "trim_offsets": True, "use_regex": True},
                 "post_processor": None, "decoder": {"type": "ByteLevel"},
                 "model": {"type": "BPE", "vocab": vocab, "merges": [["t", "1"], "t 2"]}}
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": "{{ hf }}", "eos_token": "<eos>"}, f)
    return hf


def safetensors_bytes(path, prefix):
    """Data bytes of the tensors of a .safetensors file whose names start with prefix
    (compressed-tensors' weight_shape metadata tensors left out)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and k.startswith(prefix) and not k.endswith(".weight_shape"))


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def expected_type(recipe, name):
    """The recipe of quant/gguf_writer.h for this model (rows of 256 or 512)."""
    if name.endswith("norm.weight"):
        return "F32"
    if name == "output.weight":
        return "Q8_0" if recipe == "Q8_0" else "Q6_K"
    if recipe == "Q4_K_M":
        layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
        eighth = max(1, LAYERS // 8)
        more = layer < eighth or layer >= LAYERS - eighth or layer % 3 == 1
        if (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")) and more:
            return "Q6_K"
        return "Q4_K"
    return recipe


class GgufOutput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.TemporaryDirectory(dir=ARGS.work)
        cls.base = os.path.join(cls.work.name, "tiny.f32.gguf")
        cls.tensors = make_base(cls.base)

    @classmethod
    def tearDownClass(cls):
        cls.work.cleanup()

    def quantize(self, recipe, method="rtn"):
        out = os.path.join(self.work.name, f"tiny.{recipe}.gguf")
        proc = subprocess.run([ARGS.nibble, "quantize", "--model", self.base, "--format", "gguf", "--type", recipe,
                               "--method", method, "-o", out, "--threads", "2"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return out

    def test_every_type_reads_back_in_gguf_py(self):
        for recipe in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"]:
            with self.subTest(recipe=recipe):
                reader = GGUFReader(self.quantize(recipe))
                self.assertEqual(field(reader, "general.architecture"), "llama")
                self.assertEqual(field(reader, "general.file_type"), FILE_TYPE[recipe])
                self.assertEqual(field(reader, "tokenizer.ggml.tokens"), [f"t{i}" for i in range(VOCAB)])
                self.assertEqual(field(reader, "tokenizer.chat_template"), "{{ messages }}")
                self.assertEqual(field(reader, "llama.attention.head_count_kv"), KV_HEADS)
                names = [t.name for t in reader.tensors]
                self.assertEqual(names, list(self.tensors))
                for t in reader.tensors:
                    want = expected_type(recipe, t.name)
                    self.assertEqual(t.tensor_type.name, want, t.name)
                    source = self.tensors[t.name]
                    values = dequantize(t.data, t.tensor_type).reshape(source.shape)
                    if want == "F32":
                        np.testing.assert_array_equal(values, source)
                        continue
                    rel = float(np.sum((values - source) ** 2) / np.sum(source ** 2))
                    self.assertLess(rel, BOUND[want], f"{recipe} {t.name} ({want})")

    def test_hugging_face_folder_source(self):
        """From a HF folder: llama.cpp's converter's key/values, GGUF names, q/k rows
        permuted as convert_hf_to_gguf.py's permute() does (written here independently)."""
        folder = os.path.join(self.work.name, "hf")
        hf = make_hf_folder(folder, self.tensors)
        reader = GGUFReader(self.quantize_from(folder, "Q8_0"))
        self.assertEqual(field(reader, "general.architecture"), "llama")
        self.assertEqual(field(reader, "llama.block_count"), LAYERS)
        self.assertEqual(field(reader, "llama.attention.head_count_kv"), KV_HEADS)
        self.assertEqual(field(reader, "llama.rope.dimension_count"), HIDDEN // HEADS)
        self.assertEqual(field(reader, "tokenizer.ggml.model"), "gpt2")
        self.assertEqual(field(reader, "tokenizer.ggml.pre"), "gpt-2")
        self.assertEqual(field(reader, "tokenizer.ggml.tokens"), [f"t{i}" for i in range(VOCAB - 1)] + ["<eos>"])
        self.assertEqual(field(reader, "tokenizer.ggml.token_type"), [1] * (VOCAB - 1) + [3])
        self.assertEqual(field(reader, "tokenizer.ggml.merges"), ["t 1", "t 2"])
        self.assertEqual(field(reader, "tokenizer.ggml.eos_token_id"), VOCAB - 1)
        self.assertEqual(field(reader, "tokenizer.chat_template"), "{{ hf }}")
        self.assertEqual(sorted(t.name for t in reader.tensors), sorted(self.tensors))
        for t in reader.tensors:
            values = dequantize(t.data, t.tensor_type).reshape(self.tensors[t.name].shape)
            # self.tensors holds llama.cpp's row order; the HF folder the rotate-half order.
            if t.name.endswith("norm.weight"):
                self.assertEqual(t.tensor_type.name, "F32")
                np.testing.assert_array_equal(values, self.tensors[t.name])
                continue
            rel = float(np.sum((values - self.tensors[t.name]) ** 2) / np.sum(self.tensors[t.name] ** 2))
            self.assertLess(rel, BOUND["Q8_0"], t.name)

    def quantize_from(self, model, recipe):
        out = os.path.join(self.work.name, f"hf.{recipe}.gguf")
        proc = subprocess.run([ARGS.nibble, "quantize", "--model", model, "--format", "gguf", "--type", recipe,
                               "--method", "rtn", "-o", out, "--threads", "2"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return out

    def test_gptq_folder_is_no_larger_than_the_equal_bit_gguf(self):
        """Issue 23: nibble's 4-bit g32 GPTQ output (the default folder format,
        compressed-tensors: symmetric, so no zero points) takes no more bytes than
        the Q4_0 GGUF nibble writes from the same model, both 4.5 bits per weight
        in the layers. The embedding and lm_head are quantized to 4 bits too, as
        Q4_0 stores this untied model's token_embd (its output gets Q6_K). GPTQ's v1
        layout stores a zero point per group even when symmetric: that is why it is
        not the default, and it is larger."""
        folder = os.path.join(self.work.name, "hf")
        make_hf_folder(folder, self.tensors)
        ids = os.path.join(self.work.name, "calib.json")
        rng = np.random.default_rng(5)
        with open(ids, "w") as f:
            json.dump(rng.integers(0, VOCAB - 1, size=(4, 32)).tolist(), f)
        gguf = self.quantize_from(folder, "Q4_0")

        def gptq(name, extra):
            out = os.path.join(self.work.name, name)
            proc = subprocess.run([ARGS.nibble, "quantize", "--model", folder, "--out", out, "--method", "gptq",
                                   "--bits", "4", "--group-size", "32", "--embedding-bits", "4", "--calib", ids,
                                   "--calib-samples", "4", "--seq-len", "32", "--threads", "2"] + extra,
                                  capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            return out

        default = gptq("gptq-default", [])
        with open(os.path.join(default, "config.json")) as f:
            self.assertEqual(json.load(f)["quantization_config"]["quant_method"], "compressed-tensors")
        # The layers' data: codes, scales and norms. compressed-tensors also stores each
        # module's shape as a 2-element tensor, which GGUF keeps in its tensor infos,
        # outside the data: not counted here, counted in the whole-file comparison.
        layers = safetensors_bytes(os.path.join(default, "model.safetensors"), "model.layers.")
        gguf_layers = sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors if t.name.startswith("blk."))
        self.assertLessEqual(layers, gguf_layers)
        self.assertLessEqual(os.path.getsize(os.path.join(default, "model.safetensors")), os.path.getsize(gguf))
        v1 = gptq("gptq-v1", ["--format", "gptq"])
        self.assertGreater(safetensors_bytes(os.path.join(v1, "model.safetensors"), "model.layers."), gguf_layers)

    def test_target_bpw_mix(self):
        """--target-bpw: at Q4_K's 4.5 bits every module stays Q4_K; at 5.5 the log's
        achieved figure is within the target and the file's module bytes agree with
        it; and the mix has lower KL than plain Q4_K on the calibration text."""
        folder = os.path.join(self.work.name, "hf-bpw")
        make_hf_folder(folder, self.tensors)
        # A vocabulary of single characters (byte-level BPE maps these to themselves),
        # so random text of them is random ids over the whole vocabulary.
        chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        chars += [str(d) for d in range(10)] + ["!"]
        with open(os.path.join(folder, "tokenizer.json")) as f:
            tokenizer = json.load(f)
        tokenizer["model"]["vocab"] = {c: i for i, c in enumerate(chars[:VOCAB - 1])}
        tokenizer["model"]["merges"] = []
        with open(os.path.join(folder, "tokenizer.json"), "w") as f:
            json.dump(tokenizer, f)
        text = os.path.join(self.work.name, "calib-bpw.txt")
        rng = np.random.default_rng(9)
        with open(text, "w") as f:
            f.write("".join(rng.choice(chars[:VOCAB - 1], size=2048)))
        calib = ["--calib", text, "--calib-samples", "8", "--seq-len", "128"]

        def quantize(name, extra):
            out = os.path.join(self.work.name, name)
            proc = subprocess.run([ARGS.nibble, "quantize", "--model", folder, "--format", "gguf", "--method", "rtn",
                                   "-o", out, "--threads", "2", "--json"] + calib + extra, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            return out, json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1]), proc.stderr

        def kl(model):
            proc = subprocess.run([ARGS.nibble, "eval", "--model", model, "--base", folder, "--text", text,
                                   "--max-tokens", "1024", "--window", "128", "--stride", "64", "--threads", "2",
                                   "--json"], capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            return json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])["mean_kl"]

        def module_types(path):
            return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors
                    if t.name.startswith("blk.") and not t.name.endswith("norm.weight")}

        plain, _, _ = quantize("plain.Q4_K.gguf", ["--type", "Q4_K"])
        at_q4k, report, log = quantize("bpw-4.5.gguf", ["--target-bpw", "4.5"])
        self.assertEqual(set(module_types(at_q4k).values()), {"Q4_K"})
        self.assertEqual(report["allocation"]["achieved_bpw"], 4.5)
        self.assertIn("target_bpw module=model.layers.0.self_attn.q_proj type=Q4_K", log)
        mixed, report, log = quantize("bpw-5.5.gguf", ["--target-bpw", "5.5"])
        achieved = report["allocation"]["achieved_bpw"]
        self.assertLessEqual(achieved, 5.5)
        self.assertGreaterEqual(achieved, 5.5 - 0.25)  # 14 modules: a step is up to 0.24 bits of the average
        types = module_types(mixed)
        self.assertGreater(len(set(types.values())), 1, types)
        layer_bytes = sum(int(t.n_bytes) for t in GGUFReader(mixed).tensors
                          if t.name in types)
        layer_weights = sum(int(np.prod(t.shape)) for t in GGUFReader(mixed).tensors if t.name in types)
        self.assertAlmostEqual(8 * layer_bytes / layer_weights, achieved, places=6)
        self.assertIn(f"achieved={achieved:.4f}", log)
        self.assertLess(kl(mixed), kl(plain))

    def test_refuses_a_type_it_cannot_write(self):
        proc = subprocess.run([ARGS.nibble, "quantize", "--model", self.base, "--format", "gguf", "--type", "Q2_K",
                               "--method", "rtn", "-o", os.path.join(self.work.name, "x.gguf")],
                              capture_output=True, text=True)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unknown GGUF type 'Q2_K'", proc.stderr + proc.stdout)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--nibble", required=True)
    parser.add_argument("--work", default=None)
    ARGS, rest = parser.parse_known_args()
    if ARGS.work:
        os.makedirs(ARGS.work, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
