"""Experiment grids (language x condition), resumable, and the paper's two designs:
the layer-band ablation grid and the routing-guided steering evaluation."""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._fingerprint import check_corpus, fingerprint, model_parts
from .arch import BANDS, describe
from .evaluate import text_nll
from .interventions import ExpertAblate, RouteSteer, flatten

__all__ = ["Experiment", "ablation_grid", "steering_eval", "AblationResult", "SteeringResult"]


class Experiment:
    """A grid of cells (language x condition), each a list of interventions, run once.

    The model is loaded once by you; each finished cell (per-text NLL and bits per byte)
    is appended at once to `path` (JSONL), keyed by the content it depends on: the
    model's weights, config and tokenizer, the language's texts and the condition's
    interventions by value (a `RouteSteer` by its statistics' tensors). Rerunning skips
    finished cells: a killed run loses at most the cell in progress and resumes with
    identical results. A cell of another model, corpus or intervention (say, the
    random-init twin, or other statistics under the same condition name) never matches:
    it is computed and appended, so one file can hold many runs. Condition names label
    the rows; they never key anything.

    ```python
    >>> grid = {"baseline": [], "ablate-de": [mi.ExpertAblate(p.exclusive_experts("deu"))]}
    >>> exp = mi.Experiment(model, corpus, grid, path="runs/ablation.jsonl")
    >>> df = exp.run()            # tidy: language, condition, item, nll, bits_per_byte, ...
    >>> df.groupby(["condition", "language"]).bits_per_byte.mean()
    ```
    """

    def __init__(self, model: Any, corpus: Mapping[str, Sequence[str]], grid: Mapping[str, Any],
                 path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> None:
        if not isinstance(grid, Mapping) or not grid:
            raise TypeError("grid must be a non-empty mapping {condition name: [interventions]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (1 or more), got {batch_size!r}")
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self.corpus = check_corpus(corpus)
        self.grid = {str(name): flatten(v if isinstance(v, (list, tuple)) else [v]) for name, v in grid.items()}
        spec = describe(model)
        for interventions in self.grid.values():  # validate every cell before running any
            for intervention in interventions:
                intervention.edits(spec)
        self.path = Path(path) if path is not None else None

    def _keys(self, cells: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        # read now, not at construction: weights edited in between must not hit the old cells
        model = fingerprint(model_parts(self.model))
        conditions = {condition: fingerprint(self.grid[condition]) for _, condition in cells}
        return {(lang, cond): fingerprint((model, self.corpus[lang], conditions[cond])) for lang, cond in cells}

    def key(self, language: str, condition: str) -> str:
        """The content hash that identifies one cell's result (model weights, config and
        tokenizer; the language's texts; the condition's interventions by value)."""
        return self._keys([(language, condition)])[(language, condition)]

    def _done(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        done = {}
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write: that cell reruns
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str) and isinstance(record.get("rows"), list):
                done[record["key"]] = record
        return done

    def run(self) -> Any:
        """Run every unfinished cell; return all cells' rows as a tidy pandas DataFrame."""
        import pandas as pd

        done = self._done()
        cells = [(lang, cond) for cond in self.grid for lang in self.corpus]
        keys = self._keys(cells)
        # a stored cell counts only with one row per text (a cut or foreign record reruns)
        todo = [c for c in cells if len(done.get(keys[c], {}).get("rows", ())) != len(self.corpus[c[0]])]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for language, condition in tqdm(todo, desc="cells", disable=not self.progress, unit="cell"):
            rows = text_nll(self.model, self.corpus[language], *self.grid[condition], batch_size=self.batch_size)
            record = {"key": keys[(language, condition)], "language": language, "condition": condition,
                      "rows": rows}
            done[record["key"]] = record
            if self.path is not None:
                with open(self.path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        frame = [dict(language=lang, condition=cond, item=i, **row)
                 for lang, cond in cells for i, row in enumerate(done[keys[(lang, cond)]]["rows"])]
        return pd.DataFrame(frame)


def _mean_bpb(frame: Any, language: str, condition: str) -> float:
    rows = frame[(frame.language == language) & (frame.condition == condition)]
    return float(rows.bits_per_byte.mean())


@dataclasses.dataclass
class AblationResult:
    """Bits-per-byte change of each evaluation language when each target language's
    exclusive experts are ablated in each band. `delta[eval, (target, band)]`."""

    eval_languages: tuple[str, ...]
    conditions: tuple[tuple[str, str], ...]
    baseline: dict[str, float]
    delta: Any  # numpy [eval, condition]
    experts: dict[tuple[str, str], int]
    frame: Any

    def own_vs_other(self) -> dict[str, tuple[float, float]]:
        """Per evaluation language that is also a target: (mean delta when its own exclusive
        experts are ablated, mean delta when another language's are), over bands."""
        out = {}
        for i, lang in enumerate(self.eval_languages):
            own = [self.delta[i, j] for j, (t, _) in enumerate(self.conditions) if t == lang]
            other = [self.delta[i, j] for j, (t, _) in enumerate(self.conditions) if t != lang]
            if own and other:
                out[lang] = (float(np.mean(own)), float(np.mean(other)))
        return out

    def specificity(self) -> dict[str, tuple[float, float]]:
        """Per target that is also evaluated: (mean delta of the target itself, mean delta of
        the other evaluated languages) under the ablations of the target's experts. An
        ablation that hurts everyone alike removed a generally useful expert, not a
        language-specific one."""
        out = {}
        for i, lang in enumerate(self.eval_languages):
            columns = [j for j, (t, _) in enumerate(self.conditions) if t == lang]
            others = [r for r in range(len(self.eval_languages)) if r != i]
            if columns and others:
                out[lang] = (float(self.delta[i, columns].mean()), float(self.delta[np.ix_(others, columns)].mean()))
        return out

    def summary(self) -> str:
        """Honest sentences per language: does ablating its own experts hurt it more than
        ablating other languages' experts, and does it hurt it more than it hurts others?"""
        lines = []
        specific = self.specificity()
        for lang, (own, other) in self.own_vs_other().items():
            verdict = "more" if own > other else "not more"
            line = (f"{lang}: ablating its own exclusive experts changes bits/byte by {own:+.4f}, "
                    f"other languages' by {other:+.4f} on average ({verdict} harmful)")
            if lang in specific:
                itself, rest = specific[lang]
                kind = "language-specific" if itself > rest else "not language-specific"
                line += f"; the same ablations change the other languages by {rest:+.4f} ({kind})"
            lines.append(line)
        return "\n".join(lines)

    def plot_ablation(self) -> Any:
        """Heatmap of the delta matrix (evaluation language x ablated target/band)."""
        import plotly.graph_objects as go

        labels = [f"{t} / {b}" for t, b in self.conditions]
        fig = go.Figure(go.Heatmap(z=self.delta, x=labels, y=list(self.eval_languages), colorscale="RdBu_r",
                                   zmid=0, colorbar={"title": "Δ bits/byte"}))
        fig.update_layout(title="Layer-band ablation of language-exclusive experts",
                          xaxis_title="ablated language / band", yaxis_title="evaluated language")
        return fig


def ablation_grid(model: Any, stats: Any, corpus: Mapping[str, Sequence[str]], eval_languages: Sequence[str],
                  target_languages: Sequence[str], bands: Sequence[str] = BANDS, width: int | None = None,
                  k: int | None = None, threshold: float = 0.4, among: Sequence[str] | None = None,
                  path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> AblationResult:
    """The paper's ablation design: each target language's exclusive experts (from
    `stats`, exclusive among the languages `among`: by default the evaluation and target
    languages, as the paper's language set) rerouted in each band, evaluated on every
    evaluation language's held-out texts, against a no-ablation baseline. `k=None`: the
    paper's 15 of 128 experts scaled to the model (`mi.PAPER.scaled_k`).

    ```python
    >>> res = mi.ablation_grid(model, profile, heldout, ["eng", "deu"], ["eng", "deu"])
    >>> res.delta.shape                 # eval languages x (targets x bands)
    (2, 6)
    >>> print(res.summary()); res.plot_ablation()
    ```
    """
    spec = describe(model)
    among = list(among) if among is not None else list(dict.fromkeys([*eval_languages, *target_languages]))
    grid: dict[str, list] = {"baseline": []}
    experts = {}
    conditions = []
    for target in target_languages:
        for band in bands:
            chosen = stats.exclusive_experts(target, k=k, threshold=threshold, layers=spec.band(band, width=width),
                                             among=among)
            name = f"ablate:{target}:{band}"
            grid[name] = [ExpertAblate(chosen)]
            experts[(target, band)] = chosen.size
            conditions.append((target, band))
    experiment = Experiment(model, {l: corpus[l] for l in eval_languages}, grid, path=path, batch_size=batch_size,
                            progress=progress)
    frame = experiment.run()
    baseline = {l: _mean_bpb(frame, l, "baseline") for l in eval_languages}
    delta = np.array([[_mean_bpb(frame, l, f"ablate:{t}:{b}") - baseline[l] for t, b in conditions]
                      for l in eval_languages])
    return AblationResult(tuple(eval_languages), tuple(conditions), baseline, delta, experts, frame)


@dataclasses.dataclass
class SteeringResult:
    """Per-language gain in bits/byte (baseline - steered; positive = better) on the
    test split, at the scale chosen on the dev split only."""

    scale: float
    dev_scores: dict[float, float]
    table: Any  # pandas: language, gain, ci_low, ci_high, p_value, pairs

    def summary(self) -> str:
        lines = [f"scale {self.scale} chosen on the dev split only (mean dev bits/byte per scale: "
                 + ", ".join(f"{s}: {v:.4f}" for s, v in self.dev_scores.items()) + ")"]
        if self.scale == 0:
            lines.append("scale 0 won on dev: nothing is steered, so every gain below is 0 by construction")
        for row in self.table.itertuples():
            steered = f"{row.pairs} steered (layer, expert) pairs" if self.scale else "no steering"
            lines.append(f"{row.language}: gain {row.gain:+.4f} bits/byte, 95% CI [{row.ci_low:+.4f}, "
                         f"{row.ci_high:+.4f}], p = {row.p_value:.3f}, {steered}")
        return "\n".join(lines)

    def plot(self) -> Any:
        """Gains with their confidence intervals."""
        import plotly.graph_objects as go

        t = self.table
        fig = go.Figure(go.Bar(x=list(t.language), y=list(t.gain), error_y={
            "type": "data", "symmetric": False, "array": list(t.ci_high - t.gain), "arrayminus": list(t.gain - t.ci_low)}))
        fig.update_layout(title=f"Routing-guided steering (scale {self.scale})", xaxis_title="language",
                          yaxis_title="gain in bits/byte (baseline - steered)")
        return fig


def _paired_bootstrap(diff: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    if len(diff) == 0 or np.all(diff == 0):
        return 0.0, 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return float(low), float(high), float(p)


def steering_eval(model: Any, stats: Any, dev: Mapping[str, Sequence[str]], test: Mapping[str, Sequence[str]],
                  languages: Sequence[str], target: str = "eng", scales: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2),
                  layers: Any = "middle", k: int | None = None, threshold: float = 0.7, samples: int = 2000, seed: int = 0,
                  path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> SteeringResult:
    """Routing-guided steering, evaluated honestly.

    For each language `l`, steer toward the experts shared by `(target, l)` (the paper's
    RouteSteer); choose the scale minimising mean bits/byte on `dev`; report on `test`
    each language's gain with a paired bootstrap 95% CI and two-sided p-value. `k=None`:
    the paper's 20 of 128 experts scaled to the model, as `RouteSteer`.

    ```python
    >>> res = mi.steering_eval(model, profile, dev, heldout, ["deu", "fra"], target="eng")
    >>> print(res.summary()); res.plot()
    ```
    """
    def grid(scale: float) -> dict[str, list]:
        return {lang: [RouteSteer(layers=layers, target=target, stats=stats, languages=(target, lang), k=k,
                                  threshold=threshold, scale=scale)] for lang in languages}

    def run(corpus: Mapping, scale: float, split: str) -> Any:
        frames = []
        for lang, interventions in grid(scale).items():
            cond = {"baseline": [], f"steer:{scale}": interventions} if scale else {"baseline": []}
            frame = Experiment(model, {lang: list(corpus[lang])}, cond, path=path, batch_size=batch_size,
                               progress=False).run()
            if not scale:
                frame = frame.assign(condition="baseline")
                frame = pd.concat([frame, frame.assign(condition=f"steer:{scale}")])
            frames.append(frame.assign(split=split))
        return pd.concat(frames)

    import tempfile

    import pandas as pd

    # Check everything before the first cell: a bad k must not cost the baselines' compute.
    dev, test, scales = check_corpus(dev), check_corpus(test), [float(s) for s in scales]
    if not scales:
        raise ValueError("scales is empty: pass the steering scales to choose from, e.g. (0.0, 0.02, 0.05)")
    missing = [lang for lang in languages if lang not in dev or lang not in test]
    if missing:
        raise ValueError(f"languages {missing} are missing from dev or test; both need texts for every language")
    spec = describe(model)
    for scale in scales:
        for interventions in grid(scale).values():
            if scale:
                interventions[0].expert_set(spec)
    if path is None:  # cells are still cached within this call: the baseline runs once per split
        path = Path(tempfile.mkdtemp(prefix="moe_interp_steer_")) / "cells.jsonl"
    dev_scores = {}
    for scale in tqdm(list(scales), desc="dev scales", disable=not progress):
        frame = run(dev, scale, "dev")
        dev_scores[float(scale)] = float(frame[frame.condition == f"steer:{scale}"].bits_per_byte.mean())
    best = min(dev_scores, key=lambda s: (dev_scores[s], abs(s)))
    frame = run(test, best, "test")
    rows = []
    for i, lang in enumerate(languages):
        base = frame[(frame.language == lang) & (frame.condition == "baseline")].sort_values("item").bits_per_byte
        steer = frame[(frame.language == lang) & (frame.condition == f"steer:{best}")].sort_values("item").bits_per_byte
        diff = base.to_numpy() - steer.to_numpy()
        low, high, p = _paired_bootstrap(diff, samples, seed + i)
        pairs = grid(best)[lang][0].expert_set(spec).size
        rows.append({"language": lang, "gain": float(diff.mean()) if len(diff) else 0.0, "ci_low": low,
                     "ci_high": high, "p_value": p, "pairs": pairs})
    return SteeringResult(best, dev_scores, pd.DataFrame(rows))
