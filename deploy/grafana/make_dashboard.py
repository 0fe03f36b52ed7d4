#!/usr/bin/env python3
"""Writes nibble-dashboard.json, the Grafana dashboard of `nibble serve`'s metrics.

The dashboard is generated so that every panel has the same shape and every query
the same selector; edit the PANELS table and run this script again:

    python3 deploy/grafana/make_dashboard.py

tests/e2e/dashboard_test.py runs every query of the JSON against a real Prometheus
scraping a real server under load and fails on a panel without data.
"""
import json
import os

SEL = 'model=~"$model"'
RATE = "$__rate_interval"


def quantiles(metric, qs=(0.5, 0.9, 0.99)):
    return [(f"p{round(q * 100)}",
             f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))") for q in qs]


# (title, unit, description, [(legend, PromQL)])
PANELS = [
    ("Requests finished / s", "reqps", "Sequences finished per second, by finish reason (stop, length, cancelled, error).",
     [("{{finish_reason}}", f"sum by (finish_reason) (rate(nibble_request_success_total{{{SEL}}}[{RATE}]))")]),
    ("Token throughput", "short", "Prompt tokens processed and tokens generated per second.",
     [("prompt tok/s", f"sum(rate(nibble_prompt_tokens_total{{{SEL}}}[{RATE}]))"),
      ("generated tok/s", f"sum(rate(nibble_generation_tokens_total{{{SEL}}}[{RATE}]))")]),
    ("Time to first token", "s", "Arrival to first token, from the histogram (queueing and prefill included).",
     quantiles("nibble_time_to_first_token_seconds")),
    ("Inter-token latency", "s", "Time between consecutive tokens of a sequence.",
     quantiles("nibble_inter_token_latency_seconds")),
    ("End-to-end latency", "s", "Arrival to last token.", quantiles("nibble_e2e_request_latency_seconds")),
    ("Queue time", "s", "Time sequences wait before they reach the model.",
     quantiles("nibble_request_queue_time_seconds", (0.5, 0.99))),
    ("Running and waiting", "short", "Sequences on the model, and sequences queued for it (the autoscaling signal).",
     [("running", f"sum(nibble_requests_running{{{SEL}}})"), ("waiting", f"sum(nibble_requests_waiting{{{SEL}}})")]),
    ("KV-cache usage", "percentunit", "Fraction of the paged KV cache holding tokens, per replica.",
     [("{{instance}}", f"max by (instance) (nibble_kv_cache_usage_ratio{{{SEL}}})")]),
    ("Prefix-cache hit ratio", "percentunit", "Prompt tokens found in the prefix cache over prompt tokens looked up.",
     [("hit ratio", f"sum(rate(nibble_prefix_cache_hit_tokens_total{{{SEL}}}[{RATE}])) / "
                    f"sum(rate(nibble_prefix_cache_queried_tokens_total{{{SEL}}}[{RATE}]))")]),
    ("Preemptions / s", "short", "Sequences preempted (KV blocks freed, recomputed later) when the cache ran out.",
     [("preemptions/s", f"sum(rate(nibble_preemptions_total{{{SEL}}}[{RATE}]))")]),
    ("Errors / s by code", "reqps", "Requests answered with an error status (429 queue full, 503 loading/draining, ...).",
     [("{{code}}", f"sum by (code) (rate(nibble_request_errors_total{{{SEL}}}[{RATE}]))")]),
    ("Tokens per step", "short", "Tokens computed per batched forward pass: how full continuous batching keeps the model.",
     [("tokens/step", f"sum(rate(nibble_scheduler_step_tokens_total{{{SEL}}}[{RATE}])) / "
                      f"sum(rate(nibble_scheduler_steps_total{{{SEL}}}[{RATE}]))")]),
    ("Prompt and generation length", "short", "Median tokens per sequence.",
     [("prompt p50", f"histogram_quantile(0.5, sum by (le) (rate(nibble_request_prompt_tokens_bucket{{{SEL}}}[{RATE}])))"),
      ("generation p50",
       f"histogram_quantile(0.5, sum by (le) (rate(nibble_request_generation_tokens_bucket{{{SEL}}}[{RATE}])))")]),
    ("Step loop stalled", "s", "How long each replica's step loop has had work without finishing a step "
     "(what /health/ready and /health/live judge; 0 when idle or moving).",
     [("{{instance}}", f"max by (instance) (nibble_step_loop_stalled_seconds{{{SEL}}})")]),
    ("Replicas and load time", "short", "Replicas reporting this model, and how long each took to load (s).",
     [("replicas", f"count(nibble_model_load_seconds{{{SEL}}})"),
      ("load s {{instance}}", f"max by (instance) (nibble_model_load_seconds{{{SEL}}})")]),
]


def panel(index, title, unit, description, targets):
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr,
                     "legendFormat": legend, "range": True, "refId": chr(ord("A") + i)}
                    for i, (legend, expr) in enumerate(targets)],
    }


def dashboard():
    return {
        "title": "nibble",
        "uid": "nibble-serve",
        "description": "nibble serve: throughput, latency percentiles, queue, KV cache, prefix cache, preemptions, errors",
        "tags": ["nibble", "llm", "inference"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "30s",
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "model", "label": "Model", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "definition": "label_values(nibble_model_load_seconds, model)",
             "query": {"query": "label_values(nibble_model_load_seconds, model)", "refId": "models"},
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "sort": 1},
        ]},
        "annotations": {"list": []},
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nibble-dashboard.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(f"wrote {out}: {len(PANELS)} panels")
