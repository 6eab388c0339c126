"""Images through NDIF's own server code: several image invokes, and `mi.generate` with images.

`tests/test_multimodal.py` checks that invokes carrying images of different sizes batch in one
trace (`_nnsight_compat.MediaBatcher`, what nnsight 0.8.1 refuses) and count exactly per group
and modality, locally and with `remote="local"`. Here the requests go through ndif 0.1.2's
request path (`ndif_harness`: "execute", the trusted in-process path, and "sandbox", ndif's
runner over a weightless meta model), in a process where `moe_interp` cannot be imported, and
each result is compared bitwise with the local run: counts, gate mass and tokens per group and
modality, per-token tables, logits, a user `.save()`, generated ids.

- one image invoke (two captions, images of two sizes, left-padded by the processor), traced
  and generated: bitwise local on both paths;
- several image invokes (trace and generate): bitwise local on the execute path; refused on the
  sandbox, whose host assembles the inputs with nnsight's own batcher (see `MediaBatcher.add`).

The server rebuilds the tiny Qwen3-VL-MoE from a saved directory, tokenizer only (the "text-
generation" key `mi.load` gives a directory; a real Qwen-VL processor needs torchvision, absent
here); the client encodes the images with `test_multimodal.TinyProcessor`, so the request
carries `pixel_values`, `image_grid_thw` and `mm_token_type_ids` as tensors.
"""

import functools
import tempfile

import pytest
import torch
from nnsight.intervention.backends.remote import RemoteError

import moe_interp as mi
from ndif_harness import NdifBackend
from test_multimodal import INVOKES, TinyProcessor, more_images, with_images
from test_ndif_server import MODES, pytestmark, server  # noqa: F401  (skipped without ndif, as there; its server)
from test_remote import ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code)


@functools.lru_cache(maxsize=None)
def model():
    """`test_multimodal.with_images()` saved and loaded back with `mi.load`, tokenizer only, as
    the server rebuilds it from the same directory (a client model wrapped with a processor the
    server's lacks fails there: nnsight references it by the persistent id "Processor")."""
    source = with_images()
    directory = tempfile.mkdtemp(prefix="ndif-qwen3-vl-moe-")
    source._module.save_pretrained(directory)
    source.tokenizer.save_pretrained(directory)
    loaded = mi.load(directory)
    assert loaded.tokenizer.padding_side == "left" and loaded.processor is None
    return loaded


@functools.lru_cache(maxsize=None)
def processor():
    """The offline Qwen-VL processor of test_multimodal, over the loaded model's tokenizer."""
    return TinyProcessor(model().tokenizer)


def _stats(routing) -> dict:
    values = {"groups": routing.groups, "count": routing.count, "gate_mass": routing.gate_mass,
              "tokens": routing.tokens}
    for key, value in (routing.per_token or {}).items():
        values[f"per_token.{key}"] = value
    return values


def _encodings(m) -> dict:
    pool = more_images()
    return {group: processor()(texts, [pool[i] for i in picks]) if picks else texts for group, texts, picks in INVOKES}


def _image_invokes(m, remote) -> dict:
    """Four invokes: images of three sizes, two in one caption, two captions in one invoke
    (left-padded among themselves), a text without any; user code saves one invoke's logits."""
    encodings = _encodings(m)
    with mi.trace(m, mi.RouterRecord(by_modality=True, per_token=True), keep_output=True, **remote) as tr:
        for group, _, _ in INVOKES:
            with tr.invoke(encodings[group], group=group):
                if group == "deu":
                    deu = m.lm_head.output.save()
    return {**_stats(tr.routing), "logits": tr.output.logits, "deu": deu, "forwards": tr.routing.meta["forwards"]}


def _generate_with_images(m, remote) -> dict:
    pool = more_images()
    captions = [("eng", processor()(INVOKES[0][1], [pool[0]])), ("deu", processor()(INVOKES[1][1], [pool[1], pool[2]]))]
    with mi.generate(m, mi.RouterRecord(by_modality=True), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                     pad_token_id=0, **remote) as gen:
        for group, encoding in captions:
            with gen.invoke(encoding, group=group):
                pass
    return {**_stats(gen.routing), "ids": gen.output, "forwards": gen.routing.meta["forwards"]}


def _one_image_invoke(m, remote) -> dict:
    """What NDIF's sandbox can batch: one invoke, two captions with images of two sizes, which
    the processor pads (left) among themselves; a trace, then a generation."""
    pool = more_images()
    encoding = processor()(INVOKES[2][1], [pool[2], pool[0]])
    with mi.trace(m, encoding, mi.RouterRecord(by_modality=True, per_token=True), keep_output=True, **remote) as tr:
        pass
    with mi.generate(m, encoding, mi.RouterRecord(by_modality=True), max_new_tokens=3, min_new_tokens=3,
                     do_sample=False, pad_token_id=0, **remote) as gen:
        pass
    return {**_stats(tr.routing), "logits": tr.output.logits, "forwards": tr.routing.meta["forwards"],
            **{f"generate.{k}": v for k, v in _stats(gen.routing).items()}, "ids": gen.output}


PATHS = {"image invokes": _image_invokes, "generate, image invokes": _generate_with_images,
         "one image invoke, trace and generate": _one_image_invoke}


@functools.lru_cache(maxsize=None)
def _local(path: str) -> dict:
    return PATHS[path](model(), {})


def _same(local: dict, far: dict) -> None:
    assert local.keys() == far.keys()
    for key, value in local.items():
        if isinstance(value, torch.Tensor):
            assert far[key].dtype == value.dtype and torch.equal(far[key], value), key
        else:
            assert far[key] == value, key


def test_the_compared_runs_hold_images_of_several_sizes_and_padding():
    """Else a bitwise match would prove little: every group's image rows were counted, the
    invokes' images differ in size, rows are left-padded."""
    invokes, generated, one = (_local(path) for path in PATHS)
    assert invokes["groups"] == tuple(f"{g}/{kind}" for g, _, _ in INVOKES for kind in ("text", "image", "video"))
    # image tokens per group: 32x32 pixels make 4, 32x48 and 48x32 make 6 each
    assert invokes["tokens"].tolist()[1::3] == [4, 6 + 6, 6 + 4, 0]
    assert generated["tokens"].tolist()[1::3] == [4, 12] and generated["forwards"] == 3
    assert one["tokens"].tolist()[1] == 10 and one["generate.tokens"].tolist()[1] == 10
    mask = processor()(INVOKES[2][1], [more_images()[2], more_images()[0]])["attention_mask"]
    assert mask[:, 0].tolist() == [0, 1] and mask[:, -1].tolist() == [1, 1]  # the shorter caption padded on the left


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["one image invoke, trace and generate"])
def test_an_image_invoke_on_ndif_server_code_is_bitwise_local(path, mode, server):
    m = model()
    backend = NdifBackend(m, server, mode)
    _same(_local(path), PATHS[path](m, {"backend": backend}))
    assert backend.requests == 2


@pytest.mark.parametrize("path", ["image invokes", "generate, image invokes"])
def test_several_image_invokes_on_ndif_execute_path_are_bitwise_local(path, server):
    """The trusted path runs the block where the model is: MediaBatcher batches the invokes."""
    m = model()
    backend = NdifBackend(m, server, "execute")
    _same(_local(path), PATHS[path](m, {"backend": backend}))
    assert backend.requests == 1 and backend.stats["tracer"] == "RoutingRun"


@pytest.mark.parametrize("path", ["image invokes", "generate, image invokes"])
def test_several_image_invokes_are_refused_on_ndifs_sandbox_naming_the_fix(path, server):
    """NDIF's sandbox runs the block over a meta model and assembles the model's inputs on its
    host with nnsight's own `Batcher` (ndif sandbox/driver.py, `_assemble`), which refuses
    invokes that carry images beside others; moe_interp's batching never runs there. The
    runner refuses them as the second invoke is added, before the model runs."""
    m = model()
    backend = NdifBackend(m, server, "sandbox")
    with pytest.raises(RemoteError, match="NDIF's sandbox .* one trace per image invoke"):
        PATHS[path](m, {"backend": backend})
