"""DeepSeek-V3 (latent attention, MoE) over pipeline stages, over tensor ranks and
over expert groups under mpirun, and tensor- and expert-parallel splits it cannot
take refused by name.

Run by ctest with NIBBLE_BIN, MPIEXEC and NIBBLE_TINY_DEEPSEEK_DIR set (the tiny
models tests/reference/make_tiny_deepseek_models.py writes; they have no
tokenizer, so a copy gets a plain 128-token one: the prompt goes in as ids).
Three stages of one layer each (the dense first layer, then two MoE layers) must
generate the greedy tokens one rank does.
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from tiny_tokenizer import copy_with_tokenizer

BIN = os.environ["NIBBLE_BIN"]
MPIEXEC = os.environ["MPIEXEC"]
MODEL = os.path.join(os.environ["NIBBLE_TINY_DEEPSEEK_DIR"], "deepseek_v3")
ARGS = ["generate", "--prompt-ids", "5,6,7,8,9", "-n", "16", "--temperature", "0", "-t", "1", "--json"]


def run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


class DeepseekPipelineGenerate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        cls.model = copy_with_tokenizer(MODEL, os.path.join(cls.dir, "deepseek_v3"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def test_three_pipeline_stages_generate_what_one_rank_does(self):
        alone = run([BIN, *ARGS, "-m", self.model])
        self.assertEqual(alone.returncode, 0, alone.stderr)
        split = run([MPIEXEC, "-np", "3", BIN, *ARGS, "-m", self.model, "--pipeline-parallel-size", "3"])
        self.assertEqual(split.returncode, 0, split.stderr)
        split_out = json.loads(split.stdout)
        self.assertEqual(split_out["pipeline_parallel_size"], 3)
        self.assertEqual(split_out["tokens"], json.loads(alone.stdout)["tokens"])
        self.assertGreater(split_out["collectives"]["send"]["calls"], 0)

    def test_two_tensor_ranks_generate_what_one_rank_does(self):
        # Each rank runs 2 of the 4 heads over the whole latent and half of every expert.
        # Float activations: int8 ones would quantize each rank's share of o_proj's and
        # down_proj's input by its own scale, which is not one rank's arithmetic.
        alone = run([BIN, *ARGS, "-m", self.model, "--float-activations"])
        self.assertEqual(alone.returncode, 0, alone.stderr)
        split = run([MPIEXEC, "-np", "2", BIN, *ARGS, "-m", self.model, "--float-activations",
                     "--tensor-parallel-size", "2"])
        self.assertEqual(split.returncode, 0, split.stderr)
        split_out = json.loads(split.stdout)
        self.assertEqual(split_out["tensor_parallel_size"], 2)
        self.assertEqual(split_out["tokens"], json.loads(alone.stdout)["tokens"])
        self.assertGreater(split_out["collectives"]["all_reduce"]["calls"], 0)

    def test_two_expert_groups_of_two_tensor_ranks_generate_what_one_rank_does(self):
        # Expert parallelism: each pair of tensor ranks holds 4 of the 8 routed experts
        # (each at half its width), attention over all 4 ranks, one all-reduce per layer.
        alone = run([BIN, *ARGS, "-m", self.model, "--float-activations"])
        self.assertEqual(alone.returncode, 0, alone.stderr)
        split = run([MPIEXEC, "-np", "4", BIN, *ARGS, "-m", self.model, "--float-activations",
                     "--tensor-parallel-size", "2", "--expert-parallel-size", "2"])
        self.assertEqual(split.returncode, 0, split.stderr)
        split_out = json.loads(split.stdout)
        self.assertEqual(split_out["expert_parallel_size"], 2)
        self.assertEqual(split_out["tokens"], json.loads(alone.stdout)["tokens"])
        self.assertGreater(split_out["collectives"]["all_reduce"]["calls"], 0)

    def test_an_uneven_expert_split_is_refused_on_every_rank_by_name(self):
        # 8 routed experts over 3 expert groups: refused before loading, on every rank.
        refused = run([MPIEXEC, "-np", "3", BIN, *ARGS, "-m", self.model, "--expert-parallel-size", "3"])
        self.assertNotEqual(refused.returncode, 0)
        for rank in (0, 1, 2):
            self.assertIn(f"error on rank {rank}: expert-parallel size 3 cannot split this model: 8 routed "
                          "experts do not divide by 3", refused.stderr)
        self.assertIn("expert-parallel sizes that work: 1, 2, 4", refused.stderr)

    def test_an_uneven_head_split_is_refused_on_every_rank_by_name(self):
        # 4 heads over 3 ranks: refused before loading on every rank (no rank waits
        # in a collective for the others), with the sizes that work.
        refused = run([MPIEXEC, "-np", "3", BIN, *ARGS, "-m", self.model, "--tensor-parallel-size", "3"])
        self.assertNotEqual(refused.returncode, 0)
        for rank in (0, 1, 2):
            self.assertIn(f"error on rank {rank}: tensor-parallel size 3 cannot split this model: 4 query heads "
                          "do not divide by 3", refused.stderr)
        self.assertIn("sizes that work: 1, 2, 4", refused.stderr)


if __name__ == "__main__":
    unittest.main()
