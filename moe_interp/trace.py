"""`mi.trace` and `mi.generate`: nnsight tracing contexts that also run compiled interventions.

The user gets nnsight's own tracer (a subclass, `RoutingTracer`), so the body of the
`with` block is ordinary nnsight code. Before the model runs, the tracer adds one worker
of its own that executes the compiled plan (`moe_interp.kernels.run`) beside the user's
code, and a second that keeps the model's return value. Both are whole-batch workers;
per-invoke statistics come from each invoke's rows.

Remote runs (`remote=True` on NDIF, `remote="local"` to simulate): nnsight pickles the
tracer itself and the server calls its `execute`. What travels is `RoutingRun`, the
part of the tracer that runs where the model is: its methods use only nnsight, torch
and `moe_interp.kernels` (whitelisted imports), never the analysis side of the package.
`moe_interp` is registered for by-value shipping for the request (the server need not
have it installed). The results come back as one saved value, `__moe_interp__` (a dict of
`[groups, layers, experts]` aggregates: tokens do not change its size), which the client
tracer unpacks; the model output travels only with `keep_output=True` (default for
`mi.generate`: token ids are small; logits are not).
"""

import copyreg
import threading
import weakref
from typing import Any, Optional

import torch
from nnsight.intervention.interleaver import Mediator, OutOfOrderError
from nnsight.intervention.tracer import InterleavingTracer, Invoker
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import save as _save
from nnsight.tracing.util import push as _push

from .arch import describe
from .arch._verify import pending_check
from .interventions import Intervention, RerouteNotHeld, check_held, compile_plan, flatten, place, router_groups
from .kernels import compact, keep_result, pack, profile_batch, profile_finish, profile_start, run as run_plan
from .stats import RoutingStats

__all__ = ["trace", "generate", "RoutingTracer", "RoutingRun", "RESULT_NAME"]

RESULT_NAME = "__moe_interp__"  # the saved value a remote run sends back


# The bodies of the two workers. Mediators run code objects; these functions' code is
# used (argument-free, names from the worker's scope) so that a remote request ships
# them as source like any other function, never as version-bound bytecode.
def _run_worker():
    __mi_run__(**__mi_args__)  # noqa: F821


def _keep_worker():
    __mi_keep__(**__mi_args__)  # noqa: F821


def _body(worker: Any) -> Any:
    """The worker's own code, under any checking decorator (jaxtyping/beartype in tests)."""
    while hasattr(worker, "__wrapped__"):
        worker = worker.__wrapped__
    return worker.__code__


class RoutingInvoker(Invoker):
    """`tr.invoke(inputs, group="de")`: an nnsight invoke whose rows form one stats group."""

    # Shipped code: base calls are explicit (no zero-argument super()), as methods shipped
    # by source are rebuilt outside their class, without a __class__ cell; annotations use
    # typing (a `str | None` pickles through functools, which NDIF does not allow).
    def __init__(self, tracer: "RoutingRun", *args: Any, group: Optional[str] = None, **kwargs: Any) -> None:
        Invoker.__init__(self, tracer, *args, **kwargs)
        self.group = group

    def execute(self, code: Any) -> None:
        Invoker.execute(self, code)
        mediators = self.tracer.envoy.interleaver.mediators
        mediators[-1].mi_group = self.group
        pending = getattr(self.tracer, "_mi_pending", None)
        if pending and mediators[-1].batch_group is not None:
            mediators[:0] = pending  # ours first (see RoutingRun.execute)
            self.tracer._mi_pending = None


class RoutingRun(InterleavingTracer):
    """The part of `RoutingTracer` that runs where the model is (here, or on a server).

    State: `_mi_plan` (the compiled plan), `_mi_store` (results), `_mi_generating`,
    `_mi_keep_output`, `_mi_ship` (send the results back as a saved value),
    `_mi_per_row`, `_mi_groups`.
    """

    def invoke(self, *args: Any, group: Optional[str] = None, **kwargs: Any) -> RoutingInvoker:
        """Like nnsight's `tracer.invoke`; `group` labels these rows in `tr.routing`."""
        return RoutingInvoker(self, *args, group=group, **kwargs)

    def _mi_rows(self) -> list:
        groups = [m for m in self.envoy.interleaver.mediators if m.batch_group is not None]
        if not groups:
            raise ValueError("mi.trace got no inputs: pass them to mi.trace(model, inputs, ...) "
                             "or use `with tr.invoke(inputs):` inside the block")
        if self._mi_per_row:  # every batch row its own group (mi.profile's per-item counts)
            rows = [(start + i, 1) for m in groups for start, size in [m.batch_group] for i in range(size)]
            self._mi_groups = self._mi_groups or [str(i) for i in range(len(rows))]
            self._mi_store["groups"] = self._mi_groups
            return rows
        if not self._mi_groups:
            labels = [getattr(m, "mi_group", None) for m in groups]
            default = ["default"] if len(groups) == 1 else [f"invoke{i}" for i in range(len(groups))]
            labels = [label or fallback for label, fallback in zip(labels, default)]
            if len(set(labels)) != len(labels):
                raise ValueError(f"invoke groups must be distinct, got {labels}")
            self._mi_groups = labels
            self._mi_store["groups"] = labels
        return [tuple(m.batch_group) for m in groups]

    def execute(self, code: Any) -> None:
        store = self._mi_store
        workers = []
        # A plan with nothing to do gets no worker: it would never wait on the model.
        if self._mi_plan["layers"]:
            steps = self.iter[:] if self._mi_generating else range(1)
            workers.append(Mediator(_body(_run_worker), {}, {"__mi_run__": run_plan, "__mi_args__": dict(
                root=self.envoy, plan=self._mi_plan, store=store, steps=steps, row_groups=self._mi_rows,
                stop=(OutOfOrderError,))}))
        if self._mi_keep_output:
            workers.append(Mediator(_body(_keep_worker), {}, {"__mi_keep__": keep_result, "__mi_args__": dict(
                root=self.envoy, tracer=self, store=store)}))
        # Ours first: at a shared location the user's code then sees the steered values.
        if self.envoy._batch_size(*self.args, **self.kwargs):
            self.envoy.interleaver.mediators[:0] = workers
        else:
            # Invoke mode: the first invoke with rows places them, so that a trace given no
            # inputs at all fails as nnsight's own does, before any forward.
            self._mi_pending = workers
        InterleavingTracer.execute(self, code)
        if self._mi_ship:
            # Only saved values in the block's frame travel back from a server.
            _push(self.info.frame, {RESULT_NAME: _save(pack(store))})


class RoutingTracer(RoutingRun):
    """nnsight's tracer plus `moe_interp`'s compiled interventions and their results.

    After the block: `routing` (a `RoutingStats`, when a `RouterRecord` was given),
    `output` (the model's return value; for `mi.generate`, the token ids), `text`
    (`mi.generate` only: the decoded continuations).
    """

    _CLIENT_ONLY = ("_mi_spec", "_mi_tokenizer", "_mi_routing")

    def invoke(self, *args: Any, group: Optional[str] = None, **kwargs: Any) -> RoutingInvoker:
        """Like nnsight's `tracer.invoke`; `group` labels these rows in `tr.routing`. Its
        inputs are checked as `mi.trace`'s are, before the model runs."""
        # A plain `nnsight.NNsight` module (no Hugging Face config) takes whatever its forward
        # takes (e.g. hidden states): only Hugging Face models get the text/token checks.
        if args and getattr(getattr(self.envoy, "_module", None), "config", None) is not None:
            _check_inputs(args[0])
            _check_tokens(self.envoy, args[0], {**self.kwargs, **kwargs}, self._mi_generating)
        return RoutingRun.invoke(self, *args, group=group, **kwargs)

    def _mi_setup(self, spec: Any, plan: dict, generating: bool, tokenizer: Any, ship: bool = False,
                  keep_output: bool = True) -> None:
        self._mi_spec, self._mi_plan, self._mi_generating, self._mi_tokenizer = spec, plan, generating, tokenizer
        self._mi_store: dict = {"forwards": 0, "per_token": []}
        self._mi_groups: list[str] = []
        self._mi_routing: RoutingStats | None = None
        self._mi_per_row = False
        self._mi_ship, self._mi_keep_output = ship, keep_output

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # A request carries a RoutingRun: the server needs nothing of the client side
        # (stats, spec, tokenizer), whose imports it would refuse.
        state = {k: v for k, v in self.__getstate__().items() if k not in self._CLIENT_ONLY}
        return copyreg._reconstructor, (RoutingRun, object, None), state

    def _mi_take(self, packed: dict) -> None:
        """Adopt the results a remote run sent back (see `kernels.pack`)."""
        store = dict(packed)
        if "count" in store:
            store["count"] = store["count"].long()
        self._mi_store = store
        self._mi_groups = list(store.get("groups", self._mi_groups))

    # -- results -------------------------------------------------------------------

    @property
    def output(self) -> Any:
        """The model's return value (`.logits` for a forward; token ids for `generate`)."""
        if "withheld" in self._mi_store:
            raise self._mi_store["withheld"]
        if "result" not in self._mi_store:
            if not self._mi_keep_output:
                raise RuntimeError("this remote trace did not send the model output back (it can be large): "
                                   "pass keep_output=True to mi.trace, or save what you need in the block")
            raise RuntimeError("no output yet: read tr.output after the `with` block has finished")
        return self._mi_store["result"]

    @property
    def routing(self) -> RoutingStats:
        """`RoutingStats` of this trace: one group per invoke ("default" for direct inputs)."""
        if "withheld" in self._mi_store:
            raise self._mi_store["withheld"]
        if self._mi_routing is None:
            if not self._mi_plan["record"]:
                raise AttributeError("this trace recorded no routing: add mi.RouterRecord() to its interventions")
            if "count" not in self._mi_store:
                raise RuntimeError("no routing yet: read tr.routing after the `with` block has finished")
            groups = self._mi_store.get("groups", self._mi_groups)
            self._mi_routing = _to_stats(self._mi_spec, self._mi_plan, self._mi_store, groups)
        return self._mi_routing

    @property
    def text(self) -> list[str]:
        """Decoded continuations (new tokens only), one per prompt row."""
        if not self._mi_generating:
            raise AttributeError("text is only set by mi.generate")
        ids = self.output[:, self._mi_store["input_length"]:]
        return self._mi_tokenizer.batch_decode(ids, skip_special_tokens=True)


def _shipped(inner: Backend, tracer: Any, ship: bool = True) -> Any:
    """Run a request through `inner` with `moe_interp` registered for by-value shipping."""
    registered = ship and _register_by_value()
    try:
        return inner(tracer)
    finally:
        if registered:
            _unregister_by_value()


class _Collect(Backend):
    """Wraps the tracer's backend: ships `moe_interp` by value for a remote request and
    adopts the results the request sent back (`RESULT_NAME` among the saved values)."""

    def __init__(self, inner: Backend, ship: bool) -> None:
        self.inner, self.ship = inner, ship

    def __call__(self, tracer: Any) -> Any:
        with model_lock(tracer.envoy):
            result = _shipped(self.inner, tracer, self.ship)
        if isinstance(result, dict) and RESULT_NAME in result:
            tracer._mi_take(result[RESULT_NAME])
        try:
            check_held(tracer._mi_plan, tracer._mi_store)
        except RerouteNotHeld as error:
            tracer._mi_store["withheld"] = error  # tr.output / tr.routing raise it too
            raise
        return result


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The lock that `mi.trace`/`mi.generate` hold while `model` runs.

    nnsight keeps one interleaver per model: two threads running traces of the same model
    at once mix up their workers (seen: "parent cannot be on a different thread", and
    traces that return no routing). So traces of one model run one at a time; reentrant,
    for a trace started from inside another on the same thread.
    """
    key = getattr(model, "_module", model)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.RLock()
    return lock


_PACKAGE = __name__.split(".")[0]


def _register_by_value() -> bool:
    """Register this package for by-value pickling (`nnsight.register`) unless it is already."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    import nnsight

    if _PACKAGE in _PICKLE_BY_VALUE_MODULES:
        return False
    nnsight.register(_PACKAGE)
    return True


def _unregister_by_value() -> None:
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    _PICKLE_BY_VALUE_MODULES.discard(_PACKAGE)


def _profile_run(model: Any, texts: Any, plan: dict, trace_kwargs: dict) -> RoutingRun:
    """One profiling batch's tracer, built where the model is (inside a session, on a server
    too): `RouterRecord` plan, one stats group per text, results left in `_mi_store`."""
    run = model.trace(texts, tracer_cls=RoutingRun, **trace_kwargs)
    run._mi_plan, run._mi_generating = plan, False
    run._mi_store = {"forwards": 0, "per_token": []}
    run._mi_groups = []
    run._mi_per_row, run._mi_ship, run._mi_keep_output = True, False, False
    return run


def profile_session(model: Any, batches: list, plan: dict, num_languages: int, session_kwargs: dict,
                    trace_kwargs: dict) -> dict:
    """Run many profiling batches in ONE session request; return what `kernels.profile_finish` packs.

    `batches` is `[(inputs, language_index_tensor), ...]`, inputs as `mi.trace` takes them
    (`mi.profile` sends token-id dicts: a row may be a window of a long text). The session
    body below is what travels (as source): it references only the model, plain data, `_profile_run`
    (builds a `RoutingRun`), the `kernels.profile_*` functions, torch and nnsight's `save`,
    never the `moe_interp` package as a whole.
    """
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
            profile_batch(run._mi_store, languages, acc)
        __moe_interp__ = _save(profile_finish(acc))  # noqa: F841  (travels back as RESULT_NAME)
    return collect.result


class _SessionCollect(Backend):
    """A session's backend: ships `moe_interp` by value and keeps the returned `RESULT_NAME`."""

    def __init__(self, inner: Backend, model: Any) -> None:
        self.inner, self.model, self.result = inner, model, None

    def __call__(self, tracer: Any) -> Any:
        with model_lock(self.model):
            returned = _shipped(self.inner, tracer)
        if isinstance(returned, dict) and RESULT_NAME in returned:
            self.result = returned[RESULT_NAME]
        elif tracer.info is not None and tracer.info.frame is not None:
            self.result = tracer.info.frame.f_locals.get(RESULT_NAME)
        if self.result is None:
            raise RuntimeError("the profiling session sent no results back (a non-blocking request?)")
        return returned


def _to_stats(spec: Any, plan: dict, store: dict, groups: list[str]) -> RoutingStats:
    layers = [entry["layer"] for entry in plan["layers"]]
    per_token = None
    if store["per_token"]:
        per_token = compact(store["per_token"])
    return RoutingStats(tuple(groups), tuple(layers), spec.num_experts, spec.top_k, store["count"].cpu(),
                        store["gate_mass"].cpu(), store["tokens"].cpu(),
                        meta={"arch": spec.arch, "forwards": store["forwards"]}, per_token=per_token)


_INPUT_HELP = ("inputs must be a string, a list of strings, a token-id tensor [batch, seq], or a tokenizer "
               "output (dict / BatchEncoding with input_ids and attention_mask)")


def _check_inputs(inputs: Any) -> None:
    if isinstance(inputs, str) or isinstance(inputs, torch.Tensor):
        if isinstance(inputs, torch.Tensor) and (inputs.dtype.is_floating_point or inputs.ndim not in (1, 2)):
            raise TypeError(f"{_INPUT_HELP}; got a {inputs.dtype} tensor of shape {tuple(inputs.shape)}")
    elif isinstance(inputs, (list, tuple)) and not inputs:
        raise ValueError("an empty list of texts has nothing to route: pass at least one non-empty text")
    elif isinstance(inputs, (list, tuple)) and all(isinstance(x, str) for x in inputs):
        pass
    elif not (hasattr(inputs, "keys") and "input_ids" in inputs):
        raise TypeError(f"{_INPUT_HELP}; got {type(inputs).__name__}")
    texts = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, (list, tuple)) else []
    empty = [i for i, text in enumerate(texts) if not text]
    if empty:
        raise ValueError(f"text {empty[0]} is empty (''): it has no tokens to route. Drop empty texts first")


def _max_positions(model: Any) -> Optional[int]:
    config = getattr(getattr(model, "_module", None), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _token_ids(model: Any, inputs: Any, kwargs: dict) -> tuple:
    """`(input_ids [B, S], attention_mask or None)` as the model will get them (texts tokenized
    with the tokenizer options nnsight passes on: `truncation`, `max_length`, `add_special_tokens`)."""
    if isinstance(inputs, torch.Tensor):
        return inputs if inputs.ndim == 2 else inputs[None], None
    if hasattr(inputs, "keys"):
        ids, mask = torch.as_tensor(inputs["input_ids"]), inputs.get("attention_mask")
        ids = ids if ids.ndim == 2 else ids[None]
        return ids, None if mask is None else torch.as_tensor(mask).reshape(ids.shape)
    options = {k: kwargs[k] for k in ("truncation", "max_length", "add_special_tokens") if k in kwargs}
    if not options.get("truncation"):
        options.pop("max_length", None)  # without truncation it only names the generation length
    if getattr(model, "tokenizer", None) is None:
        return None, None  # nnsight will say it cannot tokenize
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt", **options)
    return encoded["input_ids"], encoded["attention_mask"]


def _check_tokens(model: Any, inputs: Any, kwargs: dict, generating: bool) -> None:
    """Refuse, before any forward, inputs the model cannot run as given: rows without a real
    token, token ids outside its vocabulary, sequences longer than its positions."""
    ids, mask = _token_ids(model, inputs, kwargs)
    if ids is None:
        return
    lengths = [ids.shape[-1]] * ids.shape[0] if mask is None else (mask > 0).sum(-1).tolist()
    if not lengths or 0 in lengths:
        row = lengths.index(0) if 0 in lengths else 0
        raise ValueError(f"input row {row} has no tokens (an empty sequence, or an attention_mask of zeros): "
                         "nothing to route. Drop empty rows first")
    module = getattr(model, "_module", None)
    try:
        embeddings = module.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a Hugging Face model, or one without token embeddings
        embeddings = None
    vocab = getattr(embeddings, "num_embeddings", None)
    low, high = (int(v) for v in torch.aminmax(ids))
    if vocab is not None and (low < 0 or high >= vocab):
        raise ValueError(f"token id {low if low < 0 else high} is outside this model's vocabulary (ids 0-{vocab - 1}): "
                         "encode the text with this model's tokenizer (model.tokenizer)")
    limit = _max_positions(model)
    if limit is None:
        return
    length = max(lengths)
    new = kwargs.get("max_new_tokens", getattr(getattr(module, "generation_config", None), "max_new_tokens", None))
    if generating and new and length + new > limit:
        raise ValueError(f"a prompt of {length} tokens plus max_new_tokens={new} runs past this model's "
                         f"{limit} positions (max_position_embeddings): lower max_new_tokens to {limit - length} "
                         f"or shorten the prompt (truncation=True, max_length=...)")
    if length > limit:
        raise ValueError(f"an input of {length} tokens is longer than this model's {limit} positions "
                         f"(max_position_embeddings), and would run past them silently: shorten it, or pass "
                         f"truncation=True, max_length={limit - (new or 0) if generating else limit} (mi.trace, "
                         "mi.generate, mi.profile and tr.invoke take them) to keep the first tokens")


def _split(args: tuple) -> tuple[tuple, list[Intervention]]:
    inputs = []
    for i, arg in enumerate(args):
        is_intervention = isinstance(arg, Intervention) or (
            isinstance(arg, (list, tuple)) and arg and all(isinstance(x, Intervention) for x in arg))
        if is_intervention:
            return tuple(inputs), flatten(args[i:])
        if inputs:
            raise TypeError(f"mi.trace takes one input then interventions; got a second input of type "
                            f"{type(arg).__name__}. Batch several prompts as a list, or use tr.invoke")
        _check_inputs(arg)
        inputs.append(arg)
    return tuple(inputs), []


def _eos_ids(model: Any, inputs: tuple, kwargs: dict) -> list[int]:
    """The ids that end a generated row (the call's `eos_token_id`, else the model's): after
    one, `RouterRecord` stops counting the row (`kernels.drop_finished`)."""
    if any(kwargs.get(name) for name in ("stop_strings", "stopping_criteria")) and not (
            inputs and isinstance(inputs[0], str)):
        raise ValueError("mi.generate with RouterRecord tells that a row has ended by its EOS token only; with "
                         "stop_strings / stopping_criteria the rows that stop first would be counted past their "
                         "end. Generate one prompt per call, or stop on eos_token_id=")
    eos = kwargs.get("eos_token_id")
    for source in (kwargs.get("generation_config"), getattr(model._module, "generation_config", None),
                   getattr(model._module, "config", None)):
        if eos is None:
            eos = getattr(source, "eos_token_id", None)
    return [int(i) for i in ([eos] if isinstance(eos, int) else list(eos or []))]


def _open(model: Any, args: tuple, fn: Any, generating: bool, kwargs: dict) -> RoutingTracer:
    spec = describe(model)
    inputs, interventions = _split(args)
    for data in inputs:
        _check_tokens(model, data, kwargs, generating)
    module = getattr(model, "_module", None)
    ship = bool(kwargs.get("remote")) or kwargs.get("backend") is not None
    local = not ship and isinstance(module, torch.nn.Module)
    check = pending_check(spec, module) if local else None  # the first trace checks auto-detection
    plan = compile_plan(spec, interventions, router_groups(spec, module) if module is not None else None,
                        verify=check is not None)
    if generating and plan["record"]:
        plan["eos"] = _eos_ids(model, inputs, kwargs)
    keep_output = kwargs.pop("keep_output", None)
    if local:
        place(plan, module)
    if keep_output is None:  # locally the output costs nothing; remotely a trace's logits are large
        keep_output = generating or not ship
    tracer = model.trace(*inputs, fn=fn, tracer_cls=RoutingTracer, **kwargs)
    tracer._mi_setup(spec, plan, generating, getattr(model, "tokenizer", None), ship=ship,
                     keep_output=bool(keep_output))
    tracer.backend = _Collect(tracer.backend if check is None else _Checked(tracer.backend, check), ship)
    return tracer


class _Checked(Backend):
    """Runs a trace under `arch.ExpertsCheck`: its first forward's routing as read must equal
    what the experts received. On a mismatch the tracer keeps no counts to return."""

    def __init__(self, inner: Any, check: Any) -> None:
        self.inner, self.check = inner, check

    def __call__(self, tracer: Any) -> Any:
        with self.check:  # hooks off again whatever happens in the forward
            result = self.inner(tracer)
        store = tracer._mi_store
        try:
            self.check.compare(store.pop("verify", []))
        except Exception:
            store.clear()
            store.update(forwards=0, per_token=[])
            raise
        return result


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
    >>> with mi.trace(model, ["Hello", "Bonjour tout le monde"], mi.RouterRecord()) as tr:
    ...     logits = model.lm_head.output.save()
    >>> tr.routing.languages, tr.output.logits.shape[0]
    (('default',), 2)
    >>> with mi.trace(model, mi.RouterRecord()) as tr:
    ...     with tr.invoke("Hello", group="en"):
    ...         pass
    ...     with tr.invoke("Hallo Welt", group="de"):
    ...         pass
    >>> tr.routing.languages
    ('en', 'de')
    ```
    """
    return _open(model, args, None, False, kwargs)


def generate(model: Any, *args: Any, **kwargs: Any) -> RoutingTracer:
    """Like `trace`, around the model's `generate`; interventions apply at every step.

    `mi.generate(model, prompt, *interventions, max_new_tokens=..., **generate_kwargs)`.
    After the block: `gen.text` (decoded continuations), `gen.output` (token ids),
    `gen.routing` (prompt and generated tokens, when a `RouterRecord` was given).
    A row that produces an EOS token (`eos_token_id`, else the model's) stops counting
    there, although a batch goes on feeding it (the EOS, then padding) until every row
    ends: counts equal generating each prompt alone. Rows ended otherwise
    (`stop_strings`, `stopping_criteria`) cannot be told apart, so those are refused with
    `RouterRecord` on more than one prompt.

    ```python
    >>> with mi.generate(model, "Once upon", mi.RouterRecord(), max_new_tokens=8, do_sample=False) as gen:
    ...     pass
    >>> len(gen.text), gen.routing.tokens.item() > 8
    (1, True)
    ```
    """
    bound = type(model).generate.__wrapped__.__get__(model)
    return _open(model, args, bound, True, kwargs)
