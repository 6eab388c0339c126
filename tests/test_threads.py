"""Traces of one model from several threads: every trace of a model from mi.wrap / mi.load runs
alone (nnsight keeps one interleaver per model), so an mi.trace beside a plain model.trace in
another thread returns the counts it returns alone. Seen before the lock covered plain traces:
19 of 20 mi.traces wrong or failing."""

import threading

import torch

import moe_interp as mi
from conftest import encode, experts_received, tiny


def test_mi_trace_beside_a_plain_trace_in_another_thread_counts_exactly():
    model = tiny("qwen3_moe")
    prompts = ["Hello there, how are you?", "Bonjour"]
    enc = encode(model, prompts)
    with experts_received(model, enc["attention_mask"]) as seen, torch.no_grad():
        model._module(**enc)
    oracle = torch.stack([seen[layer] for layer in sorted(seen)])
    stop, plain_errors, plain_runs = threading.Event(), [], []

    def plain():
        while not stop.is_set():
            try:
                with model.trace(["Guten Morgen, liebe Welt", "ok"]):
                    picked = model.moe[1].router.indices.save()
                plain_runs.append(tuple(picked.shape))
            except Exception as error:  # noqa: BLE001 - every failure of the other thread is reported
                plain_errors.append(repr(error))

    other = threading.Thread(target=plain)
    other.start()
    wrong = []
    try:
        for _ in range(12):
            with mi.trace(model, prompts, mi.RouterRecord()) as tr:
                pass
            if not torch.equal(tr.routing.count[0], oracle):
                wrong.append(tr.routing.count[0].sum().item())
    finally:
        stop.set()
        other.join()
    assert wrong == [] and plain_errors == []
    assert plain_runs and set(plain_runs) == {(2 * 24, 2)}  # the other thread's own tokens, every time


def test_a_wrapped_model_pickles_as_the_transformers_model_a_server_knows():
    import pickle

    from nnsight import TransformersModel

    model = tiny("qwen3_moe")
    assert type(model).__name__ == "MoEModel" and model._remoteable_class() is TransformersModel
    reduced = model.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    assert reduced[1] == (TransformersModel,)


def test_the_package_tokenizes_holding_the_models_lock(monkeypatch):
    """A fast tokenizer keeps its padding setting on one shared Rust tokenizer, set before each
    call: an `mi.trace` tokenizing beside a plain trace in another thread once got an unpadded
    batch (CI). Every call of the tokenizer that `mi.trace` and `mi.profile` make holds the
    model's lock, as nnsight's own tokenizing inside a trace of the model does."""
    from moe_interp.runtime._shipping import model_lock

    model = mi.zoo.tiny_model("qwen3_moe")
    held = []
    real = type(model.tokenizer).__call__

    def call(self, *args, **kwargs):
        held.append(model_lock(model)._is_owned())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model.tokenizer), "__call__", call)
    with mi.trace(model, ["Hello there", "Hi"], mi.RouterRecord()):
        pass
    assert held and all(held)
    held.clear()
    mi.profile(model, {"eng": ["Hello there", "Hi"], "deu": ["Hallo"]}, progress=False)
    assert held and all(held)
    held.clear()
    with model.trace(["Guten Morgen", "ok"]):  # nnsight's own
        pass
    assert all(held)
