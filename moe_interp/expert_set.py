"""`ExpertSet`: which experts of which layers, optionally with a strength each."""

import math
import operator
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["ExpertSet"]


class ExpertSet(Mapping):
    """An immutable mapping `layer -> tuple[expert, ...]`, optionally with strengths.

    Produced by `RoutingStats.exclusive_experts` / `shared_experts`, consumed by
    `ExpertAblate` and `LayerRouteSteer`. `strengths` is `{layer: {expert: s}}` when the
    selection defines one (shared experts: the first language's share).

    ```python
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
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"ExpertSet layers must be ints, got {layer!r}")
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
    try:
        index = -1 if isinstance(value, bool) else operator.index(value)
    except TypeError:
        index = -1
    if index < 0:
        raise ValueError(f"ExpertSet experts are integer indices >= 0; layer {layer} lists {value!r}")
    return index


def _strength(strengths: Mapping[int, Mapping[int, float]], layer: int, expert: int) -> float:
    try:
        value = strengths[layer][expert]
    except KeyError:
        raise ValueError(f"strengths has no value for expert {expert} of layer {layer}: give every listed "
                         "expert a strength, or pass strengths=None") from None
    try:
        number = math.nan if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"strengths[{layer}][{expert}] must be a finite number, got {value!r}")
    return number
