"""`compare --tune`: each method's search space, and the trials that sample it.

Every method gets the same number of trials and the same training budget per trial, and
is scored on the validation split only. The learning-rate ranges differ by method family,
because the rates that work differ by orders of magnitude (prompt-style methods train a
few embeddings from scratch; full fine-tuning nudges pretrained weights); each range says
where it comes from. The other tunable fields share one range for every method that
uses them.

A method's first trial is its default settings (the tuned pick can then never be worse on
validation than the defaults, and ties go to them); the others are a Latin hypercube over
each range (log scale where marked), drawn once by the process that starts the comparison
and enqueued with the trials. Why
not a learning sampler such as TPE: its first 10 trials are random anyway, and trials
drawn in parallel by workers on several machines would repeat each other's draws with a
fixed seed or differ between reruns without one; a Latin hypercube covers each range
evenly with few trials (one trial per stratum), is the same on every machine and every
rerun, and puts every method's trials at the same relative places in its range.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from peftlab.errors import PeftlabError


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = True
    integer: bool = False
    source: str = ""

    def at(self, u: float) -> float | int:
        """The point a fraction `u` (0..1) of the way through the range."""
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        if self.integer:
            return int(min(self.high, max(self.low, round(value))))
        return float(f"{value:.3g}")  # 3 significant digits: readable, and enough

    def including(self, value: float) -> Range:
        """This range, widened to hold `value` (a user's own default outside it)."""
        return dataclasses.replace(self, low=min(self.low, value), high=max(self.high, value))

    def describe(self) -> str:
        scale = "log-uniform" if self.log else "uniform"
        return f"{scale} [{self.low:g}, {self.high:g}]"


SHORT_BUDGET = "widened upwards for short training budgets (peftlab's measurements: README)"
LORA_RANGE = Range(
    1e-4,
    1e-2,
    source="LoRA (Hu et al. 2021, RoBERTa/DeBERTa on GLUE: 2e-4 to 5e-4) and QLoRA "
    f"(Dettmers et al. 2023: 1e-4 to 2e-4), {SHORT_BUDGET}",
)
PROMPT_RANGE = Range(
    1e-3,
    1e-1,
    source="P-tuning v2 (Liu et al. 2022: 5e-3 to 1e-2) and prompt tuning (Lester et al. "
    "2021: 0.3 with Adafactor); peft's method comparison lifts prompt tuning from 0.057 to "
    "0.343 with a higher rate",
)
# P-tuning's prompt encoder is an MLP: Adam moves every one of its weights by about the
# rate each step, so a virtual token moves by far more than one prompt-tuning step at the
# same rate (SmolLM2 at 1e-2: validation 0.86 -> 0.63 within 13 steps). Ten times lower.
PTUNING_RANGE = Range(
    1e-4,
    1e-2,
    source="peft's P-tuning guide for sequence classification (1e-3); lower than prompt "
    "tuning's because the prompt encoder amplifies each step (peftlab's measurements: README)",
)
LEARNING_RATES: dict[str, Range] = {
    "lora": LORA_RANGE,
    "dora": LORA_RANGE,
    "qlora": LORA_RANGE,
    "ia3": Range(
        1e-3,
        1e-1,
        source="T-Few (Liu et al. 2022: 3e-3); peft's method comparison lifts IA3 from 0.311 "
        "to 0.455 with a higher rate than LoRA's",
    ),
    "prefix": PROMPT_RANGE,
    "prompt": Range(1e-3, 3e-1, source=PROMPT_RANGE.source),
    "ptuning": PTUNING_RANGE,
    "adapter": Range(
        1e-4,
        1e-2,
        source=f"Houlsby et al. 2019 (3e-5 to 3e-3) and Pfeiffer et al. 2020 (1e-4), "
        f"{SHORT_BUDGET}",
    ),
    "bitfit": Range(
        3e-4, 3e-2, source=f"BitFit (Ben Zaken et al. 2022: 1e-4 to 1e-3), {SHORT_BUDGET}"
    ),
    "full": Range(
        1e-5,
        5e-4,
        source="BERT (Devlin et al. 2019: 2e-5 to 5e-5); small models take higher rates",
    ),
}
LORA_LIKE = ("lora", "dora", "qlora")
PROMPT_LIKE = ("prefix", "prompt", "ptuning")
# field -> (config section, range, the methods that use it; None: every method)
FIELDS: dict[str, tuple[str, Range | None, tuple[str, ...] | None]] = {
    "lr": ("train", None, None),  # None: the method's own range above
    "weight_decay": ("train", Range(0.0, 0.1, log=False), None),
    "warmup_ratio": ("train", Range(0.0, 0.3, log=False), None),
    "lora_r": ("method", Range(2, 64, integer=True), LORA_LIKE),
    "lora_alpha": ("method", Range(4, 128, integer=True), LORA_LIKE),
    "lora_dropout": ("method", Range(0.0, 0.3, log=False), LORA_LIKE),
    "num_virtual_tokens": ("method", Range(4, 64, integer=True), PROMPT_LIKE),
    "ptuning_hidden": ("method", Range(32, 512, integer=True), ("ptuning",)),
    "adapter_size": ("method", Range(8, 256, integer=True), ("adapter",)),
}


def parse_fields(given: list[str], methods: list[str]) -> list[str]:
    """The --tune fields, each known and used by at least one of the methods."""
    for name in given:
        if name not in FIELDS:
            raise PeftlabError(f"--tune {name}: not tunable; use some of: {', '.join(FIELDS)}")
        users = FIELDS[name][2]
        if users is not None and not set(users) & set(methods):
            raise PeftlabError(
                f"--tune {name}: none of the methods uses it (it is for {', '.join(users)})"
            )
    return list(dict.fromkeys(given))


def space(method: str, fields: list[str]) -> dict[str, Range]:
    """The ranges tuned for one method: the --tune fields it uses."""
    ranges = {}
    for name in fields:
        _, shared, users = FIELDS[name]
        if users is None or method in users:
            ranges[name] = shared or learning_rates(method)
    return ranges


def learning_rates(method: str) -> Range:
    """The method's range above, or for the other peft tuners one decade either side of
    the default rate its registry entry gives (no published range for small models)."""
    if method in LEARNING_RATES:
        return LEARNING_RATES[method]
    from peftlab.methods.registry import get_method

    rate = get_method(method).default_lr
    return Range(rate / 10, rate * 10, source="the method's default rate, a decade either side")


def latin_hypercube(ranges: dict[str, Range], trials: int, seed: int) -> list[dict]:
    """`trials` settings: each range cut into `trials` equal strata (log scale where
    marked), one point drawn in each, the strata paired at random across fields."""
    rng = random.Random(seed)
    columns = {}
    for name, r in ranges.items():
        strata = list(range(trials))
        rng.shuffle(strata)
        columns[name] = [r.at((s + rng.random()) / trials) for s in strata]
    return [{name: columns[name][i] for name in ranges} for i in range(trials)]


def defaults(cfg, method: str, names: list[str]) -> dict:
    """The settings a run of `method` gets untuned: its own rate, the config's others."""
    from peftlab.methods.registry import METHODS

    chosen = {}
    for name in names:
        value = getattr(getattr(cfg, FIELDS[name][0]), name)
        chosen[name] = METHODS[method].default_lr if name == "lr" and value is None else value
    return chosen


def apply(config: dict, params: dict) -> dict:
    """A run config (as a dict) with the tuned settings in their sections."""
    config = {
        section: dict(values) if isinstance(values, dict) else values
        for section, values in config.items()
    }
    for name, value in params.items():
        config[FIELDS[name][0]][name] = value
    return config


def distribution(r: Range):
    """The Optuna distribution of a range (recorded with each trial's parameters)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    if r.integer:
        return IntDistribution(int(r.low), int(r.high), log=r.log)
    return FloatDistribution(r.low, r.high, log=r.log)
