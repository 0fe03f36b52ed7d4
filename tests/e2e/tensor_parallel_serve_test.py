"""A split server: what it reports of its split, and losing a rank mid-stream
(issue 17's fault test).

Run by ctest with NIBBLE_LAUNCH="mpirun -np 2" and NIBBLE_SERVE_ARGS
"--tensor-parallel-size 2" (tensor ranks), or "--pipeline-parallel-size 2"
(pipeline stages: rank 1 is then the last stage). While rank 0 streams a long completion, rank 1 is
killed (SIGKILL) or hung (SIGSTOP): the client's stream must end (an error,
never a wait), and the group must exit non-zero, saying what failed, within
30 s.
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from nibble_server import NibbleServer, convert_stories260k, metric

LIMIT_S = 30
ARGS = os.environ.get("NIBBLE_SERVE_ARGS", "").split()


def size_of(flag):
    return int(ARGS[ARGS.index(flag) + 1]) if flag in ARGS else 1


TENSOR, PIPELINE = size_of("--tensor-parallel-size"), size_of("--pipeline-parallel-size")


def rank_of(pid):
    """The MPI world rank of process `pid` (from its environment), or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"OMPI_COMM_WORLD_RANK="):
                    return int(entry.split(b"=", 1)[1])
    except OSError:
        return None
    return None


def descendants(pid):
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
        found += [int(c) for c in children]
        pending += [int(c) for c in children]
    return found


class TheSplitIsVisible(unittest.TestCase):
    def test_version_and_metrics_report_the_ranks_and_their_collectives(self):
        with tempfile.TemporaryDirectory(prefix="nibble-e2e-model-") as tmp:
            server = NibbleServer(convert_stories260k(tmp)).start()
            try:
                self.assertEqual(server.get("/version").json()["parallel"],
                                 {"tensor": TENSOR, "expert": 1, "pipeline": PIPELINE, "ranks": TENSOR * PIPELINE})
                self.assertEqual(metric(server.metrics(), "nibble_parallel_ranks", kind="tensor"), TENSOR)
                self.assertEqual(metric(server.metrics(), "nibble_parallel_ranks", kind="pipeline"), PIPELINE)
                answer = server.post("/v1/completions", {"model": "stories260K", "prompt": "Once upon a time",
                                                         "max_tokens": 8, "temperature": 0})
                self.assertEqual(answer.status, 200, answer)
                # Counted before each step: the steps after the first have been.
                samples = server.metrics()
                # Tensor ranks sum and gather; stage 0 sends activations on and receives logits.
                kinds = (["all_reduce", "all_gather"] if TENSOR > 1 else []) + (["send", "recv"] if PIPELINE > 1 else [])
                for kind in kinds:
                    self.assertGreater(metric(samples, "nibble_collective_calls_total", collective=kind), 0, kind)
                    if kind != "recv":  # bytes count what a rank sends or contributes
                        self.assertGreater(metric(samples, "nibble_collective_bytes_total", collective=kind), 0, kind)
            finally:
                server.close()


class BatchedServingMatchesOneRank(unittest.TestCase):
    def test_mixed_concurrent_requests_get_what_one_rank_answers(self):
        """Prefills of different lengths, decodes, n > 1, streamed and whole, all at once,
        so the steps batch them: the split server's greedy texts are one process's."""
        prompts = ["Once upon a time", "The", "Lily and Tom went to the park to play with a big red ball and",
                   "One day, a little bird", "Sam"]
        requests = []
        for i in range(12):
            requests.append({"model": "stories260K", "prompt": prompts[i % len(prompts)], "max_tokens": 8 + 5 * i,
                             "temperature": 0, "n": 2 if i % 4 == 3 else 1, "stream": i % 3 == 1})

        def answers(server):
            def one(body):
                if not body["stream"]:
                    answer = server.post("/v1/completions", body)
                    self.assertEqual(answer.status, 200, answer)
                    return sorted((c["index"], c["text"]) for c in answer.json()["choices"])
                connection, response = server.open_stream("/v1/completions", body, timeout=120)
                texts = {}
                for line in response:
                    if line.startswith(b"data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
                connection.close()
                return sorted(texts.items())
            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                return list(pool.map(one, requests))

        with tempfile.TemporaryDirectory(prefix="nibble-e2e-model-") as tmp:
            model = convert_stories260k(tmp)
            alone = NibbleServer(model, split=False).start()
            try:
                want = answers(alone)
            finally:
                alone.close()
            split = NibbleServer(model).start()
            try:
                got = answers(split)
            finally:
                split.close()
        self.assertTrue(all(text for answer in want for _, text in answer), want)
        self.assertEqual(len(want[3]), 2, "n=2 gives two choices")
        self.assertEqual(got, want)


class ADeadRankEndsTheGroup(unittest.TestCase):
    def test_killing_rank_1_mid_stream_ends_the_stream_and_the_server(self):
        with tempfile.TemporaryDirectory(prefix="nibble-e2e-model-") as tmp:
            server = NibbleServer(convert_stories260k(tmp)).start()
            try:
                workers = [p for p in descendants(server.proc.pid) if rank_of(p) == 1]
                self.assertEqual(len(workers), 1, f"rank 1 among {descendants(server.proc.pid)}")
                connection, response = server.open_stream(
                    "/v1/completions", {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 480,
                                        "ignore_eos": True, "stream": True}, timeout=LIMIT_S)
                self.assertEqual(response.status, 200)
                self.assertTrue(response.readline().startswith(b"data: "), "the stream started")
                killed_at = time.monotonic()
                os.kill(workers[0], signal.SIGKILL)
                # The stream ends (an error or a cut connection), well before it could finish.
                try:
                    while response.readline():
                        self.assertLess(time.monotonic() - killed_at, LIMIT_S, "the stream kept going")
                except OSError:
                    pass
                connection.close()
                status = server.proc.wait(timeout=LIMIT_S)
                self.assertLess(time.monotonic() - killed_at, LIMIT_S)
                self.assertNotEqual(status, 0, "the group exits with a failure")
                self.assertIn("rank 1", server.stderr(), "the launcher names the rank that died")
            finally:
                server.close()


    def test_a_hung_rank_fails_the_step_and_ends_the_group(self):
        # A peer that stops answering is found by the collective's deadline
        # (3 s here, 30 s by default): the step's request gets the error, /health
        # goes red, and every rank ends.
        with tempfile.TemporaryDirectory(prefix="nibble-e2e-model-") as tmp:
            server = NibbleServer(convert_stories260k(tmp), "--collective-timeout", "3").start()
            try:
                workers = [p for p in descendants(server.proc.pid) if rank_of(p) == 1]
                self.assertEqual(len(workers), 1)
                connection, response = server.open_stream(
                    "/v1/completions", {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 480,
                                        "ignore_eos": True, "stream": True}, timeout=LIMIT_S)
                self.assertEqual(response.status, 200)
                self.assertTrue(response.readline().startswith(b"data: "))
                stopped_at = time.monotonic()
                os.kill(workers[0], signal.SIGSTOP)
                events = b""
                try:
                    while True:
                        line = response.readline()
                        if not line:
                            break
                        events += line
                        self.assertLess(time.monotonic() - stopped_at, LIMIT_S, "the stream kept going")
                except OSError:
                    pass
                connection.close()
                self.assertIn(b"did not complete within 3.0 s", events, "the request is told why it failed")
                status = server.proc.wait(timeout=LIMIT_S)
                self.assertLess(time.monotonic() - stopped_at, LIMIT_S)
                self.assertNotEqual(status, 0)
                self.assertIn("parallel_group_failed", server.stderr())
            finally:
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                server.close()


if __name__ == "__main__":
    unittest.main()
