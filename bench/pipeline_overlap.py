#!/usr/bin/env python3
"""Pipeline parallelism: do the stages overlap? Same run, same ranks, micro-batches on and off.

Starts `mpirun -np P nibble serve --pipeline-parallel-size P` (one thread a rank)
twice per round, with --pipeline-micro-batches 1 (each step passes the stages
one after another: no overlap, the baseline) and with P micro-batches (stage s
runs micro-batch m while stage s-1 runs m+1), and in each sends CONCURRENCY
greedy completions at once; reports output tokens/s and the ratio, rounds
interleaved so machine load hits both alike. Also one process with P threads,
for scale. docs/perf/ records results.

    bench/pipeline_overlap.py MODEL [--stages 2] [--concurrency 16] [--tokens 64] [--rounds 2]
"""
import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(ROOT, "build", "cli", "nibble")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_hwloc_base_binding_policy": "none",
           "OMPI_MCA_btl": "self,vader", "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
PROMPTS = ["Once upon a time", "The little dog", "In a small town", "Tom and his friend", "The sun was"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def measure(command, port, args):
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **MPI_ENV})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        model = os.path.basename(args.model.rstrip("/")).removesuffix(".gguf")
        bodies = [{"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.tokens,
                   "temperature": 0, "ignore_eos": True} for i in range(args.concurrency)]
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(lambda body: post(port, body), bodies))
        seconds = time.monotonic() - start
        tokens = sum(a["usage"]["completion_tokens"] for a in answers)
        return tokens / seconds, [a["choices"][0]["text"] for a in answers]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"model {args.model}, {args.stages} stages x 1 thread, {args.concurrency} concurrent greedy completions "
          f"of {args.tokens} tokens, load {open('/proc/loadavg').read().split()[:3]}")
    serve = ["serve", "-m", args.model, "--max-num-seqs", str(args.concurrency)]
    results = {"one process": [], "micro-batches 1": [], f"micro-batches {args.stages}": []}
    texts = {}
    for round_ in range(1, args.rounds + 1):
        for name in results:
            port = free_port()
            if name == "one process":
                command = [BIN, *serve, "--port", str(port), "-t", str(args.stages)]
            else:
                micro = name.split()[-1]
                command = ["mpirun", "-np", str(args.stages), BIN, *serve, "--port", str(port), "-t", "1",
                           "--pipeline-parallel-size", str(args.stages), "--pipeline-micro-batches", micro]
            rate, outputs = measure(command, port, args)
            texts.setdefault(name, outputs)
            results[name].append(rate)
            print(f"round {round_}: {name:>18}: {rate:8.1f} output tok/s", flush=True)
    best = {name: max(rates) for name, rates in results.items()}
    base = best["micro-batches 1"]
    for name, rate in best.items():
        print(f"best {name:>18}: {rate:8.1f} tok/s, {rate / base:.2f}x micro-batches 1")
    same = all(t == texts["one process"] for t in texts.values())
    print(f"greedy texts identical across the three: {same}")


if __name__ == "__main__":
    main()
