"""A researcher's own corpus: a directory of one text file per language, a JSON Lines / CSV
file or a Hugging Face `datasets` dataset with a language column and a text column, read into
the `{language: [texts]}` every API takes, with a deterministic train/held-out split by a hash
of each text.

The split rule (`split_corpus`): a text is held out when the first 8 bytes of the SHA-256 of
its UTF-8 bytes, read as a big-endian integer and divided by 2**64, are below `fraction`
(default `HELDOUT_FRACTION` = 0.25). It depends on the text alone, so it is the same on every
run and machine, and identical texts always land on the same side. Each language needs at least
two texts; if the rule holds out none of a language's texts, its text with the smallest hash is
held out, and if it holds out all of them, its text with the largest hash is kept for training,
so both sides are never empty.
"""

import csv
import difflib
import functools
import hashlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["HELDOUT_FRACTION", "load_corpus", "split_corpus"]

HELDOUT_FRACTION = 0.25
"""Default share of each language's texts held out by `split_corpus` (UDHR holds out 12 of 51)."""

_SPLITS = ("train", "heldout", "all")


def _hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def _check_split(split: str, fraction: float) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}: pass one of {', '.join(_SPLITS)}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r}: pass the held-out share of each language's texts, 0 < fraction < 1")


def _split_items(items: Sequence, text_of, split: str, fraction: float) -> list:
    """Train or held-out members of `items` (in their order) by the hash rule of the module docstring."""
    if split == "all":
        return list(items)
    hashes = [_hash(text_of(item)) for item in items]
    held = [h < fraction for h in hashes]
    if not any(held):
        held[hashes.index(min(hashes))] = True
    elif all(held):
        held[hashes.index(max(hashes))] = False
    return [item for item, h in zip(items, held) if h == (split == "heldout")]


def split_corpus(corpus: Mapping[str, Sequence[str]], split: str = "heldout",
                 fraction: float = HELDOUT_FRACTION) -> dict[str, list[str]]:
    """The `split` ("train", "heldout" or "all") of a `{language: [texts]}` corpus, texts in
    their order, by the hash rule: a text is held out when
    `int.from_bytes(sha256(text.encode()).digest()[:8], "big") / 2**64 < fraction`, with at least
    one text of each language on each side (see the module docstring). Raises `ValueError` for a
    language with fewer than two texts.

    ```python
    >>> import moe_interp as mi
    >>> corpus = {"eng": [f"Sentence number {i}." for i in range(20)], "deu": [f"Satz Nummer {i}." for i in range(20)]}
    >>> train = mi.datasets.split_corpus(corpus, "train")
    >>> heldout = mi.datasets.split_corpus(corpus, "heldout")
    >>> {l: (len(train[l]), len(heldout[l])) for l in corpus}
    {'eng': (15, 5), 'deu': (13, 7)}
    >>> set(train["eng"]) & set(heldout["eng"])
    set()
    >>> mi.datasets.split_corpus({"fin": ["Yksi teksti."]}, "train")
    Traceback (most recent call last):
    ValueError: language 'fin' has 1 text; a train/held-out split needs at least two per language

    ```
    """
    _check_split(split, fraction)
    out = {}
    for language, texts in corpus.items():
        texts = list(texts)
        if split != "all" and len(texts) < 2:
            raise ValueError(f"language {language!r} has {len(texts)} text{'s' * (len(texts) != 1)}; a train/held-out "
                             "split needs at least two per language")
        out[language] = _split_items(texts, lambda t: t, split, fraction)
    return out


class _Items:
    """Texts read so far: `{language: [(text, where)]}`, `where` being "file:line"."""

    def __init__(self) -> None:
        self.by_language: dict[str, list[tuple[str, str]]] = {}

    def add(self, language: str, text: str, where: str) -> None:
        self.by_language.setdefault(language, []).append((text, where))


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path}: the file is empty; put texts in it or remove it")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[error.start]:02x} at column {column} is not UTF-8; "
                         "save the file as UTF-8") from None


def _read_directory(path: Path, items: _Items, unit: str) -> None:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
    if not files:
        raise ValueError(f"{path}: no .txt files; put one UTF-8 file per language in it, named by its ISO 639-3 "
                         "code (eng.txt, deu.txt)")
    for file in files:
        text = _decode(file)
        lines = text.splitlines()
        if unit == "line":
            for number, line in enumerate(lines, 1):
                if line.strip():
                    items.add(file.stem, line.strip(), f"{file}:{number}")
            continue
        paragraph: list[str] = []
        start = 0
        for number, line in enumerate([*lines, ""], 1):
            if line.strip():
                if not paragraph:
                    start = number
                paragraph.append(line.strip())
            elif paragraph:
                items.add(file.stem, "\n".join(paragraph), f"{file}:{start}")
                paragraph = []


def _row(path: str | Path, line: int, row: Mapping, language_column: str, text_column: str, items: _Items) -> None:
    where = f"{path}:{line}"
    for column in (language_column, text_column):
        if column not in row:
            option = "language_column" if column == language_column else "text_column"
            raise ValueError(f"{where}: no column {column!r} (columns: {', '.join(map(repr, row))}); "
                             f"name the right one with {option}=")
    language, text = row[language_column], row[text_column]
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"{where}: the language ({language_column!r}) is {language!r}; give an ISO 639-3 code")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: the text ({text_column!r}) is {text!r}; give a non-empty string or remove the row")
    items.add(language.strip(), text.strip(), where)


def _read_jsonl(path: Path, items: _Items, language_column: str, text_column: str) -> None:
    for number, line in enumerate(_decode(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; write one object per "
                             f'line, e.g. {{"{language_column}": "eng", "{text_column}": "..."}}')
        _row(path, number, row, language_column, text_column, items)


def _read_csv(path: Path, items: _Items, language_column: str, text_column: str) -> None:
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    header = None
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        if header is None:
            header = [field.strip() for field in row]
            for column in (language_column, text_column):
                if column not in header:
                    option = "language_column" if column == language_column else "text_column"
                    raise ValueError(f"{path}:{reader.line_num}: no column {column!r} in the header (columns: "
                                     f"{', '.join(map(repr, header))}); name the right one with {option}=")
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}; quote "
                             "fields that contain commas")
        _row(path, reader.line_num, dict(zip(header, row)), language_column, text_column, items)
    if header is None:
        raise ValueError(f"{path}: the file is empty; put texts in it or remove it")


def _read_file(path: Path, items: _Items, unit: str, language_column: str, text_column: str) -> Path:
    if path.is_dir():
        _read_directory(path, items, unit)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory; pass a directory of <language>.txt files, "
                                "a .jsonl or a .csv file, or hf:<dataset>")
    elif path.suffix.lower() == ".jsonl":
        _read_jsonl(path, items, language_column, text_column)
    elif path.suffix.lower() == ".csv":
        _read_csv(path, items, language_column, text_column)
    else:
        raise ValueError(f"{path}: not a directory, .jsonl or .csv file; for plain text, put one file per language "
                         "in a directory (eng.txt, deu.txt)")
    return path


def _read_hf(source: str, items: _Items, language_column: str, text_column: str, dataset_split: str) -> str:
    """Rows of a Hugging Face `datasets` dataset: a `save_to_disk` directory, else `datasets.load_dataset(source)`."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"hf:{source}: reading a Hugging Face dataset needs the `datasets` library: "
                          "pip install 'moe-interp[datasets]'") from None
    label = f"hf:{source}[{dataset_split}]"
    path = Path(source).expanduser()
    if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if dataset_split not in data:
                raise ValueError(f"hf:{source}: no split {dataset_split!r} (splits: {', '.join(data)}); "
                                 "name one with dataset_split=")
            data = data[dataset_split]
    else:
        data = datasets.load_dataset(source, split=dataset_split)
    for column, option in ((language_column, "language_column"), (text_column, "text_column")):
        if column not in data.column_names:
            raise ValueError(f"{label}: no column {column!r} (columns: {', '.join(map(repr, data.column_names))}); "
                             f"name the right one with {option}=")
    if len(data) == 0:
        raise ValueError(f"{label}: the dataset is empty")
    for number, row in enumerate(data.select_columns([language_column, text_column]), 1):
        _row(label, number, row, language_column, text_column, items)
    return label


@functools.cache
def _known_codes() -> tuple[str, ...]:
    from moe_interp.core import languages

    return tuple(sorted({l.iso639_3 for l in languages.all_languages()}))


def _check_codes(codes: Sequence[str], source: str | Path) -> None:
    from moe_interp.core import languages

    known = _known_codes()
    for code in codes:
        if code in known:
            continue
        try:
            meant = [languages.info(code).iso639_3]
        except KeyError:
            meant = difflib.get_close_matches(code.lower(), known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(meant)}?" if meant else "no close match"
        warnings.warn(f"{source}: language {code!r} is not an ISO 639-3 code of moe_interp.core.languages ({hint}); "
                      "kept as given", UserWarning, stacklevel=3)


def load_corpus(path: str | Path, split: str = "all", *, unit: str = "paragraph", language_column: str = "language",
                text_column: str = "text", fraction: float = HELDOUT_FRACTION,
                dataset_split: str = "train") -> dict[str, list[str]]:
    """Read your own corpus as `{language: [texts]}`, the shape `mi.profile`, `mi.ablation_grid`
    and `mi.steering_eval` take, then keep its `split` ("all", "train" or "heldout", by
    `split_corpus`'s hash rule with held-out share `fraction`).

    `path` is one of:

    - a directory of UTF-8 `.txt` files, one per language, named by its code (`eng.txt`,
      `deu.txt`); one text per blank-line-separated paragraph (`unit="paragraph"`, lines of a
      paragraph joined by newlines) or one per non-blank line (`unit="line"`);
    - a `.jsonl` file, one JSON object per line, or a `.csv` file with a header row; each
      row's `language_column` (default `"language"`) and `text_column` (default `"text"`);
    - `"hf:<name or path>"`: a Hugging Face `datasets` dataset (`pip install 'moe-interp[datasets]'`),
      a `save_to_disk` directory or anything `datasets.load_dataset` reads, its `dataset_split`
      (default `"train"`), rows as in a `.jsonl` (row numbers count from 1).

    Texts are stripped of surrounding whitespace and kept in file order; a directory's languages
    are in file-name order, a file's in order of first appearance. Codes that are not ISO 639-3
    codes of `moe_interp.core.languages` are kept, with a warning naming close matches (your dialect
    labels are yours). Bad input raises `ValueError` naming the file and line: an empty file,
    a missing column, bytes that are not UTF-8, a language with one text when a split is asked.

    ```python
    >>> import os, tempfile
    >>> import moe_interp as mi
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "eng.txt"), "w", encoding="utf-8") as f:
    ...     _ = f.write("All human beings are born free.\\n\\nEveryone has the right to life.\\n")
    >>> with open(os.path.join(folder, "deu.txt"), "w", encoding="utf-8") as f:
    ...     _ = f.write("Alle Menschen sind frei geboren.\\n\\nJeder hat das Recht auf Leben.\\n")
    >>> mi.datasets.load_corpus(folder)
    {'deu': ['Alle Menschen sind frei geboren.', 'Jeder hat das Recht auf Leben.'], 'eng': ['All human beings are born free.', 'Everyone has the right to life.']}
    >>> mi.datasets.load_corpus(folder, "heldout")
    {'deu': ['Jeder hat das Recht auf Leben.'], 'eng': ['Everyone has the right to life.']}
    >>> table = os.path.join(folder, "texts.csv")
    >>> with open(table, "w", encoding="utf-8") as f:
    ...     _ = f.write("lang,body\\neng,Hello there.\\nfin,Hei vaan.\\n")
    >>> mi.datasets.load_corpus(table, language_column="lang", text_column="body")
    {'eng': ['Hello there.'], 'fin': ['Hei vaan.']}
    >>> mi.datasets.load_corpus(table)
    Traceback (most recent call last):
    ValueError: .../texts.csv:1: no column 'language' in the header (columns: 'lang', 'body'); name the right one with language_column=

    ```
    """
    _check_split(split, fraction)
    if unit not in ("paragraph", "line"):
        raise ValueError(f"unit={unit!r}: pass 'paragraph' (texts separated by blank lines) or 'line'")
    items = _Items()
    if isinstance(path, str) and path.startswith("hf:"):
        path = _read_hf(path[3:], items, language_column, text_column, dataset_split)
    else:
        path = _read_file(Path(path).expanduser(), items, unit, language_column, text_column)
    _check_codes(list(items.by_language), path)
    if split != "all":
        for language, texts in items.by_language.items():
            if len(texts) < 2:
                raise ValueError(f"{texts[0][1]}: language {language!r} has only this text; a train/held-out split "
                                 "needs at least two per language")
    return {language: [text for text, _ in _split_items(texts, lambda item: item[0], split, fraction)]
            for language, texts in items.by_language.items()}
