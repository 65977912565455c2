"""A tiny model of each architecture with a method attached: what the contract suite and
the README's architecture x method table are built from."""

from __future__ import annotations

import copy
import functools

import torch

from peftlab.config import RunConfig
from peftlab.data import assets, sources
from peftlab.methods.registry import METHODS
from peftlab.models import loading
from peftlab.runner.checks import checked
from peftlab.runner.pipeline import seed_everything
from peftlab.tasks.setup import build_task, model_info, padding_side

# (architecture, task, head): classification for every family (encoder-decoders with
# label words through the decoder, the default, and with a linear head), summarization
# for encoder-decoders and decoders. GPT-2 and DistilBERT are the tutorials' models.
CASES = [
    ("gpt2", "classification", "auto"),
    ("gpt2", "summarization", "auto"),
    ("llama", "classification", "auto"),
    ("gemma", "classification", "auto"),
    ("gemma", "summarization", "auto"),
    ("distilbert", "classification", "auto"),
    ("bert", "classification", "auto"),
    ("roberta", "classification", "auto"),
    ("t5", "classification", "auto"),
    ("t5", "classification", "linear"),
    ("t5", "summarization", "auto"),
    ("bart", "classification", "auto"),
    ("bart", "classification", "linear"),
    ("bart", "summarization", "auto"),
]


def case_id(arch: str, task: str, head: str) -> str:
    return f"{arch}-{task}" + ("" if head == "auto" else f"-{head}")


NAMES = {
    "gpt2": "GPT-2",
    "llama": "Llama",
    "gemma": "Gemma",
    "distilbert": "DistilBERT",
    "bert": "BERT",
    "roberta": "RoBERTa",
    "t5": "T5",
    "bart": "BART",
}


# Bases as loaded, by (model, ModelInfo, labels, seed): fresh_base hands out copies.
_LOADED: dict[tuple, object] = {}


class Built:
    """A tiny model with a method attached, its task, and a batch to compare outputs on."""

    def __init__(
        self, model_dir, data_file, method_name, task="classification", head="auto", **method_args
    ):
        cfg = RunConfig()
        cfg.model.name = str(model_dir)
        cfg.model.head = head
        cfg.data.name = str(data_file)
        cfg.task.name = task
        cfg.model.max_length = 64  # the tiny texts are short; fits every position table
        if task == "classification":
            cfg.data.template = "review: {text} sentiment:"
        cfg.method.name = method_name
        cfg.method.num_virtual_tokens = 4
        cfg.method.prompt_init_text = "review sentiment"
        for key, value in method_args.items():
            setattr(cfg.method, key, value)
        self.cfg = checked(cfg)
        self.method = METHODS[method_name]
        self.source = assets.resolve_model(cfg.model.name)
        self.info = model_info(self.source, cfg)
        self.dataset = sources.load(cfg.data, task)
        self.tokenizer = loading.load_tokenizer(self.source, padding_side(self.info))
        self.task = build_task(cfg, self.info, self.dataset, self.tokenizer)
        self.model = self.method.attach(self.fresh_base(), cfg.method, self.info)
        rows = self.dataset.splits["test"][:8]
        self.batch = self.task.collate(self.task.encode(rows))

    @functools.cached_property
    def base(self):
        """The bare base model, loaded when a clause first compares with it (the README's
        support table only attaches, and loading is most of a tiny build's time)."""
        return self.fresh_base()

    def fresh_base(self, seed: int = 0):
        """A copy of the base as loaded with `seed` (a new linear head is drawn from it).

        Loaded once per process and copied after: from_pretrained is most of a tiny
        build's time and the contract suite builds over 500. Quantized bases are loaded
        each time (bitsandbytes' packed weights are not copied). Seeded again after, so
        what follows draws the same numbers whether the copy came from the cache or not.
        """
        extra = self.method.load_kwargs(self.cfg) if self.method.load_kwargs else None
        if extra:
            model = self.load_base(seed, extra)
        else:
            key = (self.cfg.model.name, self.info, tuple(self.dataset.label_names), seed)
            if key not in _LOADED:
                _LOADED[key] = self.load_base(seed)
            model = copy.deepcopy(_LOADED[key])
        seed_everything(seed)
        return model

    def load_base(self, seed: int, extra: dict | None = None):
        seed_everything(seed)  # a new linear head is drawn from the seed
        return loading.load_model(
            self.source, self.info, self.dataset.label_names, self.tokenizer, False, extra
        )

    def logits(self, model):
        """Classification: label logits; generation: each row's summed target loss."""
        model.eval()
        with torch.no_grad():
            if hasattr(self.task, "logits"):
                return self.task.logits(model, self.batch)
            return self.task.layout.token_losses(model, self.batch)[0]

    def train_steps(self, steps=3):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=5e-2)
        self.model.train()
        for _ in range(steps):
            loss = self.task.loss(self.model, self.batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        self.model.eval()
