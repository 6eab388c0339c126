"""Controls, intervals and baselines (issue 13, section 1), each checked against an independent
computation written here (numpy / scipy), on small hand-built fixtures."""

import zlib
from collections import Counter
from math import comb

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import jensenshannon, squareform

import moe_interp as mi
from moe_interp.analysis import family_evidence, interval, ngram_stats, paired_interval, risk_difference
from moe_interp.analysis import stratified_interval
from moe_interp.experiments import AblationResult, SteeringResult


# -- intervals ---------------------------------------------------------------------------------

def test_paired_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(1).normal(0.3, 1.0, 40)
    mine = paired_interval(values, resamples=20000, seed=0)
    theirs = scipy.stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile",
                                   random_state=np.random.default_rng(5)).confidence_interval
    width = theirs.high - theirs.low
    assert mine.estimate == pytest.approx(values.mean())
    assert mine.low == pytest.approx(theirs.low, abs=0.05 * width)
    assert mine.high == pytest.approx(theirs.high, abs=0.05 * width)


def test_paired_interval_p_value_is_twice_the_smaller_tail_share():
    values = np.array([1.0, -0.5, 0.2, 0.1, -0.1, 0.4])
    rng = np.random.default_rng(3)
    means = values[rng.integers(0, len(values), (20000, len(values)))].mean(1)
    expected = 2 * min((means <= 0).mean(), (means >= 0).mean())
    assert paired_interval(values, resamples=20000, seed=0).p_value == pytest.approx(expected, abs=0.02)


def test_stratified_interval_resamples_within_each_group():
    """The mean of group means; its bootstrap spread is sqrt(sum var_g / n_g) / G (each group's
    variance with ddof=0, the bootstrap's), so the interval is about +-1.96 of that."""
    rng = np.random.default_rng(2)
    groups = [rng.normal(0, 1, 60), rng.normal(2, 3, 90), rng.normal(-1, 0.5, 30)]
    result = stratified_interval(groups, resamples=20000, seed=1)
    se = np.sqrt(sum(g.var() / len(g) for g in groups)) / len(groups)
    estimate = np.mean([g.mean() for g in groups])
    assert result.estimate == pytest.approx(estimate)
    assert result.low == pytest.approx(estimate - 1.96 * se, abs=0.08 * se * 1.96)
    assert result.high == pytest.approx(estimate + 1.96 * se, abs=0.08 * se * 1.96)


def test_interval_is_the_percentile_interval_by_hand():
    samples = np.arange(1.0, 102.0)  # quantiles 0.025 / 0.975 of 1..101: 3.5 and 98.5
    assert interval(50.0, samples) == pytest.approx((3.5, 98.5))
    assert interval(60.0, samples) == pytest.approx((3.5, 98.5))  # the estimate does not move it
    with pytest.raises(ValueError, match="choice of interval kind was removed"):
        interval(1.0, samples, kind="normal")


@pytest.mark.parametrize("bad", [0, -1, True])
def test_resamples_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="resamples must be an integer >= 1"):
        paired_interval([1.0, 2.0], resamples=bad)


# -- family structure: fixtures, then the checks -------------------------------------------------

def _family_stats(planted: bool, languages: int = 12, families: int = 3, texts: int = 5, experts: int = 12, seed: int = 0):
    """Per-item routing counts over `languages` (family = index % families), one layer.

    planted: each family prefers its own block of experts; otherwise every language routes
    from the same distribution (no family structure at all)."""
    rng = np.random.default_rng(seed)
    names = tuple(f"l{i:02d}" for i in range(languages))
    fams = {n: "ABCDEFG"[i % families] for i, n in enumerate(names)}
    item = np.zeros((languages * texts, 1, experts), dtype=np.int64)
    for lang in range(languages):
        p = np.ones(experts)
        if planted:
            block = experts // families
            p[(lang % families) * block:(lang % families + 1) * block] += 6
        p /= p.sum()
        for t in range(texts):
            item[lang * texts + t, 0] = rng.multinomial(40, p)  # 40 tokens of top-1 routing
    item = torch.from_numpy(item)
    owner = torch.arange(languages).repeat_interleave(texts)
    count = torch.zeros(languages, 1, experts, dtype=torch.long).index_add_(0, owner, item)
    tokens = count.sum((1, 2))
    stats = mi.RoutingStats(names, (0,), experts, 1, count, count.double(), tokens, item, item.sum((1, 2)), owner)
    return stats, fams


def _ari(a, b):
    """Hubert-Arabie ARI from the contingency table (scipy's comb), written independently."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), int)
    np.add.at(table, (a, b), 1)
    pairs = sum(comb(int(x), 2) for x in table.flat)
    rows, cols = sum(comb(int(x), 2) for x in table.sum(1)), sum(comb(int(x), 2) for x in table.sum(0))
    expected = rows * cols / comb(len(a), 2)
    return (pairs - expected) / ((rows + cols) / 2 - expected)


def _oracle_statistics(count, families):
    """ARI at as many clusters as families (average linkage) and between/within mean JS."""
    p = count[:, 0].double().numpy()
    p = p / p.sum(1, keepdims=True)
    n = len(p)
    js = np.array([[jensenshannon(p[i], p[j], base=2) ** 2 for j in range(n)] for i in range(n)])
    np.fill_diagonal(js, 0)
    labels = np.unique(families, return_inverse=True)[1]
    clusters = fcluster(linkage(squareform(js, checks=False), "average"), len(set(families)), "maxclust")
    iu = np.triu_indices(n, 1)
    same = labels[iu[0]] == labels[iu[1]]
    return _ari(clusters, labels), js[iu][~same].mean() / js[iu][same].mean(), js, clusters


def test_family_evidence_estimates_match_scipy_and_find_planted_structure():
    stats, fams = _family_stats(planted=True)
    ev = family_evidence(stats, families=fams, layers=None, resamples=30, permutations=400, seed=0)
    ari, ratio, _, _ = _oracle_statistics(stats.count, [fams[l] for l in stats.languages])
    assert ev.interval("trained", "ari")[0] == pytest.approx(ari, abs=1e-9)
    assert ev.interval("trained", "between_within")[0] == pytest.approx(ratio, rel=1e-6)
    assert ari == pytest.approx(1.0)
    assert ev.p_value[0, 0] < 0.01 and ev.p_value[0, 1] < 0.01
    assert ev.articles  # 5 texts in every language: the same article indices drawn everywhere


def test_family_evidence_permutation_p_value_on_unstructured_data_matches_an_oracle():
    stats, fams = _family_stats(planted=False, seed=3)
    labels = np.array([fams[l] for l in stats.languages])
    ev = family_evidence(stats, families=fams, layers=None, resamples=2, permutations=2000, seed=0)
    ari, ratio, js, clusters = _oracle_statistics(stats.count, labels)
    rng = np.random.default_rng(11)
    iu = np.triu_indices(len(labels), 1)
    perm_ari, perm_ratio = [], []
    for _ in range(2000):
        shuffled = rng.permutation(labels)
        same = shuffled[iu[0]] == shuffled[iu[1]]
        perm_ari.append(_ari(clusters, shuffled))
        perm_ratio.append(js[iu][~same].mean() / js[iu][same].mean())
    expected = [(1 + np.sum(np.array(perm_ari) >= ari - 1e-12)) / 2001,
                (1 + np.sum(np.array(perm_ratio) >= ratio - 1e-12)) / 2001]
    assert ev.p_value[0] == pytest.approx(expected, abs=0.03)
    assert ev.p_value[0, 0] > 0.05 and ev.p_value[0, 1] > 0.05


def test_a_twin_equal_to_the_trained_stats_differs_by_exactly_zero_in_every_resample():
    """Paired resampling: the same texts are drawn for both, so the difference never moves."""
    stats, fams = _family_stats(planted=True)
    ev = family_evidence(stats, families=fams, layers=None, twins=[stats], resamples=25, permutations=10)
    for statistic in ("ari", "between_within"):
        assert ev.difference("twin 1", statistic) == (0.0, 0.0, 0.0)


def test_family_evidence_bootstrap_agrees_with_an_independent_article_bootstrap():
    stats, fams = _family_stats(planted=True, texts=8, seed=4)
    labels = [fams[l] for l in stats.languages]
    twin, _ = _family_stats(planted=False, texts=8, seed=5)
    ev = family_evidence(stats, families=fams, layers=None, twins={"random": twin}, resamples=300,
                         permutations=10, seed=0, unit="text")  # texts only: the article bootstrap below
    rng = np.random.default_rng(9)
    item = {name: s.item_count.reshape(len(labels), 8, 1, -1) for name, s in (("trained", stats), ("random", twin))}
    diffs, ratios = [], []
    for _ in range(300):
        articles = rng.integers(0, 8, 8)  # the same articles in every language
        trained = _oracle_statistics(item["trained"][:, articles].sum(1), labels)[1]
        random = _oracle_statistics(item["random"][:, articles].sum(1), labels)[1]
        ratios.append(trained)
        diffs.append(trained - random)
    _, low, high = ev.interval("trained", "between_within")
    expected = np.quantile(ratios, [0.025, 0.975])
    spread = expected[1] - expected[0]
    assert (low, high) == pytest.approx(tuple(expected), abs=0.15 * spread)
    _, low, high = ev.difference("random", "between_within")
    expected = np.quantile(diffs, [0.025, 0.975])
    assert (low, high) == pytest.approx(tuple(expected), abs=0.15 * (expected[1] - expected[0]))
    table = ev.table()
    assert list(table.model) == ["trained", "random"] * 2 and table.difference.isna().sum() == 2


def test_family_evidence_refuses_models_profiled_on_other_texts():
    stats, fams = _family_stats(planted=True, texts=5)
    other, _ = _family_stats(planted=True, texts=4)
    with pytest.raises(ValueError, match="same texts"):
        family_evidence(stats, families=fams, layers=None, twins=[other], resamples=2, permutations=2)


# -- model-free baseline and SteerMoE's risk difference ----------------------------------------

def test_ngram_stats_feeds_family_evidence_as_a_baseline():
    stats, fams = _family_stats(planted=True, languages=6, texts=3)
    texts = {l: [f"{fams[l] * 5} text {i} {l}" for i in range(3)] for l in stats.languages}
    ev = family_evidence(stats, families=fams, layers=None, baseline=ngram_stats(texts, n=2),
                         resamples=5, permutations=20)
    assert ev.models == ("trained", "baseline") and np.isfinite(ev.estimate).all()


@pytest.mark.parametrize("bad, match", [({"n": 0}, "n .bytes per n-gram"), ({"buckets": 1024}, "buckets=1024: hashed"),
                                        ({"n": 9}, "n .bytes per n-gram")])
def test_ngram_stats_refuses_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        ngram_stats({"eng": ["abc"]}, **bad)


def test_risk_difference_by_hand():
    rng = np.random.default_rng(0)
    count = torch.from_numpy(rng.integers(0, 50, (4, 3, 6)))
    tokens = torch.tensor([30, 40, 20, 50])
    stats = mi.RoutingStats(("a", "b", "c", "d"), (1, 2, 5), 6, 2, count, count.double(), tokens)
    group_a, group_b = stats.select(["a", "b"]), stats.select(["c", "d"])
    c = count.numpy()
    expected = c[:2].sum(0) / 70 - c[2:].sum(0) / 70
    assert risk_difference(group_a, group_b).numpy() == pytest.approx(expected)
    assert risk_difference(group_a, group_b, layers=[2, 5]).numpy() == pytest.approx(expected[1:])


# -- ablation: the verdict rules and their intervals are tested in tests/test_ablation_verdicts.py --

def test_random_expert_set_is_same_size_disjoint_and_seeded():
    from moe_interp.experiments._ablation import random_expert_set

    chosen = {3: [0, 1, 2], 5: [7]}
    draws = [random_expert_set(chosen, 8, seed) for seed in range(300)]
    for s in draws:
        assert {l: len(s[l]) for l in s} == {3: 3, 5: 1}
        assert not set(s[3]) & {0, 1, 2} and 7 not in s[5]
    assert random_expert_set(chosen, 8, 4) == random_expert_set(chosen, 8, 4)
    # uniform over the 5 experts left in layer 3: each drawn 3/5 of the time
    share = Counter(e for s in draws for e in s[3])
    assert scipy.stats.chisquare([share[e] for e in range(3, 8)]).pvalue > 0.001
    with pytest.raises(ValueError, match="a smaller k"):
        random_expert_set({0: [0, 1, 2, 3, 4]}, 8, 0)


# -- steering: dose-response and what the summary says -----------------------------------------

def _steering_result(changed, gains):
    rows = []
    for scale, per_layer in changed.items():
        for layer, (share, tokens) in enumerate(per_layer):
            rows.append(dict(scale=scale, language="deu", layer=layer, changed=share, mass_moved=share / 2,
                             tokens=tokens))
    table = pd.DataFrame({"language": ["deu"], "gain": [0.0], "ci_low": [0.0], "ci_high": [0.0], "p_value": [1.0],
                          "pairs": [2]})
    return SteeringResult(max(changed), {s: 3.0 for s in changed}, table, shift=pd.DataFrame(rows),
                          gains={s: [np.asarray(g)] for s, g in gains.items()}, resamples=4000)


def test_dose_response_averages_layers_and_says_what_moved():
    rng = np.random.default_rng(0)
    result = _steering_result({0.0: [(0.0, 10), (0.0, 10)], 1.0: [(0.1, 10), (0.5, 10)], 5.0: [(0.4, 10), (0.8, 10)]},
                              {0.0: np.zeros(20), 1.0: rng.normal(0, 0.1, 20), 5.0: rng.normal(-0.5, 0.1, 20)})
    dose = result.dose_response().set_index("scale")
    assert dose.loc[1.0, "changed"] == pytest.approx(0.3) and dose.loc[1.0, "changed_L1"] == pytest.approx(0.5)
    assert dose.loc[5.0, "mass_moved"] == pytest.approx(0.3)
    assert dose.loc[0.0, "verdict"] == "no effect: routing did not move"
    assert dose.loc[1.0, "verdict"] == "mechanism moved, outcome did not"
    assert dose.loc[5.0, "verdict"] == "mechanism moved and the outcome worsened"
    assert dose.loc[5.0, "gain_high"] < 0 < dose.loc[1.0, "gain_high"]
    assert "mechanism moved, outcome did not" in result.summary()
