"""The demo report's load-and-health and co-activation findings (issue 28): the numbers they are
worded from equal a computation by hand from the counts, and the sentences follow the numbers."""

import numpy as np
import pytest
import torch

import moe_interp as mi
from moe_interp.experiments.demo import (
    _co_activation_finding,
    _co_activation_record,
    _health_finding,
    _health_record,
    _layer_text,
)


def _stats(seed: int, dead: dict[int, list[int]], items: int = 6, layers: int = 3, experts: int = 6):
    """Two languages of `items` texts each, top-2 routing drawn at random, the experts in `dead`
    (`{layer: [expert]}`) never chosen; per-item counts and co-activation kept, as mi.profile does."""
    generator = torch.Generator().manual_seed(seed)
    item_count = torch.zeros(2 * items, layers, experts, dtype=torch.long)
    pairs = torch.zeros(2, layers, experts, experts, dtype=torch.long)
    tokens = torch.zeros(2 * items, dtype=torch.long)
    for item in range(2 * items):
        n = int(torch.randint(5, 15, (1,), generator=generator))
        tokens[item] = n
        for layer in range(layers):
            allowed = [e for e in range(experts) if e not in dead.get(layer, [])]
            for _ in range(n):
                chosen = [allowed[i] for i in torch.randperm(len(allowed), generator=generator)[:2].tolist()]
                for i in chosen:
                    item_count[item, layer, i] += 1
                    for j in chosen:
                        pairs[item // items, layer, i, j] += 1
    language = torch.arange(2 * items) // items
    count = torch.stack([item_count[language == g].sum(0) for g in range(2)])
    return mi.RoutingStats(("eng", "deu"), tuple(range(layers)), experts, 2, count, count / 2.0,
                           torch.stack([tokens[language == g].sum() for g in range(2)]), item_count=item_count,
                           item_tokens=tokens, item_language=language, co_activation=pairs)


@pytest.fixture(scope="module")
def models():
    return {"trained": _stats(0, {1: [0, 3], 2: [5]}), "twin 1": _stats(1, {}), "twin 2": _stats(2, {2: [1]})}


def test_the_health_record_equals_the_counts_by_hand(models):
    record = _health_record({name: s.health(resamples=50) for name, s in models.items()})
    for name, s in models.items():
        load = s.count.sum(0).double().numpy()                       # [layer, expert], both languages
        mine = record["models"][name]
        assert mine["dead"] == (load == 0).sum(-1).tolist()
        cv = load.std(-1) / load.mean(-1)                             # population std over the experts
        assert [v[0] for v in mine["cv"]] == pytest.approx(cv.tolist(), abs=1e-6)
        assert mine["cv_mean"][0] == pytest.approx(cv.mean(), abs=1e-6)
        assert [v[0] for v in mine["max_over_mean"]] == pytest.approx((load.max(-1) / load.mean(-1)).tolist(), abs=1e-6)
        assert all(low <= high for _, low, high in mine["cv"])
    assert record["models"]["trained"]["dead_experts"] == {"1": [0, 3], "2": [5]}
    assert record["tokens"] == int(models["trained"].tokens.sum()) and record["resamples"] == 50
    diff = record["models"]["twin 1"]["difference"]["cv"]
    trained, twin = record["models"]["trained"]["cv_mean"][0], record["models"]["twin 1"]["cv_mean"][0]
    assert diff[0] == pytest.approx(trained - twin)


def test_the_health_finding_states_the_dead_experts_and_the_cv(models):
    record = _health_record({name: s.health(resamples=50) for name, s in models.items()})
    line = _health_finding(record)
    tokens = int(models["trained"].tokens.sum())
    assert line.startswith(f"3 experts never chosen in layers 1-2 of the trained model over {tokens:,} held-out "
                           "tokens, none in twin 1, 1 in twin 2; load cv over the experts (mean of MoE layers 0-2) ")
    cv = record["models"]["trained"]["cv_mean"]
    assert f"{cv[0]:.2f} [{cv[1]:.2f}, {cv[2]:.2f}]" in line
    # the verdict follows the paired interval: planted numbers either side of 0
    for diff, verdict in (([0.2, 0.1, 0.3], "more uneven"), ([-0.2, -0.3, -0.1], "more even"),
                          ([0.0, -0.1, 0.1], "no difference in evenness")):
        record["models"]["twin 1"]["difference"]["cv"] = diff
        assert verdict in _health_finding(record)
    none = {"layers": [0], "tokens": 10, "models": {"trained": {"dead": [0]}}}
    assert _health_finding(none) == "every expert of the trained model chosen over 10 held-out tokens"


def test_the_co_activation_record_equals_the_pairs_by_hand(models):
    record = _co_activation_record(models)
    assert record["even"] == pytest.approx(1 / 5)
    for name, s in models.items():
        pairs = s.co_activation.sum(0).double().numpy()               # [layer, E, E]
        for layer in range(3):
            load = np.diag(pairs[layer])
            partner = [max(pairs[layer, i, j] for j in range(6) if j != i) for i in range(6)]
            assert record["models"][name]["top_partner"][layer] == pytest.approx(sum(partner) / load.sum(), abs=1e-6)
            i, j, rate = record["models"][name]["pair"][layer]
            rates = {(a, b): pairs[layer, a, b] / load[a] for a in range(6) for b in range(6)
                     if a != b and load[a] >= 0.01 * load.sum()}
            assert rate == pytest.approx(max(rates.values()), abs=1e-6) and rates[i, j] == pytest.approx(rate, abs=1e-6)
    line = _co_activation_finding(record)
    trained = record["models"]["trained"]["top_partner"]
    assert f"{min(trained):.2f}-{max(trained):.2f} also go to its most frequent partner in the trained model" in line
    assert "its 2 random-init twins" in line and "an even top-2 router over 6 experts: about 0.20" in line


def test_no_co_activation_record_without_pairs_or_with_top_1(models):
    plain = models["trained"].select(["eng", "deu"])
    bare = mi.RoutingStats(plain.languages, plain.layers, plain.num_experts, plain.top_k, plain.count,
                           plain.gate_mass, plain.tokens)
    assert _co_activation_record({"trained": bare, "twin 1": models["twin 1"]}) is None


def test_layer_runs_are_joined():
    assert _layer_text([1, 2, 3, 4]) == "layers 1-4"
    assert _layer_text([1, 2, 4, 6, 7]) == "layers 1-2, 4 and 6-7"
    assert _layer_text([5]) == "layer 5"
