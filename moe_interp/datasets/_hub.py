"""Loaders for the paper's benchmarks: FLORES+, Belebele and MGSM, from the Hugging Face hub or a local copy.

For users with hub access (FLORES+ is gated: accept its terms and log in) or a local copy; the
`datasets` library is imported only when a loader needs it (`pip install moe-interp[datasets]`).
Nothing here runs at import or test time. Every loader returns the corpus shape
`{lang: [text, ...]}` that `mi.profile` takes; `belebele_items` and `mgsm_items` also give the
answers.

Languages are FLORES-style codes (`eng_Latn`, `deu_Latn`, `jpn_Jpan`) for FLORES+ and Belebele;
a bare ISO 639-3 code (`"deu"`) is completed with its script from the bundled UDHR metadata.
MGSM uses its own two-letter codes (`en`, `de`, `fr`, `es`, `ru`, `zh`, `ja`, `th`, `sw`, `bn`,
`te`). The keys of the result are the codes as given.

Local copies (`path=`):
- FLORES: the FLORES-200 release layout `<path>/<split>/<code>.<split>` (one sentence a line),
  else anything `datasets.load_dataset(path, code)` reads (a clone of the hub repository).
- Belebele: `<path>/<code>.jsonl` (the GitHub release), else `datasets.load_dataset`.
- MGSM: `<path>/mgsm_<lang>.tsv` (google-research/url-nlp: question TAB answer), else
  `datasets.load_dataset`.
"""

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BELEBELE_HUB", "FLORES_PLUS_HUB", "MGSM_HUB", "MGSM_LANGUAGES", "BelebeleItem", "MGSMItem",
    "belebele", "belebele_items", "flores", "mgsm", "mgsm_items",
]

# Hugging Face hub dataset ids (language code lists live in moe_interp.core.languages and MGSM_LANGUAGES)
FLORES_PLUS_HUB = "openlanguagedata/flores_plus"
BELEBELE_HUB = "facebook/belebele"
MGSM_HUB = "juletxara/mgsm"
MGSM_LANGUAGES = ("en", "de", "fr", "es", "ru", "zh", "ja", "th", "sw", "bn", "te")


@dataclass(frozen=True)
class BelebeleItem:
    """One Belebele question: a FLORES passage, a question, four options, the correct index (0-3).

    ```python
    >>> import moe_interp as mi
    >>> item = mi.datasets.BelebeleItem("The cat sat on the mat.", "Where did the cat sit?",
    ...                                 ("on the mat", "on a chair", "in a box", "outside"), 0)
    >>> print(item.text)
    The cat sat on the mat.
    Where did the cat sit?
    A. on the mat
    B. on a chair
    C. in a box
    D. outside

    ```
    """

    passage: str
    question: str
    options: tuple[str, str, str, str]
    answer: int

    @property
    def text(self) -> str:
        """Passage, question and lettered options, one block (what `belebele()` returns)."""
        options = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(self.options))
        return f"{self.passage}\n{self.question}\n{options}"


@dataclass(frozen=True)
class MGSMItem:
    """One MGSM problem: the question and its numeric answer (`solution`: worked answer, if any).

    ```python
    >>> import moe_interp as mi
    >>> item = mi.datasets.MGSMItem("Tom has 3 apples and buys 2 more. How many does he have?", 5.0)
    >>> item.answer, item.solution
    (5.0, None)

    ```
    """

    question: str
    answer: float
    solution: str | None = None


def _codes(languages: str | Iterable[str]) -> list[str]:
    return [languages] if isinstance(languages, str) else list(languages)


def _flores_code(code: str) -> str:
    """`eng_Latn` stays; a bare ISO 639-3 code gets its script from the UDHR metadata."""
    if "_" in code:
        return code
    from moe_interp.datasets._udhr import udhr_languages

    meta = udhr_languages().get(code)
    if meta is None:
        raise KeyError(f"give a FLORES code like 'eng_Latn' for {code!r}: its script is unknown")
    script = {"Hani": "Hans", "Kore": "Hang"}.get(meta["script"], meta["script"])
    return f"{code}_{script}"


def _load_dataset(source: str | os.PathLike, name: str, split: str, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "loading hub benchmarks needs the `datasets` library: pip install 'moe-interp[datasets]'"
        ) from error
    return datasets.load_dataset(str(source), name, split=split, **kwargs)


def flores(
    languages: str | Iterable[str],
    split: str = "devtest",
    path: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """FLORES+ sentences `{lang: [sentence, ...]}`, parallel across languages (997 dev, 1012 devtest).

    **Arguments:**
    - `languages`: FLORES codes (`"eng_Latn"`) or ISO 639-3 codes of the bundled corpus.
    - `split`: "dev" or "devtest".
    - `path`: a local copy instead of the hub dataset `openlanguagedata/flores_plus`.
    - `load_kwargs`: passed to `datasets.load_dataset` (e.g. `revision=`, `token=`).

    From the hub: `mi.datasets.flores(["eng_Latn", "deu", "jpn_Jpan"])`. From a local copy
    in the FLORES-200 release layout:

    ```python
    >>> import pathlib, tempfile
    >>> import moe_interp as mi
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "devtest").mkdir()
    >>> _ = (root / "devtest" / "deu_Latn.devtest").write_text("Ein Satz.\\nNoch einer.\\n", encoding="utf-8")
    >>> mi.datasets.flores("deu", path=root)        # the script is completed from the UDHR metadata
    {'deu': ['Ein Satz.', 'Noch einer.']}

    ```
    """
    out = {}
    for code in _codes(languages):
        config = _flores_code(code)
        local = Path(path) / split / f"{config}.{split}" if path is not None else None
        if local is not None and local.is_file():
            out[code] = local.read_text(encoding="utf-8").splitlines()
            continue
        rows = _load_dataset(path if path is not None else FLORES_PLUS_HUB, config, split, **load_kwargs)
        if "id" in rows.column_names:
            rows = rows.sort("id")
        out[code] = list(rows["text"])
    return out


def _belebele_item(row: dict[str, Any]) -> BelebeleItem:
    return BelebeleItem(
        passage=row["flores_passage"],
        question=row["question"],
        options=tuple(row[f"mc_answer{i}"] for i in range(1, 5)),
        answer=int(row["correct_answer_num"]) - 1,
    )


def belebele_items(
    languages: str | Iterable[str],
    split: str = "test",
    path: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> dict[str, list[BelebeleItem]]:
    """Belebele questions `{lang: [BelebeleItem, ...]}` (900 per language, parallel).

    From the hub: `mi.datasets.belebele_items(["eng_Latn", "swh_Latn"])`. From a local copy
    of the GitHub release (`<code>.jsonl`):

    ```python
    >>> import json, pathlib, tempfile
    >>> import moe_interp as mi
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> row = {"flores_passage": "P.", "question": "Q?", "mc_answer1": "a", "mc_answer2": "b",
    ...        "mc_answer3": "c", "mc_answer4": "d", "correct_answer_num": "3"}
    >>> _ = (root / "eng_Latn.jsonl").write_text(json.dumps(row) + "\\n", encoding="utf-8")
    >>> item = mi.datasets.belebele_items(["eng_Latn"], path=root)["eng_Latn"][0]
    >>> item.options, item.answer                  # answer: index of the correct option, 0-3
    (('a', 'b', 'c', 'd'), 2)

    ```
    """
    out = {}
    for code in _codes(languages):
        config = _flores_code(code)
        local = Path(path) / f"{config}.jsonl" if path is not None else None
        if local is not None and local.is_file():
            with local.open(encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = _load_dataset(path if path is not None else BELEBELE_HUB, config, split, **load_kwargs)
        out[code] = [_belebele_item(row) for row in rows]
    return out


def belebele(
    languages: str | Iterable[str],
    split: str = "test",
    path: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """Belebele as texts `{lang: [passage + question + options, ...]}` (see `BelebeleItem.text`).

    ```python
    >>> import json, pathlib, tempfile
    >>> import moe_interp as mi
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> row = {"flores_passage": "P.", "question": "Q?", "mc_answer1": "a", "mc_answer2": "b",
    ...        "mc_answer3": "c", "mc_answer4": "d", "correct_answer_num": "1"}
    >>> _ = (root / "eng_Latn.jsonl").write_text(json.dumps(row) + "\\n", encoding="utf-8")
    >>> mi.datasets.belebele("eng_Latn", path=root)    # hub: mi.datasets.belebele(["eng_Latn", "deu_Latn"])
    {'eng_Latn': ['P.\\nQ?\\nA. a\\nB. b\\nC. c\\nD. d']}

    ```
    """
    items = belebele_items(languages, split, path, **load_kwargs)
    return {lang: [item.text for item in rows] for lang, rows in items.items()}


def _mgsm_item(row: dict[str, Any]) -> MGSMItem:
    return MGSMItem(
        question=row["question"], answer=float(row["answer_number"]), solution=row.get("answer")
    )


def mgsm_items(
    languages: str | Iterable[str] = MGSM_LANGUAGES,
    split: str = "test",
    path: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> dict[str, list[MGSMItem]]:
    """MGSM problems `{lang: [MGSMItem, ...]}` (250 test problems per language, parallel).

    `juletxara/mgsm` is a script dataset; with `datasets>=4` pass
    `revision="refs/convert/parquet"` or a local copy of the url-nlp TSV files.

    ```python
    >>> import pathlib, tempfile
    >>> import moe_interp as mi
    >>> root = pathlib.Path(tempfile.mkdtemp())     # a local copy as google-research/url-nlp ships it
    >>> _ = (root / "mgsm_de.tsv").write_text("Wie viele?\\t18\\nUnd jetzt?\\t1,000\\n", encoding="utf-8")
    >>> [(i.question, i.answer) for i in mi.datasets.mgsm_items("de", path=root)["de"]]
    [('Wie viele?', 18.0), ('Und jetzt?', 1000.0)]

    ```
    """
    out = {}
    for code in _codes(languages):
        if code not in MGSM_LANGUAGES:
            raise KeyError(f"MGSM has no language {code!r}; it has {', '.join(MGSM_LANGUAGES)}")
        local = Path(path) / f"mgsm_{code}.tsv" if path is not None else None
        if local is not None and local.is_file():
            with local.open(encoding="utf-8", newline="") as f:
                rows = [
                    {"question": r[0], "answer_number": r[1].replace(",", "")}
                    for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r
                ]
        else:
            rows = _load_dataset(path if path is not None else MGSM_HUB, code, split, **load_kwargs)
        out[code] = [_mgsm_item(row) for row in rows]
    return out


def mgsm(
    languages: str | Iterable[str] = MGSM_LANGUAGES,
    split: str = "test",
    path: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """MGSM questions as texts `{lang: [question, ...]}`; answers via `mgsm_items`.

    ```python
    >>> import pathlib, tempfile
    >>> import moe_interp as mi
    >>> root = pathlib.Path(tempfile.mkdtemp())     # hub: mi.datasets.mgsm(["en", "zh"])
    >>> _ = (root / "mgsm_de.tsv").write_text("Wie viele?\\t18\\n", encoding="utf-8")
    >>> mi.datasets.mgsm(["de"], path=root)
    {'de': ['Wie viele?']}

    ```
    """
    items = mgsm_items(languages, split, path, **load_kwargs)
    return {lang: [item.question for item in rows] for lang, rows in items.items()}
