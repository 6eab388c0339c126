"""Interventions act where each architecture decides its routing, exactly as the formulas say."""

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

import moe_interp as mi
from conftest import encode, oracle_routing, tiny

def run(model, enc, *interventions):
    with mi.trace(model, enc, *interventions, mi.RouterRecord()) as tr:
        pass
    return tr


def test_additive_steer_selects_the_expert_only_in_steered_layers(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    enc = encode(model)
    layer = spec.moe_layers[1]
    base = run(model, enc).routing
    # sigmoid-with-bias routers saturate at the logits: steer the score top-k ranks instead
    site = "scores" if spec.choice else "logits"
    steered = run(model, enc, mi.LayerRouteSteer({layer: {5: 1.0}}, scale=1e4, mode="additive", site=site))
    tokens = int(steered.routing.tokens[0])
    position = spec.position(layer)
    assert steered.routing.count[0, position, 5] >= 0.99 * tokens
    assert torch.equal(steered.routing.count[0, :position], base.count[0, :position])
    assert not torch.isnan(steered.output.logits).any()


def test_reroute_means_never_selected_on_the_experts_real_input(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    enc = encode(model)
    base, _ = oracle_routing(model, enc)
    layer = spec.moe_layers[-1]
    position = spec.position(layer)
    favourite = int(base[position].argmax())
    tr = run(model, enc, mi.ExpertAblate({layer: [favourite]}))
    assert tr.routing.count[0, position, favourite] == 0
    assert tr.routing.count[0, position].sum() == spec.top_k * tr.routing.tokens[0]
    assert not torch.isnan(tr.output.logits).any()


def test_reroute_beats_a_large_selection_bias_on_deepseek_v3():
    """-1e9 at the logits would still lose to e_score_correction_bias; ablation acts after it."""
    model = mi.zoo.tiny_model("deepseek_v3", seed=3)
    spec = mi.describe(model)
    layer = spec.moe_layers[0]
    with torch.no_grad():
        model._module.get_submodule(spec.routers[0]).e_score_correction_bias[4] = 50.0
    enc = encode(model)
    assert run(model, enc).routing.count[0, 0, 4] == run(model, enc).routing.tokens[0]
    assert run(model, enc, mi.ExpertAblate({layer: [4]})).routing.count[0, 0, 4] == 0


def test_drop_keeps_selection_but_changes_the_output(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    enc = encode(model)
    base = run(model, enc)
    layer = spec.moe_layers[0]
    favourite = int(base.routing.count[0, 0].argmax())
    dropped = run(model, enc, mi.ExpertAblate({layer: [favourite]}, mode="drop"))
    assert torch.equal(dropped.routing.count[0, 0], base.routing.count[0, 0])
    assert dropped.routing.gate_mass[0, 0, favourite] == 0
    assert not torch.allclose(dropped.output.logits, base.output.logits)
    assert not torch.isnan(dropped.output.logits).any()


# -- exactness against independent copies whose router forward is written by hand -------

def _softmax_topk(norm):
    def select(z, k):
        p = torch.softmax(z.float(), dim=-1)
        w, idx = torch.topk(p, k, dim=-1)
        if norm:
            w = w / w.sum(-1, keepdim=True)
        return w.to(z.dtype), idx
    return select


def _topk_softmax(z, k):
    top, idx = torch.topk(z, k, dim=-1)
    return torch.softmax(top, dim=-1), idx


def _selection(arch, config):
    if arch == "gpt_oss":
        return _topk_softmax
    return _softmax_topk(True if arch == "mixtral" else config.norm_topk_prob)


def hand_written_copy(model, arch, edit):
    """A fresh HF model with the same weights; each router's forward is `edit(z)`, then selection."""
    hf = model._module
    copy = AutoModelForCausalLM.from_config(hf.config).eval()
    copy.load_state_dict(hf.state_dict())
    spec = mi.describe(model)
    select = _selection(arch, hf.config)
    for layer, path in zip(spec.moe_layers, spec.routers):
        router = copy.get_submodule(path)

        def forward(hidden, router=router, layer=layer):
            hidden = hidden.reshape(-1, router.weight.shape[1])
            z = hidden @ router.weight.T
            if getattr(router, "bias", None) is not None:
                z = z + router.bias
            z = edit(layer, z)
            w, idx = select(z, spec.top_k)
            return z, w, idx
        router.forward = forward
    return copy


EXACT = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "gpt_oss"]


@pytest.mark.parametrize("arch", EXACT)
def test_relative_steer_equals_hand_written_router(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    strengths = {spec.moe_layers[0]: {1: 0.5, 6: 0.25}, spec.moe_layers[-1]: {2: 0.8}}
    scale = 3.0

    def edit(layer, z):
        for e, s in strengths.get(layer, {}).items():
            z = z.clone()
            z[:, e] = z[:, e] + scale * s * z[:, e].abs()
        return z
    enc = encode(model)
    with torch.no_grad():
        expected = hand_written_copy(model, arch, edit)(**enc).logits
    got = run(model, enc, mi.LayerRouteSteer(strengths, scale=scale)).output.logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, run(model, enc).output.logits, atol=1e-5), "the steer must matter"


@pytest.mark.parametrize("arch", EXACT)
def test_reroute_equals_hand_written_router(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    ablated = {spec.moe_layers[0]: [0, 3], spec.moe_layers[-1]: [5]}

    def edit(layer, z):
        z = z.clone()
        z[:, ablated.get(layer, [])] = -1e9
        return z
    enc = encode(model)
    with torch.no_grad():
        expected = hand_written_copy(model, arch, edit)(**enc).logits
    got = run(model, enc, mi.ExpertAblate(ablated)).output.logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("intervention", [
    mi.LayerRouteSteer({1: {3: 1.0}}, scale=0.0), mi.LayerRouteSteer({}, scale=2.0), mi.ExpertAblate({}),
    mi.ExpertAblate({1: []}), mi.LayerRouteSteer(mi.ExpertSet({}, strengths={}), scale=1.0)])
def test_scale_zero_or_empty_sets_are_bitwise_a_plain_forward(intervention):
    model = tiny("qwen3_moe")
    enc = encode(model)
    with model.trace(enc):
        plain = model.lm_head.output.save()
    assert torch.equal(run(model, enc, intervention).output.logits, plain)


def test_interventions_compose_in_order_and_record_sees_the_result():
    model = tiny("qwen3_moe")
    enc = encode(model)
    steer = mi.LayerRouteSteer({2: {4: 1.0}}, scale=1e4, mode="additive")
    tr = run(model, enc, [steer, mi.ExpertAblate({2: [4]})])
    assert tr.routing.count[0, 2, 4] == 0  # the ablation, applied after, wins
    tokens = int(tr.routing.tokens[0])
    tr = run(model, enc, mi.ExpertAblate({2: [4]}), steer)
    assert tr.routing.count[0, 2, 4] == 0  # rerouting acts at selection, whatever the order of logit edits
    assert run(model, enc, steer).routing.count[0, 2, 4] == tokens


def test_interventions_are_frozen_hashable_and_readable():
    a = mi.ExpertAblate({2: [5, 1, 5]})
    assert a == mi.ExpertAblate({2: (1, 5)}) and hash(a) == hash(mi.ExpertAblate({2: [1, 5]}))
    assert repr(a) == "ExpertAblate(experts=((2, (1, 5)),), mode='reroute')"
    steer = mi.LayerRouteSteer({1: {3: 0.5}}, scale=2.0)
    assert repr(steer) == "LayerRouteSteer(strengths=((1, ((3, 0.5),)),), scale=2.0, mode='relative', site='logits')"
    with pytest.raises(Exception):
        steer.scale = 3.0
    assert len({a, steer, mi.RouterRecord(), mi.RouterRecord()}) == 3


@pytest.mark.parametrize("make, error, message", [
    (lambda: mi.ExpertAblate({1: [0]}, mode="zero"), ValueError, "reroute.*drop"),
    (lambda: mi.ExpertAblate([1, 2]), TypeError, "mapping"),
    (lambda: mi.LayerRouteSteer({1: [3]}), TypeError, "layer: {expert: strength}"),
    (lambda: mi.LayerRouteSteer({1: {3: 1.0}}, mode="multiply"), ValueError, "relative.*additive"),
    (lambda: mi.RouteSteer(layers="middle", target="en", stats={}), TypeError, "RoutingStats"),
])
def test_bad_intervention_arguments_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.fixture(scope="module")
def paper():
    """The paper's released Qwen3-30B-A3B counts, bundled (tests/test_analysis.py checks them
    against the JSON files)."""
    return mi.datasets.reference_stats("qwen3-30b-a3b-mgsm").select(["en", "zh", "de"])


def test_route_steer_on_released_counts_selects_420_pairs_mean_strength_0507(paper):
    import dataclasses
    spec = dataclasses.replace(mi.describe(tiny("qwen3_moe")), num_layers=48, moe_layers=tuple(range(48)),
                               num_experts=128, routers=("r",) * 48, experts=("e",) * 48)
    steer = mi.RouteSteer(layers=range(10, 40), target="en", stats=paper, languages=("en", "zh"), k=20,
                          threshold=0.7)
    chosen = steer.expert_set(spec)
    assert chosen.size == 420 and round(chosen.mean_strength(), 3) == 0.507
    assert set(chosen) == set(range(10, 40))
    assert mi.RouteSteer(layers="middle", target="en", stats=paper, languages=("en", "zh"), k=20,
                         threshold=0.7).expert_set(spec) == chosen  # "middle" of 48 layers is 10-39
    edits = steer.edits(spec)
    assert len(edits) == 30 and all(stage == "logits" and e[0] == "relative" and e[2] == 0.022
                                    for _, stage, e in edits)


def test_route_steer_on_a_model_profile_moves_routing_toward_shared_experts():
    model = tiny("qwen3_moe")
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke("The cat sat on the mat and looked at the dog.", group="en"):
            pass
        with tr.invoke("Le chat était assis sur le tapis et regardait le chien.", group="fr"):
            pass
    profile = tr.routing
    steer = mi.RouteSteer(layers="middle", target="en", stats=profile, k=4, threshold=0.7, scale=5.0)
    chosen = steer.expert_set(mi.describe(model))
    assert chosen.size > 0
    enc = encode(model, ["Der Hund schläft."])
    before = run(model, enc).routing
    after = run(model, enc, steer).routing
    pairs = chosen.pairs()
    pos = [mi.describe(model).position(l) for l, _ in pairs]
    experts = [e for _, e in pairs]
    assert after.count[0, pos, experts].sum() > before.count[0, pos, experts].sum()


def test_route_steer_rejects_stats_of_another_model(paper):
    with pytest.raises(ValueError, match="128 experts but the model has 8"):
        mi.trace(tiny("qwen3_moe"), "a", mi.RouteSteer(layers="middle", target="en", stats=paper))


def test_generation_steering_is_visible_at_every_decoding_step():
    model = tiny("qwen3_moe")
    steer = mi.LayerRouteSteer({1: {6: 1.0}}, scale=1e4, mode="additive")
    with mi.generate(model, "Once upon a time", steer, mi.RouterRecord(per_token=True), max_new_tokens=6,
                     min_new_tokens=6, do_sample=False) as gen:
        pass
    pt = gen.routing.per_token
    prompt = len("Once upon a time")
    assert pt["position"].max().item() == prompt + 6 - 2  # prefill + 5 decoding forwards
    for position in range(prompt, prompt + 5):  # every decoding step's token
        at = pt["position"] == position
        assert at.sum() == 1
        assert 6 in pt["indices"][at, 1].tolist()[0]
    assert gen.routing.count[0, 1, 6] == gen.routing.tokens[0]
    assert len(gen.text) == 1


# -- interventions that hold (issue 12, section 3) ---------------------------------------

def received(model, enc, *interventions):
    """Per MoE layer, how often each expert was really handed a token (real tokens only):
    a torch pre-hook on each experts module, outside nnsight."""
    spec = mi.describe(model)
    hf, seen = model._module, {}
    handles = [hf.get_submodule(path).register_forward_pre_hook(
        lambda module, args, layer=layer: seen.__setitem__(layer, args[1].detach().clone()))
        for layer, path in zip(spec.moe_layers, spec.experts)]
    try:
        with mi.trace(model, enc, *interventions):
            pass
    finally:
        for handle in handles:
            handle.remove()
    real = enc["attention_mask"].reshape(-1).bool()
    return torch.stack([torch.bincount(seen[l][real].reshape(-1), minlength=spec.num_experts)
                        for l in spec.moe_layers])


@pytest.mark.parametrize("arch, site", [("qwen3_moe", "logits"), ("deepseek_v3", "logits"),
                                        ("deepseek_v3", "scores")])
@pytest.mark.parametrize("ablate_first", [True, False])
def test_an_ablated_expert_is_never_selected_whatever_the_order(arch, site, ablate_first):
    """A relative steer of scale*s = 3 after the ablation turned -1e9 into +2e9 on Qwen3-style
    routers (and on DeepSeek-V3's selection score): the expert came back."""
    model = tiny(arch)
    spec = mi.describe(model)
    enc = encode(model)
    layer = spec.moe_layers[-1]
    position = spec.position(layer)
    base = received(model, enc)
    favourite = int(base[position].argmax())
    assert base[position, favourite] > 0
    ablate = mi.ExpertAblate({layer: [favourite]})
    steer = mi.LayerRouteSteer({layer: {favourite: 1.0}}, scale=3.0, site=site)
    both = received(model, enc, *([ablate, steer] if ablate_first else [steer, ablate]))
    assert both[position, favourite] == 0
    assert (both[position].sum() == spec.top_k * enc["attention_mask"].sum()).all()
    # the same mask alone gives the same routing: the steer only moved what the ablation left
    assert torch.equal(both[:position], base[:position])


def test_reroute_of_more_than_num_experts_minus_top_k_is_refused_naming_layer_and_limit():
    model = tiny("qwen3_moe")  # 8 experts, top-2
    with pytest.raises(ValueError, match=r"7 of the 8 experts of layer 1.*at most 6 \(num_experts - top_k\)"):
        mi.trace(model, "a", mi.ExpertAblate({1: range(7)}))
    with pytest.raises(ValueError, match="layer 2.*mode='drop'"):  # the union over the list counts
        mi.trace(model, "a", mi.ExpertAblate({2: [0, 1, 2, 3]}), mi.ExpertAblate({2: [4, 5, 6]}))
    enc = encode(model)
    counts = received(model, enc, mi.ExpertAblate({1: range(6)}))
    tokens = int(enc["attention_mask"].sum())
    assert counts[1].tolist() == [0] * 6 + [tokens, tokens]  # at the limit: the two left, every token
    assert mi.ExpertAblate({1: range(8)}, mode="drop")  # drop selects nothing anew: no limit


def test_group_limited_reroute_is_refused_when_chosen_groups_could_run_out():
    """DeepSeek-V3 picks top-2 among the experts of 1 of its 2 groups (tiny config): ablating
    6 experts leaving one per group made it select an ablated expert (seen: expert 1 on every
    token). Ablating a whole group leaves the other one intact, and is allowed."""
    model = tiny("deepseek_v3")
    spec = mi.describe(model)
    layer = spec.moe_layers[0]
    with pytest.raises(ValueError, match=f"layer {layer}.*top_k=2 experts among 1 of its 2 groups"):
        mi.trace(model, "a", mi.ExpertAblate({layer: [0, 1, 2, 4, 5, 6]}))
    enc = encode(model)
    counts = received(model, enc, mi.ExpertAblate({layer: [0, 1, 2, 3, 4, 5]}))
    tokens = int(enc["attention_mask"].sum())
    assert counts[0].tolist() == [0] * 6 + [tokens, tokens]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, error, message", [
    (lambda: mi.LayerRouteSteer({1: {3: NAN}}), ValueError, r"strengths\[1\]\[3\] must be a finite number"),
    (lambda: mi.LayerRouteSteer({1: {3: -INF}}), ValueError, "finite"),
    (lambda: mi.LayerRouteSteer({1: {3: "1.0"}}), TypeError, "must be a number"),
    (lambda: mi.LayerRouteSteer({1: {3: 1.0}}, scale=NAN), ValueError, "scale must be a finite number"),
    (lambda: mi.LayerRouteSteer({1: {3: 1.0}}, scale=INF), ValueError, "scale must be a finite number"),
    (lambda: mi.LayerRouteSteer({1: {3.0: 1.0}}), TypeError, "expert must be an int"),
    (lambda: mi.LayerRouteSteer(mi.ExpertSet({1: [3]}, strengths={1: {3: NAN}})), ValueError, "finite"),
    (lambda: mi.ExpertAblate({1: [NAN]}), TypeError, "must be an int"),
    (lambda: mi.ExpertAblate({1: [2.0]}), TypeError, "must be an int"),
    (lambda: mi.ExpertAblate({1: [True]}), TypeError, "must be an int"),
    (lambda: mi.ExpertAblate({1: [-1]}), ValueError, ">= 0"),
    (lambda: mi.ExpertAblate({1.5: [1]}), TypeError, "layer must be an int"),
])
def test_non_finite_or_non_integer_intervention_numbers_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=NAN), "scale must be a finite number"), (dict(scale=INF), "scale must be a finite number"),
    (dict(threshold=NAN), "threshold must be a finite number"), (dict(threshold=1.5), r"in \[0, 1\]"),
    (dict(threshold=-0.1), r"in \[0, 1\]"), (dict(k=0), "k .* must be >= 1"),
])
def test_route_steer_refuses_non_finite_scale_and_bad_threshold_or_k(paper, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mi.RouteSteer(layers="middle", target="en", stats=paper, **kwargs)


def test_numpy_and_tensor_integers_are_accepted_as_the_same_value():
    import numpy as np

    assert mi.ExpertAblate({np.int64(1): [np.int64(3), torch.tensor(5)]}) == mi.ExpertAblate({1: [3, 5]})
    assert mi.LayerRouteSteer({1: {np.int32(3): np.float32(0.5)}}, scale=2.0) == mi.LayerRouteSteer({1: {3: 0.5}}, scale=2.0)


# ------------------------------------------------------------------ steers too large for the logits
# An inf router logit makes the router's softmax, and the outputs, NaN. A steer must keep a
# logit of magnitude sqrt(max) of its dtype finite: relative |z| * (1 + |scale * s|) <= max,
# additive |z| + |scale * s| <= max (worked here by hand, not with moe_interp's numbers).
BF16_MAX = 3.3895313892515355e38
ROOT = BF16_MAX ** 0.5  # 1.84e19


@pytest.mark.parametrize("make", [
    lambda: mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e38),
    lambda: mi.LayerRouteSteer({1: {3: 1.0, 5: -100.0}}, scale=1e18),  # 1e20 on expert 5
    lambda: mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e300, mode="additive"),
    lambda: mi.LayerRouteSteer({1: {3: 1.0}}, scale=-1e300, mode="additive", site="scores"),
], ids=["relative 1e38", "relative 1e20 by its strength", "additive 1e300", "negative additive"])
def test_a_steer_that_would_overflow_any_router_is_refused_when_built(make):
    with pytest.raises(ValueError, match=r"LayerRouteSteer: \|scale \* strength\| = .* is past the largest .* "
                                         r"Use a scale with \|scale \* strength\| <="):
        make()


def test_route_steer_refuses_a_scale_that_would_overflow_any_router(paper):
    with pytest.raises(ValueError, match=r"RouteSteer .*\|scale \* strength\| = 1e\+38 .* Use a scale"):
        mi.RouteSteer(layers="middle", target="en", stats=paper, scale=1e38)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_steers_just_inside_the_limit_keep_the_outputs_finite(dtype):
    """At the bound (relative: ROOT - 1; additive: 1e38 < max - ROOT) the logits stay finite."""
    model = mi.zoo.tiny_model("qwen3_moe")
    model._module.to(dtype)
    enc = encode(model)
    for steer in (mi.LayerRouteSteer({1: {3: 1.0, 5: -1.0}}, scale=ROOT * 0.999 - 1),
                  mi.LayerRouteSteer({1: {3: 1.0, 5: -1.0}}, scale=1e38, mode="additive")):
        tr = run(model, enc, steer)
        assert torch.isfinite(tr.output.logits).all()
        assert tr.routing.count[0, 1, 3] == tr.routing.tokens[0] and tr.routing.count[0, 1, 5] == 0


@pytest.mark.parametrize("steer, limit", [
    (mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e4), "<= 255 for a relative steer"),
    (mi.LayerRouteSteer({1: {3: 1.0}}, scale=1e5, mode="additive"), "<= 6.52e\\+04 for an additive one"),
    ([mi.LayerRouteSteer({1: {3: 1.0}}, scale=200.0), mi.LayerRouteSteer({1: {3: 1.0}}, scale=200.0)],
     "relative \\|scale \\* s\\| = 200, relative \\|scale \\* s\\| = 200"),  # each fits, together they compound
], ids=["relative", "additive", "two steers compound"])
def test_a_steer_that_would_overflow_a_float16_router_is_refused_before_the_forward(steer, limit):
    model = mi.zoo.tiny_model("qwen3_moe")
    model._module.to(torch.float16)
    hf_forwards = []
    handle = model._module.register_forward_pre_hook(lambda *_: hf_forwards.append(1))
    try:
        with pytest.raises(ValueError, match=r"the steers of layer 1 .*could overflow this model's router scores, "
                                             r"computed in torch.float16 ") as refused:
            mi.trace(model, "Hello", mi.RouterRecord(), steer)
    finally:
        handle.remove()
    assert re.search(limit, str(refused.value)) and not hf_forwards
    tr = run(model, encode(model), mi.LayerRouteSteer({1: {3: 1.0}}, scale=250.0))  # inside: fine
    assert torch.isfinite(tr.output.logits).all()


def test_router_scores_past_the_assumed_range_that_overflow_name_the_steer_after_the_trace():
    """Logits beyond sqrt(max) (a float16 router scaled by hand to |z| ~ 1e3): a steer inside
    the limit still overflows; the routing is refused with the cause, not NaN counts."""
    model = mi.zoo.tiny_model("qwen3_moe")
    model._module.to(torch.float16)
    with torch.no_grad():
        model._module.model.layers[1].mlp.gate.weight.mul_(300)
    enc = encode(model)
    assert torch.isfinite(run(model, enc).output.logits).all()  # unsteered: finite
    tr = run(model, enc, mi.LayerRouteSteer({1: {3: 1.0}}, scale=200.0))
    with pytest.raises(ValueError, match=r"routing weights of layers \[1, .*NaN or inf .*the steers of layers \[1\] "
                                         r"made the router's scores overflow: lower their scale"):
        tr.routing


def test_steering_eval_refuses_an_overflowing_scale_before_any_cell(paper):
    model = tiny("qwen3_moe")
    texts = {"en": ["The cat sat."], "de": ["Die Katze."]}
    with pytest.raises(ValueError, match=r"RouteSteer .*\|scale \* strength\| = 1e\+38"):
        mi.steering_eval(model, paper, texts, {"en": ["A dog."], "de": ["Ein Hund."]}, ["de"], target="en",
                         scales=(0.0, 1e38), progress=False)


def test_steering_eval_refuses_a_scale_a_float16_router_cannot_take_before_any_cell():
    model = mi.zoo.tiny_model("qwen3_moe")
    model._module.to(torch.float16)
    pick = {"en": ["The cat sat on the mat.", "Hello world"], "de": ["Die Katze sass auf der Matte.", "Hallo Welt"]}
    stats = mi.profile(model, pick, progress=False)
    forwards = []
    handle = model._module.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(ValueError, match=r"could overflow this model's router scores, computed in torch.float16"):
            mi.steering_eval(model, stats, {"en": ["Dogs bark."], "de": ["Hunde bellen."]},
                             {"en": ["A bird sings."], "de": ["Ein Vogel singt."]}, ["de"], target="en",
                             scales=(0.0, 1e3), k=4, progress=False)
    finally:
        handle.remove()
    assert not forwards  # refused before the baselines ran
