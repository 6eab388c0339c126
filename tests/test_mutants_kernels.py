"""The in-trace kernels: behaviours that single-change mutants (scripts/mutants.py) showed no test
pinned. Each test names the mutant it catches; values are worked out by hand."""

import torch

import moe_interp as mi
from moe_interp.runtime._kernels import totals_add, totals_fold, totals_start


def test_slots_that_reached_no_expert_are_not_counted():
    """Mutant kernels.no-expert-slot: a -1 slot ("no expert": dropped past capacity) was
    binned at base - 1, on the previous group's last expert (or out of range)."""
    totals = totals_start(torch.tensor([0, 1, 1]), num_layers=1, num_groups=2, num_experts=3, top_k=2, device="cpu")
    totals_add(totals, 0, torch.tensor([[0, -1], [-1, -1], [2, 1]]),
               torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.25, 0.75]]))
    store = {"count": torch.zeros(2, 1, 3, dtype=torch.long), "gate_mass": torch.zeros(2, 1, 3, dtype=torch.float64)}
    totals_fold(totals, store)
    assert store["count"].tolist() == [[[1, 0, 0]], [[0, 1, 1]]]
    assert store["gate_mass"].tolist() == [[[0.5, 0.0, 0.0]], [[0.0, 0.75, 0.25]]]


def test_router_record_counts_only_the_tokens_switch_dispatched_past_capacity():
    """Six alike tokens, top-1, each expert takes 2: in each encoder MoE layer one expert gets
    2 tokens and the other 4 reach none (read as -1), so 2 are counted, not 6."""
    model = mi.zoo.tiny_model("switch_transformers", expert_capacity=2)
    inputs = {"input_ids": torch.tensor([[5, 5, 5, 5, 5, 5]]), "decoder_input_ids": torch.tensor([[0]])}
    with mi.trace(model, inputs, mi.RouterRecord()) as tr:
        pass
    encoder = tr.routing_by_stack["encoder"]
    assert encoder.tokens.tolist() == [6]
    assert encoder.count[0].sum(-1).tolist() == [2, 2] and encoder.count[0].max(-1).values.tolist() == [2, 2]
