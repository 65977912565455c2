"""Leaderboard -> compare.md and a self-contained compare.html (plots embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from peftlab.fsutil import write_text_atomic
from peftlab.report import moving_mean, pyplot, save_figure

TITLES = {"accuracy": "test accuracy", "f1": "macro-F1", "gen_len": "gen length"}
COST_COLUMNS = [
    ("trainable_params", "trainable params", "{:,}"),
    ("trainable_percent", "trainable %", "{:.4f}"),
    ("adapter_mb", "adapter MB", "{:.2f}"),
    ("train_s", "train s", "{:.1f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("train_samples_per_s", "train samples/s", "{:.2f}"),
]
PLOTS = ("metric_vs_params.png", "cost.png", "loss_curves.png")


def columns(board: dict) -> list[tuple[str, str, str]]:
    """(row key, title, format): the task's metric and scores, then the costs."""
    metric = board.get("metric", "accuracy")
    scores = board.get("scores", ["f1"])
    title = TITLES.get(metric, f"test {metric}")
    return [
        ("method", "method", "{}"),
        (metric, title, "{:.4f}"),
        (f"{metric}_std", "± std", "{:.4f}"),
        ("gain", "gain over base", "{:+.4f}"),
        *[(k, TITLES.get(k, k), "{:.1f}" if k == "gen_len" else "{:.4f}") for k in scores],
        *COST_COLUMNS,
        ("forgetting", FORGETTING_TITLES.get(board.get("forgetting_measure"), "forgetting"), "{}"),
    ]


# What the forgetting column holds (forgetting.py): the larger, the further from the base.
FORGETTING_TITLES = {
    "lm_loss_change": "forgetting (LM loss change)",
    "representation_drift": "forgetting (drift)",
}


def cells(board: dict, row: dict) -> list[str]:
    return [fmt.format(row[key]) for key, _, fmt in columns(board)]


def markdown_table(board: dict) -> str:
    cols = columns(board)
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cells(board, row)) + " |" for row in board["rows"]]
    return "\n".join(lines)


def summary(board: dict) -> str:
    rows = board["rows"]
    if not rows:
        return "No run finished."
    base = rows[0]["base"]
    metric = board.get("metric", "accuracy")
    higher = board.get("greater_is_better", True)
    seeds = max(len(r["seeds"]) for r in rows)
    majority = board.get("majority_baseline")
    first = f"Base model test {metric}: {base:.4f}"
    if majority is not None:
        first += f"; always predicting the most frequent label: {majority:.4f}"
    text = [f"{first}. Means over {seeds} seed(s)."]
    for row in rows:
        better = row["gain"] > 0 if higher else row["gain"] < 0
        verdict = "better than" if better else "not better than"
        note = ""
        if majority is not None and row[metric] <= majority + 0.005:
            note = " (no better than the majority label: not learned at this budget)"
        text.append(
            f"- {row['method']}: {row[metric]:.4f} ({row['gain']:+.4f}), {verdict} the "
            f"base model{note}, training {row['trainable_percent']:.3f}% of the parameters."
        )
    for failure in board["failures"]:
        text.append(f"- {failure['method']} (seed {failure['seed']}) failed: {failure['error']}")
    return "\n".join(text)


def write_compare_report(board: dict, records: list[dict], out: Path) -> None:
    plot_metric_vs_params(board, out / PLOTS[0])
    plot_cost(board, out / PLOTS[1])
    plot_loss_curves(records, out / PLOTS[2])
    md = ["# peftlab compare", "", summary(board), "", markdown_table(board), ""]
    md += [f"![{name}]({name})\n" for name in PLOTS]
    write_text_atomic(out / "compare.md", "\n".join(md))
    write_text_atomic(out / "compare.html", html_page(board, out))


def html_page(board: dict, out: Path) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns(board))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(board, row)) + "</tr>"
        for row in board["rows"]
    )
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode((out / name).read_bytes()).decode()}"></figure>'
        for name in PLOTS
        if (out / name).is_file()
    )
    notes = "".join(
        f"<li>{html.escape(line[2:])}</li>"
        for line in summary(board).splitlines()
        if line.startswith("- ")
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>peftlab compare</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 1em; }}
</style></head><body>
<h1>peftlab compare</h1>
<p>{html.escape(summary(board).splitlines()[0])}</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<ul>{notes}</ul>
{images}
</body></html>
"""


def plot_metric_vs_params(board: dict, path: Path) -> None:
    plt = pyplot()
    metric = board.get("metric", "accuracy")
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in board["rows"]:
        ax.errorbar(
            max(row["trainable_params"], 1),
            row[metric],
            yerr=row[f"{metric}_std"],
            fmt="o",
            capsize=3,
        )
        ax.annotate(
            row["method"],
            (max(row["trainable_params"], 1), row[metric]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    if board["rows"]:
        ax.axhline(board["rows"][0]["base"], color="grey", linestyle="--", label="base model")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {metric}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_cost(board: dict, path: Path) -> None:
    plt = pyplot()
    rows = board["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["method"] for r in rows]
    left.bar(names, [r["train_s"] for r in rows])
    left.set_ylabel("train time (s)")
    right.bar(names, [r["peak_memory_mb"] for r in rows], color="tab:orange")
    right.set_ylabel("peak memory (MB)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_loss_curves(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    shown = set()
    for record in records:
        method = record["config"]["method"]["name"]
        history = record["train"]["history"]
        window = max(1, len(history) // 20)
        smooth = moving_mean([h["loss"] for h in history], window)
        ax.plot(
            [h["step"] for h in history],
            smooth,
            alpha=0.8,
            label=method if method not in shown else None,
        )
        shown.add(method)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (moving mean over 5% of the steps)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
