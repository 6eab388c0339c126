"""The compiler: interventions and a model's description in, the finished plan out.

`compile_plan` is the one place a plan is made: it validates the interventions against the
model's `MoESpec` (before any forward), groups each layer's edits by site (the sites and
the edit kinds are `runtime._edits`'s; nothing here depends on a kind but the reroute's
guarantees and the steers' overflow bound), merges what the
recorders ask for (`Intervention.recording`: the ids not counted, the token kinds, the ids
that end a generated row) and, for a model in this process, places the plan's tensors on
each router's device. The tracer only runs what it returns (`runtime._kernels`).
"""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from moe_interp.arch import MoESpec, UnsupportedModelError
from moe_interp.arch._sites import router_sites
from moe_interp.arch._stacks import check_per_token, stack_fields
from moe_interp.runtime._edits import REROUTE, SCORE_SITES, SITES, EditKind, SteerKind
from moe_interp.runtime._interventions import Intervention, flatten, steer_limit
from moe_interp.runtime._plan import Edit, LayerPlan, Plan
from moe_interp.runtime._token_kinds import resolve_token_kinds, token_kind_table

__all__ = ["check_steer_range", "compile_plan", "eos_ids", "place", "router_groups"]


def _reroute_last(spec: MoESpec, layer: int, edits: list, groups: tuple | None) -> list:
    """`edits` with every reroute mask merged into one, applied after the steers of its site.

    So an ablated expert is never selected, whatever the order of the list: a relative
    steer applied after the -1e9 (`z + scale*s*|z|` with `scale*s > 1`) would bring it back.
    """
    masks = [edit.payload for edit in edits if edit.kind == REROUTE]
    if not masks:
        return edits
    mask = masks[0]
    for more in masks[1:]:
        mask = mask | more
    _check_reroute(spec, layer, mask.tolist(), groups)
    return [edit for edit in edits if edit.kind != REROUTE] + [Edit(REROUTE, mask, 1.0)]


def _check_reroute(spec: MoESpec, layer: int, mask: list[bool], groups: tuple | None) -> None:
    """Refuse a reroute that would leave top-k fewer than `top_k` experts to pick from.

    Group-limited routers (DeepSeek-V2/V3, GLM-4-MoE: `groups = (num_group, topk_group)`)
    pick among the experts of `topk_group` groups only; a group that keeps one expert can
    be among them, so the worst case is the `topk_group` groups that keep the fewest.
    """
    removed, allowed = sum(mask), spec.num_experts - spec.top_k
    fix = "Ablate fewer there, or use mode='drop' (zeroes their weights after selection, no reselection)"
    if removed > allowed:
        raise ValueError(
            f"ExpertAblate(mode='reroute') removes {removed} of the {spec.num_experts} experts of layer {layer}, "
            f"but each token picks top_k={spec.top_k}: at most {allowed} (num_experts - top_k) can be rerouted "
            f"in a layer, or top-k would have to pick ablated ones. {fix}")
    if groups is None:
        return
    num_group, topk_group = groups
    size = len(mask) // num_group
    kept = sorted(k for k in (size - sum(mask[g * size:(g + 1) * size]) for g in range(num_group)) if k > 0)
    if sum(kept[:topk_group]) < spec.top_k:
        raise ValueError(
            f"ExpertAblate(mode='reroute') on layer {layer} keeps {kept} experts in the groups that still have "
            f"some; this router picks top_k={spec.top_k} experts among {topk_group} of its {num_group} groups, "
            f"so it could have to pick ablated ones. Keep at least {spec.top_k} experts in every group that "
            f"keeps any (or ablate whole groups). {fix}")


def router_groups(spec: MoESpec, module: Any) -> dict[int, tuple[int, int]]:
    """`{layer: (num_group, topk_group)}` of group-limited routers in `module` (the HF model)."""
    out = {}
    for layer, path in zip(spec.moe_layers, spec.routers):
        try:
            router = module.get_submodule(path)
        except AttributeError:
            continue
        num_group, topk_group = getattr(router, "num_group", None), getattr(router, "topk_group", None)
        if isinstance(num_group, int) and isinstance(topk_group, int) and 1 < num_group and \
                spec.num_experts % num_group == 0 and topk_group < num_group:
            out[layer] = (num_group, topk_group)
    return out


def compile_plan(spec: MoESpec, interventions: Iterable[Intervention], model: Any = None, *, verify: bool = False,
                 generation: tuple | None = None, on_device: bool = False) -> Plan:
    """Validate `interventions` against `spec` and compile them into the finished plan
    (`_plan.Plan`) that `runtime._kernels` executes.

    Per layer, edits apply in the order of the list within each site, sites in model
    order (`_edits.SITES`): logits, then the scores top-k ranks (`site="scores"`; on a
    router that ranks its logits, an edit of its scores goes to its logits), then where
    top-k ranks, then the weights after selection (`drop`). Within the logits and the
    scores, every reroute mask applies at once after the steers (so an ablated expert is
    never selected, whichever comes first in the list), and again where top-k ranks when
    that is a site of its own. Where each site is on the model is its
    `arch._sites.router_sites`, the sites the router view reads.

    With `model` (the nnsight-wrapped model), what depends on it is resolved too:
    group-limited routers refuse reroutes they could not honour, steers that could
    overflow the router's dtype are refused, the recorders' token ids (`"special"`) and
    modalities are read from its tokenizer and config, `generation` (`(inputs, kwargs)` of
    `mi.generate`) gives the ids that end a row, and `on_device=True` (a model in this
    process) puts the plan's tensors on each router's device. `verify` reads every layer's
    routing on the first forward for `arch.ExpertsCheck`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = compile_plan(mi.describe(model), [mi.LayerRouteSteer({2: {1: 0.5}}), mi.RouterRecord()])
    >>> [entry.layer for entry in plan.layers], [(site, [e.kind for e in at]) for site, at in plan.layers[2].edits]
    ([0, 1, 2, 3], [('logits', [Relative()])])
    >>> plan.layers[2].sites.logits.ops
    ('router_logits_0',)
    >>> plan = compile_plan(mi.describe(model), [mi.RouterRecord(exclude_tokens=[7])], model,
    ...                     generation=("Hello", {"eos_token_id": 2}), on_device=True)
    >>> plan.exclude.tolist(), plan.eos, plan.generating
    ([7], (2,), True)
    >>> plan = compile_plan(mi.describe(model), [mi.RouterRecord(co_activation=True, by_position=(0, 8))])
    >>> plan.co_activation, plan.positions, plan.labels(["en"])
    (True, (0, 8), ['en/pos0-7', 'en/pos8+'])

    ```
    """
    interventions = flatten(interventions)
    recordings = [r for r in (i.recording() for i in interventions) if r is not None]
    module = getattr(model, "_module", None)
    groups = router_groups(spec, module) if module is not None else {}
    staged: dict[int, dict[str, list]] = {}
    for intervention in interventions:
        for layer, site, edit in intervention.edits(spec):
            staged.setdefault(layer, {name: [] for name in SITES})[_site(spec, intervention, site, edit)].append(edit)
    _refuse_unsteerable(spec, staged)
    for layer, at in staged.items():
        for site in ("logits", "scores"):
            at[site] = _reroute_last(spec, layer, at[site], groups.get(layer))
    sites, no_grad = router_sites(spec)
    layers = []
    for layer, router, experts in zip(spec.moe_layers, spec.routers, spec.experts):
        at = staged.get(layer, {name: [] for name in SITES})
        if not recordings and not any(at.values()) and not verify:
            continue
        mask = next((edit.payload for site in ("scores", "logits") for edit in at[site] if edit.kind == REROUTE), None)
        if mask is not None:
            _check_select(spec, layer)
            # the mask again where top-k ranks (when the router adds to the scores after the
            # site above), and, padded for "no expert" (-1) indices, for the check
            at["select"].append(Edit(REROUTE, mask, 1.0))
        layers.append(LayerPlan(
            layer=layer, router=router, experts=experts, sites=sites, no_grad=no_grad,
            edits=tuple((site, tuple(at[site])) for site in SITES if at[site]),
            rerouted=None if mask is None else torch.cat([mask, torch.zeros(1, dtype=torch.bool)]),
            **stack_fields(spec, layer)))
    per_token = any(r.per_token for r in recordings)
    check_per_token(spec, per_token)
    plan = Plan(layers=tuple(layers), record=bool(recordings), per_token=per_token,
                verify=verify, num_experts=spec.num_experts, top_k=spec.top_k)
    if isinstance(module, torch.nn.Module):  # a meta-device model (remote) has its dtypes too
        check_steer_range(plan, module)
    if recordings:
        plan = plan._replace(co_activation=any(r.co_activation for r in recordings),
                             positions=_position_buckets(recordings))
        exclude, modalities = resolve_token_kinds(recordings, model)
        plan = plan._replace(exclude=exclude, modalities=modalities)
        if any(r.by_token_kind for r in recordings):
            plan = plan._replace(kinds=token_kind_table(model))
        if any(r.entropy for r in recordings):
            _check_entropy(spec, plan)
            plan = plan._replace(entropy=True)
        if generation is not None:
            plan = plan._replace(eos=tuple(eos_ids(model, *generation)), generating=True)
    if on_device and isinstance(module, torch.nn.Module):
        plan = place(plan, module)
    return plan


def _check_entropy(spec: MoESpec, plan: Plan) -> None:
    """`RouterRecord(entropy=True)` needs each recorded layer's full distribution over its
    experts, `softmax(router logits)`: a hash-routed layer (a token-id table) has none.

    ```python
    >>> import moe_interp as mi
    >>> mi.trace(mi.zoo.tiny_model("deepseek_v4"), "Hi", mi.RouterRecord(entropy=True))
    Traceback (most recent call last):
    ValueError: RouterRecord(entropy=True) reads each token's distribution over experts, softmax of the router logits: layers [0, 1, 2] of this deepseek_v4 model route by a token-id table (hash), which ranks no logits. Record RouterRecord() without entropy here, and read the learned layers' logits with the router view: model.moe.at(layer).logits for layer in [3]

    ```
    """
    kinds = dict(zip(spec.moe_layers, spec.routing_kinds))
    hashed = [entry.layer for entry in plan.layers if kinds.get(entry.layer) != "topk"]
    missing = [entry.layer for entry in plan.layers if entry.sites.logits is None]
    if hashed or missing:
        learned = [entry.layer for entry in plan.layers if entry.layer not in hashed + missing]
        why = (f"layers {hashed} of this {spec.arch} model route by a token-id table (hash), which ranks no logits"
               if hashed else f"layers {missing} of this {spec.arch} model have no router logits site")
        raise ValueError(f"RouterRecord(entropy=True) reads each token's distribution over experts, softmax of "
                         f"the router logits: {why}. Record RouterRecord() without entropy here, and read the learned "
                         f"layers' logits with the router view: model.moe.at(layer).logits for layer in {learned}")


def _position_buckets(recordings: list) -> tuple:
    """The position buckets the recorders ask for (`RouterRecord(by_position=...)`): one
    split per trace, so recorders that ask for different ones are refused."""
    asked = {r.by_position for r in recordings if r.by_position}
    if len(asked) > 1:
        raise ValueError(f"two RouterRecords split positions differently ({' and '.join(map(str, sorted(asked)))}): "
                         "a trace splits its groups one way; pass one by_position")
    return asked.pop() if asked else ()


def eos_ids(model: Any, inputs: Any, kwargs: dict) -> list[int]:
    """The ids that end a generated row (the call's `eos_token_id`, else the model's): after
    one, a recorder stops counting the row (`runtime._kernels.drop_finished`).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import eos_ids
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> eos_ids(model, "Hi", {"eos_token_id": [2, 3]}), eos_ids(model, "Hi", {}) == [model.config.eos_token_id]
    ([2, 3], True)

    ```
    """
    if any(kwargs.get(name) for name in ("stop_strings", "stopping_criteria")) and not isinstance(inputs, str):
        raise ValueError("mi.generate with RouterRecord tells that a row has ended by its EOS token only; with "
                         "stop_strings / stopping_criteria the rows that stop first would be counted past their "
                         "end. Generate one prompt per call, or stop on eos_token_id=")
    eos = kwargs.get("eos_token_id")
    for source in (kwargs.get("generation_config"), getattr(model._module, "generation_config", None),
                   getattr(model._module, "config", None)):
        if eos is None:
            eos = getattr(source, "eos_token_id", None)
    return [int(i) for i in ([eos] if isinstance(eos, int) else list(eos or []))]


def _site(spec: MoESpec, intervention: Intervention, site: str, edit: Edit) -> str:
    """Where `edit` acts on this model: `site`, checked against the sites its kind takes;
    the scores of a router that ranks its logits are its logits."""
    kind = edit.kind
    if not isinstance(kind, EditKind):
        raise TypeError(f"{type(intervention).__name__}.edits gave {edit!r}: an Edit's kind is an EditKind "
                        "(moe_interp.runtime._edits)")
    if site not in kind.sites:
        raise ValueError(f"{type(intervention).__name__}.edits put a {kind.name!r} edit at site {site!r}; "
                         f"{type(kind).__name__} acts at {', '.join(map(repr, kind.sites))} (runtime._edits.SITES)")
    return "logits" if site == "scores" and not spec.choice else site


def _check_select(spec: MoESpec, layer: int) -> None:
    """An auto-detected router whose top-k was not seen cannot be trusted to honour a
    reroute at its logits: refuse before any forward. Registered adapters vouch for theirs."""
    if spec.select is None and spec.family == "auto":
        raise UnsupportedModelError(
            f"ExpertAblate(mode='reroute') on layer {layer}: moe_interp did not find where this {spec.arch} "
            f"router's top-k ranks its scores (running it once showed no top-k over its {spec.num_experts} "
            "experts), so it cannot make sure an ablated expert is never selected. Use mode='drop' (zeroes "
            "their weights after selection), or register an adapter naming the site: mi.register_adapter("
            "mi.RouterAdapter(name=..., model_types=(...), select='<op>.input'))")


def _refuse_unsteerable(spec: MoESpec, staged: dict) -> None:
    """Steering and rerouting act on the scores a learned top-k ranks; a layer that selects
    another way (a token-id hash table) would take the edit and route exactly as before."""
    for layer, at in sorted(staged.items()):
        kind = spec.routing_kind(layer)
        if kind != "topk" and any(at[site] for site in SCORE_SITES):
            learned = [l for l, k in zip(spec.moe_layers, spec.routing_kinds) if k == "topk"]
            raise ValueError(
                f"layer {layer} of this {spec.arch} model routes by {kind!r} (a fixed token-id -> experts table, "
                f"not a top-k over router scores): steering or rerouting cannot change which experts it uses. "
                f"Leave it out (layers={learned}, the learned top-k layers), or ablate it with "
                f"ExpertAblate(..., mode='drop'), which acts after selection")


def _router_dtype(module: Any, path: str) -> torch.dtype | None:
    """The floating dtype of the router at `path` (else of the model): its scores are computed
    in it, or wider."""
    try:
        router = module.get_submodule(path)
    except AttributeError:
        router = module
    for source in (router, module):
        for param in source.parameters():
            if param.is_floating_point():
                return param.dtype
    return None


def check_steer_range(plan: Plan, module: Any) -> None:
    """Refuse, before any forward, steers that could overflow the router scores of `module`
    (the HF model; a meta-device one too). Per layer and site, its steers applied in order
    must keep a score of magnitude `sqrt(max)` of the router's dtype finite (see
    `steer_limit`); several steers of one layer compound.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._compile import check_steer_range, compile_plan
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = compile_plan(mi.describe(model), [mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e4)])
    >>> check_steer_range(plan, model._module)                  # float32 router: fine
    >>> check_steer_range(plan, model._module.to(torch.float16))
    Traceback (most recent call last):
    ValueError: the steers of layer 1 (relative |scale * s| = 1e+04) could overflow this model's router scores, computed in torch.float16 (largest value 6.55e+04): ...

    ```
    """
    for entry in plan.layers:
        for _, edits in entry.edits:
            steers = [(edit.kind, abs(edit.scale) * float(edit.payload.abs().max())) for edit in edits
                      if isinstance(edit.kind, SteerKind)]
            dtype = _router_dtype(module, entry.router) if steers else None
            if dtype is None:
                continue
            top = torch.finfo(dtype).max
            worst = math.sqrt(top)
            for kind, amount in steers:
                worst = kind.grow(worst, amount)
            if worst > top:
                raise ValueError(
                    f"the steers of layer {entry.layer} ({', '.join(f'{k.name} |scale * s| = {a:.3g}' for k, a in steers)}) "
                    f"could overflow this model's router scores, computed in {dtype} (largest value {top:.3g}): a "
                    f"score of magnitude {math.sqrt(top):.3g} would become {worst:.3g}, past it (inf), and the "
                    f"model's outputs NaN. On this model use |scale * s| <= {steer_limit('relative', dtype):.3g} "
                    f"for a relative steer and <= {steer_limit('additive', dtype):.3g} for an additive one (several "
                    "steers of a layer compound), or run the router in float32")


def place(plan: Plan, module: Any) -> Plan:
    """`plan` with its tensors on the device of each layer's router in `module` (the HF model).

    Local runs only: a strength or mask left on the host would be copied to the GPU at every
    layer of every forward, and such a copy waits for the GPU to catch up. Routers whose
    weights are not materialised (meta device, a remote model) are left for the kernels to
    move.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan, place
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = place(compile_plan(mi.describe(model), [mi.ExpertAblate({1: [3]})]), model._module)
    >>> plan.layers[0].at("logits")[0].payload.device
    device(type='cpu')

    ```
    """
    moved: dict = {}
    layers = []
    for entry in plan.layers:
        try:
            router = module.get_submodule(entry.router)
        except AttributeError:
            layers.append(entry)
            continue
        device = next((p.device for p in router.parameters()), None)
        if device is None or device.type == "meta":
            layers.append(entry)
            continue
        edits = tuple((site, tuple(edit._replace(payload=_to(edit.payload, device, moved)) for edit in at))
                      for site, at in entry.edits)
        rerouted = None if entry.rerouted is None else _to(entry.rerouted, device, moved)
        layers.append(entry._replace(edits=edits, rerouted=rerouted))
    plan = plan._replace(layers=tuple(layers))
    embeddings = getattr(module, "get_input_embeddings", lambda: None)() if plan.kinds is not None else None
    device = getattr(getattr(embeddings, "weight", None), "device", None)
    if device is not None and device.type != "meta":  # the token-kind table is indexed by the input ids
        plan = plan._replace(kinds=(plan.kinds[0], _to(plan.kinds[1], device, moved)))
    return plan


def _to(payload: torch.Tensor, device: torch.device, moved: dict) -> torch.Tensor:
    """`payload` on `device`, copied once (a reroute mask serves two sites), queued and not
    waited for: each blocking copy would be a host sync per layer."""
    key = (id(payload), device)
    if key not in moved:  # the payload is kept with its copy: its id is not reused meanwhile
        moved[key] = (payload, payload if payload.device == device else payload.to(device, non_blocking=True))
    return moved[key][1]

