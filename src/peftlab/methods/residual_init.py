"""LoRA started from the base weights' own structure (PiSSA's top singular vectors, OLoRA's
QR factors, CorDA's singular vectors of the weight times its inputs' covariance): peft
moves that part out of each base weight, W = W_res + s B0 A0, so the model computes the
base model at the start while the stored base is a residual.

Two things follow, handled here: "the base model" is the residual plus the initial pair
(kept in memory at attach), not the adapter switched off; and the saved adapter is peft's
conversion to a plain LoRA of twice the rank, s (B A - B0 A0), which applies to the
original base: plain peft, `predict`, `serve` and `merge` load it like any LoRA.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

# --lora-init -> peft's init_lora_weights at attach; CorDA's needs the data: corda_start.
RESIDUAL_INITS = {"pissa": "pissa", "olora": "olora"}
CORDA_EXAMPLES = 256  # training examples whose inputs make each layer's covariance
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


def corda_start(model, run) -> None:
    """CorDA (Yang et al. 2024, instruction-previewed mode): each layer's pair starts from
    the top singular vectors of its weight times the covariance of its inputs over the
    training examples, and that part leaves the base weight. peft expects this before the
    wrap (preprocess_corda), so here it runs on the wrapped model's base layers with the
    adapter off, as the loop's start: the covariances are taken here (peft's hook takes
    one 2-D row per call; an encoder-decoder's label scoring feeds several), then peft's
    own SVDs (collect_eigens, crop_corda_eigens) and initialization (corda_init)."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import collect_eigens, crop_corda_eigens

    adapter = model.active_adapter
    config = model.peft_config[adapter]
    probe = copy.deepcopy(config)  # the same layers, named as the wrapped model has them
    probe.target_modules = {f"{name}.base_layer" for name in config.target_modules}
    probe.corda_config = CordaConfig(corda_method="ipm")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.r]
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        with covariances([m.get_base_layer() for m in layers]):
            for batch in run.batches(1)[:CORDA_EXAMPLES]:
                run.forward(model, {k: v.to(device) for k, v in batch.items()})
        for layer in layers:
            base = layer.get_base_layer()
            base.corda_method, base.rank = "ipm", layer.r[adapter]
        collect_eigens(model, probe, verbose=False)
        crop_corda_eigens(model, probe)
    for layer in layers:
        layer.corda_init(adapter, "corda")
        for field in ("corda_method", "rank", "eigens", "covariance_matrix"):
            if hasattr(layer.get_base_layer(), field):
                delattr(layer.get_base_layer(), field)
    config.init_lora_weights = "corda"  # what peft's conversion to a plain LoRA reads
    keep_initial_pair(model)


@contextlib.contextmanager
def covariances(linears: list):
    """Inside: each layer sums x^T x of its inputs (scaled by their largest value, as
    peft's CorDA does), one call a sample; on exit each holds the mean as
    `covariance_matrix`, where peft's collect_eigens reads it."""

    def accumulate(module, inputs, output):
        x = inputs[0].detach().float()
        x = x.reshape(-1, x.shape[-1])
        x = x / x.max().abs()
        module.covariance_matrix = module.covariance_matrix + x.T @ x
        module.sample_count += 1

    handles = []
    for linear in linears:
        linear.covariance_matrix, linear.sample_count = 0, 0
        handles.append(linear.register_forward_hook(accumulate))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    for linear in linears:
        linear.covariance_matrix = linear.covariance_matrix / max(1, linear.sample_count)
        del linear.sample_count
