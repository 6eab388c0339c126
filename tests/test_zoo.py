"""The zoo builds what it is asked for: an expert-count override reaches the built model."""

import pytest
import torch
from test_arch import _moe_model_types
from transformers import AutoModelForCausalLM

import moe_interp as mi


def _expert_rows(hf: torch.nn.Module) -> set[int]:
    """Experts per MoE layer as the weights hold them: the leading size of the stacked (3-D)
    weights of every experts module (named `*experts` or of an `*Experts` class, as JetMoE's
    `JetMoeParallelExperts`) and the length of every `experts` ModuleList; shared experts left out.
    DBRX stacks its experts' rows into 2-D `experts.mlp` matrices of `ffn_hidden_size` rows each."""
    rows = set()
    for name, module in hf.named_modules():
        if "shared" in name or not (name.endswith("experts") or "Experts" in type(module).__name__):
            continue
        if isinstance(module, torch.nn.ModuleList):
            rows.add(len(module))
        rows.update(param.shape[0] for param in module.parameters(recurse=False) if param.dim() == 3)
        if type(module).__name__ == "DbrxExperts":
            rows.add(module.mlp.w1.shape[0] // hf.config.ffn_config.ffn_hidden_size)
    return rows


@pytest.mark.parametrize("model_type", _moe_model_types())
def test_num_experts_override_reaches_the_experts_of_every_type(model_type):
    """Oracle: the experts' weight shapes, not the config (OLMoE and Qwen3-MoE kept 8 before:
    their alias `num_local_experts=8` from the defaults overrode `num_experts=16`)."""
    try:
        with torch.device("meta"):
            default = _expert_rows(AutoModelForCausalLM.from_config(mi.zoo.tiny_config(model_type)))
    except Exception as error:  # the tiny config does not build at all: not this test's subject
        pytest.skip(f"{model_type} does not build from a tiny config: {type(error).__name__}")
    if not default:
        pytest.skip(f"{model_type}'s tiny config has no routed experts")
    try:
        config = mi.zoo.tiny_config(model_type, num_experts=16)
    except ValueError as error:  # a type with no expert-count attribute must say so
        assert "has none of ['num_experts'" in str(error)
        return
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    rows = _expert_rows(hf)
    # Longcat-Flash stacks its zero-compute experts after the routed ones in gate_up_proj
    assert min(rows) == 16, (model_type, rows)
    assert min(default) == 8, (model_type, default)


def test_every_expert_count_name_is_one_setting():
    assert mi.zoo.tiny_config("mixtral", n_routed_experts=12).num_local_experts == 12
    assert mi.zoo.tiny_config("deepseek_v3", num_experts=12).n_routed_experts == 12
    assert mi.zoo.tiny_config("dbrx", num_experts=12).ffn_config.moe_num_experts == 12
    assert mi.zoo.tiny_config("dbrx").ffn_config.moe_num_experts == 8  # the override did not leak


def test_conflicting_expert_counts_are_refused():
    with pytest.raises(ValueError, match="conflicting expert counts"):
        mi.zoo.tiny_config("qwen3_moe", num_experts=16, num_local_experts=8)


def test_tiny_model_with_16_experts_routes_over_16():
    model = mi.zoo.tiny_model("olmoe", num_experts=16)
    assert mi.describe(model).num_experts == 16
    assert model._module.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 16
    with mi.trace(model, ["some text to route"], mi.RouterRecord()) as tr:
        pass
    assert tr.routing.count.shape[-1] == 16
