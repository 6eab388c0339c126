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
