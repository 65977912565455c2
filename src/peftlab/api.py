"""The Python API: what the CLI does, callable from a notebook or a script.

Settings are the CLI's own, by the flag's name with underscores
(`peftlab.run(model="minilm-l6", dataset="rotten_tomatoes", method="ia3", epochs=1)`) or
by their dotted config path (`**{"train.epochs": 1}`), on top of an optional config (a
RunConfig, a dict shaped like the YAML, or a YAML file's path). They go through the same
validation as the CLI and fail with the same PeftlabError (the field, the bad value and
the fix). Results come back as plain dicts: a run's record (run.json), a comparison's
board (compare.json).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

from peftlab.config import (
    RunConfig,
    apply_mapping,
    coerce,
    field_path,
    flag_name,
    from_dict,
    iter_fields,
    load_yaml,
    set_path,
)
from peftlab.errors import ConfigError


def settings_by_name() -> dict[str, str]:
    """keyword -> dotted config path, for every flag of `peftlab run` (and each path)."""
    defaults = RunConfig()
    names = {}
    for owner, name, f in iter_fields(defaults):
        path = field_path(defaults, owner, name)
        names[flag_name(f).replace("-", "_")] = path
        names[path] = path
    return names


def build(config: RunConfig | dict | str | Path | None = None, **fields) -> RunConfig:
    """A validated RunConfig: defaults <- config <- fields."""
    if isinstance(config, RunConfig):
        cfg = copy.deepcopy(config)
    elif isinstance(config, dict):
        cfg = from_dict(config)
    else:
        cfg = RunConfig()
        if config is not None:
            apply_mapping(cfg, load_yaml(config), str(config))
    names = settings_by_name()
    for key, value in fields.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            fix = f"did you mean {', '.join(close)}?" if close else "see `peftlab run --help`"
            raise ConfigError(key, value, f"no such setting; {fix}")
        set_path(cfg, names[key], value, key)
    from peftlab.runner.checks import checked

    return checked(cfg)


def run(config: RunConfig | dict | str | Path | None = None, **fields) -> dict:
    """Fine-tune and evaluate, as `peftlab run`; returns the run's record (run.json)."""
    from peftlab.runner.pipeline import run as run_one

    return dict(run_one(build(config, **fields)))


def compare(
    methods: list[str] | str = (),
    seeds: list[int] | str = (0,),
    config: RunConfig | dict | str | Path | None = None,
    run_dirs: list[str | Path] = (),
    tune: list[str] | str | None = None,
    trials: int | None = None,
    jobs: int = 1,
    storage: str | None = None,
    **fields,
) -> dict:
    """Compare methods over seeds, as `peftlab compare`; returns the board (compare.json).
    `out` (a setting like the others) is the comparison's folder; `run_dirs`: finished
    runs to put on the same board (alone, they are compared without running anything)."""
    from peftlab.comparison.compare import compare as compare_runs
    from peftlab.comparison.compare import comparison_dir, execution_of, tuning_of
    from peftlab.errors import PeftlabError

    base = build(config, **fields)
    methods = coerce(list(methods) if isinstance(methods, tuple) else methods, list[str], "methods")
    seeds = coerce(list(seeds) if isinstance(seeds, tuple) else seeds, list[int], "seeds")
    if not methods and not run_dirs:
        raise PeftlabError("methods: give at least one method (see peftlab.list_methods())")
    searched = tuning_of(coerce(tune, list[str], "tune") if tune else None, trials, methods)
    execution = execution_of(storage, jobs)
    out = comparison_dir(base.out)
    return compare_runs(base, methods, seeds, out, [Path(d) for d in run_dirs], execution, searched)


class Adapter:
    """A trained adapter (or fine-tuned model) on its base, ready to predict."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.manifest = predictor.package.manifest

    def predict(self, texts: list[str] | str, batch_size: int = 16) -> list[dict]:
        """Labels with probabilities (classification) or generations, one dict per text."""
        from peftlab.errors import PeftlabError

        texts = [texts] if isinstance(texts, str) else list(texts)
        if batch_size < 1:
            raise PeftlabError(f"batch_size={batch_size}: use a number above 0")
        return self.predictor.predict(texts, batch_size)

    def __repr__(self) -> str:
        return f"Adapter({self.predictor.name!r})"


def load_adapter(
    path: str | Path, base: str | None = None, merged: bool = True, allow_pickle: bool = False
) -> Adapter:
    """An adapter folder (a run's `adapter/`) on its base model, as `peftlab predict`
    loads it: merged into the base where that is exact."""
    from peftlab.adapters.inference import Predictor
    from peftlab.adapters.package import open_package

    package = open_package(str(path), allow_pickle, base=base)
    return Adapter(Predictor(package, base=base, allow_pickle=allow_pickle, merged=merged))


def list_methods() -> list[str]:
    """The method names `method=` takes."""
    from peftlab.methods.registry import METHODS

    return list(METHODS)
