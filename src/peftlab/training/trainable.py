"""The trainable weights as one dict of tensors: what a checkpoint, the best weights kept
during training and a native adapter (bottleneck adapters, BitFit) hold, and how they are
put back, checked name by name in both directions."""

from __future__ import annotations

import hashlib

import torch

from peftlab.errors import PeftlabError


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter by name: detached, contiguous copies on the CPU."""
    return {
        n: p.detach().cpu().contiguous().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` (read from `source`) into the model's trainable parameters. Refused,
    before anything is copied, unless each saved tensor has a trainable place in the model
    and each trainable parameter has a saved tensor."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise PeftlabError(
            f"{source} has {len(unknown)} tensors this model has no trainable place for "
            f"(e.g. {unknown[0]}): it was saved from another model or method"
        )
    absent = sorted(set(params) - set(state))
    if absent:
        raise PeftlabError(
            f"{source} lacks {len(absent)} of this model's trained tensors (e.g. {absent[0]}): "
            "it was saved from another model or method"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def trainable_sha256(model) -> str:
    """sha256 over the trainable weights: sorted names, then each one's dtype, shape, bytes."""
    digest = hashlib.sha256()
    params = sorted(
        ((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda np: np[0]
    )
    for name, param in params:
        data = param.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(f"{name} {param.dtype} {tuple(param.shape)}\n".encode())
        digest.update(data.numpy())  # the buffer itself: no copy
    return digest.hexdigest()
