"""Interventions: behaviours that single-change mutants (scripts/mutants.py) showed no test pinned.
Each test names the mutant it catches."""

import pytest
import torch

import moe_interp as mi
from conftest import encode, tiny
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._shipping import RerouteNotHeld, check_held


def test_group_limited_reroute_judges_the_groups_that_keep_fewest_experts():
    """Mutant interventions.group-fewest: the check summed the groups that keep the most.

    DeepSeek-V3's tiny router picks top-2 among the experts of 1 of its 2 groups of 4.
    Ablating 3 experts of group 0 leaves it one: a token whose group is 0 would have to
    take an ablated expert, although group 1 keeps all 4."""
    model = tiny("deepseek_v3")
    layer = mi.describe(model).moe_layers[0]
    with pytest.raises(ValueError, match=rf"layer {layer} keeps \[1, 4\] experts"):
        mi.trace(model, "a", mi.ExpertAblate({layer: [0, 1, 2]}))


@pytest.mark.parametrize("ablate_first", [True, False])
def test_reroute_holds_after_a_relative_steer_where_top_k_ranks_the_logits(ablate_first):
    """Mutant interventions.reroute-last: the -1e9 went before the steers of its stage, and a
    relative steer (z + 3|z|) brought the expert back. GPT-OSS ranks the logits site itself
    (no later site re-applies the mask), so only the order protects it."""
    model = tiny("gpt_oss")
    spec = mi.describe(model)
    assert spec.family == "gpt_oss"
    layer = spec.moe_layers[-1]
    enc = encode(model)
    with mi.trace(model, enc, mi.RouterRecord()) as tr:
        pass
    favourite = int(tr.routing.count[0, -1].argmax())
    ablate = mi.ExpertAblate({layer: [favourite]})
    steer = mi.LayerRouteSteer({layer: {favourite: 1.0}}, scale=3.0)
    with mi.trace(model, enc, *([ablate, steer] if ablate_first else [steer, ablate]), mi.RouterRecord()) as tr:
        pass
    assert int(tr.routing.count[0, -1, favourite]) == 0
    assert int(tr.routing.count[0, -1].sum()) == spec.top_k * int(enc["attention_mask"].sum())


def test_a_steer_of_scale_zero_compiles_to_nothing():
    """Mutant interventions.scale-zero: scale 0 still compiled an edit into every forward."""
    spec = mi.describe(tiny("qwen3_moe"))
    assert mi.LayerRouteSteer({1: {3: 1.0}}, scale=0.0).edits(spec) == []
    assert compile_plan(spec, [mi.LayerRouteSteer({1: {3: 1.0}, 2: {0: 2.0}}, scale=0.0)]).layers == ()
    assert [layer for layer, _, _ in mi.LayerRouteSteer({1: {3: 1.0}}, scale=0.5).edits(spec)] == [1]


def test_one_leaked_selection_of_an_ablated_expert_withholds_the_trace():
    """Mutant interventions.held-once: a single leaked selection was not reported."""
    plan = compile_plan(mi.describe(tiny("qwen3_moe")), [mi.ExpertAblate({1: [3], 2: [0]})])
    check_held(plan, {"rerouted_used": torch.tensor([0, 0])})
    with pytest.raises(RerouteNotHeld, match="selected 1 times in layer 2"):
        check_held(plan, {"rerouted_used": torch.tensor([0, 1])})


def _stats_of(spec, seed: int = 0) -> mi.RoutingStats:
    g = torch.Generator().manual_seed(seed)
    layers, experts = len(spec.moe_layers), spec.num_experts
    count = torch.randint(0, 50, (3, layers, experts), generator=g)
    count[..., 0] += 1
    return mi.RoutingStats(("en", "de", "zh"), spec.moe_layers, experts, spec.top_k, count, count.double(),
                           torch.tensor([100, 100, 100]))


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_route_steer_takes_thresholds_at_both_ends_of_the_unit_interval(threshold):
    """Mutant interventions.threshold-zero: threshold 0 was refused."""
    spec = mi.describe(tiny("qwen3_moe"))
    steer = mi.RouteSteer(layers="middle", target="en", stats=_stats_of(spec), threshold=threshold)
    assert steer.threshold == threshold


def test_route_steer_default_k_is_the_papers_steering_k_scaled_to_the_model():
    """Mutant interventions.steer-default-k: the default scaled the exclusive sets' 15 of 128
    experts instead of steering's 20. On 16 experts (top-2): 3, not 2.

    Each language's three most used experts (30, 20, 10 uses): en 0 1 2, de 0 1 3, zh 0 2 3.
    Keeping 3, experts 0-3 are shared by two or three languages (every share below 0.7);
    keeping 2 (en 0 1, de 0 1, zh 0 2), expert 2 is zh's alone: shared are 0 and 1."""
    spec = mi.describe(mi.zoo.tiny_model("qwen3_moe", num_experts=16))
    per_language = torch.zeros(3, 16, dtype=torch.long)
    for row, experts in enumerate([(0, 1, 2), (0, 1, 3), (0, 2, 3)]):
        per_language[row, list(experts)] = torch.tensor([30, 20, 10])
    count = per_language[:, None, :].expand(3, len(spec.moe_layers), 16).contiguous()
    stats = mi.RoutingStats(("en", "de", "zh"), spec.moe_layers, 16, 2, count, count.double(),
                            torch.tensor([30, 30, 30]))
    steer = mi.RouteSteer(layers="middle", target="en", stats=stats)
    middle = spec.select_layers("middle")
    assert dict(steer.expert_set(spec)) == {layer: (0, 1, 2, 3) for layer in middle}
    assert dict(stats.shared_experts(k=2, threshold=0.7, layers=middle)) == {layer: (0, 1) for layer in middle}
