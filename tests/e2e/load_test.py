"""Load on `nibble serve` with continuous batching (and `nibble bench serve`, the
benchmark client, checked against what the server did): 240 streaming requests from 32
concurrent clients, mixed prompt and output lengths, 10 % of clients hanging up
mid-stream. Nothing may fail on the server's side (no 5xx, every kept request
finishes with a finish_reason and the usage it streamed), and afterwards nothing
may be left: no request running or waiting, KV-cache usage back to 0.
"""
import concurrent.futures
import http.client
import json
import os
import random
import re
import subprocess
import tempfile
import unittest

from nibble_server import BIN, SMOLLM2, ServerTestCase, Stories260KServer, metric, sse_events

REQUESTS = 240
CONCURRENCY = 32
ABORT_EVERY = 10  # one client in ten leaves after its first chunk


class LoadTest(Stories260KServer, ServerTestCase):
    # A small 8-bit pool and step budget, so the run also preempts and prefills in chunks.
    server_args = ("--max-num-seqs", "16", "--max-num-batched-tokens", "64", "--block-size", "8",
                   "--kv-cache-memory", "256KiB", "--kv-cache-dtype", "int8", "--max-queued", "512")

    def one_request(self, i):
        rng = random.Random(i)
        words = " ".join(rng.choice(["Once", "upon", "a", "time", "there", "was", "a", "little", "dog", "cat"])
                         for _ in range(rng.randint(1, 60)))
        body = {"model": self.model_name, "prompt": words, "max_tokens": rng.randint(1, 120),
                "temperature": rng.choice([0, 0.7]), "seed": i, "stream": True,
                "stream_options": {"include_usage": True}}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=300)
        try:
            connection.request("POST", "/v1/completions", body=json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                return {"status": response.status, "body": response.read()[:300]}
            events = sse_events(response)
            if i % ABORT_EVERY == 0:
                next(events)
                connection.sock.close()
                return {"status": 200, "aborted": True}
            chunks = [json.loads(e) for e in events if e != "[DONE]"]
            reasons = [c["choices"][0]["finish_reason"] for c in chunks
                       if c["choices"] and c["choices"][0]["finish_reason"]]
            streamed = sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"])
            return {"status": 200, "reasons": reasons, "usage": chunks[-1].get("usage"), "streamed": streamed,
                    "max_tokens": body["max_tokens"]}
        finally:
            connection.close()

    def test_many_clients_some_leaving_leave_nothing_behind(self):
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(self.one_request, range(REQUESTS)))
        failed = [r for r in results if r["status"] != 200]
        self.assertEqual(failed, [], "every request is answered 200")
        kept = [r for r in results if not r.get("aborted")]
        self.assertGreater(len(kept), REQUESTS * 0.8)
        for r in kept:
            self.assertEqual(len(r["reasons"]), 1, r)
            self.assertIn(r["reasons"][0], ("stop", "length"), r)
            self.assertIsNotNone(r["usage"], r)
            self.assertLessEqual(r["usage"]["completion_tokens"], r["max_tokens"])
            self.assertGreaterEqual(r["usage"]["completion_tokens"], r["streamed"])
            if r["reasons"][0] == "length":
                self.assertEqual(r["usage"]["completion_tokens"], r["max_tokens"], r)
        labels = {"model": self.model_name}
        for name in ("nibble_requests_running", "nibble_requests_waiting", "nibble_kv_cache_usage_ratio"):
            self.server.wait_for_metric(name, lambda v: v == 0, timeout=30, **labels)
        samples = self.server.metrics()
        self.assertIsNone(metric(samples, "nibble_request_errors_total", code="500", **labels))
        self.assertGreater(metric(samples, "nibble_preemptions_total", **labels), 0, "the small pool preempted")
        steps = metric(samples, "nibble_scheduler_steps_total", **labels)
        tokens = metric(samples, "nibble_scheduler_step_tokens_total", **labels)
        self.assertGreater(tokens / steps, 2, "steps were shared by several sequences")


class BenchServe(Stories260KServer, ServerTestCase):
    def test_nibble_bench_serve_counts_what_the_server_did(self):
        with tempfile.TemporaryDirectory() as tmp:
            dataset = os.path.join(tmp, "requests.jsonl")
            lengths = [5 + 7 * i for i in range(12)]
            with open(dataset, "w") as f:
                for i, n in enumerate(lengths):
                    f.write(json.dumps({"prompt": f"Once upon a time {i}", "max_tokens": n}) + "\n")
            out = os.path.join(tmp, "result.json")
            result = subprocess.run([BIN, "bench", "serve", "--base-url", f"{self.server.base_url}/v1",
                                     "--model", self.model_name, "--dataset", dataset, "--max-concurrency", "4",
                                     "--ignore-eos", "--result-json", out], capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("output tokens/s", result.stdout)
            report = json.load(open(out))
        self.assertEqual(report["completed"], len(lengths))
        self.assertEqual(report["failed"], 0)
        self.assertEqual(report["output_tokens"], sum(lengths), "ignore_eos: exactly max_tokens each")
        self.assertGreater(report["prompt_tokens"], 0)
        for name in ("ttft", "tpot", "itl", "e2e"):
            # (chunks that arrive in one read have no gap between them: ITL may be 0)
            self.assertGreaterEqual(report[name]["p50_ms"], 0 if name == "itl" else 1e-6, name)
            self.assertGreaterEqual(report[name]["p99_ms"], report[name]["p50_ms"], name)
        self.assertGreaterEqual(report["e2e"]["p50_ms"], report["ttft"]["p50_ms"])
        self.assertGreater(report["output_throughput"], 0)


class MemoryBudget(unittest.TestCase):
    def test_a_budget_below_1_2_times_the_weights_refuses_to_start_with_the_numbers(self):
        result = subprocess.run([BIN, "serve", "-m", SMOLLM2, "--port", "0", "--memory-budget", "100MiB"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("1.2 x", result.stderr)
        # The packed weights are named: SmolLM2 Q4_1 is 92-94 MiB whatever the packing's padding.
        named = re.search(r"the weights \((\d+\.\d\d) MiB at", result.stderr)
        self.assertIsNotNone(named, result.stderr)
        self.assertTrue(92.0 <= float(named.group(1)) <= 94.0, named.group(0))
        self.assertIn("What would fit", result.stderr)


if __name__ == "__main__":
    unittest.main()
