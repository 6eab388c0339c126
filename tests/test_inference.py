"""Units of inference (issue 24, sections 2-3 and the BootstrapResult bug of section 6): one
interval method (percentile), family claims at the language level, recipe claims at the seed
level, exact byte n-grams, layer-resolved evidence. Each value is checked against a computation
written here with numpy / scipy / collections, sharing no code with the package."""

import numpy as np
import pytest
import torch

import moe_interp as mi


# -- BootstrapResult.statistic -----------------------------------------------------------------

def _item_stats():
    items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])
    count = torch.stack([items[:2].sum(0), items[2:].sum(0)])
    return mi.RoutingStats(("en", "de"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]),
                           item_count=items, item_tokens=torch.tensor([2, 2, 2, 2]),
                           item_language=torch.tensor([0, 0, 1, 1]))


def test_bootstrap_result_names_the_statistic_it_resampled():
    """The name was overwritten by the argument-check loop's variable: always "seed"."""
    stats = _item_stats()
    assert mi.analysis.bootstrap(stats, "divergence", resamples=3).statistic == "divergence"
    assert mi.analysis.bootstrap(stats, "shares", resamples=3).statistic == "shares"

    def token_total(s):
        return s.tokens.double()

    assert mi.analysis.bootstrap(stats, token_total, resamples=3).statistic == "token_total"


# -- fixtures and oracles (numpy / scipy only) ------------------------------------------------

from collections import Counter  # noqa: E402
from math import comb  # noqa: E402

import scipy.stats  # noqa: E402
from scipy.cluster.hierarchy import fcluster, linkage  # noqa: E402
from scipy.spatial.distance import jensenshannon, squareform  # noqa: E402

from moe_interp.analysis import (  # noqa: E402
    FamilyEvidence,
    family_evidence,
    interval,
    layer_evidence,
    ngram_baselines,
    ngram_stats,
    seed_test,
)


def _planted(languages=18, families=3, texts=6, experts=12, layers=1, language_spread=3.0, tokens=400, seed=0):
    """Top-1 routing counts per text. Each family prefers its own block of experts; each language
    adds its own strong preferences (Dirichlet, `language_spread` large: languages of one family
    differ a lot); each text draws `tokens` tokens from its language (text noise small)."""
    rng = np.random.default_rng(seed)
    names = tuple(f"l{i:02d}" for i in range(languages))
    fams = {n: "ABCDEFG"[i % families] for i, n in enumerate(names)}
    item = np.zeros((languages * texts, layers, experts), dtype=np.int64)
    block = experts // families
    for lang in range(languages):
        for layer in range(layers):
            p = np.ones(experts)
            p[(lang % families) * block:(lang % families + 1) * block] += 2.0
            p = rng.dirichlet(p / language_spread * 4)
            for t in range(texts):
                item[lang * texts + t, layer] = rng.multinomial(tokens, p)
    item = torch.from_numpy(item)
    owner = torch.arange(languages).repeat_interleave(texts)
    count = torch.zeros(languages, layers, experts, dtype=torch.long).index_add_(0, owner, item)
    stats = mi.RoutingStats(names, tuple(range(layers)), experts, 1, count, count.double(),
                            torch.full((languages,), tokens * texts), item, torch.full((languages * texts,), tokens),
                            owner)
    return stats, fams


def _js_matrix(count):
    """[lang, lang] JS divergence (bits) of count rows [lang, expert], by scipy."""
    p = count / count.sum(1, keepdims=True)
    d = np.array([[jensenshannon(a, b, base=2) ** 2 for b in p] for a in p])
    np.fill_diagonal(d, 0.0)
    return d


def _replicate(d, codes, origin):
    """(ARI, between/within, mean divergence) of the drawn copies `origin`, over pairs of two
    different languages only; the tree over the copies cut at as many clusters as families drawn."""
    pairs = [(i, j) for i in range(len(origin)) for j in range(i + 1, len(origin)) if origin[i] != origin[j]]
    same = np.array([codes[origin[i]] == codes[origin[j]] for i, j in pairs])
    values = np.array([d[origin[i], origin[j]] for i, j in pairs])
    copies = d[np.ix_(origin, origin)]
    clusters = fcluster(linkage(squareform(copies, checks=False), "average"), len(set(codes[origin])), "maxclust")
    together = np.array([clusters[i] == clusters[j] for i, j in pairs])
    a, b, c, n = (together & same).sum(), together.sum(), same.sum(), len(pairs)
    ari = (a - b * c / n) / ((b + c) / 2 - b * c / n)
    return ari, values[~same].mean() / values[same].mean(), values.mean()


def _language_bootstrap(d, codes, replicates, seed):
    rng = np.random.default_rng(seed)
    return np.array([_replicate(d, codes, rng.integers(0, len(codes), len(codes))) for _ in range(replicates)])


# -- one interval method -----------------------------------------------------------------------

def test_interval_is_numpys_percentile_interval_and_refuses_a_kind():
    samples = np.random.default_rng(0).gamma(2.0, 1.0, 999)
    assert interval(9.0, samples, 0.9) == pytest.approx(tuple(np.quantile(samples, [0.05, 0.95])))
    with pytest.raises(ValueError, match="kind=.normal.: the choice of interval kind was removed"):
        interval(1.0, samples, kind="normal")


def test_family_evidence_refuses_the_removed_kind_and_evidence_of_another_method():
    stats, fams = _planted(languages=6, texts=2)
    with pytest.raises(ValueError, match="choice of interval kind was removed"):
        family_evidence(stats, families=fams, layers=None, resamples=2, permutations=2, kind="normal")
    with pytest.raises(ValueError, match="percentile bootstrap interval now"):
        FamilyEvidence(("a", "b"), ("A", "B"), (0,), ("trained",), np.zeros((1, 2)), np.zeros((3, 1, 2)),
                       np.ones((1, 2)), 0.95, "normal")


# -- family claims at the language level -------------------------------------------------------

def test_family_evidence_language_intervals_match_a_hand_written_cluster_bootstrap():
    stats, fams = _planted(seed=1)
    labels = [fams[l] for l in stats.languages]
    codes = np.unique(labels, return_inverse=True)[1]
    d = _js_matrix(stats.count[:, 0].double().numpy())
    ev = family_evidence(stats, families=fams, layers=None, resamples=3000, permutations=10, seed=0)
    ours = _language_bootstrap(d, codes, 3000, seed=12)
    assert ev.unit == "language" and ev.kind == "percentile"
    full = _replicate(d, codes, np.arange(len(codes)))
    assert ev.estimate[0] == pytest.approx(full[:2], rel=1e-9)
    for s, statistic in enumerate(("ari", "between_within")):
        expected = np.quantile(ours[:, s], [0.025, 0.5, 0.975])
        got = np.quantile(ev.samples[:, 0, s], [0.025, 0.5, 0.975])
        spread = expected[2] - expected[0]
        assert got == pytest.approx(expected, abs=0.06 * spread), statistic
        assert ev.interval("trained", statistic)[1:] == pytest.approx(tuple(got[[0, 2]]))


def test_a_language_drawn_twice_is_not_a_same_family_pair():
    """Two families of two languages. Every replicate's between/within is the ratio over pairs
    of two different languages of the languages it drew; one without two different languages of
    one family has no within-family pair: nan, never a within-family divergence of 0."""
    stats, fams = _planted(languages=4, families=2, texts=2, seed=2)
    ev = family_evidence(stats, families=fams, layers=None, resamples=600, permutations=10, seed=0)
    d = _js_matrix(stats.count[:, 0].double().numpy())
    codes = np.unique([fams[l] for l in stats.languages], return_inverse=True)[1]

    def ratio(origin):
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4) if origin[i] != origin[j]]
        same = [codes[origin[i]] == codes[origin[j]] for i, j in pairs]
        within = [d[origin[i], origin[j]] for (i, j), s in zip(pairs, same) if s]
        between = [d[origin[i], origin[j]] for (i, j), s in zip(pairs, same) if not s]
        return np.mean(between) / np.mean(within) if within and between else np.nan

    every = [ratio(o) for o in np.ndindex(4, 4, 4, 4)]  # all 256 equally likely draws
    possible = {round(r, 9) for r in every if not np.isnan(r)}
    drawn = ev.samples[:, 0, 1]
    assert {round(x, 9) for x in drawn[~np.isnan(drawn)]} <= possible
    assert np.isnan(drawn).mean() == pytest.approx(np.isnan(every).mean(), abs=0.06)
    assert 0 < np.isnan(every).mean() < 1


def test_language_level_intervals_are_wide_where_text_level_ones_are_narrow():
    """Languages of one family differ a lot, texts of one language little: resampling texts
    says nothing about families, resampling languages does."""
    stats, fams = _planted(languages=24, texts=8, tokens=10000, language_spread=2.0, seed=3)
    by_language = family_evidence(stats, families=fams, layers=None, resamples=300, permutations=10)
    by_text = family_evidence(stats, families=fams, layers=None, resamples=300, permutations=10, unit="text")
    assert by_text.unit == "text" and "the languages fixed" in by_text.summary()
    assert by_text.estimate.tolist() == by_language.estimate.tolist()
    width = {(ev.unit, s): np.subtract(*ev.interval("trained", s)[:0:-1]) for ev in (by_language, by_text)
             for s in ev.statistics}
    assert width["text", "ari"] < 0.05 < 0.2 < width["language", "ari"]   # the same tree whichever texts
    assert width["language", "between_within"] > 20 * width["text", "between_within"]


def test_paired_differences_use_the_same_language_draws_for_every_model():
    stats, fams = _planted(seed=4)
    twin, _ = _planted(seed=5)
    ev = family_evidence(stats, families=fams, layers=None, twins={"twin": twin}, resamples=1500, permutations=10)
    codes = np.unique([fams[l] for l in stats.languages], return_inverse=True)[1]
    d_trained, d_twin = (_js_matrix(s.count[:, 0].double().numpy()) for s in (stats, twin))
    rng = np.random.default_rng(8)
    diffs = []
    for _ in range(1500):
        origin = rng.integers(0, len(codes), len(codes))
        diffs.append(_replicate(d_trained, codes, origin)[1] - _replicate(d_twin, codes, origin)[1])
    expected = np.quantile(diffs, [0.025, 0.975])
    _, low, high = ev.difference("twin", "between_within")
    assert (low, high) == pytest.approx(tuple(expected), abs=0.08 * (expected[1] - expected[0]))


def test_the_summary_says_what_the_permutation_test_shows_and_what_it_does_not():
    stats, fams = _planted(languages=6, texts=2)
    text = family_evidence(stats, families=fams, layers=None, resamples=5, permutations=10).summary()
    assert "structure exists" in text and "does not say training made it" in text
    assert "random-init twins can pass it too" in text
    assert "percentile intervals over 5 resamples of the languages" in text


# -- exact byte n-grams ---------------------------------------------------------------------------

def test_ngram_stats_counts_exact_ngrams_as_a_counter_does():
    texts = {"eng": ["the cat", "a", ""], "deu": ["Straße über", "der die das"], "rus": ["мир"]}
    for n in (1, 2, 3):
        stats = ngram_stats(texts, n=n)
        expected_all = Counter()
        for lang, lang_texts in texts.items():
            expected = Counter()
            for text in lang_texts:
                data = text.encode()
                expected.update(data[i:i + n] for i in range(len(data) - n + 1))
            expected_all.update(expected)
            row = stats.count[stats.languages.index(lang), 0]
            got = {stats.meta["ngrams"][e].to_bytes(n, "big"): int(row[e]) for e in row.nonzero().flatten().tolist()}
            assert got == dict(expected), (n, lang)
            assert int(stats.tokens[stats.languages.index(lang)]) == sum(expected.values())
        # dense over exactly the observed n-grams, sorted by their bytes
        assert [g.to_bytes(n, "big") for g in stats.meta["ngrams"]] == sorted(expected_all)
        assert stats.num_experts == len(expected_all) and stats.top_k == 1
        assert stats.item_tokens.tolist()[1:3] == [max(0, 1 - n + 1), 0]


def test_ngram_stats_refuses_buckets_naming_the_change():
    with pytest.raises(ValueError, match="buckets=64: hashed n-grams were removed"):
        ngram_stats({"eng": ["abc"]}, n=2, buckets=64)


def test_the_strongest_baseline_is_the_one_with_the_highest_value_of_each_statistic():
    stats, fams = _planted(languages=6, texts=3, seed=6)
    texts = {l: [f"{fams[l] * 6} {l} text {i}" for i in range(3)] for l in stats.languages}
    baselines = ngram_baselines(texts)
    assert list(baselines) == ["byte 1-grams", "byte 2-grams", "byte 3-grams"]
    ev = family_evidence(stats, families=fams, layers=None, baseline=baselines, resamples=5, permutations=10)
    assert ev.baselines == tuple(baselines) and ev.models == ("trained", *baselines)
    table = ev.table()
    for s, statistic in enumerate(ev.statistics):
        values = {b: ev.estimate[ev.models.index(b), s] for b in baselines}
        strongest = max(values, key=values.get)
        assert ev.strongest_baseline(statistic) == strongest
        assert table[(table.statistic == statistic) & table.strongest].model.tolist() == [strongest]


# -- recipe claims at the seed level --------------------------------------------------------------

@pytest.mark.parametrize("trained, controls", [
    ([0.25, 0.27, 0.24], [0.10, 0.12, 0.08]),
    ([0.25, 0.09, 0.24], [0.10, 0.12, 0.08]),
    ([0.3, 0.1], [0.2, 0.05, 0.15, 0.4]),
    ([1.0, 2.5, 0.3, 4.1], [0.9, 2.0, 0.1, 3.3, 1.7]),
])
def test_seed_test_p_value_is_scipys_exact_mann_whitney(trained, controls):
    result = seed_test(trained, controls)
    expected = scipy.stats.mannwhitneyu(trained, controls, alternative="greater", method="exact")
    assert result.p_value == pytest.approx(expected.pvalue, abs=1e-12)
    assert result.u == expected.statistic
    assert result.min_p == pytest.approx(1 / comb(len(trained) + len(controls), len(trained)))
    assert (result.n_trained, result.n_controls) == (len(trained), len(controls))


def test_three_seeds_against_three_cannot_get_below_one_in_twenty():
    best = seed_test([3.0, 2.0, 1.5], [1.0, 0.5, 0.0])
    assert best.p_value == best.min_p == pytest.approx(0.05)
    assert "smallest attainable 0.05" in best.summary() and "3 trained vs 3 control seeds" in best.summary()


def test_seed_test_interval_is_a_two_sample_percentile_bootstrap_over_seeds():
    trained, controls = [0.31, 0.25, 0.28, 0.22], [0.11, 0.16, 0.09]
    result = seed_test(trained, controls, resamples=40000)
    expected = scipy.stats.bootstrap((trained, controls), lambda a, b: np.mean(a) - np.mean(b), paired=False,
                                     vectorized=False, n_resamples=40000, method="percentile",
                                     random_state=np.random.default_rng(3)).confidence_interval
    assert result.difference == pytest.approx(np.mean(trained) - np.mean(controls))
    width = expected.high - expected.low
    assert (result.low, result.high) == pytest.approx((expected.low, expected.high), abs=0.03 * width)


def test_seed_test_ties_are_counted_by_enumeration():
    """With ties scipy's exact method ignores them; the full enumeration conditions on them."""
    trained, controls = [1.0, 1.0, 2.0], [1.0, 0.0, 0.0]
    pooled = np.array(trained + controls)
    observed = sum((t > c) + 0.5 * (t == c) for t in trained for c in controls)
    from itertools import combinations

    def u(group):
        rest = [pooled[i] for i in range(6) if i not in group]
        return sum((pooled[i] > c) + 0.5 * (pooled[i] == c) for i in group for c in rest)

    expected = np.mean([u(g) >= observed for g in combinations(range(6), 3)])
    assert seed_test(trained, controls).p_value == pytest.approx(expected)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")]])
def test_seed_test_refuses_empty_or_nan_seeds(bad):
    with pytest.raises(ValueError, match="one per seed"):
        seed_test(bad, [0.1, 0.2])


# -- layer-resolved --------------------------------------------------------------------------------

def test_layer_evidence_matches_scipy_per_layer_and_a_hand_written_language_bootstrap():
    stats, fams = _planted(layers=3, seed=7)
    twin, _ = _planted(layers=3, seed=8)
    codes = np.unique([fams[l] for l in stats.languages], return_inverse=True)[1]
    ev = layer_evidence(stats, families=fams, twins=[twin], resamples=2000, seed=0)
    assert ev.models == ("trained", "twin 1") and ev.layers == (0, 1, 2)
    for m, s in enumerate((stats, twin)):
        for layer in range(3):
            d = _js_matrix(s.count[:, layer].double().numpy())
            full = _replicate(d, codes, np.arange(len(codes)))
            assert ev.estimate[m, layer] == pytest.approx([full[2], full[1]], rel=1e-9)
    d = _js_matrix(stats.count[:, 1].double().numpy())
    ours = _language_bootstrap(d, codes, 2000, seed=21)
    for s, column in ((0, 2), (1, 1)):
        expected = np.quantile(ours[:, column], [0.025, 0.975])
        _, low, high = ev.interval("trained", 1, ev.statistics[s])
        assert (low, high) == pytest.approx(tuple(expected), abs=0.07 * (expected[1] - expected[0]))
    table = ev.table()
    assert len(table) == 3 * 2 * 2 and set(table.columns) >= {"layer", "model", "statistic", "low", "high"}
    fig = ev.figure("between_within")
    assert [t.name for t in fig.data] == ["trained", "trained", "twin 1", "twin 1"]
    assert list(fig.data[1].y) == pytest.approx(list(ev.estimate[0, :, 1]))


def test_layer_evidence_reads_sparse_rows_as_scipy_does():
    """Exact byte n-grams: thousands of experts, few used per language (the support-only sum)."""
    texts = {"eng": ["the cat sat on the mat", "a dog"], "deu": ["die Katze", "ein Hund"],
             "nld": ["de kat", "een hond"], "fin": ["kissa istui", "koira"], "ekk": ["kass istus", "koer"]}
    stats = ngram_stats(texts, n=3)
    fams = {"eng": "IE", "deu": "IE", "nld": "IE", "fin": "U", "ekk": "U"}
    ev = layer_evidence(stats, families=fams, resamples=3)
    d = _js_matrix(stats.count[:, 0].double().numpy())
    iu = np.triu_indices(5, 1)
    assert ev.estimate[0, 0, 0] == pytest.approx(d[iu].mean(), rel=1e-12)
