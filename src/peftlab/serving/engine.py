"""One base model in memory with any number of task adapters resident on it.

Requests for different adapters share one forward pass: peft's mixed-adapter batches
(`adapter_names=[...]`, one name per row, "__base__" for the bare base model) for LoRA;
methods peft cannot mix are run one adapter group at a time, still batched: DoRA and
IA3 (each tuner type in its own PeftModel over the same weights, families.py) and the
prompt-style methods (their virtual tokens before the input, prompts.py). Generation on
decoders is continuous (decoding.py); classification is one pass. Only the batcher's
worker thread calls into an Engine, so adapters never change while a batch is running.
"""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass

import torch

from peftlab.adapters.package import AdapterPackage, check_base, open_package
from peftlab.adapters.peft_folders import check_fits, read_peft_config
from peftlab.data import assets
from peftlab.errors import AdapterError, PeftlabError
from peftlab.methods.registry import METHODS
from peftlab.methods.virtual_positions import left_positions
from peftlab.models import loading
from peftlab.serving.families import Families
from peftlab.serving.prompts import VirtualTokens, load_virtual_tokens
from peftlab.tasks.classification import ClassificationTask, label_probabilities
from peftlab.tasks.generation import GenerationTask
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.tasks.text_formats import cut_at_eos, generate_tokens, pad
from peftlab.training.precision import autocast
from peftlab.training.precision import resolve as resolve_precision

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PAD_SLACK = 1.25  # a forward pass may hold at most this many token slots per real token
MIXABLE = {"LORA"}  # peft types whose layers take adapter_names (not with DoRA)
PROMPT_METHODS = ("prompt", "ptuning", "prefix")


def layer_methods() -> list[str]:
    """The methods served as peft layers on the shared base: every peft method but the
    prompt-style ones and those that need their own quantized base (QLoRA)."""
    return [
        name
        for name, method in METHODS.items()
        if method.kind == "peft" and name not in PROMPT_METHODS and method.load_kwargs is None
    ]


def served_methods() -> list[str]:
    """Every method whose adapters one server loads: the layer methods, then the prompts."""
    return [*layer_methods(), *PROMPT_METHODS]


def not_servable(folder: str, method_name: str) -> str:
    """Why an adapter of `method_name` is not served, and what to do with it instead."""
    method = METHODS.get(method_name)
    instead = "use `peftlab predict` with it"
    if method is not None and method.kind != "full" and not method.merge:
        instead += ", or `peftlab merge` it into a model of its own"
    served = ", ".join(served_methods())
    return (
        f"'{folder}' was trained with --method {method_name}, which peftlab serve does not "
        f"load: it loads {served} adapters onto one unquantized base; {instead}"
    )


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
    family: str  # the PeftModel it lives in ("lora", "ia3"), or "prompt"
    virtual: VirtualTokens | None = None  # a prompt-style adapter's virtual tokens

    @property
    def kind(self) -> str:
        return "classification" if isinstance(self.task, ClassificationTask) else "generation"


def tuner_type(package: AdapterPackage) -> str:
    """The peft tuner type an adapter loads as ("lora" for DoRA too: a LoRA variant)."""
    return str(read_peft_config(package.folder).get("peft_type", "LORA")).lower()


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
        # Linear-head classifiers each bring their own head (peft's modules_to_save,
        # switched per row like LoRA): the base is built with heads of their size.
        linear = self.info.head == "linear"
        self.labels = (first.manifest.get("label_names") or []) if linear else []
        self.tokenizer = loading.load_tokenizer(self.source, padding_side(self.info))
        self.counter = copy.deepcopy(self.tokenizer)
        self.count_lock = threading.Lock()
        self.base = loading.load_model(
            self.source, self.info, self.labels, self.tokenizer, allow_pickle, None
        ).to(loading.default_device())
        self.base.eval()
        self.families = Families(self.base)
        self.slots: dict[str, Slot] = {}
        for name, folder in adapters.items():
            self.load(name, folder)

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # ------------------------------------------------------------ adapters

    def load(self, name: str, folder: str) -> Slot:
        check_name(name)
        if name in self.slots:
            raise ServeError(f"an adapter named '{name}' is already loaded; unload it first", 409)
        package = open_package(folder, self.allow_pickle, self.base_name)
        cfg = package.config
        if cfg.method.name not in served_methods():
            raise ServeError(not_servable(folder, cfg.method.name))
        check_base(package, self.source)
        cfg.model.name = self.base_name
        info = model_info(self.source, cfg)
        self.check_head(folder, package, info)
        task = build_task(cfg, info, package.task_data(), self.tokenizer)
        if cfg.method.name in PROMPT_METHODS:
            slot = self.prompt_slot(name, package, task)
        else:
            slot = self.layer_slot(name, package, task)
        self.slots[name] = slot
        return slot

    def check_head(self, folder: str, package: AdapterPackage, info) -> None:
        linear = info.head == "linear"  # label words and generation share the LM head
        if linear != (self.info.head == "linear") or info.kind != self.info.kind:
            raise ServeError(
                f"'{folder}' needs a different model head ({info.head}) than this server's "
                f"adapters ({self.info.head}); serve it from a second server"
            )
        labels = package.manifest.get("label_names") or []
        if linear and len(labels) != len(self.labels):
            raise ServeError(
                f"'{folder}' has a linear head for {len(labels)} labels and this server's "
                f"adapters have {len(self.labels)}; serve it from a second server",
                409,
            )

    def layer_slot(self, name: str, package: AdapterPackage, task) -> Slot:
        """A layer method (LoRA, IA3, LoHa, ...) in its tuner type's PeftModel, fit-checked."""
        family = tuner_type(package)
        model = self.families.load(family, str(package.folder), name)
        try:
            check_fits(model, package.folder, name)
        except AdapterError:
            self.families.unload(family, name)
            raise
        model.eval()
        peft_config = model.peft_config[name]
        mixable = peft_config.peft_type.name in MIXABLE and not getattr(
            peft_config, "use_dora", False
        )
        return Slot(name, package, task, mixable, family)

    def prompt_slot(self, name: str, package: AdapterPackage, task) -> Slot:
        """Prompt, P- or prefix tuning: its saved virtual tokens, run on the bare base."""
        if self.info.kind != "causal_lm":
            raise ServeError(
                f"'{package.folder}' is a {package.config.method.name} adapter: peftlab serve "
                "runs prompt-style adapters on decoder LMs (use predict on this model)"
            )
        return Slot(
            name, package, task, False, "prompt", load_virtual_tokens(package.folder, self.base)
        )

    def unload(self, name: str) -> None:
        if name not in self.slots:
            raise ServeError(f"no adapter named '{name}' is loaded", 404)
        if len(self.slots) == 1:
            raise ServeError("cannot unload the last adapter; load another one first", 409)
        slot = self.slots.pop(name)
        if slot.family != "prompt":
            self.families.unload(slot.family, name)

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
        if kind == "generate" and slot is None and self.info.head == "linear":
            raise ServeError(
                f"model '{name}' is an encoder with a classification head and does not "
                f"generate text; ask one of its adapters ({list(self.slots)})"
            )
        if kind == "classify" and (slot is None or slot.kind != "classification"):
            raise ServeError(
                f"model '{name}' does not classify; /v1/classify takes a classification "
                f"adapter ({[s.name for s in self.slots.values() if s.kind == 'classification']})"
            )

    def describe(self) -> list[dict]:
        task = "classification heads" if self.info.head == "linear" else "causal generation"
        rows = [{"id": self.base_name, "kind": "base", "task": task}]
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
        by_lane: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            by_lane.setdefault(self.lane_of(name), []).append(i)
        groups = []
        for rows in by_lane.values():
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

    def model_for(self, names: list[str]):
        """(model, forward kwargs) for one group from groups(): the bare base (for base
        rows, and for prompt-style rows once prefill put their virtual tokens in the
        cache), one active adapter, or a LoRA batch with one adapter name per row."""
        peft_names = [BASE if n == self.base_name else n for n in names]
        adapters = set(peft_names) - {BASE}
        if not adapters or self.slots[next(iter(adapters))].virtual is not None:
            return self.base, {}
        model = self.families.models[self.slots[next(iter(adapters))].family]
        if len(set(peft_names)) == 1:
            model.set_adapter(peft_names[0])
            return model, {}
        return model, {"adapter_names": peft_names}

    def forward(self, names: list[str], use_cache: bool, **inputs):
        """The last position's logits and the cache of one group's forward pass."""
        model, kwargs = self.model_for(names)
        with torch.inference_mode(), autocast(self.precision, self.device):
            out = model(**inputs, **kwargs, use_cache=use_cache, logits_to_keep=1)
        return out.logits[:, -1].float(), out.past_key_values

    def prefill(self, names: list[str], prompts: list[list[int]], use_cache: bool = True):
        """One group's first pass over left-padded prompts: (last logits, cache, mask),
        the mask covering the cache (a prompt-style adapter's virtual tokens included)."""
        ids = pad(prompts, self.tokenizer.pad_token_id, "left").to(self.device)
        mask = pad([[1] * len(p) for p in prompts], 0, "left").to(self.device)
        slot = self.slot(names[0])
        if slot is not None and slot.virtual is not None:
            inputs = slot.virtual.inputs(self.base, ids, mask)
        else:
            inputs = {
                "input_ids": ids,
                "attention_mask": mask,
                "position_ids": left_positions(mask),
            }
        logits, cache = self.forward(names, use_cache, **inputs)
        return logits, cache, inputs["attention_mask"].cpu()

    @torch.inference_mode()
    def classify(self, names: list[str], inputs: list[str]) -> list[dict]:
        results: list[dict] = [{}] * len(inputs)
        encoded = [
            self.slots[name].task.input_items([text])[0].input_ids
            for name, text in zip(names, inputs, strict=True)
        ]
        for rows in self.groups(names, [len(x) for x in encoded]):
            slots = [self.slots[names[i]] for i in rows]
            group = [names[i] for i in rows]
            if self.info.head == "linear":
                scores = self.head_logits(group, [encoded[i] for i in rows])
            elif self.info.kind == "seq2seq":
                scores = self.decoder_word_scores(group, [encoded[i] for i in rows])
            else:
                scores = self.prefill(group, [encoded[i] for i in rows], False)[0]
            for row, (slot, i) in enumerate(zip(slots, rows, strict=True)):
                head = getattr(slot.task.head, "token_ids", slice(None))  # label words
                probs = scores[row][head].softmax(-1)
                results[i] = label_probabilities(slot.task.label_names, probs)
        return results

    def head_logits(self, names: list[str], ids: list[list[int]]) -> torch.Tensor:
        """Linear heads: each row through its adapter's own head, right-padded as trained."""
        model, kwargs = self.model_for(names)
        with torch.inference_mode(), autocast(self.precision, self.device):
            return model(**self.right_padded(ids), **kwargs).logits.float()

    def right_padded(self, ids: list[list[int]]) -> dict:
        """input_ids and attention_mask, right-padded (how classifiers' inputs trained)."""
        return {
            "input_ids": pad(ids, self.tokenizer.pad_token_id, "right").to(self.device),
            "attention_mask": pad([[1] * len(x) for x in ids], 0, "right").to(self.device),
        }

    def decoder_word_scores(self, names: list[str], ids: list[list[int]]) -> list[torch.Tensor]:
        """Label words through an encoder-decoder's decoder: each adapter's rows scored
        with its own words (tasks/decoder_label_words.py)."""
        scores: list = [None] * len(names)
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            slot = self.slots[name]
            if slot.virtual is not None:
                raise ServeError(f"'{name}' is prompt-style: served on decoder LMs only")
            batch = self.right_padded([ids[i] for i in rows])
            model, kwargs = self.model_for([name])
            with torch.inference_mode(), autocast(self.precision, self.device):
                logits = slot.task.head.logits(model, batch, **kwargs)
            for row, i in enumerate(rows):
                scores[i] = logits[row]
        return scores

    @torch.inference_mode()
    def generate(self, names: list[str], inputs: list[str], max_tokens: list[int]) -> list[dict]:
        results: list[dict] = [{}] * len(inputs)
        eos = {self.tokenizer.eos_token_id} - {None}
        all_prompts = [self.prompt_ids(n, text) for n, text in zip(names, inputs, strict=True)]
        for rows in self.groups(names, [len(p) for p in all_prompts]):
            prompts = [all_prompts[i] for i in rows]
            model, kwargs = self.model_for([names[i] for i in rows])
            if model is self.base and names[rows[0]] != self.base_name:
                raise ServeError("prompt-style adapters generate with continuous batching only")
            with autocast(self.precision, self.device):
                out = generate_tokens(
                    model,
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
