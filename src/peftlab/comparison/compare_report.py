"""Leaderboard -> compare.md and a self-contained compare.html (plots embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from peftlab.comparison.leaderboard import COSTS
from peftlab.comparison.recommendation import not_learned_methods
from peftlab.fsutil import write_text_atomic
from peftlab.runner.report import legend_below, moving_mean, save_figure, subplots

TITLES = {"accuracy": "test accuracy", "f1": "macro-F1", "gen_len": "gen length"}
COST_COLUMNS = [
    ("trainable_params", "trainable params", "{:,}"),
    ("trainable_percent", "trainable %", "{:.4f}"),
    ("adapter_mb", "adapter MB", "{:.2f}"),
    ("train_s", "train s", "{:.1f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("train_samples_per_s", "train samples/s", "{:.2f}"),
    ("train_gflops", "train GFLOPs", "{:,.1f}"),
    ("mfu_percent", "MFU %", "{:.2f}"),
]
PLOTS = ("metric_vs_params.png", "pareto.png", "cost.png", "loss_curves.png")


def columns(board: dict) -> list[tuple[str, str, str]]:
    """(row key, title, format): the task's metric and scores, then the costs."""
    metric = board.get("metric", "accuracy")
    scores = board.get("scores", ["f1"])
    title = TITLES.get(metric, f"test {metric}")
    tuned = any(row.get("variant") == "tuned" for row in board["rows"])
    return [
        ("method", "method", "{}"),
        (metric, title, "{:.4f}"),
        (f"{metric}_std", "± std", "{:.4f}"),
        (f"{metric}_ci", "95% CI", "ci"),
        ("tied_with_best", "≈ best (paired p)", "tie"),
        *(
            [
                ("tuned_params", "tuned settings", "params"),
                ("default", "default settings", "default"),
            ]
            if tuned
            else []
        ),
        ("gain", "gain over base", "{:+.4f}"),
        *[(k, TITLES.get(k, k), "{:.1f}" if k == "gen_len" else "{:.4f}") for k in scores],
        *COST_COLUMNS,
        ("forgetting", FORGETTING_TITLES.get(board.get("forgetting_measure"), "forgetting"), "{}"),
    ]


def cell(board: dict, row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    metric = board.get("metric", "accuracy")
    if fmt == "ci":
        return f"{value[0]:.4f} to {value[1]:.4f}" if value else "-"
    if fmt == "tie":
        if value is None:
            return "-"
        if row is board["rows"][0]:
            return "best"
        p = row["p_vs_best"]
        return f"{'yes' if value else 'no'} (p{'<0.001' if p < 0.001 else f'={p:.3g}'})"
    if fmt == "params":
        return ", ".join(f"{k}={v:g}" for k, v in (value or {}).items()) or "-"
    if fmt == "default":
        return f"{value[metric]:.4f} (lr={value['lr']:g})" if value else "-"
    return "-" if value is None else fmt.format(value)  # None: a record from before the key


# What the forgetting column holds (runner/forgetting.py): the larger, the further from the base.
FORGETTING_TITLES = {
    "lm_loss_change": "forgetting (LM loss change)",
    "representation_drift": "forgetting (drift)",
}


def cells(board: dict, row: dict) -> list[str]:
    return [cell(board, row, key, fmt) for key, _, fmt in columns(board)]


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
    advice = board.get("recommendation") or {}
    reasons = {e["method"]: e["reason"] for e in advice.get("not_learned", [])}
    for row in rows:
        better = row["gain"] > 0 if higher else row["gain"] < 0
        verdict = "better than" if better else "not better than"
        note = ""
        if row["method"] in reasons:  # beating an untrained base is not learning the task
            note = ", but not learned at this budget" if better else ": not learned at this budget"
        text.append(
            f"- {row['method']}: {row[metric]:.4f} ({row['gain']:+.4f}), {verdict} the "
            f"base model{note}, training {row['trainable_percent']:.3f}% of the parameters."
        )
    for failure in board["failures"]:
        text.append(f"- {failure['method']} (seed {failure['seed']}) failed: {failure['error']}")
    if reasons:
        text.append(
            "- Not learned, so not ranked, recommended or on the Pareto fronts: "
            + "; ".join(f"{method}: {why}" for method, why in reasons.items())
            + "."
        )
    if advice.get("text"):
        text.append(f"- Recommendation: {advice['text']}")
    return "\n".join(text)


def tuned_lines(board: dict) -> list[str]:
    """Tuned against default settings, and what each search did."""
    metric = board.get("metric", "accuracy")
    lines = []
    for row in board["rows"]:
        search = board.get("searches", {}).get(row["method"])
        if not search or not row.get("default"):
            continue
        states = [t["state"] for t in search["trials"]]
        best = ", ".join(f"{k}={v:g}" for k, v in (search["best_params"] or {}).items())
        lines.append(
            f"- {row['method']}: tuned {row[metric]:.4f} ({best or 'no finished trial'}) vs "
            f"default {row['default'][metric]:.4f} (lr={row['default']['lr']:g}); "
            f"{len(states)} trials, {states.count('PRUNED')} pruned, "
            f"{states.count('FAIL')} failed; best validation {fmt_value(search['best_value'])}"
        )
    return lines


def fmt_value(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def search_space_lines(board: dict) -> list[str]:
    lines = []
    for method, search in board.get("searches", {}).items():
        for name, r in search["ranges"].items():
            source = f" ({r['source']})" if r["source"] else ""
            lines.append(f"- {method} {name}: {r['range']}{source}")
    return lines


def pareto_lines(board: dict) -> list[str]:
    return [
        f"- {COSTS[cost]}: {', '.join(methods)}"
        for cost, methods in board.get("pareto", {}).items()
        if methods
    ]


def markdown_report(board: dict, plots: list[str]) -> str:
    md = ["# peftlab compare", "", summary(board), "", markdown_table(board), ""]
    sections = [
        ("Tuned vs default settings (validation-only search)", tuned_lines(board)),
        ("Search spaces", search_space_lines(board)),
        (
            "Pareto view: methods no other beats on both the metric and the cost",
            pareto_lines(board),
        ),
    ]
    for title, lines in sections:
        if lines:
            md += [f"## {title}", "", *lines, ""]
    md += [f"![{name}]({name})\n" for name in plots]
    return "\n".join(md)


def write_compare_report(board: dict, records: list[dict], out: Path) -> None:
    about = subject(board, records)
    plot_metric_vs_params(board, out / "metric_vs_params.png", about)
    plot_cost(board, out / "cost.png", about)
    plot_loss_curves(records, out / "loss_curves.png", about)
    plot_pareto(board, out / "pareto.png", about)
    plots = list(PLOTS)
    if board.get("searches"):
        plot_search(board, out / "search.png", about)
        plots.append("search.png")
    write_text_atomic(out / "compare.md", markdown_report(board, plots))
    write_text_atomic(out / "compare.html", html_page(board, out, plots))


def html_page(board: dict, out: Path, plots: list[str]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns(board))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(board, row)) + "</tr>"
        for row in board["rows"]
    )
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode((out / name).read_bytes()).decode()}"></figure>'
        for name in plots
        if (out / name).is_file()
    )
    notes = html_list("notes", [ln for ln in summary(board).splitlines() if ln.startswith("- ")])
    recommendation = html.escape((board.get("recommendation") or {}).get("text", ""))
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>{html_list(key, lines)}"
        for key, title, lines in (
            ("tuning", "Tuned vs default settings", tuned_lines(board)),
            ("spaces", "Search spaces", search_space_lines(board)),
            ("pareto", "Pareto view", pareto_lines(board)),
        )
        if lines
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
<p id="recommendation"><strong>{recommendation}</strong></p>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{notes}
{sections}
{images}
</body></html>
"""


def html_list(name: str, lines: list[str]) -> str:
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines)
    return f'<ul id="{name}">{items}</ul>'


def subject(board: dict, records: list[dict]) -> str:
    """'<model>, <data>: <n> train / <n> test examples, <k> seed(s)' for plot titles."""
    if not records:
        return ""
    config, sizes = records[0]["config"], records[0].get("data", {}).get("sizes", {})
    names = [Path(config[k]["name"]).name for k in ("model", "data")]
    seeds = max((len(r["seeds"]) for r in board["rows"]), default=1)
    counts = f": {sizes.get('train')} train / {sizes.get('test')} test examples" if sizes else ""
    return f"{names[0]}, {names[1]}{counts}, {seeds} seed(s)"


def plot_metric_vs_params(board: dict, path: Path, about: str) -> None:
    metric = board.get("metric", "accuracy")
    fig, ax = subplots(figsize=(6.5, 4.5))
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
        legend_below(fig)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.15)  # room for the method names
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {metric} (bars: std over seeds)")
    ax.set_title(f"Test {metric} vs trainable parameters\n{about}", fontsize=10)
    save_figure(fig, path)


def plot_cost(board: dict, path: Path, about: str) -> None:
    rows = board["rows"]
    fig, (left, right) = subplots(1, 2, figsize=(9, 4))
    names = [r["method"] for r in rows]
    left.bar(names, [r["train_s"] for r in rows])
    left.set_ylabel("train time (s)")
    right.bar(names, [r["peak_memory_mb"] for r in rows], color="tab:orange")
    right.set_ylabel("peak memory (MB)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
        ax.set_xlabel("method")
    fig.suptitle(f"Training cost per method (mean over seeds)\n{about}", fontsize=10)
    save_figure(fig, path)


def plot_loss_curves(records: list[dict], path: Path, about: str) -> None:
    """One colour per method; its seeds' runs share it, each in a line style of its own."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = subplots(figsize=(6.5, 4.5))
    colors, styles = {}, ["-", "--", ":", "-."]
    for record in records:
        method = record["config"]["method"]["name"]
        first = method not in colors
        color = colors.setdefault(method, f"C{len(colors) % 10}")
        seed = record["config"]["train"]["seed"]
        history = record["train"]["history"]
        window = max(1, len(history) // 20)
        smooth = moving_mean([h["loss"] for h in history], window)
        ax.plot([h["step"] for h in history], smooth, color=color, alpha=0.85,
                linestyle=styles[seed % len(styles)], label=method if first else None)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (moving mean over 5% of the steps)")
    ax.set_title(f"Training loss, each seed a line style\n{about}", fontsize=10)
    legend_below(fig)
    save_figure(fig, path)


def plot_pareto(board: dict, path: Path, about: str) -> None:
    """The metric against each cost; the Pareto front (no method better on both) joined."""
    metric = board.get("metric", "accuracy")
    fig, axes = subplots(1, len(COSTS), figsize=(4 * len(COSTS), 3.6), squeeze=False)
    unlearned = not_learned_methods(board)  # not drawn
    for ax, (cost, title) in zip(axes[0], COSTS.items(), strict=True):
        front = set(board.get("pareto", {}).get(cost, []))
        rows = [
            r for r in board["rows"] if r.get(cost) is not None and r["method"] not in unlearned
        ]
        for row in rows:
            on = row["method"] in front
            ax.scatter(row[cost], row[metric], color="tab:red" if on else "tab:grey")
            ax.annotate(
                row["method"],
                (row[cost], row[metric]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        if not rows:  # an empty frame would read as a drawing error
            ax.text(0.5, 0.5, "no method learned\n(none beat the majority label)",
                    ha="center", va="center", transform=ax.transAxes, color="tab:grey")  # fmt: skip
        line = sorted((r[cost], r[metric]) for r in rows if r["method"] in front)
        if line:
            ax.plot(*zip(*line, strict=True), color="tab:red", alpha=0.5)
        if cost == "trainable_params" and rows and min(r[cost] for r in rows) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(f"test {metric}")
    fig.suptitle(
        "Pareto view of the methods that learned (red: no other is better on both axes)\n" + about,
        fontsize=9,
    )
    save_figure(fig, path)


def plot_search(board: dict, path: Path, about: str) -> None:
    """Each method's tuning trials: validation score against learning rate; pruned
    trials at their last reported score, as crosses."""
    fig, ax = subplots(figsize=(7, 4.2))
    for method, search in board["searches"].items():
        done = [
            (t["params"].get("lr"), t["value"])
            for t in search["trials"]
            if t["state"] == "COMPLETE" and t["params"].get("lr") is not None
        ]
        pruned = [
            (t["params"].get("lr"), list(t["validations"].values())[-1])
            for t in search["trials"]
            if t["state"] == "PRUNED" and t["validations"]
        ]
        dots = ax.scatter(*zip(*done, strict=True), label=method) if done else None
        if pruned:
            color = dots.get_facecolor()[0] if dots is not None else None
            ax.scatter(*zip(*pruned, strict=True), marker="x", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation score (x: pruned, at its last validation)")
    ax.set_title(f"Tuning trials per method\n{about}", fontsize=10)
    legend_below(fig)
    save_figure(fig, path)
