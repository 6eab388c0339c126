"""Errors that name the fix (issue 26, section 3): each refusal is short and says what to do."""

import pytest

import moe_interp as mi
from moe_interp.cli import main


def test_an_unknown_model_type_names_close_matches_not_every_type():
    with pytest.raises(ValueError) as error:
        mi.zoo.tiny_config("mixtrall")
    message = str(error.value)
    assert message.startswith("unknown model type 'mixtrall'; did you mean mixtral")
    assert len(message) < 600 and "model types are known to this transformers" in message   # was a 12 KB list


def test_the_cli_says_the_same_for_tiny_models(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["profile", "--model", "tiny:mixtrall", "--languages", "eng", "--out", str(tmp_path / "x.routing")])
    err = capsys.readouterr().err
    assert "did you mean mixtral" in err and len(err) < 2000


@pytest.mark.parametrize("name", ["./no_such_model", "/no/such/model", "~/no_such_model", "a/b/c"])
def test_loading_a_missing_directory_says_so_not_the_hubs_repo_id_rules(name):
    with pytest.raises(FileNotFoundError, match="no such model directory; pass a local directory"):
        mi.load(name)


def test_a_language_code_that_is_not_available_names_the_available_ones(tmp_path, monkeypatch, capsys):
    """`steer --languages swh` on stats of two languages said "the 2 codes are ISO 639-3" without naming them."""
    import moe_interp.cli as cli

    with pytest.raises(SystemExit):
        cli._codes("--languages", "swh", ["eng", "deu"], "--stats p.routing and the udhr corpus")
    err = capsys.readouterr().err
    assert "'swh' is not a language of --stats p.routing and the udhr corpus; the 2 available (ISO 639-3 codes): " \
           "eng, deu" in err
