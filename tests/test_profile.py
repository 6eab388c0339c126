"""mi.profile: per-item counts, batching-invariant, resumable after interruption."""

import functools

import pytest
import torch

import moe_interp as mi
from conftest import oracle_routing, tiny

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
    import moe_interp.experiments._profile as profiling
    real = profiling._local_forward  # one call per batch, read by hooks or by a trace

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(profiling, "_local_forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        mi.profile(model, CORPUS, batch_size=1, progress=False, checkpoint=path)
    assert torch.load(path, weights_only=True)["done"] == 2
    monkeypatch.setattr(profiling, "_local_forward", real)
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(profiling, "_local_forward", counting)
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
    import moe_interp.experiments._profile as profiling
    calls = []
    monkeypatch.setattr(profiling, "_local_forward", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="save_every must be a positive int"):
        mi.profile(tiny("qwen3_moe"), CORPUS, progress=False, save_every=value)
    assert calls == []


def interrupted_at_third_batch(monkeypatch, *args, **kwargs) -> None:
    """Run `mi.profile(*args, **kwargs)` with a KeyboardInterrupt as its third batch starts."""
    import moe_interp.experiments._profile as profiling
    real, calls = profiling._local_forward, []  # one call per batch, read by hooks or by a trace

    def stop_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(profiling, "_local_forward", stop_at_third)
        mi.profile(*args, **kwargs)


def test_a_separately_built_model_with_equal_weights_resumes_the_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    interrupted_at_third_batch(monkeypatch, mi.zoo.tiny_model("qwen3_moe"), CORPUS, batch_size=1, progress=False,
                               checkpoint=path)
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


# -- texts longer than the model's positions: windows (long_texts=) ---------------------------

WIDTH = 16  # the small model's max_position_embeddings
LONG = {"eng": ["Hi there", "The quick brown fox jumps over the lazy dog; ", "ab"],
        "deu": ["Größe über alles, schöne Grüße aus Köln!"]}


@functools.lru_cache(maxsize=None)
def small():
    return mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=WIDTH)


def byte_ids(text, bos=False):
    """The byte tokenizer's ids, by hand: 3 special tokens, then one id per UTF-8 byte."""
    return [1] * bos + [3 + b for b in text.encode()]


def windows_oracle(model, ids, width=WIDTH):
    """`[layers, E]`: what the experts received when each `width`-token window of `ids` runs
    alone through the plain HF model, summed over the windows."""
    total = 0
    for start in range(0, len(ids), width):
        window = torch.tensor([ids[start : start + width]])
        counts, _ = oracle_routing(model, {"input_ids": window, "attention_mask": torch.ones_like(window)})
        total = total + counts
    return total


def test_a_long_text_is_profiled_as_consecutive_windows_counted_as_that_one_text():
    model = small()
    p = mi.profile(model, LONG, batch_size=3, progress=False)  # windows share batches with short texts
    texts = [t for texts in LONG.values() for t in texts]
    assert p.item_tokens.tolist() == [len(t.encode()) for t in texts] == [8, 45, 2, 47]
    for i, text in enumerate(texts):
        assert torch.equal(p.item_count[i].long(), windows_oracle(model, byte_ids(text))), text
    assert torch.equal(p.count[0], p.item_count[:3].long().sum(0)) and p.tokens.tolist() == [55, 47]
    assert p.meta["long_texts"] == "window" and p.meta["long_items"] == 2
    # the oracle tells windows from one run past the positions (which RoPE allows without a word)
    whole = torch.tensor([byte_ids(texts[1])])
    assert not torch.equal(oracle_routing(model, {"input_ids": whole, "attention_mask": torch.ones_like(whole)})[0],
                           p.item_count[1].long())


def test_gate_mass_of_a_windowed_text_is_the_sum_of_its_windows_traced_alone():
    model = small()
    p = mi.profile(model, {"eng": [LONG["eng"][1]]}, progress=False)
    ids = byte_ids(LONG["eng"][1])
    mass = 0
    for start in range(0, len(ids), WIDTH):
        with mi.trace(model, torch.tensor([ids[start : start + WIDTH]]), mi.RouterRecord()) as tr:
            pass
        mass = mass + tr.routing.gate_mass[0].double()
    assert torch.allclose(p.gate_mass[0], mass, atol=1e-5)


def test_a_bos_the_tokenizer_adds_is_routed_once_in_the_first_window():
    from tokenizers import processors

    model = mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=WIDTH)
    tokenizer = mi.zoo.byte_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                       special_tokens=[("<s>", 1)])
    model.tokenizer = tokenizer
    text = LONG["eng"][1]
    p = mi.profile(model, {"eng": [text]}, progress=False)
    assert p.item_tokens.tolist() == [len(text.encode()) + 1]  # one BOS, not one per window
    assert torch.equal(p.item_count[0].long(), windows_oracle(model, byte_ids(text, bos=True)))


def test_long_texts_error_names_the_text_and_the_option_before_any_batch(monkeypatch):
    import moe_interp.experiments._profile as profiling
    calls = []
    monkeypatch.setattr(profiling, "_local_forward", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"corpus\['eng'\]\[1\] has 45 tokens, more than this model's 16 positions"
                                         r".*long_texts=\"window\".*long_texts=\"truncate\""):
        mi.profile(small(), LONG, long_texts="error", progress=False)
    assert calls == []


def test_long_texts_truncate_routes_only_the_first_positions():
    model = small()
    p = mi.profile(model, LONG, long_texts="truncate", progress=False)
    assert p.item_tokens.tolist() == [8, 16, 2, 16]
    assert torch.equal(p.item_count[1].long(), windows_oracle(model, byte_ids(LONG["eng"][1])[:WIDTH]))


@pytest.mark.parametrize("value", ["windows", "Window", ""])
def test_an_unknown_long_texts_policy_is_refused(value):
    with pytest.raises(ValueError, match="long_texts must be one of 'window', 'truncate', 'error'"):
        mi.profile(small(), LONG, long_texts=value, progress=False)


def test_an_empty_text_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"corpus\['deu'\]\[1\] has no tokens"):
        mi.profile(small(), {"eng": ["a"], "deu": ["b", ""]}, progress=False)


def test_the_long_text_policy_keys_the_checkpoint(tmp_path):
    path = tmp_path / "run.ckpt"
    mi.profile(small(), LONG, progress=False, checkpoint=path)
    with pytest.raises(mi.ResumeError, match=r"\(differs: long_texts\)"):
        mi.profile(small(), LONG, long_texts="truncate", progress=False, checkpoint=path)


def test_an_interrupted_windowed_profile_resumes_between_windows(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    interrupted_at_third_batch(monkeypatch, small(), LONG, batch_size=1, progress=False, checkpoint=path)
    assert torch.load(path, weights_only=True)["done"] == 2  # rows longest first: two of one text's three windows
    resumed = mi.profile(small(), LONG, batch_size=1, progress=False, checkpoint=path)
    fresh = mi.profile(small(), LONG, batch_size=4, progress=False)
    assert torch.equal(resumed.item_count, fresh.item_count) and torch.equal(resumed.item_tokens, fresh.item_tokens)
    assert torch.allclose(resumed.gate_mass, fresh.gate_mass, atol=1e-6)


def test_remote_profile_windows_long_texts_as_the_local_one(tmp_path):
    small().tokenizer.save_pretrained(tmp_path)
    small()._module.save_pretrained(tmp_path)
    loaded = mi.load(tmp_path)  # a wrapped in-memory model cannot go remote
    local = mi.profile(loaded, LONG, batch_size=2, progress=False)
    far = mi.profile(loaded, LONG, batch_size=2, progress=False, remote="local", session_batches=2)
    assert torch.equal(local.item_count, far.item_count) and torch.equal(local.item_tokens, far.item_tokens)
    assert far.item_tokens.tolist() == [8, 45, 2, 47]
    assert torch.allclose(local.gate_mass, far.gate_mass, atol=1e-6)


def test_cli_profile_of_the_demo_model_windows_texts_longer_than_its_positions(tmp_path, capsys):
    """The default CLI path: bundled UDHR texts of Tibetan run past the demo model's 1024 positions.
    The CLI reads the demo model's texts as the 256-byte pieces it was trained on (every byte
    routed once); `mi.profile` itself windows whatever is still too long (tests above)."""
    from moe_interp.cli import main
    from moe_interp.experiments.demo import MAX_BYTES

    out = tmp_path / "p.routing"
    assert main(["profile", "--languages", "eng,bod", "--out", str(out)]) == 0
    stats = mi.RoutingStats.load(out)
    corpus = mi.datasets.udhr(["eng", "bod"], split="train")  # the CLI default split
    assert max(len(t.encode()) for t in corpus["bod"]) > 1024  # a text the model could not read whole
    assert stats.tokens.tolist() == [sum(len(t.encode()) for t in corpus[lang]) for lang in ("eng", "bod")]
    pieces = stats.item_tokens.tolist()
    assert max(pieces) <= MAX_BYTES and sum(pieces) == sum(stats.tokens.tolist())
    assert len(pieces) > sum(len(corpus[lang]) for lang in ("eng", "bod"))  # long texts were cut


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_type", ["qwen3_moe", "switch_transformers"])
def test_padding_rows_equals_the_tokenizers_own_pad(model_type, side):
    """`mi.profile`'s batches: token ids, mask, dtypes and shape exactly as `tokenizer.pad`
    makes them, on either padding side (rows of one token, of equal lengths, longest last)."""
    from moe_interp.runtime._inputs import pad_rows
    tokenizer = tiny(model_type).tokenizer
    saved = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        for rows in ([[5, 6, 7], [8]], [[9]], [[4, 5], [6, 7]], [[3], [4, 5, 6, 7, 8], [9, 10]]):
            ours, theirs = pad_rows(tokenizer, rows), tokenizer.pad({"input_ids": rows}, return_tensors="pt")
            for field in ("input_ids", "attention_mask"):
                assert ours[field].dtype == theirs[field].dtype and torch.equal(ours[field], theirs[field]), field
    finally:
        tokenizer.padding_side = saved


def test_padding_without_a_pad_token_is_the_tokenizers_error():
    from moe_interp.runtime._inputs import pad_rows
    tokenizer = tiny("qwen3_moe").tokenizer
    saved = tokenizer.pad_token
    tokenizer.pad_token = None
    try:
        with pytest.raises(ValueError, match="padding token"):
            pad_rows(tokenizer, [[5, 6], [7]])
    finally:
        tokenizer.pad_token = saved
