"""checkpoint/ in a run directory: the loop's position and everything needed to go on
from it bit for bit, and only that: the trainable weights (a LoRA run's checkpoint is
megabytes, not the whole model), the best weights so far, optimizer, scheduler and the
random number generators' states (CPU, and every GPU's)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from peftlab.errors import PeftlabError
from peftlab.failure import first_line
from peftlab.fsutil import write_dir_atomic, write_json_atomic
from peftlab.training.trainable import load_trainable_state, trainable_state


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


class Checkpoints:
    """Written atomically (a kill mid-write leaves the previous one), read on resume."""

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
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
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
        weights = self.folder / "trainable.safetensors"
        load_trainable_state(model, load_file(weights), str(weights))
        # Our own file of tensors and numbers: weights_only loading, no arbitrary pickle.
        extra = torch.load(self.folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        cuda_rng = extra.get("cuda_rng") or []
        if cuda_rng and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)
        state = LoopState(**json.loads((self.folder / "state.json").read_text()))
        best_file = self.folder / "best.safetensors"
        return state, load_file(best_file) if best_file.exists() else None
