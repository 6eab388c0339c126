"""`mi.profile`: routing statistics of a model over a multilingual corpus, resumable."""

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ._fingerprint import ResumeError, check_corpus, differing, fingerprint, model_parts
from .arch import describe
from .interventions import RouterRecord, compile_plan, flatten
from .stats import RoutingStats
from .trace import profile_session, trace

__all__ = ["profile", "ResumeError"]


_FORMAT = "moe_interp.profile-checkpoint/2"
# trace_kwargs that say where a run executes, not what it computes
_WHERE = ("remote", "backend", "blocking", "job_id", "verbose")


def _load_checkpoint(path: Path, key: dict, fields: dict[str, torch.Tensor], total: int) -> tuple[int, dict]:
    """The progress stored at `path`, after checking it is this very run's and whole."""
    fix = "delete it or pass another checkpoint path (a checkpoint is never reused for a different run)"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # zip, pickle, EOF, ...: all mean the same to the user
        raise ResumeError(f"checkpoint {path} cannot be read ({type(error).__name__}): it is damaged or not a "
                          f"mi.profile checkpoint; {fix}") from error
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ResumeError(f"checkpoint {path} is not a mi.profile checkpoint of this version ({_FORMAT}); {fix}")
    parts = differing(state.get("key"), key)
    if parts:
        raise ResumeError(f"checkpoint {path} belongs to another model, corpus, intervention list or settings "
                          f"(differs: {', '.join(parts)}); {fix}")
    done = state.get("done")
    if not isinstance(done, int) or not 0 <= done <= total or any(
            not isinstance(state.get(name), torch.Tensor) or state[name].shape != like.shape
            or state[name].dtype != like.dtype for name, like in fields.items()):
        raise ResumeError(f"checkpoint {path} is damaged (its progress or tensors do not fit this run); {fix}")
    return done, {name: state[name] for name in fields}


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, partial)
    os.replace(partial, path)  # atomic: an interrupted save leaves the previous checkpoint whole


def profile(model: Any, corpus: Mapping[str, Sequence[str]], *interventions: Any, batch_size: int = 16,
            progress: bool = True, checkpoint: str | os.PathLike | None = None, save_every: int = 10,
            session_batches: int | None = None, **trace_kwargs: Any) -> RoutingStats:
    """Routing statistics of `model` over `corpus` (`{language: [texts]}`), per item too.

    Texts are batched (longest first, to waste little padding; padding is excluded, so
    batching never changes the counts) and every text's counts are kept (`item_count`),
    which gives bootstrap confidence intervals. `interventions` apply during profiling
    (e.g. an ablation). With `checkpoint=path`, partial results are written every
    `save_every` batches and on interruption; rerunning the same call resumes there.
    A checkpoint is keyed by content: the model's weights (a strided sample of every
    tensor), config and tokenizer, the corpus texts, the full interventions and the
    trace settings. Any difference (say, the random-init twin of the model that wrote
    it) raises `ResumeError` naming the part that differs, as does a damaged file; a
    checkpoint is never reused for another run. Other keyword arguments go to `mi.trace`.

    Remote (`remote=True`, `"local"`, a URL, or `backend=`): the batches run in ONE nnsight
    session request (`session_batches=N` splits them into requests of N batches each; the
    default sends all). The server aggregates: per text an int16/int32 `[layers, experts]`
    count table and a token total, gate mass summed per language. With `checkpoint=`,
    progress is saved after every request (resume is per request, not per batch).

    ```python
    >>> corpus = mi.datasets.udhr(["eng", "deu", "fra"], split="heldout")
    >>> p = mi.profile(model, corpus, batch_size=8, progress=False)
    >>> p.languages, p.item_count.shape[0] == sum(len(t) for t in corpus.values())
    (('eng', 'deu', 'fra'), True)
    ```
    """
    corpus = check_corpus(corpus)
    interventions = [i for i in flatten(interventions) if not isinstance(i, RouterRecord)]
    for name, value in (("batch_size", batch_size), ("save_every", save_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (1 or more), got {value!r}")
    if session_batches is not None and (not isinstance(session_batches, int) or session_batches < 1):
        raise ValueError(f"session_batches must be a positive int or None, got {session_batches!r}")
    spec = describe(model)
    languages = list(corpus)
    items = [(lang_index, text) for lang_index, lang in enumerate(languages) for text in corpus[lang]]
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][1].encode()), i))
    n_layers = len(spec.moe_layers)
    item_count = torch.zeros(len(items), n_layers, spec.num_experts, dtype=torch.int32)
    item_tokens = torch.zeros(len(items), dtype=torch.long)
    gate_mass = torch.zeros(len(languages), n_layers, spec.num_experts, dtype=torch.float64)
    item_language = torch.tensor([lang for lang, _ in items], dtype=torch.long)
    done = 0
    key = {**model_parts(model), "corpus": fingerprint(corpus), "interventions": fingerprint(interventions),
           "settings": fingerprint({k: v for k, v in trace_kwargs.items() if k not in _WHERE})}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        done, state = _load_checkpoint(path, key, {"item_count": item_count, "item_tokens": item_tokens,
                                                   "gate_mass": gate_mass}, len(items))
        item_count, item_tokens, gate_mass = state["item_count"], state["item_tokens"], state["gate_mass"]

    def save() -> None:
        if path is not None:
            _save_checkpoint(path, {"format": _FORMAT, "key": key, "done": done, "item_count": item_count,
                                    "item_tokens": item_tokens, "gate_mass": gate_mass})

    started, tokens_seen = time.perf_counter(), 0
    bar = tqdm(total=len(items), initial=done, unit="text", disable=not progress, desc="profiling")
    remote = bool(trace_kwargs.get("remote")) or trace_kwargs.get("backend") is not None
    try:
        batches = 0
        while remote and done < len(items):
            per_request = (session_batches or len(items)) * batch_size
            chunks = [order[start : start + batch_size]
                      for start in range(done, min(done + per_request, len(items)), batch_size)]
            session_kwargs = {k: trace_kwargs[k] for k in _WHERE if k in trace_kwargs}
            model_kwargs = {k: v for k, v in trace_kwargs.items() if k not in session_kwargs and k != "keep_output"}
            plan = compile_plan(spec, [*interventions, RouterRecord()])
            packed = profile_session(model, [([items[i][1] for i in chunk], item_language[torch.tensor(chunk)])
                                             for chunk in chunks], plan, len(languages), session_kwargs,
                                     model_kwargs)
            index = torch.tensor([i for chunk in chunks for i in chunk])
            item_count[index] = packed["item_count"].to(torch.int32)
            item_tokens[index] = packed["item_tokens"].long()
            gate_mass += packed["gate_mass"].to(torch.float64)
            done += len(index)
            tokens_seen += int(packed["item_tokens"].sum())
            bar.update(len(index))
            bar.set_postfix(tokens_per_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
            save()
        while done < len(items):
            chunk = order[done : done + batch_size]
            tracer = trace(model, [items[i][1] for i in chunk], *interventions, RouterRecord(), **trace_kwargs)
            tracer._mi_per_row = True  # one stats group per text
            with torch.no_grad(), tracer:
                pass
            routing = tracer.routing
            index = torch.tensor(chunk)
            item_count[index] = routing.count.to(torch.int32)
            item_tokens[index] = routing.tokens
            gate_mass.index_add_(0, item_language[index], routing.gate_mass)
            done += len(chunk)
            tokens_seen += int(routing.tokens.sum())
            batches += 1
            bar.update(len(chunk))
            bar.set_postfix(tokens_per_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
            if batches % save_every == 0:
                save()
    except BaseException:
        save()  # nothing computed is lost: rerun the same call to resume
        raise
    finally:
        bar.close()
    save()
    count = torch.zeros(len(languages), n_layers, spec.num_experts, dtype=torch.long)
    count.index_add_(0, item_language, item_count.long())
    tokens = torch.zeros(len(languages), dtype=torch.long).index_add_(0, item_language, item_tokens)
    config = getattr(getattr(model, "_module", None), "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
            "interventions": [repr(i) for i in interventions], "items": len(items),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "fingerprint": fingerprint(key)}
    return RoutingStats(tuple(languages), spec.moe_layers, spec.num_experts, spec.top_k, count, gate_mass, tokens,
                        item_count, item_tokens, item_language, meta=meta)
