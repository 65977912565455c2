"""A SmolLM2 + LoRA training step, eager (peftlab's fused path) against compiled blocks.

What a `torch.compile` of each decoder block would give peftlab's training, before it is
built into the loop (issue 32). Both sides train the built-in SmolLM2-135M with LoRA r=8
on every linear layer of the blocks, dropout 0.05, under bf16 autocast (fp32 where the
CPU has no native bf16), eager attention, frozen weights in the compute dtype, fused
AdamW, batches of 8 random token rows:
- `eager`: what `peftlab run` does (FastDropout, the fused LoRA node);
- `compiled`: peft's own LoRA layers, each block `nn.Module.compile()`d, FastDropout's
  masks drawn by numpy inside its custom op (inductor's own CPU random numbers made the
  step slower than eager: ~1010 against ~790 ms on the AMX Xeon).
Each side runs in a fresh process, alternating; the first two steps' extra time is the
compile (or warm-up), the medians of the rest are the step times. Inductor's on-disk
cache persists between processes, so the first compiled process of a machine pays the
cold compile and later ones a warm one.

    python bench/compiled_training.py --rounds 3 [--lengths 64] [--steps 12]

The medians go to bench/compiled_training.json under this CPU's key and the precision.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
LENGTHS = (64, 56, 72, 64, 48, 64, 80, 64)  # mixed lengths, 64 on average


def build(kind: str, precision: str, stack: contextlib.ExitStack):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftlab.data.assets import builtin_model_dir
    from peftlab.training.fast_dropout import use_fast_dropout
    from peftlab.training.fused_lora import fused_lora
    from peftlab.training.precision import bf16_frozen_weights

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        builtin_model_dir("smollm2-135m"), dtype=torch.float32, attn_implementation="eager"
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets)
    model = get_peft_model(model, config)
    model.train()
    stack.enter_context(bf16_frozen_weights(model, precision))
    blocks = model.base_model.model.model
    use_fast_dropout(model)  # compiled, its masks come from the custom op peftlab::keep_mask
    if kind == "eager":
        stack.enter_context(fused_lora(model))
    else:
        for block in blocks.layers:
            block.compile(dynamic=True)
    return model, blocks


def measure(kind: str, precision: str, lengths: list[int], steps: int) -> dict:
    import torch

    from peftlab.training.precision import autocast

    with contextlib.ExitStack() as stack:
        model, blocks = build(kind, precision, stack)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=5e-4, fused=True)
        tokens = torch.Generator().manual_seed(1)
        times = []
        for step in range(steps):
            ids = torch.randint(0, 49000, (8, lengths[step % len(lengths)]), generator=tokens)
            start = time.perf_counter()
            with autocast(precision, torch.device("cpu")):
                hidden = blocks(input_ids=ids, use_cache=False).last_hidden_state
                loss = hidden[:, -1].float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    steady = statistics.median(times[2:])
    return {
        "kind": kind,
        "step_ms": round(1000 * steady, 1),
        "first_two_extra_s": round(times[0] + times[1] - 2 * steady, 1),
    }


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def token_counts(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give token counts separated by commas")
    return tuple(int(p) for p in parts)


def summarize(results: dict, precision: str, lengths: list[int]) -> dict:
    eager = statistics.median(r["step_ms"] for r in results["eager"])
    compiled = statistics.median(r["step_ms"] for r in results["compiled"])
    return {
        "precision": precision,
        "lengths": lengths,
        "eager_step_ms": eager,
        "compiled_step_ms": compiled,
        "speedup": round(eager / compiled, 3),
        "compile_s": [r["first_two_extra_s"] for r in results["compiled"]],
        "rounds": results,
    }


def record(summary: dict, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import vs_peer

    from peftlab.fsutil import write_json_atomic

    key, info = vs_peer.this_machine()
    report = json.loads(out.read_text()) if out.exists() else {}
    machine = report.setdefault(key, {"machine": info})
    machine[summary["precision"]] = summary  # a CPU's bf16 and fp32 rows side by side
    write_json_atomic(out, report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument("--steps", type=positive, default=12, help="per process, >= 3")
    parser.add_argument(
        "--lengths", type=token_counts, default=LENGTHS, help="batch lengths, in turn: 64,80"
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None)
    parser.add_argument("--out", default=str(HERE / "compiled_training.json"))
    parser.add_argument("--one", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 3:
        parser.error(f"--steps {args.steps}: the first two steps are the compile; give 3 or more")
    lengths = list(args.lengths)
    if args.precision is None:
        from peftlab.training.precision import resolve

        args.precision = resolve("auto")
    if args.one:
        print(json.dumps(measure(args.one, args.precision, lengths, args.steps)))
        return 0
    results = {"eager": [], "compiled": []}
    for round_ in range(args.rounds):
        for kind in ("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager"):
            command = [sys.executable, __file__, "--one", kind, "--steps", str(args.steps)]
            command += ["--lengths", ",".join(map(str, lengths)), "--precision", args.precision]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"the {kind} process failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[kind].append(result)
            print(f"round {round_ + 1} {kind}: {result}", flush=True)
    summary = summarize(results, args.precision, lengths)
    print(json.dumps(summary), flush=True)
    record(summary, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
