"""The leaderboard's statistics, on scipy.stats: confidence intervals of a method's
metric and a paired test between two methods on the same test examples.

- Over seeds (2 or more): Student's t interval of the mean of the seeds' metrics.
- One seed: a bootstrap interval (BCa) over the test examples' scores.
- Paired: both methods' per-example scores (means over their seeds) on the same test
  split (the split seed is fixed: data/sources.py), compared by a paired t-test: with hundreds
  of examples the mean difference is close to normal (central limit theorem), which is
  all the test assumes.
"""

from __future__ import annotations

import statistics

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BOOTSTRAP_RESAMPLES = 2000


def seed_interval(values: list[float]) -> tuple[float, float] | None:
    """95% t interval of the mean over seeds (None with fewer than two)."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) / len(values) ** 0.5
    if spread == 0:
        return mean, mean
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=spread)
    return float(low), float(high)


def example_interval(scores: list[float]) -> tuple[float, float] | None:
    """95% bootstrap (BCa) interval of the mean of per-example scores."""
    from scipy import stats

    values = np.asarray(scores, dtype=float)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(0),  # the same interval on every rebuild of a report
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of a paired t-test on per-example scores (1.0 when equal)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired scores must be on the same examples")
    if np.allclose(x, y):
        return 1.0
    return float(stats.ttest_rel(x, y).pvalue)
