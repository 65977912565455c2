"""`peftlab serve` as HTTP software, driven for real on loopback: one pooled connection
survives every kind of bad request, idle and slow connections do not starve the others,
a client that gives up leaves the queue, SIGTERM drains in-flight requests."""

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SERVE_TOKEN as TOKEN

from peftlab.adapters.inference import Predictor
from peftlab.adapters.package import open_package


@pytest.fixture(scope="module")
def expected(adapters):
    texts = [f"good fun film {i}" if i % 2 else f"awful dull plot {i}" for i in range(10)]
    labels = Predictor(open_package(adapters["sentiment"])).predict(texts)
    summaries = Predictor(open_package(adapters["summary"])).predict(texts)
    return texts, [r["label"] for r in labels], [r["generation"] for r in summaries]


def local_port(response) -> int:
    """The client-side port of the connection a response came on."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def bad_requests(http) -> dict:
    """Every kind of bad request, raw, on the openai client's own connection pool."""
    json_headers = {"Content-Type": "application/json"}

    def post(path, raw: bytes, headers=json_headers):
        return lambda: http.post(path, content=raw, headers=headers)

    smuggled = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    return {
        "malformed json": (post("/v1/completions", b"{not json"), 400),
        "not an object": (post("/v1/completions", b"[1, 2]"), 400),
        "nested 200,000 deep": (post("/v1/completions", b"[" * 200_000 + b"]" * 200_000), 400),
        "nested 100,000 deep": (post("/v1/completions", b"[" * 100_000), 400),
        "lone surrogate": (post("/v1/completions", b'{"model":"summary","prompt":"\\ud800"}'), 400),
        "form body": (post("/v1/completions", b"a=1", {"Content-Type": "text/plain"}), 415),
        "over 1 MB": (post("/v1/completions", b'{"prompt":"' + b"x" * (1 << 20) + b'"}'), 413),
        "PUT": (lambda: http.put("/v1/completions", content=b"{}", headers=json_headers), 405),
        "GET a POST route": (lambda: http.get("/v1/completions"), 405),
        "no route": (lambda: http.get("/v1/nope"), 404),
        "admin without token, smuggling": (post("/admin/adapters", smuggled), 401),
        "vllm load, wrong token": (
            lambda: http.post(
                "/v1/load_lora_adapter",
                json={"lora_name": "x", "lora_path": "y"},
                headers={"Authorization": "Bearer nope"},
            ),
            401,
        ),
        "admin load of ../../etc": (
            lambda: http.post(
                "/admin/adapters",
                json={"name": "etc", "path": "../../etc"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ),
            400,
        ),
        "unload unknown": (
            lambda: http.delete(
                "/admin/adapters/ghost", headers={"Authorization": f"Bearer {TOKEN}"}
            ),
            404,
        ),
    }


def client_bad_requests(client) -> dict:
    """Bad requests as the openai client sends them."""
    c = client.completions.create
    return {
        "unknown model": (lambda: c(model="nope", prompt="x"), 404),
        "max_tokens too large": (lambda: c(model="summary", prompt="x", max_tokens=100000), 400),
        "max_tokens 0": (lambda: c(model="summary", prompt="x", max_tokens=0), 400),
        "unsupported field": (lambda: c(model="summary", prompt="x", suffix="y"), 400),
        "unknown field": (lambda: c(model="summary", prompt="x", extra_body={"frob": 1}), 400),
        "wrong type": (lambda: c(model="summary", prompt="x", extra_body={"max_tokens": "3"}), 400),
        "empty prompt": (lambda: c(model="summary", prompt=" "), 400),
        "too long": (lambda: c(model="summary", prompt="film " * 3000), 400),
        "chat without user": (
            lambda: client.chat.completions.create(model="summary", messages=[]),
            400,
        ),
        "no such endpoint": (lambda: client.embeddings.create(model="summary", input="x"), 404),
        "classify on a generator": (
            lambda: client.post(
                "/classify", body={"model": "summary", "input": "x"}, cast_to=object
            ),
            400,
        ),
    }


def test_1000_requests_good_and_bad_share_one_pooled_connection(server, expected):
    import httpx2
    import openai

    texts, labels, summaries = expected
    one = httpx2.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
    http = httpx2.Client(base_url=server.url, limits=one, timeout=60)
    client = openai.OpenAI(
        base_url=server.url + "/v1", api_key="-", http_client=http, max_retries=0
    )
    raw_bad, api_bad = bad_requests(http), client_bad_requests(client)
    kinds = [*raw_bad, *api_bad, "completion", "chat", "classify"]
    ports, answered = set(), {kind: 0 for kind in kinds}
    for i in range(1000):
        kind, text = kinds[i % len(kinds)], i % len(texts)
        if kind in raw_bad:
            send, status = raw_bad[kind]
            response = send()
            assert response.status_code == status, (kind, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error", kind
            ports.add(local_port(response))
        elif kind in api_bad:
            send, status = api_bad[kind]
            with pytest.raises(openai.APIStatusError) as caught:
                send()
            assert caught.value.status_code == status, (kind, caught.value.body)
            assert caught.value.body["message"], kind
            ports.add(local_port(caught.value.response))
        elif kind == "completion":
            got = client.completions.with_raw_response.create(
                model="summary", prompt=texts[text], max_tokens=6
            )
            assert got.parse().choices[0].text == summaries[text]
            ports.add(local_port(got.http_response))
        elif kind == "chat":
            got = client.chat.completions.with_raw_response.create(
                model="sentiment", messages=[{"role": "user", "content": texts[text]}]
            )
            assert got.parse().choices[0].message.content == labels[text]
            ports.add(local_port(got.http_response))
        else:
            response = http.post("/v1/classify", json={"model": "sentiment", "input": texts[text]})
            assert response.json()["data"][0]["label"] == labels[text]
            ports.add(local_port(response))
        answered[kind] += 1
    assert min(answered.values()) >= 1000 // len(kinds)
    # After every refusal (413s and the smuggled request included) the next request
    # went out on the same connection, and the smuggled GET was never answered.
    assert len(ports) == 1, ports
    http.close()


def test_idle_and_slow_connections_do_not_starve_normal_requests(server, expected):
    """300 sockets held open, half idle, half sending a request one byte at a time (a
    slowloris), while 100 normal requests are served."""
    import httpx2

    host, port = server.address
    held = []
    for i in range(300):
        sock = socket.create_connection((host, port), timeout=10)
        if i % 2:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    texts, labels, _ = expected

    def classify(i):
        with httpx2.Client(base_url=server.url, timeout=60) as http:
            body = {"model": "sentiment", "input": texts[i % len(texts)]}
            return http.post("/v1/classify", json=body).json()["data"][0]["label"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=20) as pool:
        got = list(pool.map(classify, range(100)))
    assert got == [labels[i % len(texts)] for i in range(100)]
    assert time.perf_counter() - started < 60
    for sock in held[1::2]:
        sock.sendall(b"X")  # still slowly sending: the server has not given up on them
    for sock in held:
        sock.close()


def test_a_client_that_gives_up_leaves_the_queue(server, caplog):
    """Requests whose clients hang up before their turn are dropped, not computed, and
    quietly: a client hanging up is no server error."""
    import gc

    import httpx2

    def impatient(i):
        with httpx2.Client(base_url=server.url, timeout=0.05) as http:
            body = {"model": "summary", "prompt": f"good fun film number {i}", "max_tokens": 60}
            with pytest.raises(httpx2.TimeoutException):
                http.post("/v1/completions", json=body)

    with ThreadPoolExecutor(max_workers=40) as pool:
        list(pool.map(impatient, range(120)))
    deadline = time.monotonic() + 60
    dropped = 0.0
    while time.monotonic() < deadline and dropped == 0:
        time.sleep(0.5)
        dropped = metric(server.url, "peftlab_dropped_jobs_total")
    assert dropped > 0
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        started = time.perf_counter()
        answer = http.post("/v1/classify", json={"model": "sentiment", "input": "good"})
        assert answer.status_code == 200
        assert time.perf_counter() - started < 10  # the abandoned work was not done first
    gc.collect()  # asyncio reports an unread future's exception when it is collected
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def scrape(url: str) -> dict:
    """The server's metric families by name. A scrape waits as long as a request may: on a
    saturated machine the server's event loop can be slow to answer, and httpx's default
    5 s made a test fail there, not the server."""
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx2.get(url + "/metrics", timeout=60).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def metric(url: str, name: str) -> float:
    for family in scrape(url).values():
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def arrived(url: str, endpoint: str) -> float:
    """Requests to `endpoint` in flight or answered, as the server's metrics count them."""
    families = scrape(url)
    in_flight = families["peftlab_requests_in_flight"].samples[0].value - 1
    answered = sum(
        s.value
        for s in families["peftlab_requests"].samples
        if s.name == "peftlab_requests_total" and s.labels["endpoint"] == endpoint
    )
    return in_flight + answered


def wait_until(condition, timeout=120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_sigterm_lets_in_flight_requests_finish(adapters):
    import httpx2

    env = {**os.environ, "PEFTLAB_ADMIN_TOKEN": ""}
    argv = [sys.executable, "-m", "peftlab", "serve", "--port", "0", "--max-wait-ms", "300"]
    argv += ["--adapter", f"summary={adapters['summary']}"]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    line = process.stdout.readline()
    assert "serving" in line, line
    url = line.split(" on ")[1].split("/v1")[0]

    def ask(i):
        body = {"model": "summary", "prompt": f"fine film {i}", "max_tokens": 30}
        return httpx2.post(url + "/v1/completions", json=body, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = [pool.submit(ask, i) for i in range(4)]
        # The four are in (waiting, running or answered) however slow the machine: the
        # server says so; the scrape that asks is in flight itself.
        wait_until(lambda: arrived(url, "/v1/completions") == 4)
        process.send_signal(signal.SIGTERM)
        statuses = [a.result().status_code for a in answers]
    output, _ = process.communicate(timeout=60)
    assert statuses == [200] * 4
    assert process.returncode == 0 and "stopped" in output
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/health")


def test_accepted_connections_send_without_waiting_for_acks():
    """Nagle off on every accepted connection: with it on, each request on a kept-alive
    connection waited out the client's 40 ms delayed ACK (44 ms vs 0.7 ms a request)."""
    import asyncio

    from peftlab.serving.server import bind

    async def nodelay_of_an_accepted_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        listening = bind("127.0.0.1", 0, 8)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname())
        try:
            return await asyncio.wait_for(accepted, 30)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
