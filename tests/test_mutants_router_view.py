"""The router view (`model.moe`): behaviours that single-change mutants (scripts/mutants.py)
showed no test pinned. Each test names the mutant it catches."""

import pytest
import torch

import moe_interp as mi
from conftest import tiny


@pytest.mark.parametrize("bad", [8, -1])
def test_assigned_indices_outside_the_experts_are_refused(bad):
    """Mutant router_view.indices-range: index num_experts (8 here) was accepted."""
    model = tiny("qwen3_moe")  # 8 experts, top-2; "Hello" is 5 byte tokens
    with pytest.raises(ValueError, match=r"router.indices takes expert indices 0-7 \(layer 0 has 8 experts\)"):
        with torch.no_grad(), model.trace("Hello"):
            model.moe[0].router.indices = torch.tensor([[0, 1]] * 4 + [[bad, 1]])


def test_a_weight_for_a_slot_that_reached_no_expert_is_refused():
    """Mutant router_view.weights-dropped-slot: a weight given to a token Switch dropped past
    its expert's capacity was accepted (that token reaches no expert: the weight would be a lie).

    Six alike tokens, top-1, each expert takes 2: four of the six are dropped."""
    model = mi.zoo.tiny_model("switch_transformers", expert_capacity=2)
    inputs = {"input_ids": torch.tensor([[5, 5, 5, 5, 5, 5]]), "decoder_input_ids": torch.tensor([[0]])}
    with torch.no_grad(), model.trace(inputs):
        dropped = (model.moe[0].router.indices < 0).flatten().save()
    assert dropped.tolist() == [False, False, True, True, True, True]
    with pytest.raises(mi.RouterAccessError, match="router.weights gives a weight to a slot that reached no expert"):
        with torch.no_grad(), model.trace(inputs):
            model.moe[0].router.weights = torch.full((6, 1), 0.5)


def test_block_is_the_moe_block_that_holds_router_and_experts():
    """Mutant router_view.block-path: `block` was the decoder layer around the MoE block."""
    model = tiny("qwen3_moe")
    hf = model._module
    for position, entry in enumerate(model.moe):
        assert entry.block.path == f"model.model.layers.{position}.mlp"
        assert entry.block._module is hf.model.layers[position].mlp
        assert entry.experts._module is hf.model.layers[position].mlp.experts
