"""The number checks every public entry point shares: indices, finite numbers, shares.

Each returns the value in its plain Python type or raises an error naming the argument and
what it must be, before any forward runs. Imports nothing from the package.
"""

import math
import numbers
import operator
from collections.abc import Mapping
from typing import Any

__all__ = ["as_index", "check_expert", "check_finite", "check_index", "check_strength", "check_threshold"]


def as_index(value: Any) -> int | None:
    """`value` as an int if it is one (numpy ints and integer 0-d tensors too), else `None`.

    ```python
    >>> from moe_interp._checks import as_index
    >>> as_index(3), as_index(True), as_index(1.0)
    (3, None, None)

    ```
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # ints, numpy ints, integer 0-d tensors; never 1.0 or nan
    except TypeError:
        return None


def _as_finite(value: Any) -> float | None:
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_index(value: Any, what: str) -> int:
    """`value` as a non-negative int (a layer or expert index); `TypeError` / `ValueError` naming `what`.

    ```python
    >>> from moe_interp._checks import check_index
    >>> check_index(3, "expert")
    3
    >>> check_index(-1, "expert")
    Traceback (most recent call last):
    ValueError: expert -1 is out of range: indices count from 0 (must be >= 0)

    ```
    """
    index = as_index(value)
    if index is None:
        raise TypeError(f"{what} must be an int, got {value!r}")
    if index < 0:
        raise ValueError(f"{what} {index} is out of range: indices count from 0 (must be >= 0)")
    return index


def check_finite(value: Any, what: str) -> float:
    """`value` as a finite float: NaN or inf would make the router's scores, and the output, NaN.

    ```python
    >>> from moe_interp._checks import check_finite
    >>> check_finite(2, "scale")
    2.0
    >>> check_finite(float("inf"), "scale")
    Traceback (most recent call last):
    ValueError: scale must be a finite number, got inf (NaN or inf would turn the router's scores, and the model's output, into NaN)

    ```
    """
    number = _as_finite(value)
    if number is None:
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {number} (NaN or inf would turn the router's "
                         "scores, and the model's output, into NaN)")
    return number


def check_expert(value: Any, layer: int) -> int:
    """An `ExpertSet` entry of `layer` as an int >= 0: a negative index would silently wrap
    round to the last experts in tensor indexing.

    ```python
    >>> from moe_interp._checks import check_expert
    >>> check_expert(5, layer=3)
    5
    >>> check_expert(-1, layer=3)
    Traceback (most recent call last):
    ValueError: ExpertSet experts are integer indices >= 0; layer 3 lists -1

    ```
    """
    index = as_index(value)
    if index is None or index < 0:
        raise ValueError(f"ExpertSet experts are integer indices >= 0; layer {layer} lists {value!r}")
    return index


def check_strength(strengths: Mapping[int, Mapping[int, float]], layer: int, expert: int) -> float:
    """`strengths[layer][expert]` as a finite float; `ValueError` when missing or not finite.

    ```python
    >>> from moe_interp._checks import check_strength
    >>> check_strength({3: {5: 0.25}}, 3, 5)
    0.25
    >>> check_strength({3: {5: 0.25}}, 3, 2)
    Traceback (most recent call last):
    ValueError: strengths has no value for expert 2 of layer 3: give every listed expert a strength, or pass strengths=None

    ```
    """
    try:
        value = strengths[layer][expert]
    except KeyError:
        raise ValueError(f"strengths has no value for expert {expert} of layer {layer}: give every listed "
                         "expert a strength, or pass strengths=None") from None
    number = _as_finite(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"strengths[{layer}][{expert}] must be a finite number, got {value!r}")
    return number


def check_threshold(threshold: Any) -> float:
    """`threshold` as a float; it is a share of an expert's use, so it must lie in [0, 1].

    ```python
    >>> from moe_interp._checks import check_threshold
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
