"""Generation through `peftlab serve` with the real openai client: streaming equals the
whole answer, seeded sampling repeats, n/stop/echo/logprobs in OpenAI's shapes, and
continuous batching lets a short request finish while a long one still decodes."""

import shutil
import threading
import time

import pytest

from peftlab.serving import start


@pytest.fixture(scope="module")
def client(server):
    import openai

    with openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def base(tiny_llama):
    """The bare base model's id: random weights, so it rarely stops before max_tokens."""
    return str(tiny_llama)


def test_streamed_completion_equals_the_whole_answer_and_arrives_token_by_token(client, base):
    # Enough tokens that decoding them takes longer than the request's fixed costs.
    whole = client.completions.create(model=base, prompt="the film was", max_tokens=120)
    started, arrivals, pieces, finish = time.perf_counter(), [], [], None
    stream = client.completions.create(
        model=base, prompt="the film was", max_tokens=120, stream=True
    )
    for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason
    assert len([p for p in pieces if p]) > 5  # many chunks, not one at the end
    assert arrivals[0] < arrivals[-1] / 2  # the first token well before the last


def test_streamed_chat_opens_with_the_role_and_reports_usage(client, base):
    messages = [{"role": "user", "content": "tell me about the plot"}]
    whole = client.chat.completions.create(model=base, messages=messages, max_tokens=30)
    chunks = list(
        client.chat.completions.create(
            model=base,
            messages=messages,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_seeded_sampling_repeats_and_seeds_differ(client, base):
    def sample(seed):
        answer = client.completions.create(
            model=base, prompt="a story", max_tokens=20, temperature=1.0, top_p=0.95, seed=seed
        )
        return answer.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(5)}) > 1
    greedy = client.completions.create(model=base, prompt="a story", max_tokens=20)
    assert len({sample(seed) for seed in range(5)} - {greedy.choices[0].text}) >= 1


def test_n_choices_stop_strings_and_echo(client, base):
    many = client.completions.create(
        model=base, prompt="good fun film", max_tokens=12, n=3, temperature=1.0, seed=1
    )
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.text for c in many.choices}) > 1  # each choice its own seed
    whole = client.completions.create(model=base, prompt="good fun film", max_tokens=30)
    text = whole.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.completions.create(model=base, prompt="good fun film", max_tokens=30, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=base, prompt="good fun film", max_tokens=30, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    echoed = client.completions.create(model=base, prompt="good fun film", max_tokens=30, echo=True)
    assert echoed.choices[0].text == "good fun film" + text


def test_logprobs_in_both_shapes(client, base):
    answer = client.completions.create(model=base, prompt="the film was", max_tokens=8, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert all(token in answer.choices[0].text for token in logprobs.tokens)
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == 8
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) == 2 and chosen <= 0
        assert chosen == pytest.approx(max(top.values()))  # greedy takes the likeliest
    chat = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "the film was"}],
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 8 and all(len(t.top_logprobs) == 3 for t in content)
    assert content[0].bytes == list(content[0].token.encode())


def test_a_short_request_finishes_while_a_long_one_decodes(client, base):
    decoding, finished = threading.Event(), {}

    def ask_long():
        stream = client.completions.create(
            model=base, prompt="long review", max_tokens=128, stream=True, extra_body={"top_k": -1}
        )
        for _ in stream:
            decoding.set()  # its first token is out: it is in the running batch
        finished["long"] = time.perf_counter()

    long = threading.Thread(target=ask_long)
    long.start()
    assert decoding.wait(60)  # a condition, not a sleep: on a busy machine it may take long
    client.completions.create(model=base, prompt="short review", max_tokens=3)
    finished["short"] = time.perf_counter()
    long.join()
    assert finished["short"] < finished["long"]


def test_decoding_fields_a_model_cannot_honour_are_refused(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="'logprobs' is not supported"):
        client.completions.create(model="sentiment", prompt="good", logprobs=1)
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="summary", prompt="x", echo=True, logprobs=1)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model="summary", messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )


def test_ia3_adapters_decode_side_by_side_like_offline_predict(tiny_llama, tmp_path):
    """IA3 adapters cannot share a forward pass (peft mixes LoRA only): each decodes in a
    lane of its own, the lanes step side by side, and each answer equals offline predict."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    import tiny
    from conftest import SERVE_TRAIN

    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package
    from peftlab.cli import main

    data = tiny.write_csv(tmp_path / "sum.csv", tiny.summary_rows(160))
    argv = ["run", "--model", str(tiny_llama), "--dataset", str(data), "--task", "summarization"]
    assert main([*argv, "--method", "ia3", "--out", str(tmp_path / "ia3"), *SERVE_TRAIN]) == 0
    served = {"first": str(tmp_path / "ia3" / "adapter"), "second": str(tmp_path / "copy")}
    shutil.copytree(served["first"], served["second"])
    texts = [r["text"] for r in tiny.sentiment_rows(12, seed=3)]
    expected = {
        name: [r["generation"] for r in Predictor(open_package(path)).predict(texts)]
        for name, path in served.items()
    }
    server = start(served, port=0, max_wait_ms=20).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)

        def ask(i):
            name = ("first", "second")[i % 2]
            answer = client.completions.create(model=name, prompt=texts[i // 2], max_tokens=6)
            return name, i // 2, answer.choices[0].text

        with ThreadPoolExecutor(max_workers=8) as pool:
            for name, row, text in pool.map(ask, range(24)):
                assert text.strip() == expected[name][row], (name, row)
    finally:
        server.stop()
