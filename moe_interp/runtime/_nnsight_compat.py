"""Every use of nnsight's (and cloudpickle's) internals, in one place.

`moe_interp` extends nnsight through its public mechanisms where they exist: a tracer
subclass (`tracer_cls=`), `Invoker`, `Backend`, `eproperty`, `nnsight.save`,
`nnsight.register`. A few things have no public route in nnsight 0.8.1, and each is a
small function here, so that a new nnsight release breaks this file and nothing else:

- the interleaver's list of workers (`interleaver.mediators`), to run ours beside the
  user's and to read each invoke's rows (`Mediator.batch_group`);
- building a worker (`Mediator(code, ...)`) and the value served at a location
  (`Mediator.value`), and the batcher that narrows values to an invoke's rows (turned off
  for a worker while it reads whole-batch values, `whole_batch`: `Mediator.batch_group`);
- writing a saved value into the frame of the `with` block (`tracing.util.push`), which a
  remote request sends back;
- a trace's batcher (`tracer.batcher`, an nnsight `Batcher`), given `assemble` of its own
  for invokes that carry images (`batch_media`), which nnsight 0.8.1 refuses to batch;
- the undecorated `generate` of a `TransformersModel` (`generate.__wrapped__`);
- an nnsight model's batch size for its inputs (`Envoy._batch_size`);
- pickling an `eproperty` (its private callbacks) for by-value shipping.

`CHECKED_WITH` names the nnsight version these were checked against
(`tests/test_remote.py::test_nnsight_internals_are_those_checked`).
"""

import copyreg
import sys
from typing import Any, Optional

import cloudpickle
import nnsight
from nnsight.intervention.batching import Batcher
from nnsight.intervention.eproperty import eproperty
from nnsight.intervention.interleaver import Mediator, OutOfOrderError
from nnsight.tracing.util import push

from moe_interp.runtime._inputs import batch_media as _batch_media, carries_media

__all__ = ["CHECKED_WITH", "OutOfOrderError", "mediators", "invoke_mediators", "worker", "put_first",
           "batch_size", "MediaBatcher", "batch_media", "send_back", "served", "whole_batch", "as_served",
           "undecorated_generate", "shipped_by_value"]

CHECKED_WITH = "0.8.1"


def mediators(tracer: Any) -> list:
    """The workers of `tracer`'s model, in the order they run at a shared location.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> tracer = model.trace("Hello")
    >>> isinstance(compat.mediators(tracer), list)
    True

    ```
    """
    return tracer.envoy.interleaver.mediators


def invoke_mediators(tracer: Any) -> list:
    """The workers of `tracer` that own batch rows (one per invoke), in batch order.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> compat.invoke_mediators(mi.zoo.tiny_model("qwen3_moe").trace("Hello"))   # before the block runs
    []

    ```
    """
    return [m for m in mediators(tracer) if m.batch_group is not None]


def worker(body: Any, scope: dict) -> Mediator:
    """A whole-batch worker that runs the code object `body` with names from `scope`.

    ```python
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> type(compat.worker((lambda: None).__code__, {})).__name__
    'Mediator'

    ```
    """
    return Mediator(body, {}, scope)


def put_first(tracer: Any, workers: list) -> None:
    """Run `workers` before every worker `tracer` has now (the user's code then sees their edits).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> tracer = mi.zoo.tiny_model("qwen3_moe").trace("Hello")
    >>> w = compat.worker((lambda: None).__code__, {})
    >>> compat.put_first(tracer, [w]); compat.mediators(tracer)[0] is w
    True
    >>> compat.mediators(tracer).clear()

    ```
    """
    mediators(tracer)[:0] = workers


def batch_size(tracer: Any) -> int:
    """How many batch rows the inputs given to `model.trace(...)` itself make (0: none, invokes only).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> compat.batch_size(model.trace(["Hello", "Hi"])), compat.batch_size(model.trace())
    (2, 0)

    ```
    """
    return tracer.envoy._batch_size(*tracer.args, **tracer.kwargs)


class MediaBatcher(Batcher):
    """nnsight's batcher, that also batches invokes carrying images (`_inputs.batch_media`).

    nnsight 0.8.1 (`modeling/processing.py`, `preprocess_invoke` and `batch_forward`) passes
    an encoding with a tensor beyond its text fields (`pixel_values`, `image_grid_thw`,
    `mm_token_type_ids`) to the model whole, and refuses it beside another invoke ("Can't
    batch these inputs; pass text or token ids"). Row groups are nnsight's own (`add`);
    only the combined call differs, and only when two or more invokes carry media.

    Over a dispatched model on the meta device (NDIF's sandbox runner: the block runs there, and the
    host assembles the inputs with nnsight's own `Batcher`, ndif 0.1.2 sandbox/driver.py
    `_assemble`, so this class never batches them) such invokes are refused as they are
    added, before the model runs, naming what NDIF can run.
    """

    def add(self, *inputs: Any, **kwargs: Any) -> Any:
        group = Batcher.add(self, *inputs, **kwargs)
        module = getattr(self.envoy, "_module", None)
        weight = next(module.parameters(), None) if module is not None else None
        # meta weights on a model that says it is dispatched: NDIF's sandbox runner (its wrapper's
        # __setstate__ sets dispatched over meta weights, ndif 0.1.2 sandbox/nns.py); a local model
        # built with dispatch=False is on meta too until nnsight loads it at interleave: not refused
        if (weight is not None and weight.device.type == "meta" and getattr(self.envoy, "dispatched", True)
                and len(self.invokes) > 1 and any(carries_media(i, k) for i, k in self.invokes)):
            raise NotImplementedError(
                f"{len(self.invokes)} invokes with rows, some carrying images: NDIF's sandbox (where it runs "
                "untrusted requests; ndif 0.1.2, nnsight 0.8.1) assembles the model's inputs on its host with "
                "nnsight's own batcher, which cannot batch invokes that carry images beside others, and moe_interp's "
                "batching of them does not run there. Run one trace per image invoke (one request each), or put "
                "the captions in one invoke (model.processor(texts, images) pads them together: one group), or "
                "run it locally")
        return group

    def assemble(self, fn: Any) -> tuple:
        if len(self.invokes) > 1 and any(carries_media(inputs, kwargs) for inputs, kwargs in self.invokes):
            args, kwargs = _batch_media(self.envoy, self.invokes)
            return args, {**kwargs, **self.extra_kwargs}
        return Batcher.assemble(self, fn)


def batch_media(tracer: Any) -> None:
    """Let `tracer` batch invokes that carry images: its batcher (made by nnsight as the
    block starts, holding the invokes added so far) becomes a `MediaBatcher`. A model with
    its own batcher class (diffusion) keeps it.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> kinds = []
    >>> with mi.zoo.tiny_model("qwen3_moe").trace() as tracer:
    ...     compat.batch_media(tracer)
    ...     kinds.append(type(tracer.batcher).__name__)
    ...     with tracer.invoke("Hello"):
    ...         pass
    >>> kinds
    ['MediaBatcher']

    ```
    """
    batcher = getattr(tracer, "batcher", None)
    if type(batcher) is Batcher:
        batcher.__class__ = MediaBatcher


def send_back(tracer: Any, name: str, value: Any) -> None:
    """Save `value` as `name` in the frame of `tracer`'s `with` block: a remote request
    sends the saved values of that frame back to the client.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with model.trace("Hello") as tracer:
    ...     compat.send_back(tracer, "answer", [42])
    >>> answer
    [42]

    ```
    """
    push(tracer.info.frame, {name: nnsight.save(value)})


def served(location: str) -> Any:
    """The raw value the model serves at `location` (`"<path>.output"` / `".input"`), read
    inside an `eproperty` callback that runs on the model's side.

    ```python
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> callable(compat.served)
    True

    ```
    """
    return Mediator.value(location)


class whole_batch:
    """`with whole_batch() as rows:` the current worker reads and writes whole-batch values:
    nnsight serves an invoke's worker only its rows of a value whose first dimension is the
    batch (Switch's `[batch, seq, experts]`), and every row of one that is not (a router's
    flattened `[batch * seq, experts]`, except at a one-token decoding step), so an invoke
    cannot tell, from a value's shape, whether it was narrowed. Inside this block nothing is
    narrowed: the caller narrows once, by `rows` (`(start, size, total)`: the invoke's rows
    and the batch's, or None when there is nothing to narrow: one invoke, or a whole-batch
    worker), and a value it writes replaces the whole value (keep the other invokes' rows).

    A write-back nnsight holds for an earlier read of this worker goes back first, in its
    own rows.

    ```python
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> callable(compat.whole_batch)      # inside a trace; see Router in _router_view
    True

    ```
    """

    def __enter__(self) -> Optional[tuple]:
        mediator = Mediator.current("router values")
        mediator.flush()
        self.mediator, self.group = mediator, mediator.batch_group
        batcher = getattr(mediator.interleaver, "batcher", None)
        mediator.batch_group = None  # `Mediator.handle` narrows and widens by it: whole values
        if batcher is None or self.group is None or not batcher.batching:
            return None
        return self.group[0], self.group[1], batcher.total

    def __exit__(self, *_: Any) -> None:
        self.mediator.batch_group = self.group


def as_served(value: Any) -> Any:
    """`value` (whole batch) as nnsight serves it to the current worker: narrowed to an
    invoke's rows where its first dimension is the batch. What an `eproperty` write-back of
    a value read in `whole_batch` hands back, as nnsight widens it by the worker's rows.

    ```python
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> callable(compat.as_served)        # inside a trace
    True

    ```
    """
    mediator = Mediator.current("router values")
    batcher = getattr(mediator.interleaver, "batcher", None)
    return value if batcher is None else batcher.narrow(value, mediator.batch_group)


def undecorated_generate(model: Any) -> Any:
    """`model`'s `TransformersModel.generate` without nnsight's tracing decorator, bound to
    `model`: what `mi.generate` hands `model.trace(fn=...)` to run.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime import _nnsight_compat as compat
    >>> compat.undecorated_generate(mi.zoo.tiny_model("qwen3_moe")).__name__
    'generate'

    ```
    """
    return type(model).generate.__wrapped__.__get__(model)


class shipped_by_value:
    """`with shipped_by_value("moe_interp"):` the package is pickled by value (its source
    travels, so an NDIF server needs no install); afterwards by reference again, unless
    it was registered before (then it stays).

    ```python
    >>> import cloudpickle
    >>> from moe_interp.runtime._nnsight_compat import shipped_by_value
    >>> with shipped_by_value("moe_interp"):
    ...     "moe_interp" in cloudpickle.list_registry_pickle_by_value()
    True
    >>> "moe_interp" in cloudpickle.list_registry_pickle_by_value()
    False

    ```
    """

    def __init__(self, package: str, ship: bool = True) -> None:
        self.package, self.ship, self.added = package, ship, False

    def __enter__(self) -> "shipped_by_value":
        if self.ship and self.package not in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.register_pickle_by_value(sys.modules[self.package])
            self.added = True
        return self

    def __exit__(self, *_: Any) -> None:
        if self.added:
            cloudpickle.unregister_pickle_by_value(sys.modules[self.package])
            self.added = False


def _rebuilt_eproperty(key: str, preprocess: Any, postprocess: Any, transform: Any) -> eproperty:
    # Imported here, not read from the module's globals: shipped by value, this function may
    # arrive re-wrapped (jaxtyping's import hook in the tests) without them.
    from nnsight.intervention.eproperty import eproperty as rebuilt

    prop = rebuilt(key=key)(preprocess)
    if postprocess is not None:
        prop.postprocess(postprocess)
    if transform is not None:
        prop.transform(transform)
    return prop


def _reduce_eproperty(prop: eproperty) -> tuple:
    return _rebuilt_eproperty, (prop.key, prop._preprocess, prop._postprocess, prop._transform)


# An eproperty does not pickle by itself (nnsight's own classes travel by reference): a
# class shipped by value that holds one (the router view's hosts) sends it as the
# functions it is made of.
copyreg.pickle(eproperty, _reduce_eproperty)
