"""`mi.load` and `mi.wrap`: an nnsight model whose routers `moe_interp` has found, with
`model.moe`, every MoE layer's router as the same nnsight values (see `_router_view`)."""

import logging
import os
from typing import Any

import torch
from nnsight import TransformersModel

from moe_interp.runtime._router_view import attach
from moe_interp.core._checks import hub_id_shaped
from moe_interp.runtime._shipping import OneAtATime, model_lock
from moe_interp.arch import describe

__all__ = ["MoEModel", "load", "wrap"]


class MoEModel(TransformersModel):
    """The nnsight `TransformersModel` that `mi.wrap` and `mi.load` build: the same model,
    whose local traces run one at a time.

    nnsight keeps one interleaver per model, so two threads tracing one model at once mix
    their workers: an `mi.trace` beside a plain `model.trace` in another thread returned
    wrong counts or failed. Here every local trace, generation, session and direct call of
    the model holds the model's lock (`_shipping.model_lock`, the one `mi.trace` holds);
    a remote request (`remote=True`) runs on the server and takes no lock. NDIF knows the
    model as a `TransformersModel`: the remote key names that class.

    ```python
    >>> import threading, moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> type(model).__name__, type(model).__mro__[1].__name__
    ('MoEModel', 'TransformersModel')
    >>> seen = []
    >>> def plain():
    ...     for _ in range(3):
    ...         with model.trace("Hi"):
    ...             seen.append(model.moe[0].router.indices.save())
    >>> thread = threading.Thread(target=plain); thread.start()
    >>> with mi.trace(model, "Hello", mi.RouterRecord()) as tr:
    ...     pass
    >>> thread.join(); int(tr.routing.tokens.sum()), len(seen)
    (5, 3)

    ```
    """

    def _remoteable_class(self) -> type:
        return TransformersModel

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A request pickles the model with the trace; a server has no moe_interp installed
        # (the package travels by value then, and this class's lock would travel with it):
        # the model travels as the TransformersModel it is there.
        reduced = TransformersModel.__reduce_ex__(self, protocol)  # (__newobj__, (MoEModel,), state, ...)
        if len(reduced[1]) != 1:
            raise TypeError("MoEModel pickles as a TransformersModel built by object.__new__; nnsight changed how "
                            "its models pickle: update moe_interp.models._loading.MoEModel.__reduce_ex__")
        return (object.__new__, (TransformersModel,), *reduced[2:])

    def trace(self, *inputs: Any, remote: Any = False, **kwargs: Any) -> Any:
        tracer = TransformersModel.trace(self, *inputs, remote=remote, **kwargs)
        if remote and remote != "local" or not hasattr(tracer, "backend"):
            return tracer  # runs on a server (or trace=False: already ran, under interleave's lock)
        tracer.backend = OneAtATime(tracer.backend, self)
        return tracer

    def session(self, *args: Any, remote: Any = False, **kwargs: Any) -> Any:
        tracer = TransformersModel.session(self, *args, remote=remote, **kwargs)
        if not (remote and remote != "local"):
            tracer.backend = OneAtATime(tracer.backend, self)
        return tracer

    def interleave(self, *args: Any, **kwargs: Any) -> Any:
        with model_lock(self):
            return TransformersModel.interleave(self, *args, **kwargs)


def wrap(hf_model: Any, tokenizer: Any = None, **kwargs: Any) -> MoEModel:
    """Wrap an in-memory Hugging Face MoE model for `mi.trace` (nnsight `TransformersModel`).

    Its routers are found now, so an unsupported model fails here with
    `UnsupportedModelError`; `model.moe` lists its MoE layers, each router's `logits`,
    `scores`, `indices` and `weights` readable and editable in plain nnsight code.
    Remote execution needs a model from `mi.load` instead. `tokenizer` may be a multimodal
    model's processor (anything with a `.tokenizer`): nnsight keeps it as `model.processor`,
    and `model.tokenizer` is its tokenizer.

    ```python
    >>> import moe_interp as mi
    >>> from transformers import AutoModelForCausalLM
    >>> hf = AutoModelForCausalLM.from_config(mi.zoo.tiny_config("qwen3_moe"))
    >>> model = mi.wrap(hf, mi.zoo.byte_tokenizer())
    >>> mi.describe(model).arch
    'qwen3_moe'
    >>> with model.trace("Hello"):
    ...     chosen = model.moe[0].router.indices.save()
    >>> chosen.shape                                      # [tokens, top_k]: 5 bytes, top-2
    torch.Size([5, 2])

    ```
    """
    if isinstance(hf_model, (str, os.PathLike)):
        raise TypeError("mi.wrap takes a model object; to load a hub id or a local directory use mi.load(...)")
    if not isinstance(hf_model, torch.nn.Module):
        raise TypeError(f"mi.wrap takes a Hugging Face model (torch.nn.Module), got {type(hf_model).__name__}")
    if getattr(hf_model, "config", None) is None:
        raise TypeError(f"mi.wrap needs a Hugging Face model (with .config); {type(hf_model).__name__} has none. "
                        "For a custom torch module register an adapter (mi.register_adapter) and wrap it with "
                        "nnsight.NNsight(module): mi.describe and the interventions work on it")
    # nnsight builds a text-generation pipeline around the model; transformers 5 has no pipeline
    # for encoder-decoder LMs and logs a page-long error that changes nothing: keep it quiet
    quiet = logging.getLogger("transformers.pipelines.base")
    level = quiet.level
    if getattr(hf_model.config, "is_encoder_decoder", False):
        quiet.setLevel(logging.CRITICAL)
    if hasattr(tokenizer, "tokenizer"):  # a multimodal model's processor: nnsight keeps both
        kwargs.setdefault("processor", tokenizer)
        tokenizer = tokenizer.tokenizer
    try:
        model = MoEModel(hf_model, tokenizer=tokenizer, **kwargs)
    finally:
        quiet.setLevel(level)
    attach(model, describe(model))
    return model


def load(name_or_path: Any, *, dispatch: bool = True, **kwargs: Any) -> MoEModel:
    """Load an MoE model by hub id or local directory as an nnsight `TransformersModel`.

    `dispatch=False` builds it on the meta device without weights (enough for
    `remote=True` on NDIF, which needs a hub id; a local directory can run
    `remote="local"` only); other keyword arguments go to `from_pretrained`
    (`dtype=`, `device_map=`, `experts_implementation=`, ...). A hub id loads the same
    way as a directory, e.g. `mi.load("allenai/OLMoE-1B-7B-0924", dtype=torch.bfloat16,
    device_map="auto")` (64 experts; needs the hub).

    ```python
    >>> import moe_interp as mi, tempfile, torch
    >>> tiny = mi.zoo.tiny_model("qwen3_moe")
    >>> with tempfile.TemporaryDirectory() as directory:                # a local directory
    ...     tiny._module.save_pretrained(directory)
    ...     _ = tiny.tokenizer.save_pretrained(directory)
    ...     model = mi.load(directory, dtype=torch.float32)
    ...     empty = mi.load(directory, dispatch=False)                  # no weights read
    >>> mi.describe(model).arch, mi.describe(model).num_experts
    ('qwen3_moe', 8)
    >>> torch.equal(model._module.lm_head.weight, tiny._module.lm_head.weight)
    True
    >>> empty._module.lm_head.weight.device
    device(type='meta')

    ```
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError("mi.load takes a hub id or a directory; to use an in-memory model call mi.wrap(model, tokenizer)")
    text = os.fspath(name_or_path)
    # a hub id is "name" or "org/name": anything shaped like a path is a local directory, checked here
    # so that a typo is not sent to the hub (whose answer is a rule about repo ids)
    if not hub_id_shaped(text) and not os.path.isdir(os.path.expanduser(text)):
        raise FileNotFoundError(f"mi.load({text!r}): no such model directory; pass a local directory holding "
                                "config.json and the weights, or a hub id such as 'allenai/OLMoE-1B-7B-0924'")
    if _is_encoder_decoder(text, kwargs):
        return _load_seq2seq(text, dispatch, kwargs)
    if os.path.isdir(name_or_path):  # a local directory has no hub metadata to infer the pipeline task from
        kwargs.setdefault("task", "text-generation")
    if not dispatch and kwargs.get("tokenizer") is None:
        # nnsight 0.8.1 cannot guess the tokenizer of an undispatched model under transformers 5
        # (its pipeline class is now a string: nnsight/modeling/transformers.py, "Impossible to
        # guess which tokenizer to use"); loading it here is what it would have done.
        from transformers import AutoTokenizer

        options = {k: kwargs[k] for k in ("revision", "trust_remote_code", "token", "cache_dir") if k in kwargs}
        kwargs["tokenizer"] = AutoTokenizer.from_pretrained(str(name_or_path), **options)
    model = MoEModel(str(name_or_path), dispatch=dispatch, **kwargs)
    attach(model, describe(model))
    return model


_HUB_OPTIONS = ("revision", "trust_remote_code", "token", "cache_dir")


def _is_encoder_decoder(name: str, kwargs: dict) -> bool:
    """Whether `name`'s config is an encoder-decoder's (read from the directory or the hub)."""
    from transformers import AutoConfig

    config = kwargs.get("config") or AutoConfig.from_pretrained(
        name, **{k: kwargs[k] for k in _HUB_OPTIONS if k in kwargs})
    return bool(getattr(config, "is_encoder_decoder", False))


def _load_seq2seq(name: str, dispatch: bool, kwargs: dict) -> MoEModel:
    """An encoder-decoder model (Switch Transformers, NLLB-MoE) loaded by transformers' seq2seq class
    and wrapped: nnsight 0.8.1 loads a name through a `transformers.pipeline` task, and transformers 5
    has no pipeline task for encoder-decoder LMs (no "text2text-generation"), so `TransformersModel(name)`
    builds `AutoModelForCausalLM` and fails. The model keeps `name` as its `repo_id` (as a hub load would:
    NDIF knows it by that id). `dispatch=False` builds it on the meta device from its config."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    hub = {k: kwargs.pop(k) for k in _HUB_OPTIONS if k in kwargs}
    tokenizer = kwargs.pop("tokenizer", None) or AutoTokenizer.from_pretrained(name, **hub)
    if kwargs.pop("task", None) not in (None, "text-generation"):
        raise ValueError("mi.load of an encoder-decoder model takes no task=: it is loaded as a seq2seq LM")
    if dispatch:
        hf = AutoModelForSeq2SeqLM.from_pretrained(name, **hub, **kwargs)
    else:
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(name, **hub)
        options = {k: kwargs[k] for k in ("dtype", "torch_dtype", "attn_implementation") if k in kwargs}
        with torch.device("meta"):
            hf = AutoModelForSeq2SeqLM.from_config(config, **options)
        hf.config._name_or_path = name
    model = wrap(hf, tokenizer, **({} if dispatch else {"device": "meta"}))  # the pipeline would move it
    model.repo_id = name
    return model
