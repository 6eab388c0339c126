"""Comparisons that need no trained router: a byte n-gram baseline shaped like routing
statistics, and SteerMoE's risk difference between two groups of texts."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from moe_interp.core._checks import check_int
from moe_interp.core._fingerprint import check_corpus
from moe_interp.core._counts import RoutingCounts

__all__ = ["ngram_baselines", "ngram_stats", "risk_difference"]


def _ngram_ids(text: str, n: int) -> np.ndarray:
    """Each n consecutive UTF-8 bytes of `text` as one big-endian integer (`sum b_j 256^(n-j)`)."""
    data = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint64)
    if len(data) < n:
        return np.zeros(0, dtype=np.uint64)
    ids = np.zeros(len(data) - n + 1, dtype=np.uint64)
    for j in range(n):  # big-endian: the first byte is the most significant
        ids = ids * np.uint64(256) + data[j : len(data) - n + 1 + j]
    return ids


def ngram_stats(texts: Mapping[str, Sequence[str]], n: int = 2, buckets: Any = None) -> RoutingCounts:
    """A model-free baseline: each language's exact byte n-gram distribution, shaped like
    routing stats.

    Each n consecutive UTF-8 bytes of a text (within the text, never across texts) "route"
    to one "expert": the n-gram itself. The experts are the distinct n-grams observed in
    `texts` (all languages together), in increasing order of their big-endian id `sum b_j
    256^(n-j)`; `meta["ngrams"]` lists those ids, so expert `e` is the n-gram
    `meta["ngrams"][e].to_bytes(n, "big")`. The result is routing counts (`RoutingCounts`,
    the data of a `RoutingStats`) with one layer (`0`), `top_k=1`, per-item counts (one item
    per text, in order) and `tokens` = n-grams. Divergence, clustering, `family_evidence`
    and the bootstrap apply unchanged: what they find here comes from spelling alone, the bar
    a router must clear (`ngram_baselines` builds n = 1, 2, 3 for the strongest of them).
    `buckets` (hashing n-grams into a fixed number of buckets) was removed: the result
    depended on the hash size; passing it raises.

    ```python
    >>> import moe_interp as mi
    >>> s = mi.analysis.ngram_stats({"eng": ["abab", "ab"], "deu": ["ba"]}, n=2)
    >>> [bytes.fromhex(f"{i:04x}") for i in s.meta["ngrams"]]          # the observed bigrams: the experts
    [b'ab', b'ba']
    >>> s.num_experts, s.top_k, s.tokens.tolist(), s.item_tokens.tolist()
    (2, 1, [4, 1], [3, 1, 1])
    >>> s.count[:, 0].tolist()                                         # eng: ab 3, ba 1; deu: ba 1
    [[3, 1], [0, 1]]

    ```
    """
    if buckets is not None:
        raise ValueError(f"buckets={buckets!r}: hashed n-grams were removed (the baseline's ARI depended on the "
                         "hash size); n-grams are exact now, one expert per n-gram observed. Drop buckets")
    corpus = check_corpus(texts)
    n = check_int("n (bytes per n-gram)", n, 1, 8)
    items = [text for lang_texts in corpus.values() for text in lang_texts]
    ids = [_ngram_ids(text, n) for text in items]
    vocabulary, compact = np.unique(np.concatenate(ids), return_inverse=True)
    width = max(len(vocabulary), 1)  # no n-gram at all: one expert nobody uses
    item_count = torch.zeros(len(items), 1, width, dtype=torch.int32)
    start = 0
    for i, grams in enumerate(ids):
        counts = np.bincount(compact[start : start + len(grams)], minlength=width)
        item_count[i, 0] = torch.from_numpy(counts.astype(np.int32))
        start += len(grams)
    item_language = torch.arange(len(corpus)).repeat_interleave(torch.tensor([len(t) for t in corpus.values()]))
    item_tokens = item_count.sum((1, 2)).long()
    count = torch.zeros(len(corpus), 1, width, dtype=torch.long).index_add_(0, item_language, item_count.long())
    tokens = torch.zeros(len(corpus), dtype=torch.long).index_add_(0, item_language, item_tokens)
    return RoutingCounts(tuple(corpus), (0,), width, 1, count, count.double(), tokens, item_count, item_tokens,
                        item_language, meta={"baseline": f"byte {n}-grams", "ngrams": [int(i) for i in vocabulary]})


def ngram_baselines(texts: Mapping[str, Sequence[str]], n: Sequence[int] = (1, 2, 3)) -> dict[str, RoutingCounts]:
    """`{"byte 1-grams": ngram_stats(texts, 1), ...}` for each `n`: the model-free baselines
    `family_evidence(..., baseline=...)` takes together, reporting per statistic the strongest
    (the highest value: the hardest bar; `FamilyEvidence.strongest_baseline`).

    ```python
    >>> import moe_interp as mi
    >>> b = mi.analysis.ngram_baselines({"eng": ["the cat"], "deu": ["die Katze"]})
    >>> {name: s.num_experts for name, s in b.items()}                  # distinct n-grams observed
    {'byte 1-grams': 10, 'byte 2-grams': 12, 'byte 3-grams': 12}

    ```
    """
    sizes = list(n)
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"n must list distinct n-gram sizes, e.g. (1, 2, 3), got {n!r}")
    return {f"byte {k}-grams": ngram_stats(texts, k) for k in sizes}


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
