"""A copy of a tiny fixture model (tests/reference/make_tiny_*_models.py write no
tokenizer) with a plain tokenizer of its 128 ids, "t0".."t127", so `nibble generate`
and `nibble serve` load it; prompts go in as token ids."""
import json
import os
import shutil


def copy_with_tokenizer(source, destination):
    shutil.copytree(source, destination)
    vocab = {f"t{i}": i for i in range(128)}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                 "pre_tokenizer": None, "post_processor": None, "decoder": None,
                 "model": {"type": "BPE", "dropout": None, "unk_token": "t0", "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "ignore_merges": False, "vocab": vocab, "merges": []}}
    with open(os.path.join(destination, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    return destination
