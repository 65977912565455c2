"""`peftlab run`: load -> evaluate -> attach a method -> train -> evaluate -> record.

Reads top to bottom like the algorithm. Every milestone is written to run.json at once,
so `peftlab run --resume RUN_DIR` after a crash (even kill -9) skips what is done and
continues training from the last checkpoint.

Under torchrun or accelerate launch every process runs this same function: all of them
load, evaluate and train (data parallel), and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from peftlab.adapters.artifact import save_artifact
from peftlab.config import RunConfig, from_dict
from peftlab.data import assets, sources
from peftlab.errors import PeftlabError, TrialPruned
from peftlab.failure import describe_os_error, first_line, write_traceback
from peftlab.fsutil import remove_stale_temporaries
from peftlab.methods.registry import get_method
from peftlab.methods.switching import base_model
from peftlab.models import loading
from peftlab.models.loading import count_parameters
from peftlab.runner import forgetting, shared_cache
from peftlab.runner.checks import checked, resolved
from peftlab.runner.record import RECORD_FILE, RunRecord, environment
from peftlab.runner.report import write_report
from peftlab.runner.tracking import Tracking, scalars
from peftlab.tasks import TASK_SPECS
from peftlab.tasks.classification import Encoded
from peftlab.tasks.setup import build_task, model_info, padding_side
from peftlab.tasks.text_formats import TextItem
from peftlab.training import distributed, threads
from peftlab.training.evaluate import evaluate
from peftlab.training.loop import train


def run(
    cfg: RunConfig,
    run_dir: Path | None = None,
    log=None,
    shared_dir: Path | None = None,
    on_validation=None,
):
    """`shared_dir`: where the runs of one comparison share their data, its encoding and
    the base evaluation (runner/shared_cache.py); None computes them here. `on_validation`: hears
    every validation score (training/loop.py); a tuning trial's pruner stops the run through it."""
    distributed.init()  # first: what follows may depend on the rank
    log = distributed.main_only(log or say)
    unmet = distributed.unmet_process_request()
    if unmet:
        log(f"warning: {unmet}")
    cfg = resolved(cfg)
    # The default name holds a timestamp: rank 0's choice is everyone's directory.
    run_dir = Path(distributed.broadcast_object(str(run_dir or cfg.out or default_run_dir(cfg))))
    with lock_run_dir(run_dir):  # one writer per run directory; rank 0 holds it
        check_run_dir(run_dir, cfg)
        try:
            return execute(cfg, run_dir, log, shared_dir, on_validation)
        except TrialPruned as pruned:
            log(f"stopped by the tuning pruner: {pruned}")
            return record_pruned(run_dir, pruned)
        except Exception as exc:
            record_failure(run_dir, exc)
            raise


@dataclass
class Prepared:
    """What a run has once its model, data and run directory are ready."""

    cfg: RunConfig
    run_dir: Path
    record: RunRecord
    model: object
    method: object
    tokenizer: object
    info: object
    task: object
    items: dict
    quantized: bool
    shared_dir: Path | None


def execute(cfg: RunConfig, run_dir: Path, log, shared_dir: Path | None, on_validation):
    prepared = prepare(cfg, run_dir, log, shared_dir)
    with Tracking.start(cfg, run_dir, prepared.record) as tracking:
        if tracking.trackers:
            log(f"tracking: {tracking.where(run_dir)}")
        prepared.record.save()
        train_and_score(prepared, tracking, log, on_validation)
    distributed.barrier()  # everyone returns once the run directory is complete
    return prepared.record


def prepare(cfg: RunConfig, run_dir: Path, log, shared_dir: Path | None) -> Prepared:
    """Model, method, data and the run directory's record, in the order that checks
    everything a user can get wrong before the run directory is created."""
    cpu_threads = threads.configure(cfg.train.threads)
    seed_everything(cfg.train.seed)
    with distributed.main_first():  # a built-in model is converted once, by rank 0
        source = assets.resolve_model(cfg.model.name)
    info = model_info(source, cfg)
    method = get_method(cfg.method.name)
    tokenizer = loading.load_tokenizer(source, padding_side=padding_side(info))
    dataset, task, items = task_data(cfg, info, tokenizer, shared_dir)
    log(f"data: {dataset.description}: {dataset.sizes} examples, {describe(dataset)}")

    extra = method.load_kwargs(cfg) if method.load_kwargs else None
    model = loading.load_model(
        source, info, dataset.label_names, tokenizer, cfg.model.allow_pickle, extra
    )
    if not extra:  # a quantized base is placed by its loader
        model.to(distributed.device())  # this process's own GPU when there are several
    seed_everything(cfg.train.seed)
    model = method.attach(model, cfg.method, info)

    # Everything a user can get wrong has been checked: only now create the run directory.
    record = open_record(run_dir, cfg)
    log(f"run directory: {run_dir}")
    check_process_count(record, run_dir)
    record["environment"] = environment(
        cfg.train.seed,
        assets.model_fingerprint(source),
        dataset.sha256,
        distributed.num_processes(),
        distributed.backend(),
    )
    record["environment"]["threads"] = cpu_threads
    record["environment"]["precision"] = cfg.train.precision  # resolved: what ran
    record["data"] = data_summary(dataset, task)
    return Prepared(cfg, run_dir, record, model, method, tokenizer, info, task, items,
                    bool(extra), shared_dir)  # fmt: skip


def train_and_score(p: Prepared, tracking: Tracking, log, on_validation) -> None:
    """Base scores, training, test scores, adapter and report."""
    cfg, record, model, task = p.cfg, p.record, p.model, p.task
    trainable, total = count_parameters(model)
    testing = cfg.train.score_on == "test"  # else a tuning trial: validation only
    if testing:
        evaluate_base(record, model, task, p.items["test"], cfg, p.shared_dir, p.quantized, log)
        tracking.log(scalars("test_base", record["before"]), step=0)
    resuming = (p.run_dir / "checkpoint").is_dir() or "train" in record
    probe = (
        forgetting.Probe.start(cfg, p.info, p.tokenizer, model, p.run_dir, resuming)
        if testing
        else None
    )
    log(
        f"{p.method.name}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.4f}%)"
    )
    result = train(
        model,
        task,
        p.items["train"],
        p.items["validation"],
        cfg.train,
        p.run_dir / "checkpoint",
        log=log,
        on_validation=on_validation,
        track=tracking.log,
        hooks=p.method.loop_hooks(cfg.method) if p.method.loop_hooks else None,
    )
    record["train"] = {
        **result,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 6),
    }
    record.save()
    if testing:
        score_on_test(record, model, task, p.items["test"], cfg, probe, log)
        if distributed.is_main():
            record["adapter"] = save_artifact(
                model,
                p.tokenizer,
                p.run_dir / "adapter",
                manifest(cfg, p.info, p.tokenizer, record),
                p.method.kind,
            )
    else:
        metric, _ = task.validation
        record["validation"] = {metric: result["best_validation"], "metric": metric}
        log(f"validation {metric}: {result['best_validation']:.4f} (best of the run)")
    finish(record, tracking)


def score_on_test(record, model, task, test_items, cfg: RunConfig, probe, log) -> None:
    """The tuned model's test metrics and its forgetting, into the record."""
    record["after"] = evaluate(
        model,
        task,
        test_items,
        cfg.train.eval_batch_size,
        cfg.train.precision,
        desc="test (tuned)",
        compile=cfg.train.compile_inference,
    )
    log(summary_line("tuned", record["after"], cfg.task.name))
    if probe is not None:
        record["forgetting"] = probe.finish(model)
        log(f"forgetting ({record['forgetting']['measure']}): {record['forgetting']['value']:g}")


def task_data(cfg: RunConfig, info, tokenizer, shared_dir: Path | None) -> tuple:
    """The split dataset, its task and its encoded splits; with `shared_dir`, loaded and
    encoded once for all the runs of a comparison."""

    def compute() -> tuple:
        dataset = sources.load(cfg.data, cfg.task.name)
        task = build_task(cfg, info, dataset, tokenizer)
        return dataset, task, {name: task.encode(rows) for name, rows in dataset.splits.items()}

    def dump() -> dict:
        dataset, _, items = compute()
        return shared_cache.dump_task_data(dataset, items)

    if shared_dir is None:
        return compute()
    entry = shared_cache.cached_json(shared_dir, f"data-{shared_cache.data_key(cfg)}", dump)
    item_type = Encoded if cfg.task.name == "classification" else TextItem
    dataset, items = shared_cache.load_task_data(entry, item_type)
    return dataset, build_task(cfg, info, dataset, tokenizer), items


def evaluate_base(record, model, task, test_items, cfg, shared_dir, quantized, log) -> None:
    """The base model's test metrics, once per run (kept in run.json for --resume) and,
    with `shared_dir`, once for all the runs of a comparison."""

    def compute() -> dict:
        # Every rank evaluates (same weights, same result): no rank idles into a timeout.
        log("evaluating the base model on the test split...")
        with base_model(model):
            return evaluate(
                model,
                task,
                test_items,
                cfg.train.eval_batch_size,
                cfg.train.precision,
                desc="test (base)",
            )

    if "before" not in record:
        key = f"before-{shared_cache.before_key(cfg, quantized)}"
        record["before"] = shared_cache.cached_json(shared_dir, key, compute)
        record.save()
    log(summary_line("base", record["before"], cfg.task.name))


def finish(record: RunRecord, tracking: Tracking) -> None:
    """Report, then "done" as the very last word: a run killed before it resumes and ends
    here; one killed after it is complete. The checkpoint only served --resume."""
    record.pop("error", None)
    if distributed.is_main() and "after" in record:  # a tuning trial has no test scores
        write_report(record)
    record["status"] = "done"
    record.save()
    tracking.log_outcome(record)
    if distributed.is_main():
        clean_finished(record.run_dir)


def clean_finished(run_dir: Path) -> None:
    # For `full` the checkpoint holds the whole model and its optimizer state.
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    remove_stale_temporaries(run_dir)


def record_pruned(run_dir: Path, pruned: TrialPruned) -> RunRecord:
    """A pruned tuning trial ends here: a verdict on its settings, not a failure."""
    record = RunRecord.open(run_dir)
    if distributed.is_main():
        record["pruned"] = {"at_validation": pruned.validation, "score": pruned.value}
        record["status"] = "pruned"
        record.save()
        clean_finished(run_dir)
    return record


def record_failure(run_dir: Path, exc: Exception) -> None:
    """A failed run says so in run.json, and keeps the traceback in error.log (noted on the
    exception, so the CLI's one line can point to it); --resume continues from there."""
    if not distributed.is_main() or not (run_dir / RECORD_FILE).is_file():
        return
    try:
        record = RunRecord.open(run_dir)
        record["status"] = "failed"
        record["error"] = {"type": type(exc).__name__, "message": first_line(exc)}
        if not isinstance(exc, PeftlabError):
            exc.add_note(f"traceback: {write_traceback(exc, run_dir)}")
        record.save()
    except (OSError, PeftlabError):
        pass  # the record could not be written either: the original error says more


def resume(run_dir: str | Path, log=None) -> RunRecord:
    distributed.init()
    log = distributed.main_only(log or say)
    record = RunRecord.open(run_dir)
    if record.get("status") == "done":
        if distributed.is_main():
            clean_finished(Path(run_dir))  # a kill right after "done" may have left these
        log(f"{run_dir} already finished; nothing to resume")
        return record
    return run(checked(from_dict(record["config"])), Path(run_dir), log)


def say(message: str) -> None:
    print(message, flush=True)  # flushed: progress shows up in logs and pipes at once


def check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """A run directory is reused only to continue the same config's unfinished run."""
    if not (run_dir / RECORD_FILE).exists():
        return
    record = RunRecord.open(run_dir)
    if record["config"] != cfg.to_dict():
        raise PeftlabError(
            f"'{run_dir}' already holds a run with another config; choose a new --out, "
            f"or continue that run with: peftlab run --resume {run_dir}"
        )
    if record.get("status") == "done":
        raise PeftlabError(
            f"'{run_dir}' already holds this run, finished; choose a new --out to run it "
            "again (or delete the folder)"
        )


LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock in the run directory while the run works in it.

    Taking it also proves, before any model is loaded, that --out can be written. A
    folder made here that never got a run.json (a setting was refused) is removed again."""
    if not distributed.is_main():
        yield
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise PeftlabError(f"--out '{run_dir}' is a file; choose a folder for the run")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole run)
    except OSError as exc:
        raise PeftlabError(f"--out '{run_dir}': {describe_os_error(exc)}") from None
    try:
        with handle:
            hold(handle, run_dir)
            remove_stale_temporaries(run_dir)  # a killed writer's leftovers; we hold the lock
            yield
    finally:
        if created and not (run_dir / RECORD_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)


def hold(handle, run_dir: Path) -> None:
    """Take the lock without waiting; the lock file names the process holding it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise PeftlabError(
            f"'{run_dir}' is in use by another peftlab run ({holder}); wait for it to end "
            "or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()


def check_process_count(record: RunRecord, run_dir: Path) -> None:
    """A checkpoint continues only with the process count that wrote it: the count decides
    which batches each process takes and how many steps an epoch has."""
    before = record.get("environment", {}).get("num_processes", 1)
    now = distributed.num_processes()
    if before != now and (run_dir / "checkpoint").is_dir():
        raise PeftlabError(
            f"'{run_dir}' was trained by {before} process(es) and this is {now}; "
            f"resume it with {before}"
        )


def open_record(run_dir: Path, cfg: RunConfig) -> RunRecord:
    """Rank 0 opens (or starts) run.json; the other ranks get a copy that never writes."""
    record = None
    if distributed.is_main():
        if (run_dir / "run.json").exists():
            record = RunRecord.open(run_dir)
        else:
            record = RunRecord.start(run_dir, cfg.to_dict())
    data = distributed.broadcast_object(dict(record) if record is not None else None)
    return record if record is not None else RunRecord(run_dir, data, writer=False)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.run_name()}"


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def describe(dataset: sources.TaskData) -> str:
    if dataset.label_names:
        return f"labels {dataset.label_names}"
    text, target = dataset.columns
    return f"columns {text} -> {target}" if target else f"column {text} (plain text)"


def data_summary(dataset: sources.TaskData, task) -> dict:
    summary = {
        "description": dataset.description,
        "sizes": dataset.sizes,
        "template": task.template,
    }
    if dataset.label_names:
        summary.update(
            label_names=dataset.label_names,
            label_counts={
                split: [sum(ex.label == i for ex in rows) for i in range(len(dataset.label_names))]
                for split, rows in dataset.splits.items()
            },
            label_words=getattr(task.head, "label_words", None),
        )
    else:
        summary.update(columns=list(dataset.columns), chat_template=task.chat)
    return summary


def manifest(cfg: RunConfig, info: loading.ModelInfo, tokenizer, record: RunRecord) -> dict:
    data_info = record["data"]
    spec = TASK_SPECS[cfg.task.name]
    manifest = {
        "base_model": cfg.model.name,
        "base_model_sha256": record["environment"]["model_sha256"],
        "model_kind": info.kind,
        "task": cfg.task.name,
        "head": info.head,
        "method": cfg.method.name,
        "label_names": data_info.get("label_names"),
        "template": data_info["template"],
        "label_words": data_info.get("label_words"),
        "max_length": cfg.model.max_length,
        "tokenizer": {
            "padding_side": tokenizer.padding_side,
            "truncation_side": tokenizer.truncation_side,
        },
        "columns": data_info.get("columns"),
        "metrics": {k: record["after"][k] for k in (*spec.scores, "loss")},
        "config": cfg.to_dict(),  # resolved: rebuilds the task exactly (peftlab predict)
    }
    if cfg.task.name != "classification":
        manifest["chat_template"] = data_info["chat_template"]
        manifest["generation"] = {
            "max_target_length": cfg.task.max_target_length,
            "max_new_tokens": cfg.task.max_new_tokens,
            "num_beams": cfg.task.num_beams,
        }
    return manifest


def summary_line(name: str, metrics: dict, task: str = "classification") -> str:
    keys = dict.fromkeys((*TASK_SPECS[task].scores, "loss"))
    shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
    return f"{name}: {shown}  ({metrics['samples_per_s']:.1f} samples/s)"
