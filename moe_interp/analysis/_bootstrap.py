"""Confidence intervals by resampling items (texts) within each language.

Needs the per-item counts `RoutingCounts.item_count` that `mi.profile` keeps. Each resample
draws, for every language, as many items as it has, with replacement; the statistic is
recomputed on the counts those items add up to; intervals are percentile intervals, the
package's one method (`interval`; why: the module docstring of `moe_interp.analysis._evidence`).
The unit is the text, the languages fixed: these intervals say how precisely the texts measure
these languages, not how a claim about languages or families would generalise (for that,
`family_evidence` and `layer_evidence` resample languages). Redrawn texts make plug-in
divergences larger, so divergence replicates sit above their estimate: check it against
`low` before reading the interval as centred on it.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from moe_interp.core._checks import check_int, check_level
from moe_interp.core._counts import RoutingCounts
from moe_interp.analysis._divergence import divergence
from moe_interp.analysis._expert_sets import THRESHOLD, exclusive_experts, shared_experts, shares

__all__ = ["STATISTICS", "BootstrapResult", "bootstrap", "resample"]


@dataclasses.dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Percentile bootstrap of one statistic (the package's one interval method, see `interval`).

    **Fields:** `estimate` (on the full data), `low` / `high` (the `level` interval, per
    element), `samples` (the statistic on each resample: `[resamples, ...]`), `level`,
    `statistic` (its name), `seed`.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()      # the paper's released counts keep no per-item counts
    >>> r = mi.analysis.bootstrap(p.select(["en"]), lambda s: s.tokens.double(), resamples=3)
    Traceback (most recent call last):
    ValueError: these stats keep no per-item counts (item_count); record them with mi.profile, which keeps them, to bootstrap over items

    ```
    """

    estimate: Tensor
    low: Tensor
    high: Tensor
    samples: Tensor
    level: float
    statistic: str
    seed: int

    def __repr__(self) -> str:
        shape = tuple(self.estimate.shape)
        return f"BootstrapResult({self.statistic}, shape={shape}, resamples={len(self.samples)}, level={self.level})"


def _divergence(stats: RoutingCounts, metric: str = "js", layers: Any = None) -> Tensor:
    return divergence(stats, metric, layers)


def _shares(stats: RoutingCounts, languages: Sequence[str] | None = None, k: int | None = None) -> Tensor:
    return shares(stats, languages, k)


def _exclusive_sizes(stats: RoutingCounts, k: int | None = None, threshold: float = THRESHOLD, layers=None) -> Tensor:
    return torch.tensor([float(exclusive_experts(stats, l, k=k, threshold=threshold, layers=layers).size)
                         for l in stats.languages], dtype=torch.float64)


def _shared_size(stats: RoutingCounts, languages: Sequence[str] | None = None, k: int | None = None, threshold: float = THRESHOLD,
                 layers=None) -> Tensor:
    return torch.tensor(float(shared_experts(stats, languages, k=k, threshold=threshold, layers=layers).size),
                        dtype=torch.float64)


STATISTICS: dict[str, Callable[..., Tensor]] = {
    "divergence": _divergence,          # [layer, lang, lang]; kwargs metric, layers
    "shares": _shares,                  # [lang, layer, expert]; kwargs languages, k
    "exclusive_sizes": _exclusive_sizes,  # [lang]; kwargs k, threshold, layers
    "shared_size": _shared_size,        # []; kwargs languages, k, threshold, layers
}


def resample(stats: RoutingCounts, generator: torch.Generator) -> RoutingCounts:
    """One bootstrap replicate of `stats`: items drawn with replacement within each language.

    `gate_mass` is not kept per item, so the replicate's `gate_mass` is zero.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])  # 4 texts, top-1
    >>> count = torch.stack([items[:2].sum(0), items[2:].sum(0)])    # en: texts 0-1, de: texts 2-3
    >>> s = mi.RoutingStats(("en", "de"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]),
    ...                     item_count=items, item_tokens=torch.tensor([2, 2, 2, 2]),
    ...                     item_language=torch.tensor([0, 0, 1, 1]))
    >>> r = mi.analysis.resample(s, torch.Generator().manual_seed(0))
    >>> r.tokens.tolist(), r.count.sum().item()           # each language redraws its 2 texts of 2 tokens
    ([4, 4], 8)

    ```
    """
    if stats.item_count is None or stats.item_tokens is None or stats.item_language is None:
        raise ValueError("these stats keep no per-item counts (item_count); record them with mi.profile, "
                         "which keeps them, to bootstrap over items")
    n_items = stats.item_count.shape[0]
    weights = torch.zeros(len(stats.languages), n_items, dtype=torch.float64)
    for lang in range(len(stats.languages)):
        members = (stats.item_language == lang).nonzero().flatten()
        if len(members):
            drawn = members[torch.randint(len(members), (len(members),), generator=generator)]
            weights[lang].index_add_(0, drawn, torch.ones(len(drawn), dtype=torch.float64))
    flat = stats.item_count.reshape(n_items, -1).double()
    count = (weights @ flat).round().long().reshape(stats.count.shape)
    tokens = (weights @ stats.item_tokens.double()).round().long()
    return type(stats)(stats.languages, stats.layers, stats.num_experts, stats.top_k, count,
                       torch.zeros(count.shape, dtype=torch.float64), tokens, meta={**stats.meta, "bootstrap": True},
                       stacks=stats.stacks)


def bootstrap(stats: RoutingCounts, statistic: str | Callable[[RoutingCounts], Tensor] = "divergence",
              resamples: int = 200, level: float = 0.95, seed: int = 0, **kwargs) -> BootstrapResult:
    """Percentile confidence intervals of a statistic, resampling items within languages
    (the package's one interval method, see `interval`; the unit is the text: module docstring).

    **Arguments:** `statistic`: a name in `STATISTICS` (`"divergence"`, `"shares"`,
    `"exclusive_sizes"`, `"shared_size"`; `kwargs` go to it) or any function
    `RoutingCounts -> Tensor`; `resamples`, how many; `level` of the interval; `seed`.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])  # 4 texts, top-1
    >>> count = torch.stack([items[:2].sum(0), items[2:].sum(0)])    # en: texts 0-1, de: texts 2-3
    >>> s = mi.RoutingStats(("en", "de"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]),
    ...                     item_count=items, item_tokens=torch.tensor([2, 2, 2, 2]),
    ...                     item_language=torch.tensor([0, 0, 1, 1]))
    >>> ci = mi.analysis.bootstrap(s, "divergence", resamples=50)    # en and de never share an expert
    >>> float(ci.estimate[0, 0, 1]), float(ci.low[0, 0, 1]), float(ci.high[0, 0, 1])
    (1.0, 1.0, 1.0)

    ```
    """
    if "n" in kwargs:  # kwargs go to the statistic, which would name n as its own unknown argument
        raise TypeError("bootstrap's n is named resamples now: bootstrap(stats, statistic, resamples=200)")
    if isinstance(statistic, str):
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; use one of {sorted(STATISTICS)} or a function")
        name, base = statistic, STATISTICS[statistic]
        function = lambda s: base(s, **kwargs)
    else:
        if kwargs:
            raise TypeError("keyword arguments only apply to named statistics; close over them in your function")
        name, function = getattr(statistic, "__name__", "custom"), statistic
    level, resamples, seed = check_level(level), check_int("resamples", resamples, 1), check_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    samples = torch.stack([torch.as_tensor(function(resample(stats, generator))).double() for _ in range(resamples)])
    estimate = torch.as_tensor(function(stats)).double()
    alpha = (1 - level) / 2
    quantiles = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    low, high = torch.nanquantile(samples, quantiles, dim=0)
    return BootstrapResult(estimate, low, high, samples, level, name, seed)
