"""mi.profile: per-item counts, batching-invariant, resumable after interruption."""

import functools

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


# -- resume keyed by content (issue 12, sections 2 and 4) ------------------------------------

@functools.lru_cache(maxsize=None)
def demo(trained: bool):
    return mi.zoo.demo_model(trained=trained)


SHORT = {"eng": ["All human beings are born free.", "Everyone has the right to life."],
         "fra": ["Tous les êtres humains naissent libres."]}


def test_checkpoint_of_the_trained_model_is_refused_for_its_random_twin(tmp_path):
    path = tmp_path / "run.ckpt"
    trained = mi.profile(demo(True), SHORT, batch_size=1, progress=False, checkpoint=path)
    stored = path.read_bytes()
    twin = mi.profile(demo(False), SHORT, batch_size=1, progress=False)
    assert not torch.equal(twin.count, trained.count)  # the two models really route differently
    # same architecture, same config, same _name_or_path: only the weights differ
    with pytest.raises(ValueError, match=r"\(differs: model weights\)") as error:  # config, tokenizer: equal
        mi.profile(demo(False), SHORT, batch_size=1, progress=False, checkpoint=path)
    assert str(path) in str(error.value) and "another checkpoint path" in str(error.value)
    assert path.read_bytes() == stored  # the trained run's checkpoint is kept


@pytest.mark.parametrize("change, part", [
    (dict(corpus={**CORPUS, "deu": ["Die Katze saß auf der Matte.", "Hallo!"]}), "corpus"),
    (dict(interventions=[mi.ExpertAblate({1: [0]})]), "interventions"),
    (dict(kwargs={"truncation": True, "max_length": 8}), "settings"),
])
def test_checkpoint_mismatch_names_the_part_that_differs(tmp_path, change, part):
    path = tmp_path / "run.ckpt"
    mi.profile(tiny("qwen3_moe"), CORPUS, batch_size=2, progress=False, checkpoint=path)
    corpus = change.get("corpus", CORPUS)
    with pytest.raises(ValueError, match=part) as error:
        mi.profile(tiny("qwen3_moe"), corpus, *change.get("interventions", []), batch_size=2, progress=False,
                   checkpoint=path, **change.get("kwargs", {}))
    assert f"(differs: {part})" in str(error.value)  # that part only


def test_checkpoint_of_a_profile_with_a_different_ablation_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    mi.profile(tiny("qwen3_moe"), CORPUS, mi.ExpertAblate({1: [0]}), progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="interventions"):
        mi.profile(tiny("qwen3_moe"), CORPUS, mi.ExpertAblate({1: [1]}), progress=False, checkpoint=path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not a dict"])
def test_corrupt_checkpoint_is_a_clear_error_naming_the_path(tmp_path, damage):
    path = tmp_path / "run.ckpt"
    mi.profile(tiny("qwen3_moe"), CORPUS, batch_size=2, progress=False, checkpoint=path)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save([1, 2, 3], path)
    damaged = path.read_bytes()
    with pytest.raises(ValueError, match="delete it or pass another checkpoint") as error:
        mi.profile(tiny("qwen3_moe"), CORPUS, batch_size=2, progress=False, checkpoint=path)
    assert str(path) in str(error.value)
    assert path.read_bytes() == damaged  # nothing deleted behind the user's back


@pytest.mark.parametrize("value", [0, -1])
def test_save_every_must_be_a_positive_int_checked_before_any_batch(value, monkeypatch):
    import moe_interp.profiling as profiling
    calls = []
    monkeypatch.setattr(profiling, "trace", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="save_every must be a positive int"):
        mi.profile(tiny("qwen3_moe"), CORPUS, progress=False, save_every=value)
    assert calls == []


def test_a_separately_built_model_with_equal_weights_resumes_the_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    import moe_interp.profiling as profiling
    real, calls = profiling.trace, []

    def stop_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(profiling, "trace", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        mi.profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, batch_size=1, progress=False, checkpoint=path)
    monkeypatch.setattr(profiling, "trace", real)
    resumed = mi.profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, batch_size=1, progress=False, checkpoint=path)
    assert torch.equal(resumed.count, mi.profile(tiny("qwen3_moe"), CORPUS, progress=False).count)


def test_editing_one_router_row_invalidates_the_checkpoint(tmp_path):
    path = tmp_path / "run.ckpt"
    model = mi.zoo.tiny_model("qwen3_moe")
    mi.profile(model, CORPUS, progress=False, checkpoint=path)
    router = model._module.get_submodule(mi.describe(model).routers[2])
    with torch.no_grad():
        router.weight[5] = 0  # one expert's row of one router: 32 of the model's ~100k numbers
    with pytest.raises(ValueError, match=r"\(differs: model weights\)"):
        mi.profile(model, CORPUS, progress=False, checkpoint=path)
