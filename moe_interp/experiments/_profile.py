"""`mi.profile`: routing statistics of a model over a multilingual corpus, resumable."""

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from moe_interp.core._checks import check_positive
from moe_interp.core._fingerprint import WEIGHTS, ResumeError, check_corpus, fingerprint, model_parts
from moe_interp.arch import describe
from moe_interp.runtime._inputs import max_positions
from moe_interp.runtime._session import profile_session
from moe_interp.runtime._tracer import per_row_trace
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._interventions import RouterRecord, flatten
from moe_interp.analysis._stats import RoutingStats
from moe_interp.experiments._resume import run_resumable

__all__ = ["profile", "ResumeError"]


_FORMAT = "moe_interp.profile-checkpoint/4"  # 4: checksummed, keyed by every weight byte and the tokenizer's behaviour
# trace_kwargs that say where a run executes, not what it computes
_WHERE = ("remote", "backend", "blocking", "job_id", "verbose")
# trace_kwargs that say how texts become tokens: mi.profile tokenizes the corpus itself
_TOKENIZE = ("truncation", "max_length", "add_special_tokens")
_LONG_TEXTS = ("window", "truncate", "error")  # mi.profile's policies for texts longer than the model's positions


def _tokenize(tokenizer: Any, texts: list[str], options: dict, target: bool = False) -> list[list[int]]:
    if target:  # the tokenizer's target mode (NLLB: the target-language code, tokenizer.tgt_lang)
        return tokenizer(text_target=texts, verbose=False, **options)["input_ids"]
    return tokenizer(texts, verbose=False, **options)["input_ids"]


def _rows(model: Any, corpus: dict, long_texts: str, options: dict,
          decoder_start: int | None = None) -> tuple[list[tuple], int]:
    """`(item, token ids)` of every row to run (one per text, or one per window of a text
    longer than the model's positions), and how many texts were that long. Each text is
    tokenized once, as a whole, so its special tokens (a BOS, an EOS) appear once, in its
    first or last window.

    With `decoder_start` (an encoder-decoder model) a row is `(item, encoder ids, decoder
    ids)`: the decoder's are the same tokens shifted right behind `decoder_start`
    (teacher forcing), or, for a corpus of pairs (`{(source, target): [(text, text)]}`), the
    target's tokens so shifted."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("mi.profile tokenizes the corpus with the model's tokenizer, and this model has none: "
                         "wrap it with one, mi.wrap(hf_model, tokenizer)")
    if not options.get("truncation"):
        options = {k: v for k, v in options.items() if k != "max_length"}  # as mi.trace: only with truncation
    limit = max_positions(model)
    rows: list[tuple] = []
    item, long_items = -1, 0
    for lang, texts in corpus.items():
        pairs = isinstance(lang, tuple)
        sources = [source for source, _ in texts] if pairs else texts
        encoded = _tokenize(tokenizer, sources, options)
        decoded = _tokenize(tokenizer, [target for _, target in texts], options, target=True) if pairs else encoded
        for k, (text, ids, target) in enumerate(zip(sources, encoded, decoded)):
            item += 1
            where = f"corpus[{lang!r}][{k}]"
            if not text or not ids or not target or (pairs and not texts[k][1]):  # a BOS alone is no text either
                raise ValueError(f"{where} has no tokens (an empty text): nothing to route. Drop empty texts first")
            if limit is None or max(len(ids), len(target)) <= limit:
                rows.append((item, ids) if decoder_start is None else (item, ids, [decoder_start, *target[:-1]]))
                continue
            if long_texts == "error" or (pairs and long_texts == "window"):
                raise ValueError(f"{where} has {max(len(ids), len(target))} tokens, more than this model's {limit} "
                                 "positions (max_position_embeddings): "
                                 + ("a pair's windows would not correspond, so pass long_texts=\"truncate\" (the "
                                    f"first {limit} tokens of each side) or shorter pairs" if pairs else
                                    f"pass long_texts=\"window\" (the default: consecutive windows of {limit} "
                                    f"tokens, counted as that one text) or long_texts=\"truncate\" (its first "
                                    f"{limit} tokens only)"))
            long_items += 1
            if pairs:  # truncate: each side's first `limit` tokens
                rows.append((item, ids[:limit], [decoder_start, *target[: limit - 1]]))
                continue
            stop = limit if long_texts == "truncate" else len(ids)
            for start in range(0, stop, limit):
                window = ids[start : start + limit]
                rows.append((item, window) if decoder_start is None else (item, window, [decoder_start, *window[:-1]]))
    return rows, long_items


def _local_batches(model: Any, spec: Any, todo: list[int], inputs: Any, row_language: torch.Tensor,
                   interventions: list, num_languages: int, batch_size: int, session_batches: Any,
                   trace_kwargs: dict) -> Iterator[tuple]:
    """`(rows, count, tokens, gate_mass)` per batch of `todo` rows, one local trace each."""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tracer = per_row_trace(model, inputs(chunk), *interventions, RouterRecord(), **trace_kwargs)
        with torch.no_grad(), tracer:
            pass
        routing = tracer.routing
        mass = torch.zeros((num_languages,) + tuple(routing.gate_mass.shape[1:]), dtype=torch.float64)
        yield chunk, routing.count, routing.tokens, mass.index_add_(0, row_language[torch.tensor(chunk)],
                                                                    routing.gate_mass)


def _stack_batches(model: Any, todo: list[int], inputs: Any, row_languages: dict[str, torch.Tensor],
                   interventions: list, num_languages: dict[str, int], batch_size: int,
                   trace_kwargs: dict) -> Iterator[tuple]:
    """`(rows, {stack: (count, tokens, gate_mass)})` per batch of `todo` rows of a model with
    several stacks, one local trace each (`tr.routing_by_stack`)."""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tracer = per_row_trace(model, inputs(chunk), *interventions, RouterRecord(), **trace_kwargs)
        with torch.no_grad(), tracer:
            pass
        parts = {}
        for stack, routing in tracer.routing_by_stack.items():
            mass = torch.zeros((num_languages[stack],) + tuple(routing.gate_mass.shape[1:]), dtype=torch.float64)
            parts[stack] = (routing.count, routing.tokens,
                            mass.index_add_(0, row_languages[stack][torch.tensor(chunk)], routing.gate_mass))
        yield chunk, parts


def _remote_batches(model: Any, spec: Any, todo: list[int], inputs: Any, row_language: torch.Tensor,
                    interventions: list, num_languages: int, batch_size: int, session_batches: Any,
                    trace_kwargs: dict) -> Iterator[tuple]:
    """`(rows, count, tokens, gate_mass)` per session request of `session_batches` batches."""
    session_kwargs = {k: trace_kwargs[k] for k in _WHERE if k in trace_kwargs}
    model_kwargs = {k: v for k, v in trace_kwargs.items() if k not in session_kwargs and k != "keep_output"}
    plan = compile_plan(spec, [*interventions, RouterRecord()])
    per_request = (session_batches or len(todo)) * batch_size
    for first in range(0, len(todo), per_request):
        chunks = [todo[start : start + batch_size]
                  for start in range(first, min(first + per_request, len(todo)), batch_size)]
        packed = profile_session(model, [(inputs(chunk), row_language[torch.tensor(chunk)]) for chunk in chunks],
                                 plan, num_languages, session_kwargs, model_kwargs)
        yield ([r for chunk in chunks for r in chunk], packed["item_count"], packed["item_tokens"],
               packed["gate_mass"].to(torch.float64))


def profile(model: Any, corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
            *interventions: Any, batch_size: int = 16,
            progress: bool = True, checkpoint: str | os.PathLike | None = None, save_every: int = 10,
            session_batches: int | None = None, long_texts: str = "window", weights_hash: str = "full",
            **trace_kwargs: Any) -> RoutingStats | dict[str, RoutingStats]:
    """Routing statistics of `model` over `corpus` (`{language: [texts]}`), per item too.

    Texts are tokenized once, then batched (longest first, to waste little padding; padding
    is excluded, so batching never changes the counts) and every text's counts are kept
    (`item_count`), which gives bootstrap confidence intervals. `interventions` apply during
    profiling (e.g. an ablation). With `checkpoint=path`, partial results are written every
    `save_every` batches and on interruption; rerunning the same call resumes there.
    A checkpoint is keyed by content: the model's weights (every byte; `weights_hash=
    "sampled"` reads a strided sample of each tensor instead, at a cost independent of the
    model's size, and may miss an edit of a few numbers), config and tokenizer (its
    behaviour: normalizer, pre-tokenizer, post-processor, special and added tokens, padding
    side, ...), the corpus texts, the full interventions, `long_texts` and the trace
    settings. Any difference (say, the random-init twin of the model that wrote it) raises
    `ResumeError` naming the part that differs; a checkpoint whose bytes changed after it
    was written fails its sha256 checksum and is refused too. A checkpoint is never reused
    for another run. Other keyword arguments go to `mi.trace`
    (`truncation=True, max_length=N` and `add_special_tokens=` to the tokenizer).

    Texts longer than the model's positions (`max_position_embeddings`), by `long_texts`:
    - `"window"` (default): the text's tokens are split into consecutive windows of at most
      that many tokens (no overlap), each run as its own row; their counts and tokens add up
      to that text's `item_count` / `item_tokens` (an item is still one text, and its token
      total is the tokenizer's count for it). The text is tokenized once, so special tokens
      the tokenizer adds (a BOS) appear once, in the first window, and are counted once, as
      for a short text; later windows start without one, and each window attends only to
      itself (tokens near a window's start see less context than in a longer model).
    - `"truncate"`: only the first `max_position_embeddings` tokens of the text are routed.
    - `"error"`: a `ValueError` naming the text, before any batch runs.

    Encoder-decoder models (NLLB-MoE, Switch Transformers; `mi.describe(model).stacks`):
    the result is `{stack: RoutingStats}`, one per stack (`{"encoder": ..., "decoder": ...}`,
    as `tr.routing_by_stack`): each has its own stack's layers (global indices, `stacks`
    labels, so `select(layers="decoder:late")` works), tokens and per-text `item_count` /
    `item_tokens`, in the same item order. With plain texts the decoder reads the text
    itself, teacher-forced: its input is the text's tokens shifted one position right behind
    the model's `decoder_start_token_id` (what the model's own `shift_tokens_right` /
    `prepare_decoder_input_ids_from_labels` make of the text as labels), so a text of n
    tokens gives the encoder n tokens and the decoder n (the start token and the text's
    first n-1; its last token is only predicted). A long text's windows are shifted each.
    For a translation model, a corpus of parallel pairs
    `{(source language, target language): [(source text, target text), ...]}` gives the
    encoder the sources and the decoder the targets (tokenized with `text_target=`, so an
    NLLB tokenizer adds its `tgt_lang` code), teacher-forced as above: the encoder's stats
    are grouped by source language and the decoder's by target language (an item is one
    pair in both; `long_texts="truncate"` or `"error"` for pairs longer than the model's
    positions: their windows would not correspond). The UDHR is parallel (texts align by
    index): `{(s, t): list(zip(u[s], u[t])) for s, t in [("fra", "eng"), ("deu", "eng")]}`
    with `u = mi.datasets.udhr(["fra", "deu", "eng"])`. Padding is never counted; special
    tokens the tokenizer adds (NLLB's language codes, `</s>`) are counted like any other, as
    `mi.RouterRecord()` counts them. Such a profile runs locally (not `remote=`), and
    builds the decoder's inputs itself (no `decoder_input_ids=` in `trace_kwargs`).

    Remote (`remote=True`, `"local"`, a URL, or `backend=`): the batches run in ONE nnsight
    session request (`session_batches=N` splits them into requests of N batches each; the
    default sends all). The server aggregates: per row an int16/int32 `[layers, experts]`
    count table and a token total, gate mass summed per language. With `checkpoint=`,
    progress is saved after every request (resume is per request, not per batch). Windows
    are rows like any other there.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> corpus = mi.datasets.udhr(["eng", "deu", "fra"], split="heldout")   # bundled, offline
    >>> p = mi.profile(model, corpus, batch_size=8, progress=False)
    >>> p.languages, p.item_count.shape[0] == sum(len(t) for t in corpus.values())
    (('eng', 'deu', 'fra'), True)
    >>> small = mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=16)
    >>> p = mi.profile(small, {"eng": ["x" * 40]}, progress=False)   # windows of 16, 16, 8 tokens
    >>> p.item_tokens.tolist(), p.count[0, 0].sum().item()   # all 40 tokens, top-2 each
    ([40], 80)
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")
    >>> by_stack = mi.profile(seq2seq, {"eng": ["Hello", "Hi"]}, progress=False)   # teacher-forced decoder
    >>> {stack: (p.layers, p.item_tokens.tolist()) for stack, p in by_stack.items()}
    {'encoder': ((1, 3), [5, 2]), 'decoder': ((5, 7), [5, 2])}
    >>> pairs = {("fra", "eng"): [("Bonjour", "Hello")], ("deu", "eng"): [("Hallo", "Hi")]}
    >>> by_stack = mi.profile(seq2seq, pairs, progress=False)
    >>> by_stack["encoder"].languages, by_stack["decoder"].languages, by_stack["decoder"].item_tokens.tolist()
    (('fra', 'deu'), ('eng',), [5, 2])

    ```
    """
    spec = describe(model)
    pairs = _is_pairs(corpus)
    if spec.stack_inputs is not None or pairs:
        return _profile_stacks(model, spec, _check_pairs(corpus) if pairs else check_corpus(corpus), interventions,
                               batch_size=batch_size, progress=progress, checkpoint=checkpoint, save_every=save_every,
                               session_batches=session_batches, long_texts=long_texts, weights_hash=weights_hash,
                               trace_kwargs=trace_kwargs)
    corpus = check_corpus(corpus)
    interventions = _check_options(interventions, batch_size, save_every, session_batches, weights_hash, long_texts)
    languages = list(corpus)
    rows, long_items = _rows(model, corpus, long_texts, {k: trace_kwargs[k] for k in _TOKENIZE if k in trace_kwargs})
    row_item = torch.tensor([item for item, _ in rows], dtype=torch.long)
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r][1]), r))
    item_language = torch.tensor([lang for lang, texts in enumerate(corpus.values()) for _ in texts],
                                 dtype=torch.long)
    row_language = item_language[row_item]
    n_layers = len(spec.moe_layers)
    sums = {"item_count": torch.zeros(len(item_language), n_layers, spec.num_experts, dtype=torch.int32),
            "item_tokens": torch.zeros(len(item_language), dtype=torch.long),
            "gate_mass": torch.zeros(len(languages), n_layers, spec.num_experts, dtype=torch.float64)}
    key = {**model_parts(model, weights_hash), "corpus": fingerprint(corpus), "interventions": fingerprint(interventions),
           "long_texts": long_texts,
           "settings": fingerprint({k: v for k, v in trace_kwargs.items() if k not in _WHERE})}
    trace_kwargs = {k: v for k, v in trace_kwargs.items() if k not in _TOKENIZE}  # the rows are token ids
    remote = bool(trace_kwargs.get("remote")) or trace_kwargs.get("backend") is not None
    batches = _remote_batches if remote else _local_batches

    def inputs(chunk: list[int]) -> dict[str, torch.Tensor]:
        padded = model.tokenizer.pad({"input_ids": [rows[r][1] for r in chunk]}, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

    def steps(done: int, sums: dict[str, torch.Tensor]) -> Iterator[tuple[int, int]]:
        for chunk, count, tokens, mass in batches(model, spec, order[done:], inputs, row_language, interventions,
                                                  len(languages), batch_size, session_batches, trace_kwargs):
            index = row_item[torch.tensor(chunk)]  # a long text's windows add up to its item
            sums["gate_mass"] += mass
            sums["item_count"].index_add_(0, index, count.to(torch.int32))
            sums["item_tokens"].index_add_(0, index, tokens.long())
            yield len(chunk), int(tokens.sum())

    # remote: progress is saved after every session request
    sums = run_resumable(steps, sums, total=len(rows), key=key, checkpoint=checkpoint, form=_FORMAT, what="mi.profile",
                         save_every=1 if remote else save_every, progress=progress, desc="profiling")
    meta = {"interventions": [repr(i) for i in interventions], "items": len(item_language),
            "long_texts": long_texts, "long_items": long_items,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fingerprint": fingerprint(key)}
    return _stats(model, spec, languages, spec.moe_layers, item_language, sums["item_count"], sums["item_tokens"],
                  sums["gate_mass"], corpus, meta)


def _stats(model: Any, spec: Any, languages: list, layers: tuple, item_language: torch.Tensor,
           item_count: torch.Tensor, item_tokens: torch.Tensor, gate_mass: torch.Tensor, texts: dict, meta: dict,
           stacks: tuple | None = None) -> RoutingStats:
    """The profile's `RoutingStats`: per-language counts summed from the per-item ones, and the
    fingerprints of the `texts` each language read in its meta."""
    count = torch.zeros(len(languages), len(layers), spec.num_experts, dtype=torch.long)
    count.index_add_(0, item_language, item_count.long())
    tokens = torch.zeros(len(languages), dtype=torch.long).index_add_(0, item_language, item_tokens)
    config = getattr(getattr(model, "_module", None), "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch, **meta,
            # per language, so experiments can refuse to evaluate on the texts experts were chosen on
            "texts": {lang: fingerprint(t) for lang, t in texts.items()},
            # per text, so an evaluation corpus that shares some texts with this one is caught too
            "text_hashes": {lang: [fingerprint(text) for text in t] for lang, t in texts.items()}}
    return RoutingStats(tuple(languages), layers, spec.num_experts, spec.top_k, count, gate_mass, tokens,
                        item_count, item_tokens, item_language, meta=meta, stacks=stacks)


def _check_options(interventions: tuple, batch_size: int, save_every: int, session_batches: int | None,
                   weights_hash: str, long_texts: str) -> list:
    """The interventions to apply (profile records itself), after checking the options."""
    interventions = [i for i in flatten(interventions) if i.recording() is None]  # profile records itself
    check_positive("batch_size", batch_size)
    check_positive("save_every", save_every)
    if session_batches is not None:
        check_positive("session_batches", session_batches)
    if weights_hash not in WEIGHTS:
        raise ValueError(f"weights_hash must be one of {', '.join(map(repr, WEIGHTS))}, got {weights_hash!r}")
    if long_texts not in _LONG_TEXTS:
        raise ValueError(f"long_texts must be one of {', '.join(map(repr, _LONG_TEXTS))}, got {long_texts!r}")
    return interventions


def _is_pairs(corpus: Any) -> bool:
    return isinstance(corpus, Mapping) and bool(corpus) and any(isinstance(key, tuple) for key in corpus)


def _check_pairs(corpus: Mapping) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """A corpus of parallel pairs, `{(source language, target language): [(source, target), ...]}`."""
    out = {}
    for key, pairs in corpus.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) and k for k in key)):
            raise TypeError(f"a corpus of pairs is keyed by (source language, target language), e.g. ('fra', 'eng'); "
                            f"got the key {key!r}. Use one form for the whole corpus: {{language: [texts]}} or "
                            "{(source, target): [(source text, target text)]}")
        if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not all(
                isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2
                and all(isinstance(t, str) for t in p)
                for p in pairs):
            raise TypeError(f"corpus[{key!r}] must be a list of (source text, target text) pairs, e.g. "
                            "list(zip(sources, targets))")
        if not pairs:
            raise ValueError(f"corpus[{key!r}] is empty")
        out[key] = [tuple(p) for p in pairs]
    return out


def _profile_stacks(model: Any, spec: Any, corpus: dict, interventions: tuple, *, batch_size: int, progress: bool,
                    checkpoint: Any, save_every: int, session_batches: int | None, long_texts: str,
                    weights_hash: str, trace_kwargs: dict) -> dict[str, RoutingStats]:
    """`mi.profile` of a model with several stacks: `{stack: RoutingStats}` (see `profile`)."""
    pairs = isinstance(next(iter(corpus)), tuple)
    if spec.stack_inputs is None:
        raise ValueError(f"a corpus of (source, target) pairs needs an encoder-decoder model; this {spec.arch} model "
                         "reads one text: pass {language: [texts]} (e.g. the sources: {s: [a for a, _ in p] for "
                         "(s, _), p in corpus.items()})")
    stacks = list(dict.fromkeys(spec.stacks))
    config = getattr(getattr(model, "_module", None), "config", None)
    start = getattr(config, "decoder_start_token_id", None)
    if stacks != ["encoder", "decoder"] or start is None:
        raise ValueError(f"mi.profile runs models with an encoder and a decoder (with a decoder_start_token_id in "
                         f"their config); this {spec.arch} model's stacks are {stacks} (decoder_start_token_id "
                         f"{start}): profile one stack's inputs with mi.trace and tr.routing_by_stack")
    interventions = _check_options(interventions, batch_size, save_every, session_batches, weights_hash, long_texts)
    builds = [k for k in trace_kwargs if k.startswith("decoder_") or k in ("labels", "encoder_outputs")]
    if builds:
        raise ValueError(f"mi.profile builds the decoder's inputs itself (teacher-forced from each text), so "
                         f"{', '.join(builds)} cannot be passed: to give the decoder other texts, pass a corpus of "
                         "pairs {(source language, target language): [(source text, target text), ...]}")
    if bool(trace_kwargs.get("remote")) or trace_kwargs.get("backend") is not None:
        raise ValueError(f"mi.profile of a model with an encoder and a decoder ({spec.arch}) runs locally for now: "
                         "drop remote= / backend= (or run mi.trace(..., remote=True) per batch and read "
                         "tr.routing_by_stack)")
    rows, long_items = _rows(model, corpus, long_texts, {k: trace_kwargs[k] for k in _TOKENIZE if k in trace_kwargs},
                             decoder_start=int(start))
    # the languages each stack groups by: a pair's source for the encoder, its target for the decoder
    keys = list(corpus)
    side = {"encoder": 0, "decoder": 1}
    languages = {stack: list(dict.fromkeys(k[side[stack]] for k in keys)) if pairs else [str(k) for k in keys]
                 for stack in stacks}
    item_language = {stack: torch.tensor([languages[stack].index(key[side[stack]] if pairs else key)
                                          for key in keys for _ in corpus[key]], dtype=torch.long)
                     for stack in stacks}
    row_item = torch.tensor([row[0] for row in rows], dtype=torch.long)
    row_languages = {stack: item_language[stack][row_item] for stack in stacks}
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r][1]), r))
    layers = {stack: tuple(layer for layer, label in zip(spec.moe_layers, spec.stacks) if label == stack)
              for stack in stacks}
    n_items = len(row_item.unique()) if rows else 0
    sums = {}
    for stack in stacks:
        sums[f"{stack}.item_count"] = torch.zeros(n_items, len(layers[stack]), spec.num_experts, dtype=torch.int32)
        sums[f"{stack}.item_tokens"] = torch.zeros(n_items, dtype=torch.long)
        sums[f"{stack}.gate_mass"] = torch.zeros(len(languages[stack]), len(layers[stack]), spec.num_experts,
                                                 dtype=torch.float64)
    key = {**model_parts(model, weights_hash), "corpus": fingerprint({repr(k): v for k, v in corpus.items()}),
           "interventions": fingerprint(interventions), "long_texts": long_texts, "decoder": "teacher-forced",
           "settings": fingerprint({k: v for k, v in trace_kwargs.items() if k not in _WHERE})}
    trace_kwargs = {k: v for k, v in trace_kwargs.items() if k not in _TOKENIZE}  # the rows are token ids

    def inputs(chunk: list[int]) -> dict[str, torch.Tensor]:
        encoder = model.tokenizer.pad({"input_ids": [rows[r][1] for r in chunk]}, return_tensors="pt")
        decoder = model.tokenizer.pad({"input_ids": [rows[r][2] for r in chunk]}, return_tensors="pt")
        return {"input_ids": encoder["input_ids"], "attention_mask": encoder["attention_mask"],
                "decoder_input_ids": decoder["input_ids"], "decoder_attention_mask": decoder["attention_mask"]}

    def steps(done: int, sums: dict[str, torch.Tensor]) -> Iterator[tuple[int, int]]:
        for chunk, parts in _stack_batches(model, order[done:], inputs, row_languages, interventions,
                                           {stack: len(languages[stack]) for stack in stacks}, batch_size,
                                           trace_kwargs):
            index = row_item[torch.tensor(chunk)]  # a long text's windows add up to its item
            routed = 0
            for stack, (count, tokens, mass) in parts.items():
                sums[f"{stack}.gate_mass"] += mass
                sums[f"{stack}.item_count"].index_add_(0, index, count.to(torch.int32))
                sums[f"{stack}.item_tokens"].index_add_(0, index, tokens.long())
                routed += int(tokens.sum())
            yield len(chunk), routed

    sums = run_resumable(steps, sums, total=len(rows), key=key, checkpoint=checkpoint, form=_FORMAT,
                         what="mi.profile", save_every=save_every, progress=progress, desc="profiling")
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = {}
    for stack in stacks:
        texts: dict = {}
        for k in keys:  # the texts this stack read, per its language
            texts.setdefault(k[side[stack]] if pairs else str(k), []).extend(
                [pair[side[stack]] for pair in corpus[k]] if pairs else corpus[k])
        meta = {"interventions": [repr(i) for i in interventions], "items": n_items, "stack": stack,
                "decoder": "pairs: the target, teacher-forced" if pairs else "the text itself, teacher-forced",
                "long_texts": long_texts, "long_items": long_items, "created": created, "fingerprint": fingerprint(key)}
        out[stack] = _stats(model, spec, languages[stack], layers[stack], item_language[stack],
                            sums[f"{stack}.item_count"], sums[f"{stack}.item_tokens"], sums[f"{stack}.gate_mass"],
                            texts, meta, stacks=(stack,) * len(layers[stack]))
    return out
