"""The data of `RoutingStats`: routing counts per (group, MoE layer, expert), their checks,
selection, merging, files and the paper's released counts; nothing that analyses them.

The bottom of the statistics stack: `analysis`, `plots` and `datasets` build on
`RoutingCounts`; `moe_interp.analysis._stats.RoutingStats` (the class users meet) adds the analyses
and figures as methods on top. Everything here returns `type(self)` / `cls`, so a
`RoutingStats` stays a `RoutingStats` through `select`, `merge` and `load`.
"""

import dataclasses
import difflib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from torch import Tensor

from moe_interp.core._checks import check_int
from moe_interp.core._files import read_tensors, save_tensor_directory, verify_checksum
from moe_interp.core._layers import parse_layers
from moe_interp.core.languages import info

__all__ = ["RoutingCounts", "StatsFileError"]

_FORMAT = "moe_interp.RoutingStats/1"
_TENSOR_FILE, _META_FILE = "stats.safetensors", "meta.json"
_TENSORS = ("count", "gate_mass", "tokens", "item_count", "item_tokens", "item_language")


class StatsFileError(ValueError):
    """A routing-statistics file is truncated, corrupted or of another format.

    A `ValueError`, raised by `RoutingStats.load`, `RoutingStats.from_paper` and
    `mi.datasets.reference_stats` with the path of the damaged file.

    ```python
    >>> import json, tempfile
    >>> import moe_interp as mi
    >>> folder = tempfile.mkdtemp()
    >>> with open(f"{folder}/mgsm_en.json", "w") as f:
    ...     f.write("{not json")
    9
    >>> try:
    ...     mi.RoutingStats.from_paper(folder, languages=["en"])
    ... except mi.StatsFileError as error:
    ...     print(str(error).split(": ")[1])
    Expecting property name enclosed in double quotes

    ```
    """


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


def _check_consistent(stats: "RoutingCounts") -> None:
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
    if stats.stacks is not None:
        if len(stats.stacks) != n_layer or not all(isinstance(s, str) and s for s in stats.stacks):
            raise ValueError(f"stacks must give one non-empty label per layer ({n_layer}), e.g. 'encoder' / "
                             f"'decoder', or be None for a single-stack model; got {stats.stacks!r}")
    check_int("num_experts", stats.num_experts, 1)
    check_int("top_k", stats.top_k, 1, stats.num_experts)
    grid = (n_lang, n_layer, stats.num_experts)
    _check_tensor("count", stats.count, grid, "(languages, layers, num_experts)", integral=True)
    _check_tensor("gate_mass", stats.gate_mass, grid, "(languages, layers, num_experts)", integral=False)
    _check_tensor("tokens", stats.tokens, (n_lang,), "(languages,)", integral=True)
    if stats.co_activation is not None:
        _check_tensor("co_activation", stats.co_activation, grid + (stats.num_experts,),
                      "(languages, layers, num_experts, num_experts)", integral=True)
    if stats.entropy_sum is not None:
        _check_tensor("entropy_sum", stats.entropy_sum, (n_lang, n_layer), "(languages, layers)", integral=False)
        if bool((stats.entropy_sum < 0).any()):
            raise ValueError("entropy_sum must be non-negative: sums of per-token routing entropies (nats)")
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
class RoutingCounts:
    """Routing counts of one model over groups of text (usually languages): the fields of
    `RoutingStats`, which adds the analyses and figures as methods.

    For every non-padding token and MoE layer, each of the `top_k` experts the model
    used adds 1 to `count[group, layer, expert]` and its routing weight to
    `gate_mass[...]`; `tokens[group]` counts the tokens. The `group` axis is labelled by
    `groups`: the invoke groups of a trace (`("default",)` for one plain input), the
    languages of a profile. The field holding the labels is `languages`, the name the
    analyses of languages use (`exclusive_experts("sw")`, `family_agreement`, saved files);
    `groups` is the same tuple. `layers` holds the real indices of
    the MoE layers (the `layer` axis). Per-item counts (`item_count`, `item_tokens`,
    `item_language`), kept by `mi.profile`, allow bootstrap confidence intervals.
    `stacks` labels each layer's stack (e.g. `"encoder"` / `"decoder"`) on models with more
    than one; `None` on single-stack models. Where analyses take `layers=`, a stack name
    selects its layers (`moe_interp.core._layers`). `co_activation[group, layer, i, j]`
    (`RouterRecord(co_activation=True)`, `mi.profile` with it) counts the tokens that chose
    both experts `i` and `j`; its diagonal is `count` (each expert once per token); `None`
    when not recorded. `entropy_sum[group, layer]` (`RouterRecord(entropy=True)`) sums the
    counted tokens' routing entropies in nats (`softmax` of the router logits over all E
    experts): divided by `tokens`, the mean per-token entropy; `None` when not recorded.
    Construction checks that the fields agree (shapes, integer counts >= 0, finite gate mass,
    per-item counts adding up to `count`) and raises `ValueError` / `TypeError` naming the field.

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> count = torch.tensor([[[3, 1, 0, 0]], [[0, 0, 2, 2]]])       # 2 groups, 1 layer, 4 experts
    >>> s = mi.RoutingStats(("en", "de"), (5,), num_experts=4, top_k=2, count=count,
    ...                     gate_mass=count / 2.0, tokens=torch.tensor([2, 2]))
    >>> s.frequency()[1, 0].tolist()                                  # uses per token, sum top_k
    [0.0, 0.0, 1.0, 1.0]
    >>> mi.RoutingStats(("en",), (5,), 4, 2, count[:1], count[:1] / 2.0, torch.tensor([-1]))
    Traceback (most recent call last):
    ValueError: tokens[0] = -1: tokens must be non-negative

    ```
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    count: Int[Tensor, "group layer expert"]
    gate_mass: Float[Tensor, "group layer expert"]
    tokens: Int[Tensor, " group"]
    item_count: Int[Tensor, "item layer expert"] | None = None
    item_tokens: Int[Tensor, " item"] | None = None
    item_language: Int[Tensor, " item"] | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    per_token: dict | None = None
    stacks: tuple[str, ...] | None = None
    co_activation: Int[Tensor, "group layer expert expert2"] | None = None
    entropy_sum: Float[Tensor, "group layer"] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.languages, str):
            raise TypeError(f"languages must be a sequence of labels, e.g. ['en', 'zh'], not the string "
                            f"{self.languages!r}")
        self.languages = tuple(self.languages)
        self.layers = tuple(int(layer) for layer in self.layers)
        if self.stacks is not None:
            self.stacks = tuple(self.stacks)
        _check_consistent(self)

    @property
    def groups(self) -> tuple[str, ...]:
        """The labels of the `group` axis (`count[group]`): the invoke groups of a trace
        (`("default",)` for one plain input, `"invoke0"`, ... or the names given), the
        languages of a profile. The same tuple as `languages`.

        ```python
        >>> import moe_interp as mi
        >>> model = mi.zoo.tiny_model("qwen3_moe")
        >>> with mi.trace(model, "The cat sat.", mi.RouterRecord()) as tr:
        ...     pass
        >>> tr.routing.groups
        ('default',)
        >>> tr.routing                                   # not language codes: the repr says groups
        RoutingStats(groups=[default], layers=4, experts=8, top_k=2, tokens=...)

        ```
        """
        return self.languages

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_paper(cls, directory: str | os.PathLike, languages: Sequence[str],
                   pattern: str = "mgsm_{lang}.json", num_experts: int | None = None,
                   top_k: int | None = None) -> "RoutingCounts":
        """Load the paper's released routing counts (one JSON file per language).

        Format: `{layer: {expert: {"activation_tokens": int, "gate_values_sum": float},
        "total_tokens": int}}`. `top_k` defaults to the count total over tokens.

        ```python
        >>> import json, tempfile
        >>> import moe_interp as mi
        >>> folder = tempfile.mkdtemp()
        >>> layer = {"0": {"activation_tokens": 3, "gate_values_sum": 2.5},
        ...          "1": {"activation_tokens": 1, "gate_values_sum": 0.5}, "total_tokens": 4}
        >>> for lang in ("en", "de"):
        ...     with open(f"{folder}/mgsm_{lang}.json", "w") as f:
        ...         json.dump({"0": layer, "1": layer}, f)
        >>> p = mi.RoutingStats.from_paper(folder, languages=["en", "de"])
        >>> p.languages, p.layers, p.num_experts, p.top_k
        (('en', 'de'), (0, 1), 2, 1)

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

    def merge(self, *others: "RoutingCounts") -> "RoutingCounts":
        """Combine stats of the same model: counts of a language present in both are summed.

        Languages: this one's, then the others' new ones. Per-item counts and co-activation
        counts are kept when every part has them.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()
        >>> merged = p.select(["en", "de"]).merge(p.select(["de", "sw"]))
        >>> merged.languages, int(merged.tokens[1]) == 2 * int(p.tokens[p.language_index("de")])
        (('en', 'de', 'sw'), True)

        ```
        """
        result = self
        for other in others:
            if (other.layers, other.stacks, other.num_experts, other.top_k) != (
                    result.layers, result.stacks, result.num_experts, result.top_k):
                raise ValueError("can only merge stats of the same model (layers, stacks, num_experts, top_k differ)")
            languages = list(result.languages) + [l for l in other.languages if l not in result.languages]
            shape = (len(languages), len(result.layers), result.num_experts)
            count = torch.zeros(shape, dtype=torch.long)
            mass = torch.zeros(shape, dtype=torch.float64)
            tokens = torch.zeros(len(languages), dtype=torch.long)
            both = result.co_activation is not None and other.co_activation is not None
            pairs = torch.zeros(shape + (result.num_experts,), dtype=torch.long) if both else None
            nats = result.entropy_sum is not None and other.entropy_sum is not None
            entropy = torch.zeros(shape[:2], dtype=torch.float64) if nats else None
            for stats in (result, other):
                index = torch.tensor([languages.index(l) for l in stats.languages])
                count.index_add_(0, index, stats.count.cpu().long())
                mass.index_add_(0, index, stats.gate_mass.cpu().double())
                tokens.index_add_(0, index, stats.tokens.cpu().long())
                if both:
                    pairs.index_add_(0, index, stats.co_activation.cpu().long())
                if nats:
                    entropy.index_add_(0, index, stats.entropy_sum.cpu().double())
            items = None
            if result.item_count is not None and other.item_count is not None:
                relabel = torch.tensor([languages.index(l) for l in other.languages])
                items = (torch.cat([result.item_count, other.item_count]),
                         torch.cat([result.item_tokens, other.item_tokens]),
                         torch.cat([result.item_language, relabel[other.item_language]]))
            result = type(self)(tuple(languages), result.layers, result.num_experts, result.top_k, count, mass,
                                tokens, *(items or (None, None, None)), meta={**result.meta, "merged": True},
                                stacks=result.stacks, co_activation=pairs, entropy_sum=entropy)
        return result

    def select(self, languages: Sequence[str] | None = None, layers: Any = None) -> "RoutingCounts":
        """A copy with some languages (in the order given) and/or layers (any `layers=` value:
        indices, a range, a slice, a band or stack name; see `layer_positions`).

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()            # the paper's released counts
        >>> p.select(["en", "zh"], layers=range(10, 40)).count.shape
        torch.Size([2, 30, 128])
        >>> p.select(layers="middle").layers[0], p.select(layers="middle-third").layers[0]
        (10, 16)

        ```
        """
        lang_index = [self.language_index(l) for l in (languages or self.languages)]
        layer_index = self.layer_positions(layers)
        li, yi = torch.tensor(lang_index), torch.tensor(layer_index)
        items = (None, None, None)
        if self.item_count is not None:
            keep = torch.isin(self.item_language, li)
            remap = torch.full((len(self.languages),), -1, dtype=torch.long)
            remap[li] = torch.arange(len(li))
            items = (self.item_count[keep][:, yi], self.item_tokens[keep], remap[self.item_language[keep]])
        stacks = None if self.stacks is None else tuple(self.stacks[i] for i in layer_index)
        pairs = None if self.co_activation is None else self.co_activation[li][:, yi]
        entropy = None if self.entropy_sum is None else self.entropy_sum[li][:, yi]
        return type(self)(tuple(self.languages[i] for i in lang_index), tuple(self.layers[i] for i in layer_index),
                          self.num_experts, self.top_k, self.count[li][:, yi], self.gate_mass[li][:, yi],
                          self.tokens[li], *items, meta=dict(self.meta), stacks=stacks, co_activation=pairs,
                          entropy_sum=entropy)

    def language_index(self, language: str) -> int:
        """Position of a language label; `KeyError` with close matches when unknown."""
        if language not in self.languages:
            close = difflib.get_close_matches(str(language), self.languages, n=3, cutoff=0.3)
            hint = f"close matches: {close}; " if close else ""
            raise KeyError(f"language {language!r} is not in these stats (it was not profiled); {hint}the profiled "
                           f"languages: {list(self.languages)}")
        return self.languages.index(language)

    def layer_index(self, layer: int) -> int:
        """Position of a real MoE layer index on the `layer` axis; `ValueError` when absent."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not in these stats (layers {self.layers[0]}-{self.layers[-1]})")
        return self.layers.index(layer)

    def layer_positions(self, layers: Any = None) -> list[int]:
        """Positions on the `layer` axis of a layer selection, in layer order.

        `layers`: `None` / `"all"`, real layer indices (an int, a list, a `range`), a
        `slice` over real indices, a band of these stats' layers (`"early"`, `"middle"`,
        `"late"`: the paper's proportions; `"early-third"`, ...: equal thirds), or, with
        `stacks`, a stack name or `"<stack>:<band>"`. One vocabulary everywhere
        (`moe_interp.core._layers.parse_layers`); an empty or unknown selection is a `ValueError`.

        ```python
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats()            # 48 MoE layers
        >>> p.layer_positions("late"), p.layer_positions(slice(46, None))
        ([40, 41, 42, 43, 44, 45, 46, 47], [46, 47])

        ```
        """
        return [self.layers.index(layer) for layer in parse_layers(layers, self.layers, stacks=self.stacks)]

    # -- basic quantities ----------------------------------------------------------

    def frequency(self) -> Float[Tensor, "group layer expert"]:
        """`count / tokens`: how often each expert is used per token (sums to `top_k`).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> count = torch.tensor([[[3, 1, 0, 0]]])                       # 2 tokens, each used 2 experts
        >>> s = mi.RoutingStats(("en",), (0,), 4, 2, count, count / 2.0, torch.tensor([2]))
        >>> s.frequency()[0, 0].tolist()
        [1.5, 0.5, 0.0, 0.0]

        ```
        """
        return self.count.double() / self.tokens.clamp(min=1).double()[:, None, None]

    def distribution(self) -> Float[Tensor, "group layer expert"]:
        """`frequency() / top_k`: the routing distribution over experts (sums to 1).

        ```python
        >>> import torch
        >>> import moe_interp as mi
        >>> count = torch.tensor([[[3, 1, 0, 0]]])
        >>> mi.RoutingStats(("en",), (0,), 4, 2, count, count / 2.0, torch.tensor([2])).distribution()[0, 0].tolist()
        [0.75, 0.25, 0.0, 0.0]

        ```
        """
        return self.frequency() / self.top_k

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
        >>> import tempfile
        >>> import moe_interp as mi
        >>> p = mi.datasets.reference_stats().select(["en", "sw"])
        >>> path = p.save(f"{tempfile.mkdtemp()}/qwen3.routing")
        >>> sorted(f.name for f in path.iterdir())
        ['meta.json', 'stats.safetensors']
        >>> p.save(path)
        Traceback (most recent call last):
        FileExistsError: ... exists; pass overwrite=True to replace it

        ```
        """
        tensors = {name: getattr(self, name) for name in _TENSORS if getattr(self, name) is not None}
        if self.co_activation is not None:  # absent when not recorded: files read as before
            tensors["co_activation"] = self.co_activation
        if self.entropy_sum is not None:  # the same
            tensors["entropy_sum"] = self.entropy_sum
        for name, value in (self.per_token or {}).items():
            tensors[f"per_token.{name}"] = value
        header = {"format": _FORMAT, "languages": list(self.languages), "layers": list(self.layers),
                  "num_experts": self.num_experts, "top_k": self.top_k, "meta": self.meta,
                  "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if self.stacks is not None:  # absent for single-stack models: files read as before
            header["stacks"] = list(self.stacks)
        return save_tensor_directory(Path(path), header, tensors, tensor_file=_TENSOR_FILE, meta_file=_META_FILE,
                                     what="RoutingStats.save", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RoutingCounts":
        """Read stats written by `save`; a damaged or inconsistent file raises `StatsFileError` naming it.

        The sha256 checksum `save` stores is verified, so a changed byte is an error, never
        different numbers. Files written before stats files carried a checksum load
        unverified, with a `UserWarning` saying so; save them again to add one.

        ```python
        >>> import tempfile
        >>> import moe_interp as mi
        >>> path = mi.datasets.reference_stats().save(f"{tempfile.mkdtemp()}/qwen3.routing")
        >>> back = mi.RoutingStats.load(path)
        >>> back.count.shape, type(back).__name__
        (torch.Size([8, 48, 128]), 'RoutingStats')

        ```
        """
        path = Path(path)
        meta_path, tensor_path = path / _META_FILE, path / _TENSOR_FILE
        if not path.is_dir() or not meta_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved RoutingStats (expected a directory with "
                                    "meta.json and stats.safetensors, as written by RoutingStats.save)")
        header = _read_header(meta_path.read_bytes(), meta_path)
        try:
            stored, tensors = read_tensors(tensor_path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise StatsFileError(f"{tensor_path} is truncated or corrupted: {error}") from None
        if "moe_interp" in stored:
            # the checksummed copy inside the tensor file is the header of record: meta.json may be
            # one save behind if a save was killed between its two renames
            try:
                verify_checksum(tensor_path, stored, tensors)
            except ValueError as error:
                raise StatsFileError(f"{error} (by RoutingStats.save); restore a copy or recompute the stats") from None
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
                       *(tensors.get(n) for n in _TENSORS), meta=header.get("meta", {}), per_token=per_token,
                       stacks=None if header.get("stacks") is None else tuple(header["stacks"]),
                       co_activation=tensors.get("co_activation"), entropy_sum=tensors.get("entropy_sum"))
        except (KeyError, ValueError, TypeError) as error:
            raise StatsFileError(f"{path} is inconsistent: {error}") from None

    def __repr__(self) -> str:
        # "languages" when every label is a language code (a profile), else "groups" (a trace's invokes)
        axis = "languages" if all(_is_language(label) for label in self.languages) else "groups"
        labels = ", ".join(self.languages[:8]) + (", ..." if len(self.languages) > 8 else "")
        return (f"{type(self).__name__}({axis}=[{labels}], layers={len(self.layers)}, experts={self.num_experts}, "
                f"top_k={self.top_k}, tokens={int(self.tokens.sum())})")


def _is_language(label: str) -> bool:
    try:
        info(label)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _read_header(text: bytes, where: Path) -> dict:
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StatsFileError(f"{where} is corrupted: {error}") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise StatsFileError(f"{where} is not a {_FORMAT} header")
    return header
