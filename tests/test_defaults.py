"""Defaults that work on every model (issue 16, item 1): `k` is the paper's fraction of its 128
experts, so `RouteSteer`, `exclusive_experts` and friends run with default arguments on the demo
model (16 experts) and every zoo model (8), and equal the paper's settings at 128 experts."""

import pytest
import torch

import moe_interp as mi
from moe_interp.datasets import reference_stats

torch.set_num_threads(1)

# Worked by hand: ceil(paper_k * experts / 128), at least top_k, at most experts.
HAND_K = [  # (experts, top_k, k for exclusive (15 of 128), k for steering (20 of 128))
    (128, 8, 15, 20), (256, 8, 30, 40), (64, 8, 8, 10), (16, 2, 2, 3), (8, 2, 2, 2), (8, 1, 1, 2), (4, 4, 4, 4),
]


@pytest.mark.parametrize("experts, top_k, exclusive, steer", HAND_K)
def test_default_k_is_the_papers_fraction_of_the_experts(experts, top_k, exclusive, steer):
    assert mi.PAPER.scaled_k(mi.PAPER.exclusive_k, experts, top_k) == exclusive
    assert mi.PAPER.scaled_k(mi.PAPER.steer_k, experts, top_k) == steer


def test_paper_settings_are_the_papers():
    assert (mi.PAPER.exclusive_k, mi.PAPER.exclusive_threshold) == (15, 0.4)
    assert (mi.PAPER.steer_k, mi.PAPER.steer_threshold, mi.PAPER.steer_scale) == (20, 0.7, 0.022)


def test_defaults_on_the_papers_128_experts_give_the_papers_numbers():
    paper = reference_stats("qwen3-30b-a3b-mgsm")
    assert paper.exclusive_experts("sw").size == 271 and paper.exclusive_experts("en").size == 205
    steer = mi.RouteSteer(layers=range(10, 40), target="en", stats=paper, languages=("en", "zh"))
    spec = mi.describe(mi.zoo.tiny_model("qwen3_moe", num_experts=128, num_hidden_layers=48, hidden_size=16,
                                         num_attention_heads=2, num_key_value_heads=2))
    chosen = steer.expert_set(spec)
    assert chosen.size == 420 and round(chosen.mean_strength(), 3) == 0.507


def _two_language_profile(model):
    texts = {lang: [t[:120] for t in mi.datasets.udhr([lang], split="heldout")[lang][:3]] for lang in ("eng", "deu")}
    return mi.profile(model, texts, batch_size=8, progress=False)


@pytest.mark.parametrize("name", ["demo", *mi.zoo.TINY_ARCHITECTURES])
def test_route_steer_with_default_arguments_runs_on_the_demo_and_every_zoo_model(name):
    model = mi.zoo.demo_model() if name == "demo" else mi.zoo.tiny_model(name)
    spec = mi.describe(model)
    stats = _two_language_profile(model)
    steer = mi.RouteSteer(layers="middle", target="eng", stats=stats)
    hand_k = {32: 5, 16: 3, 8: 2}[spec.num_experts]  # ceil(20 * E / 128), at least top-2
    assert steer.expert_set(spec) == stats.shared_experts(["eng", "deu"], k=hand_k, threshold=0.7,
                                                          layers=spec.select_layers("middle"))
    with mi.trace(model, "Wie viele Äpfel hat sie?") as plain:
        pass
    with mi.trace(model, "Wie viele Äpfel hat sie?", mi.RouteSteer(layers="middle", target="eng", stats=stats,
                                                                     scale=5.0)) as steered:
        pass
    if steer.expert_set(spec).size:
        assert not torch.equal(plain.output.logits, steered.output.logits)
    assert stats.exclusive_experts("deu").size >= 0  # defaults of the analyses run too
    assert stats.layer_profile().k == {32: 4, 16: 2, 8: 2}[spec.num_experts]  # ceil(15 * E / 128), at least top-2


def test_an_explicit_k_beyond_the_experts_names_the_parameter_and_the_default():
    model = mi.zoo.demo_model()
    stats = _two_language_profile(model)
    with pytest.raises(ValueError, match=r"RouteSteer k .* \[1, 32\], got 40; leave k unset .* i\.e\. 5"):
        mi.trace(model, "Hallo", mi.RouteSteer(layers="middle", target="eng", stats=stats, k=40)).__enter__()
    with pytest.raises(ValueError, match=r"^k .* \[1, 32\], got 40; leave k unset .* 15 of 128 .* i\.e\. 4"):
        stats.exclusive_experts("deu", k=40)


def test_on_two_languages_threshold_0_4_is_exclusive_to_both_and_0_5_separates_them():
    # one layer, 4 experts, top-2: eng uses experts 0 and 1 (45 and 55 tokens' worth), deu 1 and 2
    count = torch.tensor([[[45, 55, 0, 0]], [[0, 45, 55, 0]]])
    stats = mi.RoutingStats(("eng", "deu"), (0,), 4, 2, count, count.double(), torch.tensor([50, 50]))
    # shares of expert 1: eng 55/100, deu 45/100, so both exceed 0.4
    assert stats.exclusive_experts("eng", k=2, threshold=0.4).pairs() == [(0, 0), (0, 1)]
    assert stats.exclusive_experts("deu", k=2, threshold=0.4).pairs() == [(0, 1), (0, 2)]
    assert stats.exclusive_experts("deu", k=2, threshold=0.5).pairs() == [(0, 2)]
