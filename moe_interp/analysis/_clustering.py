"""Do languages that route alike belong to the same family? Hierarchical clustering of routing.

Languages are clustered (scipy's `linkage`) on their divergence matrix averaged over a band
of layers. `family_agreement` compares that clustering with the language families of
`moe_interp.core.languages`: adjusted Rand index at as many clusters as families, mean
within- vs between-family divergence, cophenetic correlations, and the same within one
script only, since a shared script alone makes routing similar (even untrained models
separate scripts), which would otherwise pass for family structure.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from math import comb
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.spatial.distance import squareform

from moe_interp.core import languages as _languages
from moe_interp.core._checks import check_int
from moe_interp.core._counts import RoutingCounts
from moe_interp.analysis._divergence import divergence

__all__ = ["Clustering", "FamilyAgreement", "adjusted_rand_index", "cluster", "family_agreement"]


@dataclasses.dataclass(frozen=True, eq=False)
class Clustering:
    """A hierarchical clustering of languages by routing divergence.

    **Fields:** `languages`, `distance` (`[lang, lang]` divergence averaged over the
    layers used), `linkage` (scipy linkage matrix), `metric`, `method`, `layers`.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> c = mi.analysis.cluster(p, layers="middle")             # released MGSM counts
    >>> c.assignments(2)["es"] == c.assignments(2)["fr"]
    True

    ```
    """

    languages: tuple[str, ...]
    distance: np.ndarray
    linkage: np.ndarray
    metric: str
    method: str
    layers: tuple[int, ...]

    def assignments(self, n: int) -> dict[str, int]:
        """Cluster number (1-based) of each language when the tree is cut into `n` clusters."""
        n = check_int("n (the number of clusters)", n, 1)
        if len(self.languages) == 1:
            return {self.languages[0]: 1}
        labels = fcluster(self.linkage, t=n, criterion="maxclust")
        return dict(zip(self.languages, (int(x) for x in labels)))

    def cophenetic(self) -> float:
        """Correlation of the tree's cophenetic distances with the divergences (1 = faithful tree)."""
        if len(self.languages) < 3:
            return float("nan")
        return float(cophenet(self.linkage, squareform(self.distance, checks=False))[0])

    def cophenetic_distances(self) -> np.ndarray:
        """`[lang, lang]` height at which each pair of languages first joins the tree."""
        if len(self.languages) < 2:
            return np.zeros((len(self.languages),) * 2)
        return squareform(cophenet(self.linkage))


def cluster(stats: RoutingCounts, metric: str = "js", layers: Any = None, method: str = "average") -> Clustering:
    """Cluster the languages of `stats` on their divergence averaged over `layers`.

    **Arguments:** `metric`: see `divergence`; `layers`: `None` (all), a band name or
    real indices; `method`: scipy linkage method (`"average"`, `"complete"`, `"single"`,
    `"weighted"`; the centroid-based ones need Euclidean data and are refused).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> c = mi.analysis.cluster(p)
    >>> c.linkage.shape, c.languages[:2]
    ((7, 4), ('bn', 'de'))

    ```
    """
    if method not in ("average", "complete", "single", "weighted"):
        raise ValueError(f"method must be 'average', 'complete', 'single' or 'weighted', got {method!r}")
    per_layer = divergence(stats, metric, layers)
    distance = per_layer.mean(0).numpy()
    bad = [stats.languages[i] for i in np.flatnonzero(np.isnan(distance).any(0))]
    if bad:
        raise ValueError(f"languages {bad} have no tokens; drop them with stats.select(...) before clustering")
    used = tuple(stats.layers[i] for i in stats.layer_positions(layers))
    if len(stats.languages) < 2:
        tree = np.zeros((0, 4))
    else:
        tree = linkage(squareform(distance, checks=False), method=method)
    return Clustering(tuple(stats.languages), distance, tree, metric, method, used)


def adjusted_rand_index(labels_a: Sequence, labels_b: Sequence) -> float:
    """Hubert-Arabie adjusted Rand index of two partitions (1 = identical, ~0 = chance).

    ```python
    >>> import moe_interp as mi
    >>> mi.analysis.adjusted_rand_index([0, 0, 1, 1], ["a", "a", "b", "b"])
    1.0
    >>> round(mi.analysis.adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]), 3)
    -0.5

    ```
    """
    if len(labels_a) != len(labels_b):
        raise ValueError("the two labelings must have the same length")
    n = len(labels_a)
    _, a = np.unique(np.asarray(labels_a, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(labels_b, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((a.max(initial=-1) + 1, b.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    pairs = sum(comb(int(x), 2) for x in table.flat)
    rows = sum(comb(int(x), 2) for x in table.sum(1))
    cols = sum(comb(int(x), 2) for x in table.sum(0))
    total = comb(n, 2)
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return float((pairs - expected) / (maximum - expected))


@dataclasses.dataclass(frozen=True)
class FamilyAgreement:
    """How well routing similarity follows language families (see `family_agreement`).

    `ratio = within / between` (< 1: same-family languages route more alike).
    `taxonomy_correlation`: Pearson correlation of the tree's cophenetic distances with a
    taxonomic distance (0 same branch, 1 same family, 2 different families).
    `by_script`: the same quantities within each script that has at least 3 languages
    from at least 2 families.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> a = mi.analysis.family_agreement(p, layers="middle")
    >>> a.families[:3], a.n_families, a.ratio < 1
    (('Indo-European', 'Indo-European', 'Indo-European'), 4, True)
    >>> sorted(a.as_dict())[:3]
    ['ari', 'between', 'by_script']

    ```
    """

    languages: tuple[str, ...]
    families: tuple[str, ...]
    n_families: int
    ari: float
    within: float
    between: float
    ratio: float
    cophenetic: float
    taxonomy_correlation: float
    by_script: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain numbers (and `by_script` as nested dicts), e.g. for a table or JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "by_script"}
        out["by_script"] = {k: v.as_dict() for k, v in self.by_script.items()}
        return out


_OVERRIDE = {"family": "families", "branch": "families", "script": "scripts"}


def _lookup(label: str, table: Mapping[str, str] | None, what: str) -> str:
    if table is not None and label in table:
        return table[label]
    try:
        row = _languages.info(label)
    except KeyError as error:
        raise KeyError(f"cannot tell the {what} of group {label!r} ({error.args[0]}); "
                       f"pass {_OVERRIDE[what]}={{{label!r}: ...}}") from None
    if what == "branch":
        return row.branch or row.family  # isolates and small families: no branch
    return getattr(row, what)


def _pair_means(distance: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    same, different = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            (same if labels[i] == labels[j] else different).append(distance[i, j])
    mean = lambda values: float(np.mean(values)) if values else float("nan")
    return mean(same), mean(different)


def _agreement(clustering: Clustering, families: Sequence[str], branches: Sequence[str]) -> FamilyAgreement:
    n_families = len(set(families))
    ari = adjusted_rand_index(list(clustering.assignments(n_families).values()), families)
    within, between = _pair_means(clustering.distance, families)
    taxonomy = np.array([[0 if (f1, b1) == (f2, b2) else 1 if f1 == f2 else 2
                          for f2, b2 in zip(families, branches)] for f1, b1 in zip(families, branches)], float)
    coph = squareform(clustering.cophenetic_distances(), checks=False)
    tax = squareform(taxonomy, checks=False)
    corr = float(np.corrcoef(coph, tax)[0, 1]) if len(tax) > 1 and tax.std() > 0 and coph.std() > 0 else float("nan")
    return FamilyAgreement(clustering.languages, tuple(families), n_families, ari, within, between,
                           within / between if between else float("nan"), clustering.cophenetic(), corr)


def family_agreement(stats: RoutingCounts, metric: str = "js", layers: Any = None, method: str = "average",
                     level: str = "family", families: Mapping[str, str] | None = None,
                     scripts: Mapping[str, str] | None = None, script: str | None = None) -> FamilyAgreement:
    """Agreement of the routing clustering with language families (or branches).

    **Arguments:** `level`: `"family"` or `"branch"` (the grouping the ARI and the
    within/between means use); `families` / `scripts`: overrides for group labels that
    are not language codes (otherwise `moe_interp.core.languages.info` decides); `script`:
    restrict to the languages written in that script (e.g. `"Latn"`).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> a = mi.analysis.family_agreement(p)                      # released MGSM counts
    >>> a.n_families, a.ratio < 1
    (4, True)
    >>> sorted(a.by_script)                          # de en es fr sw
    ['Latn']

    ```
    """
    if level not in ("family", "branch"):
        raise ValueError(f"level must be 'family' or 'branch', got {level!r}")
    labels = list(stats.languages)
    family = [_lookup(l, families, "family") for l in labels]
    branch = [family[i] if families is not None and l in families else _lookup(l, None, "branch")
              for i, l in enumerate(labels)]
    groups = family if level == "family" else [f"{f}/{b}" for f, b in zip(family, branch)]
    try:
        script_of = [_lookup(l, scripts, "script") for l in labels]
    except KeyError:
        if script is not None:
            raise
        script_of = None

    def run(keep: list[int]) -> FamilyAgreement:
        sub = stats if len(keep) == len(labels) else stats.select([labels[i] for i in keep])
        return _agreement(cluster(sub, metric, layers, method), [groups[i] for i in keep], [branch[i] for i in keep])

    if script is not None:
        keep = [i for i, s in enumerate(script_of) if s == script]
        if len(keep) < 2:
            raise ValueError(f"fewer than 2 languages of these stats are written in {script!r}")
        return run(keep)
    by_script = {}
    for name in sorted(set(script_of or ())) if script_of and len(set(script_of)) > 1 else ():
        keep = [i for i, s in enumerate(script_of) if s == name]
        if len(keep) >= 3 and len({groups[i] for i in keep}) >= 2:
            by_script[name] = run(keep)
    return dataclasses.replace(run(list(range(len(labels)))), by_script=by_script)
