"""`runtime/_hooks.py`: a local profile batch read by torch hooks, against the nnsight trace it
replaces (bitwise: counts, gate mass, tokens, per stack) and against the conformance matrix's
oracle (torch hooks on the experts, sharing no code with the package), on the matrix's types:
the fast subset, or every buildable MoE type with `MI_CONFORMANCE=full`. Then what it must not
do: leave a hook (or the model's lock) behind when the forward raises, mix in another thread's
calls, or serve what only a trace can (edits, a `.source` readout, the first checked trace)."""

import os
import threading
from types import SimpleNamespace

import pytest
import torch

import conformance
from conftest import hooked_batches
import moe_interp as mi
from moe_interp.runtime import _hooks
from moe_interp.runtime._compile import compile_plan
from moe_interp.runtime._hooks import hooked_reader, hooked_trace, unserved
from moe_interp.runtime._shipping import model_lock
from moe_interp.runtime._tracer import per_row_trace

TYPES = conformance.full_types() if os.environ.get("MI_CONFORMANCE") == "full" else conformance.FAST_TYPES
SITUATIONS = ("left_padding", "right_padding", "capacity")
TOKEN_FIELDS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def _batch(model, side=None):
    enc = conformance.encode(model, side=side)
    return {k: v for k, v in enc.items() if k in TOKEN_FIELDS}


def _traced(model, batch, *interventions, **kwargs):
    tracer = per_row_trace(model, batch, *interventions, mi.RouterRecord(), **kwargs)
    with torch.no_grad(), tracer:
        pass
    return tracer


def _hooked(model, batch, *interventions, **kwargs):
    with torch.no_grad():
        return hooked_trace(model, batch, *interventions, mi.RouterRecord(), **kwargs)


def _assert_same(run, tracer):
    """Bitwise the same counts, gate mass and tokens, stack by stack."""
    ours, theirs = run.routing_by_stack, tracer.routing_by_stack
    assert list(ours) == list(theirs)
    for stack in ours:
        a, b = ours[stack], theirs[stack]
        assert (a.groups, a.layers) == (b.groups, b.layers)
        assert torch.equal(a.count, b.count), stack
        assert torch.equal(a.gate_mass, b.gate_mass), stack
        assert torch.equal(a.tokens, b.tokens), stack


@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize("model_type", TYPES)
def test_a_hooked_batch_equals_the_trace_and_the_oracle(model_type, situation):
    if situation == "capacity" and model_type not in conformance.CAPACITY:
        pytest.skip("no expert capacity")
    try:  # the matrix's verdicts for a type it cannot build: refused (a typed error) or n/a
        model = conformance.build(model_type, **(conformance.CAPACITY[model_type] if situation == "capacity" else {}))
    except mi.UnsupportedModelError as error:
        pytest.skip(f"refused by the matrix too: {error}")
    except Exception as error:  # noqa: BLE001 - the survey's "no tiny build"
        pytest.skip(f"no tiny build: {type(error).__name__}: {error}")
    batch = _batch(model, side="right" if situation == "right_padding" else None)
    try:
        tracer = _traced(model, batch, use_cache=False)  # the first trace also checks the detection
    except (mi.UnsupportedModelError, mi.RouterAccessError) as error:  # a refusal: no counts by hooks either
        try:
            assert _hooked(model, batch, use_cache=False) is None
        except type(error):
            pass
        return
    plan = compile_plan(mi.describe(model), [mi.RouterRecord()], model)
    stopped = _hooked(model, batch, use_cache=False)  # nothing else watches: it stops after the last read
    oracle = conformance.Oracle(model._module, mi.describe(model).num_experts)
    with oracle.watch():  # the oracle's hooks watch: the forward runs to its end
        run = _hooked(model, batch, use_cache=False)
    if unserved(plan) is not None:  # a readout at a `.source` op (JetMoe): the trace serves it
        assert run is None and stopped is None and "source" in unserved(plan)
        return
    assert run is not None and run.stopped is None
    assert stopped is not None and stopped.stopped is not None
    _assert_same(run, tracer)
    _assert_same(stopped, tracer)
    rows = [(row, 1) for row in range(batch["input_ids"].shape[0])]
    cells = conformance.check_trace(model_type, situation, model, run, {g: {} for g in range(len(rows))}, rows, {},
                                    oracle)
    record = {cell[2]: cell for cell in cells if cell[2].startswith("record.")}
    assert record["record.count"][3] == "exact", record["record.count"]
    assert record["record.gate_mass"][3] in ("exact", "no oracle"), record["record.gate_mass"]


def test_the_check_sees_a_wrong_count():
    """The comparison can fail: counts shifted by one expert differ from the trace's."""
    model = conformance.build("qwen3_moe")
    batch = _batch(model)
    tracer = _traced(model, batch)
    run = _hooked(model, batch)
    counts = run.routing
    counts.count[0, 0] = torch.roll(counts.count[0, 0], 1)
    run._store["count"][0, 0] = counts.count[0, 0]
    with pytest.raises(AssertionError):
        _assert_same(run, tracer)


def _hook_state(module):
    """Every hook and forward of every submodule, to compare before and after."""
    return [(name, dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m._forward_pre_hooks_with_kwargs),
             dict(m._forward_hooks_with_kwargs), m.__dict__.get("forward")) for name, m in module.named_modules()]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_mid_forward_leaves_the_model_as_it_was(error):
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    reference = _traced(model, batch)
    before = _hook_state(model._module)

    def fail(module, args, output):
        raise error("the forward failed halfway")

    failing = model._module.model.layers[2].register_forward_hook(fail)
    try:
        with pytest.raises(error, match="halfway"):
            _hooked(model, batch)
    finally:
        failing.remove()
    assert _hook_state(model._module) == before
    free = []
    other = threading.Thread(target=lambda: free.append(model_lock(model).acquire(timeout=5) and
                                                        model_lock(model).release() is None))
    other.start()
    other.join()
    assert free == [True]  # the lock went with the forward
    _assert_same(_hooked(model, batch), reference)  # and the next batch reads right


def test_a_failed_registration_removes_the_hooks_already_registered(monkeypatch):
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    _traced(model, batch)
    before = _hook_state(model._module)
    registered = []
    real = torch.nn.Module.register_forward_pre_hook

    def third_fails(self, *args, **kwargs):
        if len(registered) == 2:
            raise RuntimeError("cannot register")
        registered.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "register_forward_pre_hook", third_fails)
    with pytest.raises(RuntimeError, match="cannot register"):
        _hooked(model, batch)
    monkeypatch.undo()
    assert len(registered) == 2 and _hook_state(model._module) == before


def test_calls_from_other_threads_are_not_read():
    """A plain nnsight trace (which waits for the model's lock) and direct calls of the HF model
    (which do not) run in another thread while hooked batches run: every batch reads its own."""
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    reference = _traced(model, batch)
    other_ids = torch.randint(3, 200, (2, 7))
    stop, errors = threading.Event(), []

    def busy():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    model._module(input_ids=other_ids)
                with model.trace({"input_ids": other_ids}):
                    model.moe[0].router.indices.save()
            except Exception as failure:  # noqa: BLE001
                errors.append(failure)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        for _ in range(5):
            _assert_same(_hooked(model, batch), reference)
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_what_only_a_trace_serves_gets_none():
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    assert _hooked(model, batch) is None  # the first trace of an auto-detected model checks the detection
    _traced(model, batch)
    assert _hooked(model, batch) is not None
    assert _hooked(model, batch, mi.ExpertAblate({1: [3]})) is None  # edits write inside the forward
    assert _hooked(model, batch, mi.LayerRouteSteer({1: {2: 1.0}}, scale=1.0)) is None
    assert _hooked(model, batch, remote="local") is None
    assert _hooked(model, ["Hello"]) is None  # texts: the trace's tokenizer path
    jet = mi.zoo.tiny_model("jetmoe")
    _traced(jet, _batch(jet))
    assert _hooked(jet, _batch(jet)) is None  # its routing is read at ops of the router's source


def test_a_layer_keeps_only_the_routing_it_hands_over():
    """The experts' hidden states are not kept (no layer's activations outlive it)."""
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    _traced(model, batch)
    plan = compile_plan(mi.describe(model), [mi.RouterRecord()], model)
    seen = {}
    args, kwargs = _hooks._model_inputs(model, batch, {})
    with torch.no_grad():
        _hooks._run(model._module, _hooks._wanted(plan), seen, args, kwargs)
    (hidden, indices, weights), _ = seen[(plan.layers[0].experts, "input")]
    assert hidden is None and indices.shape == weights.shape == (batch["input_ids"].numel(), 2)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "switch_transformers"])
def test_a_profile_read_by_hooks_equals_one_read_by_traces(model_type, monkeypatch):
    """Windows of long texts, one stack or two: every table bitwise the same, and the hooks did
    read every batch after the first (whose trace checks the detection)."""
    options = {"max_position_embeddings": 16} if model_type == "qwen3_moe" else {}
    corpus = {"eng": ["Hello there, how are you today?" * 2, "Hi", "A longer text of several words"],
              "deu": ["Guten Morgen, liebe Welt", "Ja"]}
    fresh = mi.zoo.tiny_model(model_type, **options)
    hooked_batches(monkeypatch, hooks=False)
    traced = mi.profile(fresh, corpus, batch_size=2, progress=False)
    monkeypatch.undo()
    model = mi.zoo.tiny_model(model_type, **options)
    served = hooked_batches(monkeypatch)
    hooked = mi.profile(model, corpus, batch_size=2, progress=False)
    assert all(served[1:]) and len(served) >= 3  # the first may be a trace: it checks an auto-detected model
    pairs = [(hooked, traced)] if model_type == "qwen3_moe" else [(hooked[s], traced[s]) for s in traced]
    for a, b in pairs:
        for field in ("count", "gate_mass", "tokens", "item_count", "item_tokens"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def _lock_is_free(model):
    free = []
    other = threading.Thread(target=lambda: free.append(model_lock(model).acquire(timeout=5) and
                                                        model_lock(model).release() is None))
    other.start()
    other.join()
    return free == [True]


def test_the_forward_stops_after_the_last_router_read_and_leaves_the_model_as_it_was(monkeypatch):
    """Nothing after the last layer's experts input runs (its experts, the final norm, the head:
    counted by wrapping their forwards, which no hook sees), every hook goes, the lock is free,
    and every batch reads what the trace reads."""
    model = mi.zoo.tiny_model("qwen3_moe")
    hf = model._module
    batch = _batch(model)
    reference = _traced(model, batch)
    before = _hook_state(hf)
    calls = []
    for name in ("lm_head", "model.norm", "model.layers.3.mlp.experts", "model.layers.3.mlp.gate"):
        module = hf.get_submodule(name)
        forward = module.forward
        monkeypatch.setattr(module, "forward", lambda *a, _name=name, _forward=forward, **k: calls.append(_name)
                            or _forward(*a, **k))
    for _ in range(2):
        run = _hooked(model, batch)
        assert run.stopped == "model.layers.3.mlp.experts"
        _assert_same(run, reference)
    assert calls == ["model.layers.3.mlp.gate"] * 2  # the last router ran; what follows its read did not
    monkeypatch.undo()
    assert _hook_state(hf) == before and _lock_is_free(model)
    with torch.no_grad():
        full = hooked_trace(model, batch, mi.RouterRecord(), stop_early=False)
    assert full.stopped is None
    _assert_same(full, reference)


def test_a_hook_someone_registered_sees_the_whole_forward():
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    reference = _traced(model, batch)
    seen = []
    handle = model._module.lm_head.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    try:
        run = _hooked(model, batch)
    finally:
        handle.remove()
    assert run.stopped is None and len(seen) == 1
    _assert_same(run, reference)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)  # global hooks too
    try:
        assert _hooked(model, batch).stopped is None
    finally:
        handle.remove()
    assert _hooked(model, batch).stopped is not None


class _AccelerateHook(SimpleNamespace):
    """Stands in for an accelerate module hook: what nnsight calls around the module's body."""

    def pre_forward(self, module, *args, **kwargs):
        return args, kwargs

    def post_forward(self, module, output):
        return output


@pytest.mark.parametrize("hook, stops", [
    (_AccelerateHook(offload=True), False),                   # accelerate's AlignDevicesHook, offloading weights
    (_AccelerateHook(hooks=[_AccelerateHook(offload=False), _AccelerateHook(offload=True)]), False),  # SequentialHook
    (_AccelerateHook(offload=False, io_same_device=True), True),  # device placement only: nothing to put back
])
def test_an_accelerate_hook_that_offloads_weights_sees_the_whole_forward(hook, stops, monkeypatch):
    """An offloading hook puts the weights back in its post-forward, which a stopped forward
    would skip: such a model runs to the end."""
    model = mi.zoo.tiny_model("qwen3_moe")
    batch = _batch(model)
    reference = _traced(model, batch)
    monkeypatch.setattr(model._module.model.layers[3], "_hf_hook", hook, raising=False)
    run = _hooked(model, batch)
    assert (run.stopped is not None) == stops
    _assert_same(run, reference)
