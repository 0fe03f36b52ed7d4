#!/usr/bin/env python3
"""Calibration and evaluation text for nibble's compressor, from files every Debian machine has.

  calib.txt  docstrings of a fixed list of Python standard-library modules (the text
             tests/reference/make_smollm2_gptq.py feeds GPTQModel, so both tools calibrate
             on the same English);
  heldout.txt  the same docstrings from character 110,000 on: text of the calibration's kind that
             no calibration run reaches (64 x 256 tokens end far earlier; interop_test.py checks it
             for SmolLM2's tokenizer), for comparisons on held-out text of the calibration domain;
  eval.txt   the licence texts Debian's base-files package ships in /usr/share/common-licenses
             (Apache-2.0, Artistic, GFDL-1.3, GPL-2, GPL-3, LGPL-2.1, MPL-2.0): real English prose
             that shares no text with the calibration set.

Usage: make_corpus.py OUT_DIR   (stdlib only; deterministic for a given Python and Debian release)
"""
import hashlib
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LICENSES = "/usr/share/common-licenses"
HELDOUT_FROM = 110_000  # characters
EVAL_FILES = ["Apache-2.0", "Artistic", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0"]


def calibration_text():
    spec = importlib.util.spec_from_file_location(
        "make_smollm2_gptq", os.path.join(REPO, "tests/reference/make_smollm2_gptq.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.calibration_text()


def evaluation_text():
    parts = []
    for name in EVAL_FILES:
        with open(os.path.join(LICENSES, name), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n\n".join(parts)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    calib, evaluation = calibration_text(), evaluation_text()
    # Disjoint by source; also check no long line of one appears in the other.
    calib_lines = {line.strip() for line in calib.splitlines() if sum(c.isalpha() for c in line) > 30}
    shared = [line for line in evaluation.splitlines() if line.strip() in calib_lines]
    if shared:
        sys.exit(f"calibration and evaluation text share {len(shared)} lines, e.g. {shared[0]!r}")
    manifest = {}
    for name, text in (("calib.txt", calib), ("heldout.txt", calib[HELDOUT_FROM:]), ("eval.txt", evaluation)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
        manifest[name] = {"chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    manifest["eval_sources"] = [os.path.join(LICENSES, n) for n in EVAL_FILES]
    manifest["heldout_from_char"] = HELDOUT_FROM
    manifest["calib_source"] = "docstrings of Python standard-library modules (tests/reference/make_smollm2_gptq.py)"
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
