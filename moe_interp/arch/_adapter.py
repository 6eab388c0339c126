"""What an architecture adapter says about a router family, and the registry of them.

An adapter is a frozen value: where the router's raw logits are made (a `.source` op of
the router's forward, or its output), where selection scores are made when they differ
from the logits (DeepSeek-V3 adds a correction bias after the sigmoid), and where the
routing the model actually used can be read (the experts module's arguments, the
router's output tuple, or a dense score matrix).
"""

import dataclasses
from typing import Any

from moe_interp.arch._sites import readout_kind, register_readout

__all__ = ["RouterAdapter", "register_adapter", "registered_adapters", "UnsupportedModelError"]


class UnsupportedModelError(TypeError):
    """The model has no router `moe_interp` can find.

    Raised by [`describe`][moe_interp.describe] (and so by `wrap`, `load`, `trace`) with
    the list of what was searched for and how to register an adapter.

    ```python
    >>> import moe_interp as mi
    >>> from transformers import AutoModelForCausalLM, LlamaConfig
    >>> dense = AutoModelForCausalLM.from_config(LlamaConfig(
    ...     vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, num_key_value_heads=1))
    >>> mi.describe(dense)
    Traceback (most recent call last):
    moe_interp.arch._adapter.UnsupportedModelError: LlamaForCausalLM (model_type='llama') has no MoE router that moe_interp can find. Searched for: ... If it is an MoE model, register an adapter: mi.register_adapter(...)...

    ```
    """


@dataclasses.dataclass(frozen=True)
class RouterAdapter:
    """How to find and steer the router of one family of MoE architectures.

    Most Hugging Face MoE models need no adapter: `moe_interp` finds their routers from
    `_can_record_outputs["router_logits"]` and the router's own source. Register one to
    support a custom model, or to override what detection found.

    **Arguments:**

    - `name`: a short family name, shown by `describe`.
    - `model_types`: `config.model_type` values this adapter applies to.
    - `router_class`: class name of the router module; used to find routers in models
      whose config does not declare them.
    - `logits`: where the pre-selection logits `z[T, E]` are made: the name of an op in
      `router.source` (e.g. `"router_logits_0"`, `"F_linear_0"`), or `"output"` when the
      router returns the logits themselves, or `"output[i]"` for element `i` of its tuple.
      `None` means detect (the first of `router_logits_0`, `F_linear_0`, `forward_0`).
    - `choice`: op whose output is the score top-k selects on, when it is not the logits
      (DeepSeek-V3: `"scores_for_choice_0"`, logits + correction bias). Rerouting ablation
      acts here. `None` means detect.
    - `select`: where the top-k that picks the experts ranks its scores, as an op of
      `router.source` and which end of it: `"torch_topk_0.input"` (the argument of
      `torch.topk`), `"scores_0.output"`; ops inside a helper method are joined by dots
      (`"self_get_topk_indices_0.torch_topk_0.input"`). Rerouting masks it, so an
      ablated expert is never selected whatever the router adds after the logits.
      `None` means detect (by running the router once; see `describe`).
    - `readout`: where the routing actually used is read: the name of a readout kind
      (`arch._sites.readout_kinds()`), or a `mi.arch.Readout` subclass of your own (then
      registered under its `name` with the adapter). `"experts"`: the experts module's
      positional arguments `(hidden, top_k_index, top_k_weights)`; `"router"`: the
      router's output tuple at `weights_index`, `indices_index`; `"dense"`: a dense
      `[T, E]` score matrix at output `scores_index` (non-selected experts score 0);
      `"topk"`: inside the router's source, the `torch.topk` op `topk_op` (its indices)
      and the op `weights_op` that makes the top-k weights (JetMoe); `"dispatch"`: a 0/1
      dispatch mask `[..., E]` at router output `indices_index` and the chosen experts'
      weights (`[..., 1]` or `[..., E]`) at `weights_index` (Switch Transformers). In
      `"dense"` and `"dispatch"` readouts a token with fewer than `top_k` experts (dropped
      past an expert's capacity) counts only the experts it reached. `None`: detect
      (`"experts"` where the experts module takes the routing, else `"router"`).
    - `top_k`: experts per token, when neither the router nor the config says (`None`: detect).
    - `unranked`: why no site holds what the router's top-k ranks, when none does (Ergo ranks
      `sigmoid(logits) + e_score_correction_bias`, a sum no op of its source makes): the
      router view's `scores` then refuses, naming it (rerouting and steering act at `select`).
    - `selection`: a human description of how the family selects experts.

    **Example:**

    ```python
    >>> import moe_interp as mi
    >>> adapter = mi.RouterAdapter(
    ...     name="my_moe", model_types=("my_moe",), router_class="MyRouter",
    ...     logits="F_linear_0", readout="router", weights_index=1, indices_index=2,
    ...     top_k=2, selection="softmax, top-k")
    >>> adapter.readout, adapter.choice          # choice None: detected when a model is described
    ('router', None)
    >>> mi.describe(mi.zoo.tiny_model("gpt_oss")).family   # a built-in adapter (arch._families)
    'gpt_oss'

    ```
    """

    name: str
    model_types: tuple[str, ...] = ()
    router_class: str | None = None
    logits: str | None = None
    choice: str | None = None
    select: str | None = None
    readout: Any = None  # a readout kind's name, or a mi.arch.Readout subclass
    weights_index: int = 1
    indices_index: int = 2
    scores_index: int = 0
    topk_op: str | None = None
    weights_op: str | None = None
    top_k: int | None = None
    selection: str = "softmax, top-k"
    unranked: str | None = None

    def __post_init__(self) -> None:
        if self.readout is not None:
            readout_kind(self.readout)  # an unknown kind is refused here, naming the kinds


_REGISTRY: dict[str, RouterAdapter] = {}


def register_adapter(adapter: RouterAdapter) -> RouterAdapter:
    """Register (or replace) an adapter for its `model_types` and `router_class`.

    **Example:**

    ```python
    >>> import moe_interp as mi
    >>> mi.register_adapter(mi.RouterAdapter(name="my_moe", model_types=("my_moe",),
    ...                                      router_class="MyRouter", logits="output", readout="experts"))
    RouterAdapter(name='my_moe', model_types=('my_moe',), router_class='MyRouter', logits='output', ...)
    >>> mi.arch.registered_adapters()["class:MyRouter"].name
    'my_moe'

    ```
    """
    if not isinstance(adapter, RouterAdapter):
        raise TypeError(f"register_adapter takes a RouterAdapter, got {type(adapter).__name__}")
    if not adapter.model_types and not adapter.router_class:
        raise ValueError("a RouterAdapter needs model_types or router_class to be found by")
    if isinstance(adapter.readout, type):
        register_readout(adapter.readout)
    for key in adapter.model_types:
        _REGISTRY[f"type:{key}"] = adapter
    if adapter.router_class:
        _REGISTRY[f"class:{adapter.router_class}"] = adapter
    return adapter


def registered_adapters() -> dict[str, RouterAdapter]:
    """The adapter registry: `"type:<model_type>"` / `"class:<RouterClass>"` -> adapter.

    A copy: changing it changes nothing (use `register_adapter`).

    ```python
    >>> import moe_interp as mi
    >>> adapters = mi.arch.registered_adapters()
    >>> adapters["type:dbrx"].logits, adapters["type:llama4_text"].readout
    ('output', 'dense')

    ```
    """
    return dict(_REGISTRY)


def adapter_for(model_type: str | None, router_classes: list[str]) -> RouterAdapter | None:
    if model_type and f"type:{model_type}" in _REGISTRY:
        return _REGISTRY[f"type:{model_type}"]
    for name in router_classes:
        if f"class:{name}" in _REGISTRY:
            return _REGISTRY[f"class:{name}"]
    return None
