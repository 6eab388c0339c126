"""Where each routing value of a model lives: router sites and readout kinds, defined once.

`describe` finds, per architecture, where the router makes its logits, where top-k ranks,
and where the routing the model used can be read; `router_sites(spec)` turns that into
typed `Site`s. The router view (`model.moe[i].router`) reads and writes these sites, and
the declarative interventions compile onto the same sites.

The routing the experts used (`indices`, `weights`; -1 and 0 for a slot that reached no
expert) lives wherever the architecture hands it over: its readout kind. Each kind is one
`Readout` class here (its sites, and how to decode `(indices, weights)` from their values
and encode new weights or indices back), named in the adapter table
(`RouterAdapter.readout`); `runtime._reader` reads and writes every kind through the same
few methods, for RouterRecord, the drop edit, the view and attribution alike. A new kind
is one `Readout` subclass plus a test (`tests/test_readouts.py` shows one defined in a test).

Every type here is a `Record`: it travels to an NDIF server inside a compiled plan or the
router view, shipped by value, and a server rebuilds it from plain-Python methods (its
import whitelist has no `dataclasses`, and named-tuple classes ship the `collections`
machinery as source). A `Readout`'s methods run inside the trace: torch, typing, math and
collections only.
"""

from typing import Any, Optional

import torch

__all__ = ["Record", "Site", "Readout", "RouterSites", "parse_site", "readout_kind", "readout_kinds",
           "register_readout", "router_sites"]


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
    _fields = ()
    _defaults = {}

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


# ----------------------------------------------------------------------------- readout kinds

class Readout(Record):
    """A readout kind: where a layer hands its experts the routing they use, and how to read
    and write it. Subclass it for a router that hands routing over in a new way, and name
    the subclass in an adapter: `mi.register_adapter(mi.RouterAdapter(..., readout=MyReadout))`.

    A kind's fields are the `Site`s it reads (`at(spec)` builds them from a `MoESpec`); its
    methods are pure tensor code that `runtime._reader` calls inside the trace, on every
    forward (on an NDIF server too: torch, typing, math and collections only):

    - `reads(parts)`: the fields to read for `parts` (of `"indices"`, `"weights"`), in the
      order the model makes them (nnsight serves values in that order); default: all;
    - `decode(values, top_k)`: `(indices[T, K] long, weights[T, K])`, tokens flattened
      `batch * seq`, from `values` (`{field: the value at its site}`); -1 and 0 for a slot
      that reached no expert; None for a part not read;
    - `encode_weights(values, indices, new)` / `encode_indices(values, new)`: `{field: new
      value}` that makes `new[T, K]` the weights / indices the experts receive (`indices`:
      what `decode` read, None where the kind reads none to write weights).

    Class attributes: `name` (how `RouterAdapter.readout` names it), `hands` (what the
    layer hands its experts when it takes no `[T, K]` indices, e.g. `"a dense score
    matrix"`: assigning indices is refused naming it; None: it takes them) and `drops`
    (whether a slot can reach no expert: capacity, or a zero of a dense matrix).

    ```python
    >>> import torch
    >>> from moe_interp.arch._sites import Readout, Site
    >>> class Pairs(Readout):                  # indices and weights as one [T, K, 2] tensor
    ...     name = "pairs"
    ...     __slots__ = _fields = ("pairs",)
    ...     @classmethod
    ...     def at(cls, spec):
    ...         return cls(Site("experts", (), "input", 1))
    ...     def decode(self, values, top_k):
    ...         return values["pairs"][..., 0].long(), values["pairs"][..., 1]
    ...     def encode_weights(self, values, indices, new):
    ...         return {"pairs": torch.stack([values["pairs"][..., 0], new], -1)}
    >>> kind = Pairs.at(None)
    >>> kind.decode({"pairs": torch.tensor([[[3.0, 0.75], [1.0, 0.25]]])}, top_k=2)
    (tensor([[3, 1]]), tensor([[0.7500, 0.2500]]))
    >>> kind.reads(("weights",))
    ('pairs',)

    ```
    """

    __slots__ = ()
    name = ""
    hands = None
    drops = False

    @classmethod
    def at(cls, spec: Any) -> "Readout":
        """The kind's sites in the model `spec` (a `MoESpec`) describes."""
        raise NotImplementedError(f"readout kind {cls.name!r} does not say where its sites are: define "
                                  "the classmethod at(spec)")

    def reads(self, parts: Any) -> tuple:
        """The fields to read for `parts` (`"indices"`, `"weights"`), in model order."""
        return tuple(self._fields)

    def decode(self, values: dict, top_k: int) -> tuple:
        """`(indices, weights)` from `values` (`{field: value}`)."""
        raise NotImplementedError(f"readout kind {self.name!r} does not decode: define decode(values, top_k)")

    def encode_weights(self, values: dict, indices: Any, new: torch.Tensor) -> dict:
        """`{field: new value}` that makes `new[T, K]` the weights the experts receive."""
        raise NotImplementedError(f"readout kind {self.name!r} does not write weights: define "
                                  "encode_weights(values, indices, new)")

    def encode_indices(self, values: dict, new: torch.Tensor) -> dict:
        """`{field: new value}` that makes `new[T, K]` the experts the tokens go to."""
        raise NotImplementedError(f"readout kind {self.name!r} does not write indices: define "
                                  "encode_indices(values, new), or set hands to what it takes instead")


def _token_rows(value: torch.Tensor) -> torch.Tensor:
    """`[..., last]` as `[tokens, last]` (a view where it can be, so edits reach the model)."""
    return value if value.ndim == 2 else value.reshape(-1, value.shape[-1])


def _cast(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return new.to(device=old.device, dtype=old.dtype)


def _scattered(scores: torch.Tensor, indices: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`scores[..., E]` with `new[t, k]` at column `indices[t, k]` (-1: none), the rest kept."""
    flat = scores.reshape(-1, scores.shape[-1])
    hit = indices[..., None] == torch.arange(flat.shape[-1], device=flat.device)  # [T, K, E]
    value = (hit * new[..., None]).sum(1).to(flat.dtype)
    return torch.where(hit.any(1), value, flat).reshape(scores.shape)


class _Pair(Readout):
    """`indices` and `weights` as two tensors `[..., K]`, each read and written as it is."""

    __slots__ = _fields = ("indices", "weights")

    def reads(self, parts: Any) -> tuple:
        return tuple(part for part in self._fields if part in parts)

    def decode(self, values: dict, top_k: int) -> tuple:
        indices = _token_rows(values["indices"]).long() if "indices" in values else None
        weights = _token_rows(values["weights"]) if "weights" in values else None
        return indices, weights

    def encode_weights(self, values: dict, indices: Any, new: torch.Tensor) -> dict:
        old = values["weights"]
        return {"weights": _cast(new, old).reshape(old.shape)}

    def encode_indices(self, values: dict, new: torch.Tensor) -> dict:
        old = values["indices"]
        return {"indices": _cast(new, old).reshape(old.shape)}


class ExpertsArguments(_Pair):
    """`"experts"`: the experts module's arguments `experts(hidden, top_k_index, top_k_weights)`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import ExpertsArguments
    >>> ExpertsArguments.at(mi.describe(mi.zoo.tiny_model("qwen3_moe"))).weights
    Site(owner='experts', ops=(), end='input', index=2)

    ```
    """

    __slots__ = ()
    name = "experts"

    @classmethod
    def at(cls, spec: Any) -> "ExpertsArguments":
        return cls(Site("experts", (), "input", 1), Site("experts", (), "input", 2))


class RouterOutputs(_Pair):
    """`"router"`: elements `indices_index` and `weights_index` of the router's output tuple.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import RouterOutputs
    >>> RouterOutputs.at(mi.describe(mi.zoo.tiny_model("longcat_flash"))).indices
    Site(owner='router', ops=(), end='output', index=2)

    ```
    """

    __slots__ = ()
    name = "router"

    @classmethod
    def at(cls, spec: Any) -> "RouterOutputs":
        return cls(Site("router", (), "output", spec.indices_index), Site("router", (), "output", spec.weights_index))


class TopkOps(_Pair):
    """`"topk"`: inside the router's source, the indices of its `torch.topk` op `topk_op`
    and the output of the op `weights_op` that makes the top-k weights (JetMoe).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import TopkOps
    >>> kind = TopkOps.at(mi.describe(mi.zoo.tiny_model("jetmoe")))
    >>> kind.indices.ops, kind.weights.ops
    (('logits_topk_0',), ('top_k_gates_0',))

    ```
    """

    __slots__ = ()
    name = "topk"

    @classmethod
    def at(cls, spec: Any) -> "TopkOps":
        if not (spec.topk_op and spec.weights_op):
            raise ValueError("readout 'topk' reads two ops of the router's source: name them in the adapter, "
                             "RouterAdapter(readout='topk', topk_op='<torch.topk op>', weights_op='<op making the weights>')")
        return cls(Site("router", (spec.topk_op,), "output", 1), Site("router", (spec.weights_op,), "output", None))


class DenseScores(Readout):
    """`"dense"`: a `[T, E]` score matrix at router output `scores_index`, the unselected
    experts at 0 (Llama-4, NLLB-MoE): the top k of each row, a 0 being a slot that reached
    no expert. Writing weights writes the chosen experts' entries; it takes no indices.

    ```python
    >>> import torch
    >>> from moe_interp.arch._sites import DenseScores, Site
    >>> kind = DenseScores(Site("router", (), "output", 0))
    >>> scores = torch.tensor([[0.0, 0.75, 0.0, 0.25], [0.0, 0.0, 0.5, 0.0]])
    >>> indices, weights = kind.decode({"scores": scores}, top_k=2)
    >>> indices.tolist(), weights.tolist()          # row 1 reached one expert
    ([[1, 3], [2, -1]], [[0.75, 0.25], [0.5, 0.0]])
    >>> kind.encode_weights({"scores": scores}, indices, weights * 2)["scores"].tolist()
    [[0.0, 1.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]

    ```
    """

    __slots__ = _fields = ("scores",)
    name = "dense"
    hands = "dense [tokens, experts] scores"
    drops = True

    @classmethod
    def at(cls, spec: Any) -> "DenseScores":
        return cls(Site("router", (), "output", spec.scores_index))

    def decode(self, values: dict, top_k: int) -> tuple:
        weights, indices = torch.topk(_token_rows(values["scores"]), top_k, dim=-1)
        return torch.where(weights != 0, indices, -1), weights

    def encode_weights(self, values: dict, indices: Any, new: torch.Tensor) -> dict:
        old = values["scores"]
        return {"scores": _scattered(old, indices, _cast(new, old))}


class DispatchMask(Readout):
    """`"dispatch"`: a 0/1 dispatch mask `[..., E]` at router output `indices_index` and the
    chosen experts' weights (`[..., 1]` or `[..., E]`) at `weights_index` (Switch
    Transformers): the experts the mask dispatches each token to, by weight, -1 and 0 where
    it dispatches none (dropped past an expert's capacity). It takes no indices.

    ```python
    >>> import torch
    >>> from moe_interp.arch._sites import DispatchMask, Site
    >>> kind = DispatchMask(Site("router", (), "output", 0), Site("router", (), "output", 1))
    >>> mask = torch.tensor([[[0, 1, 0], [0, 0, 0]]])          # token 1 dropped
    >>> probs = torch.tensor([[[0.5], [0.75]]])
    >>> indices, weights = kind.decode({"mask": mask, "weights": probs}, top_k=1)
    >>> indices.tolist(), weights.tolist()
    ([[1], [-1]], [[0.5], [0.0]])

    ```
    """

    __slots__ = _fields = ("mask", "weights")
    name = "dispatch"
    hands = "a [tokens, experts] dispatch mask (tokens past an expert's capacity are dropped)"
    drops = True

    @classmethod
    def at(cls, spec: Any) -> "DispatchMask":
        return cls(Site("router", (), "output", spec.indices_index), Site("router", (), "output", spec.weights_index))

    def decode(self, values: dict, top_k: int) -> tuple:
        mask = _token_rows(values["mask"])
        chosen = values["weights"].reshape(mask.shape[0], -1)  # [T, 1] or [T, E]
        # the dispatched experts first (by weight), then the rest, which no slot reached
        ranked, indices = torch.topk(torch.where(mask != 0, chosen, float("-inf")), top_k, dim=-1)
        kept = mask.gather(1, indices) != 0
        return torch.where(kept, indices, -1), torch.where(kept, ranked, torch.zeros_like(ranked))

    def encode_weights(self, values: dict, indices: Any, new: torch.Tensor) -> dict:
        old = values["weights"]
        new = _cast(new, old)
        if old.shape[-1] != 1:
            return {"weights": _scattered(old, indices, new)}
        # one weight per token: the dispatched expert's
        return {"weights": torch.where(indices >= 0, new, old.reshape(-1, 1)).reshape(old.shape)}


_READOUTS = {}  # name -> Readout subclass
_BUILT_IN = ("experts", "router", "topk", "dense", "dispatch")


def register_readout(kind: Any) -> type:
    """Add (or replace) a readout kind, a `Readout` subclass, under its `name`; an adapter
    then names it (`RouterAdapter(readout="<name>")`). `mi.register_adapter` registers the
    kind an adapter gives as a class, so you rarely call this yourself. The built-in kinds
    cannot be replaced.

    ```python
    >>> from moe_interp.arch._sites import ExpertsArguments, register_readout, readout_kinds
    >>> class Renamed(ExpertsArguments):
    ...     name = "experts_again"
    >>> register_readout(Renamed) is readout_kinds()["experts_again"]
    True
    >>> class Clash(ExpertsArguments):
    ...     pass                                  # name "experts": taken
    >>> register_readout(Clash)
    Traceback (most recent call last):
    ValueError: readout kind 'experts' is built in; give yours another name (class attribute name = '...')

    ```
    """
    if not (isinstance(kind, type) and issubclass(kind, Readout)):
        raise TypeError(f"a readout kind is a subclass of mi.arch.Readout, got {kind!r}")
    if not (isinstance(kind.name, str) and kind.name):
        raise ValueError(f"readout kind {kind.__name__} has no name: give it a class attribute name = '...'")
    if kind.name in _BUILT_IN and _READOUTS.get(kind.name) not in (None, kind):
        raise ValueError(f"readout kind {kind.name!r} is built in; give yours another name (class attribute name = '...')")
    _READOUTS[kind.name] = kind
    return kind


def readout_kinds() -> dict:
    """The readout kinds by name (a copy: change it with `register_readout`).

    ```python
    >>> from moe_interp.arch._sites import readout_kinds
    >>> list(readout_kinds())[:5]
    ['experts', 'router', 'topk', 'dense', 'dispatch']

    ```
    """
    return dict(_READOUTS)


def readout_kind(readout: Any) -> type:
    """The `Readout` class that `readout` (a kind's name, or the class itself) names;
    `ValueError` naming the kinds for an unknown name.

    ```python
    >>> from moe_interp.arch._sites import readout_kind
    >>> readout_kind("dense").__name__
    'DenseScores'
    >>> readout_kind("sparse")
    Traceback (most recent call last):
    ValueError: unknown readout 'sparse'; RouterAdapter.readout is one of 'experts', 'router', 'topk', 'dense', 'dispatch'... or a mi.arch.Readout subclass

    ```
    """
    if isinstance(readout, type) and issubclass(readout, Readout):
        return readout
    if isinstance(readout, str) and readout in _READOUTS:
        return _READOUTS[readout]
    raise ValueError(f"unknown readout {readout!r}; RouterAdapter.readout is one of "
                     f"{', '.join(map(repr, _READOUTS))} or a mi.arch.Readout subclass")


for _kind in (ExpertsArguments, RouterOutputs, TopkOps, DenseScores, DispatchMask):
    register_readout(_kind)


# ------------------------------------------------------------------------------ router sites

class RouterSites(Record):
    """The sites of one router's values: `logits` (raw, before selection), `choice` (the op
    whose output top-k selects on when it is not the logits: DeepSeek-V3's biased scores;
    None otherwise), `select` (where top-k ranks, when that is a site of its own: None when
    it is the logits or choice op's output, or unseen) and `used` (the `Readout` value:
    where the routing the experts received is read, and how); `readout` is its kind's name.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import router_sites
    >>> sites, no_grad = router_sites(mi.describe(mi.zoo.tiny_model("qwen3_moe")))
    >>> sites.logits.ops, sites.select.ops, sites.used.indices, sites.readout, no_grad
    (('router_logits_0',), ('torch_topk_0',), Site(owner='experts', ops=(), end='input', index=1), 'experts', None)

    ```
    """

    __slots__ = _fields = ("logits", "choice", "select", "used")

    @property
    def scores(self) -> Site:
        """The site of what top-k ranks: its own site, else the choice op, else the logits."""
        return self.select or self.choice or self.logits

    @property
    def readout(self) -> str:
        """The name of the readout kind (`RouterAdapter.readout`)."""
        return self.used.name


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
    sites = RouterSites(logits, choice, select, readout_kind(spec.readout).at(spec))
    if not spec.no_grad_sites:
        return sites, None
    logits_ng, select_ng = spec.no_grad_sites
    logits_ng = parse_site(logits_ng)
    return sites, sites._replace(logits=logits_ng, select=_distinct(select_ng, choice or logits_ng))


def _distinct(select: Optional[str], at: Site) -> Optional[Site]:
    site = parse_site(select) if select else None
    return None if site == at._replace(end="output", index=None) else site
