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
    from moe_interp.runtime import _kernels as kernels

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
    from moe_interp.runtime import _kernels as kernels

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


# -- generation: rows that end early stop counting (issue 12, section 3) -----------------

def hf_generate_alone(model, prompt, **generate):
    """HF's own greedy generation of one prompt (no batch, no padding, no nnsight) and what
    the experts of each MoE layer received over all its forwards (torch pre-hooks)."""
    spec = mi.describe(model)
    hf, seen = model._module, {layer: [] for layer in spec.moe_layers}
    handles = [hf.get_submodule(path).register_forward_pre_hook(
        lambda module, args, layer=layer: seen[layer].append(args[1].detach().reshape(-1)))
        for layer, path in zip(spec.moe_layers, spec.experts)]
    enc = model.tokenizer([prompt], return_tensors="pt")
    try:
        with torch.no_grad():
            out = hf.generate(**enc, **generate)
    finally:
        for handle in handles:
            handle.remove()
    counts = torch.stack([torch.bincount(torch.cat(seen[l]), minlength=spec.num_experts) for l in spec.moe_layers])
    return out[0, enc["input_ids"].shape[1]:], counts


def test_generate_batch_counts_equal_each_prompt_alone_when_rows_end_early():
    """A row that ends (EOS) while others go on is fed its EOS and then padding; those tokens
    used to be counted (a row of 3 new tokens recorded 9 in the batch). Oracle: HF's generate
    of each prompt alone, with hooks on the experts."""
    model = tiny("qwen3_moe")
    prompts = ["Once upon a time", "The cat sat", "Hi"]
    greedy = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    free = [hf_generate_alone(model, p, eos_token_id=None, **greedy)[0].tolist() for p in prompts]
    eos = free[0][2]  # the first prompt's third new token ends it; the others never produce it
    assert eos not in free[0][:2] and all(eos not in f for f in free[1:])
    alone = [hf_generate_alone(model, p, eos_token_id=eos, **greedy) for p in prompts]
    assert [len(ids) for ids, _ in alone] == [3, 10, 10]

    with mi.generate(model, mi.RouterRecord(), eos_token_id=eos, **greedy) as gen:
        for i, prompt in enumerate(prompts):
            with gen.invoke(prompt, group=str(i)):
                pass
    routing = gen.routing
    for i, (prompt, (ids, counts)) in enumerate(zip(prompts, alone)):
        assert torch.equal(routing.count[i], counts), prompt
        assert int(routing.tokens[i]) == len(prompt) + len(ids) - 1  # the last new token is never fed back
    # one group, the prompts as a list: the sum of the prompts alone
    with mi.generate(model, prompts, mi.RouterRecord(per_token=True), eos_token_id=eos, **greedy) as gen:
        pass
    assert torch.equal(gen.routing.count[0], sum(counts for _, counts in alone))
    assert gen.routing.per_token["indices"].shape[0] == sum(len(p) + len(ids) - 1 for p, (ids, _) in zip(prompts, alone))
    assert torch.equal(gen.output[0, -10:][:3], alone[0][0])  # the batch did generate what each alone did


def test_generate_with_stop_strings_on_a_batch_is_refused_naming_the_fix():
    model = tiny("qwen3_moe")
    with pytest.raises(ValueError, match="EOS token only.*one prompt per call"):
        mi.generate(model, ["ab", "cd"], mi.RouterRecord(), stop_strings=["x"], tokenizer=model.tokenizer)


def test_drop_finished_marks_rows_after_their_eos_and_runs_without_data():
    """`kernels.drop_finished` on a hand-written cached generation: prompt of 3 columns, then
    one new token per row per forward; EOS ids 2 and 9. Then on the meta device (no data
    reads: a host wait per forward on a GPU otherwise)."""
    from moe_interp.runtime import _kernels as kernels

    store = {"forwards": 0}
    prompt = torch.tensor([[5, 2, 7], [4, 4, 4]])  # an EOS id inside the prompt ends nothing
    row = torch.arange(2).repeat_interleave(3)
    assert kernels.drop_finished(((), {"input_ids": prompt}), torch.zeros(6, dtype=torch.long), row, store,
                                 [2, 9]).tolist() == [0] * 6
    row = torch.arange(2)
    seen = []
    for step, new in enumerate([[7, 9], [2, 0], [3, 0]]):  # row 1 ends at step 0, row 0 at step 1
        store["forwards"] = step + 1
        seen.append(kernels.drop_finished(((), {"input_ids": torch.tensor(new)[:, None]}),
                                          torch.tensor([0, 1]), row, store, [2, 9]).tolist())
    assert seen == [[0, -1], [-1, -1], [-1, -1]]

    meta = {"forwards": 0}
    kernels.drop_finished(((), {"input_ids": prompt.to("meta")}), torch.zeros(6, dtype=torch.long, device="meta"),
                          torch.zeros(6, dtype=torch.long, device="meta"), meta, [2])
    meta["forwards"] = 1
    out = kernels.drop_finished(((), {"input_ids": torch.ones(2, 1, dtype=torch.long, device="meta")}),
                                torch.zeros(2, dtype=torch.long, device="meta"), row.to("meta"), meta, [2, 9])
    assert out.device.type == "meta" and out.shape == (2,)
