"""Content keys: behaviours that single-change mutants (scripts/mutants.py) showed no test pinned.

A fingerprint must tell apart values that differ and only those; each test names its mutant.
"""

import pytest
import torch

import moe_interp as mi
from moe_interp.core._fingerprint import ResumeError, differing, fingerprint, load_checkpoint, stats_fingerprint


def test_nesting_is_part_of_the_key():
    """Mutant fingerprint.list-length: without the length prefix these two collided."""
    assert fingerprint(([1], 2)) != fingerprint(([1, 2],))  # the same items in the same order
    assert fingerprint(([1, 2], 3)) != fingerprint(([1, 2, 3],))


def test_a_mapping_is_keyed_by_its_items_not_their_order():
    """Mutant fingerprint.mapping-order: a dict built in another order got another key."""
    assert fingerprint({"a": 1, "b": (2, 3)}) == fingerprint({"b": (2, 3), "a": 1})
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"a": 2, "b": 1})


def test_tensors_of_the_same_bytes_but_other_shapes_or_dtypes_differ():
    """Mutant fingerprint.tensor-shape: a [2, 3] and a [3, 2] tensor of the same bytes collided."""
    values = torch.arange(6)
    assert fingerprint(values.reshape(2, 3)) != fingerprint(values.reshape(3, 2))
    assert fingerprint(values.reshape(2, 3)) == fingerprint(values.reshape(2, 3).clone())
    assert fingerprint(torch.zeros(2, dtype=torch.int32)) != fingerprint(torch.zeros(1, dtype=torch.int64))


def test_a_part_missing_from_the_stored_key_differs():
    """Mutant fingerprint.missing-part: a part the stored key lacks counted as unchanged."""
    assert differing({"corpus": "ab12"}, {"corpus": "ab12", "settings": "cd34"}) == ["settings"]
    assert differing({"corpus": "ab12", "settings": "cd34"}, {"corpus": "ab12"}) == []


def test_stats_that_differ_only_in_gate_mass_have_different_keys():
    """Mutant fingerprint.stats-gate-mass: gate mass was left out of a RoutingStats' key."""
    count = torch.tensor([[[3, 1, 0, 0]]])
    first = mi.RoutingStats(("en",), (0,), 4, 2, count, count / 2.0, torch.tensor([2]))
    second = mi.RoutingStats(("en",), (0,), 4, 2, count, count / 4.0, torch.tensor([2]))
    same = mi.RoutingStats(("en",), (0,), 4, 2, count.clone(), count / 2.0, torch.tensor([2]))
    assert stats_fingerprint(first) != stats_fingerprint(second)
    assert stats_fingerprint(first) == stats_fingerprint(same)


def test_a_finished_checkpoint_resumes_and_one_past_the_end_is_refused(tmp_path):
    """Mutant fingerprint.done-range: a finished checkpoint (done == total) was refused as damaged."""
    key, like = {"corpus": "ab12"}, {"count": torch.zeros(2, 3, dtype=torch.long)}
    path = tmp_path / "run.ckpt"
    torch.save({"format": "test/1", "key": key, "done": 4, "count": torch.ones(2, 3, dtype=torch.long)}, path)
    done, tensors = load_checkpoint(path, key, like, total=4, form="test/1", what="a test")
    assert done == 4 and tensors["count"].tolist() == [[1, 1, 1], [1, 1, 1]]
    with pytest.raises(ResumeError, match="damaged"):
        load_checkpoint(path, key, like, total=3, form="test/1", what="a test")
