"""`RoutingStats`: aggregate routing counts per (language, MoE layer, expert), and their analyses.

Data flows one way: traces fill a `RoutingStats`; its methods are thin, documented doors
to `moe_interp.analysis` (imported lazily, since analysis builds on this module) and to
`moe_interp.plots`.
"""

import dataclasses
import hashlib
import json
import numbers
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .expert_set import ExpertSet

__all__ = ["RoutingStats", "StatsFileError"]

_FORMAT = "moe_interp.RoutingStats/1"
_TENSOR_FILE, _META_FILE = "stats.safetensors", "meta.json"
_TENSORS = ("count", "gate_mass", "tokens", "item_count", "item_tokens", "item_language")


class StatsFileError(ValueError):
    """A routing-statistics file is truncated, corrupted or of another format.

    A `ValueError`, raised by `RoutingStats.load`, `RoutingStats.from_paper` and
    `mi.datasets.reference_stats` with the path of the damaged file.

    ```python
    >>> try:
    ...     mi.RoutingStats.load("damaged.routing")
    ... except mi.StatsFileError as error:
    ...     print(error)
    damaged.routing/stats.safetensors is truncated or corrupted: ...
    ```
    """


def _check_count(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_tensor(name: str, value: Any, shape: tuple[int, ...], axes: str, integral: bool) -> None:
    """Shape and dtype of one field; integer fields must not be negative, float ones finite."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)}, but the stats' {axes} give {shape}")
    is_int = not value.dtype.is_floating_point and not value.dtype.is_complex and value.dtype != torch.bool
    if integral and not is_int or not integral and not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a{'n integer' if integral else ' floating-point'} tensor, got {value.dtype}")
    bad = (value < 0) if integral else ~torch.isfinite(value)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(where)} = {value[where].item()}: {name} must be "
                         f"{'non-negative' if integral else 'finite'}")


def _check_consistent(stats: "RoutingStats") -> None:
    """Refuse stats whose fields disagree, so a bad file or call fails here, not in an analysis.

    Not checked: `count.sum(-1) == top_k * tokens`. The paper's released counts break it (it
    holds in 4% of their (language, layer) rows), and layers that drop tokens (expert capacity)
    or do not select a learned top-k need not hold it either.
    """
    n_lang, n_layer = len(stats.languages), len(stats.layers)
    if len(set(stats.languages)) != n_lang:
        raise ValueError(f"languages {stats.languages} must be distinct labels")
    if len(set(stats.layers)) != n_layer:
        raise ValueError(f"layers {stats.layers} must be distinct MoE layer indices")
    _check_count("num_experts", stats.num_experts, 1)
    _check_count("top_k", stats.top_k, 1, stats.num_experts)
    grid = (n_lang, n_layer, stats.num_experts)
    _check_tensor("count", stats.count, grid, "(languages, layers, num_experts)", integral=True)
    _check_tensor("gate_mass", stats.gate_mass, grid, "(languages, layers, num_experts)", integral=False)
    _check_tensor("tokens", stats.tokens, (n_lang,), "(languages,)", integral=True)
    items = (stats.item_count, stats.item_tokens, stats.item_language)
    if all(x is None for x in items):
        return
    if any(x is None for x in items):
        raise ValueError("item_count, item_tokens and item_language go together: give all three or none")
    if not isinstance(stats.item_language, Tensor) or stats.item_language.dim() != 1:
        raise ValueError("item_language must be a 1-D tensor: the position of each item's language")
    n_items = len(stats.item_language)
    _check_tensor("item_count", stats.item_count, (n_items, n_layer, stats.num_experts),
                  "(items, layers, num_experts)", integral=True)
    _check_tensor("item_tokens", stats.item_tokens, (n_items,), "(items,)", integral=True)
    _check_tensor("item_language", stats.item_language, (n_items,), "(items,)", integral=True)
    if n_items and int(stats.item_language.max()) >= n_lang:
        raise ValueError(f"item_language holds {int(stats.item_language.max())}, but there are only {n_lang} "
                         "languages (item_language[i] is the position of item i's language)")
    for lang, language in enumerate(stats.languages):
        mine = stats.item_language == lang
        if not (torch.equal(stats.item_count[mine].sum(0), stats.count[lang].to(torch.int64)) and
                int(stats.item_tokens[mine].sum()) == int(stats.tokens[lang])):
            raise ValueError(f"the per-item counts of language {language!r} do not add up to its count / tokens: "
                             "count[lang] must equal the sum of item_count over that language's items")


@dataclasses.dataclass(eq=False)
class RoutingStats:
    """Routing counts of one model over groups of text (usually languages).

    For every non-padding token and MoE layer, each of the `top_k` experts the model
    used adds 1 to `count[lang, layer, expert]` and its routing weight to
    `gate_mass[...]`; `tokens[lang]` counts the tokens. `layers` holds the real indices of
    the MoE layers (the `layer` axis). Per-item counts (`item_count`, `item_tokens`,
    `item_language`), kept by `mi.profile`, allow bootstrap confidence intervals.
    Construction checks that the fields agree (shapes, integer counts >= 0, finite gate mass,
    per-item counts adding up to `count`) and raises `ValueError` / `TypeError` naming the field.

    ```python
    >>> p = mi.RoutingStats.from_paper("shared/data/qwen3-30b-a3b-mgsm-routing",
    ...                                languages=["en", "zh"])
    >>> p.count.shape, p.top_k
    (torch.Size([2, 48, 128]), 8)
    >>> float(p.frequency()[0, 0].sum())    # every token uses top_k experts
    8.0
    ```
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    count: Int[Tensor, "lang layer expert"]
    gate_mass: Float[Tensor, "lang layer expert"]
    tokens: Int[Tensor, " lang"]
    item_count: Int[Tensor, "item layer expert"] | None = None
    item_tokens: Int[Tensor, " item"] | None = None
    item_language: Int[Tensor, " item"] | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    per_token: dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.languages, str):
            raise TypeError(f"languages must be a sequence of labels, e.g. ['en', 'zh'], not the string "
                            f"{self.languages!r}")
        self.languages = tuple(self.languages)
        self.layers = tuple(int(layer) for layer in self.layers)
        _check_consistent(self)

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_paper(cls, directory: str | os.PathLike, languages: Sequence[str],
                   pattern: str = "mgsm_{lang}.json", num_experts: int | None = None,
                   top_k: int | None = None) -> "RoutingStats":
        """Load the paper's released routing counts (one JSON file per language).

        Format: `{layer: {expert: {"activation_tokens": int, "gate_values_sum": float},
        "total_tokens": int}}`. `top_k` defaults to the count total over tokens.

        ```python
        >>> p = mi.RoutingStats.from_paper(d, languages=["en", "de"])
        >>> p.languages, len(p.layers), p.num_experts
        (('en', 'de'), 48, 128)
        ```
        """
        directory = Path(directory)
        if isinstance(languages, str):
            raise TypeError("languages must be a list of codes, e.g. ['en', 'zh']")
        counts, masses, tokens, layers = [], [], [], None
        for lang in languages:
            path = directory / pattern.format(lang=lang)
            if not path.is_file():
                found = sorted(p.name for p in directory.glob("*.json")) if directory.is_dir() else []
                raise FileNotFoundError(f"no routing file for {lang!r}: {path} does not exist "
                                        f"(files there: {found[:10]})")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise StatsFileError(f"{path} is not valid JSON: {error}") from None
            file_layers = sorted(int(k) for k in data)
            if layers is None:
                layers = file_layers
                experts = num_experts or 1 + max(int(e) for e in data[str(layers[0])] if e != "total_tokens")
            elif file_layers != layers:
                raise StatsFileError(f"{path} has layers {file_layers[:3]}... unlike the other files")
            count = torch.zeros(len(layers), experts, dtype=torch.long)
            mass = torch.zeros(len(layers), experts, dtype=torch.float64)
            totals = set()
            for i, layer in enumerate(layers):
                entry = data[str(layer)]
                totals.add(int(entry["total_tokens"]))
                for e, values in entry.items():
                    if e == "total_tokens":
                        continue
                    count[i, int(e)] = int(values["activation_tokens"])
                    mass[i, int(e)] = float(values["gate_values_sum"])
            if len(totals) != 1:
                raise StatsFileError(f"{path}: total_tokens differs across layers {sorted(totals)[:4]}")
            counts.append(count)
            masses.append(mass)
            tokens.append(totals.pop())
        count = torch.stack(counts)
        tokens_t = torch.tensor(tokens, dtype=torch.long)
        if top_k is None:
            per_token = count[0].sum(-1).double() / max(int(tokens_t[0]), 1)
            top_k = int(round(float(per_token.mean())))
        try:
            return cls(tuple(languages), tuple(layers), experts, top_k, count, torch.stack(masses), tokens_t,
                       meta={"source": str(directory), "pattern": pattern})
        except ValueError as error:
            raise StatsFileError(f"the files {directory / pattern} are inconsistent: {error}") from None

    def merge(self, *others: "RoutingStats") -> "RoutingStats":
        """Combine stats of the same model: counts of a language present in both are summed.

        ```python
        >>> merged = a.merge(b)          # languages: a's, then b's new ones
        ```
        """
        result = self
        for other in others:
            if (other.layers, other.num_experts, other.top_k) != (result.layers, result.num_experts, result.top_k):
                raise ValueError("can only merge stats of the same model (layers, num_experts, top_k differ)")
            languages = list(result.languages) + [l for l in other.languages if l not in result.languages]
            shape = (len(languages), len(result.layers), result.num_experts)
            count = torch.zeros(shape, dtype=torch.long)
            mass = torch.zeros(shape, dtype=torch.float64)
            tokens = torch.zeros(len(languages), dtype=torch.long)
            for stats in (result, other):
                index = torch.tensor([languages.index(l) for l in stats.languages])
                count.index_add_(0, index, stats.count.cpu().long())
                mass.index_add_(0, index, stats.gate_mass.cpu().double())
                tokens.index_add_(0, index, stats.tokens.cpu().long())
            items = None
            if result.item_count is not None and other.item_count is not None:
                relabel = torch.tensor([languages.index(l) for l in other.languages])
                items = (torch.cat([result.item_count, other.item_count]),
                         torch.cat([result.item_tokens, other.item_tokens]),
                         torch.cat([result.item_language, relabel[other.item_language]]))
            result = RoutingStats(tuple(languages), result.layers, result.num_experts, result.top_k, count, mass,
                                  tokens, *(items or (None, None, None)), meta={**result.meta, "merged": True})
        return result

    def select(self, languages: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> "RoutingStats":
        """A view on some languages and/or layers (in the order given).

        ```python
        >>> p.select(["en", "zh"], layers=range(10, 40)).count.shape
        torch.Size([2, 30, 128])
        ```
        """
        lang_index = [self.language_index(l) for l in (languages or self.languages)]
        layer_index = [self.layer_index(l) for l in (layers if layers is not None else self.layers)]
        li, yi = torch.tensor(lang_index), torch.tensor(layer_index)
        items = (None, None, None)
        if self.item_count is not None:
            keep = torch.isin(self.item_language, li)
            remap = torch.full((len(self.languages),), -1, dtype=torch.long)
            remap[li] = torch.arange(len(li))
            items = (self.item_count[keep][:, yi], self.item_tokens[keep], remap[self.item_language[keep]])
        return RoutingStats(tuple(self.languages[i] for i in lang_index), tuple(self.layers[i] for i in layer_index),
                            self.num_experts, self.top_k, self.count[li][:, yi], self.gate_mass[li][:, yi],
                            self.tokens[li], *items, meta=dict(self.meta))

    def language_index(self, language: str) -> int:
        """Position of a language label; `KeyError` with close matches when unknown."""
        if language not in self.languages:
            import difflib

            close = difflib.get_close_matches(str(language), self.languages, n=3, cutoff=0.3)
            raise KeyError(f"language {language!r} is not in these stats; close matches: {close}; "
                           f"all: {list(self.languages)}")
        return self.languages.index(language)

    def layer_index(self, layer: int) -> int:
        """Position of a real MoE layer index on the `layer` axis; `ValueError` when absent."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not in these stats (layers {self.layers[0]}-{self.layers[-1]})")
        return self.layers.index(layer)

    # -- basic quantities ----------------------------------------------------------

    def frequency(self) -> Float[Tensor, "lang layer expert"]:
        """`count / tokens`: how often each expert is used per token (sums to `top_k`)."""
        return self.count.double() / self.tokens.clamp(min=1).double()[:, None, None]

    def distribution(self) -> Float[Tensor, "lang layer expert"]:
        """`frequency() / top_k`: the routing distribution over experts (sums to 1)."""
        return self.frequency() / self.top_k

    # -- analyses (moe_interp.analysis) -------------------------------------------

    def shares(self, languages: Sequence[str] | None = None, k: int | None = None) -> Float[Tensor, "lang layer expert"]:
        """The paper's language shares `p[l, L, e]` over `languages` (top-`k` per language and
        layer, then shares across languages; `k=None`: 15 of 128 experts scaled to this model).

        ```python
        >>> p.shares(["en", "zh"]).shape          # released MGSM counts: 48 layers, 128 experts
        torch.Size([2, 48, 128])
        ```
        """
        from .analysis.expert_sets import shares

        return shares(self, languages, k)

    def exclusive_experts(self, target: str | Sequence[str], k: int | None = None, threshold: float = 0.4,
                          layers: Sequence[int] | None = None, among: Sequence[str] | None = None) -> ExpertSet:
        """Experts whose share for `target` (a language or a set of them) exceeds `threshold`.

        The paper's algorithm over the languages `among` (default: all of these stats):
        keep each language's top-`k` experts per layer, take shares across languages,
        select `sum_{l in target} p > threshold` (strict). Ties follow `torch.topk`.
        `k=None` is the paper's 15 of 128 experts scaled to this model (`mi.PAPER.scaled_k`:
        2 of the demo model's 16); pass `k=mi.PAPER.exclusive_k` for exactly 15.

        On few languages the rule is loose: shares of one expert sum to 1 over `among`, so
        with two languages an expert at shares 0.45 / 0.55 is "exclusive" to both at the
        paper's threshold 0.4 (the paper used 8 to 10 languages). For sets that exclude each
        other, pass `threshold >= 0.5`, or more languages in `among`.

        ```python
        >>> {l: p.exclusive_experts(l).size for l in ("en", "sw")}   # released MGSM counts
        {'en': 205, 'sw': 271}
        ```
        """
        from .analysis.expert_sets import exclusive_experts

        return exclusive_experts(self, target, k=k, threshold=threshold, layers=layers, among=among)

    def shared_experts(self, languages: Sequence[str] | None = None, k: int | None = None, threshold: float = 0.4,
                       layers: Sequence[int] | None = None) -> ExpertSet:
        """Experts used by the `languages` with no language's share reaching `threshold`.

        The paper's algorithm (`any p > 0 and all p < threshold`); strengths are the first
        language's share, as its steering uses. `k=None` is 15 of 128 experts scaled to this
        model; the paper's steering set used `k=20, threshold=0.7` (`mi.PAPER.steer_k`, as
        `mi.RouteSteer` defaults to, scaled).

        ```python
        >>> s = p.shared_experts(["en", "zh"], k=20, threshold=0.7, layers=range(10, 40))
        >>> s.size, round(s.mean_strength(), 3)
        (420, 0.507)
        ```
        """
        from .analysis.expert_sets import shared_experts

        return shared_experts(self, languages, k=k, threshold=threshold, layers=layers)

    def entropy(self) -> Float[Tensor, "lang layer"]:
        """Entropy of each routing distribution over `log(num_experts)`: 1 = all experts equally used.

        ```python
        >>> p.entropy().shape                     # released MGSM counts: 8 languages, 48 layers
        torch.Size([8, 48])
        ```
        """
        from .analysis.divergence import entropy

        return entropy(self)

    def divergence(self, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
        """Per layer, the `[lang, lang]` divergence of routing distributions.

        `metric`: `"js"` (Jensen-Shannon, base 2, as the paper's released code), `"cosine"`,
        `"hellinger"` or `"kl_sym"`; `layers`: `None`, `"early"`/`"middle"`/`"late"` or
        real indices. Average over a band with `moe_interp.analysis.divergence.band_average`.

        ```python
        >>> js = p.divergence()
        >>> round(float(js[:16, p.language_index("sw"), p.language_index("en")].mean()), 3)
        0.284
        ```
        """
        from .analysis.divergence import divergence

        return divergence(self, metric, layers)

    def similarity(self, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
        """`1 - divergence(metric, layers)` for the bounded metrics (1 = identical routing).

        ```python
        >>> float(p.similarity(layers="middle")[0, 0, 0])
        1.0
        ```
        """
        from .analysis.divergence import similarity

        return similarity(self, metric, layers)

    def cluster(self, metric: str = "js", layers: Any = None, method: str = "average") -> Any:
        """Hierarchical clustering (scipy linkage) of the languages on their mean divergence.

        ```python
        >>> c = p.cluster(layers="middle")
        >>> c.assignments(2)["es"] == c.assignments(2)["fr"]
        True
        ```
        """
        from .analysis.clustering import cluster

        return cluster(self, metric, layers, method)

    def family_agreement(self, metric: str = "js", layers: Any = None, level: str = "family",
                         script: str | None = None, **kwargs: Any) -> Any:
        """How well routing clusters follow language families: ARI, within/between divergence, ...

        Also reported within each script (`by_script`), since script alone separates languages.

        ```python
        >>> a = p.family_agreement()
        >>> a.n_families, round(a.ari, 3), round(a.ratio, 3)
        (4, 0.583, 0.644)
        ```
        """
        from .analysis.clustering import family_agreement

        return family_agreement(self, metric, layers, level=level, script=script, **kwargs)

    def layer_profile(self, metric: str = "js", k: int | None = None, threshold: float = 0.4) -> Any:
        """Per layer: mean divergence, shared fraction, exclusive counts, entropy; `.bands()` summaries.

        ```python
        >>> prof = p.layer_profile()
        >>> round(prof.bands()["middle"]["mean_divergence"], 3)
        0.1
        ```
        """
        from .analysis.profile import layer_profile

        return layer_profile(self, metric, k, threshold)

    def bootstrap(self, statistic: Any = "divergence", n: int = 200, level: float = 0.95, seed: int = 0,
                  **kwargs: Any) -> Any:
        """Bootstrap confidence intervals over items (needs per-item counts, kept by `mi.profile`).

        `statistic`: `"divergence"`, `"shares"`, `"exclusive_sizes"`, `"shared_size"` (`kwargs`
        go to it) or a function `RoutingStats -> Tensor`.

        ```python
        >>> ci = profile.bootstrap("exclusive_sizes", n=100, seed=0)
        >>> ci.low.shape == ci.estimate.shape == (len(profile.languages),)
        True
        ```
        """
        from .analysis.bootstrap import bootstrap

        return bootstrap(self, statistic, n=n, level=level, seed=seed, **kwargs)

    def to_pandas(self) -> Any:
        """Tidy long table: one row per (language, layer, expert) with count, gate mass, frequency.

        ```python
        >>> df = p.to_pandas()
        >>> df.columns.tolist(), len(df)
        (['language', 'layer', 'expert', 'count', 'gate_mass', 'frequency', 'tokens'], 49152)
        ```
        """
        import pandas as pd

        n_lang, n_layer, n_expert = self.count.shape
        lang = torch.arange(n_lang).repeat_interleave(n_layer * n_expert)
        return pd.DataFrame({
            "language": pd.Categorical.from_codes(lang.numpy(), categories=list(self.languages)),
            "layer": torch.tensor(self.layers).repeat_interleave(n_expert).repeat(n_lang).numpy(),
            "expert": torch.arange(n_expert).repeat(n_lang * n_layer).numpy(),
            "count": self.count.reshape(-1).cpu().numpy(),
            "gate_mass": self.gate_mass.reshape(-1).double().cpu().numpy(),
            "frequency": self.frequency().reshape(-1).cpu().numpy(),
            "tokens": self.tokens.cpu()[lang].numpy(),
        })

    # -- figures (moe_interp.plots; plotly figures, never shown) ------------------

    def plot_heatmap(self, language: str | None = None, **kwargs: Any) -> Any:
        """Routing frequency heatmap (layer x expert) of one language, or all with a selector.

        ```python
        >>> p.plot_heatmap("en").data[0].type
        'heatmap'
        ```
        """
        from .plots import routing_heatmap

        return routing_heatmap(self, language, **kwargs)

    def plot_divergence(self, metric: str = "js", layers: Any = None, **kwargs: Any) -> Any:
        """Divergence matrix averaged over `layers` (or one panel per band with `bands=True`).

        ```python
        >>> p.plot_divergence(layers="middle").layout.xaxis.title.text
        'language'
        ```
        """
        from .plots import divergence_heatmap

        return divergence_heatmap(self, metric, layers, **kwargs)

    def plot_dendrogram(self, metric: str = "js", layers: Any = None, **kwargs: Any) -> Any:
        """Dendrogram of the languages' routing, leaves coloured by language family.

        ```python
        >>> len(p.plot_dendrogram().data) > 0
        True
        ```
        """
        from .plots import dendrogram

        return dendrogram(self, metric, layers, **kwargs)

    def plot_layer_profile(self, **kwargs: Any) -> Any:
        """Layer-profile curves: mean divergence, shared fraction, entropy, exclusive counts.

        ```python
        >>> p.plot_layer_profile().layout.xaxis2.title.text
        'MoE layer'
        ```
        """
        from .plots import layer_profile

        return layer_profile(self, **kwargs)

    def plot_expert_counts(self, **kwargs: Any) -> Any:
        """Exclusive experts per language, and experts each shares with a reference language.

        ```python
        >>> p.plot_expert_counts().data[0].name
        'exclusive'
        ```
        """
        from .plots import expert_counts

        return expert_counts(self, **kwargs)

    # -- files ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write to a directory `path` (`stats.safetensors` + a readable `meta.json`); returns it.

        Refuses to replace an existing path unless `overwrite=True`, and even then only a
        directory written by `save` (or an empty one). Each file is written to a temporary file
        beside it, flushed to disk, then renamed over the old one (`os.replace`), so a save
        killed at any moment leaves the old stats or the new ones, loadable, never neither.
        `stats.safetensors` holds everything `load` reads, with a sha256 checksum of it;
        `meta.json` is a copy of the header for people and other tools.

        ```python
        >>> p.save("qwen3.routing")
        PosixPath('qwen3.routing')
        >>> mi.RoutingStats.load("qwen3.routing").languages == p.languages
        True
        ```
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            if not path.is_dir() or (any(path.iterdir()) and not (path / _TENSOR_FILE).exists()
                                     and not (path / _META_FILE).exists()):
                raise FileExistsError(f"{path} exists and is not a directory written by RoutingStats.save; "
                                      "overwrite=True replaces only those: choose another path")
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSORS
                   if getattr(self, name) is not None}
        for name, value in (self.per_token or {}).items():
            tensors[f"per_token.{name}"] = value.detach().cpu().contiguous()
        header = {"format": _FORMAT, "languages": list(self.languages), "layers": list(self.layers),
                  "num_experts": self.num_experts, "top_k": self.top_k, "meta": self.meta,
                  "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
        body = json.dumps(header, default=str)
        checksum = _checksum(body, tensors)
        readable = json.dumps({**json.loads(body), "sha256": checksum}, indent=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a new path appears whole: both files go into a hidden directory renamed into place
        target = path if path.exists() else path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        target.mkdir(exist_ok=True)
        try:
            _replace_file(target / _TENSOR_FILE, lambda temp: save_file(
                tensors, str(temp), metadata={"moe_interp": body, "sha256": checksum}))
            _replace_file(target / _META_FILE, lambda temp: temp.write_text(readable))
            if target != path:
                os.replace(target, path)
                _sync_directory(path.parent)
        finally:
            if target != path and target.exists():
                shutil.rmtree(target)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RoutingStats":
        """Read stats written by `save`; a damaged or inconsistent file raises `StatsFileError` naming it.

        The sha256 checksum `save` stores is verified, so a changed byte is an error, never
        different numbers. Files written before stats files carried a checksum load
        unverified, with a `UserWarning` saying so; save them again to add one.

        ```python
        >>> mi.RoutingStats.load("qwen3.routing").count.shape
        torch.Size([8, 48, 128])
        ```
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        meta_path, tensor_path = path / _META_FILE, path / _TENSOR_FILE
        if not path.is_dir() or not meta_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved RoutingStats (expected a directory with "
                                    "meta.json and stats.safetensors, as written by RoutingStats.save)")
        header = _read_header(meta_path.read_bytes(), meta_path)
        try:
            with safe_open(str(tensor_path), framework="pt") as handle:
                stored = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise StatsFileError(f"{tensor_path} is truncated or corrupted: {error}") from None
        if "moe_interp" in stored:
            # the checksummed copy inside the tensor file is the header of record: meta.json may be
            # one save behind if a save was killed between its two renames
            if _checksum(stored["moe_interp"], tensors) != stored.get("sha256"):
                raise StatsFileError(f"{tensor_path} fails its sha256 checksum: it was changed or damaged after "
                                     "RoutingStats.save wrote it; restore a copy or recompute the stats")
            header = _read_header(stored["moe_interp"].encode(), tensor_path)
        else:
            warnings.warn(f"{tensor_path} has no checksum (written before stats files had one): loaded "
                          "unverified; save it again to add one", UserWarning, stacklevel=2)
        missing = [n for n in ("count", "gate_mass", "tokens") if n not in tensors]
        if missing:
            raise StatsFileError(f"{tensor_path} lacks tensors {missing}")
        per_token = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("per_token.")} or None
        try:
            return cls(tuple(header["languages"]), tuple(header["layers"]), header["num_experts"], header["top_k"],
                       *(tensors.get(n) for n in _TENSORS), meta=header.get("meta", {}), per_token=per_token)
        except (KeyError, ValueError, TypeError) as error:
            raise StatsFileError(f"{path} is inconsistent: {error}") from None

    def __repr__(self) -> str:
        langs = ", ".join(self.languages[:8]) + (", ..." if len(self.languages) > 8 else "")
        return (f"RoutingStats(languages=[{langs}], layers={len(self.layers)}, experts={self.num_experts}, "
                f"top_k={self.top_k}, tokens={int(self.tokens.sum())})")


def _checksum(header: str, tensors: dict[str, Tensor]) -> str:
    """sha256 of a file's header text and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _read_header(text: bytes, where: Path) -> dict:
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StatsFileError(f"{where} is corrupted: {error}") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise StatsFileError(f"{where} is not a {_FORMAT} header")
    return header


def _replace_file(path: Path, write: Any) -> None:
    """`write(temp)` a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename is durable only then); not possible on Windows."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
