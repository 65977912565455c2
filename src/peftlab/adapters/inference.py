"""A saved adapter on its base model, ready to answer: load once, predict in batches.

Rebuilt from the adapter's manifest alone (the resolved run config, labels, template,
tokenizer settings), so a prediction sees the input exactly as training and evaluation
did. `use_adapter=False` gives the bare base model with the same task, for comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from peftlab.adapters.artifact import NATIVE_WEIGHTS
from peftlab.adapters.package import AdapterPackage, check_base
from peftlab.adapters.peft_folders import check_fits
from peftlab.config import MethodArgs
from peftlab.data import assets
from peftlab.data.sources import read_table
from peftlab.errors import DataError, PeftlabError
from peftlab.failure import first_line
from peftlab.methods.common import Method
from peftlab.methods.registry import get_method
from peftlab.methods.switching import merge_method
from peftlab.models import loading
from peftlab.models.loading import ModelInfo
from peftlab.tasks.classification import label_probabilities
from peftlab.tasks.generation import GenerationTask, texts
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.training.compiled import compiled_logits
from peftlab.training.evaluate import map_batches
from peftlab.training.precision import autocast
from peftlab.training.trainable import load_trainable_state


class Predictor:
    def __init__(
        self,
        package: AdapterPackage,
        base: str | None = None,
        use_adapter: bool = True,
        allow_pickle: bool = False,
        device: torch.device | None = None,
        merged: bool = False,
        compile: bool = False,
    ):
        self.package = package
        cfg = package.config
        if base:
            cfg.model.name = base
        self.source = assets.resolve_model(cfg.model.name)
        check_base(package, self.source)
        self.info = model_info(self.source, cfg)
        self.method = get_method(cfg.method.name)
        self.use_adapter = use_adapter
        self.label_names = package.manifest.get("label_names") or []
        self.tokenizer = loading.load_tokenizer(self.source, padding_side(self.info))
        self.task = build_task(cfg, self.info, package.task_data(), self.tokenizer)
        extra = self.method.load_kwargs(cfg) if self.method.load_kwargs else None
        model = loading.load_model(
            self.source, self.info, self.label_names, self.tokenizer, allow_pickle, extra
        )
        if use_adapter:
            model = reload_artifact(self.method, package.folder, model, cfg.method, self.info)
        if not extra:  # a quantized base is placed by its loader
            model.to(device or loading.default_device())
        self.merged = use_adapter and merged and not self.method.merge
        if self.merged:
            # The method folded into the weights: the same function without the adapter's
            # own matmuls on every layer (merge tests hold it to the unmerged outputs).
            model = merge_method(model, self.method)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        # The run's own (resolved) precision: predictions reproduce its evaluation.
        self.precision = cfg.train.precision
        # Compiled logits (training/compiled.py), opt-in (`predict --compile-inference`):
        # a merged MiniLM, 1,000 texts, 1.09x on an AMX Xeon once loading took
        # milliseconds (0.93x on an AVX2 EPYC before that); bench/compiled_inference.py.
        self.compile = compile

    @property
    def name(self) -> str:
        return str(self.package.folder) if self.use_adapter else self.source.name

    @torch.inference_mode()
    def predict(self, inputs: list[str], batch_size: int = 16) -> list[dict]:
        """One result per input: {"label", "probabilities"} or {"generation"}."""
        with autocast(self.precision, self.device):
            return self._predict(inputs, batch_size)

    def _predict(self, inputs: list[str], batch_size: int) -> list[dict]:
        items = self.task.input_items(inputs)
        if isinstance(self.task, GenerationTask):
            tokens = self.task.generate(self.model, items, batch_size, "predict")
            return [{"generation": text} for text in texts(self.tokenizer, tokens)]

        compiled = None
        if self.compile:
            compiled = compiled_logits(
                self.model, self.task, len(items), self.precision, self.device, log=_note
            )
        logits = compiled or (lambda batch: self.task.logits(self.model, batch))

        def probabilities(chunk):
            batch = {k: v.to(self.device) for k, v in self.task.collate(chunk).items()}
            return list(logits(batch).float().softmax(-1).cpu())

        lengths = [len(it.input_ids) for it in items]
        probs = map_batches(items, lengths, batch_size, probabilities, "predict")
        return [label_probabilities(self.label_names, p) for p in probs]


def read_inputs(path: Path, column: str) -> list[str]:
    """Texts to predict on: one per line of a .txt file, or a column of a table."""
    if not path.is_file():
        raise DataError(f"input file '{path}' does not exist")
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.strip()]
    frame = read_table(path)
    if column not in frame.columns:
        raise DataError(
            f"input file '{path}' has no column '{column}'; it has "
            f"{list(map(str, frame.columns))}. Choose one with --text-column"
        )
    return [str(v) for v in frame[column]]


def reload_artifact(method: Method, folder: Path, base, args: MethodArgs, info: ModelInfo):
    """Rebuild a trained model from a saved artifact on a freshly loaded base."""
    from safetensors.torch import load_file

    if method.kind == "peft":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(base, folder)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise PeftlabError(
                f"peft cannot load the adapter in '{folder}' ({type(exc).__name__}: "
                f"{first_line(exc)}); its adapter_config.json or weights do not fit this "
                "base model"
            ) from None
        check_fits(model, Path(folder))
        return model
    if method.kind == "full":
        return type(base).from_pretrained(folder)
    model = method.attach(base, args, info)
    load_trainable_state(model, load_file(folder / NATIVE_WEIGHTS), str(folder / NATIVE_WEIGHTS))
    return model


def _note(message: str) -> None:
    """Compiling's notes go to stderr: stdout may be the predictions themselves."""
    print(message, file=sys.stderr, flush=True)
