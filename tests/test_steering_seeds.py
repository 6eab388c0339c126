"""Steering evidence a referee would sign: routing moved on the steered layers, the dose-response
worded by rule, and the recipe's steering claims across training seeds (issue 24, section 4)."""

import numpy as np
import pandas as pd
import pytest

import moe_interp as mi
from conftest import tiny
from moe_interp.experiments._steering import steering_bars

TRAIN = {"eng": ["The cat sat on the mat.", "Dogs bark at night.", "The sun is hot today."],
         "deu": ["Die Katze schlaeft hier.", "Hunde bellen laut.", "Die Sonne ist heiss."]}
DEV = {"eng": ["A bird sings.", "Rain falls on the roof."], "deu": ["Ein Vogel singt.", "Regen faellt aufs Dach."]}
TEST = {"eng": ["Fish swim in the sea.", "The old man reads a book."],
        "deu": ["Fische schwimmen im Meer.", "Der alte Mann liest ein Buch.", "Baeume wachsen hoch."]}


# -- routing moved: a mean over the steered layers only ------------------------------------------

def test_dose_response_of_a_middle_band_steer_averages_the_middle_band_only():
    model = tiny("qwen3_moe")                                    # MoE layers 0-3, middle band 1-2
    profile = mi.profile(model, TRAIN, progress=False)
    res = mi.steering_eval(model, profile, DEV, TEST, ["deu"], target="eng", scales=(0.0, 50.0), layers="middle",
                           k=4, resamples=50, progress=False)
    row = res.dose_response().set_index("scale").loc[50.0]
    # the hand-written mean of the per-layer columns of the two steered layers
    assert row.changed == pytest.approx((row.changed_L1 + row.changed_L2) / 2)
    assert row.mass_moved == pytest.approx((row.mass_moved_L1 + row.mass_moved_L2) / 2)
    # layer 0 is upstream of the steer (untouched), layer 3 only moves downstream of it
    assert row.changed_L0 == 0 and row.mass_moved_L0 == 0 and row.mass_moved_L3 == 0
    assert row.changed_L1 > 0


def _result(changed, tokens, gains, steered_layers, scale=0.0, dev_scores=None):
    """A SteeringResult from planted per-(scale, language, layer) shares of top-k sets changed
    (`changed[scale][language] = [share per layer]`, mass moved = half of it)."""
    rows = [dict(scale=s, language=lang, layer=layer, changed=share, mass_moved=share / 2, tokens=tokens[lang])
            for s, per_lang in changed.items() for lang, shares in per_lang.items()
            for layer, share in enumerate(shares)]
    return mi.experiments.SteeringResult(scale, dev_scores or {s: 3.0 for s in changed}, None, shift=pd.DataFrame(rows),
                                        gains={s: [np.asarray(g) for g in per] for s, per in gains.items()},
                                        resamples=2000, steered_layers=steered_layers)


def test_dose_response_weights_languages_by_tokens_and_averages_the_steered_layers_of_a_planted_shift():
    # layer 0 upstream (nothing moves), layers 1-2 steered, layer 3 downstream (moves, unsteered)
    changed = {1.0: {"deu": [0.0, 0.2, 0.4, 0.9], "fra": [0.0, 0.6, 0.8, 0.9]}}
    res = _result(changed, {"deu": 30, "fra": 10}, {1.0: [[0.1, 0.2], [0.0, 0.1]]}, steered_layers=(1, 2))
    row = res.dose_response().iloc[0]
    layer1, layer2 = (0.2 * 30 + 0.6 * 10) / 40, (0.4 * 30 + 0.8 * 10) / 40   # token-weighted over languages
    assert row.steered_layers == "L1-L2"
    assert row.changed == pytest.approx((layer1 + layer2) / 2)
    assert row.mass_moved == pytest.approx((layer1 + layer2) / 4)
    assert row.changed_L1 == pytest.approx(layer1) and row.changed_L3 == pytest.approx(0.9)   # per layer kept
    everything = (0 + layer1 + layer2 + 0.9) / 4                             # what the previous code reported
    assert row.changed != pytest.approx(everything)
    assert "mean over the steered layers L1-L2" in res.summary()


def test_a_result_built_without_steered_layers_averages_every_layer_and_says_so():
    res = _result({1.0: {"deu": [0.1, 0.3]}}, {"deu": 10}, {1.0: [[0.1, 0.2]]}, steered_layers=None)
    row = res.dose_response().iloc[0]
    assert (row.steered_layers, row.changed) == ("L0-L1", pytest.approx(0.2))


def test_steered_layers_outside_the_shift_are_refused_with_the_layers_it_has():
    res = _result({1.0: {"deu": [0.1, 0.3]}}, {"deu": 10}, {1.0: [[0.1, 0.2]]}, steered_layers=(1, 5))
    with pytest.raises(ValueError, match=r"subset of the shift's layers \[0, 1\] \(missing \[5\]\)"):
        res.dose_response()


# -- wording by rule ----------------------------------------------------------------------------

def _dose(*rows):
    return [dict(scale=s, changed=c, mass_moved=c / 2, gain=g, gain_low=lo, gain_high=hi) for s, c, g, lo, hi in rows]


def test_routing_is_monotone_when_sets_changed_never_decrease_and_never_said_to_be_proportional():
    dose = _dose((0.0, 0.0, 0, 0, 0), (0.25, 0.076, 0, -1, 1), (1.0, 0.2, 0, -1, 1), (4.0, 0.397, 0, -1, 1))
    (routing, *_) = mi.experiments.dose_response_findings(dose)
    assert routing.startswith("Routing moved monotonically with scale")
    assert "16x the scale changed 5.2x the sets" in routing and "proportion" not in routing
    ties = _dose((1.0, 0.2, 0, -1, 1), (2.0, 0.2, 0, -1, 1))               # non-decreasing: a tie is monotone
    assert mi.experiments.dose_response_findings(ties)[0].startswith("Routing moved monotonically")
    dip = _dose((1.0, 0.3, 0, -1, 1), (2.0, 0.2, 0, -1, 1), (4.0, 0.5, 0, -1, 1))
    assert mi.experiments.dose_response_findings(dip)[0].startswith("Routing did not move monotonically with scale")
    still = _dose((0.0, 0.0, 0, 0, 0), (1.0, 0.0, 0, -1, 1))
    assert mi.experiments.dose_response_findings(still)[0].startswith("Routing did not move at any scale")


def test_each_steered_scale_is_improved_worsened_or_no_effect_by_its_interval():
    dose = _dose((0.0, 0.0, 0, 0, 0), (0.25, 0.1, 0.009, 0.002, 0.017), (0.5, 0.2, -0.001, -0.004, 0.003),
                 (1.0, 0.3, -0.05, -0.06, -0.03), (4.0, 0.4, -0.2, -0.23, -0.18))
    outcome = mi.experiments.dose_response_findings(dose, level=0.9)[1]
    assert outcome == ("Outcome (gain = baseline - steered bits/byte, 90% CI over test texts): improved at scale 0.25 "
                       "(+0.0090 [+0.0020, +0.0170]); worsened at scales 1 (-0.0500 [-0.0600, -0.0300]) and 4 "
                       "(-0.2000 [-0.2300, -0.1800]); no effect on the outcome at scale 0.5 (-0.0010 [-0.0040, "
                       "+0.0030]) (interval across 0).")


def test_the_chosen_scale_is_named_with_its_dev_score_and_its_test_outcome():
    dose = _dose((0.0, 0.0, 0, 0, 0), (0.5, 0.2, -0.001, -0.004, 0.003))
    find = mi.experiments.dose_response_findings
    assert find(dose, 0, {0: 2.25, 0.5: 2.26})[-1] == ("The dev split chose scale 0 (lowest mean dev bits/byte, "
                                                          "2.2500): nothing is steered at the chosen scale.")
    assert find(dose, 0.5, {0.0: 2.27, 0.5: 2.26})[-1] == (
        "The dev split chose scale 0.5 (lowest mean dev bits/byte, 2.2600); on the test split at that scale the "
        "outcome did not move (interval across 0), gain -0.0010 [-0.0040, +0.0030].")


def test_findings_of_a_result_follow_its_planted_gains():
    rng = np.random.default_rng(0)
    changed = {0.0: {"deu": [0.0, 0.0]}, 1.0: {"deu": [0.1, 0.3]}, 4.0: {"deu": [0.2, 0.6]}}
    gains = {0.0: [np.zeros(30)], 1.0: [rng.normal(0.5, 0.1, 30)], 4.0: [rng.normal(-0.5, 0.1, 30)]}
    res = _result(changed, {"deu": 30}, gains, steered_layers=(1,), scale=1.0,
                  dev_scores={0.0: 3.0, 1.0: 2.5, 4.0: 3.5})
    routing, outcome, chosen = res.findings()
    assert routing == ("Routing moved monotonically with scale (share of top-k sets changed, mean over the steered "
                       "layers L1): 0.0% at 0, 30.0% at 1, 60.0% at 4; 4x the scale changed 2x the sets.")
    assert "improved at scale 1 (" in outcome and "worsened at scale 4 (" in outcome
    assert chosen.startswith("The dev split chose scale 1 (lowest mean dev bits/byte, 2.5000); on the test split at "
                             "that scale the outcome improved, gain +0.4")
    assert res.summary().endswith(chosen)


# -- across training seeds ------------------------------------------------------------------------

# the shipped demo's eval.json dose-responses (seed 0 and the retrained seeds 1, 2; before this change)
SEEDS = {
    0: {"scale": 0.0, "dose_response": _dose((0.0, 0.0, 0.0, 0.0, 0.0), (0.25, 0.07588, 0.00926, 0.00185, 0.01651),
                                             (1.0, 0.20588, -0.04556, -0.06096, -0.02996),
                                             (4.0, 0.39699, -0.20467, -0.22702, -0.18066))},
    1: {"scale": 0.0, "dose_response": _dose((0.0, 0.0, 0.0, 0.0, 0.0), (0.25, 0.07643, -0.00253, -0.00916, 0.00384),
                                             (1.0, 0.21022, -0.06712, -0.07921, -0.05576),
                                             (4.0, 0.39495, -0.22746, -0.25142, -0.20443))},
    2: {"scale": 0.0, "dose_response": _dose((0.0, 0.0, 0.0, 0.0, 0.0), (0.25, 0.09516, -0.00299, -0.01055, 0.00536),
                                             (1.0, 0.25896, -0.06822, -0.08488, -0.05013),
                                             (4.0, 0.43834, -0.2344, -0.25792, -0.20787))},
}


def test_dose_response_across_has_a_row_per_scale_and_seed_and_counts_the_seeds_by_interval():
    table = mi.experiments.dose_response_across(SEEDS)
    assert list(zip(table.scale, table.seed)) == [(s, seed) for s in (0.0, 0.25, 1.0, 4.0) for seed in (0, 1, 2)]
    quarter = table[table.scale == 0.25]
    assert list(quarter.gain) == [0.00926, -0.00253, -0.00299]
    assert list(quarter.outcome) == ["improved", "no effect", "no effect"]
    # by hand: the intervals above 0 / below 0 per scale
    for scale, part in table.groupby("scale"):
        rows = [r for s in SEEDS.values() for r in s["dose_response"] if r["scale"] == scale]
        assert set(part.seeds_improved) == {sum(r["gain_low"] > 0 for r in rows)}
        assert set(part.seeds_worsened) == {sum(r["gain_high"] < 0 for r in rows)}
        assert set(part.n_seeds) == {3}
    assert table.set_index(["scale", "seed"]).loc[(1.0, 2), "seeds_worsened"] == 3
    assert list(table[table.chosen].scale) == [0.0, 0.0, 0.0]          # from eval.json's "scale"


def test_dose_response_across_takes_dataframes_and_an_explicit_chosen_scale():
    frames = {f"s{i}": pd.DataFrame(SEEDS[i]["dose_response"]) for i in SEEDS}
    table = mi.experiments.dose_response_across(frames, chosen={"s0": 0.25, "s1": 0, "s2": 0})
    assert list(table[table.chosen].seed) == ["s1", "s2", "s0"]        # sorted by scale, then seed order
    with pytest.raises(ValueError, match=r"not for \['s1', 's2'\]"):
        mi.experiments.dose_response_across(frames, chosen={"s0": 0.25})
    with pytest.raises(ValueError, match=r"lacks the columns \['gain_low'\]"):
        mi.experiments.dose_response_across({0: pd.DataFrame(SEEDS[0]["dose_response"]).drop(columns="gain_low")})
    with pytest.raises(ValueError, match="non-empty mapping"):
        mi.experiments.dose_response_across({})


def test_findings_across_seeds_say_in_how_many_seeds_and_which():
    find = mi.experiments.dose_response_across_findings
    assert find(mi.experiments.dose_response_across(SEEDS)) == [
        "Improved at scale 0.25 in 1 of 3 seeds (seed 0); seeds 1 and 2: intervals across 0.",
        "Worsened at scale 1 in 3 of 3 seeds (seeds 0, 1 and 2).",
        "Worsened at scale 4 in 3 of 3 seeds (seeds 0, 1 and 2).",
        "Routing moved monotonically with scale (top-k sets changed) in 3 of 3 seeds.",
        "The dev split chose scale 0 in 3 of 3 seeds.",
    ]
    mixed = {0: _dose((1.0, 0.3, 0.1, 0.05, 0.2), (2.0, 0.2, -0.1, -0.2, 0.1)),
             1: _dose((1.0, 0.3, -0.1, -0.2, -0.05), (2.0, 0.4, -0.1, -0.2, 0.1)),
             2: _dose((1.0, 0.3, 0.0, -0.1, 0.1), (2.0, 0.4, -0.1, -0.2, 0.1))}
    assert find(mixed) == [
        "Improved at scale 1 in 1 of 3 seeds (seed 0); worsened at scale 1 in 1 of 3 seeds (seed 1); seed 2: "
        "interval across 0.",
        "No effect on the outcome at scale 2 in any of the 3 seeds (intervals across 0).",
        "Routing moved monotonically with scale (top-k sets changed) in 2 of 3 seeds (not in seed 0).",
    ]
    chosen = find(mi.experiments.dose_response_across(mixed, chosen={0: 1.0, 1: 2.0, 2: 2.0}))[-1]
    assert chosen == "The dev split chose scale 1 in seed 0; scale 2 in seeds 1 and 2."


def test_the_seeds_figure_draws_each_seeds_values_and_intervals_against_the_scale():
    fig = mi.experiments.dose_response_seeds_figure(SEEDS)
    routing, gain = fig.data[0::2], fig.data[1::2]
    assert [t.name for t in routing] == ["seed 0", "seed 1", "seed 2"] == [t.name for t in gain]
    for trace, seed in zip(routing, SEEDS.values()):
        assert list(trace.x) == ["0", "0.25", "1", "4"]
        assert list(trace.y) == [r["changed"] for r in seed["dose_response"]]
        assert trace.line.color == gain[list(SEEDS.values()).index(seed)].line.color    # one colour per seed
    for trace, seed in zip(gain, SEEDS.values()):
        rows = seed["dose_response"]
        assert list(trace.y) == [r["gain"] for r in rows]
        assert list(trace.error_y.array) == pytest.approx([r["gain_high"] - r["gain"] for r in rows])
        assert list(trace.error_y.arrayminus) == pytest.approx([r["gain"] - r["gain_low"] for r in rows])
        assert list(trace.marker.symbol) == ["star", "circle", "circle", "circle"]     # chosen on dev: 0
    zero = [s for s in fig.layout.shapes if s.y0 == 0 == s.y1]
    assert len(zero) == 1 and zero[0].xref == "x2 domain"                           # y = 0 on the gain panel
    assert fig.layout.xaxis.title.text.startswith("steering scale") and fig.layout.xaxis.type == "category"


def test_a_result_whose_dev_split_chose_scale_0_plots_every_scale_not_an_empty_chart():
    changed = {0.0: {"deu": [0.0, 0.0]}, 1.0: {"deu": [0.1, 0.3]}}
    res = _result(changed, {"deu": 10}, {0.0: [np.zeros(4)], 1.0: [[-0.1, -0.2, -0.3, -0.2]]}, steered_layers=(1,))
    fig = res.plot()
    assert res.scale == 0.0 and list(fig.data[0].x) == ["0", "1"] and list(fig.data[0].y) == [0.0, 0.3]
    assert list(fig.data[1].y) == pytest.approx([0.0, -0.2])
    with pytest.raises(ValueError, match="scale 0 steers nothing"):
        steering_bars(mi.experiments.SteeringResult(0.0, {}, pd.DataFrame(
            {"language": ["deu"], "gain": [0.0], "ci_low": [0.0], "ci_high": [0.0]})))


def test_a_result_without_a_shift_says_what_a_dose_response_needs():
    with pytest.raises(ValueError, match="no shift"):
        mi.experiments.SteeringResult(0.5, {}, None).dose_response()
