"""`mi.expert_attribution` against oracles that share no code with it: finite differences and
drops computed through the test's own torch hooks on the experts modules (found by name),
the test's own loss, and conftest's record of what the experts received."""

import json
import math
import re

import pytest
import torch
from conftest import NAMED_ARCHITECTURES, _experts_modules, oracle_routing
from scipy.stats import spearmanr

import moe_interp as mi
from moe_interp.experiments import _attribution as attribution

torch.set_num_threads(1)
TEXTS = ["Hello there, how are you?", "ok", "Guten Morgen, liebe Welt und alle"]


def _double(arch: str = "qwen3_moe", **overrides):
    """A fresh tiny model in float64 (the cast must not leak into cached fixtures). For
    qwen3_moe, the RMSNorms and the router's softmax (float32 inside) are recomputed in
    float64 by forward hooks, so the whole forward is float64 and differences of 1e-9 are
    signal, not rounding."""
    model = mi.zoo.tiny_model(arch, **overrides)
    model._module.to(torch.float64)
    try:
        model._module.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
    except (ValueError, AttributeError):
        pass
    for module in model._module.modules():
        if arch == "qwen3_moe" and type(module).__name__ == "Qwen3MoeRMSNorm":
            module.register_forward_hook(lambda m, args, out: m.weight * args[0] * torch.rsqrt(
                args[0].pow(2).mean(-1, keepdim=True) + m.variance_epsilon))
        if arch == "qwen3_moe" and type(module).__name__ == "Qwen3MoeTopKRouter":
            def renormalised(m, args, out):
                logits, _, indices = out
                top = torch.softmax(logits, -1).gather(-1, indices)
                return logits, top / top.sum(-1, keepdim=True), indices
            module.register_forward_hook(renormalised)
    return model


def _experts_by_layer(model) -> dict:
    hf = model._module
    return {int(re.search(r"layers\.(\d+)\.", name)[1]): module for name, module in hf.named_modules()
            if name.endswith("mlp.experts")}


def _metric(model, texts, metric: str = "nll") -> torch.Tensor:
    """The language's metric computed here, one text at a time (no padding in the oracle)."""
    tok = model.tokenizer
    nll, predicted, per_text = 0.0, 0, []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        logits = model._module(input_ids=ids).logits.double()
        one = -torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
        nll, predicted = nll + one, predicted + ids.shape[1] - 1
        per_text.append(one / math.log(2) / (len(text.encode()) - 1))  # byte tokenizer, no BOS
    return nll / predicted if metric == "nll" else sum(per_text) / len(per_text)


def _loss(model, texts, scale: dict | None = None, metric: str = "nll") -> float:
    """`_metric` where `scale = {layer: (expert, factor)}` multiplies the routing weight of
    `expert` by `factor` where the experts module receives it."""
    return _loss_at(model, texts, {layer: {expert: factor} for layer, (expert, factor) in (scale or {}).items()},
                    metric)


@pytest.mark.parametrize("texts", [["Hi"], TEXTS], ids=["one predicted token", "three texts"])
@pytest.mark.parametrize("metric", ["nll", "bpb"])
def test_estimate_equals_central_difference_in_float64(texts, metric):
    # d/ds L(w_e * (1 - s)) at s = 0 is sum_t dL/dw_te * (-w_te): the estimate, cell by cell
    model = _double()
    attr = mi.expert_attribution(model, {"x": texts}, metric=metric, method="taylor", progress=False)
    eps = 1e-3  # truncation error ~1e-10 relative here, float64 rounding ~1e-14 / eps
    cells = [(0, 0), (1, 3), (3, 7), *[(layer, int(attr.effect[0, i].abs().argmax())) for i, layer in
                                       enumerate(attr.layers)]]
    for layer, expert in cells:
        plus = _loss(model, texts, {layer: (expert, 1 - eps)}, metric)
        minus = _loss(model, texts, {layer: (expert, 1 + eps)}, metric)
        difference = (plus - minus) / (2 * eps)
        estimate = float(attr.effect[0, attr.layers.index(layer), expert])
        assert estimate == pytest.approx(difference, rel=1e-6, abs=1e-11), (layer, expert)
    assert attr.baseline[0] == pytest.approx(_loss(model, texts, metric=metric), rel=1e-9)


def test_first_order_is_exact_when_the_removed_contribution_is_small():
    # A near-linear toy: expert 5's output weights shrunk 1000x, so dropping it moves the model
    # by O(1e-3) and the loss change is linear in it up to O(1e-6) relative.
    model = _double()
    layer = 2
    with torch.no_grad():
        _experts_by_layer(model)[layer].down_proj[5] *= 1e-3
    attr = mi.expert_attribution(model, {"x": TEXTS}, metric="nll", method="taylor", progress=False)
    estimate = float(attr.effect[0, attr.layers.index(layer), 5])
    real = _loss(model, TEXTS, {layer: (5, 0.0)}) - _loss(model, TEXTS)
    assert attr.count[0, attr.layers.index(layer), 5] > 0 and abs(real) > 1e-9
    assert estimate == pytest.approx(real, rel=1e-2)


@pytest.mark.parametrize("method", ["taylor", "path"])
def test_a_left_padded_batch_gives_each_text_its_effect_alone(method):
    model = _double()
    together = mi.expert_attribution(model, {"x": TEXTS}, batch_size=3, method=method, progress=False)
    alone = [mi.expert_attribution(model, {"x": [text]}, method=method, progress=False) for text in TEXTS]
    # bits per byte is a mean over texts, so the batch's effect is the mean of the texts' effects
    mean = torch.stack([a.effect[0] for a in alone]).mean(0)
    torch.testing.assert_close(together.effect[0], mean, rtol=1e-7, atol=1e-12)
    assert torch.equal(together.count[0], sum(a.count[0] for a in alone))
    assert int(together.tokens[0]) == sum(len(t.encode()) for t in TEXTS)  # byte tokenizer, padding excluded


def _loss_at(model, texts, factors: dict, metric: str = "nll") -> float:
    """`_metric` where `factors = {layer: {expert: factor, None: factor for the others}}`
    multiplies the routing weights where the layer's experts module receives them."""
    hooks = []
    for layer, table in factors.items():
        def pre(module, args, table=table):
            hidden, index, weights = args[:3]
            scale = torch.full_like(weights, table.get(None, 1.0))
            for expert, factor in table.items():
                if expert is not None:
                    scale = torch.where(index == expert, factor, scale)
            return (hidden, index, weights * scale, *args[3:])
        hooks.append(_experts_by_layer(model)[layer].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return float(_metric(model, texts, metric))
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("per_pass", [1, 2])
def test_the_midpoint_path_estimate_is_the_slope_at_the_half_dropped_layers(per_pass):
    # steps=1: the gradient where the pass's layers (1 or 2 adjacent) have their weights halved,
    # times -w, summed per cell: a central difference of the loss in the expert's own factor there
    model = _double()
    attr = mi.expert_attribution(model, {"x": TEXTS}, metric="nll", method="path", steps=1,
                                 layers_per_pass=per_pass, progress=False)
    assert attr.meta["method"] == "path" and attr.meta["passes"] == {"forward": 1 + 4 // per_pass,
                                                                     "backward": 4 // per_pass}
    eps = 1e-4
    for layer in attr.layers:
        partners = [other for other in attr.layers if other // per_pass == layer // per_pass]
        expert = int(attr.effect[0, attr.layers.index(layer)].abs().argmax())
        def loss(factor):
            return _loss_at(model, TEXTS, {other: {None: 0.5, **({expert: factor} if other == layer else {})}
                                           for other in partners})
        difference = (loss(0.5 - eps) - loss(0.5 + eps)) / (2 * eps)  # d/dt at t = 0 of L(w_e * (0.5 - t))
        estimate = float(attr.effect[0, attr.layers.index(layer), expert])
        assert estimate == pytest.approx(difference, rel=1e-6, abs=1e-11), (layer, expert)
    assert torch.equal(attr.count, mi.expert_attribution(model, {"x": TEXTS}, method="taylor", progress=False).count)


def _curved_top1():
    """A float64 tiny model that routes each token to one expert (top-1), its experts'
    outputs x20 so that the loss is clearly curved along a drop path."""
    model = _double(num_experts_per_tok=1)
    with torch.no_grad():
        for experts in _experts_by_layer(model).values():
            experts.down_proj *= 20
    return model


def _chosen(model, texts, drop: dict | None = None) -> list:
    """The experts each layer's experts module received (oracle hooks), with `drop = {layer:
    (expert, 0.0)}` applied as `_loss` applies it."""
    seen, hooks = [], []
    for layer, experts in sorted(_experts_by_layer(model).items()):
        def pre(module, args, layer=layer):
            seen.append(args[1].flatten().tolist())
            if drop and layer in drop:
                expert, factor = drop[layer]
                return (args[0], args[1], torch.where(args[1] == expert, args[2] * factor, args[2]), *args[3:])
        hooks.append(experts.register_forward_pre_hook(pre))
    try:
        _metric(model, texts)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_the_path_estimate_converges_to_the_real_single_expert_drop_where_no_later_choice_flips():
    # One repeated byte: causal attention over equal values gives every position the same hidden
    # state, so a top-1 router sends every token of a layer to one expert, and scaling the layer's
    # weights is scaling that expert's: the layer's drop path is the single expert's. Gauss-Legendre
    # integration of the gradient along it then converges to the real drop (measured: relative error
    # 1-4% at 1 point, < 1e-3 at 2, < 1e-14 at 8), where the first order misses by 11-29%.
    model = _curved_top1()
    texts = ["a" * 12]
    taylor = mi.expert_attribution(model, {"x": texts}, metric="nll", method="taylor", progress=False)
    paths = {steps: mi.expert_attribution(model, {"x": texts}, metric="nll", method="path", steps=steps,
                                          layers_per_pass=1, progress=False) for steps in (1, 2, 8)}
    base, before = _loss(model, texts), _chosen(model, texts)
    for i, layer in enumerate(taylor.layers):
        (expert,) = taylor.count[0, i].nonzero().flatten().tolist()  # one expert takes all 12 tokens
        assert set(before[i]) == {expert}
        real = _loss(model, texts, {layer: (expert, 0.0)}) - base
        error = {steps: abs(float(attr.effect[0, i, expert]) - real) / abs(real) for steps, attr in paths.items()}
        first_order = abs(float(taylor.effect[0, i, expert]) - real) / abs(real)
        if _chosen(model, texts, {layer: (expert, 0.0)}) != before:
            # the drop flips a later layer's choice: a jump in the loss no gradient sees (layer 0 here)
            assert layer == 0 and error[8] > 0.5
            continue
        assert error[8] < 1e-10 and error[2] < 1e-3 and error[1] < 0.05, (layer, error)
        assert first_order > 0.1 and error[1] < first_order / 2, (layer, first_order, error)


def test_a_last_layers_path_estimates_sum_to_dropping_the_whole_layer():
    # Completeness of the integral: summed over the experts of a layer, the gradient along the
    # layer's path integrates to the loss with the whole layer's routed output dropped. Exact on the
    # last MoE layer (no router after it can flip); padded batch of three texts, top-2
    model = _double()
    last = 3
    attr = mi.expert_attribution(model, {"x": TEXTS}, metric="nll", method="path", steps=8, layers_per_pass=1,
                                 batch_size=3, progress=False)
    real = _loss_at(model, TEXTS, {last: {None: 0.0}}) - _loss(model, TEXTS)
    assert float(attr.effect[0, last].sum()) == pytest.approx(real, rel=1e-6)


def test_counts_are_what_the_experts_received():
    model = mi.zoo.tiny_model("qwen3_moe")
    attr = mi.expert_attribution(model, {"x": TEXTS}, batch_size=3, progress=False)
    enc = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    counts, _ = oracle_routing(model, enc)
    assert torch.equal(attr.count[0], counts)


def test_a_hybrid_model_whose_cache_fails_outside_generation_is_attributed():
    """Jamba's tiny cache fails in HF's own forward unless use_cache=False (seen: 'get_mask_sizes can
    only be called on Attention layers'): attribution scores with one uncached forward."""
    model = mi.zoo.tiny_model("jamba")
    attr = mi.expert_attribution(model, {"x": TEXTS[:2]}, batch_size=2, progress=False)
    enc = model.tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    counts, _ = oracle_routing(model, {**enc, "use_cache": False})
    assert torch.equal(attr.count[0], counts) and int(counts.sum()) > 0


def _layer_derivative(model, arch: str, layer: int) -> float:
    """d/ds at s = 0 of the loss with every routed contribution of MoE layer `layer` scaled by
    (1 - s), by autograd through a hook at a site found by name: the experts module's output
    (linear in the routing weights), Llama-4's dense router scores, JetMoe's output linear."""
    hf = model._module
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    if arch == "llama4_text":
        module = hf.get_submodule(f"model.layers.{layer}.feed_forward.router")
        hook = module.register_forward_hook(lambda m, a, out: (out[0] * (1 - s), *out[1:]))
    else:
        module = next(m for l, _, m in _experts_modules(hf) if l == layer)
        if arch == "jetmoe":
            module = hf.get_submodule(f"model.layers.{layer}.mlp.output_linear")
        hook = module.register_forward_hook(lambda m, a, out: out * (1 - s))
    try:
        with torch.enable_grad():
            return float(torch.autograd.grad(_metric(model, TEXTS[:2]), s)[0])
    finally:
        hook.remove()


@pytest.mark.parametrize("arch", [*NAMED_ARCHITECTURES, "jetmoe"])
def test_each_layers_total_is_the_derivative_of_scaling_its_output_on_every_architecture(arch):
    # Scaling all of a layer's routing weights by (1 - s) scales its routed output (Llama-4:
    # its scores), so d/ds is the sum of the layer's cells. Not a finite difference here: a
    # step of 1e-2 flips later top-k choices on some random tiny models, and HF's float32
    # norms and routers leave ~1e-9 of rounding in the loss for smaller steps (and ~1e-5 of
    # relative rounding in gradients through them; qwen3_moe above is float64 throughout).
    model = _double(arch)
    attr = mi.expert_attribution(model, {"x": TEXTS[:2]}, metric="nll", method="taylor", progress=False)
    for i, layer in enumerate(attr.layers):
        assert float(attr.effect[0, i].sum()) == pytest.approx(_layer_derivative(model, arch, layer), rel=1e-4,
                                                               abs=1e-10), (arch, layer)
        assert int(attr.count[0, i].sum()) == mi.describe(model).top_k * int(attr.tokens[0])


def test_the_model_is_left_unchanged():
    model = mi.zoo.tiny_model("qwen3_moe")
    enc = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model._module(**enc).logits
    mi.expert_attribution(model, {"x": TEXTS}, progress=False)
    with torch.no_grad():
        after = model._module(**enc).logits
    assert torch.equal(before, after)
    assert all(p.grad is None for p in model._module.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model._module.modules())


def test_validate_measures_real_drops_with_the_same_metric():
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS[:2], "de": TEXTS[2:]}
    attr = mi.expert_attribution(model, corpus, progress=False)
    check = attr.validate(model, corpus, n=6, seed=1, progress=False)
    assert len(check.cells) == 6 and len(set(check.cells)) == 6 and check.real.shape == (2, 6)
    for j, (layer, expert) in enumerate(check.cells[:3]):
        for i, lang in enumerate(corpus):
            real = _loss(model, corpus[lang], {layer: (expert, 0.0)}, "bpb") - _loss(model, corpus[lang], metric="bpb")
            assert float(check.real[i, j]) == pytest.approx(real, abs=2e-5)
            assert float(check.estimate[i, j]) == float(attr.effect[i, attr.layers.index(layer), expert])
            assert int(check.count[i, j]) == int(attr.count[i, attr.layers.index(layer), expert])
    table = check.agreement(resamples=200, used_only=False)
    assert set(table.language) == {"en", "de", "all"} and "middle" in set(table.band)
    assert int(table.query("language == 'all' and band == 'all'").cells.iloc[0]) == 12
    used = check.agreement(resamples=200).query("language == 'all' and band == 'all'").cells.iloc[0]
    assert used == int((check.count > 0).sum())
    assert len(check.plot().data) == 3  # one scatter per language and y = x
    middle = attr.validate(model, corpus, n=3, layers=[2], progress=False)
    assert [layer for layer, _ in middle.cells] == [2, 2, 2] and set(middle.bands) == {"middle"}
    with pytest.raises(ValueError, match=r"layer 7 is out of range; the layers to choose from are 0-3"):
        attr.validate(model, corpus, layers=[7], progress=False)
    with pytest.raises(ValueError, match="not the one the estimates were computed on"):
        attr.validate(mi.zoo.tiny_model("qwen3_moe", seed=1), corpus, n=2, progress=False)


def test_top_picks_the_largest_effects():
    model = mi.zoo.tiny_model("qwen3_moe")
    attr = mi.expert_attribution(model, {"en": TEXTS}, progress=False)
    ranked = sorted(((float(attr.effect[0, i, e]), layer, e) for i, layer in enumerate(attr.layers)
                     for e in range(8)), reverse=True)
    top = attr.top("en", n=5)
    assert isinstance(top, mi.ExpertSet) and sorted(top.pairs()) == sorted((l, e) for _, l, e in ranked[:5])
    assert attr.top("en", n=3, layers=[1]).pairs() == sorted((1, e) for _, l, e in
                                                             [r for r in ranked if r[1] == 1][:3])
    with pytest.raises(KeyError, match="close matches"):
        attr.top("eng")
    with pytest.raises(ValueError, match=r"layer 9 is out of range; the layers to choose from are 0-3 \(of 4"):
        attr.top("en", layers=[9])


def test_layers_take_the_layer_vocabulary_so_middle_is_the_middle_band():
    # `layers=` is read as everywhere (core._layers): "middle" is the band, not the letters m, i, d, ...
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS}
    attr = mi.expert_attribution(model, corpus, method="taylor", progress=False)
    middle = mi.describe(model).band("middle")
    assert middle == (1, 2)
    band = attr.top("en", n=16, layers="middle")  # every cell of the band's two layers
    assert band.pairs() == [(layer, e) for layer in middle for e in range(8)]
    assert attr.top("en", n=5, layers="middle") == attr.top("en", n=5, layers=list(middle))
    assert attr.top("en", n=3, layers=2) == attr.top("en", n=3, layers=[2])
    check = attr.validate(model, corpus, n=3, layers="middle", progress=False)
    assert {layer for layer, _ in check.cells} <= set(middle) and check.bands == ("middle",) * 3
    with pytest.raises(ValueError, match="unknown band or layer selection 'centre'"):
        attr.top("en", layers="centre")


def test_rank_correlation_matches_scipy_and_brackets_it():
    x = [0.3, 1.2, -0.5, 2.2, 0.1, 0.9, 1.7, -1.1]
    y = [0.1, 1.0, -0.2, 1.5, 0.4, 0.2, 2.0, -0.9]
    rho, low, high = attribution.rank_correlation(x, y, resamples=500)
    assert rho == pytest.approx(spearmanr(x, y).statistic) and low < rho <= high
    assert attribution.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == (1.0, 1.0, 1.0)
    assert math.isnan(attribution.rank_correlation([1, 2], [1, 2])[0])


def test_versus_frequency_and_plot():
    model = mi.zoo.tiny_model("qwen3_moe")
    attr = mi.expert_attribution(model, {"en": TEXTS[:2], "de": TEXTS[2:]}, progress=False)
    table = attr.versus_frequency(resamples=200)
    freq = attr.frequency()
    assert list(table.language) == ["en", "de"] and (table.cells == 32).all()
    assert table.spearman[0] == pytest.approx(spearmanr(freq[0].reshape(-1), attr.effect[0].reshape(-1)).statistic)
    assert torch.allclose(freq.sum(-1), torch.full((2, 4), 2.0, dtype=torch.float64))
    fig = attr.plot()
    assert len(fig.data) == 2 and fig.data[0].z.shape == (4, 8) and fig.layout.updatemenus


def test_save_and_load_round_trip(tmp_path):
    model = mi.zoo.tiny_model("qwen3_moe")
    attr = mi.expert_attribution(model, {"en": TEXTS}, metric="nll", progress=False)
    path = attr.save(tmp_path / "a.attribution")
    back = mi.ExpertAttribution.load(path)
    assert back.languages == attr.languages and back.layers == attr.layers and back.metric == "nll"
    assert torch.equal(back.effect, attr.effect) and torch.equal(back.count, attr.count)
    assert back.top("en", 4) == attr.top("en", 4) and back.meta == attr.meta
    with pytest.raises(FileExistsError, match="overwrite=True"):
        attr.save(path)
    attr.save(path, overwrite=True)
    data = (path / "attribution.safetensors").read_bytes()
    (path / "attribution.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        mi.ExpertAttribution.load(path)


def test_a_saved_attribution_whose_numbers_changed_is_refused_naming_the_checksum(tmp_path):
    # one flipped bit of the last effect in the tensor file: loading it must not give other numbers
    model = mi.zoo.tiny_model("qwen3_moe")
    path = mi.expert_attribution(model, {"en": TEXTS}, method="taylor", progress=False).save(tmp_path / "a.attribution")
    tensor_file = path / "attribution.safetensors"
    data = bytearray(tensor_file.read_bytes())
    header_size = 8 + int.from_bytes(data[:8], "little")
    _, end = json.loads(data[8:header_size])["effect"]["data_offsets"]  # where effect's bytes are
    data[header_size + end - 1] ^= 1
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its sha256 checksum"):
        mi.ExpertAttribution.load(path)


def test_an_attribution_saved_before_files_had_a_checksum_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_file
    attr = mi.expert_attribution(mi.zoo.tiny_model("qwen3_moe"), {"en": TEXTS}, method="taylor", progress=False)
    header = {"format": "moe_interp.ExpertAttribution/1", "languages": list(attr.languages),
              "layers": list(attr.layers), "metric": attr.metric, "mode": attr.mode, "meta": attr.meta}
    (tmp_path / "old").mkdir()
    save_file({name: getattr(attr, name) for name in ("effect", "count", "tokens", "baseline")},
              str(tmp_path / "old" / "attribution.safetensors"), metadata={"header": json.dumps(header)})
    with pytest.warns(UserWarning, match="has no checksum"):
        old = mi.ExpertAttribution.load(tmp_path / "old")
    assert torch.equal(old.effect, attr.effect) and old.meta == attr.meta


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS[:2], "de": TEXTS[2:]}
    whole = mi.expert_attribution(model, corpus, batch_size=1, progress=False)
    real_batch, calls = attribution._batch, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(attribution, "_batch", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")
    monkeypatch.setattr(attribution, "_batch", real_batch)
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["done"] == 1
    resumed = mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")
    torch.testing.assert_close(resumed.effect, whole.effect, rtol=0, atol=0)
    assert torch.equal(resumed.count, whole.count)
    with pytest.raises(mi.ResumeError, match="model weights"):
        mi.expert_attribution(mi.zoo.tiny_model("qwen3_moe", seed=1), corpus, batch_size=1, progress=False,
                              checkpoint=tmp_path / "a.ckpt")
    (tmp_path / "b.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(mi.ResumeError, match="cannot be read"):
        mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "b.ckpt")
    with pytest.raises(mi.ResumeError, match="settings"):
        mi.expert_attribution(model, corpus, metric="nll", batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")
    # a checkpoint changed after it was written (one running sum, every other entry as stored) is refused
    state = torch.load(tmp_path / "a.ckpt", weights_only=True)
    state["effect"].view(-1)[0] += 1.0
    torch.save(state, tmp_path / "a.ckpt")
    with pytest.raises(mi.ResumeError, match="checksum"):
        mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")


def test_bad_input_gets_a_clear_early_error():
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS}
    with pytest.raises(NotImplementedError, match="mode='drop'"):
        mi.expert_attribution(model, corpus, mode="reroute")
    with pytest.raises(ValueError, match="mode must be 'drop'"):
        mi.expert_attribution(model, corpus, mode="zero")
    with pytest.raises(ValueError, match="metric must be one of"):
        mi.expert_attribution(model, corpus, metric="accuracy")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        mi.expert_attribution(model, corpus, batch_size=0)
    with pytest.raises(TypeError, match="list of strings"):
        mi.expert_attribution(model, {"en": "one text"})
    with pytest.raises(ValueError, match="longer than this model's 256 positions"):
        mi.expert_attribution(model, {"en": ["x" * 300]}, progress=False)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        mi.expert_attribution(model, corpus)


# ------------------------------------------------- issue 23: one reader; inputs it refuses

def test_an_empty_text_is_refused_as_trace_and_profile_refuse_it():
    model = mi.zoo.tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match=r"corpus\['en'\]\[1\] has no tokens \(an empty text\).*Drop empty texts"):
        mi.expert_attribution(model, {"en": ["Hello", ""]}, progress=False)


def test_an_encoder_decoder_model_gets_one_attribution_per_stack():
    # its oracles (HF's own seq2seq loss, hooks on the experts modules) are in tests/test_attribution_seq2seq.py
    model = mi.zoo.tiny_model("switch_transformers")
    result = mi.expert_attribution(model, {"en": ["Hello there"]}, method="taylor", progress=False)
    assert {stack: attr.layers for stack, attr in result.items()} == {"encoder": (1, 3), "decoder": (5, 7)}


SOURCES = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt"]
TARGETS = ["Hallo", "Salut tout le monde", "Hi there"]


def _switch_in_float64():
    model = mi.zoo.tiny_model("switch_transformers", padding_side="right", expert_capacity=3)
    model._module.to(torch.float64)
    for module in model._module.modules():
        if type(module).__name__ == "SwitchTransformersTop1Router":  # its config allows float32 at most
            module.dtype = torch.float64
        if type(module).__name__ == "SwitchTransformersLayerNorm":  # its variance is float32 inside
            module.register_forward_hook(lambda m, args, out: m.weight * args[0] * torch.rsqrt(
                args[0].pow(2).mean(-1, keepdim=True) + m.variance_epsilon))
    tok = model.tokenizer
    enc, dec = (tok(texts, return_tensors="pt", padding=True) for texts in (SOURCES, TARGETS))
    inputs = {**enc, "decoder_input_ids": dec["input_ids"], "decoder_attention_mask": dec["attention_mask"]}
    return model, inputs


def _seq2seq_nll(logits, inputs):
    """Teacher-forced NLL of the targets (each target token from those before it), padding out."""
    ids, mask = inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return -(logp * (mask[:, 1:] * mask[:, :-1])).sum()


def _scaled_loss(model, inputs, layer, expert, factor):
    """The loss with the weight Switch's `layer`-th experts module gives `expert`'s tokens
    multiplied by `factor` (a pre-hook on its own routing_weights argument; no moe_interp)."""
    experts = [m for m in model._module.modules() if type(m).__name__ == "SwitchTransformersExperts"][layer]

    def pre(module, args):
        hidden, selected, weights = args
        mine = selected[:, 0, expert].bool()[:, None]
        return hidden, selected, torch.where(mine, weights * factor, weights)
    handle = experts.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return float(_seq2seq_nll(model._module(**inputs).logits, inputs))
    finally:
        handle.remove()


def test_a_dispatch_mask_router_is_probed_through_the_one_reader():
    """Switch hands its experts a dispatch mask (tokens past capacity dropped): attribution's
    probe reads and writes it through kernels.routing/set_weights (a KeyError before). In
    float64, per (layer, expert), the probe's summed contribution to a seq2seq loss equals
    the central difference of that loss with the expert's weight scaled by a torch hook on
    the experts module's own argument; dropped slots carry nothing; and the drop edit
    (ExpertAblate mode="drop", set_weights of a masked copy) equals the hook's real drop."""
    model, inputs = _switch_in_float64()
    spec = mi.describe(model)
    found = []
    with torch.enable_grad():
        with mi.trace(model, inputs) as tr:
            attribution._probe(model, spec, found)
        grads = torch.autograd.grad(_seq2seq_nll(tr.output.logits, inputs), [delta for *_, delta in found])
    assert len(found) == len(spec.moe_layers) == 4
    dropped = 0
    for layer, ((_, indices, weights, _), grad) in enumerate(zip(found, grads)):
        contribution = -(grad * weights)
        dropped += int((indices < 0).sum())
        assert bool((weights[indices < 0] == 0).all()) and bool((contribution[indices < 0] == 0).all())
        expert = int(torch.bincount(indices[indices >= 0], minlength=8).argmax())  # the busiest expert
        eps = 1e-5
        difference = (_scaled_loss(model, inputs, layer, expert, 1 - eps)
                      - _scaled_loss(model, inputs, layer, expert, 1 + eps)) / (2 * eps)
        assert float(contribution[indices == expert].sum()) == pytest.approx(difference, rel=1e-6, abs=1e-10), layer
        with torch.no_grad(), mi.trace(model, inputs, mi.ExpertAblate({spec.moe_layers[layer]: [expert]},
                                                                      mode="drop")) as ablated:
            pass
        real = _scaled_loss(model, inputs, layer, expert, 0.0)
        assert float(_seq2seq_nll(ablated.output.logits, inputs)) == pytest.approx(real, rel=1e-12), layer
    assert dropped > 0, "the case must drop tokens past capacity"


# ------------------------------------------------- issue 24: agreement that a referee would sign

def _check(estimate, real, bands=None, count=None, languages=("eng",)):
    estimate, real = torch.tensor(estimate, dtype=torch.float64), torch.tensor(real, dtype=torch.float64)
    cells = tuple((2 + j % 3, j) for j in range(estimate.shape[-1]))
    bands = bands or ("middle",) * len(cells)
    count = torch.ones_like(estimate, dtype=torch.long) if count is None else torch.tensor(count)
    return attribution.AttributionCheck(languages, cells, tuple(bands), estimate, real, count, "bpb", 0.0)


def test_a_perfectly_ordered_handful_of_cells_reports_too_few_cells_not_a_degenerate_interval():
    # four cells in the same order: the bootstrap interval is [1, 1] whatever the resample
    check = _check([[0.01, 0.02, 0.03, 0.04]], [[0.011, 0.025, 0.031, 0.05]])
    row = check.agreement().query("language == 'eng' and band == 'middle'").iloc[0]
    assert math.isnan(row.spearman) and math.isnan(row.low) and math.isnan(row.high)
    assert row.verdict == "too few cells" and "4 cells with |real| >= 0.001" in row.reason


def test_the_verdict_follows_the_rule_band_by_band():
    # planted: middle ranks and signs right (reliable), early ranked backwards (unreliable: the
    # interval), late ranked right but with wrong signs (unreliable: the sign), 5 late cells too few
    rng = torch.Generator().manual_seed(0)
    real = torch.rand(1, 40, generator=rng, dtype=torch.float64) * 0.05 + 0.002
    estimate = real.clone()
    estimate[0, 12:24] = -real[0, 12:24] + 0.1        # early: order reversed, signs kept (all positive)
    estimate[0, 24:35] = real[0, 24:35] - 0.03        # late: order kept, shifted below 0 for most
    bands = ["middle"] * 12 + ["early"] * 12 + ["late"] * 11 + ["tail"] * 5
    check = _check(estimate.tolist(), real.tolist(), bands=bands)
    table = check.agreement(resamples=500).set_index(["language", "band"])
    assert list(dict.fromkeys(b for _, b in table.index)) == ["early", "middle", "late", "tail", "all"]
    middle, early, late, tail = (table.loc[("eng", band)] for band in ("middle", "early", "late", "tail"))
    assert middle.verdict == "reliable" and middle.spearman == pytest.approx(1.0) and middle.sign == 1.0
    assert early.verdict == "unreliable" and early.spearman == pytest.approx(-1.0) and "lower end" in early.reason
    assert early.sign == 1.0 and "sign" not in early.reason
    wrong = float((torch.sign(estimate[0, 24:35]) != torch.sign(real[0, 24:35])).double().mean())
    assert late.verdict == "unreliable" and late.sign == pytest.approx(1 - wrong) and wrong > 0.2
    assert f"sign right on {1 - wrong:.0%} < 80%" in late.reason and late.spearman == pytest.approx(1.0)
    assert tail.verdict == "too few cells" and math.isnan(tail.spearman) and tail.effect_cells == 5
    # the interval is rank_correlation's over the used cells, the ratio the median of estimate / real
    rho, low, high = attribution.rank_correlation(estimate[0, 12:24], real[0, 12:24], 500)
    assert (early.spearman, early.low, early.high) == (rho, low, high)
    assert late.ratio == pytest.approx(float((estimate[0, 24:35] / real[0, 24:35]).median()))
    # a cell below min_effect counts among the cells, not among the effect cells
    small = _check([[0.01 * k for k in range(1, 12)] + [0.0]], [[0.01 * k for k in range(1, 12)] + [1e-4]])
    row = small.agreement().iloc[0]
    assert (row.cells, row.effect_cells, row.verdict) == (12, 11, "reliable")
    assert small.agreement(min_cells=12).iloc[0].verdict == "too few cells"
    with pytest.raises(ValueError, match=r"min_cells \(a rank correlation needs 3 points\) must be an integer >= 3"):
        small.agreement(min_cells=2)


def test_validate_reports_a_verdict_per_band_on_a_real_model():
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS[:2], "de": TEXTS[2:]}
    attr = mi.expert_attribution(model, corpus, progress=False)
    check = attr.validate(model, corpus, n=32, progress=False)
    table = check.agreement(min_effect=1e-5, resamples=200)
    assert set(table.band) == {"early", "middle", "late", "all"} and set(table.verdict) <= {
        "reliable", "unreliable", "too few cells"}
    frame = check.to_pandas()
    for row in table.itertuples():
        part = frame[(frame["count"] > 0) & ((frame.language == row.language) | (row.language == "all"))
                     & ((frame.band == row.band) | (row.band == "all"))]
        big = part[part.real.abs() >= 1e-5]
        assert (row.cells, row.effect_cells) == (len(part), len(big))
        if len(big) >= 10:
            assert row.spearman == pytest.approx(spearmanr(part.estimate, part.real).statistic)
            assert row.verdict == ("reliable" if row.low >= 0.5 and row.sign >= 0.8 else "unreliable")
        else:
            assert row.verdict == "too few cells" and math.isnan(row.spearman)
    assert "reliable" in set(table.verdict)
    assert "middle" in check.summary(min_effect=1e-5)


def test_path_settings_are_checked_and_keyed():
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS}
    with pytest.raises(ValueError, match="method must be one of"):
        mi.expert_attribution(model, corpus, method="ig")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        mi.expert_attribution(model, corpus, steps=0)
    with pytest.raises(ValueError, match="layers_per_pass must be a positive int"):
        mi.expert_attribution(model, corpus, layers_per_pass=0)
    with pytest.raises(ValueError, match="method='taylor' takes the gradient at the model once"):
        mi.expert_attribution(model, corpus, method="taylor", steps=2)
    attr = mi.expert_attribution(model, corpus, steps=2, layers_per_pass=4, progress=False)
    assert attr.meta["passes"] == {"forward": 3, "backward": 2}
    assert (attr.meta["steps"], attr.meta["layers_per_pass"]) == (2, 4)


def test_a_checkpoint_of_one_method_does_not_resume_another(tmp_path):
    model = mi.zoo.tiny_model("qwen3_moe")
    corpus = {"en": TEXTS}
    mi.expert_attribution(model, corpus, method="taylor", batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")
    with pytest.raises(mi.ResumeError, match="settings"):
        mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "a.ckpt")
    mi.expert_attribution(model, corpus, batch_size=1, progress=False, checkpoint=tmp_path / "b.ckpt")
    with pytest.raises(mi.ResumeError, match="settings"):
        mi.expert_attribution(model, corpus, steps=2, batch_size=1, progress=False, checkpoint=tmp_path / "b.ckpt")
