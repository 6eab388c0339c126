"""Load and health per layer (`mi.analysis.health`, `RoutingStats.health`, `plot_health`), each
quantity against a computation written here from per-token routing that plain torch hooks read
off a tiny model's experts modules (no package code), over padded batches and several invokes."""

import math
import statistics

import pytest
import torch

import moe_interp as mi

CORPUS = {  # lengths differ within each language: every batch is padded
    "eng": ["The cat sat on the mat.", "Hi", "All human beings are born free and equal.", "ok then"],
    "fra": ["Bonjour", "Tous les êtres humains naissent libres.", "Le chat"],
    "deu": ["Guten Morgen, liebe Welt", "Ja", "Alle Menschen sind frei geboren."],
}


@pytest.fixture(scope="module")
def model():
    # 16 experts (top-2) over these 13 texts: some experts go unused per language, one over all of them
    return mi.zoo.tiny_model("qwen3_moe", padding_side="left", num_experts=16)


def routed_alone(model, text):
    """`[layer, E]` experts chosen for `text` run alone through the plain HF model: each MoE
    layer's experts module gets `(hidden, top_k_index, top_k_weights)`; a pre-hook counts the
    indices. Experts modules found by name; their width from the HF config."""
    hf = model._module
    experts = sorted((n, m) for n, m in hf.named_modules() if n.endswith("mlp.experts"))
    width = hf.config.num_experts
    seen = {}
    handles = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen.__setitem__(name, torch.bincount(args[1].reshape(-1), minlength=width)))
        for name, module in experts]
    enc = model.tokenizer([text], return_tensors="pt")
    try:
        with torch.no_grad():
            hf(**enc)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([seen[name] for name, _ in experts]), enc["input_ids"].shape[1]


@pytest.fixture(scope="module")
def oracle(model):
    """Per language: `[layer, E]` counts summed over its texts and its token count; per text too."""
    per_text = {lang: [routed_alone(model, t) for t in texts] for lang, texts in CORPUS.items()}
    counts = {lang: sum(c for c, _ in rows) for lang, rows in per_text.items()}
    tokens = {lang: sum(n for _, n in rows) for lang, rows in per_text.items()}
    return counts, tokens, per_text


@pytest.fixture(scope="module")
def profiled(model):
    return mi.profile(model, CORPUS, batch_size=3, progress=False)


def by_hand(load):
    """cv (population std / mean), max / mean, dead experts, normalised entropy of one layer's load."""
    load = [int(x) for x in load]
    mean = sum(load) / len(load)
    shares = [x / sum(load) for x in load]
    entropy = -sum(p * math.log(p) for p in shares if p > 0) / math.log(len(load))
    return statistics.pstdev(load) / mean, max(load) / mean, [e for e, x in enumerate(load) if x == 0], entropy


def test_health_of_a_profile_equals_the_load_counted_from_hooks(profiled, oracle):
    counts, tokens, _ = oracle
    h = profiled.health(resamples=0)
    assert h.scopes == ("eng", "fra", "deu", "all")
    assert h.dead_count.tolist() == [[1, 0, 2, 0], [1, 0, 3, 1], [1, 1, 2, 0], [0, 0, 1, 0]]  # read off the hooks
    total = sum(counts.values())
    assert torch.equal(h.load[-1], total) and h.tokens.tolist() == [*tokens.values(), sum(tokens.values())]
    for s, load in enumerate([*counts.values(), total]):
        assert torch.equal(h.load[s], load)
        for layer in range(load.shape[0]):
            cv, peak, dead, entropy = by_hand(load[layer])
            assert h.cv[s, layer].item() == pytest.approx(cv, rel=1e-12)
            assert h.max_over_mean[s, layer].item() == pytest.approx(peak, rel=1e-12)
            assert h.dead[s, layer].nonzero().flatten().tolist() == dead
            assert h.entropy[s, layer].item() == pytest.approx(entropy, rel=1e-9)
            assert h.uniform[s, layer].item() == pytest.approx(sum(load[layer].tolist()) / load.shape[1])
    assert h.dead_experts() == {layer: tuple(e for e in range(total.shape[1]) if total[i, e] == 0)
                                for i, layer in enumerate(h.layers) if (total[i] == 0).any()}


def test_health_of_a_trace_with_several_padded_invokes_equals_the_hooks(model, oracle):
    counts, tokens, _ = oracle
    with mi.trace(model, mi.RouterRecord()) as tr:
        for lang, texts in CORPUS.items():
            with tr.invoke(texts, group=lang):
                pass
    h = tr.routing.health()
    assert h.cv_interval is None  # a trace keeps no per-item counts: no interval, not a made-up one
    for s, lang in enumerate(CORPUS):
        assert torch.equal(h.load[s], counts[lang]) and int(h.tokens[s]) == tokens[lang]
        assert h.dead_count[s].tolist() == [len(by_hand(row)[2]) for row in counts[lang]]
    total = sum(counts.values())
    assert h.max_over_mean[-1].tolist() == pytest.approx([by_hand(row)[1] for row in total], rel=1e-12)


def test_the_interval_of_a_language_whose_texts_route_alike_is_a_point(model):
    """Resampling texts that all route the same cannot move cv: the interval is the estimate.
    The scope "all" mixes the two languages' replicates, so it does move."""
    p = mi.profile(model, {"eng": ["abc abc"] * 4, "fra": ["Bonjour", "Le chat", "oui", "Tous les êtres"]},
                   batch_size=3, progress=False)
    h = p.health(resamples=40, seed=3)
    ci = h.cv_interval
    assert ci.samples.shape == (40, 3, 4) and h.max_over_mean_interval.samples.shape == (40, 3, 4)
    assert torch.equal(ci.low[0], h.cv[0]) and torch.equal(ci.high[0], h.cv[0])
    assert bool((ci.high[1] > ci.low[1]).any())
    again = p.health(resamples=40, seed=3)
    assert torch.equal(again.cv_interval.samples, ci.samples)  # seeded


def test_the_interval_of_all_sums_each_replicates_languages(profiled, oracle):
    """Every replicate's "all" row is the cv of the sum of its languages' rows: the replicate's
    load is rebuilt here from the per-item counts (items of the profile equal the hooks' texts)."""
    _, _, per_text = oracle
    items = [c for rows in per_text.values() for c, _ in rows]
    assert torch.equal(profiled.item_count.long(), torch.stack(items))
    h = profiled.health(resamples=5)
    for sample in h.cv_interval.samples:
        assert sample.shape == (4, 4) and bool((sample[-1] >= 0).all())
    assert h.cv_interval.estimate.tolist() == h.cv.tolist()
    table = h.to_pandas()
    assert set(table.columns) >= {"cv_low", "cv_high", "max_over_mean_low", "max_over_mean_high"}
    assert table[table.scope == "all"].dead.tolist() == h.dead_count[-1].tolist()


def test_a_language_with_no_tokens_is_neither_dead_nor_even():
    count = torch.tensor([[[3, 1, 0, 0]], [[0, 0, 0, 0]]])
    s = mi.RoutingStats(("en", "xx"), (0,), 4, 1, count, count.double(), torch.tensor([4, 0]))
    h = s.health()
    assert h.dead[1].sum() == 0 and math.isnan(h.cv[1, 0]) and math.isnan(h.max_over_mean[1, 0])
    assert h.dead_count[:, 0].tolist() == [2, 0, 2]


def test_a_group_named_all_is_refused_naming_the_fix():
    count = torch.tensor([[[1, 1]]])
    s = mi.RoutingStats(("all",), (0,), 2, 1, count, count.double(), torch.tensor([2]))
    with pytest.raises(ValueError, match="rename that group"):
        s.health()
    with pytest.raises(KeyError, match="not one of"):
        mi.RoutingStats(("en",), (0,), 2, 1, count, count.double(), torch.tensor([2])).health().dead_experts("de")


def test_the_health_figure_crosses_the_experts_the_hooks_never_saw(profiled, oracle):
    counts, _, _ = oracle
    total = sum(counts.values())
    fig = profiled.plot_health(profiled, names=["trained", "twin"])
    crosses = [t for t in fig.data if t.name == "never chosen"]
    bars = [t for t in fig.data if t.name == "experts never chosen"]
    dead = (total == 0).nonzero().tolist()
    assert len(crosses) == 2 and sorted(zip(crosses[0].y, crosses[0].x)) == sorted(map(tuple, dead))
    assert list(bars[0].x) == (total == 0).sum(-1).tolist()
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    uniform = total.double().sum(-1, keepdim=True) / total.shape[1]
    expected = torch.log2(total.double() / uniform)
    got = torch.tensor([[float("nan") if v is None else v for v in row] for row in heat.z], dtype=torch.float64)
    assert torch.allclose(got[total > 0], expected[total > 0]) and bool(got[total == 0].isnan().all())
    assert fig.layout.title.text.endswith(f"trained {len(dead)}, twin {len(dead)}")
