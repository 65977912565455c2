"""Label words through an encoder-decoder's decoder (T5, FLAN-T5, BART, mT0).

The encoder reads the prompt; from the decoder's start token the decoder scores each
label's word, all its tokens and then end-of-sequence, and a label's score is that
sequence's log-probability: multi-token words are scored whole, and a word that is the
start of another ("good" / "goodness") is not mistaken for it. No new weights, so the
base model classifies zero-shot. Training is the cross-entropy over the labels' scores,
as for decoders' label words: the right word's tokens against the others'. (The plain
LM loss on the right word's tokens, as peft's mt0 sentiment example trains, mostly
learns what a label looks like before which one is right: on the tiny T5 test it stayed
at 0.46 accuracy after 24 steps, where this reaches 1.0.)

Each row runs once per label (the rows repeated, each with one label's word): simple,
and it works unchanged under every peft method, prompt-style ones included.
"""

from __future__ import annotations

import torch

from peftlab.errors import ConfigError


class DecoderLabelWordHead:
    padding_side = "right"

    def __init__(self, tokenizer, label_words: list[str], decoder_start_id: int):
        self.label_words = label_words
        self.sequences = label_sequences(tokenizer, label_words)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.inputs, self.targets = word_batch(self.sequences, decoder_start_id, pad_id)

    def token_log_probs(self, model, batch: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (row, label)'s per-token log-probabilities and the mask of real tokens:
        both (rows, labels, width)."""
        rows, labels = len(batch["input_ids"]), len(self.sequences)
        inputs, targets = (t.to(batch["input_ids"].device) for t in (self.inputs, self.targets))
        out = model(
            input_ids=batch["input_ids"].repeat_interleave(labels, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(labels, 0),
            decoder_input_ids=inputs.repeat(rows, 1),
            **kwargs,
        )
        log_probs = out.logits.float().log_softmax(-1)
        real = targets.repeat(rows, 1) != -100
        picked = log_probs.gather(-1, targets.repeat(rows, 1).clamp(min=0).unsqueeze(-1))
        shape = (rows, labels, targets.shape[1])
        return picked.squeeze(-1).view(shape), real.view(shape)

    def logits(self, model, batch: dict, **kwargs) -> torch.Tensor:
        """Each label's word as a whole: its summed log-probability, (rows, labels)."""
        token_scores, real = self.token_log_probs(model, batch, **kwargs)
        return (token_scores * real).sum(-1)


def word_batch(sequences: list[list[int]], start_id: int, pad_id: int):
    """(decoder inputs, targets), one row per label; targets -100 past a word's end."""
    width = max(len(s) for s in sequences)
    inputs = torch.full((len(sequences), width), pad_id)
    targets = torch.full((len(sequences), width), -100)
    for row, sequence in enumerate(sequences):
        inputs[row, : len(sequence)] = torch.tensor([start_id, *sequence[:-1]])
        targets[row, : len(sequence)] = torch.tensor(sequence)
    return inputs, targets


def label_sequences(tokenizer, label_words: list[str]) -> list[list[int]]:
    """Each word's tokens and end-of-sequence; the sequences must all differ."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sequences = []
    for word in label_words:
        tokens = tokenizer(word.strip(), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ConfigError("data.label_words", word, "give a word the tokenizer can encode")
        sequences.append([*tokens, *end])
    for i, sequence in enumerate(sequences):
        if sequence in sequences[:i]:
            raise ConfigError(
                "data.label_words",
                label_words,
                f"'{label_words[sequences.index(sequence)]}' and '{label_words[i]}' are the "
                "same tokens to this tokenizer; choose label words that differ (--label-words)",
            )
    return sequences
