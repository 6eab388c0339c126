"""`mi.ablation_grid` and `mi.steering_eval` on corpora of parallel pairs (issue 27, section 1):
`{(source language, target language): [(source text, target text), ...]}` on an encoder-decoder
model, a direction `"fra-eng"` the unit of evaluation.

Semantics under test: a profile of pairs groups the encoder's statistics by source language and
the decoder's by target language; ablating a direction (s, t) reroutes the encoder's experts
exclusive to s and the decoder's exclusive to t, each from its own stack's counts; steering a
direction steers the encoder toward the experts (target, s) share and the decoder toward those
(target, t) share (a side already in the target language is not steered); each pair is scored by
the decoder's teacher-forced NLL of its target given its source.

Oracles, sharing no code with moe_interp: exclusive and shared experts computed here from each
stack's counts by the paper's rule; the interventions as torch forward hooks on the router
classifiers and each pair's NLL as Hugging Face's own `labels=` loss of that pair alone
(`test_workflows_seq2seq.hf_nll`).
"""

import dataclasses
import functools
import itertools

import pytest
import torch

import moe_interp as mi
from test_workflows_seq2seq import bits, hf_nll, tiny

LANGUAGES = ("eng", "deu", "fin")


@functools.lru_cache(maxsize=None)
def udhr(split):
    return mi.datasets.udhr(list(LANGUAGES), split=split)


def pairs(split, directions, n, size, start=0):
    """Aligned UDHR pairs of each direction (the UDHR's texts align by index), cut to `size`
    characters: mixed lengths, so batches pad."""
    texts = udhr(split)
    return {(s, t): [(a[:size], b[:size]) for a, b in zip(texts[s][start:start + n], texts[t][start:start + n])]
            for s, t in directions}


INTO_AND_OUT = [("deu", "eng"), ("fin", "eng"), ("eng", "fin"), ("eng", "deu")]


@functools.lru_cache(maxsize=None)
def profiled_pairs(arch):
    return mi.profile(tiny(arch), pairs("train", INTO_AND_OUT, 5, 80), progress=False)


def hand_shares(stats, languages, k):
    """The paper's shares by hand: per (language, layer) each expert's count / tokens, only the
    top-k kept, divided by the sum over `languages`."""
    rows = [stats.languages.index(l) for l in languages]
    freq = stats.count[rows].double() / stats.tokens[rows].double()[:, None, None]
    top = torch.topk(freq, k, dim=-1).indices
    kept = torch.zeros_like(freq).scatter_(-1, top, freq.gather(-1, top))
    return kept / (kept.sum(0, keepdim=True) + 1e-10)


def hand_exclusive(stats, language, k, threshold, layers):
    """`{layer: experts}` whose share for `language`, among every language of `stats`, is above `threshold`."""
    p = hand_shares(stats, stats.languages, k)[stats.languages.index(language)]
    return {layer: (p[stats.layers.index(layer)] > threshold).nonzero().flatten().tolist() for layer in layers}


def hand_shared(stats, languages, k, threshold, layers):
    """`{layer: {expert: first language's share}}` of the experts every share of which is below `threshold`."""
    p = hand_shares(stats, languages, k)
    out = {}
    for layer in layers:
        i = stats.layers.index(layer)
        chosen = ((p[:, i] > 0).any(0) & (p[:, i] < threshold).all(0)).nonzero().flatten().tolist()
        out[layer] = {e: float(p[0, i, e]) for e in chosen}
    return out


def matched_by_hand(stats, language, layer, ablated):
    """The usage-matched stand-ins with match=1, for every order the ablated experts may be taken
    in: experts ranked by `language`'s frequency in `layer` (most used first, ties by index), each
    ablated expert taking the nearest free not-ablated expert in rank (ties: closer frequency,
    then lower index). A list of sorted expert lists."""
    i, j = stats.languages.index(language), stats.layers.index(layer)
    used = (stats.count[i, j].double() / float(stats.tokens[i])).tolist()
    order = sorted(range(len(used)), key=lambda e: (-used[e], e))
    rank = {e: r for r, e in enumerate(order)}
    outcomes = []
    for taken in itertools.permutations(ablated):
        free, picked = [e for e in range(len(used)) if e not in ablated], []
        for a in taken:
            pick = min(free, key=lambda e: (abs(rank[e] - rank[a]), abs(used[e] - used[a]), e))
            free.remove(pick)
            picked.append(pick)
        outcomes.append(sorted(picked))
    return outcomes


def as_lists(expert_set):
    return {layer: list(expert_set[layer]) for layer in expert_set}


# ------------------------------------------------------------------------------------- ablation_grid
@pytest.mark.parametrize("arch", ["nllb-moe", "switch_transformers"])
def test_ablating_a_direction_reroutes_its_sources_encoder_experts_and_its_targets_decoder_experts(arch):
    model, stats = tiny(arch), profiled_pairs(arch)
    assert stats["encoder"].languages == ("deu", "fin", "eng") and stats["decoder"].languages == ("eng", "fin", "deu")
    test = pairs("heldout", [("deu", "eng"), ("fin", "eng"), ("eng", "fin")], 2, 50)
    test[("deu", "eng")][1] = ("Ja.", test[("deu", "eng")][1][1])  # a short source: its row pads
    res = mi.ablation_grid(model, stats, test, ["deu-eng", ("fin", "eng"), "eng-fin"], [("deu", "eng")],
                           bands=("late-third",), k=2, threshold=0.3, controls=1, resamples=20, batch_size=2,
                           progress=False, match=1)
    assert res.eval_languages == ("deu-eng", "fin-eng", "eng-fin") and res.conditions == (("deu-eng", "late-third"),)
    assert res.directions == {"deu-eng": ("deu", "eng"), "fin-eng": ("fin", "eng"), "eng-fin": ("eng", "fin")}
    # the encoder's experts exclusive to deu (the source), the decoder's exclusive to eng (the target)
    encoder = hand_exclusive(stats["encoder"], "deu", 2, 0.3, [3])
    decoder = hand_exclusive(stats["decoder"], "eng", 2, 0.3, [7])
    want = {layer: experts for layer, experts in {**encoder, **decoder}.items() if experts}
    assert encoder[3] and decoder[7]  # both sides ablate something
    chosen = res.sets["ablate:deu-eng:late-third"]
    assert as_lists(chosen) == want
    assert res.among_by_stack == {"encoder": ("deu", "fin", "eng"), "decoder": ("eng", "fin", "deu")}
    for row in res.frame[res.frame.condition == "ablate:deu-eng:late-third"].itertuples():
        pair = test[res.directions[row.language]][row.item]
        assert row.bytes == len(pair[1].encode())  # bits per byte of the target
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, pair, ablate=want), pair), rel=1e-5)
    for row in res.frame[res.frame.condition == "baseline"].itertuples():
        pair = test[res.directions[row.language]][row.item]
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, pair), pair), rel=1e-5)
    control = as_lists(res.sets["control:deu-eng:late-third:0"])
    assert {layer: len(e) for layer, e in control.items()} == {layer: len(e) for layer, e in want.items()}
    # usage-matched on each side's own language and stack (match=1: the nearest free expert in usage rank)
    sides = {3: ("encoder", "deu"), 7: ("decoder", "eng")}
    for layer, (stack, language) in sides.items():  # (this data does not tell the languages apart: next test)
        assert sorted(control[layer]) in matched_by_hand(stats[stack], language, layer, want[layer])
    cell = res.frame[res.frame.condition == "control:deu-eng:late-third:0"]
    assert set(cell.language) == {"deu-eng"}  # controls run on the target direction's own pairs
    for row in cell.itertuples():
        pair = test[("deu", "eng")][row.item]
        assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, pair, ablate=control), pair), rel=1e-5)
    # a direction's family is its source's -> its target's: deu-eng has no same-family direction evaluated
    assert res.families == {"deu-eng": "Indo-European → Indo-European", "fin-eng": "Uralic → Indo-European",
                            "eng-fin": "Indo-European → Uralic"}
    verdict = res.verdicts().iloc[0]
    assert verdict.language == "deu-eng" and verdict.same_family_languages == ""
    assert verdict.other_family_languages == "fin-eng, eng-fin"
    assert "its family is its source's → its target's" in res.summary()



def test_controls_are_matched_on_each_side_s_own_language_and_stack():
    """Designed counts where the usage ranks of deu, fin and eng differ in both late layers: a
    direction deu-eng's random control (match=1) in the encoder is the nearest expert in deu's
    rank, in the decoder in eng's; matched on any other language of that stack, it would differ."""
    model, profiled = tiny("nllb-moe"), profiled_pairs("nllb-moe")
    usage = {"deu": [100, 60, 50, 40, 30, 20, 10, 5], "fin": [0, 100, 50, 45, 30, 20, 10, 5],
             "eng": [0, 100, 5, 10, 20, 30, 40, 50]}  # expert 0: deu's alone
    decoder_usage = {"eng": [100, 60, 50, 40, 30, 20, 10, 5], "fin": [0, 100, 50, 45, 30, 20, 10, 5],
                     "deu": [0, 100, 5, 10, 20, 30, 40, 50]}  # expert 0: eng's alone
    stats = {}
    for stack, layer, table in (("encoder", 3, usage), ("decoder", 7, decoder_usage)):
        s = profiled[stack]
        count = s.count.clone()
        for language, values in table.items():
            count[s.languages.index(language), s.layers.index(layer)] = torch.tensor(values)
        tokens = count.sum(-1).max(-1).values  # every layer's counts within its language's tokens
        stats[stack] = dataclasses.replace(s, count=count, tokens=tokens, gate_mass=count.double(), item_count=None,
                                           item_tokens=None, item_language=None)
    test = pairs("heldout", [("deu", "eng"), ("fin", "eng")], 2, 50)
    res = mi.ablation_grid(model, stats, test, ["deu-eng", "fin-eng"], ["deu-eng"], bands={"late": [3, 7]}, k=2,
                           threshold=0.3, controls=1, resamples=20, batch_size=2, progress=False, match=1)
    chosen, control = as_lists(res.sets["ablate:deu-eng:late"]), as_lists(res.sets["control:deu-eng:late:0"])
    assert chosen == {3: [0], 7: [0]}
    for layer, stack, language in ((3, "encoder", "deu"), (7, "decoder", "eng")):
        right = matched_by_hand(stats[stack], language, layer, chosen[layer])
        assert [sorted(control[layer])] == right
        for other in set(stats[stack].languages) - {language}:
            assert matched_by_hand(stats[stack], other, layer, chosen[layer]) != right

def test_a_stack_band_of_a_direction_ablates_that_side_only():
    model, stats = tiny("switch_transformers"), profiled_pairs("switch_transformers")
    test = pairs("heldout", [("fin", "eng"), ("deu", "eng")], 2, 40)
    res = mi.ablation_grid(model, stats, test, ["fin-eng", "deu-eng"], ["fin-eng"], bands=("encoder:late",), k=2,
                           threshold=0.3, controls=1, resamples=20, progress=False)
    want = hand_exclusive(stats["encoder"], "fin", 2, 0.3, [3])
    assert want[3] and as_lists(res.sets["ablate:fin-eng:encoder:late"]) == want
    row = res.frame[res.frame.condition == "ablate:fin-eng:encoder:late"].iloc[0]
    pair = test[("fin", "eng")][int(row["item"])]
    assert row.bits_per_byte == pytest.approx(bits(hf_nll(model, pair, ablate=want), pair), rel=1e-5)


def test_a_stack_whose_statistics_hold_one_language_is_refused_when_ablated():
    """Pairs all into English: the decoder knows English only, among which every used expert is
    'exclusive'; ablating the decoder is refused, the encoder's band still runs."""
    model = tiny("switch_transformers")
    into = [("deu", "eng"), ("fin", "eng")]
    stats = mi.profile(model, pairs("train", into, 3, 60), progress=False)
    test = pairs("heldout", into, 2, 40)
    with pytest.raises(ValueError, match=r"decoder's statistics hold one language \(eng\).*bands=\('encoder:"):
        mi.ablation_grid(model, stats, test, ["deu-eng", "fin-eng"], ["deu-eng"], bands=("late",), k=2,
                         controls=1, resamples=20, progress=False)
    res = mi.ablation_grid(model, stats, test, ["deu-eng", "fin-eng"], ["deu-eng"], bands=("encoder:late",), k=2,
                           threshold=0.3, controls=1, resamples=20, progress=False)
    assert set(res.sets["ablate:deu-eng:encoder:late"]) <= {3}


def test_the_held_out_check_compares_sources_with_the_encoders_texts_and_targets_with_the_decoders():
    model, stats = tiny("switch_transformers"), profiled_pairs("switch_transformers")
    train = pairs("train", INTO_AND_OUT, 5, 80)
    test = pairs("heldout", [("deu", "eng"), ("fin", "eng")], 2, 40)
    source_seen = {**test, ("deu", "eng"): [(train[("deu", "eng")][0][0], "A new target."), *test[("deu", "eng")]]}
    target_seen = {**test, ("fin", "eng"): [("Uusi lähde.", train[("fin", "eng")][2][1])]}
    run = functools.partial(mi.ablation_grid, model, stats, eval_languages=["deu-eng", "fin-eng"],
                            target_languages=["deu-eng"], k=2, controls=1, resamples=20, progress=False)
    with pytest.raises(ValueError, match=r"same deu-eng sources texts .*deu-eng sources: 1 of 3"):
        run(corpus=source_seen)
    with pytest.raises(ValueError, match=r"same fin-eng targets texts .*fin-eng targets: 1 of 1"):
        run(corpus=target_seen)
    assert run(corpus=target_seen, allow_same_texts=True, bands=("late",)).eval_languages == ("deu-eng", "fin-eng")


def test_a_rerun_with_path_reuses_each_directions_cells_by_content(tmp_path, monkeypatch):
    from moe_interp.experiments import _grid

    model, stats = tiny("switch_transformers"), profiled_pairs("switch_transformers")
    test = pairs("heldout", [("deu", "eng"), ("fin", "eng")], 2, 40)
    scored = []
    real = _grid.text_nll
    monkeypatch.setattr(_grid, "text_nll", lambda model, texts, *a, **kw: scored.append(list(texts))
                        or real(model, texts, *a, **kw))
    run = functools.partial(mi.ablation_grid, model, stats, eval_languages=["deu-eng", "fin-eng"],
                            target_languages=["deu-eng"], bands=("late",), k=2, threshold=0.3, controls=1,
                            resamples=20, path=tmp_path / "cells.jsonl", progress=False)
    first = run(corpus=test)
    assert len(scored) == 5  # baseline and ablation of 2 directions, 1 control
    scored.clear()
    again = run(corpus=test)
    assert scored == [] and again.frame.equals(first.frame)
    # another target text (same source, same direction) is other content: only that direction's cells rerun
    changed = {**test, ("fin", "eng"): [(test[("fin", "eng")][0][0], "Another target."), test[("fin", "eng")][1]]}
    run(corpus=changed)
    assert scored == [changed[("fin", "eng")]] * 2


@pytest.mark.parametrize("workflow", ["ablation_grid", "steering_eval"])
def test_a_corpus_mixing_pairs_and_texts_or_pairs_on_a_causal_lm_is_refused(workflow):
    stats = profiled_pairs("switch_transformers")
    mixed = {("deu", "eng"): [("Hallo.", "Hello.")], "fin": ["Hei."]}
    good = {("deu", "eng"): [("Guten Tag.", "Good day.")], ("fin", "eng"): [("Hei.", "Hi.")]}

    def run(model, stats, corpus):
        if workflow == "ablation_grid":
            return mi.ablation_grid(model, stats, corpus, ["deu-eng", "fin-eng"], ["deu-eng"], progress=False)
        return mi.steering_eval(model, stats, corpus, corpus, ["deu-eng"], allow_same_texts=True, progress=False)

    with pytest.raises(TypeError, match=r"got the key 'fin'. Use one form for the whole corpus"):
        run(tiny("switch_transformers"), stats, mixed)
    qwen = tiny("qwen3_moe")
    with pytest.raises(ValueError, match=rf"{workflow}.*pairs needs an encoder-decoder model.*pass \{{language"):
        run(qwen, mi.profile(qwen, {"eng": ["Hi."]}, progress=False), good)


def test_an_unknown_direction_is_refused_listing_the_corpus_directions():
    model, stats = tiny("switch_transformers"), profiled_pairs("switch_transformers")
    test = pairs("heldout", [("deu", "eng"), ("fin", "eng")], 1, 40)
    with pytest.raises(ValueError, match=r"target_languages names 'deu'.*one of 'deu-eng', 'fin-eng'"):
        mi.ablation_grid(model, stats, test, ["deu-eng", "fin-eng"], ["deu"], progress=False)


# ------------------------------------------------------------------------------------ steering_eval
@functools.lru_cache(maxsize=None)
def profiled_texts(arch):
    return mi.profile(tiny(arch), {l: [t[:80] for t in texts[:5]] for l, texts in udhr("train").items()},
                      progress=False)


@pytest.mark.parametrize("arch", ["nllb-moe", "switch_transformers"])
def test_steering_a_direction_steers_each_side_toward_what_it_shares_with_the_target(arch):
    """deu-fin: the encoder toward (eng, deu) in the encoder's counts, the decoder toward (eng,
    fin) in the decoder's; fin-eng: its target is already eng, so only the encoder is steered."""
    model, stats = tiny(arch), profiled_texts(arch)
    directions = [("deu", "fin"), ("fin", "eng")]
    dev = pairs("train", directions, 2, 40, start=6)
    test = pairs("heldout", directions, 2, 50)
    test[("deu", "fin")][0] = ("Ja.", test[("deu", "fin")][0][1])  # a short source: its row pads
    res = mi.steering_eval(model, stats, dev, test, ["deu-fin", ("fin", "eng")], scales=(0.0, 8.0), layers="late",
                           k=3, resamples=50, batch_size=2, progress=False)
    assert res.table.language.tolist() == ["deu-fin", "fin-eng"] and res.steered_layers == (3, 7)
    steers = {"deu-fin": {**hand_shared(stats["encoder"], ("eng", "deu"), 3, 0.7, [3]),
                          **hand_shared(stats["decoder"], ("eng", "fin"), 3, 0.7, [7])},
              "fin-eng": hand_shared(stats["encoder"], ("eng", "fin"), 3, 0.7, [3])}
    assert all(steers["deu-fin"].values()) and steers["fin-eng"][3]
    outcome = res.outcome[res.outcome.scale == 8.0].set_index("language")
    for i, (label, key) in enumerate((("deu-fin", ("deu", "fin")), ("fin-eng", ("fin", "eng")))):
        assert int(outcome.loc[label, "pairs"]) == sum(len(s) for s in steers[label].values())
        for item, pair in enumerate(test[key]):
            gain = bits(hf_nll(model, pair), pair) - bits(hf_nll(model, pair, steer=steers[label], scale=8.0), pair)
            assert res.gains[8.0][i][item] == pytest.approx(gain, rel=1e-4, abs=2e-5)
    assert max(abs(g) for g in res.gains[8.0][0]) > 1e-4  # the steer changed the scores, beyond rounding
    # the routing shift reads each stack's tokens: the sources' in the encoder, the targets' in the decoder
    tok = model.tokenizer
    for scale in (0.0, 8.0):
        shift = res.shift[(res.shift.scale == scale) & (res.shift.language == "deu-fin")].set_index("layer")
        sources = sum(len(tok(s)["input_ids"]) for s, _ in test[("deu", "fin")])
        targets = sum(len(tok(text_target=t)["input_ids"]) for _, t in test[("deu", "fin")])
        assert shift.tokens.to_dict() == {1: sources, 3: sources, 5: targets, 7: targets}
    moved = res.shift[(res.shift.scale == 8.0) & (res.shift.language == "fin-eng")].set_index("layer")
    assert float(moved.loc[1, "changed"]) == 0.0 and float(moved.loc[3, "changed"]) > 0


def test_steering_refuses_dev_and_test_of_different_forms_and_a_direction_with_nothing_to_steer():
    model, stats = tiny("switch_transformers"), profiled_texts("switch_transformers")
    dev = pairs("train", [("deu", "fin")], 2, 40, start=6)
    test = pairs("heldout", [("deu", "fin")], 2, 40)
    with pytest.raises(ValueError, match="dev and test must take the same form.*dev as pairs and test as texts"):
        mi.steering_eval(model, stats, dev, {"deu-fin": ["Hallo."]}, ["deu-fin"], progress=False)
    into = [("deu", "eng")]
    by_pairs = mi.profile(model, pairs("train", into, 3, 60), progress=False)  # encoder: deu only, decoder: eng
    with pytest.raises(ValueError, match=r"nothing to steer for the directions \['deu-eng'\].*Profile plain texts"):
        mi.steering_eval(model, by_pairs, pairs("train", into, 2, 40, start=6), pairs("heldout", into, 2, 40),
                         [("deu", "eng")], progress=False)
    with pytest.raises(ValueError, match=r"same deu-fin targets texts"):
        mi.steering_eval(model, stats, dev, {("deu", "fin"): [("Neu.", udhr("train")["fin"][0][:80])]},
                         ["deu-fin"], progress=False)
