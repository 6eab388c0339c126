"""Encoder-decoder MoE models (issue 18): NLLB-MoE and Switch Transformers, both stacks.

Oracles: `conftest.experts_received` (torch hooks on each expert submodule: the rows it really
computed, matched back to their tokens, per stack with that stack's own padding mask), and
router maths written out here on the hidden states the router received (captured by a hook).
"""

import functools
import re

import pytest
import torch

import moe_interp as mi
from conftest import experts_received

SOURCES = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt", "ok"]
TARGETS = ["Hallo", "Salut tout le monde", "Hi there", "ja"]
SEQ2SEQ = ("nllb-moe", "switch_transformers")


@functools.lru_cache(maxsize=None)
def tiny(arch, **overrides):
    return mi.zoo.tiny_model(arch, padding_side="right", **overrides)


def batch(model, sources=SOURCES, targets=TARGETS):
    tok = model.tokenizer
    enc = tok(list(sources), return_tensors="pt", padding=True)
    dec = tok(list(targets), return_tensors="pt", padding=True)
    return {**enc, "decoder_input_ids": dec["input_ids"], "decoder_attention_mask": dec["attention_mask"]}


def stack_paths(model):
    """Paths of the model's own encoder and decoder (found by identity, not by moe_interp)."""
    hf = model._module
    path = {id(m): n for n, m in hf.named_modules()}
    return path[id(hf.get_encoder())], path[id(hf.get_decoder())]


def stack_masks(model, inputs):
    """The oracle's masks: each stack's padding mask, keyed by the stack's path."""
    encoder, decoder = stack_paths(model)
    return {encoder: inputs["attention_mask"], decoder: inputs["decoder_attention_mask"]}


def _layer_path(router_path):
    """`"model.decoder.layers.1"` of `"model.decoder.layers.1.ffn.router"` (the oracle's layer names)."""
    return re.match(r"^(.*?\.\d+)\.", router_path)[1]


def by_layer_path(model, stats):
    """`{layer path: counts}` of per-stack stats, named as the oracle names layers."""
    spec = mi.describe(model)
    return {_layer_path(spec.routers[spec.position(layer)]): counts
            for part in stats.values() for layer, counts in zip(part.layers, part.count[0])}


def record(model, inputs, *interventions):
    with mi.trace(model, inputs, mi.RouterRecord(), *interventions) as tr:
        pass
    return tr.routing_by_stack


# ------------------------------------------------------------------------------------ describe
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_describe_names_the_encoder_and_decoder_layers(arch):
    spec = mi.describe(tiny(arch))
    # 4 + 4 layers, every second one sparse: encoder layers 1, 3 and decoder layers 1, 3
    assert spec.num_layers == 8 and spec.moe_layers == (1, 3, 5, 7)
    assert spec.layer_names == ("encoder.1", "encoder.3", "decoder.1", "decoder.3")
    assert spec.stacks == ("encoder", "encoder", "decoder", "decoder")
    assert spec.top_k == {"nllb-moe": 2, "switch_transformers": 1}[arch] and spec.num_experts == 8


def test_an_unrepaired_nllb_moe_is_refused_naming_the_repair():
    hf = mi.zoo.model_class("nllb-moe")._from_config(mi.zoo.tiny_config("nllb-moe")).eval()
    # what transformers 5's NLLB-MoE experts compute: experts 0 and 1 only, whatever the router chose
    enc = mi.zoo.byte_tokenizer("right")(SOURCES, return_tensors="pt", padding=True)
    with experts_received(hf, {"model.encoder": enc["attention_mask"], "model.decoder": enc["attention_mask"]}) as seen:
        with torch.no_grad():
            hf(**enc, decoder_input_ids=enc["input_ids"], decoder_attention_mask=enc["attention_mask"])
    assert all(int(counts[2:].sum()) == 0 and int(counts[:2].sum()) > 0 for counts in seen.values())
    with pytest.raises(mi.UnsupportedModelError, match=r"repair_nllb_moe\(hf_model\), then mi.wrap"):
        mi.describe(hf)
    assert mi.arch.repair_nllb_moe(hf) == 4 and mi.describe(hf).moe_layers == (1, 3, 5, 7)


# ------------------------------------------------------------------------------------ recording
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_each_stack_records_exactly_what_its_experts_computed(arch):
    model = tiny(arch)
    inputs = batch(model)
    with experts_received(model, stack_masks(model, inputs)) as seen:
        stats = record(model, inputs)
    assert list(stats) == ["encoder", "decoder"]
    assert stats["encoder"].layers == (1, 3) and stats["decoder"].layers == (5, 7)
    assert stats["decoder"].stacks == ("decoder", "decoder")
    # each stack counts its own real tokens: the sources, the teacher-forced targets
    assert stats["encoder"].tokens.tolist() == [int(inputs["attention_mask"].sum())]
    assert stats["decoder"].tokens.tolist() == [int(inputs["decoder_attention_mask"].sum())]
    recorded = by_layer_path(model, stats)
    assert set(recorded) == set(seen)
    for layer, counts in recorded.items():
        assert torch.equal(counts, seen[layer]), layer


def test_mi_load_reads_an_encoder_decoder_directory_as_a_seq2seq_model(tmp_path):
    """nnsight 0.8.1 loads a name through a pipeline task, and transformers 5 has none for encoder-decoder
    LMs: `mi.load(directory)` of Switch built `AutoModelForCausalLM` and failed. It now loads the seq2seq
    class, records what its experts computed, and (`dispatch=False`) builds it on meta with its id kept."""
    saved = tiny("switch_transformers")
    saved._module.save_pretrained(tmp_path)
    saved.tokenizer.save_pretrained(tmp_path)
    model = mi.load(tmp_path, dtype=torch.float32)
    assert type(model._module).__name__ == "SwitchTransformersForConditionalGeneration"
    assert all(torch.equal(a, b) for a, b in zip(model._module.parameters(), saved._module.parameters()))
    inputs = batch(model)
    with experts_received(model, stack_masks(model, inputs)) as seen:
        stats = record(model, inputs)
    recorded = by_layer_path(model, stats)
    assert set(recorded) == set(seen) and all(torch.equal(recorded[k], seen[k]) for k in seen)
    empty = mi.load(tmp_path, dispatch=False)
    assert next(empty._module.parameters()).device == torch.device("meta") and empty.repo_id == str(tmp_path)
    assert mi.describe(empty).moe_layers == mi.describe(saved).moe_layers
    with pytest.raises(ValueError, match="takes no task="):
        mi.load(tmp_path, task="fill-mask")


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_stack_counts_do_not_depend_on_padding(arch):
    model = tiny(arch)
    together = record(model, batch(model))
    alone = [record(model, batch(model, [s], [t])) for s, t in zip(SOURCES, TARGETS)]
    for stack in ("encoder", "decoder"):
        assert torch.equal(together[stack].count, sum(a[stack].count for a in alone))
        assert torch.equal(together[stack].tokens, sum(a[stack].tokens for a in alone))


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_each_invoke_is_a_group_of_both_stacks(arch):
    """Two invokes (padded together by nnsight) give the counts of two separate traces."""
    model = tiny(arch)
    first, second = batch(model, SOURCES[:2], TARGETS[:2]), batch(model, SOURCES[2:], TARGETS[2:])
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(first, group="a"):
            pass
        with tr.invoke(second, group="b"):
            pass
    both = tr.routing_by_stack
    for stack in ("encoder", "decoder"):
        assert both[stack].languages == ("a", "b")
        for group, inputs in enumerate((first, second)):
            alone = record(model, inputs)[stack]
            assert torch.equal(both[stack].count[group], alone.count[0])
            assert int(both[stack].tokens[group]) == int(alone.tokens[0])


def test_trace_routing_of_a_two_stack_model_points_to_routing_by_stack():
    model = tiny("nllb-moe")
    with mi.trace(model, batch(model), mi.RouterRecord()) as tr:
        pass
    with pytest.raises(ValueError, match=r"tr.routing_by_stack\['encoder'\]"):
        tr.routing  # noqa: B018
    with pytest.raises(ValueError, match="per_token=False"):
        mi.trace(model, batch(model), mi.RouterRecord(per_token=True))


def test_stack_labels_survive_save_and_load(tmp_path):
    model = tiny("switch_transformers")
    decoder = record(model, batch(model))["decoder"]
    decoder.save(tmp_path / "decoder.routing")
    loaded = mi.RoutingStats.load(tmp_path / "decoder.routing")
    assert loaded.stacks == ("decoder", "decoder") and loaded.layers == (5, 7)
    assert torch.equal(loaded.count, decoder.count)
    assert loaded.select(layers="decoder").layers == (5, 7)


# --------------------------------------------------------------------- NLLB's language-code tokens
LANGUAGE_CODES = ("fra_Latn", "deu_Latn", "eng_Latn")


@functools.lru_cache(maxsize=None)
def with_language_codes():
    """A tiny NLLB-MoE whose tokenizer knows three language codes as special tokens (ids 259-261),
    with NLLB's layout: source `<code> text </s>`, decoder `</s> <code> text`."""
    model = mi.zoo.tiny_model("nllb-moe", padding_side="right", vocab_size=mi.zoo.VOCAB_SIZE + len(LANGUAGE_CODES))
    model.tokenizer.add_special_tokens({"additional_special_tokens": list(LANGUAGE_CODES)})
    return model


def coded_batch(model):
    return batch(model, ["fra_LatnBonjour le monde</s>", "deu_LatnGuten Tag</s>"],
                 ["</s>eng_LatnHello world", "</s>eng_LatnGood day"])


def _without(inputs, ids, key):
    """The oracle's mask: the stack's real tokens minus those whose id is in `ids`."""
    names = {"encoder": ("input_ids", "attention_mask"), "decoder": ("decoder_input_ids", "decoder_attention_mask")}
    tokens, mask = (inputs[name] for name in names[key])
    return mask * ~torch.isin(tokens, torch.tensor(ids))


@pytest.mark.parametrize("exclude, removed, fewer", [
    # padding, <s>, </s> and the three codes: per row, source code + </s>, target </s> + code
    ("special", (0, 1, 2, 259, 260, 261), {"encoder": 4, "decoder": 4}),
    ((261,), (261,), {"encoder": 0, "decoder": 2}),  # eng_Latn only: the target-language code
], ids=["special", "one code"])
def test_language_code_tokens_can_be_left_out_exactly(exclude, removed, fewer):
    model = with_language_codes()
    inputs = coded_batch(model)
    codes = model.tokenizer.convert_tokens_to_ids(list(LANGUAGE_CODES))
    assert codes == [259, 260, 261] and int(torch.isin(inputs["input_ids"], torch.tensor(codes)).sum()) == 2
    encoder, decoder = stack_paths(model)
    masks = {encoder: _without(inputs, removed, "encoder"), decoder: _without(inputs, removed, "decoder")}
    with experts_received(model, masks) as seen:
        with mi.trace(model, inputs, mi.RouterRecord(exclude_tokens=exclude)) as tr:
            pass
    stats = tr.routing_by_stack
    assert stats["encoder"].tokens.tolist() == [int(masks[encoder].sum())]
    assert stats["decoder"].tokens.tolist() == [int(masks[decoder].sum())]
    recorded = by_layer_path(model, stats)
    assert set(recorded) == set(seen)
    for layer, counts in recorded.items():
        assert torch.equal(counts, seen[layer]), layer
    kept = record(model, inputs)  # kept by default: every real token, the codes among them
    for stack in ("encoder", "decoder"):
        assert int(kept[stack].tokens) - int(stats[stack].tokens) == fewer[stack]


def test_language_codes_are_left_out_at_every_generated_step():
    """`mi.generate` with the target-language code forced as the first decoder token: the
    decoder counts every step but that one."""
    model = with_language_codes()
    prompt = model.tokenizer(["fra_LatnBonjour</s>"], return_tensors="pt")
    with mi.generate(model, prompt, mi.RouterRecord(exclude_tokens="special"), max_new_tokens=4, min_new_tokens=4,
                     forced_bos_token_id=261, do_sample=False) as gen:
        pass
    assert gen.output[0, :2].tolist() == [2, 261]  # the decoder start (</s>), then the forced code
    stats = gen.routing_by_stack
    assert stats["encoder"].tokens.tolist() == [prompt["input_ids"].shape[1] - 2]  # fra_Latn and </s> left out
    # the steps feed </s>, eng_Latn, then two generated tokens (special ones would be left out too)
    fed = gen.output[0, :-1]
    assert stats["decoder"].tokens.tolist() == [int((~torch.isin(fed, torch.tensor([0, 1, 2, 259, 260, 261]))).sum())]


# ------------------------------------------------------------------------ Switch: expert capacity
def _switch_choice(model, inputs, layer_path):
    """Per token, the expert Switch's router picks (argmax of its own linear map of the hidden
    states it received, by hand) and whether it fits the expert's capacity (first come, per
    sequence), from a hook on the router's input."""
    hf = model._module
    router = hf.get_submodule(f"{layer_path}.layer.1.mlp.router" if "encoder" in layer_path
                              else f"{layer_path}.layer.2.mlp.router")
    seen = []
    handle = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        handle.remove()
    logits = seen[-1].float() @ router.classifier.weight.float().T  # [B, S, E]
    chosen = logits.argmax(-1)
    one_hot = torch.nn.functional.one_hot(chosen, logits.shape[-1])
    kept = (one_hot.cumsum(1) * one_hot).sum(-1) <= router.expert_capacity
    return chosen, kept


def test_switch_tokens_past_an_experts_capacity_are_dropped_not_routed():
    model = mi.zoo.tiny_model("switch_transformers", padding_side="right", expert_capacity=2)
    inputs = batch(model)
    with experts_received(model, stack_masks(model, inputs)) as seen:
        stats = record(model, inputs)
    real = inputs["attention_mask"].bool()
    chosen, kept = _switch_choice(model, inputs, "encoder.block.1")
    expected = torch.bincount(chosen[real & kept], minlength=8)
    encoder = stats["encoder"]
    assert torch.equal(encoder.count[0, 0], expected) and torch.equal(seen["encoder.block.1"], expected)
    dropped = int(encoder.tokens) - int(encoder.count[0, 0].sum())  # top-1: one slot per token
    assert dropped == int((real & ~kept).sum()) > 0


# ------------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_generate_counts_the_encoder_once_and_the_decoder_at_every_step(arch):
    model = tiny(arch)
    prompt = model.tokenizer(["Guten Morgen"], return_tensors="pt")
    encoder, decoder = stack_paths(model)
    # one row, no padding: every source token is real, and each decoder step feeds one real token
    masks = {encoder: prompt["attention_mask"], decoder: torch.ones(1, 1, dtype=torch.long)}
    with experts_received(model, masks) as seen:
        # min_new_tokens: no end-of-sequence token (NLLB's is also its decoder start) ends a row early
        with mi.generate(model, prompt, mi.RouterRecord(), max_new_tokens=5, min_new_tokens=5,
                         do_sample=False) as gen:
            pass
    stats = gen.routing_by_stack
    steps = gen.output.shape[1] - 1  # the decoder start token, then one new token per step
    assert stats["encoder"].tokens.tolist() == [prompt["input_ids"].shape[1]]
    assert stats["decoder"].tokens.tolist() == [steps] and steps == 5
    recorded = by_layer_path(model, stats)
    for layer, counts in recorded.items():
        assert torch.equal(counts, seen[layer]), layer


# --------------------------------------------------------------------- interventions on a stack
def _router_inputs(model, inputs, router_path):
    seen = []
    router = model._module.get_submodule(router_path)
    handle = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return seen, handle


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_a_decoder_steer_moves_the_decoder_routing_as_hand_written_maths_says(arch):
    """Additive steer of decoder layer 5 (decoder.1) towards expert 6: the router's choice, by
    hand on the hidden states it received, is top-k of (logits + scale*s), and the experts
    computed exactly that; the encoder, which runs first, is untouched."""
    model = tiny(arch)
    spec = mi.describe(model)
    inputs = batch(model)
    router_path = spec.routers[spec.position(5)]
    steer = mi.LayerRouteSteer({5: {6: 1.0}}, scale=3.0, mode="additive")
    base = record(model, inputs)
    seen, handle = _router_inputs(model, inputs, router_path)
    try:
        with experts_received(model, stack_masks(model, inputs)) as received:
            steered = record(model, inputs, steer)
    finally:
        handle.remove()
    router = model._module.get_submodule(router_path)
    logits = seen[-1].float().reshape(-1, seen[-1].shape[-1]) @ router.classifier.weight.float().T
    logits[:, 6] += 3.0
    top = logits.topk(spec.top_k, dim=-1).indices
    real = inputs["decoder_attention_mask"].reshape(-1).bool()
    expected = torch.bincount(top[real].reshape(-1), minlength=8)
    layer_path = _layer_path(router_path)
    assert torch.equal(steered["decoder"].count[0, 0], expected)
    assert torch.equal(received[layer_path], expected)
    assert int(expected[6]) > int(base["decoder"].count[0, 0, 6])
    assert torch.equal(steered["encoder"].count, base["encoder"].count)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_rerouting_an_encoder_expert_leaves_it_unused_and_picks_the_next_best(arch):
    model = tiny(arch)
    spec = mi.describe(model)
    inputs = batch(model)
    base = record(model, inputs)
    ablated = int(base["encoder"].count[0, 0].argmax())  # the busiest expert of encoder layer 1
    router_path = spec.routers[spec.position(1)]
    seen, handle = _router_inputs(model, inputs, router_path)
    try:
        with experts_received(model, stack_masks(model, inputs)) as received:
            stats = record(model, inputs, mi.ExpertAblate({1: [ablated]}))
    finally:
        handle.remove()
    router = model._module.get_submodule(router_path)
    logits = seen[-1].float().reshape(-1, seen[-1].shape[-1]) @ router.classifier.weight.float().T
    logits[:, ablated] = float("-inf")
    top = logits.topk(spec.top_k, dim=-1).indices
    real = inputs["attention_mask"].reshape(-1).bool()
    expected = torch.bincount(top[real].reshape(-1), minlength=8)
    assert int(expected[ablated]) == 0 and int(received[_layer_path(router_path)][ablated]) == 0
    assert torch.equal(stats["encoder"].count[0, 0], expected)


def test_switch_router_view_reads_indices_and_refuses_to_take_them():
    # Switch hands its experts a [tokens, experts] dispatch mask, dropped tokens all-zero: the
    # view reads -1 for them (tests/test_reader.py checks values), and takes no indices.
    from moe_interp import RouterAccessError

    model = tiny("switch_transformers")
    with torch.no_grad(), model.trace(batch(model)):
        indices = model.moe[0].router.indices.save()
    assert indices.shape == (batch(model)["input_ids"].numel(), 1)
    with pytest.raises(RouterAccessError, match=r"dispatch mask .*router\.logits"):
        with torch.no_grad(), model.trace(batch(model)):
            model.moe[0].router.indices = model.moe[0].router.indices
