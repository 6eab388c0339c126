"""mi.trace contract: inputs, errors, and a failing body leaves the model unchanged."""

import pytest
import torch

import moe_interp as mi
from conftest import encode, tiny


def test_body_exception_leaves_model_bitwise_unchanged():
    model = tiny("qwen3_moe")
    enc = encode(model)
    before = model._module(**enc).logits
    state = {k: v.clone() for k, v in model._module.state_dict().items()}
    with pytest.raises(ZeroDivisionError):
        with mi.trace(model, enc, mi.LayerRouteSteer({1: {3: 1.0}}, scale=100.0, mode="additive"),
                      mi.ExpertAblate({2: [0]}), mi.RouterRecord()):
            model.model.layers[1].mlp.gate.output.save()
            1 / 0
    after = model._module(**enc).logits
    assert torch.equal(before, after)
    assert all(torch.equal(v, model._module.state_dict()[k]) for k, v in state.items())
    # and the next trace is a plain one again: bitwise what nnsight's own trace gives
    with model.trace(enc):
        plain = model.lm_head.output.save()
    with mi.trace(model, enc, mi.RouterRecord()) as tr:
        pass
    assert torch.equal(tr.output.logits, plain)


def test_accepts_string_list_tensor_and_encoding():
    model = tiny("qwen3_moe")
    enc = encode(model, ["abc", "de"])
    for inputs in ("abc", ["abc", "de"], enc["input_ids"], enc, dict(enc)):
        with mi.trace(model, inputs, mi.RouterRecord()) as tr:
            pass
        assert tr.routing.count.shape == (1, 4, 8)


@pytest.mark.parametrize("bad", [3.5, [1, 2], {"text": "x"}, torch.zeros(2, 3)])
def test_wrong_input_type_is_a_type_error_saying_what_is_accepted(bad):
    with pytest.raises(TypeError, match="string, a list of strings, a token-id tensor"):
        mi.trace(tiny("qwen3_moe"), bad, mi.RouterRecord())


def test_non_intervention_after_inputs_is_a_type_error():
    with pytest.raises(TypeError, match="second input"):
        mi.trace(tiny("qwen3_moe"), "a", "b")
    with pytest.raises(TypeError, match="expected interventions"):
        mi.trace(tiny("qwen3_moe"), "a", mi.RouterRecord(), "b")


def test_routing_without_router_record_says_how_to_get_it():
    model = tiny("qwen3_moe")
    with mi.trace(model, "abc") as tr:
        pass
    assert tr.output.logits.shape[:2] == (1, 3)
    with pytest.raises(AttributeError, match="RouterRecord"):
        tr.routing


@pytest.mark.parametrize("layers, message", [({9: [0]}, "out of range.*0-3"), ({-1: [0]}, "out of range")])
def test_out_of_range_layer_is_a_value_error_naming_the_valid_range(layers, message):
    with pytest.raises(ValueError, match=message):
        mi.trace(tiny("qwen3_moe"), "a", mi.ExpertAblate(layers))


def test_dense_layer_and_expert_out_of_range_are_value_errors():
    with pytest.raises(ValueError, match="dense.*MoE layers 1-3"):
        mi.trace(tiny("qwen2_moe"), "a", mi.LayerRouteSteer({0: {1: 1.0}}))
    with pytest.raises(ValueError, match="expert 8 is out of range.*0-7"):
        mi.trace(tiny("qwen3_moe"), "a", mi.ExpertAblate({1: [8]}))


def test_generate_without_interventions_equals_hf_greedy():
    model = tiny("qwen3_moe")
    enc = encode(model, ["Once upon a time", "Hi"])
    with torch.no_grad():
        expected = model._module.generate(**enc, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                          pad_token_id=0)
    with mi.generate(model, enc, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0) as gen:
        pass
    assert torch.equal(gen.output, expected)
    assert gen.text == model.tokenizer.batch_decode(expected[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_first_generate_of_a_fresh_model_from_text_ends_and_equals_hf_greedy():
    # The first trace of an auto-detected model checks its readout on the first forward only;
    # a generation with nothing else to do used to spin forever after that forward.
    model = tiny("qwen3_moe")
    enc = encode(model, ["Once upon"])
    with torch.no_grad():
        expected = model._module.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with mi.generate(model, "Once upon", max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0) as gen:
        pass
    assert torch.equal(gen.output, expected)


# -- bad input: a typed error before any forward, the model as it was (issue 12, section 4) --

def refused_before_any_forward(model, run, error, message):
    """`run()` raises `error` matching `message`, the embedding never ran (a torch hook), and
    the model's weights and its next trace are those of before."""
    hf = model._module
    calls = []
    handle = hf.get_input_embeddings().register_forward_pre_hook(lambda *_: calls.append(1))
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    try:
        with pytest.raises(error, match=message):
            run()
    finally:
        handle.remove()
    assert calls == [], "the model ran before the error"
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in state.items())
    enc = encode(model, ["abc", "de"])
    with model.trace(enc):
        plain = model.lm_head.output.save()
    with mi.trace(model, enc, mi.RouterRecord()) as tr:
        pass
    assert torch.equal(tr.output.logits, plain)
    assert int(tr.routing.tokens[0]) == 5


def _trace(model, *args, **kwargs):
    with mi.trace(model, *args, **kwargs):
        pass


def _invoke(model, *inputs, generate=False, **kwargs):
    with (mi.generate if generate else mi.trace)(model, mi.RouterRecord(), **kwargs) as tr:
        for data in inputs:
            with tr.invoke(data):
                pass


TOO_LONG = "x" * 300  # the tiny models have 256 positions; one byte is one token


@pytest.mark.parametrize("run, message", [
    (lambda m: _trace(m, mi.RouterRecord()), "needs an input, or at least one `with tracer.invoke"),
    (lambda m: _trace(m, "", mi.RouterRecord()), r"text 0 is empty \(''\)"),
    (lambda m: _trace(m, ["abc", ""], mi.RouterRecord()), r"text 1 is empty"),
    (lambda m: _invoke(m, "abc", ""), r"text 0 is empty"),
    (lambda m: _invoke(m, "abc", []), r"an empty list of texts has nothing to route"),
    (lambda m: _trace(m, [], mi.RouterRecord()), r"an empty list of texts has nothing to route"),
    (lambda m: _trace(m, torch.zeros(1, 0, dtype=torch.long), mi.RouterRecord()), "row 0 has no tokens"),
    (lambda m: _trace(m, {"input_ids": torch.tensor([[5, 6], [7, 8]]),
                          "attention_mask": torch.tensor([[1, 1], [0, 0]])}, mi.RouterRecord()), "row 1 has no tokens"),
    (lambda m: _trace(m, torch.tensor([[5, 259]]), mi.RouterRecord()), r"token id 259 is outside .* \(ids 0-258\)"),
    (lambda m: _trace(m, torch.tensor([[-1, 5]])), r"token id -1 is outside"),
    (lambda m: _invoke(m, "abc", torch.tensor([[3, 1000]])), r"token id 1000 is outside"),
    (lambda m: _trace(m, TOO_LONG, mi.RouterRecord()), r"300 tokens .* 256 positions .*truncation=True, max_length=256"),
    (lambda m: _invoke(m, "abc", [TOO_LONG]), r"300 tokens .* 256 positions"),
    (lambda m: _trace(m, torch.ones(1, 257, dtype=torch.long), mi.RouterRecord()), r"257 tokens .* 256 positions"),
    (lambda m: mi.generate(m, "x" * 250, mi.RouterRecord(), max_new_tokens=10), r"250 tokens plus max_new_tokens=10 .* to 6"),
    (lambda m: _invoke(m, "x" * 250, generate=True, max_new_tokens=7), r"250 tokens plus max_new_tokens=7"),
])
def test_bad_inputs_are_typed_errors_before_any_forward(run, message):
    model = tiny("qwen3_moe")
    refused_before_any_forward(model, lambda: run(model), ValueError, message)


def test_long_text_policy_is_an_error_that_names_truncation_which_then_works():
    """Past `max_position_embeddings` a trace refuses (it would silently run past the positions
    the model has); `truncation=True, max_length=` keeps the first tokens, as the error says."""
    model = tiny("qwen3_moe")
    assert model._module.config.max_position_embeddings == 256
    with mi.trace(model, TOO_LONG, mi.RouterRecord(), truncation=True, max_length=256) as tr:
        pass
    assert int(tr.routing.tokens[0]) == 256
    with mi.trace(model, "x" * 256, mi.RouterRecord()) as at_limit:
        pass
    assert torch.equal(at_limit.routing.count, tr.routing.count)
    # mi.profile windows long texts by default (tests/test_profile.py); it takes the same options
    profile = mi.profile(model, {"en": ["abc", TOO_LONG]}, progress=False, truncation=True, max_length=256)
    assert profile.tokens.tolist() == [256 + 3]


def test_two_threads_tracing_one_model_get_the_results_of_running_alone():
    """nnsight keeps one interleaver per model; two threads used to corrupt each other's
    trace (seen: "parent cannot be on a different thread", traces with no routing). A
    per-model lock runs them one at a time."""
    import threading

    model = tiny("qwen3_moe")
    prompts = ["Hello there, how are you?", "Bonjour tout le monde, comment allez-vous aujourd'hui ?"]

    def record(prompt):
        with mi.trace(model, prompt, mi.RouterRecord()) as tr:
            logits = model.lm_head.output.save()
        return tr.routing.count, logits

    alone = [record(p) for p in prompts]
    results, errors = {0: [], 1: []}, []

    def work(i):
        try:
            for _ in range(6):
                results[i].append(record(prompts[i]))
        except Exception as error:  # noqa: BLE001 (reported below with the thread's results)
            errors.append(error)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(2):
        assert len(results[i]) == 6
        for count, logits in results[i]:
            assert torch.equal(count, alone[i][0]) and torch.equal(logits, alone[i][1])


def test_an_invoke_on_a_plain_nnsight_module_takes_its_own_inputs():
    """Custom (non Hugging Face) models wrapped by `nnsight.NNsight` take hidden states, not
    texts: the text/token checks of `tr.invoke` apply to Hugging Face models only."""
    import nnsight

    class InvokeToyRouter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, x):
            logits = self.proj(x)
            weights, indices = torch.topk(logits.softmax(-1), 2, dim=-1)
            return logits, weights, indices

    class Experts(torch.nn.Module):
        def forward(self, x, indices, weights):
            return x * weights.sum(-1, keepdim=True)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.experts = InvokeToyRouter(), Experts()

        def forward(self, x):
            flat = x.reshape(-1, 8)
            _, weights, indices = self.gate(flat)
            return self.experts(flat, indices, weights).reshape(x.shape)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block()])

        def forward(self, x):
            return self.layers[0](x)

    torch.manual_seed(0)
    toy = Toy()
    mi.register_adapter(mi.RouterAdapter(name="toy_invoke", router_class="InvokeToyRouter", logits="F_linear_0",
                                         readout="experts", top_k=2))
    model = nnsight.NNsight(toy)
    x = torch.randn(1, 5, 8)
    with mi.trace(model, mi.RouterRecord()) as tr:
        with tr.invoke(x):
            pass
    expected = torch.bincount(torch.topk(toy.layers[0].gate.proj(x.reshape(-1, 8)).softmax(-1), 2).indices.reshape(-1),
                              minlength=4)
    assert tr.routing.count[0, 0].tolist() == expected.tolist()
