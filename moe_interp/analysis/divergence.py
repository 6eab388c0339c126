"""How differently languages route: divergences, similarity and entropy of routing distributions.

Every metric compares, per MoE layer, two languages' routing distributions over experts
(`RoutingStats.distribution()`, renormalised to sum to exactly 1). All metrics are
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
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from scipy.special import rel_entr
from torch import Tensor

from ..arch._spec import _BAND_EDGES, BANDS
from ..stats import RoutingStats

__all__ = ["METRICS", "PAPER_BANDS", "THIRDS", "band_average", "bands", "divergence", "entropy", "similarity"]

METRICS = ("js", "cosine", "hellinger", "kl_sym")
PAPER_BANDS = _BAND_EDGES  # early 0-9, middle 10-39, late 40-47 of 48 MoE layers (MoESpec.band)
THIRDS = (0.0, 1 / 3, 2 / 3, 1.0)  # equal thirds of 48 layers (0-15, 16-31, 32-47), as the JS reference numbers
_KL_EPS = 1e-10

LayerSpec = str | Iterable[int] | None


def bands(layers: Sequence[int], edges: Sequence[float] = PAPER_BANDS) -> dict[str, tuple[int, ...]]:
    """Split MoE layer indices into `early` / `middle` / `late` at fractional `edges`.

    The default edges are `MoESpec.band`'s (the paper's 48 layers: 0-9, 10-39, 40-47);
    `THIRDS` gives equal thirds (0-15, 16-31, 32-47 of the paper's 48 layers).

    ```python
    >>> b = bands(range(48))
    >>> b["middle"][0], b["middle"][-1]
    (10, 39)
    >>> {k: (v[0], v[-1]) for k, v in bands(range(48), THIRDS).items()}
    {'early': (0, 15), 'middle': (16, 31), 'late': (32, 47)}
    ```
    """
    layers = tuple(int(layer) for layer in layers)
    if len(edges) != len(BANDS) + 1 or not all(0 <= e <= 1 for e in edges) or list(edges) != sorted(edges):
        raise ValueError(f"edges must be {len(BANDS) + 1} increasing fractions in [0, 1] "
                         f"(e.g. THIRDS = {tuple(round(e, 3) for e in THIRDS)}), got {edges}")
    n, result = len(layers), {}
    for i, name in enumerate(BANDS):
        lo, hi = (round(n * e) for e in edges[i : i + 2])
        if hi <= lo:  # very shallow models: every band keeps at least one layer
            lo, hi = min(lo, n - 1), min(lo, n - 1) + 1
        result[name] = layers[lo:hi]
    return result


def resolve_layers(stats: RoutingStats, layers: LayerSpec) -> list[int]:
    """Positions on the `layer` axis for `None` (all), a band name, or real layer indices."""
    if layers is None:
        return list(range(len(stats.layers)))
    if isinstance(layers, str):
        if layers == "all":
            return list(range(len(stats.layers)))
        if layers not in BANDS:
            raise ValueError(f"unknown band {layers!r}; use one of {BANDS}, 'all', or layer indices")
        return [stats.layer_index(layer) for layer in bands(stats.layers)[layers]]
    positions = [stats.layer_index(int(layer)) for layer in layers]
    if not positions:
        raise ValueError("layers is empty")
    return positions


def _normalised(stats: RoutingStats, positions: list[int]) -> np.ndarray:
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


def divergence(stats: RoutingStats, metric: str = "js", layers: LayerSpec = None) -> Float[Tensor, "layer lang lang"]:
    """Per MoE layer, the `[lang, lang]` divergence between routing distributions.

    **Arguments:** `metric`: one of `METRICS` (module docstring); `layers`: `None` (all),
    `"early"` / `"middle"` / `"late"`, or real layer indices.

    **Returns:** float64 `[layer, lang, lang]`, symmetric with a zero diagonal.

    ```python
    >>> js = divergence(p)                                  # released MGSM counts
    >>> js.shape
    torch.Size([48, 8, 8])
    >>> en, sw = p.language_index("en"), p.language_index("sw")
    >>> round(float(js[:16, sw, en].mean()), 3)             # from the paper's released counts: .284
    0.284
    ```
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    positions = resolve_layers(stats, layers)
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
                 edges: Sequence[float] = PAPER_BANDS) -> dict[str, Tensor]:
    """Average a per-layer quantity over the early / middle / late bands of `layers`.

    `layers` are the real layer indices of `values`' first axis (e.g. `stats.layers`).

    ```python
    >>> avg = band_average(divergence(p), p.layers, THIRDS)
    >>> round(float(avg["middle"][p.language_index("es"), p.language_index("en")]), 3)
    0.039
    ```
    """
    layers = tuple(int(layer) for layer in layers)
    if len(layers) != values.shape[0]:
        raise ValueError(f"values has {values.shape[0]} layers but {len(layers)} layer indices were given")
    return {name: values[[layers.index(layer) for layer in members]].nanmean(0)
            for name, members in bands(layers, edges).items()}


def similarity(stats: RoutingStats, metric: str = "js", layers: LayerSpec = None) -> Float[Tensor, "layer lang lang"]:
    """`1 - divergence` for the bounded metrics (`"js"`, `"cosine"`, `"hellinger"`): 1 = same routing.

    ```python
    >>> s = similarity(p, layers="middle")
    >>> s.shape, float(s[0, 0, 0])
    (torch.Size([30, 8, 8]), 1.0)
    ```
    """
    if metric == "kl_sym":
        raise ValueError("kl_sym is unbounded; similarity needs 'js', 'cosine' or 'hellinger'")
    return 1.0 - divergence(stats, metric, layers)


def entropy(stats: RoutingStats) -> Float[Tensor, "lang layer"]:
    """Shannon entropy of each routing distribution divided by `log(num_experts)`, in [0, 1].

    1 means every expert is used equally often; `1 - log(top_k)/log(num_experts)` is the
    floor reached when every token picks the same `top_k` experts (`nan` without tokens).

    ```python
    >>> h = entropy(p)
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
    """Mean over language pairs `i != j` of a `[..., lang, lang]` matrix (nan-aware)."""
    n = matrix.shape[-1]
    mask = ~torch.eye(n, dtype=torch.bool)
    return matrix[..., mask].nanmean(-1) if n > 1 else torch.zeros(matrix.shape[:-2], dtype=matrix.dtype)

