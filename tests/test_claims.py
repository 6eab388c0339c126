"""Every claim the demo, the README and the model card print is worded by a rule from its numbers
(`moe_interp.experiments._claims`, issue 24 section 6): the rules on planted records, where the right words
are known, and the seed-level test against scipy."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

import moe_interp as mi
from moe_interp.experiments import _claims
from moe_interp.experiments.demo import DemoEvidence, _family_record


def _family(trained, twins, baseline, p=0.001, p_twins=0.4):
    """A family record: `trained`, each twin and the baseline as [est, low, high]; differences
    trained - control as the gap of the estimates with the trained interval's half-width."""
    half = (trained[2] - trained[1]) / 2
    controls = {**{f"twin {i + 1}": t for i, t in enumerate(twins)}, "byte 3-grams": baseline}
    return {"languages": 55, "families": 6, "layers": [2, 6], "level": 0.95, "unit": "language", "script": None,
            "ari": {"trained": trained, **controls,
                    "difference": {m: [trained[0] - v[0], trained[0] - v[0] - half, trained[0] - v[0] + half]
                                   for m, v in controls.items()},
                    "p_value": p, "p_value_controls": {f"twin {i + 1}": p_twins for i in range(len(twins))},
                    "baselines": {"byte 3-grams": baseline}}}


def test_a_family_statistic_is_above_every_control_only_when_every_difference_excludes_zero():
    clear = _claims.family_claim(_family([0.5, 0.45, 0.55], [[0.1, 0, 0.2]] * 3, [0.3, 0.25, 0.35]), "ari")
    assert clear["verdict"] == "above every control"
    assert "above every control (smallest difference: trained - byte 3-grams +0.200 [+0.150, +0.250])" in \
        clear["sentence"]
    # one twin as good as the trained model: not above it, and the sentence names it
    twin = _claims.family_claim(_family([0.5, 0.4, 0.6], [[0.1, 0, 0.2], [0.48, 0.4, 0.6], [0.1, 0, 0.2]],
                                        [0.3, 0.25, 0.35]), "ari")
    assert twin["verdict"] == "not above twin 2"
    assert "trained - twin 2 +0.020 [-0.080, +0.120] does not exclude 0, so it is not above twin 2" in twin["sentence"]
    # below a control: the difference lies below 0, and it says so without "does not exclude"
    below = _claims.family_claim(_family([0.2, 0.15, 0.25], [[0.0, -0.1, 0.1]], [0.4, 0.35, 0.45]), "ari")
    assert below["verdict"] == "not above byte 3-grams" and "does not exclude" not in below["sentence"]


def test_the_permutation_p_value_is_worded_as_structure_not_as_learning():
    text = _claims.family_claim(_family([0.5, 0.45, 0.55], [[0.1, 0, 0.2]], [0.3, 0.2, 0.4], p=0.001,
                                        p_twins=0.002), "ari")["sentence"]
    assert "structure exists; by itself this does not show that training made it" in text
    assert "twin 1 passes this test too" in text
    none = _claims.family_claim(_family([0.5, 0.45, 0.55], [[0.1, 0, 0.2]], [0.3, 0.2, 0.4], p=0.3), "ari")
    assert "does not group same-family languages more than chance" in none["sentence"]


@pytest.mark.parametrize("values, words", [
    ([(0.26, 0.19, 0.34), (0.15, 0.12, 0.17), (0.18, 0.15, 0.2), (0.22, 0.18, 0.28)], "U-shaped"),
    ([(0.2, 0.19, 0.21), (0.3, 0.28, 0.33), (0.33, 0.3, 0.35), (0.42, 0.38, 0.47)], "rises with depth"),
    ([(0.42, 0.38, 0.47), (0.3, 0.28, 0.33), (0.33, 0.3, 0.35), (0.2, 0.19, 0.21)], "falls with depth"),
    # a dip whose interval overlaps the first layer's is not a U
    ([(0.26, 0.14, 0.34), (0.15, 0.12, 0.17), (0.2, 0.15, 0.25), (0.22, 0.18, 0.28)], "flat within its intervals"),
])
def test_the_shape_over_depth_follows_the_intervals(values, words):
    assert _claims.shape(values, [0, 2, 4, 7]).split(":")[0] == words


def _ablation_row(language, band, verdict, same="deu, nld", **numbers):
    row = dict(language=language, family="Indo-European", band=band, layers=[3, 4], pairs=4, texts=12, own=0.1,
               own_low=0.08, own_high=0.12, same_family=0.02, same_family_low=0.01, same_family_high=0.03,
               same_family_languages=same, other_family=0.01, other_family_low=0.0, other_family_high=0.02,
               random=0.01, random_low=0.0, random_high=0.03, random_p=1 / 21, controls=20, verdict=verdict)
    return row | numbers


def test_an_ablation_claim_gives_each_band_its_verdict_and_layers():
    rows = [_ablation_row("eng", "early-third", "family-level", own=0.3, own_low=0.2, own_high=0.4, layers=[0, 1, 2]),
            _ablation_row("eng", "middle-third", "language-specific"),
            _ablation_row("eng", "late-third", "no effect", same="", own=0.0, own_low=-0.01, own_high=0.01,
                          layers=[5, 6, 7])]
    (claim,) = _claims.ablation_claims({"exclusive_among": "exclusive among the 55 profiled languages", "rows": rows})
    assert claim["verdict"] == "early-third: family-level; middle-third: language-specific; late-third: no effect"
    assert claim["controls"].startswith("early-third: same family +0.0200")     # the band with the largest own effect
    assert "late-third (layers 5-7): no effect" in claim["sentence"]
    assert "no same-family language evaluated" in claim["sentence"]
    assert "exclusive among the 55 profiled languages" in claim["sentence"]


def test_steering_claims_label_the_steered_layers_and_never_say_proportional():
    dose = [dict(scale=0.0, steered_layers="L2-L6", changed=0.0, mass_moved=0.0, gain=0.0, gain_low=0.0, gain_high=0.0,
                 verdict="no effect: routing did not move"),
            dict(scale=1.0, steered_layers="L2-L6", changed=0.2, mass_moved=0.1, gain=-0.05, gain_low=-0.06,
                 gain_high=-0.04, verdict="mechanism moved and the outcome worsened"),
            dict(scale=16.0, steered_layers="L2-L6", changed=0.4, mass_moved=0.2, gain=-0.2, gain_low=-0.22,
                 gain_high=-0.18, verdict="mechanism moved and the outcome worsened")]
    claims = _claims.steering_claims({"languages": ["deu"], "scale": 0.0, "dev_scores": {"0.0": 2.2, "1.0": 2.3,
                                                                                          "16.0": 2.6},
                                      "dose_response": dose})
    assert [c["claim"] for c in claims][0] == "steering deu toward hub-shared experts, scale 0 (chosen on dev)"
    assert claims[1]["controls"] == "top-k sets changed 20.0%, gate mass +0.100, mean over the steered layers L2-L6"
    assert "monotonically" in claims[0]["sentence"] and "proportion" not in claims[0]["sentence"]
    assert "16x the scale changed 2x the sets" in claims[0]["sentence"]


def _seed_record(trained, twins, verdicts):
    fam = _family([trained, trained - 0.05, trained + 0.05], [[t, t - 0.05, t + 0.05] for t in twins],
                  [0.1, 0.05, 0.15])
    return {"format": _claims.FORMAT, "family": {"all": fam},
            "ablation": {"rows": [_ablation_row(l, "middle-third", v) for l, v in verdicts.items()]}}


def test_recipe_claims_are_tested_at_the_seed_level_with_an_exact_rank_test():
    records = {0: _seed_record(0.30, [0.05, 0.10, 0.02], {"eng": "language-specific", "fin": "no effect"}),
               1: _seed_record(0.35, [0.12, 0.01, 0.04], {"eng": "family-level", "fin": "no effect"}),
               2: _seed_record(0.25, [0.20, 0.08, 0.03], {"eng": "language-specific", "fin": "not specific"})}
    rows = _claims.seed_claims(records)
    assert _claims.seed_header(records) == ["claim (held-out texts, 95% intervals)", "seed 0", "seed 1", "seed 2",
                                            "across seeds"]
    family = rows[0]
    trained, twins = [0.30, 0.35, 0.25], [0.05, 0.10, 0.02, 0.12, 0.01, 0.04, 0.20, 0.08, 0.03]
    p = mannwhitneyu(trained, twins, alternative="greater", method="exact").pvalue
    assert p == pytest.approx(1 / 220)
    assert f"exact rank test p = {p:.3g} (3 trained vs 9 twins; smallest possible {1 / 220:.3g})" in family[-1]
    assert f"trained - twins {np.mean(trained) - np.mean(twins):+.3f}" in family[-1]
    assert family[1].startswith("0.300 [0.250, 0.350]: above every control")
    ablation = rows[-1]
    assert ablation[0] == "ablation verdicts, middle-third (of 2 languages)"
    assert ablation[1:4] == ["1 language-specific, 1 no effect", "1 family-level, 1 no effect",
                             "1 language-specific, 1 not specific"]
    assert ablation[4] == "language-specific: 1, 0, 1 per seed"


def test_the_demo_record_of_a_family_evidence_names_the_strongest_baseline_and_pairs_the_differences():
    from moe_interp.analysis import FamilyEvidence

    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.05, 400)
    samples = np.stack([np.stack([0.6 + base, 2.0 + base]), np.stack([0.1 + rng.normal(0, 0.05, 400), 1.2 + base]),
                        np.stack([0.55 + base + rng.normal(0, 0.001, 400), 2.1 + base]),
                        np.stack([0.2 + base, 1.1 + base])]).transpose(2, 0, 1)     # [rep, model, stat]
    estimate = np.array([[0.6, 2.0], [0.1, 1.2], [0.55, 2.1], [0.2, 1.1]])
    ev = FamilyEvidence(("a", "b", "c", "d"), ("A", "A", "B", "B"), (2, 3),
                        ("trained", "twin 1", "byte 2-grams", "byte 1-grams"), estimate, samples,
                        np.full((4, 2), 0.01), 0.95, baselines=("byte 2-grams", "byte 1-grams"))
    record = json.loads(json.dumps(_family_record(ev)))
    assert sorted(record["ari"]["difference"]) == ["byte 2-grams", "twin 1"]        # the strongest baseline only
    low, high = np.quantile(samples[:, 0, 0] - samples[:, 2, 0], [0.025, 0.975])
    assert record["ari"]["difference"]["byte 2-grams"] == pytest.approx([0.05, low, high], abs=1e-6)
    claim = _claims.family_claim(record, "ari")
    assert claim["verdict"] == "above every control"                  # 0.05 with a paired spread of 0.001
    assert _claims.family_claim(record, "between_within")["verdict"] == "not above byte 2-grams"


def test_an_empty_demo_evidence_words_no_claims():
    ev = DemoEvidence(("eng",), {}, None, None, None, None, {})
    assert ev.claims() == [] and ev.rows() == []


def test_the_shipped_records_are_the_current_format_and_word_every_claim():
    from moe_interp.experiments.demo import seed_records

    records = seed_records()
    assert sorted(records) == [0, 1, 2]           # the shipped model and the two other seeds of the recipe
    for seed, record in records.items():
        claims = _claims.claims(record)
        assert claims and all(c["sentence"] and c["verdict"] for c in claims), seed
        assert not any("proportion" in c["sentence"] for c in claims)


def test_the_readme_claims_block_is_generated_from_the_shipped_records():
    from pathlib import Path

    from moe_interp.experiments.demo import seed_records

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = readme.index(_claims.README_START), readme.index(_claims.README_END) + len(_claims.README_END)
    assert readme[start:end] == _claims.readme_block(seed_records()), \
        "regenerate it: python scripts/train_demo_model.py --readme"
