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

    def __call__(self, text, images=()):
        patches, grids = zip(*map(self._patches, images)) if images else ((), ())
        sizes = iter(h * w // self.merge**2 for _, h, w in grids)
        text = [re.sub(re.escape(IMAGE), lambda _: IMAGE * next(sizes), t) for t in text]
        enc = dict(self.tokenizer(text, return_tensors="pt", padding=True))
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.tokenizer.convert_tokens_to_ids(IMAGE)).long()
        if images:
            enc["pixel_values"], enc["image_grid_thw"] = torch.cat(patches), torch.tensor(grids)
        return enc


@functools.lru_cache(maxsize=None)
def with_images():
    """The tiny model, wrapped with its processor: the byte tokenizer plus Qwen-VL's four vision
    tokens (ids 259-262), the config's placeholder ids set to them."""
    tokenizer = mi.zoo.byte_tokenizer("left")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL)})
    ids = dict(zip(SPECIAL, tokenizer.convert_tokens_to_ids(list(SPECIAL))))
    return mi.zoo.tiny_model(ARCH, tokenizer=TinyProcessor(tokenizer), text_config={"vocab_size": len(tokenizer)},
                             vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                             image_token_id=ids[IMAGE], video_token_id=ids["<|video_pad|>"])


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
    """One trace per caption (nnsight does not batch image invokes), merged: groups
    `"<language>/<modality>"`, each equal to its own trace."""
    model = with_images()
    parts = []
    for language, text, picture in zip(("eng", "fra"), CAPTIONS, images()):
        with mi.trace(model, mi.RouterRecord(by_modality=True)) as tr:
            with tr.invoke(model.processor([text], [picture]), group=language):
                pass
        parts.append(tr.routing)
    stats = parts[0].merge(parts[1])
    assert stats.languages == ("eng/text", "eng/image", "eng/video", "fra/text", "fra/image", "fra/video")
    assert stats.tokens.tolist()[1::3] == [4, 6]
    assert torch.equal(stats.select(["fra/image"]).count[0], parts[1].count[1])


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
