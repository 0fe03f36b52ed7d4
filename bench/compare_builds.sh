#!/usr/bin/env bash
# The same benchmarks on two builds, interleaved in one run, so their ratio is not
# the machine's drift: batch_step_bench (decode steps at 1/16/32 sequences) and the
# serving sweep at concurrency 1 and 16 on SmolLM2, each build three times in turn
# (A B A B A B). Prints each measurement and the after/before ratios of the medians.
#
#   bench/compare_builds.sh BEFORE_BUILD_DIR AFTER_BUILD_DIR OUT_DIR [MODEL]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
before=$1 after=$2 out=$3
model=${4:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
rounds=${COMPARE_ROUNDS:-3}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    dir=$before
    [[ $side == after ]] && dir=$after
    "$dir/bench/batch_step_bench" --model "$model" --threads 2 --context 128 --batches 1,16,32 --repeats 20 \
      >"$out/step-$side-$round.txt" 2>&1
    NIBBLE_BIN="$dir/cli/nibble" NIBBLE_SWEEP_LEVELS="1 16" "$root/bench/serve_sweep.sh" "$out/sweep-$side-$round" \
      "$model" >"$out/sweep-$side-$round.md" 2>&1
    echo "round $round $side done" >&2
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def steps(side):
    per = {}
    for r in range(1, rounds + 1):
        for line in open(f"{out}/step-{side}-{r}.txt"):
            m = re.match(r"\s*(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+x", line)  # M, step ms, tokens/s, vs M=1
            if m:
                per.setdefault(int(m.group(1)), []).append(float(m.group(2)))
    return per
def sweep(side):
    per = {}
    for r in range(1, rounds + 1):
        for c in (1, 16):
            d = json.load(open(f"{out}/sweep-{side}-{r}/c{c}.json"))
            per.setdefault(c, []).append(d["output_throughput"])
    return per
sb, sa = steps("before"), steps("after")
print("| decode step | before ms (runs) | after ms (runs) | after/before speed |")
print("|---|---|---|---|")
for m in sorted(sb):
    b, a = statistics.median(sb[m]), statistics.median(sa.get(m, [float("nan")]))
    print(f"| M={m} | {b:.2f} ({', '.join(f'{x:.2f}' for x in sb[m])}) | {a:.2f} ({', '.join(f'{x:.2f}' for x in sa.get(m, []))}) | {b / a:.3f} |")
wb, wa = sweep("before"), sweep("after")
print()
print("| serving | before tok/s (runs) | after tok/s (runs) | after/before |")
print("|---|---|---|---|")
for c in (1, 16):
    b, a = statistics.median(wb[c]), statistics.median(wa[c])
    print(f"| C={c} | {b:.0f} ({', '.join(f'{x:.0f}' for x in wb[c])}) | {a:.0f} ({', '.join(f'{x:.0f}' for x in wa[c])}) | {a / b:.3f} |")
PY
