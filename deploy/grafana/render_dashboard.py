#!/usr/bin/env python3
"""Draws a Grafana dashboard's panels from a Prometheus' range queries into one PNG,
so people can see what the dashboard shows without running Grafana.

    python3 deploy/grafana/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --var model=SmolLM2-135M-Instruct.Q4_1 --minutes 10 --out dashboard.png

tests/e2e/dashboard_test.py calls render() with NIBBLE_DASHBOARD_PNG set (that is
how docs/dashboard.png was made). Needs matplotlib (not a test dependency).
"""
import argparse
import json
import math
import time
import urllib.parse
import urllib.request

RATE_INTERVAL = "20s"


def range_query(prometheus, promql, start, end, step):
    query = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=30) as response:
        out = json.load(response)
    if out["status"] != "success":
        raise RuntimeError(f"{promql}: {out}")
    return out["data"]["result"]


def legend(template, labels):
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def render(prometheus, dashboard_path, variables, start, end, out, step=1):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(dashboard_path) as f:
        dashboard = json.load(f)
    panels = dashboard["panels"]
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(14, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for name, value in variables.items():
                expr = expr.replace("$" + name, value)
            for series in range_query(prometheus, expr, start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if not math.isnan(float(v))]
                if points:
                    ax.plot(*zip(*points), label=legend(target["legendFormat"], series["metric"]), linewidth=1.2)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_title(f"{panel['title']} ({unit})", fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(f"{dashboard['title']} dashboard, rendered from Prometheus ({', '.join(f'{k}={v}' for k, v in variables.items())})")
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    figure.savefig(out, dpi=80)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default="deploy/grafana/nibble-dashboard.json")
    parser.add_argument("--var", action="append", default=[], help="NAME=VALUE for $NAME (e.g. model=.*)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    end = time.time()
    variables = dict(v.split("=", 1) for v in args.var) or {"model": ".*"}
    render(args.prometheus, args.dashboard, variables, end - 60 * args.minutes, end, args.out,
           step=max(1, int(args.minutes * 60 / 600)))


if __name__ == "__main__":
    main()
