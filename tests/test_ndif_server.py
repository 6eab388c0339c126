"""Remote execution through NDIF's own server code (the `ndif` package), not a simulation.

`ndif_harness.NdifBackend` is nnsight's `RemoteBackend` with the HTTP transport replaced:
it sends the same envelope and serialized payload to a separate process
(`ndif_harness/server.py`) where `moe_interp` cannot be imported, which serves it with
ndif's functions. Two server paths:

- "execute": the in-process (trusted) path, `nns.prepare_traced_block` +
  `nns.execute_traced_block` under `nns.block_scope`, with
  `BackendRequestModel.deserialize`;
- "sandbox": the default path, ndif's runner process (`sandbox.host.spawn`, `sandbox.nns.run`)
  runs the block over a weightless meta model, and `sandbox.driver.SandboxDriver.pump` drives
  the real model in the server process, every `.output`/`.source` a socket round trip.

Every remote path of `moe_interp` is compared bitwise with the same call run locally, on
four models. A third, "actor": ndif's model actor itself (`BaseModelDeployment.run`), where a
result over 8 MiB is sent through the object store (the last test). Skipped where `ndif`
cannot be imported (it declares Python >= 3.12; `.ci/run` installs the wheel without
dependencies into `.ndif/`, where it imports on 3.11 too; tests/test_ndif_py312.py runs these
tests against a server on Python 3.12).

`NDIF_WIRE_TABLE=path.md` writes the measured bytes and round trips as a Markdown table
(the one in docs/remote.md).
"""

import os
import re
import tempfile

import pytest
import torch
from nnsight.intervention.backends.remote import RemoteError

import moe_interp as mi
from ndif_harness import NdifBackend, NdifServer, ndif_path, ndif_version
from test_remote import ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code)

ARCHS = ("qwen3_moe", "deepseek_v3", "gpt_oss", "demo")
MODES = ("execute", "sandbox")
PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt"]
CORPUS = {"eng": ["The cat sat.", "Hi there", "Good morning to you all", "Yes"],
          "deu": ["Die Katze saß.", "Hallo", "Guten Morgen, liebe Welt", "Ja, gerne"],
          "fra": ["Bonjour tout le monde", "Le chat"]}

_NDIF = ndif_path()
pytestmark = pytest.mark.skipif(
    _NDIF is None, reason="the ndif package is not installed here nor in .ndif/: install the wheel without dependencies into "
    ".ndif/ (pip download ndif==0.1.2 --no-deps --python-version 3.12 --only-binary=:all:, then pip install "
    "--no-deps --ignore-requires-python --target .ndif <wheel>), as .ci/run does")


@pytest.fixture(scope="module")
def server():
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    import nnsight.ndif

    by_value, pulled = set(_PICKLE_BY_VALUE_MODULES), nnsight.ndif._PULLED_ENV
    process = NdifServer(_NDIF)
    yield process
    process.close()
    # RemoteBackend registered local modules for by-value pickling (nnsight's pull_env): undo it
    _PICKLE_BY_VALUE_MODULES.clear()
    _PICKLE_BY_VALUE_MODULES.update(by_value)
    nnsight.ndif._PULLED_ENV = pulled


@pytest.fixture(scope="module")
def wire():
    """Measurements, one row per (model, path, mode); written out when NDIF_WIRE_TABLE is set."""
    rows: list = []
    yield rows
    target = os.environ.get("NDIF_WIRE_TABLE")
    if target and rows:
        with open(target, "w") as handle:
            handle.write(_table(rows))


_MODELS: dict = {}


def _model(arch: str):
    """`mi.load` of a saved checkpoint (the server rebuilds it from the same directory)."""
    if arch not in _MODELS:
        source = mi.zoo.demo_model() if arch == "demo" else mi.zoo.tiny_model(arch)
        directory = tempfile.mkdtemp(prefix=f"ndif-{arch}-")
        source._module.save_pretrained(directory)
        source.tokenizer.save_pretrained(directory)
        _MODELS[arch] = mi.load(directory)
    return _MODELS[arch]


# ---------------------------------------------------------------------------------- the paths
# Each takes the model and the remote keyword arguments ({} locally) and returns what is
# compared: a dict of tensors / texts, and how many forwards ran.

def _stats(routing) -> dict:
    values = {"languages": routing.languages, "count": routing.count, "gate_mass": routing.gate_mass,
              "tokens": routing.tokens}
    for key, value in (routing.per_token or {}).items():
        values[f"per_token.{key}"] = value
    return values


def _trace(*interventions, **options):
    def run(model, remote):
        with mi.trace(model, PROMPTS, *interventions, **options, **remote) as tr:
            pass
        values = _stats(tr.routing)
        if options.get("keep_output"):
            values["logits"] = tr.output.logits
        return values, tr.routing.meta["forwards"]
    return run


def _route_steer(model, remote):
    # the profile it selects from is computed locally (client side), as a user would
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(["Hello world", "good morning"], group="en"):
            pass
        with tr.invoke(["Guten Morgen", "Hallo Welt"], group="de"):
            pass
    steer = mi.RouteSteer(layers="middle", target="en", stats=tr.routing, scale=1.0)
    assert steer.expert_set(mi.describe(model)), "RouteSteer selected no expert: the path would steer nothing"
    return _trace(steer, mi.RouterRecord())(model, remote)


def _invokes_and_user_code(model, remote):
    """Two stats groups and plain nnsight code in the same block, steered."""
    layer = mi.describe(model).moe_layers[0]
    steer = mi.LayerRouteSteer({layer: {1: 2.0}}, scale=1.0, mode="additive")
    with mi.trace(model, steer, mi.RouterRecord(per_token=True), **remote) as tr:
        with tr.invoke(PROMPTS[:2], group="en"):
            hidden = model.model.layers[-1].output.save()
        with tr.invoke(PROMPTS[2:], group="de"):
            logits = model.lm_head.output.save()
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return {**_stats(tr.routing), "hidden": hidden, "logits": logits}, tr.routing.meta["forwards"]


def _generate(model, remote):
    layer = mi.describe(model).moe_layers[-1]
    steer = mi.LayerRouteSteer({layer: {0: 1.0, 2: -0.5}}, scale=2.0)
    with mi.generate(model, ["Once upon", "Hi"], steer, mi.ExpertAblate({layer: [1]}), mi.RouterRecord(),
                     max_new_tokens=4, do_sample=False, **remote) as gen:
        pass
    return {**_stats(gen.routing), "ids": gen.output, "text": gen.text}, gen.routing.meta["forwards"]


def _profile(model, remote):
    layer = mi.describe(model).moe_layers[1]
    stats = mi.profile(model, CORPUS, mi.LayerRouteSteer({layer: {3: 1.0}}, scale=1.0), batch_size=3,
                       progress=False, **remote)
    values = _stats(stats)
    values.update(item_count=stats.item_count, item_tokens=stats.item_tokens, item_language=stats.item_language)
    return values, 4  # 10 texts, batch 3: four forwards


def _router_view(model, remote):
    """Plain nnsight code on `model.moe`: a logits edit, then the selection it produced."""
    with model.trace(PROMPTS, **remote):
        router = model.moe[0].router
        router.logits[:, 1] += 2.0
        indices, weights = router.indices.save(), router.weights.save()
        logits = model.lm_head.output.save()
    return {"indices": indices, "weights": weights, "logits": logits}, 1


def _paths(arch: str) -> dict:
    spec = mi.describe(_model(arch))
    first, last = spec.moe_layers[0], spec.moe_layers[-1]
    every = {layer: {0: 1.0, 1: -0.5} for layer in spec.moe_layers}
    return {
        "record": _trace(mi.RouterRecord()),
        "record, keep_output": _trace(mi.RouterRecord(), keep_output=True),
        "per-token record": _trace(mi.RouterRecord(per_token=True)),
        "reroute": _trace(mi.ExpertAblate({first: [0, 1]}), mi.RouterRecord()),
        # half the experts: some token of the short test input surely chose one of them
        "drop": _trace(mi.ExpertAblate({last: list(range(spec.num_experts // 2))}, mode="drop"), mi.RouterRecord()),
        "relative steer": _trace(mi.LayerRouteSteer(every, scale=0.5), mi.RouterRecord()),
        "additive steer": _trace(mi.LayerRouteSteer({first: {3: 2.0}}, scale=3.0, mode="additive"),
                                 mi.RouterRecord()),
        "RouteSteer": _route_steer,
        "invokes + user code": _invokes_and_user_code,
        "generate, steered": _generate,
        "profile session": _profile,
        "router view, plain nnsight": _router_view,
    }


PATHS = (
    "record", "record, keep_output", "per-token record", "reroute", "drop", "relative steer", "additive steer",
    "RouteSteer", "invokes + user code", "generate, steered", "profile session",
    "router view, plain nnsight")

_LOCAL: dict = {}


def _local(arch: str, path: str):
    if (arch, path) not in _LOCAL:
        _LOCAL[arch, path] = _paths(arch)[path](_model(arch), {})
    return _LOCAL[arch, path]


def _same(local: dict, far: dict) -> None:
    assert local.keys() == far.keys()
    for key, value in local.items():
        if isinstance(value, torch.Tensor):
            assert far[key].dtype == value.dtype and torch.equal(far[key], value), key
        else:
            assert far[key] == value, key


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)  # a model's sandbox runner starts while its execute tests run
@pytest.mark.parametrize("arch", ARCHS)
def test_remote_path_on_ndif_server_code_is_bitwise_local(arch, path, mode, server, wire):
    model = _model(arch)
    local, forwards = _local(arch, path)
    backend = NdifBackend(model, server, mode)
    far, far_forwards = _paths(arch)[path](model, {"backend": backend})
    _same(local, far)
    assert far_forwards == forwards
    assert backend.requests == 1  # mi.profile too: all its batches in one session request
    if mode == "execute":  # a trace request carries our tracer; a session, nnsight's with our traces inside
        expected = {"profile session": "Tracer", "router view, plain nnsight": "InterleavingTracer"}
        assert backend.stats["tracer"] == expected.get(path, "RoutingRun")
    else:  # one model call per trace, run by the runner against the host's model
        assert backend.stats["interleave"] == (4 if path == "profile session" else 1)
    wire.append(dict(arch=arch, path=path, mode=mode, request=backend.request_bytes, result=backend.result_bytes,
                     raw=backend.stats["raw_result_bytes"], forwards=forwards,
                     round_trips=backend.stats.get("resume"), sources=backend.stats.get("source")))


def _table(rows: list) -> str:
    lines = ["| model | path | request (B) | result, zstd (B) | result, raw (B) | round trips / forward "
             "| `.source` trips / forward |", "|---|---|---:|---:|---:|---:|---:|"]
    sandbox = {(r["arch"], r["path"]): r for r in rows if r["mode"] == "sandbox"}
    for row in rows:
        box = sandbox.get((row["arch"], row["path"]))
        if row["mode"] != "execute" or box is None:
            continue
        lines.append(f"| {row['arch']} | {row['path']} | {row['request']:,} | {row['result']:,} | {row['raw']:,} "
                     f"| {box['round_trips'] / box['forwards']:g} | {box['sources'] / box['forwards']:g} |")
    return "\n".join(lines) + "\n"


STEERS = ("reroute", "drop", "relative steer", "additive steer", "RouteSteer")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_steering_path_changes_the_routing_it_is_compared_on(arch):
    """Else a bitwise match above would prove nothing about how the steer runs remotely."""
    plain, _ = _local(arch, "record")
    for path in STEERS:
        steered, _ = _local(arch, path)
        assert not torch.equal(steered["gate_mass"], plain["gate_mass"]), path


@pytest.mark.parametrize("mode", MODES)
def test_routing_result_and_round_trips_do_not_grow_with_tokens(mode, server):
    model = _model("qwen3_moe")
    seen = set()
    for batch, seq in ((1, 8), (6, 48)):
        ids = torch.randint(3, 200, (batch, seq), generator=torch.Generator().manual_seed(batch))
        backend = NdifBackend(model, server, mode)
        with mi.trace(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mi.RouterRecord(),
                      backend=backend) as tr:
            pass
        assert int(tr.routing.tokens.sum()) == batch * seq
        seen.add((backend.stats["raw_result_bytes"], backend.stats.get("resume")))
    assert len(seen) == 1, seen


def test_profile_in_session_requests_of_two_batches_is_bitwise_local(server):
    model = _model("demo")
    local, _ = _local("demo", "profile session")
    backend = NdifBackend(model, server, "sandbox")
    far, _ = _profile(model, {"backend": backend, "session_batches": 2})
    _same(local, far)
    assert backend.requests == 2  # 4 batches, 2 per request


@pytest.mark.parametrize("mode", MODES)
def test_the_server_cannot_import_moe_interp(mode, server):
    """What the requests above ran, they brought: a block importing the package fails there."""
    model = _model("qwen3_moe")
    with pytest.raises(RemoteError, match="No module named 'moe_interp' \\(the NDIF server does not have it\\)"):
        with model.trace(PROMPTS, backend=NdifBackend(model, server, mode)):
            import moe_interp  # noqa: F401
            model.lm_head.output.save()


def test_docs_name_the_ndif_version_the_tests_ran():
    docs = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "remote.md")).read()
    match = re.search(r"proven against `ndif` ([0-9][0-9a-z.]*)", docs)
    assert match, "docs/remote.md should say which ndif version the remote path was proven against"
    assert match[1] == ndif_version(_NDIF)


# ------------------------------------------------------------------- the object-store route
# NDIF's model actor (`BaseModelDeployment.run`, ndif 0.1.2) hands a result back inline, as a
# pickled COMPLETED response through Redis, when its compressed blob is at most
# `RedisProvider.max_publish_bytes()` (8 MiB against a stock Redis); anything larger goes to
# the object store (`ObjectStoreProvider.put`, `presigned_get`) and the client downloads it
# from the presigned url (nnsight's `RemoteBackend.download_result`).

@pytest.fixture(scope="module")
def actor_server(server):
    """A server whose environment can import ndif's model actor (ray, accelerate, boto3, redis:
    `.ndif/actor`, which `.ci/run` fills); skipped, with the reason, where it cannot."""
    from ndif_harness import ACTOR_DEPS

    process = NdifServer(_NDIF, extra_paths=(ACTOR_DEPS,) if os.path.isdir(ACTOR_DEPS) else ())
    reason = process.probe()["actor"]
    if reason:
        process.close()
        pytest.skip(f"{reason}: install what it imports into .ndif/actor, as .ci/run does")
    yield process
    process.close()


def _big_batch(model, batch: int = 24, seq: int = 256) -> dict:
    ids = torch.randint(3, model.tokenizer.vocab_size - 1, (batch, seq), generator=torch.Generator().manual_seed(7))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _per_token_with_logits(model, inputs, remote) -> dict:
    with mi.trace(model, inputs, mi.RouterRecord(per_token=True), keep_output=True, **remote) as tr:
        pass
    return {**_stats(tr.routing), "logits": tr.output.logits}


def test_a_result_over_8_mib_comes_back_through_the_object_store_bitwise_local(actor_server):
    """A result over the cap goes through the object store, a small one inline; both bitwise local.

    Served by ndif's own `BaseModelDeployment.run` (`ndif_harness/actor.py`): it measures the
    compressed blob against `RedisProvider.max_publish_bytes()` (ndif's derivation, from a
    stock redis:7's `client-output-buffer-limit`: 8 MiB), and uploads with `ObjectStoreProvider.put`
    and presigns with `presigned_get`. The seams (nothing of ndif, boto3 or nnsight replaced
    above them):
    - S3: a botocore `before-send` handler on the two boto3 clients ndif's
      `ObjectStoreProvider.connect()` built (`ndif_harness/stores.MemoryS3`): boto3's
      `upload_fileobj`, s3transfer's multipart split (8 MiB parts), SigV4 signing and presigning
      all run; the handler answers each HTTP request in memory and records it; no socket.
    - Redis: `RedisProvider.sync_client` is `stores.MemoryRedis` (publish, pipeline, config_get).
    - the download: nnsight's `download_result` runs (httpx GET, streaming); the `httpx.Client`
      it builds gets a `MockTransport` that asks the server process for the object the
      presigned url names (`NdifBackend._object_store_transport`).
    """
    model = _model("qwen3_moe")
    threshold = 8 * 1024 * 1024

    # (a) large: per-token routing of 24 x 256 tokens with the model's output (keep_output):
    # 11.2 MB compressed, two 8 MiB parts (measured)
    inputs = _big_batch(model)
    local = _per_token_with_logits(model, inputs, {})
    backend = NdifBackend(model, actor_server, "actor")
    far = _per_token_with_logits(model, inputs, {"backend": backend})
    _same(local, far)
    stats = backend.stats
    assert stats["threshold"] == threshold
    key = f"{stats['request_id']}.pt"
    assert list(stats["uploaded"]) == [key] and stats["uploaded"][key] > threshold, stats["uploaded"]
    parts = stats["s3"].count("UploadPart")
    assert stats["s3"][-(parts + 2):] == ["CreateMultipartUpload", *["UploadPart"] * parts,
                                           "CompleteMultipartUpload"] and parts >= 2, stats["s3"]
    completed = backend.parse(backend.frames[-1])
    assert isinstance(backend.frames[-1], str) and completed.data.split("?")[0].endswith(f"/{key}"), completed
    assert [(url, size) for url, size in backend.downloads] == [(completed.data, stats["uploaded"][key])]

    # (b) small: the per-token record of the 3 prompts (2.7 KB) comes back inline: nothing stored or downloaded
    small = NdifBackend(model, actor_server, "actor")
    far_small, _ = _trace(mi.RouterRecord(per_token=True))(model, {"backend": small})
    _same(_local("qwen3_moe", "per-token record")[0], far_small)
    assert small.stats["uploaded"] == {} and small.downloads == []
    assert isinstance(small.frames[-1], bytes) and len(small.frames[-1]) <= threshold
