"""The statistics of the report: mean with a t-interval, paired tests, Holm's correction.

Example:
    >>> mean_ci([0.4, 0.5, 0.6]).mean
    0.5
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
# Sign flips drawn by the item-level permutation test when 2**n exceeds it; the generator is seeded,
# so the p-value is the same on every rerun.
PERMUTATIONS = 9999


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds and the half-width of its 95% t-interval (None with fewer than 2 values)."""

    mean: float
    half_width: float | None
    n: int


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and t-distribution confidence half-width of `values` (e.g. one metric over seeds)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return MeanCI(mean, None, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return MeanCI(mean, float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * sem, int(x.size))


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired test: mean difference (a - b), number of pairs, p-value (None: untestable)."""

    diff: float
    n: int
    p: float | None
    note: str = ""


def paired_t(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of a - b (e.g. one metric of two strategies, paired by seed).

    Fewer than 2 pairs, or differences without variance, give `p=None` with a note: a t-test says
    nothing there.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return PairedTest(float(d.mean()) if d.size else math.nan, int(d.size), None, "fewer than 2 pairs")
    # Equal up to rounding: scipy would divide by a standard deviation of ~1e-17.
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return PairedTest(float(d.mean()), int(d.size), None, "differences have no variance")
    return PairedTest(float(d.mean()), int(d.size), float(stats.ttest_rel(a, b).pvalue))


def paired_permutation(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedTest:
    """Paired sign-flip permutation test of mean(a - b) (e.g. per-item correctness of two strategies).

    Exact when 2**n <= PERMUTATIONS, else PERMUTATIONS random flips from a seeded generator. On 0/1 items
    of one seed it is a permutation version of McNemar's test.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    if d.size == 0:
        return PairedTest(math.nan, 0, None, "no common items")
    if np.all(d == 0):
        return PairedTest(0.0, int(d.size), 1.0)
    result = stats.permutation_test(
        (x, y),
        lambda u, v, axis: np.mean(u - v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=PERMUTATIONS,
        batch=1000,  # bounds memory to 1000 x n items per step
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return PairedTest(float(d.mean()), int(d.size), float(result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (family-wise error control)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
