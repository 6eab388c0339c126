"""Content keys and integrity (issue 23, section 5): what a resumed result depends on is keyed
by content (the tokenizer's behaviour, every byte of the weights), and a damaged checkpoint
is refused, never resumed with other numbers."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import moe_interp as mi
import moe_interp.experiments._grid as grid_module  # where Experiment calls text_nll
from moe_interp.core._fingerprint import model_parts

CORPUS = {"eng": ["The Cat sat on the Mat.", "Dogs BARK at night."], "deu": ["Die Katze SCHLÄFT."]}


# -- 1. the tokenizer's key covers its behaviour ---------------------------------------------

def _lowercase(tok):
    from tokenizers import normalizers
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()


def _nfkc(tok):
    from tokenizers import normalizers
    tok.backend_tokenizer.normalizer = normalizers.NFKC()


def _prefix_space(tok):
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)


def _bos(tok):
    from tokenizers import processors
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])


def _decoder(tok):
    from tokenizers import decoders
    tok.backend_tokenizer.decoder = decoders.Fuse()


def _added_token(tok):
    tok.add_tokens(["Cat"])


def _special_flag(tok):
    from tokenizers import AddedToken
    tok.add_special_tokens({"eos_token": AddedToken("</s>", lstrip=True, special=True, normalized=False)})


def _padding_side(tok):
    tok.padding_side = "right" if tok.padding_side == "left" else "left"


def _truncation_side(tok):
    tok.truncation_side = "left" if tok.truncation_side == "right" else "right"


TOKENIZER_CHANGES = [_lowercase, _nfkc, _prefix_space, _bos, _decoder, _added_token, _special_flag, _padding_side,
                     _truncation_side]


@pytest.mark.parametrize("change", TOKENIZER_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_a_changed_tokenizer_never_resumes_the_profile_checkpoint(tmp_path, change):
    path = tmp_path / "run.ckpt"
    model = mi.zoo.tiny_model("qwen3_moe")
    mi.profile(model, CORPUS, progress=False, checkpoint=path)
    stored = path.read_bytes()
    change(model.tokenizer)
    with pytest.raises(mi.ResumeError, match=r"\(differs: tokenizer\)"):  # weights, config: the same
        mi.profile(model, CORPUS, progress=False, checkpoint=path)
    assert path.read_bytes() == stored


def test_a_lowercasing_normalizer_really_changes_the_profile_and_is_recomputed(tmp_path):
    path = tmp_path / "run.ckpt"
    before = mi.profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, progress=False, checkpoint=path)
    lower = mi.zoo.tiny_model("qwen3_moe")
    _lowercase(lower.tokenizer)
    fresh = mi.profile(lower, CORPUS, progress=False)
    assert not torch.equal(fresh.count, before.count)  # the stale profile would be wrong
    with pytest.raises(mi.ResumeError, match="tokenizer"):
        mi.profile(lower, CORPUS, progress=False, checkpoint=path)
    path.unlink()  # the fix the error names
    again = mi.profile(lower, CORPUS, progress=False, checkpoint=path)
    assert torch.equal(again.count, fresh.count)


@pytest.mark.parametrize("change", [_lowercase, _padding_side, _added_token], ids=lambda f: f.__name__.strip("_"))
def test_an_experiment_recomputes_every_cell_after_a_tokenizer_change(tmp_path, monkeypatch, change):
    path = tmp_path / "cells.jsonl"
    model = mi.zoo.tiny_model("qwen3_moe", vocab_size=300)  # room for an added token's id (259)
    grid = {"baseline": []}
    first = mi.Experiment(model, CORPUS, grid, path=path, progress=False).run()
    change(model.tokenizer)
    real, calls = grid_module.text_nll, []
    monkeypatch.setattr(grid_module, "text_nll", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    again = mi.Experiment(model, CORPUS, grid, path=path, progress=False).run()
    assert sorted(map(tuple, calls)) == sorted(map(tuple, CORPUS.values()))  # every cell, none reused
    monkeypatch.setattr(grid_module, "text_nll", real)
    assert again.equals(mi.Experiment(model, CORPUS, grid, progress=False).run())
    if change is _lowercase:  # this change moves the numbers: reusing the cells would have been wrong
        assert not again.bits_per_byte.equals(first.bits_per_byte)


def test_the_tokenizer_key_is_stable_for_the_same_behaviour():
    tok = mi.zoo.byte_tokenizer()
    model = mi.zoo.tiny_model("qwen3_moe")
    key = model_parts(model)["tokenizer"]
    # per-call state (padding, truncation the backend keeps from the last call) is no behaviour
    model.tokenizer(["a", "abc"], padding=True, truncation=True, max_length=2)
    assert model_parts(model)["tokenizer"] == key
    assert model_parts(mi.zoo.tiny_model("qwen3_moe", seed=3))["tokenizer"] == key  # a separately built one
    assert model_parts(mi.wrap(model._module, tok))["tokenizer"] == key


def test_the_tokenizer_key_is_the_same_in_another_process():
    code = textwrap.dedent("""
        import moe_interp as mi
        from moe_interp.core._fingerprint import model_parts
        print(model_parts(mi.zoo.tiny_model("qwen3_moe"))["tokenizer"])
    """)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip().splitlines()[-1] == model_parts(mi.zoo.tiny_model("qwen3_moe"))["tokenizer"]


def _byt5():
    from transformers import ByT5Tokenizer
    return ByT5Tokenizer()


def test_a_python_tokenizer_is_keyed_by_its_behaviour():
    from transformers import ByT5Tokenizer
    assert not hasattr(ByT5Tokenizer(), "backend_tokenizer")  # no tokenizers JSON to hash
    hf = mi.zoo.tiny_model("qwen3_moe", vocab_size=400)._module

    def key(change=lambda tok: None):
        model = mi.wrap(hf, _byt5())  # (wrapping sets the padding side: changes come after)
        change(model.tokenizer)
        return model_parts(model)["tokenizer"]
    base = key()
    assert key() == base
    changed = [key(change) for change in (_padding_side, _truncation_side, lambda t: t.add_tokens(["Cat"]),
                                          lambda t: setattr(t, "model_max_length", 7))]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_behaviour_change_no_attribute_shows_is_seen_by_the_probe():
    """A tokenizer whose tokenization is replaced by a function: its attributes look alike
    (a function is keyed by name), its ids do not."""
    hf = mi.zoo.tiny_model("qwen3_moe", vocab_size=400)._module
    plain, lowered = _byt5(), _byt5()

    def tokenize(text, **kwargs):
        return [chr(b) for b in text.lower().encode("utf-8")]
    lowered._tokenize = tokenize
    assert lowered("Hi").input_ids != plain("Hi").input_ids
    tokenize.__qualname__ = "ByT5Tokenizer._tokenize"
    assert model_parts(mi.wrap(hf, lowered))["tokenizer"] != model_parts(mi.wrap(hf, plain))["tokenizer"]


# -- 2. a damaged profile checkpoint is refused ---------------------------------------------

def test_no_flipped_bit_resumes_a_finished_checkpoint_with_other_numbers(tmp_path):
    path = tmp_path / "run.ckpt"
    model = mi.zoo.tiny_model("qwen3_moe")
    reference = mi.profile(model, CORPUS, progress=False, checkpoint=path)
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    fields = ("count", "gate_mass", "tokens", "item_count", "item_tokens", "item_language")
    rng = np.random.default_rng(23)
    refused, harmless, silent = 0, 0, []
    for flip in range(60):
        bit = int(rng.integers(data.size * 8))
        damaged = data.copy()
        damaged[bit // 8] ^= np.uint8(1 << (bit % 8))
        path.write_bytes(damaged.tobytes())
        try:
            resumed = mi.profile(model, CORPUS, progress=False, checkpoint=path)
        except mi.ResumeError as error:
            assert str(path) in str(error) and "delete it" in str(error)
            refused += 1
            continue
        if all(torch.equal(getattr(resumed, f), getattr(reference, f)) for f in fields):
            harmless += 1  # e.g. a bit of the zip's bookkeeping that torch.load never reads
        else:
            silent.append(bit)
    assert silent == [], f"{len(silent)} of 60 flipped bits resumed with other numbers: bits {silent}"
    assert refused >= 20, (refused, harmless)  # 40 refused, 20 harmless when written


def test_a_checkpoint_whose_tensor_bytes_changed_is_refused_naming_the_checksum(tmp_path):
    path = tmp_path / "run.ckpt"
    model = mi.zoo.tiny_model("qwen3_moe")
    mi.profile(model, CORPUS, progress=False, checkpoint=path)
    state = torch.load(path, weights_only=True)
    state["item_count"][0, 0, 0] += 1  # a count changed, everything else (its key) intact
    torch.save(state, path)
    with pytest.raises(mi.ResumeError, match="checksum") as error:
        mi.profile(model, CORPUS, progress=False, checkpoint=path)
    assert str(path) in str(error.value) and "delete it" in str(error.value)


# -- 3. the weights' key reads every byte ------------------------------------------------------

def _unsampled_row(weight, samples=4096):
    """A row of `weight` that a strided sample of `samples` elements never reads (computed
    by hand: the sample reads flat indices 0, step, 2*step, ... with step = numel // samples)."""
    rows, width = weight.shape
    step = max(1, weight.numel() // samples)
    read = set(range(0, step * samples, step))
    return next(r for r in range(rows) if not read & set(range(r * width, (r + 1) * width)))


def test_a_one_row_edit_of_a_large_embedding_changes_the_full_key(tmp_path):
    model = mi.zoo.tiny_model("qwen3_moe", vocab_size=16384)  # 16384 x 32: a strided sample reads every 128th
    embedding = model._module.get_input_embeddings().weight
    row = _unsampled_row(embedding)
    full, sampled = model_parts(model), model_parts(model, weights="sampled")
    path = tmp_path / "run.ckpt"
    mi.profile(model, CORPUS, progress=False, checkpoint=path)
    with torch.no_grad():
        embedding[row] += 1
    assert model_parts(model)["model weights"] != full["model weights"]
    # documented limit of the cheap key: this edit touches no sampled element, so it is missed
    assert model_parts(model, weights="sampled")["model weights"] == sampled["model weights"]
    with pytest.raises(mi.ResumeError, match=r"\(differs: model weights\)"):
        mi.profile(model, CORPUS, progress=False, checkpoint=path)


def test_any_one_element_changed_in_any_tensor_changes_the_weights_key():
    model = mi.zoo.tiny_model("mixtral")
    hf = model._module
    key = model_parts(model)["model weights"]
    rng = np.random.default_rng(0)
    tensors = [*hf.named_parameters(), *((n, b) for n, b in hf.named_buffers() if b.is_floating_point())]
    assert len(tensors) > 20
    for name, tensor in tensors:
        flat = tensor.data.view(-1)
        i = int(rng.integers(flat.numel()))
        old = flat[i].clone()
        flat[i] = old + 1
        assert model_parts(model)["model weights"] != key, name
        flat[i] = old
    assert model_parts(model)["model weights"] == key  # restored: the same key again


def test_the_weights_key_is_the_same_for_equal_weights_and_differs_by_dtype_and_mode():
    a, b = mi.zoo.tiny_model("qwen3_moe"), mi.zoo.tiny_model("qwen3_moe")
    assert model_parts(a) == model_parts(b)
    assert model_parts(a)["model weights"] != model_parts(a, weights="sampled")["model weights"]
    b._module.to(torch.float64)
    assert model_parts(b)["model weights"] != model_parts(a)["model weights"]


def test_an_unknown_weights_mode_is_refused():
    with pytest.raises(ValueError, match="'full'.*'sampled'"):
        model_parts(mi.zoo.tiny_model("qwen3_moe"), weights="strided")


def test_the_cli_refuses_a_checkpoint_after_a_one_row_edit_of_the_saved_model(tmp_path, capsys):
    """`moe-interp profile --checkpoint` keys the weights by every byte: a model directory
    whose embedding changed in one row (that a strided sample never reads) does not resume."""
    from moe_interp.cli import main
    model = mi.zoo.tiny_model("qwen3_moe", vocab_size=16384)
    model._module.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    args = ["profile", "--model", str(tmp_path / "model"), "--languages", "eng", "--split", "heldout",
            "--checkpoint", str(tmp_path / "run.ckpt")]
    assert main([*args, "--out", str(tmp_path / "first.routing")]) == 0
    embedding = model._module.get_input_embeddings().weight
    with torch.no_grad():
        embedding[_unsampled_row(embedding)] += 1
    model._module.save_pretrained(tmp_path / "model")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "edited.routing")])
    assert exit_.value.code == 2 and "(differs: model weights)" in capsys.readouterr().err


def test_no_flipped_bit_in_an_experiment_file_is_reused_with_other_numbers(tmp_path):
    path = tmp_path / "cells.jsonl"
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus, grid = {"eng": CORPUS["eng"]}, {"baseline": []}
    reference = mi.Experiment(model, corpus, grid, path=path, progress=False).run()
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    rng = np.random.default_rng(5)
    silent = []
    for flip in range(30):
        bit = int(rng.integers(data.size * 8))
        damaged = data.copy()
        damaged[bit // 8] ^= np.uint8(1 << (bit % 8))
        path.write_bytes(damaged.tobytes())
        if not mi.Experiment(model, corpus, grid, path=path, progress=False).run().equals(reference):
            silent.append(bit)
    assert silent == [], f"{len(silent)} of 30 flipped bits reused a cell with other numbers: bits {silent}"


def test_saving_a_model_keeps_its_key(tmp_path):
    """`save_pretrained` writes `dtype` and `architectures` into the live config: the key ignored the first
    and not the second, so a model saved in between (a test's fixture did it) re-ran every cell and profile."""
    model = mi.zoo.tiny_model("qwen3_moe")
    before = model_parts(model)
    model._module.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    assert model._module.config.architectures == ["Qwen3MoeForCausalLM"]  # what save_pretrained wrote
    assert model_parts(model) == before
    assert model_parts(mi.load(tmp_path))["model config"] == before["model config"]  # and the model read back


def test_a_remote_trace_keeps_the_model_s_key(tmp_path):
    """Serializing a request tags the wrapped model's tokenizer with nnsight's `_persistent_id`
    (`LanguageModel.__getstate__`, nnsight 0.8.1), which the tokenizer key read as an attribute:
    after a remote trace every local checkpoint and Experiment cell of the model was someone
    else's (found by CI: test_experiment's SIGKILL resume recomputed all 6 cells after
    test_remote's NdifSim traces had run on the shared tiny model)."""
    source = mi.zoo.tiny_model("qwen3_moe")
    source._module.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    model = mi.load(tmp_path)
    before = model_parts(model)
    with mi.trace(model, "Hello there", mi.RouterRecord(), remote="local"):
        pass
    assert model.tokenizer.__dict__.get("_persistent_id") == "Tokenizer"  # what serialization left on it
    assert model_parts(model) == before
