"""Adapters trained elsewhere: a plain peft folder (adapter_config.json and weights, no
peftlab.json), the form of nearly every adapter on the Hugging Face Hub.

Its manifest is written in memory from adapter_config.json: the base model from
`base_model_name_or_path` (or `--base`), the method from `peft_type`, and the task plain
generation (a prompt in, its continuation out; `predict --template` wraps inputs). Its
weights' sha256 cannot be known in advance, so what protects the user instead is the fit
check every peft adapter now passes after loading, peftlab's own too: each saved tensor
must land on a module of the base model with its shape.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from peftlab.errors import AdapterError
from peftlab.failure import first_line

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PROMPT_KEY = "prompt_embeddings"
PEFT_TYPES = {  # peft_type -> peftlab method
    "LORA": "lora",
    "IA3": "ia3",
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "ptuning",
}
GENERATION_TASK_TYPES = (None, "CAUSAL_LM", "SEQ_2_SEQ_LM")


def is_plain_peft(folder: Path) -> bool:
    return (folder / PEFT_CONFIG).is_file()


def read_peft_config(folder: Path) -> dict:
    path = folder / PEFT_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path} is damaged ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} is damaged (not a JSON object)")
    return config


def plain_manifest(folder: Path, base: str | None) -> dict:
    """The manifest peftlab would have written, from what the peft folder says."""
    from peftlab.adapters.artifact import MANIFEST_VERSION
    from peftlab.config import RunConfig
    from peftlab.training import precision

    config = read_peft_config(folder)
    method = method_of(folder, config)
    task_type = config.get("task_type")
    if task_type not in GENERATION_TASK_TYPES:
        raise AdapterError(
            f"'{folder}' is a {task_type} peft adapter; peftlab reads plain peft folders for "
            "generation (task_type CAUSAL_LM or SEQ_2_SEQ_LM): a classifier's labels live in "
            "the peftlab.json that `peftlab run` writes"
        )
    name = base or config.get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"{folder / PEFT_CONFIG} names no base model; give it with --base")
    if not (folder / PEFT_WEIGHTS).is_file() and not (folder / "adapter_model.bin").is_file():
        raise AdapterError(f"'{folder}' has {PEFT_CONFIG} but no {PEFT_WEIGHTS}")
    cfg = RunConfig()
    cfg.model.name, cfg.method.name, cfg.task.name = name, method, "causal_lm"
    cfg.train.precision = precision.resolve(cfg.train.precision)
    cfg = cfg.resolved()
    return {
        "format_version": MANIFEST_VERSION,
        "base_model": name,
        "task": "causal_lm",
        "method": method,
        "config": cfg.to_dict(),
        "files": {},
        "source": "peft",  # no peftlab.json: written from adapter_config.json
    }


def method_of(folder: Path, config: dict) -> str:
    peft_type = config.get("peft_type")
    method = PEFT_TYPES.get(peft_type)
    if method is None:
        raise AdapterError(
            f"'{folder}' is a {peft_type} adapter; peftlab loads peft folders of types "
            f"{', '.join(PEFT_TYPES)}"
        )
    return "dora" if method == "lora" and config.get("use_dora") else method


@contextlib.contextmanager
def ranks_as_loaded(config):
    """AdaLoRA cuts its modules to the saved ranks (rank_pattern) on every load: the load
    being checked did, and a second cut of the cut modules fails. Off while checking."""
    pattern = config.rank_pattern if config.peft_type == "ADALORA" else None
    if pattern is None:
        yield
        return
    config.rank_pattern = None
    try:
        yield
    finally:
        config.rank_pattern = pattern


def check_fits(model, folder: Path, adapter_name: str = "default") -> None:
    """Every tensor the folder saved has a place in the loaded model, with its shape
    (peft itself only warns about keys that match nothing, and loads the rest)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / PEFT_WEIGHTS
    if not path.is_file():
        return  # pickled weights the user allowed: peft loaded them its own way
    try:
        with ranks_as_loaded(model.peft_config[adapter_name]):
            result = set_peft_model_state_dict(model, load_file(path), adapter_name=adapter_name)
    except RuntimeError as exc:  # a size mismatch
        raise AdapterError(
            f"the weights in '{folder}' do not fit this base model ({first_line(exc)}); "
            "use the base model the adapter was trained on (--base)"
        ) from None
    # Prompt-style adapters save their virtual tokens as "prompt_embeddings", which peft
    # loads into the prompt encoder itself and then also reports as unexpected.
    unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if k != PROMPT_KEY]
    if unexpected:
        raise AdapterError(
            f"{len(unexpected)} tensors in '{path}' match no module of this base model "
            f"(e.g. {unexpected[0]}): it was trained on another architecture; use its own "
            "base model (--base)"
        )
