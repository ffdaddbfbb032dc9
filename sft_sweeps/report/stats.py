"""The statistics of the report: mean with a t-interval, paired tests, Holm's correction, and how many
seeds a difference needs.

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
POWER = 0.80
# Seeds beyond this are reported as "more than MAX_SEEDS": a difference that small is not worth the runs.
MAX_SEEDS = 1000


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


def paired_t_power(effect_size: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with `n` pairs at standardized effect `effect_size`.

    The effect size is Cohen's d_z: mean difference over the standard deviation of the differences. Under
    it, t follows a noncentral t with n-1 degrees of freedom and noncentrality d_z * sqrt(n).
    """
    if n < 2:
        return 0.0
    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    noncentrality = abs(effect_size) * math.sqrt(n)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


@dataclass(frozen=True)
class SeedsNeeded:
    """Pairs (seeds) a paired t-test needs to detect the observed difference; None with a note if unknown."""

    n: int | None
    effect_size: float | None
    note: str = ""

    def text(self) -> str:
        """For tables: `12 seeds`, `>1000 seeds`, or why it is unknown."""
        if self.n is None:
            return self.note or "n/a"
        return f">{MAX_SEEDS} seeds" if self.n > MAX_SEEDS else f"{self.n} seeds"


def seeds_for_power(
    a: Sequence[float], b: Sequence[float], power: float = POWER, alpha: float = ALPHA
) -> SeedsNeeded:
    """Seeds needed for a two-sided paired t-test of a - b at `alpha` to reach `power`, taking the observed
    mean and standard deviation of the paired differences as the truth (a plan for the next run, not a
    guarantee: with few seeds the spread itself is uncertain). Before Holm's correction, so with several
    strategies compared it is a lower bound.

    Example:
        >>> seeds_for_power([1.0, 2.0, 0.0], [0.0, 0.0, 0.0]).n   # d_z = 1: 10 pairs (G*Power: 10)
        10
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return SeedsNeeded(None, None, "needs 2+ seeds")
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return SeedsNeeded(None, None, "differences have no variance")
    effect = float(d.mean()) / sd
    if effect == 0.0:
        return SeedsNeeded(MAX_SEEDS + 1, 0.0)
    n = 2
    while paired_t_power(effect, n, alpha) < power:
        n += 1
        if n > MAX_SEEDS:
            break
    return SeedsNeeded(n, effect)
