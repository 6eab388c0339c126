"""The CLI's route for parallel pairs (issue 27, section 1): `--pairs-to LANG` on `profile`, `ablate`
and `steer` pairs each source language's udhr segment with LANG's segment of the same id, directions
"<source>-LANG", on an encoder-decoder model.

Oracle: the Python API (`mi.profile`, `mi.ablation_grid`, `mi.steering_eval`) on pairs built here
from each language's own segments, aligned by position in the document (not by the CLI's joint
lookup by segment id); the CLI must write the same counts per stack, bitwise, and print the same
results. The udhr is cut to a few short segments per split (the same cut for the CLI and the
oracle), so the file runs in seconds; the languages the CLI sees by default are eng, deu, fin.
"""

import functools

import pandas as pd
import pytest
import torch

import moe_interp as mi
from moe_interp.cli import main
from moe_interp.datasets import _udhr
from moe_interp.experiments import SteeringResult

SIZE, N = 60, 4  # characters of each segment, segments per split
LANGUAGES = ("eng", "deu", "fin")
_segments, _languages = _udhr.udhr_segments, _udhr.udhr_languages


def short_segments(languages=None, split="heldout"):
    return {l: {i: t[:SIZE] for i, t in list(s.items())[:N]} for l, s in _segments(languages, split).items()}


def three_languages():
    return {code: meta for code, meta in _languages().items() if code in LANGUAGES}


@pytest.fixture(scope="module", autouse=True)
def short_udhr():
    with pytest.MonkeyPatch.context() as patch:
        for where in (_udhr, mi.datasets):
            patch.setattr(where, "udhr_segments", short_segments)
            patch.setattr(where, "udhr_languages", three_languages)
        yield


def oracle_pairs(sources, to, split):
    """`{(s, to): [(s's i-th text, to's i-th text)]}`, each language read on its own."""
    texts = {l: [t[:SIZE] for t in _segments([l], split)[l].values()][:N] for l in (*sources, to)}
    return {(s, to): list(zip(texts[s], texts[to])) for s in sources}


@functools.lru_cache(maxsize=None)
def model(arch):
    return mi.zoo.tiny_model(arch, max_position_embeddings=8192)  # the CLI's tiny:<type>


def cli(capsys, *argv):
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr()


def refused(capsys, *argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("moe-interp: error: ")
    return lines[0]


@pytest.mark.parametrize("arch", ["switch_transformers", "nllb-moe"])
def test_profile_pairs_to_writes_each_stack_as_the_python_api_profiles_the_pairs(arch, tmp_path, capsys):
    out = tmp_path / "pairs.routing"
    # no --languages: every language of the corpus but eng, the --pairs-to language (eng-eng left out)
    printed = cli(capsys, "profile", "--model", f"tiny:{arch}", "--pairs-to", "eng", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["decoder", "encoder"]
    assert "2 directions into eng" in printed.err and "wrote" in printed.out
    api = mi.profile(model(arch), oracle_pairs(["deu", "fin"], "eng", "train"), progress=False)
    for stack in ("encoder", "decoder"):
        saved = mi.RoutingStats.load(out / stack)
        assert saved.languages == api[stack].languages
        assert torch.equal(saved.count, api[stack].count) and torch.equal(saved.tokens, api[stack].tokens)
    assert api["encoder"].languages == ("deu", "fin") and api["decoder"].languages == ("eng",)


@functools.lru_cache(maxsize=None)
def profiled(tmp, pairs_to):
    """The CLI's profile of tiny Switch on the train split: pairs into `pairs_to`, or plain texts."""
    out = f"{tmp}/switch-{pairs_to or 'texts'}.routing"
    argv = ["profile", "--model", "tiny:switch_transformers", "--out", out]
    assert main(argv + (["--pairs-to", pairs_to] if pairs_to else ["--languages", ",".join(LANGUAGES)])) == 0
    return out


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli_pairs"))


def test_ablate_pairs_to_prints_the_python_apis_grid_of_the_held_out_pairs(tmp, capsys):
    stats_dir = profiled(tmp, "eng")
    options = ["--k", "2", "--threshold", "0.3", "--controls", "1", "--resamples", "20"]
    printed = cli(capsys, "ablate", "--model", "tiny:switch_transformers", "--stats", stats_dir, "--pairs-to", "eng",
                  "--eval-languages", "deu,fin", "--target-languages", "deu", *options, "--out", f"{tmp}/a.jsonl")
    stats = {s: mi.RoutingStats.load(f"{stats_dir}/{s}") for s in ("encoder", "decoder")}
    # the decoder knows eng only (every target): the encoder's bands are ablated, and the CLI says so
    assert "the decoder's statistics hold one language (eng)" in printed.err
    bands = ("encoder:early-third", "encoder:middle-third", "encoder:late-third")
    api = mi.ablation_grid(model("switch_transformers"), stats, oracle_pairs(["deu", "fin"], "eng", "heldout"),
                           ["deu-eng", "fin-eng"], ["deu-eng"], bands=bands, k=2, threshold=0.3, controls=1,
                           resamples=20, progress=False)
    assert printed.out == api.summary() + "\n"
    assert api.conditions == tuple(("deu-eng", band) for band in bands)
    assert "deu-eng (Indo-European → Indo-European), encoder:early-third" in printed.out


def test_steer_pairs_to_prints_the_python_apis_result_naming_the_stacks_each_direction_steers(tmp, capsys):
    """Into fin, toward eng: deu-fin steers both stacks; eng-fin's source is already eng, so only its decoder."""
    stats_dir = profiled(tmp, None)
    printed = cli(capsys, "steer", "--model", "tiny:switch_transformers", "--stats", stats_dir, "--pairs-to", "fin",
                  "--languages", "deu,eng", "--scales", "0,4", "--k", "3", "--resamples", "50",
                  "--out", f"{tmp}/s.jsonl")
    stats = {s: mi.RoutingStats.load(f"{stats_dir}/{s}") for s in ("encoder", "decoder")}
    api = mi.steering_eval(model("switch_transformers"), stats, oracle_pairs(["deu", "eng"], "fin", "train"),
                           oracle_pairs(["deu", "eng"], "fin", "heldout"), ["deu-fin", "eng-fin"],
                           scales=(0.0, 4.0), k=3, resamples=50, progress=False)
    assert printed.out == api.summary() + "\n"
    assert api.table.language.tolist() == ["deu-fin", "eng-fin"]
    own = api.steered_by_language
    assert {api.stacks[l] for l in own["deu-fin"]} == {"encoder", "decoder"}
    assert {api.stacks[l] for l in own["eng-fin"]} == {"decoder"} and set(own["eng-fin"]) < set(api.steered_layers)
    assert api.scale == 4.0  # the chosen scale steers: each direction's line names its own stacks
    lines = {line.split(":")[0]: line for line in printed.out.splitlines()}
    assert lines["eng-fin"].endswith("(steered: decoder L5, L7; encoder not steered)")
    assert lines["deu-fin"].endswith("(steered: encoder L1, L3, decoder L5, L7)")


def test_the_steering_summary_names_the_stacks_each_direction_steers():
    shift = pd.DataFrame({"scale": [1.0] * 4, "language": ["deu-eng"] * 2 + ["deu-fin"] * 2, "layer": [1, 3] * 2,
                          "changed": [0.2, 0.0, 0.2, 0.1], "mass_moved": [0.1, 0.0, 0.1, 0.1], "tokens": [10] * 4})
    table = pd.DataFrame({"language": ["deu-eng", "deu-fin"], "gain": [0.1, 0.2], "ci_low": [0.0, 0.1],
                          "ci_high": [0.2, 0.3], "p_value": [0.04, 0.01], "pairs": [2, 4]})
    res = SteeringResult(1.0, {1.0: 3.0}, table, shift=shift, gains={1.0: [[0.1, 0.1], [0.2, 0.2]]},
                         steered_layers=(1, 3), stacks={1: "encoder", 3: "decoder"},
                         steered_by_language={"deu-eng": (1,), "deu-fin": (1, 3)})
    lines = res.summary().splitlines()
    assert lines[1].endswith("2 steered (layer, expert) pairs (steered: encoder L1; decoder not steered)")
    assert lines[2].endswith("4 steered (layer, expert) pairs (steered: encoder L1, decoder L3)")
    assert "encoder L1, decoder L3, the layers any language steers (each one's own: above)" in lines[3]
    # a result without the record (built by hand before it existed, or one stack) reads as before
    plain = SteeringResult(1.0, {1.0: 3.0}, table, shift=shift, gains=res.gains, steered_layers=(1, 3),
                           stacks=res.stacks)
    assert plain.summary().splitlines()[1].endswith("2 steered (layer, expert) pairs")


def test_refusals_are_one_line_with_exit_code_2(tmp, tmp_path, capsys):
    out = str(tmp_path / "x.routing")
    switch = ["--model", "tiny:switch_transformers"]
    assert "--model demo is a causal LM" in refused(capsys, "profile", "--pairs-to", "eng", "--out", out)
    said = refused(capsys, "profile", "--model", "tiny:qwen3_moe", "--languages", "deu", "--pairs-to", "eng",
                   "--out", out)
    assert "--model tiny:qwen3_moe (qwen3_moe) is a causal LM" in said
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "deu.txt").write_text("Hallo Welt.", encoding="utf-8")
    said = refused(capsys, "profile", *switch, "--corpus", str(texts), "--pairs-to", "eng", "--out", out)
    assert f"--corpus {texts} is not known to be parallel" in said
    assert "mi.profile(model, {(src, tgt): [(source text, target text), ...]})" in said
    said = refused(capsys, "profile", *switch, "--pairs-to", "en", "--out", out)
    assert "--pairs-to: 'en' is not a language of the udhr corpus; did you mean eng (English)?" in said
    said = refused(capsys, "profile", *switch, "--languages", "deu,eng", "--pairs-to", "eng", "--out", out)
    assert "--languages lists eng, the --pairs-to language: eng-eng would pair each text with itself" in said
    said = refused(capsys, "ablate", *switch, "--stats", profiled(tmp, "eng"), "--pairs-to", "eng",
                   "--eval-languages", "deu,fin", "--target-languages", "eng", "--out", f"{tmp}/r.jsonl")
    assert "--target-languages lists eng, the --pairs-to language" in said
    said = refused(capsys, "steer", *switch, "--stats", profiled(tmp, None), "--pairs-to", "fin",
                   "--languages", "deu,fin", "--out", f"{tmp}/r.jsonl")
    assert "--languages lists fin, the --pairs-to language" in said
