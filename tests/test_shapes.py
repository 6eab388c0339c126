"""The suite runs with runtime shape checking on (pyproject: --jaxtyping-packages=moe_interp,beartype):
the annotations refuse bad shapes and dtypes at the call, and the stats' own checks refuse them
without it (users do not run jaxtyping's import hook)."""

import pytest
import torch
from jaxtyping import TypeCheckError

import moe_interp as mi
from moe_interp.core._counts import _check_consistent


def _fields(**changes) -> dict:
    count = torch.zeros(2, 3, 4, dtype=torch.long)
    fields = dict(languages=("a", "b"), layers=(0, 1, 2), num_experts=4, top_k=2, count=count,
                  gate_mass=count.double(), tokens=torch.zeros(2, dtype=torch.long), item_count=None,
                  item_tokens=None, item_language=None, stacks=None)
    return {**fields, **changes}


def _unchecked(**changes) -> mi.RoutingStats:
    """A RoutingStats built without running __init__ (so without jaxtyping's check of it)."""
    stats = object.__new__(mi.RoutingStats)
    stats.__dict__.update(_fields(**changes))
    return stats


def test_the_annotation_refuses_a_tokens_axis_that_disagrees_with_count():
    with pytest.raises(TypeCheckError, match=r"group=2"):
        mi.RoutingStats(**_fields(tokens=torch.zeros(3, dtype=torch.long)))


def test_the_annotation_refuses_float_counts():
    with pytest.raises(TypeCheckError, match="parameter 'count'"):
        mi.RoutingStats(**_fields(count=torch.zeros(2, 3, 4)))


def test_the_stats_own_check_names_the_field_and_the_shape():
    with pytest.raises(ValueError, match=r"tokens has shape \(3,\), but the stats' \(languages,\) give \(2,\)"):
        _check_consistent(_unchecked(tokens=torch.zeros(3, dtype=torch.long)))
    with pytest.raises(TypeError, match="count must be an integer tensor, got torch.float32"):
        _check_consistent(_unchecked(count=torch.zeros(2, 3, 4)))
    _check_consistent(_unchecked())  # the consistent fields pass
