#!/usr/bin/env python3
"""Generates the tokenizer reference files committed under tests/tokenizer/.

For every tokenizer style nibble supports, the Hugging Face `tokenizers` library
encodes the fixed text set in tokref.TEXTS (English, code, Chinese, emoji, whitespace
runs, newlines, digits, contractions, special-token strings, NFC-sensitive text); the
ids (with and without add_special_tokens) and the decoded strings go to
references/<style>.json, which tests/unit/tokenizer_test.cpp compares nibble against.

Styles and where their tokenizer comes from (nothing is downloaded):
  gpt2, llama3, qwen2   small byte-level BPE tokenizers trained here on tokref.corpus()
                        (vocab <= 1000), configured exactly as GPT-2's, Llama-3's and
                        Qwen2's tokenizer.json (pre-tokenizer regex / Split settings,
                        ByteLevel flags, ignore_merges, NFC, special tokens, BOS
                        template); written to data/<style>/tokenizer.json (committed).
  mistral               a small SentencePiece BPE model (byte fallback) trained here,
                        converted to tokenizer.json in the newer Mistral layout
                        (Metaspace pre-tokenizer, prepend_scheme "first"); committed.
  llama2                the real Llama-2 tokenizer.model from ../shared (not ours to
                        redistribute: only the ids are committed; the test-time
                        tokenizer.json is rebuilt by make_fixtures.py with the same code),
                        converted in the legacy layout Llama-2 ships.
  smollm2               the real SmolLM2-135M-Instruct GGUF vocabulary, rebuilt as a
                        tokenizer by transformers (see tokref.smollm2_tokenizer).

Run from the repository root, with the pinned packages of tests/requirements.txt
(tokenizers 0.23.3, transformers 5.23.0, sentencepiece 0.2.3, protobuf 7.36.2,
gguf 0.19.0, numpy 2.4.6; no torch):
  python3 tests/tokenizer/make_references.py [--shared ../shared] [--models models]
"""
import argparse
import io
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def train_byte_level(style):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    config = {}
    if style == "gpt2":
        specials = ["<|endoftext|>"]
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    elif style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(tokref.LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    elif style == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(tokref.QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>"}
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials])
    tok.train_from_iterator(tokref.corpus(), trainer=trainer)
    data = json.loads(tok.to_str())
    if style == "llama3":
        # Llama-3 emits a whole word that is in the vocabulary without merging, and its
        # template prepends <|begin_of_text|>.
        data["model"]["ignore_merges"] = True
        bos_id = tok.token_to_id("<|begin_of_text|>")
        data["post_processor"] = json.loads(processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos_id)])]).__getstate__())
    return data, config


def train_mistral(workdir):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter("\n".join(tokref.corpus()).splitlines()), model_writer=model, model_type="bpe",
        vocab_size=1000, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2)
    path = os.path.join(workdir, "mistral.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    tok = tokref.spm_tokenizer(path, legacy=False)
    return json.loads(tok.to_str()), tokref.spm_tokenizer_config(path)


def write_json(path, data, compact=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")


def write_reference(style, source, tokenizer):
    write_json(os.path.join(HERE, "references", f"{style}.json"),
               {"style": style, "source": source, "cases": tokref.cases(tokenizer)})


def main():
    from tokenizers import Tokenizer
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.path.join(HERE, "..", "..", "..", "shared"))
    parser.add_argument("--models", default=os.path.join(HERE, "..", "..", "models"))
    args = parser.parse_args()

    for style in ("gpt2", "llama3", "qwen2"):
        data, config = train_byte_level(style)
        write_json(os.path.join(HERE, "data", style, "tokenizer.json"), data, compact=True)
        write_json(os.path.join(HERE, "data", style, "tokenizer_config.json"), config)
        write_reference(style, f"data/{style}/tokenizer.json (trained by this script)",
                        Tokenizer.from_str(json.dumps(data)))
    with tempfile.TemporaryDirectory() as workdir:
        data, config = train_mistral(workdir)
    write_json(os.path.join(HERE, "data", "mistral", "tokenizer.json"), data, compact=True)
    write_json(os.path.join(HERE, "data", "mistral", "tokenizer_config.json"), config)
    write_reference("mistral", "data/mistral/tokenizer.json (SentencePiece BPE trained by this script)",
                    Tokenizer.from_str(json.dumps(data)))

    llama2 = os.path.join(args.shared, "models", "llama2c-tokenizer", "tokenizer.model")
    write_reference("llama2", "shared/models/llama2c-tokenizer/tokenizer.model, legacy tokenizer.json conversion",
                    tokref.spm_tokenizer(llama2, legacy=True))
    smollm2 = os.path.join(args.models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    write_reference("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf via transformers (gguf_file=), digits isolated",
                    tokref.smollm2_tokenizer(smollm2))


if __name__ == "__main__":
    main()
