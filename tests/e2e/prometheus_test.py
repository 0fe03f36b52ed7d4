"""A real Prometheus (Debian's `prometheus`, installed by scripts/setup --test) scrapes
`nibble serve` every second; PromQL over the time-to-first-token histogram must
then see the completions the test sent.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from nibble_server import ServerTestCase, Stories260KServer, free_port

COMPLETIONS = 3


class Prometheus:
    """A Prometheus process with its own config, data dir and port."""

    def __init__(self, target_port):
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.path.exists(binary):
            raise AssertionError("prometheus is not installed: run scripts/setup --test")
        self.tmp = tempfile.TemporaryDirectory(prefix="nibble-e2e-prometheus-")
        config = os.path.join(self.tmp.name, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: nibble\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.port = free_port()
        self.log = open(os.path.join(self.tmp.name, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(self.tmp.name, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return response.status, response.read()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.output()}")

    def query(self, promql):
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        out = json.loads(body)
        if status != 200 or out["status"] != "success":
            raise AssertionError(f"{promql}: {body!r}")
        return out["data"]["result"]

    def wait_for(self, promql, predicate, timeout=60):
        """Polls a query until predicate(first value) holds; returns that value."""
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result and predicate(float(result[0]["value"][1])):
                return float(result[0]["value"][1])
            time.sleep(0.5)
        raise AssertionError(f"{promql} never matched; last result {result}\n{self.output()[-3000:]}")

    def close(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        self.tmp.cleanup()
        return code


class ScrapedByPrometheus(Stories260KServer, ServerTestCase):
    served_model_name = "tiny-stories"  # the name clients send and metrics carry
    def test_promql_sees_the_time_to_first_token_histogram(self):
        prometheus = Prometheus(self.server.port)
        try:
            prometheus.wait_ready()
            # The first scrape comes before any request, so rate() sees the counters grow.
            prometheus.wait_for('up{job="nibble"}', lambda v: v == 1)
            for seed in range(COMPLETIONS):
                response = self.server.post("/v1/completions", {"model": self.model_name, "prompt": "Once upon",
                                                                "max_tokens": 8, "temperature": 0.5, "seed": seed})
                self.assertEqual(response.status, 200, response)
            model = self.model_name
            count = prometheus.wait_for(f'sum(nibble_time_to_first_token_seconds_count{{model="{model}"}})',
                                        lambda v: v >= COMPLETIONS)
            self.assertEqual(count, COMPLETIONS)
            median = prometheus.wait_for(
                "histogram_quantile(0.5, sum by (le) (rate(nibble_time_to_first_token_seconds_bucket"
                f'{{model="{model}"}}[1m])))', lambda v: v == v)  # v == v: not NaN
            self.assertGreater(median, 0)
            tokens = prometheus.wait_for(f'sum(nibble_generation_tokens_total{{model="{model}"}})',
                                         lambda v: v >= COMPLETIONS * 8)
            self.assertEqual(tokens, COMPLETIONS * 8)
            # Nothing in flight any more, as Prometheus sees it too.
            prometheus.wait_for(f'nibble_requests_running{{model="{model}"}}', lambda v: v == 0)
        finally:
            code = prometheus.close()
        self.assertEqual(code, 0, "prometheus did not shut down cleanly")


if __name__ == "__main__":
    unittest.main()
