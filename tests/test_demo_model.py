"""The bundled demo model: loads offline, has the documented shape, beats its random twin."""

import math

import pytest
import torch

import moe_interp as mi
from moe_interp.models import zoo

pytestmark = pytest.mark.skipif(not (zoo.DEMO_MODEL_DIR / "model.safetensors").is_file(),
                                reason="demo model not built (python scripts/train_demo_model.py)")


@pytest.fixture(scope="module")
def trained():
    return zoo.demo_model()


@pytest.fixture(scope="module")
def twin():
    return zoo.demo_model(trained=False)


def test_loads_offline_with_documented_config(trained):
    hf = trained._module
    cfg = hf.config
    assert type(hf).__name__ == "Qwen3MoeForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok) == (128, 8, 32, 2)
    keys = ("hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok", "vocab_size")
    assert {k: getattr(cfg, k) for k in keys} == {k: getattr(zoo.demo_config(), k) for k in keys}
    assert cfg.vocab_size == zoo.VOCAB_SIZE == 259 and cfg.norm_topk_prob and cfg.tie_word_embeddings
    assert cfg._experts_implementation == zoo.DEMO_EXPERTS_IMPLEMENTATION
    assert all(p.dtype == torch.float32 for p in hf.parameters())
    assert (zoo.DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= 15e6
    spec = mi.describe(trained)
    assert spec.moe_layers == tuple(range(8)) and spec.num_experts == 32 and spec.top_k == 2


def test_forward_shapes_and_routing(trained):
    with mi.trace(trained, mi.RouterRecord()) as tr:
        with tr.invoke(["All human beings are born free", "Alle Menschen"], group="x"):
            pass
    stats = tr.routing
    assert tuple(stats.count.shape) == (1, 8, 32)
    assert int(stats.count[0, 0].sum()) == 2 * int(stats.tokens[0])


def _bits_per_byte(model, texts):
    hf, total, n = model._module, 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([b + zoo.BYTE_OFFSET for b in text.encode("utf-8")[:200]])[None]
            logits = hf(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    return total / n / math.log(2)


@pytest.mark.parametrize("lang", ["eng", "rus", "swh"])
def test_trained_beats_twin_on_heldout(trained, twin, lang):
    texts = mi.datasets.udhr([lang], split="heldout")[lang][:3]
    t, r = _bits_per_byte(trained, texts), _bits_per_byte(twin, texts)
    assert t < r - 1.0, (lang, t, r)           # twin is ~8 bits/byte (uniform over 259 tokens)


def test_twin_is_deterministic_and_leaves_rng_alone(twin):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = zoo.demo_model(trained=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, a), (_, b) in zip(twin._module.state_dict().items(), again._module.state_dict().items()):
        assert torch.equal(a, b), name
    router = twin._module.model.layers[0].mlp.gate.weight
    assert router.abs().sum() > 0                  # initialised by from_config, not left at zero


def test_twin_is_the_training_start(twin):
    import json

    info = json.loads((zoo.DEMO_MODEL_DIR / "training.json").read_text())
    assert zoo._checksum(twin._module) == info["init_checksum"]


def test_twins_with_other_seeds_differ_and_default_seed_is_the_training_seed(twin):
    """seed=None rebuilds the training start (checksum in training.json); another seed gives
    another init drawn the same way (same per-tensor init std), a trained model takes no seed."""
    import json

    info = json.loads((zoo.DEMO_MODEL_DIR / "training.json").read_text())
    same = zoo.demo_model(trained=False, seed=info["seed"])
    assert zoo._checksum(same._module) == info["init_checksum"]
    other = zoo.demo_model(trained=False, seed=info["seed"] + 1)._module.state_dict()
    for name, tensor in twin._module.state_dict().items():
        if tensor.std() > 0:                       # random tensors (norm weights are constant ones)
            assert not torch.equal(tensor, other[name]), name
            assert other[name].std().item() == pytest.approx(tensor.std().item(), rel=0.2), name
    with pytest.raises(ValueError, match="trained=False"):
        zoo.demo_model(seed=1)
    with pytest.raises(ValueError, match="integer >= 0"):
        zoo.demo_model(trained=False, seed=-1)


def test_trained_on_the_designed_corpus_with_english_as_hub():
    """training.json records the corpus the card describes: 55 languages, six families of >= 7,
    English drawn for a quarter of the sequences, several passes over the train split."""
    import json

    info = json.loads((zoo.DEMO_MODEL_DIR / "training.json").read_text())
    assert info["languages"] == len(zoo.DEMO_LANGUAGES) == 55 and info["hub"] == zoo.DEMO_HUB == "eng"
    assert info["hub_share"] == 0.25
    assert sorted(len(v) >= 7 for v in zoo.DEMO_FAMILIES.values()) == [True] * 6
    train_bytes = sum(len(t.encode()) for v in mi.datasets.udhr(list(zoo.DEMO_LANGUAGES), split="train").values()
                      for t in v)
    assert info["tokens"] == info["steps"] * info["batch_size"] * info["seq_len"] and info["tokens"] > 5 * train_bytes
    log = (zoo.DEMO_MODEL_DIR / "training_log.tsv").read_text().splitlines()
    first, last = (float(line.split("\t")[2]) for line in (log[1], log[-1]))
    assert last < first - 3 and int(log[-1].split("\t")[0]) == info["steps"]


def test_the_demo_chooses_experts_on_spread_train_pieces_never_on_dev_or_heldout_texts():
    from moe_interp.experiments.demo import _splits

    full, light = _splits(["eng", "fin"], False), _splits(["eng", "fin"], False, pick_pieces=4)
    for lang in ("eng", "fin"):
        pieces, picked = full["pick"][lang], light["pick"][lang]
        assert len(picked) == 4 and len(pieces) > 40
        where = [pieces.index(p) for p in picked]
        assert where == sorted(where) and where[0] == 0 and where[-1] >= len(pieces) // 2  # not the preamble alone
        assert not set(picked) & (set(light["dev"][lang]) | set(light["heldout"][lang]))
        assert light["dev"] == full["dev"] and light["heldout"] == full["heldout"]
    assert _splits(["eng"], False, pick_pieces=10_000)["pick"] == _splits(["eng"], False)["pick"]


def test_the_card_lists_each_seed_with_its_settings_and_unfinished_runs_with_the_steps_reached(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    card = tmp_path / "card"
    shutil.copytree(zoo.DEMO_MODEL_DIR, card)
    done, running = tmp_path / "done", tmp_path / "running"
    done.mkdir(), running.mkdir()
    evaluated = json.loads((card / "eval.json").read_text()) | {"settings": {"resamples": 50, "permutations": 250}}
    (done / "eval.json").write_text(json.dumps(evaluated))
    (done / "training.json").write_text(json.dumps({"seed": 7}))
    torch.save({"args": {"seed": 9, "steps": 1400}, "step": 300}, running / "checkpoint.pt")
    script = zoo.DEMO_MODEL_DIR.parents[2] / "scripts" / "train_demo_model.py"
    subprocess.run([sys.executable, str(script), "--out", str(card), "--card-only", "--seeds-from", str(done),
                    str(running)], check=True, capture_output=True)
    text = (card / "MODEL_CARD.md").read_text()
    assert "## Across training seeds (2 runs of this recipe, seeds 0, 7)" in text
    assert "seed 0: 200 resamples, 1000 permutations; seed 7: 50 resamples, 250 permutations" in text
    assert "| claim (held-out texts, 95% intervals) | seed 0 | seed 7 | across seeds |" in text
    assert "Not measured: seed 9: still training, 300 of 1400 steps reached when this card was written" in text
    assert "proportion" not in text
