"""The languages table: every benchmark language resolves, codes of every kind, clear errors."""

import pytest

from moe_interp import languages
from moe_interp.languages import BELEBELE, MGSM, info

SCRIPTS = {"Latn", "Cyrl", "Arab", "Deva", "Beng", "Hans", "Hant", "Jpan", "Hang", "Thai", "Laoo", "Khmr", "Mymr",
           "Ethi", "Grek", "Hebr", "Armn", "Geor", "Gujr", "Guru", "Knda", "Mlym", "Orya", "Taml", "Telu", "Sinh",
           "Tibt", "Thaa", "Olck", "Cans", "Cher", "Tfng", "Syrc"}


def test_belebele_has_122_distinct_variants_all_in_the_table():
    assert len(BELEBELE) == len(set(BELEBELE)) == 122
    for code in BELEBELE:
        language = info(code)
        assert language.flores == code


@pytest.mark.parametrize("code", MGSM)
def test_every_mgsm_language_resolves(code):
    assert info(code).bcp47 == code


def test_table_is_broad_and_well_formed():
    rows = languages.all_languages()
    assert len(rows) >= 200
    assert len({r.iso639_3 for r in rows}) == len(rows)
    assert len({r.bcp47 for r in rows}) == len(rows)
    assert {r.resource for r in rows} == {"high", "mid", "low"}
    assert {r.script for r in rows} <= SCRIPTS
    for r in rows:
        assert len(r.iso639_3) == 3 and r.iso639_3.islower() and r.name and r.family and r.branch


@pytest.mark.parametrize("code", ["deu", "de", "deu_Latn", "DE", "de-DE", "German", "ger"])
def test_german_by_any_code(code):
    assert info(code).iso639_3 == "deu"


@pytest.mark.parametrize("code, script", [("zh-Hans", "Hans"), ("zh-Hant", "Hant"), ("zho_Hant", "Hant"),
                                          ("zh", "Hans"), ("sr-Latn", "Latn"), ("ben_Latn", "Latn")])
def test_script_in_the_code_overrides_the_default(code, script):
    assert info(code).script == script


@pytest.mark.parametrize("code, iso", [("sw", "swh"), ("swa", "swh"), ("ar", "arb"), ("fa", "pes"), ("ms", "zsm"),
                                       ("zh", "zho"), ("cmn", "zho"), ("no", "nob"), ("fil", "tgl")])
def test_macrolanguage_and_legacy_codes(code, iso):
    assert info(code).iso639_3 == iso


@pytest.mark.parametrize("code, family, branch, script", [
    ("en", "Indo-European", "Germanic", "Latn"), ("fr", "Indo-European", "Romance", "Latn"),
    ("ru", "Indo-European", "Slavic", "Cyrl"), ("bn", "Indo-European", "Indo-Aryan", "Beng"),
    ("fa", "Indo-European", "Iranian", "Arab"), ("hi", "Indo-European", "Indo-Aryan", "Deva"),
    ("ja", "Japonic", "Japanese", "Jpan"), ("ko", "Koreanic", "Korean", "Hang"),
    ("zh", "Sino-Tibetan", "Sinitic", "Hans"), ("my", "Sino-Tibetan", "Lolo-Burmese", "Mymr"),
    ("th", "Kra-Dai", "Tai", "Thai"), ("vi", "Austroasiatic", "Vietic", "Latn"),
    ("te", "Dravidian", "South-Central Dravidian", "Telu"), ("ta", "Dravidian", "South Dravidian", "Taml"),
    ("sw", "Niger-Congo", "Bantu", "Latn"), ("yo", "Niger-Congo", "Volta-Niger", "Latn"),
    ("am", "Afro-Asiatic", "Semitic", "Ethi"), ("ha", "Afro-Asiatic", "Chadic", "Latn"),
    ("fi", "Uralic", "Finnic", "Latn"), ("hu", "Uralic", "Ugric", "Latn"), ("tr", "Turkic", "Oghuz", "Latn"),
    ("kk", "Turkic", "Kipchak", "Cyrl"), ("eu", "Basque", "Isolate", "Latn"), ("ka", "Kartvelian", "Karto-Zan", "Geor"),
    ("id", "Austronesian", "Malayic", "Latn"), ("mi", "Austronesian", "Polynesian", "Latn"),
    ("qu", "Quechuan", "Quechua II", "Latn"), ("ht", "Creole", "French-based", "Latn"),
])
def test_family_branch_and_script(code, family, branch, script):
    language = info(code)
    assert (language.family, language.branch, language.script) == (family, branch, script)


def test_unknown_code_lists_close_matches():
    with pytest.raises(KeyError, match="close matches: .*'deu'"):
        info("deuu")
    with pytest.raises(KeyError, match="unknown language code 'qqq'"):
        info("qqq")


def test_empty_code_is_refused():
    with pytest.raises(KeyError):
        info("")
