"""`nibble generate --tensor-parallel-size N` under mpirun against one rank.

Run by ctest with NIBBLE_BIN, MPIEXEC and NIBBLE_MODEL_CACHE set: SmolLM2 Q4_1
split over 3 ranks must generate the same greedy tokens as one rank (with float
activations: under the default int8 activations the ranks' different summation
order can move a value across an int8 rounding step, and a near-tie greedy token
with it, so there the split must only run and answer), and a split the model
cannot take must end every rank with the rule and the sizes that work (never a
hang).
"""
import json
import os
import subprocess
import unittest

BIN = os.environ["NIBBLE_BIN"]
MPIEXEC = os.environ["MPIEXEC"]
SMOLLM2 = os.path.join(os.environ["NIBBLE_MODEL_CACHE"], "SmolLM2-135M-Instruct.Q4_1.gguf")
ARGS = ["generate", "-m", SMOLLM2, "-p", "The capital of France is", "-n", "24", "--temperature", "0", "-t", "1",
        "--json"]


def run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


class TensorParallelGenerate(unittest.TestCase):
    def test_three_ranks_generate_what_one_rank_does(self):
        alone = run([BIN, *ARGS, "--float-activations"])
        self.assertEqual(alone.returncode, 0, alone.stderr)
        split = run([MPIEXEC, "-np", "3", BIN, *ARGS, "--float-activations", "--tensor-parallel-size", "3"])
        self.assertEqual(split.returncode, 0, split.stderr)
        # Only rank 0 prints.
        alone_out, split_out = json.loads(alone.stdout), json.loads(split.stdout)
        self.assertEqual(split_out["tensor_parallel_size"], 3)
        self.assertEqual(split_out["tokens"], alone_out["tokens"])
        self.assertIn("Paris", split_out["text"])

    def test_three_ranks_answer_with_the_default_int8_activations(self):
        split = run([MPIEXEC, "-np", "3", BIN, *ARGS, "--tensor-parallel-size", "3"])
        self.assertEqual(split.returncode, 0, split.stderr)
        self.assertIn("Paris", json.loads(split.stdout)["text"])

    def test_a_split_the_model_cannot_take_ends_every_rank_with_the_reason(self):
        refused = run([MPIEXEC, "-np", "2", BIN, *ARGS, "--tensor-parallel-size", "2"])
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("9 query heads do not divide by 2", refused.stderr)
        self.assertIn("sizes that work: 1, 3", refused.stderr)

    def test_the_rank_count_must_match_the_flag(self):
        refused = run([MPIEXEC, "-np", "2", BIN, *ARGS, "--tensor-parallel-size", "3"])
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("--tensor-parallel-size 3 x --expert-parallel-size 1 x --pipeline-parallel-size 1 needs 3 "
                      "ranks but mpirun started 2", refused.stderr)

    def test_three_pipeline_stages_generate_what_one_rank_does(self):
        alone = run([BIN, *ARGS])
        self.assertEqual(alone.returncode, 0, alone.stderr)
        split = run([MPIEXEC, "-np", "3", BIN, *ARGS, "--pipeline-parallel-size", "3"])
        self.assertEqual(split.returncode, 0, split.stderr)
        split_out = json.loads(split.stdout)
        self.assertEqual(split_out["pipeline_parallel_size"], 3)
        self.assertEqual(split_out["tokens"], json.loads(alone.stdout)["tokens"])
        # Stage 0 sent the residual stream on and got the logits back.
        self.assertGreater(split_out["collectives"]["send"]["calls"], 0)
        self.assertGreater(split_out["collectives"]["recv"]["calls"], 0)


if __name__ == "__main__":
    unittest.main()
