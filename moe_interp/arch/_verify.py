"""Detection checks itself: the first trace of an auto-detected model compares, on that very
forward, the routing `moe_interp` reads with what the experts modules actually receive.

Auto-detection (`describe` without a registered adapter) is an inference from class names
and router source; a model that departs from the common pattern could be read wrongly
without a sign (the sums per layer stay right). So the first local trace of such a model
carries `ExpertsCheck`: torch pre-hooks, found independently of the detection, on every
module that looks like routed experts (class name with "Experts", or named `experts`;
shared experts excluded), which see the first forward's calls. After the forward, each
layer's readout must select, token by token, exactly the experts those modules received,
every routed layer must be read, and each only once. A mismatch raises
`UnsupportedModelError` naming the layer; the verdict is kept per model, so later traces
pay nothing. Registered adapters are the user's (or this package's) explicit claim and are
not checked; remote runs cannot be hooked and are not checked either.
"""

import re
import weakref
from typing import Any

import torch

from moe_interp.arch._adapter import UnsupportedModelError

__all__ = ["ExpertsCheck", "pending_check"]

_LAYER = re.compile(r"\.(\d+)(?:\.|$)")
_VERDICTS: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()
_HOW = ("register an adapter for this model type to vouch for the routing yourself "
        "(mi.register_adapter(mi.RouterAdapter(name=..., model_types=(...), readout=...))), or report it")


def pending_check(spec: Any, module: torch.nn.Module) -> "ExpertsCheck | None":
    """The check the next trace of `module` must carry, or `None` once it passed (or for a
    registered adapter). A model that failed it raises its `UnsupportedModelError` again.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.arch._verify import pending_check
    >>> model = mi.zoo.tiny_model("qwen3_moe")         # auto-detected: checked on its first trace
    >>> type(pending_check(mi.describe(model), model._module)).__name__
    'ExpertsCheck'
    >>> with mi.trace(model, "Hello", mi.RouterRecord()):
    ...     pass
    >>> pending_check(mi.describe(model), model._module) is None
    True
    >>> phi = mi.zoo.tiny_model("phimoe")              # a registered adapter vouches for it
    >>> pending_check(mi.describe(phi), phi._module) is None
    True

    ```
    """
    if spec.family != "auto":
        return None
    verdict = _VERDICTS.get(module)
    if isinstance(verdict, UnsupportedModelError):
        raise verdict
    return None if verdict else ExpertsCheck(spec, module)


def _experts_modules(module: torch.nn.Module) -> list:
    """(layer, experts module): outermost experts-looking module of each routed block."""
    found: list = []
    for path, sub in module.named_modules():
        name = path.rsplit(".", 1)[-1]
        looks = "Experts" in type(sub).__name__ or name == "experts"
        match = _LAYER.search(path)
        if (looks and match and "shared" not in name.lower()
                and not any(path.startswith(p + ".") for p, _, _ in found)):
            found.append((path, int(match[1]), sub))
    return [(layer, sub) for _, layer, sub in found]


def _per_token(indices: torch.Tensor, tokens: int) -> torch.Tensor:
    """`[tokens, slots]` count of each expert per token, from indices of any shape; column 0
    counts negative "no expert" sentinels, expert e is column e + 1."""
    indices = indices.detach().reshape(tokens, -1).long().cpu().clamp(min=-1) + 1
    out = torch.zeros(tokens, int(indices.max()) + 1 if indices.numel() else 0, dtype=torch.long)
    return out.scatter_add_(1, indices, torch.ones_like(indices))


def _received(args: tuple, kwargs: dict, tokens: int) -> torch.Tensor | None:
    """What one experts call received, per token, or None when its arguments do not say.

    An integer tensor argument holds each token's experts; a single float tensor of
    `E * tokens` rows is a dense dispatch (Llama-4 style: token t's copy for expert e is
    row `e * tokens + t`, all zero unless e was chosen).
    """
    values = [*args, *kwargs.values()]
    index = next((v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
    if index is not None:
        return _per_token(index, tokens) if index.numel() % tokens == 0 else None
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) == 1 and tensors[0].ndim == 2 and tensors[0].shape[0] % tokens == 0:
        rows = tensors[0].detach().reshape(-1, tokens, tensors[0].shape[-1])
        return torch.nn.functional.pad((rows != 0).any(-1).T.long().cpu(), (1, 0))  # no sentinel column
    return None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    width = max(a.shape[1], b.shape[1])
    pad = torch.nn.functional.pad
    return a.shape[0] == b.shape[0] and torch.equal(pad(a, (0, width - a.shape[1])), pad(b, (0, width - b.shape[1])))


class ExpertsCheck:
    """Hooks for one trace's first forward (`with check:`), then `compare(readout)`.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.arch._verify import pending_check
    >>> model = mi.zoo.tiny_model("qwen3_moe")         # auto-detected, never traced
    >>> spec = mi.describe(model)
    >>> check = pending_check(spec, model._module)
    >>> with check:                                    # a trace's first forward runs here
    ...     out = model._module(torch.tensor([[5, 6, 7]]), output_router_logits=True)
    >>> chosen = [logits.topk(spec.top_k).indices for logits in out.router_logits]
    >>> check.compare(list(zip(spec.moe_layers, chosen)))    # what the experts received
    >>> pending_check(spec, model._module) is None     # verified: later traces carry no check
    True
    >>> other = mi.zoo.tiny_model("qwen3_moe")
    >>> check = pending_check(spec, other._module)
    >>> with check:
    ...     out = other._module(torch.tensor([[5, 6, 7]]))
    >>> check.compare([(layer, torch.zeros(3, 2, dtype=torch.long)) for layer in spec.moe_layers])
    Traceback (most recent call last):
    moe_interp.arch._adapter.UnsupportedModelError: qwen3_moe (auto-detected): layer 0: the experts moe_interp reads as selected differ from those the experts module received; ...

    ```
    """

    def __init__(self, spec: Any, module: torch.nn.Module) -> None:
        self.spec, self.module = spec, module
        self.calls: dict[int, list] = {}
        self.handles: list = []
        self.done = False

    def __enter__(self) -> "ExpertsCheck":
        def seen(layer: int):
            def hook(_module, args, kwargs):
                if not self.done:
                    self.calls.setdefault(layer, []).append((args, kwargs))
            return hook

        def first_forward_over(*_):
            self.done = True

        try:
            for layer, experts in _experts_modules(self.module):
                self.handles.append(experts.register_forward_pre_hook(seen(layer), with_kwargs=True))
            self.handles.append(self.module.register_forward_hook(first_forward_over))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def compare(self, readout: list) -> None:
        """Raise `UnsupportedModelError` unless `readout` (`[(layer, indices[T, K]), ...]`, one
        per MoE layer read during the first forward) equals what the experts received."""
        if not readout and not self.calls:
            return  # no forward ran: nothing to judge, check again next time
        try:
            self._compare(dict(readout), {layer: len(calls) for layer, calls in self.calls.items()})
        except UnsupportedModelError as error:
            _VERDICTS[self.module] = error
            raise
        _VERDICTS[self.module] = True

    def _compare(self, readout: dict, calls: dict) -> None:
        what = f"{self.spec.arch} (auto-detected)"
        for layer in sorted(set(calls) - set(readout)):
            raise UnsupportedModelError(
                f"{what}: layer {layer} routes tokens to its experts but moe_interp does not read its router "
                f"(it found MoE layers {list(self.spec.moe_layers)}); no counts were returned. To fix: {_HOW}")
        for layer, indices in sorted(readout.items()):
            if layer not in calls:
                raise UnsupportedModelError(
                    f"{what}: layer {layer} has a router but no experts module was seen receiving its routing, "
                    f"so the detection cannot be checked; no counts were returned. To fix: {_HOW}")
            if calls[layer] != 1:
                raise UnsupportedModelError(
                    f"{what}: layer {layer}'s experts ran {calls[layer]} times in one forward (a looped or "
                    f"repeated layer) but moe_interp reads one call per layer; no counts were returned. Looped "
                    f"layers are not supported yet: use a configuration without loops (e.g. loop_num_passes=1)")
            tokens = indices.reshape(-1, indices.shape[-1]).shape[0]
            args, kwargs = self.calls[layer][0]
            received = _received(args, kwargs, tokens)
            if received is None:
                raise UnsupportedModelError(
                    f"{what}: layer {layer}'s experts module takes no routing argument moe_interp can compare "
                    f"with; no counts were returned. To fix: {_HOW}")
            # a token that reached its experts as zeros (a padding token's zero state in a dense
            # dispatch) shows no choice either way: judge the tokens that show one
            shown = received.sum(1) > 0
            if not _same(_per_token(indices, tokens)[shown], received[shown]):
                raise UnsupportedModelError(
                    f"{what}: layer {layer}: the experts moe_interp reads as selected differ from those the "
                    f"experts module received; no counts were returned. To fix: {_HOW}")
