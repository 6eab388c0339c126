"""One reader of the routing the experts used: `runtime._reader.routing`, `set_weights`,
`set_indices` over the readout kinds of `arch._sites` (Switch's dispatch mask, NLLB-MoE's dense
scores here; a kind defined in a test: tests/test_readouts.py), and what reads through them
(the router view, RouterRecord, the drop edit, attribution), on the cases that were silently
wrong.

Oracles share no code with moe_interp: torch forward hooks on the routers and on the experts
modules (the arguments the model itself passed them, and the rows each expert submodule
really computed), found by class name; hand-written router maths; HF's own outputs.
"""

import contextlib
import functools
import math

import nnsight
import pytest
import torch

import moe_interp as mi
from conftest import _rows_to_tokens

SOURCES = ["Hello there, how are you", "Bonjour", "Guten Morgen, liebe Welt", "ok"]
TARGETS = ["Hallo", "Salut tout le monde!", "Hi there", "ja"]  # even lengths (24, 20): see below


def seq2seq_batch(model, sources, targets):
    tok = model.tokenizer
    enc = tok(list(sources), return_tensors="pt", padding=True)
    dec = tok(list(targets), return_tensors="pt", padding=True)
    return {**enc, "decoder_input_ids": dec["input_ids"], "decoder_attention_mask": dec["attention_mask"]}


@contextlib.contextmanager
def switch_oracle(hf):
    """Per Switch MoE layer (model order: encoder, then decoder), what HF's own modules did in
    the forward(s) run in the block: `logits` (`[B, S, E]`, the router's own third output),
    `mask` / `probs` (its dispatch mask and chosen probability) and, from the experts
    module's own arguments, `dispatched` (`[T, E]` 0/1) and `gate` (`[T]`: the weight each
    token's expert output is multiplied by)."""
    routers = [m for m in hf.modules() if type(m).__name__ == "SwitchTransformersTop1Router"]
    experts = [m for m in hf.modules() if type(m).__name__ == "SwitchTransformersExperts"]
    assert len(routers) == len(experts) > 0
    seen = [{} for _ in routers]
    handles = []
    for layer, (router, module) in enumerate(zip(routers, experts)):
        def on_router(m, args, out, layer=layer):
            mask, probs, logits = out
            seen[layer].update(mask=mask.detach().clone(), probs=probs.detach().clone(),
                               logits=logits.detach().clone())

        def on_experts(m, args, layer=layer):
            hidden, selected, weights = args
            seen[layer].update(dispatched=selected.detach().reshape(-1, selected.shape[-1]).clone(),
                               gate=weights.detach().reshape(-1).clone())
        handles += [router.register_forward_hook(on_router), module.register_forward_pre_hook(on_experts)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def expected_top1(found):
    """The honest `[T, 1]` indices and weights of a Switch layer: the expert each token was
    dispatched to (-1 where it was dropped past capacity) and the weight its output got (0 then)."""
    dispatched = found["dispatched"]
    kept = dispatched.sum(-1) > 0
    index = torch.where(kept, dispatched.argmax(-1), -1)
    return index[:, None], torch.where(kept, found["gate"], 0)[:, None]


# ------------------------------------------------------------- 1. invokes on Switch's [B, S, E]

def _two_invokes(model, first, second, body_first=None, body_second=None):
    """Both invokes read every layer's logits, indices and weights (in model order);
    `body_*` may edit one layer. Returns (reads of invoke 0, reads of invoke 1)."""
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(first):
            a = nnsight.save([])
            for position, entry in enumerate(model.moe):
                r = entry.router
                logits = r.logits.clone()
                if body_first is not None and position == 0:
                    body_first(r)
                a.append((logits, r.indices.clone(), r.weights.clone()))
        with tracer.invoke(second):
            b = nnsight.save([])
            for position, entry in enumerate(model.moe):
                r = entry.router
                logits = r.logits.clone()
                if body_second is not None and position == 0:
                    body_second(r)
                b.append((logits, r.indices.clone(), r.weights.clone()))
    return a, b


@functools.lru_cache(maxsize=None)
def switch(**overrides):
    return mi.zoo.tiny_model("switch_transformers", padding_side="right", **overrides)


def test_switch_invokes_each_read_their_own_tokens():
    """Two invokes of two rows each, sequence lengths even: an invoke's size x seq divides by
    the total batch, the case that was narrowed twice."""
    model = switch(expert_capacity=3)  # some tokens are dropped past capacity
    first = seq2seq_batch(model, SOURCES[:2], TARGETS[:2])
    second = seq2seq_batch(model, SOURCES[2:], TARGETS[2:])
    with switch_oracle(model._module) as seen:
        a, b = _two_invokes(model, first, second)
    dropped = 0
    for layer, found in enumerate(seen):
        batch, seq, experts = found["logits"].shape
        assert batch == 4 and (2 * seq) % batch == 0, "the case must be the one that was narrowed twice"
        indices, weights = expected_top1(found)
        dropped += int((indices < 0).sum())
        for start, reads in ((0, a), (2, b)):
            logits, got_indices, got_weights = reads[layer]
            rows = slice(start * seq, (start + 2) * seq)
            assert torch.equal(logits, found["logits"][start:start + 2].reshape(-1, experts)), f"layer {layer}: logits"
            assert torch.equal(got_indices, indices[rows]), f"layer {layer}: indices"
            assert torch.equal(got_weights, weights[rows]), f"layer {layer}: weights"
    assert dropped > 0, "the case must drop tokens past capacity"


def test_switch_invoke_writes_land_on_the_invokes_own_tokens():
    model = switch()
    first = seq2seq_batch(model, SOURCES[:2], TARGETS[:2])
    second = seq2seq_batch(model, SOURCES[2:], TARGETS[2:])
    with switch_oracle(model._module) as plain:
        _two_invokes(model, first, second)

    def halve(r):
        r.weights = r.weights * 0.5

    def favour_expert_3(r):
        r.logits[:, 3] += 100.0

    with switch_oracle(model._module) as edited:
        a, b = _two_invokes(model, first, second, body_first=favour_expert_3, body_second=halve)
    batch, seq, experts = plain[0]["logits"].shape
    ours, theirs = slice(0, 2 * seq), slice(2 * seq, 4 * seq)
    # invoke 0's logits edit: its tokens (capacity permitting) now go to expert 3; invoke 1's do not move
    logits = plain[0]["logits"].reshape(-1, experts).clone()
    logits[ours, 3] += 100.0
    assert torch.equal(edited[0]["logits"].reshape(-1, experts), logits)
    moved = edited[0]["dispatched"][ours]
    assert bool((moved.argmax(-1)[moved.sum(-1) > 0] == 3).all()) and int(moved.sum()) > 0
    # invoke 1's weights halved: only its own tokens' gates, where they were dispatched
    assert torch.equal(edited[0]["dispatched"][theirs], plain[0]["dispatched"][theirs])
    kept = plain[0]["dispatched"][theirs].sum(-1) > 0
    assert torch.allclose(edited[0]["gate"][theirs][kept], plain[0]["gate"][theirs][kept] * 0.5)
    assert int(kept.sum()) > 0
    # and what each invoke read after its edit is what the experts then received
    for start, reads in ((0, a), (2, b)):
        indices, weights = expected_top1(edited[0])
        rows = slice(start * seq, (start + 2) * seq)
        assert torch.equal(reads[0][1], indices[rows]) and torch.equal(reads[0][2], weights[rows])


# ------------------------------------------------------------------- 2. dropped slots: -1, 0

def test_switch_view_reads_dropped_tokens_as_minus_one_and_refuses_assigned_indices():
    model = switch(expert_capacity=2)
    inputs = seq2seq_batch(model, SOURCES, TARGETS)
    with switch_oracle(model._module) as seen, torch.no_grad(), model.trace(inputs):
        got = nnsight.save([(e.router.indices.clone(), e.router.weights.clone()) for e in model.moe])
    for layer, (indices, weights) in enumerate(got):
        want_indices, want_weights = expected_top1(seen[layer])
        assert torch.equal(indices, want_indices) and torch.equal(weights, want_weights), layer
    assert int((got[0][0] < 0).sum()) > 0, "the case must drop tokens"
    with pytest.raises(mi.RouterAccessError, match=r"dispatch mask.*indices.*router.logits"):
        with torch.no_grad(), model.trace(inputs):
            model.moe[0].router.indices = torch.zeros(inputs["input_ids"].numel(), 1, dtype=torch.long)


@contextlib.contextmanager
def nllb_oracle(hf):
    """Per NLLB-MoE layer: `gates` (`[T, E]`: the router's own combine weights, its second
    output) and `computed` (`[T, E]` 0/1: the tokens each expert submodule really computed,
    its rows matched back to the experts module's input rows by exact equality)."""
    routers = [m for m in hf.modules() if type(m).__name__ == "NllbMoeTop2Router"]
    containers = [m for m in hf.modules() if type(m).__name__.startswith("NllbMoeExperts")]
    assert len(routers) == len(containers) > 0
    seen = [{} for _ in routers]
    handles = []
    for layer, (router, container) in enumerate(zip(routers, containers)):
        def on_router(m, args, out, layer=layer):
            seen[layer]["gates"] = out[1].detach().reshape(-1, out[1].shape[-1]).clone()

        def on_container(m, args, layer=layer):
            hidden = args[0].detach()
            seen[layer]["tokens"] = hidden.reshape(-1, hidden.shape[-1])
            seen[layer]["computed"] = torch.zeros(seen[layer]["tokens"].shape[0], len(list(m.children())))

        handles += [router.register_forward_hook(on_router), container.register_forward_pre_hook(on_container)]
        for name, child in container.named_children():
            if not name.startswith("expert_"):
                continue

            def on_expert(m, args, layer=layer, expert=int(name.split("_")[1])):
                rows = args[0].detach().reshape(-1, args[0].shape[-1])
                seen[layer]["computed"][_rows_to_tokens(rows, seen[layer]["tokens"]), expert] = 1
            handles.append(child.register_forward_pre_hook(on_expert))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def test_nllb_view_marks_slots_dropped_past_capacity_as_record_does():
    """Eval capacity at a fifth of the tokens: many second choices (and some first) are
    dropped. The view must name no expert for them (-1, weight 0), as RouterRecord counts."""
    model = mi.zoo.tiny_model("nllb-moe", padding_side="right", moe_eval_capacity_token_fraction=0.2)
    inputs = seq2seq_batch(model, SOURCES, TARGETS)
    with nllb_oracle(model._module) as seen, torch.no_grad(), model.trace(inputs):
        got = nnsight.save([(e.router.indices.clone(), e.router.weights.clone()) for e in model.moe])
    dropped = 0
    for layer, (indices, weights) in enumerate(got):
        computed, gates = seen[layer]["computed"], seen[layer]["gates"]
        assert indices.shape == weights.shape == (computed.shape[0], 2)
        named = torch.zeros_like(computed)
        for slot in range(2):
            real = indices[:, slot] >= 0
            named[real.nonzero().flatten(), indices[real, slot]] += 1
        assert torch.equal(named, computed), f"layer {layer}: the experts named are those that computed"
        assert torch.equal(weights, torch.where(indices >= 0, gates.gather(1, indices.clamp(min=0)), 0))
        dropped += int((indices < 0).sum())
    assert dropped > inputs["input_ids"].numel(), "the case must drop slots past capacity"
