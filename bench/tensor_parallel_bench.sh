#!/usr/bin/env bash
# Tensor parallelism on CPU ranks against one process with as many threads:
# `nibble generate` decode tokens/s, interleaved rounds in one run, and rank 0's
# time and bytes in collectives per step. docs/perf/ records results.
#   bench/tensor_parallel_bench.sh MODEL RANKS [ROUNDS] [TOKENS]
# MODEL must split RANKS ways (nibble inspect --tensor-parallel-size shows it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="$1" ranks="$2" rounds="${3:-3}" tokens="${4:-200}"
bin="$root/build/cli/nibble"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
args=(generate -m "$model" -p "Once upon a time" -n "$tokens" --ignore-eos --temperature 0 --json)
report() {
  python3 "$root/bench/tensor_parallel_report.py" "$1"
}
echo "model $model, $ranks ranks x 1 thread vs 1 rank x $ranks threads, $tokens tokens, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  "$bin" "${args[@]}" -t "$ranks" | report "round $round: 1 x $ranks threads"
  mpirun -np "$ranks" "$bin" "${args[@]}" -t 1 --tensor-parallel-size "$ranks" | report "round $round: TP $ranks x 1 thread"
done
