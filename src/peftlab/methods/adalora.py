"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form whose rank budget moves, during training,
to the weights whose singular values matter most.

peft holds the method; the schedule is the training loop's part, through its hooks
(training/hooks.py): the budget's phases are set from the run's own step count (peft
needs `total_step` up front, which only the loop knows), ranks are reallocated after each
optimizer step while the gradients peft scores importance by are still there, and the
orthogonality term joins the loss (peft adds it only to a loss the model computes itself,
and peftlab's tasks compute theirs). A resumed run starts its importance estimates afresh.
"""

from __future__ import annotations

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.methods.peft_tuners import Tuner, parse_options, peft_config_class, tuner_method
from peftlab.training.hooks import LoopHooks

# Before the budget shrinks, and after it reaches its target: shares of the run's steps,
# unless --peft-options gives tinit / tfinal in steps.
WARMUP_SHARE, FINAL_SHARE = 0.1, 0.2

TUNER = Tuner(
    "adalora",
    "ADALORA",
    "AdaLoRA: LoRA in SVD form whose rank budget moves to the weights that matter, on a "
    "schedule over the run (Zhang et al. 2023)",
    # total_step is a placeholder the loop replaces before the first step.
    {"init_r": 12, "target_r": 4, "lora_alpha": 16, "total_step": 10**9},
    default_lr=2e-3,
)


def schedule(args: MethodArgs) -> LoopHooks:
    given = parse_options(args.peft_options, peft_config_class(TUNER))

    def start(model, run) -> None:
        config = model.peft_config[model.active_adapter]
        total_steps = config.total_step = run.total_steps
        config.tinit = given.get("tinit", int(WARMUP_SHARE * total_steps))
        config.tfinal = given.get("tfinal", int(FINAL_SHARE * total_steps))
        if config.tinit >= total_steps - config.tfinal:
            raise ConfigError(
                "method.peft_options",
                f"tinit={config.tinit}, tfinal={config.tfinal}",
                f"this run has {total_steps} steps: leave steps between the two for the "
                "rank budget to move, or drop them to use 10% and 20% of the run",
            )

    def after_optimizer_step(model, step: int) -> None:
        model.base_model.update_and_allocate(step)

    return LoopHooks(
        start=start, extra_loss=orthogonality, after_optimizer_step=after_optimizer_step
    )


def orthogonality(model):
    """AdaLoRA's regularizer: how far each P (lora_B) and Q (lora_A) are from orthonormal,
    averaged, times orth_reg_weight. The same sum peft's AdaLoraModel.forward adds to a
    loss the model computes itself."""
    import torch

    config = model.peft_config[model.active_adapter]
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            covariance = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*covariance.shape, dtype=p.dtype, device=p.device)
            terms.append(torch.linalg.matrix_norm(covariance - eye))
    return config.orth_reg_weight * torch.stack(terms).mean() if terms else 0.0


METHODS = [tuner_method(TUNER, loop_hooks=schedule)]
