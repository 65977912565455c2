"""Prompt-style adapters on a served decoder: prompt tuning, P-tuning, prefix tuning.

They change the model's inputs, not its layers, and what peft saves for them
(`prompt_embeddings`) is all there is at inference: virtual-token embeddings put before
the input (prompt tuning; P-tuning saves its encoder's output) or a key/value cache put
before it (prefix tuning). So they run on the bare base model, one adapter per forward
pass (each has its own virtual tokens), and once prefilled they decode like any other
row: the virtual tokens are in the row's cache. The layout is peft's (get_prompt):
virtual tokens at positions 0..v-1, the input after them, padding masked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from peftlab.adapters.peft_folders import PROMPT_KEY, read_peft_config
from peftlab.errors import AdapterError
from peftlab.failure import first_line
from peftlab.methods.virtual_positions import left_positions, with_virtual_tokens

PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")


@dataclass
class VirtualTokens:
    peft_type: str
    weight: torch.Tensor  # (tokens, dim), or (tokens, layers x 2 x dim) for a prefix
    heads: int
    layers: int

    @property
    def count(self) -> int:
        return self.weight.shape[0]

    def inputs(self, model, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Forward kwargs for a left-padded batch with the virtual tokens before it."""
        rows = input_ids.shape[0]
        if self.peft_type != "PREFIX_TUNING":
            virtual = self.weight.expand(rows, -1, -1)
            return with_virtual_tokens(virtual, model.get_input_embeddings()(input_ids), mask)
        full = torch.cat([mask.new_ones(rows, self.count), mask], 1)
        return {
            "input_ids": input_ids,
            "attention_mask": full,
            "position_ids": left_positions(full)[:, self.count :],
            "past_key_values": self.cache(rows, model.dtype),
        }

    def cache(self, rows: int, dtype: torch.dtype):
        """The prefix as a DynamicCache for `rows` rows (peft's get_prompt layout)."""
        from transformers import DynamicCache

        kv = self.weight.to(dtype).view(self.count, self.layers * 2, self.heads, -1)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, rows, -1, -1, -1)
        pairs = kv.contiguous().split(2)  # per layer: (2, rows, heads, tokens, head_dim)
        return DynamicCache([(pair[0], pair[1]) for pair in pairs])


def load_virtual_tokens(folder: Path, model) -> VirtualTokens:
    """An adapter folder's virtual tokens, checked against the served decoder by one
    forward pass (a prefix laid out for other heads or layers does not fit)."""
    from peft.utils import load_peft_weights

    config = read_peft_config(folder)
    if config.get("num_transformer_submodules", 1) != 1:
        raise AdapterError(f"'{folder}' is a prompt-style adapter for an encoder-decoder")
    try:
        weight = load_peft_weights(str(folder), device="cpu")[PROMPT_KEY]
    except KeyError:
        raise AdapterError(
            f"'{folder}' saved no {PROMPT_KEY}: not a prompt-style adapter"
        ) from None
    device = next(model.parameters()).device
    tokens = VirtualTokens(
        config["peft_type"],
        weight.to(device),
        int(config.get("num_attention_heads") or 1),
        int(config.get("num_layers") or 1),
    )
    check_fits(folder, tokens, model)
    return tokens


@torch.inference_mode()
def check_fits(folder: Path, tokens: VirtualTokens, model) -> None:
    one = torch.tensor([[0]], device=tokens.weight.device)
    try:
        model(**tokens.inputs(model, one, torch.ones_like(one)), logits_to_keep=1)
    except (RuntimeError, ValueError) as exc:
        raise AdapterError(
            f"the virtual tokens in '{folder}' do not fit this base model "
            f"({first_line(exc) or 'shapes differ'}); use the base model the adapter was "
            "trained on (--base)"
        ) from None
