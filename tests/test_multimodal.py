"""Multimodal MoE models (issue 18): the language model of Qwen3-VL-MoE, on text and image tokens.

Oracles: `conftest.experts_received` (torch hooks on the experts' own arguments) and the
router's maths written out here (softmax over `hidden @ W.T`, top-k, with the edit applied
to the logits) on the hidden states the router received (captured by a hook).
"""

import functools
import re

import pytest
import torch

import moe_interp as mi
from conftest import PROMPTS, encode, experts_received

ARCH = "qwen3_vl_moe"


@functools.lru_cache(maxsize=None)
def tiny():
    return mi.zoo.tiny_model(ARCH)


def test_describe_names_the_language_models_layers():
    spec = mi.describe(tiny())
    assert spec.moe_layers == (0, 1, 2, 3) and spec.num_experts == 8 and spec.top_k == 2
    assert spec.layer_names == tuple(f"language_model.{i}" for i in range(4))
    assert spec.routers[0] == "model.language_model.layers.0.mlp.gate"


def test_text_tokens_record_exactly_what_the_experts_received_with_the_stack_labelled():
    model = tiny()
    enc = encode(model)
    with experts_received(model, enc["attention_mask"]) as seen:
        with mi.trace(model, enc, mi.RouterRecord()) as tr:
            pass
    stats = tr.routing
    assert stats.stacks == ("language_model",) * 4 and stats.tokens.tolist() == [int(enc["attention_mask"].sum())]
    for position, layer in enumerate(stats.layers):
        assert torch.equal(stats.count[0, position], seen[layer]), layer
    assert stats.select(layers="language_model:late").layers == (3,)


def _router_inputs(model, layer):
    """The router of `layer` and the hidden states it will receive (a hook, removed by the caller)."""
    router = model._module.get_submodule(mi.describe(model).routers[layer])
    seen = []
    handle = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return router, seen, handle


@pytest.mark.parametrize("intervention, edit", [
    (mi.LayerRouteSteer({2: {5: 1.0}}, scale=4.0, mode="additive"), lambda z: z + 4.0 * torch.eye(8)[5]),
    (mi.ExpertAblate({2: [1, 6]}), lambda z: z.masked_fill(torch.isin(torch.arange(8), torch.tensor([1, 6])), -1e9)),
], ids=["additive steer", "reroute"])
def test_interventions_on_the_language_model_match_hand_written_router_maths(intervention, edit):
    model = tiny()
    enc = encode(model)
    router, seen, handle = _router_inputs(model, 2)
    try:
        with experts_received(model, enc["attention_mask"]) as received:
            with mi.trace(model, enc, mi.RouterRecord(), intervention) as tr:
                pass
    finally:
        handle.remove()
    hidden = seen[-1].reshape(-1, seen[-1].shape[-1]).float()
    logits = edit(hidden @ router.weight.float().T)
    top = torch.softmax(logits, -1).topk(2, dim=-1).indices
    real = enc["attention_mask"].reshape(-1).bool()
    expected = torch.bincount(top[real].reshape(-1), minlength=8)
    assert torch.equal(tr.routing.count[0, 2], expected) and torch.equal(received[2], expected)
    with mi.trace(model, enc, mi.RouterRecord()) as plain:
        pass
    assert not torch.equal(plain.routing.count[0, 2], expected)  # the edit changed the routing
    assert torch.equal(plain.routing.count[0, :2], tr.routing.count[0, :2])  # layers before it did not move


# ------------------------------------------------------------------------- images, by modality
SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IMAGE = "<|image_pad|>"


class TinyProcessor:
    """Qwen3-VL's processor contract, written out offline (no hub, no PIL): each `IMAGE` in a
    text becomes one placeholder token per merged patch (grid h * w / merge**2), an image
    `[3, H, W]` becomes its patches `[h * w, 3 * T * P * P]` in Qwen2-VL's order (`T`
    copies of the frame), with `image_grid_thw` and `mm_token_type_ids` (1 on image tokens)."""

    def __init__(self, tokenizer, patch=8, merge=2, temporal=2):
        self.tokenizer, self.patch, self.merge, self.temporal = tokenizer, patch, merge, temporal

    def _patches(self, image):
        p, m, t = self.patch, self.merge, self.temporal
        c, h, w = image.shape
        gh, gw = h // p, w // p
        frames = image[None].expand(t, c, h, w).reshape(1, t, c, gh // m, m, p, gw // m, m, p)
        return frames.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, c * t * p * p), [1, gh, gw]

    def __call__(self, text, images=(), return_tensors="pt"):
        text, images = [text] if isinstance(text, str) else text, images or ()
        patches, grids = zip(*map(self._patches, images)) if images else ((), ())
        sizes = iter(h * w // self.merge**2 for _, h, w in grids)
        text = [re.sub(re.escape(IMAGE), lambda _: IMAGE * next(sizes), t) for t in text]
        enc = dict(self.tokenizer(text, return_tensors="pt", padding=True))
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.tokenizer.convert_tokens_to_ids(IMAGE)).long()
        if images:
            enc["pixel_values"], enc["image_grid_thw"] = torch.cat(patches), torch.tensor(grids)
        return enc


@functools.lru_cache(maxsize=None)
def with_images(side="left"):
    """The tiny model, wrapped with its processor: the byte tokenizer plus Qwen-VL's four vision
    tokens (ids 259-262), the config's placeholder ids set to them; padding on `side` (nnsight
    sets a causal model's tokenizer to the left when it wraps it: "right" is set after)."""
    tokenizer = mi.zoo.byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL)})
    ids = dict(zip(SPECIAL, tokenizer.convert_tokens_to_ids(list(SPECIAL))))
    model = mi.zoo.tiny_model(ARCH, tokenizer=TinyProcessor(tokenizer), text_config={"vocab_size": len(tokenizer)},
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                              image_token_id=ids[IMAGE], video_token_id=ids["<|video_pad|>"])
    model.tokenizer.padding_side = side
    return model


CAPTIONS = ["<|vision_start|><|image_pad|><|vision_end|>A cat", "<|vision_start|><|image_pad|><|vision_end|>Un chat"
            " sur le toit"]


def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 32, 32, generator=generator), torch.rand(3, 32, 48, generator=generator)]


def test_wrap_takes_the_models_processor():
    model = with_images()
    assert isinstance(model.processor, TinyProcessor) and model.tokenizer is model.processor.tokenizer
    enc = model.processor(CAPTIONS, images())
    # 32x32 and 32x48 pixels: 4x4 and 4x6 patches of 8, merged 2x2 -> 4 and 6 image tokens
    assert (enc["input_ids"] == 261).sum(1).tolist() == [4, 6] and enc["pixel_values"].shape == (16 + 24, 384)


def test_image_and_text_tokens_are_counted_apart_exactly():
    model = with_images()
    enc = model.processor(CAPTIONS, images())
    real, image = enc["attention_mask"].bool(), enc["input_ids"] == 261
    with experts_received(model, real & image) as on_images, torch.no_grad():
        model._module(**enc)
    with experts_received(model, real & ~image) as on_text:
        with mi.trace(model, enc, mi.RouterRecord(by_modality=True)) as tr:
            pass
    stats = tr.routing
    assert stats.languages == ("default/text", "default/image", "default/video")
    assert stats.tokens.tolist() == [int((real & ~image).sum()), 4 + 6, 0]
    for position, layer in enumerate(stats.layers):
        assert torch.equal(stats.count[0, position], on_text[layer]), layer
        assert torch.equal(stats.count[1, position], on_images[layer]), layer
    assert int(stats.count[2].sum()) == 0
    with mi.trace(model, enc, mi.RouterRecord()) as whole:  # without by_modality: one group, their sum
        pass
    assert torch.equal(whole.routing.count[0], stats.count.sum(0))


def test_modality_counts_do_not_depend_on_padding():
    model = with_images()
    pictures = images()

    def record(texts, imgs):
        with mi.trace(model, model.processor(texts, imgs), mi.RouterRecord(by_modality=True)) as tr:
            pass
        return tr.routing

    together = record(CAPTIONS, pictures)
    alone = [record([text], [picture]) for text, picture in zip(CAPTIONS, pictures)]
    assert torch.equal(together.count, alone[0].count + alone[1].count)
    assert torch.equal(together.tokens, alone[0].tokens + alone[1].tokens)


def test_a_captions_language_and_its_image_compare_in_one_stats():
    """One trace, an invoke per caption with its image: groups `"<language>/<modality>"`, each
    equal to the caption's own trace."""
    model = with_images()
    with mi.trace(model, mi.RouterRecord(by_modality=True)) as tr:
        for language, text, picture in zip(("eng", "fra"), CAPTIONS, images()):
            with tr.invoke(model.processor([text], [picture]), group=language):
                pass
    stats = tr.routing
    assert stats.languages == ("eng/text", "eng/image", "eng/video", "fra/text", "fra/image", "fra/video")
    assert stats.tokens.tolist()[1::3] == [4, 6]
    for position, (text, picture) in enumerate(zip(CAPTIONS, images())):
        with mi.trace(model, model.processor([text], [picture]), mi.RouterRecord(by_modality=True)) as alone:
            pass
        assert torch.equal(stats.count[3 * position:3 * position + 3], alone.routing.count)


# -------------------------------------------------------- several images across invokes, one trace
def more_images():
    """Images of three sizes (three different `image_grid_thw`): 32x32, 32x48, 48x32 pixels."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in ((32, 32), (32, 48), (48, 32))]


PICTURE = "<|vision_start|><|image_pad|><|vision_end|>"
# (group, texts, images of those texts): one caption and its image; one caption with two images
# of different sizes; two captions in one invoke (padded by the processor among themselves);
# a text without an image.
INVOKES = [("eng", ["A cat" + PICTURE], [0]),
           ("deu", [PICTURE + "Zwei Bilder: " + PICTURE + " ein Hund und eine Katze"], [1, 2]),
           ("fra", [PICTURE + "Un chat", "Le chien " + PICTURE + " dort"], [2, 0]),
           ("txt", "Only text, no picture at all", [])]


def _encode(model, texts, pictures):
    return model.processor(texts, pictures) if pictures else model.tokenizer(texts, return_tensors="pt")


def _alone(model, texts, pictures):
    """Per row of one invoke, run alone through Hugging Face's own forward: `(text counts,
    image counts)` per layer (hooks on the experts), its last-layer logits on real tokens,
    its real tokens' count of each kind."""
    texts = [texts] if isinstance(texts, str) else texts
    per_row, taken = [], 0
    for text in texts:
        mine = [pictures[taken + i] for i in range(text.count(IMAGE))]
        taken += len(mine)
        enc = _encode(model, [text], mine)
        image = enc["input_ids"] == 261
        with experts_received(model, ~image) as on_text, experts_received(model, image) as on_images, torch.no_grad():
            logits = model._module(**enc).logits[0]
        per_row.append((_eight(on_text), _eight(on_images), logits, int((~image).sum()), int(image.sum())))
    return per_row


def _eight(seen):
    """`experts_received`'s counts per layer, as `[8]` (it stops at the last expert reached)."""
    return {layer: torch.nn.functional.pad(counts, (0, 8 - counts.shape[0])) for layer, counts in seen.items()}


@pytest.mark.parametrize("side", ["left", "right"])
def test_image_invokes_of_different_sizes_batch_in_one_trace_exactly(side):
    """Four invokes in one trace: images of three sizes, two in one caption, two captions in
    one invoke, a text without any. Per group and modality, the counts are what the experts
    received with each caption run alone through Hugging Face's forward (hooks, no package
    code); each row's logits are its own, on `side`-padded rows (an invoke padded on the other
    side among its own rows too); an invoke's code sees its rows."""
    model, pool = with_images(side), more_images()
    encodings = {group: _encode(model, texts, [pool[i] for i in picks]) if picks else texts
                 for group, texts, picks in INVOKES}
    model.tokenizer.padding_side = "right" if side == "left" else "left"
    try:  # an invoke padded among its own rows on the other side: its rows are padded again
        encodings["fra"] = _encode(model, INVOKES[2][1], [pool[i] for i in INVOKES[2][2]])
    finally:
        model.tokenizer.padding_side = side
    assert encodings["fra"]["attention_mask"][0, -1 if side == "left" else 0] == 0
    with mi.trace(model, mi.RouterRecord(by_modality=True)) as tr:
        with tr.invoke(encodings["eng"], group="eng"):
            pass
        with tr.invoke(encodings["deu"], group="deu"):
            deu = model.lm_head.output.save()
        with tr.invoke(encodings["fra"], group="fra"):
            pass
        with tr.invoke(encodings["txt"], group="txt"):
            pass
    stats = tr.routing
    assert stats.groups == tuple(f"{g}/{kind}" for g, _, _ in INVOKES for kind in ("text", "image", "video"))
    logits, row = tr.output.logits, 0
    for number, (group, texts, picks) in enumerate(INVOKES):
        rows = _alone(model, texts, [pool[i] for i in picks])
        text_tokens, image_tokens = sum(r[3] for r in rows), sum(r[4] for r in rows)
        assert stats.tokens[3 * number:3 * number + 3].tolist() == [text_tokens, image_tokens, 0], group
        for position, layer in enumerate(stats.layers):
            assert torch.equal(stats.count[3 * number, position], sum(r[0][layer] for r in rows)), (group, layer)
            assert torch.equal(stats.count[3 * number + 1, position], sum(r[1][layer] for r in rows)), (group, layer)
            assert int(stats.count[3 * number + 2, position].sum()) == 0
        for own in rows:  # a row's real tokens sit at the end (left padding) or the start (right)
            n = own[2].shape[0]
            batched = logits[row, -n:] if side == "left" else logits[row, :n]
            torch.testing.assert_close(batched, own[2], atol=1e-4, rtol=1e-4)
            row += 1
    assert row == logits.shape[0] == 5 and deu.shape[0] == 1
    assert torch.equal(deu, logits[1:2])


def test_plain_nnsight_still_refuses_image_invokes_with_the_version_checked():
    """`_nnsight_compat.MediaBatcher` batches what nnsight 0.8.1 refuses: a plain `model.trace`
    with two image invokes. When a new nnsight batches them itself, check MediaBatcher against
    it (and bump `_nnsight_compat.CHECKED_WITH`)."""
    import nnsight

    from moe_interp.runtime import _nnsight_compat as compat

    model = with_images()
    assert nnsight.__version__ == compat.CHECKED_WITH == "0.8.1"
    with pytest.raises(NotImplementedError, match="Can't batch these inputs"):
        with model.trace() as tracer:
            for text, picture in zip(CAPTIONS, images()):
                with tracer.invoke(model.processor([text], [picture])):
                    pass


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no cache"])
def test_generate_with_several_image_invokes_equals_each_caption_generated_alone(cache):
    """`mi.generate` with an invoke per caption, images of different sizes: each group's counts
    per modality, and its tokens, are those of Hugging Face's own `generate` on the caption
    alone (hooks: every real prompt token, then each fed token; the image part from a
    forward of the prompt alone)."""
    from test_generate import hand_count

    model, steps, pool = with_images(), 4, more_images()
    captions = [("eng", INVOKES[0][1], [pool[0]]), ("deu", INVOKES[1][1], [pool[1], pool[2]])]
    options = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=cache, pad_token_id=0)
    with mi.generate(model, mi.RouterRecord(by_modality=True), **options) as gen:
        for group, texts, pictures in captions:
            with gen.invoke(model.processor(texts, pictures), group=group):
                pass
    stats = gen.routing
    assert stats.groups == ("eng/text", "eng/image", "eng/video", "deu/text", "deu/image", "deu/video")
    for number, (group, texts, pictures) in enumerate(captions):
        enc = model.processor(texts, pictures)
        image = enc["input_ids"] == 261
        with hand_count(model, enc["attention_mask"]) as (seen, state):
            alone = model._module.generate(**enc, **options)
        with experts_received(model, image) as on_images, torch.no_grad():
            model._module(**enc)
        assert state["forward"] == steps - 1
        assert gen.output[number, -alone.shape[1]:].tolist() == alone[0].tolist(), group
        text_tokens = int((~image).sum()) + steps - 1
        assert stats.tokens[3 * number:3 * number + 3].tolist() == [text_tokens, int(image.sum()), 0]
        for position, layer in enumerate(stats.layers):
            both = stats.count[3 * number, position] + stats.count[3 * number + 1, position]
            assert torch.equal(both, seen[layer]), (group, layer)  # hand_count: minlength 8
            assert torch.equal(stats.count[3 * number + 1, position], _eight(on_images)[layer]), (group, layer)


def test_image_invokes_in_a_processors_terms_and_remote_local_count_as_locally():
    """An invoke may name the processor's arguments (`tr.invoke(text, images=[...])`, nnsight's
    own form); `remote="local"` (the request serialized and run as a server would) batches the
    invokes the same way: counts equal to a local trace of the processor's outputs."""
    model, pictures = with_images(), images()
    encoded = model.processor([CAPTIONS[0]], [pictures[0]])

    def record(first, remote=False, **terms):
        with mi.trace(model, mi.RouterRecord(by_modality=True), remote=remote) as tr:
            with tr.invoke(first, group="eng", **terms):
                pass
            with tr.invoke(model.processor([CAPTIONS[1]], [pictures[1]]), group="fra"):
                pass
        return tr.routing

    local = record(encoded)
    assert local.tokens.tolist() == [7, 4, 0, 21, 6, 0]
    assert torch.equal(record(CAPTIONS[0], images=[pictures[0]]).count, local.count)
    assert torch.equal(record(encoded, remote="local").count, local.count)


def test_images_a_model_cannot_take_are_refused_before_any_forward():
    model, (picture, other) = with_images(), images()
    caption = model.processor([CAPTIONS[0]], [picture])
    swapped = {**caption, "image_grid_thw": model.processor([CAPTIONS[1]], [other])["image_grid_thw"]}
    bare = mi.zoo.tiny_model(ARCH)  # no processor
    text_only = mi.zoo.tiny_model("qwen3_moe")
    cases = [
        (bare, ("A cat",), {"images": [picture]}, "wrapped without one: wrap it with its processor"),
        (model, (swapped,), {}, "holds 4 image placeholder tokens .* makes 6 image features"),
        (model, ({**caption, "pixel_values": caption["pixel_values"][:8]},), {}, "pixel_values has 8 rows"),
        (text_only, ({"input_ids": torch.tensor([[5, 6]]), "pixel_values": torch.zeros(4, 8)},), {}, "takes text only"),
    ]
    for target, inputs, kwargs, message in cases:
        forwards = []
        handle = target._module.register_forward_pre_hook(lambda *_: forwards.append(1))
        try:
            with pytest.raises(ValueError, match=message):
                with mi.trace(target, mi.RouterRecord()) as tr:
                    with tr.invoke(model.processor([CAPTIONS[1]], [other]) if target is model else "Hi", group="ok"):
                        pass
                    with tr.invoke(*inputs, group="bad", **kwargs):
                        pass
        finally:
            handle.remove()
        assert forwards == [], message


def test_by_modality_on_a_text_only_model_is_refused():
    with pytest.raises(ValueError, match="names no placeholder token for image, video, audio"):
        mi.trace(mi.zoo.tiny_model("qwen3_moe"), "Hello", mi.RouterRecord(by_modality=True))


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no cache"])
def test_generate_with_images_counts_what_the_experts_received(cache):
    """`mi.generate` on captions with their images: Qwen-VL passes 3-D rope position ids
    (`[4, batch, seq]`); the counts are what the experts received (hooks: every real prompt
    token, then each row's fed token), and each token's recorded position is its text position
    (its index among the row's real tokens, an image's placeholders one each)."""
    from test_generate import hand_count

    model, steps = with_images(), 4
    enc = model.processor(CAPTIONS, images())
    lengths = enc["attention_mask"].sum(1)
    with hand_count(model, enc["attention_mask"]) as (seen, state):
        with mi.generate(model, enc, mi.RouterRecord(per_token=True, by_modality=True), max_new_tokens=steps,
                         min_new_tokens=steps, do_sample=False, use_cache=cache, pad_token_id=0) as gen:
            pass
    stats = gen.routing
    assert state["forward"] == steps - 1 and gen.output.shape[1] == enc["input_ids"].shape[1] + steps
    image = int((enc["input_ids"] == 261).sum())
    assert stats.tokens.tolist() == [int(lengths.sum()) - image + 2 * (steps - 1), image, 0]
    for position, layer in enumerate(stats.layers):
        assert torch.equal(stats.count[:, position].sum(0), seen[layer]), layer
    table = stats.per_token
    prompt = [torch.arange(int(n)) for n in lengths]
    fed = [torch.tensor([int(lengths[0]) + n, int(lengths[1]) + n]) for n in range(steps - 1)]
    assert torch.equal(table["position"].long(), torch.cat(prompt + fed))
    assert table["row"].tolist() == [0] * int(lengths[0]) + [1] * int(lengths[1]) + [0, 1] * (steps - 1)


def test_the_sandbox_refusal_is_for_a_dispatched_meta_model_only():
    """`MediaBatcher.add` refuses several image invokes over a model whose weights are on meta
    *and* which says it is dispatched (NDIF's sandbox runner); a local model built with
    `dispatch=False` is on meta too until nnsight loads its weights at interleave, after every
    invoke was added: its invokes are batched, not refused (a reviewer's finding)."""
    from moe_interp.runtime._nnsight_compat import MediaBatcher

    model, pictures = with_images.__wrapped__(), more_images()  # a model of its own (not the cached one)
    encoded = [_encode(model, [texts] if isinstance(texts, str) else texts, [pictures[i] for i in which])
               for _, texts, which in INVOKES[:2]]
    model._module.to("meta")
    for dispatched, refused in ((False, False), (True, True)):
        model.dispatched = dispatched
        batcher = MediaBatcher(model, {})
        batcher.add(encoded[0])
        if refused:
            with pytest.raises(NotImplementedError, match="NDIF's sandbox"):
                batcher.add(encoded[1])
        else:
            batcher.add(encoded[1])
            assert len(batcher.invokes) == 2
