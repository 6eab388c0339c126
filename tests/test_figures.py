"""The report's figures show what they are given: each trace's values and error bars equal the
inputs, rows in the promised order, reference lines where asked (issue 24, section 6)."""

import numpy as np
import pandas as pd
import pytest
import torch

import moe_interp as mi

# family claim: trained vs each twin vs the byte baseline (ARI, invented values)
ROWS = [("trained", 0.250, 0.180, 0.310, "trained"), ("twin 1", 0.050, -0.020, 0.120, "control"),
        ("twin 2", 0.110, 0.010, 0.200, "control"), ("byte bigrams", 0.359, 0.300, 0.410, "baseline")]


def test_forest_plot_draws_each_estimate_with_its_interval_one_trace_per_kind():
    fig = mi.plots.forest_plot(ROWS, title="Family ARI, middle band", x_title="ARI (0 = chance)")
    assert [t.name for t in fig.data] == ["trained", "control", "baseline"]
    for trace in fig.data:
        mine = [r for r in ROWS if r[4] == trace.name]
        assert list(trace.y) == [r[0] for r in mine] and list(trace.x) == [r[1] for r in mine]
        assert list(trace.error_x.array) == pytest.approx([r[3] - r[1] for r in mine])
        assert list(trace.error_x.arrayminus) == pytest.approx([r[1] - r[2] for r in mine])
        assert trace.error_x.symmetric is False
    assert len({t.marker.color for t in fig.data}) == 3                    # a colour per kind
    assert [t.marker.color for t in fig.data] == [t.error_x.color for t in fig.data]
    assert list(fig.layout.yaxis.categoryarray) == [r[0] for r in ROWS]    # the given order, top to bottom
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.title.text == "Family ARI, middle band" and fig.layout.xaxis.title.text == "ARI (0 = chance)"


def test_forest_plot_draws_its_reference_line_at_the_reference_value():
    fig = mi.plots.forest_plot(ROWS, title="t", x_title="x")
    (line,) = fig.layout.shapes
    assert (line.x0, line.x1, line.xref, line.yref) == (0.0, 0.0, "x", "y domain")
    ratio = mi.plots.forest_plot(pd.DataFrame(ROWS, columns=["label", "estimate", "low", "high", "kind"]),
                                 title="Between/within-family JS", x_title="ratio (1 = no family structure)",
                                 reference=1, reference_label="no structure")
    (line,) = ratio.layout.shapes
    assert line.x0 == line.x1 == 1.0 and [a.text for a in ratio.layout.annotations] == ["no structure"]


def test_forest_plot_colours_other_kinds_apart_from_the_named_ones():
    rows = [("own language", 0.11, 0.08, 0.14, "trained"), ("same family", 0.10, 0.07, 0.13, "same family"),
            ("other families", 0.02, 0.00, 0.04, "other family"),
            ("random sets (20 draws, 2.5-97.5%)", 0.01, -0.01, 0.30, "control")]
    fig = mi.plots.forest_plot(rows, title="Ablating deu's exclusive experts", x_title="change in bits/byte")
    assert [t.name for t in fig.data] == ["trained", "control", "same family", "other family"]
    assert len({t.marker.color.lower() for t in fig.data}) == 4


@pytest.mark.parametrize("rows, match", [
    ([("a", 0.5, 0.6, 0.9, "trained")], r"low <= estimate <= high, got 0.5 \[0.6, 0.9\]"),
    ([("a", 0.5, 0.1, 0.9, "trained"), ("a", 0.2, 0.1, 0.3, "control")], r"unique.*\['a'\]"),
    ([("a", 0.5, 0.1, 0.9)], "has 4 fields"),
    ([{"label": "a", "estimate": 0.5, "low": 0.1, "high": 0.9}], "lacks 'kind'"),
    ([], "at least one row"),
    ([("a", float("nan"), 0.1, 0.9, "trained")], "finite"),
])
def test_forest_plot_refuses_rows_it_cannot_draw_honestly(rows, match):
    with pytest.raises(ValueError, match=match):
        mi.plots.forest_plot(rows, title="t", x_title="x")


LANGS = ["eng", "fin", "deu", "tur", "nld", "est"]
FAMILIES = {"eng": "Germanic", "deu": "Germanic", "nld": "Germanic", "fin": "Uralic", "est": "Uralic",
            "tur": "Turkic"}


def test_language_layer_heatmap_keeps_the_given_order_without_families():
    matrix = np.arange(18).reshape(6, 3)
    fig = mi.plots.language_layer_heatmap(matrix, LANGS, [2, 3, 4], title="Exclusive experts per layer",
                                          colorbar="exclusive experts (count)")
    (heat,) = fig.data
    assert list(heat.y) == LANGS and list(heat.x) == [2, 3, 4] and heat.z.tolist() == matrix.tolist()
    assert fig.layout.xaxis.title.text == "MoE layer" and fig.layout.yaxis.title.text == "language"
    assert heat.colorbar.title.text == "exclusive experts (count)" and heat.zmin == 0
    assert not fig.layout.annotations and not fig.layout.shapes


def test_language_layer_heatmap_groups_rows_by_family_and_names_each_group():
    matrix = torch.arange(18.0).reshape(6, 3)                             # row i holds 3i, 3i+1, 3i+2
    fig = mi.plots.language_layer_heatmap(matrix, LANGS, [0, 1, 2], title="t", colorbar="c", families=FAMILIES)
    (heat,) = fig.data
    # families alphabetical (Germanic, Turkic, Uralic), the given order within each
    assert list(heat.y) == ["eng", "deu", "nld", "tur", "fin", "est"]
    assert heat.z.tolist() == [matrix[LANGS.index(l)].tolist() for l in heat.y]   # each row moved with its label
    assert [(a.text, a.y) for a in fig.layout.annotations] == [("Germanic", 1.0), ("Turkic", 3.0), ("Uralic", 4.5)]
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(2.5, 2.5), (3.5, 3.5)]       # lines between the groups
    assert fig.layout.yaxis.autorange == "reversed"                                   # first row on top


def test_language_layer_heatmap_looks_up_families_the_mapping_lacks():
    fig = mi.plots.language_layer_heatmap(np.ones((3, 2)), ["fin", "deu", "nld"], [0, 1], title="t", colorbar="c",
                                          families={"fin": "Uralic"})
    assert list(fig.data[0].y) == ["deu", "nld", "fin"]                  # Indo-European (from the table) < Uralic
    assert [a.text for a in fig.layout.annotations] == [mi.languages.info("deu").family, "Uralic"]


def test_language_layer_heatmap_refuses_a_matrix_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but 3 languages x 3 layers"):
        mi.plots.language_layer_heatmap(np.zeros((2, 3)), ["a", "b", "c"], [0, 1, 2], title="t", colorbar="c")


def test_the_exclusive_experts_of_a_profile_draw_as_one_heatmap():
    stats = mi.datasets.reference_stats()                                  # the paper's released MGSM counts
    prof = stats.layer_profile()
    fig = mi.plots.language_layer_heatmap(prof.exclusive, stats.languages, prof.layers, title="t", colorbar="c",
                                          families={})
    (heat,) = fig.data
    order = list(heat.y)
    assert sorted(order) == sorted(stats.languages) and len(heat.x) == len(prof.layers) == 48
    for language, row in zip(order, heat.z):
        assert row.tolist() == prof.exclusive[list(stats.languages).index(language)].tolist()
