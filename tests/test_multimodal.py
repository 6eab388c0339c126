"""Multimodal MoE models (issue 18): the language model of Qwen3-VL-MoE, on text tokens.

Oracles: `conftest.experts_received` (torch hooks on the experts' own arguments) and the
router's maths written out here (softmax over `hidden @ W.T`, top-k, with the edit applied
to the logits) on the hidden states the router received (captured by a hook).
"""

import functools

import pytest
import torch

import moe_interp as mi
from conftest import PROMPTS, encode, experts_received

ARCH = "qwen3_vl_moe"


@functools.lru_cache(maxsize=None)
def tiny():
    return mi.zoo.tiny_model(ARCH)


def test_describe_names_the_language_models_layers():
    spec = mi.describe(tiny())
    assert spec.moe_layers == (0, 1, 2, 3) and spec.num_experts == 8 and spec.top_k == 2
    assert spec.layer_names == tuple(f"language_model.{i}" for i in range(4))
    assert spec.routers[0] == "model.language_model.layers.0.mlp.gate"


def test_text_tokens_record_exactly_what_the_experts_received_with_the_stack_labelled():
    model = tiny()
    enc = encode(model)
    with experts_received(model, enc["attention_mask"]) as seen:
        with mi.trace(model, enc, mi.RouterRecord()) as tr:
            pass
    stats = tr.routing
    assert stats.stacks == ("language_model",) * 4 and stats.tokens.tolist() == [int(enc["attention_mask"].sum())]
    for position, layer in enumerate(stats.layers):
        assert torch.equal(stats.count[0, position], seen[layer]), layer
    assert stats.select(layers="language_model:late").layers == (3,)


def _router_inputs(model, layer):
    """The router of `layer` and the hidden states it will receive (a hook, removed by the caller)."""
    router = model._module.get_submodule(mi.describe(model).routers[layer])
    seen = []
    handle = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return router, seen, handle


@pytest.mark.parametrize("intervention, edit", [
    (mi.LayerRouteSteer({2: {5: 1.0}}, scale=4.0, mode="additive"), lambda z: z + 4.0 * torch.eye(8)[5]),
    (mi.ExpertAblate({2: [1, 6]}), lambda z: z.masked_fill(torch.isin(torch.arange(8), torch.tensor([1, 6])), -1e9)),
], ids=["additive steer", "reroute"])
def test_interventions_on_the_language_model_match_hand_written_router_maths(intervention, edit):
    model = tiny()
    enc = encode(model)
    router, seen, handle = _router_inputs(model, 2)
    try:
        with experts_received(model, enc["attention_mask"]) as received:
            with mi.trace(model, enc, mi.RouterRecord(), intervention) as tr:
                pass
    finally:
        handle.remove()
    hidden = seen[-1].reshape(-1, seen[-1].shape[-1]).float()
    logits = edit(hidden @ router.weight.float().T)
    top = torch.softmax(logits, -1).topk(2, dim=-1).indices
    real = enc["attention_mask"].reshape(-1).bool()
    expected = torch.bincount(top[real].reshape(-1), minlength=8)
    assert torch.equal(tr.routing.count[0, 2], expected) and torch.equal(received[2], expected)
    with mi.trace(model, enc, mi.RouterRecord()) as plain:
        pass
    assert not torch.equal(plain.routing.count[0, 2], expected)  # the edit changed the routing
    assert torch.equal(plain.routing.count[0, :2], tr.routing.count[0, :2])  # layers before it did not move
