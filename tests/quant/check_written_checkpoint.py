#!/usr/bin/env python3
"""Format validator for checkpoints nibble writes (quant/checkpoint_writer.h), numpy only.

    python3 tests/quant/check_written_checkpoint.py FOLDER [FOLDER ...]

For each folder it re-derives every quantized or sparse module's weights from the raw tensors
with the layout rules of docs/formats.md (the unpacking of check_fixture_formats.py, which is
checked against the tools' own dequantizers, is imported and cross-checks the fast unpacker
here), and checks that the configs carry the keys transformers/GPTQModel, vLLM and
compressed-tensors need. Written independently of the C++ readers and writer. Exits 1 on any
inconsistency, naming the module and what is wrong.

What is checked:
  all      config.json with a Llama-family architecture and quantization_config; one or more
           *.safetensors with __metadata__ format "pt"; every linear module of the config
           (7 per decoder layer, lm_head unless tied) present exactly once, either plain
           (`.weight`, right shape) or in the declared compressed form, never both; the token
           embedding likewise (quantized: GPTQ "embed_tokens": true, a nibble key;
           compressed-tensors target "Embedding").
  GPTQ     quant_method/format/checkpoint_format "gptq" (v1), bits, group_size, desc_act, sym,
           lm_head, pack_dtype int32, meta.quantizer; quantize_config.json equal to config.json's
           quantization_config; dtype float16. Per quantized module: qweight I32 [K*bits/32, N],
           qzeros I32 [G, N*bits/32], scales F16 [G, N], g_idx I32 [K] in range (k // group_size
           without desc_act); stored zero fields never all ones (a true zero of 2^bits, which
           readers disagree on); symmetric zero fields = 2^(bits-1) - 1; finite weights.
           Modules left plain must be excluded by lm_head false or a "-:" dynamic rule.
  compressed-tensors
           quant_method, version, quantization_status "compressed", format pack-quantized,
           config_groups with targets and int weights (num_bits, symmetric, strategy
           group/channel, group_size, actorder, dynamic false), ignore; sparsity_config with
           format, sparsity_structure, targets, ignore, global_sparsity. pack-quantized modules:
           weight_packed I32 [N, ceil(K*bits/32)] with zero padding bits, weight_shape [N, K],
           weight_scale [N, G], weight_zero_point I32 [ceil(N*bits/32), G] iff asymmetric,
           weight_g_idx [K] iff actorder "group"; a "dense" 2:4 sparsity_config's targets must
           follow 2:4 (at most 2 of every 4 codes off the zero point). sparse-24-bitmask:
           compressed [N, K/2], bitmask U8 [N, ceil(K/8)] with exactly 2 of every 4 bits,
           shape [[N], [K]]; sparse-bitmask: compressed 1-D, row_offsets [N] matching the
           bitmask, no stored zeros.
"""
import json
import os
import re
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_fixture_formats import DTYPES, bitstream  # noqa: E402  (the independent reference unpacker)

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SPARSE_PARTS = (".compressed", ".bitmask", ".shape", ".row_offsets")
GPTQ_PARTS = (".qweight", ".qzeros", ".scales", ".g_idx")
CT_PARTS = (".weight_packed", ".weight_shape", ".weight_scale", ".weight_zero_point", ".weight_g_idx")


class Invalid(Exception):
    pass


def require(condition, message):
    if not condition:
        raise Invalid(message)


# ---- Reading.

def read_folder_tensors(folder):
    """All tensors of the folder's safetensors files: name -> (dtype string, numpy array)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    require(files, "no .safetensors file")
    tensors = {}
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        require(meta.get("format") == "pt", f"{name}: __metadata__ format is {meta.get('format')!r}, not 'pt' "
                                            "(transformers refuses such files)")
        for key, info in header.items():
            if key == "__metadata__":
                continue
            require(key not in tensors, f"tensor {key} appears in two files")
            a, b = info["data_offsets"]
            require(info["dtype"] in DTYPES, f"{key}: unknown dtype {info['dtype']}")
            array = np.frombuffer(data[8 + n + a:8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
            tensors[key] = (info["dtype"], array)
    return tensors


def as_float(dtype, array):
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def unpack_rows(words, bits, count):
    """Row r of int32 `words` [rows, W] is an LSB-first stream of `count` `bits`-bit values."""
    w = np.ascontiguousarray(words).view(np.uint32).astype(np.uint64)
    w = np.concatenate([w, np.zeros((w.shape[0], 1), dtype=np.uint64)], axis=1)
    bit = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    word, shift = bit // np.uint64(32), bit % np.uint64(32)
    pair = w[:, word] | (w[:, word + np.uint64(1)] << np.uint64(32))
    return ((pair >> shift) & np.uint64((1 << bits) - 1)).astype(np.int64)


def cross_check(words_1d, bits, count, fast, what):
    """The fast unpacker against check_fixture_formats.bitstream on one stream."""
    reference = bitstream(np.asarray(words_1d), bits, count)
    require(np.array_equal(reference, fast), f"{what}: vectorised and reference unpacking disagree")


def stream_padding_is_zero(words, bits, count):
    total = words.shape[1] * 32
    used = count * bits
    if used >= total:
        return True
    last = words[:, -1].view(np.uint32).astype(np.uint64)
    spare = total - used  # < 32
    return bool(((last >> np.uint64(32 - spare)) == 0).all())


# ---- The model's linear modules.

EMBEDDING = "model.embed_tokens"


def linear_modules(config):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    mlp = config["intermediate_size"]
    shapes = {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv_heads * head_dim, hidden),
              "self_attn.v_proj": (kv_heads * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
              "mlp.gate_proj": (mlp, hidden), "mlp.up_proj": (mlp, hidden), "mlp.down_proj": (hidden, mlp)}
    out = {}
    for layer in range(config["num_hidden_layers"]):
        for part in PROJECTIONS:
            out[f"model.layers.{layer}.{part}"] = shapes[part]
    if not config.get("tie_word_embeddings", False):
        out["lm_head"] = (config["vocab_size"], hidden)
    # The token embedding: plain, or quantized like a linear module (nibble's default).
    out[EMBEDDING] = (config["vocab_size"], hidden)
    return out


def expect_tensor(tensors, name, dtypes, shape):
    require(name in tensors, f"missing tensor {name}")
    dtype, array = tensors[name]
    require(dtype in dtypes, f"{name}: dtype {dtype}, expected {'/'.join(dtypes)}")
    require(list(array.shape) == list(shape), f"{name}: shape {list(array.shape)}, expected {list(shape)}")
    return array


def expect_plain(tensors, module, shape):
    for part in GPTQ_PARTS + CT_PARTS + SPARSE_PARTS:
        require(module + part not in tensors, f"{module}: left plain by the config but {module + part} is stored")
    expect_tensor(tensors, module + ".weight", ("F16", "BF16", "F32"), shape)


def require_keys(obj, keys, where):
    missing = [k for k in keys if k not in obj]
    require(not missing, f"{where}: missing keys {missing}")


# ---- GPTQ v1.

def gptq_dynamic_override(module, q):
    """The first "+:" (or bare) dynamic rule matching `module`, as GPTQModel applies them."""
    for key, value in (q.get("dynamic") or {}).items():
        pattern = key[2:] if key.startswith(("-:", "+:")) else key
        if re.match(pattern, module):
            return {} if key.startswith("-:") else value
    return {}


def check_gptq_module(tensors, module, shape, q):
    n, k = shape
    override = gptq_dynamic_override(module, q)
    bits, group_size = override.get("bits", q["bits"]), override.get("group_size", q["group_size"])
    require(module + ".weight" not in tensors, f"{module}: quantized but {module}.weight is still stored")
    require(k * bits % 32 == 0 and n * bits % 32 == 0, f"{module}: [{n}, {k}] does not fill int32 words")
    groups = -(-k // group_size) if group_size > 0 else 1
    qweight = expect_tensor(tensors, module + ".qweight", ("I32",), (k * bits // 32, n))
    qzeros = expect_tensor(tensors, module + ".qzeros", ("I32",), (groups, n * bits // 32))
    scales = expect_tensor(tensors, module + ".scales", ("F16",), (groups, n))
    g_idx = expect_tensor(tensors, module + ".g_idx", ("I32",), (k,)).astype(np.int64)
    require(((g_idx >= 0) & (g_idx < groups)).all(), f"{module}: g_idx outside [0, {groups})")
    if not q["desc_act"]:
        contiguous = np.arange(k) // group_size if group_size > 0 else np.zeros(k, dtype=np.int64)
        require(np.array_equal(g_idx, contiguous), f"{module}: desc_act is off but g_idx is not k // group_size")
    codes = unpack_rows(qweight.T, bits, k)  # [n, k]
    stored_zeros = unpack_rows(qzeros, bits, n)  # [groups, n]
    cross_check(qweight[:, 0], bits, k, codes[0], module + ".qweight")
    cross_check(qzeros[0], bits, n, stored_zeros[0], module + ".qzeros")
    all_ones = (1 << bits) - 1
    bad = np.argwhere(stored_zeros == all_ones)
    require(bad.size == 0, f"{module}: qzeros field (group {bad[0][0] if bad.size else 0}, column "
                           f"{bad[0][1] if bad.size else 0}) is all ones: a v1 zero of 2^bits, which exllama/vLLM "
                           "and GPTQModel read differently")
    if q["sym"]:
        require((stored_zeros == (1 << (bits - 1)) - 1).all(), f"{module}: sym but zero fields are not 2^(bits-1)-1")
    zeros = stored_zeros + 1
    s = scales.astype(np.float32)
    weight = s[g_idx].T * (codes - zeros[g_idx].T).astype(np.float32)  # [n, k]
    require(np.isfinite(weight).all(), f"{module}: non-finite dequantized weights")
    return weight


def gptq_module_quantized(module, q):
    if module == EMBEDDING:  # nibble's own key; GPTQ tools never quantize the embedding
        return bool(q.get("embed_tokens", False))
    if module == "lm_head":
        return bool(q.get("lm_head", False))
    for key in (q.get("dynamic") or {}):
        pattern = key[2:] if key.startswith(("-:", "+:")) else key
        if re.match(pattern, module):
            return not key.startswith("-:")
    return True


def check_gptq(folder, config, q, tensors):
    require_keys(q, ["bits", "group_size", "desc_act", "sym", "lm_head", "quant_method", "checkpoint_format"],
                 "quantization_config")
    require(q["quant_method"] == "gptq", f"quant_method {q['quant_method']!r}")
    require(q["checkpoint_format"] == "gptq", f"checkpoint_format {q['checkpoint_format']!r}, expected 'gptq' (v1)")
    require(q.get("format", "gptq") == "gptq", f"format {q.get('format')!r} disagrees with checkpoint_format")
    require(q.get("pack_dtype", "int32") == "int32", f"pack_dtype {q.get('pack_dtype')!r}")
    require(q["bits"] in (2, 3, 4, 8), f"bits {q['bits']}")
    require(q["group_size"] == -1 or q["group_size"] > 0, f"group_size {q['group_size']}")
    require(isinstance((q.get("meta") or {}).get("quantizer"), list), "meta.quantizer must be a list of strings")
    path = os.path.join(folder, "quantize_config.json")
    require(os.path.exists(path), "no quantize_config.json (AutoGPTQ and vLLM's older loaders read it)")
    with open(path) as f:
        require(json.load(f) == q, "quantize_config.json differs from config.json's quantization_config")
    dtype = config.get("dtype", config.get("torch_dtype"))
    require(dtype == "float16", f"config dtype {dtype!r}: GPTQ kernels run float16")
    results = []
    for module, shape in linear_modules(config).items():
        if gptq_module_quantized(module, q):
            check_gptq_module(tensors, module, shape, q)
            results.append((module, "gptq"))
        else:
            expect_plain(tensors, module, shape)
            results.append((module, "plain"))
    return results


# ---- compressed-tensors.

def ct_rank(module, targets):
    """How well compressed-tensors targets match: 3 exact name, 2 "re:" regex (re.match), 1 class
    (Linear, Embedding), 0 none; the best-matching scheme applies."""
    best = 0
    for target in targets or []:
        if target == module:
            best = 3
        elif target.startswith("re:") and re.match(target[3:], module):
            best = max(best, 2)
        elif (target in ("Linear", "LinearBase") and module != EMBEDDING) or (target == "Embedding" and
                                                                             module == EMBEDDING):
            best = max(best, 1)
    return best


def ct_match(module, targets):
    return ct_rank(module, targets) > 0


def check_ct_packed(tensors, module, shape, args, dense_2_4):
    n, k = shape
    bits = args["num_bits"]
    offset = 1 << (bits - 1)
    require(module + ".weight" not in tensors, f"{module}: quantized but {module}.weight is still stored")
    words = -(-k * bits // 32)
    strategy = args["strategy"]
    groups = -(-k // args["group_size"]) if strategy == "group" else 1
    packed = expect_tensor(tensors, module + ".weight_packed", ("I32",), (n, words))
    stored_shape = expect_tensor(tensors, module + ".weight_shape", ("I64", "I32"), (2,))
    require(list(stored_shape) == [n, k], f"{module}.weight_shape is {list(stored_shape)}, expected {[n, k]}")
    scale_dtype, _ = tensors.get(module + ".weight_scale", ("F16", None))
    scale = as_float(scale_dtype, expect_tensor(tensors, module + ".weight_scale", ("F16", "BF16", "F32"),
                                                (n, groups)))
    require(stream_padding_is_zero(packed, bits, k), f"{module}.weight_packed: padding bits are not zero")
    codes = unpack_rows(packed, bits, k)
    cross_check(packed[0], bits, k, codes[0], module + ".weight_packed")
    if args["symmetric"]:
        require(module + ".weight_zero_point" not in tensors, f"{module}: symmetric but a zero point is stored")
        zeros = np.full((n, groups), offset, dtype=np.int64)
    else:
        zp = expect_tensor(tensors, module + ".weight_zero_point", ("I32",), (-(-n * bits // 32), groups))
        zeros = unpack_rows(np.ascontiguousarray(zp.T), bits, n).T  # [n, groups]
        cross_check(zp[:, 0], bits, n, zeros[:, 0], module + ".weight_zero_point")
    act_order = args.get("actorder") in ("group", "dynamic", True)
    if act_order:
        g_idx = expect_tensor(tensors, module + ".weight_g_idx", ("I32", "I64"), (k,)).astype(np.int64)
        require(((g_idx >= 0) & (g_idx < groups)).all(), f"{module}.weight_g_idx outside [0, {groups})")
    else:
        require(module + ".weight_g_idx" not in tensors, f"{module}: weight_g_idx stored without actorder 'group'")
        g_idx = np.arange(k) // args["group_size"] if strategy == "group" else np.zeros(k, dtype=np.int64)
    weight = scale[:, g_idx] * (codes - zeros[:, g_idx]).astype(np.float32)
    require(np.isfinite(weight).all(), f"{module}: non-finite dequantized weights")
    if dense_2_4:
        require(k % 4 == 0, f"{module}: 2:4 declared but {k} columns")
        nonzero = (codes != zeros[:, g_idx]).reshape(n, k // 4, 4).sum(-1)
        require((nonzero <= 2).all(), f"{module}: the sparsity_config declares 2:4 but a run of 4 has "
                                      f"{int(nonzero.max())} codes off the zero point")
    return weight


def check_ct_sparse(tensors, module, shape, sparse_format):
    n, k = shape
    require(module + ".weight" not in tensors, f"{module}: sparse-compressed but {module}.weight is still stored")
    mask = expect_tensor(tensors, module + ".bitmask", ("U8",), (n, -(-k // 8)))
    keep = np.unpackbits(mask, axis=-1, count=k, bitorder="little").astype(bool)
    dtype, values = tensors.get(module + ".compressed", (None, None))
    require(values is not None, f"missing tensor {module}.compressed")
    require(dtype in ("F16", "BF16", "F32"), f"{module}.compressed: dtype {dtype}")
    if sparse_format == "sparse-24-bitmask":
        require(k % 4 == 0, f"{module}: 2:4 needs a multiple of 4 columns")
        stored = expect_tensor(tensors, module + ".shape", ("I64", "I32"), (2, 1))
        require(list(stored.reshape(-1)) == [n, k], f"{module}.shape is {list(stored.reshape(-1))}")
        require(list(values.shape) == [n, k // 2], f"{module}.compressed: shape {list(values.shape)}")
        per_run = keep.reshape(n, k // 4, 4).sum(-1)
        require((per_run == 2).all(), f"{module}.bitmask: a run of 4 has {int(per_run.min())}..{int(per_run.max())} "
                                      "bits set, sparse-24-bitmask needs exactly 2")
        require(module + ".row_offsets" not in tensors, f"{module}: row_offsets in a sparse-24-bitmask module")
    else:
        stored = expect_tensor(tensors, module + ".shape", ("I64", "I32"), (2,))
        require(list(stored) == [n, k], f"{module}.shape is {list(stored)}")
        require(values.ndim == 1 and values.shape[0] == int(keep.sum()),
                f"{module}.compressed: {values.shape} values for {int(keep.sum())} set bits")
        counts = keep.sum(-1)
        offsets = expect_tensor(tensors, module + ".row_offsets", ("I64", "I32"), (n,))
        require(np.array_equal(offsets, np.cumsum(counts) - counts), f"{module}.row_offsets disagree with the bitmask")
        require((as_float(dtype, values) != 0).all(), f"{module}: sparse-bitmask stores a zero value")
    weight = np.zeros((n, k), dtype=np.float32)
    weight[keep] = as_float(dtype, values).reshape(-1)
    require(np.isfinite(weight).all(), f"{module}: non-finite weights")
    return weight


def check_ct_config(q):
    require_keys(q, ["quant_method", "version"], "quantization_config")
    require(q["quant_method"] == "compressed-tensors", f"quant_method {q['quant_method']!r}")
    groups = q.get("config_groups") or {}
    for name, group in groups.items():
        where = f"config_groups.{name}"
        require_keys(group, ["targets", "weights"], where)
        fmt = group.get("format") or q.get("format")
        require(fmt == "pack-quantized", f"{where}: format {fmt!r}, expected pack-quantized")
        w = group["weights"]
        require_keys(w, ["num_bits", "type", "symmetric", "strategy", "group_size", "actorder", "dynamic"],
                     where + ".weights")
        require(w["type"] == "int" and w["dynamic"] is False, f"{where}: weights must be static int")
        require(w["num_bits"] in (2, 3, 4, 8), f"{where}: num_bits {w['num_bits']}")
        require(w["strategy"] in ("group", "channel"), f"{where}: strategy {w['strategy']!r}")
        if w["strategy"] == "group":
            require(isinstance(w["group_size"], int) and w["group_size"] > 0, f"{where}: group_size {w['group_size']}")
        else:
            require(w["group_size"] in (None, -1), f"{where}: channel strategy with group_size {w['group_size']}")
        require(w["actorder"] in (None, "group", "weight", "static"), f"{where}: actorder {w['actorder']!r}")
    if groups:
        require_keys(q, ["format", "quantization_status", "ignore"], "quantization_config")
        require(q["quantization_status"] == "compressed", f"quantization_status {q['quantization_status']!r}")
    sparsity = q.get("sparsity_config") or {}
    if sparsity:
        require_keys(sparsity, ["format", "sparsity_structure", "targets", "ignore", "global_sparsity"],
                     "sparsity_config")
        require(sparsity["format"] in ("sparse-24-bitmask", "sparse-bitmask", "dense"),
                f"sparsity_config format {sparsity['format']!r}")
        require(sparsity["sparsity_structure"] in ("2:4", "unstructured"),
                f"sparsity_structure {sparsity['sparsity_structure']!r}")
        require(0.0 <= sparsity["global_sparsity"] <= 1.0, f"global_sparsity {sparsity['global_sparsity']}")
        if sparsity["format"] == "sparse-24-bitmask":
            require(sparsity["sparsity_structure"] == "2:4", "sparse-24-bitmask needs sparsity_structure 2:4")
    require(groups or sparsity, "neither config_groups nor sparsity_config: nothing is compressed")
    return groups, sparsity


def check_compressed_tensors(folder, config, q, tensors):
    groups, sparsity = check_ct_config(q)
    results = []
    for module, shape in linear_modules(config).items():
        scheme = None
        if not ct_match(module, q.get("ignore")):
            ranked = [(ct_rank(module, group["targets"]), group) for group in groups.values()]
            ranked = [entry for entry in ranked if entry[0] > 0]
            if ranked:
                scheme = max(ranked, key=lambda entry: entry[0])[1]
        sparse = bool(sparsity) and ct_match(module, sparsity["targets"]) and not ct_match(module, sparsity["ignore"])
        if scheme is not None:
            dense_2_4 = sparse and sparsity["sparsity_structure"] == "2:4"
            check_ct_packed(tensors, module, shape, scheme["weights"], dense_2_4)
            results.append((module, "pack-quantized" + (" 2:4" if dense_2_4 else "")))
        elif sparse and sparsity["format"] != "dense":
            check_ct_sparse(tensors, module, shape, sparsity["format"])
            results.append((module, sparsity["format"]))
        else:
            expect_plain(tensors, module, shape)
            results.append((module, "plain"))
    return results


# ---- Driver.

def check_folder(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    archs = set(config.get("architectures") or [])
    require(archs & ARCHITECTURES, f"architectures {sorted(archs)} is not a Llama-family model")
    q = config.get("quantization_config")
    require(isinstance(q, dict), "config.json has no quantization_config")
    tensors = read_folder_tensors(folder)
    method = q.get("quant_method")
    if method == "gptq":
        results = check_gptq(folder, config, q, tensors)
    elif method == "compressed-tensors":
        results = check_compressed_tensors(folder, config, q, tensors)
    else:
        raise Invalid(f"quant_method {method!r} is neither gptq nor compressed-tensors")
    require("model.norm.weight" in tensors, "missing tensor model.norm.weight")
    return results


def main(folders):
    if not folders:
        print(__doc__.strip().split("\n\n")[1])
        return 2
    failures = 0
    for folder in folders:
        try:
            results = check_folder(folder)
            kinds = {}
            for _, kind in results:
                kinds[kind] = kinds.get(kind, 0) + 1
            summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
            print(f"ok   {folder}: {summary}")
        except (Invalid, OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            failures += 1
            print(f"FAIL {folder}: {type(e).__name__ + ': ' if not isinstance(e, Invalid) else ''}{e}")
    print(f"{len(folders) - failures} valid, {failures} invalid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
