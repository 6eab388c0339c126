"""`mi.profile`: routing statistics of a model over a multilingual corpus, resumable."""

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from moe_interp.core._checks import check_positive
from moe_interp.core._fingerprint import (WEIGHTS, ResumeError, check_corpus, check_pairs, fingerprint, is_pairs,
                                          model_parts)
from moe_interp.arch import describe
from moe_interp.runtime._inputs import max_positions, pad_rows
from moe_interp.runtime._session import profile_session
from moe_interp.runtime._shipping import check_servable, model_lock, tokenize
from moe_interp.runtime._hooks import hooked_reader
from moe_interp.runtime._tracer import per_row_trace
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._interventions import RouterRecord, flatten
from moe_interp.analysis._stats import RoutingStats
from moe_interp.experiments._resume import run_resumable

__all__ = ["profile", "ResumeError"]


_FORMAT = "moe_interp.profile-checkpoint/5"  # 5: the weights key hashes by XXH3-128 (4: sha256)
# trace_kwargs that say where a run executes, not what it computes
_WHERE = ("remote", "backend", "blocking", "job_id", "verbose")
# trace_kwargs that say how texts become tokens: mi.profile tokenizes the corpus itself
_TOKENIZE = ("truncation", "max_length", "add_special_tokens")
_LONG_TEXTS = ("window", "truncate", "error")  # mi.profile's policies for texts longer than the model's positions
# A remote profile's default request size, in padded tokens (see `profile`'s docstring for why)
REQUEST_TOKENS = 2**15


def _tokenize(model: Any, texts: list[str], options: dict, target: bool = False) -> list[list[int]]:
    """Token ids of `texts` (under the model's lock: `_shipping.tokenize`)."""
    if target:  # the tokenizer's target mode (NLLB: the target-language code, tokenizer.tgt_lang)
        return tokenize(model, text_target=texts, verbose=False, **options)["input_ids"]
    return tokenize(model, texts, verbose=False, **options)["input_ids"]


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
        encoded = _tokenize(model, sources, options)
        decoded = _tokenize(model, [target for _, target in texts], options, target=True) if pairs else encoded
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


def _model_key(model: Any, weights_hash: str) -> dict[str, str]:
    """`core._fingerprint.model_parts`, holding the model's lock: its tokenizer probe calls the
    tokenizer, whose padding setting a trace in another thread would share (`_shipping.tokenize`)."""
    with model_lock(model):
        return model_parts(model, weights_hash)


def _local_forward(model: Any, batch: dict, interventions: list, trace_kwargs: dict,
                   record: RouterRecord = RouterRecord(), readers: dict | None = None) -> Any:
    """One local forward of `batch` with `interventions` and a per-row `record`: read by
    torch hooks where they serve it (`runtime._hooks.hooked_reader`: the same reader and kernels,
    without an nnsight trace's cost; the forward stops after the last routing it reads), else by
    an nnsight trace; both give `.routing` / `.routing_by_stack`. `readers` keeps the hooked
    reader across a profile's batches (prepared again until one serves: an auto-detected model's
    first batch is a trace, which checks the detection)."""
    readers = {} if readers is None else readers
    with torch.no_grad():
        if readers.get("hooks") is None:
            readers["hooks"] = hooked_reader(model, *interventions, record, **trace_kwargs)
        run = None if readers["hooks"] is None else readers["hooks"](batch)
    if run is not None:
        return run
    tracer = per_row_trace(model, batch, *interventions, record, **trace_kwargs)
    with torch.no_grad(), tracer:
        pass
    return tracer


def _by_language(values: torch.Tensor | None, row_language: torch.Tensor, num_languages: int) -> torch.Tensor | None:
    """Per-row `values` (`[rows, ...]`) summed per language (`row_language[row]`); None stays None."""
    if values is None:
        return None
    out = torch.zeros((num_languages,) + tuple(values.shape[1:]), dtype=values.dtype)
    return out.index_add_(0, row_language, values)


def _local_batches(model: Any, spec: Any, todo: list[int], inputs: Any, row_language: torch.Tensor,
                   interventions: list, num_languages: int, batch_size: int, session_batches: Any,
                   trace_kwargs: dict, record: RouterRecord = RouterRecord()) -> Iterator[tuple]:
    """`(rows, count, tokens, gate_mass, co_activation, entropy)` per batch of `todo` rows, one local
    forward each (read by torch hooks where they serve the interventions, `runtime._hooks`; else by
    an nnsight trace); gate mass, co-activation and entropy sums (None unless `record` asks) summed
    per language."""
    readers: dict = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tracer = _local_forward(model, inputs(chunk), interventions, trace_kwargs, record, readers)
        routing = tracer.routing
        languages = row_language[torch.tensor(chunk)]
        yield (chunk, routing.count, routing.tokens, _by_language(routing.gate_mass.double(), languages, num_languages),
               _by_language(routing.co_activation, languages, num_languages),
               _by_language(routing.entropy_sum, languages, num_languages))


def _stack_batches(model: Any, todo: list[int], inputs: Any, row_languages: dict[str, torch.Tensor],
                   interventions: list, num_languages: dict[str, int], batch_size: int,
                   trace_kwargs: dict, record: RouterRecord = RouterRecord()) -> Iterator[tuple]:
    """`(rows, {stack: (count, tokens, gate_mass, co_activation)})` per batch of `todo` rows of a
    model with several stacks, one local forward each (`routing_by_stack`, as `_local_batches`
    reads it)."""
    readers: dict = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tracer = _local_forward(model, inputs(chunk), interventions, trace_kwargs, record, readers)
        parts = {}
        for stack, routing in tracer.routing_by_stack.items():
            languages = row_languages[stack][torch.tensor(chunk)]
            parts[stack] = (routing.count, routing.tokens,
                            _by_language(routing.gate_mass.double(), languages, num_languages[stack]),
                            _by_language(routing.co_activation, languages, num_languages[stack]))
        yield chunk, parts


def _remote_batches(model: Any, requests: list[list[list[int]]], inputs: Any, row_group: torch.Tensor, plan: Any,
                    num_groups: int, trace_kwargs: dict, stack_tokens: list | None = None) -> Iterator[tuple]:
    """`(rows, item_count, item_tokens, gate_mass, co_activation, entropy)` per session request (`requests`:
    the batches of each, from `_requests`); gate mass and co-activation (None unless the plan
    records it) are summed per `row_group` (`num_groups` of them) on the server.
    With `stack_tokens` (a model with several stacks) `item_tokens` is `[rows, stacks]` and
    `item_count` / `gate_mass` hold every plan layer (`_session.profile_session`)."""
    session_kwargs = {k: trace_kwargs[k] for k in _WHERE if k in trace_kwargs}
    model_kwargs = {k: v for k, v in trace_kwargs.items() if k not in session_kwargs and k != "keep_output"}
    for chunks in requests:
        packed = profile_session(model, [(inputs(chunk), row_group[torch.tensor(chunk)]) for chunk in chunks],
                                 plan, num_groups, session_kwargs, model_kwargs, stack_tokens)
        pairs, nats = packed.get("co_activation"), packed.get("entropy")
        yield ([r for chunk in chunks for r in chunk], packed["item_count"], packed["item_tokens"],
               packed["gate_mass"].to(torch.float64), None if pairs is None else pairs.long(),
               None if nats is None else nats.to(torch.float64))


def _requests(todo: list[int], batch_size: int, batch_tokens: Any, request_tokens: int | None,
              session_batches: int | None) -> list[list[list[int]]]:
    """The requests a remote profile sends for the rows `todo` (in run order), each a list of
    batches of `batch_size` rows: as many consecutive batches as fit `request_tokens` padded
    tokens (`batch_tokens(batch)`; default `REQUEST_TOKENS`, where a larger batch goes alone),
    or `session_batches` batches each. Greedy, so the requests after a request boundary do
    not depend on how the run got there: a resumed profile sends the requests it had not
    finished, cut as they would have been.

    ```python
    >>> from moe_interp.experiments._profile import _requests
    >>> size = lambda batch: 10 * len(batch)                   # ten padded tokens a row
    >>> _requests(list(range(7)), 2, size, 40, None)          # two batches of 20 tokens a request
    [[[0, 1], [2, 3]], [[4, 5], [6]]]
    >>> _requests(list(range(7)), 2, size, None, 3)           # session_batches=3
    [[[0, 1], [2, 3], [4, 5]], [[6]]]
    >>> _requests(list(range(7)), 2, size, 15, None)
    Traceback (most recent call last):
    ValueError: request_tokens=15 is less than a batch of this corpus: its largest has 20 padded tokens ...

    ```
    """
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    sizes = [batch_tokens(batch) for batch in batches]
    if request_tokens is not None and sizes and max(sizes) > request_tokens:
        raise ValueError(f"request_tokens={request_tokens} is less than a batch of this corpus: its largest has "
                         f"{max(sizes)} padded tokens (rows x longest row), and a request holds whole batches. "
                         f"Pass request_tokens={max(sizes)} or more, or a smaller batch_size")
    budget = REQUEST_TOKENS if request_tokens is None else request_tokens
    requests: list[list[list[int]]] = []
    used = 0
    for batch, size in zip(batches, sizes):
        if not requests or (len(requests[-1]) >= session_batches if session_batches is not None
                            else used + size > budget):
            requests.append([])
            used = 0
        requests[-1].append(batch)
        used += size
    return requests


def _check_requests(request_tokens: Any, session_batches: Any, remote: bool) -> None:
    """`request_tokens=` / `session_batches=` size a remote profile's requests: checked here,
    before anything runs."""
    if request_tokens is not None and session_batches is not None:
        raise ValueError("pass one of request_tokens= (a budget of padded tokens per request) and session_batches= "
                         "(a number of batches per request), not both")
    for name, value in (("request_tokens", request_tokens), ("session_batches", session_batches)):
        if value is not None:
            check_positive(name, value)
            if not remote:
                raise ValueError(f"{name}= sizes the requests of a remote profile, and this one runs here: drop it, "
                                 "or pass remote=True (or remote='local', backend=) to run remotely")


def profile(model: Any, corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
            *interventions: Any, batch_size: int = 16,
            progress: bool = True, checkpoint: str | os.PathLike | None = None, save_every: int = 10,
            request_tokens: int | None = None, session_batches: int | None = None, long_texts: str = "window",
            weights_hash: str = "full", **trace_kwargs: Any) -> RoutingStats | dict[str, RoutingStats]:
    """Routing statistics of `model` over `corpus` (`{language: [texts]}`), per item too.

    Texts are tokenized once, then batched (longest first, to waste little padding; padding
    is excluded, so batching never changes the counts) and every text's counts are kept
    (`item_count`), which gives bootstrap confidence intervals. `interventions` apply during
    profiling (e.g. an ablation); a `mi.RouterRecord(co_activation=True)` among them also counts
    the pairs of experts chosen for the same token, per language (`co_activation`, `[languages,
    layers, E, E]`; per text it is not kept), here and remotely (what only a trace records, such
    as `by_token_kind`, is refused, naming `mi.trace`). With `checkpoint=path`, partial results
    are written every `save_every` batches and on interruption; rerunning the same call resumes
    there.
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

    Locally, each batch's routing is read by torch hooks where they serve the interventions
    (recording, no edits), and its forward stops once the last router it reads has handed its
    routing over: the layers after it, the final norm and the head do not run (they change no
    count). A model someone else watches (a torch hook registered on any of its modules, an
    accelerate hook that offloads weights) runs every forward to its end; a profile with edits
    (an ablation, a steer) runs an nnsight trace per batch.

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
    `mi.RouterRecord()` counts them. Such a profile builds the decoder's inputs itself (no
    `decoder_input_ids=` in `trace_kwargs`), and runs remotely too, per stack as here.

    Remote (`remote=True`, `"local"`, a URL, or `backend=`): the batches go in nnsight session
    requests of whole batches, as many consecutive ones as fit `request_tokens` padded tokens
    (rows x longest row, the encoder's and the decoder's added; default `REQUEST_TOKENS`,
    32,768, where one larger batch goes alone; an explicit budget smaller than a batch is
    refused before anything runs), or `session_batches=N` batches each (not both). The
    server aggregates: per row an int16/int32 `[layers, experts]` count table and a token
    total, gate mass summed per language, so the results equal a local profile's however
    the requests are cut. With `checkpoint=`, progress is saved after every request: an
    interrupted profile resumes at the first request that had not finished (a request is all
    or nothing), with the same cuts. The bar counts rows and moves once per request. Windows
    are rows like any other there. A model NDIF would serve differently (no hub id, a
    repaired NLLB-MoE) is refused before anything is sent.

    Why 32,768 tokens: NDIF kills a request that runs past its deployment's execution timeout
    ("Your job exceeded the execution timeout of Ns": ndif 0.1.2,
    `services/ray/deployments/modeling/base.py`, the block raced against
    `execution_timeout`), and nothing of it comes back. That timeout is set per deployment
    (`execution_timeout_seconds`, or `NDIF_DEFAULT_EXECUTION_TIMEOUT_SECONDS`; unset means
    no cap, and ndif's example config has 3600 s: `cli/lib/model_config.py`,
    `deployments/controller/controller.py`); NDIF's public deployments do not publish theirs
    (nnsight's remote-execution docs name none). A token budget keeps a request's forwards
    short whatever the texts' lengths: at a slow 1,000 tokens/s (a large model, with
    nnsight's per-layer interleaving, on ndif's sandbox every read a socket round trip)
    32,768 tokens take about half a minute, far below any timeout a shared deployment would
    set, while a request's fixed cost (queue, payload, model lookup) is paid once per
    32,768 tokens. The result does not grow with tokens but with rows: about
    `rows x layers x experts x 2` bytes, 4 MB for 330 texts of 100 tokens on a 48-layer,
    128-expert model, under the 8 MiB above which ndif sends a result through its object
    store instead of inline (`common/providers/redis.py`, `STOCK_PUBSUB_SOFT_LIMIT_BYTES`).
    Lower it for a slow model or many short texts. A time budget would not cut the same
    requests on a rerun, so a checkpoint could not resume them.

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
    >>> far = mi.profile(small, {"eng": ["x" * 40, "y" * 10]}, batch_size=1, progress=False,
    ...                  remote="local", request_tokens=18)          # three requests: 16, 16, then 10 + 8 tokens
    >>> far.item_tokens.tolist(), far.count[0, 0].sum().item()
    ([40, 10], 100)

    ```
    """
    spec = describe(model)
    pairs = is_pairs(corpus)
    remote = bool(trace_kwargs.get("remote")) or trace_kwargs.get("backend") is not None
    _check_requests(request_tokens, session_batches, remote)
    if remote:  # before anything is sent, or a checkpoint written
        check_servable(model, trace_kwargs.get("remote"))
    if spec.stack_inputs is not None or pairs:
        return _profile_stacks(model, spec, check_pairs(corpus) if pairs else check_corpus(corpus), interventions,
                               batch_size=batch_size, progress=progress, checkpoint=checkpoint, save_every=save_every,
                               request_tokens=request_tokens, session_batches=session_batches, long_texts=long_texts,
                               weights_hash=weights_hash, trace_kwargs=trace_kwargs)
    corpus = check_corpus(corpus)
    record = _recorder(interventions)
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
    key = {**_model_key(model, weights_hash), "corpus": fingerprint(corpus), "interventions": fingerprint(interventions),
           "long_texts": long_texts,
           "settings": fingerprint({k: v for k, v in trace_kwargs.items() if k not in _WHERE})}
    if record.co_activation:  # a key part only when asked: checkpoints of plain profiles resume as before
        sums["co_activation"] = torch.zeros(len(languages), n_layers, spec.num_experts, spec.num_experts,
                                            dtype=torch.long)
        key["co_activation"] = "recorded"
    if record.entropy:  # the same
        sums["entropy"] = torch.zeros(len(languages), n_layers, dtype=torch.float64)
        key["entropy"] = "recorded"
    trace_kwargs = {k: v for k, v in trace_kwargs.items() if k not in _TOKENIZE}  # the rows are token ids

    def inputs(chunk: list[int]) -> dict[str, torch.Tensor]:
        return pad_rows(model.tokenizer, [rows[r][1] for r in chunk])

    def padded(chunk: list[int]) -> int:
        return len(chunk) * max(len(rows[r][1]) for r in chunk)

    def batches(todo: list[int]) -> Iterator[tuple]:
        if not remote:
            return _local_batches(model, spec, todo, inputs, row_language, interventions, len(languages), batch_size,
                                  session_batches, trace_kwargs, record)
        return _remote_batches(model, _requests(todo, batch_size, padded, request_tokens, session_batches), inputs,
                               row_language, compile_plan(spec, [*interventions, record]), len(languages),
                               trace_kwargs)

    # cut once here too: a budget smaller than a batch is refused before anything runs
    requests = len(_requests(order, batch_size, padded, request_tokens, session_batches)) if remote else 0

    def steps(done: int, sums: dict[str, torch.Tensor]) -> Iterator[tuple[int, int]]:
        for chunk, count, tokens, mass, pairs, nats in batches(order[done:]):
            index = row_item[torch.tensor(chunk)]  # a long text's windows add up to its item
            sums["gate_mass"] += mass
            if pairs is not None:
                sums["co_activation"] += pairs
            if nats is not None:
                sums["entropy"] += nats
            sums["item_count"].index_add_(0, index, count.to(torch.int32))
            sums["item_tokens"].index_add_(0, index, tokens.long())
            yield len(chunk), int(tokens.sum())

    # remote: progress is saved after every session request
    sums = run_resumable(steps, sums, total=len(rows), key=key, checkpoint=checkpoint, form=_FORMAT, what="mi.profile",
                         save_every=1 if remote else save_every, progress=progress, desc=_desc(requests))
    meta = {"interventions": [repr(i) for i in interventions], "items": len(item_language),
            "long_texts": long_texts, "long_items": long_items,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fingerprint": fingerprint(key)}
    return _stats(model, spec, languages, spec.moe_layers, item_language, sums["item_count"], sums["item_tokens"],
                  sums["gate_mass"], corpus, meta, co_activation=sums.get("co_activation"),
                  entropy_sum=sums.get("entropy"))


def _desc(requests: int) -> str:
    """The progress bar's label: a remote profile's says how many requests it sends."""
    return f"profiling in {requests} request{'s' * (requests != 1)}" if requests else "profiling"


def _stats(model: Any, spec: Any, languages: list, layers: tuple, item_language: torch.Tensor,
           item_count: torch.Tensor, item_tokens: torch.Tensor, gate_mass: torch.Tensor, texts: dict, meta: dict,
           stacks: tuple | None = None, co_activation: torch.Tensor | None = None,
           entropy_sum: torch.Tensor | None = None) -> RoutingStats:
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
                        item_count, item_tokens, item_language, meta=meta, stacks=stacks, co_activation=co_activation,
                        entropy_sum=entropy_sum)


def _recorder(interventions: tuple) -> RouterRecord:
    """The per-row `RouterRecord` a profile runs: `co_activation=True` when a `RouterRecord` among
    `interventions` asks for it; what only a trace records is refused, naming `mi.trace`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._profile import _recorder
    >>> _recorder((mi.ExpertAblate({1: [0]}), mi.RouterRecord(co_activation=True)))
    RouterRecord(per_token=False, exclude_tokens=(), by_modality=False, co_activation=True, by_token_kind=False, by_position=(), entropy=False)
    >>> _recorder((mi.RouterRecord(by_token_kind=True),))
    Traceback (most recent call last):
    ValueError: mi.profile records per text and language, with RouterRecord(co_activation=True, entropy=True) at most; by_token_kind is a trace's: record it with mi.trace(model, mi.RouterRecord(by_token_kind=True)) and tr.invoke(texts, group=language)

    ```
    """
    recordings = [i.recording() for i in flatten(interventions)]
    recordings = [r for r in recordings if r is not None]
    for recording in recordings:
        for name in ("per_token", "exclude_tokens", "by_modality", "by_token_kind", "by_position"):
            if getattr(recording, name):
                raise ValueError(f"mi.profile records per text and language, with RouterRecord(co_activation=True, "
                                 f"entropy=True) at most; {name} is a trace's: record it with mi.trace(model, "
                                 f"mi.RouterRecord({name}={getattr(recording, name)!r})) and tr.invoke(texts, "
                                 f"group=language)")
    return RouterRecord(co_activation=any(r.co_activation for r in recordings),
                        entropy=any(r.entropy for r in recordings))


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


def _profile_stacks(model: Any, spec: Any, corpus: dict, interventions: tuple, *, batch_size: int, progress: bool,
                    checkpoint: Any, save_every: int, request_tokens: int | None, session_batches: int | None,
                    long_texts: str, weights_hash: str, trace_kwargs: dict) -> dict[str, RoutingStats]:
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
    record = _recorder(interventions)
    interventions = _check_options(interventions, batch_size, save_every, session_batches, weights_hash, long_texts)
    builds = [k for k in trace_kwargs if k.startswith("decoder_") or k in ("labels", "encoder_outputs")]
    if builds:
        raise ValueError(f"mi.profile builds the decoder's inputs itself (teacher-forced from each text), so "
                         f"{', '.join(builds)} cannot be passed: to give the decoder other texts, pass a corpus of "
                         "pairs {(source language, target language): [(source text, target text), ...]}")
    remote = bool(trace_kwargs.get("remote")) or trace_kwargs.get("backend") is not None
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
    key = {**_model_key(model, weights_hash), "corpus": fingerprint({repr(k): v for k, v in corpus.items()}),
           "interventions": fingerprint(interventions), "long_texts": long_texts, "decoder": "teacher-forced",
           "settings": fingerprint({k: v for k, v in trace_kwargs.items() if k not in _WHERE})}
    if record.entropy:
        raise ValueError("mi.profile of a model with several stacks does not record RouterRecord(entropy=True) "
                         "yet: record it with mi.trace(model, mi.RouterRecord(entropy=True)) and "
                         "tr.invoke(texts, group=language), reading tr.routing_by_stack")
    if record.co_activation:  # a key part only when asked: checkpoints of plain profiles resume as before
        for stack in stacks:
            sums[f"{stack}.co_activation"] = torch.zeros(len(languages[stack]), len(layers[stack]), spec.num_experts,
                                                         spec.num_experts, dtype=torch.long)
        key["co_activation"] = "recorded"
    trace_kwargs = {k: v for k, v in trace_kwargs.items() if k not in _TOKENIZE}  # the rows are token ids

    def inputs(chunk: list[int]) -> dict[str, torch.Tensor]:
        encoder = pad_rows(model.tokenizer, [rows[r][1] for r in chunk])
        decoder = pad_rows(model.tokenizer, [rows[r][2] for r in chunk])
        return {"input_ids": encoder["input_ids"], "attention_mask": encoder["attention_mask"],
                "decoder_input_ids": decoder["input_ids"], "decoder_attention_mask": decoder["attention_mask"]}

    def padded(chunk: list[int]) -> int:  # the encoder's and the decoder's
        return len(chunk) * (max(len(rows[r][1]) for r in chunk) + max(len(rows[r][2]) for r in chunk))

    def batches(todo: list[int]) -> Iterator[tuple]:
        if not remote:
            return _stack_batches(model, todo, inputs, row_languages, interventions,
                                  {stack: len(languages[stack]) for stack in stacks}, batch_size, trace_kwargs, record)
        return _remote_stacks(model, spec, _requests(todo, batch_size, padded, request_tokens, session_batches),
                              inputs, interventions, stacks, keys, corpus, row_item, languages, side if pairs else None,
                              trace_kwargs, record)

    # cut once here too: a budget smaller than a batch is refused before anything runs
    requests = len(_requests(order, batch_size, padded, request_tokens, session_batches)) if remote else 0

    def steps(done: int, sums: dict[str, torch.Tensor]) -> Iterator[tuple[int, int]]:
        for chunk, parts in batches(order[done:]):
            index = row_item[torch.tensor(chunk)]  # a long text's windows add up to its item
            routed = 0
            for stack, (count, tokens, mass, co) in parts.items():
                sums[f"{stack}.gate_mass"] += mass
                if co is not None:
                    sums[f"{stack}.co_activation"] += co
                sums[f"{stack}.item_count"].index_add_(0, index, count.to(torch.int32))
                sums[f"{stack}.item_tokens"].index_add_(0, index, tokens.long())
                routed += int(tokens.sum())
            yield len(chunk), routed

    sums = run_resumable(steps, sums, total=len(rows), key=key, checkpoint=checkpoint, form=_FORMAT,
                         what="mi.profile", save_every=1 if remote else save_every, progress=progress,
                         desc=_desc(requests))
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
                            texts, meta, stacks=(stack,) * len(layers[stack]),
                            co_activation=sums.get(f"{stack}.co_activation"))
    return out


def _remote_stacks(model: Any, spec: Any, requests: list, inputs: Any, interventions: list, stacks: list, keys: list,
                   corpus: dict, row_item: torch.Tensor, languages: dict, side: dict | None,
                   trace_kwargs: dict, record: RouterRecord = RouterRecord()) -> Iterator[tuple]:
    """`(rows, {stack: (count, tokens, gate_mass, co_activation)})` per session request of a model
    with several stacks, as `_stack_batches` gives per batch. The server sums gate mass and
    co-activation per corpus key (a language, or a (source, target) pair); each stack's
    languages are summed from them here."""
    plan = compile_plan(spec, [*interventions, record])
    labels = [spec.stacks[spec.position(entry.layer)] for entry in plan.layers]
    where = {stack: [i for i, label in enumerate(labels) if label == stack] for stack in stacks}
    stack_tokens = [plan.layers[where[stack][0]].tokens_from for stack in stacks]
    item_key = torch.tensor([k for k, key in enumerate(keys) for _ in corpus[key]], dtype=torch.long)
    key_language = {stack: torch.tensor([languages[stack].index(key[side[stack]] if side else key) for key in keys],
                                        dtype=torch.long) for stack in stacks}
    for chunk, count, tokens, mass, co, _ in _remote_batches(model, requests, inputs, item_key[row_item], plan,
                                                             len(keys), trace_kwargs, stack_tokens):
        parts = {}
        for s, stack in enumerate(stacks):
            keep = torch.tensor(where[stack])
            parts[stack] = (count[:, keep], tokens[:, s],
                            _by_language(mass[:, keep], key_language[stack], len(languages[stack])),
                            None if co is None else _by_language(co[:, keep], key_language[stack],
                                                                 len(languages[stack])))
        yield chunk, parts
