"""Rank correlation with a bootstrap interval: how well one ordering of cells (estimated
effects, frequencies) predicts another (real effects). `mi.expert_attribution`'s agreement
checks use it; it takes any two equal-length sequences of numbers.
"""

import math
from typing import Any

import numpy as np

from moe_interp.core._checks import check_int, check_level

__all__ = ["rank_correlation"]


def rank_correlation(x: Any, y: Any, resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rank correlation of `x` and `y` and a percentile bootstrap interval
    (points resampled with replacement, `resamples` times): `(rho, low, high)`; `nan` for
    fewer than 3 points or a constant side.

    ```python
    >>> from moe_interp.analysis import rank_correlation
    >>> rank_correlation([1, 2, 3, 4, 5], [2, 4, 5, 9, 10])     # same order: 1, whatever the resample
    (1.0, 1.0, 1.0)
    >>> rho, low, high = rank_correlation([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5])
    >>> round(rho, 3), low <= rho <= high       # 1 - 6 * (1 + 1 + 1 + 1) / (6 * 35)
    (0.886, True)

    ```
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    level, resamples = check_level(level), check_int("resamples", resamples, 1)

    def spearman(a: np.ndarray, b: np.ndarray) -> Any:  # rows are samples
        ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
        ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))

    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        return math.nan, math.nan, math.nan
    rho = float(spearman(x, y))
    pick = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    samples = spearman(x[pick], y[pick])
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return rho, math.nan, math.nan
    low, high = np.percentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return rho, float(low), float(high)
