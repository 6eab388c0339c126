"""Two models compared (`mi.analysis.compare`, `match_experts`): the matching against a brute
force over every assignment of language profiles computed here from counts that plain torch hooks
read off two tiny models (no package code), a known renumbering found again exactly, the nulls,
the paired interval, and the refusals of stats that did not read the same texts."""

import itertools
import math

import numpy as np
import pytest
import torch

import moe_interp as mi
from test_health import CORPUS, routed_alone

E = 8  # the tiny model's experts: 8! assignments per layer, few enough to try them all


@pytest.fixture(scope="module")
def models():
    return mi.zoo.tiny_model("qwen3_moe", seed=0), mi.zoo.tiny_model("qwen3_moe", seed=1)


@pytest.fixture(scope="module")
def pair(models):
    """Both models profiled on CORPUS (padded batches of 3), and per model the hooks' counts."""
    stats = [mi.profile(m, CORPUS, batch_size=3, progress=False) for m in models]
    hooks = []
    for m in models:
        rows = {lang: [routed_alone(m, t) for t in texts] for lang, texts in CORPUS.items()}
        hooks.append(({lang: sum(c for c, _ in r) for lang, r in rows.items()},
                      {lang: sum(n for _, n in r) for lang, r in rows.items()}))
    return stats, hooks


def profile_by_hand(counts, tokens, layer, expert):
    """An expert's language profile: its uses per token in each language, normalised over them."""
    use = [int(counts[lang][layer, expert]) / tokens[lang] for lang in CORPUS]
    return [u / sum(use) for u in use]


def js_by_hand(p, q):
    m = [(x + y) / 2 for x, y in zip(p, q)]
    kl = lambda a: sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)
    return (kl(p) + kl(q)) / 2


def costs_by_hand(hook_a, hook_b):
    layers = next(iter(hook_a[0].values())).shape[0]
    return np.array([[[js_by_hand(profile_by_hand(*hook_a, layer, i), profile_by_hand(*hook_b, layer, j))
                       for j in range(E)] for i in range(E)] for layer in range(layers)])


def test_the_matching_is_the_best_of_every_assignment_of_the_hooks_profiles(pair):
    (a, b), (hook_a, hook_b) = pair
    cost = costs_by_hand(hook_a, hook_b)
    c = mi.analysis.compare(a, b, names=("seed 0", "seed 1"), resamples=0, permutations=20)
    every = np.array(list(itertools.permutations(range(E))))
    for layer in range(cost.shape[0]):
        best = cost[layer][np.arange(E), every].sum(1).min()
        assert sorted(c.matching[layer].tolist()) == list(range(E))  # one-to-one
        assert float(c.quality[layer]) * E == pytest.approx(best, abs=1e-9)
        chosen = cost[layer][np.arange(E), c.matching[layer].numpy()]
        assert c.matched[layer].tolist() == pytest.approx(chosen, abs=1e-9)
        assert float(c.random_matching[layer]) == pytest.approx(cost[layer].mean(), abs=1e-9)  # exact, not sampled
    assert bool((c.quality < c.random_matching).all())


def test_side_by_side_health_and_divergence_are_each_models_own(pair):
    (a, b), (hook_a, hook_b) = pair
    c = mi.analysis.compare(a, b, names=("seed 0", "seed 1"), resamples=0, permutations=5)
    for h, (counts, tokens) in zip(c.health, (hook_a, hook_b)):
        assert torch.equal(h.load[:-1], torch.stack(list(counts.values())))
        assert h.tokens.tolist()[:-1] == list(tokens.values())
    assert torch.equal(c.divergence[0], a.divergence()) and torch.equal(c.divergence[1], b.divergence())
    table = c.table()
    assert table["dead (seed 1)"].tolist() == c.health[1].dead_count[-1].tolist()
    assert table["cv (seed 0)"].tolist() == pytest.approx(c.health[0].cv[-1].tolist())


def test_each_languages_routing_after_the_matching_equals_the_hooks(pair):
    (a, b), (hook_a, hook_b) = pair
    c = mi.analysis.compare(a, b, resamples=0, permutations=5)
    for layer in range(c.matching.shape[0]):
        for i, lang in enumerate(CORPUS):
            da = [int(x) / int(hook_a[0][lang][layer].sum()) for x in hook_a[0][lang][layer]]
            db = [int(hook_b[0][lang][layer, j]) / int(hook_b[0][lang][layer].sum()) for j in c.matching[layer]]
            assert float(c.routing_divergence[layer, i]) == pytest.approx(js_by_hand(da, db), abs=1e-9)


def test_a_known_renumbering_of_the_experts_is_found_again_exactly(pair):
    (a, b), _ = pair
    order = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])  # renumbered expert j is the old expert order[j]

    def renumbered(s):
        return mi.RoutingStats(s.languages, s.layers, E, s.top_k, s.count[..., order], s.gate_mass[..., order],
                               s.tokens, s.item_count[..., order], s.item_tokens, s.item_language, meta=s.meta)

    matching, divergence = mi.analysis.match_experts(a, renumbered(a))
    assert torch.equal(order[matching], torch.arange(E).expand_as(matching)) and float(divergence.max()) == 0.0
    # against another model: renumbering it renumbers the matching, nothing else
    c = mi.analysis.compare(a, b, permutations=5, resamples=0)
    d = mi.analysis.compare(a, renumbered(b), permutations=5, resamples=0)
    assert torch.equal(order[d.matching], c.matching) and torch.equal(d.quality, c.quality)


def test_a_model_against_itself_has_a_zero_interval_the_draws_are_paired(pair):
    """Each replicate draws the same texts for both: a model against itself stays at 0. Unpaired
    draws would give two different replicates, and a divergence above 0."""
    (a, b), _ = pair
    c = mi.analysis.compare(a, a, names=("a", "again"), resamples=30, permutations=10)
    assert c.quality.tolist() == [0.0] * 4 and c.quality_high.tolist() == [0.0] * 4
    assert bool((c.p_random < 0.2).all())
    d = mi.analysis.compare(a, b, resamples=30, permutations=10, seed=4)
    assert bool((d.quality_low <= d.quality_high).all()) and bool(d.quality_low.isfinite().all())
    again = mi.analysis.compare(a, b, resamples=30, permutations=10, seed=4)
    assert torch.equal(again.quality_low, d.quality_low) and torch.equal(again.shuffled, d.shuffled)  # seeded
    assert "lies above the estimate" in d.summary() or bool((d.quality >= d.quality_low).all())


def test_languages_in_another_order_are_aligned_first(pair):
    (a, b), _ = pair
    c = mi.analysis.compare(a, b, resamples=0, permutations=5)
    d = mi.analysis.compare(a, b.select(["deu", "eng", "fra"]), resamples=0, permutations=5)
    assert torch.equal(c.matching, d.matching) and torch.equal(c.routing_divergence, d.routing_divergence)


def test_stats_that_did_not_read_the_same_texts_are_refused_naming_the_difference(models, pair):
    (a, b), _ = pair
    with pytest.raises(ValueError, match=r"only in trained: \['deu'\], only in twin: \[\]"):
        mi.analysis.compare(a, b.select(["eng", "fra"]), names=("trained", "twin"))
    other = dict(CORPUS, fra=["Bonjour", "Tous les êtres humains naissent libres.", "Le chien"])
    changed = mi.profile(models[1], other, batch_size=3, progress=False)
    with pytest.raises(ValueError, match=r"read different texts in \['fra'\]"):
        mi.analysis.compare(a, changed)
    bare = lambda s, items: mi.RoutingStats(s.languages, s.layers, E, s.top_k, s.count, s.gate_mass, s.tokens, *items)
    joined = (torch.cat([b.item_count[:1] + b.item_count[1:2], b.item_count[2:]]),  # eng's first two texts as one
              torch.cat([b.item_tokens[:1] + b.item_tokens[1:2], b.item_tokens[2:]]), b.item_language[1:])
    with pytest.raises(ValueError, match=r"hold different items \(texts per language: \{'eng': 4, 'fra': 3, 'deu': 3\} "
                                         r"/ \{'eng': 3, 'fra': 3, 'deu': 3\}\)"):
        mi.analysis.compare(bare(a, (a.item_count, a.item_tokens, a.item_language)), bare(b, joined))
    with mi.trace(models[1], mi.RouterRecord()) as tr:
        for lang, texts in other.items():
            with tr.invoke(texts, group=lang):
                pass
    with pytest.raises(ValueError, match=r"counted different tokens in \['fra'\].*no text fingerprints"):
        mi.analysis.compare(bare(a, ()), tr.routing)
    with pytest.raises(ValueError, match="a has 8 experts per layer and b 16"):
        mi.analysis.compare(a, mi.profile(mi.zoo.tiny_model("qwen3_moe", num_experts=16), CORPUS, progress=False))
    with pytest.raises(ValueError, match="two different labels"):
        mi.analysis.compare(a, b, names=("x", "x"))
    with pytest.raises(ValueError, match="at least 2 languages"):
        mi.analysis.compare(a.select(["eng"]), b.select(["eng"]))


def test_the_figure_draws_the_matching_against_its_nulls(pair):
    (a, b), _ = pair
    c = mi.analysis.compare(a, b, names=("seed 0", "seed 1"), resamples=10, permutations=10)
    fig = c.figure()
    line = next(t for t in fig.data if t.name == "matched experts")
    assert list(line.y) == pytest.approx(c.quality.tolist()) and list(line.x) == list(c.layers)
    assert {t.name for t in fig.data} >= {"random matching", "shuffled languages", "between languages: seed 0",
                                          "between languages: seed 1", "never chosen"}
    assert c.summary().splitlines()[0] == "seed 0 vs seed 1: 3 languages, 4 MoE layers of 8 experts."
