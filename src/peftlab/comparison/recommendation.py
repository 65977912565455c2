"""What a comparison recommends, and why: only a method that learned something is ranked.

A method learned when its test metric beats the bar beyond its 95% confidence interval:
the majority label for classification (always predicting the most frequent class), the
base model for generation. Methods that did not are listed apart with the reason and kept
off the recommendation and the Pareto fronts; when none learned, nothing is recommended and
the text names the budget it saw and what to change. A tuned method whose test score fell
below its default settings' says so (validation and test disagreed).
"""

from __future__ import annotations


def not_learned_methods(board: dict) -> set[str]:
    """The methods a built board lists as having learned nothing."""
    advice = board.get("recommendation") or {}
    return {entry["method"] for entry in advice.get("not_learned", [])}


def bar_of(board: dict, row: dict) -> tuple[str, float]:
    """(name, value) of what a row must beat to count as learned."""
    if board.get("majority_baseline") is not None:
        return "the majority label", board["majority_baseline"]
    return "the base model", row["base"]


def not_learned_reason(board: dict, row: dict) -> str | None:
    """Why a row learned nothing, or None if it beat its bar beyond its interval."""
    metric, higher = board["metric"], board["greater_is_better"]
    name, bar = bar_of(board, row)
    ci = row.get(f"{metric}_ci")
    if ci:
        edge = ci[0] if higher else ci[1]
        beaten = edge > bar if higher else edge < bar
        if beaten:
            return None
        return (
            f"{metric} {row[metric]:.4f} (95% CI {ci[0]:.4f} to {ci[1]:.4f}) does not beat "
            f"{name} ({bar:.4f}) beyond its confidence interval"
        )
    beaten = row[metric] > bar if higher else row[metric] < bar
    if beaten:
        return None
    return f"{metric} {row[metric]:.4f} is no better than {name} ({bar:.4f})"


def budget_text(records: list[dict], searches: dict) -> str:
    """The budget the comparison ran on, in the flags that change it."""
    if not records:
        return "no finished run"
    sizes = records[0].get("data", {}).get("sizes", {})
    train = records[0]["config"]["train"]
    length = f"{train['max_steps']} steps" if train.get("max_steps") else None
    length = length or f"{train.get('epochs', 1):g} epoch(s)"
    parts = [f"{sizes.get('train', '?')} training examples", length]
    if searches:
        trials = max(len(s.get("trials", [])) for s in searches.values())
        parts.append(f"{trials} tuning trial(s) per method")
    return ", ".join(parts)


def tuning_disagreements(board: dict, records: list[dict]) -> list[dict]:
    """Tuned methods whose test score fell short of their default settings'."""
    metric, higher = board["metric"], board["greater_is_better"]
    validation = records[0].get("data", {}).get("sizes", {}).get("validation") if records else None
    found = []
    for row in board["rows"]:
        default = row.get("default")
        if not default:
            continue
        worse = row[metric] < default[metric] if higher else row[metric] > default[metric]
        if worse:
            found.append(
                {
                    "method": row["method"],
                    "tuned": row[metric],
                    "default": default[metric],
                    "validation_samples": validation,
                }
            )
    return found


def recommendation(board: dict, records: list[dict], searches: dict) -> dict:
    """{method: the one to use (None when nothing learned), best: the top scorer that
    learned, text, not_learned: [{method, reason}], tuning_disagreed}."""
    metric = board["metric"]
    reasons = {row["method"]: not_learned_reason(board, row) for row in board["rows"]}
    learned = [row for row in board["rows"] if reasons[row["method"]] is None]
    result = {
        "method": None,
        "best": learned[0]["method"] if learned else None,
        "not_learned": [
            {"method": name, "reason": why} for name, why in reasons.items() if why is not None
        ],
        "tuning_disagreed": tuning_disagreements(board, records),
    }
    if not board["rows"]:
        result["text"] = "No method finished: nothing to recommend."
    elif not learned:
        name, _ = bar_of(board, board["rows"][0])
        result["text"] = (
            f"None: no method beat {name} beyond its 95% confidence interval, so nothing "
            f"learned at this budget ({budget_text(records, searches)}). Give it more: more "
            "training examples or epochs (--train-samples, --epochs), more tuning trials "
            "(--trials) or a wider search range (--tune), then compare again."
        )
    else:
        result["method"], result["text"] = best_and_cheapest(learned, metric)
    result["text"] += "".join(disagreement_text(d, metric) for d in result["tuning_disagreed"])
    return result


def disagreement_text(found: dict, metric: str) -> str:
    size = found["validation_samples"]
    return (
        f" Note: {found['method']}'s tuned settings scored below its defaults on test "
        f"({found['tuned']:.4f} vs {found['default']:.4f} {metric}): validation "
        f"({size if size is not None else '?'} examples) and test disagreed."
    )


def best_and_cheapest(table: list[dict], metric: str) -> tuple[str, str]:
    """(the recommended method, why): the best of the learned rows, or the cheapest
    (fewest trainable parameters) whose mean lies in the best's 95% interval or that the
    paired test cannot tell from the best."""
    best = table[0]
    ci = best.get(f"{metric}_ci")

    def close(row) -> bool:
        if row.get("tied_with_best"):
            return True
        return bool(ci) and ci[0] <= row[metric] <= ci[1]

    candidates = [r for r in table if r is best or close(r)]
    cheapest = min(candidates, key=lambda r: (r["trainable_params"], r["peak_memory_mb"]))
    shown = f"{best[metric]:.4f}" + (f" (95% CI {ci[0]:.4f} to {ci[1]:.4f})" if ci else "")
    text = f"Best {metric}: {best['method']}, {shown}."
    if cheapest is best:
        return best["method"], text + " No cheaper method comes within its confidence interval."
    ratio = best["trainable_params"] / max(1, cheapest["trainable_params"])
    return cheapest["method"], text + (
        f" Cheapest within reach of it: {cheapest['method']} ({cheapest[metric]:.4f}), "
        f"training {ratio:,.0f}x fewer parameters ({cheapest['trainable_percent']:.3f}% of "
        f"the model), peak memory {cheapest['peak_memory_mb']:.0f} MB vs "
        f"{best['peak_memory_mb']:.0f} MB, training {cheapest['train_s']:.0f} s vs "
        f"{best['train_s']:.0f} s."
    )
