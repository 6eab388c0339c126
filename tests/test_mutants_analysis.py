"""Analyses and expert sets: behaviours that single-change mutants (scripts/mutants.py) showed no
test pinned. Each test names the mutant it catches; values are written out by hand or come
from numpy / scipy."""

import pytest

import moe_interp as mi


# -- ExpertSet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_expert_set_refuses_booleans_as_experts(flag):
    """Mutant expert_set.bool-expert: True / False were taken as experts 1 / 0."""
    with pytest.raises(ValueError, match="integer indices >= 0"):
        mi.ExpertSet({3: [flag]})


def test_expert_sets_with_other_strengths_are_not_equal():
    """Mutant expert_set.eq-strengths: only the experts were compared."""
    half = mi.ExpertSet({1: [2]}, strengths={1: {2: 0.5}})
    assert half == mi.ExpertSet({1: [2]}, strengths={1: {2: 0.5}})
    assert half != mi.ExpertSet({1: [2]}, strengths={1: {2: 0.7}})
    assert half != mi.ExpertSet({1: [2]})


def test_expert_set_leaves_out_layers_without_experts():
    """Mutant expert_set.empty-layers: a layer listed with no experts was kept."""
    s = mi.ExpertSet({1: [], 2: [3, 3], 4: ()})
    assert list(s) == [2] and len(s) == 1 and s.size == 1 and s.pairs() == [(2, 3)]
    assert 1 not in s


# -- exclusive / shared sets ----------------------------------------------------------------------


def _three_pairs() -> mi.RoutingStats:
    """Languages a, b, c, 4 tokens each, top-1 of 3 experts: each language uses two experts
    half the time, each expert is used by two languages (shares 0.5 / 0.5)."""
    import torch

    count = torch.tensor([[[2, 2, 0]], [[2, 0, 2]], [[0, 2, 2]]])
    return mi.RoutingStats(("a", "b", "c"), (7,), 3, 1, count, count / 2.0, torch.tensor([4, 4, 4]))


def test_exclusive_experts_of_several_targets_sum_their_shares():
    """Mutant expert_sets.targets-mean: the targets' shares were averaged (0.5, not 1.0)."""
    stats = _three_pairs()
    assert dict(stats.exclusive_experts(["a", "b"], k=3, threshold=0.6)) == {7: (0,)}
    assert dict(stats.exclusive_experts("a", k=3, threshold=0.4)) == {7: (0, 1)}
    assert dict(stats.exclusive_experts("a", k=3, threshold=0.6)) == {}


# -- divergences ----------------------------------------------------------------------------------


def _random_stats(seed: int = 0, zeros: bool = False) -> mi.RoutingStats:
    """4 languages, 2 layers, 6 experts, top-2; counts need not sum to top_k x tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    count = torch.randint(1, 30, (4, 2, 6), generator=g)
    if zeros:
        count[0, 0, :3] = 0  # experts a language never uses
    return mi.RoutingStats(("a", "b", "c", "d"), (0, 1), 6, 2, count, count.double(), torch.tensor([40, 41, 42, 43]))


def _oracle(metric: str):
    import numpy as np
    from scipy.spatial.distance import cosine, jensenshannon
    from scipy.stats import entropy

    def smoothed(p):
        return (p + 1e-10) / (1 + len(p) * 1e-10)

    return {"js": lambda p, q: jensenshannon(p, q, base=2) ** 2,
            "cosine": lambda p, q: cosine(p, q),
            "hellinger": lambda p, q: np.linalg.norm(np.sqrt(p) - np.sqrt(q)) / np.sqrt(2),
            "kl_sym": lambda p, q: (entropy(smoothed(p), smoothed(q), base=2)
                                    + entropy(smoothed(q), smoothed(p), base=2)),
            }[metric]


@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("metric", ["js", "cosine", "hellinger", "kl_sym"])
def test_every_metric_equals_its_scipy_or_numpy_definition(metric, zeros):
    """Mutants divergence.cosine-one-minus (similarity returned), divergence.hellinger-root
    (squared distance), divergence.kl-one-sided (half the symmetric KL), divergence.renormalise."""
    import numpy as np

    stats = _random_stats(zeros=zeros)
    d = stats.divergence(metric).numpy()
    p = stats.count.double().numpy()
    p = p / p.sum(-1, keepdims=True)  # the routing distribution, whatever the counts sum to
    oracle = _oracle(metric)
    expected = np.array([[[oracle(p[i, layer], p[j, layer]) if i != j else 0.0 for j in range(4)] for i in range(4)]
                         for layer in range(2)])
    np.testing.assert_allclose(d, expected, rtol=1e-9, atol=1e-12)


def test_band_average_skips_a_nan_layer():
    """Mutant divergence.band-nanmean: one nan layer (a language without tokens there) made its
    band nan."""
    import torch

    values = torch.tensor([1.0, float("nan"), 2.0, 4.0, 6.0, 8.0])
    avg = mi.analysis.band_average(values, (10, 11, 12, 13, 14, 15), "thirds")  # bands of two layers
    assert {name: float(v) for name, v in avg.items()} == {"early": 1.0, "middle": 3.0, "late": 7.0}


def test_entropy_is_divided_by_log_num_experts():
    """Mutant divergence.entropy-log-base: divided by log(E + 1), uniform routing was not 1."""
    import math

    import torch

    count = torch.tensor([[[5, 5, 5, 5]], [[10, 10, 0, 0]], [[20, 0, 0, 0]]])  # top-1, 20 tokens each
    stats = mi.RoutingStats(("uniform", "two", "one"), (0,), 4, 1, count, count.double(), torch.tensor([20, 20, 20]))
    h = stats.entropy()[:, 0].tolist()
    assert h[0] == pytest.approx(1.0, abs=1e-12)
    assert h[1] == pytest.approx(math.log(2) / math.log(4), abs=1e-12)  # 0.5
    assert h[2] == 0.0


# -- evidence ------------------------------------------------------------------------------------


def test_family_evidence_difference_is_trained_minus_the_other_model():
    """Mutant evidence.difference-sign: the difference was the other model minus trained."""
    import numpy as np

    from moe_interp.analysis import FamilyEvidence

    samples = np.array([[[0.5, 2.0], [0.1, 1.0]], [[0.7, 2.2], [0.2, 1.1]], [[0.6, 2.1], [0.3, 0.9]]])
    ev = FamilyEvidence(languages=("a", "b", "c", "d"), families=("A", "A", "B", "B"), layers=(0,),
                        models=("trained", "twin 1"), estimate=np.array([[0.6, 2.1], [0.2, 1.0]]),
                        samples=samples, p_value=np.full((2, 2), 0.5), level=0.5, kind="percentile", articles=True)
    estimate, low, high = ev.difference("twin 1", "ari")
    assert estimate == pytest.approx(0.4)
    expected = np.quantile(samples[:, 0, 0] - samples[:, 1, 0], [0.25, 0.75])  # differences 0.4, 0.5, 0.3
    assert (low, high) == pytest.approx(tuple(expected))
    assert ev.difference("twin 1", "between_within")[0] == pytest.approx(1.1)


# -- bootstrap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_interval_is_the_central_percentile_interval_of_its_replicates(level):
    """Mutant bootstrap.alpha-half: the interval cut 1 - level from each end, not half of it."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(3)
    item_count = torch.randint(0, 6, (12, 1, 3), generator=g)
    item_tokens = item_count.sum((1, 2))  # top-1: one expert a token
    language = torch.arange(12) % 2
    count = torch.stack([item_count[language == i].sum(0) for i in range(2)])
    tokens = torch.stack([item_tokens[language == i].sum() for i in range(2)])
    stats = mi.RoutingStats(("a", "b"), (0,), 3, 1, count, count.double(), tokens, item_count, item_tokens, language)
    result = mi.analysis.bootstrap(stats, "divergence", resamples=40, level=level, seed=1)
    samples = result.samples[:, 0, 0, 1].numpy()
    alpha = (1 - level) / 2
    assert float(result.low[0, 0, 1]) == pytest.approx(float(np.quantile(samples, alpha)))
    assert float(result.high[0, 0, 1]) == pytest.approx(float(np.quantile(samples, 1 - alpha)))
    assert float(result.estimate[0, 0, 1]) == pytest.approx(float(stats.divergence()[0, 0, 1]))
