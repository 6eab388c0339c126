"""The number checks every public entry point shares: indices, counts, finite numbers, shares, levels.

Each returns the value in its plain Python type or raises an error naming the argument and
what it must be, before any forward runs. Imports nothing from the package.
"""

import math
import numbers
import operator
from typing import Any

__all__ = ["as_index", "check_finite", "check_index", "check_int", "check_level", "check_positive", "check_threshold",
           "hub_id_shaped"]


def as_index(value: Any) -> int | None:
    """`value` as an int if it is one (numpy ints and integer 0-d tensors too), else `None`.

    ```python
    >>> from moe_interp.core._checks import as_index
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
    >>> from moe_interp.core._checks import check_index
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
    >>> from moe_interp.core._checks import check_finite
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


def check_threshold(threshold: Any) -> float:
    """`threshold` as a float; it is a share of an expert's use, so it must lie in [0, 1].

    ```python
    >>> from moe_interp.core._checks import check_threshold
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


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` as an int >= `low` (and <= `high` if given): numpy ints too, never a bool or a
    float; `ValueError` naming `name`, which may carry what the number counts.

    ```python
    >>> from moe_interp.core._checks import check_int
    >>> check_int("seed", 0, 0)
    0
    >>> check_int("resamples", 0, 1)
    Traceback (most recent call last):
    ValueError: resamples must be an integer >= 1, got 0
    >>> check_int("n (bytes per n-gram)", 9, 1, 8)
    Traceback (most recent call last):
    ValueError: n (bytes per n-gram) must be an integer in [1, 8], got 9

    ```
    """
    index = as_index(value)
    if index is None or index < low or (high is not None and index > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return index


def check_positive(name: str, value: Any) -> int:
    """`value` as an int of 1 or more (a batch size, a count of steps): `check_int(name, value, 1)`
    worded for a count of things; `ValueError` naming `name`.

    ```python
    >>> from moe_interp.core._checks import check_positive
    >>> check_positive("batch_size", 8)
    8
    >>> check_positive("batch_size", 0)
    Traceback (most recent call last):
    ValueError: batch_size must be a positive int (1 or more), got 0

    ```
    """
    index = as_index(value)
    if index is None or index < 1:
        raise ValueError(f"{name} must be a positive int (1 or more), got {value!r}")
    return index


def check_level(level: Any) -> float:
    """`level`, an interval's coverage, as a float strictly between 0 and 1.

    ```python
    >>> from moe_interp.core._checks import check_level
    >>> check_level(0.95)
    0.95
    >>> check_level(95)
    Traceback (most recent call last):
    ValueError: level (the interval's coverage) must be a number in (0, 1), e.g. 0.95; got 95

    ```
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level (the interval's coverage) must be a number in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def hub_id_shaped(text: str) -> bool:
    """Whether `text` has the shape of a Hugging Face hub id (`"name"` or `"org/name"`), not of
    a local path (`./x`, `/x`, `~/x`, `a/b/c`, a backslash).

    ```python
    >>> from moe_interp.core._checks import hub_id_shaped
    >>> hub_id_shaped("allenai/OLMoE-1B-7B-0924"), hub_id_shaped("gpt2"), hub_id_shaped("./models/x")
    (True, True, False)

    ```
    """
    return not (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text)

