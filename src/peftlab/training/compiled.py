"""A classification task's logits compiled ahead of time, reused by later processes.

Why AOTInductor and not `torch.compile`: torch.compile keeps inductor's generated code on
disk, but dynamo re-traces the model in every process (MiniLM: 29.5 s to the first batch
with warm caches), which a 1,000-text evaluation never repays. `torch.export` +
AOTInductor build a shared library once per model *structure* (architecture, config,
method, tensor shapes, precision, this torch and this CPU's instruction set); a later
process loads it in milliseconds and hands it the live weights (the weights are
kept out of the library), so a newly trained adapter of the same shape, or a merged one
on the same base, reuses the code compiled for an earlier one.

What it buys is the work around the matmuls (fused norms, activations, masks and copies):
the matmuls themselves run in the same libraries as in eager mode, and they are most of
the time. Measured (bench/compiled_inference.py, fp32, 1,000 texts, medians of
alternating fresh processes): on an Intel Xeon with AMX, the tuned MiniLM + LoRA
evaluation 1.20x (2.71 vs 3.26 s, the first run 28 s), a merged MiniLM's `predict` 1.09x
(2.24 vs 2.44 s); with torch's own package loader (1.1 s a process, see _Library) both
lost there (0.75x, 0.72x), and on an AVX2 EPYC gave 1.07x and 0.93x. Only
where the work is large (`MIN_INPUTS`) and on a CPU in fp32, the kind measured. A model
that does not export runs eagerly, with one line saying why, and is not tried again (the
reason is kept beside the cache entry).
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree

from peftlab.data.assets import peftlab_home
from peftlab.failure import first_line
from peftlab.fsutil import content_key, locked, write_dir_atomic, write_json_atomic
from peftlab.training.flops import machine

MIN_INPUTS = 256  # fewer inputs never repay loading the library, let alone compiling it
PROGRAM = "logits.pt2"
SIDE_CONSTANTS = "constants.safetensors"  # tensors the trace made (not the model's own)
FAILED = "failed.json"


def compiled_logits(model, task, inputs: int, precision: str, device, log=print):
    """task.logits(model, batch) as a compiled function of the batch, or None where
    compiling does not apply (few inputs, not fp32 on a CPU, no classification head) or the
    model does not export (then `log` says why, once per model structure)."""
    skip = reason_to_skip(task, inputs, precision, device)
    if skip:
        log(f"note: running eagerly, not compiled: {skip}")
        return None
    wrapper = _TaskLogits(model, task).eval()
    folder = "(not found)"
    try:
        folder = cache_folder(wrapper, task, precision)
        with locked(folder):
            return cached_or_compiled(folder, wrapper, task, log)
    except Exception as exc:  # an unwritable cache, a damaged library: eager is always right
        log(
            f"note: compiled inference unavailable ({type(exc).__name__}: {first_line(exc)}; "
            f"cache {folder}); running eagerly"
        )
        return None


def cached_or_compiled(folder: Path, wrapper: _TaskLogits, task, log):
    if (folder / FAILED).is_file():
        return None
    if not (folder / PROGRAM).is_file():
        remove_killed_compiles(folder)
        log(f"compiling the {task.name} forward once for this model's structure ...")
        try:
            write_dir_atomic(folder, lambda tmp: compile_into(tmp, wrapper, task))
        except Exception as exc:  # any export or compiler failure: not tried again
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            write_json_atomic(folder / FAILED, {"reason": reason})
            log(f"note: this model does not compile ({reason}); running eagerly")
            return None
    return CompiledLogits.load(folder, wrapper)


def remove_killed_compiles(folder: Path) -> None:
    """What a compile killed mid-way left beside `folder` (write_dir_atomic's dot-named
    temporaries, hundreds of MB for a large model). Only while holding folder's lock: no
    other process is writing this key then."""
    for stale in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def reason_to_skip(task, inputs: int, precision: str, device) -> str | None:
    if inputs < MIN_INPUTS:
        return f"{inputs} inputs (compiled from {MIN_INPUTS})"
    kind = torch.device(device).type
    if kind != "cpu" or precision != "fp32":
        return (
            f"compiled inference is measured on CPUs in fp32 only (here: {precision} on "
            f"{kind}; on a CPU, a run with --precision fp32 compiles, and so does predict "
            "with its adapter)"
        )
    if not hasattr(task, "head"):
        return f"the {task.name} task has no classification head"
    return None


class _TaskLogits(nn.Module):
    """The task's logits as a module of (input_ids, attention_mask): what gets exported."""

    def __init__(self, model, task):
        super().__init__()
        self.model = model
        self.__dict__["task"] = task  # plain attribute: not part of the state

    def forward(self, input_ids, attention_mask):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.task.logits(self.model, batch)

    def constants(self) -> dict[str, torch.Tensor]:
        """Every weight and buffer under each of its names (tied weights have two)."""
        named = {name: t.detach() for name, t in self.state_dict(keep_vars=True).items()}
        named.update((n, b) for n, b in self.named_buffers(remove_duplicate=False))
        return named


def cache_folder(wrapper: _TaskLogits, task, precision: str) -> Path:
    """One folder per model structure: anything that changes the compiled code is in the
    key; the weights' values are not (they are handed over at load time)."""
    inner = wrapper.model
    config = getattr(inner, "config", None)
    peft_config = getattr(inner, "peft_config", None) or {}
    parts = {
        "code": source_digest(type(task), _TaskLogits),
        "torch": torch.__version__,
        "machine": machine(),
        "precision": precision,
        "model": type(inner).__qualname__,
        "config": config.to_json_string() if config is not None else None,
        "attention": getattr(config, "_attn_implementation", None),
        "peft": {k: v.to_dict() for k, v in peft_config.items()},
        "modules": module_states(wrapper),
        "tensors": [(n, list(t.shape), str(t.dtype)) for n, t in wrapper.constants().items()],
        "head": [type(task.head).__qualname__, getattr(task.head, "token_ids", None)],
        "max_length": task.max_length,
    }
    return peftlab_home() / "compiled" / content_key(parts, length=24)


def source_digest(*objects) -> str:
    """The task's module and this one: a changed task or wrapper is a new key."""
    digest = hashlib.sha256()
    for obj in objects:
        digest.update(Path(inspect.getfile(obj)).read_bytes())
    return digest.hexdigest()


def module_states(model: nn.Module) -> dict:
    """Each module's plain settings: what a forward branches on besides its tensors (peft's
    merged and disabled adapters, the active adapter, scaling, our layers' `enabled`), so
    that a graph traced in one state is never reused in another."""
    plain = (bool, int, float, str, type(None))

    def simple(value) -> bool:
        if isinstance(value, (list, tuple, set)):
            return all(isinstance(v, plain) for v in value)
        if isinstance(value, dict):
            return all(isinstance(v, plain) for v in value.values())
        return isinstance(value, plain)

    return {
        name: {
            k: repr(sorted(v, key=str) if isinstance(v, set) else v)
            for k, v in sorted(vars(module).items())
            if simple(v)
        }
        for name, module in model.named_modules()
    }


def sequence_bound(task) -> int:
    multiple = max(task.pad_multiple, 1)
    return -(-task.max_length // multiple) * multiple


def compile_into(folder: Path, wrapper: _TaskLogits, task) -> None:
    """Export with a dynamic batch size and length, then compile the library with the
    weights left out; tensors the trace itself created go to a side file."""
    from safetensors.torch import save_file

    batch = torch.export.Dim("batch", min=2, max=1 << 16)
    length = torch.export.Dim("length", min=2, max=sequence_bound(task))
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(
            wrapper,
            example,
            dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
            strict=False,
        )
    own = wrapper.constants()
    side = {
        name: t.detach().contiguous()
        for name, t in program.constants.items()
        if isinstance(t, torch.Tensor) and name not in own
    }
    save_file(side, str(folder / SIDE_CONSTANTS))
    torch._inductor.aoti_compile_and_package(
        program,
        package_path=str(folder / PROGRAM),
        inductor_configs={"aot_inductor.package_constants_in_so": False},
    )


class CompiledLogits:
    """Callable on a task batch; batches outside the compiled shapes run eagerly."""

    def __init__(self, runner: _Library, wrapper: _TaskLogits, bound: int, constants: dict):
        self.runner = runner
        self.wrapper = wrapper
        self.bound = bound
        self._constants = constants  # the runner reads these tensors: keep them alive

    @classmethod
    def load(cls, folder: Path, wrapper: _TaskLogits) -> CompiledLogits:
        from safetensors.torch import load_file

        runner = _Library(folder / PROGRAM)
        available = {**load_file(str(folder / SIDE_CONSTANTS)), **wrapper.constants()}
        constants = {name: available[name] for name in runner.constant_names()}
        runner.use_constants(constants)
        return cls(runner, wrapper, sequence_bound(wrapper.task), constants)

    def __call__(self, batch: dict) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not (ids.shape[0] >= 2 and 2 <= ids.shape[1] <= self.bound):
            return self.wrapper(ids, mask)
        return self.runner(ids, mask)


class _Library:
    """A compiled package's model, called as (input_ids, attention_mask) -> logits.

    torch's own loader (`torch._inductor.aoti_load_package`) reads the whole package
    archive (`load_pt2`) before it makes the C++ loader: 1.1 s in each fresh process on
    the AMX Xeon (1.9 s where inductor is not imported yet), for a library whose C++
    loader then takes 2 ms; that was what made a later compiled run lose to eager there.
    So this calls the C++ loader directly, as that function does in the end, and does its
    argument flattening for our one fixed signature. The package is ours, written by this
    torch (its version is in the cache key)."""

    def __init__(self, path: Path):
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        self._out_spec = _pytree.treespec_loads(self.loader.get_call_spec()[1])

    def constant_names(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def use_constants(self, constants: dict[str, torch.Tensor]) -> None:
        """Every constant, read in place: the caller keeps the tensors alive."""
        self.loader.load_constants(
            constants, use_inactive=False, check_full_update=True, user_managed=True
        )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.loader.boxed_run([input_ids, attention_mask])
        return _pytree.tree_unflatten(outputs, self._out_spec)
