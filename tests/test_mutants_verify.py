"""The first-trace check of detection (`arch._verify.ExpertsCheck`) on a hand-made model:
behaviours that single-change mutants (scripts/mutants.py) showed no test pinned.

The model is plain torch: one layer whose `experts` module takes each token's expert indices,
so what the experts received is known exactly without running any architecture.
"""

import types

import pytest
import torch

import moe_interp as mi
from moe_interp.arch._verify import ExpertsCheck


class _Experts(torch.nn.Module):
    def forward(self, hidden, indices):
        return hidden + indices.sum(-1, keepdim=True)


class _Block(torch.nn.Module):
    def __init__(self, calls: int) -> None:
        super().__init__()
        self.experts, self.calls = _Experts(), calls

    def forward(self, hidden, indices):
        for _ in range(self.calls):  # calls > 1: a looped layer
            hidden = self.experts(hidden, indices)
        return hidden


class _Model(torch.nn.Module):
    def __init__(self, calls: int = 1) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block(calls)])

    def forward(self, hidden, indices):
        return self.layers[0](hidden, indices)


SPEC = types.SimpleNamespace(family="auto", arch="handmade", moe_layers=(0,))
HIDDEN = torch.zeros(3, 1)
CHOSEN = torch.tensor([[0, 2], [1, 2], [3, 0]])  # 3 tokens, top-2 of 4 experts


def test_a_layer_whose_experts_run_twice_in_one_forward_is_refused():
    """Mutant verify.loop-check: a looped layer (experts called twice a forward) was accepted."""
    model = _Model(calls=2)
    check = ExpertsCheck(SPEC, model)
    with check:
        model(HIDDEN, CHOSEN)
    with pytest.raises(mi.UnsupportedModelError, match="layer 0's experts ran 2 times in one forward"):
        check.compare([(0, CHOSEN)])


def test_only_the_first_forward_is_judged():
    """Mutant verify.first-forward-only: later forwards of the trace (generation steps) were
    recorded too, and a model that passed was refused as looped."""
    model = _Model()
    check = ExpertsCheck(SPEC, model)
    with check:
        model(HIDDEN, CHOSEN)
        model(HIDDEN[:1], torch.tensor([[3, 1]]))  # a decoding step: one new token
    check.compare([(0, CHOSEN)])  # what the first forward's experts received: no error
    assert check.calls[0][0][0][1] is CHOSEN and len(check.calls[0]) == 1


def test_a_readout_that_differs_from_what_the_experts_received_is_refused():
    model = _Model()
    check = ExpertsCheck(SPEC, model)
    with check:
        model(HIDDEN, CHOSEN)
    with pytest.raises(mi.UnsupportedModelError, match="layer 0: the experts moe_interp reads as selected differ"):
        check.compare([(0, torch.tensor([[0, 2], [1, 2], [3, 1]]))])
