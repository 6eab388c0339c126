"""Content fingerprints: what a stored result depends on, hashed so equal values give equal keys.

A resumable result (a `mi.profile` checkpoint, an `Experiment` cell) is reused only when
every part it depends on is the same *content* as now: the model's weights (every byte by
default), config and tokenizer (its behaviour: normalizer, pre-tokenizer, post-processor,
special and added tokens, padding side, ..., and what it does with a probe text), the
corpus, the full value of every intervention (a `RoutingStats` by its tensors, never by its
name or repr) and the settings. Names, paths and reprs never key anything: a random-init
twin saved under the trained model's name, or a `RouteSteer` whose repr hides its
statistics, get keys of their own. A stored result also carries a checksum of its own
content, so a byte changed after it was written is refused, never resumed.
"""

import dataclasses
import enum
import hashlib
import json
import numbers
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import xxhash

from moe_interp.core._files import replace_file

__all__ = ["ResumeError", "check_corpus", "check_pairs", "differing", "fingerprint", "is_pairs", "load_checkpoint",
           "model_parts", "save_checkpoint", "stats_fingerprint", "tokenizer_fingerprint"]

WEIGHTS = ("full", "sampled")  # how the weights are keyed: every byte, or a strided sample of each tensor
SAMPLES = 4096  # elements a "sampled" key reads from each parameter and buffer: cost independent of model size
CHUNK = 1 << 26  # bytes hashed as one piece by a "full" key (64 MiB: device copies stay small)
# Config entries that ask for extra outputs or name the file's dtype and classes: they never change a result
# (`save_pretrained` writes `dtype` and `architectures` into the live config: saving a model must not make
# its checkpoints someone else's)
_RUNTIME_CONFIG = frozenset({"output_attentions", "output_hidden_states", "output_router_logits", "return_dict",
                             "use_cache", "dtype", "torch_dtype", "transformers_version", "architectures"})
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
    moe_interp.core._fingerprint.ResumeError: checkpoint .../run.ckpt belongs to another ... (differs: model weights); ...

    ```
    """


def check_corpus(corpus: Any) -> dict[str, list[str]]:
    """`corpus` as `{language: [texts]}`; anything else (a string, a language mapped to one string,
    an empty list) is a clear error before any work.

    ```python
    >>> from moe_interp.core._fingerprint import check_corpus
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


def is_pairs(corpus: Any) -> bool:
    """Whether `corpus` is keyed by (source language, target language), as a parallel corpus is.

    ```python
    >>> from moe_interp.core._fingerprint import is_pairs
    >>> is_pairs({("fra", "eng"): [("Bonjour", "Hello")]}), is_pairs({"eng": ["Hello"]})
    (True, False)

    ```
    """
    return isinstance(corpus, Mapping) and bool(corpus) and any(isinstance(key, tuple) for key in corpus)


def check_pairs(corpus: Any) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """A corpus of parallel pairs, `{(source language, target language): [(source, target), ...]}`,
    checked: a malformed key or pair, or an empty language, is a clear error before any work.

    ```python
    >>> from moe_interp.core._fingerprint import check_pairs
    >>> check_pairs({("fra", "eng"): [["Bonjour", "Hello"]]})
    {('fra', 'eng'): [('Bonjour', 'Hello')]}
    >>> check_pairs({("fra", "eng"): ["Bonjour"]})
    Traceback (most recent call last):
    TypeError: corpus[('fra', 'eng')] must be a list of (source text, target text) pairs, e.g. list(zip(sources, targets))
    >>> check_pairs({("en", "pt-BR"): [("Hi", "Oi")], ("en-pt", "BR"): [("Hi", "Oi")]})
    Traceback (most recent call last):
    ValueError: the directions ('en', 'pt-BR') and ('en-pt', 'BR') are both labelled 'en-pt-BR' (results name a direction 'source-target'): rename a language so that no two directions share a label

    ```
    """
    out, labels = {}, {}
    for key, pairs in corpus.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) and k for k in key)):
            raise TypeError(f"a corpus of pairs is keyed by (source language, target language), e.g. ('fra', 'eng'); "
                            f"got the key {key!r}. Use one form for the whole corpus: {{language: [texts]}} or "
                            "{(source, target): [(source text, target text)]}")
        if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not all(
                isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2
                and all(isinstance(t, str) for t in p) for p in pairs):
            raise TypeError(f"corpus[{key!r}] must be a list of (source text, target text) pairs, e.g. "
                            "list(zip(sources, targets))")
        if not pairs:
            raise ValueError(f"corpus[{key!r}] is empty")
        label = "-".join(key)
        if label in labels:
            raise ValueError(f"the directions {labels[label]!r} and {key!r} are both labelled {label!r} (results name a "
                             "direction 'source-target'): rename a language so that no two directions share a label")
        labels[label] = key
        out[key] = [tuple(p) for p in pairs]
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
    >>> from moe_interp.core._fingerprint import fingerprint
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


def _sampled(module: torch.nn.Module) -> str:
    """Names, dtypes, shapes and a strided sample of SAMPLES elements of every parameter and
    buffer, read in one copy per device (no per-tensor host sync)."""
    digest = hashlib.sha256(b"sampled")
    samples: dict[torch.device, list[torch.Tensor]] = {}
    for name, tensor in _tensors(module):
        _feed(digest, (name, str(tensor.dtype), tuple(tensor.shape)))
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES)
        samples.setdefault(tensor.device, []).append(flat[::step][:SAMPLES].contiguous().view(torch.uint8))
    for device in sorted(samples, key=str):
        digest.update(torch.cat(samples[device]).cpu().numpy().tobytes())
    return digest.hexdigest()


def _chunk_digest(flat: torch.Tensor, start: int) -> bytes:
    """The 128-bit XXH3 digest of bytes `[start, start + CHUNK)` of `flat` (a 1-D uint8 view),
    copied to the host first when it lives on a device. XXH3 (a non-cryptographic hash: these
    keys detect changes, nobody forges them) runs at memory speed, about 15x sha256 here."""
    piece = flat[start : start + CHUNK]
    return xxhash.xxh3_128(piece.cpu().numpy() if piece.device.type != "cpu" else piece.numpy()).digest()


def _full(module: torch.nn.Module) -> str:
    """Names, dtypes, shapes and every byte of every parameter and buffer: the XXH3-128 digest
    of each CHUNK-byte piece (in threads: `torch.get_num_threads()`), combined per tensor in
    order by sha256. The key does not depend on the device a tensor is on."""
    tensors = _tensors(module)
    pieces = []
    for _, tensor in tensors:
        flat = tensor.detach().reshape(-1).view(torch.uint8)  # a view: no copy of a contiguous tensor
        pieces.append([(flat, start) for start in range(0, flat.numel(), CHUNK)])
    work = [item for tensor_pieces in pieces for item in tensor_pieces]
    workers = max(1, min(torch.get_num_threads(), 16, len(work)))
    if workers == 1:
        digests = iter([_chunk_digest(flat, start) for flat, start in work])
    else:
        with ThreadPoolExecutor(workers) as pool:
            digests = iter(list(pool.map(lambda item: _chunk_digest(*item), work)))
    digest = hashlib.sha256(b"full")
    for (name, tensor), tensor_pieces in zip(tensors, pieces):
        _feed(digest, (name, str(tensor.dtype), tuple(tensor.shape), b"".join(next(digests) for _ in tensor_pieces)))
    return digest.hexdigest()


def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every materialised parameter and buffer (shared ones once), in registration order."""
    return [(name, tensor) for name, tensor in [*module.named_parameters(), *module.named_buffers()]
            if not tensor.is_meta]


def _weights(module: torch.nn.Module, weights: str = "full") -> str:
    """The fingerprint of `module`'s parameters and buffers: every byte (`"full"`) or a
    strided sample of each tensor (`"sampled"`). Tensors on the meta device (weights not
    here: a remote model) are keyed by name and shape, and the checkpoint's name and commit
    stand in for their values."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHTS))} (every byte, or a strided sample "
                         f"of {SAMPLES} elements per tensor), got {weights!r}")
    digest = hashlib.sha256()
    _feed(digest, (weights, _full(module) if weights == "full" else _sampled(module)))
    unmaterialised = [(name, tuple(t.shape)) for name, t in [*module.named_parameters(), *module.named_buffers()]
                      if t.is_meta]
    if unmaterialised:  # weights not here (meta device, remote): only the checkpoint's name can stand in
        config = getattr(module, "config", None)
        _feed(digest, ("unmaterialised", unmaterialised, getattr(config, "_name_or_path", None),
                       getattr(config, "_commit_hash", None)))
    return digest.hexdigest()[:32]


def model_parts(model: Any, weights: str = "full") -> dict[str, str]:
    """Fingerprints of what a model's results depend on: `"model weights"`, `"model config"`
    (without runtime flags and paths) and `"tokenizer"` (its behaviour: see
    `tokenizer_fingerprint`).

    `weights="full"` (the default) hashes every byte of every parameter and buffer (XXH3-128
    per 64 MiB piece, at memory speed: see benchmarks/RESULTS.md for the throughput measured); `weights="sampled"` reads a strided sample of `SAMPLES`
    elements per tensor, at a cost independent of the model's size, but misses an edit that
    touches no sampled element (one row of a large embedding, say). Either sees any
    training step or re-initialisation.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.core._fingerprint import differing, model_parts
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> parts = model_parts(model)
    >>> sorted(parts)
    ['model config', 'model weights', 'tokenizer']
    >>> differing(parts, model_parts(mi.zoo.tiny_model("qwen3_moe", seed=1)))   # re-initialised
    ['model weights']
    >>> differing(parts, model_parts(mi.zoo.tiny_model("qwen3_moe")))           # the same model again
    []
    >>> with torch.no_grad():
    ...     model._module.get_input_embeddings().weight[7, 3] += 1               # one number changed
    >>> differing(parts, model_parts(model))
    ['model weights']
    >>> model.tokenizer.padding_side = "right"                                   # other padding
    >>> differing(parts, model_parts(model))
    ['model weights', 'tokenizer']

    ```
    """
    module = getattr(model, "_module", model)
    weights_key = _weights(module, weights)
    config = getattr(module, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    settings = {k: v for k, v in settings.items() if not k.startswith("_") and k not in _RUNTIME_CONFIG}
    return {"model weights": weights_key,
            "model config": fingerprint(json.dumps(settings, sort_keys=True, default=str)),
            "tokenizer": tokenizer_fingerprint(getattr(model, "tokenizer", None))}


# Tokenizer attributes that record where it came from or what it warned about, not what it does
# (`_persistent_id`: nnsight tags the tokenizer with it whenever a request is serialized).
_TOKENIZER_RECORDS = frozenset({"init_inputs", "init_kwargs", "name_or_path", "_processor_class", "verbose",
                                "_in_target_context_manager", "deprecation_warnings", "files_loaded", "backend",
                                "_tokenizer", "tokens_trie", "_decode_use_source_tokenizer", "_persistent_id"})
# The texts a tokenizer's behaviour is probed on: several scripts, digits, case, whitespace
# runs, combining marks, full-width forms, emoji, contractions (its own special and added
# tokens are appended).
PROBE = ("Hello, World! It's 2024-05-17: 3.14159 & 1,000,000 (#42) e.g. @user <b>x</b> don't I'M",
         "  two  spaces,\ttab\nnewline\r\n trailing   ", "MiXeD CaSe ÀÉÎÕÜ àéîõü Straße ẞ ǅ İı",
         "Cafe\u0301 vs Café; ﬁ ① ＦＵＬＬ ｗｉｄｔｈ ½ ² x\u00a0y", "Привет, мир! Ελληνικά", "你好，世界。こんにちは 한국어",
         "مرحبا بالعالم שלום עולם", "नमस्ते दुनिया ภาษาไทย ქართული", "0123456789 00 007 1e-5",
         "🙂👍🏽 \U0001f468\u200d\U0001f469\u200d\U0001f467 ✓ → ∑ ∞", "", " ", "a")


def _canonical(value: Any) -> str:
    """`value` as one canonical JSON text (dict keys sorted): cheap for large vocabularies and
    id lists. What JSON has no form for goes through `_plain_object`; keys JSON cannot sort
    or hold (tuples, mixed types: a slow tokenizer's merge ranks) take `_plain`'s general path."""
    try:
        return json.dumps(value, sort_keys=True, default=_plain_object, ensure_ascii=False)
    except (TypeError, ValueError):  # unsortable keys, a cycle
        return fingerprint(_plain(value))


def _plain_object(value: Any, depth: int = 0) -> Any:
    """A value JSON has no form for, as plain data: an `AddedToken` by its content and flags,
    a tensor or bytes (a sentencepiece model) by their fingerprint, a set sorted, an enum by
    its value, a compiled regex by its pattern, a function by its name, another object by
    its attributes (two levels deep); what is left is named by its type alone (a repr may
    show an address: never keyed by it)."""
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if type(value).__name__ == "AddedToken":
        return [name, *(getattr(value, f, None) for f in ("content", "single_word", "lstrip", "rstrip", "normalized",
                                                          "special"))]
    if hasattr(value, "serialized_model_proto"):  # a sentencepiece model
        return [name, fingerprint(value.serialized_model_proto())]
    if isinstance(value, (torch.Tensor, bytes)) or type(value).__module__ == "numpy":
        return [name, fingerprint(value)]
    if isinstance(value, (set, frozenset)):
        return sorted(map(_canonical, value))
    if isinstance(value, re.Pattern):
        return [name, value.pattern, value.flags]
    if isinstance(value, enum.Enum):
        return [name, _plain(value.value)]
    if callable(value) or isinstance(value, type):
        return [name, getattr(value, "__qualname__", None)]
    if hasattr(value, "__dict__") and depth < 2:
        return [name, _plain({k: v for k, v in vars(value).items() if not k.startswith("__")}, depth + 1)]
    return name


def _plain(value: Any, depth: int = 0) -> Any:
    """`value` as plain data `fingerprint` takes, element by element (see `_plain_object`)."""
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth) for v in value]
    return _plain_object(value, depth)


def _probe(tokenizer: Any) -> str:
    """What `tokenizer` does with `PROBE` (plus its own special and added tokens in a text):
    ids with and without special tokens, a pair, a padded batch and the decoded ids, as one
    JSON text. A call it refuses is recorded by its error type."""
    def attempt(call: Any) -> Any:
        try:
            return call()
        except Exception as error:  # a tokenizer without pairs, pad or decode: that is its behaviour too
            return ["error", type(error).__name__]

    def ids(out: Any) -> Any:
        return out.get("input_ids") if isinstance(out, Mapping) else out

    def encode(*args: Any, **kwargs: Any) -> dict:
        try:  # verbose=False: no warning that a probe text is longer than the model
            return dict(tokenizer(*args, verbose=False, **kwargs))
        except TypeError:  # a tokenizer without that option
            return dict(tokenizer(*args, **kwargs))

    specials = getattr(tokenizer, "all_special_tokens", None) or []
    added = [getattr(t, "content", t) for t in list(getattr(tokenizer, "added_tokens_decoder", {}).values())[:64]]
    texts = [*PROBE, " x ".join(map(str, [*specials, *added])) + " x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = attempt(lambda: encode(texts))
        bare = attempt(lambda: encode(texts, add_special_tokens=False))
        pair = attempt(lambda: encode(["Question?"], ["Answer."]))
        padded = attempt(lambda: dict(tokenizer.pad({"input_ids": [ids(encode(t, add_special_tokens=False))
                                                                   for t in ("ab", "abc def")]})))
        decoded = attempt(lambda: [tokenizer.decode(i) for i in ids(encoded)])
        skipped = attempt(lambda: tokenizer.batch_decode(ids(encoded), skip_special_tokens=True))
    return _canonical([encoded, bare, pair, padded, decoded, skipped])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A fingerprint of what `tokenizer` does, so that any change of its behaviour changes it:
    its class; for a fast (`tokenizers`) tokenizer its whole definition (normalizer,
    pre-tokenizer, model and vocabulary, post-processor, decoder, added tokens with their
    flags; not the padding and truncation a call leaves set); every attribute of its own
    (padding and truncation side, special tokens, added tokens, maximum length, a
    sentencepiece model, a slow tokenizer's vocabulary and options); and a behavioural probe
    (the ids of `PROBE` with and without special tokens, a pair, a padded batch, the decoded
    text), which also catches what no attribute shows. `None` (no tokenizer) has a key too.

    ```python
    >>> import moe_interp as mi
    >>> from tokenizers import normalizers
    >>> from moe_interp.core._fingerprint import tokenizer_fingerprint
    >>> tok = mi.zoo.byte_tokenizer()
    >>> key = tokenizer_fingerprint(tok)
    >>> key == tokenizer_fingerprint(mi.zoo.byte_tokenizer())      # built again: the same
    True
    >>> tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    >>> key == tokenizer_fingerprint(tok)
    False

    ```
    """
    if tokenizer is None:
        return fingerprint("no tokenizer")
    definition = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if hasattr(backend, "to_str"):
        definition = json.loads(backend.to_str())
        for state in ("padding", "truncation"):  # what the last call set: transformers resets it on every call
            definition.pop(state, None)
    own = {k: v for k, v in vars(tokenizer).items() if k not in _TOKENIZER_RECORDS} if hasattr(tokenizer, "__dict__") \
        else {}
    if definition is None and hasattr(tokenizer, "get_vocab"):
        own["get_vocab()"] = tokenizer.get_vocab()
    return fingerprint((f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
                        json.dumps(definition, sort_keys=True), _canonical(own), _probe(tokenizer)))


def differing(stored: Any, current: Mapping[str, str]) -> list[str]:
    """The names of the parts of `current` whose fingerprint differs in `stored` (all of them
    when `stored` is not a key of this kind, e.g. from an older version).

    ```python
    >>> from moe_interp.core._fingerprint import differing
    >>> differing({"corpus": "ab12", "settings": "cd34"}, {"corpus": "ab12", "settings": "ef56"})
    ['settings']
    >>> differing(None, {"corpus": "ab12"})
    ['corpus']

    ```
    """
    if not isinstance(stored, Mapping):
        return list(current)
    return [part for part, value in current.items() if stored.get(part) != value]


def _checksum(state: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint's whole content (every entry but the checksum itself, tensors by bytes)."""
    digest = hashlib.sha256(b"moe_interp checkpoint")
    _feed(digest, {k: v for k, v in state.items() if k != "sha256"})
    return digest.hexdigest()


def save_checkpoint(path: Any, state: Mapping[str, Any]) -> None:
    """Write `state` (`{"format", "key", "done", <field>: tensor, ...}`) to `path` with a
    sha256 checksum of its content, atomically: an interrupted save leaves the previous
    checkpoint whole. `load_checkpoint(..., checksum=True)` verifies the checksum.

    ```python
    >>> import os, tempfile, torch
    >>> from moe_interp.core._fingerprint import load_checkpoint, save_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> save_checkpoint(path, {"format": "demo/1", "key": {"corpus": "ab12"}, "done": 2, "sums": torch.ones(3)})
    >>> load_checkpoint(path, {"corpus": "ab12"}, {"sums": torch.zeros(3)}, 4, "demo/1", "a demo", checksum=True)
    (2, {'sums': tensor([1., 1., 1.])})

    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {**state, "sha256": _checksum(state)}
    replace_file(path, lambda temp: torch.save(content, temp))


def load_checkpoint(path: Any, key: Mapping[str, str], fields: Mapping[str, torch.Tensor], total: int, form: str,
                    what: str, checksum: bool = False) -> tuple[int, dict]:
    """`(done, tensors)` stored at `path` by `what` (e.g. `"mi.expert_attribution"`) in format
    `form`, after checking that it is whole and this very run's (`key`: part name ->
    fingerprint): with `checksum=True` its content matches the sha256 checksum
    `save_checkpoint` stored (any changed byte is refused, never resumed with other
    numbers); `done` in `[0, total]`; each of `fields` stored with the same shape and dtype.
    Anything else raises `ResumeError` naming the file, what is wrong and the fix.
    The state is a dict `{"format", "key", "done", <field>: tensor, ...}` saved by `torch.save`.
    """
    fix = "delete it or pass another checkpoint path (a checkpoint is never reused for a different run)"
    damaged = (f"checkpoint {path} fails its sha256 checksum: it was changed or damaged after it was written, and "
               f"resuming it would give other numbers; delete it (the run starts over) or pass another checkpoint path")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # zip, pickle, EOF, ...: all mean the same to the user
        raise ResumeError(f"checkpoint {path} cannot be read ({type(error).__name__}): it is damaged or not a "
                          f"{what} checkpoint; {fix}") from error
    if not isinstance(state, dict):
        raise ResumeError(f"checkpoint {path} is not a {what} checkpoint of this version ({form}); {fix}")
    if checksum and "sha256" in state:  # before reading anything else of it: a damaged format or key misleads
        try:
            intact = state["sha256"] == _checksum(state)
        except (TypeError, ValueError):  # content no checkpoint holds (a damaged pickle)
            intact = False
        if not intact:
            raise ResumeError(damaged)
    if state.get("format") != form:
        raise ResumeError(f"checkpoint {path} is not a {what} checkpoint of this version ({form}); {fix}")
    if checksum and "sha256" not in state:
        raise ResumeError(damaged)
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
