"""`peftlab serve` for real: an HTTP server on a free port, the real `openai` client,
concurrent mixed-adapter traffic checked against offline `predict`, bad input, admin."""

import json
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import tiny
from conftest import SERVE_TOKEN as TOKEN

from peftlab.adapters.inference import Predictor
from peftlab.adapters.package import open_package
from peftlab.serving.batcher import Batcher, Job, QueueFull


def call(server, method, path, body=None, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_binds_localhost_and_lists_base_and_adapters(server, tiny_llama):
    import openai

    assert server.address[0] == "127.0.0.1"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused") as client:
        ids = [m.id for m in client.models.list().data]
    assert ids == [str(tiny_llama), "sentiment", "summary"]


def test_openai_client_gets_answers_from_each_model(server, tiny_llama):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    summary = client.completions.create(model="summary", prompt="good great fun", max_tokens=6)
    assert summary.choices[0].text.endswith("review")
    chat = client.chat.completions.create(
        model="sentiment", messages=[{"role": "user", "content": "awful boring dull bad"}]
    )
    assert chat.choices[0].message.content in ("positive", "negative")
    base = client.completions.create(model=str(tiny_llama), prompt="the film", max_tokens=3)
    assert base.usage.completion_tokens <= 3 and base.object == "text_completion"


def offline(adapter: str, texts: list[str]) -> list[dict]:
    return Predictor(open_package(adapter)).predict(texts)


def test_200_concurrent_mixed_requests_equal_offline_predict(server, adapters):
    rows = tiny.sentiment_rows(100, seed=7)
    texts = [r["text"] for r in rows]
    expected_labels = offline(adapters["sentiment"], texts)
    expected_summaries = offline(adapters["summary"], texts)

    def request(i: int):
        text = texts[i % 100]
        if i % 2 == 0:
            return call(server, "POST", "/v1/classify", {"model": "sentiment", "input": text})
        body = {"model": "summary", "prompt": text, "max_tokens": 6}
        return call(server, "POST", "/v1/completions", body)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(request, range(200)))
    assert all(status == 200 for status, _ in answers)
    for i, (_, body) in enumerate(answers):
        if i % 2 == 0:
            got, want = body["data"][0], expected_labels[i % 100]
            assert got["label"] == want["label"]
            for name, p in want["probabilities"].items():
                assert got["probabilities"][name] == pytest.approx(p, abs=1e-4)
        else:
            assert body["choices"][0]["text"] == expected_summaries[i % 100]["generation"]
    samples = prometheus(server)
    ok = {"endpoint": "/v1/classify", "model": "sentiment", "status": "200"}
    assert samples["peftlab_requests_total", frozenset(ok.items())] == 100
    batches = [samples[f"peftlab_batch_size_{s}", frozenset()] for s in ("sum", "count")]
    assert batches[0] / batches[1] > 1  # requests were batched, not serialized


def prometheus(server) -> dict:
    """GET /metrics, parsed by prometheus_client: (name, its labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url + "/metrics", timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


BAD_REQUESTS = [
    ("malformed json", "/v1/completions", b"{not json", 400, "malformed JSON"),
    ("not an object", "/v1/completions", b"[1, 2]", 400, "must be an object"),
    ("unknown adapter", "/v1/completions", {"model": "nope", "prompt": "x"}, 404, "not served"),
    ("empty prompt", "/v1/completions", {"model": "summary", "prompt": " "}, 400, "empty"),
    ("over-long", "/v1/completions", {"model": "summary", "prompt": "film " * 3000}, 400, "limit"),
    (
        "too many tokens",
        "/v1/completions",
        {"model": "summary", "prompt": "x", "max_tokens": 100000},
        400,
        "max_tokens",
    ),
    ("wrong type", "/v1/completions", {"model": "summary", "prompt": 5}, 400, "prompt"),
    ("model type", "/v1/completions", {"model": 3, "prompt": "x"}, 400, "model"),
    (
        "bool tokens",
        "/v1/completions",
        {"model": "summary", "prompt": "x", "max_tokens": True},
        400,
        "max_tokens",
    ),
    ("missing model", "/v1/classify", {"input": "x"}, 400, "'model'"),
    ("not a classifier", "/v1/classify", {"model": "summary", "input": "x"}, 400, "classif"),
    ("no user message", "/v1/chat/completions", {"model": "summary", "messages": []}, 400, "user"),
    (
        "unsupported field",
        "/v1/completions",
        {"model": "summary", "prompt": "x", "suffix": "y"},
        400,
        "'suffix' is not supported",
    ),
    ("unknown route", "/v1/embeddings", {"model": "summary", "input": "x"}, 404, "no route"),
]


def test_every_bad_input_is_a_4xx_json_error_and_the_server_carries_on(server):
    for name, path, body, status, words in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else None
        got, answer = call(server, "POST", path, None if raw else body, raw=raw)
        assert got == status, name
        assert words in answer["error"]["message"], name
    status, answer = call(server, "POST", "/v1/classify", {"model": "sentiment", "input": "good"})
    assert status == 200 and answer["data"][0]["label"] in ("positive", "negative")


def test_admin_loads_and_unloads_adapters_behind_a_token(server, adapters, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(adapters["sentiment"], copy)
    body = {"name": "sentiment2", "path": str(copy)}
    assert call(server, "POST", "/admin/adapters", body)[0] == 401
    wrong = {"Authorization": "Bearer nope"}
    assert call(server, "POST", "/admin/adapters", body, headers=wrong)[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"name": "../etc", "path": str(copy)}
    status, answer = call(server, "POST", "/admin/adapters", bad, headers=auth)
    assert status == 400 and "not allowed" in answer["error"]["message"]
    status, answer = call(server, "POST", "/admin/adapters", body, headers=auth)
    assert status == 201 and "sentiment2" in answer["models"]
    first = call(server, "POST", "/v1/classify", {"model": "sentiment", "input": "good fun"})[1]
    second = call(server, "POST", "/v1/classify", {"model": "sentiment2", "input": "good fun"})[1]
    assert first["data"][0]["probabilities"] == second["data"][0]["probabilities"]
    assert call(server, "DELETE", "/admin/adapters/sentiment2", headers=auth)[0] == 200
    status, _ = call(server, "POST", "/v1/classify", {"model": "sentiment2", "input": "good"})
    assert status == 404
    assert call(server, "DELETE", "/admin/adapters/sentiment2", headers=auth)[0] == 404


def test_a_full_queue_answers_busy_instead_of_growing():
    batcher = Batcher(engine=None, queue_size=2)  # worker not started: nothing drains
    batcher.submit(Job("classify", "a", "x"))
    batcher.submit(Job("classify", "a", "y"))
    with pytest.raises(QueueFull):
        batcher.submit(Job("classify", "a", "z"))


def test_health(server):
    status, body = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and "summary" in body["models"]
