"""`Experiment`: a grid of cells (language x condition) run once, resumable, keyed by content."""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from moe_interp.core._checks import check_positive
from moe_interp.core._fingerprint import WEIGHTS, check_corpus, fingerprint, model_parts
from moe_interp.arch import describe
from moe_interp.experiments.evaluate import text_nll
from moe_interp.runtime._interventions import flatten

__all__ = ["Experiment"]


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

    def __init__(self, model: Any, corpus: Mapping[str, Sequence[str]], grid: Mapping[str, Any],
                 path: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True,
                 weights_hash: str = "full") -> None:
        if not isinstance(grid, Mapping) or not grid:
            raise TypeError("grid must be a non-empty mapping {condition name: [interventions]}")
        batch_size = check_positive("batch_size", batch_size)
        if weights_hash not in WEIGHTS:
            raise ValueError(f"weights_hash must be one of {', '.join(map(repr, WEIGHTS))}, got {weights_hash!r}")
        self.model, self.batch_size, self.progress, self.weights_hash = model, batch_size, progress, weights_hash
        self.corpus = check_corpus(corpus)
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
