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


def _rows(model: Any, corpus: dict[str, list[str]], long_texts: str,
          options: dict) -> tuple[list[tuple[int, list[int]]], int]:
    """`(item, token ids)` of every row to run (one per text, or one per window of a text
    longer than the model's positions), and how many texts were that long. Each text is
    tokenized once, as a whole, so its special tokens (a BOS, an EOS) appear once, in its
    first or last window."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("mi.profile tokenizes the corpus with the model's tokenizer, and this model has none: "
                         "wrap it with one, mi.wrap(hf_model, tokenizer)")
    if not options.get("truncation"):
        options = {k: v for k, v in options.items() if k != "max_length"}  # as mi.trace: only with truncation
    limit = max_positions(model)
    rows: list[tuple[int, list[int]]] = []
    item, long_items = -1, 0
    for lang, texts in corpus.items():
        for k, (text, ids) in enumerate(zip(texts, tokenizer(texts, verbose=False, **options)["input_ids"])):
            item += 1
            where = f"corpus[{lang!r}][{k}]"
            if not text or not ids:  # a BOS alone is no text either
                raise ValueError(f"{where} has no tokens (an empty text): nothing to route. Drop empty texts first")
            if limit is None or len(ids) <= limit:
                rows.append((item, ids))
                continue
            if long_texts == "error":
                raise ValueError(f"{where} has {len(ids)} tokens, more than this model's {limit} positions "
                                 f"(max_position_embeddings): pass long_texts=\"window\" (the default: consecutive "
                                 f"windows of {limit} tokens, counted as that one text) or long_texts=\"truncate\" "
                                 f"(its first {limit} tokens only)")
            stop = limit if long_texts == "truncate" else len(ids)
            rows.extend((item, ids[start : start + limit]) for start in range(0, stop, limit))
            long_items += 1
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


def profile(model: Any, corpus: Mapping[str, Sequence[str]], *interventions: Any, batch_size: int = 16,
            progress: bool = True, checkpoint: str | os.PathLike | None = None, save_every: int = 10,
            session_batches: int | None = None, long_texts: str = "window", weights_hash: str = "full",
            **trace_kwargs: Any) -> RoutingStats:
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

    ```
    """
    corpus = check_corpus(corpus)
    interventions = [i for i in flatten(interventions) if i.recording() is None]  # profile records itself
    check_positive("batch_size", batch_size)
    check_positive("save_every", save_every)
    if session_batches is not None:
        check_positive("session_batches", session_batches)
    if weights_hash not in WEIGHTS:
        raise ValueError(f"weights_hash must be one of {', '.join(map(repr, WEIGHTS))}, got {weights_hash!r}")
    if long_texts not in _LONG_TEXTS:
        raise ValueError(f"long_texts must be one of {', '.join(map(repr, _LONG_TEXTS))}, got {long_texts!r}")
    spec = describe(model)
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
    item_count, item_tokens, gate_mass = sums["item_count"], sums["item_tokens"], sums["gate_mass"]
    count = torch.zeros(len(languages), n_layers, spec.num_experts, dtype=torch.long)
    count.index_add_(0, item_language, item_count.long())
    tokens = torch.zeros(len(languages), dtype=torch.long).index_add_(0, item_language, item_tokens)
    config = getattr(getattr(model, "_module", None), "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
            "interventions": [repr(i) for i in interventions], "items": len(item_language),
            "long_texts": long_texts, "long_items": long_items,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fingerprint": fingerprint(key),
            # per language, so experiments can refuse to evaluate on the texts experts were chosen on
            "texts": {lang: fingerprint(texts) for lang, texts in corpus.items()},
            # per text, so an evaluation corpus that shares some texts with this one is caught too
            "text_hashes": {lang: [fingerprint(text) for text in texts] for lang, texts in corpus.items()}}
    return RoutingStats(tuple(languages), spec.moe_layers, spec.num_experts, spec.top_k, count, gate_mass, tokens,
                        item_count, item_tokens, item_language, meta=meta)
