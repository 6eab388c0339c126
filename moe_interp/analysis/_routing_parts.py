"""What a routing table mixes: which experts are chosen together (co-activation), and how much of
a language's routing is the kind or position of its tokens.

`co_activation_rate` normalises the pair counts `RouterRecord(co_activation=True)` records as
OLMoE's routing analysis does (Muennighoff et al. 2024, allenai/OLMoE
`scripts/run_moe_analysis.py`, `do_correlation_analysis`): the share of the tokens that chose
expert `i` which also chose `j`. `split_effect` compares, per layer, the routing of the parts of
a language (token kinds, `RouterRecord(by_token_kind=True)`; position buckets, `by_position=`)
with the routing of one part across languages: a language effect can hide a script or a
punctuation effect, and the other way round.
"""

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from moe_interp.analysis._divergence import METRICS, divergence
from moe_interp.core._counts import RoutingCounts

__all__ = ["SplitEffect", "co_activation_rate", "split_effect"]


def _pairs(stats: RoutingCounts) -> Tensor:
    if stats.co_activation is None:
        raise ValueError("these stats have no co-activation counts: record them with mi.RouterRecord(co_activation="
                         "True) in mi.trace, or mi.profile(model, corpus, mi.RouterRecord(co_activation=True))")
    return stats.co_activation


def co_activation_rate(stats: RoutingCounts, layers: Any = None, pooled: bool = False
                       ) -> Float[Tensor, "group layer expert expert2"]:
    """OLMoE's co-activation: `rate[g, l, i, j] = co_activation[g, l, i, j] / count[g, l, i]`,
    the share of the tokens routed to expert `i` that were also routed to `j` (`i != j`).

    **Arguments:** `layers`: any layer selection (`RoutingCounts.layer_positions`); `pooled`:
    the groups summed first (one group, `[1, layer, E, E]`).

    **Returns:** float64 `[group, layer, E, E]`; the diagonal is 0 (an expert is not its own
    partner), the row of an expert never chosen is `nan`. Each row sums to `top_k - 1` where
    every token fills its `top_k` slots. Not symmetric: `rate[i, j]` and `rate[j, i]` divide
    the same count by the load of `i` and of `j`. OLMoE's script counts only experts adjacent in
    the top-k ranking (`more_itertools.pairwise`); these are all pairs, as its paper defines it.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> pairs = torch.tensor([[[[3, 2, 1], [2, 2, 0], [1, 0, 1]]]])   # 3 tokens, top-2: {0,1}, {0,1}, {0,2}
    >>> count = pairs.diagonal(dim1=-2, dim2=-1)
    >>> s = mi.RoutingStats(("en",), (0,), 3, 2, count, count / 2.0, torch.tensor([3]), co_activation=pairs)
    >>> mi.analysis.co_activation_rate(s)[0, 0]
    tensor([[0.0000, 0.6667, 0.3333],
            [1.0000, 0.0000, 0.0000],
            [1.0000, 0.0000, 0.0000]], dtype=torch.float64)

    ```
    """
    positions = stats.layer_positions(layers)
    pairs = _pairs(stats)[:, positions].double()
    if pooled:
        pairs = pairs.sum(0, keepdim=True)
    load = pairs.diagonal(dim1=-2, dim2=-1)
    rate = pairs / load[..., None]  # 0 / 0: nan, the row of an expert never chosen
    eye = torch.eye(stats.num_experts, dtype=torch.bool)
    return torch.where(eye & (load[..., None] > 0), 0.0, rate)


@dataclasses.dataclass(frozen=True, eq=False)
class SplitEffect:
    """`split_effect`'s result: per MoE layer, how far apart the parts of one language route
    (`within[language, layer]`: the mean divergence over its pairs of parts) against how far
    apart languages route on one part (`across[part, layer]`: the mean over pairs of languages),
    and languages with their parts pooled (`pooled[layer]`, the plain language effect).

    Fields: `languages`, `parts` (kinds or position buckets), `layers`, `metric`, `tokens`
    (`[language, part]`), `within`, `across`, `pooled` (float64, `nan` where no pair had
    `min_tokens` on both sides). `to_pandas()` is one row per layer; `summary()` the means over layers.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, mi.RouterRecord(by_position=(0, 8))) as tr:
    ...     with tr.invoke(["The cat sat on the mat."] * 2, group="eng"):
    ...         pass
    ...     with tr.invoke(["Die Katze saß auf der Matte."] * 2, group="deu"):
    ...         pass
    >>> effect = tr.routing.split_effect(min_tokens=2)
    >>> effect.parts, effect.tokens.tolist()
    (('pos0-7', 'pos8+'), [[16, 30], [16, 42]])
    >>> effect.to_pandas().columns.tolist()
    ['layer', 'within', 'across', 'pooled']

    ```
    """

    languages: tuple[str, ...]
    parts: tuple[str, ...]
    layers: tuple[int, ...]
    metric: str
    tokens: Tensor
    within: Tensor
    across: Tensor
    pooled: Tensor

    def summary(self) -> dict[str, float]:
        """Means over layers: `within` (parts of a language), `across` (languages on a part),
        `pooled` (languages, parts pooled) and `within / across`: above 1, the parts of a
        language route further apart than languages do."""
        within, across = float(np.nanmean(self.within.numpy())), float(np.nanmean(self.across.numpy()))
        return {"within": within, "across": across, "pooled": float(np.nanmean(self.pooled.numpy())),
                "ratio": within / across if across > 0 else float("nan")}

    def to_pandas(self) -> pd.DataFrame:
        """One row per layer: `within` (mean over languages), `across` (mean over parts), `pooled`."""
        with _quiet():
            return pd.DataFrame({"layer": list(self.layers), "within": np.nanmean(self.within.numpy(), 0),
                                 "across": np.nanmean(self.across.numpy(), 0), "pooled": self.pooled.numpy()})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's "mean of empty slice": an all-nan mean stays nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _cells(stats: RoutingCounts, level: int) -> tuple[list[str], list[str], Tensor, Tensor]:
    """The groups `"<language>/<part>/..."` summed into `(language, part)` cells (the part is the
    label's component `level`; other components summed over): languages, parts, count
    `[language, part, layer, E]` and tokens `[language, part]`."""
    split = [label.split("/") for label in stats.groups]
    if any(len(parts) < 2 for parts in split):
        plain = [label for label, parts in zip(stats.groups, split) if len(parts) < 2]
        raise ValueError(f"split_effect compares the parts of each group, and groups {plain[:3]} are not split: "
                         "record with mi.RouterRecord(by_token_kind=True) or by_position=True, one invoke per "
                         "language (tr.invoke(texts, group=language)), so groups read '<language>/<part>'")
    try:
        keys = [(parts[0], parts[level]) for parts in split]
    except IndexError:
        raise ValueError(f"level={level} is not a component of the groups {stats.groups[:3]} (split on '/')") from None
    languages = list(dict.fromkeys(k[0] for k in keys))
    parts = list(dict.fromkeys(k[1] for k in keys))
    count = torch.zeros(len(languages), len(parts), len(stats.layers), stats.num_experts, dtype=torch.long)
    tokens = torch.zeros(len(languages), len(parts), dtype=torch.long)
    for g, (language, part) in enumerate(keys):
        count[languages.index(language), parts.index(part)] += stats.count[g].long()
        tokens[languages.index(language), parts.index(part)] += int(stats.tokens[g])
    return languages, parts, count, tokens


def _mean_pairs(matrix: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """Per layer, the mean of `matrix[layer, a, b]` over pairs `a < b` of `members` (nan: none)."""
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
    if not pairs:
        return np.full(matrix.shape[0], np.nan)
    values = np.stack([matrix[:, a, b] for a, b in pairs], 1)
    with _quiet():
        return np.nanmean(values, 1)


def split_effect(stats: RoutingCounts, metric: str = "js", layers: Any = None, level: int = -1,
                 min_tokens: int = 10) -> SplitEffect:
    """How the parts of a language route (token kinds, position buckets) against how languages
    route, per MoE layer.

    `stats` has groups `"<language>/<part>"`: a trace with one invoke per language and
    `RouterRecord(by_token_kind=True)` (parts `first`, `punct`, `digit`, ...) or
    `by_position=...` (parts `pos0`, `pos1-3`, ...); with both, `level` picks the component
    compared (`1` the kind, `-1` the last) and the other is summed over. Per layer: `within`, the
    mean `metric` divergence (`RoutingStats.divergence`) between the parts of each language;
    `across`, between the languages on each part; `pooled`, between the languages with their
    parts pooled. A cell (language, part) with fewer than `min_tokens` tokens is left out: a
    distribution over few tokens sits far from every other one by chance alone.

    If `within` is as large as `across` or larger, what a token is (a digit, punctuation, the
    first token) moves routing as much as the language it is in, and a language comparison whose
    texts differ in such tokens (scripts without spaces, more digits) measures them too.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> texts = mi.datasets.udhr(["eng", "deu", "fra"], split="heldout")
    >>> with mi.trace(model, mi.RouterRecord(by_token_kind=True)) as tr:
    ...     for language, some in texts.items():
    ...         with tr.invoke(some[:4], group=language, truncation=True, max_length=64):
    ...             pass
    >>> effect = mi.analysis.split_effect(tr.routing)
    >>> effect.parts, effect.within.shape, effect.across.shape
    (('first', 'special', 'punct', 'digit', 'space', 'other'), torch.Size([3, 4]), torch.Size([6, 4]))
    >>> sorted(effect.summary())
    ['across', 'pooled', 'ratio', 'within']

    ```
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    positions = stats.layer_positions(layers)
    languages, parts, count, tokens = _cells(stats, level)
    kept = tokens >= max(int(min_tokens), 1)
    flat = count[..., positions, :].reshape(len(languages) * len(parts), len(positions), stats.num_experts)
    cells = RoutingCounts(tuple(f"{language}/{part}" for language in languages for part in parts),
                          tuple(stats.layers[i] for i in positions), stats.num_experts, stats.top_k, flat,
                          flat.double(), tokens.reshape(-1))
    matrix = divergence(cells, metric).numpy()  # [layer, cell, cell]; nan for cells without tokens
    cell = lambda l, p: l * len(parts) + p  # noqa: E731
    within = np.stack([_mean_pairs(matrix, [cell(l, p) for p in range(len(parts)) if kept[l, p]])
                       for l in range(len(languages))])
    across = np.stack([_mean_pairs(matrix, [cell(l, p) for l in range(len(languages)) if kept[l, p]])
                       for p in range(len(parts))])
    total = count[..., positions, :].sum(1)
    whole = RoutingCounts(tuple(languages), cells.layers, stats.num_experts, stats.top_k, total, total.double(),
                          tokens.sum(1))
    enough = [l for l in range(len(languages)) if int(tokens[l].sum()) >= max(int(min_tokens), 1)]
    pooled = _mean_pairs(divergence(whole, metric).numpy(), enough)
    return SplitEffect(tuple(languages), tuple(parts), cells.layers, metric, tokens, torch.from_numpy(within),
                       torch.from_numpy(across), torch.from_numpy(pooled))
