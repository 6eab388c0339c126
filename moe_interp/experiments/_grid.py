"""`Experiment`: a grid of cells (language x condition) run once, resumable, keyed by content."""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moe_interp.core._checks import check_positive
from moe_interp.core._expert_set import ExpertSet
from moe_interp.core._fingerprint import WEIGHTS, check_corpus, check_pairs, fingerprint, is_pairs, model_parts
from moe_interp.core._layers import BANDS, THIRD_BANDS, bands as band_split
from moe_interp.arch import describe
from moe_interp.experiments.evaluate import text_nll, two_stacks
from moe_interp.runtime._interventions import flatten

__all__ = ["Experiment"]


def stack_layers(spec: Any, selection: Any, width: int | None = None) -> dict[str, tuple[int, ...]]:
    """`{stack: layers}` that a layer selection picks on a model with several stacks (an
    encoder and a decoder), stacks with none left out. A band name (`BANDS`, `THIRD_BANDS`)
    applies within each stack (its `"<stack>:<band>"`; with `width`, that many of each
    stack's layers, the paper's fixed-width bands); anything else (a stack name,
    `"decoder:late"`, indices, a range) is `spec.select_layers`' selection, split by stack.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._grid import stack_layers
    >>> spec = mi.describe(mi.zoo.tiny_model("switch_transformers"))   # encoder 1, 3; decoder 5, 7
    >>> stack_layers(spec, "late"), stack_layers(spec, "decoder:early"), stack_layers(spec, [1, 3])
    ({'encoder': (3,), 'decoder': (7,)}, {'decoder': (5,)}, {'encoder': (1, 3)})

    ```
    """
    stacks = list(dict.fromkeys(spec.stacks))
    own = {stack: tuple(l for l, s in zip(spec.moe_layers, spec.stacks) if s == stack) for stack in stacks}
    if width is not None:
        if not (isinstance(selection, str) and selection in BANDS):
            raise ValueError(f"width={width} gives the paper's fixed-width bands, named {BANDS}, within each stack; "
                             f"got {selection!r}. Drop width for equal thirds (THIRD_BANDS)")
        return {stack: band_split(own[stack], width=width)[selection] for stack in stacks}
    if isinstance(selection, str) and (selection in BANDS or selection in THIRD_BANDS):
        return {stack: spec.select_layers(f"{stack}:{selection}") for stack in stacks}
    chosen = set(spec.select_layers(selection))
    out = {stack: tuple(l for l in own[stack] if l in chosen) for stack in stacks}
    return {stack: layers for stack, layers in out.items() if layers}


def stack_stats(model: Any, stats: Any, what: str) -> dict[str, Any] | None:
    """`stats` checked against `model`'s stacks: `None` for a model with one stack (whose
    statistics are one `RoutingStats`); for an encoder-decoder model the `{stack:
    RoutingStats}` dict `mi.profile` returns, each covering its stack's MoE layers. `what`
    names the workflow in errors.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._grid import stack_stats
    >>> model = mi.zoo.tiny_model("switch_transformers")
    >>> by_stack = mi.profile(model, {"eng": ["Hello"], "deu": ["Hallo"]}, progress=False)
    >>> {stack: s.layers for stack, s in stack_stats(model, by_stack, "ablation_grid").items()}
    {'encoder': (1, 3), 'decoder': (5, 7)}
    >>> stack_stats(model, by_stack["decoder"], "ablation_grid")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: ablation_grid on this switch_transformers model (stacks encoder, decoder) chooses experts per stack ...

    ```
    """
    spec = describe(model)
    if spec.stack_inputs is None:
        if isinstance(stats, Mapping):
            raise TypeError(f"{what}: this {spec.arch} model has one stack of MoE layers; pass one RoutingStats (its "
                            f"mi.profile), not a mapping of {len(stats)} statistics")
        return None
    stacks = list(dict.fromkeys(spec.stacks))
    if not isinstance(stats, Mapping):
        raise TypeError(f"{what} on this {spec.arch} model (stacks {', '.join(stacks)}) chooses experts per stack from "
                        f"each stack's own statistics; pass the {{stack: RoutingStats}} dict that mi.profile(model, "
                        f"corpus) returns (got one {type(stats).__name__}); from `moe-interp profile --out OUT`: "
                        f"{{s: mi.RoutingStats.load(f'OUT/{{s}}') for s in {tuple(stacks)}}}")
    if list(stats) != stacks and sorted(stats) != sorted(stacks):
        raise ValueError(f"{what}: stats has the stacks {list(stats)}, this {spec.arch} model {stacks}: pass "
                         "mi.profile(model, corpus) of this model")
    out = {}
    for stack in stacks:
        part = stats[stack]
        if not hasattr(part, "exclusive_experts"):
            raise TypeError(f"{what}: stats[{stack!r}] must be a RoutingStats, got {type(part).__name__}")
        layers = tuple(l for l, s in zip(spec.moe_layers, spec.stacks) if s == stack)
        if tuple(part.layers) != layers or part.num_experts != spec.num_experts:
            raise ValueError(f"{what}: stats[{stack!r}] covers layers {list(part.layers)} of {part.num_experts} "
                             f"experts; this model's {stack} MoE layers are {list(layers)} of {spec.num_experts}: "
                             "profile this model (mi.profile)")
        out[stack] = part
    return out


def union(sets: Sequence[ExpertSet]) -> ExpertSet:
    """One `ExpertSet` of sets on disjoint layers (e.g. one per stack), strengths kept when
    every set has them.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._grid import union
    >>> union([mi.ExpertSet({1: [0]}), mi.ExpertSet({5: [2, 3]})])
    ExpertSet({1: [0], 5: [2, 3]}, pairs=3)

    ```
    """
    experts = {layer: s[layer] for s in sets for layer in s}
    if sets and all(s.strengths is not None for s in sets):
        return ExpertSet(experts, strengths={layer: dict(s.strengths[layer]) for s in sets for layer in s})
    return ExpertSet(experts)


class Experiment:
    """A grid of cells (language x condition), each a list of interventions, run once.

    The model is loaded once by you; each finished cell (per-text NLL and bits per byte)
    is appended at once to `path` (JSONL), keyed by the content it depends on: the
    model's weights (every byte; `weights_hash="sampled"`: a strided sample of each tensor,
    cheaper for a huge model, blind to an edit of a few numbers), config and tokenizer (its
    behaviour, e.g. its normalizer or padding side), the language's texts and the
    condition's interventions by value (a `RouteSteer` by its statistics' tensors).
    Rerunning skips finished cells: a killed run loses at most the cell in progress and
    resumes with identical results. Each line carries a checksum of its content: a line
    changed after it was written is recomputed, never reused. A cell of another model,
    corpus or intervention (say, the random-init twin, or other statistics under the same
    condition name) never matches: it is computed and appended, so one file can hold many
    runs. Condition names label the rows; they never key anything.

    On an encoder-decoder model (NLLB-MoE, Switch) each text is scored by
    `mi.evaluate.text_nll`: the decoder's teacher-forced NLL of the text, which the encoder
    reads. A corpus of parallel pairs, `{(source language, target language): [(source,
    target), ...]}`, scores each target given its source; its rows' `language` is
    `"source-target"` (e.g. `"fra-eng"`).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> corpus = {"eng": ["The cat sat.", "Dogs bark."], "deu": ["Die Katze schläft."]}
    >>> grid = {"baseline": [], "ablate": [mi.ExpertAblate({1: [0, 1]})]}
    >>> df = mi.Experiment(model, corpus, grid, progress=False).run()   # path=...: resumable
    >>> len(df), sorted(df.condition.unique()), sorted(df.columns)[:4]
    (6, ['ablate', 'baseline'], ['bits_per_byte', 'bytes', 'condition', 'item'])

    ```
    """

    def __init__(self, model: Any,
                 corpus: Mapping[str, Sequence[str]] | Mapping[tuple[str, str], Sequence[Sequence[str]]],
                 grid: Mapping[str, Any],
                 path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True,
                 weights_hash: str = "full") -> None:
        if not isinstance(grid, Mapping) or not grid:
            raise TypeError("grid must be a non-empty mapping {condition name: [interventions]}")
        batch_size = check_positive("batch_size", batch_size)
        if weights_hash not in WEIGHTS:
            raise ValueError(f"weights_hash must be one of {', '.join(map(repr, WEIGHTS))}, got {weights_hash!r}")
        self.model, self.batch_size, self.progress, self.weights_hash = model, batch_size, progress, weights_hash
        pairs = _pairs_corpus(corpus)
        if pairs is not None and not two_stacks(model):
            raise ValueError("a corpus of (source, target) pairs is scored by an encoder-decoder model (the decoder "
                             "predicts the target from the source); this model reads one text: pass {language: "
                             "[texts]}")
        self.corpus = pairs if pairs is not None else check_corpus(corpus)
        self.grid = {str(name): flatten(v if isinstance(v, (list, tuple)) else [v]) for name, v in grid.items()}
        spec = describe(model)
        for interventions in self.grid.values():  # validate every cell before running any
            for intervention in interventions:
                intervention.edits(spec)
        self.path = Path(path) if path is not None else None

    def _keys(self, cells: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        # read now, not at construction: weights edited in between must not hit the old cells
        model = fingerprint(model_parts(self.model, self.weights_hash))
        conditions = {condition: fingerprint(self.grid[condition]) for _, condition in cells}
        return {(lang, cond): fingerprint((model, self.corpus[lang], conditions[cond])) for lang, cond in cells}

    def key(self, language: str, condition: str) -> str:
        """The content hash that identifies one cell's result (model weights, config and
        tokenizer; the language's texts; the condition's interventions by value)."""
        return self._keys([(language, condition)])[(language, condition)]

    def _done(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        done = {}
        for line in self.path.read_bytes().splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):  # a line cut by a kill mid-write: that cell reruns
                continue
            # a record whose bytes changed after it was written (or of an older version, without a
            # checksum) is not reused: that cell reruns rather than ever giving other numbers
            if isinstance(record, dict) and isinstance(record.get("key"), str) and isinstance(record.get("rows"), list) \
                    and record.get("sha256") == _checksum(record):
                done[record["key"]] = record
        return done

    def run(self) -> Any:
        """Run every unfinished cell; return all cells' rows as a tidy pandas DataFrame."""
        import pandas as pd

        done = self._done()
        cells = [(lang, cond) for cond in self.grid for lang in self.corpus]
        keys = self._keys(cells)
        # a stored cell counts only with one row per text (a cut or foreign record reruns)
        todo = [c for c in cells if len(done.get(keys[c], {}).get("rows", ())) != len(self.corpus[c[0]])]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for language, condition in tqdm(todo, desc="cells", disable=not self.progress, unit="cell"):
            rows = text_nll(self.model, self.corpus[language], *self.grid[condition], batch_size=self.batch_size)
            record = {"key": keys[(language, condition)], "language": language, "condition": condition,
                      "rows": rows}
            record["sha256"] = _checksum(record)
            done[record["key"]] = record
            if self.path is not None:
                with open(self.path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        frame = [dict(language=lang, condition=cond, item=i, **row)
                 for lang, cond in cells for i, row in enumerate(done[keys[(lang, cond)]]["rows"])]
        return pd.DataFrame(frame)


def _pairs_corpus(corpus: Any) -> dict[str, list[tuple[str, str]]] | None:
    """A corpus of parallel pairs `{(source, target): [(text, text)]}` as `{"source-target":
    [pairs]}`; `None` for any other corpus (checked as `{language: [texts]}`).

    ```python
    >>> from moe_interp.experiments._grid import _pairs_corpus
    >>> _pairs_corpus({("fra", "eng"): [("Bonjour", "Hello")]}), _pairs_corpus({"eng": ["Hello"]})
    ({'fra-eng': [('Bonjour', 'Hello')]}, None)

    ```
    """
    if not is_pairs(corpus):
        return None
    return {f"{source}-{target}": pairs for (source, target), pairs in check_pairs(corpus).items()}


def _checksum(record: dict) -> str:
    """A fingerprint of a cell's record (every entry but the checksum; numbers exactly, as
    JSON gives them back)."""
    return fingerprint({k: v for k, v in record.items() if k != "sha256"})


def check_held_out(stats: Any, corpus: Mapping[str, Sequence[str]], allow: bool = False) -> None:
    """Refuse to evaluate on texts the statistics were profiled on (double dipping).

    Experts chosen from a profile of some texts and then scored on the same texts look more
    specific than they are. `mi.profile` records a fingerprint of every text it profiled
    (`stats.meta["text_hashes"]`, per language); any evaluation text among them, under any
    language, is an overlap, and this raises `ValueError` saying how many texts overlap in
    which languages and naming the fix, unless `allow=True` (the check is then skipped,
    knowingly). Stats from an older profile, with only a fingerprint of each language's whole
    list (`stats.meta["texts"]`), catch an identical list only; stats without fingerprints
    (built by hand) pass unchecked.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments._grid import check_held_out
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> p = mi.profile(model, {"eng": ["The cat sat.", "Dogs bark."]}, progress=False)
    >>> check_held_out(p, {"eng": ["A dog barked.", "Fish swim."]})            # other texts: fine
    >>> check_held_out(p, {"eng": ["A dog barked.", "Dogs bark."]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the statistics were profiled on the same eng texts ... (1 of the 2 evaluation texts; eng: 1 of 2): ...

    ```
    """
    if allow:
        return
    meta = getattr(stats, "meta", None) or {}
    hashes = meta.get("text_hashes")
    overlap: dict[str, tuple[int, int]] = {}
    if hashes:
        profiled = {h for texts in hashes.values() for h in texts}
        for lang, texts in corpus.items():
            shared = sum(fingerprint(text) in profiled for text in texts)
            if shared:
                overlap[lang] = (shared, len(texts))
    else:  # an older profile: one fingerprint per language's list, so only an identical list is seen
        recorded = meta.get("texts") or {}
        overlap = {lang: (len(texts), len(texts)) for lang, texts in corpus.items()
                   if recorded.get(lang) == fingerprint(list(texts))}
    if overlap:
        shared, total = sum(n for n, _ in overlap.values()), sum(len(texts) for texts in corpus.values())
        where = "; ".join(f"{lang}: {n} of {m}" for lang, (n, m) in overlap.items())
        raise ValueError(
            f"the statistics were profiled on the same {', '.join(overlap)} texts as the evaluation ({shared} of the "
            f"{total} evaluation texts; {where}): experts chosen and "
            "scored on the same texts look more specific than they are. Use a held-out split: profile on other "
            "texts, e.g. mi.profile(model, mi.datasets.udhr(languages, split='train')), and evaluate on "
            "split='heldout' (or pass allow_same_texts=True to do it anyway)")
