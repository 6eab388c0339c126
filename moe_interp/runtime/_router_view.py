"""`model.moe`: every MoE layer's routing as the same nnsight values, on every architecture.

`mi.wrap` and `mi.load` attach it to the model they build. Inside a plain nnsight trace:

```python
>>> import moe_interp as mi
>>> model = mi.zoo.tiny_model("qwen3_moe")     # 8 experts, top-2; one byte a token
>>> with model.trace("The capital of France is"):
...     r = model.moe[0].router              # the first MoE layer (model.moe.layers: their indices)
...     z = r.logits.save()                  # [tokens, experts] raw router logits, before selection
...     s = r.scores.save()                  # [tokens, experts] what the top-k ranks
...     idx = r.indices.save()               # [tokens, top_k] experts the layer used
...     w = r.weights.save()                 # [tokens, top_k] weights the experts received
>>> tuple(z.shape), tuple(s.shape), tuple(idx.shape), tuple(w.shape)
((24, 8), (24, 8), (24, 2), (24, 2))

```

How it is built, with nnsight's own extension mechanism and nothing patched: each value is
an `eproperty` of a small host (`_Site`) whose `path` is the nnsight location where this
architecture hands the value over, found once by `mi.describe`: an op of the router's
`.source` (the op that makes the logits, the one whose value top-k ranks), the router's
output, or the experts module's input. Reading one parks the trace's worker there as
`.output` does; assigning swaps a value in; in-place edits act on the model's own tensor.
The eproperty's preprocess presents every architecture's value the same way: one element
of a tuple, tokens flattened (`batch * seq`, as routers see them), and inside
`tracer.invoke` only that invoke's rows, with padding positions kept as nnsight keeps them.
`indices` and `weights` are not read here but by `runtime._reader.routing`, the reading RouterRecord,
the drop edit and attribution share (a slot that reached no expert: index -1, weight 0),
and written by `runtime._reader.set_indices` / `set_weights`.

Every value is read on the whole batch, then narrowed once, here, to the invoke's tokens
`[start * seq, (start + size) * seq)` (`_nnsight_compat.whole_batch`); a write replaces those
rows of the whole value. nnsight narrows only values whose first dimension is the batch,
so leaving it to nnsight would treat Switch's `[batch, seq, experts]` and a router's
flattened `[batch * seq, experts]` differently.

This module runs where the model runs (an NDIF server too), so it imports only torch,
nnsight, typing and collections, and is shipped by value (`nnsight.register`).
"""

from collections.abc import Sequence
from typing import Any, Optional

import nnsight
import torch
from nnsight.intervention.eproperty import eproperty

from moe_interp.runtime._nnsight_compat import as_served, served, whole_batch
from moe_interp.arch._sites import router_sites
from moe_interp.runtime._reader import ROUTING, RouterAccessError, location, pick, replaced, routing, set_indices, set_weights

__all__ = ["RouterAccessError", "MoELayers", "MoELayer", "Router", "attach"]


_NO_LOGITS_EDIT = "an edit of its `logits` would not change which experts it uses"


def _span(rows: Optional[tuple], num_tokens: int, what: str) -> tuple:
    """`(start, stop)` of the invoke's tokens among the whole batch's `num_tokens` (flattened
    `batch * seq`); `rows` as `whole_batch` gives them (None: every token)."""
    if rows is None:
        return 0, num_tokens
    start, size, total = rows
    if num_tokens % total:
        raise RouterAccessError(f"{what} has {num_tokens} tokens, which do not split into the batch's {total} rows: "
                                "its tokens cannot be told apart by invoke. Read it in a trace without tracer.invoke "
                                "(or with one invoke), where it covers the whole batch")
    seq = num_tokens // total
    return start * seq, (start + size) * seq


def _tokens(value: torch.Tensor, width: Optional[int], rows: Optional[tuple], what: str) -> torch.Tensor:
    """`value` (whole batch) as `[tokens, last]`, this invoke's rows only, its first `width`
    columns (a router may make more logits than it routes: Inkling's shared-expert column).
    A view, so in-place edits reach the model."""
    flat = value.view(-1, value.shape[-1]) if value.ndim > 2 else value
    start, stop = _span(rows, flat.shape[0], what)
    flat = flat if (start, stop) == (0, flat.shape[0]) else flat[start:stop]
    return flat if width is None or flat.shape[-1] <= width else flat[:, :width]


def _untokens(full: torch.Tensor, new: Any, what: str, width: Optional[int], rows: Optional[tuple]) -> torch.Tensor:
    """`full` (the model's whole tensor) with this invoke's tokens (first `width` columns) set to `new`."""
    flat = full.view(-1, full.shape[-1]) if full.ndim > 2 else full
    start, stop = _span(rows, flat.shape[0], what)
    columns = flat.shape[-1] if width is None else min(width, flat.shape[-1])
    new = torch.as_tensor(new)
    expected = (stop - start, columns)
    if tuple(new.shape) != expected:
        raise ValueError(f"{what} takes a tensor of shape {expected} here ([tokens, "
                         f"{'experts' if width else 'top_k'}]), got {tuple(new.shape)}")
    new = new.to(device=flat.device, dtype=flat.dtype)
    if columns < flat.shape[-1]:
        new = torch.cat([new, flat[start:stop, columns:]], -1)
    if (start, stop) != (0, flat.shape[0]):
        new = torch.cat([flat[:start], new, flat[stop:]])
    return new.view(full.shape)


class _Site:
    """Where one routing value is handed over: `site` (an `arch._sites.Site`) at the nnsight
    location `path` (its envoy's); the name the user reads it by (`what`, for errors), how
    many columns are routed experts (`width`, None for `[tokens, top_k]` values) and the
    invoke's rows (`rows`, from `whole_batch`, whose block reads and writes it)."""

    def __init__(self, interleaver: Any, path: str, site: Any, what: str, width: Optional[int],
                 rows: Optional[tuple]) -> None:
        self.interleaver, self.path, self.site, self.what, self.width, self.rows = (
            interleaver, path, site, what, width, rows)

    @eproperty(key="output")
    def output(self, value: Any) -> Any:
        return _tokens(pick(value, self.site), self.width, self.rows, self.what)

    @output.postprocess
    def output(self, new: Any) -> Any:
        raw = served(f"{self.path}.output")
        return replaced(raw, self.site, _untokens(pick(raw, self.site), new, self.what, self.width, self.rows))

    @eproperty(key="input")
    def input(self, value: Any) -> Any:
        return _tokens(pick(value, self.site), self.width, self.rows, self.what)

    @input.postprocess
    def input(self, new: Any) -> Any:
        raw = served(f"{self.path}.input")
        return replaced(raw, self.site, _untokens(pick(raw, self.site), new, self.what, self.width, self.rows))


class _ReadOnlySite(_Site):
    """A site whose value may be read but not edited (a hash-routed layer's logits): the
    reader gets a copy, and an in-place edit of it raises `refusal` when the trace moves on."""

    def __init__(self, interleaver: Any, path: str, site: Any, what: str, width: Optional[int],
                 rows: Optional[tuple], refusal: str) -> None:
        _Site.__init__(self, interleaver, path, site, what, width, rows)
        self.refusal = refusal

    @eproperty(key="output")
    def output(self, value: Any) -> Any:
        return _tokens(pick(value, self.site), self.width, self.rows, self.what).clone()

    @output.transform
    def output(self, view: Any, raw: Any) -> Any:
        if not torch.equal(view, _tokens(pick(raw, self.site), self.width, self.rows, self.what)):
            raise RouterAccessError(self.refusal)
        # read whole (`whole_batch`); nnsight puts it back by the worker's rows, as it serves them
        return as_served(raw)


class Router:
    """One MoE layer's router as the same four values on every architecture.

    Read them inside a plain nnsight trace (or `model.generate`, per step with
    `tracer.iter`); each is a `[tokens, ...]` tensor, tokens flattened as `batch * seq`
    (only the invoke's rows inside `tracer.invoke`):

    - `logits`: `[tokens, experts]` raw router logits, before any selection. Assign or
      edit in place: selection, weights and everything after see the edit.
    - `scores`: `[tokens, experts]` what the top-k ranks (after softmax / sigmoid /
      selection bias / group mask, as the family does). Edits change the selection, and
      the weights where the family takes them from these scores. Where the family ranks
      the logits themselves (GPT-OSS, Granite, Phi-MoE; DBRX ranks `softmax(logits)` in
      its block) this is the logits.
    - `indices`: `[tokens, top_k]` the experts the layer used (after any edit above); -1
      for a slot that reached no expert (dropped past an expert's capacity: Switch,
      NLLB-MoE; padding a router dispatches nowhere).
    - `weights`: `[tokens, top_k]` the weights those experts received (0 for such a slot).

    `indices` and `weights` are the routing `mi.RouterRecord` counts (one reading,
    `runtime._reader.routing`). `weights` is assignable on every router; `indices` where the
    experts take indices (not a dense score matrix or a dispatch mask): patching another
    prompt's `indices` routes these tokens to its experts.
    Values must be read in the order the model makes them (nnsight's rule): logits,
    scores, then indices and weights; Qwen2-MoE runs its shared expert before its router.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with model.trace("Hello world"):
    ...     r = model.moe[0].router
    ...     r.logits[:, 5] += 1e3                       # before selection: every token picks expert 5
    ...     chosen = r.indices.save()                   # read after the edit: its selection
    >>> (chosen == 5).any(-1).all()
    tensor(True)

    ```
    """

    def __init__(self, layer: int, kind: str, arch: str, envoy: Any, experts: Any, sites: Any,
                 no_grad_sites: Any, top_k: int, num_experts: int, learned: tuple,
                 unranked: Optional[str] = None) -> None:
        self.layer, self.kind, self.arch = layer, kind, arch
        self._unranked = unranked  # why no site holds what top-k ranks (MoESpec.unranked), or None
        self._envoy, self._experts = envoy, experts
        self._sites, self._no_grad_sites, self._top_k, self._num_experts = sites, no_grad_sites, top_k, num_experts
        self._learned = learned  # the model layers that rank scores (for the hash-layer refusal)

    def __repr__(self) -> str:
        return f"Router(layer={self.layer}, {self.kind}, {self._envoy.path})"

    # -- where each value lives -------------------------------------------------------
    def _site(self, name: str) -> Any:
        """The site of `name` for this forward: a router may run other ops with grad off
        (a CUDA-only branch), so `describe` names both and the grad mode decides."""
        sites = self._no_grad_sites if self._no_grad_sites and not torch.is_grad_enabled() else self._sites
        return getattr(sites, name)

    def _sites_now(self) -> Any:
        return self._no_grad_sites if self._no_grad_sites and not torch.is_grad_enabled() else self._sites

    def _host(self, name: str, rows: Optional[tuple], read_only: Optional[str] = None) -> tuple:
        """`(host, end)`: an eproperty host at the location of `name`, and which of its
        ends (`"output"` / `"input"`) holds the value."""
        site = self._site(name)
        path, interleaver = location(self._envoy, self._experts, site).path, self._envoy.interleaver
        width = self._num_experts if name in ("logits", "scores") else None
        if read_only is not None:
            return _ReadOnlySite(interleaver, path, site, f"router.{name}", width, rows, read_only), site.end
        return _Site(interleaver, path, site, f"router.{name}", width, rows), site.end

    def _get(self, name: str, read_only: Optional[str] = None) -> torch.Tensor:
        with whole_batch() as rows:
            host, end = self._host(name, rows, read_only)
            return getattr(host, end)

    def _set(self, name: str, value: Any) -> None:
        with whole_batch() as rows:
            host, end = self._host(name, rows)
            setattr(host, end, value)

    def _used(self, part: str) -> torch.Tensor:
        """`indices` or `weights` of `runtime._reader.routing` (whole batch), the invoke's tokens."""
        with whole_batch() as rows:
            indices, weights = routing(self._envoy, self._experts, self._sites_now(), self._top_k, (part,))
        value = indices if part == "indices" else weights
        start, stop = _span(rows, value.shape[0], f"router.{part}")
        return value if (start, stop) == (0, value.shape[0]) else value[start:stop]

    def _spliced(self, current: torch.Tensor, new: Any, part: str, rows: Optional[tuple]) -> torch.Tensor:
        """`current` (the whole batch's `[tokens, top_k]`) with the invoke's tokens set to `new`."""
        start, stop = _span(rows, current.shape[0], f"router.{part}")
        new = torch.as_tensor(new)
        expected = (stop - start, current.shape[1])
        if tuple(new.shape) != expected:
            raise ValueError(f"router.{part} takes a tensor of shape {expected} here ([tokens, top_k]), "
                             f"got {tuple(new.shape)}")
        new = new.to(device=current.device, dtype=current.dtype)
        return torch.cat([current[:start], new, current[stop:]]) if expected[0] != current.shape[0] else new

    def _refuse_hash(self, what: str) -> None:
        if self.kind == "hash":
            raise RouterAccessError(self._hash_refusal(what))

    def _hash_refusal(self, what: str) -> str:
        return (f"layer {self.layer} selects its experts by a token-id table (hash routing), not by ranking "
                f"scores: {what}. Read its logits, indices and weights (or assign indices/weights), or use a "
                f"learned layer: model.moe.at(layer) for layer in {list(self._learned)}")

    # -- the four values --------------------------------------------------------------
    @property
    def logits(self) -> torch.Tensor:
        """`[tokens, experts]` raw router logits, before selection (assignable, editable in place)."""
        if self.kind == "hash":
            return self._get("logits", self._hash_refusal(_NO_LOGITS_EDIT))
        return self._get("logits")

    @logits.setter
    def logits(self, value: Any) -> None:
        self._refuse_hash(_NO_LOGITS_EDIT)
        self._set("logits", value)

    @property
    def scores(self) -> torch.Tensor:
        """`[tokens, experts]` what the top-k ranks (assignable, editable in place)."""
        self._refuse_hash("it has no `scores`")
        self._refuse_unranked()
        return self._get("scores")

    @scores.setter
    def scores(self, value: Any) -> None:
        self._refuse_hash("it has no `scores`")
        self._refuse_unranked()
        self._set("scores", value)

    def _refuse_unranked(self) -> None:
        if self._unranked is not None:
            raise RouterAccessError(
                f"layer {self.layer} ({self.arch}) has no `scores` to read or assign: {self._unranked}. Read "
                "router.logits (and add the block's selection terms yourself); rerouting (mi.ExpertAblate) and "
                "steering (mi.LayerRouteSteer) act exactly on this router")

    @property
    def indices(self) -> torch.Tensor:
        """`[tokens, top_k]` long: the experts the layer used, -1 for a slot that reached no
        expert (assignable where the experts take indices)."""
        return self._used("indices")

    @indices.setter
    def indices(self, value: Any) -> None:
        self._refuse_indices()
        sites = self._sites_now()
        with whole_batch() as rows:
            current, _ = routing(self._envoy, self._experts, sites, self._top_k, ("indices",))
            new = self._spliced(current, value, "indices", rows)
            if bool(((new < 0) | (new >= self._num_experts)).any()):
                raise ValueError(f"router.indices takes expert indices 0-{self._num_experts - 1} (layer {self.layer} "
                                 f"has {self._num_experts} experts), got values from {int(new.min())} to "
                                 f"{int(new.max())}")
            set_indices(self._envoy, self._experts, sites, new)

    def _refuse_indices(self) -> None:
        # A layer that hands its experts no [tokens, top_k] indices (a dense score matrix, a
        # capacity-limited dispatch mask): which experts a token reaches follows from its scores.
        what = self._sites.used.hands
        if what is not None:
            raise RouterAccessError(
                f"layer {self.layer} ({self.arch}) hands its experts {what}, not [tokens, top_k] indices: assign "
                "router.logits or router.scores to change which experts its tokens reach (router.indices reads "
                "fine: -1 for a dropped slot)")

    @property
    def weights(self) -> torch.Tensor:
        """`[tokens, top_k]` the weights those experts received, 0 for a slot that reached no
        expert (assignable)."""
        return self._used("weights")

    @weights.setter
    def weights(self, value: Any) -> None:
        sites = self._sites_now()
        dropping = sites.used.drops  # where slots can reach no expert
        with whole_batch() as rows:
            indices, current = routing(self._envoy, self._experts, sites, self._top_k,
                                       ROUTING if dropping else ("weights",))
            new = self._spliced(current, value, "weights", rows)
            if dropping and bool(((indices < 0) & (new != 0)).any()):
                raise RouterAccessError(
                    f"layer {self.layer} ({self.arch}): router.weights gives a weight to a slot that reached no "
                    "expert (router.indices -1: dropped past an expert's capacity, or padding), which has no "
                    "expert to weight: keep 0 there")
            set_weights(self._envoy, self._experts, sites, new)


class MoELayer:
    """One MoE layer: `layer` (its index among the model's layers), `router` (a
    [`Router`][moe_interp.runtime._router_view.Router]), `experts` (the routed experts' envoy;
    `.output` is their combined output) and `shared_experts` (envoy, or None when the
    family has none), `block` (the envoy of the whole MoE block).

    ```python
    >>> import moe_interp as mi
    >>> layer = mi.zoo.tiny_model("qwen3_moe").moe[0]
    >>> layer.layer, layer.router.kind, layer.shared_experts is None
    (0, 'topk', True)
    >>> layer
    MoELayer(layer=0, router=model.model.layers.0.mlp.gate, shared_experts=None)

    ```
    """

    def __init__(self, layer: int, router: Router, experts: Any, shared_experts: Any, block: Any) -> None:
        self.layer, self.router, self.experts, self.shared_experts, self.block = (
            layer, router, experts, shared_experts, block)

    def __repr__(self) -> str:
        shared = self.shared_experts.path if self.shared_experts is not None else None
        return f"MoELayer(layer={self.layer}, router={self.router._envoy.path}, shared_experts={shared})"


class MoELayers(Sequence):
    """`model.moe`: the model's MoE layers in order, as [`MoELayer`][moe_interp.runtime._router_view.MoELayer]s.

    Indexed by position among the MoE layers (dense layers are absent); `layers` gives
    their model layer indices, `at(layer)` looks one up by model layer index.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("deepseek_v3")      # layer 0 is dense
    >>> model.moe.layers, len(model.moe)
    ((1, 2, 3), 3)
    >>> model.moe[0] is model.moe.at(1)
    True

    ```
    """

    def __init__(self, entries: list, arch: str) -> None:
        self._entries, self.arch = tuple(entries), arch
        self.layers = tuple(entry.layer for entry in entries)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return list(self._entries[position])
        if not -len(self._entries) <= position < len(self._entries):
            raise IndexError(f"model.moe has {len(self._entries)} MoE layers (positions 0-{len(self._entries) - 1}, "
                             f"model layers {list(self.layers)}); use model.moe.at(layer) for a model layer index")
        return self._entries[position]

    def __len__(self) -> int:
        return len(self._entries)

    def at(self, layer: int) -> MoELayer:
        """The MoE layer at model layer index `layer` (`ValueError` for a dense layer)."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not an MoE layer of this {self.arch} model; its MoE layers are "
                             f"{list(self.layers)}")
        return self._entries[self.layers.index(layer)]

    def __repr__(self) -> str:
        return f"MoELayers({self.arch}, layers={list(self.layers)})"


def attach(model: Any, spec: Any) -> MoELayers:
    """Build `model.moe` from `spec` (`mi.describe(model)`) and set it on `model`.

    `mi.wrap` and `mi.load` call it; attaching again builds a fresh view of the same model.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._router_view import attach
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> view = attach(model, mi.describe(model))
    >>> view is model.moe, view.layers
    (True, (0, 1, 2, 3))

    ```
    """
    sites, no_grad = router_sites(spec)
    entries = []
    learned = tuple(layer for layer, kind in zip(spec.moe_layers, spec.routing_kinds) if kind == "topk")
    for position, layer in enumerate(spec.moe_layers):
        router_envoy = model.get(spec.routers[position])
        experts = model.get(spec.experts[position]) if spec.experts[position] else None
        shared = model.get(spec.shared_experts[position]) if spec.shared_experts[position] else None
        block = model.get(spec.routers[position].rsplit(".", 1)[0])
        router = Router(layer, spec.routing_kinds[position], spec.arch, router_envoy, experts, sites, no_grad,
                        spec.top_k, spec.num_experts, learned, getattr(spec, "unranked", None))
        entries.append(MoELayer(layer, router, experts, shared, block))
    view = MoELayers(entries, spec.arch)
    model.moe = view
    return view


# A trace whose body reaches `model.moe` sends these classes with the model's envoys; an
# NDIF server does not have moe_interp installed, so they travel by value (their source,
# as `nnsight.register` ships a module; their eproperties as `_nnsight_compat` pickles them).
# What its methods call travels the same way.
for _module in (__name__, location.__module__, whole_batch.__module__, router_sites.__module__):
    nnsight.register(_module)
