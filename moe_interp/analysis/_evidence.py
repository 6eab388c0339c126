"""Evidence behind a verdict: intervals at the unit the claim is about, label-permutation
p-values, random-init twins and model-free baselines, for how routing follows language families
and how a training recipe changes it.

**One interval method.** Every interval moe_interp reports (`interval`, the intervals below,
`bootstrap`, ablation and steering verdicts) is a *percentile bootstrap* interval: the
`(1 - level) / 2` and `(1 + level) / 2` quantiles of the bootstrap replicates (numpy's default
linear interpolation), `nan` replicates left out. Why percentile and not BCa or normal: it
needs nothing but the replicates, so it means the same thing for every statistic and every
caller; it respects monotone transformations (a ratio and its log get the same interval);
and it never leaves the range the statistic can take (an ARI interval stays <= 1, which
`estimate +- 1.96 sd` does not). What it does not do is correct
bias: where a statistic's own estimate sits far in a tail of its replicates, the interval is
off-centre around it. Redrawing texts within a language does that to plug-in divergences (a
redrawn set repeats some texts, which makes distributions look further apart): on the demo
model's middle band, text-level replicates put a random-init twin's ARI at their 98.5th
percentile and all of the byte-bigram baseline's between/within below its estimate. The
language-level resampling that family claims use keeps each language's texts whole, and there
every estimate sits between the 17th and 72nd percentile of its replicates. BCa's correction
for an estimate at the 98.5th percentile would move both endpoints to the 99th-100th percentile
of 200 replicates, decided by two or three of them: less stable, not more honest; and its
acceleration needs a jackknife of each statistic, which the ablation and steering replicates do
not have. `FamilyEvidence.table()` and `LayerEvidence.table()` report each estimate's
`position` among its replicates, so an off-centre interval is visible.

**Units of inference.** A claim's interval resamples the unit the claim is about:

- text (`unit="item"` / `"text"`): texts redrawn within each language, the languages
  fixed: how precisely these texts measure these languages (`stratified_interval`,
  `paired_interval`, ablation and steering effects on given languages);
- language (the default of `family_evidence` and `layer_evidence`): languages redrawn with
  replacement, each keeping all its texts (a cluster bootstrap): claims about languages and
  families, which would hold for other languages of the same families. For statistics of
  per-text values, `hierarchical_interval` / `resampled_means(unit="group")` draw the texts
  of each drawn language again (two stages); for divergences the texts are kept, see
  `family_evidence` for why;
- seed: one value per training run, trained runs against random-init twins: claims about a
  training recipe (`seed_test`: an exact rank test and a seed-level bootstrap).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.special import xlogy

from moe_interp.core._checks import check_int, check_level
from moe_interp.core._counts import RoutingCounts
from moe_interp.analysis._clustering import family_agreement
from moe_interp.analysis._divergence import divergence

__all__ = ["FamilyEvidence", "Interval", "LayerEvidence", "SeedTest", "family_evidence", "hierarchical_interval",
           "interval", "layer_evidence", "paired_interval", "seed_test", "stratified_interval"]

FAMILY_STATISTICS = ("ari", "between_within")
LAYER_STATISTICS = ("mean_divergence", "between_within")
METHOD = "percentile"  # the one interval method (module docstring)
UNITS = ("language", "text")
Values = Sequence[float] | np.ndarray  # one value per item (text)
_LN2 = math.log(2)
_ENUMERATION_LIMIT = 1_000_000  # seed_test: assignments of the pooled values enumerated at most


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


def _refuse_kind(kind: Any) -> None:
    if kind is not None:
        raise ValueError(f"kind={kind!r}: the choice of interval kind was removed; every interval is a "
                         "percentile bootstrap interval (see the module docstring of moe_interp.analysis._evidence "
                         "for why). Drop the kind argument")


def interval(estimate: float, samples: Values, level: float = 0.95, *, kind: Any = None) -> tuple[float, float]:
    """The `level` percentile bootstrap interval of `estimate` from its bootstrap `samples`:
    their `(1 - level) / 2` and `(1 + level) / 2` quantiles, `nan` replicates left out; `(nan,
    nan)` when the estimate is nan or no replicate is left. The one interval method of the
    package (why percentile: the module docstring of `moe_interp.analysis._evidence`).
    `kind` was removed: passing one raises.

    ```python
    >>> import numpy as np
    >>> from moe_interp.analysis import interval
    >>> samples = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> interval(3.0, samples, level=0.5)
    (2.0, 4.0)

    ```
    """
    _refuse_kind(kind)
    level = check_level(level)
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples) or np.isnan(estimate):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def _p_value(samples: np.ndarray) -> float:
    if not len(samples) or np.all(samples == 0):
        return 1.0
    return float(min(1.0, 2 * min((samples <= 0).mean(), (samples >= 0).mean())))


def _means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    return values[draws].mean(-1) if values.size else np.zeros(len(draws))


def paired_interval(values: Values, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-item `values` (e.g. steered minus baseline bits/byte of each text) with a
    percentile bootstrap interval over items (the package's one method, see `interval`) and a
    two-sided bootstrap p-value.

    Paired: each value is one item's difference between two conditions on the same text, so
    the resampling unit is the text.

    ```python
    >>> from moe_interp.analysis import paired_interval
    >>> paired_interval([0.0, 0.0, 0.0])
    Interval(estimate=0.0, low=0.0, high=0.0, p_value=1.0)
    >>> r = paired_interval([0.9, 1.1, 1.0, 1.2, 0.8], resamples=500)
    >>> round(r.estimate, 2), r.low > 0.8, r.high < 1.2, r.p_value
    (1.0, True, True, 0.0)

    ```
    """
    return stratified_interval([values], resamples, level, seed)


def stratified_interval(groups: Sequence[Values], resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> Interval:
    """Mean over groups of each group's mean (e.g. one group per language, one value per
    text), with a percentile bootstrap interval (see `interval`) that resamples items within
    each group, the groups kept: the unit is the text (`hierarchical_interval` resamples the
    groups too).

    ```python
    >>> from moe_interp.analysis import stratified_interval
    >>> r = stratified_interval([[1.0, 1.0, 1.0], [3.0, 3.0]])     # no spread within groups
    >>> r.estimate, r.low, r.high
    (2.0, 2.0, 2.0)

    ```
    """
    level = check_level(level)
    estimate, samples = resampled_means(groups, resamples, seed, unit="item")
    if np.all(np.concatenate([np.asarray(g, dtype=float) for g in groups]) == 0):
        return Interval(0.0, 0.0, 0.0, 1.0)
    return Interval(estimate, *interval(estimate, samples, level), _p_value(samples))


def resampled_means(groups: Sequence[Values], resamples: int = 2000, seed: int = 0,
                    unit: str = "item") -> tuple[float, np.ndarray]:
    """`(estimate, samples)`: the mean over groups of each group's mean, and `resamples`
    bootstrap replicates of it. `unit="item"`: items (texts) are drawn with replacement within
    each group, the groups kept (claims about these groups); `unit="group"`: the groups are
    drawn with replacement first, then the items within each drawn group (claims about the
    population the groups come from, e.g. a family's languages). Replicates of two estimates
    can be subtracted for the interval of a difference (`interval`).

    ```python
    >>> from moe_interp.analysis._evidence import resampled_means
    >>> estimate, samples = resampled_means([[1.0, 1.0], [3.0]], resamples=4, unit="item")
    >>> estimate, samples.tolist()
    (2.0, [2.0, 2.0, 2.0, 2.0])

    ```
    """
    resamples = check_int("resamples", resamples, 1)
    if unit not in ("item", "group"):
        raise ValueError(f"unit must be 'item' (resample texts within each group) or 'group' (resample the groups, "
                         f"then their texts), got {unit!r}")
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.ndim != 1 or not len(g) for g in groups):
        raise ValueError("every group needs at least one value (one per item)")
    estimate = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    if unit == "item":
        return estimate, np.mean([_means(g, rng.integers(0, len(g), (resamples, len(g)))) for g in groups], axis=0)
    picked = rng.integers(0, len(groups), (resamples, len(groups)))
    samples = np.empty(resamples)
    for r in range(resamples):
        samples[r] = np.mean([groups[g][rng.integers(0, len(groups[g]), len(groups[g]))].mean() for g in picked[r]])
    return estimate, samples


def hierarchical_interval(groups: Sequence[Values], resamples: int = 2000, level: float = 0.95,
                          seed: int = 0) -> Interval:
    """Mean over groups of each group's mean, with a percentile interval (see `interval`) whose
    unit of inference is the group: each replicate draws the groups with replacement, then the
    items within each drawn group with replacement (a two-stage, hierarchical bootstrap). Use it
    when the claim is about the groups (languages of a family, say), not about these particular
    groups' texts; with one group it resamples texts only.

    ```python
    >>> from moe_interp.analysis import hierarchical_interval, stratified_interval
    >>> groups = [[1.0, 1.0, 1.0], [3.0, 3.0], [2.0, 2.0]]       # no spread within groups, some between
    >>> stratified_interval(groups).high - stratified_interval(groups).low
    0.0
    >>> r = hierarchical_interval(groups, resamples=500)
    >>> r.estimate, r.low < 2.0 < r.high
    (2.0, True)

    ```
    """
    level = check_level(level)
    estimate, samples = resampled_means(groups, resamples, seed, unit="group")
    if np.all(samples == 0) and estimate == 0:
        return Interval(0.0, 0.0, 0.0, 1.0)
    return Interval(estimate, *interval(estimate, samples, level), _p_value(samples))


# -- seed level: claims about a training recipe -------------------------------------------------

class SeedTest(NamedTuple):
    """A recipe claim tested at the seed level (see `seed_test`): `difference` = mean(trained)
    - mean(controls) with its percentile interval `low`, `high` (seeds resampled within each
    group), the exact one-sided Mann-Whitney `p_value` (trained > controls), its statistic `u`
    (pairs with trained above, ties counting 1/2), `min_p` (the smallest p-value these group
    sizes can give), the numbers of seeds `n_trained`, `n_controls`, and `level`.

    ```python
    >>> from moe_interp.analysis import SeedTest
    >>> SeedTest._fields[:4]
    ('difference', 'low', 'high', 'p_value')

    ```
    """

    difference: float
    low: float
    high: float
    p_value: float
    u: float
    min_p: float
    n_trained: int
    n_controls: int
    level: float

    def summary(self) -> str:
        """One line: the difference, its interval, the rank test, and what the seed count allows."""
        pct = round(100 * self.level)
        return (f"trained - controls = {self.difference:+.4g} [{self.low:+.4g}, {self.high:+.4g}] ({pct}% percentile "
                f"bootstrap over seeds; {self.n_trained} trained vs {self.n_controls} control seeds); exact rank test "
                f"(trained > controls) U = {self.u:g}, p = {self.p_value:.3g} (smallest attainable {self.min_p:.3g})")


def _u(trained: np.ndarray, controls: np.ndarray) -> float:
    return float((trained[:, None] > controls[None, :]).sum() + 0.5 * (trained[:, None] == controls[None, :]).sum())


def seed_test(trained: Values, controls: Values, level: float = 0.95, resamples: int = 10000,
              seed: int = 0) -> SeedTest:
    """Is a statistic higher for models trained with a recipe than for their controls, at the
    level of the unit a recipe claim is about, the training run (one value per seed)?

    **Returns** a `SeedTest`: the one-sided exact Mann-Whitney test of trained > controls,
    by full enumeration of the `C(n + m, n)` ways to split the pooled values into groups of
    the two sizes (`p` = share of splits whose U is at least the observed one; ties count
    1/2 in U and the enumeration conditions on them, where `scipy.stats.mannwhitneyu(method=
    "exact")` ignores ties); and `mean(trained) - mean(controls)` with a percentile bootstrap
    interval (`resamples` draws of each group's seeds with replacement, see `interval`).

    **What few seeds can show.** With `n` trained and `m` control seeds the smallest attainable
    one-sided p is `1 / C(n + m, n)`: 3 vs 3 gives 1/20 = 0.05, reached only when all three
    trained values lie above all three controls; no outcome of 3 vs 3 gets below 0.05, and
    2 vs 2 cannot get below 1/6. So 3 vs 3 can show that the ordering is as complete as it
    can be, not a small p; and a bootstrap over 3 values has 10 distinct resamples and
    underestimates the spread (by a factor (n - 1) / n in variance): read its interval as a
    description of these seeds, not as coverage. More seeds are the remedy.

    ```python
    >>> from moe_interp.analysis import seed_test
    >>> r = seed_test([0.25, 0.27, 0.24], [0.10, 0.12, 0.08])   # every trained run above every twin
    >>> r.p_value, r.min_p, r.u
    (0.05, 0.05, 9.0)
    >>> round(r.difference, 3), r.low > 0
    (0.153, True)
    >>> seed_test([0.25, 0.09, 0.24], [0.10, 0.12, 0.08]).p_value   # one trained run among the twins
    0.2

    ```
    """
    level = check_level(level)
    resamples, seed = check_int("resamples", resamples, 1), check_int("seed", seed, 0)
    a, b = (np.asarray(v, dtype=float) for v in (trained, controls))
    for name, v in (("trained", a), ("controls", b)):
        if v.ndim != 1 or not len(v) or np.isnan(v).any():
            raise ValueError(f"{name} must be a non-empty sequence of numbers, one per seed (no nan), got {v!r}")
    n, m = len(a), len(b)
    total = math.comb(n + m, n)
    if total > _ENUMERATION_LIMIT:
        raise ValueError(f"{n} + {m} values have {total} splits to enumerate (limit {_ENUMERATION_LIMIT}); use "
                         "scipy.stats.mannwhitneyu(method='asymptotic') for that many runs")
    pooled = np.concatenate([a, b])
    observed = _u(a, b)
    at_least = 0
    for chosen in combinations(range(n + m), n):
        mask = np.zeros(n + m, dtype=bool)
        mask[list(chosen)] = True
        at_least += _u(pooled[mask], pooled[~mask]) >= observed - 1e-9
    rng = np.random.default_rng(seed)
    samples = a[rng.integers(0, n, (resamples, n))].mean(1) - b[rng.integers(0, m, (resamples, m))].mean(1)
    difference = float(a.mean() - b.mean())
    return SeedTest(difference, *interval(difference, samples, level), at_least / total, observed, 1 / total, n, m,
                    level)


# -- family structure at the language level -----------------------------------------------------

def _js(p: np.ndarray) -> np.ndarray:
    """`[lang, lang]` Jensen-Shannon divergence (bits) between the rows of `p` (`[lang, expert]`,
    each summing to 1, or nan for a language with no tokens): the quantity of `divergence(...,
    "js")`, summed over each row's support only, so sparse rows (exact byte n-grams: thousands
    of columns, a few hundred used per language) cost what they use. Outside the support of p
    a term is q log2(2) = q, so JS(p, q) = 1/2 + 1/2 sum over p > 0 of
    [p log2(2p / (p + q)) + q log2(2q / (p + q)) - q]."""
    n = len(p)
    out = np.zeros((n, n))
    empty = np.isnan(p).any(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n - 1):
            if empty[i]:
                continue
            support = p[i] > 0
            a, b = p[i, support], p[i + 1:, support]
            m = a + b
            terms = (xlogy(a, 2 * a / m) + xlogy(b, 2 * b / m)) / _LN2 - b
            out[i, i + 1:] = 0.5 + 0.5 * terms.sum(-1)
    out = np.clip(out, 0.0, 1.0)
    out = out + out.T
    out[empty, :] = np.nan
    out[:, empty] = np.nan
    out[empty, empty] = np.nan
    return out


def _layer_distances(count: np.ndarray, metric: str) -> np.ndarray:
    """`[layer, lang, lang]` divergence of per-language counts `[lang, layer, expert]`."""
    if metric == "js":
        with np.errstate(invalid="ignore", divide="ignore"):
            p = count / count.sum(-1, keepdims=True)
        return np.stack([_js(p[:, layer]) for layer in range(count.shape[1])])
    shape = count.shape
    counts = torch.from_numpy(np.ascontiguousarray(count)).round().long()
    stats = RoutingCounts(tuple(f"l{i}" for i in range(shape[0])), tuple(range(shape[1])), shape[2], 1, counts,
                          torch.zeros(shape, dtype=torch.float64), counts.sum((1, 2)))
    return divergence(stats, metric).numpy()


def _pair_index(origin: np.ndarray, codes: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """Upper-triangle pairs of the drawn copies, which of them join two different languages
    (a language drawn twice is not a pair of languages), and which of those share a family."""
    iu = np.triu_indices(len(origin), 1)
    valid = origin[iu[0]] != origin[iu[1]]
    same = codes[origin[iu[0]]] == codes[origin[iu[1]]]
    return iu, valid, same & valid


def _ratio(distance: np.ndarray, iu: tuple, valid: np.ndarray, same: np.ndarray) -> float:
    values = distance[iu]
    between, within = values[valid & ~same], values[same]
    if not len(between) or not len(within) or within.mean() <= 0:
        return float("nan")
    return float(between.mean() / within.mean())


def _pair_ari(clusters: np.ndarray, iu: tuple, valid: np.ndarray, same: np.ndarray) -> float:
    """Hubert-Arabie ARI in its pair-counting form, `(a - bc/N) / ((b + c)/2 - bc/N)`, over the
    pairs of different languages only: equal to the usual ARI when every language is drawn once;
    copies of one language drawn twice are neither a same-family nor a same-cluster pair."""
    together = (clusters[iu[0]] == clusters[iu[1]])[valid]
    family = same[valid]
    total = len(together)
    if not total:
        return float("nan")
    a, b, c = float((together & family).sum()), float(together.sum()), float(family.sum())
    expected = b * c / total
    maximum = (b + c) / 2
    if maximum == expected:  # both partitions trivial, as adjusted_rand_index
        return 1.0
    return (a - expected) / (maximum - expected)


def _clusters(distance: np.ndarray, n: int) -> np.ndarray:
    return fcluster(linkage(squareform(distance, checks=False), method="average"), t=n, criterion="maxclust")


def _family_statistics(distance: np.ndarray, codes: np.ndarray, origin: np.ndarray | None = None,
                       clusters: np.ndarray | None = None) -> np.ndarray:
    """[ARI of the average-linkage tree cut at as many clusters as families drawn, mean
    between-family / mean within-family divergence] of one `[copy, copy]` divergence matrix
    (copy `c` is language `origin[c]`); `clusters` (the cut) is computed unless given, as the
    permutation test reuses it."""
    origin = np.arange(len(distance)) if origin is None else origin
    if np.isnan(distance).any():
        return np.full(2, np.nan)
    iu, valid, same = _pair_index(origin, codes)
    if clusters is None:
        clusters = _clusters(distance, len(np.unique(codes[origin])))
    return np.array([_pair_ari(clusters, iu, valid, same), _ratio(distance, iu, valid, same)])


def _layer_statistics(distances: np.ndarray, codes: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """`[layer, (mean divergence between languages, between/within)]` of `[layer, copy, copy]`."""
    iu, valid, same = _pair_index(origin, codes)
    out = np.full((len(distances), 2), np.nan)
    for layer, distance in enumerate(distances):
        values = distance[iu][valid]
        if len(values) and not np.isnan(values).any():
            out[layer] = values.mean(), _ratio(distance, iu, valid, same)
    return out


class _Resampler:
    """Paired draws over several models profiled on the same texts: replicate `r` draws the
    same languages for every model (`unit="language"`: with replacement, each drawn language
    keeping all its texts) or the same texts within every language (`unit="text"`: the
    languages kept; on a parallel corpus the same article indices in every language);
    `distances(name, r)` is then the `[layer, copy, copy]` divergence of that model's
    resampled counts (`r=None`: the data)."""

    def __init__(self, models: Mapping[str, RoutingCounts], layers: Mapping[str, Any], languages: Sequence[str],
                 metric: str, unit: str, resamples: int, seed: int):
        if unit not in UNITS:
            raise ValueError(f"unit must be 'language' (resample languages with their texts: claims about "
                             f"languages and families) or 'text' (resample texts, the languages fixed), got {unit!r}")
        self.metric, self.unit = metric, unit
        self.models, self.positions, self.members, self.items = {}, {}, {}, {}
        for name, model in models.items():
            missing = [l for l in languages if l not in model.languages]
            if missing:
                raise ValueError(f"{name} has no counts for {missing[:5]}; profile every model on the same texts")
            chosen = model.select(list(languages))
            if chosen.item_count is None:
                raise ValueError(f"{name} keeps no per-item counts (item_count); profile it with mi.profile (or build "
                                 "the baseline with mi.analysis.ngram_stats), which keep them, to resample texts")
            positions = chosen.layer_positions(layers[name])
            self.models[name], self.positions[name] = chosen, positions
            self.members[name] = [(chosen.item_language == lang).nonzero().flatten().numpy()
                                  for lang in range(len(languages))]
            flat = chosen.item_count[:, positions].reshape(len(chosen.item_count), -1).numpy()
            self.items[name] = scipy.sparse.csr_matrix(flat.astype(np.float64))
        first = next(iter(self.members))
        self.sizes = [len(m) for m in self.members[first]]
        for name, parts in self.members.items():
            if [len(m) for m in parts] != self.sizes:
                raise ValueError(f"{name} has other numbers of texts per language than {first}; profile every model "
                                 "(and the baseline) on the same texts, so resamples are paired")
        if min(self.sizes) < 1:
            empty = [l for l, n in zip(languages, self.sizes) if n < 1]
            raise ValueError(f"no texts for {empty[:5]}: every language needs at least one text to resample")
        self.articles = len(set(self.sizes)) == 1
        n_lang = len(languages)
        rng = np.random.default_rng([seed, 0])
        self.draws = []
        for _ in range(resamples):
            if unit == "language":
                self.draws.append((rng.integers(0, n_lang, n_lang), None))
            elif self.articles:  # a parallel corpus: the same article indices in every language
                shared = rng.integers(0, self.sizes[0], self.sizes[0])
                self.draws.append((np.arange(n_lang), [shared] * n_lang))
            else:
                self.draws.append((np.arange(n_lang), [rng.integers(0, n, n) for n in self.sizes]))
        self._data: dict[str, np.ndarray] = {}

    def distances(self, name: str, replicate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(origin, [layer, copy, copy] divergence)` of one model, on the data or one replicate."""
        model, positions = self.models[name], self.positions[name]
        if name not in self._data:
            self._data[name] = _layer_distances(model.count[:, positions].double().numpy(), self.metric)
        if replicate is None:
            return np.arange(len(self._data[name][0])), self._data[name]
        origin, texts = self.draws[replicate]
        if texts is None:  # whole languages drawn: their divergences are the data's
            return origin, self._data[name][:, origin][:, :, origin]
        members = self.members[name]
        rows = np.repeat(np.arange(len(origin)), [len(t) for t in texts])
        cols = np.concatenate([members[o][t] for o, t in zip(origin, texts)])
        weights = scipy.sparse.csr_matrix((np.ones(len(cols)), (rows, cols)),
                                          shape=(len(origin), self.items[name].shape[0]))
        count = (weights @ self.items[name]).toarray().reshape(len(origin), len(positions), -1)
        return origin, _layer_distances(count, self.metric)


def _named(twins: Sequence[RoutingCounts] | Mapping[str, RoutingCounts]) -> dict[str, RoutingCounts]:
    return dict(twins) if isinstance(twins, Mapping) else {f"twin {i + 1}": t for i, t in enumerate(twins)}


def _position(estimate: float, samples: np.ndarray) -> float:
    """Share of the (non-nan) replicates below the estimate: about 0.5 when resampling does not
    shift the statistic; near 0 or 1 the percentile interval is off-centre around it."""
    samples = samples[~np.isnan(samples)]
    return float((samples < estimate).mean()) if len(samples) and not np.isnan(estimate) else float("nan")


def _unit_words(unit: str, articles: bool) -> str:
    if unit == "language":
        return "resamples of the languages (each with all its texts)"
    texts = "the same articles in every language" if articles else "the texts within each language"
    return f"resamples of {texts}, the languages fixed"


@dataclasses.dataclass(frozen=True, eq=False)
class FamilyEvidence:
    """How routing follows language families, with the evidence for it (see `family_evidence`).

    **Fields:** `languages`, `families` (one label per language), `layers` (real MoE layer
    indices used), `models` (`"trained"`, then each twin's name, then each baseline's name),
    `estimate` (`[model, statistic]`), `samples` (`[replicate, model, statistic]`, paired:
    replicate `r` resamples the same languages and texts for every model), `p_value`
    (`[model, statistic]`, label permutation), `level`, `kind` (the interval method, always
    `"percentile"`: see `interval`), `articles` (True when the same article indices were
    drawn in every language), `unit` (`"language"` or `"text"`, what a replicate resamples),
    `baselines` (which of `models` are model-free baselines), `statistics` (`"ari"`,
    `"between_within"`).

    **What the label-permutation p-value shows**: that the routing tree groups languages of
    one family together more often than a random assignment of the same family sizes would
    (structure exists). **What it does not show**: that training made the structure; a
    random-init twin passes it too, because bytes and scripts alone make routing group
    related languages. That is what the paired differences from the twins are for.

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
    kind: str = METHOD
    articles: bool = False
    unit: str = "language"
    baselines: tuple[str, ...] = ()
    statistics: tuple[str, ...] = FAMILY_STATISTICS

    def __post_init__(self) -> None:
        if self.kind != METHOD:
            raise ValueError(f"kind={self.kind!r}: every interval is a percentile bootstrap interval now (one "
                             "interval method); build FamilyEvidence with kind='percentile' or leave it out")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        unknown = [b for b in self.baselines if b not in self.models]
        if unknown:
            raise ValueError(f"baselines {unknown} are not among the models {list(self.models)}")

    def _cell(self, model: str, statistic: str) -> tuple[int, int]:
        if model not in self.models:
            raise KeyError(f"model {model!r} is not one of {list(self.models)}")
        if statistic not in self.statistics:
            raise KeyError(f"statistic {statistic!r} is not one of {list(self.statistics)}")
        return self.models.index(model), self.statistics.index(statistic)

    def interval(self, model: str = "trained", statistic: str = "ari") -> tuple[float, float, float]:
        """`(estimate, low, high)` of one model's statistic (percentile interval, see `interval`)."""
        m, s = self._cell(model, statistic)
        estimate = float(self.estimate[m, s])
        return (estimate, *interval(estimate, self.samples[:, m, s], self.level))

    def difference(self, model: str, statistic: str = "ari") -> tuple[float, float, float]:
        """`(estimate, low, high)` of trained minus `model`, paired over the same resampled
        languages and texts (percentile interval of the replicate differences)."""
        m, s = self._cell(model, statistic)
        estimate = float(self.estimate[0, s] - self.estimate[m, s])
        return (estimate, *interval(estimate, self.samples[:, 0, s] - self.samples[:, m, s], self.level))

    def strongest_baseline(self, statistic: str = "ari") -> str | None:
        """The name of the baseline with the highest estimate of `statistic` (the hardest bar
        for the trained model: both statistics grow with family structure), or None without
        baselines. The trained model clears the model-free bar for `statistic` when its
        `difference` from this one lies above 0."""
        self._cell(self.models[0], statistic)
        if not self.baselines:
            return None
        s = self.statistics.index(statistic)
        return max(self.baselines, key=lambda b: (self.estimate[self.models.index(b), s], -self.baselines.index(b)))

    def table(self) -> Any:
        """One row per (statistic, model): estimate, percentile interval, `position` (the share
        of replicates below the estimate: near 0.5 when the statistic is unbiased under
        resampling, near 0 or 1 when the interval is off-centre), the label-permutation
        p-value (structure exists; a twin can pass it too, see `FamilyEvidence`), the trained
        model's paired difference from this model with its interval (nan on the trained row),
        and `strongest` (True on the baseline with the highest estimate of the statistic)."""
        import pandas as pd

        rows = []
        for statistic in self.statistics:
            strongest = self.strongest_baseline(statistic)
            for model in self.models:
                estimate, low, high = self.interval(model, statistic)
                m, s = self._cell(model, statistic)
                diff = self.difference(model, statistic) if model != self.models[0] else (np.nan,) * 3
                rows.append({"statistic": statistic, "model": model, "estimate": estimate, "low": low, "high": high,
                             "position": _position(estimate, self.samples[:, m, s]),
                             "p_value": float(self.p_value[m, s]),
                             "difference": diff[0], "difference_low": diff[1], "difference_high": diff[2],
                             "strongest": model == strongest})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line per statistic and model, intervals and p-values written out, and what the
        permutation test can and cannot show."""
        pct = round(100 * self.level)
        lines = [f"{len(self.languages)} languages in {len(set(self.families))} families, layers "
                 f"{self.layers[0]}-{self.layers[-1]}; {pct}% percentile intervals over {len(self.samples)} "
                 f"{_unit_words(self.unit, self.articles)}",
                 "label-permutation p: does the routing tree group same-family languages more than chance (structure "
                 "exists)? It does not say training made it: random-init twins can pass it too; the differences from "
                 "the twins say that"]
        for row in self.table().itertuples():
            line = (f"{row.statistic} {row.model}: {row.estimate:.3f} [{row.low:.3f}, {row.high:.3f}], "
                    f"label-permutation p = {row.p_value:.3g}")
            if not np.isnan(row.difference):
                line += f"; trained - {row.model} = {row.difference:+.3f} [{row.difference_low:+.3f}, " \
                        f"{row.difference_high:+.3f}]"
            if row.strongest:
                line += " (strongest baseline)"
            lines.append(line)
        return "\n".join(lines)


def _baselines(baseline: RoutingCounts | Mapping[str, RoutingCounts] | None) -> dict[str, RoutingCounts]:
    if baseline is None:
        return {}
    if isinstance(baseline, RoutingCounts):
        return {"baseline": baseline}
    if isinstance(baseline, Mapping) and baseline and all(isinstance(b, RoutingCounts) for b in baseline.values()):
        return dict(baseline)
    raise ValueError("baseline must be RoutingCounts (e.g. mi.analysis.ngram_stats(texts)) or a non-empty "
                     "{name: RoutingCounts} (e.g. mi.analysis.ngram_baselines(texts)), got "
                     f"{type(baseline).__name__}")


def family_evidence(stats: RoutingCounts, families: Mapping[str, str] | None = None, layers: Any = "middle",
                    twins: Sequence[RoutingCounts] | Mapping[str, RoutingCounts] = (),
                    baseline: RoutingCounts | Mapping[str, RoutingCounts] | None = None, resamples: int = 200,
                    permutations: int = 1000, level: float = 0.95, seed: int = 0, metric: str = "js",
                    script: str | None = None, unit: str = "language", kind: Any = None) -> FamilyEvidence:
    """Family structure of routing with its evidence: ARI and between/within-family divergence.

    Statistics, on the `[lang, lang]` divergence (`metric`) averaged over `layers`:
    `"ari"`, the adjusted Rand index of the average-linkage tree cut at as many clusters as
    families against the families; `"between_within"`, the mean divergence of languages
    of different families over that of languages of the same family (> 1: families route
    alike).

    **Intervals at the language level** (`unit="language"`, the default): the claim is about
    languages and families, so each of `resamples` draws the languages with replacement, each
    drawn language keeping all its texts (a cluster bootstrap), and recomputes both statistics
    on the drawn languages' divergences. A language drawn twice is one language, not two: the
    pair of its copies is neither a same-family pair (it would add a divergence of 0 within the
    family) nor a pair in the ARI (counted over pairs of different languages: the usual ARI
    when each language is drawn once); the tree is cut at as many clusters as families drawn.
    Why the texts are not drawn again inside each drawn language (a two-stage bootstrap): the
    spread between languages already contains each language's text noise, so a second stage
    counts it twice (Davison & Hinkley 1997, sec. 3.8), and redrawn texts repeat some texts,
    which makes plug-in divergences larger: on the demo model a twin's layer-7 mean divergence,
    0.422, lay below its whole two-stage interval [0.426, 0.518] (with whole languages: [0.375,
    0.478], the estimate at the 49th percentile of its replicates). Why a bootstrap and not a
    leave-one-language-out jackknife: the ARI is a step function of the tree (not smooth),
    where the jackknife's variance estimate is not consistent, and a jackknife gives a
    standard error, not replicates for the one percentile method (`interval`). `unit="text"` keeps the languages and redraws their texts (the same
    article indices in every language on a parallel corpus): how precisely these texts measure
    these languages, much narrower, not an interval for a claim about families.

    **Paired**: replicate `r` draws the same languages and texts for every model, so the
    `difference` intervals (trained minus each twin or baseline) are paired. **Label
    permutation** p-value (family labels shuffled `permutations` times over the languages,
    the tree kept: `(1 + #{permuted >= observed}) / (1 + permutations)`): it shows structure
    exists, not that training made it (random-init twins pass it too).

    **Arguments:** `families`: `{language: family}` (default: `mi.languages`, as
    `family_agreement`); `twins`: random-init twins' stats (a list, or `{name: stats}`)
    profiled on the same texts; `baseline`: model-free baselines on the same texts, one
    (`mi.analysis.ngram_stats(texts)`, named `"baseline"`) or several by name
    (`mi.analysis.ngram_baselines(texts)`: byte 1-, 2- and 3-grams), all their layers used;
    `FamilyEvidence.strongest_baseline(statistic)` names the one with the highest value (the
    hardest bar); `script`: keep only the languages written in it (`"Latn"`); `kind` was
    removed (one interval method: percentile); passing it raises.

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
    >>> ev = family_evidence(stats, families=fams, layers=None, resamples=50, permutations=500)
    >>> ev.interval("trained", "ari")[0], float(ev.p_value[0, 0]) < 0.05   # 2 of 70 splits are this one
    (1.0, True)

    ```
    """
    _refuse_kind(kind)
    for name, value, low in (("resamples", resamples, 1), ("permutations", permutations, 1), ("seed", seed, 0)):
        check_int(name, value, low)
    level = check_level(level)
    named, baselines = _named(twins), _baselines(baseline)
    clash = set(named) & set(baselines) | ({"trained"} & (set(named) | set(baselines)))
    if clash:
        raise ValueError(f"model names {sorted(clash)} are used twice; name twins and baselines apart")
    agreement = family_agreement(stats, metric, layers, families=families, script=script)
    languages, labels = agreement.languages, agreement.families
    if len(set(labels)) < 2:
        raise ValueError(f"the languages {list(languages)} all belong to one family ({labels[0]}); family structure "
                         "needs at least two families")
    models = {"trained": stats, **named, **baselines}
    use_layers = {name: (None if name in baselines else layers) for name in models}
    resampler = _Resampler(models, use_layers, languages, metric, unit, resamples, seed)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    permuter = np.random.default_rng([seed, 1])
    estimate, samples, p_value = [], [], []
    for name in models:
        _, distances = resampler.distances(name)
        distance = distances.mean(0)
        clusters = _clusters(distance, len(set(labels)))  # the tree stays; only the labels are shuffled
        observed = _family_statistics(distance, codes, clusters=clusters)
        shuffled = np.array([_family_statistics(distance, permuter.permutation(codes), clusters=clusters)
                             for _ in range(permutations)])
        estimate.append(observed)
        p_value.append((1 + (shuffled >= observed).sum(0)) / (1 + permutations))
        replicate_stats = []
        for r in range(resamples):
            origin, distances = resampler.distances(name, r)
            replicate_stats.append(_family_statistics(distances.mean(0), codes, origin))
        samples.append(np.array(replicate_stats))
    used = tuple(stats.layers[i] for i in stats.layer_positions(layers))
    return FamilyEvidence(tuple(languages), tuple(labels), used, tuple(models), np.array(estimate),
                          np.stack(samples, axis=1), np.array(p_value), level, METHOD, resampler.articles, unit,
                          tuple(baselines))


# -- layer-resolved --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class LayerEvidence:
    """Per MoE layer, how differently languages route and how much families group, for the
    trained model and each twin, with language-level intervals (see `layer_evidence`).

    **Fields:** `languages`, `families`, `layers` (real indices), `models` (`"trained"`, then
    the twins), `estimate` (`[model, layer, statistic]`), `samples` (`[replicate, model,
    layer, statistic]`, paired: the same languages and texts for every model and layer),
    `level`, `unit`, `articles`, `statistics` (`"mean_divergence"`: mean divergence over
    pairs of different languages; `"between_within"`: between- over within-family mean).

    ```python
    >>> import dataclasses
    >>> from moe_interp.analysis import LayerEvidence
    >>> [f.name for f in dataclasses.fields(LayerEvidence)][:4]
    ['languages', 'families', 'layers', 'models']

    ```
    """

    languages: tuple[str, ...]
    families: tuple[str, ...]
    layers: tuple[int, ...]
    models: tuple[str, ...]
    estimate: np.ndarray
    samples: np.ndarray
    level: float
    unit: str = "language"
    articles: bool = False
    metric: str = "js"
    statistics: tuple[str, ...] = LAYER_STATISTICS

    def _cell(self, model: str, layer: int, statistic: str) -> tuple[int, int, int]:
        if model not in self.models:
            raise KeyError(f"model {model!r} is not one of {list(self.models)}")
        if layer not in self.layers:
            raise KeyError(f"layer {layer!r} is not one of the MoE layers {list(self.layers)}")
        if statistic not in self.statistics:
            raise KeyError(f"statistic {statistic!r} is not one of {list(self.statistics)}")
        return self.models.index(model), self.layers.index(layer), self.statistics.index(statistic)

    def interval(self, model: str, layer: int, statistic: str = "mean_divergence") -> tuple[float, float, float]:
        """`(estimate, low, high)` of one model's statistic at one layer (percentile interval)."""
        m, l, s = self._cell(model, layer, statistic)
        estimate = float(self.estimate[m, l, s])
        return (estimate, *interval(estimate, self.samples[:, m, l, s], self.level))

    def difference(self, model: str, layer: int, statistic: str = "mean_divergence") -> tuple[float, float, float]:
        """`(estimate, low, high)` of trained minus `model` at one layer, paired."""
        m, l, s = self._cell(model, layer, statistic)
        estimate = float(self.estimate[0, l, s] - self.estimate[m, l, s])
        return (estimate, *interval(estimate, self.samples[:, 0, l, s] - self.samples[:, m, l, s], self.level))

    def table(self) -> Any:
        """One row per layer x model x statistic: estimate, interval, and the trained model's
        paired difference from this model with its interval (nan on the trained rows).

        ```python
        >>> from moe_interp.analysis import LayerEvidence
        >>> import numpy as np
        >>> ev = LayerEvidence(("a", "b"), ("A", "B"), (0, 1), ("trained",), np.ones((1, 2, 2)),
        ...                    np.ones((5, 1, 2, 2)), 0.95)
        >>> ev.table().columns.tolist()[:6]
        ['layer', 'model', 'statistic', 'estimate', 'low', 'high']

        ```
        """
        import pandas as pd

        rows = []
        for layer in self.layers:
            for model in self.models:
                for statistic in self.statistics:
                    estimate, low, high = self.interval(model, layer, statistic)
                    diff = self.difference(model, layer, statistic) if model != self.models[0] else (np.nan,) * 3
                    rows.append({"layer": layer, "model": model, "statistic": statistic, "estimate": estimate,
                                 "low": low, "high": high,
                                 "position": _position(estimate, self.samples[:, self._cell(model, layer, statistic)[0],
                                                                              self.layers.index(layer),
                                                                              self.statistics.index(statistic)]),
                                 "difference": diff[0], "difference_low": diff[1], "difference_high": diff[2]})
        return pd.DataFrame(rows)

    def figure(self, statistic: str = "mean_divergence") -> Any:
        """Plotly figure of `statistic` against the layer, one line per model with its
        interval as a band.

        ```python
        >>> from moe_interp.analysis import LayerEvidence
        >>> import numpy as np
        >>> ev = LayerEvidence(("a", "b"), ("A", "B"), (0, 1), ("trained", "twin 1"), np.ones((2, 2, 2)),
        ...                    np.ones((5, 2, 2, 2)), 0.95)
        >>> [t.name for t in ev.figure().data]
        ['trained', 'trained', 'twin 1', 'twin 1']

        ```
        """
        import plotly.graph_objects as go
        from plotly.colors import qualitative

        if statistic not in self.statistics:
            raise KeyError(f"statistic {statistic!r} is not one of {list(self.statistics)}")
        frame = self.table()
        fig = go.Figure()
        palette = qualitative.Plotly
        for i, model in enumerate(self.models):
            rows = frame[(frame.model == model) & (frame.statistic == statistic)]
            color = palette[i % len(palette)]
            fig.add_trace(go.Scatter(x=list(rows.layer) + list(rows.layer)[::-1],
                                     y=list(rows.high) + list(rows.low)[::-1], fill="toself", line={"width": 0},
                                     fillcolor=color, opacity=0.2, hoverinfo="skip", showlegend=False, name=model))
            fig.add_trace(go.Scatter(x=list(rows.layer), y=list(rows.estimate), mode="lines+markers", name=model,
                                     line={"color": color}))
        label = {"mean_divergence": f"mean {self.metric} divergence between languages",
                 "between_within": "between / within-family divergence"}[statistic]
        pct = round(100 * self.level)
        fig.update_layout(xaxis_title="MoE layer", yaxis_title=label,
                          title=f"{label} by layer ({pct}% intervals over {len(self.samples)} "
                                f"{_unit_words(self.unit, self.articles)})")
        return fig


def layer_evidence(stats: RoutingCounts, families: Mapping[str, str] | None = None,
                   twins: Sequence[RoutingCounts] | Mapping[str, RoutingCounts] = (), layers: Any = None,
                   resamples: int = 200, level: float = 0.95, seed: int = 0, metric: str = "js",
                   script: str | None = None, unit: str = "language") -> LayerEvidence:
    """Per MoE layer: the mean divergence between languages and the between/within-family
    ratio, for the trained model and each random-init twin, with the same language-level
    percentile intervals as `family_evidence` (languages redrawn with replacement, each with
    all its texts; a language drawn twice is not a pair of languages; paired across models).

    **Arguments:** `families`, `script` as `family_evidence`; `twins`: a list or `{name:
    stats}` profiled on the same texts; `layers`: which MoE layers (default all); `unit`:
    `"language"` or `"text"` (texts redrawn, the languages fixed).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> from moe_interp.analysis import layer_evidence
    >>> langs = ("a1", "a2", "b1", "b2")                          # families a and b, 2 texts each
    >>> item = torch.zeros(8, 2, 4, dtype=torch.long)             # 2 layers, 4 experts, top-1
    >>> for i in range(8):
    ...     item[i, 0, i // 2] = 4                                   # layer 0: each language its own expert
    ...     family = [0, 1] if i < 4 else [2, 3]                     # layer 1: each family its own two,
    ...     item[i, 1, family] = torch.tensor([3, 1] if i // 2 % 2 else [1, 3])  # languages weigh them apart
    >>> lang = torch.arange(4).repeat_interleave(2)
    >>> count = torch.zeros(4, 2, 4, dtype=torch.long).index_add_(0, lang, item)
    >>> stats = mi.RoutingStats(langs, (0, 1), 4, 1, count, count.double(), torch.full((4,), 8),
    ...                         item, torch.full((8,), 4), lang)
    >>> ev = layer_evidence(stats, families={l: l[0] for l in langs}, resamples=20)
    >>> [round(ev.interval("trained", layer, "between_within")[0], 2) for layer in (0, 1)]  # layer 1: families
    [1.0, 5.3]
    >>> ev.table().shape                                     # 2 layers x 1 model x 2 statistics
    (4, 10)

    ```
    """
    for name, value, low in (("resamples", resamples, 1), ("seed", seed, 0)):
        check_int(name, value, low)
    level = check_level(level)
    named = _named(twins)
    if "trained" in named:
        raise ValueError("a twin is named 'trained'; name the twins apart from the trained model")
    agreement = family_agreement(stats, metric, layers, families=families, script=script)
    languages, labels = agreement.languages, agreement.families
    models = {"trained": stats, **named}
    resampler = _Resampler(models, {name: layers for name in models}, languages, metric, unit, resamples, seed)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    estimate, samples = [], []
    for name in models:
        origin, distances = resampler.distances(name)
        estimate.append(_layer_statistics(distances, codes, origin))
        samples.append(np.array([_layer_statistics(resampler.distances(name, r)[1], codes, resampler.draws[r][0])
                                 for r in range(resamples)]))
    used = tuple(stats.layers[i] for i in stats.layer_positions(layers))
    return LayerEvidence(tuple(languages), tuple(labels), used, tuple(models), np.array(estimate),
                         np.stack(samples, axis=1), level, unit, resampler.articles, metric)
