import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # Long tests first: one drawn last keeps every other worker waiting for it.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable


def pytest_collection_finish(session):
    """What every test imports, imported once, then kept out of the cyclic collector's
    sight (gc.freeze): each run's own gc.collect() (training/resources.py) would scan
    every module of torch, transformers and peft again, ~0.3 s a run in a test process
    that holds them all (a real run is one process: it pays that once)."""
    import gc

    import matplotlib.figure  # noqa: F401  (every run's report plots)

    import peftlab.runner.pipeline  # noqa: F401  (torch, transformers, peft, ...)

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def compile_records(tmp_path, monkeypatch) -> Path:
    """--compile-training auto's record of compile costs, in the test's own folder: no
    record of a real run here decides a test's compile, and no test writes there."""
    from peftlab.training import compile_choice

    path = tmp_path / "inductor" / compile_choice.RECORD_NAME
    monkeypatch.setattr(compile_choice, "record_path", lambda: path)
    return path


def once_per_run(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per test run however many xdist
    workers ask: the others wait on a file lock in the workers' shared temporary root and
    read it (pytest-xdist's documented pattern for session fixtures). Tiny models and data
    are shared too, so every path a shared result names is the same in every worker."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tiny_model) -> Path:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_bert(tiny_model) -> Path:
    return tiny_model("bert")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch) -> the folder of a tiny random-weight model, built once a run."""

    def make(arch: str) -> Path:
        return once_per_run(tmp_path_factory, f"tiny-{arch}", lambda f: tiny.make_model(f, arch))

    return functools.cache(make)


@pytest.fixture(scope="session")
def summary_csv(once) -> Path:
    rows = tiny.summary_rows(240)
    return once("summaries", lambda f: tiny.write_csv(f / "summaries.csv", rows)) / "summaries.csv"


@pytest.fixture(scope="session")
def once(tmp_path_factory):
    """once(name, build) -> the folder build(folder) filled, built once a run."""
    return functools.partial(once_per_run, tmp_path_factory)


@pytest.fixture(scope="session")
def sentiment_csv(once) -> Path:
    rows = tiny.sentiment_rows(240)
    return once("data", lambda f: tiny.write_csv(f / "sentiment.csv", rows)) / "sentiment.csv"


@pytest.fixture(scope="session")
def tuned_comparison(tiny_llama, sentiment_csv, once) -> Path:
    """One finished `compare --tune` (lora, ia3) for the tests that only read it: the
    tuning test checks its searches, the HTML test renders its report."""
    from peftlab.cli import main

    def build(folder: Path) -> None:
        assert main(tiny.tune_argv(tiny_llama, sentiment_csv, folder / "cmp")) == 0

    return once("tuned", build) / "cmp"


@pytest.fixture
def peftlab_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PEFTLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# Adapters trained to be served: forgetting is not what the tests that serve them check.
SERVE_TRAIN = ["--epochs", "2", "--lr", "1e-2", "--batch-size", "16", *tiny.ALL_ROWS]
SERVE_TRAIN += ["--max-new-tokens", "6", "--forgetting-samples", "0"]


@pytest.fixture(scope="session")
def adapters(tiny_llama, sentiment_csv, once):
    """Two adapters on the tiny llama for the server tests: label words and summaries."""
    from peftlab.cli import main

    def build(root: Path) -> None:
        summaries = tiny.write_csv(root / "sum.csv", tiny.summary_rows(160))
        runs = {
            "sentiment": ["--dataset", str(sentiment_csv)],
            "summary": ["--dataset", str(summaries), "--task", "summarization"],
        }
        for name, extra in runs.items():
            argv = ["run", "--model", str(tiny_llama), "--out", str(root / name), *SERVE_TRAIN]
            assert main([*argv, *extra]) == 0

    root = once("adapters", build)
    return {name: str(root / name / "adapter") for name in ("sentiment", "summary")}


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
