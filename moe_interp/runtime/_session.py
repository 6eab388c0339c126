"""`mi.profile`'s remote loop: many profiling batches in one nnsight session request (`mi.profile`
sizes its requests, see its `request_tokens=`)."""

from typing import Any

import nnsight
import torch
from nnsight.tracing.backend import Backend

from moe_interp.runtime._shipping import RESULT_NAME, check_servable, model_lock, shipped
from moe_interp.runtime._tracer import RoutingRun
from moe_interp.runtime._kernels import profile_batch, profile_finish, profile_start

__all__ = ["profile_session"]


def _profile_run(model: Any, texts: Any, plan: Any, trace_kwargs: dict) -> RoutingRun:
    """One profiling batch's tracer, built where the model is (inside a session, on a server
    too): `RouterRecord` plan, one stats group per text, results left in `_mi_store`."""
    run = model.trace(texts, tracer_cls=RoutingRun, **trace_kwargs)
    run._mi_start(plan, per_row=True)
    return run


def profile_session(model: Any, batches: list, plan: Any, num_languages: int, session_kwargs: dict,
                    trace_kwargs: dict, stack_tokens: list | None = None) -> dict:
    """Run many profiling batches in ONE session request; return what `kernels.profile_finish` packs.

    `batches` is `[(inputs, language_index_tensor), ...]`, inputs as `mi.trace` takes them
    (`mi.profile` sends token-id dicts: a row may be a window of a long text). The session
    body below is what travels (as source): it references only the model, plain data, `_profile_run`
    (builds a `RoutingRun`), `_per_stack`, the `kernels.profile_*` functions, torch and nnsight's
    `save`, never the `moe_interp` package as a whole.

    A model with several stacks (an encoder and a decoder) counts each stack's own tokens:
    `stack_tokens` names, per stack, the module whose inputs hold them (its plan layers'
    `tokens_from`), and `item_tokens` is then `[rows, stacks]`; `item_count` and `gate_mass`
    hold every plan layer, to be split by stack by the caller. A plan recording co-activation
    (`RouterRecord(co_activation=True)`) also sends `co_activation`, `[languages, layers, E, E]`
    summed per language on the server: only that table travels back, never per text; one
    recording entropy (`RouterRecord(entropy=True)`) sends `entropy`, `[languages, layers]`.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._session import profile_session
    >>> from moe_interp.runtime._compile import compile_plan
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> plan = compile_plan(mi.describe(model), [mi.RouterRecord()])
    >>> ids = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    >>> out = profile_session(model, [(ids, torch.tensor([0]))], plan, 1, {"remote": "local"}, {})
    >>> out["item_tokens"].tolist(), out["item_count"].shape
    ([3], torch.Size([1, 4, 8]))
    >>> plan = compile_plan(mi.describe(model), [mi.RouterRecord(co_activation=True)])
    >>> out = profile_session(model, [(ids, torch.tensor([0]))], plan, 1, {"remote": "local"}, {})
    >>> out["co_activation"].shape, int(out["co_activation"][0, 0].diagonal().sum())   # 3 tokens, top-2
    (torch.Size([1, 4, 8, 8]), 6)
    >>> switch = mi.zoo.tiny_model("switch_transformers")
    >>> plan = compile_plan(mi.describe(switch), [mi.RouterRecord()])
    >>> keys = list(dict.fromkeys(entry.tokens_from for entry in plan.layers))   # the encoder's, the decoder's
    >>> pair = dict(ids, decoder_input_ids=torch.tensor([[0, 5]]),
    ...             decoder_attention_mask=torch.ones(1, 2, dtype=torch.long))
    >>> out = profile_session(switch, [(pair, torch.tensor([0]))], plan, 1, {"remote": "local"}, {}, keys)
    >>> out["item_tokens"].tolist(), out["item_count"].shape       # 3 source tokens, 2 target tokens; 4 layers
    ([[3, 2]], torch.Size([1, 4, 8]))

    ```
    """
    check_servable(model, session_kwargs.get("remote"))
    # Keep each statement of the session body on one line: it travels as `ast.unparse`d source
    # with its first line's number kept, and the inner `with` is found again by line number.
    session = model.session(**session_kwargs)
    collect = session.backend = _SessionCollect(session.backend, model)
    with session:
        acc = profile_start(num_languages)
        for texts, languages in batches:
            run = _profile_run(model, texts, plan, trace_kwargs)
            with torch.no_grad(), run:
                pass
            profile_batch(_per_stack(run._mi_store, stack_tokens), languages, acc)
        __moe_interp__ = nnsight.save(profile_finish(acc))  # noqa: F841  (travels back as RESULT_NAME)
    return collect.result


def _per_stack(store: dict, keys: Any) -> dict:
    """A batch's results as `kernels.profile_batch` reads them: with `keys` (one per stack, the
    modules whose inputs hold its tokens), `tokens` is each stack's token total per row,
    `[rows, stacks]`. Runs in the session (on a server too): torch only."""
    if not keys:
        return store
    out = {"count": store["count"], "gate_mass": store["gate_mass"],
           "tokens": torch.stack([store["stack_tokens"][key] for key in keys], 1)}
    if "co_activation" in store:
        out["co_activation"] = store["co_activation"]
    if "entropy" in store:
        out["entropy"] = store["entropy"]
    return out


class _SessionCollect(Backend):
    """A session's backend: ships `moe_interp` by value and keeps the returned `RESULT_NAME`."""

    def __init__(self, inner: Backend, model: Any) -> None:
        self.inner, self.model, self.result = inner, model, None

    def __call__(self, tracer: Any) -> Any:
        with model_lock(self.model):
            returned = shipped(self.inner, tracer)
        if isinstance(returned, dict) and RESULT_NAME in returned:
            self.result = returned[RESULT_NAME]
        elif tracer.info is not None and tracer.info.frame is not None:
            self.result = tracer.info.frame.f_locals.get(RESULT_NAME)
        if self.result is None:
            raise RuntimeError("the profiling session sent no results back (a non-blocking request?)")
        return returned
