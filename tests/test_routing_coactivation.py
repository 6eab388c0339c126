"""RouterRecord(co_activation=True): how often experts i and j are chosen for the same token, per
group and MoE layer, against pairs counted by hand from the experts' own arguments (plain torch
hooks, no package code), in a trace with padding and several invokes, in `mi.profile` on both
local paths (torch hooks and nnsight traces) and remotely (`remote="local"`, `NdifSim`)."""


import pytest
import torch
from jaxtyping import TypeCheckError

import moe_interp as mi
from conftest import PROMPTS, by_layer_hooks, hooked_batches, tiny
from test_remote import NdifSim, loaded, ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code; the loaded model)

CORPUS = {"eng": ["The cat sat on the mat.", "Hi", "A much longer English sentence about cats."],
          "deu": ["Die Katze saß auf der Matte.", "Hallo Welt"]}


def chosen_by_hand(model, text):
    """Per MoE layer (model order), the `[tokens, K]` experts each token of `text` (alone, no
    padding) was sent to: the integer argument of every `*.mlp.experts` call, read by a torch
    pre-hook during a plain HF forward."""
    def take(args, kwargs):
        index = next(v for v in [*args, *kwargs.values()] if isinstance(v, torch.Tensor) and not v.is_floating_point())
        return index.reshape(-1, index.shape[-1]).clone()
    return by_layer_hooks(model, text, ".mlp.experts", take, pre=True)


def pairs_by_hand(model, texts, num_experts):
    """`[layers, E, E]`: for every token of `texts`, every ordered pair (a, b) of its chosen experts
    (a == b included) adds one: OLMoE's co-activation counts over all pairs, its diagonal the load."""
    out = None
    for text in texts:
        layers = chosen_by_hand(model, text)
        if out is None:
            out = torch.zeros(len(layers), num_experts, num_experts, dtype=torch.long)
        for layer, rows in enumerate(layers):
            for row in rows.tolist():
                for a in row:
                    for b in row:
                        out[layer, a, b] += 1
    return out


@pytest.mark.parametrize("arch", ["qwen3_moe", "olmoe", "deepseek_v3"])
def test_a_trace_with_padding_and_invokes_counts_the_pairs_counted_by_hand(arch):
    model = tiny(arch)
    E = mi.describe(model).num_experts
    with mi.trace(model, mi.RouterRecord(co_activation=True)) as tr:
        with tr.invoke(PROMPTS[:2], group="a"):     # left-padded within the invoke and across
            pass
        with tr.invoke(PROMPTS[2:], group="b"):
            pass
    routing = tr.routing
    assert routing.groups == ("a", "b") and routing.co_activation.shape == (2, len(routing.layers), E, E)
    for g, texts in enumerate((PROMPTS[:2], PROMPTS[2:])):
        assert torch.equal(routing.co_activation[g], pairs_by_hand(model, texts, E))
    assert torch.equal(routing.co_activation.diagonal(dim1=-2, dim2=-1), routing.count)


def test_without_the_option_nothing_is_recorded_and_the_counts_are_unchanged():
    model = tiny("qwen3_moe")
    with mi.trace(model, PROMPTS, mi.RouterRecord()) as plain:
        pass
    with mi.trace(model, PROMPTS, mi.RouterRecord(co_activation=True)) as paired:
        pass
    assert plain.routing.co_activation is None
    assert torch.equal(plain.routing.count, paired.routing.count)
    assert torch.equal(plain.routing.gate_mass, paired.routing.gate_mass)


def test_a_generation_counts_each_token_s_pairs_once():
    """Generated tokens and the prompt each count once (`kernels.drop_finished`): the diagonal is
    the load whatever the steps, with or without a cache."""
    model = tiny("qwen3_moe")
    for cache in (True, False):
        with mi.generate(model, ["Once upon", "Hi"], mi.RouterRecord(co_activation=True), max_new_tokens=4,
                         do_sample=False, use_cache=cache) as gen:
            pass
        routing = gen.routing
        assert torch.equal(routing.co_activation.diagonal(dim1=-2, dim2=-1), routing.count)
        assert int(routing.co_activation.sum()) == int(routing.tokens.sum()) * routing.top_k ** 2 * len(routing.layers)


def _pairs_loop(group, layers, num_groups, num_experts):
    out = torch.zeros(num_groups, len(layers), num_experts, num_experts, dtype=torch.long)
    for layer, indices in enumerate(layers):
        for t, g in enumerate(group.tolist()):
            row = [e for e in indices[t].tolist() if e >= 0]
            for a in row:
                for b in row:
                    if g >= 0:
                        out[g, layer, a, b] += 1
    return out


def test_the_kernel_counts_pairs_of_chosen_slots_only_and_runs_without_data():
    """`kernels.totals_*` with co_activation against a loop, on ragged groups, padding and "no
    expert" (-1) slots (capacity); then on the meta device (shapes never depend on the data)."""
    from moe_interp.runtime import _kernels as kernels

    generator = torch.Generator().manual_seed(3)
    group = torch.tensor([0, 0, 1, -1, 2, 2, 2, -1, 1])
    G, E, K = 3, 5, 3
    layers = []
    for _ in range(4):
        indices = torch.randint(0, E, (9, K), generator=generator)
        indices[torch.rand(9, K, generator=generator) < 0.2] = -1
        layers.append(indices)
    store = {"count": torch.zeros(G, 4, E, dtype=torch.long), "gate_mass": torch.zeros(G, 4, E, dtype=torch.float64),
             "co_activation": torch.ones(G, 4, E, E, dtype=torch.long)}
    totals = kernels.totals_start(group, 4, G, E, K, "cpu", co_activation=True)
    for layer, indices in enumerate(layers):
        kernels.totals_add(totals, layer, indices, torch.rand(9, K, generator=generator))
    kernels.totals_fold(totals, store)
    assert torch.equal(store["co_activation"], _pairs_loop(group, layers, G, E) + 1)  # added to what was there
    meta = kernels.totals_start(group.to("meta"), 4, G, E, K, "meta", co_activation=True)
    kernels.totals_add(meta, 0, layers[0].to("meta"), torch.rand(9, K).to("meta"))
    kernels.totals_fold(meta, {name: value.to("meta") for name, value in store.items()})


def _by_hand_per_language(model, corpus):
    E = mi.describe(model).num_experts
    return torch.stack([pairs_by_hand(model, texts, E) for texts in corpus.values()])


def test_a_profile_counts_the_pairs_by_hand_on_both_local_paths(monkeypatch):
    model = mi.zoo.tiny_model("qwen3_moe")
    expected = _by_hand_per_language(model, CORPUS)

    def read_by(hooks):
        calls = hooked_batches(monkeypatch, hooks)
        try:
            return mi.profile(model, CORPUS, mi.RouterRecord(co_activation=True), batch_size=2, progress=False), calls
        finally:
            monkeypatch.undo()

    traced, calls = read_by(hooks=False)
    assert not any(calls)
    hooked, calls = read_by(hooks=True)
    assert all(calls[1:]) and len(calls) >= 3  # the first batch may be a trace: it checks the detection
    for stats in (traced, hooked):
        assert stats.co_activation.shape == (2, 4, 8, 8)
        assert torch.equal(stats.co_activation, expected)
        assert torch.equal(stats.co_activation.diagonal(dim1=-2, dim2=-1), stats.count)
    plain = mi.profile(model, CORPUS, batch_size=2, progress=False)
    assert plain.co_activation is None and torch.equal(plain.count, hooked.count)


@pytest.mark.parametrize("remote", ["local", "sim"])
def test_a_remote_trace_sends_back_only_the_pair_table_bitwise_equal(loaded, remote):
    def run(record, **kwargs):
        with mi.trace(loaded, mi.RouterRecord(co_activation=record), **kwargs) as tr:
            with tr.invoke(PROMPTS[:2], group="a"):
                pass
            with tr.invoke(PROMPTS[2:], group="b"):
                pass
        return tr.routing

    here = run(True)
    if remote == "local":
        far = run(True, remote="local")
    else:
        with_pairs, without = NdifSim(loaded), NdifSim(loaded)
        far = run(True, backend=with_pairs)
        run(False, backend=without)
        # what travels back grows by the int32 [groups, layers, E, E] table (and a tensor's framing), not per token
        table = 2 * 4 * 8 * 8 * 4
        assert table <= with_pairs.result_bytes - without.result_bytes <= table + 1024
    assert torch.equal(far.co_activation, here.co_activation) and torch.equal(far.count, here.count)
    assert far.co_activation.dtype == torch.long


@pytest.mark.parametrize("remote", ["local", "sim"])
def test_a_remote_profile_counts_the_pairs_by_hand(loaded, remote):
    kwargs = {"remote": "local"} if remote == "local" else {"backend": NdifSim(loaded)}
    far = mi.profile(loaded, CORPUS, mi.RouterRecord(co_activation=True), batch_size=2, progress=False,
                     request_tokens=100, **kwargs)  # several requests
    assert torch.equal(far.co_activation, _by_hand_per_language(loaded, CORPUS))
    here = mi.profile(loaded, CORPUS, mi.RouterRecord(co_activation=True), batch_size=2, progress=False)
    assert torch.equal(far.co_activation, here.co_activation) and torch.equal(far.count, here.count)


def test_a_two_stack_profile_keeps_each_stack_s_pairs_locally_and_remotely(tmp_path):
    """Switch Transformers: encoder and decoder each their own pairs, equal to a trace's
    `routing_by_stack` per language, and the remote profile's bitwise."""
    source = mi.zoo.tiny_model("switch_transformers")
    source._module.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    model = mi.load(tmp_path)
    corpus = {"eng": ["Hello there", "how are you"], "deu": ["Guten Morgen"]}
    here = mi.profile(model, corpus, mi.RouterRecord(co_activation=True), batch_size=2, progress=False)
    far = mi.profile(model, corpus, mi.RouterRecord(co_activation=True), batch_size=2, progress=False,
                     remote="local")
    for stack, stats in here.items():
        assert torch.equal(stats.co_activation.diagonal(dim1=-2, dim2=-1), stats.count)
        assert torch.equal(far[stack].co_activation, stats.co_activation)
    ids = {lang: model.tokenizer(texts, return_tensors="pt", padding=True) for lang, texts in corpus.items()}
    for i, (lang, enc) in enumerate(ids.items()):
        start = model._module.config.decoder_start_token_id
        decoder = torch.cat([torch.full((enc["input_ids"].shape[0], 1), start), enc["input_ids"][:, :-1]], 1)
        with mi.trace(model, {**enc, "decoder_input_ids": decoder, "decoder_attention_mask": enc["attention_mask"]},
                      mi.RouterRecord(co_activation=True)) as tr:
            pass
        for stack, stats in tr.routing_by_stack.items():
            assert torch.equal(here[stack].co_activation[i], stats.co_activation[0]), (stack, lang)


def test_profile_refuses_what_only_a_trace_records_naming_mi_trace():
    with pytest.raises(ValueError, match=r"mi.trace\(model, mi.RouterRecord\(by_position=\(0, 1, 4, 16, 64\)\)\)"):
        mi.profile(tiny("qwen3_moe"), CORPUS, mi.RouterRecord(by_position=True), progress=False)


def test_the_pair_table_is_saved_checked_selected_and_merged(tmp_path):
    model = tiny("qwen3_moe")
    stats = mi.profile(model, CORPUS, mi.RouterRecord(co_activation=True), progress=False)
    back = mi.RoutingStats.load(stats.save(tmp_path / "with.routing"))
    assert torch.equal(back.co_activation, stats.co_activation)
    plain = mi.RoutingStats.load(mi.profile(model, CORPUS, progress=False).save(tmp_path / "without.routing"))
    assert plain.co_activation is None  # files without the table load as before
    one = stats.select(["deu"], layers=[1, 2])
    assert torch.equal(one.co_activation, stats.co_activation[1:, 1:3])
    merged = stats.select(["eng"]).merge(stats.select(["deu", "eng"]))
    assert torch.equal(merged.co_activation, torch.stack([2 * stats.co_activation[0], stats.co_activation[1]]))
    assert stats.merge(plain).co_activation is None  # kept only when every part has it
    with pytest.raises((ValueError, TypeCheckError), match="co_activation"):  # the annotation, or the stats' check
        mi.RoutingStats(stats.languages, stats.layers, 8, 2, stats.count, stats.gate_mass, stats.tokens,
                        co_activation=stats.co_activation[:, :, :4])
    with pytest.raises(ValueError, match="co_activation.* must be non-negative"):
        mi.RoutingStats(stats.languages, stats.layers, 8, 2, stats.count, stats.gate_mass, stats.tokens,
                        co_activation=-stats.co_activation)


def test_the_rate_is_olmoe_s_normalisation_of_the_pairs_by_hand_and_its_heatmap_shows_it():
    """`co_activation_rate`: of the tokens routed to expert i, the share also routed to j, from the
    hook pairs by hand; the heatmap shows it in %, the groups pooled."""
    model = tiny("qwen3_moe")
    with mi.trace(model, mi.RouterRecord(co_activation=True)) as tr:
        with tr.invoke(PROMPTS[:2], group="a"):
            pass
        with tr.invoke(PROMPTS[2:], group="b"):
            pass
    pairs = pairs_by_hand(model, PROMPTS, 8).double()   # both groups pooled
    by_hand = torch.full_like(pairs, float("nan"))
    for layer in range(pairs.shape[0]):
        for i in range(8):
            if pairs[layer, i, i] > 0:
                for j in range(8):
                    by_hand[layer, i, j] = 0.0 if i == j else pairs[layer, i, j] / pairs[layer, i, i]
    rate = tr.routing.co_activation_rate(pooled=True)[0]
    torch.testing.assert_close(rate, by_hand, equal_nan=True, rtol=0, atol=0)
    chosen = rate.isfinite().all(-1)
    torch.testing.assert_close(rate.sum(-1)[chosen], torch.ones_like(rate.sum(-1)[chosen]))  # top-2: one partner
    figure = tr.routing.plot_co_activation(layer=2)
    torch.testing.assert_close(torch.tensor(figure.data[0].z, dtype=torch.float64), 100 * by_hand[2], equal_nan=True)
    with pytest.raises(ValueError, match=r"RouterRecord\(co_activation=True\)"):
        mi.profile(model, CORPUS, progress=False).co_activation_rate()
