"""Experiments: resumable grids, the ablation design, honest steering evaluation."""

import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import moe_interp as mi
import moe_interp.experiments._grid as experiment_module  # where Experiment calls text_nll
from conftest import tiny
from moe_interp.analysis import paired_interval

CORPUS = {"eng": ["The cat sat on the mat.", "Dogs bark at night."], "deu": ["Die Katze schläft.", "Hunde bellen."],
          "fra": ["Le chat dort.", "Les chiens aboient."]}
# ASCII texts (1 byte per token of the tiny byte-level tokenizer), three disjoint splits
TRAIN = {"eng": ["The cat sat on the mat.", "Dogs bark at night.", "The sun is hot today."],
         "deu": ["Die Katze schlaeft hier.", "Hunde bellen laut.", "Die Sonne ist heiss."],
         "fra": ["Le chat dort ici.", "Les chiens aboient fort.", "Le soleil est chaud."]}
DEV = {"eng": ["A bird sings.", "Rain falls on the roof."], "deu": ["Ein Vogel singt.", "Regen faellt aufs Dach."],
       "fra": ["Un oiseau chante.", "La pluie tombe sur le toit."]}
TEST = {"eng": ["Fish swim in the sea.", "The old man reads a book.", "Trees grow tall."],
        "deu": ["Fische schwimmen im Meer.", "Der alte Mann liest ein Buch.", "Baeume wachsen hoch."],
        "fra": ["Les poissons nagent.", "Le vieil homme lit un livre.", "Les arbres poussent."]}


class _HandRouter(torch.nn.Module):
    """Qwen3-MoE's router written out by hand (linear, softmax, top-k, renormalise), with
    `edit` applied to its logits before selection: the oracle of rerouting and steering."""

    def __init__(self, gate, edit):
        super().__init__()
        self.weight, self.top_k, self.norm, self.edit = gate.weight, gate.top_k, gate.norm_topk_prob, edit

    def forward(self, hidden):
        logits = self.edit(hidden.reshape(-1, hidden.shape[-1]) @ self.weight.T)
        top, index = torch.topk(torch.softmax(logits.float(), -1), self.top_k, dim=-1)
        if self.norm:
            top = top / top.sum(-1, keepdim=True)
        return logits, top.to(logits.dtype), index


@contextlib.contextmanager
def _hand_routers(model, edits):
    """The HF model under `model` with the routers of `edits` ({layer: logits -> logits}) swapped for `_HandRouter`."""
    hf = model._module
    blocks = {layer: hf.model.layers[layer].mlp for layer in edits}
    gates = {layer: block.gate for layer, block in blocks.items()}
    try:
        for layer, block in blocks.items():
            block.gate = _HandRouter(gates[layer], edits[layer])
        yield hf
    finally:
        for layer, block in blocks.items():
            block.gate = gates[layer]


def _hand_bpb(model, texts, edits=None):
    """Bits per byte of each ASCII text, one unpadded HF forward per text, cross-entropy by torch."""
    out = []
    with _hand_routers(model, edits or {}) as hf, torch.no_grad():
        for text in texts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            nll = torch.nn.functional.cross_entropy(hf(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="sum")
            out.append(float(nll) / math.log(2) / (len(text.encode()) - 1))
    return np.array(out)


def _reroute(experts):
    def edit(logits):
        logits = logits.clone()
        logits[:, list(experts)] = -1e9
        return logits
    return edit


def _ablation_edits(expert_set):
    return {layer: _reroute(experts) for layer, experts in expert_set.items() if experts}


def _steer_edits(expert_set, scale):
    """The paper's relative steer, z + scale * s * |z|, on each steered expert."""
    def edit_for(strengths):
        def edit(logits):
            s = torch.zeros(logits.shape[-1], dtype=logits.dtype)
            for expert, value in strengths.items():
                s[expert] = value
            return logits + scale * s * logits.abs()
        return edit
    return {layer: edit_for(expert_set.strengths[layer]) for layer in expert_set if expert_set[layer]}


def test_text_nll_matches_a_hand_computation():
    model = tiny("qwen3_moe")
    text = "Hello world"
    row = mi.evaluate.text_nll(model, [text, "x y"])[0]
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model._module(input_ids=ids).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    assert math.isclose(row["nll"], float(expected), rel_tol=1e-4)
    assert row["tokens"] == len(text) - 1 and row["bytes"] == len(text) - 1
    assert math.isclose(row["bits_per_byte"], float(expected) / math.log(2) / (len(text) - 1), rel_tol=1e-6)


def test_experiment_skips_finished_cells(tmp_path, monkeypatch):
    model = tiny("qwen3_moe")
    grid = {"baseline": [], "ablate": [mi.ExpertAblate({1: [0, 1]})]}
    path = tmp_path / "cells.jsonl"
    first = mi.Experiment(model, CORPUS, grid, path=path, progress=False).run()
    calls = []
    monkeypatch.setattr(experiment_module, "text_nll", lambda *a, **k: calls.append(a) or [])
    again = mi.Experiment(model, CORPUS, grid, path=path, progress=False).run()
    assert calls == [] and again.equals(first)
    assert len(path.read_text().splitlines()) == 6


def test_sigkill_midway_then_rerun_gives_identical_results_without_recomputing(tmp_path, monkeypatch):
    path = tmp_path / "cells.jsonl"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import moe_interp as mi, moe_interp.experiments._grid as e
        from conftest import tiny
        real = e.text_nll
        def slow(*a, **k):
            out = real(*a, **k); time.sleep(0.3); return out
        e.text_nll = slow
        corpus = {CORPUS!r}
        grid = {{"baseline": [], "ablate": [mi.ExpertAblate({{1: [0, 1]}})]}}
        mi.Experiment(tiny("qwen3_moe"), corpus, grid, path={str(path)!r}, progress=False).run()
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(path.read_text().splitlines())
    assert 2 <= finished < 6, "the kill must land part-way"
    calls = []
    real = experiment_module.text_nll
    monkeypatch.setattr(experiment_module, "text_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny("qwen3_moe")
    grid = {"baseline": [], "ablate": [mi.ExpertAblate({1: [0, 1]})]}
    resumed = mi.Experiment(model, CORPUS, grid, path=path, progress=False).run()
    assert len(calls) == 6 - finished
    monkeypatch.setattr(experiment_module, "text_nll", real)
    fresh = mi.Experiment(model, CORPUS, grid, path=None, progress=False).run()
    assert resumed.equals(fresh)


def test_ablation_grid_cells_and_controls_match_a_hand_written_router():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    res = mi.ablation_grid(model, profile, TEST, ["eng", "deu", "fra"], ["eng", "deu"], k=4, threshold=0.4,
                           controls=2, resamples=500, progress=False,
                           families={"eng": "Germanic", "deu": "Germanic", "fra": "Romance"})
    assert res.delta.shape == (3, 6)
    base = {l: _hand_bpb(model, TEST[l]) for l in TEST}
    assert res.baseline == pytest.approx({l: v.mean() for l, v in base.items()}, abs=1e-5)
    for j, (target, band) in enumerate(res.conditions):
        chosen = res.sets[f"ablate:{target}:{band}"]
        assert chosen == profile.exclusive_experts(target, k=4, threshold=0.4, among=["eng", "deu", "fra"],
                                                   layers=band)
        for i, lang in enumerate(res.eval_languages):
            expected = (_hand_bpb(model, TEST[lang], _ablation_edits(chosen)) - base[lang]).mean()
            assert res.delta[i, j] == pytest.approx(expected, abs=1e-5)
    controls = [name for name in res.sets if name.startswith("control:")]
    assert controls, "some exclusive set is non-empty: it gets random controls"
    for name in controls:
        _, target, band, _ = name.split(":")
        chosen, control = res.sets[f"ablate:{target}:{band}"], res.sets[name]
        assert {l: len(control[l]) for l in control} == {l: len(chosen[l]) for l in chosen}
        assert all(not set(control[l]) & set(chosen[l]) for l in chosen)
        rows = res.frame[(res.frame.condition == name)].sort_values("item")
        assert set(rows.language) == {target}  # a control runs on the ablated language's own texts
        assert rows.bits_per_byte.to_numpy() == pytest.approx(_hand_bpb(model, TEST[target], _ablation_edits(control)),
                                                              abs=1e-5)
    verdicts = res.verdicts()
    assert list(verdicts.language) == ["eng"] * 3 + ["deu"] * 3
    for row in verdicts.itertuples():
        assert row.own_low <= row.own <= row.own_high and row.random_low <= row.random <= row.random_high
    text = res.summary()
    assert f"{verdicts.iloc[0].own_minus_other_family_low:+.4f}" in text and "random sets" in text
    assert res.plot_ablation().layout.xaxis.title.text == "ablated language / band"


def test_ablation_grid_refuses_to_evaluate_on_the_texts_it_selected_on():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    with pytest.raises(ValueError, match=r"profiled on the same eng, deu texts.*split='train'"):
        mi.ablation_grid(model, profile, TRAIN, ["eng", "deu"], ["deu"], bands=("middle",), k=4, progress=False)
    res = mi.ablation_grid(model, profile, TRAIN, ["eng", "deu"], ["deu"], bands=("middle",), k=4, controls=1,
                           resamples=50, allow_same_texts=True, progress=False, families={"eng": "A", "deu": "B"})
    assert res.delta.shape == (2, 1)


def test_steering_gain_matches_a_hand_written_router():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    res = mi.steering_eval(model, profile, DEV, TEST, ["deu", "fra"], target="eng", scales=(2.0,), k=4, resamples=500,
                           progress=False)
    spec = mi.describe(model)
    assert res.scale == 2.0
    for i, row in enumerate(res.table.itertuples()):
        steer = mi.RouteSteer(layers="middle", target="eng", stats=profile, languages=("eng", row.language), k=4,
                              threshold=0.7, scale=2.0)
        experts = steer.expert_set(spec)
        gain = _hand_bpb(model, TEST[row.language]) - _hand_bpb(model, TEST[row.language], _steer_edits(experts, 2.0))
        assert row.gain == pytest.approx(gain.mean(), abs=1e-5)
        assert abs(row.gain) > 1e-4, "a scale-2 steer of the shared experts changes the outcome"
        interval = paired_interval(gain, 500, seed=i)
        assert (row.ci_low, row.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-5)
        assert row.pairs == experts.size
    dose = res.dose_response()
    assert list(dose.scale) == [2.0] and 0 < dose.changed[0] <= 1
    assert "dose-response on the test split" in res.summary()


def test_steering_scale_is_chosen_on_dev_only():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    spec = mi.describe(model)
    scales = (0.0, 0.5, 5.0)
    res = mi.steering_eval(model, profile, DEV, TEST, ["deu"], target="eng", scales=scales, k=4, resamples=50,
                           progress=False)
    experts = mi.RouteSteer(layers="middle", target="eng", stats=profile, languages=("eng", "deu"), k=4,
                            threshold=0.7, scale=1.0).expert_set(spec)
    dev = {s: _hand_bpb(model, DEV["deu"], _steer_edits(experts, s) if s else None).mean() for s in scales}
    assert res.dev_scores == pytest.approx(dev, abs=1e-5)
    assert res.scale == min(dev, key=dev.get)
    other_test = {"eng": ["Something else."], "deu": ["Etwas ganz anderes hier.", "Noch ein Satz."]}
    again = mi.steering_eval(model, profile, DEV, other_test, ["deu"], target="eng", scales=scales, k=4, resamples=50,
                             progress=False)
    assert again.scale == res.scale and again.dev_scores == res.dev_scores
    assert list(again.dose_response().scale) == list(scales)  # every scale described on test, chosen on dev


def test_steering_eval_refuses_to_report_on_the_dev_or_profiled_texts():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    with pytest.raises(ValueError, match="dev and test hold the same deu texts"):
        mi.steering_eval(model, profile, DEV, DEV, ["deu"], scales=(1.0,), k=4, progress=False)
    with pytest.raises(ValueError, match="profiled on the same deu texts"):
        mi.steering_eval(model, profile, DEV, TRAIN, ["deu"], scales=(1.0,), k=4, progress=False)


def test_routing_shift_matches_the_routers_own_logits():
    """An additive steer of expert 3 at layer 1, read against HF's own router logits
    (`output_router_logits`) with the steer and the selection written out here."""
    from moe_interp.experiments._steering import routing_shift

    model = tiny("qwen3_moe")
    texts = TEST["eng"]
    shift = routing_shift(model, texts, mi.LayerRouteSteer({1: {3: 1.0}}, scale=3.0, mode="additive"),
                          batch_size=2).set_index("layer")

    def selected(logits):
        top, index = torch.softmax(logits, -1).topk(2, -1)
        return index, torch.where(index == 3, top / top.sum(-1, keepdim=True), torch.zeros_like(top)).sum(-1)

    changed, moved = [], []
    with torch.no_grad():
        for text in texts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            logits = model._module(input_ids=ids, output_router_logits=True).router_logits[1].float()
            before, weight_before = selected(logits)
            after, weight_after = selected(logits + 3.0 * (torch.arange(logits.shape[-1]) == 3))
            changed += (before.sort(-1).values != after.sort(-1).values).any(-1).tolist()
            moved += (weight_after - weight_before).tolist()
    assert 0 < np.mean(changed) < 1
    assert shift.loc[1, "changed"] == pytest.approx(np.mean(changed))
    assert shift.loc[1, "mass_moved"] == pytest.approx(np.mean(moved), abs=2e-3)  # weights kept as float16
    assert shift.loc[0, "changed"] == 0 and shift.loc[0, "mass_moved"] == 0  # before the steered layer
    assert shift.tokens.iloc[0] == sum(len(t) for t in texts)


# -- cells keyed by content (issue 12, sections 2 and 4) --------------------------------------

@functools.lru_cache(maxsize=None)
def demo(trained: bool):
    return mi.zoo.demo_model(trained=trained)


def _stats(count):
    """RoutingStats over eng/deu/fra of an 8-expert, 4-layer model, from explicit counts."""
    count = torch.as_tensor(count, dtype=torch.long)
    return mi.RoutingStats(("eng", "deu", "fra"), (0, 1, 2, 3), 8, 2, count, count.double(), count.sum((1, 2)) // 2)


def _two_stats():
    """Two profiles with the same languages and shapes whose shared eng/deu experts differ:
    A shares experts 0-3 between eng and deu, B shares experts 4-7."""
    a = torch.zeros(3, 4, 8, dtype=torch.long)
    a[0, :, 0:4] = 10
    a[1, :, 0:4] = 10
    a[2, :, 4:8] = 10
    b = a[:, :, [4, 5, 6, 7, 0, 1, 2, 3]]
    return _stats(a), _stats(b)


def test_experiment_of_the_random_twin_does_not_reuse_the_trained_models_cells(tmp_path):
    corpus = {"eng": ["All human beings are born free and equal."]}
    path = tmp_path / "cells.jsonl"
    trained = mi.Experiment(demo(True), corpus, {"baseline": []}, path=path, progress=False).run()
    twin = mi.Experiment(demo(False), corpus, {"baseline": []}, path=path, progress=False).run()
    fresh = mi.Experiment(demo(False), corpus, {"baseline": []}, path=None, progress=False).run()
    assert twin.equals(fresh)
    assert twin.bits_per_byte[0] > trained.bits_per_byte[0] + 1  # the twin is untrained: far worse


def test_route_steer_equality_and_hash_follow_the_stats_content():
    a, b = _two_stats()
    a_copy = _stats(a.count.clone())
    steer = dict(layers="middle", target="eng", languages=("eng", "deu"), k=4, threshold=0.7, scale=2.0)
    assert mi.RouteSteer(stats=a, **steer) == mi.RouteSteer(stats=a_copy, **steer)
    assert hash(mi.RouteSteer(stats=a, **steer)) == hash(mi.RouteSteer(stats=a_copy, **steer))
    assert mi.RouteSteer(stats=a, **steer) != mi.RouteSteer(stats=b, **steer)
    assert mi.RouteSteer(stats=a, **steer) != mi.RouteSteer(stats=a, **{**steer, "k": 3})
    assert len({mi.RouteSteer(stats=a, **steer), mi.RouteSteer(stats=a_copy, **steer),
                mi.RouteSteer(stats=b, **steer)}) == 2


def test_equal_values_give_equal_keys_for_every_intervention():
    assert mi.LayerRouteSteer({1: {3: 1}}, scale=2.0) == mi.LayerRouteSteer({1: {3: 1.0}}, scale=2.0)
    assert hash(mi.ExpertAblate({1: [3, 0]})) == hash(mi.ExpertAblate({1: (0, 3)}))
    assert mi.ExpertAblate({1: [0]}) != mi.ExpertAblate({1: [0]}, mode="drop")


def test_cells_steered_by_other_stats_are_not_reused(tmp_path):
    model = tiny("qwen3_moe")
    a, b = _two_stats()
    corpus = {"deu": CORPUS["deu"]}
    steer = dict(layers="middle", target="eng", languages=("eng", "deu"), k=4, threshold=0.7, scale=50.0)
    assert mi.RouteSteer(stats=a, **steer).expert_set(mi.describe(model)) != \
        mi.RouteSteer(stats=b, **steer).expert_set(mi.describe(model))
    path = tmp_path / "cells.jsonl"
    with_a = mi.Experiment(model, corpus, {"steer": [mi.RouteSteer(stats=a, **steer)]}, path=path,
                           progress=False).run()
    with_b = mi.Experiment(model, corpus, {"steer": [mi.RouteSteer(stats=b, **steer)]}, path=path,
                           progress=False).run()
    fresh_b = mi.Experiment(model, corpus, {"steer": [mi.RouteSteer(stats=b, **steer)]}, path=None,
                            progress=False).run()
    assert with_b.equals(fresh_b) and not with_b.equals(with_a)


def test_steering_eval_does_not_reuse_cells_of_other_stats(tmp_path):
    model = tiny("qwen3_moe")
    a, b = _two_stats()
    path = tmp_path / "cells.jsonl"
    kwargs = dict(target="eng", scales=(50.0,), k=4, progress=False)
    first = mi.steering_eval(model, a, DEV, TEST, ["deu"], path=path, **kwargs)
    again = mi.steering_eval(model, b, DEV, TEST, ["deu"], path=path, **kwargs)
    fresh = mi.steering_eval(model, b, DEV, TEST, ["deu"], **kwargs)
    assert again.dev_scores == fresh.dev_scores and again.table.equals(fresh.table)
    assert again.dev_scores != first.dev_scores


@pytest.mark.parametrize("corpus", ["The cat sat.", {"eng": "The cat sat."}, {"eng": []}])
def test_experiment_refuses_a_corpus_that_is_not_lists_of_texts(corpus):
    with pytest.raises((TypeError, ValueError), match="corpus"):
        mi.Experiment(tiny("qwen3_moe"), corpus, {"baseline": []}, progress=False)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_experiment_refuses_a_non_positive_batch_size_and_keeps_its_file(tmp_path, batch_size):
    path = tmp_path / "cells.jsonl"
    first = mi.Experiment(tiny("qwen3_moe"), CORPUS, {"baseline": []}, path=path, progress=False).run()
    stored = path.read_bytes()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        mi.Experiment(tiny("qwen3_moe"), CORPUS, {"baseline": []}, path=path, batch_size=batch_size, progress=False)
    assert path.read_bytes() == stored
    assert mi.Experiment(tiny("qwen3_moe"), CORPUS, {"baseline": []}, path=path, progress=False).run().equals(first)


def test_a_cell_with_missing_rows_in_the_file_is_recomputed(tmp_path):
    path = tmp_path / "cells.jsonl"
    corpus = {"eng": CORPUS["eng"]}
    fresh = mi.Experiment(tiny("qwen3_moe"), corpus, {"baseline": []}, path=path, progress=False).run()
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "rows": []}) + "\n")  # what batch_size=-1 used to write
    again = mi.Experiment(tiny("qwen3_moe"), corpus, {"baseline": []}, path=path, progress=False).run()
    assert again.equals(fresh)


def test_steering_eval_validates_every_steer_before_computing_any_cell(tmp_path, monkeypatch):
    model = tiny("qwen3_moe")
    profile = mi.profile(model, CORPUS, progress=False)
    calls = []
    monkeypatch.setattr(experiment_module, "text_nll", lambda *a, **k: calls.append(a) or [])
    path = tmp_path / "cells.jsonl"
    with pytest.raises(ValueError, match=r"k .*\[1, 8\].*got 20"):
        mi.steering_eval(model, profile, DEV, TEST, ["deu"], target="eng", k=20, path=path, progress=False)
    assert calls == [] and not path.exists()


def test_ablation_grid_of_another_model_does_not_reuse_cells(tmp_path):
    model, other = tiny("qwen3_moe"), mi.zoo.tiny_model("qwen3_moe", seed=1)
    profile = mi.profile(model, TRAIN, progress=False)
    path = tmp_path / "cells.jsonl"
    args = (profile, TEST, ["eng", "deu"], ["deu"])
    kwargs = dict(bands=("middle",), k=4, threshold=0.4, progress=False, controls=2, families={"eng": "A", "deu": "B"})
    first = mi.ablation_grid(model, *args, path=path, **kwargs)
    again = mi.ablation_grid(other, *args, path=path, **kwargs)
    fresh = mi.ablation_grid(other, *args, **kwargs)
    assert again.frame.equals(fresh.frame) and not again.frame.equals(first.frame)


def test_bits_per_byte_count_the_predicted_bytes_when_the_text_starts_inside_a_character_or_with_a_bos():
    """Issue 24 (found by a docs helper): a first byte of a multi-byte character decodes to U+FFFD (3 bytes),
    so 'äbc' counted 1 predicted byte instead of 3; a BOS counted its name's bytes instead of 0."""
    import math

    model = mi.zoo.tiny_model("qwen3_moe")                  # byte tokenizer: "ä" is two tokens
    rows = mi.evaluate.text_nll(model, ["äbc", "abc"])
    assert [r["bytes"] for r in rows] == [3, 2] and [r["tokens"] for r in rows] == [3, 2]
    assert rows[0]["bits_per_byte"] == pytest.approx(rows[0]["nll"] / math.log(2) / 3)

    class WithBos:                                          # the same tokenizer, a BOS prepended to every text
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, **kwargs):
            return self.inner([self.inner.bos_token + t for t in texts], **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    bos_model = mi.zoo.tiny_model("qwen3_moe")
    bos_model.tokenizer = WithBos(bos_model.tokenizer)
    (row,) = mi.evaluate.text_nll(bos_model, ["abc"])
    assert row["tokens"] == 3 and row["bytes"] == 3         # every byte of the text is predicted after the BOS
