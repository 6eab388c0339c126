"""Plot functions on the released Qwen3-30B-A3B counts: traces, axis titles, data ranges."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest

from moe_interp.analysis import plots
from moe_interp.datasets.reference import reference_stats


@pytest.fixture(scope="module")
def paper():
    return reference_stats("qwen3-30b-a3b-mgsm")


def test_routing_heatmap_of_one_language(paper):
    fig = plots.routing_heatmap(paper, "sw")
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    (trace,) = fig.data
    assert trace.type == "heatmap" and np.asarray(trace.z).shape == (48, 128)
    assert fig.layout.xaxis.title.text == "expert" and fig.layout.yaxis.title.text == "MoE layer"
    z = np.asarray(trace.z)
    assert z.min() >= 0 and np.allclose(z.sum(1), 8, atol=0.01)  # each layer's frequencies sum to top_k
    assert list(trace.y) == list(range(48)) and trace.zmax == pytest.approx(z.max())


def test_routing_heatmap_of_all_languages_has_a_selector(paper):
    fig = paper.plot_heatmap()
    assert [t.name for t in fig.data] == list(paper.languages)
    assert [t.visible for t in fig.data] == [True] + [False] * 7
    assert len(fig.layout.updatemenus[0].buttons) == 8


def test_divergence_heatmap_of_a_band(paper):
    fig = paper.plot_divergence(layers="middle")
    (trace,) = fig.data
    z = np.asarray(trace.z)
    assert z.shape == (8, 8) and np.allclose(np.diag(z), 0) and np.allclose(z, z.T)
    assert 0 < z.max() < 1 and (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert list(trace.x) == list(paper.languages) == list(trace.y)
    assert fig.layout.xaxis.title.text == "language" and fig.layout.yaxis.title.text == "language"
    assert "10-39" in fig.layout.title.text


def test_divergence_heatmap_by_band(paper):
    fig = plots.divergence_heatmap(paper, bands=True)
    assert len(fig.data) == 3
    assert [a.text for a in fig.layout.annotations] == ["early: layers 0-9", "middle: layers 10-39",
                                                        "late: layers 40-47"]
    assert all(fig.layout[f"xaxis{i}"].title.text == "language" for i in ("", "2", "3"))
    means = [np.asarray(t.z).mean() for t in fig.data]
    assert means[1] < min(means[0], means[2])  # middle layers are most shared


def test_dendrogram_colours_leaves_by_family(paper):
    fig = paper.plot_dendrogram()
    tree, *leaves = fig.data
    assert tree.mode == "lines"
    assert sorted(t.name for t in leaves) == ["Indo-European", "Japonic", "Niger-Congo", "Sino-Tibetan"]
    assert sorted(x for t in leaves for x in t.text) == sorted(paper.languages)
    assert len({t.marker.color for t in leaves}) == 4
    heights = [y for y in tree.y if y is not None]
    assert min(heights) == 0 and 0 < max(heights) < 1
    assert fig.layout.xaxis.title.text == "language" and "Jensen-Shannon" in fig.layout.yaxis.title.text
    assert sorted(fig.layout.xaxis.ticktext) == sorted(paper.languages)


def test_layer_profile_curves(paper):
    fig = paper.plot_layer_profile()
    names = [t.name for t in fig.data]
    assert names[:3] == ["mean divergence (js)", "shared fraction", "mean entropy"]
    assert names[3:] == [f"exclusive: {l}" for l in paper.languages]
    for trace in fig.data[:3]:
        assert len(trace.y) == 48 and 0 <= min(trace.y) and max(trace.y) <= 1
    assert sum(fig.data[3 + paper.language_index("sw")].y) == 271
    assert fig.layout.xaxis2.title.text == "MoE layer"
    assert fig.layout.yaxis.title.text and fig.layout.yaxis2.title.text.startswith("exclusive experts")
    assert len(fig.layout.shapes) == 4  # band edges at layers 10 and 40, on both panels


def test_expert_counts(paper):
    fig = paper.plot_expert_counts()
    exclusive, shared = fig.data
    assert dict(zip(exclusive.x, exclusive.y)) == {"bn": 165, "de": 48, "en": 205, "es": 47, "fr": 49, "ja": 130,
                                                   "sw": 271, "zh": 232}
    assert shared.name == "shared with en" and "en" not in shared.x
    assert dict(zip(shared.x, shared.y))["zh"] == 420  # the paper's steering set
    assert fig.layout.xaxis.title.text == "language" and fig.layout.yaxis.title.text == "(layer, expert) pairs"


def test_example_page_is_self_contained(paper, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "paper_analysis", Path(__file__).resolve().parents[1] / "examples" / "paper_analysis.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text = example.page(paper)
    assert text.count("* plotly.js v") == 1  # the library, inlined once: the page works offline
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert text.count('class="plotly-graph-div"') == 5
    assert "420 pairs" in text and "sw 271" in text
