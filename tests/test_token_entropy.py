"""RouterRecord(entropy=True): per group and MoE layer, the sum of each real token's routing
entropy (nats, softmax of the router logits over all E experts), against entropies computed here
from router logits captured with plain torch hooks on the router module (no package code), in a
trace with padding and several invokes, in `mi.profile` (its hooked path declines, a trace runs),
remotely (`remote="local"`), and saved / loaded."""

import math

import pytest
import torch
from jaxtyping import TypeCheckError

import moe_interp as mi
from conftest import PROMPTS, by_layer_hooks, hooked_batches, tiny
from test_remote import NdifSim, loaded, ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code; the loaded model)

CORPUS = {"eng": ["The cat sat on the mat.", "Hi", "A much longer English sentence about cats."],
          "deu": ["Die Katze saß auf der Matte.", "Hallo Welt"]}


def logits_by_hand(model, text):
    """Per MoE layer (model order), the `[tokens, E]` router logits of `text` (alone, no padding):
    the first output of every `*.mlp.gate` (HF's top-k router returns `(logits, scores, indices)`),
    read by a torch forward hook during a plain HF forward."""
    return by_layer_hooks(model, text, ".mlp.gate",
                          lambda args, out: out[0].detach().reshape(-1, out[0].shape[-1]).double().clone())


def entropy_by_hand(model, texts):
    """`[layers]`: the sum over every token of `texts` of `-sum_e p_e log p_e`, `p` the softmax of
    its router logits, written out."""
    out = None
    for text in texts:
        layers = logits_by_hand(model, text)
        if out is None:
            out = torch.zeros(len(layers), dtype=torch.float64)
        for layer, logits in enumerate(layers):
            for row in logits.tolist():
                top = max(row)
                weights = [math.exp(z - top) for z in row]
                total = sum(weights)
                out[layer] += -sum(w / total * math.log(w / total) for w in weights if w > 0)
    return out


def per_language_by_hand(model, corpus):
    return torch.stack([entropy_by_hand(model, texts) for texts in corpus.values()])


def close(got, want):
    return torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3_moe", "olmoe"])
def test_a_trace_with_padding_and_invokes_sums_the_entropies_by_hand(arch):
    model = tiny(arch)
    with torch.no_grad(), mi.trace(model, mi.RouterRecord(entropy=True)) as tr:
        with tr.invoke(PROMPTS[:2], group="a"):     # left-padded within the invoke and across
            pass
        with tr.invoke(PROMPTS[2:], group="b"):
            pass
    routing = tr.routing
    assert routing.groups == ("a", "b") and routing.entropy_sum.shape == (2, len(routing.layers))
    assert routing.entropy_sum.dtype == torch.float64
    for g, texts in enumerate((PROMPTS[:2], PROMPTS[2:])):
        assert close(routing.entropy_sum[g], entropy_by_hand(model, texts))
    tokens = torch.tensor([sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
                           for texts in (PROMPTS[:2], PROMPTS[2:])])
    assert torch.equal(routing.tokens, tokens)
    mean = routing.token_entropy()
    assert close(mean, torch.stack([entropy_by_hand(model, PROMPTS[:2]), entropy_by_hand(model, PROMPTS[2:])])
                 / tokens[:, None].double())
    E = mi.describe(model).num_experts
    assert torch.allclose(routing.token_entropy(normalise=True), mean / math.log(E))
    assert bool((mean > 0).all() and (mean <= math.log(E) + 1e-9).all())


def test_without_the_option_nothing_is_recorded_and_the_counts_are_unchanged():
    model = tiny("qwen3_moe")
    with torch.no_grad(), mi.trace(model, PROMPTS, mi.RouterRecord()) as plain:
        pass
    with torch.no_grad(), mi.trace(model, PROMPTS, mi.RouterRecord(entropy=True, co_activation=True)) as both:
        pass
    assert plain.routing.entropy_sum is None
    with pytest.raises(ValueError, match=r"RouterRecord\(entropy=True\)"):
        plain.routing.token_entropy()
    assert torch.equal(plain.routing.count, both.routing.count)
    assert torch.equal(plain.routing.gate_mass, both.routing.gate_mass)
    assert both.routing.co_activation is not None


def test_a_hash_routed_model_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="token-id table"):
        mi.trace(tiny("deepseek_v4"), "Hi", mi.RouterRecord(entropy=True))


def test_a_profile_sums_the_entropies_by_hand_per_language_and_the_hooked_path_declines(monkeypatch):
    model = mi.zoo.tiny_model("qwen3_moe")
    expected = per_language_by_hand(model, CORPUS)
    calls = hooked_batches(monkeypatch)
    stats = mi.profile(model, CORPUS, mi.RouterRecord(entropy=True), batch_size=2, progress=False)
    plain = mi.profile(model, CORPUS, batch_size=2, progress=False)
    assert not any(calls[:3]) and any(calls[3:])   # entropy reads the logits: traces; the plain profile hooks
    monkeypatch.undo()
    assert stats.entropy_sum.shape == (2, 4) and close(stats.entropy_sum, expected)
    assert torch.equal(stats.count, plain.count) and plain.entropy_sum is None
    assert close(stats.token_entropy(), expected / stats.tokens[:, None].double())


def test_a_remote_trace_and_profile_send_back_the_sums(loaded):
    def run(**kwargs):
        with torch.no_grad(), mi.trace(loaded, mi.RouterRecord(entropy=True), **kwargs) as tr:
            with tr.invoke(PROMPTS[:2], group="a"):
                pass
            with tr.invoke(PROMPTS[2:], group="b"):
                pass
        return tr.routing

    here, far = run(), run(remote="local")
    assert torch.equal(far.entropy_sum, here.entropy_sum) and torch.equal(far.count, here.count)
    profiled = mi.profile(loaded, CORPUS, mi.RouterRecord(entropy=True), batch_size=2, progress=False,
                          request_tokens=100, remote="local")   # several requests
    assert close(profiled.entropy_sum, per_language_by_hand(loaded, CORPUS))
    local = mi.profile(loaded, CORPUS, mi.RouterRecord(entropy=True), batch_size=2, progress=False)
    assert torch.allclose(profiled.entropy_sum, local.entropy_sum, rtol=1e-12)


def test_the_sums_are_saved_checked_selected_and_merged_and_old_files_load_without(tmp_path):
    model = tiny("qwen3_moe")
    stats = mi.profile(model, CORPUS, mi.RouterRecord(entropy=True), progress=False)
    back = mi.RoutingStats.load(stats.save(tmp_path / "with.routing"))
    assert torch.equal(back.entropy_sum, stats.entropy_sum)
    plain = mi.RoutingStats.load(mi.profile(model, CORPUS, progress=False).save(tmp_path / "without.routing"))
    assert plain.entropy_sum is None
    one = stats.select(["deu"], layers=[1, 2])
    assert torch.equal(one.entropy_sum, stats.entropy_sum[1:2, 1:3])
    merged = stats.select(["eng"]).merge(stats.select(["deu"]))
    assert torch.equal(merged.entropy_sum, stats.entropy_sum)
    assert stats.select(["eng"]).merge(plain.select(["deu"])).entropy_sum is None   # one side without: none
    with pytest.raises(TypeCheckError):   # the field's jaxtyping shape [group, layer]
        mi.RoutingStats(stats.languages, stats.layers, stats.num_experts, stats.top_k, stats.count,
                        stats.gate_mass, stats.tokens, entropy_sum=stats.entropy_sum[:, :2])
    with pytest.raises(ValueError, match="non-negative"):
        mi.RoutingStats(stats.languages, stats.layers, stats.num_experts, stats.top_k, stats.count,
                        stats.gate_mass, stats.tokens, entropy_sum=-stats.entropy_sum)


def test_health_gives_the_mean_token_entropy_per_language_and_pooled():
    model = tiny("qwen3_moe")
    stats = mi.profile(model, CORPUS, mi.RouterRecord(entropy=True), progress=False)
    health = stats.health(resamples=0)
    expected = per_language_by_hand(model, CORPUS)
    pooled = expected.sum(0) / stats.tokens.sum().double()
    by_hand = torch.cat([expected / stats.tokens[:, None].double(), pooled[None]]) / math.log(8)
    assert health.scopes == ("eng", "deu", "all") and close(health.token_entropy, by_hand)
    assert torch.allclose(health.token_entropy[:2], stats.token_entropy(normalise=True))
    table = health.to_pandas()
    assert close(torch.tensor(table["token_entropy"].to_numpy()), by_hand.flatten())
    assert mi.profile(model, CORPUS, progress=False).health(resamples=0).token_entropy is None


def test_under_a_reroute_the_entropy_is_of_the_edited_logits_the_router_goes_on_with():
    """ExpertAblate({1: [3]}) puts expert 3's layer-1 logit at -1e9: layer 1's entropy is that of
    the other 7 experts' softmax (its logits are the plain forward's: nothing before it changed),
    layer 0's the plain one."""
    model = tiny("qwen3_moe")
    with torch.no_grad(), mi.trace(model, PROMPTS[:2], mi.RouterRecord(entropy=True),
                                   mi.ExpertAblate({1: [3]})) as tr:
        pass
    plain = entropy_by_hand(model, PROMPTS[:2])
    kept = [e for e in range(8) if e != 3]
    rerouted = torch.zeros((), dtype=torch.float64)
    for text in PROMPTS[:2]:
        logits = logits_by_hand(model, text)[1][:, kept]
        p = torch.softmax(logits, -1)
        rerouted += -(p * p.log()).sum()
    assert close(tr.routing.entropy_sum[0, 0], plain[0]) and close(tr.routing.entropy_sum[0, 1], rerouted)
    assert int(tr.routing.count[0, 1, 3]) == 0


def test_a_two_stack_trace_keeps_each_stack_s_entropy():
    """Switch: each stack's sums against the logits of every `*.mlp.router.classifier` (a Linear),
    read by torch forward hooks in a plain HF forward."""
    model = tiny("switch_transformers")
    ids, target = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 5]])
    inputs = {"input_ids": ids, "decoder_input_ids": target}
    with torch.no_grad(), mi.trace(model, inputs, mi.RouterRecord()):
        pass                                        # the first trace checks the detection
    with torch.no_grad(), mi.trace(model, inputs, mi.RouterRecord(entropy=True)) as tr:
        pass
    seen = {}

    def keep(name):
        def hook(module, args, output):
            p = torch.softmax(output.detach().double().reshape(-1, output.shape[-1]), -1)
            seen[name] = float(-(p * p.log()).sum())
        return hook
    hf = model._module
    handles = [module.register_forward_hook(keep(name)) for name, module in hf.named_modules()
               if name.endswith("mlp.router.classifier")]
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    for stack, routing in tr.routing_by_stack.items():
        names = sorted((n for n in seen if n.startswith(stack)), key=lambda n: int(n.split(".")[2]))
        assert len(names) == len(routing.layers) > 0
        assert routing.tokens.tolist() == [ids.shape[1] if stack == "encoder" else target.shape[1]]
        assert close(routing.entropy_sum[0], torch.tensor([seen[n] for n in names], dtype=torch.float64))


def test_an_ndif_like_server_runs_the_kernels_and_sends_back_only_the_sums(loaded):
    """`NdifSim` (the whitelist-only worker of tests/test_remote): the trace's sums travel back as
    one float64 `[groups, layers]` table, bitwise the local ones."""
    def run(record, **kwargs):
        with torch.no_grad(), mi.trace(loaded, mi.RouterRecord(entropy=record), **kwargs) as tr:
            with tr.invoke(PROMPTS[:2], group="a"):
                pass
            with tr.invoke(PROMPTS[2:], group="b"):
                pass
        return tr.routing

    with_sums, without = NdifSim(loaded), NdifSim(loaded)
    far, here = run(True, backend=with_sums), run(True)
    run(False, backend=without)
    table = 2 * 4 * 8
    assert table <= with_sums.result_bytes - without.result_bytes <= table + 1024
    assert torch.equal(far.entropy_sum, here.entropy_sum) and torch.equal(far.count, here.count)


def test_the_entropy_figure_draws_each_token_s_and_the_load_s_entropy_by_hand():
    """`mi.plots.routing_entropy` (scope "all"): the per-token line is the hand entropies' mean per
    token over log(E); the load line is the entropy of the pooled expert counts, both written out
    here from hook-captured logits and top-k choices; the twin's lines come second."""
    model, twin = tiny("qwen3_moe"), mi.zoo.tiny_model("qwen3_moe", seed=1)
    stats = mi.profile(model, CORPUS, mi.RouterRecord(entropy=True), batch_size=2, progress=False)
    other = mi.profile(twin, CORPUS, mi.RouterRecord(entropy=True), batch_size=2, progress=False)
    fig = stats.plot_entropy(other, names=["a", "b"])
    assert [t.name for t in fig.data] == ["a: per token", "a: load", "b: per token", "b: load"]
    experts = model._module.config.num_experts
    k = model._module.config.num_experts_per_tok
    tokens = sum(len(model.tokenizer(t)["input_ids"]) for texts in CORPUS.values() for t in texts)
    per_token = per_language_by_hand(model, CORPUS).sum(0) / tokens / math.log(experts)
    assert torch.allclose(torch.tensor(fig.data[0].y, dtype=torch.float64), per_token, rtol=1e-4, atol=1e-6)
    load = torch.zeros(len(per_token), experts, dtype=torch.float64)  # top-k of each token's logits, pooled
    for texts in CORPUS.values():
        for text in texts:
            for layer, logits in enumerate(logits_by_hand(model, text)):
                for row in logits.tolist():
                    for e in sorted(range(experts), key=lambda e: -row[e])[:k]:
                        load[layer, e] += 1
    share = load / load.sum(-1, keepdim=True)
    want = -(share * share.clamp(min=1e-300).log()).sum(-1) / math.log(experts)
    assert torch.allclose(torch.tensor(fig.data[1].y, dtype=torch.float64), want, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(torch.tensor(fig.data[2].y, dtype=torch.float64), per_token)  # the twin's own
