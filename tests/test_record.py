"""RouterRecord: counts equal independent oracles, padding- and batching-invariant."""

import pytest
import torch

import moe_interp as mi
from conftest import PROMPTS, encode, oracle_routing, tiny


def record(model, inputs, **kw):
    with mi.trace(model, inputs, mi.RouterRecord(**kw)) as tr:
        pass
    return tr


def test_counts_equal_experts_input_oracle_on_left_padded_batch(arch):
    model = tiny(arch)
    enc = encode(model)
    assert (enc["attention_mask"][:, 0] == 0).any(), "batch must be left-padded"
    expected, _ = oracle_routing(model, enc)
    routing = record(model, enc).routing
    assert torch.equal(routing.count[0], expected)


def test_counts_sum_to_top_k_times_real_tokens(arch):
    model = tiny(arch)
    enc = encode(model)
    routing = record(model, enc).routing
    spec = mi.describe(model)
    assert int(routing.tokens[0]) == int(enc["attention_mask"].sum())
    assert (routing.count[0].sum(-1) == spec.top_k * enc["attention_mask"].sum()).all()
    assert routing.layers == spec.moe_layers


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe"])
def test_counts_equal_hf_output_router_logits_topk(arch):
    """Second oracle: transformers' own output_router_logits, softmax/top-k by hand."""
    model = tiny(arch)
    enc = encode(model)
    with torch.no_grad():
        out = model._module(**enc, output_router_logits=True)
    real = enc["attention_mask"].reshape(-1).bool()
    spec = mi.describe(model)
    expected = torch.stack([
        torch.bincount(torch.topk(logits.softmax(-1), spec.top_k, -1).indices[real].reshape(-1),
                       minlength=spec.num_experts) for logits in out.router_logits])
    assert torch.equal(record(model, enc).routing.count[0], expected)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss"])
def test_padded_batch_equals_sum_of_single_prompts(arch, side):
    model = tiny(arch)
    batch = record(model, encode(model, padding_side=side)).routing
    singles = [record(model, encode(model, [p])).routing for p in PROMPTS]
    assert torch.equal(batch.count[0], sum(s.count[0] for s in singles))
    assert torch.equal(batch.tokens[0], sum(s.tokens[0] for s in singles))
    assert torch.allclose(batch.gate_mass[0], sum(s.gate_mass[0] for s in singles), atol=1e-4)


def test_two_invokes_equal_two_traces():
    model = tiny("qwen3_moe")
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(PROMPTS[0], group="a"):
            pass
        with tr.invoke(PROMPTS[2], group="b"):
            pass
    assert tr.routing.languages == ("a", "b")
    for i, prompt in enumerate([PROMPTS[0], PROMPTS[2]]):
        alone = record(model, prompt).routing
        assert torch.equal(tr.routing.count[i], alone.count[0])
        assert torch.equal(tr.routing.tokens[i], alone.tokens[0])


def test_unlabelled_invokes_are_numbered_and_empty_invoke_is_whole_batch():
    model = tiny("olmoe")
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(PROMPTS[0]):
            pass
        with tr.invoke(PROMPTS[1]):
            pass
        with tr.invoke():
            out = model.lm_head.output.save()
    assert tr.routing.languages == ("invoke0", "invoke1")
    assert out.shape[0] == 2


@pytest.mark.parametrize("arch", ["qwen3_moe", "llama4_text", "deepseek_v3"])
def test_per_token_indices_reproduce_aggregate_counts(arch):
    model = tiny(arch)
    routing = record(model, encode(model), per_token=True).routing
    pt = routing.per_token
    n = int(routing.tokens[0])
    assert pt["indices"].shape == (n, len(routing.layers), routing.top_k)
    assert pt["indices"].dtype == torch.int16 and pt["weights"].dtype == torch.float16
    rebuilt = torch.stack([torch.bincount(pt["indices"][:, i].long().reshape(-1), minlength=routing.num_experts)
                           for i in range(len(routing.layers))])
    assert torch.equal(rebuilt, routing.count[0])
    # positions count real tokens only, so each row's positions are 0..len-1
    lengths = encode(model)["attention_mask"].sum(-1)
    for row, length in enumerate(lengths.tolist()):
        assert pt["position"][pt["row"] == row].tolist() == list(range(length))


def test_router_record_inside_body_user_code_still_works():
    model = tiny("qwen3_moe")
    with mi.trace(model, ["Hello", "Bonjour tout le monde"], mi.RouterRecord()) as tr:
        gate = model.model.layers[0].mlp.gate.output.save()
        logits = model.lm_head.output.save()
    assert torch.equal(logits, tr.output.logits)
    assert gate[2].shape[-1] == 2
    assert tr.routing.languages == ("default",)


def test_tally_equals_bincount_of_real_bins_and_never_reads_the_data():
    """`kernels.tally` counts tokens per group. Oracle: torch.bincount on the non-padding bins.
    The meta device has no data, so ops that size their output from the data (boolean
    indexing, bincount: on a GPU each waits for the device) raise there; tally must not."""
    from moe_interp import kernels

    generator = torch.Generator().manual_seed(0)
    bins = torch.randint(-1, 12, (50, 3), generator=generator)  # -1: padding
    weights = torch.rand(50, 3, generator=generator)
    real = bins >= 0
    assert (bins < 0).any() and real.any()
    assert torch.equal(kernels.tally(bins, 12), torch.bincount(bins[real], minlength=12))
    torch.testing.assert_close(kernels.tally(bins, 12, weights),
                               torch.bincount(bins[real], weights[real].double(), minlength=12))

    meta_bins, meta_weights = bins.to("meta"), weights.to("meta")
    with pytest.raises(Exception):  # the check has teeth: the obvious way reads the data
        torch.bincount(meta_bins[meta_bins >= 0], minlength=12)
    assert kernels.tally(meta_bins, 12).shape == (12,)
    assert kernels.tally(meta_bins, 12, meta_weights).dtype == torch.float64


def _loop_totals(group, layers, num_groups, num_experts):
    """Hand-counted [groups, layers, experts] counts and gate mass (padding: group -1)."""
    count = torch.zeros(num_groups, len(layers), num_experts, dtype=torch.long)
    mass = torch.zeros(num_groups, len(layers), num_experts, dtype=torch.float64)
    for layer, (indices, weights) in enumerate(layers):
        for t, g in enumerate(group.tolist()):
            for e, w in zip(indices[t].tolist(), weights[t].tolist()):
                if g >= 0:
                    count[g, layer, e] += 1
                    mass[g, layer, e] += w
    return count, mass


def test_totals_fold_layers_into_group_totals_and_run_without_data():
    """`kernels.totals_*` (what RouterRecord counts with, per forward) against a Python loop,
    on ragged groups with padding; then the same calls on the meta device."""
    from moe_interp import kernels

    generator = torch.Generator().manual_seed(1)
    group = torch.tensor([0, 0, 1, -1, 2, 2, 2, -1, 1])
    G, E, K = 3, 5, 2
    layers = [(torch.randint(0, E, (9, K), generator=generator), torch.rand(9, K, generator=generator))
              for _ in range(4)]
    store = {"count": torch.ones(G, 4, E, dtype=torch.long), "gate_mass": torch.zeros(G, 4, E, dtype=torch.float64)}
    totals = kernels.totals_start(group, 4, G, E, K, "cpu")
    for layer, (indices, weights) in enumerate(layers):
        kernels.totals_add(totals, layer, indices, weights)
    kernels.totals_fold(totals, store)
    count, mass = _loop_totals(group, layers, G, E)
    assert torch.equal(store["count"], count + 1)  # added to what was there
    torch.testing.assert_close(store["gate_mass"], mass)
    with pytest.raises(ValueError, match="register an adapter"):
        kernels.totals_add(totals, 0, layers[0][0][:5], layers[0][1][:5])

    meta = kernels.totals_start(group.to("meta"), 4, G, E, K, "meta")
    kernels.totals_add(meta, 0, layers[0][0].to("meta"), layers[0][1].to("meta"))
    kernels.totals_fold(meta, {"count": torch.zeros(G, 4, E, dtype=torch.long, device="meta"),
                               "gate_mass": torch.zeros(G, 4, E, dtype=torch.float64, device="meta")})
