"""Declarative interventions on MoE routing, and their compilation into a kernel plan.

An intervention is a frozen value: print it, compare it, put it in a grid. Nothing runs
until `mi.trace` / `mi.generate` compiles a list of them against `mi.describe(model)`
(validating layers and experts before any forward) into the plain-data plan that
`moe_interp.runtime._kernels` executes inside the trace. A list applies in order, on every forward
of the trace (prompt and generated tokens alike); `RouterRecord` records the routing the
model actually used, i.e. after the interventions.
"""

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from moe_interp.core._checks import check_finite as _finite, check_index as _index
from moe_interp.core._fingerprint import fingerprint, stats_fingerprint
from moe_interp.runtime._plan import Edit, LayerPlan, Plan
from moe_interp.arch import MoESpec, UnsupportedModelError
from moe_interp.arch._sites import router_sites
from moe_interp.arch._stacks import check_per_token, stack_fields
from moe_interp.core._expert_set import PAPER, ExpertSet, check_k

__all__ = ["Intervention", "RouterRecord", "ExpertAblate", "LayerRouteSteer", "RouteSteer", "check_steer_range",
           "steer_limit"]


class Intervention:
    """Base class of everything `mi.trace` accepts after the inputs.

    `edits(spec)` compiles one onto a described model: `(layer, stage, edit)` per layer it
    acts on, validated against `spec` (the stage says where: `"logits"`, `"choice"`,
    `"drop"`).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._interventions import Intervention
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    >>> isinstance(mi.ExpertAblate({1: [3]}), Intervention)
    True
    >>> [(layer, stage, edit.kind) for layer, stage, edit in mi.ExpertAblate({1: [3]}).edits(spec)]
    [(1, 'logits', 'reroute')]
    >>> mi.RouterRecord().edits(spec)                   # records only: no edit
    []

    ```
    """

    def edits(self, spec: MoESpec) -> list[tuple[int, str, Edit]]:
        """`(layer, stage, edit)` triples this intervention adds; validates against `spec`."""
        return []


def _freeze_experts(experts: Any) -> tuple[tuple[int, tuple[int, ...]], ...]:
    if not isinstance(experts, Mapping):
        raise TypeError("experts must be an ExpertSet or a mapping {layer: [expert, ...]}, got "
                        f"{type(experts).__name__}")
    out = []
    for layer, values in experts.items():
        layer = _index(layer, "an ExpertAblate layer")
        if isinstance(values, (int, str)) or not isinstance(values, Iterable):
            raise TypeError(f"experts[{layer!r}] must be a list of expert indices, got {values!r}")
        out.append((layer, tuple(sorted({_index(e, f"experts[{layer}] entry") for e in values}))))
    return tuple(sorted(out))


def _freeze_strengths(strengths: Any) -> tuple[tuple[int, tuple[tuple[int, float], ...]], ...]:
    if isinstance(strengths, ExpertSet):
        if strengths.strengths is None:
            raise ValueError("this ExpertSet has no strengths; pass {layer: {expert: s}} or an "
                             "ExpertSet from shared_experts()")
        strengths = strengths.strengths
    if not isinstance(strengths, Mapping) or not all(isinstance(v, Mapping) for v in strengths.values()):
        raise TypeError("strengths must be {layer: {expert: strength}}")
    out = []
    for layer, per in strengths.items():
        layer = _index(layer, "a LayerRouteSteer layer")
        out.append((layer, tuple(sorted((_index(e, f"strengths[{layer}] expert"),
                                         _finite(s, f"strengths[{layer}][{e!r}]")) for e, s in per.items()))))
    return tuple(sorted(out))


def steer_limit(mode: str, dtype: torch.dtype = torch.bfloat16) -> float:
    """The largest `|scale * s|` a steer of `mode` may add on router scores of `dtype`.

    A steer must keep every router logit finite: an inf logit makes the router's softmax,
    and the model's outputs, NaN. Logits are unknown before the forward, so the bound
    keeps a logit of magnitude up to `sqrt(max)` of the dtype finite (float32 and
    bfloat16: 1.8e19, float16: 255.9; real logits are far smaller): relative, `|z| * (1 +
    |scale * s|) <= max`; additive, `|z| + |scale * s| <= max`. Steers are refused past it
    when built (for float32/bfloat16, the default here) and when a trace opens (for the
    model's router dtype, `check_steer_range`). Routing saturates long before (e.g. 1e4).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._interventions import steer_limit
    >>> f"{steer_limit('relative'):.3g}", f"{steer_limit('additive'):.3g}"
    ('1.84e+19', '3.39e+38')
    >>> round(steer_limit("relative", torch.float16), 1), round(steer_limit("additive", torch.float16))
    (254.9, 65248)

    ```
    """
    top = torch.finfo(dtype).max
    logit = math.sqrt(top)
    return top / logit - 1 if mode == "relative" else top - logit


def _largest(worst: float, kind: str, amount: float) -> float:
    """The largest magnitude a logit bounded by `worst` can reach after one steer."""
    return worst * (1 + amount) if kind == "relative" else worst + amount


def _check_steer_size(what: str, mode: str, scale: float, strengths: Iterable[tuple[Any, Any, float]]) -> None:
    """Refuse, when an intervention is built, `|scale * s|` past `steer_limit(mode)`."""
    limit = steer_limit(mode)
    for layer, expert, s in strengths:
        amount = abs(scale) * abs(s)
        if amount > limit:
            where = "" if layer is None else f" (layer {layer}, expert {expert}, strength {s})"
            raise ValueError(
                f"{what}: |scale * strength| = {amount:.3g}{where} is past the largest {mode} steer a router's "
                f"logits can take, {limit:.3g}: a logit of magnitude {math.sqrt(torch.finfo(torch.bfloat16).max):.3g} "
                f"would become inf in float32/bfloat16 and the model's outputs NaN. Use a scale with "
                f"|scale * strength| <= {limit:.3g} (routing saturates long before, e.g. at 1e4)")


def _mask(spec: MoESpec, experts: Iterable[int]) -> torch.Tensor:
    mask = torch.zeros(spec.num_experts, dtype=torch.bool)
    for e in experts:
        spec.check_expert(e)
        mask[e] = True
    return mask


@dataclasses.dataclass(frozen=True)
class RouterRecord(Intervention):
    """Record which experts each token used, aggregated per (layer, expert) on the model's device.

    After the trace, `tr.routing` is a `RoutingStats`: integer `count` and float
    `gate_mass` per (group, MoE layer, expert), padding excluded, one group per invoke.
    With `per_token=True` it also keeps each token's top-k indices (int16) and weights
    (float16) with their row and position (`tr.routing.per_token`).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")          # 4 MoE layers, 8 experts, top-2
    >>> with mi.trace(model, ["Hello", "Bonjour tout le monde"], mi.RouterRecord(per_token=True)) as tr:
    ...     pass
    >>> tr.routing.count.shape            # (groups, moe layers, experts)
    torch.Size([1, 4, 8])
    >>> tr.routing.tokens.tolist()        # 5 + 21 byte tokens, the left padding not counted
    [26]
    >>> int(tr.routing.count[0, 0].sum()) == tr.routing.top_k * int(tr.routing.tokens[0])
    True

    ```

    `exclude_tokens`: token ids never counted (as padding is not): an iterable of ints, or
    `"special"` for the tokenizer's special ids (NLLB's language codes among them), resolved
    when the trace opens. `by_modality=True` (a multimodal model) splits every group by the
    kind of token: groups `"<group>/text"`, `"<group>/image"`, ... (the image/video/audio
    placeholder ids of the model's config), so text and image tokens of one caption compare
    in one `RoutingStats`.

    ```python
    >>> mi.RouterRecord(exclude_tokens=[2, 1]).exclude_tokens
    (1, 2)
    >>> mi.RouterRecord(exclude_tokens="eng_Latn")
    Traceback (most recent call last):
    TypeError: RouterRecord exclude_tokens must be token ids (a list of ints) or 'special', got 'eng_Latn'

    ```
    """

    per_token: bool = False
    exclude_tokens: Any = ()
    by_modality: bool = False

    def __post_init__(self) -> None:
        if self.exclude_tokens != "special":
            if isinstance(self.exclude_tokens, (str, int)) or not isinstance(self.exclude_tokens, Iterable):
                raise TypeError(f"RouterRecord exclude_tokens must be token ids (a list of ints) or 'special', got "
                                f"{self.exclude_tokens!r}")
            ids = tuple(sorted({_index(i, "an exclude_tokens id") for i in self.exclude_tokens}))
            object.__setattr__(self, "exclude_tokens", ids)


@dataclasses.dataclass(frozen=True)
class ExpertAblate(Intervention):
    """Stop experts from being used.

    `mode="reroute"` (the paper): the expert's selection score is set to -1e9 before
    top-k, so it is never chosen and the others renormalise as the model normally does.
    On DeepSeek-V3-style routers this acts on the score after the correction bias.
    `mode="drop"`: selection is unchanged but the expert's weight is zeroed afterwards,
    without renormalisation.

    An ablated expert is never selected, whatever its place in a list of interventions:
    rerouting applies after every steer of the layer (see `compile_plan` for the order).
    A layer can lose at most `num_experts - top_k` experts to rerouting (fewer on
    group-limited routers such as DeepSeek-V3's); more is a `ValueError` naming the layer.

    ```python
    >>> import moe_interp as mi
    >>> mi.ExpertAblate({2: [5, 0]})
    ExpertAblate(experts=((2, (0, 5)),), mode='reroute')
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> profile = mi.profile(model, {"en": ["The cat sat on the mat."], "de": ["Die Katze sass auf der Matte."]},
    ...                      progress=False)
    >>> ablate = mi.ExpertAblate(profile.exclusive_experts("de"), mode="drop")
    >>> with mi.trace(model, "Die Katze", ablate, mi.RouterRecord()) as tr:
    ...     pass
    >>> tr.output.logits.shape            # (rows, tokens, vocabulary)
    torch.Size([1, 9, 259])

    ```
    """

    experts: Any
    mode: str = "reroute"

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _freeze_experts(self.experts))
        if self.mode not in ("reroute", "drop"):
            raise ValueError(f"ExpertAblate mode must be 'reroute' or 'drop', got {self.mode!r}")

    def edits(self, spec: MoESpec) -> list[tuple[int, str, Edit]]:
        out = []
        for layer, experts in self.experts:
            spec.check_layer(layer)
            if not experts:
                continue
            mask = _mask(spec, experts)
            if self.mode == "drop":
                out.append((layer, "drop", Edit("drop", mask, 1.0)))
            else:
                out.append((layer, "choice" if spec.choice else "logits", Edit("reroute", mask, 1.0)))
        return out


@dataclasses.dataclass(frozen=True)
class LayerRouteSteer(Intervention):
    """Add to chosen experts' router logits before selection, per layer.

    `mode="relative"` (the paper): `z_e + scale * s_e * |z_e|`; `mode="additive"`:
    `z_e + scale * s_e`. `strengths` is `{layer: {expert: s}}` or an `ExpertSet` with
    strengths. Scale 0 or no experts compiles to nothing (bitwise a plain forward). A steer
    that could turn a router logit into inf (NaN outputs) is refused with the largest
    `|scale * s|` allowed (`steer_limit`): when built, for float32/bfloat16 logits (relative
    1.8e19, additive 3.4e38), and when a trace opens, for the model's router dtype
    (float16: relative 255, additive 65248).

    `site="logits"` (default) edits the raw router logits. Routers that select on a
    different score (DeepSeek-V3 / GLM-4-MoE: sigmoid + correction bias; ERNIE-4.5:
    softmax + bias) saturate there: a logit can raise its sigmoid score to 1 at most, so
    a large steer need not win against the bias. `site="selection"` edits the score that
    top-k actually ranks (the same as the logits on other families); the weights the
    experts receive are then unchanged by the steer, only the choice.

    ```python
    >>> import moe_interp as mi
    >>> mi.LayerRouteSteer({1: {3: 1.0}}, scale=50.0, mode="additive")
    LayerRouteSteer(strengths=((1, ((3, 1.0),)),), scale=50.0, mode='additive', site='logits')
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, "Hello", mi.LayerRouteSteer({1: {3: 1.0}}, scale=50.0, mode="additive"),
    ...               mi.RouterRecord()) as tr:
    ...     pass
    >>> tr.routing.count[0, 1, 3].item(), tr.routing.tokens.item()   # every token now uses expert 3
    (5, 5)

    ```
    """

    strengths: Any
    scale: float = 1.0
    mode: str = "relative"
    site: str = "logits"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strengths", _freeze_strengths(self.strengths))
        if self.mode not in ("relative", "additive"):
            raise ValueError(f"LayerRouteSteer mode must be 'relative' or 'additive', got {self.mode!r}")
        if self.site not in ("logits", "selection"):
            raise ValueError(f"LayerRouteSteer site must be 'logits' or 'selection', got {self.site!r}")
        object.__setattr__(self, "scale", _finite(self.scale, "LayerRouteSteer scale"))
        _check_steer_size("LayerRouteSteer", self.mode, self.scale,
                          ((layer, e, s) for layer, per in self.strengths for e, s in per))

    def edits(self, spec: MoESpec) -> list[tuple[int, str, Edit]]:
        out = []
        for layer, per in self.strengths:
            spec.check_layer(layer)
            if self.scale == 0 or not per:
                continue
            vector = torch.zeros(spec.num_experts, dtype=torch.float32)
            for e, s in per:
                spec.check_expert(e)
                vector[e] = s
            stage = "choice" if self.site == "selection" and spec.choice else "logits"
            out.append((layer, stage, Edit(self.mode, vector, float(self.scale))))
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class RouteSteer(Intervention):
    """The paper's routing-guided steering, chosen from routing statistics.

    Picks the experts shared by `languages` (default: `target` first, then every other
    language of `stats`) in the selected `layers` with the paper's algorithm
    (`stats.shared_experts(languages, k, threshold, layers)`; each strength is the first
    language's share) and applies `LayerRouteSteer(mode="relative")` with `scale`.
    `layers` takes `"early"` / `"middle"` / `"late"` (bands of `mi.describe(model)`;
    the paper's middle is layers 10-39 of 48), a range, a slice or explicit indices.

    Defaults work on every model: `k=None` keeps the paper's 20 of 128 experts per
    language and layer as the same fraction of this model's experts, at least its top-k
    (`mi.PAPER.scaled_k`: 20 on 128 experts, 10 on 64, 3 on 16, 2 on 8); `threshold=0.7`
    and `scale=0.022` (English first) are the paper's, shares and a relative strength
    being the same on every model. The paper's exact `k` is `k=mi.PAPER.steer_k` (20).
    With two languages a selected expert has both shares in (0.3, 0.7); with more
    languages every share must stay below 0.7.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> profile = mi.profile(model, {"en": ["The cat sat on the mat.", "Hello world"],
    ...                              "de": ["Die Katze sass auf der Matte.", "Hallo Welt"],
    ...                              "zh": ["猫坐在垫子上。", "你好世界"]}, progress=False)
    >>> steer = mi.RouteSteer(layers="middle", target="en", stats=profile, languages=("en", "zh"))
    >>> steer.expert_set(mi.describe(model))           # middle of 4 layers: layer 1
    ExpertSet({1: [3, 5]}, pairs=2, with strengths)
    >>> with mi.trace(model, "Wie viele Äpfel?", steer, mi.RouterRecord()) as tr:
    ...     pass
    >>> tr.routing.count.shape
    torch.Size([1, 4, 8])

    ```
    """

    layers: Any
    target: str
    stats: Any
    languages: tuple[str, ...] | None = None
    k: int | None = None
    threshold: float = PAPER.steer_threshold
    scale: float = PAPER.steer_scale
    # expert sets already chosen, per model description: a trace (or a grid of them) opens
    # with the same steer many times, and the choice depends on `spec` and the fields only
    _chosen: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.languages is not None:
            object.__setattr__(self, "languages", tuple(self.languages))
        if not hasattr(self.stats, "shared_experts"):
            raise TypeError(f"stats must be a RoutingStats (e.g. from mi.profile), got {type(self.stats).__name__}")
        object.__setattr__(self, "scale", _finite(self.scale, "RouteSteer scale"))
        # its strengths are shares of tokens, at most 1
        _check_steer_size("RouteSteer (strengths: shares, at most 1)", "relative", self.scale, [(None, None, 1.0)])
        threshold = _finite(self.threshold, "RouteSteer threshold")
        if not 0 <= threshold <= 1:
            raise ValueError(f"RouteSteer threshold is a share of tokens, in [0, 1]; got {threshold}")
        object.__setattr__(self, "threshold", threshold)
        if self.k is not None and _index(self.k, "RouteSteer k") == 0:
            raise ValueError("RouteSteer k (experts per language and layer) must be >= 1, got 0; leave k unset "
                             "(None) for the default: the paper's 20 of 128 experts scaled to the model")

    def expert_set(self, spec: MoESpec) -> ExpertSet:
        """The shared experts this steer uses on a model described by `spec` (chosen once per `spec`).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> profile = mi.profile(model, {"en": ["Hello world"], "de": ["Hallo Welt"]}, progress=False)
        >>> steer = mi.RouteSteer(layers="middle", target="en", stats=profile)
        >>> steer.expert_set(mi.describe(model)) is steer.expert_set(mi.describe(model))
        True

        ```
        """
        if spec not in self._chosen:
            self._chosen[spec] = self._choose(spec)
        return self._chosen[spec]

    def _choose(self, spec: MoESpec) -> ExpertSet:
        layers = spec.select_layers(self.layers)
        languages = self.languages or (self.target, *[l for l in self.stats.languages if l != self.target])
        if languages[0] != self.target:
            raise ValueError(f"languages must start with the target {self.target!r}, got {languages}")
        if self.stats.num_experts != spec.num_experts:
            raise ValueError(f"stats have {self.stats.num_experts} experts but the model has {spec.num_experts}: "
                             "profile this model first (mi.profile)")
        k = check_k(self.k, spec.num_experts, self.stats.top_k, PAPER.steer_k, name="RouteSteer k")
        return self.stats.shared_experts(languages, k=k, threshold=self.threshold, layers=layers)

    def edits(self, spec: MoESpec) -> list[tuple[int, str, Edit]]:
        return LayerRouteSteer(self.expert_set(spec), scale=self.scale).edits(spec)

    # Equal by content, penzai-style: `stats` by its tensors (a copy of a profile is equal,
    # another profile over the same languages is not), so caches keyed by it stay honest.
    def __eq__(self, other: Any) -> Any:  # a bool, or NotImplemented for other types
        return fingerprint(self) == fingerprint(other) if type(other) is type(self) else NotImplemented

    def __hash__(self) -> int:
        return hash(fingerprint(self))

    def __repr__(self) -> str:
        return (f"RouteSteer(layers={self.layers!r}, target={self.target!r}, stats=<{len(self.stats.languages)} "
                f"languages #{stats_fingerprint(self.stats)[:8]}>, languages={self.languages!r}, k={self.k}, "
                f"threshold={self.threshold}, scale={self.scale})")


def flatten(items: Iterable[Any]) -> list[Intervention]:
    """Interventions given one by one or as lists/tuples, in order; anything else is a TypeError."""
    out: list[Intervention] = []
    for item in items:
        if isinstance(item, Intervention):
            out.append(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(i, Intervention) for i in item):
            out.extend(item)
        else:
            raise TypeError(f"expected interventions (mi.RouterRecord(), mi.ExpertAblate(...), ...) after the "
                            f"inputs, got {type(item).__name__}: {item!r:.80}")
    return out


def _reroute_last(spec: MoESpec, layer: int, edits: list, groups: tuple | None) -> list:
    """`edits` with every reroute mask merged into one, applied after the steers of its stage.

    So an ablated expert is never selected, whatever the order of the list: a relative
    steer applied after the -1e9 (`z + scale*s*|z|` with `scale*s > 1`) would bring it back.
    """
    masks = [edit.payload for edit in edits if edit.kind == "reroute"]
    if not masks:
        return edits
    mask = masks[0]
    for more in masks[1:]:
        mask = mask | more
    _check_reroute(spec, layer, mask.tolist(), groups)
    return [edit for edit in edits if edit.kind != "reroute"] + [Edit("reroute", mask, 1.0)]


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


def compile_plan(spec: MoESpec, interventions: Iterable[Intervention], groups: dict | None = None,
                 verify: bool = False, eos: Iterable[int] = ()) -> Plan:
    """Validate `interventions` against `spec` and compile them to a `kernels` plan (`_plan.Plan`).

    Per layer, edits apply in the order of the list within each site, sites in model
    order: logits steers, then selection-score steers (`site="selection"`), then every
    reroute mask at once (so an ablated expert is never selected, whichever comes first
    in the list), then `drop` on the chosen weights. `groups` (`router_groups`) lets
    group-limited routers refuse reroutes they could not honour. `verify` reads every
    layer's routing on the first forward for `arch.ExpertsCheck`; `eos` (generation) are
    the ids after which `RouterRecord` stops counting a row. Where each edit acts is the
    model's `arch._sites.router_sites`, the sites the router view reads.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._interventions import compile_plan
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    >>> plan = compile_plan(spec, [mi.LayerRouteSteer({2: {1: 0.5}}), mi.RouterRecord()])
    >>> [entry.layer for entry in plan.layers], plan.layers[2].logits_edits[0].kind
    ([0, 1, 2, 3], 'relative')
    >>> plan.layers[2].sites.logits.ops
    ('router_logits_0',)

    ```
    """
    interventions = flatten(interventions)
    records = [i for i in interventions if isinstance(i, RouterRecord)]
    staged: dict[int, dict[str, list]] = {}
    for intervention in interventions:
        for layer, stage, edit in intervention.edits(spec):
            staged.setdefault(layer, {"logits": [], "choice": [], "drop": []})[stage].append(edit)
    _refuse_unsteerable(spec, staged)
    for layer, stages in staged.items():
        for stage in ("logits", "choice"):
            stages[stage] = _reroute_last(spec, layer, stages[stage], (groups or {}).get(layer))
    sites, no_grad = router_sites(spec)
    layers = []
    for layer, router, experts in zip(spec.moe_layers, spec.routers, spec.experts):
        stages = staged.get(layer, {"logits": [], "choice": [], "drop": []})
        if not records and not any(stages.values()) and not verify:
            continue
        mask = next((edit.payload for stage in ("choice", "logits") for edit in stages[stage]
                     if edit.kind == "reroute"), None)
        if mask is not None:
            _check_select(spec, layer)
        layers.append(LayerPlan(
            layer=layer, router=router, experts=experts, sites=sites, no_grad=no_grad,
            logits_edits=tuple(stages["logits"]), choice_edits=tuple(stages["choice"]),
            # the reroute mask again where top-k ranks (when the router adds to the scores
            # after the site above), and, padded for "no expert" (-1) indices, for the check
            select_edits=(Edit("reroute", mask, 1.0),) if mask is not None else (),
            drop=tuple(stages["drop"]),
            rerouted=None if mask is None else torch.cat([mask, torch.zeros(1, dtype=torch.bool)]),
            **stack_fields(spec, layer)))
    check_per_token(spec, any(r.per_token for r in records))
    return Plan(layers=tuple(layers), record=bool(records), per_token=any(r.per_token for r in records),
                verify=verify, num_experts=spec.num_experts, top_k=spec.top_k, eos=tuple(eos))


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


class RerouteNotHeld(UnsupportedModelError):
    """A rerouted expert was still selected: the router's selection was not where `moe_interp`
    masked it. Raised after the trace (see `check_held`); the trace's results are withheld."""


def check_held(plan: Plan, store: dict) -> None:
    """Raise `RerouteNotHeld` if, in a trace run with `plan`, any token still received an
    expert that `ExpertAblate(mode="reroute")` removed (the kernels count it, no host waits;
    this reads the count once, after the trace). Nothing to do without a reroute.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._interventions import check_held, compile_plan
    >>> plan = compile_plan(mi.describe(mi.zoo.tiny_model("qwen3_moe")), [mi.ExpertAblate({1: [3]})])
    >>> check_held(plan, {"rerouted_used": torch.tensor([0])})   # the kernels' count per rerouted layer
    >>> check_held(plan, {"rerouted_used": torch.tensor([2])})
    Traceback (most recent call last):
    moe_interp.runtime._interventions.RerouteNotHeld: ExpertAblate(mode='reroute') did not hold: ablated experts were still selected 2 times in layer 1 (token x top-k slot), ...

    ```
    """
    used = store.get("rerouted_used")
    if used is None:
        return
    layers = [entry.layer for entry in plan.layers if entry.rerouted is not None]
    leaked = {layer: int(n) for layer, n in zip(layers, used.tolist()) if n}
    if leaked:
        raise RerouteNotHeld(
            f"ExpertAblate(mode='reroute') did not hold: ablated experts were still selected "
            f"{', '.join(f'{n} times in layer {layer}' for layer, n in leaked.items())} (token x top-k slot), so "
            "the outputs and routing of this trace are not those of the ablated model and are withheld. The "
            "router selects on a score moe_interp did not mask. Use mode='drop', or register an adapter naming "
            "where its top-k ranks: mi.register_adapter(mi.RouterAdapter(..., select='<op>.input'))")


def _refuse_unsteerable(spec: MoESpec, staged: dict) -> None:
    """Steering and rerouting act on the scores a learned top-k ranks; a layer that selects
    another way (a token-id hash table) would take the edit and route exactly as before."""
    for layer, stages in sorted(staged.items()):
        kind = spec.routing_kind(layer)
        if kind != "topk" and (stages["logits"] or stages["choice"]):
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
    >>> from moe_interp.runtime._interventions import check_steer_range, compile_plan
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = compile_plan(mi.describe(model), [mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e4)])
    >>> check_steer_range(plan, model._module)                  # float32 router: fine
    >>> check_steer_range(plan, model._module.to(torch.float16))
    Traceback (most recent call last):
    ValueError: the steers of layer 1 (relative |scale * s| = 1e+04) could overflow this model's router scores, computed in torch.float16 (largest value 6.55e+04): ...

    ```
    """
    for entry in plan.layers:
        for edits in (entry.logits_edits, entry.choice_edits):
            steers = [(edit.kind, abs(edit.scale) * float(edit.payload.abs().max())) for edit in edits
                      if edit.kind in ("relative", "additive")]
            dtype = _router_dtype(module, entry.router) if steers else None
            if dtype is None:
                continue
            top = torch.finfo(dtype).max
            worst = math.sqrt(top)
            for kind, amount in steers:
                worst = _largest(worst, kind, amount)
            if worst > top:
                raise ValueError(
                    f"the steers of layer {entry.layer} ({', '.join(f'{k} |scale * s| = {a:.3g}' for k, a in steers)}) "
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
    >>> from moe_interp.runtime._interventions import compile_plan, place
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = place(compile_plan(mi.describe(model), [mi.ExpertAblate({1: [3]})]), model._module)
    >>> plan.layers[0].logits_edits[0].payload.device
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
        on = {key: tuple(edit._replace(payload=_to(edit.payload, device, moved)) for edit in getattr(entry, key))
              for key in ("logits_edits", "choice_edits", "select_edits", "drop")}
        rerouted = None if entry.rerouted is None else _to(entry.rerouted, device, moved)
        layers.append(entry._replace(rerouted=rerouted, **on))
    return plan._replace(layers=tuple(layers))


def _to(payload: torch.Tensor, device: torch.device, moved: dict) -> torch.Tensor:
    """`payload` on `device`, copied once (a reroute mask serves two sites), queued and not
    waited for: each blocking copy would be a host sync per layer."""
    key = (id(payload), device)
    if key not in moved:  # the payload is kept with its copy: its id is not reused meanwhile
        moved[key] = (payload, payload if payload.device == device else payload.to(device, non_blocking=True))
    return moved[key][1]
