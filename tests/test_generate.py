"""`mi.generate` with `RouterRecord`: what a generation counts (issue 23).

Each generated token is counted once, the step it is first fed to the model, whether or not
the model keeps a cache: without one every forward sees the whole sequence again, and the
re-fed tokens are not new. Rows ended by their EOS stop counting. Oracles: the counts of the
same generation with a cache, and a hand count from torch hooks on the experts modules
(written here, no moe_interp code): per forward, the prompt's real tokens at the first, then
the last column of each row still running.
"""

import contextlib
import functools

import pytest
import torch

import moe_interp as mi

PROMPTS = ["Once upon a time", "Hi", "Guten Morgen, liebe"]
STEPS = 6


@functools.lru_cache(maxsize=None)
def tiny():
    return mi.zoo.tiny_model("qwen3_moe")


def _experts_modules(hf):
    """`[(layer, module)]` of the routed-experts modules (`...layers.<i>.mlp.experts`), found by
    name (no moe_interp)."""
    return [(int(path.split(".")[-3]), module) for path, module in hf.named_modules()
            if path.endswith("mlp.experts")]


@contextlib.contextmanager
def hand_count(model, prompt_mask, eos=(), num_experts=8):
    """Count, per layer, the experts of each token the first time it is fed to the model.

    Forward 0: every real prompt token. Forward n > 0: the last column of each row (the token
    generated at step n - 1, with or without a cache), unless the row has already fed one of
    `eos` (read at the model's own pre-hook). Yields `(seen, state)`: `seen[layer]` the `[E]`
    counts; `state["forward"]` the last forward's index, `state["tokens"][layer]` tokens counted."""
    hf = model._module
    seen, state, handles = {}, {"forward": -1, "finished": None}, []

    def on_model(module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        state["forward"] += 1
        if state["forward"] == 0:
            state["finished"] = torch.zeros(ids.shape[0], dtype=torch.bool)
        else:
            state["finished"] = state["finished"] | torch.isin(ids[:, -1], torch.tensor(list(eos), dtype=torch.long))
        state["batch"] = ids.shape[0]

    def on_experts(layer):
        def pre(module, args, kwargs):
            indices = next(v for v in list(args) + list(kwargs.values())
                           if isinstance(v, torch.Tensor) and not v.is_floating_point())
            indices = indices.reshape(state["batch"], -1, indices.shape[-1])
            if state["forward"] == 0:
                chosen = indices[prompt_mask.bool()]
            else:
                chosen = indices[:, -1][~state["finished"]]
            counts = torch.bincount(chosen.reshape(-1), minlength=num_experts)
            seen[layer] = seen.get(layer, 0) + counts
            state.setdefault("tokens", {}).setdefault(layer, 0)
            state["tokens"][layer] += chosen.shape[0]
        return pre

    handles.append(hf.register_forward_pre_hook(on_model, with_kwargs=True))
    for layer, module in _experts_modules(hf):
        handles.append(module.register_forward_pre_hook(on_experts(layer), with_kwargs=True))
    try:
        yield seen, state
    finally:
        for handle in handles:
            handle.remove()


def _generate(model, cache, *interventions, **kwargs):
    enc = model.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    eos = kwargs.pop("eos_token_id")
    with hand_count(model, enc["attention_mask"], [eos]) as (seen, state):
        with mi.generate(model, enc, mi.RouterRecord(per_token=True), *interventions, max_new_tokens=STEPS,
                         do_sample=False, use_cache=cache, pad_token_id=0, eos_token_id=eos, **kwargs) as gen:
            pass
    return gen, seen, state


@functools.lru_cache(maxsize=None)
def _early_eos():
    """An EOS id that one row (and not every row) generates early under greedy decoding: the
    second new token of the shortest prompt."""
    model = tiny()
    with mi.generate(model, PROMPTS, max_new_tokens=STEPS, do_sample=False, pad_token_id=0) as gen:
        pass
    new = gen.output[:, gen.output.shape[1] - STEPS:]
    eos = int(new[1, 1])
    assert not (new[0] == eos).any() and not (new[2] == eos).any()  # only row 1 ends early
    return eos


@pytest.mark.parametrize("steer", [(), (mi.LayerRouteSteer({1: {3: 1.0}, 2: {5: 0.5}}, scale=2.0),)],
                         ids=["plain", "steered"])
def test_generation_counts_each_token_once_with_or_without_cache(steer):
    model, eos = tiny(), _early_eos()
    cached, cached_seen, cached_state = _generate(model, True, *steer, eos_token_id=eos)
    uncached, seen, state = _generate(model, False, *steer, eos_token_id=eos)
    assert torch.equal(cached.output, uncached.output)  # the same greedy tokens (steered alike)
    ends = (uncached.output[:, -STEPS:] == eos).any(1)
    assert ends.tolist() == [False, True, False]  # row 1 ends early
    prompt = int(model.tokenizer(PROMPTS, return_tensors="pt", padding=True)["attention_mask"].sum())
    # the fed tokens: the prompt, then STEPS - 1 forwards of one token per running row; row 1
    # feeds its first new token, then its EOS (not counted), so it stops after 1 more
    assert state["forward"] == STEPS - 1 and cached_state["forward"] == STEPS - 1
    expected_tokens = prompt + 2 * (STEPS - 1) + 1
    for stats in (cached.routing, uncached.routing):
        assert stats.tokens.tolist() == [expected_tokens]
    assert torch.equal(uncached.routing.count, cached.routing.count)
    assert torch.allclose(uncached.routing.gate_mass, cached.routing.gate_mass, atol=1e-4)  # other matmul shapes
    for position, layer in enumerate(uncached.routing.layers):  # the hand count agrees
        assert torch.equal(uncached.routing.count[0, position], seen[layer]), layer
        assert torch.equal(cached.routing.count[0, position], cached_seen[layer]), layer
        assert state["tokens"][layer] == expected_tokens
    a, b = cached.routing.per_token, uncached.routing.per_token
    for key in ("indices", "group", "row", "position"):
        assert torch.equal(a[key], b[key]), key
    assert len(b["row"]) == expected_tokens
    if steer:  # the steer moved the routing (of the re-fed tokens too: the outputs above are equal)
        plain, _, _ = _generate(model, False, eos_token_id=eos)
        assert not torch.equal(plain.routing.count, uncached.routing.count)


@pytest.mark.parametrize("arch", ["nllb-moe", "switch_transformers"])
def test_an_encoder_decoder_counts_each_decoder_token_once_without_cache(arch):
    """The decoder re-fed its whole sequence at every uncached step; the encoder runs once."""
    model = mi.zoo.tiny_model(arch, padding_side="right")
    prompt = model.tokenizer(["Guten Morgen", "Hallo"], return_tensors="pt", padding=True)
    runs = []
    for cache in (True, False):
        with mi.generate(model, prompt, mi.RouterRecord(), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         use_cache=cache) as gen:
            pass
        runs.append((gen.output, gen.routing_by_stack))
    (ids, cached), (ids_again, uncached) = runs
    assert torch.equal(ids, ids_again)
    # two rows, the decoder start token then 4 fed tokens each (the 5th new one is never fed)
    assert uncached["decoder"].tokens.tolist() == [2 * 5]
    assert uncached["encoder"].tokens.tolist() == [int(prompt["attention_mask"].sum())]
    for stack in ("encoder", "decoder"):
        assert torch.equal(uncached[stack].count, cached[stack].count), stack
