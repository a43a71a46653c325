"""Seeded random draws, buffered: what the simulation and the agents draw clinical details from.

Deterministic: the sequence depends only on the generator's seed and the order of calls.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np


def _buffered(fill: Callable[[int], np.ndarray], size: int) -> Iterator[float]:
    while True:
        yield from fill(size).tolist()


class Draws:
    """Buffered draws from one numpy Generator: one vectorised refill per 64k values instead of
    a numpy call per clinical context (which would dominate the run time); ``u`` and ``z`` are
    a generator's ``__next__``, the cheapest call Python has.  Deterministic: the sequence
    depends only on the generator's seed and the order of calls."""

    SIZE = 1 << 16

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        #: uniform [0, 1)
        self.u: Callable[[], float] = _buffered(rng.random, self.SIZE).__next__
        #: standard normal
        self.z: Callable[[], float] = _buffered(rng.standard_normal, self.SIZE).__next__

    def below(self, n: int) -> int:
        """Uniform integer in [0, n) (u < 1 makes int(u * n) <= n - 1 exactly in binary64)."""
        return int(self.u() * n)

    def chance(self, p: float) -> bool:
        return self.u() < p

    def exp_ns(self, mean_ns: float) -> int:
        return int(-mean_ns * math.log(1.0 - self.u()))

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.z())

    def poisson(self, lam: float) -> int:
        """Poisson count by inversion (small means: per-visit orders and results)."""
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, int(round(lam + math.sqrt(lam) * self.z())))
        u, k, p = self.u(), 0, math.exp(-lam)
        c = p
        while u > c:
            k += 1
            p *= lam / k
            c += p
        return k
