"""Generation tasks end to end on tiny in-process models: summarization on a decoder, T5
and BART, causal LM on prompt/response pairs and on plain text."""

import json

import pytest
import tiny
from safetensors import safe_open

from peftlab.cli import main

GENERATION_KEYS = {"loss", "perplexity", "runtime_s", "samples_per_s", "generations"}
SUMMARY_KEYS = GENERATION_KEYS | {"rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len"}


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [
        {"prompt": r["text"], "response": f"{r['label']} review"} for r in tiny.sentiment_rows(240)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session", params=["t5", "bart"])
def tiny_seq2seq(request, tmp_path_factory):
    return tiny.make_seq2seq(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def run_cli(model, data, out, task, *extra):
    args = [
        "run",
        *tiny.where(model, data, out),
        "--task",
        task,
        "--batch-size",
        "16",
        "--epochs",
        "3",
        "--lr",
        "1e-2",
        *tiny.ALL_ROWS,
        "--max-new-tokens",
        "6",
        *extra,
    ]
    assert main(args) == 0
    return json.loads((out / "run.json").read_text())


def test_summarization_on_a_decoder_learns_the_summaries(tiny_llama, summary_csv, tmp_path):
    record = run_cli(tiny_llama, summary_csv, tmp_path / "run", "summarization")
    for when in ("before", "after"):
        assert set(record[when]) >= SUMMARY_KEYS
    before, after = record["before"], record["after"]
    assert after["perplexity"] < before["perplexity"] / 2
    assert after["rouge1"] >= max(0.6, before["rouge1"] + 0.3)
    assert record["data"]["columns"] == ["text", "summary"]
    manifest = json.loads((tmp_path / "run" / "adapter" / "peftlab.json").read_text())
    assert manifest["task"] == "summarization"
    assert set(manifest["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "loss"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Generations: base vs tuned" in report and "rouge1" in report
    assert len(after["generations"]) == 4


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "lora"],
        ["--method", "prefix"],
        ["--method", "lora", "--side", "encoder"],
        ["--method", "lora", "--side", "decoder"],
    ],
    ids=["lora", "prefix", "lora-encoder", "lora-decoder"],
)
def test_encoder_decoder_summarization(tiny_seq2seq, summary_csv, tmp_path, extra):
    record = run_cli(tiny_seq2seq, summary_csv, tmp_path / "run", "summarization", *extra)
    assert set(record["after"]) >= SUMMARY_KEYS
    assert record["after"]["loss"] < record["before"]["loss"]
    if "--side" in extra:
        side = extra[-1]
        other = "decoder" if side == "encoder" else "encoder"
        path = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
        with safe_open(str(path), "pt") as fh:
            names = list(fh.keys())
        assert names and all(f".{side}." in n for n in names)
        assert not any(f".{other}." in n for n in names)


def test_full_fine_tuning_of_a_seq2seq_model_beats_its_base(tiny_seq2seq, summary_csv, tmp_path):
    record = run_cli(
        tiny_seq2seq,
        summary_csv,
        tmp_path / "run",
        "summarization",
        "--method",
        "full",
        "--lr",
        "3e-3",
    )
    assert record["after"]["rouge1"] >= max(0.6, record["before"]["rouge1"] + 0.3)


def test_causal_lm_on_prompt_response_pairs(tiny_llama, pairs_jsonl, tmp_path):
    record = run_cli(tiny_llama, pairs_jsonl, tmp_path / "run", "causal_lm")
    assert set(record["after"]) >= GENERATION_KEYS
    assert "rouge1" not in record["after"]  # scored by perplexity, not ROUGE
    assert record["after"]["perplexity"] < record["before"]["perplexity"] / 2
    assert record["data"]["columns"] == ["prompt", "response"]
    shown = record["after"]["generations"]
    assert [g["input"] for g in shown] == [g["input"] for g in record["before"]["generations"]]
    # The tuned model answers in the trained form, then stops.
    assert all(g["output"] in ("positive review", "negative review") for g in shown)


def test_causal_lm_on_plain_text(tiny_llama, sentiment_csv, tmp_path):
    record = run_cli(tiny_llama, sentiment_csv, tmp_path / "run", "causal_lm", "--epochs", "1")
    assert record["data"]["columns"] == ["text", None]
    assert record["after"]["loss"] < record["before"]["loss"]
    assert record["after"]["generations"][0]["reference"]  # the rest of the text


def test_generation_on_an_encoder_is_refused(tiny_bert, summary_csv, tmp_path, capsys):
    args = ["run", *tiny.where(tiny_bert, summary_csv, tmp_path / "run"), "--task", "summarization"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "encoder" in err and "decoder LM or an encoder-decoder" in err
    assert not (tmp_path / "run").exists()


def test_summarization_without_a_summary_column_names_the_flag(tiny_llama, tmp_path, capsys):
    data = tiny.write_csv(tmp_path / "d.csv", [{"body": "x y", "other": "z"}] * 20)
    args = ["run", *tiny.where(tiny_llama, data, tmp_path / "run"), "--task", "summarization"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--text-column" in err and "'body'" in err
