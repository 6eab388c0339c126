"""Analyses and expert sets: behaviours that single-change mutants (scripts/mutants.py) showed no
test pinned. Each test names the mutant it catches; values are written out by hand or come
from numpy / scipy."""

import pytest

import moe_interp as mi


# -- ExpertSet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_expert_set_refuses_booleans_as_experts(flag):
    """Mutant expert_set.bool-expert: True / False were taken as experts 1 / 0."""
    with pytest.raises(ValueError, match="integer indices >= 0"):
        mi.ExpertSet({3: [flag]})


def test_expert_sets_with_other_strengths_are_not_equal():
    """Mutant expert_set.eq-strengths: only the experts were compared."""
    half = mi.ExpertSet({1: [2]}, strengths={1: {2: 0.5}})
    assert half == mi.ExpertSet({1: [2]}, strengths={1: {2: 0.5}})
    assert half != mi.ExpertSet({1: [2]}, strengths={1: {2: 0.7}})
    assert half != mi.ExpertSet({1: [2]})


def test_expert_set_leaves_out_layers_without_experts():
    """Mutant expert_set.empty-layers: a layer listed with no experts was kept."""
    s = mi.ExpertSet({1: [], 2: [3, 3], 4: ()})
    assert list(s) == [2] and len(s) == 1 and s.size == 1 and s.pairs() == [(2, 3)]
    assert 1 not in s
