"""Models whose MoE layers sit in more than one stack: an encoder and a decoder (NLLB-MoE,
Switch Transformers), or a language model inside a multimodal model (`language_model`).

A stack is the `ModuleList` of layers the routers' paths run through (`model.encoder.layers`,
`encoder.block`, `model.language_model.layers`). Its label is the name of the module that
holds it (`"encoder"`, `"decoder"`, `"language_model"`); the top-level decoder of a causal
LM (`model.layers`, `transformer.blocks`) has none. With several stacks, layer indices are
global, in execution order: the encoder's layers first (0 .. n-1), then the decoder's
(n ..), so every layer still has one integer index, and `MoESpec.layer_names` gives the
stack's own numbering (`"encoder.3"`, `"decoder.3"`). Each stack's tokens are read from the
inputs of the module that holds it (`model.encoder`: `input_ids`, `attention_mask`; the
decoder: the decoder's), since the stacks see different tokens.

NLLB-MoE in transformers 5.x dispatches by the value of a 0/1 mask, not by the router's
choice (`NllbMoeExperts.forward` one-hot encodes the mask itself: every token goes to
experts 0 and 1, whatever the router chose). `repair_nllb_moe` gives its experts modules
the dispatch of the original model (fairseq, transformers 4.x): token t goes to expert e
when the router's combine weight `router_probs[t, e]` is not 0 (the top-2 within capacity).
"""

import dataclasses
import inspect
import re
from typing import Any

import torch

__all__ = ["Stacks", "broken_nllb_moe_experts", "check_per_token", "place_stacks", "repair_nllb_moe",
           "repaired_nllb_moe_experts", "stack_fields"]

_LAYER_INDEX = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_UNLABELLED = ("", "model", "transformer")


@dataclasses.dataclass(frozen=True)
class Stacks:
    """Where each router of a model sits: `layers` (global index per router), `labels`
    (its stack's label, `None` in an unlabelled stack), `names` (`"decoder.3"`, or the index),
    `inputs` (path of the module whose inputs hold the stack's tokens; `None`: the model's own),
    `num_layers` (all layers of all stacks)."""

    layers: tuple[int, ...]
    labels: tuple[str | None, ...]
    names: tuple[str, ...]
    inputs: tuple[str | None, ...]
    num_layers: int


def place_stacks(module: torch.nn.Module, router_paths: list[str]) -> Stacks | None:
    """Global layer indices, stack labels and names of `router_paths` (each `<stack>.<i>.<rest>`).

    `None` when a path does not have that shape. One router per (stack, layer): a second
    router in the same layer (JetMoe's attention experts) is left to the caller.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._stacks import place_stacks
    >>> hf = mi.zoo.model_class("switch_transformers")._from_config(mi.zoo.tiny_config("switch_transformers"))
    >>> routers = [n for n, m in hf.named_modules() if n.endswith("mlp.router")]
    >>> placed = place_stacks(hf, routers)
    >>> placed.layers, placed.names, placed.inputs[0]
    ((1, 3, 5, 7), ('encoder.1', 'encoder.3', 'decoder.1', 'decoder.3'), 'encoder')

    ```
    """
    matches = [_LAYER_INDEX.match(path) for path in router_paths]
    if not all(matches):
        return None
    found = {m["stack"] for m in matches}
    order = [name for name, _ in module.named_modules() if name in found]  # module (= execution) order
    sizes = {stack: _size(module, stack) for stack in order}
    offsets = {stack: sum(sizes[s] for s in order[:i]) for i, stack in enumerate(order)}
    several = len(order) > 1
    labels = {stack: _label(stack) for stack in order}
    layers, names, inputs = [], [], []
    for match in matches:
        stack, index = match["stack"], int(match["index"])
        layers.append(offsets[stack] + index if several else index)
        names.append(f"{labels[stack]}.{index}" if labels[stack] else str(index))
        inputs.append(stack.rsplit(".", 1)[0] if several and "." in stack else None)
    return Stacks(tuple(layers), tuple(labels[m["stack"]] for m in matches), tuple(names), tuple(inputs),
                  sum(sizes.values()) if several else 0)


def _size(module: torch.nn.Module, stack: str) -> int:
    try:
        return len(module.get_submodule(stack))
    except (AttributeError, TypeError):
        return 0


def _label(stack: str) -> str | None:
    """`"model.encoder.layers"` -> `"encoder"`; `"model.layers"` -> `None` (a causal LM's own stack)."""
    parts = stack.split(".")
    holder = parts[-2] if len(parts) > 1 else ""
    return None if holder in _UNLABELLED else holder


def broken_nllb_moe_experts(module: torch.nn.Module) -> list[str]:
    """Paths of the experts modules in `module` that dispatch by the value of their 0/1
    routing mask (transformers 5.x `NllbMoeExperts`), not by the router's choice.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._stacks import broken_nllb_moe_experts
    >>> hf = mi.zoo.model_class("nllb-moe")._from_config(mi.zoo.tiny_config("nllb-moe"))
    >>> broken_nllb_moe_experts(hf)
    ['model.encoder.layers.1.ffn.experts', 'model.encoder.layers.3.ffn.experts', 'model.decoder.layers.1.ffn.experts', 'model.decoder.layers.3.ffn.experts']

    ```
    """
    return [path for path, sub in module.named_modules()
            if type(sub).__name__ == "NllbMoeExperts" and _dispatches_by_mask_value(type(sub))]


def _dispatches_by_mask_value(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "one_hot(router_mask" in source.replace(" ", "")


def _routed_forward(self: Any, hidden_states: torch.Tensor, router_mask: torch.Tensor,
                    router_probs: torch.Tensor) -> torch.Tensor:
    """NLLB-MoE's experts as the model was trained: token t goes to expert e when its combine
    weight `router_probs[t, e]` is not 0 (the router's top-2 within capacity; padding has none)."""
    out = torch.zeros_like(hidden_states)
    for expert in torch.nonzero(router_probs.ne(0).any(0)).flatten().tolist():
        rows = torch.nonzero(router_probs[:, expert]).flatten()
        value = self[f"expert_{expert}"](hidden_states[rows]) * router_probs[rows, expert, None]
        if self.moe_token_dropout > 0:
            value = self.token_dropout(value) if self.training else value * (1 - self.moe_token_dropout)
        out.index_add_(0, rows, value.to(hidden_states.dtype))
    return out


def repair_nllb_moe(model: Any) -> int:
    """Give every broken NLLB-MoE experts module (see `broken_nllb_moe_experts`) the dispatch of
    the original model; returns how many were repaired. Call it before `mi.wrap`.

    The experts' weights are untouched; only the choice of which expert computes which token
    changes, to the one the router made. A model that is already right is left as it is.

    ```python
    >>> import moe_interp as mi
    >>> hf = mi.zoo.model_class("nllb-moe")._from_config(mi.zoo.tiny_config("nllb-moe"))
    >>> mi.arch.repair_nllb_moe(hf), mi.arch.repair_nllb_moe(hf)
    (4, 0)
    >>> mi.arch.broken_nllb_moe_experts(hf)
    []

    ```
    """
    module = getattr(model, "_module", model)
    if module is not model:
        raise TypeError("repair_nllb_moe takes the Hugging Face model before mi.wrap (nnsight has wrapped "
                        "the forwards of a wrapped one): hf = ...; mi.arch.repair_nllb_moe(hf); mi.wrap(hf, tok)")
    paths = broken_nllb_moe_experts(module)
    for path in paths:
        experts = module.get_submodule(path)
        experts.__class__ = _repaired_class(type(experts))
    return len(paths)


_REPAIRED: dict[type, type] = {}


def repaired_nllb_moe_experts(module: torch.nn.Module) -> list[str]:
    """Paths of the experts modules of `module` that `repair_nllb_moe` repaired in this process.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._stacks import repaired_nllb_moe_experts
    >>> len(repaired_nllb_moe_experts(mi.zoo.tiny_model("nllb-moe")._module)) > 0    # the zoo repairs it
    True
    >>> repaired_nllb_moe_experts(mi.zoo.tiny_model("qwen3_moe")._module)
    []

    ```
    """
    return [name for name, sub in module.named_modules() if type(sub) in _REPAIRED.values()]


def _repaired_class(cls: type) -> type:
    if cls not in _REPAIRED:
        _REPAIRED[cls] = type(cls.__name__, (cls,), {"forward": _routed_forward, "__module__": __name__,
                                                      "__doc__": _routed_forward.__doc__})
    return _REPAIRED[cls]


def stack_fields(spec: Any, layer: int) -> dict:
    """The `LayerPlan` fields that place `layer` in its stack, for a model with several:
    `tokens_from` (the module whose inputs hold the stack's tokens) and `once` (the encoder
    of an encoder-decoder model: `generate` runs it once, before the decoder's steps).
    Empty for a single-stack model (its tokens are the model's own inputs).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._stacks import stack_fields
    >>> spec = mi.describe(mi.zoo.tiny_model("nllb-moe"))
    >>> stack_fields(spec, 1), stack_fields(spec, 5)
    ({'tokens_from': 'model.encoder', 'once': True}, {'tokens_from': 'model.decoder', 'once': False})

    ```
    """
    if spec.stack_inputs is None:
        return {}
    position = spec.position(layer)
    return {"tokens_from": spec.stack_inputs[position], "once": spec.stacks[position] == "encoder"}


def check_per_token(spec: Any, per_token: bool) -> None:
    """Refuse `RouterRecord(per_token=True)` on a model with several stacks: its per-token table
    has one row per token of one stack (the stacks route different tokens)."""
    if per_token and spec.stack_inputs is not None:
        raise ValueError(f"RouterRecord(per_token=True) is not available on this {spec.arch} model: its stacks "
                         f"({', '.join(dict.fromkeys(spec.stacks))}) route different tokens. Record the counts "
                         "(per_token=False), per stack: tr.routing_by_stack")
