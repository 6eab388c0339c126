"""Running a request where the model is, and collecting what it sends back: the results, and
whether the plan held (`check_held`: a rerouted expert was never selected).

A remote request (`remote=True` on NDIF, `remote="local"` to simulate) carries the tracer
(`RoutingRun`) and ships `moe_interp` by value for the request (the server need not have
it installed). Its results come back as one saved value, `RESULT_NAME` (a dict of
`[groups, layers, experts]` aggregates: tokens do not change its size), which the client
tracer adopts. Local runs go through the same backends, under a per-model lock.
"""

import threading
import weakref
from typing import Any

import torch
from nnsight.tracing.backend import Backend

from moe_interp.runtime._nnsight_compat import shipped_by_value
from moe_interp.arch import UnsupportedModelError
from moe_interp.core._checks import hub_id_shaped
from moe_interp.arch._stacks import repaired_nllb_moe_experts

__all__ = ["RESULT_NAME", "Collect", "OneAtATime", "RerouteNotHeld", "check_held", "check_servable", "model_lock",
           "shipped", "tokenize"]

RESULT_NAME = "__moe_interp__"  # the saved value a remote run sends back
_PACKAGE = __name__.split(".")[0]


def shipped(inner: Any, tracer: Any, ship: bool = True) -> Any:
    """Run a request through `inner` with `moe_interp` registered for by-value shipping.

    ```python
    >>> from moe_interp.runtime._shipping import shipped
    >>> shipped(lambda tracer: tracer * 2, 21)          # any backend: a callable on the tracer
    42

    ```
    """
    with shipped_by_value(_PACKAGE, ship):
        return inner(tracer)


class RerouteNotHeld(UnsupportedModelError):
    """A rerouted expert was still selected: the router's selection was not where `moe_interp`
    masked it. Raised after the trace (see `check_held`); the trace's results are withheld."""


def check_held(plan: Any, store: dict) -> None:
    """Raise `RerouteNotHeld` if, in a trace run with `plan`, any token still received an
    expert that `ExpertAblate(mode="reroute")` removed (the kernels count it, no host waits;
    this reads the count once, after the trace). Nothing to do without a reroute.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._compile import compile_plan
    >>> from moe_interp.runtime._shipping import check_held
    >>> plan = compile_plan(mi.describe(mi.zoo.tiny_model("qwen3_moe")), [mi.ExpertAblate({1: [3]})])
    >>> check_held(plan, {"rerouted_used": torch.tensor([0])})   # the kernels' count per rerouted layer
    >>> check_held(plan, {"rerouted_used": torch.tensor([2])})
    Traceback (most recent call last):
    moe_interp.runtime._shipping.RerouteNotHeld: ExpertAblate(mode='reroute') did not hold: ablated experts were still selected 2 times in layer 1 (token x top-k slot), ...

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


def check_servable(model: Any, remote: Any) -> None:
    """Refuse, before anything is sent, a request NDIF would run on another model than this
    one: NDIF loads a model by its hub id, so a model without one (wrapped in memory, read from
    a local directory) cannot be served, and a model changed in this process (NLLB-MoE's
    `repair_nllb_moe`) would run unchanged there. `remote="local"` (the request simulated in
    this process, on this model) and local runs pass.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._shipping import check_servable
    >>> check_servable(mi.zoo.tiny_model("qwen3_moe"), remote="local")
    >>> check_servable(mi.zoo.tiny_model("nllb-moe"), remote=True)
    Traceback (most recent call last):
    ValueError: remote=True runs this model on NDIF, which loads it from the hub by id, unrepaired: ...

    ```
    """
    if not remote or remote == "local":
        return
    module = getattr(model, "_module", None)
    repaired = repaired_nllb_moe_experts(module) if isinstance(module, torch.nn.Module) else []
    if repaired:
        raise ValueError(
            "remote=True runs this model on NDIF, which loads it from the hub by id, unrepaired: NLLB-MoE's "
            f"experts ({len(repaired)} modules, e.g. {repaired[0]}) were repaired in this process "
            "(mi.arch.repair_nllb_moe: transformers 5 sends every token to experts 0 and 1), so the server's "
            "routing would not be this model's, and no remote request of it can be served. Run it here: drop "
            "remote= (mi.trace, mi.generate and mi.profile, two-stack profiles included, run the repaired model "
            "locally), or pass remote='local' to simulate the request on this model")
    repo = getattr(model, "repo_id", None)
    if not isinstance(repo, str) or not repo or not hub_id_shaped(repo):
        raise ValueError(
            f"remote=True runs the model on NDIF, which loads it by its hub id, and this one has none "
            f"({repo!r}: a model wrapped in memory or read from a local directory). Load it by id, "
            "mi.load('org/name', dispatch=False), or run it here (remote='local' simulates the request)")


class Collect(Backend):
    """The one wrapper of a routing trace's backend: runs it under the model's lock, ships
    `moe_interp` by value for a remote request and adopts the results the request sent back
    (`RESULT_NAME` among the saved values); with `check` (`arch.ExpertsCheck`, the first local
    trace of an auto-detected model) compares the routing read on the first forward with what
    the experts received; then checks that every reroute held.

    ```python
    >>> import moe_interp as mi
    >>> with mi.trace(mi.zoo.tiny_model("qwen3_moe"), "Hello", mi.RouterRecord()) as tr:
    ...     pass
    >>> type(tr.backend).__name__
    'Collect'

    ```
    """

    def __init__(self, inner: Backend, ship: bool, check: Any = None) -> None:
        # a local model's own OneAtATime is not needed inside: this takes the same lock
        self.inner = inner.inner if isinstance(inner, OneAtATime) else inner
        self.ship, self.check = ship, check

    def __call__(self, tracer: Any) -> Any:
        with model_lock(tracer.envoy):
            if self.check is None:
                result = shipped(self.inner, tracer, self.ship)
            else:
                with self.check:  # the experts' hooks off again whatever happens in the forward
                    result = shipped(self.inner, tracer, self.ship)
        if isinstance(result, dict) and RESULT_NAME in result:
            tracer._mi_take(result[RESULT_NAME])
        if self.check is not None:
            _compare(self.check, tracer._mi_store)
        try:
            check_held(tracer._mi_plan, tracer._mi_store)
        except RerouteNotHeld as error:
            tracer._mi_store["withheld"] = error  # tr.output / tr.routing raise it too
            raise
        return result


def _compare(check: Any, store: dict) -> None:
    """`arch.ExpertsCheck` on a trace's first forward: the routing read must equal what the
    experts received. On a mismatch the tracer keeps no counts to return."""
    try:
        check.compare(store.pop("verify", []))
    except Exception:
        store.clear()
        store.update(forwards=0, per_token=[])
        raise


class OneAtATime(Backend):
    """Wraps a local backend: the traced block runs under `model_lock` of the traced model,
    so a plain `model.trace` in one thread and an `mi.trace` in another take turns instead
    of mixing their workers in the model's one interleaver. Models from `mi.wrap` and
    `mi.load` put it around every local trace (`loading.MoEModel.trace`).

    ```python
    >>> from moe_interp.runtime._shipping import OneAtATime
    >>> from moe_interp.runtime._shipping import model_lock
    >>> class Model: ...
    >>> model = Model()
    >>> OneAtATime(lambda tracer: model_lock(model)._is_owned(), model)("tracer")   # ran holding the lock
    True

    ```
    """

    def __init__(self, inner: Any, model: Any) -> None:
        self.inner, self.model = inner, model

    def __call__(self, tracer: Any) -> Any:
        with model_lock(self.model):
            return self.inner(tracer)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A trace inside a session travels with the session's request: where it then runs
        # (a server) there is no lock to take, so it travels as the backend it wraps.
        return self.inner.__reduce_ex__(protocol)


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def tokenize(model: Any, *args: Any, **kwargs: Any) -> Any:
    """`model.tokenizer(*args, **kwargs)`, holding `model_lock(model)`.

    A Hugging Face fast tokenizer sets padding and truncation on its one shared Rust
    tokenizer before every call, so two threads tokenizing at once can each run with the
    other's settings (seen: an `mi.trace` got an unpadded batch while a plain `model.trace` in
    another thread tokenized its prompts). nnsight tokenizes inside a trace's run, which holds
    this lock for models from `mi.wrap` / `mi.load`; the package's own tokenizing of a model's
    texts goes through here.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._shipping import tokenize
    >>> tokenize(mi.zoo.tiny_model("qwen3_moe"), ["Hi", "Hello"], padding=True)["attention_mask"]
    [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]

    ```
    """
    with model_lock(model):
        return model.tokenizer(*args, **kwargs)


def model_lock(model: Any) -> threading.RLock:
    """The lock that every local trace of `model` holds while it runs.

    nnsight keeps one interleaver per model: two threads running traces of the same model
    at once mix up their workers (seen: "parent cannot be on a different thread", and
    traces that return wrong or no routing, 19 of 20 with a plain `model.trace` in another
    thread). So traces of one model run one at a time: `mi.trace`/`mi.generate`,
    `mi.expert_attribution`, and the plain nnsight traces of a model from `mi.wrap` /
    `mi.load` (`OneAtATime`); reentrant, for a trace started from inside another on the
    same thread. A `TransformersModel` built by hand is locked by `mi.trace` only.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._shipping import model_lock
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> model_lock(model) is model_lock(model._module)
    True

    ```
    """
    key = getattr(model, "_module", model)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.RLock()
    return lock
