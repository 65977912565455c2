"""The run record (run.json): the public, reproducible account of one run.

It is written at every milestone (start, baseline, training, test, adapter), atomically,
so a killed run leaves a valid record that says how far it got, and `--resume` picks up
from it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

from peftlab.errors import PeftlabError
from peftlab.fsutil import write_json_atomic
from peftlab.training.flops import machine

FORMAT_VERSION = 1
RECORD_FILE = "run.json"
PACKAGES = (
    "peftlab",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "numpy",
)


class RunRecord(dict):
    """A dict with a home: `save()` writes it to <run_dir>/run.json atomically.

    writer=False makes `save()` a no-op: in a run of several processes only rank 0 writes.
    """

    def __init__(self, run_dir: Path, data: dict, writer: bool = True):
        super().__init__(data)
        self.run_dir = Path(run_dir)
        self.writer = writer

    @classmethod
    def start(cls, run_dir: Path, config: dict) -> RunRecord:
        record = cls(
            run_dir,
            {
                "format_version": FORMAT_VERSION,
                "status": "running",
                "started_at": now(),
                "config": config,
            },
        )
        record.save()
        return record

    @classmethod
    def open(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RECORD_FILE
        if not path.is_file():
            raise PeftlabError(f"'{run_dir}' is not a run directory: it has no {RECORD_FILE}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PeftlabError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise PeftlabError(
                f"{path} is damaged: it holds no run record with a config; restore it, or "
                "delete the folder and start the run again"
            )
        if not isinstance(data.get("format_version", 0), int):
            raise PeftlabError(f"{path} is damaged: format_version is not a number")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise PeftlabError(
                f"{path} was written by a newer peftlab (format {data['format_version']}); "
                "upgrade peftlab to read it"
            )
        return cls(run_dir, data)

    def save(self) -> None:
        self["updated_at"] = now()
        if self.writer:
            write_json_atomic(self.run_dir / RECORD_FILE, dict(self))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(
    seed: int,
    model_sha256: str | None,
    data_sha256: str,
    num_processes: int = 1,
    distributed_backend: str | None = None,
) -> dict:
    this = machine()  # reads /proc/cpuinfo once
    env = {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": this["device"],
        "cpu_flags": this["flags"],  # those that set its matmul speed
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": seed,
        "model_sha256": model_sha256,
        "data_sha256": data_sha256,
        "num_processes": num_processes,
        "distributed_backend": distributed_backend,  # "gloo", "nccl"; None: one process
    }
    return env
