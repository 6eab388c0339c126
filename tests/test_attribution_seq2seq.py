"""`mi.expert_attribution` on encoder-decoder MoE models (issue 27, section 1): Switch
Transformers and a repaired NLLB-MoE, one `ExpertAttribution` per stack, the metric the
decoder's teacher-forced loss of the text (plain texts) or of a pair's target.

Oracles share no code with the package: the Hugging Face model itself, one text at a time
(no padding), its own decoder inputs and loss (`labels=`: the model shifts them behind its
`decoder_start_token_id`, `CrossEntropyLoss` averages over them), and torch forward
pre-hooks on each experts module that rewrite the routing weights it receives (its own
argument): zeroed for a real drop, `W * factor + D` with a zero leaf `D` for the gradients,
taken by `torch.autograd.grad` by hand; Gauss-Legendre nodes from numpy.
"""

import contextlib
import functools
import math
import re

import numpy as np
import pytest
import torch

import moe_interp as mi
from moe_interp.experiments import _attribution as attribution

SEQ2SEQ = ("switch_transformers", "nllb-moe")
CORPUS = {"eng": ["Hello there, how are you?", "ok", "The cat sat on the mat."],
          "deu": ["Guten Morgen, liebe Welt", "ja", "Das ist ein Haus."]}
PAIRS = {("fra", "eng"): [("Bonjour le monde", "Hello world"), ("Merci", "Thank you")],
         ("deu", "eng"): [("Guten Tag", "Good day")],
         ("fra", "deu"): [("Oui", "Ja")]}
EXPERTS = {"SwitchTransformersExperts", "NllbMoeExperts"}


@functools.lru_cache(maxsize=None)
def tiny(arch, **overrides):
    return mi.zoo.tiny_model(arch, **overrides)  # NLLB-MoE repaired: its experts follow the router


# ---------------------------------------------------------------------------------- the oracle

def experts_by_layer(model):
    """`{global layer: experts module}` from the module names: encoder layer i is layer i,
    decoder layer i the encoder's layer count plus i."""
    hf = model._module
    encoder_layers = getattr(hf.config, "encoder_layers", None) or hf.config.num_layers
    out = {}
    for name, module in hf.named_modules():
        if type(module).__name__ in EXPERTS:
            stack, index = re.search(r"(encoder|decoder)\.(?:block|layers)\.(\d+)\.", name).groups()
            out[int(index) + (encoder_layers if stack == "decoder" else 0)] = module
    return dict(sorted(out.items()))


def dense(args):
    """`W[T, E]`: the weight the experts module gives each token at each expert (0: not sent)."""
    _, selected, weights = args
    if weights.shape[-1] == 1:  # Switch: a one-hot dispatch [T, 1, E] (all 0 past capacity), the weight [T, 1]
        return selected[:, 0, :] * weights
    return weights  # NLLB-MoE: the combine weights [T, E], 0 where the token is not sent


def with_dense(args, new):
    hidden, selected, weights = args
    if weights.shape[-1] == 1:
        return hidden, selected, (new * selected[:, 0, :]).sum(-1, keepdim=True)
    return hidden, selected, new


@contextlib.contextmanager
def rewritten(model, edit):
    """While open, each experts module receives `edit(layer, W)` (None: W unchanged)."""
    handles = []
    for layer, module in experts_by_layer(model).items():
        def pre(module, args, layer=layer):
            new = edit(layer, dense(args))
            return None if new is None else with_dense(args, new)
        handles.append(module.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hf_nll(model, source, target):
    """The summed NLL of `target` given `source` (token id lists): HF's own loss (its shift of
    the labels, the mean cross-entropy over them) times their number."""
    out = model._module(input_ids=torch.tensor([source]), labels=torch.tensor([target]), output_router_logits=False)
    return out.loss * len(target)


def oracle_probe(model, source, target, layers=None, factor=1.0):
    """One forward with `W * factor + D` at `layers` (default: all), `D` a zero leaf, and one
    backward: `nll, {layer: (W, -dL/dD * W)}` (per token and expert)."""
    leaves = {}

    def edit(layer, W):
        if layers is not None and layer not in layers:
            return None
        leaves[layer] = (W.detach(), torch.zeros_like(W, requires_grad=True))
        return W * factor + leaves[layer][1]
    with torch.enable_grad(), rewritten(model, edit):
        nll = hf_nll(model, source, target)
        grads = torch.autograd.grad(nll, [d for _, d in leaves.values()])
    return float(nll.detach()), {layer: (W, -(g * W)) for (layer, (W, _)), g in zip(leaves.items(), grads)}


def oracle_drop(model, source, target, layer, experts):
    """The summed NLL with `experts` of `layer` receiving weight 0 (a real drop)."""
    def edit(at, W):
        if at != layer:
            return None
        W = W.clone()
        W[:, list(experts)] = 0
        return W
    with torch.no_grad(), rewritten(model, edit):
        return float(hf_nll(model, source, target))


def tokens(model, corpus):
    """Per language (`{key: [(source ids, target ids, target bytes)]}`): a plain text is its own target."""
    tok = model.tokenizer
    return {key: [(tok(s)["input_ids"], tok(text_target=t)["input_ids"] if isinstance(key, tuple)
                   else tok(s)["input_ids"], len(t.encode())) for s, t in
                  (item if isinstance(key, tuple) else (item, item) for item in items)]
            for key, items in corpus.items()}


def group(corpus, stack):
    """`{language of this stack: [key, ...]}`: a pair's source for the encoder, target for the decoder."""
    out = {}
    for key in corpus:
        out.setdefault(key[stack == "decoder"] if isinstance(key, tuple) else key, []).append(key)
    return out


def expected(model, corpus, metric, passes):
    """`{stack: (effect [lang, layer, E], count, tokens, baseline)}` by hand, each text alone.
    `passes`: `[(layers, factor, node weight)]`; the taylor estimate is `[(None, 1.0, 1.0)]`."""
    layers = list(experts_by_layer(model))
    encoder_layers = getattr(model._module.config, "encoder_layers", None) or model._module.config.num_layers
    stacks = {"encoder": [l for l in layers if l < encoder_layers],
              "decoder": [l for l in layers if l >= encoder_layers]}
    E = model._module.config.num_experts
    ids = tokens(model, corpus)
    per_item = {}  # key, k -> (effect [layer, E], count [layer, E], source tokens, target tokens, loss, predicted)
    for key, items in ids.items():
        for k, (source, target, n_bytes) in enumerate(items):
            scale = 1.0 if metric == "nll" else 1 / math.log(2) / n_bytes
            effect = torch.zeros(len(layers), E, dtype=torch.float64)
            nll, probed = oracle_probe(model, source, target)
            count = torch.stack([(probed[l][0] != 0).sum(0) for l in layers])
            for chosen, factor, weight in passes:
                _, probed = oracle_probe(model, source, target, chosen, factor)
                for layer, (_, contribution) in probed.items():
                    effect[layers.index(layer)] += weight * contribution.sum(0).double()
            per_item[key, k] = (effect * scale, count, len(source), len(target), nll * scale, len(target))
    out = {}
    for stack, mine in stacks.items():
        rows = [layers.index(l) for l in mine]
        languages = group(corpus, stack)
        effect, count, n_tokens, baseline = [], [], [], []
        for keys in languages.values():
            entries = [per_item[key, k] for key in keys for k in range(len(corpus[key]))]
            norm = len(entries) if metric == "bpb" else sum(e[5] for e in entries)
            effect.append(sum(e[0][rows] for e in entries) / norm)
            count.append(sum(e[1][rows] for e in entries))
            n_tokens.append(sum(e[2 if stack == "encoder" else 3] for e in entries))
            baseline.append(sum(e[4] for e in entries) / norm)
        out[stack] = (tuple(languages), tuple(mine), torch.stack(effect), torch.stack(count), n_tokens,
                      torch.tensor(baseline, dtype=torch.float64))
    return out


def gauss(steps):
    x, w = np.polynomial.legendre.leggauss(steps)
    return [(float((1 + a) / 2), float(b / 2)) for a, b in zip(x, w)]


def path_passes(layers, steps, per_pass):
    return [(set(layers[i : i + per_pass]), 1 - s, a) for i in range(0, len(layers), per_pass) for s, a in gauss(steps)]


def assert_matches(result, want):
    assert list(result) == ["encoder", "decoder"]
    for stack, (languages, layers, effect, count, n_tokens, baseline) in want.items():
        got = result[stack]
        assert got.languages == languages and got.layers == layers and got.stacks == (stack,) * len(layers)
        assert torch.equal(got.count, count.long()), stack
        assert got.tokens.tolist() == n_tokens, stack
        torch.testing.assert_close(got.baseline, baseline, rtol=1e-5, atol=0)
        # float32 models, batched with padding against one text alone: differences at float32 rounding
        scale = float(effect.abs().max())
        assert scale > 0
        torch.testing.assert_close(got.effect, effect, rtol=1e-3, atol=1e-4 * scale)


# ----------------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("arch", SEQ2SEQ)
@pytest.mark.parametrize("metric", ["bpb", "nll"])
def test_taylor_equals_autograd_on_the_weights_each_experts_module_receives(arch, metric):
    """Both stacks, plain texts (the decoder reads the text teacher-forced): per (layer,
    expert), the first-order effect is `-dL/dW * W` summed over the tokens sent to it, from
    HF's own loss; counts and tokens per stack, baselines in the metric."""
    model = tiny(arch)
    result = mi.expert_attribution(model, CORPUS, metric=metric, method="taylor", batch_size=4, progress=False)
    assert_matches(result, expected(model, CORPUS, metric, [(None, 1.0, 1.0)]))


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_the_path_estimate_equals_its_quadrature_by_hand(arch):
    """The default path (the midpoint, two MoE layers a pass: the encoder's two, then the
    decoder's two) and two nodes a layer: every pass a forward with those layers' weights
    scaled by 1 - s and a backward, weighted by the node's weight."""
    model = tiny(arch)
    layers = list(experts_by_layer(model))
    result = mi.expert_attribution(model, CORPUS, batch_size=3, progress=False)
    assert result["decoder"].meta["passes"] == {"forward": 3, "backward": 2}
    assert_matches(result, expected(model, CORPUS, "bpb", path_passes(layers, 1, 2)))
    result = mi.expert_attribution(model, CORPUS, metric="nll", steps=2, layers_per_pass=1, batch_size=3,
                                   progress=False)
    assert_matches(result, expected(model, CORPUS, "nll", path_passes(layers, 2, 1)))


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_on_the_last_moe_layer_the_path_integral_is_the_real_drop_of_the_layer(arch):
    """No router follows the decoder's last MoE layer: along its path the loss is smooth, so
    8 Gauss-Legendre nodes integrate it, and the effects of its experts sum to the real
    change of the loss with the whole layer's weights zeroed (HF's loss, a hook)."""
    model = mi.zoo.tiny_model(arch)
    if arch == "nllb-moe":  # its drop moves the loss by 1e-3 of a nat: float64, to see it past float32 rounding
        model._module.double()
    texts = {"eng": CORPUS["eng"]}
    last = list(experts_by_layer(model))[-1]
    result = mi.expert_attribution(model, texts, metric="nll", steps=8, layers_per_pass=1, progress=False)
    E = model._module.config.num_experts
    real = base = predicted = 0
    for source, target, _ in tokens(model, texts)["eng"]:
        with torch.no_grad():
            base += float(hf_nll(model, source, target))
        real += oracle_drop(model, source, target, last, range(E))
        predicted += len(target)
    decoder = result["decoder"]
    total = float(decoder.effect[0, decoder.layers.index(last)].sum())
    assert abs((real - base) / predicted) > 1e-4
    assert total == pytest.approx((real - base) / predicted, rel=1e-6)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_validate_drops_each_cell_as_a_hook_on_hf_s_own_loss_does(arch):
    """`validate`'s real effects: the metric with one expert's weight zeroed where its experts
    module receives it, minus the metric without, per language of the stack."""
    model = tiny(arch)
    result = mi.expert_attribution(model, CORPUS, method="taylor", progress=False)
    ids = tokens(model, CORPUS)
    for stack in ("encoder", "decoder"):
        check = result[stack].validate(model, CORPUS, n=3, seed=1, progress=False)
        assert check.languages == ("eng", "deu") and all(layer in result[stack].layers for layer, _ in check.cells)
        for i, lang in enumerate(check.languages):
            for j, (layer, expert) in enumerate(check.cells):
                change = []
                for source, target, n_bytes in ids[lang]:
                    with torch.no_grad():
                        base = float(hf_nll(model, source, target))
                    change.append((oracle_drop(model, source, target, layer, [expert]) - base) / math.log(2) / n_bytes)
                assert float(check.real[i, j]) == pytest.approx(sum(change) / len(change), rel=1e-4, abs=1e-6)
        torch.testing.assert_close(check.estimate, torch.stack([
            torch.stack([result[stack].effect[i, result[stack].layers.index(l), e] for l, e in check.cells])
            for i in range(2)]).double())
    with pytest.raises(ValueError, match="leave path out"):
        result["encoder"].validate(model, CORPUS, n=2, path="x.jsonl", progress=False)


def test_nllb_pairs_group_the_encoder_by_source_and_the_decoder_by_target_language():
    """A translation corpus: the metric is each target's NLL given its source; the encoder's
    experts are attributed per source language, the decoder's per target language (as
    `mi.profile` groups a corpus of pairs), each language the mean over its pairs."""
    model = tiny("nllb-moe")
    result = mi.expert_attribution(model, PAIRS, method="taylor", batch_size=2, progress=False)
    assert result["encoder"].languages == ("fra", "deu") and result["decoder"].languages == ("eng", "deu")
    assert result["encoder"].meta["texts"] == {"fra": 3, "deu": 1} and result["decoder"].meta["texts"] == {"eng": 3,
                                                                                                             "deu": 1}
    assert_matches(result, expected(model, PAIRS, "bpb", [(None, 1.0, 1.0)]))
    check = result["decoder"].validate(model, PAIRS, n=2, progress=False)
    assert check.languages == ("eng", "deu")
    with pytest.raises(ValueError, match="computed on a corpus of pairs"):
        result["decoder"].validate(model, CORPUS, n=2, progress=False)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_a_text_s_effect_does_not_depend_on_its_batch(arch):
    """Each text alone, then the three in one batch, left-padded (both stacks' inputs)."""
    alone = [mi.expert_attribution(tiny(arch), {"x": [text]}, progress=False) for text in CORPUS["eng"]]
    left = mi.zoo.tiny_model(arch)
    left.tokenizer.padding_side = "left"
    together = mi.expert_attribution(left, {"x": CORPUS["eng"]}, batch_size=3, progress=False)
    for stack in ("encoder", "decoder"):
        mean = sum(a[stack].effect for a in alone) / len(alone)
        torch.testing.assert_close(together[stack].effect, mean, rtol=1e-4, atol=1e-4 * float(mean.abs().max()))
        assert torch.equal(together[stack].count, sum(a[stack].count for a in alone))


def test_a_two_stack_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    model = tiny("switch_transformers")
    whole = mi.expert_attribution(model, CORPUS, batch_size=2, progress=False)
    real_batch, calls = attribution._stack_batch, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(attribution, "_stack_batch", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        mi.expert_attribution(model, CORPUS, batch_size=2, progress=False, checkpoint=tmp_path / "a.ckpt")
    monkeypatch.setattr(attribution, "_stack_batch", real_batch)
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["done"] == 2
    resumed = mi.expert_attribution(model, CORPUS, batch_size=2, progress=False, checkpoint=tmp_path / "a.ckpt")
    for stack in ("encoder", "decoder"):
        for name in ("effect", "count", "tokens", "baseline"):
            assert torch.equal(getattr(resumed[stack], name), getattr(whole[stack], name)), (stack, name)
    with pytest.raises(mi.ResumeError, match="settings"):
        mi.expert_attribution(model, CORPUS, metric="nll", batch_size=2, progress=False, checkpoint=tmp_path / "a.ckpt")
    with pytest.raises(mi.ResumeError, match="corpus"):
        mi.expert_attribution(model, {"eng": CORPUS["eng"]}, batch_size=2, progress=False,
                              checkpoint=tmp_path / "a.ckpt")


def test_a_stack_attribution_selects_layers_by_stack_and_survives_a_file(tmp_path):
    model = tiny("switch_transformers")
    result = mi.expert_attribution(model, CORPUS, progress=False)
    decoder = result["decoder"]
    assert decoder.layers == (5, 7) and decoder.meta["stack"] == "decoder"
    assert set(decoder.top("eng", n=3, layers="decoder:late")) == {7}
    assert decoder._layers("decoder") == (5, 7)
    with pytest.raises(ValueError):
        decoder.top("eng", layers="encoder")
    loaded = mi.ExpertAttribution.load(decoder.save(tmp_path / "decoder.attribution"))
    assert loaded.stacks == ("decoder", "decoder") and torch.equal(loaded.effect, decoder.effect)
    assert "stacks=['decoder']" in repr(loaded)
    # ExpertSet layers are global: the drop it names runs on the model
    with torch.no_grad(), mi.trace(model, "Hello", mi.ExpertAblate(decoder.top("eng", 2), mode="drop"),
                                   decoder_input_ids=torch.tensor([[0]])):
        pass


@pytest.mark.parametrize("corpus, error, match", [
    ({"eng": ["Hello", ""]}, ValueError, r"corpus\['eng'\]\[1\] has no tokens"),
    ({("fra", "eng"): [("Bonjour", "")]}, ValueError, r"has no tokens"),
    ({("fra", "eng"): ["Bonjour"]}, TypeError, r"list of \(source text, target text\) pairs"),
], ids=["empty text", "empty target", "pair not a pair"])
def test_bad_input_fails_early_naming_the_fix(corpus, error, match):
    with pytest.raises(error, match=match):
        mi.expert_attribution(tiny("switch_transformers"), corpus, progress=False)


def test_pairs_on_a_causal_lm_are_refused_naming_the_plain_corpus():
    with pytest.raises(ValueError, match=r"needs an encoder-decoder model.*\{language: \[texts\]\}"):
        mi.expert_attribution(tiny("qwen3_moe"), {("fra", "eng"): [("Bonjour", "Hello")]}, progress=False)


def test_a_text_longer_than_the_positions_is_refused():
    with pytest.raises(ValueError, match="longer than this model's 8 positions"):
        mi.expert_attribution(tiny("nllb-moe", max_position_embeddings=8), {"eng": ["abcdefghijkl"]}, progress=False)
