"""The suite runs with runtime shape checking on (pyproject: --jaxtyping-packages=moe_interp,beartype)."""

import pytest
import torch

import moe_interp as mi


def test_routing_stats_with_inconsistent_shapes_is_rejected_at_construction():
    count = torch.zeros(2, 3, 4, dtype=torch.long)
    with pytest.raises(Exception, match="lang|shape|tokens"):
        mi.RoutingStats(("a", "b"), (0, 1, 2), 4, 2, count, count.double(), torch.zeros(3, dtype=torch.long))


def test_float_counts_are_rejected_by_the_jaxtyping_annotation():
    count = torch.zeros(1, 1, 2)
    with pytest.raises(Exception, match="count"):
        mi.RoutingStats(("a",), (0,), 2, 1, count, count.double(), torch.zeros(1, dtype=torch.long))
