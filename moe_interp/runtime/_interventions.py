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
from moe_interp.runtime._edits import DROP, REROUTE, steers
from moe_interp.runtime._plan import Edit, Recording
from moe_interp.arch import MoESpec
from moe_interp.core._expert_set import PAPER, ExpertSet, check_k

__all__ = ["ExpertAblate", "Intervention", "LayerRouteSteer", "RouteSteer", "RouterRecord", "flatten", "steer_limit"]


class Intervention:
    """Base class of everything `mi.trace` accepts after the inputs.

    Two methods make one, both read by the compiler (`runtime._compile.compile_plan`):
    `edits(spec)`, the `(layer, site, edit)` it adds per layer it acts on, validated
    against `spec` (the site says where, one of `runtime._edits.SITES`: `"logits"`,
    `"scores"` (what top-k ranks), `"weights"` (after selection); the edit's kind says what,
    and carries its transformation), and `recording()`, what it asks the trace to record (a
    `_plan.Recording`; None: nothing).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._interventions import Intervention
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    >>> isinstance(mi.ExpertAblate({1: [3]}), Intervention)
    True
    >>> [(layer, site, edit.kind) for layer, site, edit in mi.ExpertAblate({1: [3]}).edits(spec)]
    [(1, 'scores', Reroute())]
    >>> mi.RouterRecord().edits(spec)                   # records only: no edit
    []

    ```
    """

    def edits(self, spec: MoESpec) -> list[tuple[int, str, Edit]]:
        """`(layer, site, edit)` triples this intervention adds; validates against `spec`."""
        return []

    def recording(self) -> Recording | None:
        """What this intervention asks the trace to record; None: nothing (only edits)."""
        return None


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
    if mode not in steers():
        raise ValueError(f"steer_limit mode must be {' or '.join(map(repr, steers()))}, got {mode!r}")
    return steers()[mode].limit(dtype)


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

    `co_activation=True` also counts, per group and MoE layer, how often experts `i` and `j`
    were chosen for the same token (`tr.routing.co_activation`, `[group, layer, E, E]`
    integers; the diagonal is `count`), accumulated in the trace like the counts: no
    per-token storage, and only that table travels back from a remote run.
    `by_token_kind=True` splits every group by the kind of token (`"<group>/first"`, the
    first token of a text, then `"special"`, `"punct"`, `"digit"`, `"space"` (whitespace-led),
    `"other"`: each vocabulary id classified once from its decoded piece,
    `mi.trace`'s `runtime._token_kinds.token_kind_table`), and `by_position` by position in
    the text: `True` for buckets 0, 1-3, 4-15, 16-63, 64+ (`"<group>/pos1-3"`, ...), or the
    first position of each bucket (`(0, 8, 32)`). The splits combine:
    `"<group>/<kind>/<bucket>"`. `entropy=True` sums, per group and MoE layer, each counted
    token's routing entropy in nats, `H = -sum_e p_e log p_e` with `p = softmax(router logits)`
    over all E experts (the view's `router.logits`, after a score edit there: a rerouted expert's
    probability is 0), in the trace like the counts
    (`tr.routing.entropy_sum`, `[group, layer]`; `tr.routing.token_entropy()` the mean per token).
    Hash-routed layers have no distribution over experts and are refused. A router that scores
    by sigmoid (DeepSeek-V3, GLM-4-MoE, Llama 4: a correction bias, group-limited top-k) never
    makes this softmax: its entropy is that of the softmax of its raw logits, a measure of how
    peaked they are, not of a distribution the model uses.

    ```python
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, "Hi 42!", mi.RouterRecord(co_activation=True, by_token_kind=True)) as tr:
    ...     pass
    >>> tr.routing.groups
    ('default/first', 'default/special', 'default/punct', 'default/digit', 'default/space', 'default/other')
    >>> tr.routing.tokens.tolist()        # first H, no special, punct !, digits 4 2, space, other i
    [1, 0, 1, 2, 1, 1]
    >>> co = tr.routing.co_activation      # [group, layer, E, E]; its diagonal is count
    >>> co.shape, bool((co.diagonal(dim1=-2, dim2=-1) == tr.routing.count).all())
    (torch.Size([6, 4, 8, 8]), True)
    >>> mi.RouterRecord(by_position=(0, 4)).by_position, mi.RouterRecord(by_position=True).by_position
    ((0, 4), (0, 1, 4, 16, 64))
    >>> mi.RouterRecord(by_position=(1, 4))
    Traceback (most recent call last):
    ValueError: RouterRecord by_position takes the first position of each bucket, increasing from 0 (e.g. (0, 1, 4, 16, 64)), or True for those; got (1, 4)

    ```
    """

    per_token: bool = False
    exclude_tokens: Any = ()
    by_modality: bool = False
    co_activation: bool = False
    by_token_kind: bool = False
    by_position: Any = ()
    entropy: bool = False

    def __post_init__(self) -> None:
        if self.exclude_tokens != "special":
            if isinstance(self.exclude_tokens, (str, int)) or not isinstance(self.exclude_tokens, Iterable):
                raise TypeError(f"RouterRecord exclude_tokens must be token ids (a list of ints) or 'special', got "
                                f"{self.exclude_tokens!r}")
            ids = tuple(sorted({_index(i, "an exclude_tokens id") for i in self.exclude_tokens}))
            object.__setattr__(self, "exclude_tokens", ids)
        for name in ("per_token", "by_modality", "co_activation", "by_token_kind", "entropy"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RouterRecord {name} must be True or False, got {getattr(self, name)!r}")
        object.__setattr__(self, "by_position", _position_buckets(self.by_position))

    def recording(self) -> Recording:
        """The routing this records (the trace's recorder protocol)."""
        return Recording(self.per_token, self.exclude_tokens, self.by_modality, self.co_activation,
                         self.by_token_kind, self.by_position, self.entropy)


POSITION_BUCKETS = (0, 1, 4, 16, 64)  # RouterRecord(by_position=True): first token, 1-3, 4-15, 16-63, 64+


def _position_buckets(value: Any) -> tuple:
    """`RouterRecord(by_position=...)` as the first position of each bucket (`()`: no split)."""
    if value is True:
        return POSITION_BUCKETS
    if value is False or value is None:
        return ()
    bad = isinstance(value, (str, bytes)) or not isinstance(value, Iterable)
    starts = () if bad else tuple(value)
    if not bad and starts == ():
        return ()
    if (bad or not all(isinstance(p, int) and not isinstance(p, bool) for p in starts) or starts[0] != 0
            or any(b <= a for a, b in zip(starts, starts[1:]))):
        raise ValueError("RouterRecord by_position takes the first position of each bucket, increasing from 0 "
                         f"(e.g. {POSITION_BUCKETS}), or True for those; got {value!r}")
    return starts


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
                out.append((layer, "weights", Edit(DROP, mask, 1.0)))
            else:
                out.append((layer, "scores", Edit(REROUTE, mask, 1.0)))
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
    a large steer need not win against the bias. `site="scores"` edits the scores that
    top-k actually ranks (the router view's `scores`; the same as the logits on other
    families); the weights the experts receive are then unchanged by the steer, only the
    choice.

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
        if self.mode not in steers():
            raise ValueError(f"LayerRouteSteer mode must be {' or '.join(map(repr, steers()))}, got {self.mode!r}")
        if self.site not in ("logits", "scores"):
            fix = ": the scores top-k ranks are site='scores' (the router view's word)" if self.site == "selection" else ""
            raise ValueError(f"LayerRouteSteer site must be 'logits' or 'scores', got {self.site!r}{fix}")
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
            out.append((layer, self.site, Edit(steers()[self.mode], vector, float(self.scale))))
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


