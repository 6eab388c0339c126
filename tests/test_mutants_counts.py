"""RoutingCounts behaviours that single-change mutants (scripts/mutants.py) showed no test pinned.

Each test names the mutant it catches; values are written out by hand.
"""

import pytest
import torch

import moe_interp as mi


def _items_stats(languages=("a", "b", "c")):
    """Three languages, two texts each (language i: texts 2i, 2i+1), 1 layer, 3 experts, top-1."""
    item_count = torch.tensor([[[2, 0, 0]], [[1, 1, 0]],       # a
                               [[0, 3, 0]], [[0, 1, 1]],       # b
                               [[0, 0, 4]], [[1, 0, 0]]])      # c
    item_tokens = torch.tensor([2, 2, 3, 2, 4, 1])
    item_language = torch.tensor([0, 0, 1, 1, 2, 2])
    count = torch.stack([item_count[item_language == i].sum(0) for i in range(3)])
    tokens = torch.stack([item_tokens[item_language == i].sum() for i in range(3)])
    return mi.RoutingStats(languages, (4,), 3, 1, count, count.double(), tokens,
                           item_count, item_tokens, item_language)


def test_a_language_without_tokens_has_zero_frequency_not_nan():
    """Mutant counts.frequency-clamp: `tokens.clamp(min=0)` made 0 / 0 = nan."""
    count = torch.tensor([[[3, 1]], [[0, 0]]])
    stats = mi.RoutingStats(("a", "b"), (0,), 2, 1, count, count.double(), torch.tensor([4, 0]))
    assert stats.frequency().tolist() == [[[0.75, 0.25]], [[0.0, 0.0]]]
    assert stats.distribution().tolist() == [[[0.75, 0.25]], [[0.0, 0.0]]]


def test_select_relabels_item_languages_to_their_new_positions():
    """Mutant counts.select-items-remap: item_language kept the old positions."""
    picked = _items_stats().select(["c", "a"])
    assert picked.languages == ("c", "a")
    assert picked.item_language.tolist() == [1, 1, 0, 0]  # items in their old order: a's two, then c's
    assert picked.item_tokens.tolist() == [2, 2, 4, 1]
    assert picked.count[:, 0].tolist() == [[1, 0, 4], [3, 1, 0]]
    assert picked.tokens.tolist() == [5, 4]


def test_merge_relabels_the_other_stats_item_languages():
    """Mutant counts.merge-relabel: the other stats' item_language kept its own positions."""
    whole = _items_stats()
    first, second = whole.select(["a", "b"]), whole.select(["c", "b"])
    merged = first.merge(second)
    assert merged.languages == ("a", "b", "c")
    # first's items (a, a, b, b), then second's (b, b, c, c) with c -> 2 and b -> 1
    assert merged.item_language.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert merged.count[:, 0].tolist() == [[3, 1, 0], [0, 8, 2], [1, 0, 4]]
    assert merged.tokens.tolist() == [4, 10, 5]


@pytest.mark.parametrize("shift", [-1, 1])
def test_per_item_tokens_must_add_up_to_the_language_tokens_exactly(shift):
    """Mutant counts.item-tokens-sum: item tokens adding up to fewer than the language's were accepted."""
    stats = _items_stats()
    tokens = stats.tokens.clone()
    tokens[1] += shift  # b's texts hold 5 tokens; its total says 4 or 6
    with pytest.raises(ValueError, match="per-item counts of language 'b' do not add up"):
        mi.RoutingStats(stats.languages, stats.layers, 3, 1, stats.count, stats.gate_mass, tokens,
                        stats.item_count, stats.item_tokens, stats.item_language)


def test_from_paper_rounds_the_mean_experts_per_token(tmp_path):
    """Mutant counts.from-paper-top-k-round: top_k was the mean truncated, 1 here instead of 2.

    Released counts need not sum to top_k x tokens (capacity, rounding in the paper's files):
    here 7 selections over 4 tokens, 1.75 a token, read as top-2."""
    import json

    layer = {"0": {"activation_tokens": 4, "gate_values_sum": 2.0},
             "1": {"activation_tokens": 3, "gate_values_sum": 1.0}, "total_tokens": 4}
    (tmp_path / "mgsm_en.json").write_text(json.dumps({"0": layer}))
    assert mi.RoutingStats.from_paper(tmp_path, ["en"]).top_k == 2


def test_overwrite_takes_an_empty_directory_and_one_a_killed_save_left_half_written(tmp_path):
    """Mutant counts.overwrite-guard: an empty directory, or one holding stats.safetensors
    without meta.json (a save killed between its two files), was refused."""
    stats = _items_stats()
    empty = tmp_path / "empty.routing"
    empty.mkdir()
    assert mi.RoutingStats.load(stats.save(empty, overwrite=True)).count.tolist() == stats.count.tolist()
    half = tmp_path / "half.routing"
    stats.save(half)
    (half / "meta.json").unlink()
    stats.select(["a"]).save(half, overwrite=True)
    assert mi.RoutingStats.load(half).languages == ("a",)
