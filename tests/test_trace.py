"""mi.trace contract: inputs, errors, and a failing body leaves the model unchanged."""

import pytest
import torch

import moe_interp as mi
from conftest import encode, tiny


def test_body_exception_leaves_model_bitwise_unchanged():
    model = tiny("qwen3_moe")
    enc = encode(model)
    before = model._module(**enc).logits
    state = {k: v.clone() for k, v in model._module.state_dict().items()}
    with pytest.raises(ZeroDivisionError):
        with mi.trace(model, enc, mi.LayerRouteSteer({1: {3: 1.0}}, scale=100.0, mode="additive"),
                      mi.ExpertAblate({2: [0]}), mi.RouterRecord()):
            model.model.layers[1].mlp.gate.output.save()
            1 / 0
    after = model._module(**enc).logits
    assert torch.equal(before, after)
    assert all(torch.equal(v, model._module.state_dict()[k]) for k, v in state.items())
    # and the next trace is a plain one again: bitwise what nnsight's own trace gives
    with model.trace(enc):
        plain = model.lm_head.output.save()
    with mi.trace(model, enc, mi.RouterRecord()) as tr:
        pass
    assert torch.equal(tr.output.logits, plain)


def test_accepts_string_list_tensor_and_encoding():
    model = tiny("qwen3_moe")
    enc = encode(model, ["abc", "de"])
    for inputs in ("abc", ["abc", "de"], enc["input_ids"], enc, dict(enc)):
        with mi.trace(model, inputs, mi.RouterRecord()) as tr:
            pass
        assert tr.routing.count.shape == (1, 4, 8)


@pytest.mark.parametrize("bad", [3.5, [1, 2], {"text": "x"}, torch.zeros(2, 3)])
def test_wrong_input_type_is_a_type_error_saying_what_is_accepted(bad):
    with pytest.raises(TypeError, match="string, a list of strings, a token-id tensor"):
        mi.trace(tiny("qwen3_moe"), bad, mi.RouterRecord())


def test_non_intervention_after_inputs_is_a_type_error():
    with pytest.raises(TypeError, match="second input"):
        mi.trace(tiny("qwen3_moe"), "a", "b")
    with pytest.raises(TypeError, match="expected interventions"):
        mi.trace(tiny("qwen3_moe"), "a", mi.RouterRecord(), "b")


def test_routing_without_router_record_says_how_to_get_it():
    model = tiny("qwen3_moe")
    with mi.trace(model, "abc") as tr:
        pass
    assert tr.output.logits.shape[:2] == (1, 3)
    with pytest.raises(AttributeError, match="RouterRecord"):
        tr.routing


@pytest.mark.parametrize("layers, message", [({9: [0]}, "out of range.*0-3"), ({-1: [0]}, "out of range")])
def test_out_of_range_layer_is_a_value_error_naming_the_valid_range(layers, message):
    with pytest.raises(ValueError, match=message):
        mi.trace(tiny("qwen3_moe"), "a", mi.ExpertAblate(layers))


def test_dense_layer_and_expert_out_of_range_are_value_errors():
    with pytest.raises(ValueError, match="dense.*MoE layers 1-3"):
        mi.trace(tiny("qwen2_moe"), "a", mi.LayerRouteSteer({0: {1: 1.0}}))
    with pytest.raises(ValueError, match="expert 8 is out of range.*0-7"):
        mi.trace(tiny("qwen3_moe"), "a", mi.ExpertAblate({1: [8]}))


def test_generate_without_interventions_equals_hf_greedy():
    model = tiny("qwen3_moe")
    enc = encode(model, ["Once upon a time", "Hi"])
    with torch.no_grad():
        expected = model._module.generate(**enc, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                          pad_token_id=0)
    with mi.generate(model, enc, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0) as gen:
        pass
    assert torch.equal(gen.output, expected)
    assert gen.text == model.tokenizer.batch_decode(expected[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
