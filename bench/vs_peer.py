"""peftlab against the stock pipeline (transformers Trainer + peft), one run per process.

    python bench/vs_peer.py                      # every case, 3 rounds -> bench/results.json
    python bench/vs_peer.py --cases minilm-lora --rounds 1
    python bench/vs_peer.py --quick              # every case, one round, less data (~15 min)
    python bench/vs_peer.py --cases smollm2-qlora --seeds 0,1,2   # a metric gap, 3 seeds

Results are kept per machine (CPU name and speed flags): another kind of machine adds
its rows to bench/results.json instead of replacing the ones there. Quick results (one
round on each case's QUICK sizes) are kept under "<case> (quick)", beside the full rows.

For each case the three pipelines run alternately (the order rotates every round), each
in a fresh process so memory peaks and warm caches do not leak between them:
- `peftlab`: `peftlab run` with its defaults (bf16 autocast where the CPU has it);
- `peer`: Trainer + peft in Trainer's default precision (fp32);
- `peer_bf16`: the same with `bf16=True`, what a well-read user would try on a CPU with
  native bf16 (AVX512-BF16 or AMX; left out elsewhere, where bf16 is emulated);
- `peer_score` (decoder classification only): the way the docs teach classification with
  a decoder, `AutoModelForSequenceClassification` (a new `score` head) + LoRA, fp32.
Reported per pipeline (medians over rounds): train samples/s (training phase wall time,
with the validation it runs), peak RSS during training, the final test metric, and the
model FLOPs utilisation: achieved training FLOP/s over this machine's measured dense
matmul peak in the pipeline's compute dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PIPELINES = ("peftlab", "peer", "peer_bf16", "peer_score")

# Same model, data, method, hyperparameters, epochs and sequence length in every pipeline.
COMMON = {"seed": 0, "batch_size": 8, "max_length": 128, "method": "lora", "lr": 5e-4}
CASES = {
    "smollm2-lora": {
        "model": "smollm2-135m",
        "dataset": "rotten_tomatoes",
        "task": "classification",
        "train_samples": 600,
        "validation_samples": 100,
        "test_samples": 500,
        "metric": "accuracy",
    },
    "minilm-lora": {
        "model": "minilm-l6",
        "dataset": "rotten_tomatoes",
        "task": "classification",
        "train_samples": 1000,
        "validation_samples": 200,
        "test_samples": 1000,
        "metric": "accuracy",
    },
    "smollm2-qlora": {
        "model": "smollm2-135m",
        "dataset": "rotten_tomatoes",
        "task": "classification",
        "method": "qlora",
        "train_samples": 200,
        "validation_samples": 50,
        "test_samples": 300,
        "metric": "accuracy",
    },
    "smollm2-headlines": {
        "model": "smollm2-135m",
        "dataset": "bbc_news",
        "task": "summarization",
        "train_samples": 200,
        "validation_samples": 40,
        "test_samples": 60,
        "metric": "rouge1",
    },
}
# --quick: one round on less data, for a first look on a new machine in under 15 minutes
# on 2 AVX2 cores (the slowest CPU kind seen); its rows never replace a full run's.
QUICK = {
    "smollm2-lora": {"train_samples": 128, "validation_samples": 32, "test_samples": 160},
    "minilm-lora": {"train_samples": 400, "validation_samples": 100, "test_samples": 400},
    "smollm2-qlora": {"train_samples": 80, "validation_samples": 20, "test_samples": 120},
    "smollm2-headlines": {"train_samples": 32, "validation_samples": 8, "test_samples": 12},
}


def pipelines_for(case: dict) -> tuple[str, ...]:
    """The score-head peer where it means something (a decoder classifying), and the bf16
    peer only where the CPU runs bf16 natively: elsewhere PyTorch emulates it 10-60x
    slower than fp32, nobody informed picks it, and it would take most of the run."""
    from peftlab.training.precision import native_bf16

    decoder_classification = case["task"] == "classification" and case["model"] != "minilm-l6"
    keep = PIPELINES if decoder_classification else PIPELINES[:3]
    return tuple(p for p in keep if p != "peer_bf16" or native_bf16())


def chosen_pipelines(case: dict, asked: str | None) -> tuple[str, ...]:
    """pipelines_for(case), narrowed to --pipelines (peftlab kept: every ratio is ours over
    theirs); a long case fits a time box without the peers it does not need."""
    applicable = pipelines_for(case)
    if not asked:
        return applicable
    names = {p.strip() for p in asked.split(",") if p.strip()}
    unknown = names - set(PIPELINES)
    if unknown:
        sys.exit(f"--pipelines: unknown {sorted(unknown)}; choose from {', '.join(PIPELINES)}")
    return tuple(p for p in applicable if p == "peftlab" or p in names)


def case_config(name: str, seed: int | None = None, quick: bool = False) -> dict:
    case = {**COMMON, **CASES[name], **(QUICK[name] if quick else {}), "name": name}
    if seed is not None:
        case["seed"] = seed
    # --smoke: a tenth of the data, to check that every pipeline runs (numbers mean nothing).
    if os.environ.get("PEFTLAB_BENCH_SMOKE"):
        for key in ("train_samples", "validation_samples", "test_samples"):
            case[key] = max(16, case[key] // 10)
    return case


# ---------------------------------------------------------------- one measurement


def train_options(pairs: list[str]) -> dict:
    """--train-option KEY=VALUE pairs as TrainArgs values, read and checked by peftlab's
    own config (`config.apply_mapping`: the field's declared type, unknown names)."""
    from peftlab.config import RunConfig, apply_mapping
    from peftlab.errors import ConfigError

    cfg, options = RunConfig(), {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        usage = f"--train-option {pair!r}: give KEY=VALUE with KEY a field of TrainArgs"
        if not sep:
            sys.exit(usage)
        try:
            apply_mapping(cfg, {"train": {key: text}}, "--train-option")
            cfg.validate()  # the field's choices
        except ConfigError as exc:
            sys.exit(f"{usage}; {exc.fix}")
        options[key] = getattr(cfg.train, key)
    return options


def run_peftlab(case: dict, options: dict | None = None) -> dict:
    from peftlab.config import RunConfig
    from peftlab.runner.checks import checked
    from peftlab.runner.pipeline import run

    cfg = RunConfig()
    cfg.model.name, cfg.model.max_length = case["model"], case["max_length"]
    cfg.data.name, cfg.task.name = case["dataset"], case["task"]
    for key in ("train_samples", "validation_samples", "test_samples"):
        setattr(cfg.data, key, case[key])
    cfg.method.name = case["method"]
    cfg.train.batch_size, cfg.train.lr, cfg.train.seed = (
        case["batch_size"],
        case["lr"],
        case["seed"],
    )
    cfg.train.eval_batch_size = 32
    for key, value in (options or {}).items():
        setattr(cfg.train, key, value)
    with tempfile.TemporaryDirectory() as out:
        record = run(checked(cfg), Path(out) / "run", log=lambda message: None)
    train = record["train"]
    return {
        "samples_per_s": round(train["samples"] / train["runtime_s"], 3),
        "train_runtime_s": train["runtime_s"],
        "peak_memory_mb": train["peak_memory_mb"],
        "metric": record["after"][case["metric"]],
        "precision": record["config"]["train"]["precision"],
    }


def measure_one(
    case_name: str, pipeline: str, seed: int | None, quick: bool, options: dict | None = None
) -> dict:
    case = case_config(case_name, seed, quick)
    if pipeline == "peftlab":
        result = run_peftlab(case, options)
    else:
        sys.path.insert(0, str(HERE))
        from peer import run_peer

        result = run_peer(case, bf16=pipeline == "peer_bf16", score_head=pipeline == "peer_score")
        result["precision"] = "bf16" if pipeline == "peer_bf16" else "fp32"
    result["train_flops_per_sample"] = train_flops_per_sample(case)
    result["seed"] = case["seed"]
    return result


def train_flops_per_sample(case: dict) -> float:
    """Model FLOPs of one training example, the same count for every pipeline.

    Per real (unpadded) token: forward 2N over the frozen linear weights N of the
    blocks, backward 2N for the input gradients, and 6 per trainable parameter
    (forward, input and weight gradients); attention scores and mixing add 12 L T d
    (forward + backward). Padding and the output head are not counted: they are work
    a pipeline may or may not waste, not work the task needs.
    """
    from peftlab.config import RunConfig
    from peftlab.data import assets, sources
    from peftlab.models import loading
    from peftlab.runner.checks import resolved
    from peftlab.tasks.setup import build_task, model_info, padding_side

    cfg = RunConfig()
    cfg.model.name, cfg.data.name, cfg.task.name = case["model"], case["dataset"], case["task"]
    cfg.data.train_samples = case["train_samples"]
    cfg = resolved(cfg)
    source = assets.resolve_model(case["model"])
    info = model_info(source, cfg)
    config = loading.load_config(source)
    dataset = sources.load(cfg.data, cfg.task.name)
    tokenizer = loading.load_tokenizer(source, padding_side(info))
    task = build_task(cfg, info, dataset, tokenizer)
    tokens = [len(item.input_ids) for item in task.encode(dataset.splits["train"])]
    layers, width = config.num_hidden_layers, config.hidden_size
    inner = config.intermediate_size
    heads, kv_heads = (
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", config.num_attention_heads),
    )
    head_dim = width // heads
    attention = width * (heads + 2 * kv_heads) * head_dim + heads * head_dim * width
    mlp = (3 if config.model_type == "llama" else 2) * width * inner
    frozen = layers * (attention + mlp)
    trainable = lora_parameters(config, case)
    per_sample = [
        t * (4 * frozen + 6 * trainable) + 12 * layers * t * t * heads * head_dim for t in tokens
    ]
    return sum(per_sample) / len(per_sample)


def lora_parameters(config, case: dict, rank: int = 8) -> int:
    width, inner = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = width // heads
    kv = getattr(config, "num_key_value_heads", heads) * head_dim
    shapes = [(width, width), (width, kv), (width, kv), (width, width), (width, inner)]
    shapes += [(width, inner), (inner, width)] if config.model_type == "llama" else [(inner, width)]
    return config.num_hidden_layers * sum(rank * (i + o) for i, o in shapes)


# ---------------------------------------------------------------- the machine


def matmul_peak() -> dict:
    """This machine's dense matmul peak (GFLOP/s), fp32 and bf16, measured as every run's
    MFU measures it (training/flops.py), with the threads this process uses."""
    import torch

    from peftlab.training.flops import measure_peak

    threads, cpu = torch.get_num_threads(), torch.device("cpu")
    return {p: round(measure_peak(p, threads, cpu) / 1e9, 1) for p in ("fp32", "bf16")}


# ---------------------------------------------------------------- the driver


def run_in_process(
    case: str,
    pipeline: str,
    seed: int,
    quick: bool,
    package: Path | None = None,
    options: list[str] = (),
) -> dict:
    """One measurement in a fresh process; `package`: a source folder to import peftlab
    from instead of the installed one (bench/ab.py's revisions); `options`: peftlab's
    --train-option pairs."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--one", case, pipeline, "--result", out.name]
        command += ["--seed", str(seed)] + (["--quick"] if quick else [])
        if pipeline == "peftlab":
            command += [arg for pair in options for arg in ("--train-option", pair)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if package is not None:
            env["PYTHONPATH"] = str(package)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            where = f" ({package})" if package else ""
            raise RuntimeError(f"{case} / {pipeline}{where} failed:\n{tail}")
        return json.loads(Path(out.name).read_text())


def summarize(runs: list[dict], peak: dict) -> dict:
    entry = {
        key: round(statistics.median(r[key] for r in runs), 4)
        for key in ("samples_per_s", "peak_memory_mb", "metric", "train_runtime_s")
    }
    precision = runs[0]["precision"]
    flops = runs[0]["train_flops_per_sample"] * entry["samples_per_s"]
    entry.update(
        precision=precision,
        achieved_gflops=round(flops / 1e9, 2),
        mfu=round(flops / 1e9 / peak[precision], 4),
        rounds=[
            {k: r.get(k) for k in ("seed", "samples_per_s", "peak_memory_mb", "metric")}
            for r in runs
        ],
    )
    return entry


def ratios(results: dict) -> dict:
    ours = results["peftlab"]
    out = {}
    for peer in (p for p in PIPELINES[1:] if p in results):
        theirs = results[peer]
        out[f"vs_{peer}"] = {
            "samples_per_s": round(ours["samples_per_s"] / theirs["samples_per_s"], 3),
            "peak_memory": round(ours["peak_memory_mb"] / theirs["peak_memory_mb"], 3),
            "metric_points": round(100 * (ours["metric"] - theirs["metric"]), 2),
        }
    return out


def main() -> int:
    from peftlab.fsutil import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pipelines",
        help=f"comma-separated, among {', '.join(PIPELINES)} (default: every one that applies); "
        "peftlab always runs, the ratios need it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round per case on less data (QUICK), kept as '<case> (quick)'",
    )
    parser.add_argument(
        "--seeds",
        help="comma-separated seeds, one round each (default: seed 0 every round); "
        "for metric gaps, where one seed's luck would mislead",
    )
    parser.add_argument(
        "--train-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a peftlab training setting (a TrainArgs field, e.g. compile_training=on), "
        "repeatable; the rows are kept as '<case> [KEY=VALUE]' beside the default ones",
    )
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument(
        "--smoke", action="store_true", help="a tenth of the data: check the pipelines run"
    )
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PIPELINE"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        options = train_options(args.train_option)
        result = measure_one(*args.one, args.seed, args.quick, options)
        Path(args.result).write_text(json.dumps(result))
        return 0

    if args.smoke:
        os.environ["PEFTLAB_BENCH_SMOKE"] = "1"
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown}; choose from {', '.join(CASES)}")
    # Checked before the peak is measured: a mistyped --pipelines fails at once.
    train_options(args.train_option)  # a bad pair fails before anything runs
    configs = {case: case_config(case, quick=args.quick) for case in cases}
    chosen = {case: chosen_pipelines(config, args.pipelines) for case, config in configs.items()}
    peak = matmul_peak()
    print(f"matmul peak GFLOP/s: {peak}", flush=True)
    out = Path(args.out)
    report = load_report(out)
    key, info = this_machine()
    slot = report["machines"].setdefault(key, {"cases": {}})
    slot["machine"] = {**info, "cpu_count": os.cpu_count(), "matmul_peak_gflops": peak}
    seeds = round_seeds(args)
    for case in cases:
        config, pipelines = configs[case], chosen[case]
        runs: dict[str, list] = {p: [] for p in pipelines}
        for round_, seed in enumerate(seeds):
            turn = round_ % len(pipelines)
            order = pipelines[turn:] + pipelines[:turn]
            for pipeline in order:
                result = run_in_process(case, pipeline, seed, args.quick, options=args.train_option)
                runs[pipeline].append(result)
                print(
                    f"{case} round {round_ + 1} {pipeline}: {result['samples_per_s']:.2f} "
                    f"samples/s, {result['peak_memory_mb']:.0f} MB, metric "
                    f"{result['metric']:.4f}",
                    flush=True,
                )
        entry = {p: summarize(r, peak) for p, r in runs.items()}
        entry["ratios"] = ratios(entry)
        entry["config"] = {**config, "seeds": seeds, "peftlab_train_options": args.train_option}
        row = row_name(case, args.quick, args.train_option)
        slot["cases"][row] = entry
        print(json.dumps({row: entry["ratios"]}), flush=True)
        # Written after every case: an interrupted benchmark keeps what it measured.
        write_json_atomic(out, report)
    print(table(report), flush=True)
    return 0


def row_name(case: str, quick: bool, options: list[str]) -> str:
    """The case's row; quick sizes and peftlab options each get rows of their own."""
    return case + (" (quick)" if quick else "") + "".join(f" [{o}]" for o in sorted(options))


def round_seeds(args) -> list[int]:
    """One seed per round: --seeds as given, else the case's seed every round."""
    if args.seeds:
        try:
            return [int(s) for s in args.seeds.split(",")]
        except ValueError:
            sys.exit(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. 0,1,2")
    return [COMMON["seed"]] * (1 if args.quick else args.rounds)


def this_machine() -> tuple[str, dict]:
    """The key a machine's results are kept under: its CPU and the flags that set its
    matmul speed (a second kind of machine adds its rows instead of overwriting)."""
    from peftlab.training.flops import machine

    info = machine()
    return f"{info['device']} [{' '.join(info['flags']) or 'no wide vector flags'}]", info


# Results from before the machine was recorded: on an AVX512-BF16 CPU (README, 2026-12-04).
LEGACY_KEY = "CPU not recorded (AVX512-BF16, 2 cores)"


def load_report(path: Path) -> dict:
    """{"machines": {key: {"machine", "cases"}}}; an older file's cases move under
    LEGACY_KEY."""
    report = json.loads(path.read_text()) if path.exists() else {}
    if "cases" in report:
        legacy = {"machine": report.pop("machine", {}), "cases": report.pop("cases")}
        report.setdefault("machines", {})[LEGACY_KEY] = legacy
    report.setdefault("machines", {})
    return report


def table(report: dict) -> str:
    lines = [
        "| CPU | case | pipeline | train samples/s | peak MB | test metric | MFU | speed ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, slot in report["machines"].items():
        for case, entry in slot["cases"].items():
            for p in (p for p in PIPELINES if p in entry):
                e = entry[p]
                ratios = entry["ratios"]
                ratio = "" if p == "peftlab" else f"{ratios[f'vs_{p}']['samples_per_s']:.2f}x"
                lines.append(
                    f"| {key} | {case} | {p} ({e['precision']}) | {e['samples_per_s']:.2f} | "
                    f"{e['peak_memory_mb']:.0f} | {e['metric']:.4f} | {100 * e['mfu']:.1f}% "
                    f"| {ratio} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
