"""How a language model reads a (prompt, target) pair, scores it and writes text.

Two layouts behind one interface:
- DecoderLayout (GPT-2, Llama, SmolLM2): prompt and target are one left-padded sequence;
  the loss covers the target tokens only. Left padding puts every row's target at the
  end, so only the last `longest target + 1` positions need logits: the lm_head (the
  largest matmul for a small model) runs on those alone.
- Seq2SeqLayout (T5, BART): the prompt goes to the encoder, the target is the decoder's
  labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peftlab.methods.virtual_positions import decoder_forward, decoder_generate

IGNORE = -100  # label value that the loss skips


@dataclass
class TextItem:
    input_ids: list[int]  # decoder: prompt + target; encoder-decoder: the prompt
    labels: list[int]  # decoder: IGNORE over the prompt; encoder-decoder: the target
    prompt_len: int  # generation starts after this many input tokens
    source: str  # the raw input text (for reports)
    reference: str | None  # the target text, when there is one


# Batch widths are rounded up to a multiple of this where kernels build and keep state
# per distinct shape (oneDNN's bf16 matmuls on a CPU, cuBLAS on a GPU): with every width
# from 1 to max_length a MiniLM bf16 run peaked at 1190 MB of RSS, with multiples of 8 at
# 900 MB, same speed. See pad_multiple for where it is left out.
PAD_MULTIPLE = 8


def pad_multiple(precision: str) -> int:
    """PAD_MULTIPLE under bf16 or on a GPU; 1 (the longest row's width) for fp32 on a
    CPU, whose matmuls keep no per-shape state: there rounding up only adds work, 10-11%
    of the token slots of a length-grouped batch of 8 (SmolLM2 and MiniLM on rotten
    tomatoes reviews, about 30 tokens each)."""
    return PAD_MULTIPLE if precision == "bf16" or torch.cuda.is_available() else 1


def pad(rows: list[list[int]], value: int, side: str, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    padded = [
        ([value] * (width - len(r)) + r) if side == "left" else (r + [value] * (width - len(r)))
        for r in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def target_tokens(item: TextItem) -> int:
    return sum(label != IGNORE for label in item.labels)


def cut_at_eos(tokens: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    out = []
    for token in tokens:
        if token in eos_ids:
            break
        if token != pad_id:
            out.append(token)
    return out


class DecoderLayout:
    padding_side = "left"

    def __init__(self, tokenizer, pad_multiple: int = PAD_MULTIPLE):
        self.tokenizer = tokenizer
        self.pad_multiple = pad_multiple
        self.eos_ids = {tokenizer.eos_token_id} - {None}
        prefix = tokenizer("", add_special_tokens=True)["input_ids"]
        self.prefix = [t for t in prefix if t not in self.eos_ids]  # BOS where the model uses one

    def item(
        self, prompt: str, target: str | None, max_target: int, source: str, special: bool = True
    ) -> TextItem:
        """special=False when the prompt already holds its special tokens (chat templates)."""
        tok = self.tokenizer
        prompt_ids = (self.prefix if special else []) + (
            tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        )
        target_ids = []
        if target is not None:
            target_ids = tok(target, add_special_tokens=False)["input_ids"][:max_target]
            target_ids += sorted(self.eos_ids)[:1]  # learn to stop
        labels = [IGNORE] * len(prompt_ids) + target_ids
        if not prompt_ids and labels:
            # Plain text with no BOS: the first token has nothing before it to be predicted
            # from (only padding, in a left-padded batch), so it is never a target.
            labels[0] = IGNORE
        return TextItem(
            input_ids=prompt_ids + target_ids,
            labels=labels,
            prompt_len=len(prompt_ids),
            source=source,
            reference=None,
        )

    def collate(self, items: list[TextItem]) -> dict:
        pad_id, multiple = self.tokenizer.pad_token_id, self.pad_multiple
        return {
            "input_ids": pad([it.input_ids for it in items], pad_id, "left", multiple),
            "attention_mask": pad([[1] * len(it.input_ids) for it in items], 0, "left", multiple),
            "labels": pad([it.labels for it in items], IGNORE, "left", multiple),
        }

    def token_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: summed target-token loss and the number of target tokens."""
        labels, mask = batch["labels"], batch["attention_mask"]
        width = labels.shape[1]
        first_target = int((labels != IGNORE).long().argmax(-1).min())
        keep = width - first_target + 1  # the position before the first target predicts it
        out = decoder_forward(
            model, batch["input_ids"], mask, logits_to_keep=0 if keep >= width else keep
        )
        kept = min(keep, width)
        # Prompt-style methods prepend virtual tokens: the last `kept` positions are ours.
        logits = out.logits[:, -kept:-1]
        return row_losses(logits, labels[:, width - kept + 1 :])

    def generate(self, model, items: list[TextItem], max_new_tokens: int, num_beams: int):
        prompts = [it.input_ids[: it.prompt_len] for it in items]
        pad_id = self.tokenizer.pad_token_id
        new = generate_tokens(
            model, prompts, pad_id, True, max_new_tokens=max_new_tokens, num_beams=num_beams
        )
        return [cut_at_eos(row, self.eos_ids, pad_id) for row in new]


class Seq2SeqLayout:
    padding_side = "right"

    def __init__(self, tokenizer, pad_multiple: int = PAD_MULTIPLE):
        self.tokenizer = tokenizer
        self.pad_multiple = pad_multiple
        self.eos_ids = {tokenizer.eos_token_id} - {None}

    def item(
        self, prompt: str, target: str | None, max_target: int, source: str, special: bool = True
    ) -> TextItem:
        tok = self.tokenizer
        prompt_ids = tok(prompt)["input_ids"]  # truncated by the caller
        target_ids = tok(text_target=target or "", truncation=True, max_length=max_target)[
            "input_ids"
        ]
        if self.eos_ids and (not target_ids or target_ids[-1] not in self.eos_ids):
            target_ids = target_ids[: max_target - 1] + sorted(self.eos_ids)[:1]  # learn to stop
        return TextItem(prompt_ids, target_ids, len(prompt_ids), source, None)

    def collate(self, items: list[TextItem]) -> dict:
        pad_id, multiple = self.tokenizer.pad_token_id, self.pad_multiple
        return {
            "input_ids": pad([it.input_ids for it in items], pad_id, "right", multiple),
            "attention_mask": pad([[1] * len(it.input_ids) for it in items], 0, "right", multiple),
            "labels": pad([it.labels for it in items], IGNORE, "right", multiple),
        }

    def token_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # The labels shifted right are the decoder's inputs. Given as such, the model
        # computes no loss of its own (peftlab's is per row), and peft's AdaLoRA adds no
        # training-only term to one (it fails on a reloaded adapter).
        shift = getattr(model, "prepare_decoder_input_ids_from_labels", None)
        if shift is None:  # a wrapper (DDP) hides it: the model shifts them itself
            return row_losses(model(**batch).logits, batch["labels"])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, decoder_input_ids=shift(labels=batch["labels"]))
        return row_losses(out.logits, batch["labels"])

    def generate(self, model, items: list[TextItem], max_new_tokens: int, num_beams: int):
        prompts = [it.input_ids for it in items]
        pad_id = self.tokenizer.pad_token_id
        new = generate_tokens(
            model, prompts, pad_id, False, max_new_tokens=max_new_tokens, num_beams=num_beams
        )
        return [cut_at_eos(row, self.eos_ids, pad_id) for row in new]


def generate_tokens(model, prompts: list[list[int]], pad_id: int, decoder_only: bool, **kwargs):
    """Batched greedy (or beam) generation from token-id prompts: each row's new tokens.

    Decoders read left-padded prompts and continue them; encoder-decoders read
    right-padded sources and start their output with the decoder start token.
    """
    side = "left" if decoder_only else "right"
    device = next(model.parameters()).device
    input_ids = pad(prompts, pad_id, side).to(device)
    mask = pad([[1] * len(p) for p in prompts], 0, side).to(device)
    kwargs.update(do_sample=False, pad_token_id=pad_id)
    if decoder_only:
        return decoder_generate(model, input_ids, mask, **kwargs).tolist()
    out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    return [row[1:] for row in out.tolist()]


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    losses = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    return losses.sum(-1), (labels != IGNORE).sum(-1)
