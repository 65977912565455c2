"""A built-in or local model with a method attached, its data and task, as `peftlab run`
prepares them (without a run directory): for the benchmarks that time or score one piece."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.config import RunConfig
from peftlab.data import assets, sources
from peftlab.methods.registry import get_method
from peftlab.models import loading
from peftlab.runner.checks import resolved
from peftlab.runner.pipeline import seed_everything
from peftlab.tasks.setup import build_task, model_info, padding_side


@dataclass
class Loaded:
    cfg: RunConfig  # resolved: the method's default rate filled in
    info: object
    dataset: object
    task: object
    model: object


def load(cfg: RunConfig) -> Loaded:
    """`cfg`'s model, seeded with 0 before loading (a new head is drawn from it), with
    `cfg.method` attached."""
    cfg = resolved(cfg)
    source = assets.resolve_model(cfg.model.name)
    info = model_info(source, cfg)
    dataset = sources.load(cfg.data, cfg.task.name)
    tokenizer = loading.load_tokenizer(source, padding_side(info))
    task = build_task(cfg, info, dataset, tokenizer)
    seed_everything(0)
    model = loading.load_model(source, info, dataset.label_names, tokenizer, False)
    model = get_method(cfg.method.name).attach(model, cfg.method, info)
    return Loaded(cfg, info, dataset, task, model)
