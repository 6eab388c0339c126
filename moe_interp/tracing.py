"""`mi.trace` and `mi.generate`: the face of the runtime.

A call goes down once and comes back once: the runtime compiles the interventions into a
finished plan and opens nnsight's tracer with it (`runtime._tracer.open_trace`); the
kernels run inside the model's forwards and leave counts; `tr.routing` hands those
`RoutingCounts` to `RoutingStats`, the analyses' face, here. The path, drawn, is in
docs/concepts.md.
"""

from typing import Any

from moe_interp.analysis._stats import RoutingStats
from moe_interp.runtime._tracer import RoutingTracer, open_trace

__all__ = ["RoutingTracer", "generate", "trace"]


def trace(model: Any, *args: Any, **kwargs: Any) -> RoutingTracer:
    """Open an nnsight trace of `model` that also applies MoE interventions.

    `mi.trace(model, [inputs], *interventions, **model_kwargs)`. Inputs: a string, a list
    of strings, a token tensor, or a tokenizer dict with `attention_mask`; or none, with
    inputs given by `tr.invoke(inputs, group=...)` inside the block. Interventions apply on
    every forward, in order. The body is plain nnsight code. `remote=` passes through
    (`True`, `"local"` or a server URL; see docs/remote.md): the routing statistics come
    back aggregated; the model output only with `keep_output=True` (default for local runs).

    Inputs are checked before the model runs (`ValueError`): no inputs at all, an empty
    text or a row without tokens, token ids outside the model's vocabulary, and inputs
    longer than the model's positions (`max_position_embeddings`; the policy is to refuse,
    never to run past them: pass `truncation=True, max_length=...` to keep the first
    tokens). Traces of one model from several threads run one at a time (a per-model
    lock around the forward; plain `model.trace` blocks are not covered by it).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, ["Hello", "Bonjour tout le monde"], mi.RouterRecord()) as tr:
    ...     logits = model.lm_head.output.save()
    >>> tr.routing.groups, tr.output.logits.shape[0]
    (('default',), 2)
    >>> with mi.trace(model, mi.RouterRecord()) as tr:
    ...     with tr.invoke("Hello", group="en"):
    ...         pass
    ...     with tr.invoke("Hallo Welt", group="de"):
    ...         pass
    >>> tr.routing.groups
    ('en', 'de')

    ```
    """
    return open_trace(model, args, kwargs, wrap=RoutingStats.from_counts)


def generate(model: Any, *args: Any, **kwargs: Any) -> RoutingTracer:
    """Like `trace`, around the model's `generate`; interventions apply at every step.

    `mi.generate(model, prompt, *interventions, max_new_tokens=..., **generate_kwargs)`.
    After the block: `gen.text` (decoded continuations), `gen.output` (token ids),
    `gen.routing` (prompt and generated tokens, when a `RouterRecord` was given).
    Each token counts once, at the step that first feeds it: one new token per row per
    step, with or without a cache (`use_cache=False` feeds the whole sequence again at
    every step; the tokens fed before are not counted again, although every intervention
    still edits their routing, as they make the new token). Per-token records
    (`RouterRecord(per_token=True)`) give each token's text position, its index among its
    row's real tokens (an image's placeholder tokens one each, whatever rope positions a
    multimodal model uses). A row that produces an EOS token (`eos_token_id`, else the model's) stops counting
    there, although a batch goes on feeding it (the EOS, then padding) until every row
    ends: counts equal generating each prompt alone. Rows ended otherwise
    (`stop_strings`, `stopping_criteria`) cannot be told apart, so those are refused with
    `RouterRecord` on more than one prompt.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.generate(model, "Once upon", mi.RouterRecord(), max_new_tokens=8, do_sample=False) as gen:
    ...     pass
    >>> len(gen.text), gen.routing.tokens.item() > 8
    (1, True)

    ```
    """
    return open_trace(model, args, kwargs, generating=True, wrap=RoutingStats.from_counts)
