"""Content fingerprints: what a stored result depends on, hashed so equal values give equal keys.

A resumable result (a `mi.profile` checkpoint, an `Experiment` cell) is reused only when
every part it depends on is the same *content* as now: the model's weights, config and
tokenizer, the corpus, the full value of every intervention (a `RoutingStats` by its
tensors, never by its name or repr) and the settings. Names, paths and reprs never key
anything: a random-init twin saved under the trained model's name, or a `RouteSteer` whose
repr hides its statistics, get keys of their own.
"""

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["ResumeError", "check_corpus", "differing", "fingerprint", "load_checkpoint", "model_parts",
           "stats_fingerprint"]

SAMPLES = 4096  # elements read from each parameter and buffer: cost independent of model size
# Config entries that ask for extra outputs or name the file's dtype: they never change a result.
_RUNTIME_CONFIG = frozenset({"output_attentions", "output_hidden_states", "output_router_logits", "return_dict",
                             "use_cache", "dtype", "torch_dtype", "transformers_version"})
_STATS_FIELDS = ("languages", "layers", "num_experts", "top_k", "count", "gate_mass", "tokens", "item_count",
                 "item_tokens", "item_language", "per_token")


class ResumeError(ValueError):
    """A stored result cannot be resumed: it belongs to another run, or it is damaged.

    A `ValueError` raised by `mi.profile(checkpoint=...)` instead of ever returning a stored
    result that does not match. The message names the file, which part differs (model
    weights, model config, tokenizer, corpus, interventions, settings) and what to do.

    ```python
    >>> import os, tempfile
    >>> import moe_interp as mi
    >>> corpus, path = {"eng": ["Hello there"]}, os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> stats = mi.profile(mi.zoo.tiny_model("qwen3_moe"), corpus, checkpoint=path, progress=False)
    >>> mi.profile(mi.zoo.tiny_model("qwen3_moe", seed=1), corpus, checkpoint=path, progress=False)
    Traceback (most recent call last):
    moe_interp._fingerprint.ResumeError: checkpoint .../run.ckpt belongs to another ... (differs: model weights); ...

    ```
    """


def check_corpus(corpus: Any) -> dict[str, list[str]]:
    """`corpus` as `{language: [texts]}`; anything else (a string, a language mapped to one string,
    an empty list) is a clear error before any work.

    ```python
    >>> from moe_interp._fingerprint import check_corpus
    >>> check_corpus({"eng": ("Hello", "Hi")})
    {'eng': ['Hello', 'Hi']}
    >>> check_corpus({"eng": "Hello"})
    Traceback (most recent call last):
    TypeError: corpus['eng'] must be a list of strings, got str (wrap one text in a list: [text])

    ```
    """
    if not isinstance(corpus, Mapping) or not corpus:
        raise TypeError("corpus must be a non-empty mapping {language: [texts]}, e.g. mi.datasets.udhr(['eng', 'deu'])"
                        f", got {type(corpus).__name__}")
    out = {}
    for lang, texts in corpus.items():
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"corpus[{lang!r}] must be a list of strings, got {type(texts).__name__}"
                            + (" (wrap one text in a list: [text])" if isinstance(texts, str) else ""))
        if not texts:
            raise ValueError(f"corpus[{lang!r}] is empty")
        out[str(lang)] = list(texts)
    return out


def _is_stats(value: Any) -> bool:
    return hasattr(value, "shared_experts") and hasattr(value, "count") and hasattr(value, "languages")


def _feed(digest: Any, value: Any) -> None:
    """Add `value` to `digest` in a canonical, type-tagged, length-prefixed encoding."""
    def tag(kind: bytes, payload: bytes = b"") -> None:
        digest.update(kind + len(payload).to_bytes(8, "little") + payload)

    if value is None or isinstance(value, bool):
        tag(b"b", repr(value).encode())
    elif isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):
        tag(b"i", str(int(value)).encode())  # 1 == 1.0 == -0.0 + 1 as values, so as keys
    elif isinstance(value, numbers.Real):
        tag(b"f", float(value).hex().encode())
    elif isinstance(value, str):
        tag(b"s", value.encode())
    elif isinstance(value, bytes):
        tag(b"y", value)
    elif isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1).contiguous().cpu()
        tag(b"t", f"{flat.dtype}{tuple(value.shape)}".encode())
        tag(b"d", flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        _feed(digest, torch.as_tensor(value))
    elif _is_stats(value):
        tag(b"r", stats_fingerprint(value).encode())
    elif hasattr(value, "strengths") and isinstance(value, Mapping):  # an ExpertSet: experts and strengths
        tag(b"e")
        _feed(digest, (dict(value), value.strengths))
    elif isinstance(value, Mapping):
        items = sorted(((fingerprint(k), v) for k, v in value.items()), key=lambda item: item[0])
        tag(b"m", str(len(items)).encode())
        for key, item in items:
            tag(b"k", key.encode())
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        tag(b"l", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (torch.dtype, torch.device)):
        tag(b"v", str(value).encode())
    elif isinstance(value, (range, slice)):
        tag(b"g", repr((type(value).__name__, value.start, value.stop, value.step)).encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        tag(b"c", f"{type(value).__module__}.{type(value).__qualname__}".encode())
        _feed(digest, {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.compare})
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        tag(b"o", f"{type(value).__module__}.{type(value).__qualname__}".encode())
        _feed(digest, vars(value))
    else:  # a repr may hide content (or show an address): refuse rather than key by it
        raise TypeError(f"cannot fingerprint a {type(value).__name__} ({value!r:.60}): resumable results are keyed "
                        "by content; use plain values (numbers, strings, tuples, dicts, tensors) in interventions")


def fingerprint(value: Any) -> str:
    """A hex digest of `value`'s content: equal values (1 and 1.0, lists and tuples, a
    `RoutingStats` and its copy) give equal fingerprints.

    ```python
    >>> from moe_interp._fingerprint import fingerprint
    >>> fingerprint({"a": (1, 2.0)}) == fingerprint({"a": [1.0, 2]})
    True
    >>> fingerprint({"a": (1, 2.0)}) == fingerprint({"a": (1, 2.5)})
    False

    ```
    """
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()[:32]


def stats_fingerprint(stats: Any) -> str:
    """A `RoutingStats`' content (languages, layers, every count tensor), without its `meta`
    (times, paths): two profiles with equal counts are the same statistics."""
    return fingerprint([(name, getattr(stats, name, None)) for name in _STATS_FIELDS])


def _weights(module: torch.nn.Module) -> str:
    """Names, dtypes, shapes and a strided sample of SAMPLES elements of every parameter and
    buffer, read in one copy per device (no per-tensor host sync)."""
    digest = hashlib.sha256()
    samples: dict[torch.device, list[torch.Tensor]] = {}
    unmaterialised = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        _feed(digest, (name, str(tensor.dtype), tuple(tensor.shape)))
        if tensor.is_meta:
            unmaterialised.append(name)
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES)
        samples.setdefault(tensor.device, []).append(flat[::step][:SAMPLES].contiguous().view(torch.uint8))
    for device in sorted(samples, key=str):
        digest.update(torch.cat(samples[device]).cpu().numpy().tobytes())
    if unmaterialised:  # weights not here (meta device, remote): only the checkpoint's name can stand in
        config = getattr(module, "config", None)
        _feed(digest, ("unmaterialised", getattr(config, "_name_or_path", None), getattr(config, "_commit_hash", None)))
    return digest.hexdigest()[:32]


def model_parts(model: Any) -> dict[str, str]:
    """Fingerprints of what a model's results depend on: `"model weights"`, `"model config"`
    (without runtime flags and paths) and `"tokenizer"` (class and vocabulary). The weights
    part samples each tensor (see `SAMPLES`), so an edit that touches no sampled element
    goes unseen; any training step or re-initialisation is seen.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp._fingerprint import differing, model_parts
    >>> parts = model_parts(mi.zoo.tiny_model("qwen3_moe"))
    >>> sorted(parts)
    ['model config', 'model weights', 'tokenizer']
    >>> differing(parts, model_parts(mi.zoo.tiny_model("qwen3_moe", seed=1)))   # re-initialised
    ['model weights']
    >>> differing(parts, model_parts(mi.zoo.tiny_model("qwen3_moe")))           # the same model again
    []

    ```
    """
    module = getattr(model, "_module", model)
    config = getattr(module, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    settings = {k: v for k, v in settings.items() if not k.startswith("_") and k not in _RUNTIME_CONFIG}
    tokenizer = getattr(model, "tokenizer", None)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    return {"model weights": _weights(module),
            "model config": fingerprint(json.dumps(settings, sort_keys=True, default=str)),
            "tokenizer": fingerprint((type(tokenizer).__name__, vocab))}


def differing(stored: Any, current: Mapping[str, str]) -> list[str]:
    """The names of the parts of `current` whose fingerprint differs in `stored` (all of them
    when `stored` is not a key of this kind, e.g. from an older version).

    ```python
    >>> from moe_interp._fingerprint import differing
    >>> differing({"corpus": "ab12", "settings": "cd34"}, {"corpus": "ab12", "settings": "ef56"})
    ['settings']
    >>> differing(None, {"corpus": "ab12"})
    ['corpus']

    ```
    """
    if not isinstance(stored, Mapping):
        return list(current)
    return [part for part, value in current.items() if stored.get(part) != value]


def load_checkpoint(path: Any, key: Mapping[str, str], fields: Mapping[str, torch.Tensor], total: int, form: str,
                    what: str) -> tuple[int, dict]:
    """`(done, tensors)` stored at `path` by `what` (e.g. `"mi.expert_attribution"`) in format
    `form`, after checking that it is this very run's (`key`: part name -> fingerprint) and
    whole: `done` in `[0, total]`, and each of `fields` stored with the same shape and dtype.
    Anything else raises `ResumeError` naming the file, the differing parts and the fix.
    The state is a dict `{"format", "key", "done", <field>: tensor, ...}` saved by `torch.save`.
    """
    fix = "delete it or pass another checkpoint path (a checkpoint is never reused for a different run)"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # zip, pickle, EOF, ...: all mean the same to the user
        raise ResumeError(f"checkpoint {path} cannot be read ({type(error).__name__}): it is damaged or not a "
                          f"{what} checkpoint; {fix}") from error
    if not isinstance(state, dict) or state.get("format") != form:
        raise ResumeError(f"checkpoint {path} is not a {what} checkpoint of this version ({form}); {fix}")
    parts = differing(state.get("key"), key)
    if parts:
        raise ResumeError(f"checkpoint {path} belongs to another model, corpus or settings "
                          f"(differs: {', '.join(parts)}); {fix}")
    done = state.get("done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= total or any(
            not isinstance(state.get(name), torch.Tensor) or state[name].shape != like.shape
            or state[name].dtype != like.dtype for name, like in fields.items()):
        raise ResumeError(f"checkpoint {path} is damaged (its progress or tensors do not fit this run); {fix}")
    return done, {name: state[name] for name in fields}
