"""Edit kinds: what an intervention does to a router's values, each kind defined once.

Interventions compile into `Edit(kind, payload, scale)` values (`runtime._plan.Edit`),
each at one site of a layer's router. The kind is a value that carries its own
transformation: the kernels call `kind.apply`, they never switch on a name. The built-in
kinds:

- `RELATIVE` (`"relative"`, a steer): `z + scale * s * |z|` with `s` a dense `[E]` strength
  vector (the paper);
- `ADDITIVE` (`"additive"`, a steer): `z + scale * s`;
- `REROUTE` (`"reroute"`): `z` at -1e9 where the mask is True, before selection (the
  expert cannot be chosen);
- `DROP` (`"drop"`): the selected experts' weight at 0 where the mask is True, after
  selection (no renormalisation).

The sites an edit can act on, in the order a forward reaches them (`SITES`; the router
view's words), and the `arch._sites.RouterSites` field each one is:

- `"logits"`: the raw router logits `z[T, E]` (`RouterSites.logits`);
- `"scores"`: the scores top-k ranks, where they are not the logits (`RouterSites.choice`:
  DeepSeek-V3's biased scores). A router that ranks its logits has no such site: the
  compiler moves an edit of its scores to its logits;
- `"select"`: where top-k ranks, when that is a site of its own (`RouterSites.select`): the
  compiler puts a reroute mask there again;
- `"weights"`: the weights the selected experts receive.

A new kind is a subclass of `ScoreKind` (it edits scores `z[T, E]`, at `"logits"` or
`"scores"`), `SteerKind` (a score edit the compiler bounds so that no score
overflows) or `WeightsKind` (it edits the selected experts' `weights[T, K]`), with a `name`
and an `apply`; an intervention (`runtime._interventions.Intervention`) returns
`(layer, site, Edit(MyKind(), payload, scale))` from its `edits(spec)`. Nothing else
changes: `tests/test_edits.py` defines one in the test file and runs it through `mi.trace`.

Runs inside the trace (`runtime._kernels` calls `apply`, locally or on an NDIF server), so
it imports only torch, math and typing; kinds travel inside the plan, shipped by value.
"""

import math
from typing import Any

import torch

__all__ = ["ADDITIVE", "DROP", "EditKind", "KINDS", "NEG_LOGIT", "RELATIVE", "REROUTE", "SCORE_SITES", "SITES",
           "ScoreKind", "SteerKind", "WeightsKind", "kind_named", "router_field", "steers"]

SITES = ("logits", "scores", "select", "weights")
SCORE_SITES = SITES[:3]
# each score site's field of `arch._sites.RouterSites` (the arch layer's own names)
_ROUTER_FIELDS = {"logits": "logits", "scores": "choice", "select": "select"}

NEG_LOGIT = -1e9  # the paper's value; clamped to the dtype's range for half precision


def router_field(site: str) -> str:
    """The `arch._sites.RouterSites` field that holds score site `site`.

    ```python
    >>> from moe_interp.runtime._edits import SCORE_SITES, router_field
    >>> [router_field(site) for site in SCORE_SITES]
    ['logits', 'choice', 'select']

    ```
    """
    return _ROUTER_FIELDS[site]


class EditKind:
    """A kind of edit: `name`, the `sites` it may act on, and `apply`, its transformation.

    A kind holds no data (the `Edit` carries the payload and the scale): kinds are equal by
    type, and equal to their name, so `edit.kind == "drop"` reads as it says.

    ```python
    >>> from moe_interp.runtime._edits import DROP, RELATIVE
    >>> RELATIVE, RELATIVE.name, RELATIVE.sites
    (Relative(), 'relative', ('logits', 'scores'))
    >>> RELATIVE == "relative", RELATIVE == DROP, DROP.sites
    (True, False, ('weights',))

    ```
    """

    __slots__ = ()
    name = ""
    sites = ()

    def __eq__(self, other: Any) -> bool:
        return other == self.name if isinstance(other, str) else type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> tuple:
        return type(self), ()


class ScoreKind(EditKind):
    """An edit of router scores `z[T, E]` before selection: `apply(z, payload, scale)`
    returns the new scores. A payload covers the routed experts, and its zero leaves an
    expert as it is (columns past the routed experts see zeros).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import REROUTE
    >>> REROUTE.apply(torch.tensor([[1.0, 2.0]]), torch.tensor([False, True]), 1.0)
    tensor([[ 1.0000e+00, -1.0000e+09]])

    ```
    """

    __slots__ = ()
    sites = ("logits", "scores")  # "select" is the compiler's: a reroute mask repeated where top-k ranks

    def apply(self, z: torch.Tensor, payload: torch.Tensor, scale: float) -> torch.Tensor:
        """The scores `z[T, E]` after this edit (a new tensor)."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(z, payload, scale)")


class SteerKind(ScoreKind):
    """A score edit that moves scores by an amount `|scale * s|`: the compiler refuses one
    that could overflow the router's dtype. `grow(worst, amount)` is the largest magnitude a
    score bounded by `worst` reaches after it; `limit(dtype)` the largest amount that keeps a
    score of magnitude `sqrt(max)` of `dtype` finite.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import ADDITIVE, RELATIVE
    >>> RELATIVE.grow(10.0, 0.5), ADDITIVE.grow(10.0, 0.5)
    (15.0, 10.5)
    >>> round(RELATIVE.limit(torch.float16), 1), round(ADDITIVE.limit(torch.float16))
    (254.9, 65248)

    ```
    """

    __slots__ = ()

    def grow(self, worst: float, amount: float) -> float:
        """The largest magnitude a score bounded by `worst` can reach after this steer."""
        raise NotImplementedError(f"{type(self).__name__} must define grow(worst, amount)")

    def limit(self, dtype: torch.dtype) -> float:
        """The largest `|scale * s|` that keeps a score of magnitude `sqrt(max)` of `dtype` finite."""
        raise NotImplementedError(f"{type(self).__name__} must define limit(dtype)")


class WeightsKind(EditKind):
    """An edit of the routing after selection: `apply(indices, weights, payload, scale)`
    returns the new `weights[T, K]` of the selected `indices[T, K]`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import DROP
    >>> DROP.apply(torch.tensor([[0, 2]]), torch.tensor([[0.6, 0.4]]), torch.tensor([False, False, True]), 1.0)
    tensor([[0.6000, 0.0000]])

    ```
    """

    __slots__ = ()
    sites = ("weights",)

    def apply(self, indices: torch.Tensor, weights: torch.Tensor, payload: torch.Tensor,
              scale: float) -> torch.Tensor:
        """The weights `[T, K]` after this edit (a new tensor)."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(indices, weights, payload, scale)")


class Relative(SteerKind):
    """`z + scale * s * |z|` (the paper's steer).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import RELATIVE
    >>> RELATIVE.apply(torch.tensor([[-2.0, 4.0]]), torch.tensor([1.0, 0.0]), 0.5)   # -2 + 0.5 * 1 * |-2|
    tensor([[-1.,  4.]])

    ```
    """

    __slots__ = ()
    name = "relative"

    def apply(self, z: torch.Tensor, payload: torch.Tensor, scale: float) -> torch.Tensor:
        return z + scale * payload.to(z.dtype) * z.abs()

    def grow(self, worst: float, amount: float) -> float:
        return worst * (1 + amount)

    def limit(self, dtype: torch.dtype) -> float:
        top = torch.finfo(dtype).max
        return top / math.sqrt(top) - 1


class Additive(SteerKind):
    """`z + scale * s`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import ADDITIVE
    >>> ADDITIVE.apply(torch.tensor([[-2.0, 4.0]]), torch.tensor([1.0, 0.0]), 0.5)
    tensor([[-1.5000,  4.0000]])

    ```
    """

    __slots__ = ()
    name = "additive"

    def apply(self, z: torch.Tensor, payload: torch.Tensor, scale: float) -> torch.Tensor:
        return z + scale * payload.to(z.dtype)

    def grow(self, worst: float, amount: float) -> float:
        return worst + amount

    def limit(self, dtype: torch.dtype) -> float:
        top = torch.finfo(dtype).max
        return top - math.sqrt(top)


class Reroute(ScoreKind):
    """The masked experts' scores at -1e9 (the dtype's lowest where that is higher), so
    top-k never picks them.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import REROUTE
    >>> REROUTE.apply(torch.tensor([[1.0, 2.0]], dtype=torch.float16), torch.tensor([True, False]), 1.0)
    tensor([[-6.5504e+04,  2.0000e+00]], dtype=torch.float16)

    ```
    """

    __slots__ = ()
    name = "reroute"

    def apply(self, z: torch.Tensor, payload: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.where(payload, max(NEG_LOGIT, torch.finfo(z.dtype).min), z)  # fewer ops than masked_fill


class Drop(WeightsKind):
    """The masked experts' weights at 0 where they were selected (no renormalisation).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._edits import DROP
    >>> DROP.apply(torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.6, 0.4], [0.7, 0.3]]),
    ...            torch.tensor([False, False, True]), 1.0)
    tensor([[0.6000, 0.0000],
            [0.7000, 0.0000]])

    ```
    """

    __slots__ = ()
    name = "drop"

    def apply(self, indices: torch.Tensor, weights: torch.Tensor, payload: torch.Tensor,
              scale: float) -> torch.Tensor:
        return weights.masked_fill(payload[indices], 0)


RELATIVE, ADDITIVE, REROUTE, DROP = Relative(), Additive(), Reroute(), Drop()
# the built-in kinds by name (`Edit("drop", ...)`, `LayerRouteSteer(mode=...)`, `steer_limit`)
KINDS = {kind.name: kind for kind in (RELATIVE, ADDITIVE, REROUTE, DROP)}


def kind_named(name: str) -> EditKind:
    """The built-in kind called `name`.

    ```python
    >>> from moe_interp.runtime._edits import kind_named
    >>> kind_named("reroute")
    Reroute()
    >>> kind_named("clamp")
    Traceback (most recent call last):
    ValueError: no edit kind 'clamp': the built-in kinds are 'relative', 'additive', 'reroute', 'drop'; a new one is an EditKind subclass (see moe_interp.runtime._edits)

    ```
    """
    if name not in KINDS:
        raise ValueError(f"no edit kind {name!r}: the built-in kinds are {', '.join(map(repr, KINDS))}; a new one is "
                         "an EditKind subclass (see moe_interp.runtime._edits)")
    return KINDS[name]


def steers() -> dict:
    """The built-in steer kinds by name (`LayerRouteSteer(mode=...)`).

    ```python
    >>> from moe_interp.runtime._edits import steers
    >>> steers()
    {'relative': Relative(), 'additive': Additive()}

    ```
    """
    return {name: kind for name, kind in KINDS.items() if isinstance(kind, SteerKind)}
