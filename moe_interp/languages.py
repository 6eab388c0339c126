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

import dataclasses
import difflib
import functools
from importlib import resources

__all__ = ["BELEBELE", "MGSM", "Language", "all_languages", "info"]


@dataclasses.dataclass(frozen=True)
class Language:
    """One language (and script) from the table.

    ```python
    >>> info("ben_Latn")
    Language(iso639_3='ben', bcp47='bn-Latn', name='Bengali', family='Indo-European', branch='Indo-Aryan', script='Latn', resource='mid')
    >>> info("ben_Latn").flores
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


# MGSM's 11 languages (BCP-47, as its files name them).
MGSM = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")

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
    >>> info("sw").iso639_3, info("swh_Latn").bcp47, info("Swahili").branch
    ('swh', 'sw', 'Bantu')
    >>> info("xx")
    Traceback (most recent call last):
    KeyError: "unknown language code 'xx'; close matches: [...]"
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
    >>> len(all_languages()) > 200, all_languages()[0].name
    (True, 'English')
    ```
    """
    return _table()[0]
