import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return tiny.make_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny.make_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch) -> the folder of a tiny random-weight model, built once a session."""
    built = {}

    def make(arch: str) -> Path:
        if arch not in built:
            built[arch] = tiny.make_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return built[arch]

    return make


@pytest.fixture(scope="session")
def summary_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("summaries")
    return tiny.write_csv(folder / "summaries.csv", tiny.summary_rows(240))


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return tiny.write_csv(folder / "sentiment.csv", tiny.sentiment_rows(240))


@pytest.fixture(scope="session")
def tuned_comparison(tiny_llama, sentiment_csv, tmp_path_factory) -> Path:
    """One finished `compare --tune` (lora, ia3) for the tests that only read it: the
    tuning test checks its searches, the HTML test renders its report."""
    from peftlab.cli import main

    out = tmp_path_factory.mktemp("tuned") / "cmp"
    assert main(tiny.tune_argv(tiny_llama, sentiment_csv, out)) == 0
    return out


@pytest.fixture
def peftlab_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PEFTLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


SERVE_TRAIN = ["--epochs", "2", "--lr", "1e-2", "--batch-size", "16", *tiny.ALL_ROWS]
SERVE_TRAIN += ["--max-new-tokens", "6"]


@pytest.fixture(scope="session")
def adapters(tiny_llama, sentiment_csv, tmp_path_factory):
    """Two adapters on the tiny llama for the server tests: label words and summaries."""
    from peftlab.cli import main

    root = tmp_path_factory.mktemp("adapters")
    summaries = tiny.write_csv(root / "sum.csv", tiny.summary_rows(160))
    runs = {
        "sentiment": ["--dataset", str(sentiment_csv)],
        "summary": ["--dataset", str(summaries), "--task", "summarization"],
    }
    for name, extra in runs.items():
        argv = ["run", "--model", str(tiny_llama), "--out", str(root / name), *SERVE_TRAIN, *extra]
        assert main(argv) == 0
    return {name: str(root / name / "adapter") for name in runs}


SERVE_TOKEN = "s3cret"


@pytest.fixture(scope="module")
def server(adapters):
    """`peftlab serve` on a free loopback port with both adapters and the admin token."""
    from peftlab.serving import Limits, start

    limits = Limits(max_input_tokens=512, max_new_tokens=128)
    server = start(adapters, port=0, admin_token=SERVE_TOKEN, max_wait_ms=20, limits=limits)
    yield server.start()
    server.stop()


@pytest.fixture
def busy_cpus():
    """Every core kept busy by a CPU-bound process of the test's own while it runs, as on
    a shared machine: what must hold there is proved there."""
    burn = [sys.executable, "-c", "while True: pass"]
    burners = [subprocess.Popen(burn) for _ in range(os.cpu_count() or 1)]
    yield
    for burner in burners:
        burner.kill()
        burner.wait()


@pytest.fixture
def hub_offline(monkeypatch):
    """No Hub, at once: huggingface_hub and datasets read HF_HUB_OFFLINE when first
    imported, so setting the variable later changes nothing and every Hub id waits out
    DNS retries (24 s); their read constants are set too."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, True)
