"""`describe(model) -> MoESpec`: where a model's routers are and how they decide.

Detection, in order: a registered adapter for `config.model_type`; the router class that
transformers declares in `_can_record_outputs["router_logits"]`; a registered adapter's
`router_class`. The router's own source (through nnsight's `.source`) names the op that
makes the logits, so new transformers models following the common pattern work unlisted.
"""

import dataclasses
import difflib
import inspect
import re
import weakref
from typing import Any

import torch

from moe_interp.core._checks import check_int
from moe_interp.core._layers import BANDS, bands, parse_layers
from moe_interp.arch._adapter import RouterAdapter, UnsupportedModelError, adapter_for, registered_adapters
from moe_interp.arch._probe import probe_router
from moe_interp.arch._sites import readout_kind, readout_kinds
from moe_interp.arch._stacks import broken_nllb_moe_experts, place_stacks

__all__ = ["MoESpec", "describe", "hf_module"]

_LOGITS_CANDIDATES = ("router_logits_0", "F_linear_0", "forward_0", "self_layer_0")
_TOP_K_ATTRS = ("num_experts_per_tok", "moe_top_k", "top_k", "num_experts_per_token", "moe_k", "top_k_experts")
_NUM_EXPERTS_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_SHARED_NAMES = ("shared_expert", "shared_experts", "shared_mlp")
_LAYER_INDEX = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")



@dataclasses.dataclass(frozen=True)
class MoESpec:
    """Everything `moe_interp` knows about one model's routing, from [`describe`][moe_interp.describe].

    **Fields:** `arch` (`config.model_type`), `family` (adapter name or `"auto"`),
    `num_layers` (decoder layers), `moe_layers` (real indices of the layers with a
    router), `num_experts`, `top_k`, `routers` / `experts` / `shared_experts` (module
    paths, aligned with `moe_layers`; `None` where absent), `routing_kinds` (how each
    MoE layer selects, aligned with `moe_layers`: `"topk"`, a learned top-k over router
    scores, which steering and rerouting act on; `"hash"`, a fixed token-id -> experts
    table, which they cannot change; see `routing_kind`), `logits` (where the raw logits
    are made: a `.source` op name or `"output"`), `choice` (op top-k selects on, when it is
    not the logits), `select` (where the top-k that picks the experts ranks, e.g.
    `"torch_topk_0.input"`: rerouting masks it; `None` when it is not in the router),
    `no_grad_sites` (`(logits, select)` when the router runs other ops with grad off:
    a CUDA-only branch), `readout` (where the used routing is read), `selection` (prose),
    `unranked` (why no site holds what top-k ranks, when none does: `RouterAdapter.unranked`).
    `stacks` (a stack label per MoE layer, e.g. `"encoder"` / `"decoder"` /
    `"language_model"`; `None` for a causal LM's single stack), `layer_names` (`"decoder.3"`:
    the stack's own numbering; `moe_layers` are global, in execution order, when a model has
    several stacks) and `stack_inputs` (per layer, the module whose inputs hold its stack's
    tokens; `None` unless the model has several stacks): see `arch._stacks`.
    `logits`, `choice` and `select` are ops seen running: `describe` runs the learned
    router once on random hidden states of its device and dtype (describe the model on
    the device it will run on).

    **Example:**

    ```python
    >>> import moe_interp as mi
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    >>> spec.moe_layers, spec.num_experts, spec.top_k
    ((0, 1, 2, 3), 8, 2)
    >>> spec.routers[0], spec.logits, spec.select
    ('model.layers.0.mlp.gate', 'router_logits_0', 'torch_topk_0.input')
    >>> spec.band("middle")
    (1, 2)
    >>> mi.describe(mi.zoo.tiny_model("deepseek_v4")).routing_kinds   # hash layers first
    ('hash', 'hash', 'hash', 'topk')

    ```
    """

    arch: str
    family: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    routers: tuple[str, ...]
    routing_kinds: tuple[str, ...]
    experts: tuple[str | None, ...]
    shared_experts: tuple[str | None, ...]
    logits: str
    choice: str | None
    readout: str
    weights_index: int
    indices_index: int
    scores_index: int
    topk_op: str | None
    weights_op: str | None
    selection: str
    select: str | None = None
    no_grad_sites: tuple[str, str | None] | None = None
    stacks: tuple[str | None, ...] | None = None
    layer_names: tuple[str, ...] | None = None
    stack_inputs: tuple[str | None, ...] | None = None
    unranked: str | None = None

    def band(self, name: str, width: int | None = None) -> tuple[int, ...]:
        """Real layer indices of the `"early"`, `"middle"` or `"late"` band of MoE layers.

        Without `width` the bands partition the MoE layers in the paper's proportions
        (its 48 layers: early 0-9, middle 10-39, late 40-47). With `width`, each band is
        `width` layers: the first, the central and the last (the paper's ablation bands,
        width 5 on 48 layers: 0-4, 22-26, 43-47).

        ```python
        >>> import moe_interp as mi
        >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))   # MoE layers 0-3
        >>> spec.band("early"), spec.band("late")
        ((0,), (3,))
        >>> spec.band("middle", width=1)
        (2,)

        ```
        """
        if name not in BANDS:
            raise ValueError(f"unknown band {name!r}; use one of {BANDS}")
        if width is not None:
            width = check_int(f"band width (MoE layers of this {self.arch} model)", width, 1, len(self.moe_layers))
        return bands(self.moe_layers, width=width)[name]

    def select_layers(self, layers: Any = "all") -> tuple[int, ...]:
        """Normalise a layer selection to sorted real MoE layer indices.

        Accepts `"all"`, a band name, an int, a `range` or iterable of ints (real layer
        indices, each must be a MoE layer), or a `slice` over real indices (dense layers
        inside it are skipped).

        ```python
        >>> import moe_interp as mi
        >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))   # MoE layers 0-3
        >>> spec.select_layers(range(1, 3)), spec.select_layers(slice(None, 2))
        ((1, 2), (0, 1))
        >>> spec.select_layers("middle"), spec.select_layers(3), spec.select_layers("all")
        ((1, 2), (3,), (0, 1, 2, 3))

        ```
        """
        return parse_layers(layers, self.moe_layers, num_layers=self.num_layers, stacks=self.stacks)

    def check_layer(self, layer: int) -> None:
        """Raise `ValueError` unless `layer` is one of this model's MoE layers."""
        if layer not in self.moe_layers:
            dense = 0 <= layer < self.num_layers
            raise ValueError(
                f"layer {layer} is {'a dense (non-MoE) layer' if dense else 'out of range'}; "
                f"this {self.arch} model has MoE layers {_ranges(self.moe_layers)} "
                f"(of {self.num_layers} layers)")

    def check_expert(self, expert: int) -> None:
        """Raise `ValueError` unless `0 <= expert < num_experts`."""
        if isinstance(expert, bool) or not isinstance(expert, int):
            raise TypeError(f"expert indices must be ints, got {expert!r}")
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range; this model has experts "
                             f"0-{self.num_experts - 1}")

    def routing_kind(self, layer: int) -> str:
        """How MoE layer `layer` selects its experts: `"topk"` or `"hash"` (see the fields).

        ```python
        >>> import moe_interp as mi
        >>> spec = mi.describe(mi.zoo.tiny_model("deepseek_v4"))
        >>> spec.routing_kind(0), spec.routing_kind(3)      # token-id table, then learned
        ('hash', 'topk')

        ```
        """
        return self.routing_kinds[self.position(layer)]

    def position(self, layer: int) -> int:
        """Index of a real MoE layer in `moe_layers` (the `layer` axis of stats)."""
        self.check_layer(layer)
        return self.moe_layers.index(layer)


def _ranges(values: tuple[int, ...]) -> str:
    if not values:
        return "none"
    if list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, MoESpec]" = weakref.WeakKeyDictionary()


def hf_module(model: Any) -> torch.nn.Module:
    """The underlying `torch.nn.Module` of an nnsight model (or the module itself).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch import hf_module
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> type(hf_module(model)).__name__, hf_module(model._module) is model._module
    ('Qwen3MoeForCausalLM', True)

    ```
    """
    module = getattr(model, "_module", model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a Hugging Face model or an nnsight model wrapping one, got "
                        f"{type(model).__name__}; load one with mi.load(...) or mi.wrap(hf_model, tokenizer)")
    return module


def describe(model: Any) -> MoESpec:
    """Find the routers of an MoE model and say how they decide.

    Works on a model from `mi.wrap`/`mi.load`, or on a plain Hugging Face model.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> spec = mi.describe(model)
    >>> spec.arch, spec.family, spec.readout
    ('qwen3_moe', 'auto', 'experts')
    >>> mi.describe(model._module) is spec               # the plain HF model: the same, cached
    True

    ```

    Raises `UnsupportedModelError` when no router is found, naming what was searched and
    how to register an adapter.
    """
    module = hf_module(model)
    if module in _CACHE:
        return _CACHE[module]
    spec = _detect(model, module)
    _CACHE[module] = spec
    return spec


def _config(module: torch.nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _declared_router_class(module: torch.nn.Module) -> type | None:
    for sub in module.modules():
        recorders = getattr(type(sub), "_can_record_outputs", None) or {}
        recorder = recorders.get("router_logits") if isinstance(recorders, dict) else None
        target = getattr(recorder, "target_class", None)
        if isinstance(target, type):
            return target
    return None


def _detect(model: Any, module: torch.nn.Module) -> MoESpec:
    config = _config(module)
    model_type = getattr(config, "model_type", None) or type(module).__name__
    class_names = sorted({type(m).__name__ for m in module.modules()})
    adapter = adapter_for(model_type, class_names)
    declared = _declared_router_class(module)

    if adapter is not None and adapter.router_class:
        routers = [(n, m) for n, m in module.named_modules() if type(m).__name__ == adapter.router_class]
    elif declared is not None:
        routers = [(n, m) for n, m in module.named_modules() if isinstance(m, declared)]
    else:
        routers = []
    if not routers:
        _unsupported(module, model_type, declared, class_names)
    routers = _same_place_routers(module, routers)
    _refuse_modality_split(routers, model_type)
    _refuse_block_diffusion(module, model_type)
    _refuse_without_forward(module, model_type, [p for p, _ in routers])

    broken = broken_nllb_moe_experts(module)
    if broken:
        raise UnsupportedModelError(
            f"{broken[0]} (and {len(broken) - 1} more) dispatch tokens by the value of their 0/1 routing mask, "
            "not by the router's choice (NllbMoeExperts of this transformers version sends every token to experts "
            "0 and 1): what the router chose is not what the experts compute. Repair it before wrapping: "
            "mi.arch.repair_nllb_moe(hf_model), then mi.wrap(hf_model, tokenizer)")
    placed = place_stacks(module, [p for p, _ in routers])
    if placed is None:
        path = next(p for p, _ in routers if _LAYER_INDEX.match(p) is None)
        raise UnsupportedModelError(f"found router {path!r} but cannot tell its decoder layer: "
                                    "expected a path like 'model.layers.<i>.mlp.gate'")
    layers, experts, shared, kept, at = [], [], [], [], []
    for position in sorted(range(len(routers)), key=lambda i: (placed.layers[i], routers[i][0])):
        (path, router), layer = routers[position], placed.layers[position]
        match = _LAYER_INDEX.match(path)
        if layer in layers:  # a second router in the layer (attention experts): MLP router only
            continue
        kept.append((path, router))
        at.append(position)
        layers.append(layer)
        parent = path.rsplit(".", 1)[0]
        experts.append(f"{parent}.experts" if _has(module, f"{parent}.experts") else None)
        layer_path = f"{match['stack']}.{match['index']}"
        shared.append(next((p for p in _descendants(module, layer_path) if p.rsplit(".", 1)[-1] in _SHARED_NAMES), None))

    routers = kept
    kinds = tuple(_routing_kind(r) for _, r in routers)
    # The sites steering acts on are read from a learned router (hash layers are not steered).
    first_path, first = routers[kinds.index("topk") if "topk" in kinds else 0]
    adapter = adapter or RouterAdapter(name="auto")
    op_names = _source_names(model, module, first_path)
    rows = _num_experts(first, config)
    first_experts = experts[[p for p, _ in routers].index(first_path)]
    sized = getattr(module.get_submodule(first_experts), "num_experts", None) if first_experts else None
    probes = probe_router(first, module.get_submodule(first_path.rsplit(".", 1)[0]), op_names,
                          {rows} | ({sized} if isinstance(sized, int) else set()))
    seen = probes[0] if probes else None
    if seen and seen.logits_width and seen.width == seen.logits_width != rows:  # the classifier is not the first
        rows = seen.logits_width  # weight matrix (ZAYA's router: a down-projection, an MLP, then the classifier)
    logits = adapter.logits or (seen and seen.logits) or next((n for n in _LOGITS_CANDIDATES if n in op_names), None)
    if logits is None:
        raise UnsupportedModelError(
            f"cannot find where router {first_path} ({type(first).__name__}) makes its logits; its "
            f"source ops are {list(op_names)[:12]}...; register an adapter naming one: "
            "mi.register_adapter(mi.RouterAdapter(name=..., model_types=(...), logits='<op name>'))")
    choice = adapter.choice
    if choice is None and "scores_for_choice_0" in op_names and (seen is None or "scores_for_choice_0" in seen.ran):
        choice = "scores_for_choice_0"
    select = adapter.select or _select(seen, logits, choice)
    no_grad = None
    if len(probes) == 2 and adapter.logits is None and (probes[1].logits, probes[1].select) != (seen.logits, seen.select):
        no_grad = (probes[1].logits, _select(probes[1], probes[1].logits, choice))
    readout = (readout_kind(adapter.readout).name if adapter.readout else
               "experts" if all(e is not None for e in experts) and _takes_routing(module, experts[0]) else "router")

    num_layers = placed.num_layers or int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0)
                                          or max(layers) + 1)
    labelled = any(placed.labels)
    return MoESpec(
        arch=model_type,
        family=adapter.name,
        num_layers=num_layers,
        moe_layers=tuple(layers),
        # the scores top-k ranks: a router can make more logits than it routes (Inkling's
        # shared-expert column); LongCat-Flash's zero-computation experts are routed
        num_experts=seen.width if seen and seen.width and seen.width < rows else rows,
        top_k=adapter.top_k or _top_k(first, module, config),
        routers=tuple(p for p, _ in routers),
        routing_kinds=kinds,
        experts=tuple(experts),
        shared_experts=tuple(shared),
        logits=logits,
        choice=choice,
        readout=readout,
        weights_index=adapter.weights_index,
        indices_index=adapter.indices_index,
        scores_index=adapter.scores_index,
        topk_op=adapter.topk_op,
        weights_op=adapter.weights_op,
        selection=adapter.selection,
        select=select,
        no_grad_sites=no_grad,
        stacks=tuple(placed.labels[i] for i in at) if labelled else None,
        layer_names=tuple(placed.names[i] for i in at) if labelled else None,
        stack_inputs=tuple(placed.inputs[i] for i in at) if placed.num_layers else None,
        unranked=adapter.unranked,
    )


def _select(seen: Any, logits: str | None, choice: str | None) -> str | None:
    """The select site a probe found, as `"<op>.output"` when top-k ranks the very output
    of the logits or choice op (an edit there already reaches it: no second site needed)."""
    if seen is None:
        return None
    same = next((op for op in (choice, logits) if op in seen.makers), None)
    return f"{same}.output" if same else seen.select


def _same_place_routers(module: torch.nn.Module, routers: list) -> list:
    """`routers` plus the modules at the same place in other layers that sit beside experts.

    A model may route some layers with another class (DeepSeek-V4's token-id hash routers,
    in the first layers, beside the learned ones that transformers declares): they are MoE
    layers all the same, and their experts receive routing that must be recorded.
    """
    matches = [_LAYER_INDEX.match(p) for p, _ in routers]
    if not all(matches):  # reported by the caller, which names the path it cannot place
        return routers
    places = {(m["stack"], m["rest"]) for m in matches}
    found = dict(routers)
    for path, router in module.named_modules():
        match = _LAYER_INDEX.match(path)
        if (path not in found and match and (match["stack"], match["rest"]) in places
                and _has(module, f"{path.rsplit('.', 1)[0]}.experts")):
            found[path] = router
    return sorted(found.items(), key=lambda item: (int(_LAYER_INDEX.match(item[0])["index"]), item[0]))


def _refuse_modality_split(routers: list, model_type: str) -> None:
    """`UnsupportedModelError` for a router module that holds several routed blocks, each with
    its own router and experts, between which the model picks per token (Ernie 4.5 VL-MoE:
    `text_moe` for text tokens, `vision_moe` for image and video tokens): two routings per
    layer, where `moe_interp` reads one."""
    for path, router in routers:
        blocks = [name for name, child in router.named_children()
                  if isinstance(getattr(child, "experts", None), torch.nn.Module)]
        if len(blocks) > 1:
            raise UnsupportedModelError(
                f"{type(router).__name__} at {path} ({model_type}) holds {len(blocks)} routed blocks "
                f"({', '.join(blocks)}), each with its own router and experts, and sends each token to one of "
                "them by its modality (text or image/video tokens): two routings per layer, where moe_interp "
                "reads one router per layer. Not supported; a text-only reading of one block would miss the "
                "other's tokens")


def _refuse_block_diffusion(module: torch.nn.Module, model_type: str) -> None:
    """`UnsupportedModelError` for a block-diffusion model (DiffusionGemma): its decoder denoises a
    canvas of `canvas_length` tokens (random ones unless the caller gives them), attending to the
    prompt's cache, so the tokens its routers see are not the input text, and its generation is
    a denoising loop rather than next-token decoding."""
    length = getattr(getattr(module, "config", None), "canvas_length", None)
    if isinstance(length, int) and not getattr(module.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{type(module).__name__} ({model_type}) is a block-diffusion model: its encoder reads the prompt "
            f"and its decoder denoises a canvas of canvas_length={length} tokens (random unless given as "
            "decoder_input_ids), so its decoder's routing is not over the input text and its generation is a "
            "denoising loop. moe_interp reads causal and encoder-decoder language models; not supported")


def _refuse_without_forward(module: torch.nn.Module, model_type: str, router_paths: list) -> None:
    """`UnsupportedModelError` for a model class with no forward of its own (Qwen3-Omni-MoE: transformers
    gives it `generate` only, which runs its thinker, then its talker), naming the parts that have one."""
    if type(module).forward is not torch.nn.Module.forward:
        return
    parts = sorted({p.split(".", 1)[0] for p in router_paths
                    if type(module.get_submodule(p.split(".", 1)[0])).forward is not torch.nn.Module.forward})
    raise UnsupportedModelError(
        f"{type(module).__name__} ({model_type}) defines no forward (transformers gives it generate only), so no "
        "trace can run it" + (f"; wrap a part that holds its routers and runs: {', '.join(parts)} "
                              f"(mi.wrap(hf.{parts[0]}, processor))" if parts else ""))


def _routing_kind(router: torch.nn.Module) -> str:
    """`"hash"` for a router that looks its experts up in an integer table (token id ->
    experts: DeepSeek-V4's `tid2eid`), `"topk"` for one that ranks its scores."""
    table = any(not b.is_floating_point() and b.ndim == 2 for b in router.buffers(recurse=False))
    return "hash" if table else "topk"


def _unsupported(module, model_type, declared, class_names) -> None:
    known = sorted({a.router_class for a in registered_adapters().values() if a.router_class})
    routerish = [c for c in class_names if re.search(r"router|gate|moe|expert", c, re.I)]
    close = difflib.get_close_matches(model_type, sorted(k[5:] for k in registered_adapters() if k.startswith("type:")), n=3)
    raise UnsupportedModelError(
        f"{type(module).__name__} (model_type={model_type!r}) has no MoE router that moe_interp can find. "
        f"Searched for: the router class declared in _can_record_outputs['router_logits'] "
        f"({'found ' + declared.__name__ + ' but no instance' if declared else 'none declared'}); "
        f"registered router classes {known or '[]'}; registered model types close to it {close or '[]'}. "
        f"Module classes that look MoE-related: {routerish or 'none (is this a dense model?)'}. "
        "If it is an MoE model, register an adapter: mi.register_adapter(mi.RouterAdapter("
        "name='my_family', router_class='<RouterClass>', logits='<op in router.source>', "
        f"readout={'|'.join(map(repr, readout_kinds()))})). See docs: 'Add a new architecture'.")


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _descendants(module: torch.nn.Module, path: str) -> list[str]:
    return [f"{path}.{n}" for n, _ in module.get_submodule(path).named_modules() if n]


def _takes_routing(module: torch.nn.Module, experts_path: str) -> bool:
    try:
        params = inspect.signature(module.get_submodule(experts_path).forward).parameters
    except (TypeError, ValueError):
        return False
    return len(params) >= 3


def _source_names(model: Any, module: torch.nn.Module, router_path: str) -> tuple[str, ...]:
    envoy = model if hasattr(model, "_module") else None
    if envoy is None:
        import nnsight

        envoy = nnsight.NNsight(module)
    for part in router_path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    try:
        return tuple(envoy.source.names)
    except Exception:  # a router without Python source (compiled, C++): no ops to name
        return ()


def _num_experts(router: torch.nn.Module, config: Any) -> int:
    # The router's logit count is the truth: it includes special experts that configs
    # count apart (LongCat-Flash's zero-computation experts).
    weight = next((p for p in router.parameters() if p.ndim == 2), None)
    if weight is not None:
        return int(weight.shape[0])
    for source in (router, config):
        for attr in _NUM_EXPERTS_ATTRS:
            value = getattr(source, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    raise UnsupportedModelError(f"cannot tell the number of experts of {type(router).__name__}")


def _top_k(router: torch.nn.Module, module: torch.nn.Module, config: Any) -> int:
    for source in (router, config, getattr(config, "ffn_config", None)):
        for attr in _TOP_K_ATTRS:
            value = getattr(source, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    raise UnsupportedModelError(f"cannot tell top-k of {type(router).__name__}: none of {_TOP_K_ATTRS} is set")
