"""/tokenize and /detokenize in vLLM's shapes, on the bundled SmolLM2 (a byte-level BPE
vocabulary and a chat template): the ids are those the generation endpoints run on
(their usage counts agree), text survives the round trip, and bad input is a 4xx.
Then `nibble convert --from gguf --tokenizer-only` writes the GGUF's vocabulary as a
tokenizer.json that Hugging Face `tokenizers` loads and that gives nibble's ids on a
corpus of real text.
"""
import glob
import json
import os
import subprocess
import tempfile
import unittest

from nibble_server import BIN, SMOLLM2, ServerTestCase, SmolLM2Server

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

TEXT = "The capital of France is Paris. Ça va? 12345 naïve 🙂"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]


class Tokenize(SmolLM2Server, ServerTestCase):
    def post(self, path, body):
        response = self.server.post(path, body)
        return response.status, response.json()

    def test_a_prompt_tokenizes_as_a_completion_counts_it_and_detokenizes_back(self):
        status, out = self.post("/tokenize", {"model": self.model_name, "prompt": TEXT, "return_token_strs": True})
        self.assertEqual(status, 200, out)
        self.assertEqual(out["count"], len(out["tokens"]))
        self.assertEqual(out["max_model_len"], 8192)
        self.assertEqual(len(out["token_strs"]), out["count"])
        completion = self.server.post("/v1/completions", {"model": self.model_name, "prompt": TEXT, "max_tokens": 1})
        self.assertEqual(completion.json()["usage"]["prompt_tokens"], out["count"])
        # The ids, given as the prompt, are the same prompt.
        completion = self.server.post("/v1/completions",
                                      {"model": self.model_name, "prompt": out["tokens"], "max_tokens": 1})
        self.assertEqual(completion.json()["usage"]["prompt_tokens"], out["count"])
        status, back = self.post("/detokenize", {"model": self.model_name, "tokens": out["tokens"]})
        self.assertEqual((status, back), (200, {"prompt": TEXT}))

    def test_messages_tokenize_as_a_chat_completion_counts_them(self):
        status, out = self.post("/tokenize", {"messages": MESSAGES})
        self.assertEqual(status, 200, out)
        chat = self.server.post("/v1/chat/completions", {"model": self.model_name, "messages": MESSAGES,
                                                         "max_tokens": 1})
        self.assertEqual(chat.json()["usage"]["prompt_tokens"], out["count"])
        _, without = self.post("/tokenize", {"messages": MESSAGES, "add_generation_prompt": False})
        self.assertLess(without["count"], out["count"])
        self.assertEqual(out["tokens"][:without["count"]], without["tokens"])
        _, text = self.post("/detokenize", {"tokens": out["tokens"]})
        self.assertTrue(text["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>"), text)
        self.assertTrue(text["prompt"].endswith("<|im_start|>assistant\n"), text)

    def test_bad_input_is_a_clear_4xx(self):
        cases = [
            ("/tokenize", {}, 400, "prompt"),
            ("/tokenize", {"prompt": "a", "messages": MESSAGES}, 400, "messages"),
            ("/tokenize", {"prompt": 5}, 400, "prompt"),
            ("/tokenize", {"prompt": "a", "model": "other"}, 404, "model"),
            ("/tokenize", {"prompt": "a", "frobnicate": 1}, 400, "frobnicate"),
            ("/detokenize", {"tokens": [1, 10 ** 9]}, 400, "tokens"),
            ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
            ("/detokenize", {}, 400, "tokens"),
        ]
        for path, body, status, param in cases:
            with self.subTest(path=path, body=body):
                got, out = self.post(path, body)
                self.assertEqual(got, status, out)
                self.assertEqual(out["error"]["param"], param, out)
        self.assertEqual(self.server.get("/tokenize").status, 405)

    def test_the_converted_tokenizer_json_gives_nibbles_ids(self):
        from tokenizers import Tokenizer

        with tempfile.TemporaryDirectory(prefix="nibble-tokenizer-") as out:
            result = subprocess.run([BIN, "convert", "--from", "gguf", "--tokenizer-only", SMOLLM2, "--out", out],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
            tokenizer = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
            with open(os.path.join(out, "tokenizer_config.json")) as f:
                config = json.load(f)
        self.assertEqual((config["bos_token"], config["eos_token"]), ("<|im_start|>", "<|im_end|>"))
        self.assertIn("chat_template", config)
        # Real text: the repository's docs, line by line and whole, plus what byte-level BPE finds hard.
        corpus = [TEXT, "", " ", "  leading and trailing  ", "tab\there\r\nand 1234567 digits", "日本語のテキスト",
                  "emoji 👩‍👩‍👧 and combining é", "<|im_start|>user\nspecial<|im_end|>", "don't won't I'll"]
        for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))[:4] + [os.path.join(ROOT, "README.md")]:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            corpus.append(text)
            corpus += [line for line in text.splitlines() if line.strip()][:80]
        mismatches = []
        for text in corpus:
            status, out = self.post("/tokenize", {"prompt": text})
            self.assertEqual(status, 200, out)
            theirs = tokenizer.encode(text).ids
            if theirs != out["tokens"]:
                mismatches.append((text[:80], out["tokens"][:20], theirs[:20]))
        self.assertEqual(mismatches, [], f"{len(mismatches)} of {len(corpus)} texts differ")
        self.assertGreater(len(corpus), 200)


if __name__ == "__main__":
    unittest.main()
