"""LoRA started from the base weights' own structure (PiSSA's top singular vectors, OLoRA's
QR factors): peft moves that part out of each base weight, W = W_res + s B0 A0, so the
model computes the base model at the start while the stored base is a residual.

Two things follow, handled here: "the base model" is the residual plus the initial pair
(kept in memory at attach), not the adapter switched off; and the saved adapter is peft's
conversion to a plain LoRA of twice the rank, s (B A - B0 A0), which applies to the
original base: plain peft, `predict`, `serve` and `merge` load it like any LoRA.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

RESIDUAL_INITS = {"pissa": "pissa", "olora": "olora"}  # --lora-init -> peft's init_lora_weights
INITIAL = "peftlab_initial_pair"  # the attribute the initial adapter weights are kept under


def keep_initial_pair(model) -> None:
    """Remember the adapter's weights as peft initialized them (before any step)."""
    setattr(
        model,
        INITIAL,
        {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n},
    )


def has_residual_base(model) -> bool:
    return getattr(model, INITIAL, None) is not None


@contextlib.contextmanager
def initial_pair_in_place(model):
    """Inside: the adapter holds its initial weights, so the model computes the base."""
    initial = getattr(model, INITIAL)
    params = dict(model.named_parameters())
    trained = {n: params[n].detach().clone() for n in initial}
    try:
        for name, value in initial.items():
            params[name].data.copy_(value)
        yield model
    finally:
        for name, value in trained.items():
            params[name].data.copy_(value)


def save_as_plain_lora(model, folder: Path) -> None:
    """peft's conversion: the trained pair minus the initial one, a rank-2r LoRA of the
    original base (peft reads the initial pair from a folder, written here first)."""
    with tempfile.TemporaryDirectory() as scratch:
        initial = Path(scratch) / "initial"
        with initial_pair_in_place(model):
            model.save_pretrained(initial, safe_serialization=True)
        model.save_pretrained(
            folder, safe_serialization=True, path_initial_model_for_weight_conversion=str(initial)
        )
