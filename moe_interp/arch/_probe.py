"""Which ops a router's forward really runs, seen by running it once on a few random tokens.

A router's source names every op it could run, not which ones do: branches pick the
logits op by device, dtype and grad mode (Kolibri's CUDA-only `torch.mm`), or the top-k
by a config switch (DeepSeek-V2's `topk_method`), and a helper method can hold the
selection (LongCat-Flash's `get_topk_indices`). Asking nnsight for an op that does not
run leaves a trace waiting for it; editing an op that is not where top-k ranks lets an
ablated expert back in. So detection runs the router's forward, instrumented by nnsight's
own `.source` machinery (the same op names), on random hidden states of the router's
device and dtype, under both grad modes, and reads off:

- `logits`: the last `router_logits` op that ran before the selecting top-k (a later one rescales
  or caps the first: MuseSpark, Laguna), else the first logits-making op that ran;
- `select`: the site of the last top-k, the one that picks the experts, as
  `"<op>.input"` (`torch.topk(x, ...)`: its argument) or `"<op>.output"` (`x.topk(...)`:
  the op that made `x`); ops inside a helper method are joined by dots
  (`"self_get_topk_indices_0.torch_topk_0.input"`);
- `width`: how many scores that top-k ranks (the routed experts; a router may make more
  logits than it routes, e.g. Inkling's shared-expert column);
- `makers`: the ops whose output is exactly what top-k ranks (when one is the logits or
  choice op, an edit there already reaches top-k: no second site is needed);
- `logits_width`: how many logits the logits op made (ZAYA's router makes them after an MLP:
  its first weight matrix is not the classifier); a top-k over that many scores ranks experts.
"""

import dataclasses
import inspect
import re
import types
from typing import Any

import torch

__all__ = ["Probe", "probe_router"]

_LOGITS = re.compile(r"^router_logits_\d+$")
_LOGITS_FALLBACK = ("F_linear_0", "forward_0", "self_layer_0")
_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one run of a router's forward showed (see the module docstring).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._probe import probe_router
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> block = model._module.model.layers[0].mlp
    >>> probe = probe_router(block.gate, block, tuple(model.model.layers[0].mlp.gate.source.names), {8})[0]
    >>> probe.logits, probe.select, probe.width, probe.makers
    ('router_logits_0', 'torch_topk_0.input', 8, ('torch_nn_functional_softmax_0', 'router_probs_0'))

    ```
    """

    ran: tuple[str, ...]
    logits: str | None
    select: str | None
    width: int | None
    makers: tuple[str, ...]
    logits_width: int | None = None


def _record(router: torch.nn.Module, fn: Any, prefix: str, log: list, depth: int) -> Any:
    """`fn` instrumented so that each op it runs is appended to `log` as
    `(path, callee, args, kwargs, value)`; helper methods of `router` (and functions of its
    own module) are instrumented in turn, their ops under `<op>.`."""
    from nnsight.intervention.source import SourceNotAvailable, instrument

    def op(location: str, callee: Any, *args: Any, **kwargs: Any) -> Any:
        path = prefix + location[len("source."):]
        run = callee
        if depth < 2 and _helper(router, callee):
            try:
                run = _record(router, callee, path + ".", log, depth + 1)
            except SourceNotAvailable:
                run = callee
        value = run(*args, **kwargs)
        log.append((path, callee, args, kwargs, value))
        return value

    return instrument(fn, op)[0]


def _helper(router: torch.nn.Module, callee: Any) -> bool:
    if isinstance(callee, torch.nn.Module):
        return False
    if inspect.ismethod(callee):
        return callee.__self__ is router
    return isinstance(callee, types.FunctionType) and callee.__module__ == type(router).__module__


def _inputs(router: torch.nn.Module, parent: torch.nn.Module | None, hidden: torch.Tensor) -> tuple | None:
    """`(args, kwargs)` for `router.forward`: the hidden states, then any other required argument
    the block passes from an attribute of the same name (AFMoE's `expert_bias`), and an optional
    one where the block has a tensor of its name (LFM2-MoE's `expert_bias=None`, which the block
    passes: without it the router ranks other scores)."""
    params = list(inspect.signature(type(router).forward).parameters.values())[1:]
    args, kwargs = [hidden], {}
    for param in params[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(parent, param.name, None) if parent is not None else None
        if param.default is not param.empty:
            if isinstance(value, torch.Tensor):
                kwargs[param.name] = value
            continue
        if not isinstance(value, torch.Tensor) or kwargs:
            return None
        args.append(value)
    return tuple(args), kwargs


def _run(router: torch.nn.Module, parent: torch.nn.Module | None, grad: bool) -> list | None:
    weight = next((p for p in router.parameters() if p.ndim == 2), None)
    if weight is None:
        return None
    generator = torch.Generator(device="cpu").manual_seed(0)
    flat = torch.randn(_TOKENS, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
    for hidden in (flat, flat[None]):  # blocks pass [tokens, hidden] or [batch, seq, hidden]
        inputs = _inputs(router, parent, hidden)
        if inputs is None:
            return None
        log: list = []
        try:
            forward = _record(router, type(router).forward, "", log, 0)
            with torch.set_grad_enabled(grad):
                forward(router, *inputs[0], **inputs[1])
        except Exception:  # a shape the router does not take, a kernel the device lacks: next try
            continue
        return log
    return None


def _is_topk(callee: Any) -> bool:
    return getattr(callee, "__name__", None) == "topk"


def _read(log: list, names: tuple[str, ...], routed: set[int]) -> Probe:
    ran = tuple(path for path, *_ in log)
    top = set(ran)
    # the last `router_logits` the router made before it selects: a later assignment rescales or caps
    # the first (MuseSpark's output multiplier, Laguna's softcapping), and it is what the router returns
    last_topk = max((i for i, (_, callee, *_) in enumerate(log) if _is_topk(callee)), default=len(log))
    made = [path for path, *_ in log[:last_topk] if _LOGITS.match(path) and path in names]
    logits = made[-1] if made else next((n for n in names if _LOGITS.match(n) and n in top), None)
    logits = logits or next((n for n in _LOGITS_FALLBACK if n in top), None)
    made = next((v for p, _, _, _, v in log if p == logits), None)
    logits_width = int(made.shape[-1]) if isinstance(made, torch.Tensor) and made.ndim >= 1 else None
    routed = routed | ({logits_width} if logits_width else set())  # a top-k over the logits' width ranks experts
    select = width = None
    makers: tuple[str, ...] = ()
    for position in range(len(log) - 1, -1, -1):
        path, callee, args, kwargs, _ = log[position]
        if not _is_topk(callee):
            continue
        method = isinstance(getattr(callee, "__self__", None), torch.Tensor)
        ranked = callee.__self__ if method else (args[0] if args else kwargs.get("input"))
        if isinstance(ranked, torch.Tensor) and ranked.ndim >= 1 and ranked.shape[-1] in routed:
            width = int(ranked.shape[-1])
            makers = tuple(p for p, _, _, _, v in log[:position] if v is ranked)
            select = f"{path}.input" if not method else (f"{makers[-1]}.output" if makers else None)
        break
    return Probe(ran, logits, select, width, makers, logits_width)


def probe_router(router: torch.nn.Module, parent: torch.nn.Module | None, names: tuple[str, ...],
                 routed: set[int]) -> tuple[Probe, ...]:
    """Run `router`'s forward once with grad enabled and once without; one `Probe` per run
    that worked (none when the router cannot be run on random inputs). `names` are its
    `.source` op names (their order decides among logits candidates); `routed` the widths
    a top-k over experts can rank (the router's logit count, the experts module's size).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._probe import probe_router
    >>> model = mi.zoo.tiny_model("deepseek_v3")       # group-limited: two top-k ops run
    >>> block = model._module.model.layers[1].mlp
    >>> names = tuple(model.model.layers[1].mlp.gate.source.names)
    >>> [(p.logits, p.select, p.width) for p in probe_router(block.gate, block, names, {8})]
    [('router_logits_0', 'torch_topk_1.input', 8), ('router_logits_0', 'torch_topk_1.input', 8)]

    ```
    """
    out = []
    for grad in (True, False):
        log = _run(router, parent, grad)
        if log is not None:
            out.append(_read(log, names, routed))
    return tuple(out)
