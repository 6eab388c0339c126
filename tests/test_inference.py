"""Units of inference (issue 24, sections 2-3 and the BootstrapResult bug of section 6): one
interval method (percentile), family claims at the language level, recipe claims at the seed
level, exact byte n-grams, layer-resolved evidence. Each value is checked against a computation
written here with numpy / scipy / collections, sharing no code with the package."""

import numpy as np
import pytest
import torch

import moe_interp as mi


# -- BootstrapResult.statistic -----------------------------------------------------------------

def _item_stats():
    items = torch.tensor([[[2, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 2, 0]], [[0, 0, 1, 1]]])
    count = torch.stack([items[:2].sum(0), items[2:].sum(0)])
    return mi.RoutingStats(("en", "de"), (0,), 4, 1, count, count.double(), torch.tensor([4, 4]),
                           item_count=items, item_tokens=torch.tensor([2, 2, 2, 2]),
                           item_language=torch.tensor([0, 0, 1, 1]))


def test_bootstrap_result_names_the_statistic_it_resampled():
    """The name was overwritten by the argument-check loop's variable: always "seed"."""
    stats = _item_stats()
    assert mi.analysis.bootstrap(stats, "divergence", n=3).statistic == "divergence"
    assert mi.analysis.bootstrap(stats, "shares", n=3).statistic == "shares"

    def token_total(s):
        return s.tokens.double()

    assert mi.analysis.bootstrap(stats, token_total, n=3).statistic == "token_total"
