"""A remote `mi.profile` cut into requests by a budget of padded tokens (issue 27, section 2).

Every remote run goes through `test_remote.NdifSim` (the request serialized, deserialized with
`moe_interp` unimportable, the deserialized session run, its saved values sent back through
`torch.save`), wrapped to count the requests that reach it or to fail one of them. The cuts a
profile should make are worked out here from the tokenizer's lengths (longest rows first,
batches of `batch_size`, as many consecutive batches a request as fit the budget), and
results are compared bitwise with the same profile run locally: on a causal model and, per
stack, on Switch Transformers (encoder and decoder).
"""

import inspect
import socket

import pytest
import torch
from nnsight.tracing.backend import Backend

import moe_interp as mi
from test_remote import NdifSim, ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code)

CORPUS = {"eng": ["The cat sat.", "Hi there", "Good morning to you all", "Yes"],
          "deu": ["Die Katze saß.", "Hallo", "Guten Morgen, liebe Welt", "Ja, gerne"],
          "fra": ["Bonjour tout le monde", "Le chat"]}
BATCH = 2
ARCHS = ("qwen3_moe", "switch_transformers")


class Counting(Backend):
    """Counts the requests that reach `inner`; with `fail_at=n`, the n-th one fails (a lost
    connection, a request killed by the server) before it is served."""

    def __init__(self, inner, fail_at=None) -> None:
        self.inner, self.fail_at, self.requests = inner, fail_at, 0

    def __call__(self, tracer):
        self.requests += 1
        if self.requests == self.fail_at:
            raise ConnectionError(f"request {self.requests} lost")
        return self.inner(tracer)


@pytest.fixture(scope="module", params=ARCHS)
def model(request, tmp_path_factory):
    """`mi.load(local_dir)` of a tiny build (a model NdifSim rebuilds from the same directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    source = mi.zoo.tiny_model(request.param)
    source._module.save_pretrained(directory)
    source.tokenizer.save_pretrained(directory)
    return mi.load(directory)


@pytest.fixture(scope="module")
def local(model):
    return mi.profile(model, CORPUS, batch_size=BATCH, progress=False)


def batches(model):
    """`(batch, padded size)` of each batch a profile of CORPUS runs, in order: rows longest first
    (ties in corpus order; a row is a text, by its index in corpus order), BATCH rows a batch,
    its padded size rows x longest row (twice that for Switch: its teacher-forced decoder reads
    as many tokens as its encoder)."""
    texts = [text for texts in CORPUS.values() for text in texts]
    lengths = [len(model.tokenizer(text)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    stacks = 2 if mi.describe(model).stack_inputs is not None else 1
    chunks = [order[start : start + BATCH] for start in range(0, len(order), BATCH)]
    return [(batch, stacks * len(batch) * max(lengths[i] for i in batch)) for batch in chunks]


def expected_requests(model, budget):
    """The requests a profile of CORPUS should send: as many consecutive batches as fit `budget`."""
    requests, used = [], budget
    for batch, size in batches(model):
        if used + size > budget:
            requests.append([])
            used = 0
        requests[-1].append(batch)
        used += size
    return requests


def smallest_budget(model):
    """The largest batch's padded size: the smallest budget a profile of CORPUS accepts."""
    return max(size for _, size in batches(model))


def by_stack(stats):
    return stats if isinstance(stats, dict) else {"default": stats}


def assert_bitwise(local, far):
    local, far = by_stack(local), by_stack(far)
    assert local.keys() == far.keys()
    for stack in local:
        a, b = local[stack], far[stack]
        assert (a.languages, a.layers, a.stacks) == (b.languages, b.layers, b.stacks), stack
        for name in ("count", "item_count", "gate_mass", "tokens", "item_tokens", "item_language"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y), (stack, name)


def test_a_budgeted_remote_profile_is_several_requests_bitwise_equal_to_local(model, local, capsys):
    budget = smallest_budget(model)
    cuts = expected_requests(model, budget)
    assert 3 <= len(cuts) < sum(len(r) for r in cuts)  # several requests, some of several batches
    backend = Counting(NdifSim(model))
    far = mi.profile(model, CORPUS, batch_size=BATCH, backend=backend, request_tokens=budget, progress=True)
    assert backend.requests == len(cuts)
    assert_bitwise(local, far)
    assert f"profiling in {len(cuts)} requests" in capsys.readouterr().err  # the bar says how many


def test_the_default_budget_sends_a_small_corpus_in_one_request(model, local):
    from moe_interp.experiments._profile import REQUEST_TOKENS

    assert REQUEST_TOKENS == 32768 and sum(size for _, size in batches(model)) <= REQUEST_TOKENS
    backend = Counting(NdifSim(model))
    assert_bitwise(local, mi.profile(model, CORPUS, batch_size=BATCH, backend=backend, progress=False))
    assert backend.requests == 1


def test_an_interrupted_remote_profile_resumes_at_the_next_request(model, local, tmp_path):
    budget = smallest_budget(model)
    cuts = expected_requests(model, budget)
    k = 2  # requests 1 and 2 are served, request 3 fails
    path = tmp_path / "profile.ckpt"
    failing = Counting(NdifSim(model), fail_at=k + 1)
    with pytest.raises(ConnectionError, match="request 3 lost"):
        mi.profile(model, CORPUS, batch_size=BATCH, backend=failing, request_tokens=budget, checkpoint=path,
                   progress=False)
    assert torch.load(path, weights_only=True)["done"] == sum(len(b) for r in cuts[:k] for b in r)
    backend = Counting(NdifSim(model))
    far = mi.profile(model, CORPUS, batch_size=BATCH, backend=backend, request_tokens=budget, checkpoint=path,
                     progress=False)
    assert backend.requests == len(cuts) - k  # requests k+1 .. n, cut as before
    assert_bitwise(local, far)
    assert torch.load(path, weights_only=True)["done"] == sum(len(t) for t in CORPUS.values())


def test_session_batches_still_cuts_requests_of_n_batches(model, local):
    if mi.describe(model).stack_inputs is None:
        pytest.skip("tests/test_remote.py and test_ndif_server.py cut a causal model's profile by session_batches")
    backend = Counting(NdifSim(model))
    far = mi.profile(model, CORPUS, batch_size=BATCH, backend=backend, session_batches=2, progress=False)
    assert backend.requests == 3  # 10 texts, 5 batches: 2 + 2 + 1
    assert_bitwise(local, far)


def test_a_remote_profile_of_pairs_groups_each_stack_by_its_own_language(model):
    """Encoder by source language, decoder by target: the server sums gate mass per pair key and
    the client folds ('fra', 'eng') and ('deu', 'eng') into the decoder's one 'eng'."""
    if mi.describe(model).stack_inputs is None:
        pytest.skip("pairs need an encoder-decoder model")
    pairs = {("fra", "eng"): [("Bonjour tout le monde", "Hello everyone"), ("Le chat", "The cat")],
             ("deu", "eng"): [("Guten Morgen, liebe Welt", "Good morning, dear world"), ("Hallo", "Hello")],
             ("deu", "fra"): [("Ja, gerne", "Oui, volontiers")]}
    local = mi.profile(model, pairs, batch_size=BATCH, progress=False)
    backend = Counting(NdifSim(model))
    far = mi.profile(model, pairs, batch_size=BATCH, backend=backend, request_tokens=96, progress=False)
    assert backend.requests >= 2
    assert far["encoder"].languages == ("fra", "deu") and far["decoder"].languages == ("eng", "fra")
    assert_bitwise(local, far)


@pytest.mark.parametrize("budget", [0, -64, 64.0, True, "64"])
def test_a_budget_that_is_not_a_positive_int_is_refused(budget):
    # unwrapped: under pytest a runtime type check refuses a non-int first; installed, this check does
    profile = inspect.unwrap(mi.profile)
    with pytest.raises(ValueError, match=rf"request_tokens must be a positive int \(1 or more\), got {budget!r}"):
        profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, remote="local", request_tokens=budget, progress=False)


def test_a_budget_smaller_than_a_batch_is_refused_before_any_request(model, tmp_path):
    budget = smallest_budget(model)
    backend = Counting(NdifSim(model))
    path = tmp_path / "never.ckpt"
    with pytest.raises(ValueError, match=rf"request_tokens={budget - 1} is less than a batch of this corpus: its "
                                         rf"largest has {budget} padded tokens .* request_tokens={budget} or more, "
                                         "or a smaller batch_size"):
        mi.profile(model, CORPUS, batch_size=BATCH, backend=backend, request_tokens=budget - 1, checkpoint=path,
                   progress=False)
    assert backend.requests == 0 and not path.exists()


def test_a_budget_and_session_batches_together_are_refused():
    with pytest.raises(ValueError, match=r"pass one of request_tokens= .* and session_batches= .*not both"):
        mi.profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, remote="local", request_tokens=4096, session_batches=2,
                   progress=False)


@pytest.mark.parametrize("option", [{"request_tokens": 4096}, {"session_batches": 2}])
def test_request_options_of_a_local_profile_are_refused(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=rf"{name}= sizes the requests of a remote profile, and this one runs here"):
        mi.profile(mi.zoo.tiny_model("qwen3_moe"), CORPUS, progress=False, **option)


def test_a_repaired_nllb_moe_profile_is_refused_before_anything_is_sent(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a request was sent: the refusal must come first")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = mi.zoo.tiny_model("nllb-moe")  # repaired in this process (mi.arch.repair_nllb_moe)
    corpus = {"eng": ["Hello there", "ok"], "deu": ["Guten Morgen"]}
    path = tmp_path / "never.ckpt"
    with pytest.raises(ValueError, match=r"unrepaired: .*Run it here: drop remote= \(.*mi\.profile, two-stack "
                                         r"profiles included, run the repaired model locally\), or pass "
                                         r"remote='local'"):
        mi.profile(model, corpus, remote=True, checkpoint=path, progress=False)
    assert not path.exists()
    # what the message offers works: here, and simulated on this (repaired) model
    assert_bitwise(mi.profile(model, corpus, batch_size=2, progress=False),
                   mi.profile(model, corpus, batch_size=2, progress=False, remote="local", request_tokens=64))


def test_the_session_code_that_runs_on_the_server_uses_only_torch():
    """`_per_stack` runs inside the session (NDIF's import whitelist: torch, typing, collections, math)."""
    from moe_interp.runtime import _session

    function = inspect.unwrap(_session._per_stack)
    names = inspect.getclosurevars(function)
    assert set(names.globals) <= {"torch"} and not names.nonlocals, names
