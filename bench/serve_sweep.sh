#!/usr/bin/env bash
# Serves a model with `nibble serve` and measures it with `nibble bench serve` at
# concurrency 1, 4, 16 and 64 (the sweep in docs/perf/*-serving.md), then prints a
# table with each concurrency's output tok/s as a multiple of concurrency 1's,
# measured in the same run.
#
#   bench/serve_sweep.sh OUT_DIR MODEL [nibble serve flags...]
#   e.g. bench/serve_sweep.sh /tmp/sweep models/SmolLM2-135M-Instruct.Q4_1.gguf --int8-activations
# NIBBLE_BIN picks another build's binary (bench/compare_builds.sh); NIBBLE_SWEEP_LEVELS
# another list of concurrencies ("1 16").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out=$1 model=$2
shift 2
nibble="${NIBBLE_BIN:-$root/build/cli/nibble}"
port=${NIBBLE_SWEEP_PORT:-18190}
mkdir -p "$out"
"$nibble" serve -m "$model" --port "$port" -t 2 --log-level warn "$@" >"$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.3; done
id=$(curl -sf "http://127.0.0.1:$port/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
levels=${NIBBLE_SWEEP_LEVELS:-1 4 16 64}
prompts_for() { case $1 in 1) echo 16 ;; 4) echo 32 ;; 16) echo 64 ;; *) echo 128 ;; esac; }
for concurrency in $levels; do
  prompts=$(prompts_for "$concurrency")
  "$nibble" bench serve --base-url "http://127.0.0.1:$port/v1" --model "$id" --num-prompts "$prompts" \
    --max-concurrency "$concurrency" --input-words-median 64 --output-tokens-median 64 --max-output-tokens 256 \
    --ignore-eos --seed 1 --result-json "$out/c$concurrency.json" >"$out/c$concurrency.txt" 2>&1
done
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| concurrency | prompts | output tok/s | vs C=1 | TTFT p50 / p99 (ms) | TPOT p50 (ms) | failed |")
print("|---|---|---|---|---|---|---|")
base = None
for c in (int(c) for c in os.environ.get("NIBBLE_SWEEP_LEVELS", "1 4 16 64").split()):
    d = json.load(open(f"{out}/c{c}.json"))
    rate = d["output_throughput"]
    base = base or rate
    print(f"| {c} | {d['num_prompts']} | {rate:.1f} | {rate / base:.2f}x | {d['ttft']['p50_ms']:.0f} / "
          f"{d['ttft']['p99_ms']:.0f} | {d['tpot']['p50_ms']:.1f} | {d['failed']} |")
PY
