"""mi.profile: per-item counts, batching-invariant, resumable after interruption."""

import pytest
import torch

import moe_interp as mi
from conftest import tiny

CORPUS = {"eng": ["The cat sat.", "A much longer English sentence about cats and dogs.", "Hi"],
          "deu": ["Die Katze saß auf der Matte.", "Hallo"]}


def test_profile_counts_equal_one_trace_per_language_and_items_sum_up():
    model = tiny("qwen3_moe")
    p = mi.profile(model, CORPUS, batch_size=2, progress=False)
    assert p.languages == ("eng", "deu") and p.item_count.shape == (5, 4, 8)
    for lang, texts in CORPUS.items():
        with mi.trace(model, texts, mi.RouterRecord()) as tr:
            pass
        i = p.language_index(lang)
        assert torch.equal(p.count[i], tr.routing.count[0]) and p.tokens[i] == tr.routing.tokens[0]
        assert torch.allclose(p.gate_mass[i], tr.routing.gate_mass[0], atol=1e-4)
    assert torch.equal(p.item_count.long()[p.item_language == 0].sum(0), p.count[0])
    assert p.item_tokens.tolist()[2] == len("Hi".encode())


def test_batch_size_does_not_change_results():
    model = tiny("mixtral")
    a = mi.profile(model, CORPUS, batch_size=1, progress=False)
    b = mi.profile(model, CORPUS, batch_size=5, progress=False)
    assert torch.equal(a.item_count, b.item_count) and torch.equal(a.count, b.count)


def test_interrupted_profile_resumes_from_checkpoint(tmp_path, monkeypatch):
    model = tiny("qwen3_moe")
    path = tmp_path / "run.ckpt"
    calls = {"n": 0}
    real = mi.trace

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    import moe_interp.profiling as profiling
    monkeypatch.setattr(profiling, "trace", flaky)
    with pytest.raises(KeyboardInterrupt):
        mi.profile(model, CORPUS, batch_size=1, progress=False, checkpoint=path)
    assert torch.load(path, weights_only=True)["done"] == 2
    monkeypatch.setattr(profiling, "trace", real)
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(profiling, "trace", counting)
    resumed = mi.profile(model, CORPUS, batch_size=1, progress=False, checkpoint=path)
    assert counted["n"] == 3  # only the 3 texts not done before
    fresh = mi.profile(model, CORPUS, batch_size=1, progress=False)
    assert torch.equal(resumed.item_count, fresh.item_count) and torch.equal(resumed.gate_mass, fresh.gate_mass)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    model = tiny("qwen3_moe")
    path = tmp_path / "run.ckpt"
    mi.profile(model, CORPUS, batch_size=2, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="another model, corpus"):
        mi.profile(model, {"eng": ["other"]}, progress=False, checkpoint=path)


@pytest.mark.parametrize("corpus, error", [(["a"], TypeError), ({"eng": "a"}, TypeError), ({"eng": []}, ValueError)])
def test_bad_corpus_is_a_clear_error(corpus, error):
    with pytest.raises(error, match="corpus"):
        mi.profile(tiny("qwen3_moe"), corpus, progress=False)
