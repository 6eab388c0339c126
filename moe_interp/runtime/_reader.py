"""The one reader of routing: where a router's values live, read and written inside a trace.

Runs in nnsight's worker while the model runs (locally, or on an NDIF server that imports
only whitelisted modules), like `runtime._kernels`, so it imports only torch and typing.
`routing` reads the routing the experts used and `set_weights` / `set_indices` /
`rewrite_weights` write it, for every readout kind alike: the kind (`sites.used`, an
`arch._sites.Readout`) names its sites and decodes / encodes their values, this module
reads and writes those sites (each place once, in model order). RouterRecord, the drop
edit, the router view's `indices` / `weights` and `mi.expert_attribution` all go through
them; `location`, `read`, `pick`, `replaced` and `write` reach any site
(`arch._sites.Site`) of a router or its experts.
"""

from typing import Any, Sequence

import torch

__all__ = ["ROUTING", "RouterAccessError", "location", "on", "pick", "read", "replaced", "resolve", "rewrite_weights", "routing",
           "set_indices", "set_weights", "write"]


def resolve(root: Any, path: str) -> Any:
    """The envoy at a dotted module path (`"model.layers.3.mlp.gate"`) under `root`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._reader import resolve
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> resolve(model, "model.layers.3.mlp.gate") is model.model.layers[3].mlp.gate
    True

    ```
    """
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. Local runs get their plan placed beforehand (a no-op here); on a
    server the copy is queued without waiting, so the model never stalls for it.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._reader import on
    >>> mask = torch.tensor([True, False])
    >>> on(mask, torch.device("cpu")) is mask            # already there: the same tensor
    True

    ```
    """
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=torch.device(device).type != "cpu")  # a copy to the host must wait


def location(router: Any, experts: Any, site: Any) -> Any:
    """The nnsight envoy that holds `site` (an `arch._sites.Site`): the router's or the
    experts' module envoy, or a `.source` op under it (ops inside a helper method are
    drilled in turn). The router view finds its locations here too.

    `read`, `pick`, `replaced` and `write` then edit the value there, inside a trace:

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._kernels import edit_scores
    >>> from moe_interp.runtime._reader import location, pick, read, write
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> block = model.model.layers[0].mlp
    >>> site = Site("router", ("router_logits_0",), "output", None)   # the raw logits [T, E]
    >>> boost = Edit("additive", torch.tensor([0.0] * 7 + [1e3]), 1.0)
    >>> with model.trace("Hello"):
    ...     at = location(block.gate, block.experts, site)
    ...     raw = read(at, site)
    ...     write(at, site, raw, edit_scores(pick(raw, site), [boost]))
    ...     chosen = model.moe[0].router.indices.save()
    >>> bool((chosen == 7).any(-1).all())                # every token now uses expert 7
    True

    ```
    """
    envoy = router if site.owner == "router" else experts
    for op in site.ops:
        envoy = getattr(envoy.source, op)
    return envoy


def _argument(args: tuple, kwargs: dict, index: int) -> Any:
    """Positional argument `index` of a call, wherever the caller put it."""
    if index < len(args):
        return args[index]
    return list(kwargs.values())[index - len(args)]


def _with_argument(args: tuple, kwargs: dict, index: int, new: Any) -> tuple:
    if index < len(args):
        return tuple(args[:index]) + (new,) + tuple(args[index + 1:]), kwargs
    key = list(kwargs)[index - len(args)]
    return args, {**kwargs, key: new}


def _with_element(value: Any, index: Any, new: Any) -> Any:
    if index is None:
        return new
    items = list(value)
    items[index] = new
    if hasattr(value, "_fields"):  # a namedtuple takes its fields one by one
        return type(value)(*items)
    return type(value)(items) if isinstance(value, tuple) else items  # torch.return_types too


def read(envoy: Any, site: Any) -> Any:
    """The raw value the model serves at `site`'s end of `envoy` (from `location`): the
    whole output, or `(args, kwargs)`; `pick` takes the site's value from it. Inside a
    trace only: see `location` for a worked example.

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._reader import read
    >>> class Served:                      # what an envoy serves, outside a trace
    ...     output, inputs = "out", (("hidden", "indices"), {})
    >>> read(Served, Site("router", (), "output", None)), read(Served, Site("experts", (), "input", 1))
    ('out', (('hidden', 'indices'), {}))

    ```
    """
    return envoy.output if site.end == "output" else envoy.inputs


def pick(raw: Any, site: Any) -> Any:
    """The value of `site` in `raw` (what `read` served): an element of the output, or a
    positional argument.

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._reader import pick
    >>> pick(("logits", "weights", "indices"), Site("router", (), "output", 2))
    'indices'
    >>> pick((("hidden",), {"top_k_index": "indices"}), Site("experts", (), "input", 1))   # by keyword too
    'indices'

    ```
    """
    if site.end == "output":
        return raw if site.index is None else raw[site.index]
    return _argument(raw[0], raw[1], site.index)


def replaced(raw: Any, site: Any, new: Any) -> Any:
    """`raw` (what `read` served) with the value of `site` replaced by `new`.

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._reader import replaced
    >>> replaced(("logits", "weights", "indices"), Site("router", (), "output", 2), "mine")
    ('logits', 'weights', 'mine')
    >>> replaced((("hidden",), {"top_k_index": "indices"}), Site("experts", (), "input", 1), "mine")
    (('hidden',), {'top_k_index': 'mine'})

    ```
    """
    if site.end == "output":
        return _with_element(raw, site.index, new)
    return _with_argument(raw[0], raw[1], site.index, new)


def write(envoy: Any, site: Any, raw: Any, new: Any) -> None:
    """Swap `new` in at `site` of `envoy`, `raw` being what `read` served there.
    Inside a trace only: see `location` for a worked example.

    ```python
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._reader import write
    >>> class Served:                      # what an envoy serves, outside a trace
    ...     output = ("logits", "weights", "indices")
    >>> write(Served, Site("router", (), "output", 1), Served.output, "mine")
    >>> Served.output
    ('logits', 'mine', 'indices')

    ```
    """
    if site.end == "output":
        envoy.output = replaced(raw, site, new)
    else:
        envoy.inputs = replaced(raw, site, new)


class RouterAccessError(ValueError):
    """A router value that this MoE layer does not have, or cannot take.

    Hash-routed layers (DeepSeek-V4's first layers: experts looked up by token id) rank
    nothing: their `scores` do not exist and an edit of their `logits` would not reach
    the selection. Routers that hand their experts dense scores (Llama-4, NLLB-MoE) or a
    dispatch mask (Switch) have no `indices` to assign, and a slot that reached no expert
    (index -1) has no weight to give. The message names the layer and what to use instead.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("deepseek_v4")
    >>> mi.describe(model).routing_kinds          # layers 0-2 hash-routed
    ('hash', 'hash', 'hash', 'topk')
    >>> with model.trace("Hello"):
    ...     model.moe[0].router.logits[:, 1] += 5.0
    Traceback (most recent call last):
    moe_interp.runtime._reader.RouterAccessError: layer 0 selects its experts by a token-id table (hash routing), not by ranking scores: ... use a learned layer: model.moe.at(layer) for layer in [3]

    ```
    """


ROUTING = ("indices", "weights")


def routing(router: Any, experts: Any, sites: Any, top_k: int, parts: Sequence = ROUTING) -> tuple:
    """The routing the experts used: `(indices[T, K], weights[T, K])` for the whole batch,
    tokens flattened `batch * seq`; the one reading that RouterRecord, the drop edit, the
    router view (`router.indices` / `router.weights`) and `mi.expert_attribution` share.

    `indices` are long; a slot that reached no expert (dropped past an expert's capacity,
    padding that a router dispatches nowhere, a zero of a dense score matrix) reads as index
    -1 with weight 0. `parts` says which of the two to read (the other may be None): JetMoe
    makes them at two ops, and nnsight serves values in the order the model makes them.

    Where they live and how they decode is the layer's readout kind, `sites.used` (an
    `arch._sites.Readout`: the experts' arguments, the router's output, its top-k op, a
    dense `[T, E]` score matrix, a dispatch mask, or a kind an adapter registers): this
    reads the kind's sites (each place once) and hands their values to its `decode`.

    Inside a trace only (`sites` from `arch._sites.router_sites`):

    ```python
    >>> import moe_interp as mi, nnsight, torch
    >>> from moe_interp.arch._sites import router_sites
    >>> from moe_interp.runtime._reader import routing
    >>> model = mi.zoo.tiny_model("switch_transformers", expert_capacity=2)   # top-1, 2 tokens an expert
    >>> sites, _ = router_sites(mi.describe(model))
    >>> router = model.encoder.block[1].layer[1].mlp.router
    >>> with torch.no_grad(), model.trace({"input_ids": torch.tensor([[5, 5, 5, 5, 5, 5]]),
    ...                                     "decoder_input_ids": torch.tensor([[0]])}):
    ...     got = nnsight.save(routing(router, None, sites, top_k=1))
    >>> indices, weights = got
    >>> indices.flatten().tolist()                  # six alike tokens, one expert: 4 past its capacity
    [6, 6, -1, -1, -1, -1]
    >>> bool(((indices < 0) == (weights == 0)).all())
    True

    ```
    """
    return _routing(router, experts, sites, top_k, parts)[:2]


def _routing(router: Any, experts: Any, sites: Any, top_k: int, parts: Sequence) -> tuple:
    """`routing`, and what it read (`values`, `places`: see `_read_sites`), to write back with `_write_sites`."""
    values, places = _read_sites(router, experts, sites.used, parts)
    indices, weights = sites.used.decode(values, top_k)
    return indices, weights, values, places


def _read_sites(router: Any, experts: Any, kind: Any, parts: Sequence) -> tuple:
    """`(values, places)`: `{field: value}` of the sites readout `kind` reads for `parts`, and
    `[(envoy, place, raw)]`, each place (an output, a call's arguments) read once."""
    values, places = {}, []
    for field in kind.reads(parts):
        site = getattr(kind, field)
        place = site._replace(index=None)  # two elements of one output, two arguments of one call: one read
        found = next((p for p in places if p[1] == place), None)
        if found is None:
            at = location(router, experts, site)
            found = (at, place, read(at, site))
            places.append(found)
        values[field] = pick(found[2], site)
    return values, places


def _write_sites(kind: Any, places: list, changes: dict) -> None:
    """Write `changes` (`{field: new value}` from the readout's `encode_*`) at the places read."""
    for at, place, raw in places:
        mine = [(getattr(kind, field), value) for field, value in changes.items()
                if getattr(kind, field)._replace(index=None) == place]
        if mine:
            for site, value in mine[:-1]:
                raw = replaced(raw, site, value)
            write(at, mine[-1][0], raw, mine[-1][1])
    unread = [field for field in changes if all(getattr(kind, field)._replace(index=None) != p[1] for p in places)]
    if unread:
        raise ValueError(f"readout kind {kind.name!r} writes {unread} without reading them: "
                         "return them from its reads(parts)")


def set_weights(router: Any, experts: Any, sites: Any, new: torch.Tensor) -> None:
    """Make `new[T, K]` the weights of the routing `routing` reads, whole batch, wherever the
    layer keeps them: the experts' argument, a router output, the op that makes them, the
    chosen experts' entries of a dense score matrix or the dispatched experts' weights. A
    slot that reached no expert (index -1) keeps what the model has there (no expert to give
    it to). Autograd flows through `new` (`mi.expert_attribution` writes `weights + probe`).
    Inside a trace only.

    ```python
    >>> import moe_interp as mi, nnsight, torch
    >>> from moe_interp.arch._sites import router_sites
    >>> from moe_interp.runtime._reader import routing, set_weights
    >>> model = mi.zoo.tiny_model("llama4_text")              # dense [T, E] scores, top-1
    >>> sites, _ = router_sites(mi.describe(model))
    >>> block = model.model.layers[0].feed_forward
    >>> with torch.no_grad(), model.trace("Hello"):
    ...     indices, weights = routing(block.router, block.experts, sites, top_k=1)
    ...     set_weights(block.router, block.experts, sites, weights * 2)
    ...     doubled = nnsight.save(routing(block.router, block.experts, sites, top_k=1)[1])
    ...     weights = weights.save()
    >>> torch.equal(doubled, weights * 2)
    True

    ```
    """
    indices, _, values, places = _routing(router, experts, sites, new.shape[-1], ("weights",))
    _write_sites(sites.used, places, sites.used.encode_weights(values, indices, new))


def rewrite_weights(router: Any, experts: Any, sites: Any, top_k: int, change: Any) -> tuple:
    """`(indices, weights)` the experts receive once `change(indices, weights)` (new weights)
    is written back: one read of the site, then one write (the drop edit).

    ```python
    >>> import nnsight, torch
    >>> import moe_interp as mi
    >>> from moe_interp.arch._sites import router_sites
    >>> from moe_interp.runtime._reader import rewrite_weights, routing
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> sites, _ = router_sites(mi.describe(model))
    >>> block = model.model.layers[1].mlp
    >>> with model.trace("Hi"):
    ...     indices, weights = rewrite_weights(block.gate, block.experts, sites, 2, lambda i, w: w * 0)
    ...     seen = nnsight.save(routing(block.gate, block.experts, sites, top_k=2)[1])
    >>> float(seen.detach().abs().sum())
    0.0

    ```
    """
    indices, weights, values, places = _routing(router, experts, sites, top_k, ROUTING)
    weights = change(indices, weights)
    _write_sites(sites.used, places, sites.used.encode_weights(values, indices, weights))
    return indices, weights


def set_indices(router: Any, experts: Any, sites: Any, new: torch.Tensor) -> None:
    """Make `new[T, K]` the experts the layer's tokens go to, whole batch, where the layer
    takes indices (the experts' argument, a router output, the top-k op). A router that hands
    its experts a dense score matrix or a dispatch mask has no indices to take:
    `RouterAccessError`. Inside a trace only.

    ```python
    >>> import moe_interp as mi, nnsight, torch
    >>> from moe_interp.arch._sites import router_sites
    >>> from moe_interp.runtime._reader import routing, set_indices
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> sites, _ = router_sites(mi.describe(model))
    >>> block = model.model.layers[0].mlp
    >>> with torch.no_grad(), model.trace("Hi"):
    ...     set_indices(block.gate, block.experts, sites, torch.tensor([[6, 7], [6, 7]]))
    ...     indices = nnsight.save(routing(block.gate, block.experts, sites, top_k=2)[0])
    >>> indices.tolist()
    [[6, 7], [6, 7]]

    ```
    """
    kind = sites.used
    if kind.hands is not None:
        raise RouterAccessError(f"this router hands its experts {kind.hands}, not indices: change its routing at "
                                "its logits or scores")
    values, places = _read_sites(router, experts, kind, ("indices",))
    _write_sites(kind, places, kind.encode_indices(values, new))
