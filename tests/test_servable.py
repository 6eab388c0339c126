"""A request NDIF would run on another model than the user's is refused before anything is sent:
NDIF loads models by hub id, so an in-memory or local-directory model has none, and NLLB-MoE's
in-process repair would not travel (the server would route every token to experts 0 and 1)."""

import socket

import pytest

import moe_interp as mi


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a request was sent: the refusal must come first")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_repaired_nllb_moe_is_refused_remotely_naming_the_repair():
    model = mi.zoo.tiny_model("nllb-moe")
    with pytest.raises(ValueError, match=r"unrepaired: NLLB-MoE's experts .*repair_nllb_moe.*remote='local'"):
        with mi.trace(model, "Hello", mi.RouterRecord(), remote=True):
            pass


def test_a_model_without_a_hub_id_is_refused_remotely_naming_mi_load():
    model = mi.zoo.tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match=r"loads it by its hub id, and this one has none .*mi\.load\('org/name'"):
        with mi.trace(model, "Hello", mi.RouterRecord(), remote=True):
            pass


def test_a_remote_profile_is_refused_before_its_session_is_sent():
    model = mi.zoo.tiny_model("qwen3_moe")
    with pytest.raises(ValueError, match="loads it by its hub id, and this one has none"):
        mi.profile(model, {"eng": ["Hello world.", "Good day."]}, remote=True, progress=False)


def test_local_and_simulated_runs_pass():
    model = mi.zoo.tiny_model("qwen3_moe")
    with mi.trace(model, "Hello", mi.RouterRecord(), remote="local") as tr:
        pass
    assert int(tr.routing.tokens.sum()) == 5
