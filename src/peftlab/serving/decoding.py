"""Continuous batching for generation: sequences join and leave the running batch at
every decoding step, so a short request never waits for a long one to finish.

Each *lane* is one running batch with its own KV cache (transformers' DynamicCache, rows
left-padded to a common length): one lane for every request that can share a forward
pass (LoRA adapters mix by peft's per-row `adapter_names`), and one per adapter that
cannot (IA3, DoRA). A new sequence is prefilled on its own pass, then its cache rows are
padded and stacked into its lane; a finished or abandoned sequence's rows are dropped,
and columns no row uses any more are trimmed.

Written by hand because transformers' own continuous batching packs every sequence into
one row of a paged cache, where peft's per-row adapters cannot be told apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Sampling:
    """One request's decoding settings (OpenAI's fields)."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy (the answer `predict` gives)
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's and the k likeliest


@dataclass
class Sequence:
    adapter: str  # the engine's model name (an adapter, or the base)
    prompt: list[int]
    sampling: Sampling
    on_step: Callable[[Sequence], None] | None = None  # streaming: after every token
    abandoned: bool = False  # set by the request's side: its client went away
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)  # per token: {"logprob", "top"}
    text: str = ""  # decoded output so far, cut at a stop string
    finish_reason: str | None = None
    generator: torch.Generator | None = None

    def __post_init__(self):
        if self.sampling.temperature > 0:
            self.generator = torch.Generator()
            if self.sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.sampling.seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def visible_text(self) -> str:
        """What may be shown while generating: text that cannot turn into a stop string
        or into an incomplete character."""
        if self.done:
            return self.text
        hold = max((len(s) - 1 for s in self.sampling.stop), default=0)
        text = self.text[: len(self.text) - hold] if hold else self.text
        return text.rstrip("\ufffd")


@dataclass
class Lane:
    key: str  # "mixed", or the one adapter of a lane that cannot mix
    rows: list[Sequence] = field(default_factory=list)
    cache: object = None  # DynamicCache over the rows, left-padded
    mask: torch.Tensor | None = None  # [rows, cache length]: 1 where a row has a token


class Decoder:
    """The running sequences of an Engine, stepped by the batcher's thread only."""

    def __init__(self, engine, max_batch: int):
        self.engine, self.max_batch = engine, max_batch
        self.lanes: dict[str, Lane] = {}

    @property
    def running(self) -> int:
        return sum(len(lane.rows) for lane in self.lanes.values())

    @property
    def room(self) -> int:
        return max(0, self.max_batch - self.running)

    def add(self, sequences: list[Sequence]) -> list[Sequence]:
        """Prefill new sequences into their lanes; return those already finished."""
        by_lane: dict[str, list[Sequence]] = {}
        for seq in sequences:
            by_lane.setdefault(self.engine.lane_of(seq.adapter), []).append(seq)
        finished = []
        for key, group in by_lane.items():
            lane = self.lanes.setdefault(key, Lane(key))
            logits, cache, mask = self.prefill(group)
            merge(lane, group, cache, mask)
            finished += self.advance(lane, logits, group)
        return finished

    def step(self) -> list[Sequence]:
        """One token for every running sequence; return the ones that finished."""
        finished = []
        for lane in list(self.lanes.values()):
            gone = [s for s in lane.rows if s.abandoned]
            for seq in gone:
                seq.finish_reason = "abandoned"
            drop(lane, gone)
            finished += gone
            if lane.rows:
                finished += self.advance(lane, self.decode(lane), lane.rows)
            if not lane.rows:
                del self.lanes[lane.key]
        return finished

    # ------------------------------------------------------------ passes

    def prefill(self, group: list[Sequence]):
        return self.engine.prefill([s.adapter for s in group], [s.prompt for s in group])

    def decode(self, lane: Lane) -> torch.Tensor:
        device = self.engine.device
        last = torch.tensor([[s.tokens[-1]] for s in lane.rows])
        mask = torch.cat([lane.mask, torch.ones(len(lane.rows), 1, dtype=lane.mask.dtype)], 1)
        logits, lane.cache = self.engine.forward(
            [s.adapter for s in lane.rows],
            True,
            input_ids=last.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.sum(-1, keepdim=True) - 1).to(device),
            past_key_values=lane.cache,
        )
        lane.mask = mask
        return logits

    def advance(self, lane: Lane, logits: torch.Tensor, rows: list[Sequence]) -> list[Sequence]:
        """Choose each row's next token from its logits; drop the rows that finished."""
        tokenizer = self.engine.tokenizer
        eos = {tokenizer.eos_token_id} - {None}
        for seq, row in zip(rows, logits, strict=True):
            token, logprob = choose(row, seq)
            if token in eos:
                seq.finish_reason = "stop"
            else:
                seq.tokens.append(token)
                if logprob is not None:
                    seq.logprobs.append(logprob)
                seq.text = tokenizer.decode(seq.tokens, skip_special_tokens=True)
                cut_at_stop(seq)
            if not seq.done and len(seq.tokens) >= seq.sampling.max_tokens:
                seq.finish_reason = "length"
            if seq.on_step is not None:
                seq.on_step(seq)
        finished = [s for s in rows if s.done]
        drop(lane, finished)
        return finished


def cut_at_stop(seq: Sequence) -> None:
    for stop in seq.sampling.stop:
        at = seq.text.find(stop)
        if at >= 0:
            seq.text = seq.text[:at]
            seq.finish_reason = "stop"


def choose(logits: torch.Tensor, seq: Sequence) -> tuple[int, dict | None]:
    """The next token (greedy, or sampled with temperature, top-k and top-p from the
    sequence's own seeded generator) and, if asked, its log-probabilities (of the model's
    distribution, before temperature, as OpenAI and vLLM report them)."""
    s = seq.sampling
    if s.temperature <= 0:
        token = int(logits.argmax())
    else:
        scores = logits / s.temperature
        if s.top_k > 0:
            kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        probs = scores.softmax(-1)
        if s.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > s.top_p  # keep the smallest top set
            probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
        token = int(torch.multinomial(probs, 1, generator=seq.generator))
    if s.logprobs is None:
        return token, None
    logprobs = logits.log_softmax(-1)
    top = torch.topk(logprobs, s.logprobs) if s.logprobs else None
    alternatives = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
    return token, {"logprob": float(logprobs[token]), "top": alternatives}


def merge(lane: Lane, rows: list[Sequence], cache, mask: torch.Tensor) -> None:
    """Stack newly prefilled rows into a lane, left-padding the shorter side's cache."""
    if not lane.rows:
        lane.rows, lane.cache, lane.mask = list(rows), cache, mask
        return
    length = max(lane.mask.shape[1], mask.shape[1])
    for old, new in zip(lane.cache.layers, cache.layers, strict=True):
        old.keys = torch.cat([pad_left(old.keys, length), pad_left(new.keys, length)])
        old.values = torch.cat([pad_left(old.values, length), pad_left(new.values, length)])
    lane.mask = torch.cat([pad_left(lane.mask, length), pad_left(mask, length)])
    lane.rows += rows


def pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zeros before the sequence axis (dim -2 of a cache tensor, -1 of a mask)."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def drop(lane: Lane, finished: list[Sequence]) -> None:
    """Remove finished rows and the leading cache columns no remaining row uses."""
    if not finished:
        return
    keep = [i for i, s in enumerate(lane.rows) if not any(s is f for f in finished)]
    lane.rows = [lane.rows[i] for i in keep]
    if not keep:
        lane.cache, lane.mask = None, None
        return
    index = torch.tensor(keep)
    lane.mask = lane.mask[index]
    unused = int((lane.mask.sum(0) == 0).long().cumprod(0).sum())  # all-padding columns
    lane.mask = lane.mask[:, unused:]
    for layer in lane.cache.layers:
        layer.keys = layer.keys[index.to(layer.keys.device), :, unused:]
        layer.values = layer.values[index.to(layer.values.device), :, unused:]
