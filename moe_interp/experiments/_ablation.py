"""The paper's layer-band ablation design, with the evidence a verdict needs.

Each target language's exclusive experts (exclusive among every profiled language, as the
paper defines them) are rerouted in each band of layers (equal-width thirds by default), and
every evaluated language's held-out texts are scored against no ablation. A verdict per
language and band compares the target's own effect with three comparators: evaluated
languages of the same family, evaluated languages of other families (each mean with an
interval whose unit is the language), and many random expert sets matched to the ablated
experts' usage, read as a distribution. The rules that turn these into words live in one
place: `VERDICT_RULES` and `ablation_verdict`.
"""

import dataclasses
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moe_interp.core._checks import check_int, check_level
from moe_interp.experiments._grid import Experiment, check_held_out, stack_layers, stack_stats, union
from moe_interp.core._layers import BANDS, THIRD_BANDS
from moe_interp.analysis._evidence import interval, resampled_means
from moe_interp.arch import describe
from moe_interp.core._expert_set import ExpertSet
from moe_interp.runtime._interventions import ExpertAblate

__all__ = ["VERDICT_RULES", "AblationResult", "ablation_grid", "ablation_heatmap", "ablation_verdict",
           "random_expert_set"]

# The verdict rules, in the order they are tried: the first whose condition holds is the verdict.
VERDICT_RULES = (
    ("nothing to ablate", "no expert is exclusive to the language in this band (under the exclusivity rule used)"),
    ("no effect", "the own effect's interval does not lie above 0"),
    ("not specific", "the own effect is not above the random-set draws at level alpha (rank p-value > alpha = "
                     "1 - level), or the own - other-family interval does not lie above 0"),
    ("family-level", "above the random sets and the other families, but the own - same-family interval does not "
                     "lie above 0"),
    ("specific, no relative evaluated", "above the random sets and the other families, but no language of the "
                                        "target's family was evaluated, so a family-level effect is not ruled out"),
    ("language-specific", "above the random sets, the other families and the same family"),
)
VERDICTS = tuple(verdict for verdict, _ in VERDICT_RULES)
MATCH = 3  # a usage-matched draw picks uniformly among this many experts nearest in usage rank


def ablation_verdict(pairs: int, own_low: float, random_p: float, own_minus_other_low: float,
                     own_minus_same_low: float | None, alpha: float = 0.05) -> str:
    """The verdict of one (language, band) cell, by `VERDICT_RULES` (tried in order).

    **Arguments:** `pairs`: (layer, expert) pairs ablated; `own_low`: lower end of the own
    effect's interval; `random_p`: one-sided rank p-value of the own effect among the random
    draws, `(1 + #{draw >= own}) / (1 + draws)`; `own_minus_other_low` / `own_minus_same_low`:
    lower ends of the own - other-family and own - same-family intervals (`None`: no
    same-family language evaluated); `alpha`: `1 - level`. "Above" means the interval's lower
    end is > 0 (nan is not above). With `n` draws the smallest rank p-value is `1 / (n + 1)`:
    at `alpha = 0.05` fewer than 19 draws can never pass the random-set rule.

    ```python
    >>> from moe_interp.experiments._ablation import ablation_verdict
    >>> ablation_verdict(4, 0.10, 1 / 21, 0.05, 0.03), ablation_verdict(4, 0.10, 1 / 21, 0.05, -0.01)
    ('language-specific', 'family-level')
    >>> ablation_verdict(4, 0.10, 3 / 21, 0.05, 0.03), ablation_verdict(4, -0.01, 1 / 21, 0.05, 0.03)
    ('not specific', 'no effect')
    >>> ablation_verdict(4, 0.10, 1 / 21, 0.05, None), ablation_verdict(0, 0.0, 1.0, 0.0, 0.0)
    ('specific, no relative evaluated', 'nothing to ablate')

    ```
    """
    if not pairs:
        return "nothing to ablate"
    if not own_low > 0:
        return "no effect"
    if not random_p <= alpha + 1e-12 or not own_minus_other_low > 0:
        return "not specific"
    if own_minus_same_low is None:
        return "specific, no relative evaluated"
    if not own_minus_same_low > 0:
        return "family-level"
    return "language-specific"


def _min_draws(level: float) -> int:
    """Fewest random draws whose smallest rank p-value, 1 / (draws + 1), reaches alpha = 1 - level."""
    return max(1, math.ceil(1 / (1 - level) - 1 - 1e-9))


def random_expert_set(experts: Mapping[int, Sequence[int]], num_experts: int, seed: Any,
                      usage: Mapping[int, Sequence[float]] | None = None, match: int = MATCH) -> ExpertSet:
    """A random set of the same size as `experts` in the same layers, never one of `experts`
    there: the control an ablation of `experts` is compared with. `seed`: anything
    `numpy.random.default_rng` takes; the same seed gives the same set.

    Without `usage`: drawn uniformly, without replacement, among the layer's other experts.
    With `usage` (`{layer: one value per expert}`, e.g. the target language's routing
    frequency of each expert in that layer), each ablated expert gets a usage-matched stand-in:
    the layer's experts are ranked by usage (most used first, ties by index); the ablated
    experts are taken in a random order, and each draws uniformly among the `match`
    not-ablated, not-yet-drawn experts nearest to it in that rank (ties: the closer usage,
    then the lower index). A heavily used ablated expert is thus matched by a heavily used one.

    ```python
    >>> from moe_interp.experiments._ablation import random_expert_set
    >>> s = random_expert_set({3: [0, 1], 5: [7]}, num_experts=8, seed=0)
    >>> {layer: len(s[layer]) for layer in s}, set(s[3]) & {0, 1}, 7 in s[5]
    ({3: 2, 5: 1}, set(), False)
    >>> usage = {3: [0.9, 0.8, 0.7, 0.6, 0.1, 0.1, 0.0, 0.0]}     # experts 0 and 1 are the most used
    >>> sorted({e for seed in range(50) for e in random_expert_set({3: [0, 1]}, 8, seed, usage=usage)[3]})
    [2, 3, 4, 5]

    ```
    """
    if usage is not None:
        check_int("match", match, 1)
    rng = np.random.default_rng(seed)
    drawn = {}
    for layer in sorted(experts):
        chosen = sorted({int(e) for e in experts[layer]})
        pool = [e for e in range(num_experts) if e not in set(chosen)]
        if len(chosen) > len(pool):
            raise ValueError(f"layer {layer}: {len(chosen)} experts are ablated but only {len(pool)} others exist to "
                             "draw a same-size random control from; ablate fewer experts (a smaller k)")
        if usage is None:
            drawn[layer] = sorted(int(e) for e in rng.choice(pool, size=len(chosen), replace=False))
            continue
        if layer not in usage or len(usage[layer]) != num_experts:
            raise ValueError(f"usage needs one value per expert ({num_experts}) for layer {layer}; give "
                             "{layer: [usage of expert 0, 1, ...]} for every layer of experts")
        used = np.asarray(usage[layer], dtype=float)
        rank = {e: r for r, e in enumerate(sorted(range(num_experts), key=lambda e: (-used[e], e)))}
        free, picked = set(pool), []
        for ablated in rng.permutation(chosen):
            nearest = sorted(free, key=lambda e: (abs(rank[e] - rank[ablated]), abs(used[e] - used[ablated]), e))
            pick = nearest[int(rng.integers(min(match, len(nearest))))]
            free.discard(pick)
            picked.append(pick)
        drawn[layer] = sorted(picked)
    return ExpertSet(drawn)


def _seed(seed: int, target: str, band: str, draw: int) -> list[int]:
    """A seed per control draw that depends on what it controls, not on the grid's order."""
    return [seed, zlib.crc32(target.encode()), zlib.crc32(band.encode()), draw]


def _interval_seed(seed: int, *labels: str) -> int:
    """An int seed per resampled quantity, from what it is (not from where it sits in a grid)."""
    return int(np.random.SeedSequence([seed, *(zlib.crc32(label.encode()) for label in labels)]).generate_state(1)[0])


def _span(layers: Sequence[int], stacks: Mapping[int, str] | None = None) -> str:
    """`"layers 2-4"`, `"layer 3"`, `"layers 1, 5"`: the layers of a band in words; with
    `stacks` (`{layer: stack}`), per stack: `"encoder layer 3, decoder layer 7"`."""
    layers = list(layers)
    if stacks and layers:
        by_stack: dict[str, list[int]] = {}
        for layer in layers:
            by_stack.setdefault(stacks.get(layer, "?"), []).append(layer)
        return ", ".join(f"{stack} {_span(part)}" for stack, part in by_stack.items())
    if not layers:
        return "layers not recorded"
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ", ".join(map(str, layers))


def pair_directions(model: Any, corpus: Any, what: str) -> tuple[dict[str, tuple[str, str]], dict[str, list]] | None:
    """A corpus of parallel pairs checked for `what`: `({"source-target": (source, target)},
    {"source-target": [(source text, target text), ...]})`, each direction labelled as
    `mi.Experiment` labels its rows; `None` for `{language: [texts]}`. A pairs corpus on a
    model without an encoder and a decoder, or a corpus mixing the two forms, is refused
    (`check_stacks`, as `mi.expert_attribution` refuses it).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._ablation import pair_directions
    >>> model = mi.zoo.tiny_model("switch_transformers")
    >>> pair_directions(model, {("fra", "eng"): [("Bonjour", "Hello")]}, "ablation_grid")
    ({'fra-eng': ('fra', 'eng')}, {'fra-eng': [('Bonjour', 'Hello')]})
    >>> pair_directions(model, {"eng": ["Hello"]}, "ablation_grid") is None
    True

    ```
    """
    from moe_interp.core._fingerprint import is_pairs
    from moe_interp.experiments._attribution_results import check_stacks

    if not is_pairs(corpus):
        return None
    try:
        checked = check_stacks(model, describe(model), corpus, pairs=True)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    keys = {f"{source}-{target}": (source, target) for source, target in checked}
    return keys, {label: checked[key] for label, key in keys.items()}


def direction_names(names: Any, keys: Mapping[str, tuple[str, str]], what: str) -> list[str]:
    """Each of `names` (a direction `"fra-eng"` or `("fra", "eng")`) as its label in `keys`,
    in order; an unknown name is refused, listing the corpus's directions.

    ```python
    >>> from moe_interp.experiments._ablation import direction_names
    >>> direction_names([("fra", "eng"), "deu-eng"], {"fra-eng": ("fra", "eng"), "deu-eng": ("deu", "eng")}, "x")
    ['fra-eng', 'deu-eng']

    ```
    """
    if isinstance(names, (str, tuple)):
        names = [names]
    labels = {key: label for label, key in keys.items()}
    out = []
    for name in names:
        label = labels.get(tuple(name)) if isinstance(name, tuple) else name if name in keys else None
        if label is None:
            raise ValueError(f"{what} names {name!r}, which is not a direction of this corpus of pairs: a pairs "
                             f"corpus is evaluated per (source, target) direction; name one of "
                             f"{', '.join(map(repr, keys))} (or its tuple, e.g. {next(iter(keys.values()))!r})")
        out.append(label)
    return out


def side_corpora(corpus: Mapping, keys: Mapping[str, tuple[str, str]] | None, stack: str) -> dict:
    """The texts `stack` reads of each evaluated language or direction, labelled for
    `check_held_out`: a pair's sources for the encoder (whose statistics recorded the
    profiled sources), its targets for the decoder; plain texts for both."""
    if keys is None:
        return dict(corpus)
    side, name = (0, "sources") if stack == "encoder" else (1, "targets")
    return {f"{label} {name}": [pair[side] for pair in items] for label, items in corpus.items()}


def _family_of(language: str, families: Mapping[str, str] | None) -> str:
    if families is not None:
        if language not in families:
            raise ValueError(f"families has no entry for {language!r}; give every evaluated and target language a "
                             "family (or leave families=None for mi.languages' families)")
        return str(families[language])
    from moe_interp.core.languages import info

    try:
        return info(language).family
    except KeyError as error:
        raise ValueError(f"{language!r} has no family in mi.languages ({error.args[0]}); pass "
                         "families={language: family} for every evaluated and target language") from None


@dataclasses.dataclass
class AblationResult:
    """Bits-per-byte change of each evaluation language when each target language's
    exclusive experts are ablated in each band, with the evidence for a verdict.

    **Fields:** `eval_languages`; `conditions` (`(target, band)` pairs); `baseline` (mean
    bits/byte per language); `delta` (`[eval language, condition]` mean change);
    `experts` (number of `(layer, expert)` pairs ablated per condition); `frame` (every
    text's bits/byte per cell: conditions `"baseline"`, `"ablate:{target}:{band}"` and the
    random controls `"control:{target}:{band}:{draw}"`, run on the target's own texts);
    `controls` (random draws per condition), `resamples`, `level`, `seed` (of the
    intervals); `sets` (the `ExpertSet` each condition ablated, controls included, by
    condition name); `among` (the languages the experts are exclusive among); `profiled`
    (how many languages the statistics hold); `families` (`{language: family}` of the
    comparators; empty: `mi.languages`' families); `layers` (`{band: layers}`); `match`
    (controls drawn among the `match` experts nearest in usage rank; `None`: uniform);
    on an encoder-decoder model, `stacks` (`{layer: stack}` of every band's layers, e.g.
    `{1: "encoder", 5: "decoder"}`; empty for one stack) and `among_by_stack` (`{stack:
    languages}` each stack's experts are exclusive among: its own statistics' languages);
    for a corpus of parallel pairs, `directions` (`{"fra-eng": ("fra", "eng")}`: the
    evaluated and ablated directions, whose labels `eval_languages`, `conditions` and the
    frame use). `mi.ablation_grid` makes one; `verdicts()` reads it by the rules of `VERDICT_RULES`.

    ```python
    >>> import numpy as np
    >>> from moe_interp.experiments import AblationResult
    >>> res = AblationResult(("eng", "fin"), (("fin", "middle-third"),), {"eng": 2.0, "fin": 2.5},
    ...                      np.array([[0.0], [0.1]]), {("fin", "middle-third"): 3}, None)
    >>> res.delta[1, 0], res.experts[("fin", "middle-third")], res.controls     # fin lost 0.1 bits/byte
    (np.float64(0.1), 3, 20)

    ```
    """

    eval_languages: tuple[str, ...]
    conditions: tuple[tuple[str, str], ...]
    baseline: dict[str, float]
    delta: np.ndarray
    experts: dict[tuple[str, str], int]
    frame: Any
    controls: int = 20
    resamples: int = 2000
    level: float = 0.95
    seed: int = 0
    sets: dict[str, ExpertSet] = dataclasses.field(default_factory=dict, repr=False)
    among: tuple[str, ...] = ()
    profiled: int = 0
    families: dict[str, str] = dataclasses.field(default_factory=dict)
    layers: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    match: int | None = MATCH
    stacks: dict[int, str] = dataclasses.field(default_factory=dict)
    among_by_stack: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    directions: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def exclusive_among(self) -> str:
        """Which languages the ablated experts are exclusive among, in words.

        ```python
        >>> import numpy as np
        >>> from moe_interp.experiments import AblationResult
        >>> AblationResult(("eng", "fin"), (), {}, np.zeros((2, 0)), {}, None, among=("eng", "fin", "deu"),
        ...                profiled=3).exclusive_among()
        'exclusive among the 3 profiled languages'

        ```
        """
        if not self.among:
            return "exclusive among languages not recorded"
        if len(set(self.among_by_stack.values())) > 1:  # stacks profiled on different languages (pairs)
            return "; ".join(f"{stack}: exclusive among {len(among)} languages ({', '.join(among[:8])}"
                             f"{', ...' if len(among) > 8 else ''})" for stack, among in self.among_by_stack.items())
        if len(self.among) == self.profiled:
            return f"exclusive among the {self.profiled} profiled languages"
        named = ", ".join(self.among[:8]) + (", ..." if len(self.among) > 8 else "")
        of = f" of the {self.profiled} profiled" if self.profiled else ""
        return f"exclusive among {len(self.among)}{of} languages ({named})"

    def _family(self, language: str) -> str:
        return _family_of(language, self.families or None)

    def verdicts(self, band: str | Sequence[str] | None = None, pooled: bool = False) -> Any:
        """One row per (ablated and evaluated language, band): is the effect of its own
        exclusive experts specific to it, to its family, or to neither?

        `band`: one band name or several (default: every band of the grid); `pooled=True`:
        one row per language, averaging the chosen bands (its `band` joins their names).

        **Columns:** `language`, `family`, `band`, `layers` (tuple; on an encoder-decoder model
        also `stacks`, the stack of each), `among` (how many
        languages the experts are exclusive among), `texts` (the target's), `pairs` ((layer,
        expert) pairs ablated); per text, bits/byte change against no ablation (positive =
        worse): `own` (the target's own texts; interval resamples them), `same_family` and
        `other_family` (mean over the evaluated languages of the target's family / of other
        families, each language's mean over its texts; intervals resample the languages,
        then their texts; their names in `same_family_languages`, `other_family_languages`),
        `own_minus_same_family`, `own_minus_other_family` (differences of the replicates),
        each with `_low` / `_high` at `level`; `controls` (random draws), `matched` (how
        they were drawn), `random` (the draws' mean effect on the target's texts),
        `random_low` / `random_high` (the spread of the draws: their `(1 - level) / 2` and
        `(1 + level) / 2` quantiles, not text noise), `random_p` (one-sided rank p-value
        `(1 + #{draw >= own}) / (1 + draws)`), `verdict` (`ablation_verdict`).

        ```python
        >>> import numpy as np, pandas as pd
        >>> from moe_interp.experiments import AblationResult
        >>> cost = {"eng": 1.0, "deu": 0.0, "fin": 0.0}     # eng's experts cost eng only
        >>> rows = [dict(language=l, condition=c, item=i, bits_per_byte=b)
        ...         for l in cost for i in range(20)
        ...         for c, b in [("baseline", 3 + 0.01 * i), ("ablate:eng:middle-third", 3 + cost[l] + 0.02 * (i % 3))]
        ...         + [(f"control:eng:middle-third:{d}", 3 + 0.01 * i + 0.01 * d) for d in range(20) if l == "eng"]]
        >>> res = AblationResult(("eng", "deu", "fin"), (("eng", "middle-third"),), {}, np.zeros((3, 1)),
        ...                      {("eng", "middle-third"): 4}, pd.DataFrame(rows), controls=20, resamples=500,
        ...                      layers={"middle-third": (3, 4, 5)})
        >>> v = res.verdicts().iloc[0]
        >>> v.language, v.band, v.layers, round(float(v.own), 2), round(float(v.random_p), 3), v.verdict
        ('eng', 'middle-third', (3, 4, 5), 0.92, 0.048, 'language-specific')

        ```
        """
        import pandas as pd

        known = list(dict.fromkeys(b for _, b in self.conditions))
        chosen = known if band is None else [band] if isinstance(band, str) else list(band)
        unknown = [b for b in chosen if b not in known]
        if unknown:
            raise ValueError(f"band {unknown[0]!r} is not one of this grid's bands {known}")
        groups = [chosen] if pooled else [[b] for b in chosen]
        tables = {l: self.frame[self.frame.language == l].pivot_table(index="item", columns="condition",
                                                                     values="bits_per_byte")
                  for l in self.eval_languages}
        rows = []
        for target in dict.fromkeys(t for t, _ in self.conditions):
            if target not in self.eval_languages:
                continue
            family = self._family(target)
            same = [l for l in self.eval_languages if l != target and self._family(l) == family]
            other = [l for l in self.eval_languages if self._family(l) != family]
            if not other:
                raise ValueError(f"no evaluated language is of another family than {target} ({family}); a verdict "
                                 "compares the target with other families: evaluate one, or give families=")
            for group in groups:
                bands = [b for b in group if (target, b) in self.conditions]
                if bands:
                    rows.append(self._row(tables, target, family, bands, same, other))
        return pd.DataFrame(rows)

    def _row(self, tables: dict, target: str, family: str, bands: list[str], same: list[str],
             other: list[str]) -> dict:
        """Estimates, intervals, the random-set distribution and the verdict of one cell."""
        ablate = [f"ablate:{target}:{b}" for b in bands]
        label = "+".join(bands)

        def effects(language: str, conditions: Sequence[str]) -> np.ndarray:
            # per text: mean over conditions of (condition - baseline); a condition never run
            # (a control of an empty set) ablated nothing: 0
            table = tables[language]
            base = table["baseline"].to_numpy()
            return np.mean([table[c].to_numpy() - base if c in table else np.zeros_like(base) for c in conditions],
                           axis=0)

        own = effects(target, ablate)
        layers = tuple(sorted({layer for b in bands for layer in self.layers.get(b, ())}))
        row: dict[str, Any] = {"language": target, "family": family, "band": label, "layers": layers,
                               "among": len(self.among), "texts": len(own),
                               "pairs": sum(self.experts.get((target, b), 0) for b in bands)}
        if self.stacks:  # an encoder-decoder model: the stack of each layer
            row["stacks"] = tuple(self.stacks.get(layer, "") for layer in layers)

        def put(name: str, estimate: float, samples: np.ndarray) -> None:
            low, high = interval(float(estimate), samples, self.level)
            row.update({name: float(estimate), f"{name}_low": low, f"{name}_high": high})

        own_estimate, own_samples = resampled_means([own], self.resamples, _interval_seed(self.seed, target, label,
                                                                                            "own"), unit="item")
        put("own", own_estimate, own_samples)
        lows = {}
        for name, languages in (("same_family", same), ("other_family", other)):
            row[f"{name}_languages"] = ", ".join(languages)
            if not languages:
                row.update({key: float("nan") for key in (name, f"{name}_low", f"{name}_high", f"own_minus_{name}",
                                                           f"own_minus_{name}_low", f"own_minus_{name}_high")})
                lows[name] = None
                continue
            estimate, samples = resampled_means([effects(l, ablate) for l in languages], self.resamples,
                                                _interval_seed(self.seed, target, label, name), unit="group")
            put(name, estimate, samples)
            put(f"own_minus_{name}", own_estimate - estimate, own_samples - samples)
            lows[name] = row[f"own_minus_{name}_low"]
        draws = np.array([effects(target, [f"control:{target}:{b}:{d}" for b in bands]).mean()
                          for d in range(self.controls)])
        alpha = 1 - self.level
        # the spread of the draws themselves (a distribution of sets), not a bootstrap interval
        spread = np.quantile(draws, [alpha / 2, 1 - alpha / 2]) if len(draws) else (float("nan"),) * 2
        row.update({"controls": self.controls,
                    "matched": f"usage-matched ({self.match} nearest)" if self.match else "uniform",
                    "random": float(draws.mean()) if len(draws) else float("nan"),
                    "random_low": float(spread[0]), "random_high": float(spread[1]),
                    "random_p": float((1 + (draws >= own_estimate).sum()) / (1 + len(draws)))})
        row["verdict"] = ablation_verdict(row["pairs"], row["own_low"], row["random_p"], lows["other_family"],
                                          lows["same_family"], alpha)
        return row

    def summary(self, pooled: bool = False) -> str:
        """Per ablated language and band: the effect on itself, on its family and on other
        families, and of random usage-matched sets, with intervals, and the verdict they
        support; the first lines say which languages the experts are exclusive among,
        which bands (and layers), how intervals and controls were made, and the rules.

        ```python
        >>> import numpy as np, pandas as pd
        >>> from moe_interp.experiments import AblationResult
        >>> rows = [dict(language=l, condition=c, item=i, bits_per_byte=3.0) for l in ("eng", "fin")
        ...         for i in range(5) for c in ("baseline", "ablate:eng:late-third")]
        >>> res = AblationResult(("eng", "fin"), (("eng", "late-third"),), {}, np.zeros((2, 1)),
        ...                      {("eng", "late-third"): 0}, pd.DataFrame(rows), controls=5, among=("eng", "fin"),
        ...                      profiled=2, layers={"late-third": (6, 7)})
        >>> first = res.summary().splitlines()[0]
        >>> "(exclusive among the 2 profiled languages)" in first, first.endswith("bands: late-third (layers 6-7).")
        (True, True)
        >>> res.summary().splitlines()[-1].endswith("nothing to ablate")
        True

        ```
        """
        pct = round(100 * self.level)
        bands = list(dict.fromkeys(b for _, b in self.conditions))
        where = ", ".join(f"{b} ({_span(self.layers.get(b, ()), self.stacks)})" for b in bands)
        matched = (f"each ablated expert matched by one of the {self.match} not-ablated experts nearest in the "
                   "target's usage rank in its layer" if self.match
                   else "drawn uniformly among the not-ablated experts")
        lines = [f"Ablation of each language's exclusive experts ({self.exclusive_among()}); bands: {where}"
                 f"{', pooled' if pooled else ''}.",
                 *(["Directions (source-target): a direction's source-language experts are ablated in the encoder, "
                    "its target-language experts in the decoder, each exclusive among its stack's languages; its "
                    "family is its source's → its target's unless families= names the direction (same family: "
                    "both sides' families equal)."] if self.directions else []),
                 f"Change in bits/byte (positive = worse). {pct}% intervals: own effect over the language's texts; "
                 "same-family and other-family means over languages, then their texts. Random sets: "
                 f"{self.controls} draws per cell, same size and layers, {matched}; shown as the draws' mean and the "
                 f"{(100 - pct) / 2:g}%-{(100 + pct) / 2:g}% spread of the draws, with the rank p-value "
                 "(1 + #draws >= own) / (1 + draws)."]
        if self.controls < _min_draws(self.level):
            lines.append(f"Only {self.controls} random draws: the smallest rank p-value, 1/{self.controls + 1}, is "
                         f"above {1 - self.level:.2g}, so no cell can be above the random sets; use controls >= "
                         f"{_min_draws(self.level)}.")
        lines.append("Verdicts: " + "; ".join(f'"{v}": {rule}' for v, rule in VERDICT_RULES) + ".")

        def cell(row: Any, name: str) -> str:
            low, high = getattr(row, name + "_low"), getattr(row, name + "_high")
            return f"{getattr(row, name):+.4f} [{low:+.4f}, {high:+.4f}]"

        for row in self.verdicts(pooled=pooled).itertuples():
            same = (f"same family ({row.same_family_languages}) {cell(row, 'same_family')}, own - same family "
                    f"{cell(row, 'own_minus_same_family')}" if row.same_family_languages
                    else "no same-family language evaluated")
            lines.append(f"{row.language} ({row.family}), {row.band} ({_span(row.layers, self.stacks)}), {row.pairs} "
                         f"(layer, expert) pairs, {row.texts} texts: own {cell(row, 'own')}; {same}; other families "
                         f"({row.other_family_languages}) {cell(row, 'other_family')}, own - other families "
                         f"{cell(row, 'own_minus_other_family')}; random sets {row.random:+.4f} (draws "
                         f"{row.random_low:+.4f} to {row.random_high:+.4f}), p = {row.random_p:.3f}: {row.verdict}")
        return "\n".join(lines)

    def plot_ablation(self) -> Any:
        """Heatmap of the delta matrix (evaluation language x ablated target/band); see `ablation_heatmap`."""
        return ablation_heatmap(self)


def ablation_heatmap(result: AblationResult) -> Any:
    """Plotly heatmap of `result.delta` (evaluation language x ablated target / band).

    ```python
    >>> import numpy as np
    >>> from moe_interp.experiments import AblationResult
    >>> from moe_interp.experiments._ablation import ablation_heatmap
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


def _band_layers(spec: Any, bands: Sequence[str] | Mapping[str, Any], width: int | None) -> dict[str, tuple[int, ...]]:
    """`{band name: real MoE layers}`: names (`THIRD_BANDS`, `BANDS`, a stack's band), with
    `width` the paper's fixed-width bands, or a mapping `{name: any layer selection}`. On a
    model with several stacks a band name is that band of each stack (`stack_layers`)."""
    if isinstance(bands, Mapping):
        if width is not None:
            raise ValueError("width applies to band names; with bands={name: layers} give the layers themselves")
        if spec.stack_inputs is not None:
            return {str(name): tuple(sorted(l for part in stack_layers(spec, selection).values() for l in part))
                    for name, selection in bands.items()}
        return {str(name): spec.select_layers(selection) for name, selection in bands.items()}
    bands = (bands,) if isinstance(bands, str) else tuple(bands)
    if not bands:
        raise ValueError(f"bands is empty; name some, e.g. {THIRD_BANDS}")
    if spec.stack_inputs is not None:
        return {str(b): tuple(sorted(l for part in stack_layers(spec, b, width).values() for l in part))
                for b in bands}
    if width is not None:
        wrong = [b for b in bands if b not in BANDS]
        if wrong:
            raise ValueError(f"width={width} gives the paper's fixed-width bands, named {BANDS}; got {wrong}. Drop "
                             "width for equal thirds (THIRD_BANDS)")
        return {b: spec.band(b, width=width) for b in bands}
    return {str(b): spec.select_layers(b) for b in bands}


def ablation_grid(model: Any, stats: Any,
                  corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
                  eval_languages: Sequence[str | tuple[str, str]], target_languages: Sequence[str | tuple[str, str]],
                  bands: Sequence[str] | Mapping[str, Any] = THIRD_BANDS,
                  width: int | None = None, k: int | None = None, threshold: float = 0.4,
                  among: Sequence[str] | None = None, controls: int = 20, resamples: int = 2000, level: float = 0.95,
                  seed: int = 0, allow_same_texts: bool = False, path: str | os.PathLike | None = None,
                  batch_size: int = 8, progress: bool = True, families: Mapping[str, str] | None = None,
                  match: int | None = MATCH) -> AblationResult:
    """The paper's ablation design, with intervals, family comparators and random-set controls.

    Each target language's exclusive experts (from `stats`, exclusive among the languages
    `among`: by default every language in `stats`, the paper's definition) are rerouted in
    each band and every evaluation language's texts in `corpus` are scored against no
    ablation. Each (target, band) cell also gets `controls` random expert sets of the same
    size in the same layers, scored on the target's own texts only: usage-matched (see
    `random_expert_set`: each ablated expert is matched by one of the `match` not-ablated
    experts nearest to it in the target's usage rank in that layer, `stats.frequency()`),
    or uniform with `match=None`; seeded by `seed`, target, band and draw, so a cell's draws
    do not depend on the grid's order. `AblationResult.verdicts()` compares the target with
    the evaluated languages of its family and of other families (`families`, default
    `mi.languages.info(language).family`), and with the draws as a distribution; it needs,
    for each evaluated target, an evaluated language of another family.

    **Arguments:** `bands`: band names (default `THIRD_BANDS`, equal-width thirds
    `"early-third"`, `"middle-third"`, `"late-third"`; also `"early"`/`"middle"`/`"late"`,
    the paper's proportions, or with `width` the paper's fixed-width ablation bands) or
    `{name: layers}`; `k=None`: the paper's 15 of 128 experts scaled to the model
    (`mi.PAPER.scaled_k`); `controls`: random draws per cell (20 by default; fewer are
    allowed, but the smallest rank p-value is `1 / (controls + 1)`, so below 19 at level
    0.95 no cell can pass the random-set rule, and the summary says so); `resamples`,
    `level`, `seed`: of the intervals.

    Select and evaluate on different texts: `stats` comes from a profile of other texts
    (e.g. the train split) than `corpus` (held out). When `stats` records any of the same
    texts (`mi.profile` keeps their fingerprints) this raises `ValueError`, unless
    `allow_same_texts=True`.

    Encoder-decoder models (NLLB-MoE, Switch Transformers): `stats` is the `{stack:
    RoutingStats}` dict `mi.profile` returns (one `RoutingStats` is refused, naming it). A
    band name is that band within each stack (`"middle-third"`: the middle third of the
    encoder's MoE layers and of the decoder's); each stack's exclusive experts come from its
    own statistics (exclusive among its languages, or among those of `among` it holds; a
    stack whose statistics lack the target ablates nothing there), and one condition
    ablates them in every stack at once; `bands=("encoder:middle-third",
    "decoder:middle-third")` ablates one stack per condition. Texts are scored by
    `mi.evaluate.text_nll`: the decoder's teacher-forced NLL of each text, which the encoder
    reads, in bits per byte. `AblationResult.stacks` gives each band layer's stack.

    Parallel pairs (encoder-decoder models): `corpus` may be `{(source language, target
    language): [(source text, target text), ...]}`, the form `mi.profile` takes (a profile of
    pairs groups the encoder's statistics by source language, the decoder's by target
    language). Each pair is scored by the decoder's teacher-forced NLL of the target given
    the source, in bits per byte of the target. The unit is a direction: `eval_languages`
    and `target_languages` name directions, `"fra-eng"` (as `mi.Experiment` labels its
    rows; also `AblationResult`'s labels) or `("fra", "eng")`. Ablating a direction (s, t)
    reroutes the encoder's experts exclusive to s (from `stats["encoder"]`, among its
    languages) and the decoder's exclusive to t (from `stats["decoder"]`), together; a
    stack's band (`"encoder:late-third"`) ablates one side only. Controls are matched to s's
    usage in the encoder and t's in the decoder. A direction's family, for the comparators,
    is its source's family → its target's (`"Uralic → Indo-European"`): a same-family
    direction matches on both sides, any other is another family (a key `"fra-eng"` in
    `families` sets a direction's family itself). The held-out check compares each pair's
    source with the texts the encoder's statistics were profiled on and its target with
    the decoder's. Refused, naming the fix: pairs on a causal LM, a corpus mixing pairs and
    plain texts, and ablating a stack whose statistics hold one language (among one
    language every expert it uses is "exclusive": e.g. a profile of pairs all into
    English, whose decoder knows English only; ablate the encoder's band then).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> train = {"eng": ["The cat sat on the mat.", "Dogs bark."], "deu": ["Die Katze schläft.", "Hunde bellen."],
    ...          "fin": ["Kissa istuu.", "Koirat haukkuvat."]}
    >>> test = {"eng": ["A bird sings.", "Fish swim."], "deu": ["Ein Vogel singt.", "Fische schwimmen."],
    ...         "fin": ["Lintu laulaa.", "Kalat uivat."]}
    >>> profile = mi.profile(model, train, progress=False)
    >>> res = mi.ablation_grid(model, profile, test, ["eng", "deu", "fin"], ["eng"], bands=("middle-third",), k=4,
    ...                        controls=19, resamples=200, progress=False)
    >>> res.delta.shape, res.among, res.layers
    ((3, 1), ('eng', 'deu', 'fin'), {'middle-third': (1, 2)})
    >>> v = res.verdicts().iloc[0]
    >>> v.band, v.same_family_languages, v.other_family_languages, int(v.controls), v.verdict
    ('middle-third', 'deu', 'fin', 19, 'no effect')
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")          # encoder layers 1, 3; decoder 5, 7
    >>> train, held = (mi.datasets.udhr(["eng", "deu", "fin"], split=s) for s in ("train", "heldout"))
    >>> directions = [("deu", "eng"), ("fin", "eng"), ("eng", "fin")]
    >>> pairs = lambda split, n: {(s, t): [(a[:60], b[:60]) for a, b in zip(split[s][:n], split[t][:n])]
    ...                           for s, t in directions}
    >>> by_stack = mi.profile(seq2seq, pairs(train, 4), progress=False)   # encoder by source, decoder by target
    >>> by_stack["encoder"].languages, by_stack["decoder"].languages
    (('deu', 'fin', 'eng'), ('eng', 'fin'))
    >>> res = mi.ablation_grid(seq2seq, by_stack, pairs(held, 2), ["deu-eng", "fin-eng", ("eng", "fin")],
    ...                        ["deu-eng"], bands=("late-third",), k=2, threshold=0.3, controls=2, resamples=50,
    ...                        progress=False)
    >>> res.eval_languages, res.families["fin-eng"]
    (('deu-eng', 'fin-eng', 'eng-fin'), 'Uralic → Indo-European')
    >>> res.sets["ablate:deu-eng:late-third"]       # deu's exclusive experts in layer 3, eng's in layer 7
    ExpertSet({3: [2], 7: [2, 6]}, pairs=3)

    ```
    """
    check_int("controls", controls, 1)
    check_int("resamples", resamples, 1)
    check_int("seed", seed, 0)
    if match is not None:
        check_int("match", match, 1)
    level = check_level(level)
    directions = pair_directions(model, corpus, "ablation_grid")
    keys = None
    if directions is not None:
        keys, corpus = directions
        eval_languages = direction_names(eval_languages, keys, "eval_languages")
        target_languages = direction_names(target_languages, keys, "target_languages")
    if len(eval_languages) < 2:
        raise ValueError("eval_languages needs at least two languages: a verdict compares the ablated language's "
                         "effect with the effect on the others")
    missing = [l for l in eval_languages if l not in corpus]
    if missing:
        raise ValueError(f"eval_languages {missing} have no texts in corpus")
    by_stack = stack_stats(model, stats, "ablation_grid")
    for stack, part in (by_stack or {"": stats}).items():
        check_held_out(part, side_corpora({l: corpus[l] for l in eval_languages}, keys, stack), allow_same_texts)
    named = dict.fromkeys([*eval_languages, *target_languages])
    if keys is None:
        family = {l: _family_of(l, families) for l in named}
    else:  # a direction's family: its source's and its target's (a key "fra-eng" in families overrides)
        family = {l: str(families[l]) if families is not None and l in families
                  else f"{_family_of(keys[l][0], families)} → {_family_of(keys[l][1], families)}" for l in named}
    for target in target_languages:
        if target in eval_languages and all(family[l] == family[target] for l in eval_languages):
            raise ValueError(f"no evaluated language is of another family than {target} ({family[target]}); a "
                             "verdict compares the target with other families: add one to eval_languages, or give "
                             "families={language: family}")
    spec = describe(model)
    layers = _band_layers(spec, bands, width)
    if by_stack is not None:
        return _ablation_grid_stacks(model, spec, by_stack, corpus, eval_languages, target_languages, layers, k,
                                     threshold, among, controls, resamples, level, seed, path, batch_size, progress,
                                     family, match, keys)
    among = tuple(among) if among is not None else tuple(stats.languages)
    frequency = stats.frequency()
    grid: dict[str, list] = {"baseline": []}
    experts, conditions, control_grid, sets = {}, [], {}, {}
    for target in target_languages:
        usage = None
        if match is not None and target in stats.languages:
            usage = {layer: frequency[stats.language_index(target), i].tolist() for i, layer in enumerate(stats.layers)}
        for band, band_layers in layers.items():
            chosen = stats.exclusive_experts(target, k=k, threshold=threshold, layers=band_layers, among=among)
            grid[f"ablate:{target}:{band}"] = [ExpertAblate(chosen)]
            sets[f"ablate:{target}:{band}"] = chosen
            experts[(target, band)] = chosen.size
            conditions.append((target, band))
            if target in eval_languages and chosen.size:
                for draw in range(controls):
                    control = random_expert_set(chosen, spec.num_experts, _seed(seed, target, band, draw), usage=usage,
                                                match=match or MATCH)
                    control_grid.setdefault(target, {})[f"control:{target}:{band}:{draw}"] = [ExpertAblate(control)]
                    sets[f"control:{target}:{band}:{draw}"] = control
    frame, baseline, delta = _run_grid(model, corpus, eval_languages, grid, control_grid, conditions, path,
                                       batch_size, progress)
    return AblationResult(tuple(eval_languages), tuple(conditions), baseline, delta, experts, frame, controls,
                          resamples, level, seed, sets, among, len(stats.languages), family, layers, match)


def _run_grid(model: Any, corpus: Mapping, eval_languages: Sequence[str], grid: dict, control_grid: dict,
              conditions: list, path: Any, batch_size: int, progress: bool,
              keys: Mapping[str, tuple[str, str]] | None = None) -> tuple:
    """Score the grid (every evaluated language) and each target's controls (its own texts):
    the frame of every text's bits/byte, the baseline per language and the delta matrix.
    With `keys` (directions of pairs), `Experiment` gets the corpus keyed by `(source, target)`
    and labels its rows `"source-target"`, the labels used here."""
    key = (lambda label: label) if keys is None else keys.__getitem__
    evaluated = {key(l): corpus[l] for l in eval_languages}
    frames = [Experiment(model, evaluated, grid, path=path, batch_size=batch_size, progress=progress).run()]
    for target, cells in control_grid.items():
        frames.append(Experiment(model, {key(target): corpus[target]}, cells, path=path, batch_size=batch_size,
                                 progress=progress).run())
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True)
    baseline = {l: _mean_bpb(frame, l, "baseline") for l in eval_languages}
    delta = np.array([[_mean_bpb(frame, l, f"ablate:{t}:{b}") - baseline[l] for t, b in conditions]
                      for l in eval_languages])
    return frame, baseline, delta


def _ablation_grid_stacks(model: Any, spec: Any, by_stack: dict, corpus: Mapping, eval_languages: Sequence[str],
                          target_languages: Sequence[str], layers: dict, k: int | None, threshold: float,
                          among: Sequence[str] | None, controls: int, resamples: int, level: float, seed: int,
                          path: Any, batch_size: int, progress: bool, family: dict,
                          match: int | None, keys: Mapping[str, tuple[str, str]] | None = None) -> AblationResult:
    """`ablation_grid` on an encoder-decoder model: each stack's experts chosen from its own
    statistics, in the band's layers of that stack, all stacks ablated together. With `keys`
    (directions of pairs), a direction's language in each stack is its source in the encoder
    and its target in the decoder."""
    stack_of = {layer: stack for layer, stack in zip(spec.moe_layers, spec.stacks)}
    profiled = list(dict.fromkeys(l for part in by_stack.values() for l in part.languages))
    if among is not None:
        unknown = [l for l in among if l not in profiled]
        if unknown:
            raise ValueError(f"among names {unknown}, which no stack's statistics hold; the profiled languages are "
                             f"{profiled}")
    among_by_stack = {stack: tuple(l for l in (among if among is not None else part.languages)
                                   if l in part.languages) for stack, part in by_stack.items()}
    # the language each stack ablates for a target: itself, or for a direction its source / its target
    side = {t: {stack: t if keys is None else keys[t][0 if stack == "encoder" else 1] for stack in by_stack}
            for t in target_languages}
    for target in target_languages:
        if not any(side[target][stack] in part.languages for stack, part in by_stack.items()):
            what = (f"target language {target!r} is" if keys is None else
                    f"target direction {target!r}: neither its source {keys[target][0]!r} in the encoder nor its "
                    f"target {keys[target][1]!r} in the decoder is")
            raise ValueError(f"{what} in no stack's statistics ("
                             + "; ".join(f"{s}: {', '.join(p.languages)}" for s, p in by_stack.items())
                             + "): profile it, or pick a target among them")
    ablated = {stack_of[layer] for band_layers in layers.values() for layer in band_layers}
    for stack in ablated:
        if len(among_by_stack[stack]) < 2 and any(side[t][stack] in by_stack[stack].languages
                                                  for t in target_languages):
            raise ValueError(f"the {stack}'s statistics hold one language ({', '.join(among_by_stack[stack])}): "
                             "among one language every expert it uses is 'exclusive', so ablating them would "
                             f"test the {stack}'s most-used experts, not a language's own. Profile more languages "
                             f"for the {stack} (e.g. pairs into several target languages, or plain texts of "
                             f"each), or ablate the other stack only (bands=('encoder:middle-third',) names one)")
    frequency = {stack: part.frequency() for stack, part in by_stack.items()}
    grid: dict[str, list] = {"baseline": []}
    experts, conditions, control_grid, sets = {}, [], {}, {}
    for target in target_languages:
        usage = {}  # per layer: the target's routing frequency in that layer's stack
        for stack, part in by_stack.items():
            if side[target][stack] in part.languages:
                usage.update({layer: frequency[stack][part.language_index(side[target][stack]), i].tolist()
                              for i, layer in enumerate(part.layers)})
        for band, band_layers in layers.items():
            parts = []
            for stack, part in by_stack.items():
                mine = [layer for layer in band_layers if stack_of[layer] == stack]
                if mine and side[target][stack] in part.languages:
                    parts.append(part.exclusive_experts(side[target][stack], k=k, threshold=threshold, layers=mine,
                                                        among=among_by_stack[stack]))
            chosen = union(parts)
            grid[f"ablate:{target}:{band}"] = [ExpertAblate(chosen)]
            sets[f"ablate:{target}:{band}"] = chosen
            experts[(target, band)] = chosen.size
            conditions.append((target, band))
            if target in eval_languages and chosen.size:
                for draw in range(controls):
                    control = random_expert_set(chosen, spec.num_experts, _seed(seed, target, band, draw),
                                                usage=usage if match is not None else None, match=match or MATCH)
                    control_grid.setdefault(target, {})[f"control:{target}:{band}:{draw}"] = [ExpertAblate(control)]
                    sets[f"control:{target}:{band}:{draw}"] = control
    frame, baseline, delta = _run_grid(model, corpus, eval_languages, grid, control_grid, conditions, path,
                                       batch_size, progress, keys)
    stacks = {layer: stack_of[layer] for band_layers in layers.values() for layer in band_layers}
    return AblationResult(tuple(eval_languages), tuple(conditions), baseline, delta, experts, frame, controls,
                          resamples, level, seed, sets, tuple(dict.fromkeys(l for a in among_by_stack.values()
                                                                             for l in a)),
                          len(profiled), family, layers, match, stacks, among_by_stack,
                          {label: keys[label] for label in dict.fromkeys([*eval_languages, *target_languages])}
                          if keys is not None else {})
