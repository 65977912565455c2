"""Saving what was trained: a standard peft adapter (or a whole model for `full`) plus a
manifest (peftlab.json) with what is needed to use it again."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from peftlab.data.assets import sha256_file
from peftlab.fsutil import dir_size_bytes, write_dir_atomic, write_json_atomic
from peftlab.methods import residual_init
from peftlab.training.trainable import trainable_state

MANIFEST = "peftlab.json"
MANIFEST_VERSION = 1


NATIVE_WEIGHTS = "peftlab_weights.safetensors"


HASHED_CONFIGS = ("adapter_config.json",)  # an edited target_modules changes the model


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every weight file and of peft's adapter config: lets a loader tell a
    truncated or altered file."""
    files = [*folder.glob("*.safetensors"), *(folder / n for n in HASHED_CONFIGS)]
    return {p.name: sha256_file(p) for p in sorted(files) if p.is_file()}


def save_artifact(model, tokenizer, folder: Path, manifest: dict, kind: str) -> dict:
    """Write the adapter folder atomically; return {"path", "size_mb", "weights_mb"}.

    kind "peft": peft's adapter_config.json + adapter_model.safetensors (with any
    modules_to_save, e.g. a new classification head); "native" (bottleneck adapters,
    BitFit): the trained tensors only; "full": the whole model and its tokenizer.
    """

    def fill(tmp: Path) -> None:
        if kind == "native":
            save_file(trainable_state(model), tmp / NATIVE_WEIGHTS)
        elif residual_init.has_residual_base(model):
            residual_init.save_as_plain_lora(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if kind == "full":
            tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / MANIFEST,
            {"format_version": MANIFEST_VERSION, **manifest, "files": weight_hashes(tmp)},
        )

    write_dir_atomic(folder, fill)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {
        "path": str(folder),
        "size_mb": round(dir_size_bytes(folder) / 2**20, 3),
        "weights_mb": round(weights / 2**20, 3),
        "format": {"peft": "peft", "native": "peftlab", "full": "transformers"}[kind],
    }
