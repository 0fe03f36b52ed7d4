"""Shared by make_references.py and make_fixtures.py: the fixed text set and the
builders that turn real tokenizer data into Hugging Face `tokenizers` objects and
vocabulary-only GGUF files, the same way at reference time and at test time."""
import io
import json
import os

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPACE = "\u2581"

# English, code, Chinese, emoji, whitespace runs, newlines, digits, contractions, the
# special-token strings of every style, and text that NFC changes.
TEXTS = [
    "",
    " ",
    "a",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, but we've DONE IT'S job -- don't you think? 'S 'ſ x'LL",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 23456))\n",
    "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn 0;\n}",
    "我爱自然语言处理。今天天气很好！",
    "こんにちは世界 안녕하세요 Привет мир",
    "Emoji: 😀👍🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️ 🤖",
    "  leading and   multiple    spaces   ",
    "tabs\t\tand\u00a0nbsp\u2003em space",
    "\n\nnewlines\n\n\n  indented\n",
    "line one\r\nline two\r\n",
    "Numbers: 0 7 42 1234567 3.14159 1,000,000 ١٢٣ ½",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>Hello</s> <s> spaced </s>",
    "<|begin_of_text|>hi<|eot_id|><|endoftext|>",
    "<unk>text<|endoftext|> tail",
    "Café naïve cafe\u0301 A\u030a \u1100\u1161\u11a8 façade — “quotes” and ‘apostrophes’ … ™ ©",
    "Mixed: x=3.5e-10; y = [1,2,3] # comment\n\tz = {'key': \"value\"}",
    "<|im_start|><|im_end|>",
]
# Characters the trained tokenizers never saw: byte-level pieces and byte fallback.
UNSEEN_TEXTS = ["Ωμέγα 🦀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ≠ ∞ ⚙️ ഹലോ"]

CORPUS_EXTRA = """
Once upon a time there was a little robot who loved to read. Every day it read a new
book about the sea, the stars and the people who lived far away. "What a wonderful
world," it said, and it smiled. The robot's friends didn't understand why it liked
books so much, but they'd listen when it told them stories in the evening.
Tokenizers split text into pieces; byte-pair encoding merges the most frequent pairs
first. Numbers like 2024, 3.14 and 1,000 are common, and so are words like the, and, of.
def tokenize(text):
    return [piece for piece in text.split() if piece]
for (int i = 0; i < n; ++i) { total += values[i]; }
机器学习和自然语言处理是人工智能的重要部分。我们今天学习分词器。
Les élèves écrivent des phrases en français. Die Straße ist schön. ¿Qué tal?
"""


def corpus():
    import codecs
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python: fixed text every Python ships (it prints on import)
    zen = codecs.decode(this.s, "rot13")
    return [zen, CORPUS_EXTRA] + TEXTS * 2


def spm_merges(pieces, scores, skip=()):
    """Merges of a SentencePiece BPE vocabulary, in the order transformers' classic
    SentencePieceExtractor produced for Llama-2's tokenizer.json: every split of a
    piece into two pieces, best-scoring merged piece first (stable: piece id, then
    the halves' ids)."""
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []
    for merged_id, piece in enumerate(pieces):
        if merged_id in skip:
            continue
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                local.append((left, right, scores[merged_id]))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return [(l, r) for l, r, _ in merges]


def load_spm_proto(model_path):
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def spm_tokenizer(model_path, legacy):
    """tokenizer.json for a SentencePiece BPE model as transformers' LlamaConverter
    writes it: legacy = Prepend("▁") + Replace(" ", "▁") normalizer (what Llama-2 and
    Mistral v0.1 ship); otherwise a Metaspace(prepend_scheme="first") pre-tokenizer
    (what newer Mistral files ship). Byte fallback, <s> added by the post-processor."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    proto = load_spm_proto(model_path)
    pieces = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(BPE(vocab=vocab, merges=spm_merges(pieces, scores), unk_token="<unk>", fuse_unk=True,
                        byte_fallback=True, dropout=None))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    # Control (type 3) and unknown (2) pieces are special added tokens; user-defined (4) plain ones.
    tok.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                            for p in proto.pieces if p.type in (2, 3)])
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=False) for p in proto.pieces if p.type == 4])
    bos = pieces[proto.trainer_spec.bos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, proto.trainer_spec.bos_id)])
    return tok


def spm_tokenizer_config(model_path):
    proto = load_spm_proto(model_path)
    return {"add_bos_token": True, "add_eos_token": False,
            "bos_token": proto.pieces[proto.trainer_spec.bos_id].piece,
            "eos_token": proto.pieces[proto.trainer_spec.eos_id].piece}


def smollm2_tokenizer(gguf_path):
    """SmolLM2's Hugging Face tokenizer rebuilt from its GGUF by transformers. transformers'
    GGUF converter gives every GPT-2-type vocabulary a plain ByteLevel pre-tokenizer, but
    SmolLM2's own tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) first isolates
    each digit: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]; that
    is restored here."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_path)),
                                       gguf_file=os.path.basename(gguf_path))
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    return tok


def write_gguf_vocab(path, fields):
    """A vocabulary-only GGUF file (no tensors) with the given tokenizer.ggml.* fields."""
    import gguf
    w = gguf.GGUFWriter(path, arch="llama")
    for key, (kind, value) in fields.items():
        getattr(w, f"add_{kind}")(key, value) if kind != "array" else w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_from_byte_level_json(tokenizer_json_path, out_path, pre):
    """GGUF "gpt2" vocabulary from a byte-level tokenizer.json, as llama.cpp's converter
    stores it: tokens by id, merges as "a b", added special tokens as control (3)."""
    with open(tokenizer_json_path, encoding="utf-8") as f:
        data = json.load(f)
    vocab = dict(data["model"]["vocab"])
    for t in data["added_tokens"]:
        vocab[t["content"]] = t["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    types = [1] * len(tokens)
    for t in data["added_tokens"]:
        types[t["id"]] = 3 if t["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    fields = {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.tokens": ("array", tokens),
        "tokenizer.ggml.token_type": ("array", types),
        "tokenizer.ggml.merges": ("array", merges),
    }
    write_gguf_vocab(out_path, fields)


def gguf_from_spm(model_path, out_path):
    """GGUF "llama" vocabulary from a SentencePiece model, as llama.cpp's converter
    stores it: pieces, scores, SentencePiece piece types, BOS/EOS/UNK ids."""
    proto = load_spm_proto(model_path)
    fields = {
        "tokenizer.ggml.model": ("string", "llama"),
        "tokenizer.ggml.tokens": ("array", [p.piece for p in proto.pieces]),
        "tokenizer.ggml.scores": ("array", [p.score for p in proto.pieces]),
        "tokenizer.ggml.token_type": ("array", [p.type for p in proto.pieces]),
        "tokenizer.ggml.bos_token_id": ("uint32", proto.trainer_spec.bos_id),
        "tokenizer.ggml.eos_token_id": ("uint32", proto.trainer_spec.eos_id),
        "tokenizer.ggml.unknown_token_id": ("uint32", proto.trainer_spec.unk_id),
        "tokenizer.ggml.add_bos_token": ("bool", True),
        "tokenizer.ggml.add_eos_token": ("bool", False),
    }
    write_gguf_vocab(out_path, fields)


def cases(tokenizer, texts=TEXTS + UNSEEN_TEXTS):
    """Reference ids and decodes for every text."""
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        with_special = tokenizer.encode(text, add_special_tokens=True).ids
        out.append({
            "text": text,
            "ids": ids,
            "ids_add_special": with_special,
            "decoded": tokenizer.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tokenizer.decode(with_special, skip_special_tokens=True),
        })
    return out
