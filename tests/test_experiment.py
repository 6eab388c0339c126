"""Experiments: resumable grids, the ablation design, honest steering evaluation."""

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
import moe_interp.experiment as experiment_module
from conftest import tiny

CORPUS = {"eng": ["The cat sat on the mat.", "Dogs bark at night."], "deu": ["Die Katze schläft.", "Hunde bellen."],
          "fra": ["Le chat dort.", "Les chiens aboient."]}


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
        import moe_interp as mi, moe_interp.experiment as e
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


def test_ablation_grid_shape_baseline_and_summary():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, CORPUS, progress=False)
    res = mi.ablation_grid(model, profile, CORPUS, ["eng", "deu", "fra"], ["eng", "deu"], k=4, threshold=0.4,
                           progress=False)
    assert res.delta.shape == (3, 6)
    assert set(res.own_vs_other()) == {"eng", "deu"}
    assert "exclusive experts" in res.summary()
    fig = res.plot_ablation()
    assert fig.layout.xaxis.title.text == "ablated language / band"
    for (target, band), n in res.experts.items():
        if n == 0:  # nothing ablated: the cell equals the baseline exactly
            assert np.allclose(res.delta[:, res.conditions.index((target, band))], 0)


def test_noop_steer_reports_exactly_zero_gain_with_ci_containing_zero():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, CORPUS, progress=False)
    res = mi.steering_eval(model, profile, CORPUS, CORPUS, ["deu", "fra"], target="eng", scales=(0.0,), k=4,
                           progress=False)
    assert res.scale == 0.0
    assert (res.table.gain == 0).all() and (res.table.ci_low <= 0).all() and (res.table.ci_high >= 0).all()
    assert "chosen on the dev split only" in res.summary()


def test_steering_scale_is_chosen_on_dev_only():
    model = tiny("qwen3_moe")
    profile = mi.profile(model, CORPUS, progress=False)
    dev = {k: v[:1] for k, v in CORPUS.items()}
    test = {k: v[1:] for k, v in CORPUS.items()}
    res = mi.steering_eval(model, profile, dev, test, ["deu"], target="eng", scales=(0.0, 0.5, 2.0), k=4,
                           progress=False)
    assert res.scale == min(res.dev_scores, key=res.dev_scores.get)
    assert set(res.dev_scores) == {0.0, 0.5, 2.0}


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
    first = mi.steering_eval(model, a, CORPUS, CORPUS, ["deu"], path=path, **kwargs)
    again = mi.steering_eval(model, b, CORPUS, CORPUS, ["deu"], path=path, **kwargs)
    fresh = mi.steering_eval(model, b, CORPUS, CORPUS, ["deu"], **kwargs)
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
        mi.steering_eval(model, profile, CORPUS, CORPUS, ["deu"], target="eng", k=20, path=path, progress=False)
    assert calls == [] and not path.exists()


def test_ablation_grid_of_another_model_does_not_reuse_cells(tmp_path):
    model, other = tiny("qwen3_moe"), mi.zoo.tiny_model("qwen3_moe", seed=1)
    profile = mi.profile(model, CORPUS, progress=False)
    path = tmp_path / "cells.jsonl"
    args = (profile, CORPUS, ["eng", "deu"], ["deu"])
    kwargs = dict(bands=("middle",), k=4, threshold=0.4, progress=False)
    first = mi.ablation_grid(model, *args, path=path, **kwargs)
    again = mi.ablation_grid(other, *args, path=path, **kwargs)
    fresh = mi.ablation_grid(other, *args, **kwargs)
    assert again.frame.equals(fresh.frame) and not again.frame.equals(first.frame)
