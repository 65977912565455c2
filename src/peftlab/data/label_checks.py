"""Label values that would silently make a wrong task: refused or warned about, by row.

A stray 'NaN' string, a number among word labels, or a label the training split never
shows would each become a class of its own without a word; a user needs to hear which
rows did it. Row numbers count data rows from 1 within each split's file (or the one file).
"""

from __future__ import annotations

from peftlab.errors import DataError

MISSING_WORDS = {"nan", "none", "null", "n/a", "na", "-"}
RARE_ROWS = 3  # a class seen fewer times than this is probably a typo
SHOWN = 5


def rows_with(frames: dict, wanted) -> str:
    """'train rows 3, 17; test row 2' for the rows whose label satisfies `wanted`."""
    parts = []
    for split, frame in frames.items():
        rows = [i + 1 for i, value in enumerate(frame["label"]) if wanted(str(value))]
        if rows:
            shown = ", ".join(map(str, rows[:SHOWN])) + (" ..." if len(rows) > SHOWN else "")
            where = "" if split == "all" else f"{split} "  # one file with no splits
            parts.append(f"{where}row{'s' if len(rows) > 1 else ''} {shown}")
    return "; ".join(parts)


def check_values(frames: dict, values: set[str], dataset: str, column: str) -> None:
    """Refuse missing-value words and numbers mixed with word labels; warn on rare ones."""
    missing = sorted(v for v in values if v.strip().lower() in MISSING_WORDS)
    if missing:
        where = rows_with(frames, lambda v: v in missing)
        raise DataError(
            f"dataset '{dataset}': column '{column}' holds {missing}, which reads as a "
            f"missing label ({where}); fix or drop those rows, or name every label with --labels"
        )
    numbers = {v for v in values if v.lstrip("-").isdigit()}
    if numbers and numbers != values:
        minority = numbers if len(numbers) < len(values - numbers) else values - numbers
        where = rows_with(frames, lambda v: v in minority)
        raise DataError(
            f"dataset '{dataset}': column '{column}' mixes numbers and words as labels "
            f"({sorted(minority)[:SHOWN]} at {where}); fix those rows, or name every label "
            "in order with --labels (numbers then index into them)"
        )
    counts = {v: 0 for v in values}
    for frame in frames.values():
        for value in frame["label"]:
            if str(value) in counts:
                counts[str(value)] += 1
    for value in sorted(v for v, n in counts.items() if n < RARE_ROWS):
        where = rows_with(frames, lambda v, value=value: v == value)
        print(
            f"warning: dataset '{dataset}': label {value!r} appears only {counts[value]} "
            f"time(s) ({where}); check it is not a typo",
            flush=True,
        )


def check_train_covers(splits: dict, label_names: list[str], frames: dict, dataset: str) -> None:
    """Every label must have training examples: the model cannot learn one it never sees."""
    seen = {ex.label for ex in splits["train"]}
    unseen = [name for i, name in enumerate(label_names) if i not in seen]
    if not unseen:
        return
    where = rows_with(frames, lambda v: v in unseen)
    raise DataError(
        f"dataset '{dataset}': label(s) {unseen} have no training example"
        f"{f' (they appear in {where})' if where else ''}; add training rows for them, "
        "drop those rows, or raise --train-samples"
    )
