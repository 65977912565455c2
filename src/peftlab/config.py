"""Typed run configuration: the single source of truth.

Defaults live here; a YAML file overrides them; command-line flags override the YAML.
Every field carries its help text (it becomes `peftlab run --help`) and its flag name.
`RunConfig.validate()` runs once, right after merging, and rejects bad values with the
field, the value and the fix. What depends on later stages (a known method, its default
learning rate, the installed trackers, this machine's precision) is checked and filled in
by `runner/checks.py`: this module imports no other stage.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftlab.errors import ConfigError

LORA_INITS = ("default", "gaussian", "eva", "pissa", "olora", "corda", "loftq")
PRECISIONS = ("auto", "fp32", "bf16")  # training/precision.py resolves "auto"
ON_OFF_AUTO = ("auto", "on", "off")  # true/false spellings read as on/off (field_value)


def arg(default: Any, help: str, flag: str | None = None, choices: tuple | None = None) -> Any:
    """A config field with its help text, optional flag name and allowed values."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelArgs:
    name: str = arg(
        "smollm2-135m",
        "Base model: a built-in name (see `peftlab models`), a local folder, or a Hub id.",
        flag="model",
    )
    head: str = arg(
        "auto",
        "Classification head: 'label_words' scores one word per label (causal LMs: the next "
        "token; encoder-decoders: the whole word through the decoder; the base model is "
        "meaningful before training), 'linear' adds a trained linear layer (encoders, or any "
        "model); 'auto' picks linear for encoders and label_words otherwise.",
        choices=("auto", "label_words", "linear"),
    )
    max_length: int = arg(
        128,
        "Longest input (text, article or prompt) in tokens; longer inputs are truncated "
        "(classification keeps the end, generation tasks the beginning of the text).",
    )
    allow_pickle: bool = arg(
        False, "Allow loading pickled (.bin/.pt) weights. Off by default: safetensors only."
    )


@dataclass
class DataArgs:
    name: str = arg(
        "rotten_tomatoes",
        "Dataset: a built-in name (see `peftlab datasets`), a local CSV/JSONL/Parquet file "
        "or a folder of train/validation/test files, or a Hub dataset name.",
        flag="dataset",
    )
    text_column: str | None = arg(None, "Column holding the input text (default: 'text').")
    label_column: str | None = arg(None, "Column holding the label (default: 'label').")
    target_column: str | None = arg(
        None,
        "Generation tasks: column holding the summary or response (default: the first of "
        "summary/highlights/headline/target, or response/completion/output/answer; causal_lm "
        "without one trains on the text itself).",
    )
    labels: list[str] | None = arg(
        None,
        "Label names in order (comma-separated). Default: the dataset's own names, or the "
        "sorted distinct values of the label column.",
    )
    template: str | None = arg(
        None,
        "Input template with a {text} slot, e.g. 'Review: {text}\\nSentiment:'. Default: "
        "the dataset's own template for the task; else '{text}' for linear heads and "
        "encoder-decoders (T5: 'summarize: {text}'), 'Text: {text}\\nLabel:' for label words, "
        "'Article: {text}\\nSummary:' for decoder summarization.",
    )
    label_words: list[str] | None = arg(
        None,
        "One word per label for label-word scoring (comma-separated), scored as ' word' "
        "(encoder-decoders: the word's tokens then end-of-sequence). Default: the label names.",
    )
    validation_fraction: float = arg(
        0.1, "Share of the data held out for validation when the data has no own split."
    )
    test_fraction: float = arg(
        0.1, "Share of the data held out for the test when the data has no own split."
    )
    train_samples: int | None = arg(
        None,
        "Train on at most this many examples (0 = all; default: 1000, summarization 600).",
        flag="train-samples",
    )
    validation_samples: int | None = arg(
        None,
        "Validate on at most this many examples (0 = all; default: 200, summarization 100).",
        flag="validation-samples",
    )
    test_samples: int | None = arg(
        None, "Test on at most this many examples (0 = all; default: 500, summarization 200)."
    )
    forgetting_data: str | None = arg(
        None,
        "General text to measure forgetting on (a file or dataset with a text column); "
        "default: the other built-in corpus (BBC News articles; for bbc_news tasks, Rotten "
        "Tomatoes snippets).",
    )
    forgetting_samples: int = arg(
        64, "Texts to measure forgetting on, base vs tuned (0 = do not measure)."
    )


TASKS = ("classification", "summarization", "causal_lm")
# Summaries are long inputs generated token by token: a smaller default budget keeps a
# CPU run of the built-in model in minutes. Explicit --*-samples always win.
SAMPLE_DEFAULTS = {
    "classification": (1000, 200, 500),
    "summarization": (600, 100, 200),
    "causal_lm": (1000, 200, 500),
}


@dataclass
class TaskArgs:
    name: str = arg(
        "classification",
        "What to fine-tune for: classification (text -> label), summarization (article -> "
        "summary, scored by ROUGE) or causal_lm (text, or prompt -> response, scored by "
        "perplexity).",
        flag="task",
        choices=TASKS,
    )
    max_target_length: int = arg(
        64, "Generation tasks: longest summary or response in tokens; longer ones are cut."
    )
    max_new_tokens: int = arg(
        32, "Generation tasks: most tokens generated per input when evaluating."
    )
    num_beams: int = arg(1, "Generation tasks: beam search width (1 = greedy decoding).")
    chat_template: str = arg(
        "auto",
        "causal_lm prompt/response pairs: wrap each prompt in the tokenizer's chat template "
        "(auto: when the tokenizer has one).",
        choices=ON_OFF_AUTO,
    )
    sample_generations: int = arg(
        4, "Generation tasks: test examples shown base vs tuned in the report."
    )


@dataclass
class MethodArgs:
    name: str = arg("lora", "Fine-tuning method (see `peftlab methods`).", flag="method")
    lora_r: int = arg(8, "LoRA rank.")
    lora_alpha: int = arg(16, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = arg(0.05, "Dropout on the LoRA input.")
    rslora: bool = arg(
        False,
        "LoRA, DoRA, QLoRA: rank-stabilized scaling, alpha / sqrt(r) instead of alpha / r "
        "(Kalajdzievski 2023), so higher ranks keep learning.",
    )
    lora_plus_ratio: float = arg(
        0.0,
        "LoRA, DoRA, QLoRA: LoRA+ (Hayou et al. 2024), the B matrices' learning rate this "
        "many times the A matrices' (the paper uses 16); 0 = off.",
    )
    lora_fa: bool = arg(
        False,
        "LoRA, QLoRA: LoRA-FA (Zhang et al. 2023): A stays frozen where it started and B "
        "trains with a gradient projected for it (peft's LoRA-FA optimizer), so only B "
        "keeps optimizer state.",
    )
    lora_init: str = arg(
        "default",
        "LoRA, DoRA, QLoRA: how the low-rank pair starts: default (A random, B zero), "
        "gaussian, eva (from the principal directions of the training data's "
        "activations, ranks redistributed by explained variance; Paischer et al. 2024), "
        "pissa (the weight's top singular vectors, Meng et al. 2024), olora (its QR "
        "factors, Buyukakyuz 2024) or corda (the weight's singular vectors weighted by the "
        "training data's input covariance, Yang et al. 2024); pissa, olora and corda start "
        "lora only and are saved as a plain LoRA of the original base, of twice the rank; "
        "loftq (qlora, 4-bit: the pair starts as the low-rank part of the quantization "
        "error, Li et al. 2023).",
        choices=LORA_INITS,
    )
    target_modules: list[str] | None = arg(
        None,
        "Modules to adapt (comma-separated names, dotted suffixes or globs); default: the "
        "method's own choice (LoRA/DoRA/QLoRA: every linear layer of the blocks).",
    )
    layers: list[str] | None = arg(
        None, "Only these block indices (comma-separated, ranges allowed: 0-3,10); default: all."
    )
    side: str = arg(
        "both",
        "Encoder-decoder models: adapt the encoder, the decoder, or both.",
        choices=("both", "encoder", "decoder"),
    )
    quant_bits: int = arg(4, "QLoRA: quantize the base to 4-bit NF4 or 8-bit.", choices=(4, 8))
    double_quant: bool = arg(
        True,
        "QLoRA, 4-bit: quantize the quantization constants too (double quantization, as the "
        "QLoRA paper does).",
    )
    num_virtual_tokens: int = arg(20, "Prefix, prompt and P-tuning: virtual tokens.")
    prompt_init: str = arg(
        "text",
        "Prompt, P- and prefix tuning: initialise from text or randomly. Prompt tuning "
        "starts from the text's token embeddings, P-tuning's encoder is solved to output "
        "them, and prefix tuning on decoder LMs starts from the model's own keys and "
        "values of the text, so step 0 stays close to the base model.",
        choices=("text", "random"),
    )
    prompt_init_text: str = arg(
        "Classify the sentiment of this text:",
        "Prompt, P- and prefix tuning: the initialisation text.",
    )
    ptuning_hidden: int = arg(128, "P-tuning: hidden size of the prompt encoder.")
    adapter_size: int = arg(32, "Bottleneck adapters: bottleneck width.")
    adapter_placement: str = arg(
        "houlsby",
        "Bottleneck adapters: after attention and feed-forward (houlsby) or feed-forward "
        "only (pfeiffer).",
        choices=("houlsby", "pfeiffer"),
    )
    peft_options: list[str] | None = arg(
        None,
        "The other peft tuners (loha, lokr, vera, oft, ...): fields of peft's config class "
        "as KEY=VALUE, comma-separated (e.g. r=4,alpha=8); default: the values `peftlab "
        "methods` lists for small models.",
    )


@dataclass
class TrainArgs:
    epochs: float = arg(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int = arg(0, "Stop after this many optimizer steps (0 = use epochs).")
    batch_size: int = arg(8, "Examples per forward pass (per process).")
    grad_accum: int = arg(1, "Forward passes per optimizer step (gradient accumulation).")
    lr: float | None = arg(
        None,
        "Peak learning rate; default: the method's own (see `peftlab methods`), since "
        "prompt-style methods want rates ~100x those of full fine-tuning.",
    )
    weight_decay: float = arg(0.01, "AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = arg(0.1, "Share of the optimizer steps spent warming up the rate.")
    scheduler: str = arg(
        "linear", "Learning-rate decay after warmup.", choices=("linear", "cosine", "constant")
    )
    max_grad_norm: float = arg(1.0, "Clip gradients to this norm (0 = no clipping).")
    eval_every: int = arg(
        0, "Evaluate on the validation split every N optimizer steps (0 = once per epoch)."
    )
    validations: int = arg(
        0,
        "Evaluate on the validation split this many times, evenly spaced over training "
        "(0 = as --eval-every says); `compare --tune` uses it for every run.",
    )
    score_on: str = arg(
        "test",
        "Which split scores the run: test (the base and the tuned model, forgetting, the "
        "adapter), or validation only: a tuning trial, which never looks at the test split "
        "and saves no adapter.",
        choices=("test", "validation"),
    )
    eval_batch_size: int = arg(32, "Examples per forward pass when evaluating.")
    compile_inference: bool = arg(
        False,
        "Compile the tuned classification model's forward for the test evaluation "
        "(AOTInductor, fp32 on a CPU, from 256 examples): the first run with a model's "
        "structure compiles it (up to about a minute), later runs load it in milliseconds; "
        "same labels. MiniLM + LoRA, 1,000 texts: 1.20x on an AMX Xeon, 1.07x on an AVX2 "
        "EPYC (measured with an older, slower loader).",
    )
    compile_training: str = arg(
        "auto",
        "Compile each layer block but the lowest with torch.compile for the training "
        "steps (validation stays eager). auto: on a CPU, in one process, after timing the "
        "first steps eagerly, where the time it expects to save over the steps left is "
        "more than the compile costs (the figures this machine measured the last time, "
        "else a 45 s compile saving 25% of a step); on (the flag alone): from the first "
        "step; off: never. Blocks that compile only in pieces (BERT's, DoRA's) run eagerly "
        "after the first compiled step, with a note. SmolLM2 + LoRA, 75 steps: 1.16x "
        "samples/s on an AMX Xeon with inductor's cache warm; the compile costs each run "
        "10-15 s warm, a minute or more cold.",
        choices=ON_OFF_AUTO,
    )
    keep_best: bool = arg(
        True, "Keep the weights with the best validation metric rather than the last ones."
    )
    checkpoint_every: int = arg(
        25, "Write a resumable checkpoint every N optimizer steps (0 = never)."
    )
    checkpoint_minutes: float = arg(
        5.0,
        "Also write one when this many minutes have passed since the last (a slow run "
        "killed early can still resume; 0 = by steps only; one-process runs).",
    )
    threads: int = arg(
        0,
        "CPU threads (0 = the cores this process may use, by its CPU affinity and cgroup "
        "quota, less those other processes keep busy, checked between training steps). "
        "run.json records it.",
    )
    precision: str = arg(
        "auto",
        "Compute precision: bf16 autocast (matmuls in bf16, weights and losses in fp32), "
        "fp32, or auto: bf16 where the hardware has native bf16 (CPUs with AVX512-BF16 or "
        "AMX, recent GPUs), else fp32. run.json records the resolved value.",
        choices=PRECISIONS,
    )
    cache_frozen_layers: bool = arg(
        True,
        "When the method trains only upper layers and the run sees each example more than "
        "once, compute the frozen layers below them once per example (in eval mode: no "
        "dropout there) and reuse their outputs every epoch.",
    )
    seed: int = arg(0, "Random seed for splits, sampling, initialisation and data order.")


@dataclass
class TrackArgs:
    report_to: list[str] | None = arg(
        None,
        "Experiment trackers to log to, comma-separated: tensorboard, mlflow, wandb, trackio, "
        "comet_ml, aim, clearml, dvclive, swanlab (accelerate's trackers; each needs its "
        "package). TensorBoard writes into the run directory, MLflow follows "
        "MLFLOW_TRACKING_URI, W&B follows WANDB_MODE.",
    )
    project: str | None = arg(
        None,
        "Tracker experiment/project name (default: 'peftlab'; a comparison's runs: the "
        "comparison folder's name).",
    )


@dataclass
class RunConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    task: TaskArgs = field(default_factory=TaskArgs)
    method: MethodArgs = field(default_factory=MethodArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    track: TrackArgs = field(default_factory=TrackArgs)
    out: str | None = arg(None, "Run directory (default: runs/<timestamp>-<name>).")
    name: str | None = arg(None, "Run name (default: <method>-<model>-<dataset>).")

    def run_name(self) -> str:
        if self.name:
            return self.name
        parts = [self.method.name, Path(self.model.name).name, Path(self.data.name).stem]
        if self.task.name != "classification":
            parts.append(self.task.name)
        return "-".join(p.replace("/", "_") for p in parts)

    def resolved(self, default_lr: float | None = None) -> RunConfig:
        """A copy with the defaults that depend on other settings filled in (what run.json
        records): the method's learning rate (runner/checks.resolved passes it, with the
        precision "auto" picks on this machine) and the task's sample counts."""
        cfg = copy.deepcopy(self)
        if cfg.train.lr is None:
            cfg.train.lr = default_lr
        defaults = SAMPLE_DEFAULTS[cfg.task.name]
        for name, default in zip(SAMPLE_FIELDS, defaults, strict=True):
            if getattr(cfg.data, name) is None:
                setattr(cfg.data, name, default)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Reject bad values up front; each error names the field, the value and the fix."""
        for section, name, f in iter_fields(self):
            value = getattr(section, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(field_path(self, section, name), value, "use a finite number")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(field_path(self, section, name), value, f"use one of {choices}")
        t, d, m = self.train, self.data, self.method
        parse_layers(m.layers)
        _positive(self, t, "batch_size", "eval_batch_size", "grad_accum")
        if t.lr is not None:
            _positive(self, t, "lr")
        _positive(self, self.model, "max_length")
        _positive(self, m, "lora_r", "lora_alpha", "num_virtual_tokens", "ptuning_hidden")
        _positive(self, m, "adapter_size")
        _non_negative(self, t, "epochs", "max_steps", "weight_decay", "max_grad_norm")
        _non_negative(
            self,
            t,
            "eval_every",
            "validations",
            "checkpoint_every",
            "checkpoint_minutes",
            "threads",
        )
        _non_negative(self, d, *(n for n in SAMPLE_FIELDS if getattr(d, n) is not None))
        _non_negative(self, d, "forgetting_samples")
        _positive(self, self.task, "max_target_length", "max_new_tokens", "num_beams")
        _non_negative(self, self.task, "sample_generations")
        if t.epochs == 0 and t.max_steps == 0:
            raise ConfigError("train.epochs", 0, "set epochs > 0 or max_steps > 0")
        for name in ("warmup_ratio",):
            _fraction(self, t, name, upper_inclusive=True)
        _fraction(self, m, "lora_dropout")
        if m.lora_plus_ratio < 0:
            raise ConfigError(
                "method.lora_plus_ratio", m.lora_plus_ratio, "use 0 (off) or a ratio such as 16"
            )
        _fraction(self, d, "validation_fraction")
        _fraction(self, d, "test_fraction")
        if d.validation_fraction + d.test_fraction >= 1:
            raise ConfigError(
                "data.validation_fraction + data.test_fraction",
                d.validation_fraction + d.test_fraction,
                "leave some data for training: keep the sum below 1",
            )
        if d.template is not None and "{text}" not in d.template:
            raise ConfigError("data.template", d.template, "include a {text} slot")
        if d.labels is not None and len(set(d.labels)) != len(d.labels):
            raise ConfigError("data.labels", d.labels, "give each label once")
        return self


def _positive(cfg, section, *names):
    for name in names:
        value = getattr(section, name)
        if not value > 0:
            raise ConfigError(field_path(cfg, section, name), value, "use a number above 0")


def _non_negative(cfg, section, *names):
    for name in names:
        value = getattr(section, name)
        if value < 0:
            raise ConfigError(field_path(cfg, section, name), value, "use 0 or more")


def _fraction(cfg, section, name, upper_inclusive=False):
    value = getattr(section, name)
    ok = 0 <= value <= 1 if upper_inclusive else 0 <= value < 1
    if not ok:
        raise ConfigError(field_path(cfg, section, name), value, "use a fraction in [0, 1)")


SECTIONS = ("model", "data", "task", "method", "train", "track")
SAMPLE_FIELDS = ("train_samples", "validation_samples", "test_samples")


def iter_fields(cfg: RunConfig):
    """Yield (owner object, field name, dataclass field) for every leaf setting."""
    for section_name in SECTIONS:
        section = getattr(cfg, section_name)
        for f in dataclasses.fields(section):
            yield section, f.name, f
    for f in dataclasses.fields(cfg):
        if f.name not in SECTIONS:
            yield cfg, f.name, f


def flag_name(f: dataclasses.Field) -> str:
    """The setting's command-line flag, without its dashes (a Python keyword: with
    underscores for the dashes)."""
    return f.metadata.get("flag") or f.name.replace("_", "-")


def flags_by_path() -> dict[str, str]:
    """'train.epochs' -> '--epochs', for every leaf setting."""
    defaults = RunConfig()
    return {
        field_path(defaults, owner, name): "--" + flag_name(f)
        for owner, name, f in iter_fields(defaults)
    }


def field_path(cfg: RunConfig, owner: Any, name: str) -> str:
    for section_name in SECTIONS:
        if getattr(cfg, section_name) is owner:
            return f"{section_name}.{name}"
    return name


def field_type(owner: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(owner))
    return hints[name]


def field_value(owner: Any, name: str, value: Any, where: str) -> Any:
    """`value` as the field's type; for an on/off/auto field also a boolean or its
    spellings (YAML reads `on` as true; `compile_training: true` was a boolean once)."""
    choices = next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("choices")
    if choices == ON_OFF_AUTO and not (isinstance(value, str) and value in choices):
        with contextlib.suppress(ConfigError):  # not a boolean either: validate() says
            value = "on" if coerce(value, bool, where) else "off"
    return coerce(value, field_type(owner, name), where)


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Turn a YAML or command-line value into the field's declared type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = next(a for a in args if a is not type(None))
        return coerce(value, inner, where)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(where, value, "give a list (comma-separated on the command line)")
        return [coerce(v.strip() if isinstance(v, str) else v, args[0], where) for v in items]
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(where, value, "use true or false")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(where, value, f"use a number ({typ.__name__})")
        try:
            number = typ(float(value)) if typ is int and isinstance(value, str) else typ(value)
        except (TypeError, ValueError):
            raise ConfigError(where, value, f"use a number ({typ.__name__})") from None
        if typ is int and float(value) != number:
            raise ConfigError(where, value, "use a whole number")
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(where, value, "use a single text value")
        return str(value)
    return value


def set_path(cfg: RunConfig, path: str, value: Any, where: str) -> None:
    """Set the setting at a dotted path ('train.epochs', 'out') to `value`, coerced to the
    field's type; `where` names it in an error (a flag, a keyword)."""
    section, _, name = path.rpartition(".")
    owner = getattr(cfg, section) if section else cfg
    setattr(owner, name, field_value(owner, name, value, where))


def apply_mapping(cfg: RunConfig, mapping: dict, source: str) -> None:
    """Apply a nested mapping (as read from YAML) onto the config, checking every key."""
    if not isinstance(mapping, dict):
        raise ConfigError(
            source, type(mapping).__name__, "the file must hold a mapping of settings"
        )
    for key, value in mapping.items():
        if key in SECTIONS:
            section = getattr(cfg, key)
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key}", value, f"'{key}:' must hold a mapping")
            names = [f.name for f in dataclasses.fields(section)]
            for sub, sub_value in value.items():
                if sub not in names:
                    raise ConfigError(f"{source}: {key}.{sub}", sub_value, _unknown_fix(sub, names))
                setattr(section, sub, field_value(section, sub, sub_value, f"{key}.{sub}"))
        else:
            names = [f.name for f in dataclasses.fields(cfg) if f.name not in SECTIONS]
            if key not in names:
                raise ConfigError(
                    f"{source}: {key}", value, _unknown_fix(key, names + list(SECTIONS))
                )
            setattr(cfg, key, field_value(cfg, key, value, key))


def _unknown_fix(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown setting; {hint}known: {', '.join(names)}"


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", str(path), "give the path of an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", str(path), f"fix the YAML: {exc}") from None
    return data or {}


def from_dict(data: dict) -> RunConfig:
    """Rebuild a resolved config (as stored in run.json)."""
    cfg = RunConfig()
    apply_mapping(cfg, data, "run.json config")
    return cfg


def parse_layers(spec: list[str] | None) -> set[int] | None:
    """["0-3", "10"] -> {0, 1, 2, 3, 10}; None means every layer."""
    if not spec:
        return None
    layers: set[int] = set()
    for item in spec:
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(item))
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ConfigError("method.layers", spec, "use indices and ranges like 0-3,10")
        first = int(match.group(1))
        layers.update(range(first, int(match.group(2) or first) + 1))
    return layers
