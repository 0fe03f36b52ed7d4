"""Every dashboard query returns data against a real Prometheus scraping a real
`nibble serve` under load: the panels of deploy/grafana/nibble-dashboard.json, and,
with `--metrics-compat vllm`, those of vLLM's own example dashboard (the queries in
fixtures/vllm_dashboard_queries.json, with its source), its model_name variable
included.

The load mixes what each panel needs to see: streamed and whole completions, a
shared prompt prefix (prefix-cache hits), n=2 choices, bad requests (errors by
code) and more sequences than a deliberately small KV cache holds (preemptions).

With NIBBLE_DASHBOARD_PNG=path (and NIBBLE_DASHBOARD_LOAD_SECONDS, default 25) the
nibble dashboard is also drawn from Prometheus' range queries into a PNG
(deploy/grafana/render_dashboard.py; needs matplotlib), which is how
docs/dashboard.png was made (90 s of load).
"""
import json
import math
import os
import sys
import threading
import time
import unittest

from nibble_server import ServerTestCase, Stories260KServer
from prometheus_test import Prometheus

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "nibble-dashboard.json")
VLLM_QUERIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vllm_dashboard_queries.json")
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval at a 1 s scrape interval, with room for a loaded CI machine
LOAD_SECONDS = int(os.environ.get("NIBBLE_DASHBOARD_LOAD_SECONDS", "25"))  # longer for a nicer PNG
CLIENTS = 6
SHARED_PREFIX = "Once upon a time there was a little girl named Lily. She liked to play outside. "


def nibble_queries():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [(panel["title"], target["legendFormat"], target["expr"])
            for panel in dashboard["panels"] for target in panel["targets"]]


def vllm_queries():
    with open(VLLM_QUERIES) as f:
        fixture = json.load(f)
    return fixture, [(panel["title"], expr) for panel in fixture["panels"] for expr in panel["exprs"]]


class Load:
    """CLIENTS threads sending a mix of requests until stopped; counts what they got."""

    def __init__(self, server, model):
        self.server, self.model = server, model
        self.stop = threading.Event()
        self.statuses = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def client(self, index):
        k = 0
        while not self.stop.is_set():
            k += 1
            body = {"model": self.model, "prompt": SHARED_PREFIX + f"Story {index}.{k}:", "temperature": 0.8,
                    "seed": k, "max_tokens": 96, "ignore_eos": True}
            if k % 3 == 0:
                body["stream"] = True
            if k % 4 == 0:
                body["n"] = 2
            if k % 5 == 0:
                body["max_tokens"] = -1  # a 400
            try:
                response = self.server.post("/v1/completions", body, timeout=120)
                status = response.status
            except OSError:
                status = "connection error"
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)


def has_data(result):
    """At least one series with a real number (histogram_quantile gives NaN without observations)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


class DashboardsUnderLoad(Stories260KServer, ServerTestCase):
    served_model_name = "tiny-stories"
    # 48 blocks of 16 positions (20 KiB each on stories260K) for 8 sequences of ~130 tokens
    # (9 blocks each): some must be preempted.
    server_args = ("--metrics-compat", "vllm", "--max-num-seqs", "8", "--block-size", "16",
                   "--kv-cache-memory", "960KiB")

    def test_every_panel_of_both_dashboards_returns_data(self):
        prometheus = Prometheus(self.server.port)
        try:
            prometheus.wait_ready()
            prometheus.wait_for('up{job="nibble"}', lambda v: v == 1)
            start = time.time()
            with Load(self.server, self.model_name) as load:
                time.sleep(LOAD_SECONDS)
                # Queried while the load still runs, as a dashboard would be.
                empty = self.empty_panels(prometheus)
                end = time.time()
            self.assertEqual(empty, [], f"panels without data (load answered {load.statuses})")
            self.assertGreater(load.statuses.get(200, 0), 20, load.statuses)
            self.assertGreater(load.statuses.get(400, 0), 0, load.statuses)
            self.assertGreater(prometheus.wait_for('sum(nibble_preemptions_total)', lambda v: True), 0,
                               "the small KV cache should have preempted something")
            self.assertGreater(prometheus.wait_for('sum(nibble_prefix_cache_hit_tokens_total)', lambda v: True), 0)
            png = os.environ.get("NIBBLE_DASHBOARD_PNG")
            if png:
                sys.path.insert(0, os.path.join(ROOT, "deploy", "grafana"))
                from render_dashboard import render
                render(f"http://127.0.0.1:{prometheus.port}", DASHBOARD, {"model": self.model_name},
                       start, end, png)
        finally:
            code = prometheus.close()
        self.assertEqual(code, 0, "prometheus did not shut down cleanly")

    def empty_panels(self, prometheus):
        """Every query of both dashboards, with Grafana's variables filled in; returns those without data."""
        empty = []
        queries = [(f"nibble: {title} / {legend}", expr.replace("$model", self.model_name))
                   for title, legend, expr in nibble_queries()]
        fixture, vllm = vllm_queries()
        queries += [(f"vLLM: {title}", expr.replace("$model_name", self.model_name)) for title, expr in vllm]
        self.assertEqual(len(queries), 26 + 27, "every target of both dashboards")
        for name, expr in queries:
            promql = expr.replace("$__rate_interval", RATE_INTERVAL)
            # A panel can be empty for a scrape or two after the load starts; give each a few tries.
            deadline = time.monotonic() + 10
            while True:
                result = prometheus.query(promql)
                if has_data(result) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if not has_data(result):
                empty.append(f"{name}: {promql} -> {result}")
        # vLLM's model_name variable: label_values({__name__=~"vllm:.*"}, model_name).
        self.assertEqual(fixture["variable"], 'label_values({__name__=~"vllm:.*"},model_name)')
        status, body = prometheus.get('/api/v1/label/model_name/values?match[]=%7B__name__%3D~%22vllm%3A.%2A%22%7D')
        self.assertEqual((status, json.loads(body)["data"]), (200, [self.model_name]))
        # What routers (the Gateway API Inference Extension) read the KV block size from.
        info = prometheus.query(f'vllm:cache_config_info{{model_name="{self.model_name}"}}')
        self.assertEqual([(i["metric"]["block_size"], i["metric"]["num_gpu_blocks"]) for i in info], [("16", "48")])
        # nibble's model variable: label_values(nibble_model_load_seconds, model).
        status, body = prometheus.get('/api/v1/label/model/values?match[]=nibble_model_load_seconds')
        self.assertEqual((status, json.loads(body)["data"]), (200, [self.model_name]))
        return empty


if __name__ == "__main__":
    unittest.main()
