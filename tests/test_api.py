"""The Python API does what the CLI does, with the same settings and the same errors, and
hands back plain dicts."""

import json

import pytest

import peftlab
from peftlab.cli import main
from peftlab.errors import ConfigError, PeftlabError

TRAIN = dict(epochs=2, batch_size=16, lr=1e-2, train_samples=0, validation_samples=0)


@pytest.fixture(scope="module")
def api_run(tiny_llama, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    record = peftlab.run(model=str(tiny_llama), dataset=str(sentiment_csv), out=str(out),
                         test_samples=0, **TRAIN)  # fmt: skip
    return out, record


def test_run_returns_its_record_as_a_plain_dict(api_run):
    out, record = api_run
    assert type(record) is dict and record["status"] == "done"
    assert json.loads(json.dumps(record)) == json.loads((out / "run.json").read_text())
    assert (
        record["config"]["train"]["epochs"] == 2.0 and record["config"]["method"]["name"] == "lora"
    )


def test_an_adapter_predicts_as_peftlab_predict_does(api_run, tmp_path):
    out, _ = api_run
    texts = ["good fun film", "awful dull plot", "a moving story"]
    adapter = peftlab.load_adapter(out / "adapter")
    got = adapter.predict(texts)
    assert (
        main(
            [
                "predict",
                "--adapter",
                str(out / "adapter"),
                *texts,
                "--output",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [g["label"] for g in got] == [line["label"] for line in lines]
    assert adapter.predict("good fun film")[0]["label"] == got[0]["label"]


def test_settings_by_flag_name_dotted_path_or_config(tiny_llama, sentiment_csv):
    from peftlab.api import build

    cfg = build({"train": {"epochs": 3}}, method="ia3", **{"train.seed": 4, "dataset": "x.csv"})
    assert (cfg.method.name, cfg.train.epochs, cfg.train.seed, cfg.data.name) == (
        "ia3", 3.0, 4, "x.csv")  # fmt: skip
    assert "lora" in peftlab.list_methods()


@pytest.mark.parametrize(
    "fields, where, fix",
    [
        ({"epoch": 2}, "epoch", "did you mean epochs"),
        ({"epochs": "many"}, "epochs", "use a number"),
        ({"method": "lora-xl"}, "method.name", "use one of"),
        ({"report_to": ["neptune"]}, "track.report_to", "use one or more of"),
    ],
)
def test_bad_settings_fail_as_on_the_command_line(fields, where, fix):
    with pytest.raises(ConfigError) as caught:
        peftlab.run(**fields)
    assert where in str(caught.value) and fix in str(caught.value)


def test_compare_returns_the_board(api_run, tmp_path):
    """Finished runs on a board (the methods path runs in tests/test_notebook.py)."""
    out, record = api_run
    board = peftlab.compare(run_dirs=[out], out=str(tmp_path / "cmp"))
    assert type(board) is dict and [row["method"] for row in board["rows"]] == ["lora"]
    assert board["rows"][0]["accuracy"] == pytest.approx(record["after"]["accuracy"], abs=1e-4)
    assert board == json.loads((tmp_path / "cmp" / "compare.json").read_text())
    with pytest.raises(PeftlabError, match="give at least one method"):
        peftlab.compare(out=str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"methods": "lora", "tune": "lr", "trials": 1}, "trials 1: a search needs 2 trials"),
        ({"methods": "lora", "trials": 3}, "trials says how many tuning trials tune runs"),
        ({"methods": "lora", "jobs": 0}, "jobs 0: use a number above 0"),
    ],
)
def test_bad_comparison_requests_fail_as_on_the_command_line(request_, message, tmp_path):
    with pytest.raises(PeftlabError, match=message):
        peftlab.compare(out=str(tmp_path / "cmp"), **request_)
    assert not (tmp_path / "cmp").exists()  # refused before anything was made
