#!/usr/bin/env python3
"""One line for bench/tensor_parallel_bench.sh from `nibble generate --json` on stdin:
decode tokens/s, and per step rank 0's calls, bytes and time in each collective."""
import json
import sys

d = json.load(sys.stdin)
steps = max(1, len(d["tokens"]))
line = f"{sys.argv[1]:<42} decode {d['decode_tokens_per_second']:8.1f} tok/s"
for kind, c in sorted(d.get("collectives", {}).items()):
    line += (f"  {kind}: {c['calls'] / steps:.0f}/step {c['bytes'] / steps / 1024:.1f} KiB/step "
             f"{1e6 * c['seconds'] / steps:.0f} us/step")
print(line)
