"""The scoring workflows on encoder-decoder MoE models (issue 27, section 1): `mi.evaluate.text_nll`,
`mi.ablation_grid`, `mi.steering_eval`, `routing_shift`, `mi.Experiment` and the CLI's `ablate` /
`steer`, on Switch Transformers and a repaired NLLB-MoE.

Oracles, sharing no code with moe_interp: Hugging Face's own loss (`model(input_ids=...,
labels=...).loss`, the decoder inputs made by the model from the labels) on each text alone, with
the intervention written by hand as a torch forward hook on each router's `classifier` (the
linear layer that makes the router logits: a rerouted expert's logit set to -inf, a steered one
`z + scale * s * |z|`); and `conftest.experts_received` (hooks on each expert submodule: the
tokens it really computed), per stack. Layers are found by module name, not by `mi.describe`.
"""

import functools
import math
import re

import pytest
import torch

import moe_interp as mi
from conftest import experts_received

SEQ2SEQ = ("nllb-moe", "switch_transformers")
_CLASSIFIER = re.compile(r"^(.*?(encoder|decoder)\.(?:block|layers)\.(\d+))\..*router\.classifier$")


@functools.lru_cache(maxsize=None)
def tiny(arch, **overrides):
    return mi.zoo.tiny_model(arch, **overrides)


@functools.lru_cache(maxsize=None)
def udhr(split):
    return mi.datasets.udhr(["eng", "deu", "fin"], split=split)


def classifiers(model):
    """`{global layer: (router classifier module, the oracle's layer path)}` by module name:
    encoder layers numbered first, decoder layers after them."""
    hf = model._module
    encoder = hf.get_encoder()
    n_encoder = len(getattr(encoder, "block", None) or encoder.layers)
    out = {}
    for name, module in hf.named_modules():
        match = _CLASSIFIER.match(name)
        if match:
            layer = int(match[3]) + (n_encoder if match[2] == "decoder" else 0)
            out[layer] = (module, match[1])
    return out


def stack_paths(model):
    hf = model._module
    path = {id(m): n for n, m in hf.named_modules()}
    return path[id(hf.get_encoder())], path[id(hf.get_decoder())]


def edit_hooks(model, ablate=None, steer=None, scale=0.0):
    """Hand-written router edits as forward hooks on the classifiers: `ablate` `{layer: [experts]}`
    (logit -inf), `steer` `{layer: {expert: s}}` (relative: z + scale * s * |z|)."""
    handles = []
    for layer, (module, _) in classifiers(model).items():
        def hook(_module, _args, logits, layer=layer):
            logits = logits.clone()
            for expert, s in ((steer or {}).get(layer) or {}).items():
                logits[..., expert] = logits[..., expert] + scale * s * logits[..., expert].abs()
            for expert in (ablate or {}).get(layer, ()):
                logits[..., expert] = float("-inf")
            return logits
        handles.append(module.register_forward_hook(hook))
    return handles


def hf_nll(model, text, **edits):
    """Hugging Face's loss times the number of label tokens, of one text (or (source, target) pair)
    alone: the encoder reads the source, the labels are the target's tokens (the text's own for a
    plain text); the model makes its decoder inputs from the labels itself."""
    source, target = (text, text) if isinstance(text, str) else text
    tok = model.tokenizer
    ids = torch.tensor([tok(source)["input_ids"]])
    labels = torch.tensor([tok(text_target=target)["input_ids"] if not isinstance(text, str) else ids[0].tolist()])
    handles = edit_hooks(model, **edits)
    try:
        with torch.no_grad():
            out = model._module(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                                output_router_logits=False)
    finally:
        for handle in handles:
            handle.remove()
    return float(out.loss) * labels.shape[1]


def hf_received(model, text, **edits):
    """`{layer path: [E] counts}` the experts computed for one plain text alone (encoder: the text,
    decoder: the text teacher-forced), under hand-written edits."""
    tok = model.tokenizer
    ids = torch.tensor([tok(text)["input_ids"]])
    hf = model._module
    if hasattr(hf, "prepare_decoder_input_ids_from_labels"):
        decoder = hf.prepare_decoder_input_ids_from_labels(labels=ids)
    else:
        from transformers.models.nllb_moe import modeling_nllb_moe

        decoder = modeling_nllb_moe.shift_tokens_right(ids, hf.config.pad_token_id, hf.config.decoder_start_token_id)
    encoder_path, decoder_path = stack_paths(model)
    ones = torch.ones_like(ids)
    handles = edit_hooks(model, **edits)
    try:
        with experts_received(model, {encoder_path: ones, decoder_path: ones}) as seen, torch.no_grad():
            hf(input_ids=ids, attention_mask=ones, decoder_input_ids=decoder, decoder_attention_mask=ones)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def package_received(model, text, *interventions):
    """What the experts computed while `mi.evaluate.text_nll` scored one text alone."""
    n = len(model.tokenizer(text)["input_ids"])
    encoder_path, decoder_path = stack_paths(model)
    ones = torch.ones(1, n, dtype=torch.long)
    with experts_received(model, {encoder_path: ones, decoder_path: ones}) as seen:
        row, = mi.evaluate.text_nll(model, [text], *interventions, batch_size=1)
    return seen, row


def bits(nll, text):
    target = text if isinstance(text, str) else text[1]
    return nll / math.log(2) / len(target.encode())


TEXTS = ["Hello there, how are you?", "ok", ("Bonjour le monde", "Hello world"), "Guten Morgen, liebe Welt"]


# ------------------------------------------------------------------------------------------ text_nll
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_text_nll_is_hugging_faces_own_loss_of_each_text_alone(arch, padding_side):
    """Batches of 3 mix lengths (and a pair) on either padding side: each row is HF's loss of that
    text alone times its label tokens, every token of the text (or target) predicted."""
    model = tiny(arch, padding_side=padding_side)
    rows = mi.evaluate.text_nll(model, TEXTS, batch_size=3)
    for text, row in zip(TEXTS, rows):
        target = text if isinstance(text, str) else text[1]
        n = len(model.tokenizer(text_target=target)["input_ids"])
        assert row["tokens"] == n and row["bytes"] == len(target.encode())
        assert row["nll"] == pytest.approx(hf_nll(model, text), rel=1e-5)
        assert row["bits_per_byte"] == pytest.approx(bits(hf_nll(model, text), text), rel=1e-5)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_an_ablation_in_both_stacks_is_hf_loss_with_those_router_logits_at_minus_inf(arch):
    model = tiny(arch)
    text = TEXTS[0]
    seen = hf_received(model, text)
    names = {layer: path for layer, (_, path) in classifiers(model).items()}
    # the busiest expert of encoder layer 1 and of decoder layer 5 (global indices)
    ablate = {layer: [int(seen[names[layer]].argmax())] for layer in (1, 5)}
    got, row = package_received(model, text, mi.ExpertAblate(ablate))
    want = hf_received(model, text, ablate=ablate)
    for layer in (1, 5):
        assert int(got[names[layer]][ablate[layer][0]]) == 0  # the ablated expert received nothing, per stack
    for path in want:
        assert torch.equal(got[path], want[path]), path
    assert row["nll"] == pytest.approx(hf_nll(model, text, ablate=ablate), rel=1e-5)
    assert abs(row["nll"] - hf_nll(model, text)) > 1e-3  # and the ablation changed the loss


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_a_steer_in_both_stacks_is_hf_loss_with_the_steered_router_logits(arch):
    model = tiny(arch)
    text = TEXTS[3]
    steer = {3: {2: 0.8, 6: 0.3}, 7: {4: 0.6}}
    got, row = package_received(model, text, mi.LayerRouteSteer(steer, scale=3.0))
    want = hf_received(model, text, steer=steer, scale=3.0)
    plain = hf_received(model, text)
    assert any(not torch.equal(want[path], plain[path]) for path in want)  # the steer moved routing
    for path in want:
        assert torch.equal(got[path], want[path]), path
    assert row["nll"] == pytest.approx(hf_nll(model, text, steer=steer, scale=3.0), rel=1e-5)


def test_pairs_on_a_causal_model_are_refused_naming_the_plain_texts():
    with pytest.raises(ValueError, match="encoder-decoder model.*pass the texts themselves"):
        mi.evaluate.text_nll(tiny("qwen3_moe"), [("Bonjour", "Hello")])


def test_choice_accuracy_scores_each_choice_as_the_decoders_target_given_the_context():
    model = tiny("switch_transformers")
    item = {"context": "2 + 2 =", "choices": [" 4", " five"], "answer": 0}
    row, = mi.evaluate.choice_accuracy(model, [item])
    assert row["scores"] == pytest.approx([-hf_nll(model, ("2 + 2 =", c)) for c in item["choices"]], rel=1e-5)


# ------------------------------------------------------------------------------------- ablation_grid
def small(split, n, size=120):
    return {lang: [t[:size] for t in texts[:n]] for lang, texts in udhr(split).items()}


@functools.lru_cache(maxsize=None)
def profiled(arch):
    return mi.profile(tiny(arch), small("train", 6), progress=False)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_ablation_grid_ablates_each_stacks_exclusive_experts_in_that_stacks_band(arch):
    model, stats = tiny(arch), profiled(arch)
    test = small("heldout", 2, 60)
    res = mi.ablation_grid(model, stats, test, ["eng", "deu", "fin"], ["eng"], bands=("early-third", "late-third"),
                           k=2, threshold=0.2, controls=2, resamples=50, progress=False)
    # a band is that band of each stack: the encoder's layers 1, 3 and the decoder's 5, 7
    assert res.layers == {"early-third": (1, 5), "late-third": (3, 7)}
    assert res.stacks == {1: "encoder", 3: "encoder", 5: "decoder", 7: "decoder"}
    for band, layers in res.layers.items():
        chosen = res.sets[f"ablate:eng:{band}"]
        encoder = stats["encoder"].exclusive_experts("eng", k=2, threshold=0.2, layers=[layers[0]])
        decoder = stats["decoder"].exclusive_experts("eng", k=2, threshold=0.2, layers=[layers[1]])
        assert encoder.size and decoder.size  # both stacks ablate something here
        assert dict(chosen) == {**dict(encoder), **dict(decoder)}
        # every evaluated text's score is HF's loss under that ablation written by hand
        cell = res.frame[res.frame.condition == f"ablate:eng:{band}"]
        for row in cell.itertuples():
            text = test[row.language][row.item]
            assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, text, ablate=dict(chosen)), text), rel=1e-5)
    control = res.sets["control:eng:late-third:0"]
    assert set(control) == set(res.sets["ablate:eng:late-third"]) and control.size == res.experts[("eng", "late-third")]
    row = res.frame[res.frame.condition == "control:eng:late-third:0"].iloc[0]
    text = test["eng"][int(row["item"])]
    assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, text, ablate=dict(control)), text), rel=1e-5)
    for row in res.frame[res.frame.condition == "baseline"].itertuples():
        text = test[row.language][row.item]
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, text), text), rel=1e-5)
    verdicts = res.verdicts()
    assert verdicts.stacks.tolist() == [("encoder", "decoder")] * 2
    assert "early-third (encoder layer 1, decoder layer 5)" in res.summary().splitlines()[0]


def test_a_stack_band_ablates_that_stack_only():
    model, stats = tiny("switch_transformers"), profiled("switch_transformers")
    res = mi.ablation_grid(model, stats, small("heldout", 2, 60), ["eng", "fin"], ["eng"], bands=("decoder:late",),
                           k=2, threshold=0.2, controls=1, resamples=20, progress=False)
    assert res.layers == {"decoder:late": (7,)} and set(res.sets["ablate:eng:decoder:late"]) == {7}


@pytest.mark.parametrize("workflow", ["ablation_grid", "steering_eval"])
def test_one_stacks_statistics_are_refused_naming_the_per_stack_dict(workflow):
    model, stats = tiny("switch_transformers"), profiled("switch_transformers")
    test = small("heldout", 2, 60)
    dev = {lang: texts[6:8] for lang, texts in udhr("train").items()}

    def run(model, stats):
        if workflow == "ablation_grid":
            return mi.ablation_grid(model, stats, test, ["eng", "fin"], ["eng"], progress=False)
        return mi.steering_eval(model, stats, dev, test, ["deu"], progress=False)

    with pytest.raises(TypeError, match=r"chooses experts per stack.*\{stack: RoutingStats\} dict that mi.profile"):
        run(model, stats["decoder"])
    with pytest.raises(TypeError, match="one stack of MoE layers; pass one RoutingStats"):
        run(tiny("qwen3_moe"), stats)


# ------------------------------------------------------------------------------------ steering_eval
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_steering_eval_steers_each_stack_with_its_own_shared_experts(arch):
    model, stats = tiny(arch), profiled(arch)
    dev = {lang: [t[:60] for t in texts[6:8]] for lang, texts in udhr("train").items()}
    test = small("heldout", 3, 60)
    res = mi.steering_eval(model, stats, dev, test, ["deu"], scales=(0.0, 8.0), layers="late", k=3,
                           resamples=50, progress=False)
    assert res.steered_layers == (3, 7) and res.stacks == {1: "encoder", 3: "encoder", 5: "decoder", 7: "decoder"}
    # each stack's steer: the experts eng and deu share in that stack's statistics, its late band
    shared = {stack: stats[stack].shared_experts(("eng", "deu"), k=3, threshold=0.7, layers=[layer])
              for stack, layer in (("encoder", 3), ("decoder", 7))}
    strengths = {layer: dict(s.strengths[layer]) for s in shared.values() for layer in s}
    assert set(strengths) == {3, 7} and all(strengths.values())
    assert int(res.outcome[res.outcome.scale == 8.0].pairs.iloc[0]) == sum(s.size for s in shared.values())
    # each test text's gain is HF's loss without minus with the steer written by hand (bits/byte near 25
    # on a random tiny model, batched against alone: float32 rounding of ~1e-6 each)
    for item, text in enumerate(test["deu"]):
        gain = bits(hf_nll(model, text), text) - bits(hf_nll(model, text, steer=strengths, scale=8.0), text)
        assert res.gains[8.0][0][item] == pytest.approx(gain, rel=1e-4, abs=2e-5)
    assert max(abs(g) for g in res.gains[8.0][0]) > 1e-4  # the steer changed the scores, beyond the rounding
    shift = res.shift[res.shift.scale == 8.0].set_index("layer")
    assert shift["stack"].to_dict() == res.stacks
    n = sum(len(model.tokenizer(t)["input_ids"]) for t in test["deu"])
    assert shift.tokens.tolist() == [n] * 4  # each stack reads every token of each text
    assert float(shift.loc[1, "changed"]) == 0.0  # upstream of the encoder's steered layer: nothing moves
    assert float(shift.loc[3, "changed"]) > 0 and float(shift.loc[7, "changed"]) > 0
    assert "encoder L3, decoder L7" in res.summary()


def switch_top1(model, texts, steer=None, scale=0.0):
    """Per global layer of Switch: each real token's argmax expert and its router probability,
    from the (hand-edited) classifier logits captured by a hook (Switch routes top-1 by argmax;
    the texts are short, so no expert reaches its capacity)."""
    handles = edit_hooks(model, steer=steer, scale=scale)  # registered first: the grab below sees the edit
    out = {layer: [] for layer in classifiers(model)}
    try:
        for text in texts:
            ids = torch.tensor([model.tokenizer(text)["input_ids"]])
            decoder = model._module.prepare_decoder_input_ids_from_labels(labels=ids)
            logits = {}
            grab = [module.register_forward_hook(
                lambda _m, _a, value, layer=layer: logits.__setitem__(layer, value.detach()))
                for layer, (module, _) in classifiers(model).items()]
            try:
                with torch.no_grad():
                    model._module(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoder)
            finally:
                for handle in grab:
                    handle.remove()
            for layer, z in logits.items():
                probs = torch.softmax(z.reshape(-1, z.shape[-1]).double(), -1)
                out[layer].append(probs)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def test_routing_shift_on_switch_is_the_top1_change_and_mass_computed_by_hand():
    model = tiny("switch_transformers")
    texts = ["The cat sat on the mat.", "Hunde bellen laut.", "ok"]
    steer = {3: {2: 0.8, 6: 0.3}, 7: {4: 0.6}}
    shift = mi.experiments.routing_shift(model, texts, mi.LayerRouteSteer(steer, scale=3.0), batch_size=2)
    before, after = switch_top1(model, texts), switch_top1(model, texts, steer=steer, scale=3.0)
    for row in shift.itertuples():
        b, a = before[row.layer], after[row.layer]
        steered = torch.zeros(b.shape[-1], dtype=torch.bool)
        steered[list(steer.get(row.layer, {}))] = True
        b_top, a_top = b.argmax(-1), a.argmax(-1)
        mass = lambda top, p: (p.gather(-1, top[:, None])[:, 0] * steered[top]).sum()  # noqa: E731
        assert row.tokens == len(b_top) == sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
        assert row.changed == pytest.approx(float((b_top != a_top).double().mean()))
        assert row.mass_moved == pytest.approx(float((mass(a_top, a) - mass(b_top, b)) / len(b_top)), rel=1e-5)
    assert shift["stack"].tolist() == ["encoder", "encoder", "decoder", "decoder"]
    assert shift.changed.tolist()[0] == 0.0 and shift.changed.tolist()[1] > 0


# ---------------------------------------------------------------------------------------- Experiment
def test_an_experiment_grid_on_switch_scores_each_cell_as_hf_loss(tmp_path):
    model = tiny("switch_transformers")
    corpus = {"eng": ["The cat sat.", "Dogs bark."], "deu": ["Die Katze schläft."]}
    grid = {"baseline": [], "ablate": [mi.ExpertAblate({3: [0, 1], 5: [2]})]}
    frame = mi.Experiment(model, corpus, grid, path=tmp_path / "cells.jsonl", progress=False).run()
    again = mi.Experiment(model, corpus, grid, path=tmp_path / "cells.jsonl", progress=False).run()
    assert frame.equals(again)
    for row in frame.itertuples():
        text = corpus[row.language][row.item]
        ablate = {3: [0, 1], 5: [2]} if row.condition == "ablate" else None
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, text, ablate=ablate), text), rel=1e-5)


def test_an_experiment_grid_of_parallel_pairs_scores_each_target_given_its_source():
    model = tiny("nllb-moe")
    pairs = {("fra", "eng"): [("Bonjour le monde", "Hello world"), ("Merci", "Thank you")],
             ("deu", "eng"): [("Guten Tag", "Good day")]}
    grid = {"baseline": [], "ablate": [mi.ExpertAblate({1: [3], 7: [5]})]}
    frame = mi.Experiment(model, pairs, grid, progress=False).run()
    assert frame.language.unique().tolist() == ["fra-eng", "deu-eng"] and len(frame) == 6
    for row in frame.itertuples():
        pair = pairs[tuple(row.language.split("-"))][row.item]
        ablate = {1: [3], 7: [5]} if row.condition == "ablate" else None
        assert row.bytes == len(pair[1].encode())
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, pair, ablate=ablate), pair), rel=1e-5)
    with pytest.raises(ValueError, match="encoder-decoder model.*pass \\{language: \\[texts\\]\\}"):
        mi.Experiment(tiny("qwen3_moe"), pairs, grid)


# ----------------------------------------------------------------------------------------------- CLI
def test_the_cli_ablates_and_steers_an_encoder_decoder_model_from_its_profile_directory(tmp_path, capsys):
    from moe_interp.cli import main

    corpus = tmp_path / "texts"
    corpus.mkdir()
    for lang, texts in mi.datasets.udhr(["eng", "deu", "fin"], split="heldout").items():
        (corpus / f"{lang}.txt").write_text("\n\n".join(t[:50] for t in texts[:12]), encoding="utf-8")
    out = tmp_path / "switch.routing"
    common = ["--model", "tiny:switch_transformers", "--corpus", str(corpus)]
    assert main(["profile", *common, "--split", "train", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder", "encoder"]
    capsys.readouterr()
    assert main(["ablate", *common, "--stats", str(out), "--eval-languages", "eng,deu,fin", "--target-languages",
                 "eng", "--k", "2", "--threshold", "0.2", "--controls", "2", "--resamples", "50",
                 "--out", str(tmp_path / "ablation.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "early-third (encoder layer 1, decoder layer 5)" in printed and "eng (Indo-European), early-third" in printed
    assert main(["steer", *common, "--stats", str(out), "--languages", "deu", "--scales", "0,0.5", "--k", "3",
                 "--resamples", "50", "--out", str(tmp_path / "steering.jsonl")]) == 0
    assert "mean over the steered layers encoder L1, L3, decoder L5, L7" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["steer", *common, "--stats", str(out / "decoder"), "--languages", "deu",
              "--out", str(tmp_path / "s.jsonl")])
    error = capsys.readouterr().err
    assert "holds one stack's statistics" in error and "(it holds OUT/encoder, OUT/decoder)" in error
