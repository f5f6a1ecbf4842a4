"""Confidence intervals for accuracies (exact-match hit rates) and paired differences of them.

The Wilson score interval, written out because it is four lines and the runtime install has no
scipy or statsmodels; it stays inside [0, 1] and behaves at 0 % and 100 %, where the normal
approximation does not.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % (by default) Wilson score interval of a proportion hits / n."""
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def standard_error(p: float, n: int) -> float:
    """The binomial standard error of an accuracy p measured on n questions."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def paired_difference_se(a, b) -> tuple[float, float]:
    """The mean of ``a - b`` over the same questions and its standard error (per-question
    differences, which pairs away the shared difficulty); the SE is nan with fewer than two."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se
