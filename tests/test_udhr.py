"""The bundled UDHR corpus and the local-copy paths of the benchmark loaders (no network)."""

import json
import re
from pathlib import Path

import pytest

from moe_interp import datasets
from moe_interp.datasets import _udhr

SAMPLE = ["eng", "deu", "jpn", "arb", "rus", "hin", "swh", "tha"]
SEGMENT_ID = re.compile(r"^(preamble|article\.([1-9]|[12][0-9]|30)\.[1-9])$")


def test_segments_have_the_same_ids_in_the_same_order_in_every_language():
    segments = datasets.udhr_segments(SAMPLE, split="all")
    ids = list(segments["eng"])
    assert all(list(segments[lang]) == ids for lang in SAMPLE)
    assert all(SEGMENT_ID.match(i) for i in ids)
    assert ids[0] == "preamble" and ids[1] == "article.1.1" and ids[-1] == "article.30.1"


def test_every_language_has_every_segment():
    segments = datasets.udhr_segments(None, split="all")
    ids = list(segments["eng"])
    assert all(list(s) == ids for s in segments.values())
    assert all(text.strip() for s in segments.values() for text in s.values())


def test_udhr_texts_are_the_segment_texts_in_order():
    texts = datasets.udhr(["eng", "fra"], split="heldout")
    segments = datasets.udhr_segments(["eng", "fra"], split="heldout")
    assert texts == {lang: list(s.values()) for lang, s in segments.items()}
    assert texts["eng"][0].startswith("Everyone has the right to a standard of living")


def test_paragraphs_are_aligned_across_languages():
    segments = datasets.udhr_segments(["eng", "deu", "fra"], split="train")
    assert segments["eng"]["article.1.1"].startswith("All human beings are born free")
    assert segments["deu"]["article.1.1"].startswith("Alle Menschen sind frei")
    assert segments["fra"]["article.1.1"].startswith("Tous les êtres humains naissent libres")
    assert segments["deu"]["article.16.3"].startswith("Die Familie ist")


def test_split_sizes_and_contents():
    ids = {s: list(datasets.udhr_segments("eng", s)["eng"]) for s in ("train", "heldout", "all")}
    assert {s: len(v) for s, v in ids.items()} == {"train": 39, "heldout": 12, "all": 51}
    assert ids["train"] + ids["heldout"] == ids["all"]
    assert ids["train"][0] == "preamble"
    assert {int(i.split(".")[1]) for i in ids["train"][1:]} == set(range(1, 25))
    assert {int(i.split(".")[1]) for i in ids["heldout"]} == set(range(25, 31))


def test_default_is_heldout_split_of_all_languages():
    corpus = datasets.udhr()
    assert sorted(corpus) == sorted(datasets.udhr_languages())
    assert {len(texts) for texts in corpus.values()} == {12}


def test_corpus_spans_100_languages_15_families_10_scripts():
    meta = datasets.udhr_languages()
    assert len(meta) >= 100
    assert len({m["family"] for m in meta.values()}) >= 15
    assert len({m["script"] for m in meta.values()}) >= 10


def test_metadata_of_a_language():
    meta = datasets.udhr_languages()
    assert all(code == m["iso639_3"] and len(code) == 3 for code, m in meta.items())
    assert meta["deu"]["family"] == "Indo-European" and meta["deu"]["udhr_code"] == "deu_1996"
    assert (meta["jpn"]["script"], meta["kor"]["script"], meta["cmn"]["script"]) == ("Jpan", "Hang", "Hans")
    assert (meta["arb"]["direction"], meta["heb"]["script"]) == ("rtl", "Hebr")


def test_unknown_language_raises_key_error_with_close_matches():
    with pytest.raises(KeyError, match=r"'german'.*deu \(German"):
        datasets.udhr(["eng", "german"])
    with pytest.raises(KeyError, match=r"'en'.*eng \(English\)"):
        datasets.udhr("en")


def test_unknown_split_raises_value_error():
    with pytest.raises(ValueError, match="heldout"):
        datasets.udhr("eng", split="test")


def test_results_are_copies():
    datasets.udhr("eng")["eng"].clear()
    datasets.udhr_languages()["eng"]["family"] = "changed"
    assert len(datasets.udhr("eng")["eng"]) == 12
    assert datasets.udhr_languages()["eng"]["family"] == "Indo-European"


def test_statistics():
    stats = datasets.udhr_statistics(["eng", "deu", "jpn"])
    assert stats["languages"] == 3 and stats["segments"]["heldout"] == 12
    assert stats["families"] == {"Indo-European": 2, "Japonic": 1}
    eng = sum(len(t.encode()) for t in datasets.udhr("eng", "all")["eng"])
    assert stats["bytes"]["all"]["min"] <= eng <= stats["bytes"]["all"]["max"]


def test_docs_corpus_page_is_generated_from_the_current_corpus():
    page = Path(__file__).resolve().parents[1] / "docs" / "corpus.md"
    assert page.read_text(encoding="utf-8") == _udhr._markdown()


# Benchmark loaders, local copies only (the hub is never reached in tests).

def test_mgsm_reads_url_nlp_tsv(tmp_path):
    (tmp_path / "mgsm_de.tsv").write_text("Wie viele?\t18\nUnd jetzt?\t1,000\n", encoding="utf-8")
    items = datasets.mgsm_items("de", path=tmp_path)
    assert [(i.question, i.answer) for i in items["de"]] == [("Wie viele?", 18.0), ("Und jetzt?", 1000.0)]
    assert datasets.mgsm(["de"], path=tmp_path) == {"de": ["Wie viele?", "Und jetzt?"]}


def test_mgsm_unknown_language():
    with pytest.raises(KeyError, match="MGSM has no language 'xx'"):
        datasets.mgsm("xx", path="nowhere")


def test_belebele_reads_jsonl(tmp_path):
    row = {"flores_passage": "P.", "question": "Q?", "mc_answer1": "a", "mc_answer2": "b",
           "mc_answer3": "c", "mc_answer4": "d", "correct_answer_num": "3"}
    (tmp_path / "eng_Latn.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    (item,) = datasets.belebele_items("eng", path=tmp_path)["eng"]
    assert (item.options, item.answer) == (("a", "b", "c", "d"), 2)
    assert datasets.belebele("eng_Latn", path=tmp_path) == {"eng_Latn": ["P.\nQ?\nA. a\nB. b\nC. c\nD. d"]}


def test_flores_reads_release_layout(tmp_path):
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "cmn_Hans.devtest").write_text("一。\n二。\n", encoding="utf-8")
    assert datasets.flores("cmn", path=tmp_path) == {"cmn": ["一。", "二。"]}
