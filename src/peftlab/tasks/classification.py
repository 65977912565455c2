"""Text classification: inputs, label logits, loss and scores.

Two heads behind one interface:
- LabelWordHead scores the next-token logits of one word per label after a prompt
  ("Review: ...\\nSentiment:" -> " positive" / " negative"). No new weights, so the base
  model is meaningful before training, and training sharpens the same scores.
- LinearHead uses a sequence-classification model's own trained linear layer.
Encoder-decoders score label words through their decoder (decoder_label_words.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peftlab.data.sources import Example
from peftlab.errors import ConfigError
from peftlab.methods.virtual_positions import decoder_forward
from peftlab.tasks.text_formats import PAD_MULTIPLE
from peftlab.training.evaluate import map_batches

# peft warns on every batch when a prompt-learning model is given position ids; peftlab's
# own decoder calls go around peft's forward there (methods/virtual_positions.py), but a caller's
# direct use of peft's forward would still warn per batch.
warnings.filterwarnings("ignore", message="Position ids are not supported")


class LabelWordHead:
    padding_side = "left"  # the scored position is the last one in every row

    def __init__(self, tokenizer, label_words: list[str]):
        self.label_words = label_words
        self.token_ids = first_token_ids(tokenizer, label_words)

    def logits(self, model, batch: dict) -> torch.Tensor:
        with label_word_rows(model, self.token_ids) as only_labels:
            logits = next_token_logits(model, batch["input_ids"], batch["attention_mask"])
        return (logits if only_labels else logits[:, self.token_ids]).float()


class _Rows(nn.Module):
    """An LM head's rows for some tokens: their logits only, gradients to the full head."""

    def __init__(self, head: nn.Linear, token_ids: list[int]):
        super().__init__()
        self.__dict__["head"] = head  # not a submodule: the model's names stay as they are
        self.token_ids = torch.tensor(token_ids, device=head.weight.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = None if self.head.bias is None else self.head.bias[self.token_ids]
        return F.linear(hidden, self.head.weight[self.token_ids], bias)


@contextlib.contextmanager
def label_word_rows(model, token_ids: list[int]) -> Iterator[bool]:
    """Inside: the LM head computes the label words' logits only (yields True), in the
    order given; elementwise steps after it (Gemma's soft cap) apply as before. The full
    head computed 49k logits per row to keep two: on SmolLM2 a vocabulary-sized matmul
    forward and backward, 74 ms of a 1.4-2 s training step (AVX2 EPYC). Yields False,
    changing nothing, where the head is not a plain Linear (a method adapts it)."""
    inner = getattr(model, "module", model)  # under DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        yield False
        return
    inner.set_output_embeddings(_Rows(head, token_ids))
    try:
        yield True
    finally:
        inner.set_output_embeddings(head)


def next_token_logits(model, input_ids, mask, **kwargs) -> torch.Tensor:
    """The LM's logits for the token after each left-padded row; only that position goes
    through the LM head. kwargs reach the model (a server's per-row adapter names)."""
    return decoder_forward(model, input_ids, mask, logits_to_keep=1, **kwargs).logits[:, -1]


def label_probabilities(label_names: list[str], probabilities: torch.Tensor) -> dict:
    """What a prediction reports: the likeliest label and every label's probability."""
    scores = {n: round(float(p), 6) for n, p in zip(label_names, probabilities, strict=True)}
    return {"label": label_names[int(probabilities.argmax())], "probabilities": scores}


class LinearHead:
    """`end_id`: a token every input must end with. Encoder-decoders' classification
    heads (T5, BART) pool the decoder's state at the input's end-of-sequence token and
    refuse a row without one; not every tokenizer appends it."""

    padding_side = "right"

    def __init__(self, end_id: int | None = None):
        self.end_id = end_id

    def finish(self, ids: list[int], max_length: int) -> list[int]:
        if self.end_id is None or (ids and ids[-1] == self.end_id):
            return ids
        return [*ids[: max_length - 1], self.end_id]

    def logits(self, model, batch: dict) -> torch.Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float()


def first_token_ids(tokenizer, label_words: list[str]) -> list[int]:
    """The first token of ' word' for each label word; they must all differ."""
    ids = []
    for word in label_words:
        tokens = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ConfigError("data.label_words", word, "give a word the tokenizer can encode")
        ids.append(tokens[0])
    seen: dict[int, str] = {}
    for word, token in zip(label_words, ids, strict=True):
        if token in seen:
            raise ConfigError(
                "data.label_words",
                label_words,
                f"'{seen[token]}' and '{word}' start with the same token; choose label words "
                "that differ in their first token (--label-words)",
            )
        seen[token] = word
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    label: int


class ClassificationTask:
    name = "classification"
    validation = ("accuracy", True)  # what "best" means during training; higher is better
    validation_keys = ("accuracy", "f1", "loss")

    def __init__(
        self,
        tokenizer,
        head,
        label_names: list[str],
        template: str,
        max_length: int,
        pad_multiple: int = PAD_MULTIPLE,
    ):
        self.tokenizer = tokenizer
        self.pad_multiple = pad_multiple
        self.head = head
        self.label_names = label_names
        self.template = template
        self.max_length = max_length

    def format(self, text: str) -> str:
        return self.template.replace("{text}", text)

    def encode(self, examples: list[Example]) -> list[Encoded]:
        prompts = [self.format(ex.text) for ex in examples]
        ids = self.tokenizer(prompts, truncation=True, max_length=self.max_length)["input_ids"]
        if hasattr(self.head, "finish"):
            ids = [self.head.finish(i, self.max_length) for i in ids]
        return [Encoded(i, ex.label) for i, ex in zip(ids, examples, strict=True)]

    def collate(self, items: list[Encoded]) -> dict:
        batch = self.tokenizer.pad(
            {"input_ids": [it.input_ids for it in items]},
            return_tensors="pt",
            pad_to_multiple_of=self.pad_multiple,
        )
        batch["labels"] = torch.tensor([it.label for it in items])
        return dict(batch)

    def logits(self, model, batch: dict) -> torch.Tensor:
        return self.head.logits(model, batch)

    def input_items(self, texts: list[str]) -> list[Encoded]:
        """New inputs to predict on, formatted as in training."""
        return self.encode([Example(text, 0) for text in texts])

    def units(self, item: Encoded) -> int:
        return 1  # the loss is a mean over examples

    def loss(self, model, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def measure(self, model, items, batch_size, device, desc, generate=True, logits_fn=None):
        """`logits_fn`: a function of the batch that computes self.logits(model, batch)
        another way (compiled: training/compiled.py)."""
        compute = logits_fn or (lambda batch: self.logits(model, batch))

        def logits_of(chunk: list[Encoded]) -> list[torch.Tensor]:
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            return list(compute(batch).cpu())

        lengths = [len(it.input_ids) for it in items]
        logits = torch.stack(map_batches(items, lengths, batch_size, logits_of, desc))
        return self.score(logits, torch.tensor([it.label for it in items]))

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        loss = F.cross_entropy(logits, labels).item()
        preds = logits.argmax(-1).numpy()
        gold = labels.numpy()
        return {
            "accuracy": float((preds == gold).mean()),
            "f1": macro_f1(preds, gold, len(self.label_names)),
            "loss": loss,
            "per_example": (preds == gold).astype(float).tolist(),  # paired tests, CIs
        }


def macro_f1(preds: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    scores = []
    for label in range(num_labels):
        tp = np.sum((preds == label) & (gold == label))
        fp = np.sum((preds == label) & (gold != label))
        fn = np.sum((preds != label) & (gold == label))
        if tp + fp + fn == 0:
            continue  # a label absent from both predictions and gold: no evidence either way
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
