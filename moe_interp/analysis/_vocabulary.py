"""Vocabulary specialization: which tokens each expert takes, and which experts each token goes to.

Counted from per-token routing (`mi.RouterRecord(per_token=True)`: each token's top-k experts in
every MoE layer) by token id, per language: `N[l, layer, x, e]`, how many times token `x` of
language `l` was routed to expert `e` (every top-k slot counts once; a dropped slot, index -1, does
not), and `N_x`, how many times `x` occurred. "All languages" sums the languages' counts.

**The expert's side.** `top_tokens(layer, e, n)`: the tokens routed to expert `e` most, with each
one's share of the expert's load (`N[x, e] / sum_x N[x, e]`) and of its own occurrences
(`N[x, e] / N_x`). `specialization(n)`: the share of each expert's load taken by its `n` most
frequent tokens, `sum of the n largest N[x, e] / sum_x N[x, e]` (1: the expert takes nothing but
those `n` tokens). Read it against `corpus_share(n)`, the share of all tokens that the corpus'
own `n` most frequent tokens take: an expert that took tokens at random, in proportion to how
often they occur, shows about that much (more when its load is small).

**The token's side: OLMoE's vocabulary specialization** (Muennighoff et al. 2024, "OLMoE: Open
Mixture-of-Experts Language Models", arXiv:2409.02060, section "Vocabulary specialization";
computed in allenai/OLMoE `scripts/run_moe_analysis.py`, `do_token_analysis_layers_experts`):
for a token id `x`, the share of its occurrences routed to expert `e`, `N[x, e] / N_x`, with
`top_k` slots per occurrence as recorded (OLMoE's `--topk` set to the model's k); a token's
specialization is that share for the expert it goes to most, `max_e N[x, e] / N_x`
(`token_specialization`: its routing concentration, 1 when every occurrence goes to one expert,
`top_k / num_experts` when spread evenly), a layer's the mean over the token ids seen (at
least `min_count` times; OLMoE's figure keeps every id, its per-expert token lists those seen 10
times or more), and an expert's the mean over the tokens it is the most-used expert of
(`vocabulary_specialization(by_expert=True)`; a tie goes to the lowest expert index, where
OLMoE's `Counter` takes the first expert seen: the value is the same, only the expert differs).
`token_experts(x)` lists the experts a token goes to.

Only a corpus routed at once shows this: the counts of `RoutingStats` have no token axis.
`mi.experiments.vocabulary` collects a `Vocabulary` over a corpus in batches.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from moe_interp.core._checks import check_int

__all__ = ["Vocabulary"]

ALL = None  # `language=None`: every language's counts summed


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): the character that stands for each byte value.
    Printable Latin-1 bytes stand for themselves; the others, in order, for chr(256 + n)."""
    own = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in own]
    table = {chr(b): b for b in own}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def _raw_bytes(token: str) -> bytes | None:
    """The bytes a tokenizer's piece stands for: `<0xC3>` (SentencePiece's byte fallback) or a
    byte-level BPE piece (`'Ã'` is 0xC3); None when it is neither."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            return None
    alphabet = _byte_alphabet()
    if token and all(ch in alphabet for ch in token):
        return bytes(alphabet[ch] for ch in token)
    return None


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """What each token id stands for: its decoded text, or, where that is not whole UTF-8 text (one
    byte of a multi-byte character), its bytes with the incomplete ones escaped (`'\\xc3'`)."""
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        if text and "\ufffd" not in text:
            out.append(text)
            continue
        token = tokenizer.convert_ids_to_tokens(int(i))
        raw = _raw_bytes(token) if isinstance(token, str) else None
        out.append(raw.decode("utf-8", errors="backslashreplace") if raw is not None else str(token))
    return tuple(out)


def _coalesce(keys: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct `keys` and their summed `counts`."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    return unique, torch.zeros(len(unique), dtype=torch.long).index_add_(0, inverse, counts)


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """Token-by-expert routing counts per language and MoE layer; the module docstring defines
    every quantity (OLMoE's vocabulary specialization among them).

    **Fields:** `languages`, `layers` (real indices), `num_experts`, `top_k`, `token_ids` (the
    distinct ids seen, ascending: the `token` axis), `pieces` (what each stands for),
    `occurrences[lang, token]`, and the nonzero counts as `entries[entry, 4]` (language, layer
    position, token position, expert) with `entry_count[entry]`; `meta`.
    **Methods:** `matrix`, `load`, `top_tokens`, `specialization`, `corpus_share`,
    `token_specialization`, `vocabulary_specialization`, `token_experts`, `summary`, `to_pandas`;
    `from_records`, `merge`, `named` build one.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> ids = torch.tensor([5, 5, 7, 5])                          # four tokens, top-1, one layer
    >>> experts = torch.tensor([[[0]], [[0]], [[1]], [[1]]])      # [token, layer, k]
    >>> v = mi.analysis.Vocabulary.from_records(ids, experts, num_experts=2)
    >>> v.top_tokens(0, 0)[["token_id", "count", "load_share", "token_share"]].values.tolist()
    [[5.0, 2.0, 1.0, 0.6666666666666666]]
    >>> v.specialization(1).tolist()                 # expert 1: token 5 once, token 7 once
    [[1.0, 0.5]]
    >>> v.token_specialization()[0].tolist()         # token 5: 2 of 3 to expert 0; token 7: always expert 1
    [0.6666666666666666, 1.0]

    ```
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    token_ids: Int[Tensor, " token"]
    pieces: tuple[str, ...]
    occurrences: Int[Tensor, "lang token"]
    entries: Int[Tensor, "entry 4"]
    entry_count: Int[Tensor, " entry"]
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.token_ids):
            raise ValueError(f"pieces has {len(self.pieces)} entries for {len(self.token_ids)} token ids: one each")

    def __repr__(self) -> str:
        return (f"Vocabulary(languages={len(self.languages)}, layers={len(self.layers)}, experts={self.num_experts}, "
                f"top_k={self.top_k}, tokens={int(self.occurrences.sum())}, distinct ids={len(self.token_ids)})")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_records(cls, token_ids: Int[Tensor, " record"], indices: Int[Tensor, "record layer k"],
                     language: Int[Tensor, " record"] | None = None, *, languages: Sequence[str] = ("default",),
                     layers: Sequence[int] | None = None, num_experts: int, pieces: Any = None,
                     meta: Mapping | None = None) -> "Vocabulary":
        """Count per-token records: `token_ids[r]` was routed to experts `indices[r, layer, :]`
        (the table of `tr.routing.per_token`, padding already dropped; -1: a dropped slot, not
        counted), in language `languages[language[r]]` (default: all in the first).
        `layers`: the real indices of the `layer` axis (default `0, 1, ...`); `pieces`: a
        tokenizer, `{id: text}`, or None (the ids as text).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> v = mi.analysis.Vocabulary.from_records(
        ...     torch.tensor([3, 4]), torch.tensor([[[0, 1]], [[1, -1]]]), torch.tensor([0, 1]),
        ...     languages=("en", "de"), layers=(5,), num_experts=2, pieces={3: "a", 4: "b"})
        >>> v.load().tolist(), v.occurrences.tolist(), v.pieces
        ([[1, 2]], [[1, 0], [0, 1]], ('a', 'b'))

        ```
        """
        num_experts = check_int("num_experts", num_experts, 1)
        languages = tuple(str(lang) for lang in languages)
        if not languages:
            raise ValueError("languages is empty: give at least one label, e.g. ('default',)")
        if len(set(languages)) != len(languages):
            raise ValueError(f"languages repeats a label: {list(languages)}")
        if token_ids.ndim != 1 or indices.ndim != 3 or indices.shape[0] != token_ids.shape[0]:
            raise ValueError(f"token_ids must be [record] and indices [record, layer, k] with the same records, got "
                             f"{tuple(token_ids.shape)} and {tuple(indices.shape)}")
        layers = tuple(range(indices.shape[1])) if layers is None else tuple(int(layer) for layer in layers)
        if len(layers) != indices.shape[1]:
            raise ValueError(f"layers names {len(layers)} layers, indices has {indices.shape[1]}")
        records = token_ids.shape[0]
        language = torch.zeros(records, dtype=torch.long) if language is None else language.long().cpu()
        if language.shape != (records,) or (records and (int(language.min()) < 0
                                                         or int(language.max()) >= len(languages))):
            raise ValueError(f"language must give each record an index into languages (0-{len(languages) - 1})")
        ids = token_ids.long().cpu()
        chosen = indices.long().cpu()
        if records and int(ids.min()) < 0:
            raise ValueError("token_ids holds a negative id: drop padding before counting (tr.routing.per_token "
                             "already has)")
        if chosen.numel() and int(chosen.max()) >= num_experts:
            raise ValueError(f"indices names expert {int(chosen.max())}, and num_experts is {num_experts}")
        token_axis, position = torch.unique(ids, return_inverse=True)
        occurrences = torch.zeros(len(languages) * len(token_axis), dtype=torch.long).index_add_(
            0, language * len(token_axis) + position, torch.ones(records, dtype=torch.long))
        layer = torch.arange(len(layers))[None, :, None].expand_as(chosen)
        keep = chosen >= 0
        parts = (language[:, None, None].expand_as(chosen)[keep], layer[keep],
                 position[:, None, None].expand_as(chosen)[keep], chosen[keep])
        keys, counts = _coalesce(_key(parts, len(layers), len(token_axis), num_experts),
                                 torch.ones(int(keep.sum()), dtype=torch.long))
        return cls(languages, layers, num_experts, int(indices.shape[2]), token_axis,
                   _pieces_for(pieces, token_axis.tolist()),
                   occurrences.reshape(len(languages), len(token_axis)),
                   _unkey(keys, len(layers), len(token_axis), num_experts), counts, dict(meta or {}))

    def merge(self, *others: "Vocabulary") -> "Vocabulary":
        """This vocabulary's counts and `others'` added (the same languages, layers and experts:
        batches of one corpus).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> a = mi.analysis.Vocabulary.from_records(torch.tensor([3]), torch.tensor([[[0]]]), num_experts=2)
        >>> b = mi.analysis.Vocabulary.from_records(torch.tensor([4, 3]), torch.tensor([[[1]], [[0]]]), num_experts=2)
        >>> a.merge(b).matrix(0).tolist()                # rows: token ids 3 and 4
        [[2, 0], [0, 1]]

        ```
        """
        parts = (self, *others)
        for other in others:
            if not isinstance(other, Vocabulary):
                raise TypeError(f"merge takes Vocabulary objects, got {type(other).__name__}")
            mine = (self.languages, self.layers, self.num_experts, self.top_k)
            theirs = (other.languages, other.layers, other.num_experts, other.top_k)
            if mine != theirs:
                raise ValueError(f"only vocabularies of the same languages, layers, experts and top-k merge: "
                                 f"{mine} vs {theirs}")
        token_axis = torch.unique(torch.cat([p.token_ids for p in parts]))
        names: dict[int, str] = {}
        for p in parts:
            names.update(zip(p.token_ids.tolist(), p.pieces))
        where = [torch.searchsorted(token_axis, p.token_ids) for p in parts]
        occurrences = torch.zeros(len(self.languages), len(token_axis), dtype=torch.long)
        for p, w in zip(parts, where):
            occurrences[:, w] += p.occurrences
        keys = torch.cat([_key((p.entries[:, 0], p.entries[:, 1], w[p.entries[:, 2]], p.entries[:, 3]),
                               len(self.layers), len(token_axis), self.num_experts) for p, w in zip(parts, where)])
        keys, counts = _coalesce(keys, torch.cat([p.entry_count for p in parts]))
        return dataclasses.replace(self, token_ids=token_axis, pieces=tuple(names[i] for i in token_axis.tolist()),
                                   occurrences=occurrences,
                                   entries=_unkey(keys, len(self.layers), len(token_axis), self.num_experts),
                                   entry_count=counts)

    def named(self, tokenizer: Any) -> "Vocabulary":
        """The same counts with `pieces` read from `tokenizer` (module docstring of `token_pieces`:
        decoded text, or escaped bytes where a token is part of a character).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> tok = mi.zoo.tiny_model("qwen3_moe").tokenizer            # bytes
        >>> ids = tok("é!")["input_ids"]
        >>> v = mi.analysis.Vocabulary.from_records(torch.tensor(ids), torch.zeros(len(ids), 1, 1, dtype=torch.long),
        ...                                         num_experts=1)
        >>> v.named(tok).pieces                     # '!' and the two bytes of 'é'
        ('!', '\\\\xa9', '\\\\xc3')

        ```
        """
        return dataclasses.replace(self, pieces=token_pieces(tokenizer, self.token_ids.tolist()))

    # ------------------------------------------------------------------ lookups
    def _language(self, language: str | None) -> int | None:
        if language is ALL:
            return None
        if language not in self.languages:
            raise KeyError(f"language {language!r} is not in this vocabulary; its languages: {list(self.languages)} "
                           "(or None for all of them)")
        return self.languages.index(language)

    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer not in self.layers:
            raise ValueError(f"layer {layer!r} is not one of this vocabulary's MoE layers {list(self.layers)} "
                             "(real layer indices)")
        return self.layers.index(layer)

    def _expert(self, expert: int) -> int:
        return check_int(f"expert (of {self.num_experts})", expert, 0, self.num_experts - 1)

    def _token(self, token: int | str) -> int:
        """Position on the token axis of a token id, or of a piece naming exactly one id."""
        if isinstance(token, str):
            found = [i for i, piece in enumerate(self.pieces) if piece == token]
            if len(found) != 1:
                raise KeyError(f"piece {token!r} names {'no' if not found else len(found)} token ids seen "
                               + (f"({[int(self.token_ids[i]) for i in found]}): pass the id" if found else
                                  "(pieces are the decoded tokens: see .pieces, or pass a token id)"))
            return found[0]
        index = check_int("token (an id)", token, 0)
        where = int(torch.searchsorted(self.token_ids, torch.tensor(index)))
        if where >= len(self.token_ids) or int(self.token_ids[where]) != index:
            raise KeyError(f"token id {index} never occurred in this corpus ({len(self.token_ids)} distinct ids did)")
        return where

    def _occurrences(self, language: str | None) -> Tensor:
        lang = self._language(language)
        return self.occurrences.sum(0) if lang is None else self.occurrences[lang]

    def matrix(self, layer: int, language: str | None = None) -> Int[Tensor, "token expert"]:
        """`N[x, e]` of one MoE layer: times each token id (rows, `token_ids` order) was routed
        to each expert, in `language` (None: all languages).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> v = mi.analysis.Vocabulary.from_records(torch.tensor([9, 2]), torch.tensor([[[1]], [[0]]]),
        ...                                         layers=(4,), num_experts=2)
        >>> v.token_ids.tolist(), v.matrix(4).tolist()
        ([2, 9], [[1, 0], [0, 1]])

        ```
        """
        position = self._layer(layer)
        return self._matrices(self._language(language), position)[0]

    def _matrices(self, lang: int | None, position: int | None = None) -> Tensor:
        """`[layer, token, expert]` counts of one language (None: all), of every layer or of the
        one at `position` (a `[1, token, expert]` tensor)."""
        keep = torch.ones(len(self.entry_count), dtype=torch.bool)
        if lang is not None:
            keep &= self.entries[:, 0] == lang
        if position is not None:
            keep &= self.entries[:, 1] == position
        e = self.entries[keep]
        layer = e[:, 1] if position is None else torch.zeros_like(e[:, 1])
        out = torch.zeros(len(self.layers) if position is None else 1, len(self.token_ids), self.num_experts,
                          dtype=torch.long)
        out.index_put_((layer, e[:, 2], e[:, 3]), self.entry_count[keep], accumulate=True)
        return out

    def load(self, language: str | None = None) -> Int[Tensor, "layer expert"]:
        """Tokens routed to each expert (`sum_x N[x, e]`): `RoutingStats.count` of the same texts.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> mi.analysis.Vocabulary.from_records(torch.tensor([1, 2]), torch.tensor([[[0, 1]], [[0, 2]]]),
        ...                                     num_experts=3).load().tolist()
        [[2, 1, 1]]

        ```
        """
        lang = self._language(language)
        keep = slice(None) if lang is None else self.entries[:, 0] == lang
        e = self.entries[keep]
        flat = torch.zeros(len(self.layers) * self.num_experts, dtype=torch.long)
        return flat.index_add_(0, e[:, 1] * self.num_experts + e[:, 3], self.entry_count[keep]).reshape(
            len(self.layers), self.num_experts)

    # ------------------------------------------------------------------ the expert's side
    def top_tokens(self, layer: int, expert: int, n: int = 10, language: str | None = None, by: str = "count",
                   min_count: int = 1) -> pd.DataFrame:
        """The tokens routed to `expert` of `layer` most: columns `token_id`, `piece`, `count`
        (`N[x, e]`), `load_share` (of the expert's load), `token_share` (of the token's
        occurrences, `N[x, e] / N_x`: OLMoE's per-token share) and `occurrences`; `n` rows at
        most, tokens never routed there left out. `by="count"` ranks by count, `by="share"` by
        `token_share` among tokens seen at least `min_count` times (OLMoE's per-expert token lists,
        with `min_count=10`); ties go to the lower token id.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> ids = torch.tensor([1, 1, 1, 2, 3, 3])
        >>> v = mi.analysis.Vocabulary.from_records(ids, torch.tensor([0, 0, 1, 0, 1, 1])[:, None, None],
        ...                                         num_experts=2, pieces={1: "a", 2: "b", 3: "c"})
        >>> v.top_tokens(0, 0)[["piece", "count", "load_share", "token_share"]].values.tolist()
        [['a', 2, 0.6666666666666666, 0.6666666666666666], ['b', 1, 0.3333333333333333, 1.0]]
        >>> v.top_tokens(0, 0, by="share").piece.tolist()
        ['b', 'a']

        ```
        """
        n = check_int("n", n, 1)
        min_count = check_int("min_count", min_count, 1)
        if by not in ("count", "share"):
            raise ValueError(f"by must be 'count' or 'share', got {by!r}")
        column = self.matrix(layer, language)[:, self._expert(expert)]
        occurrences = self._occurrences(language)
        share = column.double() / occurrences.clamp(min=1).double()
        keep = (column > 0) & (occurrences >= min_count)
        rank = column.double() if by == "count" else share
        order = sorted(keep.nonzero().flatten().tolist(), key=lambda i: (-float(rank[i]), int(self.token_ids[i])))[:n]
        load = max(int(column.sum()), 1)
        return pd.DataFrame({
            "token_id": [int(self.token_ids[i]) for i in order],
            "piece": [self.pieces[i] for i in order],
            "count": [int(column[i]) for i in order],
            "load_share": [int(column[i]) / load for i in order],
            "token_share": [float(share[i]) for i in order],
            "occurrences": [int(occurrences[i]) for i in order],
        }, columns=["token_id", "piece", "count", "load_share", "token_share", "occurrences"])

    def specialization(self, n: int = 10, language: str | None = None) -> Float[Tensor, "layer expert"]:
        """The share of each expert's load taken by its `n` most frequent tokens (`nan` for an
        expert never chosen). Compare with `corpus_share(n)`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> ids = torch.tensor([1, 1, 2, 3, 1, 4])            # expert 0 takes 1, 1, 2, 3; expert 1 takes 1, 4
        >>> v = mi.analysis.Vocabulary.from_records(ids, torch.tensor([0, 0, 0, 0, 1, 1])[:, None, None],
        ...                                         num_experts=3)
        >>> v.specialization(1).tolist()                       # 2 of 4, 1 of 2, never chosen
        [[0.5, 0.5, nan]]
        >>> v.specialization(2).tolist()
        [[0.75, 1.0, nan]]

        ```
        """
        n = check_int("n", n, 1)
        counts = self._matrices(self._language(language))
        top = counts.topk(min(n, counts.shape[1]), dim=1).values.sum(1).double() if counts.shape[1] else \
            torch.zeros(counts.shape[0], counts.shape[2], dtype=torch.float64)
        load = counts.sum(1).double()
        return torch.where(load > 0, top / load.clamp(min=1), float("nan"))

    def corpus_share(self, n: int = 10, language: str | None = None) -> float:
        """The share of all tokens taken by the corpus' `n` most frequent token ids: what
        `specialization(n)` would be for an expert that took tokens in proportion to their
        frequency.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> v = mi.analysis.Vocabulary.from_records(torch.tensor([1, 1, 1, 2]), torch.zeros(4, 1, 1, dtype=torch.long),
        ...                                         num_experts=1)
        >>> v.corpus_share(1)
        0.75

        ```
        """
        n = check_int("n", n, 1)
        occurrences = self._occurrences(language)
        total = int(occurrences.sum())
        if not total:
            return float("nan")
        return int(occurrences.topk(min(n, len(occurrences))).values.sum()) / total

    # ------------------------------------------------------------------ the token's side (OLMoE)
    def token_specialization(self, language: str | None = None, min_count: int = 1) -> Float[Tensor, "layer token"]:
        """OLMoE's per-token vocabulary specialization, `max_e N[x, e] / N_x`: the share of a
        token's occurrences routed to the expert it goes to most (its routing concentration);
        `nan` for tokens seen fewer than `min_count` times in `language`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> ids = torch.tensor([1, 1, 1, 1, 2])
        >>> experts = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 2], [1, 2]])[:, None, :]   # top-2
        >>> v = mi.analysis.Vocabulary.from_records(ids, experts, num_experts=4)
        >>> v.token_specialization().tolist()          # token 1: expert 0 in 3 of 4; token 2: 1 of 1
        [[0.75, 1.0]]
        >>> v.token_specialization(min_count=2).tolist()
        [[0.75, nan]]

        ```
        """
        min_count = check_int("min_count", min_count, 1)
        counts = self._matrices(self._language(language))
        occurrences = self._occurrences(language)
        best = counts.amax(-1).double() if self.num_experts else counts.sum(-1).double()
        value = best / occurrences.clamp(min=1).double()
        return torch.where(occurrences >= min_count, value, float("nan"))

    def vocabulary_specialization(self, language: str | None = None, min_count: int = 1,
                                  by_expert: bool = False) -> Tensor:
        """OLMoE's vocabulary specialization: per layer, the mean of `token_specialization` over
        the token ids seen at least `min_count` times (`[layer]`); with `by_expert=True`, per
        (layer, expert) the mean over the tokens that expert is the most-used expert of (`nan`
        for an expert that is no token's; ties to the lower expert index). A router that spread
        every token evenly would give `top_k / num_experts`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> ids = torch.tensor([1, 1, 1, 1, 2, 3, 3])
        >>> experts = torch.tensor([0, 0, 0, 1, 1, 1, 0])[:, None, None]
        >>> v = mi.analysis.Vocabulary.from_records(ids, experts, num_experts=3)
        >>> v.vocabulary_specialization().tolist()      # mean of 3/4, 1/1 and 1/2 (a tie: expert 0)
        [0.75]
        >>> v.vocabulary_specialization(by_expert=True).tolist()   # expert 0: tokens 1, 3; expert 1: token 2
        [[0.625, 1.0, nan]]

        ```
        """
        value = self.token_specialization(language, min_count)
        if not by_expert:
            return value.nanmean(-1) if value.shape[-1] else torch.full((len(self.layers),), float("nan"))
        favourite = self._matrices(self._language(language)).argmax(-1)  # the first maximum: the lower index
        seen = ~value.isnan()
        total = torch.zeros(len(self.layers), self.num_experts, dtype=torch.float64)
        number = torch.zeros(len(self.layers), self.num_experts, dtype=torch.float64)
        total.scatter_add_(1, favourite, torch.where(seen, value, 0.0))
        number.scatter_add_(1, favourite, seen.double())
        return torch.where(number > 0, total / number.clamp(min=1), float("nan"))

    def token_experts(self, token: int | str, layer: int | None = None, language: str | None = None) -> pd.DataFrame:
        """The converse of `top_tokens`: the experts one token (an id, or a piece naming one id)
        goes to, per layer: columns `layer`, `expert`, `count` (`N[x, e]`), `share` (of the
        token's occurrences, `N[x, e] / N_x`; a layer's shares add up to `top_k`), most used
        first; experts it never went to left out.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> v = mi.analysis.Vocabulary.from_records(torch.tensor([7, 7, 7]), torch.tensor([[[0]], [[2]], [[0]]]),
        ...                                         num_experts=3, pieces={7: "z"})
        >>> v.token_experts("z")[["expert", "count", "share"]].values.tolist()
        [[0.0, 2.0, 0.6666666666666666], [2.0, 1.0, 0.3333333333333333]]

        ```
        """
        x = self._token(token)
        counts = self._matrices(self._language(language))
        occurrences = int(self._occurrences(language)[x])
        positions = range(len(self.layers)) if layer is None else [self._layer(layer)]
        rows = []
        for i in positions:
            row = counts[i, x]
            for e in sorted(row.nonzero().flatten().tolist(), key=lambda e: (-int(row[e]), e)):
                rows.append({"layer": self.layers[i], "expert": e, "count": int(row[e]),
                             "share": int(row[e]) / occurrences})
        return pd.DataFrame(rows, columns=["layer", "expert", "count", "share"])

    # ------------------------------------------------------------------ reports
    def summary(self, n: int = 5, language: str | None = None) -> str:
        """The vocabulary's specialization in a few sentences, every number from the methods.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> ids = torch.tensor([1, 1, 2, 2])
        >>> v = mi.analysis.Vocabulary.from_records(ids, torch.tensor([0, 0, 1, 1])[:, None, None], layers=(3,),
        ...                                         num_experts=2, pieces={1: "a", 2: "b"})
        >>> print(v.summary(n=1))
        4 tokens (2 distinct ids) of 1 language, 1 MoE layers of 2 experts, top-1.
        OLMoE's vocabulary specialization (mean over token ids of the share of a token's occurrences
        routed to its most-used expert; 0.50 if spread evenly): layer 3 1.00.
        Share of an expert's load taken by its 1 most frequent tokens (median over the experts chosen;
        the corpus' own 1 most frequent take 0.50): layer 3 1.00.
        The expert with the largest such share per layer: layer 3 expert 0 (1.00: 'a').

        ```
        """
        n = check_int("n", n, 1)
        occurrences = self._occurrences(language)
        layer_spec = self.vocabulary_specialization(language)
        share = self.specialization(n, language)
        scope = (f"{len(self.languages)} language{'s' * (len(self.languages) != 1)}" if language is ALL
                 else f"language {language!r}")
        lines = [f"{int(occurrences.sum())} tokens ({int((occurrences > 0).sum())} distinct ids) of {scope}, "
                 f"{len(self.layers)} MoE layers of {self.num_experts} experts, top-{self.top_k}.",
                 "OLMoE's vocabulary specialization (mean over token ids of the share of a token's occurrences "
                 f"routed to its most-used expert; {self.top_k / self.num_experts:.2f} if spread evenly): "
                 + ", ".join(f"layer {layer} {float(v):.2f}" for layer, v in zip(self.layers, layer_spec)) + ".",
                 f"Share of an expert's load taken by its {n} most frequent tokens (median over the experts chosen; "
                 f"the corpus' own {n} most frequent take {self.corpus_share(n, language):.2f}): "
                 + ", ".join(f"layer {layer} {_median(row):.2f}" for layer, row in zip(self.layers, share)) + "."]
        best = []
        for i, layer in enumerate(self.layers):
            row = share[i]
            if bool(row.isnan().all()):
                continue
            e = int(torch.where(row.isnan(), -1.0, row).argmax())
            tokens = self.top_tokens(layer, e, n, language).piece.tolist()
            best.append(f"layer {layer} expert {e} ({float(row[e]):.2f}: " + " ".join(repr(t) for t in tokens) + ")")
        lines.append("The expert with the largest such share per layer: " + "; ".join(best) + ".")
        return "\n".join(lines)

    def to_pandas(self) -> pd.DataFrame:
        """One row per (language, layer, token id, expert) that was routed at least once:
        `count` and `token_share` (of the token's occurrences in that language), with the
        token's `piece` and `occurrences`.

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> v = mi.analysis.Vocabulary.from_records(torch.tensor([4, 4]), torch.tensor([[[0]], [[1]]]),
        ...                                         languages=("en",), num_experts=2, pieces={4: "q"})
        >>> v.to_pandas().values.tolist()
        [['en', 0, 4, 'q', 0, 1, 0.5, 2], ['en', 0, 4, 'q', 1, 1, 0.5, 2]]

        ```
        """
        e = self.entries
        occurrences = self.occurrences[e[:, 0], e[:, 2]]
        return pd.DataFrame({
            "language": [self.languages[i] for i in e[:, 0].tolist()],
            "layer": [self.layers[i] for i in e[:, 1].tolist()],
            "token_id": self.token_ids[e[:, 2]].tolist(),
            "piece": [self.pieces[i] for i in e[:, 2].tolist()],
            "expert": e[:, 3].tolist(),
            "count": self.entry_count.tolist(),
            "token_share": (self.entry_count.double() / occurrences.clamp(min=1).double()).tolist(),
            "occurrences": occurrences.tolist(),
        })


def _median(row: Tensor) -> float:
    """The median of the values of `row` that are not nan (nan when none is)."""
    kept = row[~row.isnan()]
    return float(kept.median()) if len(kept) else float("nan")


def _key(parts: tuple, layers: int, tokens: int, experts: int) -> Tensor:
    language, layer, token, expert = (p.long() for p in parts)
    return ((language * layers + layer) * tokens + token) * experts + expert


def _unkey(keys: Tensor, layers: int, tokens: int, experts: int) -> Tensor:
    expert = keys % experts
    rest = keys // experts
    token = rest % tokens
    rest = rest // tokens
    return torch.stack([rest // layers, rest % layers, token, expert], 1)


def _pieces_for(pieces: Any, ids: list[int]) -> tuple[str, ...]:
    if pieces is None:
        return tuple(str(i) for i in ids)
    if isinstance(pieces, Mapping):
        missing = [i for i in ids if i not in pieces]
        if missing:
            raise KeyError(f"pieces names no text for the token ids {missing[:10]}: give every id seen, or a tokenizer")
        return tuple(str(pieces[i]) for i in ids)
    if hasattr(pieces, "decode") and hasattr(pieces, "convert_ids_to_tokens"):
        return token_pieces(pieces, ids)
    raise TypeError(f"pieces must be a tokenizer, a mapping {{id: text}} or None, got {type(pieces).__name__}")
