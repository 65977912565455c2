"""Generation through `peftlab serve`: continuous batching vs whole-request batching vs one
request at a time, and vs the server a user would otherwise write (FastAPI + peft,
`set_adapter` and `generate` per request behind a lock), on the same traffic.

The traffic mixes short and long completions (every other request) over N LoRA adapters
on one base. The adapters are random non-zero LoRA weights written as plain peft folders
(seeded): what is measured is serving, not answer quality, and every mode decodes the
same greedy tokens. All modes share one loaded model and alternate over several rounds
in the same time window; the script prints medians and ratios and writes JSON.

    python bench/serve_generation.py --base smollm2-135m --adapters 4 --requests 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "The film opens on a quiet morning in a small town, where",
    "Shares in the company rose sharply after",
    "The new phone has a bigger screen and",
    "In the second half the home side",
]
MODES = {"continuous": (True, 16), "whole_request": (False, 16), "one_at_a_time": (True, 1)}


def write_adapters(base: str, count: int, folder: Path) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from peftlab.config import RunConfig
    from peftlab.data import assets
    from peftlab.models import loading
    from peftlab.tasks.setup import model_info

    source = assets.resolve_model(base)
    cfg = RunConfig()
    cfg.model.name, cfg.task.name = base, "causal_lm"
    info = model_info(source, cfg)
    tokenizer = loading.load_tokenizer(source, "left")
    adapters = {}
    for i in range(count):
        torch.manual_seed(i)
        model = loading.load_model(source, info, [], tokenizer, False, None)
        config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # small, so the text stays the base model's kind of text
                param.data.mul_(0.01)
        peft_model.save_pretrained(folder / f"a{i}")
        adapters[f"a{i}"] = str(folder / f"a{i}")
    return adapters


def traffic(names: list[str], count: int, short: int, long: int) -> list[dict]:
    return [
        {
            "model": names[i % len(names)],
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": long if i % 2 else short,
        }
        for i in range(count)
    ]


def drive(url: str, calls: list[dict], concurrency: int) -> dict:
    import httpx2

    def post(body):
        started = time.perf_counter()
        answer = httpx2.post(url + "/v1/completions", json=body, timeout=1800).json()
        return body["max_tokens"], time.perf_counter() - started, answer["usage"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(post, calls))
    seconds = time.perf_counter() - started
    tokens = sum(r[2]["completion_tokens"] for r in results)
    by_length = {}
    for max_tokens, latency, _ in results:
        by_length.setdefault(max_tokens, []).append(latency)
    return {
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "requests_per_s": len(calls) / seconds,
        **{f"p50_s_{n}_tokens": percentile(v, 0.5) for n, v in by_length.items()},
        **{f"p95_s_{n}_tokens": percentile(v, 0.95) for n, v in by_length.items()},
    }


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_peftlab(engine, mode: str, calls, concurrency: int) -> dict:
    from peftlab.serving import Batcher, Limits, Server

    continuous, max_batch = MODES[mode]
    batcher = Batcher(engine, max_batch, 0.01, 4096, continuous=continuous).start()
    server = Server(engine, batcher, "127.0.0.1", 0, Limits(timeout_s=1800), None).start()
    try:
        return drive(server.url, calls, concurrency)
    finally:
        server.stop()


def time_to_first_token(engine, names: list[str], calls, args) -> dict:
    """A streamed long completion through the real openai client, alone and while the
    mixed traffic runs: seconds to its first token and to its last (medians of rounds)."""
    import openai

    from peftlab.serving import Batcher, Limits, Server

    batcher = Batcher(engine, 16, 0.01, 4096, continuous=True).start()
    server = Server(engine, batcher, "127.0.0.1", 0, Limits(timeout_s=1800), None).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)

    def streamed() -> tuple[float, float]:
        started, first = time.perf_counter(), None
        stream = client.completions.create(
            model=names[0], prompt=PROMPTS[0], max_tokens=args.long, stream=True
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - started
        return first, time.perf_counter() - started

    result = {}
    try:
        for load in ("alone", "under_load"):
            times = []
            for _ in range(args.rounds):
                if load == "alone":
                    times.append(streamed())
                    continue
                with ThreadPoolExecutor(max_workers=1) as pool:
                    traffic_done = pool.submit(drive, server.url, calls, args.concurrency)
                    time.sleep(1.0)  # the batch is running when the stream joins it
                    times.append(streamed())
                    traffic_done.result()
            result[load] = {
                "first_token_s": statistics.median(t[0] for t in times),
                "last_token_s": statistics.median(t[1] for t in times),
            }
    finally:
        server.stop()
    return result


def naive_app(engine):
    """The server a user writes with FastAPI and peft: one request at a time, the
    adapter switched with set_adapter, answered by generate (in peftlab's precision, so
    the two differ in scheduling only)."""
    import torch
    from fastapi import FastAPI

    from peftlab.training.precision import autocast

    app, lock = FastAPI(), threading.Lock()
    tokenizer, model = engine.tokenizer, engine.families.models["lora"]

    @app.post("/v1/completions")
    def complete(body: dict):
        ids = tokenizer(body["prompt"], return_tensors="pt").input_ids
        with lock, torch.inference_mode(), autocast(engine.precision, engine.device):
            model.set_adapter(body["model"])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=body["max_tokens"],
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1] :]
        return {"text": tokenizer.decode(new), "usage": {"completion_tokens": len(new)}}

    return app


def run_naive(engine, calls, concurrency: int) -> dict:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(naive_app(engine), log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        return drive(f"http://127.0.0.1:{sock.getsockname()[1]}", calls, concurrency)
    finally:
        server.should_exit = True
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--short", type=int, default=8, help="max_tokens of short requests")
    parser.add_argument("--long", type=int, default=64, help="max_tokens of long requests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-only", action="store_true", help="time to first token only")
    parser.add_argument("--out", default="bench/serve_generation.json")
    args = parser.parse_args()

    from peftlab.serving import Engine

    with tempfile.TemporaryDirectory() as tmp:
        adapters = write_adapters(args.base, args.adapters, Path(tmp))
        engine = Engine(adapters, args.base)
        calls = traffic(list(adapters), args.requests, args.short, args.long)
        ttft = time_to_first_token(engine, list(adapters), calls, args)
        for load, t in ttft.items():
            print(
                f"streamed, {load}: first token {t['first_token_s']:.2f} s, last "
                f"{t['last_token_s']:.2f} s",
                flush=True,
            )
        if args.ttft_only:
            Path(args.out).write_text(json.dumps({"args": vars(args), "ttft": ttft}, indent=1))
            return
        modes = [*MODES, "fastapi_peft_set_adapter"]
        rounds = {mode: [] for mode in modes}
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else reversed(modes):
                if mode in MODES:
                    result = run_peftlab(engine, mode, calls, args.concurrency)
                else:
                    result = run_naive(engine, calls, args.concurrency)
                rounds[mode].append(result)
                print(f"round {r + 1} {mode}: {result['tokens_per_s']:.1f} tokens/s", flush=True)
    medians = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in rounds.items()
    }
    base = medians["continuous"]["tokens_per_s"]
    for mode, m in medians.items():
        m["continuous_speedup"] = base / m["tokens_per_s"]
        print(
            f"{mode:26s} {m['tokens_per_s']:7.1f} tokens/s  continuous is "
            f"{m['continuous_speedup']:.2f}x  p50 short {m[f'p50_s_{args.short}_tokens']:.1f} s"
            f"  p50 long {m[f'p50_s_{args.long}_tokens']:.1f} s"
        )
    record = {"args": vars(args), "medians": medians, "ttft": ttft}
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
