"""`model.moe[i].router.{logits, scores, indices, weights}` in plain nnsight code (issue 15).

Oracles, none of which uses moe_interp to find or read routing:
- what the router module itself returns (torch forward hooks; the element transformers
  declares as the router logits in `_can_record_outputs`), and what the experts module is
  called with (forward pre-hooks; experts found by name as in conftest), both captured in
  the very forward the view reads;
- hand-written router maths (the selection formulas of each family, written out below) on
  a copy of the model with the same weights, for edits.
"""

import contextlib
import functools
import io
import re

import nnsight
import pytest
import torch
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import _saves, save
from nnsight.tracing.util import push
from transformers import AutoModelForCausalLM

import moe_interp as mi
from conftest import _experts_modules, encode, tiny
from test_arch import SURVEY_OVERRIDES, _randomise_token_tables
from test_hold_every_arch import FAST, SUPPORTED
from test_remote import ship_functions_unwrapped, without_package  # noqa: F401  (an autouse fixture)

from moe_interp.runtime._router_view import RouterAccessError


@functools.lru_cache(maxsize=None)
def _survey_model(model_type):
    torch.set_num_threads(1)
    model = mi.zoo.tiny_model(model_type, **SURVEY_OVERRIDES.get(model_type, {}), **FAST.get(model_type, {}))
    _randomise_token_tables(model._module, model._module.config.get_text_config().vocab_size)
    return model, encode(model)


# ------------------------------------------------------------------------------------ oracle

_LAYER = re.compile(r"\.(\d+)\.")


def _declared(hf):
    for module in hf.modules():
        recorders = getattr(type(module), "_can_record_outputs", None) or {}
        recorder = recorders.get("router_logits") if isinstance(recorders, dict) else None
        if isinstance(recorder, list):  # JetMoe up to transformers 5.22: its attention experts', then its MLP's
            recorder = recorder[-1]
        if recorder is not None:
            return recorder.target_class, recorder.index
    raise AssertionError("transformers declares no router class for this model")


@contextlib.contextmanager
def router_oracle(model):
    """Per layer, after the block: `logits` (the router's own output element transformers
    declares as the logits, `[T, E]`), `chosen` (`[T, E]` 0/1: the experts each token was
    sent to) and `gates` (`[T, E]`: the weight each token's chosen experts got), read from
    the experts' call arguments, or from the router's output where the experts take no
    indices (Llama-4's dense scores, JetMoe's grouped gates)."""
    hf = model._module
    declared, index = _declared(hf)
    seen, handles = {}, []

    def on_router(layer):
        def hook(module, args, output):
            value = output if isinstance(output, torch.Tensor) else output[index if isinstance(module, declared) else 0]
            seen.setdefault(layer, {})["logits"] = value.detach().reshape(-1, value.shape[-1]).clone()
            seen[layer]["router_output"] = output
        return hook

    def on_experts(layer):
        def hook(module, args, kwargs):
            values = list(args) + list(kwargs.values())
            idx = next((v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
            if idx is not None:
                w = next(v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()
                         and v.shape == idx.shape)
                seen.setdefault(layer, {})["args"] = (idx.detach().clone(), w.detach().clone())
        return hook

    for layer, block, experts in _experts_modules(hf):
        block_module = hf.get_submodule(block)
        router = next(m for m in block_module.children()
                      if isinstance(m, declared) or type(m).__name__.endswith(("Router", "Gate", "Gating")))
        handles.append(router.register_forward_hook(on_router(layer)))
        if getattr(block_module, "zero_expert_num", 0):  # LongCat-Flash >= 5.25 (see conftest.experts_received):
            handles.append(router.register_forward_hook(  # the router's (weights, indices), zero-computation too
                lambda m, args, out, layer=layer: seen[layer].update(args=(out[2].detach().clone(), out[1].detach().clone()))))
            continue
        handles.append(experts.register_forward_pre_hook(on_experts(layer), with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
    for layer, found in seen.items():
        T, E = found["logits"].shape
        if "args" in found:
            idx, w = found["args"]
            idx, w = idx.reshape(T, -1).long(), w.reshape(T, -1)
            width = max(E, int(idx.max()) + 1)
            found["chosen"] = torch.zeros(T, width).scatter(1, idx, 1.0)
            found["gates"] = torch.zeros(T, width, dtype=w.dtype).scatter(1, idx, w)
            continue
        output = found["router_output"]
        if len(output) == 2:  # Llama-4: (dense scores [T, E], logits), the unchosen at 0
            found["gates"] = output[0].detach().clone()
        else:  # JetMoe: (order, token of each row, gate of each row, rows per expert, logits)
            _, token, gate, sizes, _ = output
            expert = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            found["gates"] = torch.zeros(T, E, dtype=gate.dtype).index_put((token, expert), gate.detach())
        found["chosen"] = (found["gates"] != 0).float()


def _dense(indices, values, width):
    return torch.zeros(indices.shape[0], width, dtype=values.dtype).scatter(1, indices.long(), values)


def _read_all(model, enc):
    """Every MoE layer's four values (scores: None on hash layers), in one plain trace, with the oracle."""
    with router_oracle(model) as oracle, torch.no_grad(), model.trace(enc, use_cache=False):
        got = nnsight.save([])
        for entry in model.moe:
            r = entry.router
            logits = r.logits.clone()
            scores = r.scores.clone() if r.kind == "topk" and mi.describe(model).unranked is None else None
            got.append((entry.layer, logits, scores, r.indices.clone(), r.weights.clone()))
    return got, oracle


# ---------------------------------------------------------------------------- 1. every type

@pytest.mark.parametrize("model_type", SUPPORTED)
def test_four_values_equal_the_routers_outputs_and_the_experts_arguments(model_type):
    model, enc = _survey_model(model_type)
    got, oracle = _read_all(model, enc)
    assert [layer for layer, *_ in got] == sorted(oracle) == list(model.moe.layers)
    for layer, logits, scores, indices, weights in got:
        want = oracle[layer]
        tokens, width = want["chosen"].shape
        assert torch.equal(logits, want["logits"]), f"layer {layer}: logits"
        assert indices.shape == weights.shape == (tokens, mi.describe(model).top_k), f"layer {layer}"
        assert torch.equal(_dense(indices, torch.ones_like(weights, dtype=torch.float), width), want["chosen"]), \
            f"layer {layer}: indices"
        assert torch.equal(_dense(indices, weights, width), want["gates"].to(weights.dtype)), f"layer {layer}: weights"
        if scores is not None:  # what top-k ranks: its top k are the experts the tokens were sent to
            k = indices.shape[1]
            ranked = torch.topk(scores, k + 1, dim=-1)
            clear = ranked.values[:, k - 1] > ranked.values[:, k]  # a tie at the k-th place decides nothing
            assert clear.float().mean() > 0.5, f"layer {layer}: too many ties to judge"
            top = _dense(ranked.indices[:, :k], torch.ones(tokens, k), width)
            assert torch.equal(top[clear], want["chosen"][clear]), \
                f"layer {layer}: the top-k of scores are not the chosen experts"


def test_a_router_whose_ranked_scores_no_op_makes_refuses_scores_naming_why():
    """Ergo ranks sigmoid(logits) + e_score_correction_bias inline: reading the sigmoid's output as
    `scores` gave values whose top-k was not the chosen set (a strict xfail before)."""
    from test_hold_every_arch import HELD

    if "ergo" not in HELD:
        pytest.skip("the installed transformers has no ergo")
    model, enc = _survey_model("ergo")
    with pytest.raises(mi.RouterAccessError, match=r"no `scores` .*e_score_correction_bias.*router.logits"):
        with model.trace(enc):
            model.moe[0].router.scores.save()
    with pytest.raises(mi.RouterAccessError, match="no `scores`"):
        with model.trace(enc):
            model.moe[0].router.scores = torch.zeros(1)
    with model.trace(enc):  # the rest of the view reads as on every router
        chosen = model.moe[0].router.indices.save()
    assert chosen.shape[-1] == mi.describe(model).top_k


def test_view_lists_moe_layers_only_and_finds_them_by_model_index():
    model = tiny("deepseek_v3")  # layer 0 is dense
    assert model.moe.layers == (1, 2, 3) and len(model.moe) == 3
    assert model.moe[0] is model.moe.at(1) and model.moe[-1].layer == 3
    assert model.moe[0].shared_experts.path.endswith("layers.1.mlp.shared_experts")
    assert model.moe[0].experts.path.endswith("layers.1.mlp.experts")
    with pytest.raises(ValueError, match=r"layer 0 is not an MoE layer .* \[1, 2, 3\]"):
        model.moe.at(0)
    with pytest.raises(IndexError, match=r"3 MoE layers .* model.moe.at\(layer\)"):
        model.moe[3]
    assert tiny("qwen3_moe").moe[0].shared_experts is None


# ------------------------------------------------------------------ 2. edits = hand-written maths

def _softmax_family(arch, config):
    norm = True if arch == "mixtral" else config.norm_topk_prob

    def route(router, hidden, edit_logits, edit_scores, k):
        z = edit_logits(torch.nn.functional.linear(hidden, router.weight))
        p = edit_scores(torch.softmax(z.float(), dim=-1))
        top, idx = torch.topk(p, k, dim=-1)
        if norm:
            top = top / top.sum(-1, keepdim=True)
        return z, top.to(z.dtype), idx
    return route


def _gpt_oss(router, hidden, edit_logits, edit_scores, k):
    z = edit_scores(edit_logits(torch.nn.functional.linear(hidden, router.weight, router.bias)))  # ranks z itself
    top, idx = torch.topk(z, k, dim=-1)
    return z, torch.softmax(top, dim=1), idx


def _deepseek_v3(router, hidden, edit_logits, edit_scores, k):
    z = edit_logits(torch.nn.functional.linear(hidden.float(), router.weight.float()))
    s = z.sigmoid()
    choice = s + router.e_score_correction_bias
    groups, per = router.num_group, router.num_experts // router.num_group
    group_scores = choice.view(-1, groups, per).topk(2, dim=-1)[0].sum(-1)
    keep = torch.zeros_like(group_scores).scatter(1, torch.topk(group_scores, router.topk_group, dim=-1)[1], 1)
    choice = choice.masked_fill(~keep.bool()[:, :, None].expand(-1, groups, per).reshape(-1, groups * per), float("-inf"))
    idx = torch.topk(edit_scores(choice), k, dim=-1)[1]
    w = s.gather(1, idx)
    w = w / (w.sum(-1, keepdim=True) + 1e-20) if router.norm_topk_prob else w
    return z, w * router.routed_scaling_factor, idx


def hand_written(model, arch, edit_logits, edit_scores):
    """A copy of `model` (same weights) whose routers run the family's selection written out
    here, with `edit_logits(layer, z)` on the raw logits and `edit_scores(layer, s)` on what
    the top-k ranks. Returns (copy, {layer: indices it selected})."""
    hf = model._module
    copy = AutoModelForCausalLM.from_config(hf.config).eval()
    copy.load_state_dict(hf.state_dict())
    route = {"gpt_oss": _gpt_oss, "deepseek_v3": _deepseek_v3}.get(arch) or _softmax_family(arch, hf.config)
    declared, _ = _declared(copy)
    chosen = {}
    for path, router in copy.named_modules():
        if not isinstance(router, declared):
            continue
        layer = int(_LAYER.search(path)[1])

        def forward(hidden, router=router, layer=layer):
            z, w, idx = route(router, hidden.reshape(-1, router.weight.shape[1]),
                              functools.partial(edit_logits, layer), functools.partial(edit_scores, layer),
                              router.top_k)
            chosen[layer] = idx
            return z, w, idx
        router.forward = forward
    return copy, chosen


def _bump(column, amount):
    def edit(layer, values):
        values = values.clone()
        values[:, column] += amount(layer)
        return values
    return edit


EDITED = ["qwen3_moe", "mixtral", "olmoe", "deepseek_v3", "gpt_oss"]
LOGIT_BUMP, SCORE_BUMP = 3.0, 0.4


@pytest.mark.parametrize("arch", EDITED)
@pytest.mark.parametrize("style", ["in_place", "assigned"])
def test_logits_and_scores_edits_equal_hand_written_router_maths(arch, style):
    model = tiny(arch)
    enc = encode(model)
    # layer-dependent amounts, so that a value applied at the wrong layer shows
    amount = {layer: 1.0 + position for position, layer in enumerate(model.moe.layers)}
    copy, chosen = hand_written(model, arch, _bump(5, lambda l: LOGIT_BUMP * amount[l]),
                                _bump(2, lambda l: SCORE_BUMP * amount[l]))
    with torch.no_grad():
        expected = copy(**enc).logits
    with torch.no_grad(), model.trace(enc):
        read = nnsight.save({})
        for entry in model.moe:
            r = entry.router
            if style == "in_place":
                r.logits[:, 5] += LOGIT_BUMP * amount[entry.layer]
                r.scores[:, 2] += SCORE_BUMP * amount[entry.layer]
            else:
                bump = torch.zeros(r.logits.shape[-1])
                bump[5] = LOGIT_BUMP * amount[entry.layer]
                r.logits = r.logits + bump
                bump = torch.zeros(r.scores.shape[-1])
                bump[2] = SCORE_BUMP * amount[entry.layer]
                r.scores = r.scores + bump
            read[entry.layer] = r.indices.clone()
        got = model.lm_head.output.save()
    with torch.no_grad(), model.trace(enc):
        plain = model.lm_head.output.save()
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3), "the edits must matter"
    for layer, indices in read.items():  # indices read after an edit: the selection it produced
        assert torch.equal(indices.sort(-1).values, chosen[layer].sort(-1).values), f"layer {layer}"


def test_indices_read_after_a_logits_edit_are_the_experts_the_edit_chose():
    model, enc = tiny("olmoe"), encode(tiny("olmoe"))
    with router_oracle(model) as oracle, torch.no_grad(), model.trace(enc):
        r = model.moe[1].router
        r.logits[:, 6] += 1e3
        indices = r.indices.save()
    assert bool((indices == 6).any(-1).all()), "every token must now use expert 6"
    assert torch.equal(_dense(indices, torch.ones(indices.shape), 8), oracle[1]["chosen"])


# --------------------------------------------------------------------- 3. refusals, clearly

@pytest.mark.parametrize("body", ["in_place", "assigned", "scores"])
def test_hash_layers_refuse_logits_edits_and_scores_naming_the_layer(body):
    model, enc = _survey_model("deepseek_v4")  # layers 0-2 route by a token-id table
    assert [e.router.kind for e in model.moe] == ["hash", "hash", "hash", "topk"]
    with pytest.raises(RouterAccessError, match=r"layer 1 selects its experts by a token-id table \(hash routing\)"
                                                r".*learned layer.*\[3\]"):
        with torch.no_grad(), model.trace(enc):
            r = model.moe[1].router
            if body == "in_place":
                r.logits[:, 1] += 5.0
            elif body == "assigned":
                r.logits = r.logits * 2
            else:
                r.scores.save()


def _with_experts_called_on(model, inputs, layer, patch):
    """The plain forward's logits on `inputs` (the keyword arguments a trace gave the model:
    nnsight adds position_ids for left padding) with MoE layer `layer`'s experts called on
    `patch(idx, w)` instead of the routing they were given (a torch pre-hook, no nnsight)."""
    experts = next(module for l, _, module in _experts_modules(model._module) if l == layer)

    def hook(module, args, kwargs):
        hidden, idx, w = args
        return (hidden, *patch(idx, w)), kwargs
    handle = experts.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return model._module(**inputs).logits
    finally:
        handle.remove()


def test_hash_layers_still_give_logits_indices_and_weights_and_take_new_indices():
    model, enc = _survey_model("deepseek_v4")
    with router_oracle(model) as oracle, torch.no_grad(), model.trace(enc, use_cache=False):
        inputs = model.inputs[1].save()
        r = model.moe[0].router
        logits, indices, weights = r.logits.save(), r.indices.save(), r.weights.save()
        r.indices = (r.indices + 1) % 8
        out = model.lm_head.output.save()
    assert torch.equal(logits, oracle[0]["logits"])
    assert torch.equal(_dense(indices, weights, 8), oracle[0]["gates"])
    expected = _with_experts_called_on(model, inputs, 0, lambda idx, w: ((idx + 1) % 8, w))
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, _with_experts_called_on(model, inputs, 0, lambda idx, w: (idx, w)), atol=1e-4)


def test_dense_readout_refuses_assigned_indices_naming_the_fix():
    model = tiny("llama4_text")
    with pytest.raises(RouterAccessError, match=r"layer 0 \(llama4_text\) hands its experts dense .*router.logits"):
        with model.trace("Hello"):
            model.moe[0].router.indices = model.moe[0].router.indices * 0


def test_dense_readout_takes_assigned_weights_as_its_chosen_experts_scores():
    """Llama-4 hands its experts dense [T, E] scores: assigned weights become the chosen
    experts' scores. Oracle: a torch hook scaling the router's own dense output by hand."""
    model = tiny("llama4_text")
    enc = encode(model)
    with torch.no_grad(), model.trace(enc):
        inputs = model.inputs[1].save()
        r = model.moe[0].router
        r.weights = r.weights * 0.25
        out = model.lm_head.output.save()
    router = model._module.get_submodule("model.layers.0.feed_forward.router")
    handle = router.register_forward_hook(lambda m, args, output: (output[0] * 0.25, *output[1:]))
    try:
        with torch.no_grad():
            expected = model._module(**inputs).logits
    finally:
        handle.remove()
    with torch.no_grad():
        plain = model._module(**inputs).logits
    assert torch.allclose(out, expected, atol=1e-6) and not torch.allclose(out, plain, atol=1e-4)


def test_a_value_of_the_wrong_shape_is_refused_with_the_shape_expected():
    model = tiny("qwen3_moe")
    with pytest.raises(ValueError, match=r"router.logits takes a tensor of shape \(5, 8\).*got \(8,\)"):
        with model.trace("Hello"):
            model.moe[0].router.logits = torch.zeros(8)


# ------------------------------------------------- 4. invokes, generation, patching, remote

def test_each_invoke_sees_and_edits_only_its_own_tokens():
    model = tiny("qwen3_moe")
    prompts = ["Hello there, how are you?", "Bonjour"]
    with torch.no_grad(), model.trace(prompts):
        whole = model.moe[2].router.logits.save()
        whole_indices = model.moe[2].router.indices.save()
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(prompts[0]):
            first = model.moe[2].router.logits.clone().save()
            first_indices = model.moe[2].router.indices.save()  # read after the other invoke's edit
        with tracer.invoke(prompts[1]):
            second = model.moe[2].router.logits.clone().save()
            model.moe[2].router.logits[:, 4] += 1e3
            edited = model.moe[2].router.indices.save()
    seq = whole.shape[0] // 2
    assert first.shape == second.shape == (seq, 8)
    assert torch.equal(first, whole[:seq]) and torch.equal(second, whole[seq:])
    assert bool((edited == 4).any(-1).all()) and not bool((whole_indices[seq:] == 4).any(-1).all())
    assert torch.equal(first_indices, whole_indices[:seq])


def test_every_generation_step_is_read_where_its_experts_are_called():
    model = tiny("mixtral")
    with router_oracle(model) as oracle, torch.no_grad(), model.generate("Once upon", max_new_tokens=3,
                                                                          do_sample=False) as tracer:
        steps = nnsight.save([])
        for _ in tracer.iter[:3]:
            steps.append(model.moe[-1].router.indices.clone())
    assert [s.shape[0] for s in steps] == [9, 1, 1]  # the prompt's 9 bytes, then one token a step
    layer = model.moe.layers[-1]
    assert torch.equal(_dense(steps[-1], torch.ones(steps[-1].shape), 8), oracle[layer]["chosen"])  # last call


def test_patching_one_prompts_expert_choice_into_another():
    model = tiny("qwen3_moe")
    source, target = "Guten Morgen, liebe Welt!", "Hello there, how are you?"
    assert len(model.tokenizer(source).input_ids) == len(model.tokenizer(target).input_ids)
    with torch.no_grad(), model.trace(source):
        chosen = model.moe[1].router.indices.save()
        weights = model.moe[1].router.weights.save()
    with torch.no_grad(), model.trace(target):
        inputs = model.inputs[1].save()
        model.moe[1].router.indices = chosen
        model.moe[1].router.weights = weights
        out = model.lm_head.output.save()
    assert torch.allclose(out, _with_experts_called_on(model, inputs, 1, lambda idx, w: (chosen, weights)), atol=1e-5)
    assert not torch.allclose(out, _with_experts_called_on(model, inputs, 1, lambda idx, w: (idx, w)), atol=1e-4)


class ServerSim(Backend):
    """Serialize the request, deserialize it without moe_interp importable (as on NDIF), run
    the deserialized tracer, and send its saved values back through torch.save/load."""

    def __init__(self, model):
        self.model = model

    def __call__(self, tracer):
        blob = RequestModel.serialize(tracer, compress=False)
        with without_package():
            restored = RequestModel.deserialize(blob, self.model._remoteable_persistent_objects(), compress=False)
            restored.execute(restored.info.code)
        saves = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in _saves()}
        buffer = io.BytesIO()
        torch.save(saves, buffer)
        result = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        for value in result.values():
            save(value)
        push(tracer.info.frame, result)
        return result


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_qwen3_moe_view")
    source = tiny("qwen3_moe")
    source._module.save_pretrained(directory)
    source.tokenizer.save_pretrained(directory)
    return mi.load(directory)


@pytest.mark.parametrize("remote", ["local", "server"])
def test_remote_gives_the_same_values_and_edits_as_local(loaded, remote):
    runs = {}
    for where in ("here", remote):
        kwargs = {} if where == "here" else {"remote": "local"} if where == "local" else {"backend": ServerSim(loaded)}
        with loaded.trace(["Hello world", "Bonjour"], **kwargs):
            r = loaded.moe[1].router
            r.logits[:, 2] += 1e3
            logits, scores = r.logits.save(), r.scores.save()
            indices, weights = r.indices.save(), r.weights.save()
            out = loaded.lm_head.output.save()
        runs[where] = [logits, scores, indices, weights, out]
    for name, here, far in zip(["logits", "scores", "indices", "weights", "output"], runs["here"], runs[remote]):
        assert torch.equal(here, far), name
    assert bool((runs[remote][2] == 2).any(-1).all()), "the edit must have acted where the model ran"


def test_inside_mi_trace_the_view_sees_the_interventions_edits():
    model = tiny("olmoe")
    with mi.trace(model, "Hello world", mi.ExpertAblate({2: [3]}), mi.RouterRecord()) as tr:
        logits = model.moe.at(2).router.logits.clone().save()
        indices = model.moe.at(2).router.indices.save()
    assert bool((logits[:, 3] == -1e9).all()) and not bool((indices == 3).any())
    assert torch.equal(_dense(indices, torch.ones(indices.shape), 8).sum(0).long(), tr.routing.count[0, 2])


def test_a_value_read_in_one_trace_of_a_session_edits_the_next():
    model = tiny("olmoe")
    with torch.no_grad(), model.session():
        with model.trace("Hello world"):
            first = model.moe[1].router.logits.clone()
        with model.trace("Hello world"):
            model.moe[1].router.logits = first * -1.0  # the reversed preference
            flipped = model.moe[1].router.indices.save()
            first = first.save()
    assert torch.equal(flipped.sort(-1).values, torch.topk(-first, 2, dim=-1).indices.sort(-1).values)
