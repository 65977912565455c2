"""A run's config checked and completed with what every stage knows: the registry's
methods, the installed trackers, the method's learning rate and this machine's precision.

config.py checks what a config says on its own; this adds what needs the stages below it,
so config.py imports none of them.
"""

from __future__ import annotations

from peftlab.config import RunConfig
from peftlab.methods.registry import check_method_args, get_method
from peftlab.runner.tracking import check_trackers
from peftlab.training import precision


def checked(cfg: RunConfig) -> RunConfig:
    """`cfg.validate()`, then the method's and the trackers' checks."""
    cfg.validate()
    check_method_args(cfg)
    if cfg.track.report_to:
        check_trackers(cfg.track.report_to)
    return cfg


def resolved(cfg: RunConfig) -> RunConfig:
    """`cfg.resolved()` with the method's own default learning rate and the precision
    "auto" picks on this machine: what run.json records."""
    cfg = cfg.resolved(default_lr=get_method(cfg.method.name).default_lr)
    cfg.train.precision = precision.resolve(cfg.train.precision)
    return cfg
