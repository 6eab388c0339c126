"""Languages: codes, family, branch, script and resource level, from a table shipped with the package.

`info` accepts ISO 639-3 (`"deu"`), BCP-47 (`"de"`, `"zh-Hans"`, `"sr-Latn"`, `"pt-BR"`),
FLORES+/Belebele codes (`"deu_Latn"`, `"ben_Latn"`), a few legacy or macrolanguage codes
(`"ger"`, `"swa"`, `"ara"`) and English names (`"German"`). A script in the code overrides
the row's default script. The table (`moe_interp/data/languages.tsv`) covers MGSM, Belebele's
122 variants and a broad UDHR set; families are top-level genealogical units, isolates are
their own family, creoles are family `"Creole"`; resource levels are coarse and approximate.

```python
>>> import moe_interp as mi
>>> mi.languages.info("deu_Latn").name, mi.languages.info("de").family
('German', 'Indo-European')
>>> mi.languages.info("zh-Hant").script
'Hant'

```
"""

import collections
import dataclasses
import difflib
import functools
import unicodedata
from collections.abc import Iterable
from importlib import resources

__all__ = [
    "BELEBELE",
    "SCRIPT_NAMES",
    "Language",
    "all_languages",
    "detect_script",
    "info",
    "script",
]


@dataclasses.dataclass(frozen=True)
class Language:
    """One language (and script) from the table.

    ```python
    >>> import moe_interp as mi
    >>> mi.languages.info("ben_Latn")
    Language(iso639_3='ben', bcp47='bn-Latn', name='Bengali', family='Indo-European', branch='Indo-Aryan', script='Latn', resource='mid')
    >>> mi.languages.info("ben_Latn").flores
    'ben_Latn'

    ```
    """

    iso639_3: str
    bcp47: str
    name: str
    family: str
    branch: str
    script: str
    resource: str

    @property
    def flores(self) -> str:
        """The FLORES+ / Belebele code, `{iso639_3}_{script}`."""
        return f"{self.iso639_3}_{self.script}"


# Belebele's 122 language variants (FLORES+ codes).
BELEBELE = (
    "acm_Arab", "afr_Latn", "als_Latn", "amh_Ethi", "apc_Arab", "arb_Arab", "arb_Latn", "ars_Arab", "ary_Arab",
    "arz_Arab", "asm_Beng", "azj_Latn", "bam_Latn", "ben_Beng", "ben_Latn", "bod_Tibt", "bul_Cyrl", "cat_Latn",
    "ceb_Latn", "ces_Latn", "ckb_Arab", "dan_Latn", "deu_Latn", "ell_Grek", "eng_Latn", "est_Latn", "eus_Latn",
    "fin_Latn", "fra_Latn", "fuv_Latn", "gaz_Latn", "grn_Latn", "guj_Gujr", "hat_Latn", "hau_Latn", "heb_Hebr",
    "hin_Deva", "hin_Latn", "hrv_Latn", "hun_Latn", "hye_Armn", "ibo_Latn", "ilo_Latn", "ind_Latn", "isl_Latn",
    "ita_Latn", "jav_Latn", "jpn_Jpan", "kac_Latn", "kan_Knda", "kat_Geor", "kaz_Cyrl", "kea_Latn", "khk_Cyrl",
    "khm_Khmr", "kin_Latn", "kir_Cyrl", "kor_Hang", "lao_Laoo", "lin_Latn", "lit_Latn", "lug_Latn", "luo_Latn",
    "lvs_Latn", "mal_Mlym", "mar_Deva", "mkd_Cyrl", "mlt_Latn", "mri_Latn", "mya_Mymr", "nld_Latn", "nob_Latn",
    "npi_Deva", "npi_Latn", "nso_Latn", "nya_Latn", "ory_Orya", "pan_Guru", "pbt_Arab", "pes_Arab", "plt_Latn",
    "pol_Latn", "por_Latn", "ron_Latn", "rus_Cyrl", "shn_Mymr", "sin_Latn", "sin_Sinh", "slk_Latn", "slv_Latn",
    "sna_Latn", "snd_Arab", "som_Latn", "sot_Latn", "spa_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn", "swe_Latn",
    "swh_Latn", "tam_Taml", "tel_Telu", "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi", "tsn_Latn", "tso_Latn",
    "tur_Latn", "ukr_Cyrl", "urd_Arab", "urd_Latn", "uzn_Latn", "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn",
    "yor_Latn", "zho_Hans", "zho_Hant", "zsm_Latn", "zul_Latn",
)


@functools.cache
def _table() -> tuple[tuple[Language, ...], dict[str, Language], dict[str, str]]:
    rows, index, names = [], {}, {}
    text = resources.files("moe_interp").joinpath("data/languages.tsv").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        iso, bcp, name, family, branch, script, resource, *rest = line.split("\t")
        language = Language(iso, bcp, name, family, branch, script, resource)
        rows.append(language)
        aliases = [a for a in (rest[0].split(",") if rest else []) if a]
        for code in (iso, bcp, *aliases):
            index.setdefault(code.lower(), language)
        names[name.lower()] = iso
    return tuple(rows), index, names


def _with_script(language: Language, script: str) -> Language:
    script = script[:1].upper() + script[1:].lower()
    if script == language.script:
        return language
    return dataclasses.replace(language, script=script, bcp47=f"{language.bcp47.split('-')[0]}-{script}")


def info(code: str) -> Language:
    """The `Language` for an ISO 639-3, BCP-47 or FLORES+ code (or an English name).

    Unknown codes raise `KeyError` listing close matches.

    ```python
    >>> import moe_interp as mi
    >>> mi.languages.info("sw").iso639_3, mi.languages.info("swh_Latn").bcp47, mi.languages.info("Swahili").branch
    ('swh', 'sw', 'Bantu')
    >>> mi.languages.info("xx")
    Traceback (most recent call last):
    KeyError: "unknown language code 'xx'; close matches: ..."

    ```
    """
    if not isinstance(code, str) or not code.strip():
        raise KeyError(f"language codes are non-empty strings, got {code!r}")
    rows, index, names = _table()
    key = code.strip().replace("-", "_").lower()
    if key in index:
        return index[key]
    if key in names:
        return index[names[key]]
    parts = key.split("_")
    if parts[0] in index:
        language = index[parts[0]]
        rest = parts[1:]
        scripts = [p for p in rest if len(p) == 4 and p.isalpha()]
        regions = [p for p in rest if p not in scripts and (len(p) == 2 and p.isalpha() or len(p) == 3 and p.isdigit())]
        if len(scripts) <= 1 and len(scripts) + len(regions) == len(rest):
            return _with_script(language, scripts[0]) if scripts else language
    known = sorted(index) + [l.flores.lower() for l in rows] + sorted(names)
    close = difflib.get_close_matches(code.lower(), known, n=5, cutoff=0.5)
    raise KeyError(f"unknown language code {code!r}; close matches: {close} "
                   "(accepted: ISO 639-3 'deu', BCP-47 'de' / 'zh-Hans', FLORES 'deu_Latn', or a name)")


def all_languages() -> tuple[Language, ...]:
    """Every row of the table, in table order.

    ```python
    >>> import moe_interp as mi
    >>> len(mi.languages.all_languages()) > 200, mi.languages.all_languages()[0].name
    (True, 'English')

    ```
    """
    return _table()[0]


# First word(s) of a letter's Unicode name -> ISO 15924 script code.
_UNICODE_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "ARABIC": "Arab", "GREEK": "Grek", "HEBREW": "Hebr",
    "ARMENIAN": "Armn", "GEORGIAN": "Geor", "DEVANAGARI": "Deva", "BENGALI": "Beng",
    "GUJARATI": "Gujr", "GURMUKHI": "Guru", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda",
    "MALAYALAM": "Mlym", "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "KHMER": "Khmr",
    "MYANMAR": "Mymr", "TIBETAN": "Tibt", "CJK": "Hani", "IDEOGRAPHIC": "Hani",
    "HIRAGANA": "Hira", "KATAKANA": "Kana", "HANGUL": "Hang", "CHEROKEE": "Cher", "VAI": "Vaii",
    "TIFINAGH": "Tfng", "ADLAM": "Adlm", "JAVANESE": "Java", "GRANTHA": "Gran", "CHAKMA": "Cakm",
    "YI": "Yiii", "TAI VIET": "Tavt", "ETHIOPIC": "Ethi", "THAANA": "Thaa", "ORIYA": "Orya",
    "MONGOLIAN": "Mong", "CANADIAN": "Cans",
}
SCRIPT_NAMES = {
    "Latn": "Latin", "Cyrl": "Cyrillic", "Arab": "Arabic", "Grek": "Greek", "Hebr": "Hebrew",
    "Armn": "Armenian", "Geor": "Georgian", "Deva": "Devanagari", "Beng": "Bengali",
    "Gujr": "Gujarati", "Guru": "Gurmukhi", "Taml": "Tamil", "Telu": "Telugu", "Knda": "Kannada",
    "Mlym": "Malayalam", "Sinh": "Sinhala", "Thai": "Thai", "Laoo": "Lao", "Khmr": "Khmer",
    "Mymr": "Myanmar", "Tibt": "Tibetan", "Hani": "Han", "Hans": "Han (simplified)",
    "Hant": "Han (traditional)", "Jpan": "Japanese (Han + kana)",
    "Kore": "Korean (Hangul + Han)", "Hang": "Hangul", "Cher": "Cherokee", "Vaii": "Vai",
    "Tfng": "Tifinagh", "Adlm": "Adlam", "Java": "Javanese", "Gran": "Grantha", "Cakm": "Chakma",
    "Yiii": "Yi", "Tavt": "Tai Viet", "Ethi": "Ethiopic", "Thaa": "Thaana", "Orya": "Oriya",
    "Mong": "Mongolian", "Cans": "Canadian Syllabics",
}
"""ISO 15924 code -> English name, for every script `detect_script` returns."""

# Frequent characters that differ between simplified and traditional Chinese (same order).
_SIMPLIFIED = "国这们会为说权发对时实经过来动应关与认义务进种护"
_TRADITIONAL = "國這們會為說權發對時實經過來動應關與認義務進種護"


def detect_script(texts: str | Iterable[str]) -> str | None:
    """ISO 15924 code of the script most letters of `texts` are written in, from their
    Unicode names: `Jpan` / `Kore` for the mixed Japanese and Korean systems, `Hans` /
    `Hant` for Chinese; `None` when there are no letters of a known script.

    ```python
    >>> import moe_interp as mi
    >>> mi.languages.detect_script("Всеки човек има право"), mi.languages.detect_script(["人人生而自由", "在尊严和权利上一律平等"])
    ('Cyrl', 'Hans')
    >>> mi.languages.detect_script("すべての人間は、生まれながらにして自由"), mi.languages.detect_script("123 !?") is None
    ('Jpan', True)

    ```
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    counts: collections.Counter = collections.Counter()
    for text in texts:
        for ch in text:
            if not unicodedata.category(ch).startswith("L"):
                continue
            words = unicodedata.name(ch, "").split()
            if not words or words[0] == "MODIFIER":
                continue
            key = " ".join(words[:2]) if " ".join(words[:2]) in _UNICODE_SCRIPTS else words[0]
            if key in _UNICODE_SCRIPTS:
                counts[_UNICODE_SCRIPTS[key]] += 1
    total = sum(counts.values())
    if not total:
        return None
    if counts["Hani"] > 0.5 * total:
        text = "".join(texts)
        simplified = sum(text.count(c) for c in _SIMPLIFIED)
        traditional = sum(text.count(c) for c in _TRADITIONAL)
        return "Hans" if simplified >= traditional else "Hant"
    if counts["Hira"] + counts["Kana"] > 0.1 * total:
        return "Jpan"
    if counts["Hang"] > 0.5 * total:
        return "Kore" if counts["Hani"] > 0.01 * total else "Hang"
    return counts.most_common(1)[0][0]


def script(code_or_text: str | Iterable[str]) -> str:
    """The one script (ISO 15924) the package assigns: detected from the text itself
    (`detect_script`) when given text, the table's script when given a language code.

    A string that `info` knows as a code or name is a code (`"deu"`, `"sr-Latn"`, `"German"`);
    anything else (or a list of strings) is text; text without letters of a known script is a
    `ValueError`. The table agrees with detection on every language of the bundled UDHR
    corpus (`tests/test_languages.py` checks it), so code and text give the same answer there.

    ```python
    >>> import moe_interp as mi
    >>> mi.languages.script("ckb"), mi.languages.script("sr-Latn"), mi.languages.script("Hello, world")
    ('Latn', 'Latn', 'Latn')
    >>> mi.languages.script(mi.datasets.udhr("kaa")["kaa"])     # Karakalpak's UDHR text: Cyrillic
    'Cyrl'

    ```
    """
    if isinstance(code_or_text, str):
        try:
            return info(code_or_text).script
        except KeyError:
            pass
    detected = detect_script(code_or_text)
    if detected is None:
        raise ValueError(f"{code_or_text!r} is neither a known language code nor text with letters of a known script; "
                         "pass a code (e.g. 'deu') or some text")
    return detected
