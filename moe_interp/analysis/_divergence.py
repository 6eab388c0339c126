"""How differently languages route: divergences, similarity and entropy of routing distributions.

Every metric compares, per MoE layer, two languages' routing distributions over experts
(`RoutingCounts.distribution()`, renormalised to sum to exactly 1). All metrics are
symmetric, zero on the diagonal, and all but `"kl_sym"` lie in [0, 1]:

- `"js"`: Jensen-Shannon divergence, base 2 (scipy's `jensenshannon` distance, squared,
  computed from `scipy.special.rel_entr` without the root; this is the quantity of the reference
  numbers computed from the paper's released counts),
- `"cosine"`: cosine distance `1 - p.q / (|p| |q|)`,
- `"hellinger"`: Hellinger distance `sqrt(1 - sum sqrt(p q))`,
- `"kl_sym"`: symmetric Kullback-Leibler `KL(p||q) + KL(q||p)` in bits, after adding
  `1e-10` to every probability (unbounded; infinite without the smoothing).

A language with no tokens has no distribution: its rows and columns are `nan`.
"""

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy.special import rel_entr
from torch import Tensor

from moe_interp.core._counts import RoutingCounts
from moe_interp.core._layers import bands

__all__ = ["METRICS", "band_average", "divergence", "entropy", "mean_offdiagonal", "similarity"]

METRICS = ("js", "cosine", "hellinger", "kl_sym")
_KL_EPS = 1e-10


def _normalised(stats: RoutingCounts, positions: list[int]) -> np.ndarray:
    d = stats.distribution()[:, positions].numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return d / d.sum(-1, keepdims=True)  # [lang, layer, expert]; nan rows where no tokens


def _pairwise(p: np.ndarray, metric: str) -> np.ndarray:
    """`[lang, lang]` metric between the rows of `p` (`[lang, expert]`, rows sum to 1)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if metric == "js":
            # scipy's `jensenshannon` takes a square root of this sum, which is nan where rounding
            # leaves it a hair below 0 (near-identical rows): sum the same terms, clip, no root.
            a, b = p[:, None, :], p[None, :, :]
            m = (a + b) / 2
            js = (rel_entr(a, m).sum(-1) + rel_entr(b, m).sum(-1)) / (2 * np.log(2))
            return np.clip(js, 0.0, None)  # a language with no tokens stays nan
        if metric == "cosine":
            unit = p / np.linalg.norm(p, axis=-1, keepdims=True)
            return 1.0 - unit @ unit.T
        if metric == "hellinger":
            root = np.sqrt(p)
            return np.sqrt(np.clip(1.0 - root @ root.T, 0.0, None))
        if metric == "kl_sym":
            q = (p + _KL_EPS) / (1 + p.shape[-1] * _KL_EPS)
            log = np.log2(q)
            cross = q @ log.T  # cross[i, j] = sum_e q_i log q_j
            own = np.diag(cross)
            return (own[:, None] - cross) + (own[None, :] - cross.T)
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def divergence(stats: RoutingCounts, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
    """Per MoE layer, the `[lang, lang]` divergence between routing distributions.

    **Arguments:** `metric`: one of `METRICS` (module docstring); `layers`: any layer
    selection (`RoutingCounts.layer_positions`: `None` for all, indices, a band, a stack).

    **Returns:** float64 `[layer, lang, lang]`, symmetric with a zero diagonal.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> js = mi.analysis.divergence(p)
    >>> js.shape
    torch.Size([48, 8, 8])
    >>> en, sw = p.language_index("en"), p.language_index("sw")
    >>> round(float(js[:16, sw, en].mean()), 3)             # from the paper's released counts: .284
    0.284

    ```
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    positions = stats.layer_positions(layers)
    dist = _normalised(stats, positions)
    out = np.stack([_pairwise(dist[:, i], metric) for i in range(len(positions))])
    out = (out + out.transpose(0, 2, 1)) / 2  # exact symmetry despite rounding
    idx = np.arange(out.shape[-1])
    valid = ~np.isnan(dist).any(-1)  # [lang, layer]
    out[:, idx, idx] = np.where(valid.T, 0.0, np.nan)
    if metric != "kl_sym":
        out = np.clip(out, 0.0, 1.0)
    else:
        out = np.clip(out, 0.0, None)
    return torch.from_numpy(np.ascontiguousarray(out))


def band_average(values: Float[Tensor, "layer *rest"], layers: Sequence[int],
                 scheme: str | Sequence[float] = "paper") -> dict[str, Tensor]:
    """Average a per-layer quantity over the early / middle / late bands of `layers`.

    `layers` are the real layer indices of `values`' first axis (e.g. `stats.layers`);
    `scheme`: `"paper"` (its 10/48 and 40/48 edges), `"thirds"` (equal thirds, the split of
    the reference JS numbers) or 4 edges, as `mi.analysis.bands`.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> avg = mi.analysis.band_average(mi.analysis.divergence(p), p.layers, "thirds")
    >>> round(float(avg["middle"][p.language_index("es"), p.language_index("en")]), 3)
    0.039

    ```
    """
    layers = tuple(int(layer) for layer in layers)
    if len(layers) != values.shape[0]:
        raise ValueError(f"values has {values.shape[0]} layers but {len(layers)} layer indices were given")
    return {name: values[[layers.index(layer) for layer in members]].nanmean(0)
            for name, members in bands(layers, scheme).items()}


def similarity(stats: RoutingCounts, metric: str = "js", layers: Any = None) -> Float[Tensor, "layer lang lang"]:
    """`1 - divergence` for the bounded metrics (`"js"`, `"cosine"`, `"hellinger"`): 1 = same routing.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> s = mi.analysis.similarity(p, layers="middle")
    >>> s.shape, float(s[0, 0, 0])
    (torch.Size([30, 8, 8]), 1.0)

    ```
    """
    if metric == "kl_sym":
        raise ValueError("kl_sym is unbounded; similarity needs 'js', 'cosine' or 'hellinger'")
    return 1.0 - divergence(stats, metric, layers)


def entropy(stats: RoutingCounts) -> Float[Tensor, "lang layer"]:
    """Shannon entropy of each routing distribution divided by `log(num_experts)`, in [0, 1].

    1 means every expert is used equally often; `1 - log(top_k)/log(num_experts)` is the
    floor reached when every token picks the same `top_k` experts (`nan` without tokens).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()                   # the paper's released MGSM counts
    >>> h = mi.analysis.entropy(p)
    >>> h.shape, bool((h > 0.5).all() and (h <= 1).all())
    (torch.Size([8, 48]), True)

    ```
    """
    dist = torch.from_numpy(_normalised(stats, list(range(len(stats.layers)))))
    if stats.num_experts == 1:
        return torch.where(dist.isnan().any(-1), float("nan"), 0.0).double()
    terms = torch.where(dist > 0, dist * dist.log(), torch.zeros_like(dist))
    return -terms.sum(-1) / float(np.log(stats.num_experts))


def mean_offdiagonal(matrix: Float[Tensor, "*batch lang lang"]) -> Float[Tensor, "*batch"]:
    """Mean over language pairs `i != j` of a `[..., lang, lang]` matrix (nan-aware).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> mi.analysis.mean_offdiagonal(torch.tensor([[0.0, 0.2, 0.4], [0.2, 0.0, 0.6], [0.4, 0.6, 0.0]]))
    tensor(0.4000)

    ```
    """
    n = matrix.shape[-1]
    mask = ~torch.eye(n, dtype=torch.bool)
    return matrix[..., mask].nanmean(-1) if n > 1 else torch.zeros(matrix.shape[:-2], dtype=matrix.dtype)

