"""What the quality benches share: run a tool (its output, or exit with its tail)
and read one number out of its output."""
import re
import subprocess
import sys


def run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout + proc.stderr


def number(pattern, text):
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"no match for {pattern!r} in:\n{text[-2000:]}")
    return float(m.group(1))
