"""Prompt tuning and P-tuning on a decoder, with positions that skip the padding.

peft puts the virtual tokens before the whole left-padded row and drops the position ids
it is given (PeftModel.forward and prepare_inputs_for_generation: "Position ids are not
supported"), so the model numbers the padding as if it were text: a row's answer then
depends on how much padding its batch gave it (SmolLM2 prompt tuning in fp32: 3 of 16
generated headlines changed between batch 16 and batch 1) and a served answer could not
equal an offline one. Here the inputs are built as peft builds them (its `get_prompt`,
its word embeddings, the mask with ones for the virtual tokens) and the base model is
called with positions from the mask: virtual tokens 0..v-1, each row's own tokens after
them, the layout the server uses (serving/prompts.py). Prefix tuning needs none of this:
peft keeps its position ids and shifts them past the prefix.
"""

from __future__ import annotations

import torch

EMBEDDED_PROMPTS = ("PROMPT_TUNING", "P_TUNING")


def embeds_prompt(model) -> bool:
    """Whether `model` is a peft decoder that puts virtual-token embeddings before its
    input now: not while its forward is switched to the base model's (peft's
    disable_adapter() and methods.base_model() run it bare that way)."""
    config = getattr(model, "active_peft_config", None)
    peft_type = getattr(getattr(config, "peft_type", None), "value", None)
    if peft_type not in EMBEDDED_PROMPTS or model.config.is_encoder_decoder:
        return False
    return model.forward != model.base_model.forward


def left_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: the real tokens get 0, 1, 2... whatever the
    padding before them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def with_virtual_tokens(virtual: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor):
    """A base model's inputs for left-padded rows (`embeds`, `mask`) with the virtual-token
    embeddings (rows, v, dim) before them: the one layout of training, predict and serve."""
    full = torch.cat([mask.new_ones(mask.shape[0], virtual.shape[1]), mask], 1)
    return {
        "inputs_embeds": torch.cat([virtual.to(embeds.dtype), embeds], 1),
        "attention_mask": full,
        "position_ids": left_positions(full),
    }


def prompt_inputs(model, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """A peft prompt-learning model's inputs for left-padded rows, built as peft builds
    them (its get_prompt and word embeddings) but with each row's own positions."""
    prompts = model.get_prompt(batch_size=input_ids.shape[0])
    return with_virtual_tokens(prompts, model.word_embeddings(input_ids), mask)


def decoder_forward(model, input_ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """model(...) on left-padded rows, each numbered from 0 (after any virtual tokens)."""
    if embeds_prompt(model):
        return model.base_model(**prompt_inputs(model, input_ids, mask), **kwargs)
    return model(
        input_ids=input_ids, attention_mask=mask, position_ids=left_positions(mask), **kwargs
    )


def decoder_generate(model, input_ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """model.generate(...) on left-padded rows: only the new tokens of each row.
    (generate derives each step's positions from the mask it is given.)"""
    if embeds_prompt(model):
        # From embeddings alone, generate returns only the new tokens; it numbers the
        # positions from the mask itself (as with_virtual_tokens does).
        inputs = prompt_inputs(model, input_ids, mask)
        del inputs["position_ids"]
        return model.base_model.generate(**inputs, **kwargs)
    out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    return out[:, input_ids.shape[1] :]
