"""The conformance matrix under pytest: every reader x situation of `tests/conformance.py` on the
fast subset of MoE types (one per way of reading routing), or on every buildable MoE type of the
installed transformers with `MI_CONFORMANCE=full`. A cell may be exact, a typed refusal, n/a or
without an independent oracle; a value that differs (or an untyped crash) fails the test."""

import os

import pytest

import conformance

TYPES = conformance.full_types() if os.environ.get("MI_CONFORMANCE") == "full" else conformance.FAST_TYPES


@pytest.mark.parametrize("model_type", TYPES)
def test_every_reader_in_every_situation_is_exact_or_refused(model_type):
    cells = conformance.cells_of(model_type)
    failing = [" | ".join(cell[1:]) for cell in cells if cell[3] == "FAIL"]
    assert failing == []
    assert sum(cell[3] == "exact" for cell in cells) >= 10  # the matrix checked something real


def test_the_oracle_sees_a_wrong_count():
    """The matrix can fail: a trace's counts shifted by one expert are caught by check_trace."""
    import torch

    import moe_interp as mi

    model = conformance.build("qwen3_moe")
    enc = conformance.encode(model)
    oracle = conformance.Oracle(model._module, mi.describe(model).num_experts)
    tr, groups, rows, refused = conformance.run_trace(model, enc, oracle)
    tr.routing.count[0, 0] = torch.roll(tr.routing.count[0, 0], 1)
    groups[0][(0, "indices")] = (groups[0][(0, "indices")] + 1) % 8
    cells = {cell[2]: cell[3] for cell in conformance.check_trace("qwen3_moe", "one_invoke", model, tr, groups, rows,
                                                                  refused, oracle)}
    assert cells["record.count"] == "FAIL" and cells["view.indices"] == "FAIL"


def test_the_readme_states_the_recorded_matrix():
    """The README's counts are the record's (docs/conformance.md), written by the same run."""
    import re
    from pathlib import Path

    root = Path(conformance.HERE).parent
    recorded = re.search(r"^Recorded on .*FAIL\.$", (root / "docs" / "conformance.md").read_text(), re.M)[0]
    readme = (root / "README.md").read_text()
    block = readme.split(conformance.README_START, 1)[1].split(conformance.README_END, 1)[0]
    assert recorded in block and ", 0 FAIL." in recorded
