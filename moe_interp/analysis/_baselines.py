"""Comparisons that need no trained router: a byte n-gram baseline shaped like routing
statistics, and SteerMoE's risk difference between two groups of texts."""

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .._fingerprint import check_corpus
from .._counts import RoutingCounts

__all__ = ["ngram_stats", "risk_difference"]

HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: spreads n-grams that differ in one byte


def _buckets(text: str, n: int, buckets: int | None) -> np.ndarray:
    data = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint64)
    if len(data) < n:
        return np.zeros(0, dtype=np.int64)
    ids = np.zeros(len(data) - n + 1, dtype=np.uint64)
    for j in range(n):  # big-endian: the first byte is the most significant
        ids = ids * np.uint64(256) + data[j : len(data) - n + 1 + j]
    if buckets is None:
        return ids.astype(np.int64)
    # uint64 products wrap modulo 2**64, which 2**32 divides: the low 32 bits are exact
    return ((ids * np.uint64(HASH_MULTIPLIER)) % np.uint64(2**32) % np.uint64(buckets)).astype(np.int64)


def ngram_stats(texts: Mapping[str, Sequence[str]], n: int = 2, buckets: int | None = 1024) -> RoutingCounts:
    """A model-free baseline: each language's byte n-gram distribution, shaped like routing stats.

    Each n consecutive UTF-8 bytes of a text (within the text, never across texts) "route"
    to one bucket, so the result is routing counts (`RoutingCounts`, the data of a
    `RoutingStats`) with one layer (`0`), `buckets` "experts" and `top_k=1`, per-item
    counts (one item per text, in order) and `tokens` = n-grams. Divergence, clustering, `family_evidence` and the bootstrap apply
    unchanged: what they find here comes from spelling alone, the bar a router must clear.

    Bucket of an n-gram with bytes `b_1 .. b_n`: its id `sum b_j 256^(n-j)` (big-endian),
    then `(id * 2654435761 mod 2^32) mod buckets`; `buckets=None` keeps the id itself
    (`256^n` buckets; `n <= 2` only).

    ```python
    >>> import moe_interp as mi
    >>> s = mi.analysis.ngram_stats({"eng": ["abab", "ab"], "deu": ["ba"]}, n=2, buckets=None)
    >>> s.num_experts, s.top_k, s.tokens.tolist(), s.item_tokens.tolist()
    (65536, 1, [4, 1], [3, 1, 1])
    >>> ab, ba = ord("a") * 256 + ord("b"), ord("b") * 256 + ord("a")
    >>> int(s.count[0, 0, ab]), int(s.count[0, 0, ba]), int(s.count[1, 0, ba])
    (3, 1, 1)

    ```
    """
    corpus = check_corpus(texts)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= 8:
        raise ValueError(f"n (bytes per n-gram) must be an integer in [1, 8], got {n!r}")
    if buckets is None:
        if n > 2:
            raise ValueError(f"buckets=None keeps 256**n buckets, too many for n={n}; pass buckets=1024 (hashed)")
        width = 256**n
    elif isinstance(buckets, bool) or not isinstance(buckets, numbers.Integral) or buckets < 1:
        raise ValueError(f"buckets must be a positive integer or None (exact ids, n <= 2), got {buckets!r}")
    else:
        width = int(buckets)
    items = [text for lang_texts in corpus.values() for text in lang_texts]
    item_count = torch.zeros(len(items), 1, width, dtype=torch.int32)
    for i, text in enumerate(items):
        item_count[i, 0] = torch.from_numpy(np.bincount(_buckets(text, n, buckets), minlength=width).astype(np.int32))
    item_language = torch.arange(len(corpus)).repeat_interleave(torch.tensor([len(t) for t in corpus.values()]))
    item_tokens = item_count.sum((1, 2)).long()
    count = torch.zeros(len(corpus), 1, width, dtype=torch.long).index_add_(0, item_language, item_count.long())
    tokens = torch.zeros(len(corpus), dtype=torch.long).index_add_(0, item_language, item_tokens)
    return RoutingCounts(tuple(corpus), (0,), width, 1, count, count.double(), tokens, item_count, item_tokens,
                        item_language, meta={"baseline": f"byte {n}-grams", "buckets": buckets})


def _pooled(stats: RoutingCounts, positions: list[int]) -> Tensor:
    return stats.count[:, positions].sum(0).double() / max(int(stats.tokens.sum()), 1)


def risk_difference(stats_a: RoutingCounts, stats_b: RoutingCounts, layers: Any = None) -> Float[Tensor, "layer expert"]:
    """SteerMoE's risk difference: per layer and expert, P(chosen | a token of group A) -
    P(chosen | a token of group B).

    SteerMoE (Fayyaz et al., "Steering MoE LLMs via Expert (De)Activation", arXiv
    2509.09660) scores expert `i` by `Delta_i = p_i^(1) - p_i^(2)`, with `p_i^(g) =
    A_i^(g) / N^(g)`: `A` the tokens of group `g` routed to expert `i` (among their top-k),
    `N` the tokens of group `g`. Here a group is all the languages of one stats object
    pooled: `count.sum(languages) / tokens.sum()`. Positive: the expert is more used by
    group A. Each row sums to 0 when every token of both groups used `top_k` experts.

    **Arguments:** `layers`: `None` (all of `stats_a`'s), a band name or real layer indices;
    both stats must have them and the same number of experts.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> count = torch.tensor([[[3, 1, 0, 0]], [[0, 1, 2, 1]]])       # 2 groups, 1 layer, 4 experts
    >>> s = mi.RoutingStats(("a", "b"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]))
    >>> mi.analysis.risk_difference(s.select(["a"]), s.select(["b"])).tolist()
    [[0.75, 0.0, -0.5, -0.25]]

    ```
    """
    if stats_a.num_experts != stats_b.num_experts:
        raise ValueError(f"the two stats have {stats_a.num_experts} and {stats_b.num_experts} experts: compare "
                         "groups of texts of the same model")
    chosen = [stats_a.layers[i] for i in stats_a.layer_positions(layers)]
    return _pooled(stats_a, [stats_a.layer_index(l) for l in chosen]) - \
        _pooled(stats_b, [stats_b.layer_index(l) for l in chosen])
