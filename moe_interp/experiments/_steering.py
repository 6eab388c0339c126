"""Routing-guided steering, evaluated honestly: the scale chosen on dev texts, the outcome
reported on test texts with paired intervals, next to how far routing actually moved."""

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from moe_interp.core._checks import check_int, check_level
from moe_interp.core._fingerprint import check_corpus, fingerprint
from moe_interp.experiments._ablation import direction_names, pair_directions, side_corpora
from moe_interp.experiments._grid import Experiment, check_held_out, stack_layers, stack_stats
from moe_interp.experiments.evaluate import seq2seq_inputs
from moe_interp.analysis._evidence import paired_interval, stratified_interval
from moe_interp.arch import describe
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._interventions import RouterRecord, RouteSteer, flatten
from moe_interp.runtime._shipping import tokenize
from moe_interp.tracing import trace

__all__ = ["SteeringResult", "dose_response_across", "dose_response_across_findings", "dose_response_figure",
           "dose_response_findings", "dose_response_seeds_figure", "routing_shift", "steering_bars",
           "steering_eval"]


def _per_token(model: Any, enc: Any, *interventions: Any) -> dict:
    with torch.no_grad(), trace(model, enc, *interventions, RouterRecord(per_token=True)) as tr:
        pass
    return tr.routing.per_token


def _view_routing(model: Any, spec: Any, inputs: dict, *interventions: Any) -> dict:
    """`{layer: (indices, weights)}` of every MoE layer, read from the router view
    (`model.moe`) in one trace under `interventions`: `[stack tokens, top_k]` each, padding
    positions included (a slot that reached no expert: index -1, weight 0)."""
    saved = {}
    with torch.no_grad(), trace(model, inputs, *interventions):
        for layer in spec.moe_layers:
            router = model.moe.at(layer).router
            saved[layer] = (router.indices.save(), router.weights.save())
    return {layer: (indices.detach().cpu(), weights.detach().cpu()) for layer, (indices, weights) in saved.items()}


def _stack_shift(model: Any, spec: Any, texts: list, steers: list, mask: torch.Tensor, batch_size: int) -> Any:
    """`routing_shift` on an encoder-decoder model: each layer over its own stack's tokens (the
    encoder reads each text, the decoder the text teacher-forced, as `mi.evaluate.text_nll`)."""
    import pandas as pd

    n = len(spec.moe_layers)
    changed, moved = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    tokens = torch.zeros(n, dtype=torch.long)
    for start in range(0, len(texts), batch_size):
        inputs, _, _ = seq2seq_inputs(model, texts[start : start + batch_size])
        real = {"encoder": inputs["attention_mask"].reshape(-1).bool(),
                "decoder": inputs["decoder_attention_mask"].reshape(-1).bool()}
        before, after = _view_routing(model, spec, inputs), _view_routing(model, spec, inputs, *steers)
        for position, (layer, stack) in enumerate(zip(spec.moe_layers, spec.stacks)):
            keep = real[stack]
            (b_idx, b_w), (a_idx, a_w) = before[layer], after[layer]
            b_idx, b_w, a_idx, a_w = b_idx.long()[keep], b_w[keep], a_idx.long()[keep], a_w[keep]
            changed[position] += (b_idx.sort(-1).values != a_idx.sort(-1).values).any(-1).sum().double()

            def on_steered(idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return (w.double() * ((idx >= 0) & mask[position, idx.clamp(min=0)])).sum()

            moved[position] += on_steered(a_idx, a_w) - on_steered(b_idx, b_w)
            tokens[position] += int(keep.sum())
    count = tokens.clamp(min=1).double()
    return pd.DataFrame({"layer": list(spec.moe_layers), "stack": list(spec.stacks),
                         "changed": (changed / count).tolist(), "mass_moved": (moved / count).tolist(),
                         "tokens": tokens.tolist()})


def routing_shift(model: Any, texts: Sequence[str | tuple[str, str]], steer: Any, batch_size: int = 8) -> Any:
    """How far `steer` moves routing on `texts`, per MoE layer, against no intervention.

    Per layer: `changed`, the share of tokens whose set of top-k experts differs from the
    unsteered run; `mass_moved`, the mean over tokens of the routing weight on the steered
    experts (those of `steer.expert_set`, or of a `LayerRouteSteer`'s strengths) after
    minus before; `tokens`. Padding is excluded. `steer` may be a list of steers (applied
    together; their steered experts pooled).

    Encoder-decoder models: each layer over its own stack's tokens, the encoder reading each
    text and the decoder the text teacher-forced (as `mi.evaluate.text_nll` scores it), read
    from the router view (`model.moe`; a slot that reached no expert, index -1, is a set
    like any other); a `stack` column names each layer's stack and `tokens` is that stack's.
    `texts` may hold `(source, target)` pairs: the encoder reads the source, the decoder the
    target teacher-forced.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments import routing_shift
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> shift = routing_shift(model, ["The cat sat.", "Dogs bark."], mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e4))
    >>> float(shift.set_index("layer").loc[1, "mass_moved"]) > 0.3, float(shift.set_index("layer").loc[0, "changed"])
    (True, 0.0)
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")        # encoder layers 1, 3; decoder 5, 7
    >>> shift = routing_shift(seq2seq, ["The cat sat."], mi.LayerRouteSteer({5: {3: 1.0}}, scale=1e4))
    >>> shift[["layer", "stack", "tokens"]].values.tolist(), float(shift.changed[0]), float(shift.mass_moved[2]) > 0.3
    ([[1, 'encoder', 12], [3, 'encoder', 12], [5, 'decoder', 12], [7, 'decoder', 12]], 0.0, True)

    ```
    """
    import pandas as pd

    spec = describe(model)
    steers = flatten(steer) if isinstance(steer, (list, tuple)) else [steer]
    mask = torch.zeros(len(spec.moe_layers), spec.num_experts, dtype=torch.bool)
    for one in steers:
        if hasattr(one, "expert_set"):
            steered = one.expert_set(spec)
        else:  # a LayerRouteSteer keeps its strengths as ((layer, ((expert, s), ...)), ...)
            steered = {layer: [e for e, _ in dict(s).items()] for layer, s in dict(one.strengths).items()}
        for layer, experts in steered.items():
            mask[spec.moe_layers.index(layer), list(experts)] = True
    if spec.stack_inputs is not None:
        return _stack_shift(model, spec, list(texts), steers, mask, batch_size)
    steer = steers[0] if len(steers) == 1 else steers
    changed = torch.zeros(len(spec.moe_layers), dtype=torch.float64)
    moved = torch.zeros(len(spec.moe_layers), dtype=torch.float64)
    tokens = 0
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        enc = tokenize(model, texts[start : start + batch_size], return_tensors="pt", padding=True)
        before, after = _per_token(model, enc), _per_token(model, enc, steer)
        b_idx, a_idx = before["indices"].long(), after["indices"].long()
        changed += (b_idx.sort(-1).values != a_idx.sort(-1).values).any(-1).sum(0).double()
        layer = torch.arange(len(spec.moe_layers))[None, :, None]
        on_steered = lambda idx, w: (w.double() * mask[layer, idx]).sum(-1)  # noqa: E731
        moved += (on_steered(a_idx, after["weights"]) - on_steered(b_idx, before["weights"])).sum(0)
        tokens += len(b_idx)
    return pd.DataFrame({"layer": list(spec.moe_layers), "changed": (changed / max(tokens, 1)).tolist(),
                         "mass_moved": (moved / max(tokens, 1)).tolist(), "tokens": tokens})


def _pair_tokens(model: Any, pairs: Sequence[tuple[str, str]], stack: str) -> int:
    """The tokens `stack` reads of `pairs`: the sources' (encoder), the targets' (decoder, as
    `seq2seq_inputs` tokenizes them, `text_target=`)."""
    tokenizer = model.tokenizer
    if stack == "encoder":
        return sum(len(tokenizer(source)["input_ids"]) for source, _ in pairs)
    return sum(len(tokenizer(text_target=target)["input_ids"]) for _, target in pairs)


def _verdict(changed: float, low: float, high: float) -> str:
    """What was measured, in words: did routing move, did the outcome move with it."""
    if changed <= 0:
        return "no effect: routing did not move"
    if low <= 0 <= high:
        return "mechanism moved, outcome did not"
    return f"mechanism moved and the outcome {'improved' if low > 0 else 'worsened'}"


def _outcome(low: float, high: float) -> str:
    """The outcome at one scale, by its interval: above 0, below 0, or across it."""
    return "improved" if low > 0 else "worsened" if high < 0 else "no effect"


def _layers_label(layers: Sequence[int], stacks: Mapping[int, str] | None = None) -> str:
    """`"L2-L5"` for a run of layers, `"L1, L3"` otherwise; with `stacks` (`{layer: stack}`),
    per stack: `"encoder L3, decoder L7"`."""
    layers = sorted(int(l) for l in layers)
    if stacks:
        by_stack: dict[str, list[int]] = {}
        for layer in layers:
            by_stack.setdefault(stacks.get(layer, "?"), []).append(layer)
        return ", ".join(f"{stack} {_layers_label(part)}" for stack, part in by_stack.items())
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"L{layers[0]}-L{layers[-1]}"
    return ", ".join(f"L{l}" for l in layers)


def _join(items: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(seeds: Sequence[Any]) -> str:
    """`seed 0`, `seeds 1 and 2`."""
    return ("seed " if len(seeds) == 1 else "seeds ") + _join([str(s) for s in seeds])


def _scale(scale: float) -> str:
    return f"{float(scale):g}"


def _interval_text(gain: float, low: float, high: float) -> str:
    return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"


_DOSE_COLUMNS = ("scale", "changed", "mass_moved", "gain", "gain_low", "gain_high")


def _dose_table(dose: Any, name: str = "dose") -> Any:
    """A dose-response as a DataFrame sorted by scale (from a DataFrame or a list of row dicts,
    as eval.json stores them), its required columns checked."""
    import pandas as pd

    frame = dose.copy() if isinstance(dose, pd.DataFrame) else pd.DataFrame(list(dose))
    missing = [c for c in _DOSE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}: pass SteeringResult.dose_response() (or its rows as "
                         f"dicts with {list(_DOSE_COLUMNS)}, as eval.json stores them)")
    if frame.empty:
        raise ValueError(f"{name} has no rows: a dose-response needs at least one scale")
    if frame.scale.duplicated().any():
        raise ValueError(f"{name} has the scales {sorted(set(frame.scale[frame.scale.duplicated()]))} more than once: "
                         "one row per scale (a table across seeds goes to dose_response_across)")
    frame[list(_DOSE_COLUMNS)] = frame[list(_DOSE_COLUMNS)].astype(float)
    return frame.sort_values("scale", kind="stable").reset_index(drop=True)


def _monotone(changed: Sequence[float]) -> bool:
    """Non-decreasing: each larger scale changed at least as many top-k sets (exact ties count)."""
    return all(b >= a for a, b in zip(changed, changed[1:]))


def dose_response_findings(dose: Any, chosen: float | int | None = None, dev_scores: Mapping | None = None,
                           level: float = 0.95) -> list[str]:
    """The dose-response in sentences, each worded by a rule from its numbers (nothing typed).

    - Routing: "moved monotonically with scale" when the share of top-k sets changed is
      non-decreasing in the scale (never "in proportion": the ratio of the largest to the
      smallest steered scale is printed next to the ratio of the sets changed), "did not
      move monotonically" otherwise, "did not move at any scale" when nothing changed.
    - Outcome, per steered scale (scale 0 steers nothing and is skipped): "improved" when the
      gain interval lies above 0, "worsened" below 0, "no effect on the outcome" across it.
    - With `chosen`: the scale the dev split chose (and its mean dev bits/byte from
      `dev_scores`), and the outcome on the test split at that scale.

    **Arguments:** `dose`: `SteeringResult.dose_response()` or its rows as dicts (as eval.json
    stores them: `scale`, `changed`, `mass_moved`, `gain`, `gain_low`, `gain_high`; a
    `steered_layers` column names the layers the routing means are over); `level` of the
    intervals, for the wording.

    ```python
    >>> from moe_interp.experiments import dose_response_findings
    >>> dose = [dict(scale=0.0, changed=0.0, mass_moved=0.0, gain=0.0, gain_low=0.0, gain_high=0.0),
    ...         dict(scale=0.25, changed=0.076, mass_moved=0.045, gain=0.009, gain_low=0.002, gain_high=0.017),
    ...         dict(scale=4.0, changed=0.397, mass_moved=0.187, gain=-0.205, gain_low=-0.227, gain_high=-0.181)]
    >>> for sentence in dose_response_findings(dose, chosen=0.0, dev_scores={0.0: 2.2506, 0.25: 2.2647, 4.0: 2.6612}):
    ...     print(sentence)
    Routing moved monotonically with scale (share of top-k sets changed): 0.0% at 0, 7.6% at 0.25, 39.7% at 4; 16x the scale changed 5.2x the sets.
    Outcome (gain = baseline - steered bits/byte, 95% CI over test texts): improved at scale 0.25 (+0.0090 [+0.0020, +0.0170]); worsened at scale 4 (-0.2050 [-0.2270, -0.1810]).
    The dev split chose scale 0 (lowest mean dev bits/byte, 2.2506): nothing is steered at the chosen scale.

    ```
    """
    dose = _dose_table(dose)
    pct = round(100 * level)
    where = "share of top-k sets changed"
    if "steered_layers" in dose.columns:
        where += f", mean over the steered layers {dose.steered_layers.iloc[0]}"
    scales, changed = [float(s) for s in dose.scale], [float(c) for c in dose.changed]
    listed = ", ".join(f"{100 * c:.1f}% at {_scale(s)}" for s, c in zip(scales, changed))
    sentences = []
    if not any(c > 0 for c in changed):
        sentences.append(f"Routing did not move at any scale ({where}): {listed}.")
    elif len(scales) == 1:
        sentences.append(f"Routing moved at scale {_scale(scales[0])} ({where}): {listed}.")
    elif _monotone(changed):
        moved = [(s, c) for s, c in zip(scales, changed) if s > 0 and c > 0]
        ratio = ""
        if len(moved) > 1 and moved[0][0] > 0:
            ratio = (f"; {moved[-1][0] / moved[0][0]:.3g}x the scale changed {moved[-1][1] / moved[0][1]:.2g}x "
                     "the sets")
        sentences.append(f"Routing moved monotonically with scale ({where}): {listed}{ratio}.")
    else:
        sentences.append(f"Routing did not move monotonically with scale ({where}): {listed}.")
    groups: dict[str, list[str]] = {"improved": [], "worsened": [], "no effect": []}
    for row in dose.itertuples():
        if row.scale != 0:
            groups[_outcome(row.gain_low, row.gain_high)].append(
                f"{_scale(row.scale)} ({_interval_text(row.gain, row.gain_low, row.gain_high)})")
    parts = [("no effect on the outcome" if kind == "no effect" else kind)
             + f" at scale{'s' if len(items) > 1 else ''} {_join(items)}"
             + (" (interval across 0)" if kind == "no effect" else "")
             for kind, items in groups.items() if items]
    if parts:
        sentences.append(f"Outcome (gain = baseline - steered bits/byte, {pct}% CI over test texts): "
                         + "; ".join(parts) + ".")
    if chosen is not None:
        chosen = float(chosen)
        dev = dict(dev_scores or {})
        score = next((float(v) for s, v in dev.items() if float(s) == chosen), None)
        said = f"The dev split chose scale {_scale(chosen)}" + (
            f" (lowest mean dev bits/byte, {score:.4f})" if score is not None else "")
        if chosen == 0:
            sentences.append(said + ": nothing is steered at the chosen scale.")
        else:
            row = dose[dose.scale == chosen]
            if len(row):
                row = row.iloc[0]
                outcome = _outcome(row.gain_low, row.gain_high)
                said += ("; on the test split at that scale the outcome " + (
                    "did not move (interval across 0)" if outcome == "no effect" else outcome)
                    + f", gain {_interval_text(row.gain, row.gain_low, row.gain_high)}")
            sentences.append(said + ".")
    return sentences


@dataclasses.dataclass
class SteeringResult:
    """Routing-guided steering evaluated on held-out texts.

    **Fields:** `scale` (chosen on the dev texts only, minimising their mean bits/byte);
    `dev_scores` (mean dev bits/byte per scale); `table` (test texts at `scale`, one row
    per language: `gain` = baseline - steered bits/byte, positive = better, `ci_low`,
    `ci_high` paired bootstrap interval over texts, `p_value`, `pairs` steered); `outcome`
    (the same on the test texts for every scale, column `scale`); `shift` (per scale,
    language and MoE layer on the test texts: `changed` share of top-k sets, `mass_moved`
    onto the steered experts, `tokens`); `level`, `resamples`, `seed` (of the intervals);
    `gains` (per scale, one array per language of each test text's gain); `steered_layers`
    (the layers the steer is applied to, e.g. the middle band; `None`: every layer of
    `shift`, for a result built by hand); `stacks` (`{layer: stack}` on an encoder-decoder
    model, whose `shift` then has a `stack` column; empty for one stack);
    `steered_by_language` (`{language or direction: the layers its own steer reaches}`, on an
    encoder-decoder model: a direction whose side is already in the target language steers one
    stack only, while `steered_layers` is every stack any of them steers; empty: each language
    steers `steered_layers`). `mi.steering_eval` makes one; `dose_response()` and `findings()` read it.

    ```python
    >>> from moe_interp.experiments import SteeringResult
    >>> res = SteeringResult(0.5, {0.0: 3.0, 0.5: 2.9}, None)     # the dev texts chose scale 0.5
    >>> res.scale, min(res.dev_scores, key=res.dev_scores.get)
    (0.5, 0.5)

    ```
    """

    scale: float
    dev_scores: dict[float, float]
    table: Any
    outcome: Any = None
    shift: Any = None
    level: float = 0.95
    resamples: int = 2000
    seed: int = 0
    gains: dict = dataclasses.field(default_factory=dict, repr=False)
    steered_layers: tuple[int, ...] | None = None
    stacks: dict[int, str] = dataclasses.field(default_factory=dict)
    steered_by_language: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def _where_steered(self, language: str) -> str:
        """`language`'s own steered layers per stack, naming a stack it leaves alone:
        `" (steered: encoder L3; decoder not steered)"`; empty when every language steers the
        same layers (one stack, or no per-language record)."""
        mine = self.steered_by_language.get(language)
        if mine is None or not self.stacks:
            return ""
        stacks = list(dict.fromkeys(self.stacks.values()))
        untouched = [s for s in stacks if not any(self.stacks.get(l) == s for l in mine)]
        return (f" (steered: {_layers_label(mine, self.stacks)}"
                + "".join(f"; {s} not steered" for s in untouched) + ")")

    def _steered(self) -> tuple[int, ...]:
        if self.shift is None:
            raise ValueError("this SteeringResult has no shift (routing moved per scale and layer): steering_eval "
                             "records it; a result built by hand needs shift= to give a dose-response")
        present = sorted(int(l) for l in set(self.shift.layer))
        if self.steered_layers is None:
            return tuple(present)
        steered = tuple(sorted(int(l) for l in self.steered_layers))
        absent = [l for l in steered if l not in present]
        if absent or not steered:
            raise ValueError(f"steered_layers {list(steered)} must be a non-empty subset of the shift's layers "
                             f"{present} (missing {absent}): pass the layers the steer was applied to")
        return steered

    def dose_response(self) -> Any:
        """One row per scale, on the test texts: `steered_layers` (e.g. `"L2-L5"`), `changed`
        (share of top-k sets changed) and `mass_moved` (gate mass moved onto the steered
        experts), each the mean over the steered layers of its token-weighted mean over
        languages; the outcome `gain` (mean over languages of baseline - steered bits/byte)
        with its interval `gain_low`, `gain_high` (texts resampled within each language) and
        the `verdict` in words; then every MoE layer's own values, steered or not
        (`changed_L{layer}`, `mass_moved_L{layer}`: an unsteered layer downstream of the steer
        can change too).

        ```python
        >>> import pandas as pd
        >>> from moe_interp.experiments import SteeringResult
        >>> shift = pd.DataFrame({"scale": [0.5] * 3, "language": ["deu"] * 3, "layer": [0, 1, 2],
        ...                       "changed": [0.0, 0.3, 0.1], "mass_moved": [0.0, 0.2, 0.0], "tokens": [10] * 3})
        >>> res = SteeringResult(0.5, {0.5: 3.0}, None, shift=shift, gains={0.5: [[0.01, -0.01, 0.02, -0.02]]},
        ...                      steered_layers=(1,))
        >>> row = res.dose_response().iloc[0]
        >>> row.steered_layers, round(float(row.changed), 2), round(float(row.changed_L2), 2), row.verdict
        ('L1', 0.3, 0.1, 'mechanism moved, outcome did not')

        ```
        """
        import pandas as pd

        steered = list(self._steered())
        label = _layers_label(steered, self.stacks)
        rows = []
        for scale, part in self.shift.groupby("scale", sort=True):
            layers = part.groupby("layer").apply(
                lambda g: pd.Series({"changed": np.average(g.changed, weights=g.tokens),
                                     "mass_moved": np.average(g.mass_moved, weights=g.tokens)}), include_groups=False)
            changed, moved = float(layers.changed.loc[steered].mean()), float(layers.mass_moved.loc[steered].mean())
            gain = stratified_interval(self.gains[scale], self.resamples, self.level, self.seed)
            row = {"scale": float(scale), "steered_layers": label, "changed": changed, "mass_moved": moved,
                   "gain": gain.estimate, "gain_low": gain.low, "gain_high": gain.high,
                   "verdict": _verdict(changed, gain.low, gain.high)}
            row.update({f"changed_L{layer}": float(v) for layer, v in layers.changed.items()})
            row.update({f"mass_moved_L{layer}": float(v) for layer, v in layers.mass_moved.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def findings(self) -> list[str]:
        """The dose-response and the dev split's choice in sentences worded by rule
        (`dose_response_findings`).

        ```python
        >>> import pandas as pd
        >>> from moe_interp.experiments import SteeringResult
        >>> shift = pd.DataFrame({"scale": [0.0, 0.0, 1.0, 1.0, 2.0, 2.0], "language": ["deu"] * 6,
        ...                       "layer": [0, 1] * 3, "changed": [0, 0, 0.2, 0.1, 0.1, 0.3],
        ...                       "mass_moved": [0, 0, 0.1, 0.0, 0.2, 0.0], "tokens": [10] * 6})
        >>> res = SteeringResult(1.0, {0.0: 3.0, 1.0: 2.9, 2.0: 3.1}, None, shift=shift, steered_layers=(0,),
        ...                      gains={0.0: [[0.0, 0.0]], 1.0: [[0.1, 0.2, 0.3]], 2.0: [[-0.1, 0.2]]})
        >>> res.findings()[0]
        'Routing did not move monotonically with scale (share of top-k sets changed, mean over the steered layers L0): 0.0% at 0, 20.0% at 1, 10.0% at 2.'
        >>> res.findings()[2]
        'The dev split chose scale 1 (lowest mean dev bits/byte, 2.9000); on the test split at that scale the outcome improved, gain +0.2000 [+0.1000, +0.3000].'

        ```
        """
        return dose_response_findings(self.dose_response(), self.scale, self.dev_scores, self.level)

    def summary(self) -> str:
        """The chosen scale, each language's gain with its interval, and per scale how far
        routing moved (mean over the steered layers) next to the outcome, in words
        ("mechanism moved, outcome did not"), then the findings worded by rule."""
        pct = round(100 * self.level)
        lines = [f"scale {self.scale} chosen on the dev split only (mean dev bits/byte per scale: "
                 + ", ".join(f"{s}: {v:.4f}" for s, v in self.dev_scores.items()) + ")"]
        if self.scale == 0:
            lines.append("scale 0 won on dev: nothing is steered at the chosen scale")
        for row in (self.table.itertuples() if self.table is not None else ()):
            steered = f"{row.pairs} steered (layer, expert) pairs" if self.scale else "no steering"
            lines.append(f"{row.language}: gain {row.gain:+.4f} bits/byte, {pct}% CI [{row.ci_low:+.4f}, "
                         f"{row.ci_high:+.4f}], p = {row.p_value:.3f}, {steered}"
                         + (self._where_steered(row.language) if self.scale else ""))
        if self.shift is not None:
            dose = self.dose_response()
            lines.append("dose-response on the test split (routing: share of top-k sets changed and gate mass moved "
                         "onto the steered experts, mean over the steered layers "
                         f"{dose.steered_layers.iloc[0]}"
                         + ("" if len(set(self.steered_by_language.values())) < 2
                            else ", the layers any language steers (each one's own: above)")
                         + "; outcome: gain in bits/byte, mean over languages):")
            for row in dose.itertuples():
                lines.append(f"  scale {row.scale}: {100 * row.changed:.1f}% of top-k sets changed, gate mass "
                             f"{row.mass_moved:+.3f}; gain {row.gain:+.4f} [{row.gain_low:+.4f}, {row.gain_high:+.4f}]"
                             f": {row.verdict}" + (" (chosen)" if row.scale == self.scale else ""))
            lines += dose_response_findings(dose, self.scale, self.dev_scores, self.level)
        return "\n".join(lines)

    def plot(self) -> Any:
        """The dose-response (`dose_response_figure`): routing moved and the outcome against the
        scale; without a `shift`, each language's gain per steered scale (`steering_bars`)."""
        return steering_bars(self) if self.shift is None else dose_response_figure(self)


def steering_bars(result: SteeringResult) -> Any:
    """Plotly bars of each language's gain with its interval, one bar per steered scale
    (every scale of `result.outcome` but 0, which steers nothing; the chosen one marked), or
    the chosen scale's `table` without an `outcome`.

    ```python
    >>> import pandas as pd
    >>> from moe_interp.experiments import SteeringResult
    >>> from moe_interp.experiments._steering import steering_bars
    >>> outcome = pd.DataFrame({"scale": [0.0, 0.5, 2.0], "language": ["deu"] * 3, "gain": [0.0, 0.1, -0.3],
    ...                         "ci_low": [0.0, 0.0, -0.4], "ci_high": [0.0, 0.2, -0.2]})
    >>> fig = steering_bars(SteeringResult(0.0, {}, None, outcome=outcome))
    >>> [(bar.name, list(bar.y)) for bar in fig.data]
    [('scale 0.5', [0.1]), ('scale 2', [-0.3])]

    ```
    """
    import plotly.graph_objects as go

    if result.outcome is not None:
        steered = result.outcome[result.outcome.scale != 0]
        parts = [(float(s), part) for s, part in steered.groupby("scale", sort=True)]
    else:
        parts = [(float(result.scale), result.table)] if result.scale != 0 else []
    if not parts:
        raise ValueError("nothing to plot: scale 0 steers nothing and no other scale was evaluated; plot the "
                         "dose-response over several scales (steering_eval(..., scales=(0.0, 0.25, 1.0)))")
    fig = go.Figure([go.Bar(x=list(t.language), y=list(t.gain), name=f"scale {_scale(s)}" + (
        " (chosen on dev)" if s == result.scale else ""), error_y={
        "type": "data", "symmetric": False, "array": list(t.ci_high - t.gain), "arrayminus": list(t.gain - t.ci_low)})
        for s, t in parts])
    fig.add_hline(y=0, line={"color": "grey", "dash": "dot"})
    fig.update_layout(title="Routing-guided steering: gain per language and scale (test texts)",
                      xaxis_title="language", yaxis_title="gain in bits/byte (baseline - steered)", barmode="group")
    return fig


def _dose_figure(tables: Mapping[str, Any], title: str, single: bool = False) -> Any:
    """Two panels against the scale (categorical axis: scales are often 0, 0.25, 1, 4):
    routing moved (share of top-k sets changed) and the gain with its interval, one line per
    table (seed); a `chosen` column draws that scale's gain as a star."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    layers = {str(t.steered_layers.iloc[0]) for t in tables.values() if "steered_layers" in t.columns}
    over = f", mean over the steered layers {_join(sorted(layers))}" if layers else ""
    moved = "routing moved" + (f" (steered layers {_join(sorted(layers))})" if layers else "")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(moved, "outcome on the test texts"))
    for i, (name, t) in enumerate(tables.items()):
        color = qualitative.D3[i % len(qualitative.D3)]
        scales = [_scale(s) for s in t.scale]
        chosen = list(t.chosen) if "chosen" in t.columns else [False] * len(t)
        fig.add_trace(go.Scatter(x=scales, y=list(t.changed), mode="lines+markers",
                                 name="top-k sets changed" if single else name, legendgroup=name,
                                 line={"color": color},
                                 hovertemplate="scale %{x}: %{y:.1%}<extra>" + name + "</extra>"),
                      1, 1)
        fig.add_trace(go.Scatter(x=scales, y=list(t.gain), mode="lines+markers",
                                 name="gain (bits/byte)" if single else name, legendgroup=name,
                                 showlegend=single, offsetgroup=None if single else name, line={"color": color},
                                 marker={"symbol": ["star" if c else "circle" for c in chosen],
                                         "size": [14 if c else 8 for c in chosen]},
                                 error_y={"type": "data", "symmetric": False, "array": list(t.gain_high - t.gain),
                                          "arrayminus": list(t.gain - t.gain_low)},
                                 hovertemplate="scale %{x}: %{y:+.4f}<extra>" + name + "</extra>"), 1, 2)
    fig.add_hline(y=0, line={"color": "grey", "dash": "dot"}, row=1, col=2)
    fig.update_xaxes(title_text="steering scale (relative: z + scale * s * |z|)", type="category")
    fig.update_yaxes(title_text=f"top-k sets changed (share of tokens{over})", tickformat=".0%", rangemode="tozero",
                     row=1, col=1)
    fig.update_yaxes(title_text="gain in bits/byte (baseline - steered; > 0 better)", row=1, col=2)
    fig.update_layout(title={"text": title}, scattermode="group", scattergap=0.6)
    return fig


def dose_response_figure(result: SteeringResult) -> Any:
    """Plotly figure of the dose-response: routing shift (share of top-k sets changed, mean
    over the steered layers) and outcome gain with its interval, against the steering scale;
    the scale chosen on dev drawn as a star.

    ```python
    >>> import pandas as pd
    >>> from moe_interp.experiments import SteeringResult
    >>> from moe_interp.experiments._steering import dose_response_figure
    >>> shift = pd.DataFrame({"scale": [0.5], "language": ["deu"], "layer": [0], "changed": [0.1],
    ...                       "mass_moved": [0.05], "tokens": [10]})
    >>> fig = dose_response_figure(SteeringResult(0.5, {}, None, shift=shift, gains={0.5: [[0.1, 0.2]]}))
    >>> [trace.name for trace in fig.data], list(fig.data[0].y), list(fig.data[1].marker.symbol)
    (['top-k sets changed', 'gain (bits/byte)'], [0.1], ['star'])

    ```
    """
    dose = result.dose_response()
    dose["chosen"] = dose.scale == result.scale
    return _dose_figure({"": dose}, "Steering dose-response (test texts)", single=True)


def _seed_tables(seeds: Mapping[Any, Any]) -> dict[Any, tuple[Any, float | None]]:
    """Each seed's dose-response table and chosen scale (None if not given)."""
    import pandas as pd

    if not isinstance(seeds, Mapping) or not seeds:
        raise ValueError("seeds must be a non-empty mapping {seed: dose-response}, e.g. "
                         "{0: result.dose_response(), 1: ...} or {seed: eval_json['steering']}")
    out = {}
    for seed, dose in seeds.items():
        chosen = None
        if isinstance(dose, SteeringResult):
            dose, chosen = dose.dose_response(), dose.scale
        elif isinstance(dose, Mapping) and "dose_response" in dose:  # eval.json's "steering" entry
            dose, chosen = dose["dose_response"], dose.get("scale")
        elif not isinstance(dose, (pd.DataFrame, Sequence)):
            raise TypeError(f"seed {seed!r}: expected a dose-response DataFrame, a list of its rows, a "
                            f"SteeringResult or eval.json's steering entry, got {type(dose).__name__}")
        out[seed] = (_dose_table(dose, f"seed {seed!r}'s dose-response"), None if chosen is None else float(chosen))
    return out


def dose_response_across(seeds: Mapping, chosen: Mapping | None = None) -> Any:
    """The steering dose-response of several training seeds in one table, with per scale the
    number of seeds whose gain interval lies above 0 and below 0.

    **Arguments:** `seeds`: `{seed: dose-response}`, each a `SteeringResult.dose_response()`
    DataFrame, a list of its rows as dicts (`scale`, `changed`, `mass_moved`, `gain`,
    `gain_low`, `gain_high`, optionally `verdict`, `steered_layers`), a `SteeringResult`, or
    eval.json's `steering` entry (`{"scale": ..., "dose_response": [...]}`); `chosen`:
    `{seed: scale chosen on dev}` (taken from a `SteeringResult` or eval.json entry when not
    given).

    **Returns:** a DataFrame, one row per (scale, seed), sorted by scale then seed order:
    `scale`, `seed`, `changed`, `mass_moved`, `gain`, `gain_low`, `gain_high`, `outcome`
    (`"improved"`: interval above 0, `"worsened"`: below 0, `"no effect"`: across 0), `verdict`
    and `steered_layers` where given, `chosen` (bool: the dev split chose this scale in this
    seed; when known for every seed), and per scale `seeds_improved`, `seeds_worsened`,
    `n_seeds`.

    ```python
    >>> from moe_interp.experiments import dose_response_across
    >>> row = lambda scale, changed, gain, low, high: dict(scale=scale, changed=changed, mass_moved=changed / 2,
    ...                                                   gain=gain, gain_low=low, gain_high=high)
    >>> seeds = {0: [row(0.0, 0, 0, 0, 0), row(0.25, 0.076, 0.0093, 0.0019, 0.0165)],
    ...          1: [row(0.0, 0, 0, 0, 0), row(0.25, 0.076, -0.0025, -0.0092, 0.0038)],
    ...          2: [row(0.0, 0, 0, 0, 0), row(0.25, 0.095, -0.0030, -0.0106, 0.0054)]}
    >>> table = dose_response_across(seeds, chosen={0: 0.0, 1: 0.0, 2: 0.0})
    >>> table[table.scale == 0.25][["seed", "outcome", "seeds_improved", "seeds_worsened", "n_seeds"]]
       seed    outcome  seeds_improved  seeds_worsened  n_seeds
    3     0   improved               1               0        3
    4     1  no effect               1               0        3
    5     2  no effect               1               0        3

    ```
    """
    import pandas as pd

    tables = _seed_tables(seeds)
    given = dict(chosen or {})
    unknown = [s for s in given if s not in tables]
    if unknown:
        raise ValueError(f"chosen names seeds {unknown} that are not in seeds {list(tables)}")
    frames = []
    for order, (seed, (table, own)) in enumerate(tables.items()):
        pick = given.get(seed, own)
        frame = table.assign(seed=seed, _order=order)
        if pick is not None:
            frame["chosen"] = frame.scale == pick
        frames.append(frame)
    if any("chosen" in f.columns for f in frames) and not all("chosen" in f.columns for f in frames):
        missing = [seed for seed, f in zip(tables, frames) if "chosen" not in f.columns]
        raise ValueError(f"the scale chosen on dev is known for some seeds but not for {missing}: pass chosen="
                         "{seed: scale} for every seed, or for none")
    out = pd.concat(frames, ignore_index=True)
    out["outcome"] = [_outcome(low, high) for low, high in zip(out.gain_low, out.gain_high)]
    by_scale = out.groupby("scale")
    out["seeds_improved"] = by_scale.outcome.transform(lambda o: int((o == "improved").sum())).astype(int)
    out["seeds_worsened"] = by_scale.outcome.transform(lambda o: int((o == "worsened").sum())).astype(int)
    out["n_seeds"] = by_scale.seed.transform("size").astype(int)
    out = out.sort_values(["scale", "_order"], kind="stable").reset_index(drop=True)
    columns = ["scale", "seed", "changed", "mass_moved", "gain", "gain_low", "gain_high", "outcome"]
    columns += [c for c in ("verdict", "steered_layers", "chosen") if c in out.columns]
    return out[columns + ["seeds_improved", "seeds_worsened", "n_seeds"]]


def _across_table(table: Any) -> Any:
    import pandas as pd

    if isinstance(table, pd.DataFrame) and {"seed", "outcome", "n_seeds"} <= set(table.columns):
        return table
    return dose_response_across(table)


def dose_response_across_findings(table: Any) -> list[str]:
    """The dose-response across seeds in sentences worded by rule: per steered scale, in how
    many seeds the outcome improved / worsened (interval above / below 0) and which seeds'
    intervals lie across 0; in how many seeds routing moved monotonically with scale (top-k
    sets changed non-decreasing); which scale the dev split chose in each seed.

    **Arguments:** `table`: `dose_response_across(...)`, or its `seeds` mapping.

    ```python
    >>> from moe_interp.experiments import dose_response_across, dose_response_across_findings
    >>> row = lambda scale, changed, gain, low, high: dict(scale=scale, changed=changed, mass_moved=changed / 2,
    ...                                                   gain=gain, gain_low=low, gain_high=high)
    >>> seeds = {0: [row(0.0, 0, 0, 0, 0), row(0.25, 0.076, 0.0093, 0.0019, 0.0165),
    ...              row(1.0, 0.21, -0.05, -0.06, -0.03)],
    ...          1: [row(0.0, 0, 0, 0, 0), row(0.25, 0.076, -0.0025, -0.0092, 0.0038),
    ...              row(1.0, 0.21, -0.07, -0.08, -0.06)],
    ...          2: [row(0.0, 0, 0, 0, 0), row(0.25, 0.095, -0.0030, -0.0106, 0.0054),
    ...              row(1.0, 0.26, -0.07, -0.08, -0.05)]}
    >>> for sentence in dose_response_across_findings(dose_response_across(seeds, chosen={0: 0.0, 1: 0.0, 2: 0.0})):
    ...     print(sentence)
    Improved at scale 0.25 in 1 of 3 seeds (seed 0); seeds 1 and 2: intervals across 0.
    Worsened at scale 1 in 3 of 3 seeds (seeds 0, 1 and 2).
    Routing moved monotonically with scale (top-k sets changed) in 3 of 3 seeds.
    The dev split chose scale 0 in 3 of 3 seeds.

    ```
    """
    table = _across_table(table)
    seed_order = list(dict.fromkeys(table.seed))
    n = len(seed_order)
    sentences = []
    for scale, part in table.groupby("scale", sort=True):
        if scale == 0:
            continue  # scale 0 steers nothing: its gain is 0 by construction
        total = len(part)
        members = {kind: [s for s, o in zip(part.seed, part.outcome) if o == kind]
                   for kind in ("improved", "worsened", "no effect")}
        parts = [f"{kind} at scale {_scale(scale)} in {len(seeds)} of {total} seeds ({_seeds(seeds)})"
                 for kind, seeds in members.items() if kind != "no effect" and seeds]
        across = members["no effect"]
        if parts and across:
            parts.append(f"{_seeds(across)}: interval{'s' if len(across) > 1 else ''} across 0")
        elif across:
            parts.append(f"no effect on the outcome at scale {_scale(scale)} in any of the {total} seeds "
                         "(intervals across 0)")
        sentence = "; ".join(parts) + "."
        sentences.append(sentence[0].upper() + sentence[1:])
    monotone = [s for s in seed_order if _monotone(list(table[table.seed == s].changed))]
    moved = [s for s in seed_order if (table[table.seed == s].changed > 0).any()]
    where = "top-k sets changed"
    if "steered_layers" in table.columns:
        where += f", mean over the steered layers {_join(sorted(set(map(str, table.steered_layers))))}"
    if not moved:
        sentences.append(f"Routing did not move at any scale in any of the {n} seeds ({where}).")
    else:
        not_monotone = [s for s in seed_order if s not in monotone]
        sentences.append(f"Routing moved monotonically with scale ({where}) in {len(monotone)} of {n} seeds"
                         + (f" (not in {_seeds(not_monotone)})" if not_monotone else "") + ".")
    if "chosen" in table.columns:
        picks = {s: [_scale(v) for v in table[(table.seed == s) & table.chosen].scale] for s in seed_order}
        by_scale: dict[str, list] = {}
        for s in seed_order:
            by_scale.setdefault(picks[s][0] if picks[s] else "none of the evaluated scales", []).append(s)
        if len(by_scale) == 1:
            (scale, _), = by_scale.items()
            sentences.append(f"The dev split chose scale {scale} in {n} of {n} seeds.")
        else:
            sentences.append("The dev split chose " + "; ".join(
                f"scale {scale} in {_seeds(seeds)}" for scale, seeds in by_scale.items()) + ".")
    return sentences


def dose_response_seeds_figure(seeds: Any, title: str = "Steering dose-response across training seeds "
                                                         "(test texts)") -> Any:
    """Two panels against the steering scale, one line per seed: routing moved (share of top-k
    sets changed, mean over the steered layers) and the gain in bits/byte with its interval
    bars (a dotted line at 0; the scale the dev split chose drawn as a star).

    **Arguments:** `seeds`: `dose_response_across(...)`, or the mapping it takes.

    ```python
    >>> from moe_interp.experiments import dose_response_seeds_figure
    >>> row = lambda scale, changed, gain, low, high: dict(scale=scale, changed=changed, mass_moved=changed / 2,
    ...                                                   gain=gain, gain_low=low, gain_high=high)
    >>> fig = dose_response_seeds_figure({0: [row(0.0, 0, 0, 0, 0), row(0.25, 0.08, 0.009, 0.002, 0.017)],
    ...                                   1: [row(0.0, 0, 0, 0, 0), row(0.25, 0.08, -0.003, -0.009, 0.004)]})
    >>> [(t.name, list(t.x), list(t.y)) for t in fig.data][1::2]
    [('seed 0', ['0', '0.25'], [0.0, 0.009]), ('seed 1', ['0', '0.25'], [0.0, -0.003])]

    ```
    """
    table = _across_table(seeds)
    tables = {f"seed {s}": table[table.seed == s].reset_index(drop=True) for s in dict.fromkeys(table.seed)}
    return _dose_figure(tables, title)


def steering_eval(model: Any, stats: Any, dev: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence],
                  test: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence],
                  languages: Sequence[str | tuple[str, str]], target: str = "eng",
                  scales: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2),
                  layers: Any = "middle", k: int | None = None, threshold: float = 0.7, resamples: int = 2000,
                  seed: int = 0, level: float = 0.95, allow_same_texts: bool = False,
                  path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> SteeringResult:
    """Routing-guided steering, evaluated honestly.

    For each language `l`, steer toward the experts shared by `(target, l)` (the paper's
    `RouteSteer`, experts from `stats`); choose the scale minimising mean bits/byte on
    `dev`; report on `test` each language's gain with a paired bootstrap interval and
    p-value (`resamples` bootstrap resamples of its texts), and for every scale on `test`
    the dose-response: how far routing moved per layer (`routing_shift`; summarised over
    the layers `layers` selects, `SteeringResult.steered_layers`) next to the outcome.
    `k=None`: the paper's 20 of 128 experts scaled to the model, as `RouteSteer`.

    Three disjoint sets of texts: `stats` profiled on one (choosing experts), `dev`
    (choosing the scale), `test` (reporting). `test` equal to `dev`, or to the texts
    `stats` was profiled on (`mi.profile` records them), raises `ValueError` unless
    `allow_same_texts=True`.

    Encoder-decoder models (NLLB-MoE, Switch Transformers): `stats` is the `{stack:
    RoutingStats}` dict `mi.profile` returns (one `RoutingStats` is refused, naming it). A
    band name in `layers` is that band within each stack (`"middle"`: the middle of the
    encoder's MoE layers and of the decoder's; `"decoder:middle"` or explicit indices steer
    the stacks they select); each stack gets its own `RouteSteer` from its own statistics
    (a stack whose statistics lack the language or the target is not steered), applied
    together. Texts are scored by `mi.evaluate.text_nll` (the decoder's teacher-forced NLL
    of each text, which the encoder reads); `shift` gets a `stack` column and
    `SteeringResult.stacks` names each layer's stack.

    Parallel pairs (encoder-decoder models): `dev` and `test` may both be `{(source language,
    target language): [(source text, target text), ...]}` (both, or neither: a mix is
    refused); each pair is scored by the decoder's teacher-forced NLL of the target given
    the source, in bits per byte of the target. `languages` then names directions, `"fra-eng"`
    or `("fra", "eng")`, the labels of `table`, `outcome` and `shift`. A direction (s, t)
    steers the encoder toward the experts shared by `(target, s)` in `stats["encoder"]` and
    the decoder toward those shared by `(target, t)` in `stats["decoder"]`, each stack from its
    own statistics; a side already in `target` (t = `"eng"` with the default target) has
    nothing to steer toward, so that stack is not steered (its routing can still move
    downstream of the other's steer: `shift` shows it). The statistics may come from a
    profile of plain texts (both stacks then hold every language) or of pairs (the encoder's
    by source language, the decoder's by target language). The held-out check compares the
    test sources with the encoder's profiled texts and the test targets with the decoder's;
    `shift`'s `tokens` are the sources' in encoder layers and the targets' in decoder layers.
    Pairs on a causal LM are refused, naming the plain form.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> pick = {"eng": ["The cat sat on the mat."], "deu": ["Die Katze schläft."]}
    >>> dev = {"eng": ["Dogs bark."], "deu": ["Hunde bellen."]}
    >>> test = {"eng": ["A bird sings."], "deu": ["Ein Vogel singt.", "Fische schwimmen."]}
    >>> res = mi.steering_eval(mi.zoo.tiny_model("qwen3_moe"), mi.profile(model, pick, progress=False), dev, test,
    ...                        ["deu"], scales=(0.0, 1.0), k=4, resamples=200, progress=False)
    >>> res.scale in (0.0, 1.0), list(res.dose_response().scale), res.table.language.tolist()
    (True, [0.0, 1.0], ['deu'])
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")          # encoder layers 1, 3; decoder 5, 7
    >>> by_stack = mi.profile(seq2seq, {"eng": ["The cat sat on the mat.", "Dogs bark."],
    ...                                 "deu": ["Die Katze schläft.", "Hunde bellen."],
    ...                                 "fin": ["Kissa istuu.", "Koirat haukkuvat."]}, progress=False)
    >>> dev = {("deu", "fin"): [("Guten Tag.", "Hyvää päivää.")], ("fin", "eng"): [("Kiitos.", "Thank you.")]}
    >>> test = {("deu", "fin"): [("Ein Vogel singt.", "Lintu laulaa.")],
    ...         ("fin", "eng"): [("Kalat uivat.", "Fish swim.")]}
    >>> res = mi.steering_eval(seq2seq, by_stack, dev, test, ["deu-fin", ("fin", "eng")], scales=(0.0, 1.0),
    ...                        layers="late", k=3, resamples=50, progress=False)
    >>> res.table.language.tolist(), res.steered_layers      # fin-eng: only its encoder side (fin) is steered
    (['deu-fin', 'fin-eng'], (3, 7))
    >>> res.steered_by_language                               # each direction's own steered layers
    {'deu-fin': (3, 7), 'fin-eng': (3,)}
    >>> res.shift[(res.shift.scale == 0.0) & (res.shift.language == "fin-eng")].tokens.tolist()  # a byte a token
    [12, 12, 10, 10]

    ```
    """
    directions = [pair_directions(model, corpus, f"steering_eval {name}") for name, corpus in (("dev", dev),
                                                                                                 ("test", test))]
    if (directions[0] is None) != (directions[1] is None):
        raise ValueError("steering_eval: dev and test must take the same form, both {language: [texts]} or both "
                         "parallel pairs {(source, target): [(source text, target text)]}; got "
                         + " and ".join(f"{name} as {'pairs' if d else 'texts'}"
                                        for name, d in zip(("dev", "test"), directions)))
    keys = None
    if directions[0] is not None:
        (dev_keys, dev), (keys, test) = directions
        keys = {**dev_keys, **keys}
        languages = direction_names(languages, keys, "languages")
    by_stack = stack_stats(model, stats, "steering_eval")
    spec = describe(model)
    # per stack, the layers `layers` selects there (a band within each stack); one stack: None
    where = None if by_stack is None else stack_layers(spec, layers)

    def side(lang: str, stack: str) -> str:
        """The language `stack` reads of `lang`: itself, or of a direction its source (encoder) or target."""
        return lang if keys is None else keys[lang][0 if stack == "encoder" else 1]

    def steered_in(lang: str, stack: str) -> bool:
        part = by_stack[stack].languages
        # a direction's side in the target language has nothing to steer toward (itself): that stack is not steered
        return target in part and side(lang, stack) in part and (keys is None or side(lang, stack) != target)

    def grid(scale: float) -> dict[str, list]:
        if where is None:
            return {lang: [RouteSteer(layers=layers, target=target, stats=stats, languages=(target, lang), k=k,
                                      threshold=threshold, scale=scale)] for lang in languages}
        return {lang: [RouteSteer(layers=part, target=target, stats=by_stack[stack],
                                  languages=(target, side(lang, stack)), k=k, threshold=threshold, scale=scale)
                       for stack, part in where.items() if steered_in(lang, stack)]
                for lang in languages}

    def run(corpus: Mapping, scale: float) -> Any:
        frames = []
        for lang, interventions in grid(scale).items():
            cond = {"baseline": [], f"steer:{scale}": interventions} if scale else {"baseline": []}
            frame = Experiment(model, {lang if keys is None else keys[lang]: list(corpus[lang])}, cond, path=path,
                               batch_size=batch_size, progress=False).run()
            if not scale:  # scale 0 steers nothing: its cell is the baseline, not run twice
                frame = pd.concat([frame, frame.assign(condition=f"steer:{scale}")])
            frames.append(frame)
        return pd.concat(frames)

    def per_text(frame: Any, scale: float, lang: str) -> np.ndarray:
        mine = frame[frame.language == lang].pivot_table(index="item", columns="condition", values="bits_per_byte")
        return (mine["baseline"] - mine[f"steer:{scale}"]).to_numpy()

    import pandas as pd

    # Check everything before the first cell: a bad k must not cost the baselines' compute.
    if keys is None:
        dev, test = check_corpus(dev), check_corpus(test)
    scales = [float(s) for s in scales]
    resamples, seed, level = check_int("resamples", resamples, 1), check_int("seed", seed, 0), check_level(level)
    if not scales:
        raise ValueError("scales is empty: pass the steering scales to choose from, e.g. (0.0, 0.02, 0.05)")
    missing = [lang for lang in languages if lang not in dev or lang not in test]
    if missing:
        raise ValueError(f"languages {missing} are missing from dev or test; both need texts for every language")
    reused = [lang for lang in languages if fingerprint(dev[lang]) == fingerprint(test[lang])]
    if reused and not allow_same_texts:
        raise ValueError(f"dev and test hold the same {', '.join(reused)} texts: the scale would be chosen on the texts "
                         "it is reported on; pass held-out texts as test, e.g. mi.datasets.udhr(languages, "
                         "split='heldout') (or allow_same_texts=True to do it anyway)")
    for stack, part in (by_stack or {"": stats}).items():
        check_held_out(part, side_corpora({lang: test[lang] for lang in languages}, keys, stack), allow_same_texts)
    if where is not None:
        empty = [lang for lang, steers in grid(1.0).items() if not steers]
        if empty and keys is not None:
            raise ValueError(f"steering_eval: nothing to steer for the directions {empty} in the stacks "
                             f"layers={layers!r} selects ({', '.join(where)}): a direction steers the encoder when its "
                             f"statistics hold {target!r} and the source (not {target!r} itself), the decoder likewise "
                             "with the target; the languages per stack are "
                             + "; ".join(f"{s}: {', '.join(p.languages)}" for s, p in by_stack.items())
                             + ". Profile plain texts of every language (both stacks then hold them all), or pairs "
                             f"with {target!r} on both sides")
        if empty:
            raise ValueError(f"steering_eval: no stack's statistics hold both {target!r} and {empty} in the stacks "
                             f"layers={layers!r} selects ({', '.join(where)}); the languages per stack are "
                             + "; ".join(f"{s}: {', '.join(p.languages)}" for s, p in by_stack.items()))
    module = getattr(model, "_module", None)
    for scale in scales:
        for interventions in grid(scale).values():
            if scale:
                for steer in interventions:
                    steer.expert_set(spec)
                if isinstance(module, torch.nn.Module):  # a steer the router's dtype cannot take
                    compile_plan(spec, interventions, model)
    if path is None:  # cells are still cached within this call: the baseline runs once per split
        path = Path(tempfile.mkdtemp(prefix="moe_interp_steer_")) / "cells.jsonl"
    dev_scores = {}
    for scale in tqdm(scales, desc="dev scales", disable=not progress):
        frame = run(dev, scale)
        dev_scores[scale] = float(frame[frame.condition == f"steer:{scale}"].bits_per_byte.mean())
    best = min(dev_scores, key=lambda s: (dev_scores[s], abs(s)))
    outcome, shift, gains = [], [], {}
    for scale in tqdm(scales, desc="test scales", disable=not progress):
        frame = run(test, scale)
        gains[scale] = [per_text(frame, scale, lang) for lang in languages]
        for i, (lang, interventions) in enumerate(grid(scale).items()):
            diff = gains[scale][i]
            result = paired_interval(diff, resamples, level, seed + i)
            pairs = sum(steer.expert_set(spec).size for steer in interventions) if scale else 0
            outcome.append({"scale": scale, "language": lang, "gain": result.estimate, "ci_low": result.low,
                            "ci_high": result.high, "p_value": result.p_value, "pairs": pairs})
            if scale:
                moved = routing_shift(model, test[lang], interventions if where is not None else interventions[0],
                                      batch_size)
            else:  # each stack reads every token of each text (the decoder teacher-forced)
                moved = pd.DataFrame({"layer": list(spec.moe_layers), "changed": 0.0, "mass_moved": 0.0,
                                      "tokens": sum(len(tokenize(model, t)["input_ids"]) for t in test[lang])
                                      if keys is None else [_pair_tokens(model, test[lang], s) for s in spec.stacks]})
                if where is not None:
                    moved.insert(1, "stack", list(spec.stacks))
            shift.append(moved.assign(scale=scale, language=lang))
    outcome = pd.DataFrame(outcome)
    table = outcome[outcome.scale == best].drop(columns="scale").reset_index(drop=True)
    columns = ["scale", "language", "layer", *(["stack"] if where is not None else []), "changed", "mass_moved",
               "tokens"]
    shift = pd.concat(shift, ignore_index=True)[columns]
    if where is None:
        return SteeringResult(best, dev_scores, table, outcome, shift, level, resamples, seed, gains,
                              steered_layers=tuple(spec.select_layers(layers)))
    steered = tuple(sorted(layer for part in where.values() for layer in part))
    own = {lang: tuple(sorted(layer for stack, part in where.items() if steered_in(lang, stack) for layer in part))
           for lang in languages}
    return SteeringResult(best, dev_scores, table, outcome, shift, level, resamples, seed, gains,
                          steered_layers=steered, stacks={layer: stack for layer, stack in zip(spec.moe_layers,
                                                                                                spec.stacks)},
                          steered_by_language=own)
