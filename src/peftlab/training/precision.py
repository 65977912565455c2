"""Compute precision: bf16 autocast where the hardware runs bf16 natively, else fp32.

"auto" (config.PRECISIONS) resolves once, in `runner/checks.resolved()`, so run.json
records what ran. On a CPU, bf16 pays only with native bf16 instructions (AVX512-BF16 or
AMX); elsewhere PyTorch emulates it and it is slower than fp32. Weights stay fp32
(trainable ones need fp32 updates); autocast runs matmuls in bf16 and keeps norms,
softmax and losses in fp32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16" if native_bf16() else "fp32"


@functools.cache
def native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(NATIVE_CPU_FLAGS))


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere, which resolves auto to fp32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def autocast(precision: str, device):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def bf16_frozen_weights(model, precision: str):
    """Inside: the frozen linear weights of the layer blocks are bf16 copies.

    bf16 autocast casts every fp32 weight on every forward pass (it caches casts of
    trainable weights only); copying SmolLM2's frozen weights once made its LoRA steps
    4% faster. The fp32 originals are put back on exit, untouched. Matmul results are
    the same: autocast runs them in bf16 anyway. DoRA reads its base weights directly to
    norm them, so it keeps fp32.
    """
    import torch
    from torch import nn

    from peftlab.models.selection import layer_index

    swapped = []
    dora = any(getattr(m, "lora_magnitude_vector", None) for m in model.modules())
    if precision == "bf16" and not dora:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if (
                type(module) is nn.Linear
                and layer_index(name) is not None
                and weight.dtype == torch.float32
                and not weight.requires_grad
            ):
                module.weight = nn.Parameter(weight.detach().bfloat16(), requires_grad=False)
                swapped.append((module, weight))
    try:
        yield len(swapped)
    finally:
        for module, weight in swapped:
            module.weight = weight
