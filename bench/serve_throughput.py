"""Throughput of `peftlab serve` with mixed-adapter batches vs one adapter at a time.

Starts the real HTTP server in-process on a free port with the given adapters and sends
the same concurrent traffic (requests alternating between adapters) under three modes,
alternating the modes over several rounds on one loaded model:

- mixed: requests for different adapters share one forward pass (peft adapter_names);
- per_adapter: batched, but one adapter per forward pass (what a server without mixed
  batches does: it switches the active adapter between groups);
- one_at_a_time: no batching, each request alone.

Prints requests/s and latency per mode (medians over rounds) and writes JSON.
`--tenants N` loads every adapter N times under different names (tenant1-sentiment,
...), as a multi-tenant server holds many adapters with few requests each; the traffic
then spreads over all of them.

    python bench/serve_throughput.py --adapter sentiment=runs/a/adapter \\
        --adapter topics=runs/b/adapter --requests 192 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from peftlab.adapters.package import open_package
from peftlab.config import DataArgs
from peftlab.data.sources import load
from peftlab.fsutil import write_json_atomic
from peftlab.serving import Limits, Server, parse_adapters
from peftlab.serving.batcher import Batcher
from peftlab.serving.engine import Engine

MODES = {  # name -> (mix adapters in one pass, largest batch)
    "mixed": (True, 16),
    "per_adapter": (False, 16),
    "one_at_a_time": (False, 1),
}


@functools.cache
def texts_for(adapter: str, count: int) -> list[str]:
    """Test-split inputs of the adapter's own dataset (built-ins or local files)."""
    cfg = open_package(adapter).config
    args = DataArgs(**{**cfg.data.__dict__, "test_samples": count})
    return [ex.text for ex in load(args, cfg.task.name).splits["test"]]


def post(url: str, body: dict) -> float:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - started


def traffic(engine: Engine, adapters: dict[str, str], count: int) -> list[tuple[str, dict]]:
    inputs = {name: texts_for(path, count) for name, path in adapters.items()}
    names = list(adapters)
    calls = []
    for i in range(count):
        name = names[i % len(names)]
        text = inputs[name][(i // len(names)) % len(inputs[name])]
        if engine.slots[name].kind == "classification":
            calls.append(("/v1/classify", {"model": name, "input": text}))
        else:
            calls.append(("/v1/completions", {"model": name, "prompt": text}))
    return calls


def measure(engine, mode: str, calls, concurrency: int) -> dict:
    mix, max_batch = MODES[mode]
    engine.mix = mix
    batcher = Batcher(engine, max_batch=max_batch, max_wait_s=0.01, queue_size=4096).start()
    server = Server(engine, batcher, "127.0.0.1", 0, Limits(), None).start()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(lambda c: post(server.url + c[0], c[1]), calls))
        seconds = time.perf_counter() - started
    finally:
        server.stop()  # and its batcher
    latencies.sort()
    return {
        "requests_per_s": len(calls) / seconds,
        "p50_latency_s": latencies[len(latencies) // 2],
        "p95_latency_s": latencies[int(len(latencies) * 0.95)],
        "mean_batch": batcher.metrics.mean_batch_size(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=1, help="copies of each adapter")
    parser.add_argument("--out", default="bench/serve_results.json")
    args = parser.parse_args()

    adapters = parse_adapters(args.adapter)
    if args.tenants > 1:
        adapters = {
            f"tenant{t}-{name}": path
            for t in range(1, args.tenants + 1)
            for name, path in adapters.items()
        }
    engine = Engine(adapters)
    calls = traffic(engine, adapters, args.requests)
    measure(engine, "mixed", calls[:32], args.concurrency)  # warm-up
    rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for number in range(args.rounds):
        for mode in MODES:  # alternating modes: machine noise hits all of them alike
            result = measure(engine, mode, calls, args.concurrency)
            rounds[mode].append(result)
            print(
                f"round {number + 1} {mode:14s} {result['requests_per_s']:7.2f} req/s  "
                f"p50 {result['p50_latency_s']:.2f} s  mean batch {result['mean_batch']}"
            )
    summary = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in rounds.items()
    }
    base = summary["mixed"]["requests_per_s"]
    print("\nmedians:")
    for mode, row in summary.items():
        ratio = base / row["requests_per_s"]
        row["mixed_speedup"] = round(ratio, 3)  # mixed req/s over this mode's
        print(
            f"{mode:14s} {row['requests_per_s']:7.2f} req/s  p50 {row['p50_latency_s']:.2f} s"
            f"  p95 {row['p95_latency_s']:.2f} s  (mixed is {ratio:.2f}x)"
        )
    result = {
        "adapters": adapters,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "tenants": args.tenants,
        "rounds": args.rounds,
        "medians": summary,
        "all_rounds": rounds,
    }
    write_json_atomic(args.out, result)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
