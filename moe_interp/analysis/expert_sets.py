"""Language shares and the paper's exclusive / shared expert sets (PAPER.md section 2)."""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..expert_set import ExpertSet

EPS = 1e-10  # the paper's denominator guard


def _languages(stats, languages: Sequence[str] | None) -> tuple[str, ...]:
    if languages is None:
        return tuple(stats.languages)
    if isinstance(languages, str):
        raise TypeError(f"languages must be a list of codes, got the string {languages!r}")
    for language in languages:
        stats.language_index(language)
    return tuple(languages)


def shares(stats, languages: Sequence[str] | None = None, k: int = 15) -> Float[Tensor, "lang layer expert"]:
    """`p[l, L, e]`: each language's share of expert `e`, over `languages`, after top-`k`.

    Per (language, layer) only the `k` most frequent experts keep their frequency (ties as
    `torch.topk`); `p = f~ / (sum over languages of f~ + 1e-10)`.
    """
    languages = _languages(stats, languages)
    if not 1 <= k <= stats.num_experts:
        raise ValueError(f"k must be in [1, {stats.num_experts}], got {k}")
    freq = stats.select(languages).frequency()
    top = torch.topk(freq, k, dim=-1).indices
    kept = torch.zeros_like(freq).scatter_(-1, top, freq.gather(-1, top))
    return kept / (kept.sum(0, keepdim=True) + EPS)


def _layer_positions(stats, layers) -> list[int]:
    if layers is None:
        return list(range(len(stats.layers)))
    return [stats.layer_index(int(layer)) for layer in layers]


def exclusive_experts(stats, target, k: int = 15, threshold: float = 0.4, layers=None, among=None) -> ExpertSet:
    """Experts with `sum_{l in target} p[l, L, e] > threshold` over the languages `among`."""
    targets = (target,) if isinstance(target, str) else tuple(target)
    among = _languages(stats, among)
    missing = [t for t in targets if t not in among]
    if missing:
        raise ValueError(f"target languages {missing} are not among {among}")
    p = shares(stats, among, k)
    positions = _layer_positions(stats, layers)
    selected = p[[among.index(t) for t in targets]].sum(0) > threshold
    return ExpertSet({stats.layers[i]: selected[i].nonzero().flatten().tolist() for i in positions})


def shared_experts(stats, languages=None, k: int = 15, threshold: float = 0.4, layers=None) -> ExpertSet:
    """Experts with `any p > 0 and all p < threshold`; strength = the first language's share."""
    languages = _languages(stats, languages)
    p = shares(stats, languages, k)
    positions = _layer_positions(stats, layers)
    selected = (p > 0).any(0) & (p < threshold).all(0)
    experts, strengths = {}, {}
    for i in positions:
        chosen = selected[i].nonzero().flatten().tolist()
        layer = stats.layers[i]
        experts[layer] = chosen
        strengths[layer] = {e: float(p[0, i, e]) for e in chosen}
    return ExpertSet(experts, strengths=strengths)
