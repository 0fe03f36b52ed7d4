#!/usr/bin/env bash
# Tensor parallelism on CPU ranks against one process with as many threads:
# `nibble generate` decode tokens/s, interleaved rounds in one run (every model
# in every round), and rank 0's time and bytes in collectives per step.
# docs/perf/ records results.
#   bench/tensor_parallel_bench.sh MODEL[,MODEL...] RANKS [ROUNDS] [TOKENS]
# MODEL must split RANKS ways (nibble inspect --tensor-parallel-size shows it).
# Two names are made on first use, into the git-ignored .cache/bench/:
#   stories260K      the llama2.c checkpoint in ../shared, converted
#   smollm2-shaped   SmolLM2-135M's shape with 8 heads (bench/make_smollm2_tp_model.py,
#                    random Q4_0 weights, the tokenizer of models/SmolLM2-135M-Instruct.Q4_1.gguf)
# The CPU backend's defaults apply (int8 activations on VNNI CPUs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="$1" ranks="$2" rounds="${3:-3}" tokens="${4:-200}"
bin="$root/build/cli/nibble"
cache="$root/.cache/bench"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none

# The path of a model argument, making the two named ones when missing.
resolve() {
  case "$1" in
    stories260K)
      local shared="$root/../shared/models/stories260K"
      [[ -d "$cache/stories260K" ]] || "$bin" convert --from llama2c "$shared/stories260K.bin" \
        --tokenizer "$shared/tok512.bin" --out "$cache/stories260K" >&2
      echo "$cache/stories260K" ;;
    smollm2-shaped)
      [[ -f "$cache/smollm2-tp8.gguf" ]] || "$root/.cache/venvs/gptq/bin/python" "$root/bench/make_smollm2_tp_model.py" \
        "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$cache/smollm2-tp8.gguf" >&2
      echo "$cache/smollm2-tp8.gguf" ;;
    *) echo "$1" ;;
  esac
}

IFS=, read -ra names <<<"$models"
paths=()
for name in "${names[@]}"; do paths+=("$(resolve "$name")"); done
report() {
  python3 "$root/bench/tensor_parallel_report.py" "$1"
}
echo "models ${names[*]}: $ranks ranks x 1 thread vs 1 rank x $ranks threads, $tokens tokens, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  for i in "${!paths[@]}"; do
    args=(generate -m "${paths[$i]}" -p "Once upon a time" -n "$tokens" --ignore-eos --temperature 0 --json)
    "$bin" "${args[@]}" -t "$ranks" | report "round $round ${names[$i]}: 1 x $ranks threads"
    mpirun -np "$ranks" "$bin" "${args[@]}" -t 1 --tensor-parallel-size "$ranks" |
      report "round $round ${names[$i]}: TP $ranks x 1 thread"
  done
done
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
