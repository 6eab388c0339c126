"""A researcher's own corpus (issue 26, section 1): `mi.datasets.load_corpus` reads a directory of
`<language>.txt` files, a JSON Lines or a CSV file into `{language: [texts]}`; `split_corpus`
splits it by a hash of each text; `moe-interp --corpus <path>` takes the same files. Oracles:
the split rule recomputed here with hashlib, and `mi.profile` on the same train texts."""

import csv
import hashlib
import json

import pytest
import torch

import moe_interp as mi
from moe_interp.cli import main

TEXTS = {
    "deu": ["Alle Menschen sind frei geboren.", "Jeder hat das Recht auf Leben.", "Niemand darf gefoltert werden.",
            "Alle sind vor dem Gesetz gleich.", "Jeder hat das Recht auf Bildung.", "Die Familie wird geschützt.",
            "Jeder darf seine Meinung sagen.", "Niemand darf willkürlich verhaftet werden."],
    "eng": ["All human beings are born free.", "Everyone has the right to life.", "No one shall be tortured.",
            "All are equal before the law.", "Everyone has the right to education.", "The family is protected.",
            "Everyone may say what they think, freely.", "No one shall be arbitrarily arrested."],
    "fin": ["Kaikki ihmiset syntyvät vapaina.", "Jokaisella on oikeus elämään.", "Ketään ei saa kiduttaa.",
            "Kaikki ovat lain edessä tasavertaisia.", "Jokaisella on oikeus saada opetusta.", "Perhettä suojellaan.",
            "Jokainen saa sanoa mielipiteensä.", "Ketään ei saa mielivaltaisesti pidättää."],
}


def _heldout_by_hand(text: str, fraction: float = 0.25) -> bool:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64 < fraction


def _split_by_hand(texts: list[str], split: str, fraction: float = 0.25) -> list[str]:
    """The documented rule, written again: hash below `fraction` is held out; at least one text each side."""
    held = [_heldout_by_hand(t, fraction) for t in texts]
    hashes = [hashlib.sha256(t.encode()).digest()[:8] for t in texts]
    if not any(held):
        held[hashes.index(min(hashes))] = True
    elif all(held):
        held[hashes.index(max(hashes))] = False
    return [t for t, h in zip(texts, held) if h == (split == "heldout")]


def _write_all(tmp_path):
    """The same texts as a directory, a JSON Lines and a CSV file (custom column names in the CSV)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for lang, texts in TEXTS.items():
        (folder / f"{lang}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"language": l, "text": t}, ensure_ascii=False) + "\n"
                             for l, texts in TEXTS.items() for t in texts), encoding="utf-8")
    table = tmp_path / "texts.csv"
    with table.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lang", "body"])
        writer.writerows([l, t] for l, texts in TEXTS.items() for t in texts)
    return folder, jsonl, table


def test_the_split_is_the_stated_hash_rule_deterministic_and_disjoint():
    corpus = {"eng": [f"Sentence number {i}." for i in range(400)], "x-dialect": [f"Rivi {i}." for i in range(40)]}
    train, heldout = mi.datasets.split_corpus(corpus, "train"), mi.datasets.split_corpus(corpus, "heldout")
    assert mi.datasets.HELDOUT_FRACTION == 0.25
    for lang, texts in corpus.items():
        assert heldout[lang] == [t for t in texts if _heldout_by_hand(t)]      # the rule, by hand
        assert train[lang] == [t for t in texts if not _heldout_by_hand(t)]
        assert not set(train[lang]) & set(heldout[lang]) and len(train[lang]) + len(heldout[lang]) == len(texts)
    assert 0.20 < len(heldout["eng"]) / 400 < 0.30                              # the fraction as stated
    assert mi.datasets.split_corpus(corpus, "heldout") == heldout                # same on every call
    assert mi.datasets.split_corpus(corpus, "all") == corpus
    half = mi.datasets.split_corpus(corpus, "heldout", fraction=0.5)["eng"]
    assert half == [t for t in corpus["eng"] if _heldout_by_hand(t, 0.5)]


def test_every_language_keeps_a_text_on_each_side():
    both_train = next([a, b] for a, b in zip(*[iter(f"t{i}" for i in range(200))] * 2)
                      if not _heldout_by_hand(a) and not _heldout_by_hand(b))
    both_held = next([a, b] for a, b in zip(*[iter(f"t{i}" for i in range(2000))] * 2)
                     if _heldout_by_hand(a) and _heldout_by_hand(b))
    for texts in (both_train, both_held):
        train = mi.datasets.split_corpus({"eng": texts}, "train")["eng"]
        heldout = mi.datasets.split_corpus({"eng": texts}, "heldout")["eng"]
        assert len(train) == len(heldout) == 1
        assert (train, heldout) == (_split_by_hand(texts, "train"), _split_by_hand(texts, "heldout"))


def test_a_directory_a_jsonl_and_a_csv_read_the_same(tmp_path):
    folder, jsonl, table = _write_all(tmp_path)
    assert mi.datasets.load_corpus(folder) == TEXTS
    assert mi.datasets.load_corpus(jsonl) == TEXTS
    assert mi.datasets.load_corpus(table, language_column="lang", text_column="body") == TEXTS
    for split in ("train", "heldout"):
        expected = {l: _split_by_hand(t, split) for l, t in TEXTS.items()}
        assert mi.datasets.load_corpus(jsonl, split) == expected
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "eng.txt").write_text("One.\nTwo\n\n  Three.  \n", encoding="utf-8")
    assert mi.datasets.load_corpus(lines) == {"eng": ["One.\nTwo", "Three."]}
    assert mi.datasets.load_corpus(lines, unit="line") == {"eng": ["One.", "Two", "Three."]}


def test_unknown_codes_are_kept_with_a_warning_naming_close_matches(tmp_path):
    (tmp_path / "en.txt").write_text("One.\n\nTwo.\n", encoding="utf-8")
    (tmp_path / "gsw-basel.txt").write_text("Eis.\n\nZwei.\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        corpus = mi.datasets.load_corpus(tmp_path)
    assert list(corpus) == ["en", "gsw-basel"]
    messages = sorted(str(w.message) for w in caught)
    assert "language 'en' is not an ISO 639-3 code" in messages[0] and "did you mean eng?" in messages[0]
    assert "language 'gsw-basel'" in messages[1] and "kept as given" in messages[1]


def _bad(tmp_path, name, data):
    path = tmp_path / name
    if name.endswith("/"):
        path.mkdir()
        for file, content in data.items():
            (path / file).write_bytes(content)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, message", [
    ("d/", {"eng.txt": b"One.\n\nTwo.\n", "deu.txt": b"  \n"}, r"deu.txt: the file is empty"),
    ("e.jsonl", b"", r"e.jsonl: the file is empty"),
    ("d/", {"deu.txt": b"Eins.\n\nZwei\n\xff drei\n"}, r"deu.txt:4: byte 0xff at column 1 is not UTF-8"),
    ("m.jsonl", b'{"language": "eng", "text": "One."}\n{"language": "eng", "txt": "Two."}\n',
     r"m.jsonl:2: no column 'text' \(columns: 'language', 'txt'\); name the right one with text_column="),
    ("m.csv", b"language,body\neng,One.\n", r"m.csv:1: no column 'text' in the header"),
    ("r.csv", b"language,text\neng,One.\neng,Two,three\n", r"r.csv:3: 3 fields, the header has 2"),
    ("j.jsonl", b'{"language": "eng", "text": "One."}\nnot json\n', r"j.jsonl:2: not JSON"),
    ("o.jsonl", b'{"language": "eng", "text": "One."}\n{"language": "eng", "text": "Two."}\n'
                b'{"language": "fin", "text": "Yksi."}\n', r"o.jsonl:3: language 'fin' has only this text"),
])
def test_bad_files_are_refused_naming_the_file_and_line(tmp_path, capsys, name, data, message):
    path = _bad(tmp_path, name, data)
    with pytest.raises(ValueError, match=message):
        mi.datasets.load_corpus(path, "train")
    with pytest.raises(SystemExit) as exit_:                         # the CLI: one line, exit 2
        main(["profile", "--model", "tiny:qwen3_moe", "--corpus", str(path), "--out", str(tmp_path / "p")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"moe-interp: error: --corpus {path}: ")
    assert not (tmp_path / "p").exists()


def test_the_cli_names_what_a_corpus_can_be(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--corpus", str(tmp_path / "nothing.txt"), "--out", str(tmp_path / "p")])
    assert "not a bundled corpus (udhr) and no such file or directory" in capsys.readouterr().err
    (tmp_path / "eng.txt").write_text("One.\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["profile", "--corpus", str(tmp_path / "eng.txt"), "--out", str(tmp_path / "p")])
    assert "put one file per language in a directory" in capsys.readouterr().err


def test_cli_profile_on_each_file_counts_as_the_python_api_and_ablate_steer_run_held_out(tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    folder, jsonl, table = _write_all(tmp_path)
    train = {l: _split_by_hand(t, "train") for l, t in TEXTS.items()}
    model = mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=8192)          # the CLI's tiny:qwen3_moe
    expected = mi.profile(model, train)
    runs = {"dir": [str(folder)], "jsonl": [str(jsonl)],
            "csv": [str(table), "--text-column", "body", "--language-column", "lang"]}
    for label, corpus in runs.items():
        assert main(["profile", "--model", "tiny:qwen3_moe", "--corpus", *corpus, "--split", "train",
                     "--out", f"{label}.routing"]) == 0
        stats = mi.RoutingStats.load(f"{label}.routing")
        assert stats.languages == expected.languages == ("deu", "eng", "fin"), label
        assert torch.equal(stats.count, expected.count) and torch.equal(stats.gate_mass, expected.gate_mass), label
        assert torch.equal(stats.tokens, expected.tokens) and stats.tokens.min() > 0, label
    capsys.readouterr()
    # the column flags before --corpus work too
    assert main(["profile", "--model", "tiny:qwen3_moe", "--language-column", "lang", "--text-column", "body",
                 "--corpus", str(table), "--languages", "eng,fin", "--out", "csv2.routing"]) == 0
    assert mi.RoutingStats.load("csv2.routing").languages == ("eng", "fin")
    capsys.readouterr()

    assert main(["ablate", "--model", "tiny:qwen3_moe", "--stats", "dir.routing", "--corpus", str(jsonl),
                 "--eval-languages", "eng,deu,fin", "--target-languages", "eng,fin", "--k", "4",
                 "--resamples", "100"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Ablation of each language's exclusive experts (exclusive among the 3 profiled")
    assert [line.split(" (")[0] for line in lines[3:]] == ["eng"] * 3 + ["fin"] * 3
    assert main(["steer", "--model", "tiny:qwen3_moe", "--stats", "dir.routing", "--corpus", str(folder),
                 "--languages", "deu,fin", "--scales", "0,2", "--k", "4", "--resamples", "100"]) == 0
    assert "dose-response on the test split" in capsys.readouterr().out


def test_ablate_on_the_profiled_texts_of_a_user_corpus_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder, _, _ = _write_all(tmp_path)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--corpus", str(folder), "--languages", "eng,deu",
                 "--split", "heldout", "--out", "p.routing"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["ablate", "--model", "tiny:qwen3_moe", "--stats", "p.routing", "--corpus", str(folder),
              "--eval-languages", "eng,deu", "--target-languages", "deu", "--k", "4"])
    assert "profiled on the same eng, deu texts" in capsys.readouterr().err


def test_a_hugging_face_dataset_reads_as_its_rows_and_profiles_as_the_python_api(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)
    rows = [(l, t) for l, texts in TEXTS.items() for t in texts]
    table = datasets.Dataset.from_dict({"lang": [l for l, _ in rows], "body": [t for _, t in rows]})
    datasets.DatasetDict({"train": table, "test": table.select([0, 1, 8])}).save_to_disk(str(tmp_path / "dd"))
    source = f"hf:{tmp_path / 'dd'}"
    assert mi.datasets.load_corpus(source, language_column="lang", text_column="body") == TEXTS
    assert mi.datasets.load_corpus(source, "heldout", language_column="lang", text_column="body") == \
        {l: _split_by_hand(t, "heldout") for l, t in TEXTS.items()}
    with pytest.raises(ValueError, match=r"dd\[train\]: no column 'language' \(columns: 'lang', 'body'\)"):
        mi.datasets.load_corpus(source)
    with pytest.raises(ValueError, match=r"no split 'dev' \(splits: train, test\)"):
        mi.datasets.load_corpus(source, dataset_split="dev", language_column="lang", text_column="body")
    with pytest.raises(ValueError, match=r"dd\[test\]:3: language 'eng' has only this text"):
        mi.datasets.load_corpus(source, "train", dataset_split="test", language_column="lang", text_column="body")
    train = {l: _split_by_hand(t, "train") for l, t in TEXTS.items()}
    expected = mi.profile(mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=8192), train)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--corpus", source, "--language-column", "lang",
                 "--text-column", "body", "--dataset-split", "train", "--split", "train", "--out", "hf.routing"]) == 0
    stats = mi.RoutingStats.load("hf.routing")
    assert stats.languages == expected.languages and torch.equal(stats.count, expected.count)
    assert torch.equal(stats.tokens, expected.tokens)
    capsys.readouterr()
    hf = ["--corpus", source, "--language-column", "lang", "--text-column", "body"]
    assert main(["ablate", "--model", "tiny:qwen3_moe", "--stats", "hf.routing", *hf, "--eval-languages", "eng,deu,fin",
                 "--target-languages", "fin", "--k", "4", "--resamples", "100"]) == 0
    assert capsys.readouterr().out.startswith("Ablation of each language's exclusive experts")
    assert main(["steer", "--model", "tiny:qwen3_moe", "--stats", "hf.routing", *hf, "--languages", "deu,fin",
                 "--scales", "0,2", "--k", "4", "--resamples", "100"]) == 0
    assert "dose-response on the test split" in capsys.readouterr().out


def test_a_hugging_face_dataset_without_the_extra_names_the_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)                # as if `datasets` were not installed
    with pytest.raises(ImportError, match=r"pip install 'moe-interp\[datasets\]'"):
        mi.datasets.load_corpus(f"hf:{tmp_path}")
    with pytest.raises(SystemExit):
        main(["profile", "--model", "tiny:qwen3_moe", "--corpus", f"hf:{tmp_path}", "--out", str(tmp_path / "p")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"moe-interp: error: --corpus hf:{tmp_path}: ") and "moe-interp[datasets]" in line


def test_the_cli_notes_an_unknown_code_once_and_keeps_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "en.txt").write_text("One text.\n\nAnother text.\n\nA third.\n", encoding="utf-8")
    (tmp_path / "t" / "deu.txt").write_text("Ein Text.\n\nNoch einer.\n\nEin dritter.\n", encoding="utf-8")
    assert main(["profile", "--model", "tiny:qwen3_moe", "--corpus", str(tmp_path / "t"), "--out", "p.routing"]) == 0
    notes = [l for l in capsys.readouterr().err.splitlines() if "note:" in l]
    assert len(notes) == 1 and "language 'en' is not an ISO 639-3 code" in notes[0] and "did you mean eng?" in notes[0]
    assert mi.RoutingStats.load("p.routing").languages == ("deu", "en")


def test_the_demo_model_reads_a_user_corpus_in_the_pieces_the_demo_cuts(tmp_path):
    from moe_interp import cli
    from moe_interp.experiments.demo import demo_corpus

    (tmp_path / "fin.txt").write_text("\n\n".join(mi.datasets.udhr("fin", "all")["fin"]), encoding="utf-8")
    (tmp_path / "eng.txt").write_text("\n\n".join(mi.datasets.udhr("eng", "all")["eng"]), encoding="utf-8")
    mine = cli._corpus(str(tmp_path), ["fin", "eng"], "all", "demo")
    assert mine == demo_corpus(["fin", "eng"], split="all")          # the UDHR texts, cut the same way
    assert max(len(p.encode()) for texts in mine.values() for p in texts) <= 256


def test_corpus_file_options_on_the_bundled_corpus_are_refused_naming_them(capsys):
    """--text-column and friends were silently ignored with the bundled udhr (issue 26)."""
    from moe_interp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--model", "tiny:qwen3_moe", "--text-column", "body", "--unit", "line", "--out", "x"])
    assert exit_info.value.code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--text-column, --unit read your own corpus file (--corpus <path>)" in line
