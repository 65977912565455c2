"""Where prefix tuning starts: the test loss and accuracy of the base model, and of the
model with a prefix before any training, initialised randomly (peft's default) and from
the model's own keys and values of text (peftlab's default).

    python bench/prefix_init.py [--model smollm2-135m] [--test-samples 200]
"""

from __future__ import annotations

import argparse
import json

from loaded import load

from peftlab.cli import quiet_libraries
from peftlab.config import RunConfig
from peftlab.methods.switching import base_model
from peftlab.training.evaluate import evaluate


def step_zero(cfg: RunConfig, init: str | None) -> dict:
    """Test metrics before training: the base model (init None) or a fresh prefix."""
    cfg.method.name, cfg.method.prompt_init = "prefix", init or "text"
    run = load(cfg)
    model, task = run.model, run.task
    items = task.encode(run.dataset.splits["test"])
    batch, precision = run.cfg.train.eval_batch_size, run.cfg.train.precision
    if init is None:
        with base_model(model):
            return evaluate(model, task, items, batch, precision, desc="base")
    return evaluate(model, task, items, batch, precision, desc=init)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--test-samples", type=int, default=200)
    args = parser.parse_args()
    quiet_libraries()
    results = {}
    for init in (None, "random", "text"):
        cfg = RunConfig()
        cfg.model.name, cfg.data.name = args.model, args.dataset
        cfg.data.test_samples = args.test_samples
        metrics = step_zero(cfg, init)
        results[init or "base"] = {k: round(metrics[k], 4) for k in ("accuracy", "f1", "loss")}
        print(init or "base", results[init or "base"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
