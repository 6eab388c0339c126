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
rule stated there. Both result classes live in `experiments._attribution_results`.

Encoder-decoder models: `L` is the decoder's teacher-forced loss (of the text itself, or of
a pair's target given its source), the experts of both stacks are scored from the same
passes, and the result is one `ExpertAttribution` per stack (see `expert_attribution`).
"""

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moe_interp.analysis import rank_correlation  # public here too: `moe_interp.experiments._attribution.rank_correlation`
from moe_interp.arch import BANDS, MoESpec, describe
from moe_interp.arch._sites import router_sites
from moe_interp.core._checks import check_positive
from moe_interp.core._fingerprint import check_corpus, fingerprint, is_pairs, model_parts
from moe_interp.core._layers import bands as _bands
from moe_interp.experiments._attribution_results import (  # AttributionCheck: public here too, as documented
    METRICS, AttributionCheck, ExpertAttribution, check_stacks, stack_inputs, stack_items, target_nll)
from moe_interp.experiments._resume import run_resumable
from moe_interp.runtime._inputs import max_positions as _max_positions
from moe_interp.runtime._kernels import tally, totals_add, totals_fold, totals_start
from moe_interp.runtime._reader import resolve, routing, set_weights
from moe_interp.runtime._shipping import tokenize
from moe_interp.tracing import trace

__all__ = ["expert_attribution", "ExpertAttribution", "AttributionCheck", "rank_correlation"]

METHODS = ("path", "taylor")
LAYERS_PER_PASS = 2  # method="path": MoE layers whose drop paths share one forward and backward (see the module doc)
_CHECKPOINT = "moe_interp.attribution-checkpoint/4"  # /3: with a sha256 checksum; /4: the weights key by XXH3-128
# running sums a checkpoint keeps; effect and loss are weighted per text (see _coefficients)
_SUMS = ("effect", "count", "tokens", "predicted", "loss")


# ------------------------------------------------------------------------- reading the weights

def _probe(model: Any, spec: MoESpec, found: list, factors: Mapping[int, float | None] | None = None) -> None:
    """Inside a trace of `model`: the routing of the MoE layers at the positions `factors`
    names (`runtime._reader.routing`, the one reader that RouterRecord, the drop edit and
    the router view share; a slot that reached no expert reads index -1), in model order.
    A layer whose factor is a number gets its weights written back (`set_weights`) times
    the factor plus a zero probe `delta`, a leaf that requires grad: `dL/d delta` is the total
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


def _forward(model: Any, spec: MoESpec, inputs: Mapping[str, Tensor], targets: Tensor, predicted: Tensor,
             coefficient: Tensor, factors: Mapping[int, float | None], shift: bool = True,
             interventions: Sequence = (), grad: bool = True) -> tuple[list, Tensor, tuple]:
    """One forward of the batch with the layers `factors` names probed (`_probe`) and, if
    any is written, one backward: `(found, nll per text, grads)`. The NLL is of `targets`
    at the `predicted` positions: a causal LM's logits are `shift`ed (position i predicts
    token i + 1, `targets` = the ids from the second on); an encoder-decoder's decoder
    predicts its labels in place (`shift=False`, `targets` = the labels). `interventions`
    apply in the trace (`grad=False`: no graph, for real drops)."""
    found: list = []
    with torch.enable_grad() if grad else torch.no_grad():
        # no cache: one forward scores the texts (some hybrid models' caches fail outside generation)
        with trace(model, dict(inputs), *interventions, use_cache=False) as tr:  # mi.trace: the model's lock
            _probe(model, spec, found, factors)
        if len(found) != len(factors):
            raise RuntimeError(f"expected the routing weights of {len(factors)} of the {len(spec.moe_layers)} MoE "
                               f"layers once per forward, read {len(found)}: this model routes in a way attribution "
                               "does not read; please report it")
        nll = target_nll(tr.output.logits, targets, predicted, shift)
        leaves = [delta for *_, delta in found if delta is not None]
        grads = torch.autograd.grad((nll.to(torch.float64) * coefficient).sum(), leaves,
                                    allow_unused=True) if leaves else ()
    return found, nll.detach(), grads


def _batch(model: Any, spec: MoESpec, texts: Sequence[str], groups: Tensor, num_groups: int, metric: str,
           method: str = "taylor", steps: int = 1, per_pass: int = 1) -> dict:
    """The running sums of `_SUMS` that `texts` (row i belongs to group `groups[i]`) add,
    each with a leading `[num_groups]` axis, on a causal LM (`_estimate`)."""
    module = model._module
    enc = tokenize(model, list(texts), return_tensors="pt", padding=True)
    limit = _max_positions(model)
    if limit is not None and enc["input_ids"].shape[1] > limit:
        raise ValueError(f"a text of {enc['input_ids'].shape[1]} tokens is longer than this model's {limit} positions: "
                         "cut the texts into shorter pieces first (the estimate and mi.evaluate must see the same text)")
    device = getattr(module, "device", None) or next(module.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    coefficient = _coefficients(model.tokenizer, texts, ids, mask, metric).to(device)
    predicted = (mask[:, 1:] * mask[:, :-1]).bool()
    part = (tuple(range(len(spec.moe_layers))), mask, groups.to(device), num_groups)
    return _estimate(model, spec, {"input_ids": ids, "attention_mask": mask}, ids[:, 1:], predicted, coefficient,
                     True, [part], method, steps, per_pass)[0]


def _estimate(model: Any, spec: MoESpec, inputs: Mapping[str, Tensor], targets: Tensor, predicted: Tensor,
              coefficient: Tensor, shift: bool, parts: Sequence[tuple], method: str, steps: int,
              per_pass: int) -> list[dict]:
    """The running sums of `_SUMS` one batch adds, per part: a part is `(positions, mask,
    rows, num_groups)`, MoE layers (positions in `spec.moe_layers`) whose tokens are the
    `mask`ed ones of their stack's inputs (the whole model for a causal LM; an encoder's or
    a decoder's own), text i of the batch in group `rows[i]`; its sums have a leading
    `[num_groups]` axis. `"taylor"`: one forward and one backward, every layer probed at
    the model. `"path"`: one forward that reads the routing (counts, loss), then per MoE
    layer and per node `s` of `steps` Gauss-Legendre points, one forward with that layer's
    routing weights scaled by `1 - s` (the other layers as in the model) and one backward,
    weighted by the node's weight: the integral over s in [0, 1] of `d/ds L(layer's weights
    * (1 - s))`, split by cell. The loss (`_forward`) is the batch's, every part's effects
    its derivatives; each part tallies it by its own groups."""
    positions = range(len(spec.moe_layers))
    read, nll, grads = _forward(model, spec, inputs, targets, predicted, coefficient,
                                {p: 1.0 if method == "taylor" else None for p in positions}, shift)
    probed = [(1.0, entry, grad) for entry, grad in zip(read, grads)]  # (node weight, routing, dL/dw)
    if method == "path":
        for start in range(0, len(positions), per_pass):
            for s, a in _nodes(steps):
                found, _, grad = _forward(model, spec, inputs, targets, predicted, coefficient,
                                          dict.fromkeys(positions[start:start + per_pass], 1.0 - s), shift)
                probed += [(a, entry, g) for entry, g in zip(found, grad)]
    out = []
    for mine, mask, rows, num_groups in parts:
        column = {position: j for j, position in enumerate(mine)}  # a layer's row in this part's tables
        device = mask.device
        # the kernels' totals, as RouterRecord keeps them: per (group, layer, expert), padding (-1)
        # and slots that reached no expert (index -1) left out; `moved` keeps the effects as its mass
        group = torch.where(mask.reshape(-1) > 0, rows[:, None].expand_as(mask).reshape(-1), -1)
        layers, E = len(mine), spec.num_experts
        chosen, moved = (totals_start(group, layers, num_groups, E, spec.top_k, device) for _ in range(2))
        for position, indices, weights, _ in read:
            if position not in column:
                continue
            if indices.shape != weights.shape:
                raise ValueError(f"routing of shape {tuple(indices.shape)} with weights of shape "
                                 f"{tuple(weights.shape)}: expected [tokens, top_k] indices with weights of the same "
                                 "shape; register an adapter whose readout matches")
            totals_add(chosen, column[position], indices, weights)
        for node, (position, indices, weights, _), grad in probed:
            if position not in column:
                continue
            contribution = torch.zeros_like(weights) if grad is None else -(grad * weights)  # per (token, slot)
            totals_add(moved, column[position], indices, contribution.to(torch.float64) * node)
        counted, effects = ({"count": torch.zeros(num_groups, layers, E, dtype=torch.long, device=device),
                             "gate_mass": torch.zeros(num_groups, layers, E, dtype=torch.float64, device=device)}
                            for _ in range(2))
        totals_fold(chosen, counted)
        totals_fold(moved, effects)
        out.append({"effect": effects["gate_mass"].cpu(), "count": counted["count"].cpu(),
                    "tokens": tally(group, num_groups).cpu(),
                    "predicted": tally(rows, num_groups, predicted.sum(-1)).cpu(),
                    "loss": tally(rows, num_groups, nll.to(torch.float64) * coefficient).cpu()})
    return out


def _stack_batch(model: Any, spec: MoESpec, items: Sequence[tuple[str, str]], pairs: bool,
                 groups: Mapping[str, Tensor], num_groups: Mapping[str, int], metric: str, method: str = "taylor",
                 steps: int = 1, per_pass: int = 1) -> dict[str, dict]:
    """`{stack: the running sums of _SUMS}` that the (source, target) `items` add on an
    encoder-decoder model (`stack_inputs`): each stack's MoE layers, over its own tokens,
    item i in that stack's group `groups[stack][i]`."""
    module = model._module
    device = getattr(module, "device", None) or next(module.parameters()).device
    inputs, labels, predicted, coefficient = stack_inputs(model, items, pairs, metric, device)
    masks = {"encoder": inputs["attention_mask"], "decoder": inputs["decoder_attention_mask"]}
    parts = [(tuple(p for p, label in enumerate(spec.stacks) if label == stack), masks[stack],
              groups[stack].to(device), num_groups[stack]) for stack in groups]
    return dict(zip(groups, _estimate(model, spec, inputs, labels, predicted, coefficient, False, parts, method,
                                      steps, per_pass)))


def _attribution_stacks(model: Any, spec: MoESpec, corpus: dict, pairs: bool, metric: str, mode: str,
                        batch_size: int, progress: bool, checkpoint: Any, save_every: int, method: str, steps: int,
                        layers_per_pass: int, settings: dict) -> dict[str, ExpertAttribution]:
    """`mi.expert_attribution` of an encoder-decoder model: `{stack: ExpertAttribution}`."""
    items, languages, groups, texts = stack_items(corpus, pairs)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0].encode()) - len(items[i][1].encode()), i))
    layers = {stack: tuple(l for l, label in zip(spec.moe_layers, spec.stacks) if label == stack) for stack in groups}
    sums = {}
    for stack in groups:
        shape, n = (len(languages[stack]), len(layers[stack]), spec.num_experts), len(languages[stack])
        sums.update({f"{stack}.effect": torch.zeros(shape, dtype=torch.float64),
                     f"{stack}.count": torch.zeros(shape, dtype=torch.long),
                     f"{stack}.tokens": torch.zeros(n, dtype=torch.long),
                     f"{stack}.predicted": torch.zeros(n, dtype=torch.long),
                     f"{stack}.loss": torch.zeros(n, dtype=torch.float64)})
    parts = model_parts(model)
    decoder = "pairs: the target, teacher-forced" if pairs else "the text itself, teacher-forced"
    key = {**parts, "corpus": fingerprint({repr(k): v for k, v in corpus.items()}),
           "settings": fingerprint(settings), "decoder": decoder}

    def batches(done: int, sums: dict[str, Tensor]) -> Iterator[tuple[int, int]]:
        for first in range(done, len(items), batch_size):
            chunk = order[first : first + batch_size]
            added = _stack_batch(model, spec, [items[i] for i in chunk], pairs,
                                 {stack: groups[stack][chunk] for stack in groups},
                                 {stack: len(languages[stack]) for stack in groups}, metric, method, steps,
                                 layers_per_pass)
            for stack, part in added.items():
                for name in _SUMS:
                    sums[f"{stack}.{name}"] += part[name].to(sums[f"{stack}.{name}"].dtype)
            yield len(chunk), sum(int(part["tokens"].sum()) for part in added.values())

    started = time.perf_counter()
    sums = run_resumable(batches, sums, total=len(items), key=key, checkpoint=checkpoint, form=_CHECKPOINT,
                         what="mi.expert_attribution", save_every=save_every, progress=progress, desc="attribution",
                         unit="text")
    config = getattr(model._module, "config", None)
    seconds, created = round(time.perf_counter() - started, 3), time.strftime("%Y-%m-%dT%H:%M:%S")
    out = {}
    for stack in groups:
        n = torch.tensor([len(texts[stack][lang]) for lang in languages[stack]], dtype=torch.float64)
        norm = n if metric == "bpb" else sums[f"{stack}.predicted"].to(torch.float64).clamp(min=1)
        meta = {"model": getattr(config, "_name_or_path", None) or spec.arch, "arch": spec.arch,
                "model_fingerprint": fingerprint(parts), "stack": stack, "decoder": decoder,
                "corpus_form": "pairs" if pairs else "texts",
                "texts": {lang: len(texts[stack][lang]) for lang in languages[stack]},
                "corpus": {lang: fingerprint(texts[stack][lang]) for lang in languages[stack]},
                "num_layers": spec.num_layers, "bands": {band: list(ls) for band, ls in _bands(layers[stack]).items()},
                "method": method,
                **({} if method == "taylor" else {"steps": steps, "layers_per_pass": layers_per_pass}),
                "passes": _passes(method, steps, layers_per_pass, len(spec.moe_layers)),
                "seconds": seconds, "created": created}
        out[stack] = ExpertAttribution(tuple(languages[stack]), layers[stack],
                                       sums[f"{stack}.effect"] / norm[:, None, None], sums[f"{stack}.count"],
                                       sums[f"{stack}.tokens"], sums[f"{stack}.loss"] / norm, metric, mode, meta,
                                       stacks=(stack,) * len(layers[stack]))
    return out


# ---------------------------------------------------------------------- the estimate

def expert_attribution(model: Any,
                       corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
                       metric: str = "bpb", mode: str = "drop", batch_size: int = 8, progress: bool = True,
                       checkpoint: str | os.PathLike | None = None, save_every: int = 10, method: str = "path",
                       steps: int | None = None,
                       layers_per_pass: int | None = None) -> ExpertAttribution | dict[str, ExpertAttribution]:
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

    Encoder-decoder models (NLLB-MoE, Switch Transformers; `mi.describe(model).stacks`):
    the result is `{stack: ExpertAttribution}` (`{"encoder": ..., "decoder": ...}`, as
    `mi.profile` returns its stats), each with its own stack's MoE layers (global indices,
    `stacks` labels, so `top(lang, layers="decoder:late")` works). `L` is the decoder's
    teacher-forced loss, its inputs built as `mi.profile` builds them. With plain texts the
    encoder reads the text and the decoder predicts that same text: its input is the
    text's tokens shifted right behind the model's `decoder_start_token_id`, so every token
    is predicted (the first from the start token) and bits per byte count all of the
    text's UTF-8 bytes. With a corpus of parallel pairs `{(source language, target
    language): [(source text, target text), ...]}`, `L` is the NLL of the target
    (tokenized with `text_target=`) given the source; the encoder's experts are attributed
    per source language and the decoder's per target language (each language's metric the
    mean over its pairs, or its pairs' tokens for `"nll"`). Both stacks' experts are scored
    from the same passes (`layers_per_pass` counts MoE layers in execution order, the
    encoder's then the decoder's); `validate` drops experts for real on that same loss.

    `mode="reroute"` is refused: its effect needs the output of the expert each token falls
    back to, which the unablated forward does not compute. Runs locally in
    `mi.trace`, reading and writing the weights through the one reader (`runtime._reader`:
    `routing` / `set_weights`, which the reading RouterRecord and the drop edit share: a
    slot dropped past an expert's capacity counts nowhere), not on NDIF: remote execution is not supported. The model is not
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
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")   # 2 MoE layers in each stack, top-1
    >>> by_stack = mi.expert_attribution(seq2seq, corpus, progress=False)   # the decoder teacher-forced on each text
    >>> {stack: (attr.layers, attr.tokens.tolist()) for stack, attr in by_stack.items()}
    {'encoder': ((1, 3), [37, 33]), 'decoder': ((5, 7), [37, 33])}
    >>> by_stack["decoder"].top("deu", n=2, layers="decoder:late")
    ExpertSet({7: [2, 5]}, pairs=2)
    >>> pairs = {("fra", "eng"): [("Bonjour", "Hello")], ("deu", "eng"): [("Hallo", "Hi"), ("Guten Tag", "Good day")]}
    >>> by_stack = mi.expert_attribution(seq2seq, pairs, progress=False)   # each target given its source
    >>> by_stack["encoder"].languages, by_stack["decoder"].languages   # by source language, by target language
    (('fra', 'deu'), ('eng',))

    ```
    """
    pairs = is_pairs(corpus)
    if not pairs:
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
    settings = {"metric": metric, "mode": mode} if method == "taylor" else {
        "metric": metric, "mode": mode, "method": method, "steps": steps, "layers_per_pass": layers_per_pass}
    if spec.stack_inputs is not None or pairs:
        corpus = check_stacks(model, spec, corpus, pairs)
        return _attribution_stacks(model, spec, corpus, pairs, metric, mode, batch_size, progress, checkpoint,
                                   save_every, method, steps, layers_per_pass, settings)
    languages = list(corpus)
    items = [(g, text) for g, lang in enumerate(languages) for text in corpus[lang]]
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][1].encode()), i))
    shape = (len(languages), len(spec.moe_layers), spec.num_experts)
    sums = {"effect": torch.zeros(shape, dtype=torch.float64), "count": torch.zeros(shape, dtype=torch.long),
            "tokens": torch.zeros(len(languages), dtype=torch.long),
            "predicted": torch.zeros(len(languages), dtype=torch.long),
            "loss": torch.zeros(len(languages), dtype=torch.float64)}
    parts = model_parts(model)
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
