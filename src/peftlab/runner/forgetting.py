"""Forgetting: how far tuning moved the model away from the base on general text that is
not the task's.

- Causal LMs: the change in language-model loss (and perplexity) on the text, base vs
  tuned, as peft's method comparison reports it.
- Other models (encoders, decoders with a linear head): the drift of their text
  representations, 1 - mean cosine similarity of mean-pooled last hidden states.

The built-in sample is the other built-in corpus, out of the task's domain: BBC News
article bodies (broad news prose) for every task except those on bbc_news, which get
Rotten Tomatoes critic snippets. The base model is measured on the same texts, so the
figure is what the tuning changed. `--forgetting-data FILE` picks other text.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random

import torch

from peftlab.data import sources
from peftlab.data.assets import BUILTIN_DATASETS
from peftlab.methods.switching import base_model
from peftlab.training import threads
from peftlab.training.precision import autocast

SAMPLE_SEED = 0
BATCH = 8  # texts per forward pass


def general_texts(dataset_name: str, source: str | None, count: int) -> list[str]:
    """`count` texts of general English, the same ones for every run of a task."""
    name = source or ("rotten_tomatoes" if dataset_name == "bbc_news" else "bbc_news")
    if name in BUILTIN_DATASETS:  # read once a process: they cannot change under it
        return list(builtin_texts(name)[:count])
    return texts_of(name)[:count]


@functools.cache
def builtin_texts(name: str) -> tuple[str, ...]:
    return tuple(texts_of(name))


def texts_of(name: str) -> list[str]:
    """Every non-empty text of a dataset, in the probe's fixed shuffled order."""
    from peftlab.errors import DataError

    frames = list(sources.load_source(name).frames.values())
    if not all("text" in frame.columns for frame in frames):
        raise DataError(f"data.forgetting_data '{name}' needs a 'text' column")
    texts = [str(t) for frame in frames for t in frame["text"] if str(t).strip()]
    random.Random(SAMPLE_SEED).shuffle(texts)
    return texts


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    return [ids for ids in encoded if len(ids) > 1]


def uses_lm_loss(info) -> bool:
    return info.head in ("label_words", "lm") and info.kind == "causal_lm"


def scores(model, encoded: list[list[int]], info, precision: str, base: bool) -> torch.Tensor:
    """Per text: its LM loss (summed) or its pooled representation; `base`: with the
    method switched off. Taken before training, since `full` leaves no base behind.
    Texts of like length go together (BATCH at a time, right-padded and masked: one call
    per text paid the model's per-call cost 64 times over); the thread count follows the
    free cores between batches (threads.CoreShare)."""
    score = lm_loss if uses_lm_loss(info) else last_hidden
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    switch = base_model(model) if base else contextlib.nullcontext()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    values: list[torch.Tensor | None] = [None] * len(encoded)
    with (
        torch.inference_mode(),
        autocast(precision, device),
        switch,
        threads.core_share() as share,
    ):
        for start in range(0, len(order), BATCH):
            share.check()
            chunk = order[start : start + BATCH]
            ids, mask = padded([encoded[i] for i in chunk], device)
            for i, value in zip(chunk, score(model, ids, mask).float().cpu(), strict=True):
                values[i] = value
    model.train(was_training)
    return torch.stack(values)


def padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (pad id 0: masked out, never scored) and their mask."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids.to(device), mask.to(device)


def compare(before: torch.Tensor, after: torch.Tensor, encoded: list[list[int]], info) -> dict:
    if uses_lm_loss(info):
        tokens = sum(len(ids) - 1 for ids in encoded)
        base_loss, tuned_loss = float(before.sum()) / tokens, float(after.sum()) / tokens
        return {
            "measure": "lm_loss_change",
            "texts": len(encoded),
            "base_loss": round(base_loss, 4),
            "tuned_loss": round(tuned_loss, 4),
            "value": round(tuned_loss - base_loss, 4),
            "base_perplexity": round(math.exp(base_loss), 3),
            "tuned_perplexity": round(math.exp(tuned_loss), 3),
        }
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=1).mean()
    return {
        "measure": "representation_drift",
        "texts": len(encoded),
        "value": round(1 - float(cosine), 5),
    }


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: summed next-token loss over the text (prompt-style tokens come first:
    skipped; padding is not scored)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :].float()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
    )
    return (losses * mask[:, 1:]).sum(1)


def last_hidden(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: the mean of the last hidden states over the text's own positions."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -ids.shape[1] :].float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


BASE_FILE = "forgetting_base.safetensors"


class Probe:
    """Base scores taken before training (kept in the run directory for --resume), and
    the comparison with the tuned model after it."""

    def __init__(self, encoded, before, info, precision):
        self.encoded, self.before, self.info, self.precision = encoded, before, info, precision

    @classmethod
    def start(cls, cfg, info, tokenizer, model, run_dir, resuming: bool):
        """None where forgetting is not measured: turned off, an encoder-decoder, or a
        resumed `full` run whose base scores were never written (its base is gone)."""
        from pathlib import Path

        from safetensors.torch import load_file, save_file

        if cfg.data.forgetting_samples == 0 or info.kind == "seq2seq":
            return None
        texts = general_texts(cfg.data.name, cfg.data.forgetting_data, cfg.data.forgetting_samples)
        encoded = encode(tokenizer, texts, cfg.model.max_length)
        path = Path(run_dir) / BASE_FILE
        if path.is_file():
            before = load_file(path)["scores"]
        elif resuming and cfg.method.name == "full":
            return None
        else:
            before = scores(model, encoded, info, cfg.train.precision, base=True)
            save_file({"scores": before}, path)
        return cls(encoded, before, info, cfg.train.precision)

    def finish(self, model) -> dict:
        after = scores(model, self.encoded, self.info, self.precision, base=False)
        return compare(self.before, after, self.encoded, self.info)
