"""Experiments: resumable grids, the ablation design, honest steering evaluation."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
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
