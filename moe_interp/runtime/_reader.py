"""The one reader of routing: where a router's values live, read and written inside a trace.

Runs in nnsight's worker while the model runs (locally, or on an NDIF server that imports
only whitelisted modules), like `runtime._kernels`, so it imports only torch and typing.
`routing` reads the routing the experts used (per readout kind: where the indices and
weights live, and which slots reached no expert: index -1, weight 0) and `set_weights` /
`set_indices` write it. RouterRecord, the drop edit, the router view's `indices` /
`weights` and `mi.expert_attribution` all go through them; `location`, `read`, `pick`,
`replaced` and `write` reach any site (`arch._sites.Site`) of a router or its experts.
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
    -1 with weight 0. `parts` says which of the two to read (the other is None): JetMoe
    makes them at two ops, and nnsight serves values in the order the model makes them.

    Where they live is the readout kind (`sites.readout`, see `arch.RouterAdapter.readout`):

    - `"experts"` / `"router"`: the experts module's arguments / the router's output elements;
    - `"topk"`: the router's `torch.topk` op (indices) and the op that makes the weights;
    - `"dense"`: `[T, E]` scores, the unselected at 0: their top k, a 0 being a dropped slot;
    - `"dispatch"`: a 0/1 mask `[..., E]` and the chosen experts' weights (`[..., 1]` or
      `[..., E]`): the experts the mask dispatches each token to, -1 where it dispatches none.

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
    """`routing`, and `(at, raw)`: the envoy and value where the weights were read (to write them)."""
    kind = sites.readout
    if kind in ("dense", "dispatch"):
        site = sites.dense if kind == "dense" else sites.indices
        at = location(router, experts, site)
        raw = read(at, site)
        return _ranked(kind, raw, sites, top_k) + (at, raw)
    indices = weights = at = raw = None
    if "indices" in parts:
        at = location(router, experts, sites.indices)
        raw = read(at, sites.indices)
        indices = _token_rows(pick(raw, sites.indices)).long()
    if "weights" in parts:
        if raw is None or sites.weights._replace(index=None) != sites.indices._replace(index=None):
            at = location(router, experts, sites.weights)  # one read when both live there
            raw = read(at, sites.weights)
        weights = _token_rows(pick(raw, sites.weights))
    return indices, weights, at, raw



def _token_rows(value: torch.Tensor) -> torch.Tensor:
    """`[..., last]` as `[tokens, last]` (a view where it can be, so edits reach the model)."""
    return value if value.ndim == 2 else value.reshape(-1, value.shape[-1])



def _ranked(kind: str, raw: Any, sites: Any, top_k: int) -> tuple:
    """`(indices, weights)` of a dense score matrix or a dispatch mask (see `routing`)."""
    if kind == "dense":  # unselected experts score 0
        weights, indices = torch.topk(_token_rows(pick(raw, sites.dense)), top_k, dim=-1)
        return torch.where(weights != 0, indices, -1), weights
    mask = _token_rows(pick(raw, sites.indices))
    chosen = pick(raw, sites.weights).reshape(mask.shape[0], -1)  # [T, 1] or [T, E]
    # the dispatched experts first (by weight), then the rest, which no slot reached
    ranked, indices = torch.topk(torch.where(mask != 0, chosen, float("-inf")), top_k, dim=-1)
    kept = mask.gather(1, indices) != 0
    return torch.where(kept, indices, -1), torch.where(kept, ranked, torch.zeros_like(ranked))



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
    kind = sites.readout
    indices, _, at, raw = _routing(router, experts, sites, new.shape[-1],
                                   ROUTING if kind in ("dense", "dispatch") else ("weights",))
    _write_weights(at, raw, sites, indices, new)



def _write_weights(at: Any, raw: Any, sites: Any, indices: Any, new: torch.Tensor) -> None:
    kind = sites.readout
    site = sites.dense if kind == "dense" else sites.weights
    old = pick(raw, site)
    new = new.to(device=old.device, dtype=old.dtype)
    if kind == "dense" or (kind == "dispatch" and old.shape[-1] != 1):
        value = _scattered(old, indices, new)
    elif kind == "dispatch":  # one weight per token: the dispatched expert's
        flat = old.reshape(-1, 1)
        value = torch.where(indices >= 0, new, flat).reshape(old.shape)
    else:
        value = new.reshape(old.shape)
    write(at, site, raw, value)



def _scattered(scores: torch.Tensor, indices: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`scores[..., E]` with `new[t, k]` at column `indices[t, k]` (-1: none), the rest kept."""
    flat = scores.reshape(-1, scores.shape[-1])
    hit = indices[..., None] == torch.arange(flat.shape[-1], device=flat.device)  # [T, K, E]
    value = (hit * new[..., None]).sum(1).to(flat.dtype)
    return torch.where(hit.any(1), value, flat).reshape(scores.shape)



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
    indices, weights, at, raw = _routing(router, experts, sites, top_k, ROUTING)
    weights = change(indices, weights)
    _write_weights(at, raw, sites, indices, weights)
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
    if sites.readout in ("dense", "dispatch"):
        raise RouterAccessError(f"this router hands its experts a {'dense score matrix' if sites.readout == 'dense' else 'dispatch mask'}"
                                ", not indices: change its routing at its logits or scores")
    at = location(router, experts, sites.indices)
    raw = read(at, sites.indices)
    old = pick(raw, sites.indices)
    write(at, sites.indices, raw, new.to(device=old.device, dtype=old.dtype).reshape(old.shape))
