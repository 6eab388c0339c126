"""`mi.expert_attribution`: every expert's drop effect per language from a few forward and
backward passes, checked against real ablations.

Attribution patching for routed experts. Dropping expert `e` for the tokens that chose it
sets its routing weight `w[t, e]` to 0 (no renormalisation, as `ExpertAblate(mode="drop")`).
Along the drop path `w[t, e] * (1 - s)`, s from 0 to 1, the change of the loss `L` is

    effect[e] = integral over s in [0, 1] of  sum over t that chose e of  dL/dw[t, e] * (-w[t, e])

with the gradient taken through the weights the experts module really receives (where the
real drop acts), every later layer (its routers' weights included) responding as in the
real forward. Two estimators (`method=`):

- `"taylor"` (first order): the gradient at s = 0, the unablated model; one backward gives
  every expert of every layer. Exact where the loss is linear in the removed contribution.
  A trained model sits near a minimum of its loss along the scale of an expert's output,
  so the slope there can nearly vanish while the drop costs a lot: the loss along a drop
  path is flat at s = 0 and steep near s = 1 (`benchmarks/ATTRIBUTION.md` shows one).
- `"path"` (default): the integral by Gauss-Legendre quadrature (`steps` points; 1 is the
  midpoint s = 1/2), each point one forward and one backward at scaled weights.

Which weights to scale at a point. Each single drop has its own path (only expert `e`'s
weight scaled): exact in the limit, but one pass per expert, as costly as the real
ablations. Scaling every expert of every layer at once is one pass, but the gradient is
then taken in a model with every MoE layer half gone, far from any single drop. The path
estimator scales one MoE layer's routing weights at a time (the other layers as in the
model): the state a drop in that layer moves towards, with the layer's other experts moved
along (for a token, both of its chosen experts are halved, where a single drop halves one).
`layers_per_pass` consecutive layers share a pass to halve the cost (default 2); 1 gives
every layer its own path.

Measured (`benchmarks/ATTRIBUTION.md`, commit 1e8a2d2): the shipped demo model (8 MoE
layers of 32 experts, top-2), 6 held-out UDHR pieces of at most 200 bytes for each of eng,
deu and swh, every one of the 256 cells dropped for real. Spearman with the real drops over
every used middle-band cell (layers 2-6), eng / deu / swh:

- first order 0.58 / 0.47 / 0.50; the default path 0.72 / 0.76 / 0.82 (sign right on 78% /
  88% / 88% of the cells whose real effect is >= 0.001 bits/byte, median estimate / real
  0.60 / 0.94 / 0.83); one layer a pass 0.76 / 0.79 / 0.89 (81% / 90% / 95%); every layer
  at once 0.37 / 0.54 / 0.59;
- on 24 middle cells, the midpoint along each expert's own path 0.85 and along its layer's
  0.83: scaling the layer together loses little;
- early layers (0-1): every estimator is unreliable by the rule (default 0.49 / 0.62 / 0.50,
  sizes a quarter to a half of the real ones); the late layer (7): the default is reliable
  where there are enough cells;
- cost against `mi.profile` on the same texts (wall / CPU time): first order 2.3x / 2.5x, the
  default 7.5x / 7.9x, one layer a pass 12.5x / 13.7x; real drops of every cell 204x.

What no gradient sees: a later router's top-k choice that flips along the path is a jump
in the loss, whatever the quadrature. `ExpertAttribution.validate` runs real drops for a
sample of cells and `AttributionCheck.agreement` gives, per language and band of layers, a
Spearman correlation with its interval, sign agreement and the size ratio on the cells
with a real effect, and a verdict ("reliable", "unreliable" or "too few cells") by the
rule stated there.
"""

import dataclasses
import difflib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from moe_interp.core._fingerprint import check_corpus, fingerprint, model_parts
from moe_interp.arch import BANDS, MoESpec, describe
from moe_interp.analysis import rank_correlation  # public here too: `moe_interp.experiments._attribution.rank_correlation`
from moe_interp.core._checks import check_int, check_positive
from moe_interp.core._expert_set import ExpertSet
from moe_interp.core._layers import parse_layers
from moe_interp.experiments import Experiment
from moe_interp.experiments._resume import run_resumable
from moe_interp.runtime._interventions import ExpertAblate
from moe_interp.core._files import read_checked, save_tensor_directory
from moe_interp.runtime._inputs import max_positions as _max_positions
from moe_interp.tracing import trace
from moe_interp.arch import UnsupportedModelError
from moe_interp.arch._sites import router_sites
from moe_interp.runtime._kernels import tally, totals_add, totals_fold, totals_start
from moe_interp.runtime._reader import resolve, routing, set_weights

__all__ = ["expert_attribution", "ExpertAttribution", "AttributionCheck", "rank_correlation"]

METRICS = ("bpb", "nll")
METHODS = ("path", "taylor")
LAYERS_PER_PASS = 2  # method="path": MoE layers whose drop paths share one forward and backward (see the module doc)
# AttributionCheck.agreement's rule (see there): an effect is a real change of at least MIN_EFFECT (in the metric's
# unit); a correlation needs MIN_CELLS such cells; "reliable" needs the interval's lower end >= MIN_LOW and the right
# sign on >= MIN_SIGN of those cells
MIN_EFFECT, MIN_CELLS, MIN_LOW, MIN_SIGN = 1e-3, 10, 0.5, 0.8
_METRIC_NAMES = {"bpb": "bits per byte", "nll": "nats per token"}
_FORMAT = "moe_interp.ExpertAttribution/1"
_CHECKPOINT = "moe_interp.attribution-checkpoint/3"  # /3: with a sha256 checksum
_TENSOR_FILE = "attribution.safetensors"
_TENSORS = ("effect", "count", "tokens", "baseline")  # the fields a file stores as tensors, in field order
# running sums a checkpoint keeps; effect and loss are weighted per text (see _coefficients)
_SUMS = ("effect", "count", "tokens", "predicted", "loss")


# ------------------------------------------------------------------------- reading the weights

def _probe(model: Any, spec: MoESpec, found: list, factors: Mapping[int, float | None] | None = None) -> None:
    """Inside a trace of `model`: the routing of the MoE layers at the positions `factors`
    names (`kernels.routing`, the reading RouterRecord, the drop edit and the router view
    share; a slot that reached no expert reads index -1), in model order. A layer whose
    factor is a number gets its weights written back (`kernels.set_weights`) times the
    factor plus a zero probe `delta`, a leaf that requires grad: `dL/d delta` is the total
    derivative through the weights the experts receive (later routers stay live, so their
    weights move with the hidden states as in a real drop), and no parameter needs to
    require grad. A factor of None only reads. Appends `(position, indices, weights, delta
    or None)` per layer named; `factors=None`: every layer probed at factor 1."""
    sites, _ = router_sites(spec)  # grad is on: the sites of a forward with grad
    factors = dict.fromkeys(range(len(spec.moe_layers)), 1.0) if factors is None else factors
    for position, (router_path, experts_path) in enumerate(zip(spec.routers, spec.experts)):
        if position not in factors:
            continue
        router = resolve(model, router_path)
        experts = resolve(model, experts_path) if experts_path else None
        indices, weights = routing(router, experts, sites, spec.top_k)
        factor, delta = factors[position], None
        if factor is not None:
            delta = torch.zeros_like(weights, requires_grad=True)
            set_weights(router, experts, sites, (weights if factor == 1 else weights * factor) + delta)
        found.append((position, indices, weights.detach(), delta))


def _nodes(steps: int) -> list[tuple[float, float]]:
    """Gauss-Legendre nodes and weights on [0, 1]: `steps` points integrate a polynomial of
    degree `2 * steps - 1` exactly; one point is the midpoint rule.

    ```python
    >>> from moe_interp.experiments._attribution import _nodes
    >>> _nodes(1)
    [(0.5, 1.0)]
    >>> [(round(s, 4), round(a, 4)) for s, a in _nodes(2)]   # (1 -+ 1/sqrt(3)) / 2, weight 1/2 each
    [(0.2113, 0.5), (0.7887, 0.5)]

    ```
    """
    x, w = np.polynomial.legendre.leggauss(steps)
    return [(float((1 + xi) / 2), float(wi / 2)) for xi, wi in zip(x, w)]


def _passes(method: str, steps: int, per_pass: int, layers: int) -> dict:
    """Forward and backward passes per batch: `"taylor"` 1 and 1; `"path"` 1 + n forwards (the
    first reads the routing) and n backwards, n = steps * ceil(layers / per_pass).

    ```python
    >>> from moe_interp.experiments._attribution import _passes
    >>> _passes("path", 1, 2, 8)          # the demo model's 8 MoE layers, two a pass, the midpoint
    {'forward': 5, 'backward': 4}

    ```
    """
    if method == "taylor":
        return {"forward": 1, "backward": 1}
    n = steps * -(-layers // per_pass)
    return {"forward": 1 + n, "backward": n}


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


def _forward(model: Any, spec: MoESpec, ids: Tensor, mask: Tensor, coefficient: Tensor,
             factors: Mapping[int, float | None]) -> tuple[list, Tensor, Tensor, tuple]:
    """One forward of the batch with the layers `factors` names probed (`_probe`) and, if
    any is written, one backward: `(found, nll per text, predicted tokens mask, grads)`."""
    found: list = []
    with torch.enable_grad():
        # no cache: one forward scores the texts (some hybrid models' caches fail outside generation)
        with trace(model, {"input_ids": ids, "attention_mask": mask}, use_cache=False) as tr:  # mi.trace: the model's lock
            _probe(model, spec, found, factors)
        if len(found) != len(factors):
            raise RuntimeError(f"expected the routing weights of {len(factors)} of the {len(spec.moe_layers)} MoE "
                               f"layers once per forward, read {len(found)}: this model routes in a way attribution "
                               "does not read; please report it")
        logits = tr.output.logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        predicted = (mask[:, 1:] * mask[:, :-1]).bool()
        nll = -torch.where(predicted, logp, 0).sum(-1)
        leaves = [delta for *_, delta in found if delta is not None]
        grads = torch.autograd.grad((nll.to(torch.float64) * coefficient).sum(), leaves,
                                    allow_unused=True) if leaves else ()
    return found, nll.detach(), predicted, grads


def _batch(model: Any, spec: MoESpec, texts: Sequence[str], groups: Tensor, num_groups: int, metric: str,
           method: str = "taylor", steps: int = 1, per_pass: int = 1) -> dict:
    """The running sums of `_SUMS` that `texts` (row i belongs to group `groups[i]`) add,
    each with a leading `[num_groups]` axis. `"taylor"`: one forward and one backward, every
    layer probed at the model. `"path"`: one forward that reads the routing (counts, loss),
    then per MoE layer and per node `s` of `steps` Gauss-Legendre points, one forward with
    that layer's routing weights scaled by `1 - s` (the other layers as in the model) and one
    backward, weighted by the node's weight: the integral over s in [0, 1] of
    `d/ds L(layer's weights * (1 - s))`, split by cell."""
    module = model._module
    enc = model.tokenizer(list(texts), return_tensors="pt", padding=True)
    limit = _max_positions(model)
    if limit is not None and enc["input_ids"].shape[1] > limit:
        raise ValueError(f"a text of {enc['input_ids'].shape[1]} tokens is longer than this model's {limit} positions: "
                         "cut the texts into shorter pieces first (the estimate and mi.evaluate must see the same text)")
    device = getattr(module, "device", None) or next(module.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    coefficient = _coefficients(model.tokenizer, texts, ids, mask, metric).to(device)
    positions = range(len(spec.moe_layers))
    read, nll, predicted, grads = _forward(model, spec, ids, mask, coefficient,
                                           {p: 1.0 if method == "taylor" else None for p in positions})
    probed = [(1.0, entry, grad) for entry, grad in zip(read, grads)]  # (node weight, routing, dL/dw)
    if method == "path":
        for start in range(0, len(positions), per_pass):
            for s, a in _nodes(steps):
                found, _, _, grad = _forward(model, spec, ids, mask, coefficient,
                                             dict.fromkeys(positions[start:start + per_pass], 1.0 - s))
                probed += [(a, entry, g) for entry, g in zip(found, grad)]
    # the kernels' totals, as RouterRecord keeps them: per (group, layer, expert), padding (-1)
    # and slots that reached no expert (index -1) left out; `moved` keeps the effects as its mass
    group = torch.where(mask.reshape(-1) > 0, groups.to(device)[:, None].expand_as(mask).reshape(-1), -1)
    layers, E = len(spec.moe_layers), spec.num_experts
    chosen, moved = (totals_start(group, layers, num_groups, E, spec.top_k, device) for _ in range(2))
    for position, indices, weights, _ in read:
        if indices.shape != weights.shape:
            raise ValueError(f"routing of shape {tuple(indices.shape)} with weights of shape {tuple(weights.shape)}: "
                             "expected [tokens, top_k] indices with weights of the same shape; register an adapter "
                             "whose readout matches")
        totals_add(chosen, position, indices, weights)
    for node, (position, indices, weights, _), grad in probed:
        contribution = torch.zeros_like(weights) if grad is None else -(grad * weights)  # per (token, slot)
        totals_add(moved, position, indices, contribution.to(torch.float64) * node)
    counted, effects = ({"count": torch.zeros(num_groups, layers, E, dtype=torch.long, device=device),
                         "gate_mass": torch.zeros(num_groups, layers, E, dtype=torch.float64, device=device)}
                        for _ in range(2))
    totals_fold(chosen, counted)
    totals_fold(moved, effects)
    rows = groups.to(device)
    return {"effect": effects["gate_mass"].cpu(), "count": counted["count"].cpu(), "tokens": tally(group, num_groups).cpu(),
            "predicted": tally(rows, num_groups, predicted.sum(-1)).cpu(),
            "loss": tally(rows, num_groups, nll.to(torch.float64) * coefficient).cpu()}


# ------------------------------------------------------------------------- resuming

def expert_attribution(model: Any, corpus: Mapping[str, Sequence[str]], metric: str = "bpb", mode: str = "drop",
                       batch_size: int = 8, progress: bool = True, checkpoint: str | os.PathLike | None = None,
                       save_every: int = 10, method: str = "path", steps: int | None = None,
                       layers_per_pass: int | None = None) -> "ExpertAttribution":
    """Estimated change of each language's loss if each expert were dropped, for every
    (MoE layer, expert), from a few forward and backward passes per batch.

    `effect[lang, layer, expert]` estimates `ExpertAblate({layer: [e]}, mode="drop")`: the
    change of the language's loss `L` when the expert's routing weight `w[t, e]` (as the
    experts module receives it) is set to 0 for the real (non-padding) tokens `t` that
    chose it; positive: dropping it hurts. As an integral along the drop path,

        effect[e] = integral over s in [0, 1] of  sum over t that chose e of  dL/dw[t, e] * (-w[t, e])

    with the gradient taken where the weights have been scaled by `1 - s`. `method` says
    where (see the module docstring for why, and what it measured):

    - `"path"` (default): at `steps` Gauss-Legendre points of s (1: the midpoint, s = 1/2),
      with all of that MoE layer's routing weights scaled by `1 - s` and the other layers
      as in the model; `layers_per_pass` (default `LAYERS_PER_PASS` = 2) consecutive MoE
      layers share a pass (scaled together; 1 gives each layer its own path). Cost per
      batch: 1 forward that reads the routing, then `steps * ceil(layers /
      layers_per_pass)` forwards and backwards (each backward only reaches down to its
      pass's first layer); `meta["passes"]` records them;
    - `"taylor"`: at s = 0, the unablated model (first order, one forward and one backward
      for every layer at once); exact where the loss is linear in the removed contribution.

    `L` is the language's `metric`, exactly as `mi.Experiment` / `mi.ablation_grid` report
    real ablations, so estimates and real effects compare like with like:

    - `"bpb"`: mean over the language's texts of bits per byte (`mi.evaluate.text_nll`);
    - `"nll"`: summed NLL (nats) over the language's predicted tokens / their number.

    Texts are batched longest first; padding is excluded exactly (a text's effect does not
    depend on its batch). Memory is one batch's forward graph: the weights' gradients are
    folded into `[lang, layer, expert]` sums after each backward, which frees the graph.
    Texts must fit the model's positions (cut long ones; no truncation, so that `validate`
    evaluates the very same tokens). With `checkpoint=path` the sums are written every
    `save_every` batches and on interruption; rerunning the same call resumes there (keyed
    by the content of the model, corpus, metric, mode and method with its settings;
    `ResumeError` otherwise).

    An estimate: no gradient sees a later router's top-k choice flip along the path (a jump
    in the loss). Check it with `validate`, whose `AttributionCheck.agreement` gives a
    verdict per band of layers.

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
    >>> attr.meta["method"], attr.meta["passes"]  # 1 read + 2 passes of 2 layers, at the midpoint
    ('path', {'forward': 3, 'backward': 2})
    >>> attr.top("deu", n=3)                      # the experts German depends on most
    ExpertSet({0: [1], 1: [2], 2: [2]}, pairs=3)
    >>> check = attr.validate(model, corpus, n=32, progress=False)   # real drop ablations of all 32 cells
    >>> print(check.summary())                    # a random model: no drop moves 0.001 bits per byte
    eng: early too few cells (0 with an effect); middle too few cells (0 with an effect); late too few cells (0 with an effect); all too few cells (0 with an effect)
    deu: early too few cells (0 with an effect); middle too few cells (0 with an effect); late too few cells (0 with an effect); all too few cells (0 with an effect)
    all: early too few cells (0 with an effect); middle too few cells (0 with an effect); late too few cells (0 with an effect); all too few cells (0 with an effect)
    >>> print(check.summary(min_effect=1e-4))     # its smaller effects, ranked
    eng: early too few cells (4 with an effect); middle 0.97 [0.85, 1.00] reliable; late too few cells (3 with an effect); all 0.97 [0.90, 1.00] reliable
    deu: early too few cells (7 with an effect); middle 1.00 [1.00, 1.00] reliable; late too few cells (5 with an effect); all 1.00 [0.99, 1.00] reliable
    all: early 0.98 [0.90, 1.00] reliable; middle 0.99 [0.97, 1.00] reliable; late too few cells (8 with an effect); all 0.99 [0.97, 1.00] reliable
    >>> first = mi.expert_attribution(model, corpus, method="taylor", progress=False)   # one forward and backward
    >>> first.meta["passes"]
    {'forward': 1, 'backward': 1}

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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ('path': the gradient integrated along each layer's drop "
                         f"path; 'taylor': the gradient at the model, one backward), got {method!r}")
    if method == "taylor" and (steps, layers_per_pass) != (None, None):
        raise ValueError("steps and layers_per_pass set the passes of method='path' (points along each drop path, "
                         "MoE layers whose paths share a pass); method='taylor' takes the gradient at the model "
                         "once: leave them out")
    steps = 1 if steps is None else steps
    layers_per_pass = LAYERS_PER_PASS if layers_per_pass is None else layers_per_pass
    for name, value in (("batch_size", batch_size), ("save_every", save_every), ("steps", steps),
                        ("layers_per_pass", layers_per_pass)):
        check_positive(name, value)
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
    settings = {"metric": metric, "mode": mode} if method == "taylor" else {
        "metric": metric, "mode": mode, "method": method, "steps": steps, "layers_per_pass": layers_per_pass}
    key = {**parts, "corpus": fingerprint(corpus), "settings": fingerprint(settings)}

    def batches(done: int, sums: dict[str, Tensor]) -> Iterator[tuple[int, int]]:
        for start in range(done, len(items), batch_size):
            chunk = order[start : start + batch_size]
            added = _batch(model, spec, [items[i][1] for i in chunk], torch.tensor([items[i][0] for i in chunk]),
                           len(languages), metric, method, steps, layers_per_pass)
            for name in _SUMS:
                sums[name] += added[name].to(sums[name].dtype)
            yield len(chunk), int(added["tokens"].sum())

    started = time.perf_counter()
    sums = run_resumable(batches, sums, total=len(items), key=key, checkpoint=checkpoint, form=_CHECKPOINT,
                         what="mi.expert_attribution", save_every=save_every, progress=progress, desc="attribution",
                         unit="text")
    texts = torch.tensor([len(corpus[lang]) for lang in languages], dtype=torch.float64)
    norm = texts if metric == "bpb" else sums["predicted"].to(torch.float64).clamp(min=1)
    config = getattr(model._module, "config", None)
    meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
            "model_fingerprint": fingerprint(parts), "texts": {lang: len(corpus[lang]) for lang in languages},
            "corpus": {lang: fingerprint(corpus[lang]) for lang in languages},
            "num_layers": spec.num_layers, "bands": {band: list(spec.band(band)) for band in BANDS}, "method": method,
            **({} if method == "taylor" else {"steps": steps, "layers_per_pass": layers_per_pass}),
            "passes": _passes(method, steps, layers_per_pass, len(spec.moe_layers)),
            "seconds": round(time.perf_counter() - started, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return ExpertAttribution(tuple(languages), spec.moe_layers, sums["effect"] / norm[:, None, None], sums["count"],
                             sums["tokens"], sums["loss"] / norm, metric, mode, meta)


# ------------------------------------------------------------------------- agreement

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
        >>> from moe_interp.experiments._attribution import AttributionCheck
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

    def agreement(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0, used_only: bool = True,
                  min_effect: float = MIN_EFFECT, min_cells: int = MIN_CELLS, min_low: float = MIN_LOW,
                  min_sign: float = MIN_SIGN) -> Any:
        """How far the estimates can be trusted, per language and band of layers (`"all"`
        pools): one row each, with a verdict by a stated rule.

        **Columns:** `cells` (cells compared; with `used_only`, cells the language never
        routed to are left out: both effects are exactly 0 there, which says nothing about
        the estimate and would inflate the correlation), `effect_cells` (those whose real
        effect is at least `min_effect` in size, in the attribution's metric: bits per byte
        or nats per token), `spearman` with a `level` percentile bootstrap interval `low`,
        `high` over cells (`rank_correlation`), `sign` (share of the effect cells whose
        estimate has the real effect's sign), `ratio` (median estimate / real over the
        effect cells: 1 when the sizes are right), `verdict` and `reason`:

        - `"too few cells"`: fewer than `min_cells` effect cells. No correlation is reported
          (nan): over a handful of cells the bootstrap interval is degenerate (4 cells in
          the same order give [1, 1] whatever the resample) and says nothing;
        - `"reliable"`: the interval's lower end is at least `min_low` and the sign is right
          on at least `min_sign` of the effect cells (the ranking and the direction hold);
        - `"unreliable"`: otherwise; `reason` names what failed.

        The sizes (`ratio`) are not part of the verdict: an estimate can rank well and be
        off in scale. Defaults: `min_effect` 0.001, `min_cells` 10, `min_low` 0.5, `min_sign`
        0.8 (module constants `MIN_EFFECT`, `MIN_CELLS`, `MIN_LOW`, `MIN_SIGN`).

        ```python
        >>> import torch
        >>> from moe_interp.experiments._attribution import AttributionCheck
        >>> real = torch.tensor([[0.002 * k for k in range(1, 13)] + [0.05, 0.0]], dtype=torch.float64)
        >>> estimate = real.clone()
        >>> estimate[0, :2] = estimate[0, [1, 0]]                        # one swapped pair
        >>> estimate[0, 12] = -0.01                                      # the early cell: wrong sign
        >>> cells, bands = tuple((2, e) for e in range(12)) + ((0, 0), (0, 1)), ("middle",) * 12 + ("early",) * 2
        >>> count = torch.tensor([[5] * 13 + [0]])                       # the last cell was never routed to
        >>> check = AttributionCheck(("eng",), cells, bands, estimate, real, count, "bpb", seconds=1.5)
        >>> table = check.agreement()
        >>> table[["language", "band", "cells", "effect_cells", "spearman", "sign", "verdict"]].round(3)
          language    band  cells  effect_cells  spearman   sign        verdict
        0      eng   early      1             1       NaN  0.000  too few cells
        1      eng  middle     12            12     0.993  1.000       reliable
        2      eng     all     13            13     0.566  0.923     unreliable
        3      all   early      1             1       NaN  0.000  too few cells
        4      all  middle     12            12     0.993  1.000       reliable
        5      all     all     13            13     0.566  0.923     unreliable
        >>> table.reason[0]
        'too few cells with an effect: 1 cells with |real| >= 0.001 (10 needed); no correlation reported'
        >>> table.reason[2]                                              # the early cell's wrong sign, pooled
        "interval's lower end -0.11 < 0.5"

        ```
        """
        import pandas as pd

        for name, value in (("min_effect", min_effect), ("min_low", min_low), ("min_sign", min_sign)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        check_int("min_cells (a rank correlation needs 3 points)", min_cells, 3)
        frame = self.to_pandas()
        frame = frame[frame["count"] > 0] if used_only else frame
        order = [*[band for band in BANDS if band in self.bands], *[b for b in dict.fromkeys(self.bands)
                                                                      if b not in BANDS]]
        rows = []
        for language in [*self.languages, "all"]:
            for band in [*order, "all"]:
                part = frame[((frame.language == language) | (language == "all")) & ((frame.band == band) | (band == "all"))]
                big = part[part.real.abs() >= min_effect]
                sign = float((np.sign(big.estimate) == np.sign(big.real)).mean()) if len(big) else math.nan
                ratio = float((big.estimate / big.real).median()) if len(big) else math.nan
                if len(big) < min_cells:
                    rho = low = high = math.nan
                    verdict = "too few cells"
                    reason = (f"too few cells with an effect: {len(big)} cells with |real| >= {min_effect:g} "
                              f"({min_cells} needed); no correlation reported")
                else:
                    rho, low, high = rank_correlation(part.estimate, part.real, n_boot, level, seed)
                    failed = ([f"interval's lower end {low:.2f} < {min_low:g}"] if not low >= min_low else []) + (
                        [f"sign right on {sign:.0%} < {min_sign:.0%} of the cells with an effect"]
                        if not sign >= min_sign else [])
                    verdict = "unreliable" if failed else "reliable"
                    reason = "; ".join(failed) if failed else (f"interval's lower end {low:.2f} >= {min_low:g}; sign "
                                                               f"right on {sign:.0%} of {len(big)} cells with an effect")
                rows.append({"language": language, "band": band, "cells": len(part), "effect_cells": len(big),
                             "spearman": rho, "low": low, "high": high, "sign": sign, "ratio": ratio,
                             "verdict": verdict, "reason": reason})
        return pd.DataFrame(rows)

    def summary(self, level: float = 0.95, **rule: Any) -> str:
        """One line per language (and `all`, pooled): per band of layers, the Spearman rank
        correlation with its interval and the verdict of `agreement` (`rule`: its
        `min_effect`, `min_cells`, `min_low`, `min_sign`; the defaults otherwise).

        ```python
        >>> import torch
        >>> from moe_interp.experiments._attribution import AttributionCheck
        >>> real = torch.tensor([[0.002 * k for k in range(1, 13)] + [0.05, 0.0]], dtype=torch.float64)
        >>> estimate = real.clone()
        >>> estimate[0, :2] = estimate[0, [1, 0]]
        >>> estimate[0, 12] = -0.01
        >>> cells, bands = tuple((2, e) for e in range(12)) + ((0, 0), (0, 1)), ("middle",) * 12 + ("early",) * 2
        >>> check = AttributionCheck(("eng",), cells, bands, estimate, real, torch.tensor([[5] * 13 + [0]]), "bpb",
        ...                          seconds=1.5)
        >>> print(check.summary())
        eng: early too few cells (1 with an effect); middle 0.99 [0.89, 1.00] reliable; all 0.57 [-0.11, 1.00] unreliable
        all: early too few cells (1 with an effect); middle 0.99 [0.89, 1.00] reliable; all 0.57 [-0.11, 1.00] unreliable

        ```
        """
        table = self.agreement(level=level, **rule)
        lines = []
        for language in [*self.languages, "all"]:
            parts = []
            for row in table[table.language == language].itertuples():
                if row.verdict == "too few cells":
                    parts.append(f"{row.band} too few cells ({row.effect_cells} with an effect)")
                else:
                    parts.append(f"{row.band} {row.spearman:.2f} [{row.low:.2f}, {row.high:.2f}] {row.verdict}")
            lines.append(f"{language}: " + "; ".join(parts))
        return "\n".join(lines)

    def plot(self) -> Any:
        """Scatter of estimated (x) against real (y) effects, one colour per language, with
        the line y = x.

        ```python
        >>> import torch
        >>> from moe_interp.experiments._attribution import AttributionCheck
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
    (`"drop"`), `meta` (model, its layer count, corpus fingerprints, layer bands, the estimator: `method`,
    its `steps` and `layers_per_pass`, `passes` per batch; time).

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

    def _layers(self, layers: Any) -> tuple[int, ...]:
        """The MoE layers `layers` selects in the layer vocabulary (`core._layers.parse_layers`)."""
        return parse_layers(layers, self.layers, num_layers=self.meta.get("num_layers"))

    def top(self, language: str, n: int = 20, layers: Any = None) -> ExpertSet:
        """The `n` experts with the largest estimated effect for `language` (among `layers`:
        real MoE layer indices, a band name such as `"middle"`, ... as everywhere `layers=`
        is taken; default all), as an `ExpertSet` for `mi.ExpertAblate`.

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
        check_positive("n", n)
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
        27      eng      3       3  0.000771   0.351351
        33      deu      0       1  0.000782   0.303030
        42      deu      1       2  0.000953   0.363636

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
        0      eng     32     -0.24 -0.52  0.12          0.0
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
                 layers: Any = None, batch_size: int = 16, path: str | os.PathLike | None = None,
                 progress: bool = True) -> AttributionCheck:
        """Run real single-expert drop ablations (`mi.ExpertAblate({layer: [e]}, mode="drop")`)
        for `n` (layer, expert) cells sampled uniformly without replacement (`seed`) among
        `layers` (a band name such as `"middle"`, real MoE layer indices, ... as everywhere
        `layers=` is taken; default all), on every language of `corpus`, measured with this
        attribution's metric through `mi.Experiment` (`path=`: resumable, one JSONL line per
        finished cell), against a no-ablation baseline.

        Pass the model and corpus the estimates were computed on: another model is refused;
        other texts give a warning (the comparison then also measures generalisation). The
        returned `AttributionCheck` says per language and band of layers whether the
        estimates can be trusted (`agreement`, `summary`): a correlation with its interval,
        sign agreement and size ratio on the cells with a real effect, and a verdict
        ("reliable", "unreliable" or "too few cells") by a stated rule. Sample enough cells
        per band for a verdict (`MIN_CELLS` cells with an effect: pass `layers=` one band
        at a time, or a larger `n`).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> mi.describe(model).band("middle")
        (1, 2)
        >>> check = attr.validate(model, corpus, n=4, layers="middle", progress=False)
        >>> check.cells, check.bands
        (((1, 4), (1, 7), (2, 0), (2, 3)), ('middle', 'middle', 'middle', 'middle'))
        >>> bool((check.estimate - check.real).abs().max() < 1e-4)   # close on this random model (small effects)
        True
        >>> check.agreement().verdict.unique().tolist()   # none of its 4 x 2 drops moves 0.001 bits per byte
        ['too few cells']

        ```
        """
        corpus = check_corpus(corpus)
        among = self._layers(layers)
        total = len(among) * self.num_experts
        check_positive(f"n (cells to ablate, at most {total})", n)
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
        """Write to a directory `path` as `RoutingStats.save` does (`core._files`):
        `attribution.safetensors` (the tensors, the header and a sha256 checksum of both,
        verified by `load`) and a readable `meta.json`, each written beside and renamed into
        place; an existing `path` is replaced only with `overwrite=True`.

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
        header = {"format": _FORMAT, "languages": list(self.languages), "layers": list(self.layers),
                  "metric": self.metric, "mode": self.mode, "meta": self.meta}
        return save_tensor_directory(Path(path), header, {name: getattr(self, name) for name in _TENSORS},
                                     tensor_file=_TENSOR_FILE, what="ExpertAttribution.save", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExpertAttribution":
        """Read an attribution written by `save`, after checking its checksum (the header of
        record is inside the tensor file). A file written before attribution files carried a
        checksum loads unverified, with a `UserWarning` saying so.

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
        from safetensors import SafetensorError

        tensor_path = Path(path) / _TENSOR_FILE
        if not tensor_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved ExpertAttribution (expected {tensor_path})")
        try:
            stored, tensors = read_checked(tensor_path)
            if "moe_interp" not in stored and "header" in stored:
                warnings.warn(f"{tensor_path} has no checksum (written before attribution files had one): loaded "
                              "unverified; save it again to add one", UserWarning, stacklevel=2)
            header = json.loads(stored.get("moe_interp", stored.get("header", "null")))
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            return cls(tuple(header["languages"]), tuple(header["layers"]), *(tensors[name] for name in _TENSORS),
                       header["metric"], header["mode"], header["meta"])
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{tensor_path} is damaged or not an ExpertAttribution file: {error}") from None

    def __repr__(self) -> str:
        return (f"ExpertAttribution(languages={list(self.languages)}, layers={len(self.layers)}, "
                f"experts={self.num_experts}, metric={self.metric!r}, mode={self.mode!r})")
