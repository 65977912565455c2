"""Opening a saved adapter folder safely: the manifest and every file are checked first.

An adapter folder (RUN_DIR/adapter) holds the standard peft files, or peftlab's own
weights for native methods, or a whole model for `full`, next to peftlab.json: the base
model's identity and weights fingerprint, the task, labels, template, tokenizer settings,
method, resolved config and metrics, and a sha256 for every weight file. Each problem a
user can meet (wrong folder, missing or damaged file, a manifest from a newer peftlab,
pickled weights, a different base model) is one clear error, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftlab.adapters import peft_folders
from peftlab.adapters.artifact import MANIFEST, MANIFEST_VERSION
from peftlab.config import RunConfig, from_dict
from peftlab.data.assets import ModelSource, model_fingerprint, sha256_file
from peftlab.data.sources import TaskData
from peftlab.errors import AdapterError
from peftlab.failure import first_line

REQUIRED_KEYS = ("base_model", "task", "method", "config", "files")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass
class AdapterPackage:
    folder: Path
    manifest: dict

    @property
    def config(self) -> RunConfig:
        return from_dict(self.manifest["config"])

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    def task_data(self) -> TaskData:
        """What the task needs from its data, as the manifest recorded it (no rows)."""
        columns = self.manifest.get("columns")
        return TaskData(
            splits={},
            label_names=self.manifest.get("label_names") or [],
            template=self.manifest.get("template"),
            label_words=self.manifest.get("label_words"),
            description="",
            sha256="",
            columns=tuple(columns) if columns else None,
        )


def open_package(
    folder: str | Path, allow_pickle: bool = False, base: str | None = None
) -> AdapterPackage:
    """A peftlab adapter folder, or a plain peft one (no peftlab.json: its manifest is
    written from adapter_config.json; `base` overrides the base model it names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder '{folder}' does not exist")
    if not (folder / MANIFEST).is_file() and peft_folders.is_plain_peft(folder):
        manifest = peft_folders.plain_manifest(folder, base)
    else:
        manifest = read_manifest(folder)
    check_files(folder, manifest, allow_pickle)
    return AdapterPackage(folder, manifest)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise AdapterError(
            f"'{folder}' has no {MANIFEST}: not an adapter folder written by peftlab "
            "(`peftlab run` writes one to RUN_DIR/adapter)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path} is damaged (not valid JSON: {exc})") from None
    if not isinstance(manifest, dict):
        raise AdapterError(f"{path} is damaged (not a JSON object)")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise AdapterError(f"{path} has no format_version; it was not written by peftlab")
    if version > MANIFEST_VERSION:
        raise AdapterError(
            f"{path} is format {version}, written by a newer peftlab; this one reads up to "
            f"format {MANIFEST_VERSION}. Upgrade peftlab (pip install -U peftlab)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise AdapterError(f"{path} lacks {missing}; re-save the adapter with this peftlab")
    files = manifest["files"]
    if not files or not isinstance(files, dict):
        raise AdapterError(
            f"{path} is damaged: 'files' must map each weight file to its sha256 "
            f"(found {files!r}); copy the adapter folder again from the run directory"
        )
    if not isinstance(manifest["config"], dict):
        raise AdapterError(f"{path} is damaged: 'config' is not a mapping of settings")
    return manifest


def check_files(folder: Path, manifest: dict, allow_pickle: bool) -> None:
    """Every file the manifest lists (weights, peft's adapter config) exists and has its
    recorded sha256."""
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not allow_pickle:
        raise AdapterError(
            f"'{folder}' holds pickled files {pickled}; loading them can run arbitrary code. "
            "peftlab loads safetensors only; pass --allow-pickle if you trust the files"
        )
    peft_config = folder / "adapter_config.json"
    if peft_config.is_file():
        try:
            if not isinstance(json.loads(peft_config.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AdapterError(
                f"{peft_config} is damaged ({first_line(exc)}); copy the adapter folder "
                "again from the run directory"
            ) from None
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise AdapterError(f"'{folder}' is missing {name}; copy the whole adapter folder")
        if sha256_file(path) != expected:
            raise AdapterError(
                f"{path} is damaged: its sha256 differs from the one in {MANIFEST} "
                "(truncated or modified after saving); copy it again from the run directory"
            )


def check_base(package: AdapterPackage, source: ModelSource) -> None:
    """Refuse a base model whose weights differ from the ones the adapter was trained on."""
    expected = package.manifest.get("base_model_sha256")
    actual = model_fingerprint(source)
    if expected and actual and expected != actual:
        raise AdapterError(
            f"the adapter in '{package.folder}' was trained on '{package.manifest['base_model']}'"
            f" (weights sha256 {expected[:12]}...), but '{source.name}' has weights sha256 "
            f"{actual[:12]}...; use the base model it was trained on (--base)"
        )
