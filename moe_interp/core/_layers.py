"""One vocabulary for choosing MoE layers, parsed and validated here only.

Everything that takes `layers=` (interventions, analyses, plots) accepts the same values:

- `None` or `"all"`: every available layer;
- an int, an iterable of ints or a `range`: real layer indices, each one available;
- a `slice` over real layer indices (layers inside it that are not available are skipped);
- a band name: `"early"`, `"middle"`, `"late"` split the available layers in the paper's
  proportions (`PAPER_EDGES`: its 48 MoE layers as early 0-9, middle 10-39, late 40-47; its
  steering acts on the middle band); `"early-third"`, `"middle-third"`, `"late-third"` split
  them in equal thirds (`THIRDS`: 0-15, 16-31, 32-47 of 48, the split of the JS divergence
  reference numbers computed from the paper's released counts);
- where layers carry a stack label (`RoutingStats.stacks`, e.g. `"encoder"` / `"decoder"`):
  a stack name (its layers), or `"<stack>:<band>"` (that band of the stack's layers).

The result is always the sorted, repeat-free tuple of real layer indices; an empty
selection is an error, since it would silently analyse, steer or ablate nothing. This module
imports only `_checks` (no other package module), so every layer can use it.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from moe_interp.core._checks import as_index, check_int

__all__ = ["BANDS", "PAPER_EDGES", "SCHEMES", "THIRDS", "THIRD_BANDS", "bands", "parse_layers"]

BANDS = ("early", "middle", "late")
THIRD_BANDS = ("early-third", "middle-third", "late-third")
PAPER_EDGES = (0.0, 10 / 48, 40 / 48, 1.0)  # fractions where each band starts: the paper's 0-9 / 10-39 / 40-47 of 48
THIRDS = (0.0, 1 / 3, 2 / 3, 1.0)
SCHEMES = {"paper": PAPER_EDGES, "thirds": THIRDS}
_THIRD_OF = dict(zip(THIRD_BANDS, BANDS))


def _ranges(values: Sequence[int]) -> str:
    if not values:
        return "none"
    if list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _edges(scheme: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown band scheme {scheme!r}; use one of {sorted(SCHEMES)} or "
                             f"{len(BANDS) + 1} increasing fractions in [0, 1]")
        return SCHEMES[scheme]
    edges = tuple(scheme)
    if (len(edges) != len(BANDS) + 1 or not all(isinstance(e, (int, float)) and 0 <= e <= 1 for e in edges)
            or list(edges) != sorted(edges)):
        raise ValueError(f"edges must be {len(BANDS) + 1} increasing fractions in [0, 1] "
                         f"(e.g. THIRDS = {tuple(round(e, 3) for e in THIRDS)}), got {scheme}")
    return edges


def bands(available: Iterable[int], scheme: str | Sequence[float] = "paper",
          width: int | None = None) -> dict[str, tuple[int, ...]]:
    """Split layer indices into `"early"` / `"middle"` / `"late"` bands.

    **Arguments:** `available`: the layers to split, in order (e.g. `spec.moe_layers` or
    `stats.layers`); `scheme`: `"paper"` (`PAPER_EDGES`, the paper's 10/48 and 40/48),
    `"thirds"` (`THIRDS`) or 4 increasing fractions; `width`: instead of proportions,
    each band is `width` layers: the first, the central and the last (the paper's ablation
    bands: width 5 on 48 layers gives 0-4, 22-26, 43-47).

    **Returns:** `{band: layers}`; on very shallow models every band keeps at least one layer.

    ```python
    >>> from moe_interp.core._layers import bands
    >>> {k: (v[0], v[-1]) for k, v in bands(range(48)).items()}
    {'early': (0, 9), 'middle': (10, 39), 'late': (40, 47)}
    >>> {k: (v[0], v[-1]) for k, v in bands(range(48), "thirds").items()}
    {'early': (0, 15), 'middle': (16, 31), 'late': (32, 47)}
    >>> bands(range(48), width=5)["middle"]
    (22, 23, 24, 25, 26)
    >>> bands([1, 3, 5])
    {'early': (1,), 'middle': (3,), 'late': (5,)}

    ```
    """
    layers = tuple(available)
    n, result = len(layers), {}
    if not n:
        raise ValueError("no layers to split into bands")
    if width is not None:
        width = check_int(f"band width (of these {n} layers)", width, 1, n)
        starts = {"early": 0, "middle": round((n - width) / 2 + 1e-9), "late": n - width}
        return {name: layers[starts[name]: starts[name] + width] for name in BANDS}
    edges = _edges(scheme)
    for i, name in enumerate(BANDS):
        lo, hi = (round(n * e) for e in edges[i: i + 2])
        if hi <= lo:  # very shallow models: every band keeps at least one layer
            lo = min(lo, n - 1)
            hi = lo + 1
        result[name] = layers[lo:hi]
    return result


def _named(name: str, available: tuple[int, ...], stacks: tuple[str | None, ...] | None) -> tuple[int, ...]:
    labels = sorted({s for s in stacks or () if s is not None})
    stack, _, band = name.rpartition(":") if ":" in name else ("", "", name)
    if stack:
        if stack not in labels:
            raise ValueError(f"unknown stack {stack!r} in layers={name!r}; these layers' stacks are {labels}")
        available = tuple(layer for layer, s in zip(available, stacks) if s == stack)
    elif name in labels:
        return tuple(layer for layer, s in zip(available, stacks) if s == name)
    if band in BANDS:
        return bands(available)[band]
    if band in _THIRD_OF:
        return bands(available, "thirds")[_THIRD_OF[band]]
    allowed = ["all", *BANDS, *THIRD_BANDS, *labels, *(f"{s}:<band>" for s in labels)]
    raise ValueError(f"unknown band or layer selection {name!r}; use one of {allowed}, an int, a range, a slice "
                     "or a list of layer indices")


def parse_layers(layers: Any, available: Iterable[int], *, num_layers: int | None = None,
                 stacks: Sequence[str | None] | None = None) -> tuple[int, ...]:
    """The real layer indices that `layers` selects among `available` (module docstring).

    **Arguments:** `layers`: `None` / `"all"`, an int, an iterable of ints, a `range`, a
    `slice`, a band name (`BANDS`, `THIRD_BANDS`), a stack name or `"<stack>:<band>"`;
    `available`: the layers that can be chosen (e.g. a model's MoE layers, in order);
    `num_layers`: the model's layer count, so that an error can tell a dense layer from one
    out of range, and a slice counts from the end of the model; `stacks`: a stack label per
    available layer (`None` for unlabelled ones).

    **Returns:** the selected layers, sorted, each once. `ValueError` (naming what is
    allowed) for an unknown name, an unavailable layer or an empty selection; `TypeError`
    for a value that is not a layer index.

    ```python
    >>> from moe_interp.core._layers import parse_layers
    >>> parse_layers("middle", range(48))[:3], parse_layers("middle-third", range(48))[:3]
    ((10, 11, 12), (16, 17, 18))
    >>> parse_layers([3, 1, 3], range(4)), parse_layers(slice(None, 2), [1, 2, 3])
    ((1, 3), (1,))
    >>> parse_layers("decoder:late", range(6), stacks=["encoder"] * 3 + ["decoder"] * 3)
    (5,)
    >>> parse_layers(4, [1, 2, 3], num_layers=6)
    Traceback (most recent call last):
    ValueError: layer 4 is a dense (non-MoE) layer; the layers to choose from are 1-3 (of 6 layers)

    ```
    """
    available = tuple(available)
    if stacks is not None:
        stacks = tuple(stacks)
        if len(stacks) != len(available):
            raise ValueError(f"stacks has {len(stacks)} labels for {len(available)} layers; give one per layer")
    if layers is None or (isinstance(layers, str) and layers == "all"):
        chosen = available
    elif isinstance(layers, str):
        chosen = _named(layers, available, stacks)
    elif isinstance(layers, slice):
        end = num_layers if num_layers is not None else max(available, default=-1) + 1
        chosen = tuple(layer for layer in range(end)[layers] if layer in available)
    else:
        single = as_index(layers)
        if single is not None:
            layers = (single,)
        elif not isinstance(layers, Iterable):
            raise TypeError(f"layers must be None, 'all', a band name, an int, a range, a slice or a list of ints, "
                            f"got {type(layers).__name__}")
        chosen = []
        for layer in layers:
            index = as_index(layer)
            if index is None:
                raise TypeError(f"layer indices must be ints, got {layer!r}")
            if index not in available:
                if num_layers is None:
                    what, total = "not available", ""
                else:
                    dense = 0 <= index < num_layers
                    what = "a dense (non-MoE) layer" if dense else "out of range"
                    total = f" (of {num_layers} layers)"
                raise ValueError(f"layer {index} is {what}; the layers to choose from are "
                                 f"{_ranges(available)}{total}")
            chosen.append(index)
    chosen = tuple(sorted(set(chosen)))
    if not chosen:
        raise ValueError(f"layers is empty: {layers!r} selects none of {_ranges(available)}; name some of them, "
                         "or pass None for all")
    return chosen
