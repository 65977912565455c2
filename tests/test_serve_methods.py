"""Every kind of servable method on one server: LoRA, DoRA, IA3, peft's other tuners
(LoHa, VeRA, OFT, LN tuning, Lily: one PeftModel per tuner type), prompt tuning, P-tuning,
prefix tuning and a plain peft folder (no manifest) resident on one tiny llama, asked at
once from many threads with the real openai client, each answering as offline `predict`."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import tiny
from conftest import SERVE_TRAIN

from peftlab.adapters.inference import Predictor
from peftlab.adapters.package import open_package
from peftlab.errors import PeftlabError
from peftlab.serving import start

# These adapters need only to differ from the base, not to be good: one epoch on a few
# examples (the base and tuned test scores on a few too).
BRIEF_TRAIN = [*SERVE_TRAIN, "--epochs", "1", "--train-samples", "48", "--test-samples", "8"]

# name -> (method, task): label words for classification, summaries for generation.
SERVED = {
    "lora-sum": ("lora", "summarization"),
    "dora-sent": ("dora", "classification"),
    "ia3-sum": ("ia3", "summarization"),
    "prompt-sent": ("prompt", "classification"),
    "prompt-sum": ("prompt", "summarization"),
    "ptuning-sum": ("ptuning", "summarization"),
    "prefix-sum": ("prefix", "summarization"),
    "prefix-sent": ("prefix", "classification"),
    "loha-sent": ("loha", "classification"),
    "adalora-sum": ("adalora", "summarization"),
    "vera-sum": ("vera", "summarization"),
    "oft-sent": ("oft", "classification"),
    "ln-tuning-sum": ("ln_tuning", "summarization"),
    "lily-sent": ("lily", "classification"),  # cannot merge: served as trained
}


@pytest.fixture(scope="module")
def served(tiny_llama, sentiment_csv, once):
    from peftlab.cli import main

    def build(root):
        summaries = tiny.write_csv(root / "sum.csv", tiny.summary_rows(160))
        for name, (method, task) in SERVED.items():
            data = ["--dataset", str(sentiment_csv)]
            if task == "summarization":
                data = ["--dataset", str(summaries), "--task", "summarization"]
            argv = ["run", "--model", str(tiny_llama), "--method", method, *data]
            assert main([*argv, "--out", str(root / name), *BRIEF_TRAIN]) == 0
        # A plain peft folder, as on the Hub: the LoRA summary adapter without peftlab.json.
        shutil.copytree(root / "lora-sum" / "adapter", root / "plain")
        (root / "plain" / "peftlab.json").unlink()

    root = once("methods", build)
    folders = {name: str(root / name / "adapter") for name in SERVED}
    return {**folders, "plain-peft": str(root / "plain")}


def offline(folder: str, texts: list[str]) -> list[dict]:
    package = open_package(folder)
    # What the server is asked for: a plain folder has no run of its own to take it from.
    package.manifest["config"]["task"]["max_new_tokens"] = 6
    return Predictor(package).predict(texts)


def test_one_server_holds_every_method_and_each_answers_like_offline_predict(served):
    import openai

    texts = [r["text"] for r in tiny.sentiment_rows(10, seed=5)]
    expected = {n: offline(p, texts) for n, p in served.items()}
    server = start(served, port=0, max_wait_ms=20).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        jobs = [(name, row) for name in served for row in range(len(texts))]

        def ask(job):
            name, row = job
            if expected[name][row].get("label") is not None:
                body = {"model": name, "input": texts[row]}
                return client.post("/classify", body=body, cast_to=object)["data"][0]
            answer = client.completions.create(model=name, prompt=texts[row], max_tokens=6)
            return answer.choices[0].text

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, jobs))
    finally:
        server.stop()
    for (name, row), got in zip(jobs, answers, strict=True):
        want = expected[name][row]
        if isinstance(got, dict):
            assert got["label"] == want["label"], (name, row)
            for label, p in want["probabilities"].items():
                assert got["probabilities"][label] == pytest.approx(p, abs=1e-3), (name, row)
        else:
            assert got.strip() == want["generation"], (name, row)


def test_virtual_tokens_that_do_not_fit_the_base_are_refused(served, tiny_model, tmp_path):
    # A plain peft prefix (no manifest to name its base) given another model's base.
    shutil.copytree(served["prefix-sum"], tmp_path / "prefix")
    (tmp_path / "prefix" / "peftlab.json").unlink()
    with pytest.raises(PeftlabError, match="do not fit this base model"):
        start({"prefix": str(tmp_path / "prefix")}, base=str(tiny_model("gpt2")), port=0)


def test_linear_head_classifiers_share_an_encoder_each_with_its_own_head(
    tiny_model, sentiment_csv, tmp_path
):
    """Linear-head adapters (LoRA, IA3) on one DistilBERT: each row goes through its own
    adapter's head in a shared batch and answers as offline predict; a head for another
    number of labels is refused with the reason."""
    import openai

    from peftlab.cli import main

    encoder = str(tiny_model("distilbert"))
    three = tiny.sentiment_rows(60, seed=2)
    for row in three[::3]:
        row["label"] = "neutral"
    runs = {
        "lora-a": ["--method", "lora", "--dataset", str(sentiment_csv)],
        "lora-b": ["--method", "lora", "--dataset", str(sentiment_csv), "--seed", "1"],
        "ia3": ["--method", "ia3", "--dataset", str(sentiment_csv)],
        "three": ["--method", "lora", "--dataset", str(tiny.write_csv(tmp_path / "3.csv", three))],
    }
    folders = {}
    for name, extra in runs.items():
        argv = ["run", "--model", encoder, "--out", str(tmp_path / name), *BRIEF_TRAIN, *extra]
        assert main(argv) == 0
        folders[name] = str(tmp_path / name / "adapter")
    three_labels = folders.pop("three")
    texts = [r["text"] for r in tiny.sentiment_rows(12, seed=4)]
    expected = {n: Predictor(open_package(p)).predict(texts) for n, p in folders.items()}
    server = start(folders, port=0, max_wait_ms=50).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        jobs = [(name, row) for name in folders for row in range(len(texts))]

        def ask(job):
            body = {"model": job[0], "input": texts[job[1]]}
            return client.post("/classify", body=body, cast_to=object)["data"][0]

        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(ask, jobs))
        with pytest.raises(openai.BadRequestError, match="does not generate"):
            client.completions.create(model=encoder, prompt="x", max_tokens=2)
        chat = client.chat.completions.create(
            model="lora-a", messages=[{"role": "user", "content": texts[0]}]
        )
        assert chat.choices[0].message.content == expected["lora-a"][0]["label"]
    finally:
        server.stop()
    for (name, row), got in zip(jobs, answers, strict=True):
        want = expected[name][row]
        assert got["label"] == want["label"], (name, row)
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-4), (name, row)
    with pytest.raises(PeftlabError, match="3 labels"):
        start({"a": folders["lora-a"], "three": three_labels}, port=0)


def test_methods_a_server_cannot_hold_are_refused_with_what_to_do(
    tiny_llama, sentiment_csv, tmp_path
):
    """Bottleneck adapters are peftlab's own weights, not peft layers: refused by name,
    pointing at predict; they do not merge, so merge is not offered."""
    from peftlab.cli import main

    out = tmp_path / "adapter-run"
    argv = ["run", "--model", str(tiny_llama), "--dataset", str(sentiment_csv), "--out", str(out)]
    assert main([*argv, "--method", "adapter", *BRIEF_TRAIN]) == 0
    with pytest.raises(
        PeftlabError, match="trained with --method adapter, which peftlab serve does not load"
    ) as refusal:
        start({"a": str(out / "adapter")}, port=0)
    assert "peftlab predict" in str(refusal.value)
    assert "peftlab merge" not in str(refusal.value)
