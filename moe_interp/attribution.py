"""`mi.expert_attribution`: every expert's drop effect per language from one forward and one
backward pass per batch, checked against real ablations.

Attribution patching for routed experts. Dropping expert `e` for the tokens that chose it
sets its routing weight `w[t, e]` to 0 (no renormalisation, as `ExpertAblate(mode="drop")`).
The first-order (Taylor) estimate of the change in the loss `L` is

    effect[e] = sum over tokens t that chose e of  dL/dw[t, e] * (0 - w[t, e])

with the gradient taken at the unablated model, through the weights the experts module
really receives (where the real drop acts), every later layer (its routers' weights
included) responding as in the real forward. One backward pass gives it for every expert of
every layer at once. It is exact when the loss is linear in the removed contribution. It
misses the curvature of the loss (and of Llama-4's experts, whose score scales their
input), and it holds every later top-k choice fixed where a real drop may change them. On a
trained model the first-order term of a heavily used expert can nearly vanish (the model
sits near a minimum of its loss along the scale of that expert's output) while dropping it
costs a lot: on the demo model, layer-0 drops costing 0.4-1.4 bits per byte were estimated
near 0, while middle-layer effects were ranked with Spearman 0.71-0.91
(`benchmarks/ATTRIBUTION.md`). `ExpertAttribution.validate` measures this on your model.
"""

import dataclasses
import difflib
import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ._fingerprint import check_corpus, fingerprint, load_checkpoint, model_parts, save_checkpoint
from .arch import BANDS, MoESpec, describe
from .expert_set import ExpertSet
from .experiment import Experiment
from .interventions import ExpertAblate
from ._counts import _replace_file, _sync_directory
from ._inputs import max_positions as _max_positions
from ._trace import trace
from .arch import UnsupportedModelError
from .arch._sites import router_sites
from .kernels import resolve, routing, set_weights

__all__ = ["expert_attribution", "ExpertAttribution", "AttributionCheck", "rank_correlation"]

METRICS = ("bpb", "nll")
_METRIC_NAMES = {"bpb": "bits per byte", "nll": "nats per token"}
_FORMAT = "moe_interp.ExpertAttribution/1"
_CHECKPOINT = "moe_interp.attribution-checkpoint/3"  # /3: with a sha256 checksum
_TENSOR_FILE, _META_FILE = "attribution.safetensors", "meta.json"
# running sums a checkpoint keeps; effect and loss are weighted per text (see _coefficients)
_SUMS = ("effect", "count", "tokens", "predicted", "loss")


# ------------------------------------------------------------------------- reading the weights

def _probe(model: Any, spec: MoESpec, found: list) -> None:
    """Inside a trace of `model`: every MoE layer's routing as `kernels.routing` reads it (the
    reading RouterRecord, the drop edit and the router view share; a slot that reached no
    expert reads index -1), its weights written back (`kernels.set_weights`) plus a zero
    probe `delta`, a leaf that requires grad: the value is unchanged, `dL/d delta` is the
    total derivative through the weights the experts receive (later routers stay live, so
    their weights move with the hidden states as in a real drop), and no parameter needs to
    require grad. Appends `(indices, weights, delta)` per MoE layer, in model order."""
    sites, _ = router_sites(spec)  # grad is on: the sites of a forward with grad
    for router_path, experts_path in zip(spec.routers, spec.experts):
        router = resolve(model, router_path)
        experts = resolve(model, experts_path) if experts_path else None
        indices, weights = routing(router, experts, sites, spec.top_k)
        delta = torch.zeros_like(weights, requires_grad=True)
        set_weights(router, experts, sites, weights + delta)
        found.append((indices, weights.detach(), delta))


# ------------------------------------------------------------------------------ one batch

def _coefficients(tokenizer: Any, texts: Sequence[str], ids: Tensor, mask: Tensor, metric: str) -> Tensor:
    """Per text, the factor of its summed NLL (nats) in the language's unnormalised metric:
    `1 / (ln 2 * bytes)` for bits per byte (then averaged over texts), 1 for nats per token
    (then divided by the language's predicted tokens). Bytes as `mi.evaluate.text_nll`
    counts them: the UTF-8 bytes after the first token, which is not predicted."""
    if metric == "nll":
        return torch.ones(len(texts), dtype=torch.float64)
    out = []
    for row, text in enumerate(texts):
        if not bool(mask[row].any()):
            raise ValueError(f"text {text!r} has no tokens (an empty text): nothing to route. Drop empty texts first")
        first = int(ids[row][mask[row].bool()][0])
        out.append(1 / math.log(2) / max(len(text.encode()) - len(tokenizer.decode([first]).encode()), 1))
    return torch.tensor(out, dtype=torch.float64)


def _batch(model: Any, spec: MoESpec, texts: Sequence[str], groups: Tensor, num_groups: int, metric: str) -> dict:
    """One forward and one backward of `texts` (row i belongs to group `groups[i]`): the
    running sums of `_SUMS` this batch adds, each with a leading `[num_groups]` axis."""
    module = model._module
    enc = model.tokenizer(list(texts), return_tensors="pt", padding=True)
    limit = _max_positions(model)
    if limit is not None and enc["input_ids"].shape[1] > limit:
        raise ValueError(f"a text of {enc['input_ids'].shape[1]} tokens is longer than this model's {limit} positions: "
                         "cut the texts into shorter pieces first (the estimate and mi.evaluate must see the same text)")
    device = getattr(module, "device", None) or next(module.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    coefficient = _coefficients(model.tokenizer, texts, ids, mask, metric).to(device)
    found: list = []
    with torch.enable_grad():
        # no cache: one forward scores the texts (some hybrid models' caches fail outside generation)
        with trace(model, {"input_ids": ids, "attention_mask": mask}, use_cache=False) as tr:  # mi.trace: the model's lock
            _probe(model, spec, found)
        if len(found) != len(spec.moe_layers):
            raise RuntimeError(f"expected the routing weights of each of the {len(spec.moe_layers)} MoE layers once "
                               f"per forward, read {len(found)}: this model routes in a way attribution does not "
                               "read; please report it")
        logits = tr.output.logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        predicted = (mask[:, 1:] * mask[:, :-1]).bool()
        nll = -torch.where(predicted, logp, 0).sum(-1)
        grads = torch.autograd.grad((nll.to(torch.float64) * coefficient).sum(), [delta for *_, delta in found],
                                    allow_unused=True)
    real = mask.reshape(-1) > 0
    token_group = torch.where(real, groups.to(device)[:, None].expand_as(mask).reshape(-1), num_groups)
    E, width = spec.num_experts, (num_groups + 1) * spec.num_experts
    effect = torch.zeros(len(spec.moe_layers), width, dtype=torch.float64, device=device)
    count = torch.zeros(len(spec.moe_layers), width, dtype=torch.long, device=device)
    for position, ((indices, weights, _), grad) in enumerate(zip(found, grads)):
        if indices.shape[0] != ids.numel() or indices.shape != weights.shape:
            raise ValueError(f"routing of shape {tuple(indices.shape)} for {ids.numel()} tokens: expected [tokens, "
                             "top_k] indices with weights of the same shape; register an adapter whose readout matches")
        contribution = torch.zeros_like(weights) if grad is None else -(grad * weights)  # per (token, slot)
        valid = (indices >= 0) & (indices < E)  # a slot that reached no expert reads -1: no effect, no count
        token = token_group.to(indices.device)[:, None].expand_as(indices)
        bins = torch.where(valid, token * E + indices.clamp(0, E - 1), num_groups * E).reshape(-1).to(device)
        effect[position].index_add_(0, bins, contribution.reshape(-1).to(device, torch.float64))
        count[position].index_add_(0, bins, valid.reshape(-1).long().to(device))
    def per_group(table: Tensor) -> Tensor:  # [layers, (groups + 1) * E] -> [groups, layers, E], padding dropped
        return table.reshape(len(spec.moe_layers), num_groups + 1, E)[:, :num_groups].transpose(0, 1).cpu()

    def tally(bins: Tensor, values: Tensor) -> Tensor:
        return torch.zeros(num_groups + 1, dtype=values.dtype, device=device).index_add_(0, bins, values)[:-1].cpu()

    rows = groups.to(device)
    return {"effect": per_group(effect), "count": per_group(count), "tokens": tally(token_group, real.long()),
            "predicted": tally(rows, predicted.sum(-1)),
            "loss": tally(rows, nll.detach().to(torch.float64) * coefficient)}


# ------------------------------------------------------------------------- resuming

def expert_attribution(model: Any, corpus: Mapping[str, Sequence[str]], metric: str = "bpb", mode: str = "drop",
                       batch_size: int = 8, progress: bool = True, checkpoint: str | os.PathLike | None = None,
                       save_every: int = 10) -> "ExpertAttribution":
    """Estimated change of each language's loss if each expert were dropped, for every
    (MoE layer, expert), from one forward and one backward pass per batch.

    `effect[lang, layer, expert]` = sum over the language's real (non-padding) tokens `t`
    that chose the expert of `dL/dw[t, e] * (0 - w[t, e])`, `w` the routing weight the
    experts module receives (first-order estimate of `ExpertAblate({layer: [e]},
    mode="drop")`; positive: dropping it hurts). `L` is the language's `metric`, exactly as
    `mi.Experiment` / `mi.ablation_grid` report real ablations, so estimates and real
    effects compare like with like:

    - `"bpb"`: mean over the language's texts of bits per byte (`mi.evaluate.text_nll`);
    - `"nll"`: summed NLL (nats) over the language's predicted tokens / their number.

    Texts are batched longest first; padding is excluded exactly (a text's effect does not
    depend on its batch). Memory is one batch's forward graph: the weights' gradients are
    folded into `[lang, layer, expert]` sums after each backward, which frees the graph.
    Texts must fit the model's positions (cut long ones; no truncation, so that `validate`
    evaluates the very same tokens). With `checkpoint=path` the sums are written every
    `save_every` batches and on interruption; rerunning the same call resumes there (keyed
    by the content of the model, corpus, metric and mode; `ResumeError` otherwise).

    A first-order estimate: read it as a ranking, and check it with `validate` (see the
    module docstring for where it fails; on the demo model, early-layer drops with large
    real effects were estimated near 0).

    `mode="reroute"` is refused: its effect needs the output of the expert each token falls
    back to, which the unablated forward does not compute. An encoder-decoder model is
    refused (`UnsupportedModelError`): the loss is a causal language model's. Runs locally in
    `mi.trace`, reading and writing the weights through `kernels.routing` / `set_weights` (the
    reading RouterRecord and the drop edit share: a slot dropped past an expert's capacity
    counts nowhere), not on NDIF: remote execution is not supported. The model is not
    changed (no `.grad` is written).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
    >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
    >>> attr = mi.expert_attribution(model, corpus, metric="bpb", progress=False)
    >>> attr.effect.shape                         # [lang, moe layer, expert]
    torch.Size([2, 4, 8])
    >>> attr.top("deu", n=3)                      # the experts German depends on most
    ExpertSet({0: [1], 1: [2], 2: [2]}, pairs=3)
    >>> check = attr.validate(model, corpus, n=8, progress=False)   # real drop ablations of 8 cells
    >>> print(check.summary())                    # rank agreement of estimated and real effects
    eng: Spearman 0.83 [0.09, 1.00] over 8 used cells; middle layers 1.00 [1.00, 1.00] (4 cells)
    deu: Spearman 0.98 [0.80, 1.00] over 8 used cells; middle layers 1.00 [1.00, 1.00] (4 cells)
    all: Spearman 0.98 [0.87, 1.00] over 16 used cells; middle layers 1.00 [1.00, 1.00] (8 cells)

    ```
    """
    corpus = check_corpus(corpus)
    for lang, texts in corpus.items():
        for k, text in enumerate(texts):
            if not text:  # as mi.profile refuses it
                raise ValueError(f"corpus[{lang!r}][{k}] has no tokens (an empty text): nothing to route. "
                                 "Drop empty texts first")
    if mode == "reroute":
        raise NotImplementedError("mode='reroute' is not estimated: its effect needs the output of the expert each "
                                  "token would fall back to, which one backward pass does not give. Use mode='drop' "
                                  "(weight set to 0, no renormalisation), or measure reroute ablations with mi.Experiment")
    if mode != "drop":
        raise ValueError(f"mode must be 'drop', got {mode!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} ('bpb': bits per byte, 'nll': nats per token), got {metric!r}")
    for name, value in (("batch_size", batch_size), ("save_every", save_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (1 or more), got {value!r}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("expert_attribution needs gradients: call it outside torch.inference_mode()")
    if getattr(model, "tokenizer", None) is None or not hasattr(model, "_module"):
        raise TypeError("expert_attribution needs a model from mi.load / mi.wrap (with its tokenizer)")
    spec = describe(model)
    if spec.stack_inputs is not None:
        raise UnsupportedModelError(
            f"mi.expert_attribution scores a causal language model's loss on each text (every token predicted from "
            f"the ones before it, as mi.evaluate.text_nll and ExpertAttribution.validate do); {spec.arch} is an "
            "encoder-decoder model (its decoder predicts a target from a source), which that loss does not score. "
            "Measure its experts with real drops, mi.trace(model, inputs, mi.ExpertAblate(..., mode='drop')), on "
            "a seq2seq loss of your own")
    languages = list(corpus)
    items = [(g, text) for g, lang in enumerate(languages) for text in corpus[lang]]
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][1].encode()), i))
    shape = (len(languages), len(spec.moe_layers), spec.num_experts)
    sums = {"effect": torch.zeros(shape, dtype=torch.float64), "count": torch.zeros(shape, dtype=torch.long),
            "tokens": torch.zeros(len(languages), dtype=torch.long),
            "predicted": torch.zeros(len(languages), dtype=torch.long),
            "loss": torch.zeros(len(languages), dtype=torch.float64)}
    parts = model_parts(model)
    key = {**parts, "corpus": fingerprint(corpus), "settings": fingerprint({"metric": metric, "mode": mode})}
    path = Path(checkpoint) if checkpoint is not None else None
    done = 0
    if path is not None and path.exists():
        done, sums = load_checkpoint(path, key, sums, len(items), _CHECKPOINT, "mi.expert_attribution", checksum=True)

    def save() -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, {"format": _CHECKPOINT, "key": key, "done": done, **sums})

    started = time.perf_counter()
    bar = tqdm(total=len(items), initial=done, unit="text", disable=not progress, desc="attribution")
    batches = 0
    try:
        while done < len(items):
            chunk = order[done : done + batch_size]
            added = _batch(model, spec, [items[i][1] for i in chunk], torch.tensor([items[i][0] for i in chunk]),
                           len(languages), metric)
            for name in _SUMS:
                sums[name] += added[name].to(sums[name].dtype)
            done += len(chunk)
            batches += 1
            bar.update(len(chunk))
            if batches % save_every == 0:
                save()
    finally:  # finished or interrupted, nothing computed is lost: rerunning the same call resumes
        bar.close()
        save()
    texts = torch.tensor([len(corpus[lang]) for lang in languages], dtype=torch.float64)
    norm = texts if metric == "bpb" else sums["predicted"].to(torch.float64).clamp(min=1)
    config = getattr(model._module, "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
            "model_fingerprint": fingerprint(parts), "texts": {lang: len(corpus[lang]) for lang in languages},
            "corpus": {lang: fingerprint(corpus[lang]) for lang in languages},
            "bands": {band: list(spec.band(band)) for band in BANDS},
            "seconds": round(time.perf_counter() - started, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return ExpertAttribution(tuple(languages), spec.moe_layers, sums["effect"] / norm[:, None, None], sums["count"],
                             sums["tokens"], sums["loss"] / norm, metric, mode, meta)


# ------------------------------------------------------------------------- agreement

def rank_correlation(x: Any, y: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rank correlation of `x` and `y` and a percentile bootstrap interval
    (points resampled with replacement): `(rho, low, high)`; `nan` for fewer than 3 points
    or a constant side.

    ```python
    >>> from moe_interp.attribution import rank_correlation
    >>> rank_correlation([1, 2, 3, 4, 5], [2, 4, 5, 9, 10])     # same order: 1, whatever the resample
    (1.0, 1.0, 1.0)
    >>> rho, low, high = rank_correlation([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5])
    >>> round(rho, 3), low <= rho <= high       # 1 - 6 * (1 + 1 + 1 + 1) / (6 * 35)
    (0.886, True)

    ```
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")

    def spearman(a: np.ndarray, b: np.ndarray) -> Any:  # rows are samples
        ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
        ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))

    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        return math.nan, math.nan, math.nan
    rho = float(spearman(x, y))
    pick = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    samples = spearman(x[pick], y[pick])
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return rho, math.nan, math.nan
    low, high = np.percentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return rho, float(low), float(high)


def _band_of(meta: dict, layer: int) -> str:
    return next((band for band, layers in meta.get("bands", {}).items() if layer in layers), "all")


@dataclasses.dataclass(frozen=True, eq=False)
class AttributionCheck:
    """Estimated against real single-expert drop effects, from `ExpertAttribution.validate`.

    **Fields:** `languages`, `cells` (the sampled `(layer, expert)` pairs), `bands` (each
    cell's band: early / middle / late), `estimate` and `real` (`[lang, cell]`, in the
    attribution's metric), `count` (`[lang, cell]`: how often the language chose the
    expert; 0 means both effects are exactly 0), `metric`, `seconds` (wall time of the
    real ablations).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
    >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
    >>> attr = mi.expert_attribution(model, corpus, progress=False)
    >>> check = attr.validate(model, corpus, n=8, progress=False)
    >>> check.cells[:3], check.bands[:3]         # the sampled (layer, expert) cells and their bands
    (((0, 0), (0, 1), (0, 2)), ('early', 'early', 'early'))
    >>> check.estimate.shape, check.real.shape    # [lang, cell]
    (torch.Size([2, 8]), torch.Size([2, 8]))

    ```
    """

    languages: tuple[str, ...]
    cells: tuple[tuple[int, int], ...]
    bands: tuple[str, ...]
    estimate: Float[Tensor, "lang cell"]
    real: Float[Tensor, "lang cell"]
    count: Int[Tensor, "lang cell"]
    metric: str
    seconds: float

    def to_pandas(self) -> Any:
        """One row per (language, cell): `language, layer, expert, band, count, estimate, real`.

        ```python
        >>> import torch
        >>> from moe_interp.attribution import AttributionCheck
        >>> cells, estimate, real = ((1, 0), (1, 3), (2, 5), (3, 1)), [[0.1, 0.4, 0.2, 0.0]], [[0.2, 0.9, 0.1, 0.0]]
        >>> check = AttributionCheck(("eng",), cells, ("middle", "middle", "middle", "late"), torch.tensor(estimate),
        ...                          torch.tensor(real), torch.tensor([[6, 9, 4, 0]]), "bpb", seconds=1.5)
        >>> check.to_pandas()
          language  layer  expert    band  count  estimate  real
        0      eng      1       0  middle      6       0.1   0.2
        1      eng      1       3  middle      9       0.4   0.9
        2      eng      2       5  middle      4       0.2   0.1
        3      eng      3       1    late      0       0.0   0.0

        ```
        """
        import pandas as pd

        return pd.DataFrame([{"language": lang, "layer": layer, "expert": expert, "band": band,
                              "count": int(self.count[i, j]), "estimate": float(self.estimate[i, j]), "real": float(self.real[i, j])}
                             for i, lang in enumerate(self.languages)
                             for j, ((layer, expert), band) in enumerate(zip(self.cells, self.bands))])

    def agreement(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0, used_only: bool = True) -> Any:
        """Spearman rank correlation of estimated and real effects per language and band
        (`"all"` pools), with a percentile bootstrap interval over cells. With `used_only`,
        cells the language never routed to are left out: both effects are exactly 0 there,
        which says nothing about the estimate and would inflate the correlation.

        ```python
        >>> import torch
        >>> from moe_interp.attribution import AttributionCheck
        >>> cells, estimate, real = ((1, 0), (1, 3), (2, 5), (3, 1)), [[0.1, 0.4, 0.2, 0.0]], [[0.2, 0.9, 0.1, 0.0]]
        >>> check = AttributionCheck(("eng",), cells, ("middle", "middle", "middle", "late"), torch.tensor(estimate),
        ...                          torch.tensor(real), torch.tensor([[6, 9, 4, 0]]), "bpb", seconds=1.5)
        >>> check.agreement().query("band == 'all'")   # used cells' ranks 1 3 2 vs 2 3 1: 1 - 6*2/(3*8)
          language band  cells  spearman  low  high
        2      eng  all      3       0.5 -1.0   1.0
        5      all  all      3       0.5 -1.0   1.0
        >>> round(float(check.agreement(used_only=False).spearman[2]), 6)   # + the unused cell: 1 - 6*2/(4*15)
        0.8

        ```
        """
        import pandas as pd

        frame = self.to_pandas()
        frame = frame[frame["count"] > 0] if used_only else frame
        rows = []
        for language in [*self.languages, "all"]:
            for band in [*dict.fromkeys(self.bands), "all"]:
                part = frame[((frame.language == language) | (language == "all")) & ((frame.band == band) | (band == "all"))]
                rho, low, high = rank_correlation(part.estimate, part.real, n_boot, level, seed)
                rows.append({"language": language, "band": band, "cells": len(part), "spearman": rho,
                             "low": low, "high": high})
        return pd.DataFrame(rows)

    def summary(self, level: float = 0.95) -> str:
        """One sentence per language: rank agreement overall and in the middle layers.

        ```python
        >>> import torch
        >>> from moe_interp.attribution import AttributionCheck
        >>> cells, estimate, real = ((1, 0), (1, 3), (2, 5), (3, 1)), [[0.1, 0.4, 0.2, 0.0]], [[0.2, 0.9, 0.1, 0.0]]
        >>> check = AttributionCheck(("eng",), cells, ("middle", "middle", "middle", "late"), torch.tensor(estimate),
        ...                          torch.tensor(real), torch.tensor([[6, 9, 4, 0]]), "bpb", seconds=1.5)
        >>> print(check.summary())
        eng: Spearman 0.50 [-1.00, 1.00] over 3 used cells; middle layers 0.50 [-1.00, 1.00] (3 cells)
        all: Spearman 0.50 [-1.00, 1.00] over 3 used cells; middle layers 0.50 [-1.00, 1.00] (3 cells)

        ```
        """
        table = self.agreement(level=level).set_index(["language", "band"])
        lines = []
        for language in [*self.languages, "all"]:
            row = table.loc[(language, "all")]
            line = (f"{language}: Spearman {row.spearman:.2f} [{row.low:.2f}, {row.high:.2f}] over "
                    f"{int(row.cells)} used cells")
            if (language, "middle") in table.index:
                mid = table.loc[(language, "middle")]
                line += f"; middle layers {mid.spearman:.2f} [{mid.low:.2f}, {mid.high:.2f}] ({int(mid.cells)} cells)"
            lines.append(line)
        return "\n".join(lines)

    def plot(self) -> Any:
        """Scatter of estimated (x) against real (y) effects, one colour per language, with
        the line y = x.

        ```python
        >>> import torch
        >>> from moe_interp.attribution import AttributionCheck
        >>> cells, estimate, real = ((1, 0), (1, 3), (2, 5), (3, 1)), [[0.1, 0.4, 0.2, 0.0]], [[0.2, 0.9, 0.1, 0.0]]
        >>> check = AttributionCheck(("eng",), cells, ("middle", "middle", "middle", "late"), torch.tensor(estimate),
        ...                          torch.tensor(real), torch.tensor([[6, 9, 4, 0]]), "bpb", seconds=1.5)
        >>> [trace.name for trace in check.plot().data]
        ['eng', 'y = x']

        ```
        """
        import plotly.graph_objects as go

        fig = go.Figure()
        labels = [f"layer {l} expert {e} ({b})" for (l, e), b in zip(self.cells, self.bands)]
        for i, lang in enumerate(self.languages):
            fig.add_trace(go.Scatter(x=self.estimate[i].numpy(), y=self.real[i].numpy(), mode="markers", name=lang,
                                     text=labels, hovertemplate="%{text}<br>estimate %{x:.4g}<br>real %{y:.4g}"))
        ends = [float(min(self.estimate.min(), self.real.min())), float(max(self.estimate.max(), self.real.max()))]
        fig.add_trace(go.Scatter(x=ends, y=ends, mode="lines", name="y = x", line={"dash": "dot", "color": "grey"}))
        unit = _METRIC_NAMES[self.metric]
        fig.update_layout(title={"text": "Expert attribution: estimated vs real drop effects"},
                          xaxis_title=f"estimated Δ {unit}", yaxis_title=f"real Δ {unit}")
        return fig


# ------------------------------------------------------------------------------ result

@dataclasses.dataclass(frozen=True, eq=False)
class ExpertAttribution:
    """Estimated drop effects per (language, MoE layer, expert), from `mi.expert_attribution`.

    **Fields:** `languages`, `layers` (real MoE layer indices), `effect` (`[lang, layer,
    expert]`: estimated change of the language's `metric` if the expert were dropped;
    positive: the language depends on it), `count` (how often each expert was chosen by
    the language's real tokens), `tokens` (real tokens routed per language), `baseline`
    (the language's metric without ablation), `metric` (`"bpb"` or `"nll"`), `mode`
    (`"drop"`), `meta` (model, corpus fingerprints, layer bands, time).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
    >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
    >>> attr = mi.expert_attribution(model, corpus, progress=False)
    >>> attr
    ExpertAttribution(languages=['eng', 'deu'], layers=4, experts=8, metric='bpb', mode='drop')
    >>> attr.layers, attr.tokens, attr.baseline  # MoE layers, real tokens per language, bits per byte
    ((0, 1, 2, 3), tensor([37, 33]), tensor([8.0087, 8.0488], dtype=torch.float64))
    >>> attr.count[0].sum(-1)                     # each of eng's 37 tokens chose 2 experts per layer
    tensor([74, 74, 74, 74])

    ```
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    effect: Float[Tensor, "lang layer expert"]
    count: Int[Tensor, "lang layer expert"]
    tokens: Int[Tensor, "lang"]
    baseline: Float[Tensor, "lang"]
    metric: str
    mode: str = "drop"
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        shape = (len(self.languages), len(self.layers))
        if tuple(self.effect.shape[:2]) != shape or self.count.shape != self.effect.shape:
            raise ValueError(f"effect and count must be [languages={shape[0]}, layers={shape[1]}, experts], got "
                             f"{tuple(self.effect.shape)} and {tuple(self.count.shape)}")

    @property
    def num_experts(self) -> int:
        """Experts per MoE layer."""
        return int(self.effect.shape[-1])

    def language_index(self, language: str) -> int:
        """Position of a language label; `KeyError` with close matches when unknown.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.language_index("deu")
        1
        >>> attr.language_index("ger")
        Traceback (most recent call last):
        KeyError: "language 'ger' is not in this attribution; close matches: ['eng', 'deu']; all: ['eng', 'deu']"

        ```
        """
        if language not in self.languages:
            close = difflib.get_close_matches(str(language), self.languages, n=3, cutoff=0.3)
            raise KeyError(f"language {language!r} is not in this attribution; close matches: {close}; "
                           f"all: {list(self.languages)}")
        return self.languages.index(language)

    def frequency(self) -> Float[Tensor, "lang layer expert"]:
        """How often each expert is chosen per real token (`count / tokens`; rows sum to top-k).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.frequency()[0].sum(-1)               # top_k per layer
        tensor([2.0000, 2.0000, 2.0000, 2.0000], dtype=torch.float64)

        ```
        """
        return self.count.double() / self.tokens.clamp(min=1).double()[:, None, None]

    def _layers(self, layers: Iterable[int] | None) -> list[int]:
        chosen = list(self.layers) if layers is None else list(layers)
        unknown = [layer for layer in chosen if layer not in self.layers]
        if unknown or not chosen:
            raise ValueError(f"layers {unknown or chosen} are not MoE layers of this attribution; use some of {self.layers}")
        return chosen

    def top(self, language: str, n: int = 20, layers: Iterable[int] | None = None) -> ExpertSet:
        """The `n` experts with the largest estimated effect for `language` (among `layers`,
        real MoE layer indices; default all), as an `ExpertSet` for `mi.ExpertAblate`.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.top("deu", n=3)
        ExpertSet({0: [1], 1: [2], 2: [2]}, pairs=3)
        >>> attr.top("deu", n=2, layers=[2, 3])
        ExpertSet({2: [1, 2]}, pairs=2)
        >>> mi.ExpertAblate(attr.top("deu", n=3), mode="drop")
        ExpertAblate(experts=((0, (1,)), (1, (2,)), (2, (2,))), mode='drop')

        ```
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        chosen = self._layers(layers)
        rows = [self.layers.index(layer) for layer in chosen]
        values = self.effect[self.language_index(language)][rows].reshape(-1)
        picked: dict[int, list[int]] = {}
        for flat in torch.argsort(values, descending=True, stable=True)[:n].tolist():
            picked.setdefault(chosen[flat // self.num_experts], []).append(flat % self.num_experts)
        return ExpertSet(picked)

    def to_pandas(self) -> Any:
        """Tidy table: `language, layer, expert, effect, frequency`.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.to_pandas().sort_values("effect").tail(3).round(6)
           language  layer  expert    effect  frequency
        27      eng      3       3  0.000763   0.351351
        33      deu      0       1  0.000802   0.303030
        42      deu      1       2  0.000971   0.363636

        ```
        """
        import pandas as pd

        freq = self.frequency()
        return pd.DataFrame([{"language": lang, "layer": layer, "expert": e, "effect": float(self.effect[i, j, e]),
                              "frequency": float(freq[i, j, e])}
                             for i, lang in enumerate(self.languages) for j, layer in enumerate(self.layers)
                             for e in range(self.num_experts)])

    def versus_frequency(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Any:
        """Are the most-used experts the ones a language depends on? Per language, Spearman
        rank correlation over all (layer, expert) cells of routing frequency and estimated
        effect, with a bootstrap interval over cells, and how many of the language's top
        decile of experts by effect are also in its top decile by frequency.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.versus_frequency(n_boot=200).round(2)
          language  cells  spearman   low  high  top_overlap
        0      eng     32     -0.26 -0.54  0.12          0.0
        1      deu     32     -0.23 -0.57  0.20          0.0

        ```
        """
        import pandas as pd

        rows = []
        freq = self.frequency()
        top = max(1, len(self.layers) * self.num_experts // 10)
        for i, lang in enumerate(self.languages):
            f, e = freq[i].reshape(-1).numpy(), self.effect[i].reshape(-1).numpy()
            rho, low, high = rank_correlation(f, e, n_boot, level, seed)
            overlap = len(set(np.argsort(-f, kind="stable")[:top]) & set(np.argsort(-e, kind="stable")[:top])) / top
            rows.append({"language": lang, "cells": len(f), "spearman": rho, "low": low, "high": high,
                         "top_overlap": overlap})
        return pd.DataFrame(rows)

    def validate(self, model: Any, corpus: Mapping[str, Sequence[str]], n: int = 50, seed: int = 0,
                 layers: Iterable[int] | None = None, batch_size: int = 16, path: str | os.PathLike | None = None,
                 progress: bool = True) -> AttributionCheck:
        """Run real single-expert drop ablations (`mi.ExpertAblate({layer: [e]}, mode="drop")`)
        for `n` (layer, expert) cells sampled uniformly without replacement (`seed`) among
        `layers` (real MoE layer indices, e.g. `mi.describe(model).band("middle")`; default
        all), on every language of `corpus`, measured with this attribution's metric through `mi.Experiment`
        (`path=`: resumable, one JSONL line per finished cell), against a no-ablation baseline.

        Pass the model and corpus the estimates were computed on: another model is refused;
        other texts give a warning (the comparison then also measures generalisation).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> middle = mi.describe(model).band("middle")
        >>> middle
        (1, 2)
        >>> check = attr.validate(model, corpus, n=4, layers=middle, progress=False)
        >>> check.cells
        ((1, 4), (1, 7), (2, 0), (2, 3))
        >>> bool((check.estimate - check.real).abs().max() < 1e-4)   # first order: close on this random model
        True

        ```
        """
        corpus = check_corpus(corpus)
        among = self._layers(layers)
        total = len(among) * self.num_experts
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int (cells to ablate, at most {total}), got {n!r}")
        if fingerprint(model_parts(model)) != self.meta.get("model_fingerprint"):
            raise ValueError("this model is not the one the estimates were computed on (its weights, config or "
                             "tokenizer differ): validate with the same model, or recompute mi.expert_attribution")
        for lang, texts in corpus.items():
            self.language_index(lang)
            if fingerprint(texts) != self.meta.get("corpus", {}).get(lang):
                warnings.warn(f"corpus[{lang!r}] is not the text the estimates were computed on: the agreement "
                              "also measures how well they generalise", UserWarning, stacklevel=2)
        picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        cells = tuple((among[int(p) // self.num_experts], int(p) % self.num_experts) for p in picks)
        grid = {"baseline": [], **{f"layer {l} expert {e}": [ExpertAblate({l: [e]}, mode="drop")] for l, e in cells}}
        started = time.perf_counter()
        frame = Experiment(model, corpus, grid, path=path, batch_size=batch_size, progress=progress).run()
        seconds = time.perf_counter() - started
        grouped = frame.groupby(["language", "condition"])
        value = (grouped.bits_per_byte.mean() if self.metric == "bpb"
                 else grouped.nll.sum() / grouped.tokens.sum().clip(lower=1))
        languages = tuple(corpus)
        real = torch.tensor([[value[(lang, f"layer {l} expert {e}")] - value[(lang, "baseline")] for l, e in cells]
                             for lang in languages], dtype=torch.float64)
        def at(table: Tensor) -> Tensor:
            return torch.stack([torch.stack([table[self.language_index(lang), self.layers.index(l), e]
                                             for l, e in cells]) for lang in languages])

        estimate, count = at(self.effect).to(torch.float64), at(self.count)
        for lang in languages:
            mine, theirs = float(self.baseline[self.language_index(lang)]), float(value[(lang, "baseline")])
            if fingerprint(corpus[lang]) == self.meta.get("corpus", {}).get(lang) and not math.isclose(
                    mine, theirs, rel_tol=1e-3, abs_tol=1e-6):
                warnings.warn(f"{lang}: the baseline {self.metric} differs between the attribution ({mine:.6g}) and "
                              f"mi.evaluate ({theirs:.6g}): the two did not score the same tokens", UserWarning,
                              stacklevel=2)
        return AttributionCheck(languages, cells, tuple(_band_of(self.meta, l) for l, _ in cells), estimate, real,
                                count, self.metric, round(seconds, 3))

    def plot(self, language: str | None = None) -> Any:
        """Heatmap of estimated effects, MoE layer (y) by expert (x); with `language=None`
        one trace per language and a menu to switch between them.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> [trace.name for trace in attr.plot().data]   # one trace per language, a menu to switch
        ['eng', 'deu']
        >>> attr.plot("deu").layout.title.text
        'Estimated effect of dropping each expert: deu'

        ```
        """
        import plotly.graph_objects as go

        chosen = list(self.languages) if language is None else [self.languages[self.language_index(language)]]
        unit = _METRIC_NAMES[self.metric]
        bound = float(self.effect.abs().max()) or 1.0
        fig = go.Figure()
        for k, lang in enumerate(chosen):
            fig.add_trace(go.Heatmap(z=self.effect[self.language_index(lang)].numpy(), x=list(range(self.num_experts)),
                                     y=list(self.layers), name=lang, visible=k == 0, zmin=-bound, zmax=bound,
                                     colorscale="RdBu_r", colorbar={"title": {"text": f"Δ {unit}"}},
                                     hovertemplate="layer %{y}<br>expert %{x}<br>%{z:.4g}<extra>" + lang + "</extra>"))
        title = lambda lang: f"Estimated effect of dropping each expert: {lang}"
        fig.update_layout(title={"text": title(chosen[0])}, xaxis_title="expert", yaxis_title="MoE layer")
        fig.update_yaxes(tickformat="d")
        fig.update_xaxes(tickformat="d")
        if len(chosen) > 1:
            buttons = [{"label": lang, "method": "update",
                        "args": [{"visible": [i == k for i in range(len(chosen))]}, {"title": {"text": title(lang)}}]}
                       for k, lang in enumerate(chosen)]
            fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15,
                                            "yanchor": "top", "direction": "down"}])
        return fig

    # -- files ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write to a directory `path` (`attribution.safetensors` + a readable `meta.json`),
        each file written beside and renamed into place, as `RoutingStats.save` does.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "demo.attribution")
        >>> attr.save(path).name
        'demo.attribution'
        >>> mi.ExpertAttribution.load(path).top("deu", 5) == attr.top("deu", 5)
        True

        ```
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / _TENSOR_FILE).exists())):
            raise FileExistsError(f"{path} is not a directory written by ExpertAttribution.save; choose another path")
        header = json.dumps({"format": _FORMAT, "languages": list(self.languages), "layers": list(self.layers),
                             "metric": self.metric, "mode": self.mode, "meta": self.meta}, default=str)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in ("effect", "count", "tokens",
                                                                                     "baseline")}
        target = path if path.exists() else path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        target.mkdir(parents=True, exist_ok=True)
        try:
            _replace_file(target / _TENSOR_FILE, lambda temp: save_file(tensors, str(temp), metadata={"header": header}))
            _replace_file(target / _META_FILE, lambda temp: temp.write_text(json.dumps(json.loads(header), indent=1)))
            if target != path:
                os.replace(target, path)
                _sync_directory(path.parent)
        finally:
            if target != path and target.exists():
                for child in target.iterdir():
                    child.unlink()
                target.rmdir()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExpertAttribution":
        """Read an attribution written by `save` (the header of record is inside the tensor file).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> import os, tempfile, torch
        >>> path = attr.save(os.path.join(tempfile.mkdtemp(), "demo.attribution"))
        >>> sorted(os.listdir(path))
        ['attribution.safetensors', 'meta.json']
        >>> loaded = mi.ExpertAttribution.load(path)
        >>> loaded.effect.shape, torch.equal(loaded.effect, attr.effect), loaded.meta == attr.meta
        (torch.Size([2, 4, 8]), True, True)

        ```
        """
        from safetensors import SafetensorError, safe_open

        tensor_path = Path(path) / _TENSOR_FILE
        if not tensor_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved ExpertAttribution (expected {tensor_path})")
        try:
            with safe_open(str(tensor_path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("header", "null"))
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            return cls(tuple(header["languages"]), tuple(header["layers"]), tensors["effect"], tensors["count"],
                       tensors["tokens"], tensors["baseline"], header["metric"], header["mode"], header["meta"])
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{tensor_path} is damaged or not an ExpertAttribution file: {error}") from None

    def __repr__(self) -> str:
        return (f"ExpertAttribution(languages={list(self.languages)}, layers={len(self.layers)}, "
                f"experts={self.num_experts}, metric={self.metric!r}, mode={self.mode!r})")
