"""Two models on the same texts: their experts matched across models by language profile, how
well they match, and the load-and-health and divergence analyses side by side.

Experts carry no shared identity across training runs (a trained model and its random-init twin,
two seeds, base and fine-tuned), so they are matched per layer by what they do: each expert's
**language profile** is its use per token in each language, normalised over the languages
(`p_e(l) = f[l, e] / sum_l' f[l', e]` with `f = count / tokens`, so a language's corpus size does
not weigh in), and the matching is the assignment (`scipy.optimize.linear_sum_assignment`) that
minimises the summed Jensen-Shannon divergence (base 2, in [0, 1]) between matched profiles. An
expert never chosen has no profile: it costs 1 against a used expert and 0 against another
unused one. Experts of the same profile tie; the closer load breaks the tie.

How well they match, per layer: the mean matched divergence (0: every expert of one model has a
twin of the same language profile in the other), against two nulls: a **random matching** of the
same experts (its mean is exactly the mean of the cost matrix; its spread from `permutations` random
ones; `p_random` = the share of them at or below the matching, with the usual +1) and the
best matching after **shuffling the languages** of the second model (as many random orders of its
language axis, the identity excluded: what matching buys when the two models' language axes are
unrelated; `p_shuffled` likewise). The interval resamples the texts within languages, the same texts for both models
(`mi.analysis.bootstrap`'s unit; needs the per-item counts `mi.profile` keeps), and re-matches
each replicate.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from scipy.special import rel_entr, xlogy
from torch import Tensor

from moe_interp.core._checks import check_int, check_level
from moe_interp.core._counts import RoutingCounts
from moe_interp.analysis._bootstrap import resample
from moe_interp.analysis._divergence import METRICS, divergence, mean_offdiagonal
from moe_interp.analysis._health import Health, health

__all__ = ["Comparison", "compare", "match_experts"]


def _profiles(stats: RoutingCounts) -> np.ndarray:
    """`[layer, expert, lang]` language profiles (rows sum to 1; `nan` rows: never chosen)."""
    freq = stats.count.cpu().double() / stats.tokens.cpu().clamp(min=1).double()[:, None, None]
    freq = freq.permute(1, 2, 0).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return freq / freq.sum(-1, keepdims=True)


def _js_cross(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`[..., i, j]` Jensen-Shannon divergence (base 2) between rows `p[..., i, :]` and
    `q[..., j, :]`; 1 between a `nan` row (no profile) and a row, 0 between two `nan` rows."""
    # KL(a||m) + KL(b||m) = sum a log a + sum b log b - 2 sum m log m: one pass over the pairs, not two
    own_p, own_q = xlogy(p, p).sum(-1), xlogy(q, q).sum(-1)
    m = (p[..., :, None, :] + q[..., None, :, :]) / 2
    js = ((own_p[..., :, None] + own_q[..., None, :]) / 2 - xlogy(m, m).sum(-1)) / np.log(2)
    none_a, none_b = np.isnan(p).any(-1)[..., :, None], np.isnan(q).any(-1)[..., None, :]
    js = np.where(none_a | none_b, np.where(none_a & none_b, 0.0, 1.0), js)
    return np.clip(js, 0.0, 1.0)


def _load_gap(a: RoutingCounts, b: RoutingCounts) -> np.ndarray:
    """`[layer, i, j]`: how far apart the load shares of `a`'s expert `i` and `b`'s expert `j` are."""
    share = lambda s: (lambda c: c / c.sum(-1, keepdims=True).clip(min=1))(s.count.cpu().double().sum(0).numpy())
    return np.abs(share(a)[:, :, None] - share(b)[:, None, :])


def _assign(cost: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer of `[layer, E, E]` costs: the matching (`[layer, E]`, column of each row) and
    its costs (`[layer, E]`). Experts of the same language profile (e.g. two used by one
    language alone) tie on cost: the load `gap` (`_load_gap`), weighted far below any cost
    difference that matters, matches them by load."""
    matching = np.stack([linear_sum_assignment(c + 1e-6 * g)[1] for c, g in zip(cost, gap)])
    return matching, np.take_along_axis(cost, matching[..., None], -1)[..., 0]


def match_experts(a: RoutingCounts, b: RoutingCounts) -> tuple[Int[Tensor, "layer expert"],
                                                                Float[Tensor, "layer expert"]]:
    """Per layer, the expert of `b` matched to each expert of `a` by language profile (module
    docstring), and the Jensen-Shannon divergence of each matched pair. `a` and `b` need the
    same languages (in the same order), layers and number of experts; `mi.analysis.compare`
    checks that they read the same texts and reports how good the match is.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> count = torch.tensor([[[6, 2, 0, 0]], [[0, 2, 6, 0]], [[0, 2, 0, 6]]])   # 3 languages, 4 experts
    >>> a = mi.RoutingStats(("en", "de", "fi"), (0,), 4, 1, count, count.double(), torch.tensor([8, 8, 8]))
    >>> b = mi.RoutingStats(a.languages, (0,), 4, 1, count[:, :, [2, 0, 3, 1]], count.double(), a.tokens)
    >>> matching, divergence = mi.analysis.match_experts(a, b)
    >>> matching.tolist(), divergence.abs().max().item()        # a's expert 0 is b's expert 1, ...
    ([[1, 3, 0, 2]], 0.0)

    ```
    """
    _check_shapes(a, b, ("a", "b"))
    if a.languages != b.languages:
        raise ValueError(f"a and b list their languages in different orders ({list(a.languages)} / "
                         f"{list(b.languages)}): b.select(a.languages) aligns them")
    matching, cost = _assign(_js_cross(_profiles(a), _profiles(b)), _load_gap(a, b))
    return torch.from_numpy(matching).long(), torch.from_numpy(np.ascontiguousarray(cost))


def _check_shapes(a: RoutingCounts, b: RoutingCounts, names: Sequence[str]) -> None:
    if a.layers != b.layers:
        raise ValueError(f"{names[0]} has MoE layers {list(a.layers)} and {names[1]} {list(b.layers)}: experts are "
                         "matched layer by layer; select the common layers with .select(layers=...)")
    if a.num_experts != b.num_experts:
        raise ValueError(f"{names[0]} has {a.num_experts} experts per layer and {names[1]} {b.num_experts}: a "
                         "one-to-one matching needs the same number")
    if len(a.languages) < 2:
        raise ValueError(f"the stats hold one language ({a.languages[0]!r}): language profiles need at least 2 "
                         "languages to tell experts apart")


def _same_corpus(a: RoutingCounts, b: RoutingCounts, names: Sequence[str]) -> RoutingCounts:
    """`b` with `a`'s language order, after refusing stats that did not read the same texts."""
    only_a = [l for l in a.languages if l not in b.languages]
    only_b = [l for l in b.languages if l not in a.languages]
    if only_a or only_b:
        raise ValueError(f"{names[0]} and {names[1]} were not profiled on the same languages: only in {names[0]}: "
                         f"{only_a}, only in {names[1]}: {only_b}; compare the common ones with "
                         ".select(languages=[...]) on both")
    if b.languages != a.languages:
        b = b.select(a.languages)
    _check_shapes(a, b, names)
    texts_a, texts_b = a.meta.get("texts"), b.meta.get("texts")
    if texts_a and texts_b:
        differ = [l for l in a.languages if texts_a.get(l) != texts_b.get(l)]
        if differ:
            raise ValueError(f"{names[0]} and {names[1]} read different texts in {differ} (meta['texts'] "
                             "fingerprints differ): profile both models on the same corpus")
    if a.item_language is not None and b.item_language is not None:
        if not torch.equal(a.item_language, b.item_language):
            per = lambda s: {l: int((s.item_language == i).sum()) for i, l in enumerate(a.languages)}
            raise ValueError(f"{names[0]} and {names[1]} hold different items (texts per language: {per(a)} / "
                             f"{per(b)}): profile both models on the same corpus")
    elif not (texts_a and texts_b) and not torch.equal(a.tokens.cpu().long(), b.tokens.cpu().long()):
        differ = [l for i, l in enumerate(a.languages) if int(a.tokens[i]) != int(b.tokens[i])]
        raise ValueError(f"{names[0]} and {names[1]} counted different tokens in {differ}, and keep no text "
                         "fingerprints to show they read the same texts: profile both with mi.profile on one corpus")
    return b


@dataclasses.dataclass(frozen=True, eq=False)
class Comparison:
    """Two models on the same texts (`mi.analysis.compare`): experts matched by language
    profile and how well they match, beside each model's load and health and divergences.

    **Fields:** `names`, `languages`, `layers`, `num_experts`, `metric`; `matching[layer, expert]`
    (the expert of the second model matched to each expert of the first) and
    `matched[layer, expert]` (their Jensen-Shannon divergence); per layer `quality` (mean matched
    divergence) with `quality_low` / `quality_high` (over texts, `nan` without per-item counts),
    `random_matching` (its mean under a random matching) with `random_low` / `random_high`
    and `p_random`, `shuffled` (median best matching after shuffling the second model's
    languages) with `shuffled_low` / `shuffled_high` and `p_shuffled`; `routing_divergence[layer,
    lang]` (each language's routing in the two models, experts matched); `health` (a `Health`
    per model) and `divergence` (`[layer, lang, lang]` per model, `metric`); `level`, `permutations`,
    `resamples`. **Methods:** `table`, `summary`, `figure`.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats().select(["en", "de", "sw", "zh"], layers=range(4))
    >>> c = mi.analysis.compare(p, p, names=("run", "same run"), permutations=20)
    >>> c.quality.tolist(), bool((c.random_matching > 0.05).all())      # each expert finds itself
    ([0.0, 0.0, 0.0, 0.0], True)

    ```
    """

    names: tuple[str, str]
    languages: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    metric: str
    matching: Int[Tensor, "layer expert"]
    matched: Float[Tensor, "layer expert"]
    quality: Float[Tensor, " layer"]
    quality_low: Float[Tensor, " layer"]
    quality_high: Float[Tensor, " layer"]
    random_matching: Float[Tensor, " layer"]
    random_low: Float[Tensor, " layer"]
    random_high: Float[Tensor, " layer"]
    p_random: Float[Tensor, " layer"]
    shuffled: Float[Tensor, " layer"]
    shuffled_low: Float[Tensor, " layer"]
    shuffled_high: Float[Tensor, " layer"]
    p_shuffled: Float[Tensor, " layer"]
    routing_divergence: Float[Tensor, "layer lang"]
    health: tuple[Health, Health]
    divergence: tuple[Tensor, Tensor]
    level: float
    permutations: int
    resamples: int

    def __repr__(self) -> str:
        return (f"Comparison({self.names[0]} vs {self.names[1]}, languages={len(self.languages)}, "
                f"layers={len(self.layers)}, experts={self.num_experts}, "
                f"mean matched divergence={float(self.quality.mean()):.3f})")

    def table(self) -> pd.DataFrame:
        """One row per layer: the matching's quality and its nulls, then each model's experts
        never chosen, load cv and max / mean, mean entropy and mean divergence between languages
        (columns `"<quantity> (<name>)"`).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats().select(["en", "de", "sw"], layers=[0, 1])
        >>> t = mi.analysis.compare(p, p, names=("a", "b"), permutations=10).table()
        >>> t.columns[:4].tolist(), t["dead (a)"].tolist()          # released counts: 2 experts unused in layer 0
        (['layer', 'quality', 'quality_low', 'quality_high'], [2, 0])

        ```
        """
        frame = pd.DataFrame({"layer": list(self.layers)})
        for name in ("quality", "quality_low", "quality_high", "random_matching", "random_low", "random_high",
                     "p_random", "shuffled", "shuffled_low", "shuffled_high", "p_shuffled"):
            frame[name] = getattr(self, name).numpy()
        for name, h, div in zip(self.names, self.health, self.divergence):
            frame[f"dead ({name})"] = h.dead_count[-1].numpy()
            frame[f"cv ({name})"] = h.cv[-1].numpy()
            frame[f"max_over_mean ({name})"] = h.max_over_mean[-1].numpy()
            frame[f"entropy ({name})"] = h.entropy[:-1].nanmean(0).numpy()
            frame[f"divergence ({name})"] = mean_offdiagonal(div).numpy()
        return frame

    def summary(self) -> str:
        """The comparison in a few sentences, every number from the fields.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats().select(["en", "de", "sw"], layers=[0, 1])
        >>> print(mi.analysis.compare(p, p, names=("a", "b"), permutations=10).summary().splitlines()[0])
        a vs b: 3 languages, 2 MoE layers of 128 experts.

        ```
        """
        a, b = self.names
        pct = round(100 * self.level)
        interval = ("" if bool(self.quality_low.isnan().all()) else
                    f" [{float(self.quality_low.mean()):.3f}, {float(self.quality_high.mean()):.3f}] (layer means of "
                    f"the {pct}% intervals over {self.resamples} resamples of the texts)")
        above = int((self.quality < self.quality_low).sum())
        if above:  # redrawn texts add noise to every profile, and noise only moves a best matching up
            interval += (f"; in {above} of {len(self.layers)} layers the interval lies above the estimate: redrawn "
                         "texts make plug-in divergences larger, so read it as a spread, not as centred")
        dead = {n: int(h.dead_count[-1].sum()) for n, h in zip(self.names, self.health)}
        dead_layers = {n: [layer for layer, d in zip(self.layers, h.dead_count[-1].tolist()) if d]
                       for n, h in zip(self.names, self.health)}
        lines = [
            f"{a} vs {b}: {len(self.languages)} languages, {len(self.layers)} MoE layers of {self.num_experts} "
            "experts.",
            f"Experts matched by language profile (Jensen-Shannon, base 2): mean matched divergence "
            f"{float(self.quality.mean()):.3f}{interval}; a random matching {float(self.random_matching.mean()):.3f}, "
            f"the best matching with {b}'s languages shuffled {float(self.shuffled.mean()):.3f} (medians of "
            f"{self.permutations}); layers below both nulls' {pct}% ranges: "
            f"{int(((self.quality < self.random_low) & (self.quality < self.shuffled_low)).sum())} of "
            f"{len(self.layers)}.",
            "Experts never chosen: " + "; ".join(f"{n} {dead[n]}" + (f" (layers {dead_layers[n]})" if dead[n] else "")
                                                 for n in self.names) + ".",
            "Load cv (all languages, mean over layers): " + ", ".join(
                f"{n} {float(h.cv[-1].nanmean()):.2f}" for n, h in zip(self.names, self.health)) + "; max / mean: " +
            ", ".join(f"{n} {float(h.max_over_mean[-1].nanmean()):.2f}" for n, h in zip(self.names, self.health)) + ".",
            f"Mean {self.metric} divergence between languages: " + ", ".join(
                f"{n} {float(mean_offdiagonal(d).nanmean()):.3f}" for n, d in zip(self.names, self.divergence)) + ".",
        ]
        return "\n".join(lines)

    def figure(self, scope: str = "all") -> Any:
        """Both models' load and health (`mi.plots.load_health`) above the matching's quality
        per layer against its nulls, and each model's divergence between languages
        (`mi.plots.comparison`).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats().select(["en", "de", "sw"], layers=[0, 1])
        >>> fig = mi.analysis.compare(p, p, names=("a", "b"), permutations=10).figure()
        >>> fig.layout.title.text.startswith("a vs b")
        True

        ```
        """
        from moe_interp.analysis import plots  # the figures sit above the analyses they draw

        return plots.comparison(self, scope)


def compare(a: RoutingCounts, b: RoutingCounts, names: Sequence[str] = ("a", "b"), metric: str = "js",
            resamples: int = 200, permutations: int = 200, level: float = 0.95, seed: int = 0) -> Comparison:
    """Compare two models profiled on the same texts: match their experts per layer by
    language profile and say how well they match (module docstring), beside each model's load
    and health (`mi.analysis.health`) and divergence between languages (`metric`).

    Refuses stats that did not read the same texts (other languages, other texts by their
    fingerprints, other items, or other token counts where neither shows fingerprints), naming
    the difference. Intervals over texts need per-item counts in both (`resamples=0`: none).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats().select(["en", "de", "sw", "zh"], layers=range(4))
    >>> shuffled = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    >>> q = mi.RoutingStats(p.languages, p.layers, 128, p.top_k, p.count[..., shuffled],
    ...                     p.gate_mass[..., shuffled], p.tokens)     # the same model, experts renumbered
    >>> c = mi.analysis.compare(p, q, names=("p", "renumbered"), permutations=20)
    >>> used = p.count.sum(0) > 0                                      # experts never chosen have no profile
    >>> bool((shuffled[c.matching] == torch.arange(128))[used].all()), c.quality.tolist()   # all found again
    (True, [0.0, 0.0, 0.0, 0.0])
    >>> mi.analysis.compare(p, q.select(["en", "de"]))
    Traceback (most recent call last):
    ValueError: a and b were not profiled on the same languages: only in a: ['sw', 'zh'], only in b: []; compare the common ones with .select(languages=[...]) on both

    ```
    """
    names = tuple(str(n) for n in names)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must give two different labels, e.g. ('trained', 'twin'); got {names}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    resamples, permutations = check_int("resamples", resamples, 0), check_int("permutations", permutations, 1)
    level, seed = check_level(level), check_int("seed", seed, 0)
    b = _same_corpus(a, b, names)
    profile_a, profile_b = _profiles(a), _profiles(b)
    cost, gap = _js_cross(profile_a, profile_b), _load_gap(a, b)
    matching, matched = _assign(cost, gap)
    quality = matched.mean(-1)
    generator = torch.Generator().manual_seed(seed)
    alpha = (1 - level) / 2

    def spread(samples: np.ndarray) -> tuple[np.ndarray, ...]:
        low, mid, high = np.quantile(samples, [alpha, 0.5, 1 - alpha], axis=0)
        return low, mid, high, (1 + (samples <= quality + 1e-12).sum(0)) / (1 + len(samples))

    n_layer, n_expert = cost.shape[:2]
    rows = np.arange(n_expert)
    random = np.stack([cost[np.arange(n_layer)[:, None], rows, torch.randperm(n_expert, generator=generator).numpy()]
                       .mean(-1) for _ in range(permutations)])
    random_low, _, random_high, p_random = spread(random)
    shuffled = []
    for _ in range(permutations):
        other = profile_b[..., _language_permutation(len(a.languages), generator)]
        shuffled.append(_assign(_js_cross(profile_a, other), gap)[1].mean(-1))
    shuffled = np.stack(shuffled)
    shuffled_low, shuffled_mid, shuffled_high, p_shuffled = spread(shuffled)
    quality_low = quality_high = np.full(n_layer, np.nan)
    if resamples and a.item_count is not None and b.item_count is not None:
        quality_low, quality_high = _quality_interval(a, b, resamples, alpha, generator)
    routing = _routing_divergence(a, b, matching)
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return Comparison(
        names, a.languages, a.layers, a.num_experts, metric, torch.from_numpy(matching).long(), as_tensor(matched),
        as_tensor(quality), as_tensor(quality_low), as_tensor(quality_high), as_tensor(cost.mean((-1, -2))),
        as_tensor(random_low), as_tensor(random_high), as_tensor(p_random), as_tensor(shuffled_mid),
        as_tensor(shuffled_low), as_tensor(shuffled_high), as_tensor(p_shuffled), as_tensor(routing),
        (health(a, resamples, level, seed), health(b, resamples, level, seed)),
        (divergence(a, metric), divergence(b, metric)), level, permutations, resamples)


def _language_permutation(n: int, generator: torch.Generator) -> np.ndarray:
    """A random permutation of `n` languages other than the identity."""
    while True:
        order = torch.randperm(n, generator=generator).numpy()
        if (order != np.arange(n)).any():
            return order


def _quality_interval(a: RoutingCounts, b: RoutingCounts, resamples: int, alpha: float,
                      generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean matched divergence per layer, the same texts drawn for
    both models (`resample` draws within languages; the items of `a` and `b` are the same)."""
    samples = []
    for _ in range(resamples):
        state = generator.get_state()
        ra = resample(a, generator)
        generator.set_state(state)  # the same draws for b: a paired replicate
        rb = resample(b, generator)
        samples.append(_assign(_js_cross(_profiles(ra), _profiles(rb)), _load_gap(ra, rb))[1].mean(-1))
    low, high = np.quantile(np.stack(samples), [alpha, 1 - alpha], axis=0)
    return low, high


def _routing_divergence(a: RoutingCounts, b: RoutingCounts, matching: np.ndarray) -> np.ndarray:
    """`[layer, lang]`: Jensen-Shannon divergence between each language's routing distribution
    in `a` and in `b` with `b`'s experts renumbered by the matching (`nan` without tokens)."""
    da = a.distribution().cpu().double().numpy()
    db = b.distribution().cpu().double().numpy()
    aligned = np.take_along_axis(db, matching[None], -1)  # [lang, layer, expert]: b's match of a's expert e
    with np.errstate(invalid="ignore", divide="ignore"):
        da, aligned = da / da.sum(-1, keepdims=True), aligned / aligned.sum(-1, keepdims=True)
    m = (da + aligned) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        js = (rel_entr(da, m).sum(-1) + rel_entr(aligned, m).sum(-1)) / (2 * np.log(2))
    return np.clip(js, 0.0, 1.0).T

