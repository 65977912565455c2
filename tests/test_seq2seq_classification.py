"""Encoder-decoders classify, on tiny random-weight T5 and BART: by label words scored
through the decoder (the default) and with transformers' ForSequenceClassification head
(--head linear). They learn the toy sentiment data, and predict, serve and a merged model
answer as the run scored."""

import json

import pytest
import tiny
from conftest import SERVE_TRAIN

from peftlab.adapters.inference import Predictor
from peftlab.adapters.package import open_package
from peftlab.cli import main

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


def test_t5_learns_label_words_through_its_decoder(tiny_model, sentiment_csv, tmp_path):
    argv = ["run", *tiny.where(tiny_model("t5"), sentiment_csv, tmp_path / "run")]
    argv += ["--precision", "fp32", "--template", "review: {text} sentiment:", *SERVE_TRAIN]
    assert main(argv) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["data"]["label_words"] == ["negative", "positive"]
    assert record["before"]["accuracy"] < 0.7 and record["after"]["accuracy"] >= 0.75
    assert record["after"]["loss"] < record["before"]["loss"]
    adapter = str(tmp_path / "run" / "adapter")
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_2_SEQ_LM"  # no new weights: the LM head scores words
    serve_equals_predict(adapter, "t5")


def test_label_words_the_tokenizer_cannot_tell_apart_are_refused(tiny_model, sentiment_csv, capsys):
    argv = ["run", "--model", str(tiny_model("t5")), "--dataset", str(sentiment_csv)]
    assert main([*argv, "--label-words", "unheard,unseen"]) == 2  # both [UNK] here
    err = capsys.readouterr().err
    assert "data.label_words" in err and "same tokens" in err and "Traceback" not in err


def serve_equals_predict(adapter: str, name: str) -> list[dict]:
    """/v1/classify through the real openai client answers as `peftlab predict` does."""
    import openai

    from peftlab.serving import start

    texts = [r["text"] for r in tiny.sentiment_rows(8, seed=5)]
    expected = Predictor(open_package(adapter)).predict(texts)
    server = start({name: adapter}, port=0, max_wait_ms=20, precision="fp32").start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        body = {"model": name, "input": texts}
        answers = client.post("/classify", body=body, cast_to=object)["data"]
        chat = client.chat.completions.create(  # the completions shape: the label
            model=name, messages=[{"role": "user", "content": texts[0]}]
        )
        completion = client.completions.create(model=name, prompt=texts[1], max_tokens=4)
    finally:
        server.stop()
    for got, want in zip(answers, expected, strict=True):
        assert got["label"] == want["label"]
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-4)
    assert chat.choices[0].message.content == expected[0]["label"]
    assert completion.choices[0].text == expected[1]["label"]
    return expected


def test_predict_serve_and_merge_answer_as_the_run_scored(tiny_model, sentiment_csv, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    record = train(tiny_model("bart"), sentiment_csv, tmp_path / "run")
    adapter = str(tmp_path / "run" / "adapter")
    predictor = Predictor(open_package(adapter))
    assert predictor.package.manifest["label_names"] == record["data"]["label_names"]
    expected = serve_equals_predict(adapter, "bart")
    texts = [r["text"] for r in tiny.sentiment_rows(8, seed=5)]
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


def test_a_multi_token_label_word_is_scored_whole(tiny_model):
    """A label's score is its word's log-probability token by token, then end-of-sequence,
    from the decoder's start: what decoding the word one token at a time gives."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from peftlab.tasks.decoder_label_words import DecoderLabelWordHead

    folder = tiny_model("t5")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    start = model.config.decoder_start_token_id
    head = DecoderLabelWordHead(tokenizer, ["positive review", "negative"], start)
    assert [len(s) for s in head.sequences] == [3, 2]  # the words, then </s>
    encoded = tokenizer(["review text : positive"], return_tensors="pt")
    batch = {k: encoded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        scores = head.logits(model, batch)
        for label, sequence in enumerate(head.sequences):
            by_hand = 0.0
            for k, token in enumerate(sequence):
                decoder = torch.tensor([[start, *sequence[:k]]])
                logits = model(**batch, decoder_input_ids=decoder).logits[0, -1]
                by_hand += logits.log_softmax(-1)[token].item()
            assert scores[0, label].item() == pytest.approx(by_hand, abs=1e-4)
