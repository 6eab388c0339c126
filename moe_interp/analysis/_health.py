"""Load and health of the experts per MoE layer: how evenly tokens spread over the experts, and
which experts are never chosen.

Computed from the counts alone (`count[language, layer, expert]`), per language and over all
languages together (the scope `"all"`, the languages' counts summed):

- `load`: tokens routed to each expert; `uniform`: the load every expert would carry if the
  routed tokens were spread evenly (`load.sum(-1) / num_experts`); `share = load / load.sum(-1)`
  against the uniform share `1 / num_experts`;
- `cv`: coefficient of variation of the load over the experts of a layer, `std / mean` with the
  population standard deviation (0 for a perfectly even load; `sqrt(E - 1)` when one expert takes
  everything); `max_over_mean`: the busiest expert's load over the mean (1 when even, at most `E`);
- `dead`: experts never chosen (load 0) where the scope routed tokens at all;
- `entropy`: the normalised routing entropy of the load (`mi.analysis.entropy`);
- `token_entropy`: the mean per-token routing entropy (each token's `softmax` of the router
  logits over all experts), over `log(num_experts)` like `entropy`, where the stats recorded it
  (`RouterRecord(entropy=True)`; else `None`): a layer whose load `entropy` is near 1 while its
  `token_entropy` is low spreads its tokens over all experts, each token routed sharply. On a
  router that scores by sigmoid it is the softmax of the raw logits, not a distribution the
  model uses (`RouterRecord`).

Intervals for `cv` and `max_over_mean` resample the texts within each language
(`mi.analysis.bootstrap`, needs the per-item counts `mi.profile` keeps); the scope `"all"` sums
each replicate's languages, so its interval keeps the corpus' language mix. A control is the same
analysis on another model over the same texts (the random-init twin): `mi.analysis.compare`.

Routing entropy per token needs the router's probabilities per token, which counts do not hold:
`RouterRecord(entropy=True)` sums it in the trace (`RoutingCounts.entropy_sum`).
"""

import dataclasses
import math

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from moe_interp.core._checks import check_int, check_level
from moe_interp.core._counts import RoutingCounts
from moe_interp.analysis._bootstrap import BootstrapResult, bootstrap
from moe_interp.analysis._divergence import entropy

__all__ = ["Health", "health"]

ALL = "all"  # the scope label of every language's counts together


def _scoped(stats: RoutingCounts) -> tuple[Tensor, Tensor]:
    """`[scope, layer, expert]` loads and `[scope]` tokens: each language, then all of them."""
    count = stats.count.cpu().long()
    tokens = stats.tokens.cpu().long()
    return torch.cat([count, count.sum(0, keepdim=True)]), torch.cat([tokens, tokens.sum(0, keepdim=True)])


def _spread(load: Tensor) -> Tensor:
    """`[2, ...]`: coefficient of variation and max / mean of `load` over its last axis (nan
    where nothing was routed)."""
    load = load.double()
    mean = load.mean(-1)
    std = load.std(-1, correction=0)
    nothing = mean == 0
    cv = torch.where(nothing, float("nan"), std / mean.clamp(min=1e-300))
    peak = torch.where(nothing, float("nan"), load.amax(-1) / mean.clamp(min=1e-300))
    return torch.stack([cv, peak])


@dataclasses.dataclass(frozen=True, eq=False)
class Health:
    """Load and health of the experts per MoE layer, per language and over all languages
    (the last scope, `"all"`); the module docstring defines each quantity.

    **Fields:** `scopes` (the languages, then `"all"`), `layers` (real indices), `num_experts`,
    `top_k`, `load[scope, layer, expert]` (tokens routed to each expert), `tokens[scope]`,
    `cv[scope, layer]`, `max_over_mean[scope, layer]`, `dead[scope, layer, expert]`,
    `entropy[scope, layer]`, the intervals `cv_interval` / `max_over_mean_interval`
    (`BootstrapResult` over texts, `None` without per-item counts or with `resamples=0`) and
    `token_entropy[scope, layer]` (`None` unless the stats recorded `RouterRecord(entropy=True)`).
    **Properties:** `share`, `uniform`, `dead_count`; **methods:** `dead_experts`, `to_pandas`.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> count = torch.tensor([[[4, 2, 0, 0]], [[2, 2, 2, 0]]])       # en, de; 1 layer, 4 experts
    >>> s = mi.RoutingStats(("en", "de"), (3,), 4, 2, count, count / 2.0, torch.tensor([3, 3]))
    >>> h = s.health()
    >>> h.scopes, h.dead_count.tolist()                             # expert 3 is never chosen
    (('en', 'de', 'all'), [[2], [1], [1]])
    >>> [round(v, 3) for v in h.cv[:, 0].tolist()], [round(v, 3) for v in h.max_over_mean[:, 0].tolist()]
    ([1.106, 0.577, 0.745], [2.667, 1.333, 2.0])

    ```
    """

    scopes: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    load: Int[Tensor, "scope layer expert"]
    tokens: Int[Tensor, " scope"]
    cv: Float[Tensor, "scope layer"]
    max_over_mean: Float[Tensor, "scope layer"]
    dead: Bool[Tensor, "scope layer expert"]
    entropy: Float[Tensor, "scope layer"]
    cv_interval: BootstrapResult | None = None
    max_over_mean_interval: BootstrapResult | None = None
    token_entropy: Float[Tensor, "scope layer"] | None = None

    def __repr__(self) -> str:
        dead = self.dead_count[-1].tolist()
        return (f"Health(scopes={len(self.scopes)}, layers={len(self.layers)}, experts={self.num_experts}, "
                f"dead per layer (all)={dead}, intervals={self.cv_interval is not None})")

    @property
    def uniform(self) -> Float[Tensor, "scope layer"]:
        """The load each expert would carry if the routed tokens were spread evenly:
        `load.sum(-1) / num_experts`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (0,), 4, 2, torch.tensor([[[4, 2, 2, 0]]]), torch.zeros(1, 1, 4),
        ...                     torch.tensor([4]))
        >>> s.health().uniform.tolist()
        [[2.0], [2.0]]

        ```
        """
        return self.load.double().sum(-1) / self.num_experts

    @property
    def share(self) -> Float[Tensor, "scope layer expert"]:
        """Each expert's share of the routed tokens, `load / load.sum(-1)` (uniform:
        `1 / num_experts`; `nan` where nothing was routed).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (0,), 4, 2, torch.tensor([[[4, 2, 2, 0]]]), torch.zeros(1, 1, 4),
        ...                     torch.tensor([4]))
        >>> s.health().share[0, 0].tolist()
        [0.5, 0.25, 0.25, 0.0]

        ```
        """
        load = self.load.double()
        return load / load.sum(-1, keepdim=True)

    @property
    def dead_count(self) -> Int[Tensor, "scope layer"]:
        """How many experts of each layer were never chosen, per scope.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (0, 1), 4, 1, torch.tensor([[[2, 0, 0, 0], [1, 1, 0, 0]]]),
        ...                     torch.zeros(1, 2, 4), torch.tensor([2]))
        >>> s.health().dead_count.tolist()
        [[3, 2], [3, 2]]

        ```
        """
        return self.dead.sum(-1)

    def dead_experts(self, scope: str = ALL) -> dict[int, tuple[int, ...]]:
        """`{layer: (expert, ...)}` of the experts never chosen in `scope` (a language or
        `"all"`), for the layers that have any.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (5, 6), 4, 1, torch.tensor([[[2, 0, 0, 0], [1, 1, 1, 1]]]),
        ...                     torch.zeros(1, 2, 4), torch.tensor([4]))
        >>> s.health().dead_experts()
        {5: (1, 2, 3)}

        ```
        """
        if scope not in self.scopes:
            raise KeyError(f"scope {scope!r} is not one of {list(self.scopes)} (a language, or {ALL!r})")
        dead = self.dead[self.scopes.index(scope)]
        return {layer: tuple(dead[i].nonzero().flatten().tolist())
                for i, layer in enumerate(self.layers) if bool(dead[i].any())}

    def to_pandas(self) -> pd.DataFrame:
        """One row per (scope, layer): tokens, routed, uniform, min and max load, `cv` and
        `max_over_mean` (with `_low` / `_high` interval columns when there are intervals),
        dead experts, entropy (and `token_entropy` when recorded).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (0,), 4, 1, torch.tensor([[[2, 1, 1, 0]]]), torch.zeros(1, 1, 4),
        ...                     torch.tensor([4]))
        >>> row = s.health().to_pandas().iloc[1]
        >>> row["scope"], int(row["routed"]), int(row["dead"]), float(row["max_over_mean"])
        ('all', 4, 1, 2.0)

        ```
        """
        rows = []
        uniform, dead = self.uniform, self.dead_count
        for s, scope in enumerate(self.scopes):
            for i, layer in enumerate(self.layers):
                row = {"scope": scope, "layer": layer, "tokens": int(self.tokens[s]),
                       "routed": int(self.load[s, i].sum()), "uniform": float(uniform[s, i]),
                       "min_load": int(self.load[s, i].min()), "max_load": int(self.load[s, i].max()),
                       "cv": float(self.cv[s, i]), "max_over_mean": float(self.max_over_mean[s, i]),
                       "dead": int(dead[s, i]), "entropy": float(self.entropy[s, i])}
                if self.token_entropy is not None:
                    row["token_entropy"] = float(self.token_entropy[s, i])
                for name, ci in (("cv", self.cv_interval), ("max_over_mean", self.max_over_mean_interval)):
                    if ci is not None:
                        row[f"{name}_low"], row[f"{name}_high"] = float(ci.low[s, i]), float(ci.high[s, i])
                rows.append(row)
        return pd.DataFrame(rows)


def health(stats: RoutingCounts, resamples: int = 200, level: float = 0.95, seed: int = 0) -> Health:
    """Load and health of the experts per MoE layer, per language and over all languages
    (module docstring), with bootstrap intervals over texts for `cv` and `max_over_mean` when
    `stats` keeps per-item counts (`resamples=0`: none).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])  # 4 texts, top-1
    >>> count = torch.stack([items[:2].sum(0), items[2:].sum(0)])    # en: texts 0-1, de: texts 2-3
    >>> s = mi.RoutingStats(("en", "de"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]),
    ...                     item_count=items, item_tokens=torch.tensor([2, 2, 2, 2]),
    ...                     item_language=torch.tensor([0, 0, 1, 1]))
    >>> h = mi.analysis.health(s, resamples=50)
    >>> h.load[-1, 0].tolist(), h.dead_count[:, 0].tolist()         # all: every expert used
    ([3, 1, 3, 1], [2, 2, 0])
    >>> round(float(h.cv[-1, 0]), 3), h.cv_interval.low.shape        # interval per scope and layer
    (0.5, torch.Size([3, 1]))

    ```
    """
    if ALL in stats.languages:
        raise ValueError(f"a group is labelled {ALL!r}, the label health gives all groups together; rename that "
                         "group (mi.trace(..., group=...) / the corpus key) to tell them apart")
    resamples, level, seed = check_int("resamples", resamples, 0), check_level(level), check_int("seed", seed, 0)
    load, tokens = _scoped(stats)
    spread = _spread(load)
    scoped = RoutingCounts((*stats.languages, ALL), stats.layers, stats.num_experts, stats.top_k, load,
                           torch.zeros(load.shape, dtype=torch.float64), tokens, stacks=stats.stacks)
    routed = load.sum(-1, keepdim=True) > 0
    intervals: tuple[BootstrapResult | None, BootstrapResult | None] = (None, None)
    if resamples and stats.item_count is not None:
        both = bootstrap(stats, _cv_and_peak, resamples=resamples, level=level, seed=seed)
        intervals = tuple(_part(both, i, name) for i, name in enumerate(("cv", "max_over_mean")))
    return Health((*stats.languages, ALL), stats.layers, stats.num_experts, stats.top_k, load, tokens, spread[0],
                  spread[1], (load == 0) & routed, entropy(scoped), *intervals, token_entropy=_token_entropy(stats))


def _token_entropy(stats: RoutingCounts) -> Tensor | None:
    """`[scope, layer]`: the mean per-token routing entropy over `log(num_experts)` per language
    and over all (the sums pooled), from `entropy_sum`; None where it was not recorded.

    ```python
    >>> import math, torch
    >>> import moe_interp as mi
    >>> from moe_interp.analysis._health import _token_entropy
    >>> count = torch.tensor([[[2, 0]], [[1, 1]]])                       # en: 2 tokens, de: 2 tokens, top-1
    >>> s = mi.RoutingStats(("en", "de"), (0,), 2, 1, count, count.double(), torch.tensor([2, 2]),
    ...                     entropy_sum=torch.tensor([[0.0], [2 * math.log(2)]], dtype=torch.float64))
    >>> _token_entropy(s)[:, 0].tolist()                                  # en sharp, de uniform; all: their mean
    [0.0, 1.0, 0.5]

    ```
    """
    if stats.entropy_sum is None:
        return None
    sums = stats.entropy_sum.cpu().double()
    sums = torch.cat([sums, sums.sum(0, keepdim=True)])
    tokens = _scoped(stats)[1].double()[:, None]
    mean = torch.where(tokens > 0, sums / tokens.clamp(min=1), float("nan"))
    return mean / math.log(stats.num_experts) if stats.num_experts > 1 else mean * 0.0


def _cv_and_peak(stats: RoutingCounts) -> Tensor:
    """`[2, scope, layer]`: the statistic each bootstrap replicate recomputes."""
    return _spread(_scoped(stats)[0])


def _part(result: BootstrapResult, i: int, name: str) -> BootstrapResult:
    return BootstrapResult(result.estimate[i], result.low[i], result.high[i], result.samples[:, i], result.level,
                           name, result.seed)

