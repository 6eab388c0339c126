"""Where in depth routing is language-specific: per-layer profiles and early/middle/late summaries."""

import dataclasses
from collections.abc import Sequence

import pandas as pd
from jaxtyping import Float, Int
from torch import Tensor

from moe_interp.core._counts import RoutingCounts
from moe_interp.core._expert_set import check_k
from moe_interp.analysis._divergence import band_average, divergence, entropy, mean_offdiagonal
from moe_interp.analysis._expert_sets import THRESHOLD, exclusive_mask, shared_mask, shares

__all__ = ["LayerProfile", "layer_profile"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayerProfile:
    """Per MoE layer: how differently languages route, and how many experts they share.

    **Fields:** `languages`, `layers` (real indices), `mean_divergence[layer]` (mean over
    language pairs), `shared_fraction[layer]` (shared experts / experts any language
    keeps in its top-`k`), `shared[layer]` and `exclusive[lang, layer]` (expert counts, the
    paper's algorithm over all languages), `entropy[lang, layer]` (normalised), and the
    settings `metric`, `k`, `threshold`.

    ```python
    >>> import moe_interp as mi
    >>> prof = mi.analysis.layer_profile(mi.datasets.reference_stats())
    >>> prof.exclusive.shape, prof.k, prof.threshold       # 8 languages x 48 layers; the paper's k and 0.4
    (torch.Size([8, 48]), 15, 0.4)

    ```
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    mean_divergence: Float[Tensor, " layer"]
    shared_fraction: Float[Tensor, " layer"]
    shared: Int[Tensor, " layer"]
    exclusive: Int[Tensor, "lang layer"]
    entropy: Float[Tensor, "lang layer"]
    metric: str
    k: int
    threshold: float

    def bands(self, scheme: str | Sequence[float] = "paper") -> dict[str, dict[str, float]]:
        """Early / middle / late means of every quantity (`scheme` as in `mi.analysis.bands`).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
        >>> b = mi.analysis.layer_profile(p).bands()
        >>> b["middle"]["mean_divergence"] < min(b["early"]["mean_divergence"], b["late"]["mean_divergence"])
        True

        ```
        """
        per_layer = {"mean_divergence": self.mean_divergence, "shared_fraction": self.shared_fraction,
                     "shared": self.shared.double(), "exclusive": self.exclusive.double().sum(0),
                     "entropy": self.entropy.nanmean(0)}
        out: dict[str, dict[str, float]] = {}
        for name, values in per_layer.items():
            for band, value in band_average(values, self.layers, scheme).items():
                out.setdefault(band, {})[name] = float(value)
        return out

    def to_pandas(self) -> pd.DataFrame:
        """One row per layer: the quantities above, `exclusive` summed and per language.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
        >>> mi.analysis.layer_profile(p).to_pandas().columns[:4].tolist()
        ['layer', 'mean_divergence', 'shared_fraction', 'shared']

        ```
        """
        frame = pd.DataFrame({"layer": list(self.layers), "mean_divergence": self.mean_divergence.numpy(),
                              "shared_fraction": self.shared_fraction.numpy(), "shared": self.shared.numpy(),
                              "exclusive": self.exclusive.sum(0).numpy(), "entropy": self.entropy.nanmean(0).numpy()})
        for i, language in enumerate(self.languages):
            frame[f"exclusive_{language}"] = self.exclusive[i].numpy()
            frame[f"entropy_{language}"] = self.entropy[i].numpy()
        return frame


def layer_profile(stats: RoutingCounts, metric: str = "js", k: int | None = None,
                  threshold: float = THRESHOLD) -> LayerProfile:
    """Per-layer mean divergence, shared fraction, exclusive counts and entropy.

    Exclusive (`share > threshold`) and shared (`any share > 0 and all < threshold`)
    experts use the paper's algorithm with all languages of `stats` and top-`k` (`None`: the
    paper's 15 of 128 experts scaled to this model; the profile keeps the `k` used).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> prof = mi.analysis.layer_profile(p)
    >>> int(prof.exclusive[p.language_index("sw")].sum())    # as p.exclusive_experts("sw").size
    271

    ```
    """
    k = check_k(k, stats.num_experts, stats.top_k)
    p = shares(stats, None, k)
    exclusive = exclusive_mask(p, threshold).sum(-1)
    shared = shared_mask(p, threshold).sum(-1)
    used = (p > 0).any(0)
    fraction = shared.double() / used.sum(-1).clamp(min=1).double()
    return LayerProfile(tuple(stats.languages), tuple(stats.layers), mean_offdiagonal(divergence(stats, metric)),
                        fraction, shared.long(), exclusive.long(), entropy(stats), metric, k, float(threshold))
