"""One base model in memory with any number of task adapters resident on it.

Requests for different adapters share one forward pass: peft's mixed-adapter batches
(`adapter_names=[...]`, one name per row, "__base__" for the bare base model) for LoRA;
methods peft cannot mix (DoRA, IA3) are run one adapter group at a time, still batched.
Generation on decoders is continuous (decoding.py); classification is one pass. Only the
batcher's worker thread calls into an Engine, so adapters never change while a batch is
running.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
from dataclasses import dataclass

import torch

from peftlab import assets, models
from peftlab.errors import AdapterError, PeftlabError
from peftlab.package import AdapterPackage, check_base, open_package
from peftlab.peft_folders import check_fits
from peftlab.precision import autocast
from peftlab.precision import resolve as resolve_precision
from peftlab.tasks.classification import (
    ClassificationTask,
    label_probabilities,
    next_token_logits,
)
from peftlab.tasks.generation import GenerationTask
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.tasks.text_formats import cut_at_eos, generate_tokens, pad

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PAD_SLACK = 1.25  # a forward pass may hold at most this many token slots per real token
MIXABLE = {"LORA"}  # peft types whose layers take adapter_names (not with DoRA)


class ServeError(PeftlabError):
    """A request or admin action that cannot be served; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Slot:
    name: str
    package: AdapterPackage
    task: ClassificationTask | GenerationTask
    mixable: bool

    @property
    def kind(self) -> str:
        return "classification" if isinstance(self.task, ClassificationTask) else "generation"


def tuner_type(package: AdapterPackage) -> str:
    """The peft tuner an adapter loads as: DoRA is a LoRA variant."""
    return "ia3" if package.config.method.name == "ia3" else "lora"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name) or name == BASE:
        raise ServeError(
            f"adapter name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return name


class Engine:
    def __init__(
        self,
        adapters: dict[str, str],
        base: str | None = None,
        allow_pickle=False,
        mix=True,
        precision: str = "auto",
    ):
        if not adapters:
            raise PeftlabError("give at least one --adapter NAME=DIR")
        self.allow_pickle = allow_pickle
        self.mix = mix  # False: one adapter per forward pass (the benchmark's comparison)
        self.precision = resolve_precision(precision)
        first = open_package(next(iter(adapters.values())), allow_pickle, base)
        cfg = first.config
        self.base_name = base or cfg.model.name
        cfg.model.name = self.base_name
        self.source = assets.resolve_model(self.base_name)
        self.info = model_info(self.source, cfg)
        if self.info.head == "linear":
            raise PeftlabError(
                "peftlab serve shares one model head between adapters: serve adapters that "
                "score label words or generate (a linear head is a separate layer per adapter)"
            )
        self.tokenizer = models.load_tokenizer(self.source, padding_side(self.info))
        self.counter = copy.deepcopy(self.tokenizer)
        self.count_lock = threading.Lock()
        self.model = models.load_model(
            self.source, self.info, [], self.tokenizer, allow_pickle, None
        ).to(models.default_device())
        self.model.eval()
        self.slots: dict[str, Slot] = {}
        for name, folder in adapters.items():
            self.load(name, folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------ adapters

    def load(self, name: str, folder: str) -> Slot:
        from peft import PeftModel

        check_name(name)
        if name in self.slots:
            raise ServeError(f"an adapter named '{name}' is already loaded; unload it first", 409)
        package = open_package(folder, self.allow_pickle, self.base_name)
        cfg = package.config
        if cfg.method.name not in ("lora", "dora", "ia3"):
            raise ServeError(
                f"'{folder}' is a {cfg.method.name} adapter; peftlab serve loads lora, dora and "
                "ia3 adapters onto one unquantized base (merge or predict the others)"
            )
        check_base(package, self.source)
        cfg.model.name = self.base_name
        info = model_info(self.source, cfg)
        if info.head == "linear" or info.kind != self.info.kind:
            raise ServeError(f"'{folder}' needs a different model head ({info.head})")
        task = build_task(cfg, info, package.task_data(), self.tokenizer)
        if isinstance(self.model, PeftModel):
            self.check_same_peft_type(name, package)
            self.model.load_adapter(str(package.folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(package.folder), adapter_name=name
            )
        try:
            check_fits(self.model, package.folder, name)
        except AdapterError:
            if self.slots:  # leave the served ones as they were
                self.model.delete_adapter(name)
            raise
        self.model.eval()
        peft_config = self.model.peft_config[name]
        mixable = peft_config.peft_type.name in MIXABLE and not getattr(
            peft_config, "use_dora", False
        )
        slot = self.slots[name] = Slot(name, package, task, mixable)
        return slot

    def check_same_peft_type(self, name: str, package: AdapterPackage) -> None:
        """peft keeps one tuner type per model: LoRA and DoRA adapters share a base, IA3
        adapters share another."""
        for other in self.slots.values():
            if tuner_type(other.package) != tuner_type(package):
                raise ServeError(
                    f"adapter '{name}' is {package.config.method.name} and '{other.name}' is "
                    f"{other.package.config.method.name}: one server holds LoRA/DoRA adapters "
                    "or IA3 adapters, not both yet; serve the others from a second server",
                    409,
                )

    def unload(self, name: str) -> None:
        if name not in self.slots:
            raise ServeError(f"no adapter named '{name}' is loaded", 404)
        if len(self.slots) == 1:
            raise ServeError("cannot unload the last adapter; load another one first", 409)
        self.model.delete_adapter(name)
        del self.slots[name]

    def slot(self, name: str) -> Slot | None:
        """The adapter serving `name`; None for the base model itself."""
        if name == self.base_name:
            return None
        if name not in self.slots:
            known = [self.base_name, *self.slots]
            raise ServeError(f"model '{name}' is not served here; known: {known}", 404)
        return self.slots[name]

    def check(self, name: str, kind: str) -> None:
        """Raise the request's error if `name` cannot do `kind` ("classify"/"generate")."""
        slot = self.slot(name)
        if kind == "classify" and (slot is None or slot.kind != "classification"):
            raise ServeError(
                f"model '{name}' does not classify; /v1/classify takes a classification "
                f"adapter ({[s.name for s in self.slots.values() if s.kind == 'classification']})"
            )

    def describe(self) -> list[dict]:
        rows = [{"id": self.base_name, "kind": "base", "task": "causal generation"}]
        for slot in self.slots.values():
            manifest = slot.package.manifest
            rows.append(
                {
                    "id": slot.name,
                    "kind": "adapter",
                    "task": manifest["task"],
                    "method": manifest["method"],
                    "labels": manifest.get("label_names") or None,
                    "path": str(slot.package.folder),
                }
            )
        return rows

    # ------------------------------------------------------------ batched work

    def groups(self, names: list[str], lengths: list[int]) -> list[list[int]]:
        """Row indices that share one forward pass.

        Mixable adapters may share a pass whatever their names, so rows are grouped by
        length instead: on a CPU, padding costs as much as real tokens, and a review
        padded to an article's length wastes most of its pass. Each group holds at most
        PAD_SLACK times as many token slots as real tokens.
        """
        if self.mix and all(n == self.base_name or self.slots[n].mixable for n in names):
            candidates = [list(range(len(names)))]
        else:
            by_name: dict[str, list[int]] = {}
            for i, name in enumerate(names):
                by_name.setdefault(name, []).append(i)
            candidates = list(by_name.values())
        groups = []
        for rows in candidates:
            group: list[int] = []
            real = 0
            for i in sorted(rows, key=lambda i: lengths[i]):  # shortest first
                if group and lengths[i] * (len(group) + 1) > PAD_SLACK * (real + lengths[i]):
                    groups.append(group)
                    group, real = [], 0
                group.append(i)
                real += lengths[i]
            groups.append(group)
        return groups

    @property
    def continuous(self) -> bool:
        """Generation joins a running batch per step (decoders); encoder-decoders
        generate whole requests."""
        return self.info.kind != "seq2seq"

    def lane_of(self, name: str) -> str:
        """The running batch a sequence for `name` decodes in (decoding.Decoder): one for
        everything that mixes in a forward pass, one per adapter that cannot."""
        if name == self.base_name or (self.mix and self.slots[name].mixable):
            return "mixed"
        return name

    def adapter_context(self, names: list[str]):
        """(context, forward kwargs) for one group from groups(): the bare base, one active
        adapter, or a mixed batch with one adapter name per row."""
        peft_names = [BASE if n == self.base_name else n for n in names]
        unique = set(peft_names)
        if unique == {BASE}:
            return self.model.disable_adapter(), {}
        if len(unique) == 1:
            self.model.set_adapter(peft_names[0])
            return contextlib.nullcontext(), {}
        return contextlib.nullcontext(), {"adapter_names": peft_names}

    @torch.inference_mode()
    def classify(self, names: list[str], inputs: list[str]) -> list[dict]:
        results: list[dict] = [{}] * len(inputs)
        encoded = [
            self.slots[name].task.input_items([text])[0].input_ids
            for name, text in zip(names, inputs, strict=True)
        ]
        for rows in self.groups(names, [len(x) for x in encoded]):
            slots = [self.slots[names[i]] for i in rows]
            ids = [encoded[i] for i in rows]
            input_ids = pad(ids, self.tokenizer.pad_token_id, "left").to(self.device)
            mask = pad([[1] * len(x) for x in ids], 0, "left").to(self.device)
            context, kwargs = self.adapter_context([names[i] for i in rows])
            with context, autocast(self.precision, self.device):
                last = next_token_logits(self.model, input_ids, mask, **kwargs).float().cpu()
            for row, (slot, i) in enumerate(zip(slots, rows, strict=True)):
                probs = last[row, slot.task.head.token_ids].softmax(-1)
                results[i] = label_probabilities(slot.task.label_names, probs)
        return results

    @torch.inference_mode()
    def generate(self, names: list[str], inputs: list[str], max_tokens: list[int]) -> list[dict]:
        results: list[dict] = [{}] * len(inputs)
        eos = {self.tokenizer.eos_token_id} - {None}
        all_prompts = [self.prompt_ids(n, text) for n, text in zip(names, inputs, strict=True)]
        for rows in self.groups(names, [len(p) for p in all_prompts]):
            prompts = [all_prompts[i] for i in rows]
            context, kwargs = self.adapter_context([names[i] for i in rows])
            with context, autocast(self.precision, self.device):
                out = generate_tokens(
                    self.model,
                    prompts,
                    self.tokenizer.pad_token_id,
                    self.info.kind != "seq2seq",
                    max_new_tokens=max(max_tokens[i] for i in rows),
                    **kwargs,
                )
            for row, i in enumerate(rows):
                new = out[row][: max_tokens[i]]
                tokens = cut_at_eos(new, eos, self.tokenizer.pad_token_id)
                stopped = len(tokens) < len(new) or len(new) < max_tokens[i]
                results[i] = {
                    "text": self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "prompt_tokens": len(prompts[row]),
                    "completion_tokens": len(tokens),
                    "finish_reason": "stop" if stopped else "length",
                }
        return results

    def prompt_ids(self, name: str, text: str) -> list[int]:
        slot = self.slot(name)
        if slot is None or isinstance(slot.task, ClassificationTask):
            # The base model continues the text as given; a classification adapter
            # asked for a completion answers with its label (see Server.complete).
            return self.tokenizer(text)["input_ids"]
        item = slot.task.prompt_item(text)
        return item.input_ids[: item.prompt_len]

    def count_tokens(self, text: str) -> int:
        """Called from HTTP threads. A fast tokenizer keeps its truncation settings as
        state, so sharing the worker's would let a count switch off the worker's
        truncation mid-encode: counting uses its own copy, one thread at a time."""
        with self.count_lock:
            return len(self.counter(text, add_special_tokens=False)["input_ids"])
