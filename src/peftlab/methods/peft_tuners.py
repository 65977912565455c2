"""The rest of peft's tuners through one generic path: a row of TUNERS each, no code branch.

A row names peft's type, what the method is, the config values that suit small models
and its learning rate. Everything else is read from peft: the config class
(PEFT_TYPE_TO_CONFIG_MAPPING), the prefix that marks the tuner's own parameters
(PEFT_TYPE_TO_PREFIX_MAPPING), whether the class takes transposed weights (GPT-2's
Conv1D: a `fan_in_fan_out` field). `--peft-options KEY=VALUE,...` sets any field of the
config class, checked against the class's own fields. The modules come from
models/selection.py like LoRA's (every linear layer of the blocks unless told), norms
for LN tuning, biased linear layers for BEFT.

Where peft cannot attach a tuner to a model (a layer type or shape it does not take),
its error becomes one line naming the method and the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from peftlab.config import MethodArgs, parse_layers
from peftlab.errors import ConfigError, PeftlabError
from peftlab.failure import first_line
from peftlab.methods.common import Method, fan_in_fan_out, peft_task_type, targets, wrap_peft
from peftlab.models import architecture, selection
from peftlab.models.loading import ModelInfo


@dataclass(frozen=True)
class Tuner:
    name: str
    peft_type: str  # peft's PeftType member
    description: str
    defaults: dict = field(default_factory=dict)  # config values for small models
    default_lr: float = 5e-4
    modules: str = "linear"  # "linear", "biased_linear" (BEFT) or "norms" (LN tuning)
    family: str = "low-rank"
    merge: str | None = None  # None: peft merges it; else why it cannot


TUNERS = [
    Tuner(
        "loha",
        "LOHA",
        "LoHa: low-rank updates as a Hadamard product of two low-rank pairs (Hyeon-Woo et "
        "al. 2022)",
        {"r": 8, "alpha": 16},
    ),
    Tuner(
        "lokr",
        "LOKR",
        "LoKr: updates as a Kronecker product of a small and a low-rank factor (Yeh et al. 2023)",
        {"r": 8, "alpha": 16},
        default_lr=2e-3,
    ),
    Tuner(
        "vera",
        "VERA",
        "VeRA: frozen shared random low-rank pair, trained scaling vectors (Kopiczko et al. 2024)",
        {"r": 64},
        default_lr=5e-3,
    ),
    Tuner(
        "oft",
        "OFT",
        "OFT: a learned block-diagonal orthogonal rotation of each weight (Qiu et al. 2023)",
        {"r": 0, "oft_block_size": 4},
        default_lr=2e-3,
        family="orthogonal",
    ),
    Tuner(
        "boft",
        "BOFT",
        "BOFT: orthogonal rotations built as butterfly factors (Liu et al. 2024)",
        {"boft_block_size": 4, "boft_n_butterfly_factor": 1},
        default_lr=2e-3,
        family="orthogonal",
    ),
    Tuner(
        "fourierft",
        "FOURIERFT",
        "FourierFT: a few trained spectral coefficients per weight update (Gao et al. 2024)",
        {"n_frequency": 100, "scaling": 150.0},
        default_lr=5e-3,
        family="spectral",
    ),
    Tuner(
        "ln_tuning",
        "LN_TUNING",
        "LN tuning: only the layer norms train (Zhao et al. 2024)",
        default_lr=5e-3,
        modules="norms",
        family="norms",
    ),
    Tuner(
        "hra",
        "HRA",
        "HRA: a chain of learned Householder reflections of each weight (Yuan et al. 2024)",
        {"r": 8},
        default_lr=2e-3,
        family="orthogonal",
    ),
    Tuner(
        "vblora",
        "VBLORA",
        "VB-LoRA: low-rank factors mixed from one shared vector bank (Li et al. 2024)",
        {"r": 4, "num_vectors": 64, "vector_length": 4, "topk": 2},
        default_lr=2e-3,
    ),
    Tuner(
        "randlora",
        "RANDLORA",
        "RandLoRA: full-rank updates from frozen random bases, trained scales (Albert et al. 2025)",
        {"r": 16, "randlora_alpha": 320},  # peft: alpha about 20x the rank
        default_lr=1e-3,
        family="random bases",
    ),
    Tuner(
        "shira",
        "SHIRA",
        "SHiRA: a sparse trained subset of each weight's entries (Bhardwaj et al. 2024)",
        {"r": 8},
        family="sparse",
    ),
    Tuner(
        "c3a",
        "C3A",
        "C3A: updates as block-circulant convolutions (Chen et al. 2025)",
        {"block_size": 4},
        default_lr=2e-3,
        family="circulant",
    ),
    Tuner(
        "miss",
        "MISS",
        "MiSS: one shared trained shard expanded over each weight (Kang & Yin 2025)",
        {"r": 8},
        default_lr=2e-3,
    ),
    Tuner(
        "beft",
        "BEFT",
        "BEFT: peft's bias-only tuning of the linear layers' biases (BitFit's cousin)",
        default_lr=5e-3,
        modules="biased_linear",
        family="bias",
    ),
    Tuner(
        "glora",
        "GLORA",
        "GLoRA: low-rank scalings and shifts of each weight and its bias (Chavan et al. 2023)",
        {"r": 4},
        default_lr=1e-3,
    ),
    Tuner(
        "hira",
        "HIRA",
        "HiRA: high-rank updates as the weight times a low-rank product (Huang et al. 2025)",
        {"r": 8},
        default_lr=2e-3,  # the update is scaled by the weight's own (small) entries
    ),
    Tuner(
        "delora",
        "DELORA",
        "DeLoRA: normalized low-rank updates with a learned, bounded strength (Bini et al. 2025)",
        {"r": 8, "delora_lambda": 15},
        default_lr=1e-3,
    ),
    Tuner(
        "gralora",
        "GRALORA",
        "GraLoRA: low-rank updates split into a grid of sub-blocks (Jung et al. 2025)",
        {"r": 8, "alpha": 16, "gralora_k": 2},
        default_lr=1e-3,
    ),
    Tuner(
        "tinylora",
        "TINYLORA",
        "TinyLoRA: a tiny trained vector projected onto each weight's top singular directions "
        "(Morris et al. 2026)",
        {"r": 2, "u": 64},
        default_lr=5e-3,
        family="random bases",
    ),
    Tuner(
        "psoft",
        "PSOFT",
        "PSOFT: an orthogonal rotation within each weight's principal subspace (ICLR 2026)",
        {"r": 8, "psoft_alpha": 8},
        default_lr=2e-3,
        family="orthogonal",
    ),
    Tuner(
        "peanut",
        "PEANUT",
        "PEANuT: a small network maps each frozen weight to its update (Zhong et al. 2024)",
        {"r": 8},
        default_lr=1e-3,
        family="weight-aware",
    ),
    Tuner(
        "supertuning",
        "SUPERTUNING",
        "Super-Tuning: the largest-magnitude 1% of each weight's entries train (arXiv 2026)",
        {"sparsity": 0.99},
        default_lr=1e-3,
        family="sparse",
    ),
    Tuner(
        "osf",
        "OSF",
        "OSF: each weight's top singular directions frozen, the rest of its SVD trains "
        "(orthogonal subspace fine-tuning, peft 0.21)",
        {"effective_rank": 0.75},  # a quarter of each weight's rank trains
        default_lr=1e-4,
        family="orthogonal",
    ),
    Tuner(
        "deft",
        "DEFT",
        "DEFT: a low-rank subspace of each weight removed and a trained one injected "
        "(NeurIPS 2025)",
        {"r": 8},
        default_lr=1e-3,
    ),
    Tuner(
        "frod",
        "FROD",
        "FRoD: full-rank updates from a shared basis, trained diagonal and sparse rotations "
        "(AAAI 2026)",
        {"sparse_rate": 0.01, "progressbar": False},
        default_lr=5e-3,  # a diagonal and a few rotation coefficients: scale-like
        family="random bases",
    ),
    Tuner(
        "unilora",
        "UNILORA",
        "Uni-LoRA: every LoRA factor drawn from one shared trained vector (Li et al. 2025)",
        {"r": 4, "theta_d_length": 256},
        default_lr=5e-3,
    ),
    Tuner(
        "road",
        "ROAD",
        "RoAd: each output pair rotated and scaled by a learned 2D rotation (Liao et al. 2024)",
        # peft: the group size only pairs elements (no effect on results); 64 would not
        # divide small layers' widths
        {"variant": "road_1", "group_size": 8},
        default_lr=2e-3,
        family="orthogonal",
    ),
    Tuner(
        "adamss",
        "ADAMSS",
        "AdaMSS: each weight's top singular directions clustered into subspaces, each with "
        "a small trained update (adaptive multi-subspace tuning)",
        {"r": 8, "num_subspaces": 2, "subspace_rank": 1},
        default_lr=2e-3,
    ),
    Tuner(
        "lily",
        "LILY",
        "Lily: low-rank updates from per-layer down-projections and a few up-projections "
        "shared by every layer, mixed by a learned router (Zhong & Zhou 2024)",
        {"r": 8, "stride_A": 1, "num_B": 2},
        default_lr=1e-3,
        merge="its update depends on each input (a learned router mixes the shared "
        "up-projections), so it cannot be folded into the weights; serve it unmerged",
    ),
    Tuner(
        "waveft",
        "WAVEFT",
        "WaveFT: a few trained wavelet coefficients per weight update (Bilican et al. 2025)",
        {"n_frequency": 100, "scaling": 25.0},
        default_lr=5e-3,
        family="spectral",
    ),
]


def peft_config_class(tuner: Tuner):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[tuner.peft_type]]


def parameter_prefix(tuner: Tuner) -> str:
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.utils import PeftType

    return PEFT_TYPE_TO_PREFIX_MAPPING[PeftType[tuner.peft_type]]


# Config fields peftlab sets itself, and where the user says what they want instead.
SET_BY_PEFTLAB = {
    "target_modules": "give the modules with --target-modules (and --layers, --side)",
    "task_type": "the task and head set it (--task, --head)",
    "modules_to_save": "a new linear head trains and is saved by itself",
    "peft_type": "the method sets it (--method)",
    "total_step": "the run's step count sets it (--epochs, --max-steps)",
}


def parse_options(options: list[str] | None, config_class) -> dict:
    """["r=4", "alpha=8"] -> {"r": 4, "alpha": 8}, each key a field of config_class; the
    values are read as YAML scalars (numbers, true/false, lists in brackets)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    parsed = {}
    for item in options or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("method.peft_options", item, "write KEY=VALUE, e.g. r=4")
        if key in SET_BY_PEFTLAB:
            raise ConfigError("method.peft_options", item, SET_BY_PEFTLAB[key])
        if key not in known:
            raise ConfigError(
                "method.peft_options",
                item,
                f"'{key}' is not a field of peft's {config_class.__name__}; its fields: "
                f"{', '.join(sorted(known))}",
            )
        parsed[key] = yaml.safe_load(value) if value.strip() else None
    return parsed


def tuner_modules(tuner: Tuner, model, args: MethodArgs, info: ModelInfo) -> list[str]:
    if tuner.modules == "norms":
        return selection.select_modules(
            model,
            args.target_modules,
            parse_layers(args.layers),
            args.side,
            module_type=architecture.norm_types(model),
        )
    names = targets(model, args)
    if tuner.modules == "biased_linear":
        names = [n for n in names if getattr(model.get_submodule(n), "bias", None) is not None]
        if not names:
            raise ConfigError(
                "method.name",
                tuner.name,
                f"this model ({info.model_type}) has no bias terms in the selected linear "
                "layers; choose another method (e.g. lora)",
            )
    return names


def attach_tuner(tuner: Tuner, model, args: MethodArgs, info: ModelInfo):
    config_class = peft_config_class(tuner)
    values = {**tuner.defaults, **parse_options(args.peft_options, config_class)}
    names = tuner_modules(tuner, model, args, info)
    fields = {f.name for f in dataclasses.fields(config_class)}
    if "fan_in_fan_out" in fields:
        values.setdefault("fan_in_fan_out", fan_in_fan_out(model, names))
    try:
        config = config_class(target_modules=names, task_type=peft_task_type(info), **values)
        wrapped = wrap_peft(model, config, info)
    except (ValueError, TypeError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise PeftlabError(
            f"peft's {tuner.name} cannot attach to this {info.model_type} model "
            f"({type(exc).__name__}: {first_line(exc)}); try --peft-options, or another method"
        ) from None
    refuse_if_untrained(tuner, wrapped, model, names, info)
    return wrapped


def refuse_if_untrained(tuner: Tuner, wrapped, base, names: list[str], info: ModelInfo) -> None:
    """Some tuners skip module types they do not take without a word (OSF and GPT-2's
    Conv1D): a run that would train nothing of the method's own is refused instead.
    `base`: the model peft wrapped (in place), where the skipped modules still are."""
    prefix = parameter_prefix(tuner)
    if any(prefix in n and p.requires_grad for n, p in wrapped.named_parameters()):
        return
    kinds = sorted({type(base.get_submodule(n)).__name__ for n in names})
    raise PeftlabError(
        f"peft's {tuner.name} attached to none of the selected modules of this "
        f"{info.model_type} model (their type: {', '.join(kinds)}); choose another method"
    )


def tuner_method(tuner: Tuner, loop_hooks=None) -> Method:
    """The registry's entry for `tuner`; loop_hooks: what it adds to the training loop."""
    prefix = parameter_prefix(tuner)
    return Method(
        tuner.name,
        tuner.description,
        lambda model, args, info: attach_tuner(tuner, model, args, info),
        "peft",
        owns=lambda name: prefix in name,
        default_lr=tuner.default_lr,
        family=tuner.family,
        check_options=lambda args: parse_options(args.peft_options, peft_config_class(tuner)),
        loop_hooks=loop_hooks,
        merge=tuner.merge,
    )


METHODS = [tuner_method(t) for t in TUNERS]

# peft's other tuners, each with why it is not a method here (yet): `peftlab methods`
# lists them, so none is silently absent. Checked on peft 0.21.2 with tiny models.
NOT_REGISTERED = {
    "pvera": "a reloaded adapter does not reproduce the trained outputs (peft 0.21.2)",
    "shadow": "fails on these models in peft 0.21.2 ('ShadowCarrier' object has no attribute "
    "'view')",
    "trainable_tokens": "trains chosen token embeddings: no peftlab task picks tokens",
    "xlora": "mixes LoRA experts trained beforehand: nothing to train from a base alone",
    "poly": "routes between tasks by task id: a run has one task",
    "multitask_prompt_tuning, cartridge, cpt, adaption_prompt": "prompt methods for "
    "multi-task, long-context caches, context-aware inputs or Llama's own adapter layers: "
    "not plain prompts on a task's inputs",
}
