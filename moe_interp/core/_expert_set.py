"""`ExpertSet`: which experts of which layers, optionally with a strength each; the paper's
settings for choosing them (`PAPER`) and the check of `k` that scales them to any model."""

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from moe_interp.core._checks import as_index, check_finite, check_int

__all__ = ["ExpertSet", "PAPER", "PaperSettings", "check_k"]


class ExpertSet(Mapping):
    """An immutable mapping `layer -> tuple[expert, ...]`, optionally with strengths.

    Produced by `RoutingStats.exclusive_experts` / `shared_experts`, consumed by
    `ExpertAblate` and `LayerRouteSteer`. `strengths` is `{layer: {expert: s}}` when the
    selection defines one (shared experts: the first language's share).

    ```python
    >>> import moe_interp as mi
    >>> s = mi.ExpertSet({3: [5, 1]}, strengths={3: {5: 0.6, 1: 0.4}})
    >>> s[3], len(s), s.size
    ((1, 5), 1, 2)
    >>> s.pairs()
    [(3, 1), (3, 5)]

    ```
    """

    __slots__ = ("_experts", "_strengths")

    def __init__(self, experts: Mapping[int, Iterable[int]] | None = None,
                 strengths: Mapping[int, Mapping[int, float]] | None = None) -> None:
        experts = dict(experts or {})
        if strengths is not None and not experts:
            experts = {layer: list(values) for layer, values in strengths.items()}
        frozen = {}
        for layer, values in experts.items():
            index = as_index(layer)
            if index is None:
                raise TypeError(f"ExpertSet layers must be ints, got {layer!r}")
            layer = index
            values = tuple(sorted({_expert(e, layer) for e in values}))
            if values:
                frozen[layer] = values
        self._experts = dict(sorted(frozen.items()))
        if strengths is None:
            self._strengths = None
        else:
            self._strengths = {layer: {e: _strength(strengths, layer, e) for e in values}
                               for layer, values in self._experts.items()}

    def __getitem__(self, layer: int) -> tuple[int, ...]:
        return self._experts[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._experts)

    def __len__(self) -> int:
        return len(self._experts)

    def __hash__(self) -> int:
        return hash(tuple(self._experts.items()))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self._experts) == {k: tuple(sorted(v)) for k, v in other.items()} and (
            self.strengths == getattr(other, "strengths", None))

    @property
    def strengths(self) -> dict[int, dict[int, float]] | None:
        """`{layer: {expert: s}}`, or `None` when the selection defines no strength."""
        return None if self._strengths is None else {k: dict(v) for k, v in self._strengths.items()}

    @property
    def size(self) -> int:
        """Number of `(layer, expert)` pairs."""
        return sum(len(v) for v in self._experts.values())

    def pairs(self) -> list[tuple[int, int]]:
        """All `(layer, expert)` pairs, sorted."""
        return [(layer, e) for layer, values in self._experts.items() for e in values]

    def mean_strength(self) -> float:
        """Mean strength over all pairs (`nan` without strengths or pairs)."""
        if not self._strengths or not self.size:
            return float("nan")
        return sum(s for v in self._strengths.values() for s in v.values()) / self.size

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: {list(v)}" for k, v in list(self._experts.items())[:6])
        more = ", ..." if len(self) > 6 else ""
        return f"ExpertSet({{{body}{more}}}, pairs={self.size}{', with strengths' if self._strengths else ''})"


def _expert(value: Any, layer: int) -> int:
    # a negative index would silently wrap round to the last experts in tensor indexing
    index = as_index(value)
    if index is None or index < 0:
        raise ValueError(f"ExpertSet experts are integer indices >= 0; layer {layer} lists {value!r}")
    return index


def _strength(strengths: Mapping[int, Mapping[int, float]], layer: int, expert: int) -> float:
    try:
        value = strengths[layer][expert]
    except KeyError:
        raise ValueError(f"strengths has no value for expert {expert} of layer {layer}: give every listed "
                         "expert a strength, or pass strengths=None") from None
    return check_finite(value, f"strengths[{layer}][{expert}]")


@dataclasses.dataclass(frozen=True)
class PaperSettings:
    """The paper's exact settings (Qwen3-30B-A3B: 128 experts, top-8), one argument away.

    `exclusive_k`, `exclusive_threshold`: exclusive experts (and layer profiles);
    `steer_k`, `steer_threshold`, `steer_scale`: the shared experts its routing-guided
    steering uses. The library's defaults (`k=None`) scale `k` to the model at hand with
    `scaled_k`; thresholds are shares of an expert's use, the same on every model.

    ```python
    >>> import moe_interp as mi
    >>> mi.PAPER.exclusive_k, mi.PAPER.steer_k, mi.PAPER.steer_threshold
    (15, 20, 0.7)
    >>> p = mi.datasets.reference_stats()                                 # the paper's released counts
    >>> p.exclusive_experts("sw", k=mi.PAPER.exclusive_k).size           # exactly the paper's k
    271
    >>> steer = mi.RouteSteer(layers="middle", target="en", stats=p, k=mi.PAPER.steer_k)
    >>> mi.PAPER.scaled_k(mi.PAPER.steer_k, num_experts=16, top_k=2)      # the default k on 16 experts
    3

    ```
    """

    num_experts: int = 128
    exclusive_k: int = 15
    exclusive_threshold: float = 0.4
    steer_k: int = 20
    steer_threshold: float = 0.7
    steer_scale: float = 0.022

    def scaled_k(self, paper_k: int, num_experts: int, top_k: int) -> int:
        """`paper_k` of the paper's 128 experts as the same fraction of `num_experts`
        (rounded up), at least `top_k` (a language's top-k must hold the experts one token
        uses) and at most `num_experts`.

        ```python
        >>> import moe_interp as mi
        >>> [mi.PAPER.scaled_k(15, e, t) for e, t in ((128, 8), (64, 8), (16, 2), (8, 2))]
        [15, 8, 2, 2]

        ```
        """
        return max(1, min(num_experts, max(top_k, math.ceil(paper_k * num_experts / self.num_experts))))


PAPER = PaperSettings()
"""The paper's settings (`PaperSettings`): `k=mi.PAPER.steer_k` etc. for its exact values."""


def check_k(k: int | None, num_experts: int, top_k: int = 1, paper_k: int = PAPER.exclusive_k, name: str = "k") -> int:
    """`k`, the experts kept per (language, layer), as an int in `[1, num_experts]`;
    `None` is the default, `paper_k` of 128 scaled to this model (`PAPER.scaled_k`).

    ```python
    >>> from moe_interp.core._expert_set import check_k
    >>> check_k(15, 128), check_k(None, 16, top_k=2)
    (15, 2)
    >>> check_k(20, 16, top_k=2)
    Traceback (most recent call last):
    ValueError: k (experts kept per language and layer) must be an integer in [1, 16], got 20; leave k unset (None) for the default: the paper's 15 of 128 experts scaled to this model's 16, i.e. 2

    ```
    """
    if k is None:
        return PAPER.scaled_k(paper_k, num_experts, top_k)
    try:
        return check_int(f"{name} (experts kept per language and layer)", k, 1, num_experts)
    except ValueError as error:
        raise ValueError(f"{error}; leave {name.split()[-1]} unset (None) for the default: the paper's {paper_k} of "
                         f"{PAPER.num_experts} experts scaled to this model's {num_experts}, i.e. "
                         f"{PAPER.scaled_k(paper_k, num_experts, top_k)}") from None
