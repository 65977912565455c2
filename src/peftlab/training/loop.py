"""ONE training loop for every method (accelerate underneath).

AdamW with weight decay, warmup then decay (transformers' schedules), gradient
accumulation, epochs or max steps, validation every N steps keeping the best weights, and
checkpoints a killed run resumes from bit for bit (checkpoints.py). `train()` reads like
the algorithm; `Fit` holds the run's parts and names each phase.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from peftlab.config import TrainArgs
from peftlab.models.loading import cpu_attention, no_kv_cache
from peftlab.training import distributed, flops, frozen_cache, threads
from peftlab.training.checkpoints import Checkpoints, LoopState
from peftlab.training.compile_plan import CompilePlan
from peftlab.training.evaluate import evaluate
from peftlab.training.fast_dropout import use_fast_dropout
from peftlab.training.hooks import NO_HOOKS, LoopHooks, RunStart
from peftlab.training.precision import autocast, bf16_frozen_weights
from peftlab.training.progress import Progress
from peftlab.training.resources import Meter, release_freed_memory
from peftlab.training.trainable import load_trainable_state, trainable_sha256, trainable_state


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


def fused_kernel_fits(params: list) -> bool:
    """torch's fused AdamW (one kernel over every tensor) where each trainable tensor
    allows it. bench/optimizer_step.py, AVX2 EPYC, 2 threads: 5.6-6.1x faster steps than
    the default foreach form on MiniLM's 22.7M weights (89-96 -> 16 ms, over a quarter of
    a full fine-tuning step; whole `full` runs 1.51x), 3-4.6x on LoRA's (about 1% of its
    step); weights equal to 1e-7."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def make_optimizer(model, args: TrainArgs, lr_scale=None) -> torch.optim.Optimizer:
    """AdamW; `lr_scale(name)` multiplies a parameter's rate (LoRA+ gives LoRA's B
    matrices a higher one); the schedule scales every group alike."""
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            # No weight decay on biases and norm scales (standard AdamW practice).
            decays = not (param.ndim < 2 or "norm" in name.lower())
            scale = lr_scale(name) if lr_scale else 1.0
            groups.setdefault((decays, scale), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": args.weight_decay if decays else 0.0,
                "lr": args.lr * scale,
            }
            for (decays, scale), params in groups.items()
        ],
        lr=args.lr,
        fused=fused_kernel_fits([p for params in groups.values() for p in params]),
    )


# --scheduler's names -> transformers' (the rate warms up linearly in each).
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def make_scheduler(optimizer, args: TrainArgs, total_steps: int):
    """transformers' schedules, with the Trainer's warmup steps (the peer's convention)."""
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULERS[args.scheduler],
        optimizer,
        num_warmup_steps=math.ceil(args.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


@dataclass
class Running:
    """What holds while the loop runs: the meters, the progress shown and the frozen
    layers' stored outputs (None: they run on every step)."""

    meter: Meter
    share: threads.CoreShare
    bar: tqdm
    progress: Progress
    frozen: frozen_cache.FrozenCache | None = None
    flops_per_sample: float = 0.0
    threads: int = 1
    plan: CompilePlan | None = None  # fused LoRA layers or compiled blocks


class Fit:
    """One training run's moving parts, set up once, then phases with a name each
    (litgpt's fit/validate, torchtune's recipe methods): resume, running, epoch, step,
    validate, restore_best, summary."""

    def __init__(
        self,
        model,
        task,
        train_items,
        val_items,
        args: TrainArgs,
        log,
        on_validation,
        track,
        hooks: LoopHooks = NO_HOOKS,
    ):
        from accelerate import Accelerator

        self.task, self.train_items, self.val_items, self.args = task, train_items, val_items, args
        self.log, self.on_validation, self.track = log, on_validation, track
        self.hooks = hooks
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.lengths = [len(it.input_ids) for it in train_items]
        windows = len(epoch_windows(self.lengths, args.batch_size, args.grad_accum, 0, 0))
        self.windows_per_epoch = max(1, windows // self.accelerator.num_processes)
        self.total_steps = args.max_steps or math.ceil(args.epochs * self.windows_per_epoch)
        self.eval_every = validation_interval(args, self.total_steps)
        use_fast_dropout(model)
        if hooks.start:  # before the optimizer: EVA may change the ranks
            hooks.start(model, self.run_start())
        if hooks.optimizer:
            optimizer = hooks.optimizer(model, args)
        else:
            optimizer = make_optimizer(model, args, hooks.lr_scale)
        self.scheduler = make_scheduler(optimizer, args, self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)  # under any wrapper
        self.metric, self.higher_is_better = task.validation
        self.state, self.best = LoopState(), None
        self.checkpoints: Checkpoints | None = None

    def run_start(self) -> RunStart:
        items = self.train_items

        def batches(size: int = self.args.batch_size) -> list[dict]:
            return [self.task.collate(items[i : i + size]) for i in range(0, len(items), size)]

        return RunStart(self.total_steps, batches, self.task.loss)

    def resume(self, checkpoints: Checkpoints) -> None:
        """Go on from the checkpoint there is; later checkpoints are written there."""
        self.checkpoints = checkpoints
        if checkpoints.exists():
            self.state, self.best = checkpoints.load(self.unwrapped, self.optimizer, self.scheduler)
            self.log(
                f"resumed from {checkpoints.folder} at step {self.state.step}/{self.total_steps}"
            )

    @contextlib.contextmanager
    def running(self) -> Iterator[Running]:
        """Train mode, the measured span, precision, fused LoRA layers (or compiled
        blocks), attention, no key/value cache, thread settings, and the frozen layers'
        outputs computed once where that pays."""
        self.model.train()
        release_freed_memory()
        main = self.accelerator.is_main_process
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            disable=None if main else True,
        )  # one bar: rank 0's
        processes = self.accelerator.num_processes
        progress = Progress(self.total_steps, self.args, self.log, processes)
        share = threads.core_share(self.args.threads)
        plan = CompilePlan(
            self.unwrapped,
            self.args.compile_training,
            self.args.precision,
            self.accelerator.device,
            processes,
            self.log,
        )
        try:
            with (
                Meter() as meter,
                bf16_frozen_weights(self.unwrapped, self.args.precision),
                plan,
                cpu_attention(self.unwrapped, max(self.lengths)),
                no_kv_cache(self.unwrapped),
                share,
            ):
                running = Running(meter, share, bar, progress, threads=torch.get_num_threads())
                running.plan = plan
                repeats = self.total_steps > self.windows_per_epoch
                running.frozen = cache_frozen_layers(
                    self.accelerator,
                    self.unwrapped,
                    self.task,
                    self.train_items,
                    self.args,
                    repeats,
                    self.log,
                )
                if running.frozen is not None:
                    self.state.train_seconds += running.frozen.build_seconds
                running.flops_per_sample = self.flops_per_sample(running.frozen)
                plan.start()  # after the FLOP count and the frozen outputs: eager blocks
                yield running
        finally:
            bar.close()

    def flops_per_sample(self, frozen) -> float:
        """torch's FLOP count of a training batch of median length, forward and backward
        as the steps run it (frozen layers fed from their cache), per example."""
        windows = epoch_windows(self.lengths, self.args.batch_size, 1, self.args.seed, 0)
        batches = sorted(
            (w[0] for w in windows), key=lambda b: sum(self.lengths[i] for i in b) / len(b)
        )
        indices = batches[len(batches) // 2]
        batch = device_batch(self.task, self.train_items, indices, self.accelerator.device)
        feeding = frozen.feeding(indices, batch["attention_mask"]) if frozen else None
        device = self.accelerator.device
        counted = flops.count_flops(
            self.unwrapped, self.task, batch, self.args.precision, device, feeding
        )
        return counted / len(indices)

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def epoch(self, running: Running) -> None:
        """This process's share of the epoch's windows, from where the loop stands."""
        windows = epoch_windows(
            self.lengths,
            self.args.batch_size,
            self.args.grad_accum,
            self.args.seed,
            self.state.epoch,
        )
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        windows = windows[rank::processes][: self.windows_per_epoch]
        for window in windows[self.state.window :]:
            self.step(window, running)
            self.after_step(running, end_of_epoch=self.state.window == len(windows))
            if self.done:
                return  # the epoch is not over: a resume goes on inside it
        self.state.epoch += 1
        self.state.window = 0

    def step(self, window: list[list[int]], running: Running) -> None:
        started = time.perf_counter()
        loss = train_step(
            self.model,
            self.task,
            self.train_items,
            window,
            self.optimizer,
            self.scheduler,
            self.accelerator,
            self.args,
            running.frozen,
            self.step_hooks(),
        )
        state = self.state
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        steps_left = self.total_steps - state.step - 1
        running.plan.step_done(seconds, state.step + 1, steps_left)
        running.share.check()
        state.window += 1
        state.step += 1
        state.samples += sum(len(b) for b in window) * self.accelerator.num_processes
        lr = self.scheduler.get_last_lr()[0]
        state.history.append({"step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr})
        self.track({"train/loss": loss, "train/lr": lr}, state.step)
        running.bar.update(1)
        running.bar.set_postfix(loss=f"{loss:.4f}")
        if running.bar.disable:  # no live bar: log lines
            running.progress.step_done(state)

    def step_hooks(self) -> tuple:
        """The method's loss term and its call after the optimizer step, on this step."""
        model, step, hooks = self.unwrapped, self.state.step + 1, self.hooks
        extra = partial(hooks.extra_loss, model) if hooks.extra_loss else None
        after = hooks.after_optimizer_step
        return extra, partial(after, model, step) if after else None

    def after_step(self, running: Running, end_of_epoch: bool) -> None:
        """A validation and a checkpoint, when due."""
        if self.validation_due(end_of_epoch):
            if self.done and not self.state.evals and self.args.score_on == "test":
                # A single validation at the very end selects nothing: the test
                # evaluation of the same weights follows at once.
                self.log("validation skipped: one final validation would select nothing")
            else:
                with running.plan.eager():
                    self.validate()
        if running.progress.checkpoint_due(self.state.step, self.done):
            if self.accelerator.is_main_process:
                self.checkpoints.save(
                    self.unwrapped, self.optimizer, self.scheduler, self.state, self.best
                )
            self.accelerator.wait_for_everyone()

    def validation_due(self, end_of_epoch: bool) -> bool:
        state, every = self.state, self.eval_every
        due = (every and state.step % every == 0) or (not every and end_of_epoch) or self.done
        return bool(due) and (not state.evals or state.evals[-1]["step"] != state.step)

    def validate(self) -> None:
        """Score the validation split; keep the weights if they are the best so far."""
        task, state = self.task, self.state
        metrics = evaluate(
            self.unwrapped,
            task,
            self.val_items,
            self.args.eval_batch_size,
            self.args.precision,
            self.accelerator.device,
            desc="validate",
            generate=False,
        )
        state.evals.append(
            {
                "step": state.step,
                "epoch": state.epoch,
                **{k: metrics[k] for k in task.validation_keys},
            }
        )
        self.track({f"validation/{k}": metrics[k] for k in task.validation_keys}, state.step)
        value = metrics[self.metric]
        if state.best_metric is None or (
            value > state.best_metric if self.higher_is_better else value < state.best_metric
        ):
            state.best_metric, state.best_step = value, state.step
            if self.args.keep_best:
                self.best = trainable_state(self.unwrapped)
        self.log(
            f"step {state.step}: validation {self.metric} {value:.4f} (best "
            f"{state.best_metric:.4f} at step {state.best_step})"
        )
        if self.on_validation is not None:
            self.on_validation(len(state.evals), value, self.done)

    def restore_best(self) -> None:
        state = self.state
        if self.args.keep_best and self.best is not None and state.best_step != state.step:
            load_trainable_state(self.unwrapped, self.best, "the best weights kept in memory")
            self.log(
                f"kept the best weights: step {state.best_step} ({self.metric} "
                f"{state.best_metric:.4f})"
            )

    def summary(self, running: Running) -> dict:
        """The training record: timing, speed, memory, best validation, history."""
        state, meter, frozen = self.state, running.meter, running.frozen
        compute = max(state.train_seconds, 1e-9)
        peak = flops.peak_flops(self.args.precision, running.threads, self.accelerator.device)
        cost = flops.utilization(running.flops_per_sample, state.samples, compute, peak)
        return {
            **cost,
            "runtime_s": round(meter.seconds, 3),
            "train_compute_s": round(state.train_seconds, 3),
            "samples": state.samples,
            "steps": state.step,
            "epochs": round(state.samples / max(1, len(self.train_items)), 3),
            "samples_per_s": round(state.samples / compute, 3),
            "steps_per_s": round(state.step / compute, 3),
            "thread_count_changes": running.share.changes,
            "peak_memory_mb": round(meter.peak_memory_mb, 1),
            "best_step": state.best_step,
            "best_validation": state.best_metric,
            "cuda_peak_memory_mb": meter.cuda_peak_memory_mb,
            "num_processes": self.accelerator.num_processes,
            "frozen_layers_cached": frozen.stack.first_trained if frozen else 0,
            **running.plan.summary(),
            "rank_weight_sha256": rank_weight_hashes(self.unwrapped, self.accelerator),
            "history": state.history,
            "evals": state.evals,
        }


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
    hooks: LoopHooks = NO_HOOKS,
) -> dict:
    """Train `model` in place; return the training record (timing, history, best).

    on_validation(index, value, final) hears each validation score (a tuning trial reports
    it to its pruner, which may stop the run by raising TrialPruned). track(values, step)
    hears each step's loss and rate and each validation's scores (runner/tracking.py).
    hooks are what the method adds to the loop (training/hooks.py: LoRA+, AdaLoRA)."""
    fit = Fit(
        model,
        task,
        train_items,
        val_items,
        args,
        log,
        on_validation,
        track or (lambda values, step: None),
        hooks or NO_HOOKS,
    )
    fit.resume(Checkpoints(checkpoint_dir))
    with fit.running() as running:
        while not fit.done:
            fit.epoch(running)
    fit.restore_best()
    return fit.summary(running)


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


def device_batch(task, items, indices: list[int], device) -> dict:
    """The task's batch of items[indices], on the device."""
    return {k: v.to(device) for k, v in task.collate([items[j] for j in indices]).items()}


def train_step(
    model, task, items, window, optimizer, scheduler, accelerator, args, frozen=None, hooks=None
) -> float:
    """One optimizer step over an accumulation window; returns the window's mean loss.

    The loss is a mean over the task's units (examples, or target tokens for generation):
    each batch is weighted by its share of the window's units, so a window equals one big
    batch whatever the accumulation. hooks: the method's (extra_loss, after_optimizer_step),
    each a callable or None (Fit.step_hooks).
    """
    extra_loss, after_optimizer_step = hooks or (None, None)
    units = [sum(task.units(items[j]) for j in indices) for indices in window]
    total = max(1, sum(units))
    loss_sum = 0.0
    for i, indices in enumerate(window):
        batch = device_batch(task, items, indices, accelerator.device)
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        feeding = (
            frozen.feeding(indices, batch["attention_mask"]) if frozen else contextlib.nullcontext()
        )
        with sync:
            with feeding, autocast(args.precision, accelerator.device):
                loss = task.loss(model, batch)
                term = extra_loss() if extra_loss else 0.0
            # Backward outside autocast, as torch's AMP recipe says: its ops take the
            # forward's dtypes anyway, and gradient hooks see the parameters' own dtype.
            accelerator.backward((loss + term) * units[i] / total)
        loss_sum += loss.item() * units[i]
    if args.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    if after_optimizer_step:
        after_optimizer_step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total
