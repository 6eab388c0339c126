"""`RoutingStats`: aggregate routing counts per (language, MoE layer, expert), and their analyses.

Data flows one way: traces fill a `RoutingStats`; its methods are thin, documented doors
to `moe_interp.analysis` (imported lazily, since analysis builds on this module) and to
`moe_interp.plots`.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .expert_set import ExpertSet

__all__ = ["RoutingStats", "StatsFileError"]

_FORMAT = "moe_interp.RoutingStats/1"
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


@dataclasses.dataclass(eq=False)
class RoutingStats:
    """Routing counts of one model over groups of text (usually languages).

    For every non-padding token and MoE layer, each of the `top_k` experts the model
    used adds 1 to `count[lang, layer, expert]` and its routing weight to
    `gate_mass[...]`; `tokens[lang]` counts the tokens. `layers` holds the real indices of
    the MoE layers (the `layer` axis). Per-item counts (`item_count`, `item_tokens`,
    `item_language`), kept by `mi.profile`, allow bootstrap confidence intervals.

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
        self.languages = tuple(self.languages)
        self.layers = tuple(int(layer) for layer in self.layers)
        n_lang, n_layer, n_expert = self.count.shape
        if len(self.languages) != n_lang or len(set(self.languages)) != n_lang:
            raise ValueError(f"languages {self.languages} must be {n_lang} distinct labels")
        if len(self.layers) != n_layer or n_expert != self.num_experts:
            raise ValueError(f"count has shape {tuple(self.count.shape)} but layers={len(self.layers)} "
                             f"and num_experts={self.num_experts}")
        if self.gate_mass.shape != self.count.shape:
            raise ValueError("gate_mass must have the shape of count")

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
        return cls(tuple(languages), tuple(layers), experts, top_k, count, torch.stack(masses), tokens_t,
                   meta={"source": str(directory), "pattern": pattern})

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

    def shares(self, languages: Sequence[str] | None = None, k: int = 15) -> Float[Tensor, "lang layer expert"]:
        """The paper's language shares `p[l, L, e]` over `languages` (section 2, steps 1-2)."""
        from .analysis.expert_sets import shares

        return shares(self, languages, k)

    def exclusive_experts(self, target: str | Sequence[str], k: int = 15, threshold: float = 0.4,
                          layers: Sequence[int] | None = None, among: Sequence[str] | None = None) -> ExpertSet:
        """Experts whose share for `target` (a language or a set of them) exceeds `threshold`.

        The paper's algorithm over the languages `among` (default: all of these stats):
        keep each language's top-`k` experts per layer, take shares across languages,
        select `sum_{l in target} p > threshold` (strict). Ties follow `torch.topk`.

        ```python
        >>> {l: p.exclusive_experts(l).size for l in ("en", "sw")}   # released MGSM counts
        {'en': 205, 'sw': 271}
        ```
        """
        from .analysis.expert_sets import exclusive_experts

        return exclusive_experts(self, target, k=k, threshold=threshold, layers=layers, among=among)

    def shared_experts(self, languages: Sequence[str] | None = None, k: int = 15, threshold: float = 0.4,
                       layers: Sequence[int] | None = None) -> ExpertSet:
        """Experts used by the `languages` with no language's share reaching `threshold`.

        The paper's algorithm (`any p > 0 and all p < threshold`); strengths are the first
        language's share, as its steering uses.

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

        `metric`: `"js"` (Jensen-Shannon, base 2; PAPER.md section 5), `"cosine"`,
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

    def layer_profile(self, metric: str = "js", k: int = 15, threshold: float = 0.4) -> Any:
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
        """Write to a directory `path` (safetensors tensors + `meta.json`); returns it.

        Refuses to replace an existing path unless `overwrite=True`. The write goes to a
        temporary directory first, so an interrupted save never leaves a half file.

        ```python
        >>> p.save("qwen3.routing")
        PosixPath('qwen3.routing')
        >>> mi.RoutingStats.load("qwen3.routing").languages == p.languages
        True
        ```
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSORS
                   if getattr(self, name) is not None}
        for name, value in (self.per_token or {}).items():
            tensors[f"per_token.{name}"] = value.detach().cpu().contiguous()
        header = {"format": _FORMAT, "languages": list(self.languages), "layers": list(self.layers),
                  "num_experts": self.num_experts, "top_k": self.top_k, "meta": self.meta,
                  "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file(tensors, staging / "stats.safetensors")
            (staging / "meta.json").write_text(json.dumps(header, indent=1, default=str))
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            staging.rename(path)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RoutingStats":
        """Read stats written by `save`; a damaged file raises `StatsFileError` naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        meta_path, tensor_path = path / "meta.json", path / "stats.safetensors"
        if not path.is_dir() or not meta_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved RoutingStats (expected a directory with "
                                    "meta.json and stats.safetensors, as written by RoutingStats.save)")
        try:
            header = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StatsFileError(f"{meta_path} is corrupted: {error}") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise StatsFileError(f"{meta_path} is not a {_FORMAT} header")
        try:
            tensors = load_file(tensor_path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise StatsFileError(f"{tensor_path} is truncated or corrupted: {error}") from None
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
