"""The results of `mi.expert_attribution`: `ExpertAttribution` (estimated drop effects per
language, MoE layer and expert: tables, plots, files, and `validate` against real drops) and
`AttributionCheck` (estimates against real drop effects, with the agreement rule that gives
a verdict per language and band of layers).
"""

import dataclasses
import difflib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from moe_interp.analysis import rank_correlation
from moe_interp.arch import BANDS, UnsupportedModelError, describe
from moe_interp.core._checks import check_int, check_positive
from moe_interp.core._expert_set import ExpertSet
from moe_interp.core._files import read_checked, save_tensor_directory
from moe_interp.core._fingerprint import check_corpus, check_pairs, fingerprint, is_pairs, model_parts
from moe_interp.core._layers import parse_layers
from moe_interp.experiments import Experiment
from moe_interp.experiments.evaluate import seq2seq_inputs
from moe_interp.runtime._inputs import max_positions
from moe_interp.runtime._interventions import ExpertAblate
from moe_interp.tracing import trace

__all__ = ["AttributionCheck", "ExpertAttribution", "METRICS", "MIN_CELLS", "MIN_EFFECT", "MIN_LOW", "MIN_SIGN"]

METRICS = ("bpb", "nll")
# AttributionCheck.agreement's rule (see there): an effect is a real change of at least MIN_EFFECT (in the metric's
# unit); a correlation needs MIN_CELLS such cells; "reliable" needs the interval's lower end >= MIN_LOW and the right
# sign on >= MIN_SIGN of those cells
MIN_EFFECT, MIN_CELLS, MIN_LOW, MIN_SIGN = 1e-3, 10, 0.5, 0.8
_METRIC_NAMES = {"bpb": "bits per byte", "nll": "nats per token"}
_FORMAT = "moe_interp.ExpertAttribution/1"
_TENSOR_FILE = "attribution.safetensors"
_TENSORS = ("effect", "count", "tokens", "baseline")  # the fields a file stores as tensors, in field order


# ------------------------------------------------------------ the loss on an encoder-decoder
# The estimate (experiments._attribution) and `ExpertAttribution.validate`'s real drops score
# the same teacher-forced loss; both read it from here.

def target_nll(logits: Tensor, targets: Tensor, predicted: Tensor, shift: bool = True) -> Tensor:
    """Summed NLL (nats) per row of `targets` at the `predicted` positions under `logits`
    (promoted to at least float32). A causal LM's logits are `shift`ed (position i predicts
    token i + 1: pass the ids from the second on); an encoder-decoder's decoder predicts its
    labels in place (`shift=False`).

    ```python
    >>> import torch
    >>> from moe_interp.experiments._attribution_results import target_nll
    >>> logits = torch.zeros(1, 3, 4)                      # uniform over 4 tokens
    >>> target_nll(logits, torch.tensor([[1, 2, 3]]), torch.tensor([[True, True, False]]), shift=False)
    tensor([2.7726])
    >>> float(2 * torch.log(torch.tensor(4.0)))            # two tokens predicted, ln 4 each
    2.7725887298583984

    ```
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = torch.log_softmax(logits[:, :-1] if shift else logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return -torch.where(predicted, logp, 0).sum(-1)


def check_stacks(model: Any, spec: Any, corpus: Any, pairs: bool) -> dict:
    """A two-stack corpus checked (`{language: [texts]}`, or with `pairs`
    `{(source language, target language): [(source text, target text), ...]}`, as
    `mi.profile` takes them); a clear error for a corpus of pairs on a causal LM, a
    malformed pair, an empty text, or a model without an encoder and a decoder (and a
    `decoder_start_token_id`, the token its decoder starts from).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._attribution_results import check_stacks
    >>> model = mi.zoo.tiny_model("switch_transformers")
    >>> check_stacks(model, mi.describe(model), {("fra", "eng"): [["Bonjour", "Hello"]]}, pairs=True)
    {('fra', 'eng'): [('Bonjour', 'Hello')]}
    >>> check_stacks(model, mi.describe(model), {"eng": ["Hello", ""]}, pairs=False)
    Traceback (most recent call last):
    ValueError: corpus['eng'][1] has no tokens (an empty text): nothing to route. Drop empty texts first

    ```
    """
    if spec.stack_inputs is None:
        raise ValueError(f"a corpus of (source, target) pairs needs an encoder-decoder model; this {spec.arch} model "
                         "reads one text: pass {language: [texts]}")
    if pairs:
        corpus = check_pairs(corpus)
    else:
        corpus = check_corpus(corpus)
    for key, items in corpus.items():
        for k, item in enumerate(items):
            if not all(item if pairs else (item,)):
                raise ValueError(f"corpus[{key!r}][{k}] has no tokens (an empty text): nothing to route. "
                                 "Drop empty texts first")
    stacks = list(dict.fromkeys(spec.stacks))
    start = getattr(getattr(model._module, "config", None), "decoder_start_token_id", None)
    if stacks != ["encoder", "decoder"] or start is None:
        raise UnsupportedModelError(
            f"mi.expert_attribution scores a causal LM, or an encoder and a decoder (a decoder_start_token_id in the "
            f"config); this {spec.arch} model's stacks are {stacks} (decoder_start_token_id {start})")
    return corpus


def stack_items(corpus: Mapping, pairs: bool) -> tuple[list[tuple[str, str]], dict, dict, dict]:
    """`(items, languages, groups, texts)` of a two-stack corpus: every (source, target)
    item in corpus order (a plain text is its own target); per stack, its languages (a
    pair's source language for the encoder, its target language for the decoder, as
    `mi.profile` groups them; a plain corpus's languages for both), each item's group, and
    the items of each language.

    ```python
    >>> from moe_interp.experiments._attribution_results import stack_items
    >>> pairs = {("fra", "eng"): [("Oui", "Yes")], ("deu", "eng"): [("Ja", "Yes")], ("fra", "deu"): [("Non", "Nein")]}
    >>> items, languages, groups, texts = stack_items(pairs, pairs=True)
    >>> languages, {stack: g.tolist() for stack, g in groups.items()}
    ({'encoder': ['fra', 'deu'], 'decoder': ['eng', 'deu']}, {'encoder': [0, 1, 0], 'decoder': [0, 0, 1]})
    >>> stack_items({"eng": ["Hi"]}, pairs=False)[0]
    [('Hi', 'Hi')]

    ```
    """
    side = {"encoder": 0, "decoder": 1}
    keys = list(corpus)
    items = [tuple(item) if pairs else (item, item) for key in keys for item in corpus[key]]
    languages, groups, texts = {}, {}, {}
    for stack, at in side.items():
        labels = [key[at] if pairs else key for key in keys]
        languages[stack] = list(dict.fromkeys(labels))
        groups[stack] = torch.tensor([languages[stack].index(label) for label, key in zip(labels, keys)
                                      for _ in corpus[key]], dtype=torch.long)
        texts[stack] = {}
        for label, key in zip(labels, keys):
            texts[stack].setdefault(label, []).extend(corpus[key])
    return items, languages, groups, texts


def stack_inputs(model: Any, items: Sequence[tuple[str, str]], pairs: bool, metric: str,
                 device: Any = "cpu") -> tuple[dict, Tensor, Tensor, Tensor]:
    """An encoder-decoder batch as `mi.profile` builds it (`mi.evaluate.seq2seq_inputs`, which
    `mi.evaluate.text_nll` scores too): `(inputs, labels, predicted, coefficient)`. The
    encoder reads each item's source; the decoder its target (a pair's, tokenized with
    `text_target=`; a plain text's own tokens), teacher-forced: its input is the target's
    tokens shifted right behind the model's `decoder_start_token_id`, its labels the
    target's tokens, every one predicted (the first from the start token); `predicted`
    masks the padding out.
    `coefficient`: per item, the factor of its summed NLL in the metric's sum, `1 / (ln 2 *
    bytes)` for `"bpb"` (all of the target's UTF-8 bytes: no token goes unpredicted), 1 for
    `"nll"`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._attribution_results import stack_inputs
    >>> model = mi.zoo.tiny_model("switch_transformers")    # one token per byte; decoder_start_token_id 0
    >>> inputs, labels, predicted, coefficient = stack_inputs(model, [("Hi", "Hi"), ("a", "a")], False, "nll")
    >>> inputs["decoder_input_ids"].tolist(), labels.tolist(), predicted.tolist()
    ([[0, 75], [0, 0]], [[75, 108], [100, 0]], [[True, True], [True, False]])

    ```
    """
    inputs, labels, _ = seq2seq_inputs(model, [item if pairs else item[0] for item in items])  # -100: padding
    limit = max_positions(model)
    longest = max(inputs["input_ids"].shape[1], labels.shape[1])
    if limit is not None and longest > limit:
        raise ValueError(f"a text of {longest} tokens is longer than this model's {limit} positions: cut the texts "
                         "into shorter pieces first (the estimate and its real drops must see the same text)")
    inputs = {name: value.to(device) for name, value in inputs.items()}
    predicted = (labels != -100).to(device)
    if metric == "nll":
        coefficient = torch.ones(len(items), dtype=torch.float64)
    else:
        coefficient = torch.tensor([1 / math.log(2) / max(len(target.encode()), 1) for _, target in items],
                                   dtype=torch.float64)
    return inputs, labels.clamp(min=0).to(device), predicted, coefficient.to(device)


def _stack_losses(model: Any, corpus: dict, pairs: bool, metric: str, batch_size: int,
                  interventions: Sequence = ()) -> tuple[Tensor, Tensor]:
    """Per item of a two-stack corpus, in corpus order: its summed NLL times its
    `stack_inputs` coefficient, and its predicted tokens, under `interventions`."""
    items, *_ = stack_items(corpus, pairs)
    module = model._module
    device = getattr(module, "device", None) or next(module.parameters()).device
    loss, predicted = torch.zeros(len(items), dtype=torch.float64), torch.zeros(len(items), dtype=torch.long)
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        inputs, labels, mask, coefficient = stack_inputs(model, chunk, pairs, metric, device)
        with torch.no_grad(), trace(model, inputs, *interventions, use_cache=False) as tr:
            pass
        nll = target_nll(tr.output.logits, labels, mask, shift=False)
        loss[first : first + len(chunk)] = (nll.to(torch.float64) * coefficient).cpu()
        predicted[first : first + len(chunk)] = mask.sum(-1).cpu()
    return loss, predicted


def _stack_drops(model: Any, corpus: Any, attribution: "ExpertAttribution", cells: Sequence[tuple[int, int]],
                 batch_size: int, progress: bool) -> tuple[tuple[str, ...], Tensor, dict, dict]:
    """`validate` of one stack of an encoder-decoder: the real change of the attribution's
    metric per language of that stack (`[lang, cell]`) when each cell's expert is dropped
    (`ExpertAblate({layer: [e]}, mode="drop")`), on the estimate's own loss; the baselines;
    per language, whether its items are the ones the estimate read."""
    pairs = is_pairs(corpus)
    corpus = check_stacks(model, describe(model), corpus, pairs)
    form = "pairs" if pairs else "texts"
    if attribution.meta.get("corpus_form") != form:
        raise ValueError(f"this attribution was computed on a corpus of {attribution.meta.get('corpus_form')}, and "
                         f"validate got one of {form}: pass the corpus the estimates were computed on")
    _, languages, groups, texts = stack_items(corpus, pairs)
    stack = attribution.meta["stack"]
    languages, groups, texts = tuple(languages[stack]), groups[stack], texts[stack]
    same = {}
    for lang in languages:
        attribution.language_index(lang)
        same[lang] = fingerprint(texts[lang]) == attribution.meta.get("corpus", {}).get(lang)
        if not same[lang]:
            warnings.warn(f"the {stack}'s {lang!r} items are not those the estimates were computed on: the "
                          "agreement also measures how well they generalise", UserWarning, stacklevel=3)
    values = []
    conditions = [(), *[(ExpertAblate({layer: [expert]}, mode="drop"),) for layer, expert in cells]]
    for interventions in tqdm(conditions, disable=not progress, desc="real drops", unit="condition"):
        loss, predicted = _stack_losses(model, corpus, pairs, attribution.metric, batch_size, interventions)
        norm = torch.ones_like(loss) if attribution.metric == "bpb" else predicted.to(torch.float64)
        total, count = (torch.zeros(len(languages), dtype=torch.float64).index_add_(0, groups, x) for x in (loss, norm))
        values.append(total / count.clamp(min=1))
    real = torch.stack(values[1:], 1) - values[0][:, None]
    return languages, real, {lang: float(values[0][i]) for i, lang in enumerate(languages)}, same


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
        >>> from moe_interp.experiments._attribution_results import AttributionCheck
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

    def agreement(self, resamples: int = 1000, level: float = 0.95, seed: int = 0, used_only: bool = True,
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
        >>> from moe_interp.experiments._attribution_results import AttributionCheck
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
                    rho, low, high = rank_correlation(part.estimate, part.real, resamples, level, seed)
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
        >>> from moe_interp.experiments._attribution_results import AttributionCheck
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
        >>> from moe_interp.experiments._attribution_results import AttributionCheck
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
    (`"drop"`), `meta` (model, its layer count, corpus fingerprints, layer bands, the
    estimator: `method`, its `steps` and `layers_per_pass`, `passes` per batch; time; on an
    encoder-decoder, its `stack` and what the decoder read), `stacks` (the stack of each
    layer, `("decoder", "decoder")`, on an encoder-decoder model; `None` otherwise).

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
    stacks: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.stacks is not None and len(self.stacks) != len(self.layers):
            raise ValueError(f"stacks has {len(self.stacks)} labels for {len(self.layers)} layers; give one per layer")
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
        return parse_layers(layers, self.layers, num_layers=self.meta.get("num_layers"), stacks=self.stacks)

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

    def versus_frequency(self, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Any:
        """Are the most-used experts the ones a language depends on? Per language, Spearman
        rank correlation over all (layer, expert) cells of routing frequency and estimated
        effect, with a bootstrap interval over cells, and how many of the language's top
        decile of experts by effect are also in its top decile by frequency.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")    # 4 MoE layers of 8 experts, top-2
        >>> corpus = {"eng": ["Hello there, how are you?", "Good morning"], "deu": ["Guten Morgen, liebe Welt", "Guten Tag"]}
        >>> attr = mi.expert_attribution(model, corpus, progress=False)
        >>> attr.versus_frequency(resamples=200).round(2)
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
            rho, low, high = rank_correlation(f, e, resamples, level, seed)
            overlap = len(set(np.argsort(-f, kind="stable")[:top]) & set(np.argsort(-e, kind="stable")[:top])) / top
            rows.append({"language": lang, "cells": len(f), "spearman": rho, "low": low, "high": high,
                         "top_overlap": overlap})
        return pd.DataFrame(rows)

    def validate(self, model: Any,
                 corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
                 n: int = 50, seed: int = 0,
                 layers: Any = None, batch_size: int = 16, path: str | os.PathLike | None = None,
                 progress: bool = True) -> AttributionCheck:
        """Run real single-expert drop ablations (`mi.ExpertAblate({layer: [e]}, mode="drop")`)
        for `n` (layer, expert) cells sampled uniformly without replacement (`seed`) among
        `layers` (a band name such as `"middle"`, real MoE layer indices, ... as everywhere
        `layers=` is taken; default all), on every language of `corpus`, measured with this
        attribution's metric through `mi.Experiment` (`path=`: resumable, one JSONL line per
        finished cell), against a no-ablation baseline.

        Pass the model and corpus the estimates were computed on: another model is refused;
        other texts give a warning (the comparison then also measures generalisation). One
        stack of an encoder-decoder measures its drops on the estimate's own teacher-forced
        loss, in memory (no `path=`), grouped by that stack's languages. The
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
        if self.stacks is None:
            corpus = check_corpus(corpus)
        among = self._layers(layers)
        total = len(among) * self.num_experts
        check_positive(f"n (cells to ablate, at most {total})", n)
        if fingerprint(model_parts(model)) != self.meta.get("model_fingerprint"):
            raise ValueError("this model is not the one the estimates were computed on (its weights, config or "
                             "tokenizer differ): validate with the same model, or recompute mi.expert_attribution")
        if self.stacks is not None and path is not None:
            raise ValueError("path= resumes mi.Experiment's table, which scores a causal LM's texts; the real drops of "
                             "an encoder-decoder's attribution run in memory: leave path out")
        if self.stacks is None:
            for lang, texts in corpus.items():
                self.language_index(lang)
                if fingerprint(texts) != self.meta.get("corpus", {}).get(lang):
                    warnings.warn(f"corpus[{lang!r}] is not the text the estimates were computed on: the agreement "
                                  "also measures how well they generalise", UserWarning, stacklevel=2)
        picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        cells = tuple((among[int(p) // self.num_experts], int(p) % self.num_experts) for p in picks)
        started = time.perf_counter()
        if self.stacks is None:
            grid = {"baseline": [], **{f"layer {l} expert {e}": [ExpertAblate({l: [e]}, mode="drop")]
                                       for l, e in cells}}
            frame = Experiment(model, corpus, grid, path=path, batch_size=batch_size, progress=progress).run()
            grouped = frame.groupby(["language", "condition"])
            value = (grouped.bits_per_byte.mean() if self.metric == "bpb"
                     else grouped.nll.sum() / grouped.tokens.sum().clip(lower=1))
            languages = tuple(corpus)
            real = torch.tensor([[value[(lang, f"layer {l} expert {e}")] - value[(lang, "baseline")] for l, e in cells]
                                 for lang in languages], dtype=torch.float64)
            baselines = {lang: float(value[(lang, "baseline")]) for lang in languages}
            same = {lang: fingerprint(corpus[lang]) == self.meta.get("corpus", {}).get(lang) for lang in languages}
        else:  # an encoder-decoder: the estimate's own loss, under each drop
            languages, real, baselines, same = _stack_drops(model, corpus, self, cells, batch_size, progress)
        seconds = time.perf_counter() - started

        def at(table: Tensor) -> Tensor:
            return torch.stack([torch.stack([table[self.language_index(lang), self.layers.index(l), e]
                                             for l, e in cells]) for lang in languages])

        estimate, count = at(self.effect).to(torch.float64), at(self.count)
        for lang in languages:
            mine, theirs = float(self.baseline[self.language_index(lang)]), baselines[lang]
            if same[lang] and not math.isclose(mine, theirs, rel_tol=1e-3, abs_tol=1e-6):
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
                  "metric": self.metric, "mode": self.mode, "meta": self.meta,
                  **({} if self.stacks is None else {"stacks": list(self.stacks)})}
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
            stacks = header.get("stacks")
            return cls(tuple(header["languages"]), tuple(header["layers"]), *(tensors[name] for name in _TENSORS),
                       header["metric"], header["mode"], header["meta"], None if stacks is None else tuple(stacks))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{tensor_path} is damaged or not an ExpertAttribution file: {error}") from None

    def __repr__(self) -> str:
        return (f"ExpertAttribution(languages={list(self.languages)}, layers={len(self.layers)}, "
                f"experts={self.num_experts}, metric={self.metric!r}, mode={self.mode!r}"
                + ("" if self.stacks is None else f", stacks={sorted(set(self.stacks), key=self.stacks.index)}") + ")")
