"""`RoutingStats`: routing counts with the paper's analyses and figures as methods.

The top of the statistics stack: the data, its checks, selection, merging and files live in
`moe_interp.core._counts.RoutingCounts`; the analyses in `moe_interp.analysis`, the figures in
`moe_interp.analysis.plots`, both on `RoutingCounts`. This module imports them all and adds one
documented method per analysis; nothing below imports it.
"""

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from moe_interp import analysis
from moe_interp.analysis import plots
from moe_interp.core._counts import RoutingCounts, StatsFileError
from moe_interp.analysis import THRESHOLD
from moe_interp.core._expert_set import ExpertSet

__all__ = ["RoutingStats", "StatsFileError"]


class RoutingStats(RoutingCounts):
    """Routing counts of one model over groups of text (usually languages), with the paper's
    analyses (`moe_interp.analysis`) and figures (`moe_interp.analysis.plots`) as methods.

    Fields, checks, `select`, `merge`, `save` / `load` and `from_paper` are those of
    `RoutingCounts`; every method below is the function of the same name applied to it.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> p
    RoutingStats(languages=[bn, de, en, es, fr, ja, sw, zh], layers=48, experts=128, top_k=8, tokens=...)
    >>> p.exclusive_experts("sw").size == mi.analysis.exclusive_experts(p, "sw").size
    True

    ```
    """

    @classmethod
    def from_counts(cls, counts: RoutingCounts) -> "RoutingStats":
        """The same counts with the analyses as methods (what `mi.trace` does with the
        `RoutingCounts` the runtime records). The fields are shared, not copied or checked again.

        ```python
        >>> import moe_interp as mi, torch
        >>> from moe_interp.core._counts import RoutingCounts
        >>> counts = RoutingCounts(("en",), (0,), 4, 2, torch.tensor([[[2, 1, 1, 0]]]),
        ...                        torch.tensor([[[1.0, 0.5, 0.5, 0.0]]]), torch.tensor([2]))
        >>> stats = mi.RoutingStats.from_counts(counts)
        >>> type(stats).__name__, stats.count is counts.count
        ('RoutingStats', True)

        ```
        """
        stats = cls.__new__(cls)  # the counts were checked when made: no second check
        stats.__dict__.update(counts.__dict__)
        return stats

    def shares(self, languages: Sequence[str] | None = None, k: int | None = None) -> Float[Tensor, "lang layer expert"]:
        """The paper's language shares `p[l, L, e]` over `languages` (top-`k` per language and
        layer, then shares across languages; `k=None`: 15 of 128 experts scaled to this model).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.shares(["en", "zh"]).shape          # released MGSM counts: 48 layers, 128 experts
        torch.Size([2, 48, 128])

        ```
        """
        return analysis.shares(self, languages, k)

    def exclusive_experts(self, target: str | Sequence[str], k: int | None = None, threshold: float = THRESHOLD,
                          layers: Any = None, among: Sequence[str] | None = None) -> ExpertSet:
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
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> {l: p.exclusive_experts(l).size for l in ("en", "sw")}   # released MGSM counts
        {'en': 205, 'sw': 271}

        ```
        """
        return analysis.exclusive_experts(self, target, k=k, threshold=threshold, layers=layers, among=among)

    def shared_experts(self, languages: Sequence[str] | None = None, k: int | None = None, threshold: float = THRESHOLD,
                       layers: Any = None) -> ExpertSet:
        """Experts used by the `languages` with no language's share reaching `threshold`.

        The paper's algorithm (`any p > 0 and all p < threshold`); strengths are the first
        language's share, as its steering uses. `k=None` is 15 of 128 experts scaled to this
        model; the paper's steering set used `k=20, threshold=0.7` (`mi.PAPER.steer_k`, as
        `mi.RouteSteer` defaults to, scaled).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> s = p.shared_experts(["en", "zh"], k=20, threshold=0.7, layers=range(10, 40))
        >>> s.size, round(s.mean_strength(), 3)
        (420, 0.507)

        ```
        """
        return analysis.shared_experts(self, languages, k=k, threshold=threshold, layers=layers)

    def entropy(self) -> Float[Tensor, "lang layer"]:
        """Entropy of each routing distribution over `log(num_experts)`: 1 = all experts equally used.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.entropy().shape                     # released MGSM counts: 8 languages, 48 layers
        torch.Size([8, 48])

        ```
        """
        return analysis.entropy(self)

    def token_entropy(self, normalise: bool = False) -> Float[Tensor, "lang layer"]:
        """Mean per-token routing entropy per language (group) and layer: each counted token's
        entropy of `softmax(router logits)` over all experts, averaged (`entropy_sum / tokens`;
        `nan` without tokens). In nats, or over `log(num_experts)` with `normalise=True`, the
        scale of `entropy()`, the entropy of the language's aggregate load: a language can
        spread its load over every expert (`entropy()` near 1) while each of its tokens routes
        sharply (`token_entropy` low). Needs `RouterRecord(entropy=True)`. On a router that
        scores by sigmoid (DeepSeek-V3, GLM-4-MoE, Llama 4) it is the softmax of the raw logits,
        which the model never computes (bias, groups and its own scores ignored).

        ```python
        >>> import moe_interp as mi, torch
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with torch.no_grad(), mi.trace(model, mi.RouterRecord(entropy=True)) as tr:
        ...     with tr.invoke("The cat sat.", group="en"):
        ...         pass
        >>> h = tr.routing.token_entropy(normalise=True)
        >>> h.shape, bool((h > 0).all() and (h <= 1).all())
        (torch.Size([1, 4]), True)
        >>> mi.datasets.reference_stats().token_entropy()
        Traceback (most recent call last):
        ValueError: these stats have no per-token routing entropy: record it with mi.RouterRecord(entropy=True) (mi.trace, or among mi.profile's interventions)

        ```
        """
        if self.entropy_sum is None:
            raise ValueError("these stats have no per-token routing entropy: record it with "
                             "mi.RouterRecord(entropy=True) (mi.trace, or among mi.profile's interventions)")
        tokens = self.tokens.double()[:, None]
        mean = torch.where(tokens > 0, self.entropy_sum.double() / tokens.clamp(min=1), float("nan"))
        if normalise:
            mean = mean / math.log(self.num_experts) if self.num_experts > 1 else mean * 0.0
        return mean

    def divergence(self, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
        """Per layer, the `[lang, lang]` divergence of routing distributions.

        `metric`: `"js"` (Jensen-Shannon, base 2, as the paper's released code), `"cosine"`,
        `"hellinger"` or `"kl_sym"`; `layers`: `None`, `"early"`/`"middle"`/`"late"` or
        real indices. Average over a band with `mi.analysis.band_average`.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> js = p.divergence()
        >>> round(float(js[:16, p.language_index("sw"), p.language_index("en")].mean()), 3)
        0.284

        ```
        """
        return analysis.divergence(self, metric, layers)

    def similarity(self, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
        """`1 - divergence(metric, layers)` for the bounded metrics (1 = identical routing).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> float(p.similarity(layers="middle")[0, 0, 0])
        1.0

        ```
        """
        return analysis.similarity(self, metric, layers)

    def cluster(self, metric: str = "js", layers: Any = None, method: str = "average") -> analysis.Clustering:
        """Hierarchical clustering (scipy linkage) of the languages on their mean divergence.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> c = p.cluster(layers="middle")
        >>> c.assignments(2)["es"] == c.assignments(2)["fr"]
        True

        ```
        """
        return analysis.cluster(self, metric, layers, method)

    def family_agreement(self, metric: str = "js", layers: Any = None, level: str = "family",
                         script: str | None = None, **kwargs: Any) -> analysis.FamilyAgreement:
        """How well routing clusters follow language families: ARI, within/between divergence, ...

        Also reported within each script (`by_script`), since script alone separates languages.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> a = p.family_agreement()
        >>> a.n_families, round(a.ari, 3), round(a.ratio, 3)
        (4, 0.583, 0.644)

        ```
        """
        return analysis.family_agreement(self, metric, layers, level=level, script=script, **kwargs)

    def layer_profile(self, metric: str = "js", k: int | None = None, threshold: float = THRESHOLD) -> analysis.LayerProfile:
        """Per layer: mean divergence, shared fraction, exclusive counts, entropy; `.bands()` summaries.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> prof = p.layer_profile()
        >>> round(prof.bands()["middle"]["mean_divergence"], 3)
        0.1

        ```
        """
        return analysis.layer_profile(self, metric, k, threshold)

    def health(self, resamples: int = 200, level: float = 0.95, seed: int = 0) -> analysis.Health:
        """Expert load and health per layer, per language and over all (`"all"`): load against
        uniform, its coefficient of variation and max / mean (intervals over texts when per-item
        counts are kept), experts never chosen, entropy. Against a twin: `mi.analysis.compare`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> s = mi.RoutingStats(("en",), (0, 1), 4, 1, torch.tensor([[[2, 2, 0, 0], [1, 1, 1, 1]]]),
        ...                     torch.zeros(1, 2, 4), torch.tensor([4]))
        >>> h = s.health()
        >>> h.dead_experts(), h.max_over_mean[-1].tolist()       # layer 0 uses 2 of 4 experts
        ({0: (2, 3)}, [2.0, 1.0])

        ```
        """
        return analysis.health(self, resamples, level, seed)

    def co_activation_rate(self, layers: Any = None,
                           pooled: bool = False) -> Float[Tensor, "group layer expert expert2"]:
        """OLMoE's co-activation: of the tokens routed to expert `i`, the share also routed to `j`
        (`co_activation[i, j] / count[i]`; diagonal 0, never-chosen experts `nan`), per group and
        layer; `pooled=True` sums the groups first. Needs `RouterRecord(co_activation=True)`.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")                     # top-2 of 8 experts
        >>> with mi.trace(model, "The cat sat.", mi.RouterRecord(co_activation=True)) as tr:
        ...     pass
        >>> rate = tr.routing.co_activation_rate()
        >>> rate.shape
        torch.Size([1, 4, 8, 8])
        >>> rate[0, 0].sum(-1)            # top-2: each token of an expert has one partner
        tensor([1., 1., 1., 1., 1., 1., 1., 1.], dtype=torch.float64)

        ```
        """
        return analysis.co_activation_rate(self, layers, pooled)

    def split_effect(self, metric: str = "js", layers: Any = None, level: int = -1,
                     min_tokens: int = 10) -> analysis.SplitEffect:
        """Per layer, how far apart the parts of a language route (token kinds, position buckets:
        groups `"<language>/<part>"` from `RouterRecord(by_token_kind=True)` / `by_position=`)
        against how far apart languages route on one part (`mi.analysis.split_effect`).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with mi.trace(model, mi.RouterRecord(by_position=True)) as tr:
        ...     with tr.invoke(["The cat sat on the mat, all day long."] * 2, group="eng"):
        ...         pass
        ...     with tr.invoke(["Die Katze saß den ganzen Tag auf der Matte."] * 2, group="deu"):
        ...         pass
        >>> effect = tr.routing.split_effect(min_tokens=2)
        >>> effect.parts, effect.tokens.tolist()
        (('pos0', 'pos1-3', 'pos4-15', 'pos16-63', 'pos64+'), [[2, 6, 24, 42, 0], [2, 6, 24, 56, 0]])

        ```
        """
        return analysis.split_effect(self, metric, layers, level, min_tokens)

    def bootstrap(self, statistic: Any = "divergence", resamples: int = 200, level: float = 0.95, seed: int = 0,
                  **kwargs: Any) -> analysis.BootstrapResult:
        """Bootstrap confidence intervals over items (needs per-item counts, kept by `mi.profile`).

        `statistic`: `"divergence"`, `"shares"`, `"exclusive_sizes"`, `"shared_size"` (`kwargs`
        go to it) or a function `RoutingStats -> Tensor`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])
        >>> s = mi.RoutingStats(("en", "de"), (0,), 4, 1, torch.stack([items[:2].sum(0), items[2:].sum(0)]),
        ...                     torch.zeros(2, 1, 4), torch.tensor([4, 4]), item_count=items,
        ...                     item_tokens=torch.tensor([2, 2, 2, 2]), item_language=torch.tensor([0, 0, 1, 1]))
        >>> ci = s.bootstrap("divergence", resamples=50)  # en and de never share an expert
        >>> float(ci.estimate[0, 0, 1]), float(ci.low[0, 0, 1]), float(ci.high[0, 0, 1])
        (1.0, 1.0, 1.0)

        ```
        """
        return analysis.bootstrap(self, statistic, resamples, level, seed, **kwargs)

    def to_pandas(self) -> pd.DataFrame:
        """Tidy long table: one row per (language, layer, expert) with count, gate mass, frequency.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> df = p.to_pandas()
        >>> df.columns.tolist(), len(df)
        (['language', 'layer', 'expert', 'count', 'gate_mass', 'frequency', 'tokens'], 49152)

        ```
        """
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

    def plot_heatmap(self, language: str | None = None, **kwargs: Any) -> go.Figure:
        """Routing frequency heatmap (layer x expert) of one language, or all with a selector.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.plot_heatmap("en").data[0].type
        'heatmap'

        ```
        """
        return plots.routing_heatmap(self, language, **kwargs)

    def plot_divergence(self, metric: str = "js", layers: Any = None, **kwargs: Any) -> go.Figure:
        """Divergence matrix averaged over `layers` (or one panel per band with `bands=True`).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.plot_divergence(layers="middle").layout.xaxis.title.text
        'language'

        ```
        """
        return plots.divergence_heatmap(self, metric, layers, **kwargs)

    def plot_dendrogram(self, metric: str = "js", layers: Any = None, **kwargs: Any) -> go.Figure:
        """Dendrogram of the languages' routing, leaves coloured by language family.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> len(p.plot_dendrogram().data) > 0
        True

        ```
        """
        return plots.dendrogram(self, metric, layers, **kwargs)

    def plot_layer_profile(self, **kwargs: Any) -> go.Figure:
        """Layer-profile curves: mean divergence, shared fraction, entropy, exclusive counts.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.plot_layer_profile().layout.xaxis2.title.text
        'MoE layer'

        ```
        """
        return plots.layer_profile(self, **kwargs)

    def plot_expert_counts(self, **kwargs: Any) -> go.Figure:
        """Exclusive experts per language, and experts each shares with a reference language.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
        >>> p.plot_expert_counts().data[0].name
        'exclusive'

        ```
        """
        return plots.expert_counts(self, **kwargs)

    def plot_health(self, other: "RoutingCounts | None" = None, **kwargs: Any) -> go.Figure:
        """Expert load against uniform per layer, experts never chosen crossed, cv and max / mean;
        `other` (e.g. the random-init twin on the same texts) drawn below (`mi.plots.load_health`).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> count = torch.tensor([[[4, 2, 2, 0], [2, 2, 2, 2]]])
        >>> s = mi.RoutingStats(("en",), (0, 1), 4, 2, count, count / 2.0, torch.tensor([4]))
        >>> s.plot_health(s, names=["trained", "twin"]).layout.title.text
        'Expert load per layer (all); experts never chosen: trained 1, twin 1'

        ```
        """
        return plots.load_health(self, other, **kwargs)

    def plot_entropy(self, other: "RoutingCounts | None" = None, **kwargs: Any) -> go.Figure:
        """Routing entropy per MoE layer, each token's (`token_entropy`) against the load's
        (`entropy`); `other` (e.g. the random-init twin on the same texts) beside it
        (`mi.plots.routing_entropy`). Needs `RouterRecord(entropy=True)`.

        ```python
        >>> import moe_interp as mi, torch
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with torch.no_grad(), mi.trace(model, "The cat sat.", mi.RouterRecord(entropy=True)) as tr:
        ...     pass
        >>> len(tr.routing.plot_entropy(tr.routing, names=["a", "b"]).data)
        4

        ```
        """
        return plots.routing_entropy(self, other, **kwargs)

    def plot_co_activation(self, layer: int | None = None, group: str | None = None, other: "RoutingCounts | None" = None,
                           **kwargs: Any) -> go.Figure:
        """OLMoE's co-activation heatmap of one MoE layer (`co_activation_rate`, in %), all groups
        pooled or one `group`; `other` (e.g. the random-init twin) beside it
        (`mi.plots.co_activation_heatmap`).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with mi.trace(model, "The cat sat.", mi.RouterRecord(co_activation=True)) as tr:
        ...     pass
        >>> tr.routing.plot_co_activation(layer=1).data[0].type
        'heatmap'

        ```
        """
        return plots.co_activation_heatmap(self, layer, group, other, **kwargs)

    def plot_split_effect(self, metric: str = "js", **kwargs: Any) -> go.Figure:
        """Per layer: the divergence between the parts of a language (token kinds or position
        buckets) beside the divergence between languages on one part (`mi.plots.split_effect`).

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with mi.trace(model, mi.RouterRecord(by_token_kind=True)) as tr:
        ...     with tr.invoke(["The cat, 12 days."] * 2, group="eng"):
        ...         pass
        ...     with tr.invoke(["Die Katze, 12 Tage."] * 2, group="deu"):
        ...         pass
        >>> [trace.name for trace in tr.routing.plot_split_effect(min_tokens=2).data][:3]
        ['between the kinds of a language', 'between languages, one kind', 'between languages, kinds pooled']

        ```
        """
        return plots.split_effect(self, metric, **kwargs)
