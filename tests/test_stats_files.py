"""RoutingStats files: atomic saves, checksums, and stats whose fields disagree (issue 12, section 4)."""

import dataclasses
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_analysis import _item_stats

import moe_interp as mi
from moe_interp import StatsFileError


def _small() -> mi.RoutingStats:
    """2 languages, 1 layer, 3 experts, top-1, 4 items: a file of about 1.5 kB."""
    item_count = torch.tensor([[[2, 1, 0]], [[0, 3, 1]], [[1, 0, 0]], [[0, 0, 5]]])
    item_language = torch.tensor([0, 1, 0, 1])
    count = torch.tensor([[[3, 1, 0]], [[0, 3, 6]]])
    return mi.RoutingStats(("en", "de"), (2,), 3, 1, count, count.double() * 0.5, torch.tensor([4, 9]),
                           item_count, torch.tensor([3, 4, 1, 5]), item_language)


def _same(a: mi.RoutingStats, b: mi.RoutingStats) -> bool:
    return (a.languages, a.layers, a.num_experts, a.top_k) == (b.languages, b.layers, b.num_experts, b.top_k) and all(
        torch.equal(getattr(a, n), getattr(b, n)) for n in ("count", "gate_mass", "tokens", "item_count"))


def _leftovers(directory) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]


def _crash(*args, **kwargs):
    raise OSError("simulated kill")


def _crash_at_rename(monkeypatch) -> None:
    monkeypatch.setattr(os, "replace", _crash)
    monkeypatch.setattr(os, "rename", _crash)


def _crash_while_writing(monkeypatch) -> None:
    import safetensors.torch

    def half_then_crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError("simulated kill")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)  # the writer RoutingStats.save calls


# -- atomic save --------------------------------------------------------------------------------


@pytest.mark.parametrize("crash", [_crash_at_rename, _crash_while_writing], ids=["at-rename", "while-writing"])
def test_overwrite_killed_keeps_the_old_stats(tmp_path, monkeypatch, crash):
    """1c62add deleted the old directory, then renamed the new one in: a kill in between left nothing."""
    old = _item_stats(seed=0)
    path = old.save(tmp_path / "s.routing")
    crash(monkeypatch)
    with pytest.raises(OSError, match="simulated kill"):
        _item_stats(seed=1).save(path, overwrite=True)
    monkeypatch.undo()
    assert _same(mi.RoutingStats.load(path), old)
    assert not _leftovers(tmp_path)


def test_overwrite_killed_between_its_two_files_loads_the_new_stats(tmp_path, monkeypatch):
    """The tensor file carries the header of record, so a stale meta.json does not matter."""
    path = _item_stats(seed=0).save(tmp_path / "s.routing")
    new = _item_stats(seed=1, items=30)
    real_replace, calls = os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise OSError("simulated kill")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="simulated kill"):
        new.save(path, overwrite=True)
    monkeypatch.undo()
    assert _same(mi.RoutingStats.load(path), new)


_SAVE_LOOP = """
import sys, torch, moe_interp as mi
def stats(n):
    count = torch.full((1, 1, 3), n)
    return mi.RoutingStats(("en",), (0,), 3, 1, count, count.double(), torch.tensor([n]))
stats(1).save(sys.argv[1])
print("ready", flush=True)
n = 1
while True:
    n = 3 - n
    stats(n).save(sys.argv[1], overwrite=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_process_killed_while_overwriting_leaves_loadable_stats(tmp_path, delay):
    """A real SIGKILL of a process that overwrites the same stats in a loop: what is left loads."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "s.routing"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    loaded = mi.RoutingStats.load(path)
    assert int(loaded.tokens[0]) in (1, 2) and bool((loaded.count == loaded.tokens[0]).all())


def test_save_killed_before_a_new_path_appears_leaves_no_path(tmp_path, monkeypatch):
    _crash_at_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated kill"):
        _item_stats().save(tmp_path / "s.routing")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_refuses_a_directory_save_did_not_write(tmp_path):
    """1c62add deleted whatever directory `overwrite=True` pointed at."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a directory written by RoutingStats.save"):
        _item_stats().save(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    plain_file = tmp_path / "plain"
    plain_file.write_text("keep me too")
    with pytest.raises(FileExistsError, match="choose another path"):
        _item_stats().save(plain_file, overwrite=True)
    assert plain_file.read_text() == "keep me too"


# -- checksum -----------------------------------------------------------------------------------


def _data_start(tensor_file) -> int:
    """safetensors layout: 8-byte little-endian header length, JSON header, then tensor data."""
    return 8 + int.from_bytes(tensor_file.read_bytes()[:8], "little")


def test_flipped_data_byte_raises_naming_the_file(tmp_path):
    """1c62add loaded the changed count silently."""
    path = _small().save(tmp_path / "s.routing")
    tensor_file = path / "stats.safetensors"
    header = json.loads(tensor_file.read_bytes()[8:_data_start(tensor_file)])
    begin = header["count"]["data_offsets"][0]
    data = bytearray(tensor_file.read_bytes())
    data[_data_start(tensor_file) + begin] ^= 0x01  # count[0, 0, 0]: 3 -> 2
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(StatsFileError, match=f"{tensor_file}.*checksum"):
        mi.RoutingStats.load(path)


def test_every_single_byte_flip_is_refused(tmp_path):
    """Flip each byte of a whole tensor file in turn (header, checksum, data): every load raises
    StatsFileError, never returns different numbers or another exception."""
    path = _small().save(tmp_path / "s.routing")
    tensor_file = path / "stats.safetensors"
    original = tensor_file.read_bytes()
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 0xFF
        tensor_file.write_bytes(bytes(data))
        with pytest.raises(StatsFileError, match="stats.safetensors"):
            mi.RoutingStats.load(path)


def test_file_without_checksum_loads_with_a_warning(tmp_path):
    """Files written before checksums existed: safetensors without metadata, and meta.json."""
    stats = _small()
    path = tmp_path / "old.routing"
    path.mkdir()
    save_file({n: getattr(stats, n) for n in ("count", "gate_mass", "tokens", "item_count", "item_tokens",
                                              "item_language")}, str(path / "stats.safetensors"))
    (path / "meta.json").write_text(json.dumps({"format": "moe_interp.RoutingStats/1", "languages": ["en", "de"],
                                                "layers": [2], "num_experts": 3, "top_k": 1, "meta": {}}))
    with pytest.warns(UserWarning, match="no checksum.*save it again"):
        loaded = mi.RoutingStats.load(path)
    assert _same(loaded, stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same(mi.RoutingStats.load(loaded.save(tmp_path / "again.routing")), stats)


# -- fields that disagree -----------------------------------------------------------------------


def _fields(**changes):
    stats = _small()
    fields = dict(languages=stats.languages, layers=stats.layers, num_experts=3, top_k=1, count=stats.count,
                  gate_mass=stats.gate_mass, tokens=stats.tokens, item_count=stats.item_count,
                  item_tokens=stats.item_tokens, item_language=stats.item_language)
    return {**fields, **changes}


BAD_FIELDS = {
    "negative count": (dict(count=torch.tensor([[[3, 1, 0]], [[0, -3, 6]]]), item_count=None, item_tokens=None,
                            item_language=None), r"count\[1, 0, 1\] = -3: count must be non-negative"),
    "nan gate mass": (dict(gate_mass=torch.tensor([[[1.5, float("nan"), 0.0]], [[0.0, 1.5, 3.0]]], dtype=torch.float64)),
                      r"gate_mass\[0, 0, 1\] = nan: gate_mass must be finite"),
    "negative tokens": (dict(tokens=torch.tensor([4, -9]), item_count=None, item_tokens=None, item_language=None),
                        "tokens must be non-negative"),
    "items not adding up": (dict(item_count=torch.tensor([[[2, 1, 0]], [[0, 3, 1]], [[1, 0, 1]], [[0, 0, 5]]])),
                            "per-item counts of language 'en' do not add up"),
    "item of no language": (dict(item_language=torch.tensor([0, 1, 0, 2])), "item_language holds 2"),
    "items without their language": (dict(item_language=None), "give all three or none"),
    "repeated layers": (dict(layers=(2, 2), count=torch.zeros(2, 2, 3, dtype=torch.long),
                             gate_mass=torch.zeros(2, 2, 3, dtype=torch.float64), item_count=None, item_tokens=None,
                             item_language=None), "layers .* must be distinct"),
    "top_k above num_experts": (dict(top_k=4), r"top_k must be an integer in \[1, 3\]"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_inconsistent_fields_are_refused_on_construction(case):
    changes, message = BAD_FIELDS[case]
    with pytest.raises(ValueError, match=message):
        mi.RoutingStats(**_fields(**changes))


@pytest.mark.parametrize("case", ["negative count", "items not adding up", "item of no language"])
def test_inconsistent_file_raises_naming_it(tmp_path, case):
    """A file whose tensors disagree (here one written without a checksum) fails at load, not later."""
    changes, message = BAD_FIELDS[case]
    fields = _fields(**changes)
    path = tmp_path / "bad.routing"
    path.mkdir()
    save_file({n: fields[n] for n in ("count", "gate_mass", "tokens", "item_count", "item_tokens", "item_language")
               if fields[n] is not None}, str(path / "stats.safetensors"))
    (path / "meta.json").write_text(json.dumps({"format": "moe_interp.RoutingStats/1", "languages": ["en", "de"],
                                                "layers": list(fields["layers"]), "num_experts": 3, "top_k": 1}))
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises(StatsFileError, match=f"{path} is inconsistent"):
        mi.RoutingStats.load(path)


def test_paper_format_file_with_a_negative_count_raises_naming_it(tmp_path):
    """`from_paper` JSON: 1c62add loaded a negative `activation_tokens` silently."""
    layer = {"0": {"activation_tokens": 5, "gate_values_sum": 2.5},
             "1": {"activation_tokens": -1, "gate_values_sum": 0.1}, "total_tokens": 4}
    (tmp_path / "mgsm_en.json").write_text(json.dumps({"0": layer}))
    with pytest.raises(StatsFileError, match=r"mgsm_\{lang\}.json are inconsistent: count\[0, 0, 1\] = -1"):
        mi.RoutingStats.from_paper(tmp_path, ["en"], num_experts=2, top_k=1)


# -- stacks (encoder / decoder / language model labels per layer) ------------------------------


def _two_stacks() -> mi.RoutingStats:
    """Layers 0-2 of an encoder, 3-5 of a decoder; 'a' routes to expert 0 in the encoder and
    to expert 1 in the decoder, 'b' to expert 2 everywhere (top-1, 4 experts, 2 tokens each)."""
    count = torch.zeros(2, 6, 4, dtype=torch.long)
    count[0, :3, 0] = 2
    count[0, 3:, 1] = 2
    count[1, :, 2] = 2
    return mi.RoutingStats(("a", "b"), tuple(range(6)), 4, 1, count, count.double(), torch.tensor([2, 2]),
                           stacks=("encoder",) * 3 + ("decoder",) * 3)


def test_stacks_survive_save_load_select_and_merge(tmp_path):
    stats = _two_stacks()
    back = mi.RoutingStats.load(stats.save(tmp_path / "s.routing"))
    assert back.stacks == ("encoder",) * 3 + ("decoder",) * 3 and torch.equal(back.count, stats.count)
    assert stats.select(layers=[2, 3]).stacks == ("encoder", "decoder")
    assert stats.select(["a"]).merge(stats.select(["b"])).stacks == stats.stacks
    with pytest.raises(ValueError, match="same model"):
        stats.merge(dataclasses.replace(stats, stacks=None))


def test_files_without_stacks_load_as_single_stack(tmp_path):
    stats = _item_stats()
    assert stats.stacks is None
    path = stats.save(tmp_path / "s.routing")
    assert "stacks" not in json.loads((path / "meta.json").read_text())
    assert mi.RoutingStats.load(path).stacks is None


@pytest.mark.parametrize("stacks", [("encoder",) * 5, ("encoder",) * 5 + ("",)])
def test_bad_stacks_are_refused(stacks):
    with pytest.raises(ValueError, match="stacks must give one non-empty label per layer"):
        dataclasses.replace(_two_stacks(), stacks=stacks)


def test_a_non_string_stack_label_is_refused():
    # the tests run with runtime type checking, which refuses it at the type hint first;
    # without it, the field check refuses it with the ValueError above
    with pytest.raises(Exception, match="stacks"):
        dataclasses.replace(_two_stacks(), stacks=("encoder",) * 5 + (3,))


def test_a_stack_name_selects_its_layers_in_analyses():
    stats = _two_stacks()
    assert stats.layer_positions("decoder") == [3, 4, 5]
    assert stats.layer_positions("decoder:early") == [3]
    # 'a' uses expert 0 (encoder) or 1 (decoder), 'b' expert 2: disjoint, JS = 1 in every layer
    assert stats.divergence(layers="encoder").shape == (3, 2, 2)
    assert stats.exclusive_experts("a", k=1, layers="decoder") == {3: (1,), 4: (1,), 5: (1,)}
    assert stats.exclusive_experts("a", k=1, layers="encoder") == {0: (0,), 1: (0,), 2: (0,)}
    with pytest.raises(ValueError, match="unknown band or layer selection 'vision'.*'decoder', 'encoder'"):
        stats.divergence(layers="vision")


def test_an_unprofiled_language_is_refused_naming_the_profiled_ones_not_empty_close_matches():
    """`exclusive_experts("fra")` on stats without it said "close matches: []" (issue 26, section 3)."""
    stats = mi.datasets.reference_stats().select(["en", "de"])
    with pytest.raises(KeyError) as error:
        stats.exclusive_experts("fra")
    message = str(error.value)
    assert "close matches" not in message and "the profiled languages: ['en', 'de']" in message
    with pytest.raises(KeyError, match=r"close matches: \['de', 'en'\]"):
        stats.language_index("dee")


def test_groups_name_the_first_axis_and_files_keep_the_languages_key(tmp_path):
    """A trace's invoke groups are no languages: `groups` names the axis, the repr says which,
    and the saved header keeps the key `languages`, so files read the same either way."""
    count = torch.tensor([[[1, 1, 0]], [[0, 1, 1]]])
    invokes = mi.RoutingStats(("default/text", "invoke1"), (0,), 3, 2, count, count / 2.0, torch.tensor([1, 1]))
    assert invokes.groups == invokes.languages == ("default/text", "invoke1")
    assert repr(invokes).startswith("RoutingStats(groups=[default/text, invoke1], layers=1")
    path = invokes.save(tmp_path / "invokes.routing")
    assert json.loads((path / "meta.json").read_text())["languages"] == ["default/text", "invoke1"]
    assert mi.RoutingStats.load(path).groups == ("default/text", "invoke1")
    profile = dataclasses.replace(invokes, languages=("eng", "de"))
    assert repr(profile).startswith("RoutingStats(languages=[eng, de], layers=1")
