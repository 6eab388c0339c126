"""The only code of `moe_interp` that runs inside a trace.

Everything here executes in nnsight's worker while the model runs: locally, or on an NDIF
server that imports only whitelisted modules (torch, math, typing, collections, ...). So
this module imports nothing else, defines pure functions on tensors, and takes every
decision that can be taken earlier (validation, expert sets, strengths) as a compiled
`plan` built outside the trace by `interventions.compile_plan`.

A plan is a `_plan.Plan`: plain typed data (`NamedTuple`s, read here by attribute only, so
this module imports none of them). Each `LayerPlan` names one MoE layer's module paths, its
router sites (`arch._sites.RouterSites`: where the logits, the ranked scores and the used
routing live, the sites the router view reads too) and its edits, each an
`Edit(kind, payload, scale)`:

- `"relative"`: `z + scale * s * |z|` with `s` a dense `[E]` strength vector (the paper);
- `"additive"`: `z + scale * s`;
- `"reroute"`: `z[:, mask] = -1e9` before selection (the expert cannot be chosen);
- `"drop"`: the selected expert's weight set to 0 after selection (no renormalisation).

The routing the experts used is read in one place, `routing` (per readout kind: where the
indices and weights live, and which slots reached no expert: index -1, weight 0), and
written by `set_weights` / `set_indices`. RouterRecord, the drop edit (`set_weights` of a
masked copy), the router view's `indices` / `weights` and `mi.expert_attribution`
(`set_weights` of `weights + probe`) all go through them.
"""

from typing import Any, Sequence

import torch

NEG_LOGIT = -1e9  # the paper's value; clamped to the dtype's range for half precision


def resolve(root: Any, path: str) -> Any:
    """The envoy at a dotted module path (`"model.layers.3.mlp.gate"`) under `root`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._kernels import resolve
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
    >>> from moe_interp.runtime._kernels import on
    >>> mask = torch.tensor([True, False])
    >>> on(mask, torch.device("cpu")) is mask            # already there: the same tensor
    True

    ```
    """
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=torch.device(device).type != "cpu")  # a copy to the host must wait


def edit_scores(z: torch.Tensor, edits: Sequence) -> torch.Tensor:
    """Apply logit-stage edits in order to router scores `z[T, E]`; returns a new tensor.

    A router may make more logits than it routes (Inkling: the routed experts, then a
    shared-expert column): the payloads cover the routed experts, the columns after them
    are left as they are.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.runtime._kernels import edit_scores
    >>> z = torch.tensor([[1.0, -2.0, 0.5]])
    >>> edit_scores(z, [Edit("additive", torch.tensor([0.0, 0.0, 2.0]), 1.0)])   # 0.5 + 2
    tensor([[ 1.0000, -2.0000,  2.5000]])
    >>> steer = Edit("relative", torch.tensor([0.0, 1.0, 0.0]), 0.5)              # -2 + 0.5 * 1 * |-2|
    >>> edit_scores(z, [steer, Edit("reroute", torch.tensor([True, False, False]), 1.0)])
    tensor([[-1.0000e+09, -1.0000e+00,  5.0000e-01]])

    ```
    """
    for kind, payload, scale in edits:  # Edit values unpack as (kind, payload, scale)
        payload = on(payload, z.device)
        extra = z.shape[-1] - payload.shape[-1]
        if extra < 0:
            raise ValueError(f"router scores have {z.shape[-1]} columns but the intervention covers "
                             f"{payload.shape[-1]} experts: register an adapter naming the site of the routed scores")
        if extra:
            payload = torch.cat([payload, payload.new_zeros(extra)])
        if kind == "relative":
            z = z + scale * payload.to(z.dtype) * z.abs()
        elif kind == "additive":
            z = z + scale * payload.to(z.dtype)
        elif kind == "reroute":
            z = torch.where(payload, max(NEG_LOGIT, torch.finfo(z.dtype).min), z)  # fewer ops than masked_fill
        else:
            raise ValueError(f"unknown score edit {kind!r}")
    return z


def drop_weights(indices: torch.Tensor, weights: torch.Tensor, edits: Sequence) -> torch.Tensor:
    """Zero the weights of dropped experts among the selected `indices[T, K]`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.runtime._kernels import drop_weights
    >>> indices, weights = torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    >>> drop_weights(indices, weights, [Edit("drop", torch.tensor([False, False, True]), 1.0)])
    tensor([[0.6000, 0.0000],
            [0.7000, 0.0000]])

    ```
    """
    for _, mask, _ in edits:  # Edit("drop", mask, _)
        weights = weights.masked_fill(on(mask, indices.device)[indices], 0)
    return weights


def location(router: Any, experts: Any, site: Any) -> Any:
    """The nnsight envoy that holds `site` (an `arch._sites.Site`): the router's or the
    experts' module envoy, or a `.source` op under it (ops inside a helper method are
    drilled in turn). The router view finds its locations here too.

    `read`, `pick`, `replaced` and `write` then edit the value there, inside a trace:

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.arch._sites import Site
    >>> from moe_interp.runtime._kernels import edit_scores, location, pick, read, write
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
    >>> from moe_interp.runtime._kernels import read
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
    >>> from moe_interp.runtime._kernels import pick
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
    >>> from moe_interp.runtime._kernels import replaced
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
    >>> from moe_interp.runtime._kernels import write
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


def _edit_site(router: Any, experts: Any, site: Any, edits: Any) -> None:
    """Apply score `edits` at `site`."""
    envoy = location(router, experts, site)
    raw = read(envoy, site)
    write(envoy, site, raw, edit_scores(pick(raw, site), edits))


def _sites(entry: Any) -> Any:
    """The entry's sites for this forward: some routers run other ops with grad off (a
    CUDA-only branch), so the plan names both and the grad mode of the forward decides."""
    return entry.sites if entry.no_grad is None or torch.is_grad_enabled() else entry.no_grad


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
    moe_interp.runtime._kernels.RouterAccessError: layer 0 selects its experts by a token-id table (hash routing), not by ranking scores: ... use a learned layer: model.moe.at(layer) for layer in [3]

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
    >>> from moe_interp.runtime._kernels import routing
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
    >>> from moe_interp.runtime._kernels import routing, set_weights
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


def set_indices(router: Any, experts: Any, sites: Any, new: torch.Tensor) -> None:
    """Make `new[T, K]` the experts the layer's tokens go to, whole batch, where the layer
    takes indices (the experts' argument, a router output, the top-k op). A router that hands
    its experts a dense score matrix or a dispatch mask has no indices to take:
    `RouterAccessError`. Inside a trace only.

    ```python
    >>> import moe_interp as mi, nnsight, torch
    >>> from moe_interp.arch._sites import router_sites
    >>> from moe_interp.runtime._kernels import routing, set_indices
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


def _used(router: Any, experts: Any, sites: Any, drops: Any, top_k: int) -> tuple:
    """(indices[T, K], weights[T, K]) the experts really receive, after `drop` edits."""
    indices, weights, at, raw = _routing(router, experts, sites, top_k, ROUTING)
    if drops:
        weights = drop_weights(indices, weights, drops)
        _write_weights(at, raw, sites, indices, weights)
    return indices, weights


def token_groups(inputs: Any, rows: list, num_tokens: int) -> tuple:
    """Per-token group id (`-1` for padding) and position among the row's real tokens.

    `rows` is `[(start, size), ...]` per group, in batch order. Tokens are flattened
    `batch * seq` as the router sees them; the current tokens are the last `seq`
    columns of the attention mask (a cached decoding step sees one new token per row).
    The position is the text position, the token's index among its row's real tokens
    (each image or video placeholder token counts one): 2-D `position_ids` when given,
    never a multimodal model's rope ids (`[3, batch, seq]`), else from the mask.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import token_groups
    >>> ids, mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    >>> group, position, row = token_groups(((ids,), {"attention_mask": mask}), [(0, 1), (1, 1)], 6)
    >>> group, position                    # row 0's left pad is -1; one group per row here
    (tensor([-1,  0,  0,  1,  1,  1]), tensor([-1,  0,  1,  0,  1,  2]))
    >>> row
    tensor([0, 0, 0, 1, 1, 1])

    ```
    """
    args, kwargs = inputs
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    embeds = kwargs.get("inputs_embeds")
    batch = mask.shape[0] if mask is not None else (ids.shape[0] if ids is not None else embeds.shape[0])
    seq = num_tokens // batch
    device = mask.device if mask is not None else (ids.device if ids is not None else embeds.device)
    row_group = torch.full((batch,), -1, dtype=torch.long, device=device)
    for g, (start, size) in enumerate(rows):
        row_group[start : start + size] = g
    real = torch.ones(batch, seq, dtype=torch.bool, device=device) if mask is None else mask[:, -seq:] > 0
    position = kwargs.get("position_ids")
    # multimodal rope ids ([3 or 4, batch, seq], Qwen-VL's M-RoPE) are not positions among
    # the real tokens: the text position (from the mask) is kept instead
    if position is not None and position.ndim <= 2 and position.shape[-1] == seq:
        position = position.to(device).expand(batch, seq)
    elif mask is not None:
        position = mask.long().cumsum(-1)[:, -seq:] - 1
    elif kwargs.get("cache_position") is not None:
        position = kwargs["cache_position"][-seq:].to(device).expand(batch, seq)
    else:
        position = torch.arange(seq, device=device).expand(batch, seq)
    group = torch.where(real, row_group[:, None].expand(batch, seq), -1)
    row = torch.arange(batch, device=device)[:, None].expand(batch, seq)
    return group.reshape(-1), position.reshape(-1), row.reshape(-1)


def token_kinds(inputs: Any, group: torch.Tensor, exclude: Any, modalities: Sequence) -> torch.Tensor:
    """`group` (from `token_groups`) with the tokens whose id is in `exclude` marked as
    padding (`-1`) and, with `modalities` (`(name, ids)` each), every group `g` split into
    `g * (1 + M) + m`: `m = 0` text, `m = i + 1` for a token id in `modalities[i]`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import token_kinds
    >>> inputs = ((), {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]])})
    >>> group = torch.tensor([-1, 0, 0, 1, 1, 1])
    >>> token_kinds(inputs, group, torch.tensor([6]), ())                     # id 6 left out
    tensor([-1,  0, -1,  1,  1,  1])
    >>> token_kinds(inputs, group, None, [("image", torch.tensor([8, 9]))])   # g * 2 + (1 for image)
    tensor([-1,  0,  0,  2,  3,  3])

    ```
    """
    if exclude is None and not modalities:
        return group
    args, kwargs = inputs
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError("RouterRecord(exclude_tokens=..., by_modality=True) tells tokens apart by their ids: "
                         "call the model with input_ids (not inputs_embeds)")
    ids = ids[:, ids.shape[1] - group.shape[0] // ids.shape[0]:].reshape(-1).to(group.device)
    if exclude is not None:
        group = torch.where(torch.isin(ids, on(exclude, group.device)), -1, group)
    if modalities:
        kind = torch.zeros_like(group)
        for m, (_, members) in enumerate(modalities):
            kind = torch.where(torch.isin(ids, on(members, group.device)), m + 1, kind)
        group = torch.where(group >= 0, group * (len(modalities) + 1) + kind, -1)
    return group


def drop_finished(inputs: Any, group: torch.Tensor, row: torch.Tensor, store: dict, eos: Sequence,
                  key: Any = None) -> torch.Tensor:
    """`group` with the tokens a generation counted before, and those of finished rows,
    marked as padding (`-1`).

    Each token counts once, at the forward that first feeds it. With a cache, a step feeds
    only the new tokens; without one (`use_cache=False`), every step feeds the whole sequence
    again, and only its columns past the length fed so far are new. That length is the
    attention mask's width (the whole sequence, cache or not); without a mask, a forward
    longer than the length fed so far is taken to re-feed it. State per stack (`key`, as in
    `forward_step`) in `store["fed"]`.

    A batch generation keeps feeding a row that has produced an end-of-sequence token (the
    EOS itself, then padding) until every row has ended; alone, that row would have stopped
    there. A row counts as finished from the first forward whose input holds an EOS among
    its generated tokens (`eos`: the ids; none, no row ends), so the counts equal generating
    each prompt alone. State lives in `store` (the prompt length, a per-row flag): no host waits.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import drop_finished
    >>> store, group, row = {"forwards": 0}, torch.tensor([0, 1]), torch.tensor([0, 1])
    >>> drop_finished(((torch.tensor([[5], [5]]),), {}), group, row, store, eos=(2,))  # the prompt
    tensor([0, 1])
    >>> store["forwards"] = 1
    >>> drop_finished(((torch.tensor([[2], [8]]),), {}), group, row, store, eos=(2,))  # row 0: EOS
    tensor([-1,  1])
    >>> store = {"forwards": 1, "fed": {None: 2}}          # no cache: [prompt, prompt, new] per row
    >>> mask = torch.ones(2, 3, dtype=torch.long)
    >>> drop_finished(((), {"attention_mask": mask}), torch.tensor([0, 0, 0, 1, 1, 1]),
    ...               torch.tensor([0, 0, 0, 1, 1, 1]), store, eos=())
    tensor([-1, -1,  0, -1, -1,  1])

    ```
    """
    args, kwargs = inputs
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    mask = kwargs.get("attention_mask")
    first = mask if mask is not None else (ids if ids is not None else kwargs.get("inputs_embeds"))
    if first is not None:
        batch = first.shape[0]
        seq = group.shape[0] // batch
        fed = store.setdefault("fed", {})
        before = fed.get(key, 0)
        length = mask.shape[-1] if mask is not None and mask.ndim == 2 else (seq if seq > before else before + seq)
        refed = min(max(before + seq - length, 0), seq)  # shapes only: no host waits
        fed[key] = length
        if refed:
            group = torch.cat([group.new_full((batch, refed), -1), group.view(batch, seq)[:, refed:]], 1).reshape(-1)
    if not eos or ids is None or ids.ndim != 2:
        return group
    if store["forwards"] == 0:  # the prompt: never finishes a row
        store["prompt_length"] = ids.shape[1]
        store["finished"] = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        return group
    prompt = store["prompt_length"]
    generated = ids[:, prompt:] if ids.shape[1] > prompt else ids  # a cached step sees only new tokens
    hit = generated == eos[0]
    for more in eos[1:]:
        hit = hit | (generated == more)
    finished = store["finished"] = store["finished"] | hit.any(-1)
    return torch.where(on(finished, group.device)[row], -1, group)


def tally(bins: torch.Tensor, size: int, weights: Any = None) -> torch.Tensor:
    """`bincount(bins[bins >= 0], weights, minlength=size)` (float64 with weights) that never
    waits for the GPU.

    Boolean indexing and `bincount` both read the data to size their output, which on a GPU
    blocks the host until every queued kernel has run; once per layer that starves the GPU.
    Here negative bins (padding) fall into one spare slot past the end, and the shapes
    depend on `size` alone.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import tally
    >>> tally(torch.tensor([2, -1, 0, 2]), 4)
    tensor([1, 0, 2, 0])
    >>> tally(torch.tensor([2, -1, 0, 2]), 4, torch.tensor([0.5, 9.0, 1.0, 0.25]))   # -1's 9.0 dropped
    tensor([1.0000, 0.0000, 0.7500, 0.0000], dtype=torch.float64)

    ```
    """
    bins = bins.reshape(-1)
    bins = torch.where(bins >= 0, bins, size)
    if weights is None:
        out = torch.zeros(size + 1, dtype=torch.long, device=bins.device)
        values = torch.ones_like(bins)
    else:
        out = torch.zeros(size + 1, dtype=torch.float64, device=bins.device)
        values = weights.reshape(-1).to(torch.float64)
    return out.scatter_add_(0, bins, values)[:size]


def totals_start(group: torch.Tensor, num_layers: int, num_groups: int, num_experts: int, top_k: int,
                 device: Any) -> dict:
    """One forward's routing totals, filled layer by layer with four GPU ops each and no waits.

    Built once per forward from the per-token group ids (`-1` padding): `base[t]` is token
    t's offset `group * E` in a `[layers, (groups + 1) * E]` buffer whose last group is a
    spare that collects the padding, so one layer's bins are `base + indices`: no masking,
    and shapes that never depend on the data. A dict, like the plan and the store.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_start
    >>> totals = totals_start(torch.tensor([0, 1, -1]), num_layers=2, num_groups=2, num_experts=3,
    ...                       top_k=2, device="cpu")
    >>> totals["base"].flatten().tolist(), totals["count"].shape   # padding at the spare group 2
    ([0, 3, 6], torch.Size([2, 9]))

    ```
    """
    device = torch.device(device)
    group = on(group, device)
    width = (num_groups + 1) * num_experts
    return {"base": (torch.where(group >= 0, group, num_groups) * num_experts)[:, None],
            "ones": torch.ones(group.shape[0] * top_k, dtype=torch.long, device=device),
            "count": torch.zeros(num_layers, width, dtype=torch.long, device=device),
            "mass": torch.zeros(num_layers, width, dtype=torch.float64, device=device),
            "shape": (num_layers, num_groups + 1, num_experts)}


def totals_add(totals: dict, layer: int, indices: torch.Tensor, weights: torch.Tensor) -> None:
    """Add one layer's routing, `indices[T, K]` with their `weights[T, K]`, to `totals`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_add, totals_start
    >>> totals = totals_start(torch.tensor([0, -1]), num_layers=1, num_groups=1, num_experts=3,
    ...                       top_k=2, device="cpu")
    >>> totals_add(totals, 0, torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    >>> totals["count"][0].tolist()        # group 0's experts 0-2, then the padding token's
    [1, 0, 1, 0, 1, 1]

    ```
    """
    base = totals["base"]
    if indices.ndim != 2 or indices.shape[0] != base.shape[0]:
        raise ValueError(f"router readout gave indices of shape {tuple(indices.shape)}; expected "
                         f"[tokens={base.shape[0]}, top_k]: register an adapter whose readout matches this router")
    indices = on(indices, base.device)
    spare = (totals["shape"][1] - 1) * totals["shape"][2]  # the padding group: "no expert" (-1) slots go there
    bins = torch.where(indices >= 0, base + indices, spare).reshape(-1)
    totals["count"][layer].scatter_add_(0, bins, totals["ones"])
    totals["mass"][layer].scatter_add_(0, bins, on(weights.detach(), base.device).reshape(-1).to(torch.float64))


def totals_fold(totals: dict, store: dict) -> None:
    """Add a forward's totals (spare group dropped) to `store`'s `[groups, layers, E]` tables.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_add, totals_fold, totals_start
    >>> totals = totals_start(torch.tensor([0, 0, -1]), num_layers=1, num_groups=1, num_experts=3,
    ...                       top_k=2, device="cpu")
    >>> totals_add(totals, 0, torch.tensor([[0, 2], [2, 1], [0, 1]]),
    ...            torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]]))
    >>> store = {"count": torch.zeros(1, 1, 3, dtype=torch.long),
    ...          "gate_mass": torch.zeros(1, 1, 3, dtype=torch.float64)}
    >>> totals_fold(totals, store)         # the padding token (row 3) is not counted
    >>> store["count"].tolist(), store["gate_mass"].tolist()
    ([[[1, 1, 2]]], [[[0.75, 0.5, 0.75]]])

    ```
    """
    shape = totals["shape"]
    groups = shape[1] - 1
    store["count"] += totals["count"].view(shape)[:, :groups].transpose(0, 1)
    store["gate_mass"] += totals["mass"].view(shape)[:, :groups].transpose(0, 1)


def forward_step(root: Any, plan: Any, store: dict, rows: list) -> None:
    """Everything this plan does during one forward of the model, in execution order."""
    record = plan.record
    verify = plan.verify and store["forwards"] == 0  # arch.ExpertsCheck: first forward only
    num_experts, top_k = plan.num_experts, plan.top_k
    # A model with several stacks (an encoder and a decoder) routes each stack's own tokens:
    # they are read from the inputs of the module holding the stack, before its first router.
    stacked = any(entry.tokens_from for entry in plan.layers)
    inputs = {None: root.inputs} if record and not stacked else {}
    tallies: dict = {}
    group = None
    per_token = [] if plan.per_token else None
    held = []
    for position, entry in enumerate(plan.layers):
        if entry.once and store["forwards"] > 0:  # an encoder: generate runs it before the first step only
            continue
        if record and entry.tokens_from not in inputs:
            inputs[entry.tokens_from] = resolve(root, entry.tokens_from).inputs
        router = resolve(root, entry.router)
        experts = resolve(root, entry.experts) if entry.experts else None
        sites = _sites(entry)
        # sites inside the router's forward first, in the order it runs them; its output last
        inside = bool(sites.logits.ops)
        if entry.logits_edits and inside:
            _edit_site(router, experts, sites.logits, entry.logits_edits)
        if entry.choice_edits:
            _edit_site(router, experts, sites.choice, entry.choice_edits)
        if entry.select_edits and sites.select is not None:
            _edit_site(router, experts, sites.select, entry.select_edits)
        if entry.logits_edits and not inside:
            _edit_site(router, experts, sites.logits, entry.logits_edits)
        if not (record or entry.drop or verify or entry.rerouted is not None):
            continue
        indices, weights = _used(router, experts, sites, entry.drop, top_k)
        if entry.rerouted is not None:
            # the safety net: tokens that still received an ablated expert (0 when the
            # reroute held); read on the host once, after the trace (interventions.check_held)
            chosen = indices if indices.dtype == torch.long else indices.long()
            held.append(torch.count_nonzero(torch.take(on(entry.rerouted, indices.device), chosen)))
        if verify:
            store.setdefault("verify", []).append((entry.layer, indices))
        if not record:
            continue
        key = entry.tokens_from
        if key not in tallies:
            source = inputs[key]
            group, token_position, token_row = token_groups(source, rows, indices.shape[0])
            group = token_kinds(source, group, plan.exclude, plan.modalities)
            if plan.generating and not entry.once:
                group = drop_finished(source, group, token_row, store, plan.eos, key)
            groups = len(rows) * (1 + len(plan.modalities))
            if "count" not in store:
                shape = (groups, len(plan.layers), num_experts)
                store["count"] = torch.zeros(shape, dtype=torch.long, device=indices.device)
                store["gate_mass"] = torch.zeros(shape, dtype=torch.float64, device=indices.device)
                store["tokens"] = torch.zeros(groups, dtype=torch.long, device=indices.device)
            counted = store["tokens"] if key is None else store.setdefault("stack_tokens", {}).setdefault(
                key, torch.zeros_like(store["tokens"]))
            counted += on(tally(group, groups), counted.device)
            tallies[key] = totals_start(group, len(plan.layers), groups, num_experts, indices.shape[1],
                                        store["count"].device)
        totals_add(tallies[key], position, indices, weights)
        if per_token is not None:
            per_token.append((indices.to(torch.int16), weights.detach().to(torch.float16)))
    for totals in tallies.values():
        totals_fold(totals, store)
    if held:
        used = torch.stack([on(h, held[0].device) for h in held])
        store["rerouted_used"] = used if "rerouted_used" not in store else store["rerouted_used"] + used
    if per_token:
        # Padding rows stay until `compact` (after the forward): dropping them here would make
        # the host wait for the GPU before the last layer and the head are even launched.
        device = per_token[0][0].device
        store["per_token"].append({
            "indices": torch.stack([on(i, device) for i, _ in per_token], 1),
            "weights": torch.stack([on(w, device) for _, w in per_token], 1),
            "group": group.to(torch.int16),
            "row": token_row.to(torch.int32),
            "position": token_position.to(torch.int32),
        })
    store["forwards"] += 1


def compact(chunks: list) -> dict:
    """The per-token records of all forwards as one table on the host, padding dropped.

    `chunks` are `store["per_token"]`: one dict per forward, rows in token order, padding
    marked by `group == -1`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import compact
    >>> table = compact([{"group": torch.tensor([0, -1]), "indices": torch.tensor([[1, 2], [0, 0]])},
    ...                  {"group": torch.tensor([1]), "indices": torch.tensor([[2, 0]])}])
    >>> table["group"].tolist(), table["indices"].tolist()
    ([0, 1], [[1, 2], [2, 0]])

    ```
    """
    keys = chunks[0].keys()
    table = {key: torch.cat([chunk[key].detach().cpu() for chunk in chunks]) for key in keys}
    real = table["group"] >= 0
    return {key: value[real] for key, value in table.items()}


def run(root: Any, plan: Any, store: dict, steps: Any, row_groups: Any, stop: tuple) -> None:
    """The worker body: one `forward_step` per model forward in `steps`.

    A generation's open-ended `steps` ends when the model stops producing forwards:
    the interleaver then throws one of `stop` into the request that was never served.
    """
    # A plan whose only work is the first forward's check must stop asking for steps: its
    # body would otherwise request nothing and spin through an open-ended generation.
    every_forward = plan.record or any(entry.logits_edits or entry.choice_edits or entry.select_edits
                                       or entry.drop or entry.rerouted is not None for entry in plan.layers)
    try:
        for _ in steps:
            forward_step(root, plan, store, row_groups())
            if not every_forward:
                break
    except stop:
        if store["forwards"] == 0:
            raise


def keep_result(root: Any, tracer: Any, store: dict) -> None:
    """The second worker: the prompt length at the first forward, then the model's return value."""
    args, kwargs = root.inputs
    # an encoder-decoder's output continues its decoder's input, not the source
    ids = kwargs.get("decoder_input_ids", kwargs.get("input_ids"))
    if ids is None:
        ids = args[0] if args else kwargs.get("inputs_embeds")
    store["input_length"] = ids.shape[1]
    store["result"] = tracer.result


def _to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_host(v) for v in value]
    return value


def pack(store: dict) -> dict:
    """What a remote run sends back: the store on the CPU, `count` as int32 when it fits.

    With `RouterRecord()` that is `[groups, layers, experts]` counts and gate mass plus
    per-group token totals: its size does not depend on how many tokens were routed.
    `per_token` and the model output (`result`), when present, are the exceptions.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import pack
    >>> out = pack({"count": torch.tensor([[[1, 3]]]), "tokens": torch.tensor([2]), "forwards": 1})
    >>> out["count"].dtype, out["per_token"], out["forwards"]
    (torch.int32, [], 1)

    ```
    """
    out = {k: _to_host(v) for k, v in store.items() if k not in ("result", "per_token")}
    out["per_token"] = [compact(store["per_token"])] if store.get("per_token") else []
    if "result" in store:
        out["result"] = _to_host(store["result"]) if isinstance(store["result"], torch.Tensor) else store["result"]
    count = out.get("count")
    if count is not None and (count.numel() == 0 or int(count.max()) <= 2147483647):
        out["count"] = count.to(torch.int32)
    return out


def profile_batch(store: dict, languages: torch.Tensor, acc: dict) -> None:
    """Fold one profiling batch (one stats group per text) into a session's running result.

    Per text: `count[layers, experts]` (int16 when it fits, else int32) and its token
    total; gate mass is summed per language (`languages[i]` indexes `acc["gate_mass"]`),
    so the per-text float tables never travel. `acc` is built by `profile_start`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import profile_batch, profile_finish, profile_start
    >>> acc = profile_start(2)                                   # two languages
    >>> store = {"count": torch.tensor([[[1, 3]], [[2, 0]]]), "tokens": torch.tensor([2, 1]),
    ...          "gate_mass": torch.tensor([[[0.5, 1.5]], [[1.0, 0.0]]], dtype=torch.float64)}
    >>> profile_batch(store, torch.tensor([1, 0]), acc)           # text 0 is language 1, text 1 language 0
    >>> acc["item_count"][0].dtype, acc["gate_mass"].tolist()
    (torch.int16, [[[1.0, 0.0]], [[0.5, 1.5]]])

    ```
    """
    count = store["count"]
    small = count.numel() == 0 or int(count.max()) <= 32767
    acc["item_count"].append(count.to(torch.int16 if small else torch.int32).cpu())
    acc["item_tokens"].append(store["tokens"].to(torch.int32).cpu())
    mass = store["gate_mass"]
    if acc["gate_mass"] is None:
        acc["gate_mass"] = torch.zeros((acc["languages"],) + tuple(mass.shape[1:]), dtype=torch.float64,
                                       device=mass.device)
    acc["gate_mass"].index_add_(0, languages.to(mass.device), mass)


def profile_start(num_languages: int) -> dict:
    """The empty running result of a profiling session (see `profile_batch`).

    ```python
    >>> from moe_interp.runtime._kernels import profile_start
    >>> profile_start(3)
    {'languages': 3, 'item_count': [], 'item_tokens': [], 'gate_mass': None}

    ```
    """
    return {"languages": num_languages, "item_count": [], "item_tokens": [], "gate_mass": None}


def profile_finish(acc: dict) -> dict:
    """What a profiling session sends back: one int16/int32 count table per text, in order.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import profile_batch, profile_finish, profile_start
    >>> acc = profile_start(1)
    >>> for counts in ([[[1, 3]]], [[[40000, 0]]]):              # the second needs int32
    ...     profile_batch({"count": torch.tensor(counts), "tokens": torch.tensor([2]),
    ...                    "gate_mass": torch.zeros(1, 1, 2, dtype=torch.float64)}, torch.tensor([0]), acc)
    >>> out = profile_finish(acc)
    >>> out["item_count"].dtype, out["item_count"].flatten().tolist(), out["item_tokens"].tolist()
    (torch.int32, [1, 3, 40000, 0], [2, 2])

    ```
    """
    counts = acc["item_count"]
    wide = any(c.dtype == torch.int32 for c in counts)
    return {"item_count": torch.cat([c.to(torch.int32) if wide else c for c in counts]),
            "item_tokens": torch.cat(acc["item_tokens"]),
            "gate_mass": acc["gate_mass"].cpu()}
