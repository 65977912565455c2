"""Experiment trackers (TensorBoard, MLflow, W&B, trackio, ...) through accelerate's own
tracker classes, the ones `Accelerator(log_with=...)` builds.

They are built here rather than by the training loop's Accelerator because a run's
story is longer than its loop: the base model's scores come before it, the test scores,
costs and run.json after it. Each tracker keeps its own conventions for where it writes:
TensorBoard writes event files into the run directory (`<run>/tensorboard`, so
`tensorboard --logdir <comparison>` shows every run of a comparison), MLflow follows
MLFLOW_TRACKING_URI (a file store or `sqlite:///mlflow.db` works offline), W&B follows
WANDB_MODE (`offline` works offline). Only the main process of a distributed run logs.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.errors import ConfigError, TrialPruned
from peftlab.training import distributed

# What `--report-to` accepts: accelerate's tracker names (accelerate.utils.LoggerType).
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "aim", "clearml")
TRACKERS += ("dvclive", "swanlab")
# The package each tracker needs, when its name is not the tracker's.
PACKAGES = {"mlflow": "mlflow-skinny (or mlflow)", "comet_ml": "comet-ml"}


def check_trackers(names: list[str]) -> None:
    """Unknown or uninstalled trackers are refused before anything runs."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("track.report_to", name, f"use one or more of: {', '.join(TRACKERS)}")
        if name not in available:
            package = PACKAGES.get(name, name)
            raise ConfigError(
                "track.report_to", name, f"{name} is not installed: pip install {package}"
            )


def prepare_shared(names: list[str], project: str) -> None:
    """Before a comparison's runs start side by side: the MLflow store's tables and the
    experiment are created once, here. Two runs creating them at once raced (a fresh
    SQLite store: "table _alembic_tmp_experiments already exists"; an experiment: two
    with one name)."""
    if "mlflow" in names:
        import mlflow

        if mlflow.get_experiment_by_name(project) is None:
            mlflow.create_experiment(project)


def flat_config(config: dict, prefix: str = "") -> dict:
    """section.name -> value, with lists joined and None spelled out: trackers take
    scalars only (TensorBoard's hparams, MLflow's params)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            flat[prefix + key] = ",".join(str(v) for v in value)
        else:
            flat[prefix + key] = "None" if value is None else value
    return flat


def scalars(prefix: str, metrics: dict) -> dict:
    """The numbers of a metrics dict, each named prefix/key."""
    return {
        f"{prefix}/{key}": value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


class Tracking:
    """The trackers of one run; with none asked for (or off the main process) every call
    does nothing."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    @classmethod
    def start(cls, cfg, run_dir: Path, record) -> Tracking:
        names = cfg.track.report_to or []
        if not names or not distributed.is_main():
            return cls([])
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        project = cfg.track.project or "peftlab"
        run_name = cfg.run_name()
        previous = record.get("tracking", {})
        init = {
            "tensorboard": {"run_name": "tensorboard", "logging_dir": str(run_dir)},
            "mlflow": {
                "experiment_name": project,
                "run_name": run_name,
                "run_id": previous.get("mlflow_run_id"),  # a resumed run goes on in place
                "tags": {"peftlab.run_dir": str(run_dir), "peftlab.method": cfg.method.name},
            },
            "wandb": {"run_name": project, "name": run_name, "group": project, "dir": str(run_dir)},
            "trackio": {"run_name": project, "name": run_name, "group": project},
        }
        trackers = []
        for name in names:
            tracker = LOGGER_TYPE_TO_CLASS[name](**init.get(name, {"run_name": project}))
            tracker.start()
            trackers.append(tracker)
        tracking = cls(trackers)
        for tracker in trackers:
            tracker.store_init_configuration(flat_config(cfg.to_dict()))
        record["tracking"] = {"trackers": names, "project": project, **tracking.ids()}
        return tracking

    def where(self, run_dir: Path) -> str:
        """Where each tracker writes, for the run's log."""
        places = []
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                places.append(f"tensorboard: {run_dir / 'tensorboard'}")
            elif tracker.name == "mlflow":
                import mlflow

                run = tracker.active_run.info
                places.append(f"mlflow: {mlflow.get_tracking_uri()} run {run.run_id}")
            else:
                places.append(tracker.name)
        return "; ".join(places)

    def ids(self) -> dict:
        found = {}
        for tracker in self.trackers:
            if tracker.name == "mlflow":
                found["mlflow_run_id"] = tracker.active_run.info.run_id
                found["mlflow_experiment_id"] = tracker.active_run.info.experiment_id
        return found

    def log(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_outcome(self, record) -> None:
        """The test scores (base and tuned), the costs and run.json/report.md."""
        train = record.get("train", {})
        step = train.get("steps", 0)
        values = {
            **scalars("test_base", record.get("before", {})),
            **scalars("test", record.get("after", {})),
            **scalars("cost", {k: v for k, v in train.items() if not isinstance(v, list)}),
        }
        if "forgetting" in record:
            values["forgetting"] = record["forgetting"]["value"]
        self.log(values, step)
        for tracker in self.trackers:
            if hasattr(tracker, "log_artifact"):  # MLflow: the run's own files
                for name in ("run.json", "report.md"):
                    if (record.run_dir / name).is_file():
                        tracker.log_artifact(str(record.run_dir / name))

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Every tracker closed, a failed or pruned run marked so where the tracker can."""
        for tracker in self.trackers:
            if exc_type is not None and tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status="KILLED" if exc_type is TrialPruned else "FAILED")
            else:
                tracker.finish()
        self.trackers = []
