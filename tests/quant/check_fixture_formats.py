#!/usr/bin/env python3
"""Independent, numpy-only unpacker for the fixtures in tests/quant/fixtures/.

It re-derives each fixture's dequantized layer (dequant_<module>.f32, written by the tools'
own code) from the raw tensors in model.safetensors, using only the layout rules written down
below and in README.md. It is an executable spec for nibble's C++ unpackers: if it passes, the
rules are right. Needs only numpy (safetensors is parsed by hand).

    python3 tests/quant/check_fixture_formats.py [fixtures_dir]

Layout rules (W is [out_features, in_features]; "bitstream" = values of `bits` bits laid
end to end, least-significant bit first, across consecutive little-endian int32 words, so a
3-bit value may straddle two words; for 2/4/8 bits that is simply value k of a word at bit
offset bits*k):

GPTQ (GPTQModel, checkpoint_format gptq = v1, gptq_v2 = v2)
  qweight int32 [in*bits/32, out]  : column o is the bitstream of q[0..in-1, o] (packed along IN)
  qzeros  int32 [groups, out*bits/32]: row g is the bitstream of z[g, 0..out-1] (packed along OUT)
  scales  fp16  [groups, out]
  g_idx   int32 [in]                : group of each input channel (saved even without act-order;
                                      then it is i // group_size; group_size -1 => all 0)
  v1: zero = stored + 1 ; v2: zero = stored
  W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])

AWQ GEMM (AutoAWQ / GPTQModel format "gemm")
  qweight int32 [in, out/8], qzeros int32 [groups, out/8], scales fp16 [groups, out]
  packed along OUT, 8 nibbles per word; nibble k (bits 4k..4k+3) of word j holds output
  column 8*j + AWQ_ORDER[k], AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]; no g_idx, no +1
  W[o, i] = scales[i // group, o] * (q[i, o] - z[i // group, o])

compressed-tensors pack-quantized
  weight_packed     int32 [out, ceil(in*bits/32)] : row o is the bitstream of u[o, 0..in-1]
  weight_scale      fp16  [out, groups]  (groups = 1 for channel-wise)
  weight_zero_point int32 [ceil(out*bits/32), groups] (asymmetric only): column g is the
                    bitstream of u over OUT (packed along dim 0)
  weight_shape      int64 [2] = [out, in]
  stored values are offset by 2**(bits-1): q = u - 2**(bits-1), zp = u_zp - 2**(bits-1)
  W[o, i] = weight_scale[o, i // group] * (q[o, i] - zp[o, i // group])   (zp = 0 if symmetric)

compressed-tensors sparse-24-bitmask
  compressed fp16  [out, in/2] : the kept values of each row, in column order
  bitmask    uint8 [out, ceil(in/8)] : bit j (LSB first) of byte k flags column 8k + j as kept;
                                       exactly 2 of every 4 columns are flagged
  shape      int64 [2, 1] = [[out], [in]]
"""
import json
import os
import struct
import sys

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I32": np.int32, "I64": np.int64,
          "U8": np.uint8, "I8": np.int8, "I16": np.int16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def bitstream(words, bits, count):
    """Unpacks `count` unsigned `bits`-bit values from a 1-D array of int32 words."""
    w = words.astype(np.uint32).astype(np.uint64)
    out = np.empty(count, dtype=np.int64)
    for k in range(count):
        bit = k * bits
        word, shift = divmod(bit, 32)
        v = int(w[word]) >> shift
        if shift + bits > 32:
            v |= int(w[word + 1]) << (32 - shift)
        out[k] = v & ((1 << bits) - 1)
    return out


def gptq_weight(t, p, bits, v1):
    qweight, qzeros, scales, g_idx = (t[p + s] for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
    out = scales.shape[1]
    inn = g_idx.shape[0]
    q = np.stack([bitstream(qweight[:, o], bits, inn) for o in range(out)], axis=1)  # [in, out]
    z = np.stack([bitstream(qzeros[g], bits, out) for g in range(qzeros.shape[0])])  # [groups, out]
    if v1:
        z = z + 1
    g = g_idx.astype(np.int64)
    w = scales.astype(np.float32)[g] * (q - z[g]).astype(np.float32)  # [in, out]
    return w.T


def awq_weight(t, p, bits, group):
    assert bits == 4
    qweight, qzeros, scales = (t[p + s] for s in (".qweight", ".qzeros", ".scales"))

    def unpack(words):  # [rows, out/8] -> [rows, out]
        w = words.astype(np.uint32)
        res = np.empty((w.shape[0], w.shape[1] * 8), dtype=np.int64)
        for k in range(8):
            res[:, AWQ_ORDER[k]::8] = (w >> (4 * k)) & 0xF
        return res

    q, z = unpack(qweight), unpack(qzeros)
    gi = np.arange(q.shape[0]) // group
    w = scales.astype(np.float32)[gi] * (q - z[gi]).astype(np.float32)
    return w.T


def ct_pack_weight(t, p, args):
    bits, offset = args["num_bits"], 1 << (args["num_bits"] - 1)
    out, inn = (int(x) for x in t[p + ".weight_shape"])
    packed, scale = t[p + ".weight_packed"], t[p + ".weight_scale"].astype(np.float32)
    q = np.stack([bitstream(packed[o], bits, inn) for o in range(out)]) - offset  # [out, in]
    groups = scale.shape[1]
    if p + ".weight_zero_point" in t:
        zp_packed = t[p + ".weight_zero_point"]
        zp = np.stack([bitstream(zp_packed[:, g], bits, out) for g in range(groups)], axis=1) - offset
    else:
        zp = np.zeros((out, groups), dtype=np.int64)
    group = inn if args["strategy"] == "channel" else args["group_size"]
    gi = np.arange(inn) // group
    return scale[:, gi] * (q - zp[:, gi]).astype(np.float32)


def ct_sparse24_weight(t, p):
    out, inn = (int(x) for x in t[p + ".shape"].reshape(-1))
    vals, mask = t[p + ".compressed"], t[p + ".bitmask"]
    keep = np.unpackbits(mask, axis=-1, count=inn, bitorder="little").astype(bool)
    assert (keep.reshape(out, -1, 4).sum(-1) == 2).all(), "not exactly 2 of 4 kept"
    w = np.zeros((out, inn), dtype=np.float32)
    w[keep] = vals.astype(np.float32).reshape(-1)
    return w


def check(fixtures):
    with open(os.path.join(fixtures, "manifest.json")) as f:
        manifest = json.load(f)
    failures = 0
    for rec in manifest["fixtures"]:
        folder = os.path.join(fixtures, rec["folder"])
        t = {}
        for fn in rec["files"]:
            if fn.endswith(".safetensors"):
                t.update(read_safetensors(os.path.join(folder, fn)))
        with open(os.path.join(folder, "config.json")) as f:
            qc = json.load(f)["quantization_config"]
        p = rec["dequant"]["module"]
        if rec["format"] == "gptq":
            w = gptq_weight(t, p, rec["bits"], v1=rec["checkpoint_format"] == "gptq")
        elif rec["format"] == "awq":
            w = awq_weight(t, p, rec["bits"], rec["group_size"])
        elif qc.get("config_groups"):
            (grp,) = qc["config_groups"].values()
            assert grp["format"] == "pack-quantized", grp["format"]
            w = ct_pack_weight(t, p, grp["weights"])
        elif (qc.get("sparsity_config") or {}).get("format") == "sparse-24-bitmask":
            w = ct_sparse24_weight(t, p)
        else:
            raise ValueError(f"{rec['name']}: unknown layout")
        ref = np.fromfile(os.path.join(folder, rec["dequant"]["file"]), dtype="<f4").reshape(rec["dequant"]["shape"])
        exact = np.array_equal(w, ref)
        diff = float(np.abs(w - ref).max())
        logits_ok = all(
            np.fromfile(os.path.join(folder, fn), dtype="<f4").size == s[0] * s[1]
            for fn, s in zip(rec["logits_files"], rec["logits_shape"])
        )
        ok = exact and logits_ok
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {rec['name']:28s} {rec['format']:18s} {p} {list(ref.shape)} "
              f"bit-exact={exact} max|diff|={diff:.3g}")
    print(f"{len(manifest['fixtures']) - failures} passed, {failures} failed")
    return failures


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(1 if check(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "fixtures")) else 0)
