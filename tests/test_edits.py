"""Edit kinds are defined in one place (`moe_interp.runtime._edits`): a new kind is a subclass
with a name and an `apply`, and an intervention that returns it; the compiler, the plan and
the kernels take it as it is.

The kind here, a ceiling on chosen experts' router logits, exists only in this file. Its
effect is checked against the router's maths written out by hand (Qwen3-MoE: softmax of
`hidden @ W.T`, top-k, renormalised), on the routing the experts module really received
(a torch hook on its call arguments)."""

import dataclasses

import pytest
import torch

import moe_interp as mi
from conftest import encode, tiny
from moe_interp.runtime._edits import SITES, ScoreKind, WeightsKind
from moe_interp.runtime._interventions import Intervention
from moe_interp.runtime._plan import Edit


class Ceiling(ScoreKind):
    """The masked experts' scores at most `scale`."""

    __slots__ = ()
    name = "ceiling"

    def apply(self, z, payload, scale):
        return torch.where(payload, z.clamp(max=scale), z)


@dataclasses.dataclass(frozen=True)
class CapExperts(Intervention):
    """Cap `experts` of `layer` at `ceiling` on the router's `site`."""

    layer: int
    experts: tuple
    ceiling: float
    site: str = "logits"

    def edits(self, spec):
        mask = torch.zeros(spec.num_experts, dtype=torch.bool)
        mask[list(self.experts)] = True
        return [(self.layer, self.site, Edit(Ceiling(), mask, self.ceiling))]


def _router_inputs_and_experts_routing(model, enc, layer):
    """The gate's input hidden states and the (indices, weights) the experts module was called
    with, at `layer`, read by torch hooks during whatever trace runs in the block."""
    block = model._module.model.layers[layer].mlp
    seen = {}
    hooks = [block.gate.register_forward_pre_hook(lambda m, args: seen.__setitem__("hidden", args[0].detach())),
             block.experts.register_forward_pre_hook(
                 lambda m, args: seen.update(indices=args[1].detach(), weights=args[2].detach()))]
    return block, seen, hooks


def _by_hand(block, hidden, mask, ceiling):
    """Qwen3-MoE's router on `hidden`, with the masked experts' logits capped at `ceiling`."""
    z = torch.nn.functional.linear(hidden.reshape(-1, block.gate.hidden_dim), block.gate.weight).detach()
    z = torch.where(mask, torch.minimum(z, torch.tensor(ceiling)), z)
    weights, indices = torch.topk(torch.softmax(z.float(), dim=-1), block.gate.top_k, dim=-1)
    return indices, weights / weights.sum(-1, keepdim=True)


def _traced(model, enc, layer, *interventions):
    block, seen, hooks = _router_inputs_and_experts_routing(model, enc, layer)
    try:
        with mi.trace(model, enc, *interventions, mi.RouterRecord()) as tr:
            pass
    finally:
        for hook in hooks:
            hook.remove()
    return block, seen, tr


@pytest.mark.parametrize("site", ["logits", "scores"])
def test_a_kind_defined_outside_the_package_routes_as_its_hand_computation(site):
    model = tiny("qwen3_moe")
    spec = mi.describe(model)
    layer = spec.moe_layers[-1]
    enc = encode(model)
    real = enc["attention_mask"].reshape(-1).bool()
    block, base, _ = _traced(model, enc, layer)
    z = torch.nn.functional.linear(base["hidden"].reshape(-1, block.gate.hidden_dim), block.gate.weight).detach()
    favourite = int(torch.bincount(base["indices"][real].reshape(-1), minlength=spec.num_experts).argmax())
    ceiling = float(z[real, favourite].median())  # about half the tokens capped
    mask = torch.zeros(spec.num_experts, dtype=torch.bool)
    mask[favourite] = True

    # on a router that ranks its logits, its scores are its logits: both sites act alike
    block, seen, tr = _traced(model, enc, layer, CapExperts(layer, (favourite,), ceiling, site))
    indices, weights = _by_hand(block, seen["hidden"], mask, ceiling)

    assert torch.equal(seen["indices"].sort(-1).values, indices.sort(-1).values)
    order = seen["indices"].argsort(-1), indices.argsort(-1)
    assert torch.allclose(seen["weights"].float().gather(-1, order[0]), weights.gather(-1, order[1]), atol=1e-6)
    hand_count = torch.bincount(indices[real].reshape(-1), minlength=spec.num_experts)
    assert torch.equal(tr.routing.count[0, spec.position(layer)], hand_count)
    base_count = torch.bincount(base["indices"][real].reshape(-1), minlength=spec.num_experts)
    assert 0 < hand_count[favourite] < base_count[favourite]  # the cap moved some tokens, not all
    assert torch.equal(tr.routing.count[0, :spec.position(layer)],
                       _traced(model, enc, layer)[2].routing.count[0, :spec.position(layer)])


def test_a_new_kind_composes_with_the_built_in_ones_in_list_order():
    """A ceiling of -10 after an additive steer of 1e4 on the same expert caps the steered
    logit (never chosen); before it, the steer lifts the capped logit to ~1e4 (always chosen)."""
    model = tiny("qwen3_moe")
    spec = mi.describe(model)
    layer = spec.moe_layers[1]
    enc = encode(model)
    real = int(enc["attention_mask"].sum())
    steer = mi.LayerRouteSteer({layer: {5: 1.0}}, scale=1e4, mode="additive")
    cap = CapExperts(layer, (5,), -10.0)
    position = spec.position(layer)
    _, _, capped = _traced(model, enc, layer, steer, cap)
    _, _, steered = _traced(model, enc, layer, cap, steer)
    assert int(capped.routing.count[0, position, 5]) == 0
    assert int(steered.routing.count[0, position, 5]) == real


def test_the_plan_holds_a_new_kind_at_its_site_like_any_other():
    from moe_interp.runtime._compile import compile_plan

    spec = mi.describe(tiny("deepseek_v3"))
    layer = spec.moe_layers[0]
    plan = compile_plan(spec, [CapExperts(layer, (1,), 0.0, "scores"), mi.ExpertAblate({layer: [2]}, mode="drop")])
    entry = plan.layers[0]
    assert [site for site, _ in entry.edits] == ["scores", "weights"]
    assert [SITES.index(site) for site, _ in entry.edits] == sorted(SITES.index(site) for site, _ in entry.edits)
    assert entry.at("scores")[0].kind == Ceiling() and entry.at("scores")[0].scale == 0.0
    assert entry.at("weights")[0].kind == "drop"


def test_an_edit_at_a_site_its_kind_does_not_take_is_refused_naming_the_sites():
    class Halve(WeightsKind):
        __slots__ = ()
        name = "halve"

        def apply(self, indices, weights, payload, scale):
            return torch.where(payload[indices], weights / 2, weights)

    @dataclasses.dataclass(frozen=True)
    class HalveLogits(Intervention):
        def edits(self, spec):
            return [(spec.moe_layers[0], "logits", Edit(Halve(), torch.ones(spec.num_experts, dtype=torch.bool), 1.0))]

    model = tiny("qwen3_moe")
    with pytest.raises(ValueError, match=r"HalveLogits.edits put a 'halve' edit at site 'logits'; Halve acts at "
                                         r"'weights'"):
        mi.trace(model, "Hello", HalveLogits())
    with pytest.raises(ValueError, match=r"Ceiling acts at 'logits', 'scores'"):  # "select" is the compiler's
        mi.trace(model, "Hello", CapExperts(mi.describe(model).moe_layers[0], (1,), 0.0, "select"))


def test_steering_the_scores_is_spelled_site_scores():
    with pytest.raises(ValueError, match=r"site must be 'logits' or 'scores', got 'selection': the scores top-k "
                                         r"ranks are site='scores'"):
        mi.LayerRouteSteer({1: {3: 1.0}}, site="selection")
    assert mi.LayerRouteSteer({1: {3: 1.0}}, site="scores").site == "scores"
