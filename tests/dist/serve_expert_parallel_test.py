"""`nibble serve --expert-parallel-size 2` on the tiny DeepSeek-V3 (8 routed experts,
4 on each rank; MLA heads split over both) against one process: what the split
server reports of its layout, and 12 mixed requests sent at once (prefills of
1-20 token ids, decodes, n = 2, streamed and whole, so the steps batch them) get
the greedy texts one process answers.

Run by ctest with NIBBLE_BIN, NIBBLE_TINY_DEEPSEEK_DIR, NIBBLE_LAUNCH ("mpirun -np 2")
and NIBBLE_SERVE_ARGS ("--expert-parallel-size 2") set; the server helpers are
tests/e2e's. Float activations on both: int8 ones round each rank's partial sums
by their own scales, which is not one process's arithmetic.
"""
import concurrent.futures
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from nibble_server import NibbleServer, metric  # noqa: E402
from tiny_tokenizer import copy_with_tokenizer  # noqa: E402

MODEL = os.path.join(os.environ["NIBBLE_TINY_DEEPSEEK_DIR"], "deepseek_v3")
ARGS = ["--float-activations", "-t", "1", "--served-model-name", "tiny"]


def requests():
    out = []
    for i in range(12):
        prompt = [(7 * i + j) % 120 + 5 for j in range(1 + (i * 7) % 20)]
        out.append({"model": "tiny", "prompt": prompt, "max_tokens": 4 + 3 * i, "temperature": 0,
                    "ignore_eos": True, "n": 2 if i % 4 == 3 else 1, "stream": i % 3 == 1})
    return out


def answers(test, server):
    def one(body):
        if not body["stream"]:
            answer = server.post("/v1/completions", body)
            test.assertEqual(answer.status, 200, answer)
            return sorted((c["index"], c["text"]) for c in answer.json()["choices"])
        connection, response = server.open_stream("/v1/completions", body, timeout=120)
        texts = {}
        for line in response:
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        connection.close()
        return sorted(texts.items())

    batch = requests()
    with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
        return list(pool.map(one, batch))


class ExpertParallelServe(unittest.TestCase):
    def test_the_split_server_reports_its_layout_and_answers_what_one_process_does(self):
        with tempfile.TemporaryDirectory(prefix="nibble-ep-model-") as tmp:
            model = copy_with_tokenizer(MODEL, os.path.join(tmp, "deepseek_v3"))
            alone = NibbleServer(model, *ARGS, split=False).start()
            try:
                want = answers(self, alone)
            finally:
                alone.close()
            split = NibbleServer(model, *ARGS).start()
            try:
                self.assertEqual(split.get("/version").json()["parallel"],
                                 {"tensor": 1, "expert": 2, "pipeline": 1, "ranks": 2})
                samples = split.metrics()
                self.assertEqual(metric(samples, "nibble_parallel_ranks", kind="expert"), 2)
                self.assertEqual(metric(samples, "nibble_parallel_ranks", kind="tensor"), 1)
                got = answers(self, split)
                # The layer sums ran between the two ranks.
                self.assertGreater(metric(split.metrics(), "nibble_collective_calls_total", collective="all_reduce"),
                                   0)
                self.assertIn("experts=4+4", split.stderr(), "rank 1 holds experts 4-7")
            finally:
                split.close()
        self.assertTrue(all(text for answer in want for _, text in answer), want)
        self.assertEqual(len(want[3]), 2, "n=2 gives two choices")
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main()
