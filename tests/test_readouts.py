"""A new readout kind is one `mi.arch.Readout` subclass: this file defines one, registers it
through an adapter, and checks every reader that goes through it against what the experts
really received. It is the worked example of docs/extending.md ("A new readout kind"), which
shows this file's kind and its first test verbatim.

The kind: qwen3_moe's router returns `(logits, weights, indices)` and its block hands the
last two to the experts unchanged, so the routing can be read from (and written to) that
one output tuple instead of the experts' arguments (the built-in `"experts"` kind). Its
methods name `Site`, not `mi.arch.Site`: a remote request ships moe_interp by value, and a
method that reads the package object `mi` would take the whole package with it.

Oracle: torch pre-hooks on the experts modules, found by class name (the arguments the model
itself passed them), sharing no code with moe_interp.
"""

import contextlib
import inspect
import sys
from pathlib import Path

import nnsight
import pytest
import torch

import moe_interp as mi
from moe_interp.arch import Readout, Site

PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt"]


class RouterTuple(Readout):
    """The routing at the router's whole output, `(logits, weights[T, K], indices[T, K])`."""

    name = "router_tuple"
    __slots__ = _fields = ("output",)

    @classmethod
    def at(cls, spec):
        return cls(Site("router", (), "output", None))

    def decode(self, values, top_k):
        _, weights, indices = values["output"]
        return indices.long(), weights

    def encode_weights(self, values, indices, new):
        logits, weights, chosen = values["output"]
        return {"output": (logits, new.to(weights.dtype), chosen)}

    def encode_indices(self, values, new):
        logits, weights, chosen = values["output"]
        return {"output": (logits, weights, new.to(chosen.dtype))}


@pytest.fixture
def registries(monkeypatch):
    """The adapter and readout registries as they are, restored after the test (an adapter
    for qwen3_moe would otherwise apply to every later qwen3_moe model of the session)."""
    adapters, sites = sys.modules["moe_interp.arch._adapter"], sys.modules["moe_interp.arch._sites"]
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))
    monkeypatch.setattr(sites, "_READOUTS", dict(sites._READOUTS))


@pytest.fixture
def tupled(registries):
    """A tiny qwen3_moe whose routing is read through `RouterTuple`."""
    mi.register_adapter(mi.RouterAdapter(name="qwen3_moe_tuple", model_types=("qwen3_moe",), readout=RouterTuple))
    model = mi.zoo.tiny_model("qwen3_moe")
    assert mi.describe(model).readout == "router_tuple"
    return model


@contextlib.contextmanager
def received(hf):
    """`{layer: [(indices[T, K], weights[T, K]), ...]}`: what each experts module was called
    with, one entry per call."""
    seen, handles = {}, []
    for path, module in hf.named_modules():
        if type(module).__name__ == "Qwen3MoeExperts":
            layer = int(path.split(".")[2])  # model.layers.<i>.mlp.experts

            def hook(module, args, layer=layer):
                seen.setdefault(layer, []).append((args[1].detach().clone(), args[2].detach().clone()))
            handles.append(module.register_forward_pre_hook(hook))
    assert handles
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _encoded(model):
    return model.tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left padding


def test_the_kind_is_registered_with_its_adapter(tupled):
    assert mi.describe(tupled).family == "qwen3_moe_tuple"
    assert mi.arch.registered_adapters()["type:qwen3_moe"].readout is RouterTuple
    assert mi.describe(mi.zoo.tiny_model("qwen3_moe")).readout == "router_tuple"  # every new model of the type


def test_router_record_counts_what_the_experts_received(tupled):
    enc = tupled.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    real = enc["attention_mask"].reshape(-1).bool()
    with received(tupled._module) as seen, torch.no_grad():       # hooks: {layer: [(indices, weights)]}
        with mi.trace(tupled, enc, mi.RouterRecord()) as tr:
            pass
    spec = mi.describe(tupled)
    for position, layer in enumerate(spec.moe_layers):
        ((indices, weights),) = seen[layer]
        want = torch.bincount(indices[real].flatten(), minlength=spec.num_experts)
        assert torch.equal(tr.routing.count[0, position], want)


def test_router_record_gate_mass_and_per_token_are_what_the_experts_received(tupled):
    enc = _encoded(tupled)
    real = enc["attention_mask"].reshape(-1).bool()
    with received(tupled._module) as seen, torch.no_grad():
        with mi.trace(tupled, enc, mi.RouterRecord(per_token=True)) as tr:
            pass
    spec = mi.describe(tupled)
    assert tr.routing.tokens.tolist() == [int(real.sum())]
    for position, layer in enumerate(spec.moe_layers):
        ((indices, weights),) = seen[layer]
        mass = torch.zeros(spec.num_experts, dtype=torch.float64).index_add_(
            0, indices[real].flatten(), weights[real].flatten().to(torch.float64))
        assert torch.equal(tr.routing.gate_mass[0, position].to(torch.float64), mass), f"layer {layer}"
        kept = tr.routing.per_token
        assert torch.equal(kept["indices"][:, position].long(), indices[real]), f"layer {layer}: per-token indices"
        assert torch.equal(kept["weights"][:, position], weights[real].to(kept["weights"].dtype)), f"layer {layer}"


def test_it_counts_as_the_built_in_experts_reading_does(tupled):
    enc = _encoded(tupled)
    with torch.no_grad(), mi.trace(tupled, enc, mi.RouterRecord()) as ours:
        pass
    sys.modules["moe_interp.arch._adapter"]._REGISTRY.pop("type:qwen3_moe")  # back to detection
    plain = mi.zoo.tiny_model("qwen3_moe")  # same seed, same weights
    assert mi.describe(plain).readout == "experts"
    with torch.no_grad(), mi.trace(plain, enc, mi.RouterRecord()) as theirs:
        pass
    assert torch.equal(ours.routing.count, theirs.routing.count)
    assert torch.equal(ours.routing.gate_mass, theirs.routing.gate_mass)


def test_the_view_reads_and_writes_through_it(tupled):
    enc = _encoded(tupled)
    tokens = enc["input_ids"].numel()
    assigned = torch.tensor([[5, 2]] * tokens)
    with received(tupled._module) as plain, torch.no_grad(), tupled.trace(enc):
        read = nnsight.save([(e.router.indices.clone(), e.router.weights.clone()) for e in tupled.moe])
    with received(tupled._module) as edited, torch.no_grad(), tupled.trace(enc):
        tupled.moe[0].router.weights = tupled.moe[0].router.weights * 0.5
        tupled.moe[1].router.indices = assigned
    for position, layer in enumerate(mi.describe(tupled).moe_layers):
        assert torch.equal(read[position][0], plain[layer][0][0]) and torch.equal(read[position][1], plain[layer][0][1])
    assert torch.equal(edited[0][0][1], plain[0][0][1] * 0.5) and torch.equal(edited[0][0][0], plain[0][0][0])
    assert torch.equal(edited[1][0][0], assigned)


def test_the_drop_edit_goes_through_it(tupled):
    enc = _encoded(tupled)
    with received(tupled._module) as plain, torch.no_grad(), mi.trace(tupled, enc):
        pass
    with received(tupled._module) as dropped, torch.no_grad():
        with mi.trace(tupled, enc, mi.ExpertAblate({2: [3]}, mode="drop"), mi.RouterRecord()) as tr:
            pass
    indices, weights = plain[2][0]
    assert bool((indices == 3).any()), "the case must route some token to expert 3"
    assert torch.equal(dropped[2][0][0], indices)
    assert torch.equal(dropped[2][0][1], torch.where(indices == 3, 0.0, weights))
    assert tr.routing.gate_mass[0, 2, 3] == 0 and tr.routing.count[0, 2, 3] > 0
    assert torch.equal(dropped[1][0][1], plain[1][0][1])  # other layers untouched


def test_it_travels_with_a_remote_request(tupled, tmp_path):
    """`remote="local"`: the plan, the kind inside it, is serialized and run as a server would."""
    tupled._module.save_pretrained(tmp_path)
    tupled.tokenizer.save_pretrained(tmp_path)
    loaded = mi.load(tmp_path)
    assert mi.describe(loaded).readout == "router_tuple"
    with received(loaded._module) as seen, torch.no_grad():
        with mi.trace(loaded, PROMPTS[0], mi.RouterRecord(), remote="local") as tr:
            pass
    spec = mi.describe(loaded)
    for position, layer in enumerate(spec.moe_layers):
        ((indices, _),) = seen[layer]
        assert torch.equal(tr.routing.count[0, position], torch.bincount(indices.flatten(), minlength=spec.num_experts))


def test_the_docs_show_this_kind_and_this_test():
    page = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    section = page.split("\n## A new readout kind\n", 1)[1].split("\n## ", 1)[0]
    assert inspect.getsource(RouterTuple) in section
    assert inspect.getsource(test_router_record_counts_what_the_experts_received) in section
    assert "readout=RouterTuple" in section


def test_an_unknown_readout_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match=r"unknown readout 'sparse'; RouterAdapter.readout is one of 'experts', "
                                         r"'router', 'topk', 'dense', 'dispatch'.* or a mi.arch.Readout subclass"):
        mi.RouterAdapter(name="x", model_types=("x",), readout="sparse")


def test_a_kind_needs_a_name_of_its_own(registries):
    class Nameless(RouterTuple):
        name = ""

    class Experts(RouterTuple):
        name = "experts"

    with pytest.raises(ValueError, match="readout kind Nameless has no name"):
        mi.register_adapter(mi.RouterAdapter(name="x", model_types=("x",), readout=Nameless))
    with pytest.raises(ValueError, match="readout kind 'experts' is built in; give yours another name"):
        mi.register_adapter(mi.RouterAdapter(name="x", model_types=("x",), readout=Experts))
