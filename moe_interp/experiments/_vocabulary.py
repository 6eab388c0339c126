"""`mi.experiments.vocabulary`: which tokens each expert takes, over a corpus, from per-token routing."""

from typing import Any

import torch
from tqdm.auto import tqdm

from moe_interp.core._checks import check_positive
from moe_interp.core._fingerprint import check_corpus
from moe_interp.arch import describe
from moe_interp.runtime._hooks import hooked_reader
from moe_interp.runtime._shipping import tokenize
from moe_interp.runtime._inputs import max_positions, pad_rows
from moe_interp.runtime._interventions import RouterRecord, flatten
from moe_interp.analysis._vocabulary import Vocabulary
from moe_interp.tracing import trace

__all__ = ["vocabulary"]

_LONG_TEXTS = ("window", "truncate", "error")
_TOKENIZE = ("truncation", "max_length", "add_special_tokens")  # how texts become tokens: done here
_WHERE = ("remote", "backend", "blocking", "job_id", "verbose")


def _rows(model: Any, corpus: dict[str, list[str]], long_texts: str, options: dict) -> list[tuple[int, list[int]]]:
    """`(language index, token ids)` per row to run: one per text, or per window of a text longer
    than the model's positions (`long_texts`)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("mi.experiments.vocabulary reads token ids with the model's tokenizer, and this model has "
                         "none: wrap it with one, mi.wrap(hf_model, tokenizer)")
    if not options.get("truncation"):
        options = {k: v for k, v in options.items() if k != "max_length"}
    limit = max_positions(model)
    rows = []
    for lang, (name, texts) in enumerate(corpus.items()):
        for k, (text, ids) in enumerate(zip(texts, tokenize(model, texts, verbose=False, **options)["input_ids"])):
            if not text or not ids:
                raise ValueError(f"corpus[{name!r}][{k}] has no tokens (an empty text): drop empty texts first")
            if limit is None or len(ids) <= limit:
                rows.append((lang, list(ids)))
            elif long_texts == "error":
                raise ValueError(f"corpus[{name!r}][{k}] has {len(ids)} tokens, more than this model's {limit} "
                                 "positions: pass long_texts=\"window\" (consecutive windows) or \"truncate\" (its "
                                 f"first {limit} tokens)")
            else:
                stop = limit if long_texts == "truncate" else len(ids)
                rows.extend((lang, list(ids[s : s + limit])) for s in range(0, stop, limit))
    return rows


def _records(model: Any, batch: dict, interventions: list, record: RouterRecord, trace_kwargs: dict,
             readers: dict) -> dict | None:
    """The per-token table of one batch: read by torch hooks where they serve the call (local, no
    edits; the reader is kept in `readers` across batches, prepared again until one serves),
    else by `mi.trace` (remote too: the table comes back with the counts)."""
    with torch.no_grad():
        if readers.get("hooks") is None:
            readers["hooks"] = hooked_reader(model, *interventions, record, **trace_kwargs)
        run = None if readers["hooks"] is None else readers["hooks"](batch)
    if run is not None:
        return run.routing.per_token
    kwargs = {"keep_output": False, **trace_kwargs}
    with torch.no_grad(), trace(model, batch, *interventions, record, **kwargs) as tr:
        pass
    return tr.routing.per_token


def vocabulary(model: Any, corpus: Any, *interventions: Any, batch_size: int = 16,
               exclude_tokens: Any = (), long_texts: str = "window", progress: bool = True,
               **trace_kwargs: Any) -> Vocabulary:
    """Which tokens each expert takes, per MoE layer and language, over `corpus`
    (`{language: [texts]}`): a `mi.analysis.Vocabulary` (its module docstring defines the
    quantities, OLMoE's vocabulary specialization among them).

    Texts are tokenized once by the model's tokenizer, batched longest first (padding is never
    counted) and routed with `mi.RouterRecord(per_token=True)`; each batch's per-token table
    (each token's top-k experts, row and position) is matched to the batch's token ids on the
    client and folded into counts per (language, layer, token id, expert), so only the batch's
    table is ever held. `interventions` apply while routing (e.g. an ablation); recorders among
    them are dropped. `exclude_tokens` (ids, or `"special"`) are not counted, as
    `RouterRecord`'s. Texts longer than the model's positions: `long_texts="window"` (default:
    consecutive windows, each its own row), `"truncate"` or `"error"`, as `mi.profile`. Other
    keyword arguments go to `mi.trace` (`truncation=True, max_length=N`, `add_special_tokens=`
    to the tokenizer); `remote=` runs every batch as one request, the per-token table coming
    back with the counts (its size grows with the tokens: keep batches small). Models with
    several stacks (encoder-decoder) keep no per-token table and are refused.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> v = mi.experiments.vocabulary(model, {"eng": ["the cat", "the hat"], "fra": ["le chat"]}, progress=False)
    >>> v.languages, v.layers, int(v.occurrences.sum())       # 7 + 7 + 7 byte tokens
    (('eng', 'fra'), (0, 1, 2, 3), 21)
    >>> v.top_tokens(0, 0, n=3).columns.tolist()
    ['token_id', 'piece', 'count', 'load_share', 'token_share', 'occurrences']
    >>> v.load().sum(-1).tolist()                              # per layer: top-2 slots of 21 tokens
    [42, 42, 42, 42]

    ```
    """
    spec = describe(model)
    if spec.stack_inputs is not None:
        raise ValueError(f"mi.experiments.vocabulary needs per-token routing, which this {spec.arch} model's stacks "
                         "(encoder and decoder) do not keep: profile its stacks' counts with mi.profile instead")
    corpus = check_corpus(corpus)
    batch_size = check_positive("batch_size", batch_size)
    if long_texts not in _LONG_TEXTS:
        raise ValueError(f"long_texts must be one of {', '.join(map(repr, _LONG_TEXTS))}, got {long_texts!r}")
    record = RouterRecord(per_token=True, exclude_tokens=exclude_tokens)
    interventions = [i for i in flatten(interventions) if i.recording() is None]  # this records itself
    rows = _rows(model, corpus, long_texts, {k: trace_kwargs[k] for k in _TOKENIZE if k in trace_kwargs})
    trace_kwargs = {k: v for k, v in trace_kwargs.items() if k not in _TOKENIZE}  # the rows are token ids
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r][1]), r))
    languages, layers = tuple(corpus), tuple(spec.moe_layers)
    total = Vocabulary.from_records(torch.zeros(0, dtype=torch.long),
                                    torch.zeros(0, len(layers), spec.top_k, dtype=torch.long),
                                    languages=languages, layers=layers, num_experts=spec.num_experts)
    pending: list[Vocabulary] = []
    readers: dict = {}
    bar = tqdm(total=len(rows), desc="vocabulary", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        table = _records(model, pad_rows(model.tokenizer, [rows[r][1] for r in chunk]), interventions, record,
                         trace_kwargs, readers)
        if table is not None and len(table["row"]):
            pending.append(_batch(table, [rows[r] for r in chunk], languages, layers, spec.num_experts))
        # fold the batches into the total once they outweigh it: each entry is merged O(log batches) times
        if sum(len(p.entry_count) for p in pending) > len(total.entry_count):
            total, pending = total.merge(*pending), []
        bar.update(len(chunk))
    bar.close()
    total = total.merge(*pending) if pending else total
    config = getattr(getattr(model, "_module", None), "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
            "interventions": [repr(i) for i in interventions], "texts": {lang: len(t) for lang, t in corpus.items()},
            "exclude_tokens": repr(record.exclude_tokens), "long_texts": long_texts}
    return Vocabulary(total.languages, total.layers, total.num_experts, spec.top_k, total.token_ids, total.pieces,
                      total.occurrences, total.entries, total.entry_count, meta).named(model.tokenizer)


def _batch(table: dict, rows: list[tuple[int, list[int]]], languages: tuple, layers: tuple,
           num_experts: int) -> Vocabulary:
    """One batch's per-token table as counts: each record's token id is the `position`-th real token
    of its batch `row` (positions count a row's real tokens from 0, padding aside)."""
    row, position = table["row"].long(), table["position"].long()
    lengths = torch.tensor([len(ids) for _, ids in rows])
    if int(row.max()) >= len(rows) or bool((position < 0).any()) or bool((position >= lengths[row]).any()):
        raise RuntimeError("the per-token table names a (row, position) outside this batch's texts: the trace's "
                           "rows or positions do not match the token ids sent; please report this with the model")
    ids = torch.full((len(rows), int(lengths.max())), -1, dtype=torch.long)
    for r, (_, tokens) in enumerate(rows):
        ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    language = torch.tensor([lang for lang, _ in rows], dtype=torch.long)
    return Vocabulary.from_records(ids[row, position], table["indices"].long(), language[row], languages=languages,
                                   layers=layers, num_experts=num_experts)
