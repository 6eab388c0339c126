"""RoutingStats analyses: the paper's numbers on its released counts, properties on random stats, files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moe_interp as mi
from moe_interp import analysis as boot
from moe_interp.analysis import METRICS, THIRDS, adjusted_rand_index, band_average, bands
from moe_interp.analysis._divergence import _pairwise
from moe_interp.datasets.reference import reference_stats
from moe_interp import StatsFileError

RELEASED = Path(__file__).resolve().parents[2] / "shared" / "data" / "qwen3-30b-a3b-mgsm-routing"

# The paper (arXiv 2601.14050), section 5: JS divergence (base 2) to English, mean over layers 0-15 / 16-31 / 32-47.
PAPER_JS_TO_EN = {
    "bn": (0.252, 0.167, 0.360), "sw": (0.284, 0.175, 0.304), "ja": (0.163, 0.107, 0.309),
    "zh": (0.127, 0.066, 0.299), "de": (0.085, 0.054, 0.151), "fr": (0.078, 0.044, 0.142),
    "es": (0.069, 0.039, 0.138),
}
PAPER_EXCLUSIVE = {"bn": 165, "de": 48, "en": 205, "es": 47, "fr": 49, "ja": 130, "sw": 271, "zh": 232}


@pytest.fixture(scope="module")
def paper() -> mi.RoutingStats:
    return reference_stats("qwen3-30b-a3b-mgsm")


# -- the paper's numbers, from the bundled reference data ---------------------------------------


def test_reference_data_describes_the_released_model(paper):
    assert paper.languages == ("bn", "de", "en", "es", "fr", "ja", "sw", "zh")
    assert paper.count.shape == (8, 48, 128) and paper.top_k == 8
    assert paper.count.dtype == torch.long and int(paper.tokens.sum()) == 226829


@pytest.mark.skipif(not RELEASED.is_dir(), reason="the released JSON files are not next to this checkout")
def test_reference_data_equals_the_released_json_exactly(paper):
    released = mi.RoutingStats.from_paper(RELEASED, paper.languages)
    assert torch.equal(paper.count, released.count)
    assert torch.equal(paper.gate_mass, released.gate_mass.double())
    assert torch.equal(paper.tokens, released.tokens)


def test_reference_data_ships_licence_and_source():
    folder = Path(mi.__file__).parent / "data" / "reference" / "qwen3-30b-a3b-mgsm"
    assert "MIT License" in (folder / "LICENSE").read_text()
    source = (folder / "SOURCE.md").read_text()
    assert "2601.14050" in source and "ea1d65b" in source
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000


def test_unknown_reference_name_lists_available():
    with pytest.raises(KeyError, match="qwen3-30b-a3b-mgsm"):
        reference_stats("qwen3-mgsm")


def test_exclusive_experts_match_paper_exactly(paper):
    assert {l: paper.exclusive_experts(l, k=15, threshold=0.4).size for l in paper.languages} == PAPER_EXCLUSIVE


def test_steering_shared_experts_match_paper(paper):
    shared = paper.shared_experts(["en", "zh"], k=20, threshold=0.7, layers=range(10, 40))
    assert shared.size == 420
    assert round(shared.mean_strength(), 3) == 0.507


@pytest.mark.parametrize("language", sorted(PAPER_JS_TO_EN))
def test_js_to_english_by_thirds_matches_paper(paper, language):
    avg = band_average(paper.divergence("js"), paper.layers, THIRDS)
    i, en = paper.language_index(language), paper.language_index("en")
    measured = tuple(float(avg[b][i, en]) for b in ("early", "middle", "late"))
    assert measured == pytest.approx(PAPER_JS_TO_EN[language], abs=0.002)


def test_thirds_are_paper_layer_ranges():
    parts = bands(range(48), THIRDS)
    assert [(v[0], v[-1]) for v in parts.values()] == [(0, 15), (16, 31), (32, 47)]


def test_default_bands_are_moespec_bands():
    parts = bands(range(48))
    assert [(v[0], v[-1]) for v in parts.values()] == [(0, 9), (10, 39), (40, 47)]


def test_middle_layers_are_most_shared(paper):
    summary = paper.layer_profile().bands()
    middle = summary["middle"]
    assert middle["mean_divergence"] < min(summary["early"]["mean_divergence"], summary["late"]["mean_divergence"])
    assert middle["shared_fraction"] > max(summary["early"]["shared_fraction"], summary["late"]["shared_fraction"])


def test_layer_profile_exclusive_counts_agree_with_exclusive_experts(paper):
    prof = paper.layer_profile()
    assert dict(zip(paper.languages, prof.exclusive.sum(1).tolist())) == PAPER_EXCLUSIVE
    frame = prof.to_pandas()
    assert len(frame) == 48 and frame["exclusive_sw"].sum() == 271


def test_entropy_is_normalised(paper):
    h = paper.entropy()
    assert h.shape == (8, 48)
    assert bool(((h > 0.5) & (h <= 1)).all())


def test_family_agreement_on_released_counts(paper):
    agreement = paper.family_agreement()
    assert agreement.n_families == 4  # Indo-European, Japonic, Niger-Congo, Sino-Tibetan
    assert agreement.ari == pytest.approx(0.5833, abs=1e-3)
    assert agreement.ratio == pytest.approx(0.644, abs=1e-3)
    assert agreement.cophenetic == pytest.approx(0.855, abs=1e-3)
    latin = agreement.by_script["Latn"]  # de en es fr (Indo-European) vs sw (Niger-Congo)
    assert latin.languages == ("de", "en", "es", "fr", "sw") and latin.ari == 1.0 and latin.ratio < 0.5
    assert paper.family_agreement(script="Latn").ari == latin.ari


def test_cluster_puts_romance_languages_together(paper):
    clusters = paper.cluster(layers="middle").assignments(2)
    assert clusters["es"] == clusters["fr"] == clusters["de"] == clusters["en"]


def test_family_agreement_accepts_group_labels_outside_the_table(paper):
    sub = paper.select(["de", "en", "ja", "zh"])
    renamed = mi.RoutingStats(("g1", "g2", "g3", "g4"), sub.layers, sub.num_experts, sub.top_k, sub.count,
                              sub.gate_mass, sub.tokens)
    with pytest.raises(KeyError, match="families="):
        renamed.family_agreement()
    result = renamed.family_agreement(families={"g1": "A", "g2": "A", "g3": "B", "g4": "C"})
    assert result.n_families == 3


def test_adjusted_rand_index_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], ["x", "x", "y", "y"]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.2424, abs=1e-4)


def test_to_pandas_is_tidy_and_exact(paper):
    frame = paper.to_pandas()
    assert frame.columns.tolist() == ["language", "layer", "expert", "count", "gate_mass", "frequency", "tokens"]
    assert len(frame) == 8 * 48 * 128
    sw = frame[(frame.language == "sw") & (frame.layer == 7)]
    assert sw["count"].tolist() == paper.count[paper.language_index("sw"), 7].tolist()


def test_similarity_is_one_minus_divergence(paper):
    assert torch.allclose(paper.similarity("hellinger", layers=[3, 4]), 1 - paper.divergence("hellinger", [3, 4]))
    with pytest.raises(ValueError, match="unbounded"):
        paper.similarity("kl_sym")


def test_unknown_metric_and_band_are_refused(paper):
    with pytest.raises(ValueError, match="metric"):
        paper.divergence("euclid")
    with pytest.raises(ValueError, match="band"):
        paper.divergence(layers="centre")


# -- properties on random stats ---------------------------------------------------------------


@st.composite
def random_stats(draw, max_languages: int = 5):
    n_lang = draw(st.integers(2, max_languages))
    n_layer = draw(st.integers(1, 3))
    n_expert = draw(st.integers(2, 10))
    top_k = draw(st.integers(1, min(3, n_expert)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.8]))
    count = torch.randint(0, 40, (n_lang, n_layer, n_expert), generator=g)
    count = count * (torch.rand(count.shape, generator=g) >= sparsity)
    count[..., 0] += 1  # every (language, layer) routed something
    tokens = torch.randint(1, 100, (n_lang,), generator=g)
    return mi.RoutingStats(tuple(f"g{i}" for i in range(n_lang)), tuple(range(n_layer)), n_expert, top_k, count,
                           count.double() * 0.3, tokens)


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(random_stats(), st.sampled_from(METRICS))
def test_divergence_is_symmetric_with_zero_diagonal(stats, metric):
    d = stats.divergence(metric)
    assert torch.equal(d, d.transpose(1, 2))
    assert bool((torch.diagonal(d, dim1=1, dim2=2) == 0).all())
    assert bool((d >= 0).all())


@PROPERTY
@given(random_stats())
def test_js_lies_in_unit_interval(stats):
    d = stats.divergence("js")
    assert bool(((d >= 0) & (d <= 1)).all())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own nan, the case under test
def test_js_equals_scipy_squared_distance_and_is_zero_not_nan_for_identical_rows():
    """Oracle: scipy's `jensenshannon(base=2) ** 2`. Hypothesis found rows whose scipy
    distance is nan (a sum rounded a hair below 0 before its square root)."""
    from scipy.spatial.distance import jensenshannon


    generator = np.random.default_rng(0)
    p = generator.dirichlet(np.ones(16), size=6)
    expected = jensenshannon(p[:, None, :], p[None, :, :], axis=-1, base=2) ** 2
    finite = np.isfinite(expected)
    np.testing.assert_allclose(_pairwise(p, "js")[finite], expected[finite], atol=1e-12)
    # the same distribution up to rounding: find such a pair where scipy's answer is nan
    for _ in range(1000):
        a = generator.dirichlet(np.ones(5))
        b = a * (1 + generator.normal(0, 1e-15, 5))
        b = b / b.sum()
        if np.isnan(jensenshannon(a, b, base=2)):
            break
    else:
        pytest.fail("no pair gave scipy a nan: the case this test guards is not exercised")
    d = _pairwise(np.stack([a, b]), "js")
    assert np.isfinite(d).all() and d[0, 1] == d[1, 0] and d[0, 1] < 1e-12


@PROPERTY
@given(random_stats(), st.integers(1, 10))
def test_shares_sum_to_one_where_any_language_keeps_the_expert(stats, k):
    k = min(k, stats.num_experts)
    p = stats.shares(k=k)
    total = p.sum(0)
    used = (p > 0).any(0)
    assert torch.allclose(total[used], torch.ones_like(total[used]), atol=1e-6)
    assert bool((total[~used] == 0).all())


@PROPERTY
@given(random_stats(), st.integers(1, 10), st.floats(0.5, 0.99))
def test_exclusive_and_shared_sets_are_disjoint(stats, k, threshold):
    k = min(k, stats.num_experts)
    shared = set(stats.shared_experts(k=k, threshold=threshold).pairs())
    for language in stats.languages:
        exclusive = set(stats.exclusive_experts(language, k=k, threshold=threshold).pairs())
        assert not exclusive & shared


@PROPERTY
@given(random_stats())
def test_entropy_lies_in_unit_interval(stats):
    h = stats.entropy()
    assert bool(((h >= 0) & (h <= 1 + 1e-12)).all())


def test_language_without_tokens_gives_nan_rows():
    count = torch.tensor([[[3, 1]], [[0, 0]]])
    stats = mi.RoutingStats(("a", "b"), (0,), 2, 1, count, count.double(), torch.tensor([4, 0]))
    d = stats.divergence()
    assert d[0, 0, 0] == 0 and torch.isnan(d[0, 1, 0]) and torch.isnan(d[0, 1, 1])
    with pytest.raises(ValueError, match="no tokens"):
        stats.cluster()


# -- bootstrap ----------------------------------------------------------------------------------


def _item_stats(seed: int = 0, items: int = 45) -> mi.RoutingStats:
    g = torch.Generator().manual_seed(seed)
    n_lang, n_layer, n_expert, top_k = 3, 2, 6, 2
    language = torch.arange(items) % n_lang
    tokens = torch.randint(3, 20, (items,), generator=g)
    item_count = torch.zeros(items, n_layer, n_expert, dtype=torch.long)
    for i in range(items):
        preference = torch.ones(n_expert)
        preference[int(language[i]) * 2] = 6.0
        for layer in range(n_layer):
            picks = torch.multinomial(preference.repeat(int(tokens[i]), 1), top_k, generator=g)
            item_count[i, layer] = picks.flatten().bincount(minlength=n_expert)
    count = torch.stack([item_count[language == l].sum(0) for l in range(n_lang)])
    lang_tokens = torch.stack([tokens[language == l].sum() for l in range(n_lang)])
    return mi.RoutingStats(("a", "b", "c"), (0, 1), n_expert, top_k, count, count.double(), lang_tokens,
                           item_count, tokens, language)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    stats = _item_stats()
    first = stats.bootstrap("divergence", resamples=40, seed=7)
    again = stats.bootstrap("divergence", resamples=40, seed=7)
    other = stats.bootstrap("divergence", resamples=40, seed=8)
    assert torch.equal(first.samples, again.samples) and not torch.equal(first.samples, other.samples)
    assert first.samples.shape == (40, 2, 3, 3)
    assert bool((first.low <= first.high).all())
    off = ~torch.eye(3, dtype=torch.bool)
    assert bool(((first.low[:, off] <= first.estimate[:, off] + 0.02) &
                 (first.estimate[:, off] <= first.high[:, off] + 0.02)).all())


def test_bootstrap_named_statistics_have_their_shapes():
    stats = _item_stats()
    assert stats.bootstrap("shares", resamples=5, k=3).estimate.shape == (3, 2, 6)
    assert stats.bootstrap("exclusive_sizes", resamples=5, k=3).estimate.shape == (3,)
    assert stats.bootstrap("shared_size", resamples=5, k=3).estimate.shape == ()
    custom = stats.bootstrap(lambda s: s.entropy().mean(), resamples=5)
    assert custom.samples.shape == (5,)


def test_bootstrap_resample_keeps_each_language_item_count():
    stats = _item_stats()
    replicate = boot.resample(stats, torch.Generator().manual_seed(0))
    # every token routes top_k experts, so each resampled language's counts sum to top_k * tokens
    assert torch.equal(replicate.count.sum(-1), replicate.tokens[:, None].expand(3, 2) * stats.top_k)


def test_bootstrap_without_items_explains_how_to_get_them(paper):
    with pytest.raises(ValueError, match="mi.profile"):
        paper.bootstrap(resamples=2)


# -- files --------------------------------------------------------------------------------------


# RoutingStats.load passes the header's JSON lists to the constructor, whose `tuple[...]` annotations
# the runtime type checker (pytest addopts) rejects; fix: `tuple(header["languages"]), tuple(header["layers"])`.


def test_save_load_round_trip_is_exact(tmp_path):
    stats = _item_stats()
    stats.meta["model"] = "tiny"
    stats.per_token = {"indices": torch.randint(0, 6, (10, 2, 2), dtype=torch.int16)}
    loaded = mi.RoutingStats.load(stats.save(tmp_path / "s.routing"))
    for name in ("count", "gate_mass", "tokens", "item_count", "item_tokens", "item_language"):
        assert torch.equal(getattr(loaded, name), getattr(stats, name)), name
        assert getattr(loaded, name).dtype == getattr(stats, name).dtype
    assert torch.equal(loaded.per_token["indices"], stats.per_token["indices"])
    assert (loaded.languages, loaded.layers, loaded.num_experts, loaded.top_k) == \
           (stats.languages, stats.layers, stats.num_experts, stats.top_k)
    assert loaded.meta == {"model": "tiny"}


def test_reference_round_trips_through_save(paper, tmp_path):
    loaded = mi.RoutingStats.load(paper.save(tmp_path / "paper.routing"))
    assert torch.equal(loaded.count, paper.count) and torch.equal(loaded.gate_mass, paper.gate_mass)


def test_save_refuses_to_overwrite(tmp_path):
    stats = _item_stats()
    path = stats.save(tmp_path / "s.routing")
    before = (path / "stats.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _item_stats(seed=1).save(path)
    assert (path / "stats.safetensors").read_bytes() == before
    _item_stats(seed=1).save(path, overwrite=True)
    assert (path / "stats.safetensors").read_bytes() != before


def test_truncated_tensor_file_raises_naming_it(tmp_path):
    path = _item_stats().save(tmp_path / "s.routing")
    tensors = path / "stats.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    with pytest.raises(StatsFileError, match="stats.safetensors"):
        mi.RoutingStats.load(path)


def test_corrupted_tensor_file_raises_naming_it(tmp_path):
    path = _item_stats().save(tmp_path / "s.routing")
    tensors = path / "stats.safetensors"
    tensors.write_bytes(b"\x07garbage" * 50)
    with pytest.raises(StatsFileError, match=str(tensors)):
        mi.RoutingStats.load(path)


def test_corrupted_header_raises_naming_it(tmp_path):
    path = _item_stats().save(tmp_path / "s.routing")
    (path / "meta.json").write_text('{"format": "moe_interp.RoutingStats/1", "langu')
    with pytest.raises(StatsFileError, match="meta.json"):
        mi.RoutingStats.load(path)


def test_header_of_another_format_is_refused(tmp_path):
    path = _item_stats().save(tmp_path / "s.routing")
    (path / "meta.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(StatsFileError, match="meta.json"):
        mi.RoutingStats.load(path)


# -- bad input: ranges, repeats, empty lists, non-finite numbers (issue 12) ---------------------


THRESHOLD_CALLS = {
    "exclusive_experts": lambda s, t: s.exclusive_experts("a", k=3, threshold=t),
    "shared_experts": lambda s, t: s.shared_experts(k=3, threshold=t),
    "layer_profile": lambda s, t: s.layer_profile(k=3, threshold=t),
    "bootstrap exclusive_sizes": lambda s, t: s.bootstrap("exclusive_sizes", resamples=2, k=3, threshold=t),
}


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf")])
@pytest.mark.parametrize("analysis", list(THRESHOLD_CALLS))
def test_threshold_outside_the_unit_interval_is_refused(analysis, threshold):
    """1c62add returned an empty or full set for these (`p > 1.5` is never true)."""
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        THRESHOLD_CALLS[analysis](_item_stats(), threshold)


def test_thresholds_at_the_ends_of_the_interval_are_accepted():
    stats = _item_stats()
    assert stats.exclusive_experts("a", k=3, threshold=1.0).size == 0  # a share never exceeds 1
    assert stats.shared_experts(k=3, threshold=0.0).size == 0           # nor falls below 0


@pytest.mark.parametrize("k", [0, 7, -1, True])
def test_k_outside_one_to_num_experts_is_refused(k):
    """`k=True` was taken as k=1 by 1c62add."""
    with pytest.raises(ValueError, match=r"k \(experts kept per language and layer\) must be an integer in \[1, 6\]"):
        _item_stats().shared_experts(k=k)


def test_repeated_languages_are_refused_not_double_counted():
    """1c62add counted a repeated language's share twice."""
    stats = _item_stats()
    with pytest.raises(ValueError, match=r"languages lists \['a'\] more than once"):
        stats.shared_experts(["a", "b", "a"], k=3)
    with pytest.raises(ValueError, match=r"among lists \['b'\] more than once"):
        stats.exclusive_experts("a", k=3, among=["a", "b", "b"])
    with pytest.raises(ValueError, match=r"target lists \['a'\] more than once"):
        stats.exclusive_experts(["a", "a"], k=3)
    with pytest.raises(ValueError, match=r"languages lists \['c'\] more than once"):
        stats.shares(["c", "c"], k=3)


def test_empty_language_list_is_refused_and_none_means_all():
    """`shared_experts([])` meant every language on 1c62add."""
    stats = _item_stats()
    with pytest.raises(ValueError, match="languages is empty.*pass None for all"):
        stats.shared_experts([], k=3)
    with pytest.raises(ValueError, match="among is empty"):
        stats.exclusive_experts("a", k=3, among=[])
    with pytest.raises(ValueError, match="target is empty"):
        stats.exclusive_experts([], k=3)
    assert stats.shared_experts(None, k=3) == stats.shared_experts(["a", "b", "c"], k=3)
    with pytest.raises(ValueError, match="layers is empty"):
        stats.exclusive_experts("a", k=3, layers=[])


@pytest.mark.parametrize("level", [float("nan"), float("inf"), 0.0, 1.0])
def test_bootstrap_level_must_be_a_fraction(level):
    with pytest.raises(ValueError, match=r"level \(the interval's coverage\) must be a number in \(0, 1\)"):
        _item_stats().bootstrap(resamples=2, level=level)


@pytest.mark.parametrize("n", [0, -3, True])
def test_bootstrap_resamples_must_be_a_positive_integer(n):
    with pytest.raises(ValueError, match="resamples must be an integer >= 1"):
        _item_stats().bootstrap(resamples=n)


def test_bootstrap_names_resamples_when_given_its_old_name_n():
    with pytest.raises(TypeError, match="bootstrap's n is named resamples now"):
        _item_stats().bootstrap("divergence", n=5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_expert_set_refuses_non_finite_strengths(value):
    with pytest.raises(ValueError, match=r"strengths\[3\]\[5\] must be a finite number"):
        mi.ExpertSet({3: [5]}, strengths={3: {5: value}})


def test_expert_set_refuses_negative_experts_and_missing_strengths():
    """A negative expert index wraps round to the last experts in tensor indexing."""
    with pytest.raises(ValueError, match="integer indices >= 0; layer 3 lists -1"):
        mi.ExpertSet({3: [-1]})
    with pytest.raises(ValueError, match="no value for expert 2 of layer 3"):
        mi.ExpertSet({3: [1, 2]}, strengths={3: {1: 0.5}})


def test_band_edges_must_be_increasing_fractions():
    with pytest.raises(ValueError, match=r"increasing fractions in \[0, 1\]"):
        bands(range(48), (0.0, float("nan"), 0.7, 1.0))
    with pytest.raises(ValueError, match=r"increasing fractions in \[0, 1\]"):
        bands(range(48), (0.0, 0.7, 0.3, 1.0))


def test_cluster_count_must_be_a_positive_integer(paper):
    with pytest.raises(ValueError, match="number of clusters"):
        paper.cluster().assignments(0)


# -- one layer vocabulary (issue 14) --------------------------------------------------------------


def test_exclusive_experts_take_band_names_as_every_analysis_does(paper):
    """1c62add failed inside int("m"): expert sets took no band names while divergence did."""
    full = paper.exclusive_experts("sw")
    middle = paper.exclusive_experts("sw", layers="middle")
    # the paper's middle band of 48 layers is 10-39 (its 10/48 and 40/48 edges)
    assert dict(middle) == {layer: experts for layer, experts in full.items() if 10 <= layer <= 39}
    assert paper.exclusive_experts("sw", layers="middle-third") == paper.exclusive_experts("sw", layers=range(16, 32))
    assert paper.shared_experts(["en", "zh"], layers="late") == paper.shared_experts(["en", "zh"], layers=range(40, 48))
    torch.testing.assert_close(paper.divergence(layers="early-third"), paper.divergence()[:16])
    assert paper.cluster(layers=slice(10, 40)).layers == tuple(range(10, 40))


@pytest.mark.parametrize("layers, message", [("centre", "unknown band or layer selection 'centre'"),
                                             ([], "layers is empty"), ([48], "layer 48 is not available"),
                                             ([1.5], "layer indices must be ints")])
def test_every_analysis_refuses_bad_layers_the_same_way(paper, layers, message):
    for call in (lambda: paper.divergence(layers=layers), lambda: paper.exclusive_experts("sw", layers=layers),
                 lambda: paper.shared_experts(layers=layers), lambda: paper.cluster(layers=layers)):
        with pytest.raises((ValueError, TypeError), match=message):
            call()
