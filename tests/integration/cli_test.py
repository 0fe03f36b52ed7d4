"""End-to-end checks of the `nibble` binary as a user runs it (stdlib only).

Run by ctest with NIBBLE_BIN, NIBBLE_SHARED_DIR and NIBBLE_MODEL_CACHE set.
"""
import json
import os
import subprocess
import tempfile
import unittest

BIN = os.environ["NIBBLE_BIN"]
SHARED = os.environ["NIBBLE_SHARED_DIR"]
SMOLLM2 = os.path.join(os.environ["NIBBLE_MODEL_CACHE"], "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES = os.path.join(SHARED, "models", "stories260K")


def nibble(*args, check=True):
    result = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"nibble {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


class Stories260K(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "stories260K")
        nibble("convert", "--from", "llama2c", os.path.join(STORIES, "stories260K.bin"),
               "--tokenizer", os.path.join(STORIES, "tok512.bin"), "--out", cls.model)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_convert_writes_a_hugging_face_folder(self):
        for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
            self.assertTrue(os.path.exists(os.path.join(self.model, name)), name)
        config = json.load(open(os.path.join(self.model, "config.json")))
        self.assertEqual(config["architectures"], ["LlamaForCausalLM"])
        self.assertEqual(config["num_key_value_heads"], 4)

    def test_greedy_generation_from_bos_matches_the_reference_ids_and_text(self):
        with open(os.path.join(STORIES, "greedy_bos_128.txt")) as f:
            expected_ids = json.loads(f.readline())
            expected_text = f.readline().rstrip("\n")
        out = json.loads(nibble("generate", "-m", self.model, "--prompt", "", "-n", "128",
                                "--temperature", "0", "--ignore-eos", "--json", "-t", "2").stdout)
        self.assertEqual(out["prompt_ids"], [1])
        self.assertEqual(out["tokens"], expected_ids)
        # The reference file writes the newline token as its piece, <0x0A>.
        self.assertEqual(out["text"].replace("\n", "<0x0A>").strip(), expected_text.strip())

    def test_streamed_text_equals_the_json_text(self):
        streamed = nibble("generate", "-m", self.model, "--prompt", "Once upon a time", "-n", "40",
                          "--temperature", "0.8", "--seed", "5", "--ignore-eos").stdout
        out = json.loads(nibble("generate", "-m", self.model, "--prompt", "Once upon a time", "-n", "40",
                                "--temperature", "0.8", "--seed", "5", "--ignore-eos", "--json").stdout)
        self.assertEqual(streamed, out["text"] + "\n")

    def test_inspect_reports_parameters_and_kv_bytes(self):
        out = json.loads(nibble("inspect", "-m", self.model, "--json").stdout)
        # 512*64 embedding + 5 layers * (4*64*64... with GQA) + norms: count from the shapes.
        dim, hidden, layers, kv_dim = 64, 172, 5, 32
        per_layer = dim * dim * 2 + dim * kv_dim * 2 + dim * hidden * 3 + 2 * dim
        self.assertEqual(out["parameters"], 512 * dim + layers * per_layer + dim)
        self.assertEqual(out["kv_bytes_per_token_f32"], 2 * layers * kv_dim * 4)
        self.assertAlmostEqual(out["compression_vs_fp16"], 0.5)

    def test_eval_with_llama_perplexitys_protocol(self):
        # stories260K's tokenizer adds BOS, so every chunk starts with it (as in
        # llama-perplexity); each 32-token chunk scores its last 15 targets.
        text = os.path.join(self.tmp.name, "eval.txt")
        with open(text, "w") as f:
            f.write("Once upon a time there was a little girl named Lily. She loved to play outside. " * 12)
        args = ["eval", "--model", self.model, "--text", text, "--protocol", "chunks", "--window", "32", "--threads", "2"]
        out = json.loads(nibble(*args, "--json").stdout)
        self.assertEqual(out["protocol"], "chunks")
        self.assertGreaterEqual(out["windows"], 4)
        self.assertEqual(out["tokens_scored"], out["windows"] * 15)
        self.assertGreater(out["perplexity_uncertainty"], 0)
        capped = json.loads(nibble(*args, "--chunks", "2", "--json").stdout)
        self.assertEqual(capped["tokens_scored"], 30)
        printed = nibble(*args, "--base", self.model).stdout
        self.assertIn("BOS at every chunk", printed)
        self.assertIn(f"Final estimate: PPL = {out['perplexity']:.4f} +/- ", printed)
        self.assertIn("Mean    KLD:   0.000000", printed)
        self.assertIn("Same top p: 100.000", printed)
        bad = nibble("eval", "--model", self.model, "--text", text, "--protocol", "overlapping", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("--protocol must be sliding or chunks", bad.stderr)


class Errors(unittest.TestCase):
    def test_bad_models_fail_with_one_clear_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = nibble("generate", "-m", tmp, "--prompt", "x", check=False)
            self.assertEqual(result.returncode, 1)
            self.assertIn("not a model folder", result.stderr)
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"architectures": ["BloomForCausalLM"]}, f)
            result = nibble("inspect", "-m", tmp, check=False)
            self.assertEqual(result.returncode, 1)
            self.assertIn("BloomForCausalLM", result.stderr)
            truncated = os.path.join(tmp, "cut.gguf")
            with open(SMOLLM2, "rb") as src, open(truncated, "wb") as dst:
                dst.write(src.read(1 << 20))
            result = nibble("inspect", "-m", truncated, check=False)
            self.assertEqual(result.returncode, 1)
            self.assertIn("cut.gguf", result.stderr)
            self.assertNotIn("internal error", result.stderr)

    def test_unknown_flags_are_rejected(self):
        result = nibble("generate", "--no-such-flag", check=False)
        self.assertNotEqual(result.returncode, 0)

    def test_device_cuda_without_a_gpu_fails_at_start_up_with_exit_code_2(self):
        # This machine has no GPU (CI never does); on one with a GPU the check below is moot.
        if os.path.exists("/dev/nvidia0"):
            self.skipTest("a GPU is present")
        for command in (["generate", "-m", "/nonexistent/model", "-p", "x", "-n", "1"],
                        ["eval", "--model", "/nonexistent/model", "--text", "/dev/null"],
                        ["serve", "-m", "/nonexistent/model", "--port", "0"]):
            for device in ("cuda", "cuda:1"):
                result = nibble(*command, "--device", device, check=False)
                self.assertEqual(result.returncode, 2, (command, result.stderr))
                lines = result.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, result.stderr)
                self.assertIn(f"--device {device if ':' in device else 'cuda:0'}", lines[0])
                self.assertIn("use --device cpu", lines[0])
                # Checked before anything is loaded or listened on.
                self.assertNotIn("/nonexistent/model", result.stderr)
                self.assertNotIn("internal error", result.stderr)

    def test_unknown_devices_are_refused_naming_the_forms(self):
        result = nibble("generate", "-m", "/nonexistent/model", "-p", "x", "--device", "tpu", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("unknown device 'tpu' (cpu, cuda or cuda:N)", result.stderr)

    def test_serve_rejects_an_unknown_kv_cache_dtype_before_loading(self):
        # A model that does not exist: had the flag passed, the load would fail instead.
        result = nibble("serve", "-m", "/nonexistent/model", "--port", "0", "--kv-cache-dtype", "fp8", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown KV cache dtype 'fp8'", result.stderr)
        self.assertIn("float16", result.stderr)
        self.assertNotIn("/nonexistent/model", result.stderr)


class SmolLM2(unittest.TestCase):
    def test_generates_coherent_text_from_the_bundled_gguf(self):
        out = json.loads(nibble("generate", "-m", SMOLLM2, "--prompt", "The capital of France is", "-n", "8",
                                "--temperature", "0", "--json").stdout)
        self.assertIn("Paris", out["text"])
        self.assertGreater(out["decode_tokens_per_second"], 0)

    def test_inspect_describes_the_q4_1_model(self):
        out = json.loads(nibble("inspect", "-m", SMOLLM2, "--json").stdout)
        self.assertEqual(out["architecture"], "LlamaForCausalLM")
        self.assertEqual(out["config"]["num_hidden_layers"], 30)
        self.assertIn("Q4_1", out["bytes_by_type"])
        self.assertGreater(out["compression_vs_fp16"], 2.5)
        self.assertTrue(out["has_chat_template"])

    def test_inspect_shows_each_tensor_parallel_ranks_share(self):
        out = json.loads(nibble("inspect", "-m", SMOLLM2, "--json", "--tensor-parallel-size", "3").stdout)
        self.assertEqual(out["tensor_parallel_workable_sizes"], "1, 3")
        ranks = out["tensor_parallel"]
        self.assertEqual([r["rank"] for r in ranks], [0, 1, 2])
        for rank in ranks:
            # Its third of the weights; the norms (replicated, float32) are a few KiB.
            self.assertLessEqual(rank["stored_bytes"], out["stored_bytes"] / 3 * 1.05)
            self.assertGreater(rank["stored_bytes"], out["stored_bytes"] / 3 * 0.95)
            self.assertEqual((rank["q_heads"], rank["kv_heads"], rank["intermediate"]), (3, 1, 512))
            self.assertEqual(rank["kv_bytes_per_token_f32"], out["kv_bytes_per_token_f32"] // 3)
        refused = nibble("inspect", "-m", SMOLLM2, "--tensor-parallel-size", "2", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("9 query heads do not divide by 2", refused.stderr)
        self.assertIn("sizes that work: 1, 3", refused.stderr)

    def test_inspect_shows_each_pipeline_stages_layers_and_weights(self):
        out = json.loads(nibble("inspect", "-m", SMOLLM2, "--json", "--pipeline-parallel-size", "3").stdout)
        stages = out["pipeline_parallel"]
        self.assertEqual([(s["first_layer"], s["end_layer"]) for s in stages], [(0, 10), (10, 20), (20, 30)])
        # Every tensor counted once, but the tied embedding: looked up on the first
        # stage and run as lm_head on the last.
        embedding = out["bytes_by_type"]["Q8_0"]  # SmolLM2's only Q8_0 tensor is its tied token_embd
        self.assertEqual(sum(s["stored_bytes"] for s in stages), out["stored_bytes"] + embedding)
        self.assertLess(stages[1]["stored_bytes"], stages[0]["stored_bytes"])
        for stage in stages:
            self.assertEqual(stage["kv_bytes_per_token_f32"], out["kv_bytes_per_token_f32"] // 3)
        refused = nibble("inspect", "-m", SMOLLM2, "--pipeline-parallel-size", "31", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("exceeds the model's 30 layers", refused.stderr)


if __name__ == "__main__":
    unittest.main()
