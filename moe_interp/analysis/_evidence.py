"""Evidence behind a verdict: bootstrap intervals over items, label-permutation p-values,
random-init twins and a model-free baseline, for how routing follows language families.

A headline number ("routing follows families: ARI 0.29") means little alone. `family_evidence`
puts next to each statistic a paired bootstrap interval (the same texts resampled for every
model compared), a p-value from shuffling the family labels, the value of each random-init
twin and of a model-free baseline (`ngram_stats`), and the paired differences with theirs.
"""

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.stats import norm

from .._counts import RoutingCounts
from ._clustering import adjusted_rand_index, family_agreement
from ._divergence import divergence

__all__ = ["FamilyEvidence", "Interval", "family_evidence", "hierarchical_interval", "interval", "paired_interval",
           "stratified_interval"]

FAMILY_STATISTICS = ("ari", "between_within")
Values = Sequence[float] | np.ndarray  # one value per item (text)
_KINDS = ("percentile", "basic", "normal")


class Interval(NamedTuple):
    """An estimate with its `level` confidence interval and a two-sided bootstrap p-value
    (twice the smaller share of replicates on either side of 0; 1.0 when every value is 0).

    ```python
    >>> from moe_interp.analysis import Interval
    >>> Interval(0.3, 0.1, 0.5, 0.02)._asdict()
    {'estimate': 0.3, 'low': 0.1, 'high': 0.5, 'p_value': 0.02}

    ```
    """

    estimate: float
    low: float
    high: float
    p_value: float


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level (the interval's coverage) must be a number in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def interval(estimate: float, samples: Values, level: float = 0.95, kind: str = "percentile") -> tuple[float, float]:
    """The `level` interval of `estimate` from its bootstrap `samples` (nan replicates ignored).

    `kind`: `"percentile"` (the samples' quantiles), `"basic"` (the quantiles reflected
    around the estimate, `2 * estimate - q`, which undoes a shift of the replicates) or
    `"normal"` (`estimate +- z * sd` of the samples).

    ```python
    >>> import numpy as np
    >>> from moe_interp.analysis import interval
    >>> samples = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> interval(3.0, samples, level=0.5), interval(2.0, samples, level=0.5, kind="basic")
    ((2.0, 4.0), (0.0, 2.0))

    ```
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    level = _check_level(level)
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples) or np.isnan(estimate):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    if kind == "normal":
        spread = norm.ppf(1 - alpha) * (samples.std(ddof=1) if len(samples) > 1 else 0.0)
        return float(estimate - spread), float(estimate + spread)
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    if kind == "basic":
        return float(2 * estimate - high), float(2 * estimate - low)
    return float(low), float(high)


def _p_value(samples: np.ndarray) -> float:
    if not len(samples) or np.all(samples == 0):
        return 1.0
    return float(min(1.0, 2 * min((samples <= 0).mean(), (samples >= 0).mean())))


def _means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    return values[draws].mean(-1) if values.size else np.zeros(len(draws))


def paired_interval(values: Values, replicates: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-item `values` (e.g. steered minus baseline bits/byte of each text) with a
    percentile bootstrap interval over items and a two-sided bootstrap p-value.

    Paired: each value is one item's difference between two conditions on the same text, so
    the resampling unit is the text.

    ```python
    >>> from moe_interp.analysis import paired_interval
    >>> paired_interval([0.0, 0.0, 0.0])
    Interval(estimate=0.0, low=0.0, high=0.0, p_value=1.0)
    >>> r = paired_interval([0.9, 1.1, 1.0, 1.2, 0.8], replicates=500)
    >>> round(r.estimate, 2), r.low > 0.8, r.high < 1.2, r.p_value
    (1.0, True, True, 0.0)

    ```
    """
    return stratified_interval([values], replicates, level, seed)


def stratified_interval(groups: Sequence[Values], replicates: int = 2000, level: float = 0.95,
                        seed: int = 0) -> Interval:
    """Mean over groups of each group's mean (e.g. one group per language, one value per
    text), with a percentile bootstrap interval that resamples items within each group.

    ```python
    >>> from moe_interp.analysis import stratified_interval
    >>> r = stratified_interval([[1.0, 1.0, 1.0], [3.0, 3.0]])     # no spread within groups
    >>> r.estimate, r.low, r.high
    (2.0, 2.0, 2.0)

    ```
    """
    replicates, level = _check_int("replicates", replicates, 1), _check_level(level)
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.ndim != 1 or not len(g) for g in groups):
        raise ValueError("every group needs at least one value (one per item)")
    rng = np.random.default_rng(seed)
    samples = np.mean([_means(g, rng.integers(0, len(g), (replicates, len(g)))) for g in groups], axis=0)
    estimate = float(np.mean([g.mean() for g in groups]))
    if np.all(np.concatenate(groups) == 0):
        return Interval(0.0, 0.0, 0.0, 1.0)
    return Interval(estimate, *interval(estimate, samples, level), _p_value(samples))


def resampled_means(groups: Sequence[Values], replicates: int = 2000, seed: int = 0,
                    unit: str = "item") -> tuple[float, np.ndarray]:
    """`(estimate, samples)`: the mean over groups of each group's mean, and `replicates`
    bootstrap replicates of it. `unit="item"`: items (texts) are drawn with replacement within
    each group, the groups kept (claims about these groups); `unit="group"`: the groups are
    drawn with replacement first, then the items within each drawn group (claims about the
    population the groups come from, e.g. a family's languages). Replicates of two estimates
    can be subtracted for the interval of a difference (`interval`).

    ```python
    >>> from moe_interp.analysis._evidence import resampled_means
    >>> estimate, samples = resampled_means([[1.0, 1.0], [3.0]], replicates=4, unit="item")
    >>> estimate, samples.tolist()
    (2.0, [2.0, 2.0, 2.0, 2.0])

    ```
    """
    replicates = _check_int("replicates", replicates, 1)
    if unit not in ("item", "group"):
        raise ValueError(f"unit must be 'item' (resample texts within each group) or 'group' (resample the groups, "
                         f"then their texts), got {unit!r}")
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.ndim != 1 or not len(g) for g in groups):
        raise ValueError("every group needs at least one value (one per item)")
    estimate = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    if unit == "item":
        return estimate, np.mean([_means(g, rng.integers(0, len(g), (replicates, len(g)))) for g in groups], axis=0)
    picked = rng.integers(0, len(groups), (replicates, len(groups)))
    samples = np.empty(replicates)
    for r in range(replicates):
        samples[r] = np.mean([groups[g][rng.integers(0, len(groups[g]), len(groups[g]))].mean() for g in picked[r]])
    return estimate, samples


def hierarchical_interval(groups: Sequence[Values], replicates: int = 2000, level: float = 0.95,
                          seed: int = 0) -> Interval:
    """Mean over groups of each group's mean, with an interval whose unit of inference is the
    group: each replicate draws the groups with replacement, then the items within each drawn
    group with replacement (a two-stage, hierarchical bootstrap). Use it when the claim is about
    the groups (languages of a family, say), not about these particular groups' texts; with one
    group it resamples texts only.

    ```python
    >>> from moe_interp.analysis import hierarchical_interval, stratified_interval
    >>> groups = [[1.0, 1.0, 1.0], [3.0, 3.0], [2.0, 2.0]]       # no spread within groups, some between
    >>> stratified_interval(groups).high - stratified_interval(groups).low
    0.0
    >>> r = hierarchical_interval(groups, replicates=500)
    >>> r.estimate, r.low < 2.0 < r.high
    (2.0, True)

    ```
    """
    level = _check_level(level)
    estimate, samples = resampled_means(groups, replicates, seed, unit="group")
    if np.all(samples == 0) and estimate == 0:
        return Interval(0.0, 0.0, 0.0, 1.0)
    return Interval(estimate, *interval(estimate, samples, level), _p_value(samples))


# -- family structure ------------------------------------------------------------------------

def _statistics(distance: np.ndarray, codes: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
    """[ARI of the average-linkage tree cut at as many clusters as families, mean between-family
    divergence / mean within-family divergence] of one `[lang, lang]` divergence matrix;
    `clusters` (that cut) is computed unless given, as a permutation test reuses it."""
    if np.isnan(distance).any():
        return np.full(2, np.nan)
    if clusters is None:
        clusters = _clusters(distance, len(np.unique(codes)))
    same = codes[:, None] == codes[None, :]
    upper = np.triu(np.ones_like(same), 1)
    within, between = distance[same & upper].mean(), distance[~same & upper].mean()
    return np.array([adjusted_rand_index(clusters.tolist(), codes.tolist()), between / within if within > 0 else np.nan])


def _clusters(distance: np.ndarray, n: int) -> np.ndarray:
    return fcluster(linkage(squareform(distance, checks=False), method="average"), t=n, criterion="maxclust")


def _distance(count: torch.Tensor, tokens: torch.Tensor, like: RoutingCounts, metric: str, layers: Any) -> np.ndarray:
    stats = RoutingCounts(like.languages, like.layers, like.num_experts, like.top_k, count,
                         torch.zeros(count.shape, dtype=torch.float64), tokens)
    return divergence(stats, metric, layers).mean(0).numpy()


def _items(stats: RoutingCounts, name: str) -> list[torch.Tensor]:
    if stats.item_count is None:
        raise ValueError(f"{name} keeps no per-item counts (item_count); profile it with mi.profile (or build the "
                         "baseline with mi.analysis.ngram_stats), which keep them, to resample texts")
    return [(stats.item_language == lang).nonzero().flatten() for lang in range(len(stats.languages))]


@dataclasses.dataclass(frozen=True, eq=False)
class FamilyEvidence:
    """How routing follows language families, with the evidence for it (see `family_evidence`).

    **Fields:** `languages`, `families` (one label per language), `layers` (real MoE layer
    indices used), `models` (`"trained"`, then each twin's name, then `"baseline"` if given),
    `estimate` (`[model, statistic]`), `samples` (`[replicate, model, statistic]`, paired:
    replicate `r` resamples the same texts for every model), `p_value` (`[model,
    statistic]`, label permutation), `level`, `kind` (interval kind), `articles` (True when
    the same article indices were drawn in every language), `statistics` (`"ari"`,
    `"between_within"`). `family_evidence` builds one (its example shows the numbers).

    ```python
    >>> import dataclasses
    >>> from moe_interp.analysis import FamilyEvidence
    >>> [f.name for f in dataclasses.fields(FamilyEvidence)][:4]
    ['languages', 'families', 'layers', 'models']

    ```
    """

    languages: tuple[str, ...]
    families: tuple[str, ...]
    layers: tuple[int, ...]
    models: tuple[str, ...]
    estimate: np.ndarray
    samples: np.ndarray
    p_value: np.ndarray
    level: float
    kind: str
    articles: bool
    statistics: tuple[str, ...] = FAMILY_STATISTICS

    def _cell(self, model: str, statistic: str) -> tuple[int, int]:
        if model not in self.models:
            raise KeyError(f"model {model!r} is not one of {list(self.models)}")
        if statistic not in self.statistics:
            raise KeyError(f"statistic {statistic!r} is not one of {list(self.statistics)}")
        return self.models.index(model), self.statistics.index(statistic)

    def interval(self, model: str = "trained", statistic: str = "ari") -> tuple[float, float, float]:
        """`(estimate, low, high)` of one model's statistic."""
        m, s = self._cell(model, statistic)
        estimate = float(self.estimate[m, s])
        return (estimate, *interval(estimate, self.samples[:, m, s], self.level, self.kind))

    def difference(self, model: str, statistic: str = "ari") -> tuple[float, float, float]:
        """`(estimate, low, high)` of trained minus `model`, paired over the same resampled texts."""
        m, s = self._cell(model, statistic)
        estimate = float(self.estimate[0, s] - self.estimate[m, s])
        return (estimate, *interval(estimate, self.samples[:, 0, s] - self.samples[:, m, s], self.level, self.kind))

    def table(self) -> Any:
        """One row per (statistic, model): estimate, interval, permutation p-value, and the
        trained model's paired difference from it with its interval (nan on the trained row)."""
        import pandas as pd

        rows = []
        for statistic in self.statistics:
            for model in self.models:
                estimate, low, high = self.interval(model, statistic)
                diff = self.difference(model, statistic) if model != self.models[0] else (np.nan,) * 3
                rows.append({"statistic": statistic, "model": model, "estimate": estimate, "low": low, "high": high,
                             "p_value": float(self.p_value[self._cell(model, statistic)]),
                             "difference": diff[0], "difference_low": diff[1], "difference_high": diff[2]})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line per statistic and model, intervals and p-values written out."""
        pct = round(100 * self.level)
        lines = [f"{len(self.languages)} languages in {len(set(self.families))} families, layers "
                 f"{self.layers[0]}-{self.layers[-1]}; {pct}% intervals over {len(self.samples)} resamples of the texts"
                 f" ({'same articles in every language' if self.articles else 'within each language'})"]
        for row in self.table().itertuples():
            line = (f"{row.statistic} {row.model}: {row.estimate:.3f} [{row.low:.3f}, {row.high:.3f}], "
                    f"label-permutation p = {row.p_value:.3g}")
            if not np.isnan(row.difference):
                line += f"; trained - {row.model} = {row.difference:+.3f} [{row.difference_low:+.3f}, " \
                        f"{row.difference_high:+.3f}]"
            lines.append(line)
        return "\n".join(lines)


def family_evidence(stats: RoutingCounts, families: Mapping[str, str] | None = None, layers: Any = "middle",
                    twins: Sequence[RoutingCounts] | Mapping[str, RoutingCounts] = (),
                    baseline: RoutingCounts | None = None, replicates: int = 200, permutations: int = 1000,
                    level: float = 0.95, seed: int = 0, metric: str = "js", script: str | None = None,
                    kind: str = "normal") -> FamilyEvidence:
    """Family structure of routing with its evidence: ARI and between/within-family divergence.

    Statistics, on the `[lang, lang]` divergence (`metric`) averaged over `layers`:
    `"ari"`, the adjusted Rand index of the average-linkage tree cut at as many clusters as
    families against the families; `"between_within"`, the mean divergence of languages
    of different families over that of languages of the same family (> 1: families route
    alike). For each: a paired bootstrap over texts (`replicates`; when every language has
    as many texts, the same article indices are drawn in every language, as for a parallel
    corpus; otherwise texts are drawn within each language), the same draws applied to each
    twin and to the baseline, so `difference` intervals are paired; and a label-permutation
    p-value (family labels shuffled `permutations` times over the languages, the tree kept:
    `(1 + #{permuted >= observed}) / (1 + permutations)`).

    **Arguments:** `families`: `{language: family}` (default: `mi.languages`, as
    `family_agreement`); `twins`: random-init twins' stats (a list, or `{name: stats}`)
    profiled on the same texts; `baseline`: a model-free baseline on the same texts, e.g.
    `mi.analysis.ngram_stats(corpus)` (all its layers are used); `script`: keep only the
    languages written in it (`"Latn"`); `kind`: interval kind (see `interval`; `"normal"`
    by default, since resampling repeats texts and shifts ARI and divergence replicates).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> from moe_interp.analysis import family_evidence
    >>> langs = ("a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4")
    >>> fams = {l: l[0].upper() for l in langs}                  # families A and B
    >>> item = torch.zeros(32, 1, 4, dtype=torch.long)        # 4 texts per language, 4 experts
    >>> for i in range(32):                                    # family A uses experts 0-1, family B 2-3
    ...     item[i, 0, [0, 1] if i < 16 else [2, 3]] = 5
    ...     item[i, 0, i % 4] += 2                             # each text a little different
    >>> lang = torch.arange(8).repeat_interleave(4)
    >>> count = torch.zeros(8, 1, 4, dtype=torch.long).index_add_(0, lang, item)
    >>> stats = mi.RoutingStats(langs, (0,), 4, 2, count, count.double(), count.sum((1, 2)) // 2,
    ...                         item, item.sum((1, 2)) // 2, lang)
    >>> ev = family_evidence(stats, families=fams, layers=None, replicates=50, permutations=500)
    >>> ev.interval("trained", "ari")[0], float(ev.p_value[0, 0]) < 0.05   # 2 of 70 splits are this one
    (1.0, True)

    ```
    """
    for name, value, low in (("replicates", replicates, 1), ("permutations", permutations, 1), ("seed", seed, 0)):
        _check_int(name, value, low)
    level = _check_level(level)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    named = dict(twins) if isinstance(twins, Mapping) else {f"twin {i + 1}": t for i, t in enumerate(twins)}
    agreement = family_agreement(stats, metric, layers, families=families, script=script)
    languages, labels = agreement.languages, agreement.families
    if len(set(labels)) < 2:
        raise ValueError(f"the languages {list(languages)} all belong to one family ({labels[0]}); family structure "
                         "needs at least two families")
    models = {"trained": stats, **named, **({"baseline": baseline} if baseline is not None else {})}
    chosen = {}
    for name, model in models.items():
        missing = [l for l in languages if l not in model.languages]
        if missing:
            raise ValueError(f"{name} has no counts for {missing[:5]}; profile every model on the same texts")
        chosen[name] = model.select(list(languages))
    members = {name: _items(model, name) for name, model in chosen.items()}
    sizes = [len(m) for m in members["trained"]]
    for name, parts in members.items():
        if [len(m) for m in parts] != sizes:
            raise ValueError(f"{name} has other numbers of texts per language than the trained model's stats; "
                             "profile every model (and the baseline) on the same texts, so resamples are paired")
    use_layers = {name: (None if name == "baseline" else layers) for name in chosen}
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    articles = len(set(sizes)) == 1
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(replicates):
        if articles:
            shared = rng.integers(0, sizes[0], sizes[0])
            draws.append([shared] * len(sizes))
        else:
            draws.append([rng.integers(0, n, n) for n in sizes])

    def resampled(name: str, draw: list[np.ndarray]) -> np.ndarray:
        model, parts = chosen[name], members[name]
        picked = torch.cat([part[torch.as_tensor(d, dtype=torch.long)] for part, d in zip(parts, draw)])
        owner = model.item_language[picked]
        count = torch.zeros(model.count.shape, dtype=torch.long).index_add_(0, owner, model.item_count[picked].long())
        tokens = torch.zeros(len(languages), dtype=torch.long).index_add_(0, owner, model.item_tokens[picked].long())
        return _statistics(_distance(count, tokens, model, metric, use_layers[name]), codes)

    estimate, samples, p_value = [], [], []
    for name, model in chosen.items():
        distance = _distance(model.count.long(), model.tokens.long(), model, metric, use_layers[name])
        clusters = _clusters(distance, len(set(labels)))  # the tree stays; only the labels are shuffled
        observed = _statistics(distance, codes, clusters)
        shuffled = np.array([_statistics(distance, rng.permutation(codes), clusters) for _ in range(permutations)])
        estimate.append(observed)
        p_value.append((1 + (shuffled >= observed).sum(0)) / (1 + permutations))
        samples.append(np.array([resampled(name, draw) for draw in draws]))
    used = tuple(stats.layers[i] for i in stats.layer_positions(layers))
    return FamilyEvidence(tuple(languages), tuple(labels), used, tuple(chosen), np.array(estimate),
                          np.stack(samples, axis=1), np.array(p_value), level, kind, articles)
