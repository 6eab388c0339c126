"""The paper's layer-band ablation design, with the evidence a verdict needs: per-text
bootstrap intervals, the other languages' effect and a same-size random-expert-set control."""

import dataclasses
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._grid import Experiment, check_held_out
from .analysis._evidence import _check_int, _check_level, _means, interval
from .arch import BANDS, describe
from .expert_set import ExpertSet
from .interventions import ExpertAblate

__all__ = ["AblationResult", "ablation_grid", "ablation_heatmap", "random_expert_set"]

VERDICTS = ("language-specific", "not specific", "no effect")


def random_expert_set(experts: Mapping[int, Sequence[int]], num_experts: int, seed: Any) -> ExpertSet:
    """A random set of the same size as `experts` in the same layers, drawn (uniformly,
    without replacement) in each layer from the experts NOT in `experts` there: the control
    an ablation of `experts` is compared with. `seed`: anything `numpy.random.default_rng` takes.

    ```python
    >>> from moe_interp._ablation import random_expert_set
    >>> s = random_expert_set({3: [0, 1], 5: [7]}, num_experts=8, seed=0)
    >>> {layer: len(s[layer]) for layer in s}, set(s[3]) & {0, 1}, 7 in s[5]
    ({3: 2, 5: 1}, set(), False)

    ```
    """
    rng = np.random.default_rng(seed)
    drawn = {}
    for layer, chosen in experts.items():
        pool = [e for e in range(num_experts) if e not in set(chosen)]
        if len(chosen) > len(pool):
            raise ValueError(f"layer {layer}: {len(chosen)} experts are ablated but only {len(pool)} others exist to "
                             "draw a same-size random control from; ablate fewer experts (a smaller k)")
        drawn[layer] = sorted(int(e) for e in rng.choice(pool, size=len(chosen), replace=False))
    return ExpertSet(drawn)


def _seed(seed: int, target: str, band: str, draw: int) -> list[int]:
    """A seed per control draw that depends on what it controls, not on the grid's order."""
    return [seed, zlib.crc32(target.encode()), zlib.crc32(band.encode()), draw]


def _summary(effects: dict[str, np.ndarray], pairs: int, replicates: int, level: float, seed: int) -> dict:
    """Estimates, intervals and the verdict of one ablated language from per-text effects.

    `effects["own"]` and `effects["control"]` are per text of the ablated language (the same
    texts, so resampled together: paired); `effects["others"]` is a list with one array per
    other evaluated language, resampled within each. The effect is the mean over languages.
    """
    own, control, others = effects["own"], effects["control"], effects["others"]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(own), (replicates, len(own)))
    samples = {"own": _means(own, draws), "control": _means(control, draws),
               "others": np.mean([_means(o, rng.integers(0, len(o), (replicates, len(o)))) for o in others], axis=0)}
    estimates = {"own": own.mean(), "control": control.mean(), "others": np.mean([o.mean() for o in others])}
    samples["own_minus_others"] = samples["own"] - samples["others"]
    samples["own_minus_control"] = samples["own"] - samples["control"]
    estimates["own_minus_others"] = estimates["own"] - estimates["others"]
    estimates["own_minus_control"] = estimates["own"] - estimates["control"]
    row: dict[str, Any] = {"pairs": pairs}
    for name, estimate in estimates.items():
        low, high = interval(float(estimate), samples[name], level) if pairs else (0.0, 0.0)
        row.update({name: float(estimate), f"{name}_low": low, f"{name}_high": high})
    if not pairs or not row["own_low"] > 0:
        row["verdict"] = "no effect"
    elif row["own_minus_others_low"] > 0 and row["own_minus_control_low"] > 0:
        row["verdict"] = "language-specific"
    else:
        row["verdict"] = "not specific"
    return row


@dataclasses.dataclass
class AblationResult:
    """Bits-per-byte change of each evaluation language when each target language's
    exclusive experts are ablated in each band, with the evidence for a verdict.

    **Fields:** `eval_languages`; `conditions` (`(target, band)` pairs); `baseline` (mean
    bits/byte per language); `delta` (`[eval language, condition]` mean change);
    `experts` (`(layer, expert)` pairs ablated per condition); `frame` (every text's
    bits/byte per cell: conditions `"baseline"`, `"ablate:{target}:{band}"` and the random
    controls `"control:{target}:{band}:{draw}"`, run on the target's own texts); `controls`
    (random draws per condition), `replicates`, `level`, `seed` (of the intervals); `sets`
    (the `ExpertSet` each condition ablated, controls included, by condition name).
    """

    eval_languages: tuple[str, ...]
    conditions: tuple[tuple[str, str], ...]
    baseline: dict[str, float]
    delta: np.ndarray
    experts: dict[tuple[str, str], int]
    frame: Any
    controls: int = 3
    replicates: int = 2000
    level: float = 0.95
    seed: int = 0
    sets: dict[str, ExpertSet] = dataclasses.field(default_factory=dict, repr=False)

    def _effects(self, language: str, conditions: Sequence[str]) -> np.ndarray:
        """Per text of `language`: the mean over `conditions` of (condition - baseline) bits/byte;
        a condition never run (a control of an empty set) ablated nothing: 0."""
        rows = self.frame[self.frame.language == language]
        table = rows.pivot_table(index="item", columns="condition", values="bits_per_byte")
        base = table["baseline"].to_numpy()
        return np.mean([table[c].to_numpy() - base if c in table else np.zeros_like(base) for c in conditions], axis=0)

    def verdicts(self, band: str | None = None) -> Any:
        """One row per ablated language that is also evaluated: is the effect of its own
        exclusive experts specific to it?

        Per text (bits/byte change against no ablation, averaged over the bands, or only
        `band`): `own` (the language's own texts), `others` (each other evaluated language's
        texts under the same ablation, averaged over languages), `control` (the language's
        own texts with same-size random expert sets in the same layers, averaged over the
        draws). Each with its `_low` / `_high` interval (percentile bootstrap over texts;
        own and control are paired on the same texts), and the differences
        `own_minus_others` and `own_minus_control` with theirs. `verdict`:
        `"language-specific"` when the own effect's interval lies above 0 and both
        differences' intervals lie above 0; `"no effect"` when the own effect's interval
        does not lie above 0 (or nothing was ablated); `"not specific"` otherwise.

        ```python
        >>> import numpy as np, pandas as pd
        >>> from moe_interp.experiment import AblationResult
        >>> rows = [dict(language=l, condition=c, item=i, bits_per_byte=b)
        ...         for l, own in (("eng", 1.0), ("deu", 0.0)) for i in range(20)
        ...         for c, b in (("baseline", 3 + 0.01 * i), ("ablate:eng:middle", 3 + 0.01 * i + own + 0.02 * (i % 3)),
        ...                      ("control:eng:middle:0", 3 + 0.01 * i))]
        >>> res = AblationResult(("eng", "deu"), (("eng", "middle"),), {}, np.zeros((2, 1)),
        ...                      {("eng", "middle"): 4}, pd.DataFrame(rows), controls=1)
        >>> v = res.verdicts().iloc[0]
        >>> v.language, round(float(v.own), 2), v.verdict
        ('eng', 1.02, 'language-specific')

        ```
        """
        import pandas as pd

        if band is not None and band not in {b for _, b in self.conditions}:
            raise ValueError(f"band {band!r} is not one of this grid's bands {sorted({b for _, b in self.conditions})}")
        rows = []
        targets = dict.fromkeys(t for t, _ in self.conditions)
        for index, target in enumerate(targets):
            if target not in self.eval_languages or len(self.eval_languages) < 2:
                continue
            bands = [b for t, b in self.conditions if t == target and band in (None, b)]
            ablate = [f"ablate:{target}:{b}" for b in bands]
            effects = {"own": self._effects(target, ablate),
                       "control": self._effects(target, [f"control:{target}:{b}:{d}" for b in bands
                                                         for d in range(self.controls)]),
                       "others": [self._effects(l, ablate) for l in self.eval_languages if l != target]}
            pairs = sum(self.experts[(target, b)] for b in bands)
            rows.append({"language": target, "band": band or "all", "texts": len(effects["own"]),
                         "controls": self.controls,
                         **_summary(effects, pairs, self.replicates, self.level, self.seed + index)})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Per ablated language: the effect on itself, on the other languages and of random
        same-size sets, with intervals, and the verdict they support."""
        pct = round(100 * self.level)
        lines = [f"Change in bits/byte (positive = worse), mean over texts and bands, {pct}% bootstrap intervals "
                 f"over texts; control: {self.controls} random same-size expert sets in the same layers "
                 "(experts not ablated), on the language's own texts."]

        def cell(row: Any, name: str) -> str:
            return f"{getattr(row, name):+.4f} [{getattr(row, name + '_low'):+.4f}, {getattr(row, name + '_high'):+.4f}]"

        for row in self.verdicts().itertuples():
            lines.append(f"{row.language} ({row.pairs} (layer, expert) pairs, {row.texts} texts): own {cell(row, 'own')}, "
                         f"other languages {cell(row, 'others')}, random sets {cell(row, 'control')}; own - others "
                         f"{cell(row, 'own_minus_others')}, own - random {cell(row, 'own_minus_control')}: "
                         f"{row.verdict}")
        return "\n".join(lines)

    def plot_ablation(self) -> Any:
        """Heatmap of the delta matrix (evaluation language x ablated target/band); see `ablation_heatmap`."""
        return ablation_heatmap(self)


def ablation_heatmap(result: AblationResult) -> Any:
    """Plotly heatmap of `result.delta` (evaluation language x ablated target / band).

    ```python
    >>> import numpy as np
    >>> from moe_interp.experiment import AblationResult
    >>> from moe_interp._ablation import ablation_heatmap
    >>> res = AblationResult(("eng",), (("deu", "middle"),), {}, np.zeros((1, 1)), {}, None)
    >>> ablation_heatmap(res).layout.xaxis.title.text
    'ablated language / band'

    ```
    """
    import plotly.graph_objects as go

    labels = [f"{t} / {b}" for t, b in result.conditions]
    fig = go.Figure(go.Heatmap(z=result.delta, x=labels, y=list(result.eval_languages), colorscale="RdBu_r", zmid=0,
                               colorbar={"title": "Δ bits/byte"}))
    fig.update_layout(title="Layer-band ablation of language-exclusive experts",
                      xaxis_title="ablated language / band", yaxis_title="evaluated language")
    return fig


def _mean_bpb(frame: Any, language: str, condition: str) -> float:
    rows = frame[(frame.language == language) & (frame.condition == condition)]
    return float(rows.bits_per_byte.mean())


def ablation_grid(model: Any, stats: Any, corpus: Mapping[str, Sequence[str]], eval_languages: Sequence[str],
                  target_languages: Sequence[str], bands: Sequence[str] = BANDS, width: int | None = None,
                  k: int | None = None, threshold: float = 0.4, among: Sequence[str] | None = None,
                  controls: int = 3, replicates: int = 2000, level: float = 0.95, seed: int = 0,
                  allow_same_texts: bool = False, path: str | os.PathLike | None = None, batch_size: int = 8,
                  progress: bool = True) -> AblationResult:
    """The paper's ablation design, with intervals and a random-set control.

    Each target language's exclusive experts (from `stats`, exclusive among the languages
    `among`: by default the evaluation and target languages) are rerouted in each band and
    every evaluation language's texts in `corpus` are scored against no ablation. Each
    (target, band) cell also gets `controls` random expert sets of the same size in the
    same layers (drawn from the experts it does not ablate, seeded by `seed`, target, band
    and draw), scored on the target's own texts. `AblationResult.verdicts()` turns this
    into intervals and a verdict. `k=None`: the paper's 15 of 128 experts scaled to the
    model (`mi.PAPER.scaled_k`).

    Select and evaluate on different texts: `stats` comes from a profile of other texts
    (e.g. the train split) than `corpus` (held out). When `stats` records the same texts
    (`mi.profile` keeps their fingerprints) this raises `ValueError`, unless
    `allow_same_texts=True`.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> train = {"eng": ["The cat sat on the mat.", "Dogs bark."], "deu": ["Die Katze schläft.", "Hunde bellen."]}
    >>> test = {"eng": ["A bird sings.", "Fish swim."], "deu": ["Ein Vogel singt.", "Fische schwimmen."]}
    >>> profile = mi.profile(model, train, progress=False)
    >>> res = mi.ablation_grid(model, profile, test, ["eng", "deu"], ["eng", "deu"], bands=("middle",), k=4,
    ...                        controls=2, replicates=200, progress=False)
    >>> res.delta.shape, sorted(res.verdicts().columns)[:3]
    ((2, 2), ['band', 'control', 'control_high'])
    >>> set(res.verdicts().verdict) <= {"language-specific", "not specific", "no effect"}
    True

    ```
    """
    _check_int("controls", controls, 1)
    _check_int("replicates", replicates, 1)
    _check_int("seed", seed, 0)
    level = _check_level(level)
    if len(eval_languages) < 2:
        raise ValueError("eval_languages needs at least two languages: a verdict compares the ablated language's "
                         "effect with the effect on the others")
    missing = [l for l in eval_languages if l not in corpus]
    if missing:
        raise ValueError(f"eval_languages {missing} have no texts in corpus")
    check_held_out(stats, {l: corpus[l] for l in eval_languages}, allow_same_texts)
    spec = describe(model)
    among = list(among) if among is not None else list(dict.fromkeys([*eval_languages, *target_languages]))
    grid: dict[str, list] = {"baseline": []}
    experts, conditions, control_grid, sets = {}, [], {}, {}
    for target in target_languages:
        for band in bands:
            chosen = stats.exclusive_experts(target, k=k, threshold=threshold, layers=spec.band(band, width=width),
                                             among=among)
            grid[f"ablate:{target}:{band}"] = [ExpertAblate(chosen)]
            sets[f"ablate:{target}:{band}"] = chosen
            experts[(target, band)] = chosen.size
            conditions.append((target, band))
            if target in eval_languages and chosen.size:
                for draw in range(controls):
                    control = random_expert_set(chosen, spec.num_experts, _seed(seed, target, band, draw))
                    control_grid.setdefault(target, {})[f"control:{target}:{band}:{draw}"] = [ExpertAblate(control)]
                    sets[f"control:{target}:{band}:{draw}"] = control
    evaluated = {l: corpus[l] for l in eval_languages}
    frames = [Experiment(model, evaluated, grid, path=path, batch_size=batch_size, progress=progress).run()]
    for target, cells in control_grid.items():
        frames.append(Experiment(model, {target: corpus[target]}, cells, path=path, batch_size=batch_size,
                                 progress=progress).run())
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True)
    baseline = {l: _mean_bpb(frame, l, "baseline") for l in eval_languages}
    delta = np.array([[_mean_bpb(frame, l, f"ablate:{t}:{b}") - baseline[l] for t, b in conditions]
                      for l in eval_languages])
    return AblationResult(tuple(eval_languages), tuple(conditions), baseline, delta, experts, frame, controls,
                          replicates, level, seed, sets)
