"""ONE training loop for every method (accelerate underneath).

AdamW with weight decay, warmup then decay, gradient accumulation, epochs or max steps,
validation every N steps keeping the best weights, and checkpoints that a killed run
resumes from bit-for-bit: only trainable weights, optimizer, scheduler, RNG and loop
position are saved, so a checkpoint of a LoRA run is megabytes, not the whole model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from peftlab import distributed, frozen_cache, threads
from peftlab.config import TrainArgs
from peftlab.errors import PeftlabError
from peftlab.evaluate import evaluate
from peftlab.failure import first_line
from peftlab.fast_dropout import use_fast_dropout
from peftlab.fsutil import write_dir_atomic, write_json_atomic
from peftlab.models import cpu_attention
from peftlab.precision import autocast, bf16_frozen_weights
from peftlab.progress import Progress
from peftlab.resources import Meter, release_freed_memory


@dataclass
class LoopState:
    """Where the loop is; saved with every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    window: int = 0  # accumulation windows done in this epoch
    samples: int = 0
    train_seconds: float = 0.0  # time in forward/backward/step only
    history: list = field(default_factory=list)  # one entry per optimizer step
    evals: list = field(default_factory=list)  # one entry per validation
    best_metric: float | None = None
    best_step: int | None = None


def epoch_windows(
    lengths: list[int], batch_size: int, grad_accum: int, seed: int, epoch: int
) -> list[list[list[int]]]:
    """Length-grouped batches in a seeded order, grouped into accumulation windows.

    Examples are shuffled, then sorted by length inside chunks of 50 batches so a batch
    holds similar lengths (little padding) while the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [batches[i : i + grad_accum] for i in range(0, len(batches), grad_accum)]


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


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


def rank_weight_hashes(model, accelerator) -> list[str] | None:
    """Every rank's trainable_sha256, in rank order; an error unless they are all equal.

    Data parallel must end with identical copies: rank 0 alone saves the adapter and the
    test score, so a rank that drifted (a rank-dependent branch, say) would go unnoticed.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None  # weights may be sharded there: ranks differ by design
    hashes = distributed.gather_object(trainable_sha256(model))
    if len(set(hashes)) > 1:
        raise RuntimeError(
            "the processes ended training with different weights (trainable sha256 by "
            f"rank: {hashes}); data-parallel ranks must stay identical, so this run's "
            "result cannot be trusted"
        )
    return hashes


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    unknown = [n for n in state if n not in params]
    if unknown:
        raise RuntimeError(f"checkpoint names parameters this model lacks: {unknown[:3]}")
    absent = [n for n, p in params.items() if p.requires_grad and n not in state]
    if absent:
        raise RuntimeError(f"checkpoint lacks trained parameters: {absent[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def make_optimizer(model, args: TrainArgs) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            # No weight decay on biases and norm scales (standard AdamW practice).
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr)


def make_scheduler(optimizer, args: TrainArgs, total_steps: int):
    warmup = round(args.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if args.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if args.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Checkpoints:
    """checkpoint/ in the run directory: written atomically, read on resume."""

    def __init__(self, folder: Path):
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def save(self, model, optimizer, scheduler, state: LoopState, best: dict | None) -> None:
        def fill(tmp: Path) -> None:
            save_file(trainable_state(model), tmp / "trainable.safetensors")
            if best is not None:
                save_file(best, tmp / "best.safetensors")
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                tmp / "optimizer.pt",
            )
            write_json_atomic(tmp / "state.json", asdict(state))

        write_dir_atomic(self.folder, fill)

    def load(self, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
        """Everything or nothing: a damaged checkpoint is one clear error."""
        try:
            return self._load(model, optimizer, scheduler)
        except Exception as exc:  # safetensors, torch, json: each fails its own way
            raise PeftlabError(
                f"the checkpoint in {self.folder} is damaged ({type(exc).__name__}: "
                f"{first_line(exc)}); delete {self.folder} to restart training from the "
                "last milestone in run.json (the base evaluation is kept)"
            ) from None

    def _load(self, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
        load_trainable_state(model, load_file(self.folder / "trainable.safetensors"))
        # Our own file of tensors and numbers: weights_only loading, no arbitrary pickle.
        extra = torch.load(self.folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        state = LoopState(**json.loads((self.folder / "state.json").read_text()))
        best_file = self.folder / "best.safetensors"
        return state, load_file(best_file) if best_file.exists() else None


def train(
    model,
    task,
    train_items,
    val_items,
    args: TrainArgs,
    checkpoint_dir: Path,
    log=print,
    on_validation=None,
    track=None,
) -> dict:
    """Train `model` in place; return the training record (timing, history, best).

    on_validation(index, value, final) hears each validation score (a tuning trial reports
    it to its pruner, which may stop the run by raising TrialPruned). track(values, step)
    hears each step's loss and rate and each validation's scores (tracking.py)."""
    track = track or (lambda values, step: None)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    lengths = [len(it.input_ids) for it in train_items]
    windows_per_epoch = len(epoch_windows(lengths, args.batch_size, args.grad_accum, 0, 0))
    windows_per_epoch = max(1, windows_per_epoch // accelerator.num_processes)
    total_steps = args.max_steps or math.ceil(args.epochs * windows_per_epoch)
    eval_every = validation_interval(args, total_steps)

    use_fast_dropout(model)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)  # the model itself, under any wrapper
    checkpoints = Checkpoints(checkpoint_dir)
    state, best = LoopState(), None
    if checkpoints.exists():
        state, best = checkpoints.load(unwrapped, optimizer, scheduler)
        log(f"resumed from {checkpoint_dir} at step {state.step}/{total_steps}")

    metric, higher_is_better = task.validation

    def validate() -> None:
        nonlocal best
        metrics = evaluate(
            unwrapped,
            task,
            val_items,
            args.eval_batch_size,
            args.precision,
            device,
            desc="validate",
            generate=False,
        )
        entry = {"step": state.step, "epoch": state.epoch}
        entry.update({k: metrics[k] for k in task.validation_keys})
        state.evals.append(entry)
        track({f"validation/{k}": metrics[k] for k in task.validation_keys}, state.step)
        value = metrics[metric]
        improved = state.best_metric is None or (
            value > state.best_metric if higher_is_better else value < state.best_metric
        )
        if improved:
            state.best_metric, state.best_step = value, state.step
            if args.keep_best:
                best = trainable_state(unwrapped)
        log(
            f"step {state.step}: validation {metric} {value:.4f} (best {state.best_metric:.4f}"
            f" at step {state.best_step})"
        )
        if on_validation is not None:
            on_validation(len(state.evals), value, state.step >= total_steps)

    model.train()
    release_freed_memory()
    progress = Progress(total_steps, args, log, accelerator.num_processes)
    share = threads.core_share(args.threads)
    # One progress bar for the whole group: rank 0's.
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        disable=None if accelerator.is_main_process else True,
    )
    with (
        Meter() as meter,
        bf16_frozen_weights(unwrapped, args.precision),
        cpu_attention(unwrapped, max(lengths)),
        share,
    ):
        frozen = cache_frozen_layers(
            accelerator, unwrapped, task, train_items, args, total_steps > windows_per_epoch, log
        )
        if frozen is not None:
            state.train_seconds += frozen.build_seconds
        while state.step < total_steps:
            windows = epoch_windows(
                lengths, args.batch_size, args.grad_accum, args.seed, state.epoch
            )
            windows = windows[accelerator.process_index :: accelerator.num_processes]
            windows = windows[:windows_per_epoch]
            for window in windows[state.window :]:
                started = time.perf_counter()
                loss = train_step(
                    model,
                    task,
                    train_items,
                    window,
                    optimizer,
                    scheduler,
                    accelerator,
                    args,
                    frozen,
                )
                state.train_seconds += time.perf_counter() - started
                share.check()
                state.window += 1
                state.step += 1
                state.samples += sum(len(b) for b in window) * accelerator.num_processes
                state.history.append(
                    {
                        "step": state.step,
                        "epoch": state.epoch,
                        "loss": loss,
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
                entry = state.history[-1]
                track({"train/loss": loss, "train/lr": entry["lr"]}, state.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if bar.disable:  # no live bar: log lines
                    progress.step_done(state)
                done = state.step >= total_steps
                end_of_epoch = state.window == len(windows)
                if (
                    (eval_every and state.step % eval_every == 0)
                    or (not eval_every and end_of_epoch)
                    or done
                ) and (not state.evals or state.evals[-1]["step"] != state.step):
                    if done and not state.evals and args.score_on == "test":
                        # A single validation at the very end selects nothing: the test
                        # evaluation of the same weights follows at once.
                        log("validation skipped: one final validation would select nothing")
                    else:
                        validate()
                if progress.checkpoint_due(state.step, done):
                    if accelerator.is_main_process:
                        checkpoints.save(unwrapped, optimizer, scheduler, state, best)
                    accelerator.wait_for_everyone()
                if done:
                    break
            else:
                state.epoch += 1
                state.window = 0
    bar.close()

    if args.keep_best and best is not None and state.best_step != state.step:
        load_trainable_state(unwrapped, best)
        log(f"kept the best weights: step {state.best_step} ({metric} {state.best_metric:.4f})")
    hashes = rank_weight_hashes(unwrapped, accelerator)
    return {
        "runtime_s": round(meter.seconds, 3),
        "train_compute_s": round(state.train_seconds, 3),
        "samples": state.samples,
        "steps": state.step,
        "epochs": round(state.samples / max(1, len(train_items)), 3),
        "samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 3),
        "steps_per_s": round(state.step / max(state.train_seconds, 1e-9), 3),
        "thread_count_changes": share.changes,
        "peak_memory_mb": round(meter.peak_memory_mb, 1),
        "best_step": state.best_step,
        "best_validation": state.best_metric,
        "cuda_peak_memory_mb": meter.cuda_peak_memory_mb,
        "num_processes": accelerator.num_processes,
        "frozen_layers_cached": frozen.stack.first_trained if frozen else 0,
        "rank_weight_sha256": hashes,
        "history": state.history,
        "evals": state.evals,
    }


def validation_interval(args: TrainArgs, total_steps: int) -> int:
    """Steps between validations: --validations spreads them evenly, else --eval-every."""
    if args.validations:
        return max(1, math.ceil(total_steps / args.validations))
    return args.eval_every


def cache_frozen_layers(accelerator, model, task, items, args, repeats: bool, log):
    """The frozen lower layers' outputs, computed once (frozen_cache.py), when they pay."""
    if not args.cache_frozen_layers or not repeats or accelerator.num_processes > 1:
        return None  # each example is seen once, or ranks would each store them all
    started = time.perf_counter()
    built = frozen_cache.build(
        model,
        task,
        items,
        args.eval_batch_size,
        args.precision,
        accelerator.device,
    )
    if not isinstance(built, frozen_cache.FrozenCache):
        if built:
            log(f"the frozen lower layers run on every step: {built}")
        return None
    built.build_seconds = time.perf_counter() - started
    log(
        f"layers 0-{built.stack.first_trained - 1} are frozen: their outputs for the "
        f"{len(items)} training examples were computed once ({built.megabytes:.0f} MB, "
        f"{built.build_seconds:.1f} s) and are reused every epoch"
    )
    return built


def train_step(
    model, task, items, window, optimizer, scheduler, accelerator, args, frozen=None
) -> float:
    """One optimizer step over an accumulation window; returns the window's mean loss.

    The loss is a mean over the task's units (examples, or target tokens for generation):
    each batch is weighted by its share of the window's units, so a window equals one big
    batch whatever the accumulation.
    """
    units = [sum(task.units(items[j]) for j in indices) for indices in window]
    total = max(1, sum(units))
    loss_sum = 0.0
    for i, indices in enumerate(window):
        batch = {
            k: v.to(accelerator.device)
            for k, v in task.collate([items[j] for j in indices]).items()
        }
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        feeding = (
            frozen.feeding(indices, batch["attention_mask"]) if frozen else contextlib.nullcontext()
        )
        with sync, feeding, autocast(args.precision, accelerator.device):
            loss = task.loss(model, batch)
            accelerator.backward(loss * units[i] / total)
        loss_sum += loss.item() * units[i]
    if args.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total
