"""LoRA's adapted linear layers, one autograd node each while training on a CPU.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: seven autograd nodes,
and passes over activation-sized tensors for the dropout's two products, the scaling and
the sum, forward and again backward, in each of SmolLM2's 210 adapted layers per step.
Here one node computes the same sum: the dropout's 1/(1-p) and LoRA's scaling fold into
the alpha of the addmm that adds the adapter's output to the base's, and the backward
adds the adapter's masked input gradient to the base's in one addcmul. It keeps for the
backward the dropout's boolean mask, the rank-sized hidden and one activation. Under
autocast that is the dropped-out input, so the backward need not multiply it again: the
input there is the node's own bf16 cast of the fp32 residual stream (q, k, v, gate, up)
or an activation nothing else keeps (o, down): no memory lost, whole bf16 runs 2% faster
on SmolLM2 and 6% on MiniLM (bench/levers.json). Without autocast it is the input
itself, which q, k and v share: a dropped-out copy each took 12% more peak memory
(SmolLM2 fp32, 512 tokens: 11.7-11.8 against 10.3 GB). The masks are fast_dropout's,
drawn in the same order, so a run's randomness is unchanged; results agree with peft's
to float rounding.

Under the CPU's bf16 autocast the node computes in bf16, as autocast would have run
each of peft's matmuls (the casts before it are autograd nodes: fp32 trainable weights
get fp32 gradients); the frozen weight is then usually already a bf16 copy
(precision.bf16_frozen_weights).

Written by hand because no kept library fuses a LoRA layer on a CPU (unsloth's kernels
are Triton, for GPUs). Layers it does not cover run peft's own forward: a variant (DoRA
and the like), several active adapters, a trainable base weight or bias, a bias on
lora_B, another base layer type (Conv1D, quantized), a GPU, or autocast to fp16.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn

from peftlab.training.fast_dropout import keep_mask, scaled_mask


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, keep, alpha: float, keep_dropped: bool):
        flat = x.reshape(-1, x.shape[-1])
        keep = None if keep is None else keep.reshape(flat.shape)
        dropped = flat if keep is None else flat * scaled_mask(keep, flat.dtype)
        hidden = dropped @ lora_a.t()
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        out.addmm_(hidden, lora_b.t(), alpha=alpha)
        ctx.kept_dropped = keep_dropped or keep is None
        saved = dropped if ctx.kept_dropped else flat
        ctx.save_for_backward(saved, keep, hidden, weight, lora_a, lora_b)
        ctx.alpha, ctx.in_shape = alpha, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        saved, keep, hidden, weight, lora_a, lora_b = ctx.saved_tensors
        mask = None if keep is None else scaled_mask(keep, saved.dtype)
        dropped = saved if ctx.kept_dropped else saved * mask
        grad = grad.reshape(-1, grad.shape[-1])
        grad_hidden = (grad @ lora_b).mul_(ctx.alpha)
        grad_b = (grad.t() @ hidden).mul_(ctx.alpha) if ctx.needs_input_grad[4] else None
        grad_a = grad_hidden.t() @ dropped if ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            through_lora = grad_hidden @ lora_a
            base = grad @ weight
            grad_x = base.add_(through_lora) if mask is None else base.addcmul_(through_lora, mask)
            grad_x = grad_x.view(ctx.in_shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _plain_adapter(layer) -> str | None:
    """The one active vanilla LoRA adapter of `layer` this path computes, else None."""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or layer.merged or layer.disable_adapters:
        return None
    name = active[0]
    base = layer.get_base_layer()
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    plain = (
        type(base) is nn.Linear
        and frozen
        and name not in layer.lora_variant
        and layer.lora_B[name].bias is None
        and isinstance(layer.lora_dropout[name], nn.Dropout | nn.Identity)
    )
    return name if plain else None


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _plain_adapter(layer) if not args and not kwargs else None
    if name is None or x.device.type != "cpu":
        return type(layer).forward(layer, x, *args, **kwargs)
    base, lora_a, lora_b = layer.get_base_layer(), layer.lora_A[name], layer.lora_B[name]
    dropout = layer.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    tensors = (x, base.weight, base.bias, lora_a.weight, lora_b.weight)
    dtype = _compute_dtype(tensors)
    autocasting = torch.is_autocast_enabled("cpu")  # read before it is turned off below
    if dtype is None or p >= 1:
        return type(layer).forward(layer, x, *args, **kwargs)
    x, weight, bias, a, b = (None if t is None else t.to(dtype) for t in tensors)
    keep = keep_mask(x, p) if p > 0 else None
    alpha = layer.scaling[name] / (1.0 - p)
    with torch.autocast("cpu", enabled=False):
        return _LoraLinear.apply(x, weight, bias, a, b, keep, alpha, autocasting)


def _compute_dtype(tensors) -> torch.dtype | None:
    """The dtype the layer computes in: bf16 under the CPU's bf16 autocast (every matmul
    of peft's path runs in it there; the casts are autograd nodes, so fp32 trainable
    weights get fp32 gradients), else the one dtype all tensors share; None for a mix
    this path does not cover (peft's forward handles it)."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 else None
    dtypes = {t.dtype for t in tensors if t is not None}
    return dtypes.pop() if len(dtypes) == 1 else None


def lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


@contextlib.contextmanager
def fused_lora(model: nn.Module) -> Iterator[int]:
    """Inside: peft's LoRA Linear layers of `model` take the fused path where it covers
    them (see the module docstring); yields how many layers were given it."""
    layers = lora_layers(model)
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
