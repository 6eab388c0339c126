"""`mi.profile` on encoder-decoder MoE models (issue 27, section 1): NLLB-MoE and Switch
Transformers, one `RoutingStats` per stack, the decoder teacher-forced on the text itself or
fed a pair's target.

Oracle: `conftest.experts_received` (torch hooks on each expert submodule: the rows it really
computed), run on the Hugging Face model itself, one text at a time (no padding at all), with
the decoder's inputs made by the model's own code (`prepare_decoder_input_ids_from_labels`
for Switch, `modeling_nllb_moe.shift_tokens_right` for NLLB-MoE), not by moe_interp.
"""

import functools
import re

import pytest
import torch
from transformers.models.nllb_moe import modeling_nllb_moe

import moe_interp as mi
from conftest import experts_received

SEQ2SEQ = ("nllb-moe", "switch_transformers")
CORPUS = {"eng": ["Hello there, how are you?", "ok", "The cat sat on the mat."],
          "deu": ["Guten Morgen, liebe Welt", "ja", "Hallo", "Das ist ein Haus."]}


@functools.lru_cache(maxsize=None)
def tiny(arch, **overrides):
    return mi.zoo.tiny_model(arch, **overrides)


def decoder_ids(model, labels):
    """The model's own teacher forcing of `labels` ([1, n] ids): what it feeds its decoder."""
    hf = model._module
    if hasattr(hf, "prepare_decoder_input_ids_from_labels"):  # Switch (T5's _shift_right)
        return hf.prepare_decoder_input_ids_from_labels(labels=labels)
    return modeling_nllb_moe.shift_tokens_right(labels, hf.config.pad_token_id, hf.config.decoder_start_token_id)


def stack_paths(model):
    hf = model._module
    path = {id(m): n for n, m in hf.named_modules()}
    return path[id(hf.get_encoder())], path[id(hf.get_decoder())]


def layer_names(model):
    """`{global layer: the oracle's layer path}`, e.g. `{1: "encoder.block.1", ...}`."""
    spec = mi.describe(model)
    return {layer: re.match(r"^(.*?\.\d+)\.", router)[1] for layer, router in zip(spec.moe_layers, spec.routers)}


def oracle(model, source_ids, target_ids):
    """`{layer path: [E] counts}`, tokens per stack, of one (source, target) pair run alone."""
    labels = torch.tensor([target_ids])
    inputs = {"input_ids": torch.tensor([source_ids]), "decoder_input_ids": decoder_ids(model, labels),
              "attention_mask": torch.ones(1, len(source_ids), dtype=torch.long)}
    inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
    encoder, decoder = stack_paths(model)
    masks = {encoder: inputs["attention_mask"], decoder: inputs["decoder_attention_mask"]}
    with experts_received(model, masks) as seen:
        with torch.no_grad():
            model._module(**inputs)
    return seen, {"encoder": len(source_ids), "decoder": inputs["decoder_input_ids"].shape[1]}


def check_items(model, by_stack, pairs):
    """Every item's per-stack counts and tokens equal the oracle's for that pair alone."""
    names = layer_names(model)
    for item, (source, target) in enumerate(pairs):
        seen, tokens = oracle(model, source, target)
        for stack in ("encoder", "decoder"):
            stats = by_stack[stack]
            assert int(stats.item_tokens[item]) == tokens[stack], (stack, item)
            for column, layer in enumerate(stats.layers):
                assert torch.equal(stats.item_count[item, column], seen[names[layer]]), (stack, item, layer)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_each_stack_counts_every_text_as_its_experts_computed_it(arch):
    """Plain texts: the encoder reads the text, the decoder the same tokens teacher-forced (the
    model's own shift of them as labels); batches of 3 pad texts of different lengths together."""
    model = tiny(arch)
    by_stack = mi.profile(model, CORPUS, batch_size=3, progress=False)
    assert list(by_stack) == ["encoder", "decoder"]
    encoder, decoder = by_stack["encoder"], by_stack["decoder"]
    assert encoder.layers == (1, 3) and decoder.layers == (5, 7)
    assert encoder.stacks == ("encoder",) * 2 and decoder.stacks == ("decoder",) * 2
    assert encoder.languages == decoder.languages == ("eng", "deu")
    ids = [model.tokenizer(text)["input_ids"] for texts in CORPUS.values() for text in texts]
    check_items(model, by_stack, [(i, i) for i in ids])
    for stats in (encoder, decoder):  # per language: the sum of its items
        assert stats.item_language.tolist() == [0, 0, 0, 1, 1, 1, 1]
        assert torch.equal(stats.count[0], stats.item_count[:3].long().sum(0))
        assert torch.equal(stats.count[1], stats.item_count[3:].long().sum(0))
        assert stats.tokens.tolist() == [sum(map(len, ids[:3])), sum(map(len, ids[3:]))]
    assert decoder.select(layers="decoder").layers == (5, 7)
    # per-item counts: the analyses' bootstrap intervals work on each stack
    assert encoder.bootstrap("divergence", resamples=20) is not None


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_batching_and_padding_side_do_not_change_a_stack_profile(arch):
    alone = mi.profile(tiny(arch), CORPUS, batch_size=1, progress=False)
    left = mi.profile(tiny(arch, padding_side="left"), CORPUS, batch_size=4, progress=False)
    for stack in ("encoder", "decoder"):
        assert torch.equal(alone[stack].item_count, left[stack].item_count)
        assert torch.equal(alone[stack].item_tokens, left[stack].item_tokens)


LANGUAGE_CODES = ("fra_Latn", "deu_Latn", "eng_Latn")


@functools.lru_cache(maxsize=None)
def with_language_codes():
    """A tiny NLLB-MoE whose tokenizer knows three language codes as special tokens (259-261)."""
    model = mi.zoo.tiny_model("nllb-moe", vocab_size=mi.zoo.VOCAB_SIZE + len(LANGUAGE_CODES))
    model.tokenizer.add_special_tokens({"additional_special_tokens": list(LANGUAGE_CODES)})
    return model


PAIRS = {("fra", "eng"): [("fra_LatnBonjour le monde</s>", "eng_LatnHello world</s>"),
                          ("fra_LatnMerci</s>", "eng_LatnThank you</s>")],
         ("deu", "eng"): [("deu_LatnGuten Tag</s>", "eng_LatnGood day</s>")],
         ("fra", "deu"): [("fra_LatnOui</s>", "deu_LatnJa</s>")]}


def test_parallel_pairs_group_the_encoder_by_source_and_the_decoder_by_target():
    model = with_language_codes()
    tok = model.tokenizer
    by_stack = mi.profile(model, PAIRS, batch_size=2, progress=False)
    encoder, decoder = by_stack["encoder"], by_stack["decoder"]
    assert encoder.languages == ("fra", "deu") and decoder.languages == ("eng", "deu")
    assert encoder.item_language.tolist() == [0, 0, 1, 0] and decoder.item_language.tolist() == [0, 0, 0, 1]
    pairs = [(tok(s)["input_ids"], tok(t)["input_ids"]) for texts in PAIRS.values() for s, t in texts]
    # the language codes and </s> are real tokens, counted as mi.RouterRecord() counts them
    assert tok("fra_LatnOui</s>")["input_ids"] == [259, 82, 120, 108, 2]
    check_items(model, by_stack, pairs)
    assert encoder.tokens.tolist() == [sum(len(s) for s, _ in pairs[:2]) + len(pairs[3][0]), len(pairs[2][0])]
    assert decoder.tokens.tolist() == [sum(len(t) for _, t in pairs[:3]), len(pairs[3][1])]
    assert torch.equal(decoder.count[1], decoder.item_count[3].long())


def test_udhr_pairs_profile_the_encoder_by_source_and_the_decoder_by_target_language():
    """The UDHR is parallel: pairs of the same article in two languages. The encoder reads only
    the sources, so its stats equal a plain profile of the sources; the decoder's one target
    language collects both source languages' pairs."""
    model = tiny("nllb-moe", max_position_embeddings=512)  # the longest held-out text has 474 bytes
    u = mi.datasets.udhr(["fra", "deu", "eng"], split="heldout")
    pairs = {(s, "eng"): list(zip(u[s], u["eng"])) for s in ("fra", "deu")}
    by_stack = mi.profile(model, pairs, batch_size=8, progress=False)
    sources = mi.profile(model, {s: u[s] for s in ("fra", "deu")}, batch_size=8, progress=False)
    assert by_stack["encoder"].languages == ("fra", "deu") and by_stack["decoder"].languages == ("eng",)
    assert torch.equal(by_stack["encoder"].item_count, sources["encoder"].item_count)
    assert torch.equal(by_stack["encoder"].count, sources["encoder"].count)
    eng = [len(ids) for ids in model.tokenizer(u["eng"])["input_ids"]]
    assert by_stack["decoder"].item_tokens.tolist() == eng + eng
    assert by_stack["decoder"].tokens.tolist() == [2 * sum(eng)]
    # the same English targets, routed differently through cross-attention to different sources
    assert not torch.equal(by_stack["decoder"].item_count[:12], by_stack["decoder"].item_count[12:])


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_an_ablation_during_a_stack_profile_empties_that_expert_in_its_stack_only(arch):
    model = tiny(arch)
    base = mi.profile(model, CORPUS, progress=False)
    expert = int(base["encoder"].count[:, 0].sum(0).argmax())  # the busiest expert of encoder layer 1
    ablated = mi.profile(model, CORPUS, mi.ExpertAblate({1: [expert]}), progress=False)
    assert int(ablated["encoder"].item_count[:, 0, expert].sum()) == 0
    assert int(base["encoder"].item_count[:, 0, expert].sum()) > 0
    assert torch.equal(ablated["encoder"].item_tokens, base["encoder"].item_tokens)
    assert ablated["encoder"].meta["interventions"] == [repr(mi.ExpertAblate({1: [expert]}))]


def test_a_long_text_is_windowed_in_both_stacks():
    """NLLB-MoE with 8 positions (Switch has relative positions: no maximum length): each
    window runs as its own row, teacher-forced on its own tokens, and adds up to the text."""
    model = tiny("nllb-moe", max_position_embeddings=8)
    text = "abcdefghijklmnopqrst"  # 20 tokens: windows of 8, 8, 4
    by_stack = mi.profile(model, {"eng": [text]}, progress=False)
    ids = model.tokenizer(text)["input_ids"]
    windows = [ids[i : i + 8] for i in range(0, 20, 8)]
    expected = {}
    for window in windows:
        seen, _ = oracle(model, window, window)
        for layer, counts in seen.items():
            expected[layer] = expected.get(layer, 0) + counts
    names = layer_names(model)
    for stack in ("encoder", "decoder"):
        assert by_stack[stack].item_tokens.tolist() == [20]
        for column, layer in enumerate(by_stack[stack].layers):
            assert torch.equal(by_stack[stack].item_count[0, column], expected[names[layer]])
    with pytest.raises(ValueError, match='long_texts="truncate"'):
        mi.profile(model, {("eng", "deu"): [(text, "x")]}, progress=False)


def test_a_two_stack_profile_resumes_from_its_checkpoint(tmp_path):
    model = tiny("switch_transformers")
    whole = mi.profile(model, CORPUS, batch_size=2, progress=False)
    path = tmp_path / "seq2seq.ckpt"
    mi.profile(model, CORPUS, batch_size=2, progress=False, checkpoint=path)
    resumed = mi.profile(model, CORPUS, batch_size=2, progress=False, checkpoint=path)
    for stack in ("encoder", "decoder"):
        assert torch.equal(resumed[stack].item_count, whole[stack].item_count)
        assert torch.equal(resumed[stack].gate_mass, whole[stack].gate_mass)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"decoder_input_ids": torch.tensor([[0, 5]])}, ValueError, r"builds the decoder's inputs itself.*pairs"),
    ({"corpus": {("fra", "eng"): ["Bonjour"]}}, TypeError, r"list of \(source text, target text\) pairs"),
    ({"corpus": {("fra", "eng"): [("a", "b")], "deu": ["c"]}}, TypeError, r"keyed by \(source language"),
], ids=["decoder input", "pair not a pair", "mixed keys"])
def test_bad_input_fails_early_naming_the_fix(kwargs, error, match):
    kwargs = dict(kwargs)
    corpus = kwargs.pop("corpus", CORPUS)
    with pytest.raises(error, match=match):
        mi.profile(tiny("switch_transformers"), corpus, progress=False, **kwargs)


def test_pairs_on_a_causal_lm_are_refused_naming_the_plain_corpus():
    with pytest.raises(ValueError, match=r"needs an encoder-decoder model.*\{language: \[texts\]\}"):
        mi.profile(tiny("qwen3_moe"), {("fra", "eng"): [("Bonjour", "Hello")]}, progress=False)


def test_the_cli_profiles_an_encoder_decoder_model_into_one_directory_per_stack(tmp_path, capsys):
    from moe_interp.cli import main

    out = tmp_path / "switch.routing"
    assert main(["profile", "--model", "tiny:switch_transformers", "--languages", "eng,deu", "--split", "heldout",
                 "--batch-size", "8", "--out", str(out)]) == 0
    encoder, decoder = (mi.RoutingStats.load(out / stack) for stack in ("encoder", "decoder"))
    assert encoder.layers == (1, 3) and decoder.stacks == ("decoder", "decoder")
    corpus = mi.datasets.udhr(["eng", "deu"], split="heldout")
    direct = mi.profile(tiny("switch_transformers"), corpus, batch_size=8, progress=False)
    assert torch.equal(encoder.item_count, direct["encoder"].item_count)
    assert torch.equal(decoder.item_count, direct["decoder"].item_count)
    assert "wrote" in capsys.readouterr().out
