"""Every method on one server, on the real built-in models: does each adapter answer
through `peftlab serve` as it does offline (`predict`)?

One SmolLM2-135M server holds a LoRA and an IA3 sentiment classifier (label words), a
prompt-tuning headline writer and a plain peft LoRA folder (no peftlab.json, as on the
Hub); a second server holds two linear-head sentiment classifiers (LoRA and IA3) on
MiniLM-L6, because a server holds one base model and a linear head belongs to an encoder.
Every adapter is asked from several threads at once with the real `openai` client, so
rows of different adapters share batches; each answer is compared with `Predictor` on the
same text: labels exactly, probabilities within --tolerance, generated text exactly.
Both sides run in --precision (fp32 by default): in bf16 a row's numbers depend on the
batch it shares and its padding (offline predict alone, batch 16 against batch 1: up to
8e-3 in a probability on SmolLM2), so only fp32 can be held to exact agreement;
`--precision bf16` reports how far bf16 answers move.

The adapters are trained here with small budgets (what is checked is serving, not their
quality) into --work, and reused by a rerun. Prints a summary and writes JSON.

    python bench/serve_every_method.py --work runs/serve-every-method
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_generation import PROMPTS, write_adapters

SENTIMENT = ["--dataset", "rotten_tomatoes", "--train-samples", "200", "--test-samples", "50"]
HEADLINES = ["--dataset", "bbc_news", "--task", "summarization", "--train-samples", "64"]
HEADLINES += ["--test-samples", "8", "--max-length", "128", "--max-new-tokens", "12"]
QUIET = ["--forgetting-samples", "0"]
SMOLLM2 = {  # served name -> `peftlab run` arguments
    "lora-sentiment": ["--model", "smollm2-135m", "--method", "lora", *SENTIMENT],
    "ia3-sentiment": ["--model", "smollm2-135m", "--method", "ia3", *SENTIMENT],
    "prompt-headlines": ["--model", "smollm2-135m", "--method", "prompt", *HEADLINES],
}
MINILM = {
    "lora-head": ["--model", "minilm-l6", "--method", "lora", *SENTIMENT],
    "ia3-head": ["--model", "minilm-l6", "--method", "ia3", *SENTIMENT],
}
MAX_TOKENS = 12


def train(work: Path, runs: dict[str, list[str]]) -> dict[str, str]:
    """Each run's adapter folder, trained unless a finished one is there already."""
    from peftlab.cli import main

    folders = {}
    for name, argv in runs.items():
        adapter = work / name / "adapter"
        if not (adapter / "peftlab.json").is_file():
            started = time.perf_counter()
            if main(["run", *argv, *QUIET, "--out", str(work / name)]) != 0:
                sys.exit(f"training {name} failed")
            print(f"trained {name} in {time.perf_counter() - started:.0f} s", flush=True)
        folders[name] = str(adapter)
    return folders


def texts_of(dataset: str, count: int) -> list[str]:
    from peftlab.data.sources import load_source

    frame = load_source(dataset).frames["all"]
    return [str(t)[:600] for t in frame["text"].iloc[-count:]]  # the corpus's last rows


def offline(folder: str, texts: list[str], precision: str) -> list[dict]:
    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package

    package = open_package(folder)
    package.manifest["config"]["task"]["max_new_tokens"] = MAX_TOKENS  # what is asked
    predictor = Predictor(package)
    predictor.precision = precision
    return predictor.predict(texts)


def ask_server(folders: dict[str, str], questions: dict[str, list[str]], threads: int, precision):
    """Every (adapter, text) asked at once; the answers in the same order, and seconds."""
    import openai

    from peftlab.serving import start

    kinds = {name: offline_kind(folder) for name, folder in folders.items()}
    jobs = [(name, text) for name, texts in questions.items() for text in texts]
    server = start(folders, port=0, max_wait_ms=20, precision=precision).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)

        def ask(job):
            name, text = job
            if kinds[name] == "label":
                body = {"model": name, "input": text}
                return client.post("/classify", body=body, cast_to=object)["data"][0]
            answer = client.completions.create(model=name, prompt=text, max_tokens=MAX_TOKENS)
            return answer.choices[0].text

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            answers = list(pool.map(ask, jobs))
        return jobs, answers, time.perf_counter() - started
    finally:
        server.stop()


def offline_kind(folder: str) -> str:
    from peftlab.adapters.package import open_package

    task = open_package(folder).manifest["config"]["task"]["name"]
    return "label" if task == "classification" else "text"


def compare(folders, questions, args) -> dict:
    """Per adapter: how many answers equal offline predict, and the largest probability
    difference; plus the server's wall time for all of them."""
    expected = {n: offline(folders[n], texts, args.precision) for n, texts in questions.items()}
    jobs, answers, seconds = ask_server(folders, questions, args.threads, args.precision)
    report = {
        n: {"asked": 0, "equal": 0, "same_label": 0, "max_probability_diff": 0.0} for n in folders
    }
    position = {name: 0 for name in folders}
    for (name, _), got in zip(jobs, answers, strict=True):
        want = expected[name][position[name]]
        position[name] += 1
        entry = report[name]
        entry["asked"] += 1
        if isinstance(got, dict):
            diff = max(abs(got["probabilities"][k] - p) for k, p in want["probabilities"].items())
            entry["max_probability_diff"] = max(entry["max_probability_diff"], diff)
            entry["same_label"] += got["label"] == want["label"]
            entry["equal"] += got["label"] == want["label"] and diff <= args.tolerance
        else:
            entry["equal"] += got.strip() == want["generation"]
            entry.setdefault("example", {"served": got.strip(), "offline": want["generation"]})
    return {"adapters": report, "requests": len(jobs), "server_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/serve-every-method")
    parser.add_argument("--texts", type=int, default=16, help="texts asked of each adapter")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="probability difference")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default="bench/serve_every_method.json")
    args = parser.parse_args()

    work = Path(args.work)
    reviews, articles = texts_of("rotten_tomatoes", args.texts), texts_of("bbc_news", args.texts)
    smol = train(work, SMOLLM2)
    if not (work / "plain-peft" / "a0" / "adapter_config.json").is_file():
        write_adapters("smollm2-135m", 1, work / "plain-peft")
    smol["plain-peft"] = str(work / "plain-peft" / "a0")
    plain = [PROMPTS[i % len(PROMPTS)] for i in range(args.texts)]
    smol_questions = {
        "lora-sentiment": reviews,
        "ia3-sentiment": reviews,
        "prompt-headlines": articles,
        "plain-peft": plain,
    }
    minilm = train(work, MINILM)
    results = {
        "smollm2-135m": compare(smol, smol_questions, args),
        "minilm-l6": compare(minilm, {n: reviews for n in minilm}, args),
    }
    for base, result in results.items():
        print(f"{base}: {result['requests']} requests in {result['server_seconds']:.1f} s")
        for name, entry in result["adapters"].items():
            print(
                f"  {name:18s} {entry['equal']}/{entry['asked']} equal to offline predict"
                f"  (same label {entry['same_label']}, max probability diff "
                f"{entry['max_probability_diff']:.2e})"
            )
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if any(e["equal"] < e["asked"] for r in results.values() for e in r["adapters"].values()):
        sys.exit("some served answers differ from offline predict")


if __name__ == "__main__":
    main()
