"""The tracer behind `mi.trace` and `mi.generate`: an nnsight tracing context that also runs
the compiled plan, and returns the routing it recorded as counts.

The user gets nnsight's own tracer (a subclass, `RoutingTracer`), so the body of the
`with` block is ordinary nnsight code. Before the model runs, the tracer adds one worker
of its own that executes the compiled plan (`moe_interp.runtime._kernels.run`) beside the user's
code, and a second that keeps the model's return value. Both are whole-batch workers;
per-invoke statistics come from each invoke's rows.

Remote runs (`remote=True` on NDIF, `remote="local"` to simulate): nnsight pickles the
tracer itself and the server calls its `execute`. What travels is `RoutingRun`, the
part of the tracer that runs where the model is: its methods use only nnsight, torch
and `moe_interp.runtime._kernels` (whitelisted imports); this layer never imports the analyses
(`_shipping` ships the package by value and adopts the results sent back); the model
output travels only with `keep_output=True` (default for `mi.generate`: token ids are
small; logits are not).
"""

import copyreg
from typing import Any, Optional

import torch
from nnsight.intervention.tracer import InterleavingTracer, Invoker

from moe_interp.runtime._nnsight_compat import (OutOfOrderError, batch_media, batch_size, invoke_mediators, mediators, put_first,
                              send_back, undecorated_generate, worker)
from moe_interp.runtime._inputs import check_inputs, check_tokens
from moe_interp.runtime._shipping import RESULT_NAME, Collect, check_servable, model_lock
from moe_interp.arch import describe
from moe_interp.arch._verify import pending_check
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._edits import SteerKind
from moe_interp.runtime._interventions import Intervention, flatten
from moe_interp.runtime._kernels import compact, keep_result, pack, run as run_plan
from moe_interp.core._counts import RoutingCounts

__all__ = ["RoutingRun", "RoutingTracer", "open_trace", "per_row_trace", "to_counts"]


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
        batch_media(self.tracer)  # invokes with images batch too (nnsight refuses them)
        Invoker.execute(self, code)
        mine = mediators(self.tracer)[-1]
        mine.mi_group = self.group
        pending = getattr(self.tracer, "_mi_pending", None)
        if pending and mine.batch_group is not None:
            put_first(self.tracer, pending)  # ours first (see RoutingRun.execute)
            self.tracer._mi_pending = None


class RoutingRun(InterleavingTracer):
    """The part of `RoutingTracer` that runs where the model is (here, or on a server).

    State: `_mi_plan` (the compiled plan), `_mi_store` (results), `_mi_generating`,
    `_mi_keep_output`, `_mi_ship` (send the results back as a saved value),
    `_mi_per_row`, `_mi_groups`; all set by `_mi_start`.
    """

    def _mi_start(self, plan: Any, generating: bool = False, ship: bool = False, keep_output: bool = False,
                  per_row: bool = False) -> None:
        """Set the state a run needs: `plan` to execute, empty results; `per_row`: every batch
        row its own stats group (`mi.profile`'s per-text counts)."""
        self._mi_plan, self._mi_generating = plan, generating
        self._mi_store = {"forwards": 0, "per_token": []}
        self._mi_groups = []
        self._mi_per_row, self._mi_ship, self._mi_keep_output = per_row, ship, keep_output

    def invoke(self, *args: Any, group: Optional[str] = None, **kwargs: Any) -> RoutingInvoker:
        """Like nnsight's `tracer.invoke`; `group` labels these rows in `tr.routing`."""
        return RoutingInvoker(self, *args, group=group, **kwargs)

    def _mi_rows(self) -> list:
        groups = invoke_mediators(self)
        if not groups:
            raise ValueError("mi.trace got no inputs: pass them to mi.trace(model, inputs, ...) "
                             "or use `with tr.invoke(inputs):` inside the block")
        if self._mi_per_row:  # every batch row its own group (mi.profile's per-item counts)
            rows = [(start + i, 1) for m in groups for start, size in [m.batch_group] for i in range(size)]
            self._mi_groups = self._mi_groups or self._mi_plan.labels([str(i) for i in range(len(rows))])
            self._mi_store["groups"] = self._mi_groups
            return rows
        if not self._mi_groups:
            labels = [getattr(m, "mi_group", None) for m in groups]
            default = ["default"] if len(groups) == 1 else [f"invoke{i}" for i in range(len(groups))]
            labels = [label or fallback for label, fallback in zip(labels, default)]
            if len(set(labels)) != len(labels):
                raise ValueError(f"invoke groups must be distinct, got {labels}")
            # RouterRecord(by_modality=, by_token_kind=, by_position=): kernels.token_kinds' group order
            labels = self._mi_plan.labels(labels)
            self._mi_groups = labels
            self._mi_store["groups"] = labels
        return [tuple(m.batch_group) for m in groups]

    def execute(self, code: Any) -> None:
        store = self._mi_store
        workers = []
        # A plan with nothing to do gets no worker: it would never wait on the model.
        if self._mi_plan.layers:
            steps = self.iter[:] if self._mi_generating else range(1)
            workers.append(worker(_body(_run_worker), {"__mi_run__": run_plan, "__mi_args__": dict(
                root=self.envoy, plan=self._mi_plan, store=store, steps=steps, row_groups=self._mi_rows,
                stop=(OutOfOrderError,))}))
        if self._mi_keep_output:
            workers.append(worker(_body(_keep_worker), {"__mi_keep__": keep_result, "__mi_args__": dict(
                root=self.envoy, tracer=self, store=store)}))
        # Ours first: at a shared location the user's code then sees the steered values.
        if batch_size(self):
            put_first(self, workers)
        else:
            # Invoke mode: the first invoke with rows places them, so that a trace given no
            # inputs at all fails as nnsight's own does, before any forward.
            self._mi_pending = workers
        InterleavingTracer.execute(self, code)
        if self._mi_ship:
            # Only saved values in the block's frame travel back from a server.
            send_back(self, RESULT_NAME, pack(store))


class RoutingTracer(RoutingRun):
    """nnsight's tracer plus `moe_interp`'s compiled interventions and their results.

    After the block: `routing` (the recorded counts, when a `RouterRecord` was given: a
    `RoutingStats` from `mi.trace`, which passes it as `wrap`),
    `output` (the model's return value; for `mi.generate`, the token ids), `text`
    (`mi.generate` only: the decoded continuations).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, mi.RouterRecord()) as tr:
    ...     with tr.invoke("Hello", group="en"):
    ...         pass
    >>> type(tr).__name__, tr.routing.groups, tr.output.logits.shape
    ('RoutingTracer', ('en',), torch.Size([1, 5, 259]))

    ```
    """

    _CLIENT_ONLY = ("_mi_spec", "_mi_tokenizer", "_mi_routing", "_mi_wrap")

    def invoke(self, *args: Any, group: Optional[str] = None, **kwargs: Any) -> RoutingInvoker:
        """Like nnsight's `tracer.invoke`; `group` labels these rows in `tr.routing`. Its
        inputs are checked as `mi.trace`'s are, before the model runs."""
        # A plain `nnsight.NNsight` module (no Hugging Face config) takes whatever its forward
        # takes (e.g. hidden states): only Hugging Face models get the text/token checks.
        if args and getattr(getattr(self.envoy, "_module", None), "config", None) is not None:
            check_inputs(args[0])
            check_tokens(self.envoy, args[0], {**self.kwargs, **kwargs}, self._mi_generating)
        return RoutingRun.invoke(self, *args, group=group, **kwargs)

    def _mi_setup(self, spec: Any, plan: Any, generating: bool, tokenizer: Any, ship: bool = False,
                  keep_output: bool = True, per_row: bool = False, wrap: Any = None) -> None:
        self._mi_start(plan, generating, ship, keep_output, per_row)
        self._mi_spec, self._mi_tokenizer = spec, tokenizer
        self._mi_wrap = wrap or _unwrapped
        self._mi_routing: Any = None

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # A request carries a RoutingRun: the server needs nothing of the client side
        # (stats, spec, tokenizer), whose imports it would refuse.
        state = {k: v for k, v in self.__getstate__().items() if k not in self._CLIENT_ONLY}
        return copyreg._reconstructor, (RoutingRun, object, None), state

    def _mi_take(self, packed: dict) -> None:
        """Adopt the results a remote run sent back (see `kernels.pack`)."""
        store = dict(packed)
        for name in ("count", "co_activation"):
            if name in store:
                store[name] = store[name].long()
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
    def routing(self) -> Any:
        """The routing of this trace (`wrap` of its `RoutingCounts`; `mi.trace`: a
        `RoutingStats`): one group per invoke ("default" for direct inputs)."""
        if self._mi_routing is None:
            self._mi_recorded()
            if self._mi_spec.stack_inputs is not None:
                raise ValueError(f"this {self._mi_spec.arch} model routes {len(set(self._mi_spec.stacks))} stacks of "
                                 f"different tokens ({', '.join(dict.fromkeys(self._mi_spec.stacks))}: e.g. the source "
                                 "and the target of a translation): read one RoutingStats per stack, "
                                 "tr.routing_by_stack['encoder'] / ['decoder']")
            groups = self._mi_store.get("groups", self._mi_groups)
            self._mi_routing = self._mi_wrap(to_counts(self._mi_spec, self._mi_plan, self._mi_store, groups))
        return self._mi_routing

    @property
    def routing_by_stack(self) -> dict:
        """`{stack: routing}` of a model with several stacks (an encoder and a decoder, see
        `mi.describe(model).stacks`): each counts its own stack's tokens and layers (global
        indices, `stacks` labels), groups as in `routing`. A single-stack model gives its one."""
        self._mi_recorded()
        spec, groups = self._mi_spec, self._mi_store.get("groups", self._mi_groups)
        if spec.stack_inputs is None:
            return {(spec.stacks or ("default",))[0]: self.routing}
        return {stack: self._mi_wrap(to_counts(spec, self._mi_plan, self._mi_store, groups, stack))
                for stack in dict.fromkeys(spec.stacks)}

    def _mi_recorded(self) -> None:
        if "withheld" in self._mi_store:
            raise self._mi_store["withheld"]
        if not self._mi_plan.record:
            raise AttributeError("this trace recorded no routing: add mi.RouterRecord() to its interventions")
        if "count" not in self._mi_store:
            raise RuntimeError("no routing yet: read tr.routing after the `with` block has finished")
        mass = self._mi_store["gate_mass"]
        if not bool(torch.isfinite(mass).all()):
            plan = self._mi_plan
            layers = sorted({plan.layers[i].layer for i in torch.nonzero(~torch.isfinite(mass))[:, 1].tolist()})
            steered = [entry.layer for entry in plan.layers
                       if any(isinstance(e.kind, SteerKind) for _, edits in entry.edits for e in edits)]
            cause = (f"the steers of layers {steered} made the router's scores overflow: lower their scale, so "
                     "that |scale * s| times the largest router score stays below the largest value of its dtype "
                     "(moe_interp.runtime._interventions.steer_limit)" if steered else
                     "the model's router produced them (e.g. an overflow in half precision): run it in float32")
            raise ValueError(f"the routing weights of layers {layers} were NaN or inf in this trace, so its outputs "
                             f"are NaN too: {cause}")

    @property
    def text(self) -> list[str]:
        """Decoded continuations (new tokens only), one per prompt row."""
        if not self._mi_generating:
            raise AttributeError("text is only set by mi.generate")
        ids = self.output[:, self._mi_store["input_length"]:]
        return self._mi_tokenizer.batch_decode(ids, skip_special_tokens=True)


def _unwrapped(counts: RoutingCounts) -> RoutingCounts:
    return counts


def to_counts(spec: Any, plan: Any, store: dict, groups: list[str], stack: Optional[str] = None) -> RoutingCounts:
    """The `RoutingCounts` of a run's `store` (what `_kernels.forward_step` filled for `plan`),
    one group per label of `groups`; with `stack`, of that stack's layers and tokens only. The
    tracer's `routing` and `runtime._hooks`' read both end here.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._compile import compile_plan
    >>> from moe_interp.runtime._tracer import to_counts
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))            # 4 MoE layers, 8 experts
    >>> plan = compile_plan(spec, [mi.RouterRecord()])
    >>> store = {"count": torch.ones(1, 4, 8, dtype=torch.long), "gate_mass": torch.zeros(1, 4, 8, dtype=torch.float64),
    ...          "tokens": torch.tensor([4]), "forwards": 1, "per_token": []}
    >>> counts = to_counts(spec, plan, store, ["en"])
    >>> counts.groups, counts.layers, counts.count.shape
    (('en',), (0, 1, 2, 3), torch.Size([1, 4, 8]))

    ```
    """
    labels = [spec.stacks[spec.position(entry.layer)] if spec.stacks else None for entry in plan.layers]
    keep = [i for i, label in enumerate(labels) if stack is None or label == stack]
    tokens = store["tokens"] if stack is None else store["stack_tokens"][plan.layers[keep[0]].tokens_from]
    per_token = None
    if store["per_token"]:
        per_token = compact(store["per_token"])
    return RoutingCounts(tuple(groups), tuple(plan.layers[i].layer for i in keep), spec.num_experts, spec.top_k,
                        store["count"][:, keep].cpu(), store["gate_mass"][:, keep].cpu(), tokens.cpu(),
                        meta={"arch": spec.arch, "forwards": store["forwards"]}, per_token=per_token,
                        stacks=tuple(labels[i] for i in keep) if all(labels) else None,
                        co_activation=store["co_activation"][:, keep].cpu() if "co_activation" in store else None,
                        entropy_sum=store["entropy"][:, keep].cpu() if "entropy" in store else None)


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
        check_inputs(arg)
        inputs.append(arg)
    return tuple(inputs), []


def open_trace(model: Any, args: tuple, kwargs: dict, generating: bool = False, per_row: bool = False,
               wrap: Any = None) -> RoutingTracer:
    """Open a `RoutingTracer` on `model`: `args` are `mi.trace`'s (one input, then interventions),
    `kwargs` the model's; `generating` traces its `generate`, `per_row` makes every batch row
    its own group, `wrap` is what `tr.routing` makes of the recorded `RoutingCounts`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._tracer import open_trace
    >>> with open_trace(mi.zoo.tiny_model("qwen3_moe"), ("Hello", mi.RouterRecord()), {}) as tr:
    ...     pass
    >>> type(tr.routing).__name__, tr.routing.tokens.tolist()     # counts: no analyses in the runtime
    ('RoutingCounts', [5])

    ```
    """
    spec = describe(model)
    inputs, interventions = _split(args)
    with model_lock(model):  # it tokenizes texts: see _shipping.tokenize
        for data in inputs:
            check_tokens(model, data, kwargs, generating)
    module = getattr(model, "_module", None)
    check_servable(model, kwargs.get("remote"))
    ship = bool(kwargs.get("remote")) or kwargs.get("backend") is not None
    local = not ship and isinstance(module, torch.nn.Module)
    check = pending_check(spec, module) if local else None  # the first trace checks auto-detection
    plan = compile_plan(spec, interventions, model if module is not None else None, verify=check is not None,
                        generation=(inputs[0] if inputs else None, kwargs) if generating else None, on_device=local)
    keep_output = kwargs.pop("keep_output", None)
    if keep_output is None:  # locally the output costs nothing; remotely a trace's logits are large
        keep_output = generating or not ship
    fn = undecorated_generate(model) if generating else None
    tracer = model.trace(*inputs, fn=fn, tracer_cls=RoutingTracer, **kwargs)
    tracer._mi_setup(spec, plan, generating, getattr(model, "tokenizer", None), ship=ship,
                     keep_output=bool(keep_output), per_row=per_row, wrap=wrap)
    tracer.backend = Collect(tracer.backend, ship, check)
    return tracer

def per_row_trace(model: Any, *args: Any, **kwargs: Any) -> RoutingTracer:
    """`trace`, with every batch row its own stats group (named `"0"`, `"1"`, ...): what
    `mi.profile` runs per batch, for its per-text counts.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._tracer import per_row_trace
    >>> with per_row_trace(mi.zoo.tiny_model("qwen3_moe"), ["Hello", "Hi there"], mi.RouterRecord()) as tr:
    ...     pass
    >>> tr.routing.groups, tr.routing.tokens.tolist()
    (('0', '1'), [5, 8])

    ```
    """
    return open_trace(model, args, kwargs, per_row=True)
