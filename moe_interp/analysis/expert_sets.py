"""Language shares and the paper's exclusive / shared expert sets (arXiv 2601.14050; its
released code's algorithm: top-k per language and layer, shares across languages, thresholds).

Defaults scale with the model: the paper's `k` was chosen for 128 experts (Qwen3-30B-A3B,
top-8); `k=None` takes the same fraction of this model's experts (`PAPER.scaled_k`), so a
model with 16 or 8 experts works with every default. At 128 experts that is the paper's value.
"""

import numbers
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..expert_set import PAPER, ExpertSet, check_k  # noqa: F401  (check_k: re-exported)

EPS = 1e-10  # the paper's denominator guard


def check_threshold(threshold: float) -> float:
    """`threshold` as a float; it is a share of an expert's use, so it must lie in [0, 1].

    ```python
    >>> check_threshold(0.4), check_threshold(1)
    (0.4, 1.0)
    >>> check_threshold(float("nan"))
    Traceback (most recent call last):
    ValueError: threshold must be a number in [0, 1] (a language's share of an expert), got nan
    ```
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1] (a language's share of an expert), got {threshold!r}")
    return float(threshold)


def _languages(stats, languages: Sequence[str] | None, name: str = "languages") -> tuple[str, ...]:
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


def shares(stats, languages: Sequence[str] | None = None, k: int | None = None,
           paper_k: int = PAPER.exclusive_k) -> Float[Tensor, "lang layer expert"]:
    """`p[l, L, e]`: each language's share of expert `e`, over `languages`, after top-`k`.

    Per (language, layer) only the `k` most frequent experts keep their frequency (ties as
    `torch.topk`); `p = f~ / (sum over languages of f~ + 1e-10)`. `k=None`: `paper_k` of
    128 scaled to the model (`check_k`).
    """
    languages = _languages(stats, languages)
    k = check_k(k, stats.num_experts, stats.top_k, paper_k)
    freq = stats.select(languages).frequency()
    top = torch.topk(freq, k, dim=-1).indices
    kept = torch.zeros_like(freq).scatter_(-1, top, freq.gather(-1, top))
    return kept / (kept.sum(0, keepdim=True) + EPS)


def _layer_positions(stats, layers) -> list[int]:
    if layers is None:
        return list(range(len(stats.layers)))
    positions = [stats.layer_index(int(layer)) for layer in layers]
    if not positions:  # an empty selection would silently ablate or steer nothing
        raise ValueError(f"layers is empty; name some of {list(stats.layers)}, or pass None for all")
    return positions


def exclusive_experts(stats, target, k: int | None = None, threshold: float = PAPER.exclusive_threshold, layers=None,
                      among=None) -> ExpertSet:
    """Experts with `sum_{l in target} p[l, L, e] > threshold` over the languages `among`.

    On few languages this is not "used by the target only": with two languages an expert
    whose shares are 0.45 / 0.55 is exclusive to both at the paper's threshold 0.4. Only
    `threshold >= 0.5` makes the sets of different single targets disjoint.
    """
    if target is None:
        raise TypeError("target must be a language code or a list of them, got None")
    targets = _languages(stats, [target] if isinstance(target, str) else target, "target")
    among = _languages(stats, among, "among")
    threshold = check_threshold(threshold)
    missing = [t for t in targets if t not in among]
    if missing:
        raise ValueError(f"target languages {missing} are not among {among}")
    p = shares(stats, among, k)
    positions = _layer_positions(stats, layers)
    selected = p[[among.index(t) for t in targets]].sum(0) > threshold
    return ExpertSet({stats.layers[i]: selected[i].nonzero().flatten().tolist() for i in positions})


def shared_experts(stats, languages=None, k: int | None = None, threshold: float = PAPER.exclusive_threshold,
                   layers=None) -> ExpertSet:
    """Experts with `any p > 0 and all p < threshold`; strength = the first language's share."""
    languages = _languages(stats, languages)
    threshold = check_threshold(threshold)
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
