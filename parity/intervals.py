"""Confidence intervals of the fidelity metrics, so a verdict can say how sure it is.

A metric is a statistic of two samples (staging, production); its interval is a seeded bootstrap
of both: each side is redrawn from itself, at its own size, and the metric recomputed.  The units
redrawn are the independent ones:

* resource mix and hour-of-day profile (Jensen-Shannon distance): **clinical contexts** - the
  counts are redrawn as a multinomial at the number of contexts (a context's requests share its
  hour and its record types, so requests are not independent draws);
* inter-arrival times and requests per context (KS D): **clinical contexts** - the profile keeps
  at most 4000 order statistics of each distribution and the true count; each order statistic is
  redrawn with the weight of the observations it stands for (a multinomial at the true count), so
  the interval has the width the full sample would give;
* burst ratio (median peak 5-minute count per replica-day, staging over production):
  **replica-days**, redrawn with replacement on each side.

The interval is the central ``confidence`` share of the redrawn values, shifted so that their
median sits on the metric's own value: a distance between two redrawn samples carries the noise of
both draws, so the redrawn values sit above the observed one (by up to 2x for JS distances near
0); their spread, not their level, is what the interval takes from them.  Seeded
per (agent class, metric): the same profiles give the same interval, whatever else is computed.
Coverage and break-glass checks have no interval: a pair or a drill is in staging or it is not.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SEED = 20260105


@dataclass(frozen=True)
class Bootstrap:
    """How many resamples and which central share of them an interval spans."""

    resamples: int = 400
    confidence: float = 0.95

    def rng(self, salt: str) -> np.random.Generator:
        """A generator seeded by the metric it serves (``salt``), independent of call order."""
        return np.random.default_rng([SEED, zlib.crc32(salt.encode())])

    def bounds(self, draws: np.ndarray, value: float) -> tuple[float, float]:
        """The central ``confidence`` spread of ``draws`` around their median, placed around
        ``value`` (never below 0: every metric here is a distance or a ratio)."""
        tail = (1 - self.confidence) / 2 * 100
        lo, med, hi = np.percentile(draws, [tail, 50, 100 - tail])
        return round(max(0.0, float(value - (med - lo))), 6), round(float(value + (hi - med)), 6)


def jsd_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon distance (base 2) of two matrices of probability rows."""
    m = (a + b) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ka = np.where(a > 0, a * np.log2(a / m), 0.0).sum(axis=1)
        kb = np.where(b > 0, b * np.log2(b / m), 0.0).sum(axis=1)
    return np.sqrt(np.maximum(0.0, (ka + kb) / 2))


def jsd_interval(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int, value: float, boot: Bootstrap,
                 salt: str) -> tuple[float, float] | None:
    """Interval of the JS distance of count vectors ``a`` and ``b`` drawn from ``n_a`` and ``n_b``
    independent units (clinical contexts)."""
    if boot.resamples <= 0 or n_a <= 0 or n_b <= 0 or a.sum() <= 0 or b.sum() <= 0:
        return None
    rng = boot.rng(salt)
    ra = rng.multinomial(n_a, a / a.sum(), size=boot.resamples) / n_a
    rb = rng.multinomial(n_b, b / b.sum(), size=boot.resamples) / n_b
    return boot.bounds(jsd_rows(ra, rb), value)


def _resampled_cdfs(sample: np.ndarray, n: int, grid: np.ndarray, resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Empirical CDFs at ``grid`` of ``resamples`` redraws of a sample of ``n`` observations
    summarised by the sorted order statistics ``sample`` (each stands for n / len(sample))."""
    k = len(sample)
    total = max(n, k)
    weights = rng.multinomial(total, np.full(k, 1.0 / k), size=resamples)
    cum = np.cumsum(weights, axis=1) / total
    idx = np.searchsorted(sample, grid, side="right")  # order statistics <= each grid point
    return np.where(idx > 0, cum[:, np.maximum(idx - 1, 0)], 0.0)


def ks_interval(a: list[float], n_a: int, b: list[float], n_b: int, value: float, boot: Bootstrap,
                salt: str) -> tuple[float, float] | None:
    """Interval of the two-sample KS statistic D of two quantile samples standing for ``n_a`` and
    ``n_b`` observations."""
    if boot.resamples <= 0 or not a or not b:
        return None
    sa, sb = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    grid = np.unique(np.concatenate([sa, sb]))
    rng = boot.rng(salt)
    fa = _resampled_cdfs(sa, n_a, grid, boot.resamples, rng)
    fb = _resampled_cdfs(sb, n_b, grid, boot.resamples, rng)
    return boot.bounds(np.abs(fa - fb).max(axis=1), value)


def median_ratio_interval(a: list[float], b: list[float], value: float, boot: Bootstrap,
                          salt: str) -> tuple[float, float] | None:
    """Interval of median(a) / median(b), each side redrawn with replacement (replica-days)."""
    if boot.resamples <= 0 or not a or not b:
        return None
    rng = boot.rng(salt)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ma = np.median(xa[rng.integers(0, len(xa), size=(boot.resamples, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), size=(boot.resamples, len(xb)))], axis=1)
    ok = mb > 0
    if not ok.any():
        return None
    return boot.bounds(ma[ok] / mb[ok], value)
