"""Routing read through torch hooks: one local batch of `mi.profile` without an nnsight trace.

An nnsight trace costs time of its own on every forward (its workers, a switch to them at every
value it serves); on the demo model `mi.profile` ran at 0.88 of a plain forward's tokens/s,
and a trace was most of the gap. `hooked_trace` keeps, with torch hooks, the values the trace
would serve, and hands them to the same code after the forward: the same plan
(`_compile.compile_plan`), the one reader of routing (`_reader.routing`, through each layer's
readout kind, `arch._sites.Readout`) and the same kernels (`_kernels.forward_step`: token
groups, padding, tallies). What the hooks keep stands in for the nnsight envoys: `.inputs`
(`(args, kwargs)`) and `.output` of the modules the plan names, as `_reader.read` takes them.

The model runs on the inputs a trace would give it: nnsight's own batcher builds them (mask-
derived position ids for left padding, ...; the steps of `Envoy.interleave`), moved to the
model's device. The forward holds the model's lock (`_shipping.model_lock`, held by every local
trace of the model, so traces in other threads wait), and the hooks keep only this thread's
calls, each module's first call (the call a trace serves). A pre-hook runs after any the model
already has and a forward hook before them, so they see what the module's forward received and
returned, as a trace does. The values a readout site names are copied when the hook sees them
(an in-place change later in the forward cannot reach them, as it cannot reach a trace that
read them then); the other arguments are dropped, so no layer's hidden states outlive it.
Every hook is removed whatever happens in the forward.

The forward stops once every value the plan reads has been seen (`hooked_reader(stop_early=
True)`, the default; nnsight's `tracer.stop()` does the same in a trace): the hook that sees the
last one raises, and `_run` catches it. What would run after it (the last MoE layer's experts
when the routing is read at their arguments, the layers after the last MoE layer, the final
norm, the head) does not, and nothing it would compute is read, so the counts are those of the
whole forward (the tests compare both, bitwise, on the conformance matrix). It runs to the end
where something outside the model watches it: a torch hook anyone registered on any module,
or a global one, is owed the whole forward, and an accelerate hook that offloads weights
(`AlignDevicesHook(offload=True)`) puts them back in a post-forward a stop would skip.

Served: a plan that records (`RouterRecord`, per-token too) and edits nothing, on readout sites
that are a module's arguments or output (every built-in kind but JetMoe's `.source` ops), on
token-id inputs. Everything else returns None, and the caller runs the nnsight trace
(`_tracer.per_row_trace`), which serves it all: edits (steering, ablation: they write inside
the forward, often at `.source` ops no torch hook reaches), routing read at a `.source` op, the
first trace of an auto-detected model (its `arch.ExpertsCheck`), a model with nnsight edits
(`model.edit()`) or not dispatched yet, inputs other than token ids (images), remote runs, and
a batch whose gate mass came out NaN or inf (the trace then raises its error naming the cause).
"""

import threading
from collections.abc import Mapping
from typing import Any, Optional

import torch

from moe_interp.arch import describe
from moe_interp.arch._verify import pending_check
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._inputs import check_inputs, check_tokens
from moe_interp.runtime._interventions import flatten
from moe_interp.runtime._kernels import forward_step
from moe_interp.runtime._reader import ROUTING
from moe_interp.runtime._shipping import model_lock
from moe_interp.runtime._tracer import to_counts

__all__ = ["HookedReader", "HookedRun", "hooked_reader", "hooked_trace", "unserved"]

# the fields of a token-id input a hooked run takes (what mi.profile passes); anything else goes to a trace
_TOKEN_FIELDS = frozenset({"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"})
_WHOLE = None  # a module end kept whole (the model's, or a stack's, inputs: their token ids and mask)


def unserved(plan: Any) -> Optional[str]:
    """Why `hooked_trace` cannot run the compiled `plan` (`_plan.Plan`), or None when it can.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> from moe_interp.runtime._hooks import unserved
    >>> spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    >>> unserved(compile_plan(spec, [mi.RouterRecord()])) is None
    True
    >>> unserved(compile_plan(spec, [mi.RouterRecord(), mi.ExpertAblate({1: [3]})]))
    'it edits routing inside the forward'
    >>> unserved(compile_plan(mi.describe(mi.zoo.tiny_model("jetmoe")), [mi.RouterRecord()]))
    "layer 0 hands its routing over at ops of the router's source ('logits_topk_0',)"

    ```
    """
    if not plan.record:
        return "it records no routing"
    if plan.generating:
        return "it generates"
    if plan.verify:
        return "it checks the detection (the first trace of an auto-detected model)"
    if any(entry.edits or entry.rerouted is not None for entry in plan.layers):
        return "it edits routing inside the forward"
    if plan.entropy:
        return "it records routing entropy (RouterRecord(entropy=True) reads the router logits)"
    for entry in plan.layers:
        for site in _read_sites(entry):
            if site.ops:
                return f"layer {entry.layer} hands its routing over at ops of the router's source {site.ops}"
    return None


def _read_sites(entry: Any) -> list:
    """The sites `_reader.routing` reads for a `LayerPlan`, with grad on and off."""
    kinds = [entry.sites.used] + ([entry.no_grad.used] if entry.no_grad is not None else [])
    return [getattr(kind, field) for kind in kinds for field in kind.reads(ROUTING)]


class HookedRun:
    """What `hooked_trace` read: `routing` and `routing_by_stack`, the `RoutingCounts` a
    per-row `RoutingTracer` gives (every batch row its own group, `"0"`, `"1"`, ...), and
    `stopped`: the module whose hook ended the forward early, or None where it ran to its end.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._hooks import hooked_trace
    >>> model = mi.zoo.tiny_model("switch_transformers")
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> with mi.trace(model, {"input_ids": ids, "decoder_input_ids": ids}, mi.RouterRecord()):
    ...     pass                                         # the first trace checks the detection
    >>> with torch.no_grad():
    ...     run = hooked_trace(model, {"input_ids": ids, "decoder_input_ids": ids[:, :2]}, mi.RouterRecord())
    >>> {stack: counts.tokens.tolist() for stack, counts in run.routing_by_stack.items()}
    {'encoder': [3], 'decoder': [2]}

    ```
    """

    def __init__(self, spec: Any, plan: Any, store: dict, groups: list, stopped: Optional[str] = None) -> None:
        self._spec, self._plan, self._store, self._groups = spec, plan, store, groups
        self.stopped = stopped  # the module whose hook ended the forward early, or None (it ran to the end)

    @property
    def routing(self) -> Any:
        """The `RoutingCounts` of the batch (a model with one stack of layers)."""
        if self._spec.stack_inputs is not None:
            raise ValueError(f"this {self._spec.arch} model routes several stacks of different tokens: read "
                             "routing_by_stack['encoder'] / ['decoder']")
        return to_counts(self._spec, self._plan, self._store, self._groups)

    @property
    def routing_by_stack(self) -> dict:
        """`{stack: RoutingCounts}`, as `RoutingTracer.routing_by_stack`."""
        spec = self._spec
        if spec.stack_inputs is None:
            return {(spec.stacks or ("default",))[0]: self.routing}
        return {stack: to_counts(spec, self._plan, self._store, self._groups, stack)
                for stack in dict.fromkeys(spec.stacks)}


def hooked_reader(model: Any, *interventions: Any, stop_early: bool = True, **kwargs: Any) -> Optional["HookedReader"]:
    """A `HookedReader` of `interventions` on `model`, prepared once for many batches (the
    plan compiled, the modules to hook chosen), or None where only a trace serves them (see the
    module docstring; an auto-detected model's first trace, which checks the detection, is
    one: prepare again after it). `kwargs` go to the model. With `stop_early` (the default)
    each forward stops once every value the plan reads has been seen, as nnsight's
    `tracer.stop()` does: the layers after the last router read, the final norm and the head
    do not run, and nothing they would compute is read. It runs the whole forward instead where
    something else watches the model: a torch hook anyone registered (any module's forward or
    pre-forward hooks, or global ones) or an accelerate hook that offloads weights (whose
    post-forward puts them back).

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._hooks import hooked_reader
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> batch = {"input_ids": torch.tensor([[5, 6, 7]])}
    >>> with mi.trace(model, batch, mi.RouterRecord()):
    ...     pass                                         # the first trace checks the detection
    >>> reader = hooked_reader(model, mi.RouterRecord())
    >>> with torch.no_grad():
    ...     run = reader(batch)
    >>> run.routing.tokens.tolist(), run.stopped      # the forward stopped at the last layer's experts
    ([3], 'model.layers.3.mlp.experts')

    ```
    """
    module = getattr(model, "_module", None)
    kwargs = {k: v for k, v in kwargs.items() if k != "keep_output"}  # a hooked run keeps no output
    if (not isinstance(module, torch.nn.Module) or kwargs.get("remote") or kwargs.get("backend") is not None
            or getattr(model, "_edits", None) or not getattr(model, "dispatched", True)):
        return None
    spec = describe(model)
    if pending_check(spec, module) is not None:
        return None
    plan = compile_plan(spec, flatten(interventions), model, on_device=True)
    if unserved(plan) is not None:
        return None
    return HookedReader(model, spec, plan, kwargs, stop_early and _unwatched(module))


class HookedReader:
    """Reads the routing of one batch after another, as `hooked_trace` does, with the plan
    compiled once (`hooked_reader` makes one). Calling it with a batch returns a `HookedRun`,
    or None where the batch needs a trace (inputs other than token ids; a module the plan reads
    did not run; a gate mass that came out NaN or inf: the trace says why).

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._hooks import hooked_reader
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, {"input_ids": torch.tensor([[5]])}, mi.RouterRecord()):
    ...     pass
    >>> reader = hooked_reader(model, mi.RouterRecord())
    >>> with torch.no_grad():
    ...     [reader({"input_ids": torch.tensor([ids])}).routing.tokens.item() for ids in ([5, 6], [7, 8, 9])]
    [2, 3]
    >>> reader(["Hello"]) is None                         # texts: the trace's tokenizer path
    True

    ```
    """

    def __init__(self, model: Any, spec: Any, plan: Any, kwargs: dict, stop: bool) -> None:
        self._model, self._spec, self._plan, self._kwargs = model, spec, plan, kwargs
        self._wanted, self._stop = _wanted(plan), stop

    def __call__(self, inputs: Any) -> Optional["HookedRun"]:
        if not _token_ids(inputs):
            return None
        model, plan = self._model, self._plan
        check_inputs(inputs)
        check_tokens(model, inputs, self._kwargs, False)
        args, kwargs = _model_inputs(model, inputs, self._kwargs)
        seen: dict = {}
        try:
            with model_lock(model):
                stopped = _run(model._module, self._wanted, seen, args, kwargs, self._stop)
        except _NotSeen:
            return None
        rows = [(row, 1) for row in range(inputs["input_ids"].shape[0])]
        store: dict = {"forwards": 0, "per_token": []}
        try:
            forward_step(_Node("", seen), plan, store, rows)
        except _NotSeen:
            return None
        if "count" not in store or not bool(torch.isfinite(store["gate_mass"]).all()):
            return None  # the trace says why (an overflow in half precision)
        return HookedRun(self._spec, plan, store, [str(row) for row, _ in rows], stopped)


def hooked_trace(model: Any, inputs: Any, *interventions: Any, stop_early: bool = True,
                 **kwargs: Any) -> Optional[HookedRun]:
    """Run the model once on `inputs` (a dict of token ids: `input_ids`, `attention_mask`,
    and an encoder-decoder's `decoder_*`) and read the routing `interventions` record, every
    batch row its own group, as `_tracer.per_row_trace(model, inputs, *interventions,
    **kwargs)` would; `kwargs` go to the model. Returns a `HookedRun`, or None where only a
    trace serves the call (see the module docstring): the caller then runs one. One batch of a
    `hooked_reader` (`stop_early` as there).

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._hooks import hooked_trace
    >>> from moe_interp.runtime._tracer import per_row_trace
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> batch = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
    ...          "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}      # row 0 left-padded
    >>> hooked_trace(model, batch, mi.RouterRecord()) is None      # the first trace checks the detection
    True
    >>> with torch.no_grad(), per_row_trace(model, batch, mi.RouterRecord()) as tr:
    ...     pass
    >>> with torch.no_grad():
    ...     run = hooked_trace(model, batch, mi.RouterRecord())
    >>> run.routing.tokens.tolist(), torch.equal(run.routing.count, tr.routing.count)
    ([2, 3], True)
    >>> hooked_trace(model, batch, mi.RouterRecord(), mi.ExpertAblate({1: [3]})) is None   # edits: a trace
    True

    ```
    """
    if not _token_ids(inputs):
        return None
    reader = hooked_reader(model, *interventions, stop_early=stop_early, **kwargs)
    return None if reader is None else reader(inputs)


def _unwatched(module: torch.nn.Module) -> bool:
    """Whether nothing but the model itself runs in `module`'s forward: no torch hook anyone
    registered (module or global; transformers' own output-capturing hooks, which keep nothing
    unless asked, aside) and no accelerate hook that offloads weights."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for sub in module.modules():
        for hook in (*sub._forward_pre_hooks.values(), *sub._forward_hooks.values()):
            if not getattr(hook, "__module__", "").startswith("transformers."):
                return False
        if _offloads(getattr(sub, "_hf_hook", None)):
            return False
    return True


def _offloads(hook: Any) -> bool:
    """Whether an accelerate module hook (or one of a `SequentialHook`'s) offloads weights."""
    if hook is None:
        return False
    return bool(getattr(hook, "offload", False)) or any(_offloads(h) for h in getattr(hook, "hooks", ()))


def _token_ids(inputs: Any) -> bool:
    """Whether `inputs` are token ids a hooked run takes: a dict of `[batch, seq]` tensors."""
    return (isinstance(inputs, Mapping) and "input_ids" in inputs and set(inputs) <= _TOKEN_FIELDS
            and all(isinstance(v, torch.Tensor) and v.ndim == 2 for v in inputs.values()))


def _wanted(plan: Any) -> dict:
    """`{(module path, "input" | "output"): positions to keep, or _WHOLE}` for `plan`."""
    wanted: dict = {}
    if not any(entry.tokens_from for entry in plan.layers):
        wanted[("", "input")] = _WHOLE  # the model's inputs: its token ids and mask
    for entry in plan.layers:
        if entry.tokens_from:
            wanted[(entry.tokens_from, "input")] = _WHOLE
        for site in _read_sites(entry):
            key = (entry.router if site.owner == "router" else entry.experts, site.end)
            if key in wanted and wanted[key] is _WHOLE:
                continue
            wanted[key] = _WHOLE if site.index is None else wanted.get(key, frozenset()) | {site.index}
    return wanted


def _model_inputs(model: Any, inputs: Any, kwargs: dict) -> tuple:
    """`(args, kwargs)` of the model's call in a trace of `inputs`: nnsight's batcher assembles
    them (`Envoy.interleave`'s steps, nnsight 0.8.1), then they go to the model's device."""
    batcher = model._batcher_class(model, kwargs)
    batcher.add(inputs, **kwargs)
    args, kwargs = batcher.assemble("__call__")
    device = model.device
    return _to(args, device), _to(kwargs, device)


def _to(value: Any, device: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if device is None else value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to(v, device) for v in value)
    return value


def _run(module: torch.nn.Module, wanted: dict, seen: dict, args: tuple, kwargs: dict,
         stop: bool = False) -> Optional[str]:
    """One forward of `module` with the hooks that fill `seen`; none of them stays after it.
    With `stop`, the forward ends once every value in `wanted` is in `seen`: returns the path of
    the module where it stopped (None when it ran to the end)."""
    owner = threading.get_ident()
    done = len(wanted) if stop else -1
    handles = []
    try:
        for (path, end), keep in wanted.items():
            try:
                target = module.get_submodule(path)
            except AttributeError:
                raise _NotSeen(path) from None
            if end == "input":
                handles.append(target.register_forward_pre_hook(_input_hook(seen, path, keep, owner, done),
                                                                with_kwargs=True))
            else:
                handles.append(target.register_forward_hook(_output_hook(seen, path, keep, owner, done),
                                                            prepend=True))
        module(*args, **kwargs)
    except _Stop as stopped:
        return stopped.path
    finally:
        for handle in handles:
            handle.remove()
    return None


def _input_hook(seen: dict, path: str, keep: Any, owner: int, done: int) -> Any:
    key = (path, "input")

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        if key not in seen and threading.get_ident() == owner:
            seen[key] = (args, kwargs) if keep is _WHOLE else _kept_arguments(args, kwargs, keep)
            if len(seen) == done:
                raise _Stop(path)
    return hook


def _output_hook(seen: dict, path: str, keep: Any, owner: int, done: int) -> Any:
    key = (path, "output")

    def hook(_module: Any, _args: tuple, output: Any) -> None:
        if key not in seen and threading.get_ident() == owner:
            seen[key] = _copied(output) if keep is _WHOLE else _kept_elements(output, keep)
            if len(seen) == done:
                raise _Stop(path)
    return hook


def _copied(value: Any) -> Any:
    """`value` with its tensors copied (a tuple of them too)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_copied(v) for v in value)
    return value


def _kept_arguments(args: tuple, kwargs: dict, keep: frozenset) -> tuple:
    """`(args, kwargs)` with the arguments at positions `keep` (counted over args, then kwargs
    in order: `_reader.pick`'s count) copied, and None for the others."""
    n = len(args)
    keep = {i + n + len(kwargs) if i < 0 else i for i in keep}
    return (tuple(_copied(v) if i in keep else None for i, v in enumerate(args)),
            {k: (_copied(v) if n + j in keep else None) for j, (k, v) in enumerate(kwargs.items())})


def _kept_elements(output: Any, keep: frozenset) -> tuple:
    """`output`'s elements at `keep` copied, None for the others (indexed as `_reader.pick` does)."""
    items = output.to_tuple() if hasattr(output, "to_tuple") else output
    if not isinstance(items, (list, tuple)):
        return output  # not a sequence: the reader indexes it as it is
    keep = {i + len(items) if i < 0 else i for i in keep}
    return tuple(_copied(v) if i in keep else None for i, v in enumerate(items))


class _Stop(BaseException):
    """Raised by the hook that saw the last value a run reads, to end the forward there (a
    BaseException, so that no `except Exception` in the model's code takes it for a failure)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _NotSeen(LookupError):
    """A module the plan reads did not run (or does not exist): a trace says what happened."""


class _Node:
    """A module path under the root, standing in for its nnsight envoy in `_reader` and
    `_kernels.forward_step`: `.inputs` / `.output` are what the hooks kept."""

    __slots__ = ("_path", "_seen")

    def __init__(self, path: str, seen: dict) -> None:
        self._path, self._seen = path, seen

    def __getattr__(self, name: str) -> "_Node":
        return _Node(f"{self._path}.{name}" if self._path else name, self._seen)

    def __getitem__(self, index: int) -> "_Node":
        return self.__getattr__(str(index))

    def _value(self, end: str) -> Any:
        try:
            return self._seen[(self._path, end)]
        except KeyError:
            raise _NotSeen(self._path) from None

    @property
    def inputs(self) -> Any:
        return self._value("input")

    @property
    def output(self) -> Any:
        return self._value("output")
