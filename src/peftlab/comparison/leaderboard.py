"""Run records -> the leaderboard: per method its metric with a 95% confidence interval,
whether it is distinguishable from the best, its costs and forgetting, the Pareto view
(metric against each cost, methods that learned) and a recommendation (recommendation.py).

With `compare --tune` a method's row is its tuned runs, with its default-settings runs
and its search beside them.
"""

from __future__ import annotations

import statistics

from peftlab.comparison import stats
from peftlab.comparison.recommendation import not_learned_methods, recommendation
from peftlab.errors import PeftlabError
from peftlab.tasks import spec_of

# The costs a Pareto view weighs the metric against (lower is better for each).
COSTS = {
    "trainable_params": "trainable parameters",
    "peak_memory_mb": "peak memory (MB)",
    "train_s": "training time (s)",
    "forgetting_value": "forgetting",
}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def leaderboard(records: list[dict], failures: list[dict], searches: dict | None = None) -> dict:
    """Group runs by method: metric mean, interval and test against the best, costs."""
    spec = spec_of(records[0]) if records else spec_of({"config": {}})
    tasks = {spec_of(r).name for r in records}
    if len(tasks) > 1:
        raise PeftlabError(f"these runs are of different tasks ({sorted(tasks)}); compare one")
    metric = spec.metric
    others = [k for k in spec.scores if k != metric]
    if spec.name == "summarization":
        others.append("gen_len")
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for record in records:
        key = (record["config"]["method"]["name"], record.get("variant"))
        groups.setdefault(key, []).append(record)
    table = []
    for (method, variant), runs in groups.items():
        if variant == "default" and (method, "tuned") in groups:
            continue  # shown beside its tuned row
        row = method_row(method, runs, metric, others, bounded=spec.name != "causal_lm")
        row["variant"] = variant
        if (method, "default") in groups and variant == "tuned":
            row["default"] = default_summary(groups[(method, "default")], metric)
        if searches and method in searches:
            row["tuned_params"] = searches[method]["best_params"]
        table.append(row)
    higher = spec.greater_is_better
    table.sort(key=lambda row: -row[metric] if higher else row[metric])
    mark_distinguishable(table, groups, metric)
    test_counts = records[0]["data"].get("label_counts", {}).get("test") if records else None
    majority = round(max(test_counts) / sum(test_counts), 4) if test_counts else None
    board = {
        "task": spec.name,
        "metric": metric,
        "greater_is_better": higher,
        "scores": others,
        "majority_baseline": majority,
        "forgetting_measure": next(
            (r["forgetting"]["measure"] for r in records if "forgetting" in r), None
        ),
        "rows": table,
        "searches": searches or {},
        "failures": failures,
    }
    board["recommendation"] = recommendation(board, records, searches or {})
    skipped = not_learned_methods(board)
    learned = [row for row in table if row["method"] not in skipped]
    board["pareto"] = pareto_fronts(learned, metric, higher)
    return board


def method_row(
    method: str, runs: list[dict], metric: str, others: list[str], bounded: bool
) -> dict:
    after = [r["after"][metric] for r in runs]
    before = [r["before"][metric] for r in runs]
    mean, std = mean_std(after)
    train = [r["train"] for r in runs]
    low_high, kind = interval(runs, metric)
    if low_high and bounded:  # accuracy, F1 and ROUGE lie in [0, 1]
        low_high = (max(0.0, low_high[0]), min(1.0, low_high[1]))
    forgetting = [r["forgetting"]["value"] for r in runs if "forgetting" in r]
    return {
        "method": method,
        "seeds": [r["config"]["train"]["seed"] for r in runs],
        metric: round(mean, 4),
        f"{metric}_std": round(std, 4),
        f"{metric}_ci": [round(v, 4) for v in low_high] if low_high else None,
        "ci_over": kind,
        **{k: round(statistics.fmean(r["after"][k] for r in runs), 4) for k in others},
        "base": round(statistics.fmean(before), 4),
        "gain": round(mean - statistics.fmean(before), 4),
        "lr": runs[0]["config"]["train"]["lr"],
        "trainable_params": train[0]["trainable_params"],
        "trainable_percent": train[0]["trainable_percent"],
        "adapter_mb": round(statistics.fmean(r["adapter"]["size_mb"] for r in runs), 3),
        "train_s": round(statistics.fmean(t["runtime_s"] for t in train), 1),
        "peak_memory_mb": round(max(t["peak_memory_mb"] for t in train), 0),
        "train_samples_per_s": round(statistics.fmean(t["samples_per_s"] for t in train), 2),
        **compute_columns(train),
        "forgetting": f"{statistics.fmean(forgetting):.4g}" if forgetting else "-",
        "forgetting_value": statistics.fmean(forgetting) if forgetting else None,
        "run_dirs": [r["run_dir"] for r in runs],
    }


def compute_columns(train: list[dict]) -> dict:
    """Mean training GFLOPs and MFU (training/flops.py); None for records made before."""
    if not all(t.get("mfu") is not None for t in train):
        return {"train_gflops": None, "mfu_percent": None}
    return {
        "train_gflops": round(statistics.fmean(t["train_flops"] for t in train) / 1e9, 1),
        "mfu_percent": round(100 * statistics.fmean(t["mfu"] for t in train), 2),
    }


def interval(runs: list[dict], metric: str) -> tuple:
    """(95% interval, what it is over): the seeds, or the test examples of one seed."""
    if len(runs) > 1:
        return stats.seed_interval([r["after"][metric] for r in runs]), "seeds"
    scores = runs[0]["after"].get("per_example")
    if scores and len(scores) > 1:
        return stats.example_interval(scores), "test examples"
    return None, None


def default_summary(runs: list[dict], metric: str) -> dict:
    mean, std = mean_std([r["after"][metric] for r in runs])
    return {
        metric: round(mean, 4),
        f"{metric}_std": round(std, 4),
        "lr": runs[0]["config"]["train"]["lr"],
        "run_dirs": [r["run_dir"] for r in runs],
    }


def per_example_means(runs: list[dict]) -> list[float] | None:
    """A method's per-example test scores, averaged over its seeds (same test split)."""
    lists = [r["after"].get("per_example") for r in runs]
    if not lists or any(not s for s in lists) or len({len(s) for s in lists}) > 1:
        return None
    return [statistics.fmean(values) for values in zip(*lists, strict=True)]


def mark_distinguishable(table: list[dict], groups: dict, metric: str) -> None:
    """Each row's paired-test p-value against the best row, on the same test examples;
    p >= 0.05 (or the best itself) means statistically indistinguishable from the best."""
    if not table:
        return
    scores = {
        row["method"]: per_example_means(groups[(row["method"], row["variant"])]) for row in table
    }
    best = scores[table[0]["method"]]
    for row in table:
        mine = scores[row["method"]]
        if best is None or mine is None or len(mine) != len(best):
            row["p_vs_best"], row["tied_with_best"] = None, None
            continue
        p = 1.0 if row is table[0] else stats.paired_p_value(mine, best)
        row["p_vs_best"] = round(p, 4)
        row["tied_with_best"] = p >= stats.ALPHA


def pareto_fronts(table: list[dict], metric: str, higher: bool) -> dict[str, list[str]]:
    """For each cost: the methods no other method beats on both the metric and the cost."""
    fronts = {}
    for cost in COSTS:
        points = [(r["method"], r[metric], r[cost]) for r in table if r.get(cost) is not None]

        def dominates(a, b) -> bool:
            better = a[1] >= b[1] if higher else a[1] <= b[1]
            strictly = (a[1] != b[1]) or (a[2] < b[2])
            return better and a[2] <= b[2] and strictly

        fronts[cost] = [p[0] for p in points if not any(dominates(q, p) for q in points)]
    return fronts
