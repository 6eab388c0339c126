"""Ablation verdicts (issue 24, section 1) and the held-out check (section 6), on planted data.

The verdict tests build `AblationResult` frames by hand (no model): each planted effect is
known, so each verdict rule is checked on a case that must reach it and on one that must not.
"""

from collections import Counter

import numpy as np
import pytest
import torch

import moe_interp as mi
from moe_interp.experiments._grid import check_held_out


# -- check_held_out: overlapping texts, not only an identical list ---------------------------------

def test_check_held_out_refuses_an_overlap_names_the_count_the_languages_and_the_fix():
    model = mi.zoo.tiny_model("qwen3_moe")
    train = {"eng": ["The cat sat.", "Dogs bark.", "Birds sing."], "deu": ["Die Katze.", "Hunde bellen."]}
    profile = mi.profile(model, train, progress=False)
    overlapping = {"eng": ["Dogs bark.", "Fish swim.", "Birds sing."], "deu": ["Ein Vogel.", "Der Mann."]}
    with pytest.raises(ValueError) as error:
        check_held_out(profile, overlapping)
    message = str(error.value)
    assert "2 of the 5 evaluation texts" in message and "eng: 2 of 3" in message and "deu" not in message
    assert "allow_same_texts=True" in message and "held-out split" in message
    check_held_out(profile, overlapping, allow=True)                      # knowingly: no error
    check_held_out(profile, {"eng": ["Fish swim."], "deu": ["Ein Vogel."]})  # disjoint: fine


def test_check_held_out_catches_a_text_profiled_under_another_language():
    model = mi.zoo.tiny_model("qwen3_moe")
    profile = mi.profile(model, {"eng": ["The cat sat.", "Hallo Welt."]}, progress=False)
    with pytest.raises(ValueError, match=r"deu: 1 of 2"):
        check_held_out(profile, {"deu": ["Hallo Welt.", "Ein Vogel."]})


def test_check_held_out_still_refuses_the_identical_list_and_passes_stats_without_fingerprints():
    model = mi.zoo.tiny_model("qwen3_moe")
    profile = mi.profile(model, {"eng": ["The cat sat.", "Dogs bark."]}, progress=False)
    with pytest.raises(ValueError, match=r"eng: 2 of 2"):
        check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})
    profile.meta.pop("text_hashes", None)  # an older profile: only the list's fingerprint
    with pytest.raises(ValueError, match=r"eng: 2 of 2"):
        check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})
    check_held_out(profile, {"eng": ["The cat sat.", "Fish swim."]})     # cannot tell: passes unchecked
    profile.meta.clear()
    check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})


# -- verdicts on planted per-text effects ----------------------------------------------------------

FAMILIES = {"eng": "Indo-European", "deu": "Indo-European", "fin": "Uralic", "tur": "Turkic"}
BAND = "middle-third"


def _planted(costs, draws, texts=30, noise=0.02, bands=(BAND,), pairs=4, seed=0):
    """An AblationResult of eng's exclusive experts ablated in `bands`: `costs[language]` is
    the planted bits/byte cost on each evaluated language (per band: a dict band -> cost),
    `draws` the planted cost of each random draw on eng's own texts."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for lang, cost in costs.items():
        for i in range(texts):
            base = 3 + rng.normal(0, 0.3)
            rows.append(dict(language=lang, condition="baseline", item=i, bits_per_byte=base))
            for band in bands:
                c = cost[band] if isinstance(cost, dict) else cost
                rows.append(dict(language=lang, condition=f"ablate:eng:{band}", item=i,
                                 bits_per_byte=base + c + rng.normal(0, noise)))
                if lang == "eng":
                    rows += [dict(language=lang, condition=f"control:eng:{band}:{d}", item=i,
                                  bits_per_byte=base + draw + rng.normal(0, noise)) for d, draw in enumerate(draws)]
    languages = tuple(costs)
    return mi.experiments.AblationResult(
        languages, tuple(("eng", b) for b in bands), {}, np.zeros((len(languages), len(bands))),
        {("eng", b): pairs for b in bands}, pd.DataFrame(rows), controls=len(draws), resamples=2000,
        among=("eng", "deu", "fin", "tur", "sah"), profiled=5, families={l: FAMILIES[l] for l in languages},
        layers={"early-third": (0, 1), "middle-third": (2, 3, 4), "late-third": (5, 6)})


QUIET = [0.0] * 20  # 20 random draws that cost nothing


@pytest.mark.parametrize("costs, draws, verdict", [
    ({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, QUIET, "language-specific"),
    ({"eng": 0.5, "deu": 0.5, "fin": 0.0, "tur": 0.0}, QUIET, "family-level"),      # a relative hurt as much
    ({"eng": 0.5, "deu": 0.7, "fin": 0.0, "tur": 0.0}, QUIET, "family-level"),      # ... or more
    ({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, [0.5] * 20, "not specific"),  # any matched set hurts as much
    ({"eng": 0.5, "deu": 0.0, "fin": 0.5, "tur": 0.5}, QUIET, "not specific"),      # other families as much
    ({"eng": 0.0, "deu": 0.0, "fin": 0.0, "tur": 0.0}, QUIET, "no effect"),
    ({"eng": -0.3, "deu": 0.0, "fin": 0.0, "tur": 0.0}, QUIET, "no effect"),        # it helps: no harm
    ({"eng": 0.5, "fin": 0.0, "tur": 0.0}, QUIET, "specific, no relative evaluated"),
])
def test_each_verdict_rule_on_planted_effects(costs, draws, verdict):
    row = _planted(costs, draws).verdicts().iloc[0]
    assert (row.language, row.band, row.layers, row.verdict) == ("eng", BAND, (2, 3, 4), verdict)
    assert row.own == pytest.approx(costs["eng"], abs=0.02)
    assert row.random == pytest.approx(np.mean(draws), abs=0.02)


def test_comparators_split_by_family_with_language_level_intervals():
    # deu and nld (eng's family) cost 0.0 and 0.4 with no text noise: a text-level interval of their
    # mean would be the point 0.2; resampling the two languages gives means 0, 0.2, 0.4 (1/4, 1/2, 1/4)
    import pandas as pd

    rows = []
    for lang, cost in {"eng": 0.5, "deu": 0.0, "nld": 0.4, "fin": 0.1, "tur": 0.1}.items():
        for i in range(10):
            rows += [dict(language=lang, condition="baseline", item=i, bits_per_byte=3.0),
                     dict(language=lang, condition=f"ablate:eng:{BAND}", item=i, bits_per_byte=3.0 + cost)]
    rows += [dict(language="eng", condition=f"control:eng:{BAND}:{d}", item=i, bits_per_byte=3.0)
             for d in range(20) for i in range(10)]
    families = {**FAMILIES, "nld": "Indo-European"}
    result = mi.experiments.AblationResult(("eng", "deu", "nld", "fin", "tur"), (("eng", BAND),), {}, np.zeros((5, 1)),
                                          {("eng", BAND): 4}, pd.DataFrame(rows), controls=20, resamples=4000,
                                          families=families)
    row = result.verdicts().iloc[0]
    assert (row.same_family_languages, row.other_family_languages) == ("deu, nld", "fin, tur")
    assert (row.same_family, row.same_family_low, row.same_family_high) == pytest.approx((0.2, 0.0, 0.4))
    assert (row.other_family, row.other_family_low, row.other_family_high) == pytest.approx((0.1, 0.1, 0.1))
    assert (row.own_minus_same_family_low, row.own_minus_same_family_high) == pytest.approx((0.1, 0.5))
    assert row.own_minus_other_family == pytest.approx(0.4) and row.verdict == "language-specific"


def test_intervals_agree_with_scipy_for_texts_and_a_hand_written_two_stage_bootstrap_for_languages():
    import scipy.stats

    result = _planted({"eng": 0.5, "deu": 0.0, "fin": 0.1, "tur": 0.3}, QUIET, noise=0.2)
    row = result.verdicts().iloc[0]
    table = result.frame.pivot_table(index=["language", "item"], columns="condition", values="bits_per_byte")
    effect = {l: (table.loc[l][f"ablate:eng:{BAND}"] - table.loc[l]["baseline"]).to_numpy() for l in FAMILIES}
    own = effect["eng"]
    expected = scipy.stats.bootstrap((own,), np.mean, n_resamples=20000, method="percentile",
                                     random_state=np.random.default_rng(7)).confidence_interval
    width = expected.high - expected.low
    assert row.own == pytest.approx(own.mean())
    assert (row.own_low, row.own_high) == pytest.approx((expected.low, expected.high), abs=0.06 * width)
    # other families (fin, tur): languages drawn with replacement, then each drawn language's texts
    rng = np.random.default_rng(11)
    others = [effect["fin"], effect["tur"]]

    def two_stage():
        return np.mean([others[g][rng.integers(0, len(others[g]), len(others[g]))].mean()
                        for g in rng.integers(0, 2, 2)])

    other = np.array([two_stage() for _ in range(20000)])
    own_draws = np.array([own[rng.integers(0, len(own), len(own))].mean() for _ in range(20000)])
    low, high = np.quantile(other, [0.025, 0.975])
    assert row.other_family == pytest.approx(np.mean([o.mean() for o in others]))
    assert (row.other_family_low, row.other_family_high) == pytest.approx((low, high), abs=0.06 * (high - low))
    low, high = np.quantile(own_draws - other, [0.025, 0.975])
    assert (row.own_minus_other_family_low, row.own_minus_other_family_high) == pytest.approx(
        (low, high), abs=0.06 * (high - low))
    assert row.own_minus_other_family == pytest.approx(own.mean() - np.mean([o.mean() for o in others]))


def test_random_draws_are_a_distribution_not_a_mean():
    # 17 draws cost nothing, 3 cost more than eng's own experts: the draws' mean (0.12) is far below
    # the own effect (0.5), but 3 of 20 sets hurt more: rank p = (1 + 3) / 21
    draws = [0.0] * 17 + [0.8] * 3
    row = _planted({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, draws, noise=0.0).verdicts().iloc[0]
    assert row.random == pytest.approx(0.12) and row.random_p == pytest.approx(4 / 21)
    assert (row.random_low, row.random_high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert row.verdict == "not specific"


def test_fewer_draws_than_the_level_allows_cannot_pass_and_the_summary_says_so():
    result = _planted({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, [0.0] * 5)
    row = result.verdicts().iloc[0]
    assert row.random_p == pytest.approx(1 / 6) and row.verdict == "not specific"
    assert "Only 5 random draws" in result.summary() and "controls >= 19" in result.summary()
    assert _planted({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, [0.0] * 19).verdicts().iloc[0].verdict \
        == "language-specific"                          # 19 draws: p = 1/20 = 0.05 reaches alpha


def test_nothing_ablated_is_said_as_such_not_as_no_effect():
    row = _planted({"eng": 0.5, "deu": 0.0, "fin": 0.0, "tur": 0.0}, QUIET, pairs=0).verdicts().iloc[0]
    assert row.pairs == 0 and row.verdict == "nothing to ablate"


def test_verdicts_are_per_band_by_default_and_pooled_only_when_asked():
    bands = ("early-third", "middle-third", "late-third")
    eng = {"early-third": 0.0, "middle-third": 0.5, "late-third": 0.5}
    deu = {"early-third": 0.0, "middle-third": 0.0, "late-third": 0.5}
    result = _planted({"eng": eng, "deu": deu, "fin": 0.0, "tur": 0.0}, QUIET, bands=bands)
    table = result.verdicts()
    assert list(zip(table.band, table.layers, table.verdict)) == [
        ("early-third", (0, 1), "no effect"), ("middle-third", (2, 3, 4), "language-specific"),
        ("late-third", (5, 6), "family-level")]
    assert list(result.verdicts(band="late-third").verdict) == ["family-level"]
    pooled = result.verdicts(pooled=True)
    assert len(pooled) == 1 and pooled.band[0] == "early-third+middle-third+late-third"
    assert pooled.layers[0] == (0, 1, 2, 3, 4, 5, 6) and pooled.own[0] == pytest.approx(1 / 3, abs=0.01)
    text = result.summary()
    assert "exclusive among 5 of the 5 profiled languages" not in text
    assert "exclusive among the 5 profiled languages" in text
    assert "middle-third (layers 2-4)" in text and "late-third (layers 5-6)" in text
    assert f"{table.own_low[1]:+.4f}" in text and "family-level" in text


def test_a_verdict_needs_an_evaluated_language_of_another_family():
    result = _planted({"eng": 0.5, "deu": 0.0}, QUIET)
    with pytest.raises(ValueError, match=r"another family than eng \(Indo-European\)"):
        result.verdicts()


# -- usage-matched random sets ---------------------------------------------------------------------

from moe_interp.experiments._ablation import random_expert_set  # noqa: E402

USAGE = {0: [(16 - e) / 16 for e in range(16)]}  # expert e's usage falls with e: 0 is the most used


def test_usage_matched_draws_are_closer_in_usage_than_uniform_draws():
    ablated = {0: [0, 1]}  # the two most used experts (usage 1.0 and 0.9375)
    target = np.mean([USAGE[0][0], USAGE[0][1]])

    def gap(usage):
        sets = [random_expert_set(ablated, 16, seed, usage=usage)[0] for seed in range(400)]
        return np.mean([target - np.mean([USAGE[0][e] for e in s]) for s in sets]), Counter(e for s in sets for e in s)

    matched, seen = gap(USAGE)
    uniform, seen_uniform = gap(None)
    # by hand: the first expert (in random order) draws among ranks 2-4, the second among the 3 nearest
    # left of ranks 2-5; the drawn pair's usage sums to 25.33/16 on average: gap 31/32 - 25.33/32 = 0.177
    assert matched == pytest.approx((31 - 228 / 9) / 32, abs=0.015)
    assert uniform == pytest.approx(0.5, abs=0.04)            # uniform over experts 2-15: mean usage 7.5/16
    assert set(seen) == {2, 3, 4, 5} and set(seen_uniform) == set(range(2, 16))


def test_usage_matched_draws_are_disjoint_same_size_and_deterministic_per_seed():
    usage = {3: [0.5, 0.1, 0.4, 0.3, 0.2, 0.6, 0.05, 0.0], 5: [0.1] * 8}
    chosen = {3: [0, 2, 5], 5: [7]}
    draws = [random_expert_set(chosen, 8, seed, usage=usage) for seed in range(200)]
    for s in draws:
        assert {l: len(s[l]) for l in s} == {3: 3, 5: 1}
        assert not set(s[3]) & {0, 2, 5} and 7 not in s[5]
    assert random_expert_set(chosen, 8, [4, 1], usage=usage) == random_expert_set(chosen, 8, [4, 1], usage=usage)
    assert len({tuple(s[3]) for s in draws}) > 1
    # layer 5: equal usage, ranked by index; expert 7 (rank 7) draws among ranks 6, 5, 4
    assert {e for s in draws for e in s[5]} == {4, 5, 6}
    # layer 3 by usage: 5, 0, 2 | 3, 4, 1, 6, 7: the nearest ranks are drawn most; ranks 6-7 only once
    # the nearer ones are taken by the other ablated experts of the same draw
    drawn = Counter(e for s in draws for e in s[3])
    assert min(drawn[3], drawn[4], drawn[1]) > max(drawn[6], drawn[7]) and drawn[7] < 0.6 * drawn[3]
    with pytest.raises(ValueError, match="one value per expert"):
        random_expert_set({4: [0]}, 8, 0, usage=usage)


# -- exclusivity among every profiled language; the grid end to end on a tiny model ---------------

TRAIN = {"eng": ["The cat sat on the mat.", "Dogs bark at night."], "deu": ["Die Katze schlaeft.", "Hunde bellen."],
         "fin": ["Kissa istuu matolla.", "Koirat haukkuvat."]}
TEST = {"eng": ["Fish swim in the sea.", "Trees grow tall."], "deu": ["Fische schwimmen.", "Baeume wachsen."],
        "fin": ["Kalat uivat meressa.", "Puut kasvavat."]}


def _planted_stats():
    """eng uses experts 1 (100 of 200 uses per layer) and 5 (60), fin 2 and 3, sah (profiled, not
    evaluated) 4 and 5 (100 each). Among eng and fin, expert 5 is eng's alone; among all three,
    sah uses it more: eng's share is 0.6 / 1.6 = 0.375, under the threshold 0.4."""
    count = torch.zeros(3, 4, 8, dtype=torch.long)
    count[0, :, 1], count[0, :, 5], count[0, :, 0] = 100, 60, 40
    count[1, :, 2], count[1, :, 3] = 100, 100
    count[2, :, 4], count[2, :, 5] = 100, 100
    return mi.RoutingStats(("eng", "fin", "sah"), (0, 1, 2, 3), 8, 2, count, count / 2.0,
                           torch.tensor([100, 100, 100]))


def test_exclusive_experts_are_exclusive_among_every_profiled_language_by_default():
    model = mi.zoo.tiny_model("qwen3_moe")
    stats = _planted_stats()
    kwargs = dict(bands=("middle-third",), k=2, controls=1, resamples=50, progress=False)
    res = mi.ablation_grid(model, stats, TEST, ["eng", "fin"], ["eng"], **kwargs)
    assert res.among == ("eng", "fin", "sah") and res.sets["ablate:eng:middle-third"] == {1: [1], 2: [1]}
    assert "exclusive among the 3 profiled languages" in res.summary()
    narrow = mi.ablation_grid(model, stats, TEST, ["eng", "fin"], ["eng"], among=["eng", "fin"], **kwargs)
    assert narrow.sets["ablate:eng:middle-third"] == {1: [1, 5], 2: [1, 5]}
    assert "exclusive among 2 of the 3 profiled languages (eng, fin)" in narrow.summary()


def test_ablation_grid_end_to_end_per_band_with_usage_matched_controls_independent_of_grid_order():
    model = mi.zoo.tiny_model("qwen3_moe")
    profile = mi.profile(model, TRAIN, progress=False)
    kwargs = dict(k=4, controls=3, resamples=200, progress=False)
    res = mi.ablation_grid(model, profile, TEST, ["eng", "deu", "fin"], ["eng", "fin"], **kwargs)
    assert res.layers == {"early-third": (0,), "middle-third": (1, 2), "late-third": (3,)}
    assert res.among == ("eng", "deu", "fin") and res.controls == 3 and res.match == 3
    table = res.verdicts()
    assert list(zip(table.language, table.band)) == [(l, b) for l in ("eng", "fin")
                                                     for b in ("early-third", "middle-third", "late-third")]
    assert list(table.same_family_languages) == ["deu"] * 3 + [""] * 3
    assert set(table.verdict) <= set(mi.experiments.VERDICTS) and (table.controls == 3).all()
    for name, control in res.sets.items():
        if not name.startswith("control:"):
            continue
        _, target, band, _ = name.split(":")
        chosen = res.sets[f"ablate:{target}:{band}"]
        assert {l: len(control[l]) for l in control} == {l: len(chosen[l]) for l in chosen}
        assert all(not set(control[l]) & set(chosen[l]) for l in chosen)
        assert set(res.frame[res.frame.condition == name].language) == {target}  # the target's texts only
    # another order of targets and bands: the same sets, draws and numbers per cell
    again = mi.ablation_grid(model, profile, TEST, ["eng", "deu", "fin"], ["fin", "eng"],
                             bands=("late-third", "middle-third", "early-third"), **kwargs)
    assert again.sets == res.sets
    other = again.verdicts().set_index(["language", "band"]).loc[list(zip(table.language, table.band))]
    assert other.own.to_numpy() == pytest.approx(table.own.to_numpy())
    assert other.own_low.to_numpy() == pytest.approx(table.own_low.to_numpy())
    assert other.random_p.to_numpy() == pytest.approx(table.random_p.to_numpy())
