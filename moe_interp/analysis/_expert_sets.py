"""Language shares and the paper's exclusive / shared expert sets (arXiv 2601.14050; its
released code's algorithm: top-k per language and layer, shares across languages, thresholds).

Defaults scale with the model: the paper's `k` was chosen for 128 experts (Qwen3-30B-A3B,
top-8); `k=None` takes the same fraction of this model's experts (`PAPER.scaled_k`), so a
model with 16 or 8 experts works with every default. At 128 experts that is the paper's value.
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from moe_interp.core._checks import check_threshold
from moe_interp.core._counts import RoutingCounts
from moe_interp.core._expert_set import PAPER, ExpertSet, check_k

__all__ = ["EPS", "THRESHOLD", "exclusive_experts", "exclusive_mask", "shared_experts", "shared_mask", "shares"]

EPS = 1e-10  # the paper's denominator guard
THRESHOLD = PAPER.exclusive_threshold  # 0.4: the default share threshold of exclusive / shared sets


def _languages(stats: RoutingCounts, languages: Sequence[str] | None, name: str = "languages") -> tuple[str, ...]:
    """Checked labels; `None` means all. A repeat would count its share twice, so it is refused."""
    if languages is None:
        return tuple(stats.languages)
    if isinstance(languages, str):
        raise TypeError(f"{name} must be a list of codes, got the string {languages!r}")
    languages = tuple(languages)
    if not languages:
        raise ValueError(f"{name} is empty; name some languages, or pass None for all of {list(stats.languages)}")
    repeated = sorted({l for l in languages if languages.count(l) > 1})
    if repeated:
        raise ValueError(f"{name} lists {repeated} more than once; give each language once")
    for language in languages:
        stats.language_index(language)
    return languages


def shares(stats: RoutingCounts, languages: Sequence[str] | None = None, k: int | None = None,
           paper_k: int = PAPER.exclusive_k) -> Float[Tensor, "lang layer expert"]:
    """`p[l, L, e]`: each language's share of expert `e`, over `languages`, after top-`k`.

    Per (language, layer) only the `k` most frequent experts keep their frequency (ties as
    `torch.topk`); `p = f~ / (sum over languages of f~ + 1e-10)`. `k=None`: `paper_k` of
    128 scaled to the model (`check_k`).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> s = mi.analysis.shares(p, ["en", "zh"])
    >>> s.shape, round(float(s[:, 0].sum(0).max()), 6)       # an expert's shares sum to 1 (or 0)
    (torch.Size([2, 48, 128]), 1.0)

    ```
    """
    languages = _languages(stats, languages)
    k = check_k(k, stats.num_experts, stats.top_k, paper_k)
    freq = stats.select(languages).frequency()
    top = torch.topk(freq, k, dim=-1).indices
    kept = torch.zeros_like(freq).scatter_(-1, top, freq.gather(-1, top))
    return kept / (kept.sum(0, keepdim=True) + EPS)


def exclusive_mask(p: Float[Tensor, "lang layer expert"], threshold: float = THRESHOLD
                   ) -> Bool[Tensor, "lang layer expert"]:
    """The paper's exclusive rule on shares `p`: `p > threshold` (strict), per language.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> p = torch.tensor([[[0.7, 0.4, 0.0]], [[0.3, 0.6, 1.0]]])     # 2 languages, 1 layer, 3 experts
    >>> mi.analysis.exclusive_mask(p, 0.4)[:, 0].tolist()
    [[True, False, False], [False, True, True]]

    ```
    """
    return p > check_threshold(threshold)


def shared_mask(p: Float[Tensor, "lang layer expert"], threshold: float = THRESHOLD) -> Bool[Tensor, "layer expert"]:
    """The paper's shared rule on shares `p`: used by some language (`any p > 0`) and no
    language's share reaching `threshold` (`all p < threshold`).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> p = torch.tensor([[[0.7, 0.5, 0.0]], [[0.3, 0.5, 0.0]]])
    >>> mi.analysis.shared_mask(p, 0.6)[0].tolist()
    [False, True, False]

    ```
    """
    threshold = check_threshold(threshold)
    return (p > 0).any(0) & (p < threshold).all(0)


def exclusive_experts(stats: RoutingCounts, target: str | Sequence[str], k: int | None = None,
                      threshold: float = THRESHOLD, layers: Any = None,
                      among: Sequence[str] | None = None) -> ExpertSet:
    """Experts with `sum_{l in target} p[l, L, e] > threshold` over the languages `among`.

    On few languages this is not "used by the target only": with two languages an expert
    whose shares are 0.45 / 0.55 is exclusive to both at the paper's threshold 0.4. Only
    `threshold >= 0.5` makes the sets of different single targets disjoint. `layers`: any
    layer selection (`RoutingCounts.layer_positions`), e.g. `"middle"`.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> {l: mi.analysis.exclusive_experts(p, l).size for l in ("en", "sw")}
    {'en': 205, 'sw': 271}
    >>> sorted(mi.analysis.exclusive_experts(p, "sw", layers="middle"))[:3]
    [10, 11, 12]

    ```
    """
    if target is None:
        raise TypeError("target must be a language code or a list of them, got None")
    targets = _languages(stats, [target] if isinstance(target, str) else target, "target")
    among = _languages(stats, among, "among")
    missing = [t for t in targets if t not in among]
    if missing:
        raise ValueError(f"target languages {missing} are not among {among}")
    p = shares(stats, among, k)
    positions = stats.layer_positions(layers)
    selected = exclusive_mask(p[[among.index(t) for t in targets]].sum(0, keepdim=True), threshold)[0]
    return ExpertSet({stats.layers[i]: selected[i].nonzero().flatten().tolist() for i in positions})


def shared_experts(stats: RoutingCounts, languages: Sequence[str] | None = None, k: int | None = None,
                   threshold: float = THRESHOLD, layers: Any = None) -> ExpertSet:
    """Experts with `any p > 0 and all p < threshold`; strength = the first language's share.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> s = mi.analysis.shared_experts(p, ["en", "zh"], k=20, threshold=0.7, layers=range(10, 40))
    >>> s.size, round(s.mean_strength(), 3)
    (420, 0.507)

    ```
    """
    languages = _languages(stats, languages)
    p = shares(stats, languages, k)
    positions = stats.layer_positions(layers)
    selected = shared_mask(p, threshold)
    experts, strengths = {}, {}
    for i in positions:
        chosen = selected[i].nonzero().flatten().tolist()
        layer = stats.layers[i]
        experts[layer] = chosen
        strengths[layer] = {e: float(p[0, i, e]) for e in chosen}
    return ExpertSet(experts, strengths=strengths)
