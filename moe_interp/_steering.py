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

from ._fingerprint import check_corpus, fingerprint
from ._grid import Experiment, check_held_out
from .analysis._evidence import paired_interval, stratified_interval
from .arch import describe
from .interventions import RouterRecord, RouteSteer, check_steer_range, compile_plan
from ._trace import trace

__all__ = ["SteeringResult", "dose_response_figure", "routing_shift", "steering_bars", "steering_eval"]


def _per_token(model: Any, enc: Any, *interventions: Any) -> dict:
    with torch.no_grad(), trace(model, enc, *interventions, RouterRecord(per_token=True)) as tr:
        pass
    return tr.routing.per_token


def routing_shift(model: Any, texts: Sequence[str], steer: Any, batch_size: int = 8) -> Any:
    """How far `steer` moves routing on `texts`, per MoE layer, against no intervention.

    Per layer: `changed`, the share of tokens whose set of top-k experts differs from the
    unsteered run; `mass_moved`, the mean over tokens of the routing weight on the steered
    experts (those of `steer.expert_set`, or of a `LayerRouteSteer`'s strengths) after
    minus before; `tokens`. Padding is excluded.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiment import routing_shift
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> shift = routing_shift(model, ["The cat sat.", "Dogs bark."], mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e4))
    >>> float(shift.set_index("layer").loc[1, "mass_moved"]) > 0.3, float(shift.set_index("layer").loc[0, "changed"])
    (True, 0.0)

    ```
    """
    import pandas as pd

    spec = describe(model)
    if hasattr(steer, "expert_set"):
        steered = steer.expert_set(spec)
    else:  # a LayerRouteSteer keeps its strengths as ((layer, ((expert, s), ...)), ...)
        steered = {layer: [e for e, _ in dict(s).items()] for layer, s in dict(steer.strengths).items()}
    mask = torch.zeros(len(spec.moe_layers), spec.num_experts, dtype=torch.bool)
    for layer, experts in steered.items():
        mask[spec.moe_layers.index(layer), list(experts)] = True
    changed = torch.zeros(len(spec.moe_layers), dtype=torch.float64)
    moved = torch.zeros(len(spec.moe_layers), dtype=torch.float64)
    tokens = 0
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        enc = model.tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        before, after = _per_token(model, enc), _per_token(model, enc, steer)
        b_idx, a_idx = before["indices"].long(), after["indices"].long()
        changed += (b_idx.sort(-1).values != a_idx.sort(-1).values).any(-1).sum(0).double()
        layer = torch.arange(len(spec.moe_layers))[None, :, None]
        on_steered = lambda idx, w: (w.double() * mask[layer, idx]).sum(-1)  # noqa: E731
        moved += (on_steered(a_idx, after["weights"]) - on_steered(b_idx, before["weights"])).sum(0)
        tokens += len(b_idx)
    return pd.DataFrame({"layer": list(spec.moe_layers), "changed": (changed / max(tokens, 1)).tolist(),
                         "mass_moved": (moved / max(tokens, 1)).tolist(), "tokens": tokens})


def _verdict(changed: float, low: float, high: float) -> str:
    """What was measured, in words: did routing move, did the outcome move with it."""
    if changed <= 0:
        return "no effect: routing did not move"
    if low <= 0 <= high:
        return "mechanism moved, outcome did not"
    return f"mechanism moved and the outcome {'improved' if low > 0 else 'worsened'}"


@dataclasses.dataclass
class SteeringResult:
    """Routing-guided steering evaluated on held-out texts.

    **Fields:** `scale` (chosen on the dev texts only, minimising their mean bits/byte);
    `dev_scores` (mean dev bits/byte per scale); `table` (test texts at `scale`, one row
    per language: `gain` = baseline - steered bits/byte, positive = better, `ci_low`,
    `ci_high` paired bootstrap interval over texts, `p_value`, `pairs` steered); `outcome`
    (the same on the test texts for every scale, column `scale`); `shift` (per scale,
    language and MoE layer on the test texts: `changed` share of top-k sets, `mass_moved`
    onto the steered experts, `tokens`); `level`, `samples`, `seed` (of the intervals);
    `gains` (per scale, one array per language of each test text's gain).
    """

    scale: float
    dev_scores: dict[float, float]
    table: Any
    outcome: Any = None
    shift: Any = None
    level: float = 0.95
    samples: int = 2000
    seed: int = 0
    gains: dict = dataclasses.field(default_factory=dict, repr=False)

    def dose_response(self) -> Any:
        """One row per scale, on the test texts: `changed` and `mass_moved` averaged over
        layers (token-weighted over languages), the same per layer (`changed_L{layer}`,
        `mass_moved_L{layer}`), and the outcome `gain` (mean over languages of baseline -
        steered bits/byte) with its interval `gain_low`, `gain_high` (texts resampled within
        each language) and the `verdict` in words.

        ```python
        >>> import pandas as pd
        >>> from moe_interp.experiment import SteeringResult
        >>> shift = pd.DataFrame({"scale": [0.5] * 2, "language": ["deu"] * 2, "layer": [0, 1],
        ...                       "changed": [0.1, 0.3], "mass_moved": [0.05, 0.2], "tokens": [10, 10]})
        >>> res = SteeringResult(0.5, {0.5: 3.0}, None, shift=shift, gains={0.5: [[0.01, -0.01, 0.02, -0.02]]})
        >>> row = res.dose_response().iloc[0]
        >>> round(float(row.changed), 2), round(float(row.changed_L1), 2), row.verdict
        (0.2, 0.3, 'mechanism moved, outcome did not')

        ```
        """
        import pandas as pd

        rows = []
        for scale, part in self.shift.groupby("scale", sort=True):
            layers = part.groupby("layer").apply(
                lambda g: pd.Series({"changed": np.average(g.changed, weights=g.tokens),
                                     "mass_moved": np.average(g.mass_moved, weights=g.tokens)}), include_groups=False)
            gain = stratified_interval(self.gains[scale], self.samples, self.level, self.seed)
            row = {"scale": float(scale), "changed": float(layers.changed.mean()),
                   "mass_moved": float(layers.mass_moved.mean()), "gain": gain.estimate, "gain_low": gain.low,
                   "gain_high": gain.high,
                   "verdict": _verdict(float(layers.changed.mean()), gain.low, gain.high)}
            row.update({f"changed_L{layer}": float(v) for layer, v in layers.changed.items()})
            row.update({f"mass_moved_L{layer}": float(v) for layer, v in layers.mass_moved.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """The chosen scale, each language's gain with its interval, and per scale how far
        routing moved next to the outcome, in words ("mechanism moved, outcome did not")."""
        pct = round(100 * self.level)
        lines = [f"scale {self.scale} chosen on the dev split only (mean dev bits/byte per scale: "
                 + ", ".join(f"{s}: {v:.4f}" for s, v in self.dev_scores.items()) + ")"]
        if self.scale == 0:
            lines.append("scale 0 won on dev: nothing is steered at the chosen scale")
        for row in self.table.itertuples():
            steered = f"{row.pairs} steered (layer, expert) pairs" if self.scale else "no steering"
            lines.append(f"{row.language}: gain {row.gain:+.4f} bits/byte, {pct}% CI [{row.ci_low:+.4f}, "
                         f"{row.ci_high:+.4f}], p = {row.p_value:.3f}, {steered}")
        if self.shift is not None:
            lines.append("dose-response on the test split (routing: share of top-k sets changed and gate mass moved "
                         "onto the steered experts, layer means; outcome: gain in bits/byte over languages):")
            for row in self.dose_response().itertuples():
                lines.append(f"  scale {row.scale}: {100 * row.changed:.1f}% of top-k sets changed, gate mass "
                             f"{row.mass_moved:+.3f}; gain {row.gain:+.4f} [{row.gain_low:+.4f}, {row.gain_high:+.4f}]"
                             f": {row.verdict}" + (" (chosen)" if row.scale == self.scale else ""))
        return "\n".join(lines)

    def plot(self) -> Any:
        """Gains with their confidence intervals; see `steering_bars`."""
        return steering_bars(self)


def steering_bars(result: SteeringResult) -> Any:
    """Plotly bars of each language's gain at the chosen scale, with its interval.

    ```python
    >>> import pandas as pd
    >>> from moe_interp.experiment import SteeringResult
    >>> from moe_interp._steering import steering_bars
    >>> table = pd.DataFrame({"language": ["deu"], "gain": [0.1], "ci_low": [0.0], "ci_high": [0.2]})
    >>> steering_bars(SteeringResult(0.5, {}, table)).data[0].type
    'bar'

    ```
    """
    import plotly.graph_objects as go

    t = result.table
    fig = go.Figure(go.Bar(x=list(t.language), y=list(t.gain), error_y={
        "type": "data", "symmetric": False, "array": list(t.ci_high - t.gain), "arrayminus": list(t.gain - t.ci_low)}))
    fig.update_layout(title=f"Routing-guided steering (scale {result.scale})", xaxis_title="language",
                      yaxis_title="gain in bits/byte (baseline - steered)")
    return fig


def dose_response_figure(result: SteeringResult) -> Any:
    """Plotly figure of the dose-response: routing shift (share of top-k sets changed) and
    outcome gain with its interval, against the steering scale.

    ```python
    >>> import pandas as pd
    >>> from moe_interp.experiment import SteeringResult
    >>> from moe_interp._steering import dose_response_figure
    >>> shift = pd.DataFrame({"scale": [0.5], "language": ["deu"], "layer": [0], "changed": [0.1],
    ...                       "mass_moved": [0.05], "tokens": [10]})
    >>> fig = dose_response_figure(SteeringResult(0.5, {}, None, shift=shift, gains={0.5: [[0.1, 0.2]]}))
    >>> [trace.name for trace in fig.data]
    ['top-k sets changed', 'gain (bits/byte)']

    ```
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    dose = result.dose_response()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("routing moved", "outcome"))
    fig.add_trace(go.Scatter(x=dose.scale, y=dose.changed, mode="lines+markers", name="top-k sets changed"), 1, 1)
    fig.add_trace(go.Scatter(x=dose.scale, y=dose.gain, mode="lines+markers", name="gain (bits/byte)", error_y={
        "type": "data", "symmetric": False, "array": dose.gain_high - dose.gain,
        "arrayminus": dose.gain - dose.gain_low}), 1, 2)
    fig.update_xaxes(title_text="steering scale")
    fig.update_yaxes(title_text="share of tokens", row=1, col=1)
    fig.update_yaxes(title_text="baseline - steered bits/byte", row=1, col=2)
    fig.update_layout(title="Steering dose-response (test texts)")
    return fig


def steering_eval(model: Any, stats: Any, dev: Mapping[str, Sequence[str]], test: Mapping[str, Sequence[str]],
                  languages: Sequence[str], target: str = "eng", scales: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2),
                  layers: Any = "middle", k: int | None = None, threshold: float = 0.7, samples: int = 2000,
                  seed: int = 0, level: float = 0.95, allow_same_texts: bool = False,
                  path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> SteeringResult:
    """Routing-guided steering, evaluated honestly.

    For each language `l`, steer toward the experts shared by `(target, l)` (the paper's
    `RouteSteer`, experts from `stats`); choose the scale minimising mean bits/byte on
    `dev`; report on `test` each language's gain with a paired bootstrap interval and
    p-value (`samples` replicates), and for every scale on `test` the dose-response: how far
    routing moved per layer (`routing_shift`) next to the outcome. `k=None`: the paper's
    20 of 128 experts scaled to the model, as `RouteSteer`.

    Three disjoint sets of texts: `stats` profiled on one (choosing experts), `dev`
    (choosing the scale), `test` (reporting). `test` equal to `dev`, or to the texts
    `stats` was profiled on (`mi.profile` records them), raises `ValueError` unless
    `allow_same_texts=True`.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> pick = {"eng": ["The cat sat on the mat."], "deu": ["Die Katze schläft."]}
    >>> dev = {"eng": ["Dogs bark."], "deu": ["Hunde bellen."]}
    >>> test = {"eng": ["A bird sings."], "deu": ["Ein Vogel singt.", "Fische schwimmen."]}
    >>> res = mi.steering_eval(mi.zoo.tiny_model("qwen3_moe"), mi.profile(model, pick, progress=False), dev, test,
    ...                        ["deu"], scales=(0.0, 1.0), k=4, samples=200, progress=False)
    >>> res.scale in (0.0, 1.0), list(res.dose_response().scale), res.table.language.tolist()
    (True, [0.0, 1.0], ['deu'])

    ```
    """
    def grid(scale: float) -> dict[str, list]:
        return {lang: [RouteSteer(layers=layers, target=target, stats=stats, languages=(target, lang), k=k,
                                  threshold=threshold, scale=scale)] for lang in languages}

    def run(corpus: Mapping, scale: float) -> Any:
        frames = []
        for lang, interventions in grid(scale).items():
            cond = {"baseline": [], f"steer:{scale}": interventions} if scale else {"baseline": []}
            frame = Experiment(model, {lang: list(corpus[lang])}, cond, path=path, batch_size=batch_size,
                               progress=False).run()
            if not scale:  # scale 0 steers nothing: its cell is the baseline, not run twice
                frame = pd.concat([frame, frame.assign(condition=f"steer:{scale}")])
            frames.append(frame)
        return pd.concat(frames)

    def per_text(frame: Any, scale: float, lang: str) -> np.ndarray:
        mine = frame[frame.language == lang].pivot_table(index="item", columns="condition", values="bits_per_byte")
        return (mine["baseline"] - mine[f"steer:{scale}"]).to_numpy()

    import pandas as pd

    # Check everything before the first cell: a bad k must not cost the baselines' compute.
    dev, test, scales = check_corpus(dev), check_corpus(test), [float(s) for s in scales]
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
    check_held_out(stats, {lang: test[lang] for lang in languages}, allow_same_texts)
    spec = describe(model)
    module = getattr(model, "_module", None)
    for scale in scales:
        for interventions in grid(scale).values():
            if scale:
                interventions[0].expert_set(spec)
                if isinstance(module, torch.nn.Module):  # a steer the router's dtype cannot take
                    check_steer_range(compile_plan(spec, interventions), module)
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
            result = paired_interval(diff, samples, level, seed + i)
            pairs = interventions[0].expert_set(spec).size if scale else 0
            outcome.append({"scale": scale, "language": lang, "gain": result.estimate, "ci_low": result.low,
                            "ci_high": result.high, "p_value": result.p_value, "pairs": pairs})
            moved = routing_shift(model, test[lang], interventions[0], batch_size) if scale else \
                pd.DataFrame({"layer": list(spec.moe_layers), "changed": 0.0, "mass_moved": 0.0,
                              "tokens": sum(len(model.tokenizer(t)["input_ids"]) for t in test[lang])})
            shift.append(moved.assign(scale=scale, language=lang))
    outcome = pd.DataFrame(outcome)
    table = outcome[outcome.scale == best].drop(columns="scale").reset_index(drop=True)
    shift = pd.concat(shift, ignore_index=True)[["scale", "language", "layer", "changed", "mass_moved", "tokens"]]
    return SteeringResult(best, dev_scores, table, outcome, shift, level, samples, seed, gains)
