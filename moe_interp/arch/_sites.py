"""Where each routing value of a model lives: the one definition of router sites.

`describe` finds, per architecture, where the router makes its logits, where top-k ranks,
and where the routing the model used can be read; `router_sites(spec)` turns that into
typed `Site`s. The router view (`model.moe[i].router`) reads and writes these sites, and
the declarative interventions compile onto the same sites. The routing the experts used
(`indices`, `weights`; -1 and 0 for a slot that reached no expert) is read from them in one
place, `kernels.routing` (written by `kernels.set_weights` / `set_indices`), which
RouterRecord, the drop edit, the view and attribution share: a new readout kind is added
in the adapter table (`RouterAdapter.readout`), in `_readout` here and in `kernels.routing`,
with its case in `tests/test_reader.py`.

Both types are `Record`s: they travel to an NDIF server inside a compiled plan, shipped by
value, and a server rebuilds them from plain-Python methods (its import whitelist has no
`dataclasses`, and named-tuple classes ship the `collections` machinery as source).
"""

from typing import Any, Optional

__all__ = ["Record", "Site", "RouterSites", "parse_site", "router_sites"]


class Record:
    """A small immutable value with named fields (`_fields`, defaults in `_defaults`):
    equal by content, hashable when its fields are, unpacks in field order, `_replace`
    makes a changed copy.

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> site = Site("router", ("F_linear_0",), "output", None)
    >>> owner, ops, end, index = site
    >>> site._replace(end="input", index=0) == Site("router", ("F_linear_0",), "input", 0)
    True

    ```
    """

    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        values = dict(self._defaults)
        values.update(zip(self._fields, args))
        values.update(kwargs)
        for name in self._fields:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: use ._replace({name}=...)")

    def __iter__(self) -> Any:
        return iter([getattr(self, name) for name in self._fields])

    def __getitem__(self, position: Any) -> Any:
        return tuple(self)[position]

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and all(getattr(self, n) is getattr(other, n) or getattr(self, n) == getattr(other, n)
                                                 for n in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._fields)})"

    def __reduce__(self) -> tuple:
        return type(self), tuple(self)

    def _replace(self, **changes: Any) -> Any:
        return type(self)(**{**{n: getattr(self, n) for n in self._fields}, **changes})


class Site(Record):
    """One nnsight location: `owner` (`"router"` or `"experts"`, the module envoy), `ops`
    (a path of `.source` ops under it, empty for the module itself: an op inside a helper
    method the router calls is `(helper_op, op)`), `end` (`"output"` or `"input"`) and
    `index` (the element of a tuple output, or the positional argument of an input; None:
    the whole output).

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> Site("router", ("router_logits_0",), "output", None)
    Site(owner='router', ops=('router_logits_0',), end='output', index=None)

    ```
    """

    __slots__ = _fields = ("owner", "ops", "end", "index")


class RouterSites(Record):
    """The sites of one router's values: `logits` (raw, before selection), `choice` (the op
    whose output top-k selects on when it is not the logits: DeepSeek-V3's biased scores;
    None otherwise), `select` (where top-k ranks, when that is a site of its own: None when
    it is the logits or choice op's output, or unseen), `indices` / `weights` (the routing
    the experts received; None where the router hands them a `dense` `[T, E]` score
    matrix instead), and `readout` (the adapter's readout kind, for `kernels.routing`:
    `"dispatch"` reads a 0/1 mask at `indices`).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import router_sites
    >>> sites, no_grad = router_sites(mi.describe(mi.zoo.tiny_model("qwen3_moe")))
    >>> sites.logits.ops, sites.select.ops, sites.indices, no_grad
    (('router_logits_0',), ('torch_topk_0',), Site(owner='experts', ops=(), end='input', index=1), None)

    ```
    """

    __slots__ = _fields = ("logits", "choice", "select", "indices", "weights", "dense", "readout")
    _defaults = {"readout": "experts"}

    @property
    def scores(self) -> Site:
        """The site of what top-k ranks: its own site, else the choice op, else the logits."""
        return self.select or self.choice or self.logits


def parse_site(site: str, owner: str = "router") -> Site:
    """A site as `MoESpec` and `RouterAdapter` write it: `"output"`, `"output[1]"`, an op
    (`"F_linear_0"`: its output), or ops joined by dots ending in `.input` / `.output`
    (`"self_get_topk_indices_0.torch_topk_0.input"`: an op's `.input` is its first argument).

    ```python
    >>> from moe_interp.arch._sites import parse_site
    >>> parse_site("output[1]"), parse_site("self_get_topk_indices_0.torch_topk_0.input").ops
    (Site(owner='router', ops=(), end='output', index=1), ('self_get_topk_indices_0', 'torch_topk_0'))

    ```
    """
    if site.startswith("output"):
        return Site(owner, (), "output", int(site[7:-1]) if site != "output" else None)
    parts = site.split(".")
    end = parts.pop() if len(parts) > 1 and parts[-1] in ("input", "output") else "output"
    return Site(owner, tuple(parts), end, 0 if end == "input" else None)


def _readout(spec) -> tuple:
    """`(indices, weights, dense)` sites of `spec.readout` (see `RouterAdapter.readout`)."""
    if spec.readout == "experts":  # experts(hidden, top_k_index, top_k_weights)
        return Site("experts", (), "input", 1), Site("experts", (), "input", 2), None
    if spec.readout in ("router", "dispatch"):  # dispatch: a 0/1 [..., E] mask at indices_index
        return Site("router", (), "output", spec.indices_index), Site("router", (), "output", spec.weights_index), None
    if spec.readout == "topk":  # torch.topk's (values, indices), and the op that makes the weights
        return Site("router", (spec.topk_op,), "output", 1), Site("router", (spec.weights_op,), "output", None), None
    if spec.readout == "dense":  # [tokens, experts] scores, the unselected at 0
        return None, None, Site("router", (), "output", spec.scores_index)
    raise ValueError(f"unknown readout {spec.readout!r}; RouterAdapter.readout is one of 'experts', 'router', "
                     "'topk', 'dense', 'dispatch'")


def router_sites(spec) -> tuple:
    """`(sites, no_grad)`: the `RouterSites` of every learned layer of the model `spec`
    describes, and those that apply with grad off where the router runs other ops then (a
    CUDA-only branch; None otherwise).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import router_sites
    >>> sites, _ = router_sites(mi.describe(mi.zoo.tiny_model("deepseek_v3")))
    >>> sites.choice.ops, sites.scores == sites.select or sites.scores == sites.choice
    (('scores_for_choice_0',), True)

    ```
    """
    logits = parse_site(spec.logits)
    choice = parse_site(spec.choice) if spec.choice else None
    at = choice or logits  # where a reroute mask goes; a select site that is its output adds nothing
    select = _distinct(spec.select, at)
    sites = RouterSites(logits, choice, select, *_readout(spec), readout=spec.readout)
    if not spec.no_grad_sites:
        return sites, None
    logits_ng, select_ng = spec.no_grad_sites
    logits_ng = parse_site(logits_ng)
    return sites, sites._replace(logits=logits_ng, select=_distinct(select_ng, choice or logits_ng))


def _distinct(select: Optional[str], at: Site) -> Optional[Site]:
    site = parse_site(select) if select else None
    return None if site == at._replace(end="output", index=None) else site
