"""Encoder-decoders classify with transformers' ForSequenceClassification head
(--head linear) on tiny random-weight T5 and BART: they learn the toy sentiment data,
save the head with the adapter, and predict, serve and a merged model answer alike."""

import json

import pytest
import tiny
from conftest import SERVE_TRAIN

from peftlab.cli import main
from peftlab.inference import Predictor
from peftlab.package import open_package

TRAIN = ["--head", "linear", "--precision", "fp32", *SERVE_TRAIN]


def train(model_dir, data_file, out, *extra) -> dict:
    argv = ["run", *tiny.where(model_dir, data_file, out), *TRAIN, *extra]
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_lora_with_a_linear_head_learns_on_an_encoder_decoder(
    arch, tiny_model, sentiment_csv, tmp_path
):
    record = train(tiny_model(arch), sentiment_csv, tmp_path / "run")
    before, after = record["before"]["accuracy"], record["after"]["accuracy"]
    assert before < 0.7 and after >= 0.75  # the test rows are half positive, half negative
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "classification_head" in saved["modules_to_save"]


def test_auto_head_on_an_encoder_decoder_says_what_to_use(tiny_model, sentiment_csv, capsys):
    argv = ["run", "--model", str(tiny_model("t5")), "--dataset", str(sentiment_csv)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.head" in err and "--head linear" in err and "Traceback" not in err


def test_predict_serve_and_merge_answer_as_the_run_scored(tiny_model, sentiment_csv, tmp_path):
    import openai
    import torch
    from transformers import AutoModelForSequenceClassification

    from peftlab.serving import start

    record = train(tiny_model("bart"), sentiment_csv, tmp_path / "run")
    adapter = str(tmp_path / "run" / "adapter")
    predictor = Predictor(open_package(adapter))
    texts = [r["text"] for r in tiny.sentiment_rows(8, seed=5)]
    expected = predictor.predict(texts)
    assert predictor.package.manifest["label_names"] == record["data"]["label_names"]
    server = start({"bart": adapter}, port=0, max_wait_ms=20, precision="fp32").start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        body = {"model": "bart", "input": texts}
        answers = client.post("/classify", body=body, cast_to=object)["data"]
    finally:
        server.stop()
    for got, want in zip(answers, expected, strict=True):
        assert got["label"] == want["label"]
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-4)
    merged = tmp_path / "merged"  # a plain transformers classifier, the head folded in
    assert main(["merge", "--adapter", adapter, "--out", str(merged)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert type(model).__name__ == "BartForSequenceClassification"
    items = predictor.task.input_items(texts)  # the run's own formatting, eos included
    with torch.no_grad():
        for item, want in zip(items, expected, strict=True):
            logits = model(input_ids=torch.tensor([item.input_ids])).logits[0]
            probabilities = logits.softmax(-1).tolist()
            for p, name in zip(probabilities, model.config.id2label.values(), strict=True):
                assert p == pytest.approx(want["probabilities"][name], abs=1e-4)
