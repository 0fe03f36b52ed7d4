#!/usr/bin/env python3
"""Soak test of `nibble serve` on SmolLM2 (scripts/soak runs it; CI runs a short one).

REQUESTS requests from CONCURRENCY concurrent clients against one server on
127.0.0.1: completions and chat, streamed and not, n of 1 to 3, mixed prompt and
output lengths; one request in ten (ABORT_FRACTION) is abandoned by its client
(a stream after its first event, a plain request right after it is sent).
Fails unless:
  - no answer is a 5xx (and the server counted no 5xx), every answer is a 200;
  - every kept stream ends with [DONE], one finish_reason per choice and usage;
    every kept plain answer has n choices, each with a finish_reason;
  - afterwards nibble_requests_running / _waiting and nibble_kv_cache_usage_ratio
    are 0 and nibble_kv_cache_free_blocks equals nibble_kv_cache_blocks;
  - the server's RSS at the end of the last WINDOW requests is within 5 % of its
    RSS at the end of the first WINDOW (WINDOW = 1000, or a third of a short run).
Every loop is bounded by count and by --time-limit. Writes a JSON report.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from nibble_server import SMOLLM2, NibbleServer, metric, sse_events  # noqa: E402

WORDS = ["Once", "upon", "a", "time", "there", "was", "a", "little", "robot", "who", "liked", "to", "count",
         "stars", "and", "write", "poems", "about", "the", "sea", "."]
RSS_DRIFT_LIMIT = 0.05


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Soak:
    def __init__(self, server, args):
        self.server, self.args = server, args
        self.deadline = time.monotonic() + args.time_limit
        self.lock = threading.Lock()
        self.done = 0
        self.rss_at = {}  # completed-request count -> RSS bytes then
        self.window = min(1000, max(1, args.requests // 3))

    def body(self, i, rng):
        n = rng.choice([1, 1, 1, 2, 3])
        stream = rng.random() < 0.7
        max_tokens = rng.choice([1, 4, 8, 16, 32])
        common = {"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": max_tokens, "n": n, "stream": stream,
                  "temperature": rng.choice([0, 0.8]), "seed": i}
        if stream:
            common["stream_options"] = {"include_usage": True}
        words = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 8, 40, 120])))
        if rng.random() < 0.5:
            return "/v1/completions", dict(common, prompt=words)
        return "/v1/chat/completions", dict(common, messages=[{"role": "user", "content": words}])

    def one(self, i):
        rng = random.Random(i)
        path, body = self.body(i, rng)
        abort = rng.random() < self.args.abort_fraction
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return {"i": i, "skipped": True}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=min(300, remaining))
        try:
            connection.request("POST", path, body=json.dumps(body), headers=dict(
                self.server.auth_headers(), **{"Content-Type": "application/json"}))
            if abort and not body["stream"]:
                connection.sock.close()  # gone before the answer: the server must cancel the work
                return {"i": i, "aborted": True}
            response = connection.getresponse()
            if response.status != 200:
                return {"i": i, "status": response.status, "body": response.read()[:300].decode(errors="replace")}
            if body["stream"]:
                return self.read_stream(i, response, body, abort, connection)
            answer = json.loads(response.read())
            choices = answer["choices"]
            ok = len(choices) == body["n"] and all(c.get("finish_reason") in ("stop", "length") for c in choices)
            return {"i": i, "status": 200, "complete": ok, "tokens": answer["usage"]["completion_tokens"]}
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            return {"i": i, "error": f"{type(e).__name__}: {e}", "aborted": abort}
        finally:
            connection.close()
            self.count_done()

    def read_stream(self, i, response, body, abort, connection):
        events = sse_events(response)
        if abort:
            next(events, None)
            connection.sock.close()
            return {"i": i, "status": 200, "aborted": True}
        reasons, usage, done = {}, None, False
        for event in events:
            if event == "[DONE]":
                done = True
                break
            chunk = json.loads(event)
            for choice in chunk.get("choices", []):
                if choice.get("finish_reason"):
                    reasons.setdefault(choice["index"], []).append(choice["finish_reason"])
            usage = chunk.get("usage") or usage
        ok = (done and usage is not None and sorted(reasons) == list(range(body["n"])) and
              all(len(r) == 1 and r[0] in ("stop", "length") for r in reasons.values()))
        return {"i": i, "status": 200, "complete": ok, "tokens": usage["completion_tokens"] if usage else 0,
                "reasons": reasons, "done": done}

    def count_done(self):
        with self.lock:
            self.done += 1
            done = self.done
        if done == self.window or done == self.args.requests or done % 100 == 0:
            self.rss_at[done] = rss_bytes(self.server.proc.pid)
        if done % 1000 == 0:
            print(f"soak: {done}/{self.args.requests} requests, RSS {self.rss_at[done] / 2**20:.1f} MiB",
                  file=sys.stderr, flush=True)

    def run(self):
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(self.args.concurrency) as pool:
            results = list(pool.map(self.one, range(self.args.requests)))
        return results, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--abort-fraction", type=float, default=0.10)
    parser.add_argument("--time-limit", type=float, default=3 * 3600, help="seconds for the whole run")
    parser.add_argument("--report", help="write the numbers as JSON here")
    args = parser.parse_args()

    server = NibbleServer(SMOLLM2, "--max-num-seqs", "64", "--max-queued", "1024", "--max-tokens", "64",
                          "--max-model-len", "512").start()
    try:
        soak = Soak(server, args)
        rss_start = rss_bytes(server.proc.pid)
        results, seconds = soak.run()
        labels = {"model": "SmolLM2-135M-Instruct.Q4_1"}
        settled = {}
        for name in ("nibble_requests_running", "nibble_requests_waiting", "nibble_kv_cache_usage_ratio"):
            settled[name] = server.wait_for_metric(name, lambda v: v == 0, timeout=60, **labels)
        samples = server.metrics()
        blocks = metric(samples, "nibble_kv_cache_blocks", **labels)
        free = metric(samples, "nibble_kv_cache_free_blocks", **labels)
        errors_5xx = sum(v for (n, ls), v in samples.items()
                         if n == "nibble_request_errors_total" and dict(ls).get("code", "").startswith("5"))
        rss_end = rss_bytes(server.proc.pid)
    finally:
        exit_status = server.stop()
        stderr_tail = server.stderr()[-3000:]
        server.close()

    skipped = [r for r in results if r.get("skipped")]
    aborted = [r for r in results if r.get("aborted")]
    kept = [r for r in results if not r.get("aborted") and not r.get("skipped")]
    server_errors = [r for r in results if r.get("status", 200) >= 500]
    not_ok = [r for r in kept if r.get("status") != 200 or not r.get("complete")]
    window = soak.window
    first = soak.rss_at.get(window)
    last_key = max(soak.rss_at) if soak.rss_at else None
    last = soak.rss_at.get(last_key)
    drift = (last - first) / first if first and last else None
    report = {
        "requests": args.requests, "completed": len(results) - len(skipped), "skipped_by_time_limit": len(skipped),
        "concurrency": args.concurrency, "aborted_by_client": len(aborted), "kept": len(kept),
        "kept_not_complete_or_not_200": len(not_ok), "server_5xx_seen_by_clients": len(server_errors),
        "server_5xx_counted": errors_5xx, "seconds": round(seconds, 1),
        "requests_per_second": round((len(results) - len(skipped)) / seconds, 2),
        "completion_tokens_kept": sum(r.get("tokens", 0) for r in kept),
        "settled_metrics": settled, "kv_cache_blocks": blocks, "kv_cache_free_blocks": free,
        "rss_window": window, "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_after_first_window_mib": round(first / 2**20, 1) if first else None,
        "rss_at_end_of_run_mib": round(last / 2**20, 1) if last else None,
        "rss_end_mib": round(rss_end / 2**20, 1), "rss_drift": round(drift, 4) if drift is not None else None,
        "server_exit_status": exit_status,
    }
    print(json.dumps(report, indent=2))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)

    failures = []
    if skipped:
        failures.append(f"{len(skipped)} requests not sent within --time-limit {args.time_limit} s")
    if server_errors or errors_5xx:
        failures.append(f"5xx answers: {server_errors[:5]} (server counted {errors_5xx})")
    if not_ok:
        failures.append(f"{len(not_ok)} kept requests failed or ended incomplete, e.g. {not_ok[:5]}")
    if not blocks or free != blocks:
        failures.append(f"free KV blocks {free} != total {blocks} after the run")
    if drift is None or drift >= RSS_DRIFT_LIMIT:
        failures.append(f"RSS drift {drift} between request {window} and {last_key} (limit {RSS_DRIFT_LIMIT})")
    if exit_status != 0:
        failures.append(f"the server exited with {exit_status} on SIGTERM")
    if failures:
        print("soak: FAILED\n  " + "\n  ".join(failures) + f"\n--- server stderr tail ---\n{stderr_tail}",
              file=sys.stderr)
        return 1
    print(f"soak: {len(results)} requests ({len(aborted)} aborted by clients), 0 failures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
