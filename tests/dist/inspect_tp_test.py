"""`nibble inspect --tensor-parallel-size N` on mixture-of-experts and latent-attention
models: each rank's weights are its share of the split tensors plus the replicated
ones whole (norms, routers, the shared-expert gate, MLA's q_a/kv_a projections),
at most total / N + replicated + 5 %; the latent KV cache is whole on every rank,
grouped-query attention's splits by key/value head.

Run by ctest with NIBBLE_BIN, NIBBLE_TINY_MOE_DIR and NIBBLE_TINY_DEEPSEEK_DIR set
(the tiny_moe_models and tiny_deepseek_models fixtures: float32 safetensors, a
GPTQ Qwen2-MoE and DeepSeek-V3 in FP8 blocks).
"""
import json
import os
import struct
import subprocess
import unittest

BIN = os.environ["NIBBLE_BIN"]
MODELS = {
    "mixtral_moe": os.path.join(os.environ["NIBBLE_TINY_MOE_DIR"], "mixtral_moe"),
    "qwen2_moe_shared": os.path.join(os.environ["NIBBLE_TINY_MOE_DIR"], "qwen2_moe_shared"),
    # Packed parts (qweight, scales, qzeros; weight_scale_inv) count by their module's split.
    "qwen2_moe_gptq": os.path.join(os.environ["NIBBLE_TINY_MOE_DIR"], "qwen2_moe_gptq"),
    "deepseek_v3_fp8": os.path.join(os.environ["NIBBLE_TINY_DEEPSEEK_DIR"], "deepseek_v3_fp8"),
    "deepseek_v3": os.path.join(os.environ["NIBBLE_TINY_DEEPSEEK_DIR"], "deepseek_v3"),
    "deepseek_v2": os.path.join(os.environ["NIBBLE_TINY_DEEPSEEK_DIR"], "deepseek_v2"),
}
REPLICATED = ("norm", "mlp.gate.weight", "block_sparse_moe.gate.weight", "shared_expert_gate",
              "e_score_correction_bias", "q_a_proj", "kv_a_proj_with_mqa")


def tensor_bytes(model):
    """{name: bytes} from the safetensors header, read here rather than by nibble."""
    with open(os.path.join(model, "model.safetensors"), "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items() if name != "__metadata__"}


def inspect(model, ranks, *extra):
    result = subprocess.run([BIN, "inspect", "-m", model, "--tensor-parallel-size", str(ranks), *extra],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    return result.stdout


class InspectTensorParallelShares(unittest.TestCase):
    def test_each_rank_holds_its_share_plus_the_replicated_tensors(self):
        for name, model in MODELS.items():
            tensors = tensor_bytes(model)
            replicated = sum(b for n, b in tensors.items() if any(part in n for part in REPLICATED))
            self.assertGreater(replicated, 0, name)
            for ranks in (2, 4):
                with self.subTest(model=name, ranks=ranks):
                    out = json.loads(inspect(model, ranks, "--json"))
                    total = out["stored_bytes"]
                    self.assertEqual(total, sum(tensors.values()))
                    shares = out["tensor_parallel"]
                    self.assertEqual(len(shares), ranks)
                    split = (total - replicated) / ranks
                    for share in shares:
                        held = share["stored_bytes"]
                        self.assertLessEqual(held, total / ranks + replicated + 0.05 * total / ranks, share)
                        # The replicated tensors are counted whole, not split.
                        self.assertGreaterEqual(held, replicated + 0.99 * split, share)
                        config = out["config"]
                        if "kv_lora_rank" in config:
                            self.assertEqual(share["kv_bytes_per_token_f32"], out["kv_bytes_per_token_f32"],
                                             "every rank caches the whole latent")
                        else:
                            self.assertLess(share["kv_bytes_per_token_f32"], out["kv_bytes_per_token_f32"])
                        if "n_routed_experts" in config or "num_experts" in config or "num_local_experts" in config:
                            self.assertGreater(share["expert_intermediate"], 0)

    def test_an_expert_parallel_rank_holds_only_its_groups_experts(self):
        # --tensor-parallel-size 2 --expert-parallel-size 2: rank r holds the routed
        # experts of group r // 2 (half of them, each at half its width) and a quarter
        # of everything else split: its expert bytes are the group's experts / 2.
        for name in ("mixtral_moe", "qwen2_moe_gptq", "deepseek_v3_fp8"):
            model = MODELS[name]
            tensors = tensor_bytes(model)
            with self.subTest(model=name):
                out = json.loads(inspect(model, 2, "--expert-parallel-size", "2", "--json"))
                shares = out["tensor_parallel"]
                self.assertEqual(len(shares), 4)
                experts = out["config"].get("n_routed_experts") or out["config"].get("num_experts") or \
                    out["config"]["num_local_experts"]
                expert_bytes = sum(b for n, b in tensors.items() if ".experts." in n)
                other = sum(tensors.values()) - expert_bytes
                replicated = sum(b for n, b in tensors.items() if any(part in n for part in REPLICATED))
                for rank, share in enumerate(shares):
                    self.assertEqual(share["expert_rank"], rank // 2)
                    self.assertEqual(share["first_expert"], rank // 2 * experts // 2)
                    self.assertEqual(share["experts"], experts // 2)
                    # Only this group's experts, each at half its width: a quarter of all of them.
                    held_experts = sum(b for n, b in tensors.items() if ".experts." in n and
                                       share["first_expert"] <= int(n.split(".experts.")[1].split(".")[0]) <
                                       share["first_expert"] + share["experts"])
                    self.assertAlmostEqual(held_experts / 2, expert_bytes / 4, delta=0.01 * expert_bytes)
                    self.assertLessEqual(share["stored_bytes"], expert_bytes / 4 + other / 4 + replicated +
                                         0.05 * sum(tensors.values()) / 4, share)
                    self.assertGreaterEqual(share["stored_bytes"], 0.99 * expert_bytes / 4, share)
        refused = subprocess.run([BIN, "inspect", "-m", MODELS["deepseek_v3"], "--expert-parallel-size", "3"],
                                 capture_output=True, text=True, timeout=120)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("8 routed experts do not divide by 3", refused.stderr)

    def test_the_table_names_what_stays_whole(self):
        text = inspect(MODELS["deepseek_v3"], 2)
        self.assertIn("rank 1: weights", text)
        self.assertIn("the latent KV cache whole", text)
        self.assertIn("routers whole", inspect(MODELS["qwen2_moe_shared"], 2))


if __name__ == "__main__":
    unittest.main()
