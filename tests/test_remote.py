"""Remote execution (NDIF): whitelisted in-trace code, results through serialization, payload size.

There is no NDIF server here. Two stand-ins:

- `remote="local"`: nnsight's `LocalSimulationBackend` (serialize, deserialize with local
  modules hidden, then run the *original* tracer).
- `NdifSim` (below): closer to the server. It serializes the request, deserializes it with
  `moe_interp` made unimportable (as on a server without the package), runs the
  *deserialized* tracer, keeps the saved values of its frame, and sends them back through
  `torch.save` / `torch.load`, which is how NDIF returns results. `result_bytes` is the size
  of what travels back.

Neither proves acceptance by the real server (its import whitelist, its nnsight version).
"""

import builtins
import contextlib
import inspect
import io
import linecache
import os
import sys

import pytest
import torch
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import _saves, save
from nnsight.tracing.util import push

import moe_interp as mi
from conftest import encode, tiny

shipping = sys.modules["moe_interp.runtime._shipping"]
kernels = sys.modules["moe_interp.runtime._kernels"]


def _plan_modules() -> list:
    """The modules that define the values a compiled plan carries (its records, sites, edit and
    readout kinds): their methods run inside the trace too."""
    from moe_interp.runtime._compile import compile_plan

    spec = mi.describe(mi.zoo.tiny_model("qwen3_moe"))
    plan = compile_plan(spec, [mi.RouterRecord(per_token=True), mi.ExpertAblate({1: [0]}),
                               mi.ExpertAblate({2: [1]}, mode="drop"), mi.LayerRouteSteer({3: {2: 1.0}}),
                               mi.LayerRouteSteer({3: {1: 1.0}}, mode="additive")])
    found, todo = set(), [plan]
    while todo:
        value = todo.pop()
        if isinstance(value, (tuple, list)):
            todo.extend(value)
        elif type(value).__module__.startswith("moe_interp"):
            found.add(type(value).__module__)
            todo.extend(getattr(value, name) for name in getattr(value, "_fields", ()))
    return [sys.modules[name] for name in sorted(found)]


def _in_trace_modules() -> list:
    """The modules whose code runs inside a trace: the kernels, the modules of the values a plan
    carries, and the package modules they import, transitively (shipped by value with them)."""
    import ast
    found, todo = [], [kernels, *_plan_modules()]
    while todo:
        module = todo.pop()
        if module in found:
            continue
        found.append(module)
        for node in ast.parse(open(module.__file__).read()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moe_interp"):
                todo.append(sys.modules[node.module])
    return found


IN_TRACE = _in_trace_modules()

# What NDIF lets shipped code import (its list is longer; these are all we may use).
WHITELIST = {"torch", "math", "typing", "collections", "operator", "_operator", "enum", "einops", "numpy",
             "builtins"}
# Builtins NDIF keeps while a request runs (its WHITELISTED_BUILTINS, the callables and constants).
NDIF_BUILTINS = set("""abs aiter all anext any ascii bool bytearray bytes callable chr classmethod complex delattr
dict dir divmod enumerate filter float format frozenset getattr hasattr hash hex id int isinstance issubclass
iter len list map max min next object oct ord pow print property range repr reversed round set setattr slice
sorted staticmethod str sum super tuple type vars zip memoryview globals input eval True False None Ellipsis
NotImplemented __import__ __build_class__ __name__ __doc__""".split())
NDIF_BUILTINS |= {name for name in dir(builtins) if name.endswith(("Error", "Exception", "Warning", "Exit"))}
NDIF_BUILTINS |= {"StopIteration", "StopAsyncIteration", "GeneratorExit", "KeyboardInterrupt"}

_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, sys.modules["nnsight"]))


def _in_kernel(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in {module.__file__ for module in IN_TRACE}:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _import_hook(check):
    """Call `check(name, globals, level, caller_frame)` before every import in the block."""
    real = builtins.__import__

    def hooked(name, globals=None, locals=None, fromlist=(), level=0):
        check(name, globals, level, sys._getframe(1))
        return real(name, globals, locals, fromlist, level)

    builtins.__import__ = hooked
    try:
        yield
    finally:
        builtins.__import__ = real


@contextlib.contextmanager
def kernel_import_guard():
    """Refuse any import outside `WHITELIST` made by code running in a kernel frame.

    Active only where a frame of the in-trace modules (`IN_TRACE`) is on the stack (the worker
    greenlet), so the model's own forward, which runs in another greenlet, is free.
    Imports made by torch or nnsight internals on a kernel's behalf are allowed (the
    server runs those libraries); anything the kernel code itself imports must be on
    the whitelist. Yields the list of `(module, importer)` pairs seen in kernel context.
    """
    seen = []

    def check(name, globals, level, caller):
        if _in_kernel(caller):
            package = (globals or {}).get("__package__") or ""
            target = name if level == 0 else f"{package}.{name}".strip(".")
            importer = caller.f_code.co_filename
            seen.append((target, importer))
            if target.split(".")[0] not in WHITELIST and not importer.startswith(_LIBRARY_DIRS):
                raise ImportError(f"{target!r} is not on the NDIF import whitelist (imported in a kernel by "
                                  f"{importer}:{caller.f_lineno})")

    with _import_hook(check):
        yield seen


@contextlib.contextmanager
def record_imports(log: list):
    """Append the name of every absolute import in the block to `log`."""
    def check(name, globals, level, caller):
        if level == 0:
            log.append(name)

    with _import_hook(check):
        yield log


@contextlib.contextmanager
def without_package(prefix: str = "moe_interp"):
    """`prefix` cannot be imported inside the block (a server that lacks the package)."""
    gone = {k: sys.modules.pop(k) for k in list(sys.modules) if k == prefix or k.startswith(prefix + ".")}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == prefix or name.startswith(prefix + "."):
                raise ModuleNotFoundError(f"No module named {name!r} (the simulated server lacks it)")

    blocker = Refuse()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        for k in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
            del sys.modules[k]
        sys.modules.update(gone)


def _by_value_classes() -> dict:
    """The namespace of every class cloudpickle has shipped by value in this process.

    Deserializing such a class in the process that defined it does not build a new class: cloudpickle
    finds the original by its tracker id and *sets the shipped state on it*, so the package's own
    `RoutingRun` would go on with the deserialized methods, whose globals are a copy of the module's
    (a monkeypatched `kernels.tally` in a later test was then never called). A server is another
    process; `_restore_classes` puts the namespaces back after the simulated request."""
    from cloudpickle import cloudpickle as cp
    with cp._DYNAMIC_CLASS_TRACKER_LOCK:
        return {cls: dict(vars(cls)) for cls in list(cp._DYNAMIC_CLASS_TRACKER_BY_CLASS)}


def _restore_classes(saved: dict) -> None:
    for cls, namespace in saved.items():
        for name in set(vars(cls)) - set(namespace):
            delattr(cls, name)
        for name, value in namespace.items():
            if vars(cls).get(name) is not value and name not in ("__dict__", "__weakref__"):
                setattr(cls, name, value)


class NdifSim(Backend):
    """Serialize -> deserialize (package hidden) -> run the deserialized tracer -> send saves back."""

    def __init__(self, model, guard: bool = True) -> None:
        self.model, self.guard = model, guard
        self.deserialize_imports: list = []
        self.kernel_imports: list = []

    def __call__(self, tracer):
        blob = RequestModel.serialize(tracer, compress=False)
        self.request_bytes = len(blob)
        # deserialize registers the block's source in linecache under its file's name; a real
        # server is another process, in-process that would corrupt later source lookups of
        # that file (a session block lives in moe_interp/trace.py): restore it, as nnsight's
        # LocalSimulationBackend does.
        filename = tracer.info.frame.f_code.co_filename
        saved_lines = linecache.cache.get(filename)
        classes = _by_value_classes()
        try:
            with without_package(), record_imports(self.deserialize_imports):
                restored = RequestModel.deserialize(blob, self.model._remoteable_persistent_objects(),
                                                    compress=False)
        finally:
            if saved_lines is not None:
                linecache.cache[filename] = saved_lines
            else:
                linecache.cache.pop(filename, None)
        # (cloudpickle rebuilds a by-value class as the same class object within one process)
        # A trace request carries a RoutingRun; a session request (mi.profile) nnsight's Tracer.
        assert type(restored).__name__ in ("RoutingRun", "Tracer"), type(restored)
        assert not any(name.startswith("moe_interp") for name in self.deserialize_imports)
        try:
            with without_package(), (kernel_import_guard() if self.guard else contextlib.nullcontext([])) as seen:
                restored.execute(restored.info.code)
        finally:
            _restore_classes(classes)
        self.kernel_imports = list(seen)
        saves = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in _saves()}
        buffer = io.BytesIO()
        torch.save(saves, buffer)
        self.result_bytes = len(buffer.getvalue())
        self.saved_names = set(saves)
        result = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=False)
        for value in result.values():  # what RemoteBackend does with a result
            save(value)
        push(tracer.info.frame, result)
        return result


@pytest.fixture(autouse=True)
def ship_functions_unwrapped(monkeypatch):
    """Under pytest, jaxtyping/beartype wrap every moe_interp function (pyproject addopts). nnsight
    ships a function by its source but with the *wrapper's* globals, so shipped kernels would miss
    their own names. Installed code is not wrapped: ship what it would ship."""
    from nnsight.intervention.serialization import CustomCloudPickler
    original = CustomCloudPickler._dynamic_function_reduce

    def unwrapped(self, func):
        while hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        return original(self, func)

    monkeypatch.setattr(CustomCloudPickler, "_dynamic_function_reduce", unwrapped)


# ---------------------------------------------------------------------------------- 1. import guard

@pytest.mark.parametrize("module", IN_TRACE, ids=lambda m: m.__name__)
def test_in_trace_modules_import_only_whitelisted_modules(module):
    """At module level, the whitelist and the package's other in-trace modules (shipped by value
    with the kernels); inside functions (run on the server), the whitelist only."""
    import ast
    tree = ast.parse(open(module.__file__).read())
    top = set(tree.body)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module.__name__}: relative import"
            if node in top and node.module in {m.__name__ for m in IN_TRACE}:
                continue
            names.add(node.module.split(".")[0])
    assert names <= WHITELIST, names - WHITELIST


def test_the_in_trace_modules_are_the_kernels_the_reader_and_the_plan_values():
    assert {m.__name__ for m in IN_TRACE} >= {"moe_interp.runtime._kernels", "moe_interp.runtime._reader",
                                              "moe_interp.runtime._edits", "moe_interp.runtime._plan",
                                              "moe_interp.arch._sites"}
    assert not any(m.__name__.startswith(("moe_interp.analysis", "moe_interp.experiments")) for m in IN_TRACE)


@pytest.mark.parametrize("module", IN_TRACE, ids=lambda m: m.__name__)
def test_in_trace_code_uses_only_builtins_ndif_keeps(module):
    """Code reaches a builtin only by loading a global name; a name it stores (a method
    `__eq__` defined in a class body) or an attribute it reads is no builtin lookup."""
    import dis
    import types

    def code_objects(code):
        yield code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from code_objects(const)

    module_code = compile(open(module.__file__).read(), module.__file__, "exec")
    loads = ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS")
    used = {op.argval for code in code_objects(module_code) for op in dis.get_instructions(code)
            if op.opname in loads and hasattr(builtins, op.argval)}
    assert used <= NDIF_BUILTINS, used - NDIF_BUILTINS


def _paths(model):
    """One trace per intervention path; each returns something to compare."""
    enc = encode(model)
    spec = mi.describe(model)
    layer, other = spec.moe_layers[0], spec.moe_layers[-1]
    every = {l: {0: 1.0, 1: -0.5} for l in spec.moe_layers}
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(["Hello world", "good morning"], group="en"):
            pass
        with tr.invoke(["Guten Morgen", "Hallo Welt"], group="de"):
            pass
    stats = tr.routing
    runs = [
        (mi.RouterRecord(),),
        (mi.RouterRecord(per_token=True),),
        (mi.ExpertAblate({layer: [0, 1]}), mi.RouterRecord()),
        (mi.ExpertAblate({other: [2]}, mode="drop"), mi.RouterRecord()),
        (mi.LayerRouteSteer(every, scale=0.5), mi.RouterRecord()),
        (mi.LayerRouteSteer({layer: {3: 2.0}}, scale=3.0, mode="additive", site="scores"), mi.RouterRecord()),
        (mi.RouteSteer(layers="middle", target="en", stats=stats, k=2, threshold=0.0), mi.RouterRecord()),
    ]
    for interventions in runs:
        with mi.trace(model, enc, *interventions) as tr:
            pass
        yield tr.routing.count
    with mi.generate(model, "Hello", mi.ExpertAblate({layer: [0]}), mi.RouterRecord(), max_new_tokens=3,
                     do_sample=False, pad_token_id=0) as gen:
        pass
    yield gen.output


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "llama4_text", "dbrx", "gpt_oss"])
def test_every_intervention_path_runs_under_the_import_guard(arch):
    model = tiny(arch)
    expected = list(_paths(model))
    with kernel_import_guard() as seen:
        got = list(_paths(model))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    refused = [(name, where) for name, where in seen if name.split(".")[0] not in WHITELIST
               and not where.startswith(_LIBRARY_DIRS)]
    assert refused == []


def test_import_guard_refuses_a_kernel_that_imports_json(monkeypatch):
    model = tiny("qwen3_moe")
    real = kernels.tally

    def tally_with_json(*args, **kwargs):
        import json  # noqa: F401  -- not on NDIF's whitelist
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "tally", tally_with_json)
    with mi.trace(model, "abc", mi.RouterRecord()) as tr:  # unguarded: runs
        pass
    assert tr.routing.tokens.item() == 3
    with kernel_import_guard(), pytest.raises(ImportError, match="'json' is not on the NDIF import whitelist"):
        with mi.trace(model, "abc", mi.RouterRecord()):
            pass


# ---------------------------------------------------------------------------------- 2. remote= pass-through

@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """`mi.load(local_dir)` of the tiny qwen3_moe (a wrapped in-memory model cannot go remote)."""
    directory = tmp_path_factory.mktemp("tiny_qwen3_moe")
    source = tiny("qwen3_moe")
    source._module.save_pretrained(directory)
    source.tokenizer.save_pretrained(directory)
    return mi.load(directory)


PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt"]


def _same_stats(a, b):
    assert a.languages == b.languages and a.layers == b.layers
    assert torch.equal(a.count, b.count) and torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.gate_mass, b.gate_mass, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("remote", ["local", "sim"])
def test_remote_trace_gives_the_same_stats_and_output(loaded, remote):
    steer = (mi.LayerRouteSteer({1: {3: 1.0}}, scale=2.0, mode="additive"), mi.ExpertAblate({2: [0]}))
    with mi.trace(loaded, PROMPTS, *steer, mi.RouterRecord()) as tr:
        pass
    kwargs = {"remote": "local"} if remote == "local" else {"backend": NdifSim(loaded)}
    with mi.trace(loaded, PROMPTS, *steer, mi.RouterRecord(), keep_output=True, **kwargs) as far:
        pass
    _same_stats(tr.routing, far.routing)
    assert torch.equal(tr.output.logits, far.output.logits)


def test_remote_trace_with_invokes_per_token_and_user_saves(loaded):
    sim = NdifSim(loaded)
    bodies = {}
    for name, kwargs in (("local", {}), ("sim", {"backend": sim})):
        with mi.trace(loaded, mi.RouterRecord(per_token=True), **kwargs) as tr:
            with tr.invoke(PROMPTS[:2], group="en"):
                hidden = loaded.model.layers[0].output.save()
            with tr.invoke(PROMPTS[2:], group="de"):
                pass
        bodies[name] = (tr, hidden)
    (local, h_local), (far, h_far) = bodies["local"], bodies["sim"]
    _same_stats(local.routing, far.routing)
    assert far.routing.languages == ("en", "de")
    assert all(torch.equal(local.routing.per_token[k], far.routing.per_token[k]) for k in local.routing.per_token)
    assert torch.equal(h_local[0] if isinstance(h_local, tuple) else h_local,
                       h_far[0] if isinstance(h_far, tuple) else h_far)
    assert sim.saved_names >= {"hidden", shipping.RESULT_NAME}
    with pytest.raises(RuntimeError, match="keep_output=True"):
        far.output


def test_the_simulated_server_leaves_the_package_s_classes_as_they_were(loaded):
    """In-process, cloudpickle sets a shipped class's state on the original class (see
    `_by_value_classes`): NdifSim puts it back, else later tests run the deserialized methods
    (the import-guard test then failed after a co-activation test's NdifSim run)."""
    from moe_interp.runtime._tracer import RoutingRun
    before = dict(vars(RoutingRun))
    with mi.trace(loaded, "abc", mi.RouterRecord(), backend=NdifSim(loaded)):
        pass
    after = vars(RoutingRun)
    assert set(after) == set(before)
    assert [name for name in before if after[name] is not before[name]] == []
    execute = inspect.unwrap(RoutingRun.execute)  # (jaxtyping wraps it under pytest)
    assert execute.__globals__ is vars(sys.modules[RoutingRun.__module__])


@pytest.mark.parametrize("remote", ["local", "sim"])
def test_remote_generate_gives_the_same_tokens_text_and_stats(loaded, remote):
    steer = mi.LayerRouteSteer({0: {1: 1.0}}, scale=1.0)
    with mi.generate(loaded, ["Once upon", "Hi"], steer, mi.RouterRecord(), max_new_tokens=4, do_sample=False) as gen:
        pass
    kwargs = {"remote": "local"} if remote == "local" else {"backend": NdifSim(loaded)}
    with mi.generate(loaded, ["Once upon", "Hi"], steer, mi.RouterRecord(), max_new_tokens=4, do_sample=False,
                     **kwargs) as far:
        pass
    assert torch.equal(gen.output, far.output) and gen.text == far.text
    _same_stats(gen.routing, far.routing)
    assert far.routing.meta["forwards"] == gen.routing.meta["forwards"] == 4


def test_request_needs_no_import_beyond_a_plain_nnsight_request(loaded):
    """What our payload adds to a plain nnsight request's imports is on the whitelist."""
    plain_imports: list = []

    class PlainSim(NdifSim):
        def __call__(self, tracer):
            blob = RequestModel.serialize(tracer, compress=False)
            with without_package(), record_imports(plain_imports):
                restored = RequestModel.deserialize(blob, self.model._remoteable_persistent_objects())
            restored.execute(restored.info.code)

    with loaded.trace(PROMPTS, backend=PlainSim(loaded)):
        loaded.lm_head.output.save()
    sim = NdifSim(loaded)
    with mi.trace(loaded, PROMPTS, mi.ExpertAblate({1: [0]}, mode="drop"), mi.RouterRecord(per_token=True),
                  backend=sim):
        pass
    extra = {name.split(".")[0] for name in sim.deserialize_imports} - {n.split(".")[0] for n in plain_imports}
    assert extra <= WHITELIST | {"nnsight", "cloudpickle", "copyreg", "pickle"}, extra
    assert not any(name.startswith("moe_interp") for name in sim.deserialize_imports)


class Counting(Backend):
    """Wraps a backend and counts the requests that reach it."""

    def __init__(self, inner) -> None:
        self.inner, self.requests = inner, 0

    def __call__(self, tracer):
        self.requests += 1
        return self.inner(tracer)


CORPUS = {"eng": ["The cat sat.", "Hi there", "Good morning to you all", "Yes"],
          "deu": ["Die Katze saß.", "Hallo", "Guten Morgen, liebe Welt", "Ja, gerne"],
          "fra": ["Bonjour tout le monde", "Le chat"]}


def _same_profile(local, far):
    assert far.languages == local.languages and far.layers == local.layers
    assert torch.equal(local.count, far.count) and torch.equal(local.tokens, far.tokens)
    assert torch.equal(local.item_count, far.item_count) and torch.equal(local.item_tokens, far.item_tokens)
    assert torch.equal(local.item_language, far.item_language)
    assert torch.allclose(local.gate_mass, far.gate_mass, rtol=1e-6, atol=1e-6)


def test_remote_profile_runs_all_batches_in_one_session_request(loaded):
    """10 texts, batch 3 -> 4 batches; NdifSim (package unimportable on the 'server') gets ONE request."""
    steer = mi.ExpertAblate({1: [0]})
    local = mi.profile(loaded, CORPUS, steer, batch_size=3, progress=False)
    sim = NdifSim(loaded)
    counting = Counting(sim)
    far = mi.profile(loaded, CORPUS, steer, batch_size=3, progress=False, backend=counting)
    _same_profile(local, far)
    assert counting.requests == 1
    assert sim.saved_names == {shipping.RESULT_NAME}
    n_items, n_layers, n_experts = local.item_count.shape
    # per text int16 counts + an int32 token total; gate mass per language (not per text) in float64
    floor = n_items * (n_layers * n_experts * 2 + 4) + len(CORPUS) * n_layers * n_experts * 8
    assert floor < sim.result_bytes < floor + 4000, (sim.request_bytes, sim.result_bytes)
    print(f"\nremote profile: 4 batches, 1 request, request {sim.request_bytes:,} B, result {sim.result_bytes:,} B")


def test_remote_profile_local_simulation_and_session_chunks(loaded, tmp_path, monkeypatch):
    local = mi.profile(loaded, CORPUS, batch_size=3, progress=False)
    sims = []

    class CountingSim(Counting):  # remote="local" builds its own backend: count at the session
        pass

    real = type(loaded).session

    def session(self, *args, **kwargs):
        tracer = real(self, *args, **kwargs)
        tracer.backend = CountingSim(tracer.backend)
        sims.append(tracer.backend)
        return tracer

    # on the class: an instance attribute would travel inside the model with the request
    monkeypatch.setattr(type(loaded), "session", session)
    try:
        far = mi.profile(loaded, CORPUS, batch_size=3, progress=False, remote="local")
        _same_profile(local, far)
        assert len(sims) == 1 and sims[0].requests == 1
        sims.clear()
        path = tmp_path / "ck.pt"
        chunked = mi.profile(loaded, CORPUS, batch_size=3, progress=False, remote="local", session_batches=2,
                             checkpoint=path)
        _same_profile(local, chunked)
        assert len(sims) == 2 and all(s.requests == 1 for s in sims)  # 4 batches, 2 per request
        assert torch.load(path, weights_only=True)["done"] == 10
    finally:
        monkeypatch.undo()


def test_a_wrapped_model_cannot_go_to_ndif():
    with pytest.raises(ValueError, match="loads it by its hub id, and this one has none"):
        with mi.trace(tiny("qwen3_moe"), "abc", mi.RouterRecord(), remote=True):
            pass


# ---------------------------------------------------------------------------------- 3. payload size

@pytest.mark.parametrize("per_token", [False, True])
def test_saved_result_size_does_not_depend_on_tokens(per_token):
    model = tiny("qwen3_moe")
    sizes = {}
    for batch, seq in [(1, 16), (16, 16), (1, 256), (16, 256)]:
        ids = torch.randint(3, 259, (batch, seq))
        sim = NdifSim(model, guard=False)
        with mi.trace(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                      mi.RouterRecord(per_token=per_token), backend=sim) as tr:
            pass
        assert int(tr.routing.tokens.sum()) == batch * seq
        sizes[batch, seq] = sim.result_bytes
    if per_token:  # the documented exception: per-token records grow with the tokens
        assert sizes[16, 256] > 10 * sizes[1, 16]
    else:
        assert len(set(sizes.values())) == 1, sizes


def test_one_language_profile_of_a_48_layer_128_expert_model_is_under_100_kb():
    """The payload depends on (groups, layers, experts) only: measure it on a real model of
    that shape (hidden 16, so it builds in a second), one group, many tokens."""
    model = mi.zoo.tiny_model("qwen3_moe", num_hidden_layers=48, num_experts=128, num_local_experts=128,
                              num_experts_per_tok=8,
                              hidden_size=16, moe_intermediate_size=4, head_dim=4)
    ids = torch.randint(3, 259, (4, 64))
    sim = NdifSim(model, guard=False)
    with mi.trace(model, ids, mi.RouterRecord(), backend=sim) as tr:
        pass
    assert tr.routing.count.shape == (1, 48, 128)
    # count int32 + gate_mass float64 = 48 * 128 * 12 bytes = 73,728, plus torch.save framing
    assert 48 * 128 * 12 < sim.result_bytes <= 100_000, sim.result_bytes


# ---------------------------------------------------------------------------------- nnsight internals

def test_nnsight_internals_are_those_checked():
    """`moe_interp.runtime._nnsight_compat` holds every use of nnsight's internals; it was checked
    against nnsight 0.8.1. A new nnsight must be checked there (then bump `CHECKED_WITH`)."""
    import nnsight

    from moe_interp.runtime import _nnsight_compat as compat

    assert compat.CHECKED_WITH == "0.8.1"
    assert nnsight.__version__ == compat.CHECKED_WITH, (
        f"nnsight {nnsight.__version__} is installed; moe_interp/_nnsight_compat.py was checked against "
        f"{compat.CHECKED_WITH}: check each function there against the new release")


def test_no_module_outside_the_compat_module_reaches_into_nnsight_internals():
    """The internals named in `_nnsight_compat`'s docstring appear nowhere else in the package."""
    import pathlib

    internals = ("interleaver.mediators", "tracing.util import push", "_PICKLE_BY_VALUE_MODULES", "__wrapped__.__get__",
                 "_batch_size(", "Mediator(", "Mediator.value", "Mediator.current", "_preprocess",
                 "batching import Batcher", "tracer.batcher")
    package = pathlib.Path(mi.__file__).parent
    found = [(path.name, word) for path in package.rglob("*.py") if path.name != "_nnsight_compat.py"
             for word in internals if word in path.read_text()]
    assert found == []
