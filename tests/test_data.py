"""Data loading: local files, splits, labels, and one clear error for each bad input."""

import json

import pandas as pd
import pytest

from peftlab.config import DataArgs
from peftlab.data.sources import load
from peftlab.errors import DataError

ROWS = [{"text": f"text number {i}", "label": "pos" if i % 3 else "neg"} for i in range(60)]


def args(path, **kw):
    kw = {"train_samples": 0, "validation_samples": 0, "test_samples": 0, **kw}
    return DataArgs(name=str(path), **kw)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".tsv", ".json"])
def test_local_formats_give_the_same_splits(tmp_path, suffix):
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        frame.to_parquet(path)
    data = load(args(path))
    assert data.label_names == ["neg", "pos"]
    assert data.sizes == {"train": 48, "validation": 6, "test": 6}
    reference = tmp_path / "ref.csv"
    frame.to_csv(reference, index=False)
    assert data.sha256 == load(args(reference)).sha256


def test_splits_are_disjoint_deterministic_and_capped(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    a, b = load(args(path)), load(args(path))
    assert a.splits == b.splits
    texts = [set(ex.text for ex in a.splits[s]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    capped = load(args(path, train_samples=10, test_samples=3))
    assert capped.sizes == {"train": 10, "validation": 6, "test": 3}
    assert capped.splits["train"] == a.splits["train"][:10]


def test_folder_with_own_splits_and_column_mapping(tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in ROWS]
    pd.DataFrame(rows[:40]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[40:]).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    data = load(args(tmp_path, text_column="review", label_column="stars"))
    assert data.sizes["test"] == 20 and data.sizes["train"] + data.sizes["validation"] == 40


def test_integer_labels_with_names(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(30)))
    assert load(args(path)).label_names == ["0", "1"]
    named = load(args(path, labels=["neg", "pos"]))
    assert named.label_names == ["neg", "pos"]
    assert {ex.label for ex in named.splits["train"]} == {0, 1}


@pytest.mark.parametrize(
    "content, kw, message",
    [
        ("text,label\n", {}, "no rows"),
        ("words,label\na,b\nc,d\n", {}, "no column 'text'"),
        ("text,label\na,x\nb,y\nc,z\n", {"labels": ["x", "y"]}, "unknown label 'z'"),
        ("text,label\na,x\nb,x\n", {}, "at least 2"),
    ],
)
def test_bad_csv_gives_one_clear_error(tmp_path, content, kw, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load(args(path, **kw))


def test_empty_non_utf8_and_broken_json_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load(args(empty))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 .*0xe9"):
        load(args(latin))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match="line 2"):
        load(args(broken))


def test_missing_file_and_unknown_hub_name(tmp_path, hub_offline):
    with pytest.raises(DataError, match="does not exist"):
        load(args(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="not built in"):
        load(args("no_such_dataset_anywhere"))


def test_builtin_datasets_load():
    rt = load(
        DataArgs(name="rotten_tomatoes", train_samples=0, validation_samples=0, test_samples=0)
    )
    assert rt.label_names == ["negative", "positive"]
    assert sum(rt.sizes.values()) == 12752
    bbc = load(DataArgs(name="bbc_news", train_samples=0, validation_samples=0, test_samples=0))
    assert len(bbc.label_names) == 5 and sum(bbc.sizes.values()) == 2225


def test_hub_dataset_splits_and_class_names(monkeypatch):
    """The Hub is unreachable here: isolate the loader by handing it a DatasetDict."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = {"text": [f"t{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows, features=features),
            "test": datasets.Dataset.from_dict(rows, features=features).select(range(10)),
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake)
    data = load(args("someone/reviews"))
    assert data.label_names == ["neg", "pos"]
    assert data.sizes == {"train": 36, "validation": 4, "test": 10}
