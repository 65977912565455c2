"""Run record -> report.md with plots (loss.png, before_after.png), and the console table."""

from __future__ import annotations

from pathlib import Path

from peftlab.fsutil import write_text_atomic
from peftlab.tasks import spec_of

METRIC_ROWS = (
    ("accuracy", "{:.4f}"),
    ("f1", "{:.4f}"),
    ("rouge1", "{:.4f}"),
    ("rouge2", "{:.4f}"),
    ("rougeL", "{:.4f}"),
    ("rougeLsum", "{:.4f}"),
    ("gen_len", "{:.1f}"),
    ("loss", "{:.4f}"),
    ("perplexity", "{:.3f}"),
    ("runtime_s", "{:.1f}"),
    ("samples_per_s", "{:.2f}"),
    ("steps_per_s", "{:.2f}"),
    ("peak_memory_mb", "{:.0f}"),
)


def before_after_table(record: dict) -> str:
    before, after = record["before"], record["after"]
    lines = ["| metric | base model | tuned | change |", "|---|---:|---:|---:|"]
    for key, fmt in METRIC_ROWS:
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            continue
        lines.append(f"| {key} | {fmt.format(b)} | {fmt.format(a)} | {a - b:+.4g} |")
    return "\n".join(lines)


def cost_table(record: dict) -> str:
    t, adapter = record["train"], record["adapter"]
    rows = [
        (
            "trainable parameters",
            f"{t['trainable_params']:,} of {t['total_params']:,} ({t['trainable_percent']:.4f}%)",
        ),
        ("train runtime", f"{t['runtime_s']:.1f} s ({t['steps']} steps, {t['samples']} samples)"),
        ("train throughput", f"{t['samples_per_s']:.2f} samples/s, {t['steps_per_s']:.3f} steps/s"),
        ("train peak memory", f"{t['peak_memory_mb']:.0f} MB"),
    ]
    if t.get("mfu") is not None:  # older records lack the keys
        rows.append(("train compute", utilization_line(t, record["environment"])))
    if t.get("frozen_layers_cached"):  # older records lack the key
        below = t["frozen_layers_cached"]
        rows.append(("frozen layers", f"0-{below - 1} computed once per example, reused"))
    if t.get("compiled_blocks"):  # older records lack the key
        step = t.get("compiled_at_step") or 0
        since = f"from step {step + 1}" if step else "from the first step"
        count = t["compiled_blocks"]
        blocks = f"{count} layer block{'s' if count > 1 else ''}"
        rows.append(("compiled for training", f"{blocks}, {since}"))
    rows += [
        ("adapter size", f"{adapter['size_mb']:.2f} MB ({adapter['format']})"),
        (
            "best validation",
            f"{spec_of(record).validation} {t['best_validation']} at step {t['best_step']}"
            if t["evals"]
            else "none (a single final validation selects nothing; see the test metrics)",
        ),
    ]
    return "\n".join(["| cost | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def utilization_line(t: dict, env: dict) -> str:
    precision = env.get("precision", "fp32")
    return (
        f"{t['train_flops'] / 1e9:,.1f} GFLOPs (torch's count of a real batch, "
        f"{t['flops_per_sample'] / 1e6:,.1f} MFLOPs an example) at "
        f"{t['achieved_flops_per_s'] / 1e9:,.2f} GFLOP/s: MFU {100 * t['mfu']:.2f}% of this "
        f"machine's {t['peak_flops_per_s'] / 1e9:,.0f} GFLOP/s {precision} matmul peak "
        f"({env.get('cpu')}, {', '.join(env.get('cpu_flags') or []) or 'no wide vector flags'})"
    )


def forgetting_lines(record) -> list[str]:
    """How far tuning moved the model on general text (forgetting.py)."""
    f = record.get("forgetting")
    if not f:
        return []
    if f["measure"] == "lm_loss_change":
        what = (
            f"language-model loss {f['base_loss']:.4f} (base) -> {f['tuned_loss']:.4f} "
            f"(tuned), change {f['value']:+.4f}; perplexity {f['base_perplexity']:.2f} -> "
            f"{f['tuned_perplexity']:.2f}"
        )
    else:
        what = f"representation drift {f['value']:.5f} (1 - mean cosine similarity, base vs tuned)"
    return ["## Forgetting", "", f"On {f['texts']} general texts not of the task: {what}.", ""]


def write_report(record) -> Path:
    run_dir = Path(record.run_dir)
    plots = [
        name
        for name, draw in (("loss.png", plot_loss), ("before_after.png", plot_bars))
        if draw(record, run_dir / name)
    ]
    cfg = record["config"]
    env = record["environment"]
    text = [
        f"# peftlab run: {cfg['method']['name']} on {cfg['model']['name']} / "
        f"{cfg['data']['name']} ({spec_of(record).name})",
        "",
        f"Test split: {record['before']['samples']} examples. Data sha256 "
        f"`{env['data_sha256'][:16]}`, model sha256 `{(env['model_sha256'] or 'n/a')[:16]}`, "
        f"seed {env['seed']}.",
        "",
        "## Before and after",
        "",
        before_after_table(record),
        "",
        *forgetting_lines(record),
        "## Cost",
        "",
        cost_table(record),
        "",
    ]
    text += [f"![{name}]({name})\n" for name in plots]
    text += generations_section(record)
    text += [
        "## Environment",
        "",
        f"python {env['python']}, {env['cpu']} "
        f"({env['cpu_count']} CPUs, {env['torch_threads']} torch threads), "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v),
        "",
    ]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(text))
    return path


def subplots(*args, figsize: tuple, **kwargs):
    """A figure made without pyplot: no backend is chosen for the process, so a
    notebook's own (inline) backend is left alone; matplotlib.use("Agg") switched it
    off for the rest of the session. Laid out by matplotlib's constrained layout, which
    makes room for legends placed outside the axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.subplots(*args, **kwargs)


def run_title(record: dict, split: str) -> str:
    """'<method> on <model>, <data>: <n> <split> examples' for a plot's title."""
    config = record["config"]
    names = [Path(config[k]["name"]).name for k in ("model", "data")]
    n = record.get("data", {}).get("sizes", {}).get(split)
    count = f": {n} {split} examples" if n is not None else ""
    return f"{config['method']['name']} on {names[0]}, {names[1]}{count}"


def legend_below(fig) -> None:
    """One legend under the axes: it covers no data point."""
    fig.legend(loc="outside lower center", ncols=3, frameon=False)


def moving_mean(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_loss(record: dict, path: Path) -> bool:
    history = record["train"]["history"]
    if not history:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, ax = subplots(figsize=(6.5, 4))
    steps = [h["step"] for h in history]
    window = max(1, len(history) // 20)
    ax.plot(steps, [h["loss"] for h in history], alpha=0.35 if window > 1 else 1.0,
            color="C0", label="training loss (per step)")  # fmt: skip
    if window > 1:
        smooth = moving_mean([h["loss"] for h in history], window)
        ax.plot(steps, smooth, color="C0", label=f"training loss (mean of {window} steps)")
    evals = [e for e in record["train"]["evals"] if "loss" in e]
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o--", color="C1",
                label="validation loss")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(run_title(record, "train"))
    legend_below(fig)
    save_figure(fig, path)
    return True


def generations_section(record: dict, clip: int = 400) -> list[str]:
    """Base vs tuned outputs for the same test inputs, one block per input."""
    before = record["before"].get("generations") or []
    after = record["after"].get("generations") or []
    if not before:
        return []

    def quoted(text: str | None) -> str:
        text = (text or "").strip()
        text = text if len(text) <= clip else text[:clip] + " ..."
        return "\n".join("> " + line for line in text.splitlines()) or "> (empty)"

    lines = ["## Generations: base vs tuned", ""]
    for number, (b, a) in enumerate(zip(before, after, strict=False), start=1):
        lines += [f"### Test example {number}", "", "**Input**", "", quoted(b["input"]), ""]
        if b.get("reference"):
            lines += ["**Reference**", "", quoted(b["reference"]), ""]
        lines += ["**Base model**", "", quoted(b["output"]), ""]
        lines += ["**Tuned**", "", quoted(a["output"]), ""]
    return lines


def plot_bars(record: dict, path: Path) -> bool:
    keys = list(spec_of(record).scores)
    fig, ax = subplots(figsize=(5, 3.5))
    x = range(len(keys))
    before = [record["before"][k] for k in keys]
    after = [record["after"][k] for k in keys]
    ax.bar([i - 0.2 for i in x], before, width=0.4, label="base model")
    ax.bar([i + 0.2 for i in x], after, width=0.4, label="tuned")
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        ax.text(i - 0.2, b, f"{b:.3f}", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.2, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), keys)
    top = max(before + after)
    ax.set_ylim(0, 1.08 if top <= 1 else top * 1.15)
    ax.set_ylabel("score on the test split")
    ax.set_title(run_title(record, "test"))
    legend_below(fig)
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    """Atomically, under a temporary name of its own (two writers never share one)."""
    import io

    from peftlab.fsutil import write_bytes_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())
