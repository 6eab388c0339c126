"""RouterRecord(by_token_kind=True, by_position=...): every group split by the kind of token and by
position bucket, against counts made by hand from each text alone (its experts read by plain
torch hooks on the experts modules, its tokens classified and positioned in the test), in a trace
with padding and several invokes, in generation and remotely; and the analysis that compares the
parts of a language with languages (`split_effect`) against the same divergences by hand."""

import unicodedata

import numpy as np
import pytest
import torch

import moe_interp as mi
from conftest import tiny
from test_routing_coactivation import chosen_by_hand, loaded  # noqa: F401  (loaded: a fixture)
from test_remote import NdifSim, ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code)

KINDS = ("first", "special", "punct", "digit", "space", "other")
TEXTS = {"eng": ["Hello there, 42 cats!", "Ok."], "deu": ["Guten Morgen, 7 Katzen; ja", "Tschüss 2024"]}


def kind_by_hand(tokenizer, token_id, position):
    """The byte-level tokenizer's kind of one token, written out here: the first token of a text;
    a special id; else from its decoded text."""
    if position == 0:
        return "first"
    if token_id in tokenizer.all_special_ids:
        return "special"
    text = tokenizer.decode([token_id])
    core = text.strip()
    if not core:
        return "space"
    if all(unicodedata.category(c).startswith(("P", "S")) and c != "\ufffd" for c in core):
        return "punct"
    if all(c in "0123456789" for c in core):
        return "digit"
    return "space" if text[0].isspace() else "other"


def bucket_by_hand(position, starts):
    return max(i for i, start in enumerate(starts) if position >= start)


def counts_by_hand(model, texts, part_of, parts):
    """`[parts, layers, E]` counts and `[parts]` tokens of `texts`, each run alone: token t of a text
    adds to part `part_of(token_id, position)` the experts the hooks saw it sent to."""
    E = mi.describe(model).num_experts
    count, tokens = None, torch.zeros(len(parts), dtype=torch.long)
    for text in texts:
        ids = model.tokenizer(text)["input_ids"]
        layers = chosen_by_hand(model, text)
        if count is None:
            count = torch.zeros(len(parts), len(layers), E, dtype=torch.long)
        for position, token_id in enumerate(ids):
            part = parts.index(part_of(token_id, position))
            tokens[part] += 1
            for layer, rows in enumerate(layers):
                for expert in rows[position].tolist():
                    count[part, layer, expert] += 1
    return count, tokens


def trace_groups(model, record, **kwargs):
    with mi.trace(model, record, **kwargs) as tr:
        for language, texts in TEXTS.items():
            with tr.invoke(texts, group=language):  # left-padded within the invoke and across
                pass
    return tr.routing


@pytest.mark.parametrize("arch", ["qwen3_moe", "olmoe"])
def test_token_kinds_count_what_each_kind_of_token_sent_to_the_experts(arch):
    model = tiny(arch)
    routing = trace_groups(model, mi.RouterRecord(by_token_kind=True))
    assert routing.groups == tuple(f"{language}/{kind}" for language in TEXTS for kind in KINDS)
    for l, (language, texts) in enumerate(TEXTS.items()):
        count, tokens = counts_by_hand(model, texts, lambda i, p: kind_by_hand(model.tokenizer, i, p), KINDS)
        rows = slice(l * len(KINDS), (l + 1) * len(KINDS))
        assert torch.equal(routing.count[rows], count) and torch.equal(routing.tokens[rows], tokens)
    eng = dict(zip(KINDS, routing.tokens[: len(KINDS)].tolist()))
    assert eng == {"first": 2, "special": 0, "punct": 3, "digit": 2, "space": 3, "other": 14}


@pytest.mark.parametrize("starts", [(0, 1, 4, 16, 64), (0, 3, 10)])
def test_position_buckets_count_what_the_tokens_at_those_positions_sent(starts):
    model = tiny("qwen3_moe")
    routing = trace_groups(model, mi.RouterRecord(by_position=starts))
    from moe_interp.runtime._plan import bucket_names

    names = bucket_names(starts)
    assert routing.groups == tuple(f"{language}/{name}" for language in TEXTS for name in names)
    for l, texts in enumerate(TEXTS.values()):
        count, tokens = counts_by_hand(model, texts, lambda i, p: names[bucket_by_hand(p, starts)], names)
        rows = slice(l * len(names), (l + 1) * len(names))
        assert torch.equal(routing.count[rows], count) and torch.equal(routing.tokens[rows], tokens)


def test_kinds_and_positions_split_together_and_add_up_to_the_plain_counts():
    model = tiny("qwen3_moe")
    both = trace_groups(model, mi.RouterRecord(by_token_kind=True, by_position=(0, 4), co_activation=True))
    assert both.groups[:3] == ("eng/first/pos0-3", "eng/first/pos4+", "eng/special/pos0-3")
    plain = trace_groups(model, mi.RouterRecord(co_activation=True))
    for field in ("count", "tokens", "co_activation"):
        value = getattr(both, field)
        summed = value.reshape(len(TEXTS), len(KINDS) * 2, *value.shape[1:]).sum(1)
        assert torch.equal(summed, getattr(plain, field)), field
    assert int(both.tokens[both.groups.index("eng/first/pos4+")]) == 0  # a first token is at position 0


def test_generation_positions_continue_past_the_prompt_and_each_token_counts_once():
    model = tiny("qwen3_moe")
    prompts, steps = ["Once upon", "Hi"], 4
    with mi.generate(model, prompts, mi.RouterRecord(by_position=(0, 4, 8)), max_new_tokens=steps,
                     do_sample=False, eos_token_id=None) as gen:
        pass
    with mi.generate(model, prompts, mi.RouterRecord(), max_new_tokens=steps, do_sample=False,
                     eos_token_id=None) as plain:
        pass
    assert torch.equal(gen.routing.count.sum(0), plain.routing.count[0])
    lengths = [len(model.tokenizer(p)["input_ids"]) + steps - 1 for p in prompts]  # the last token is not fed
    by_hand = [sum(1 for n in lengths for p in range(n) if bucket_by_hand(p, (0, 4, 8)) == b) for b in range(3)]
    assert gen.routing.tokens.tolist() == by_hand


@pytest.mark.parametrize("remote", ["local", "sim"])
def test_remote_splits_and_pairs_are_bitwise_local(loaded, remote):  # noqa: F811
    record = mi.RouterRecord(by_token_kind=True, by_position=True, co_activation=True)
    here = trace_groups(loaded, record)
    far = trace_groups(loaded, record, **({"remote": "local"} if remote == "local" else {"backend": NdifSim(loaded)}))
    assert far.groups == here.groups
    for field in ("count", "tokens", "co_activation"):
        assert torch.equal(getattr(far, field), getattr(here, field)), field


def test_bad_splits_are_refused_early_naming_the_fix():
    model = tiny("qwen3_moe")
    with pytest.raises(ValueError, match="increasing from 0"):
        mi.RouterRecord(by_position=(0, 4, 4))
    with pytest.raises(TypeError, match="by_token_kind"):  # the annotation, or the record's own check
        mi.RouterRecord(by_token_kind="yes")
    with pytest.raises(ValueError, match="a trace splits its groups one way"):
        mi.trace(model, "Hi", mi.RouterRecord(by_position=(0, 2)), mi.RouterRecord(by_position=True))
    from moe_interp.runtime._token_kinds import token_kind_table

    with pytest.raises(ValueError, match=r"mi.wrap\(hf_model, tokenizer\)"):
        token_kind_table(model._module)  # a model without a tokenizer


# -- the analysis: parts of a language against languages ---------------------------------------

def js_by_hand(p, q):
    """Jensen-Shannon divergence, base 2, of two count vectors (as distributions)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    term = lambda a: sum(x * np.log2(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
    return (term(p) + term(q)) / 2


def test_split_effect_is_the_mean_divergence_within_languages_and_across_them_by_hand():
    model = tiny("qwen3_moe")
    routing = trace_groups(model, mi.RouterRecord(by_token_kind=True))
    effect = routing.split_effect(min_tokens=2)
    cells = {}
    for language, texts in TEXTS.items():
        count, tokens = counts_by_hand(model, texts, lambda i, p: kind_by_hand(model.tokenizer, i, p), KINDS)
        for k, kind in enumerate(KINDS):
            if int(tokens[k]) >= 2:
                cells[language, kind] = count[k].double().numpy()
    layers = len(routing.layers)

    def mean(pairs, layer):
        return np.mean([js_by_hand(cells[a][layer], cells[b][layer]) for a, b in pairs]) if pairs else np.nan

    for l, language in enumerate(TEXTS):
        mine = [kind for kind in KINDS if (language, kind) in cells]
        pairs = [((language, a), (language, b)) for i, a in enumerate(mine) for b in mine[i + 1:]]
        np.testing.assert_allclose(effect.within[l].numpy(), [mean(pairs, y) for y in range(layers)], rtol=1e-9)
    for k, kind in enumerate(KINDS):
        having = [language for language in TEXTS if (language, kind) in cells]
        pairs = [((a, kind), (b, kind)) for i, a in enumerate(having) for b in having[i + 1:]]
        np.testing.assert_allclose(effect.across[k].numpy(), [mean(pairs, y) for y in range(layers)], rtol=1e-9,
                                   equal_nan=True)
    pooled = {language: counts_by_hand(model, texts, lambda i, p: "all", ["all"])[0][0].double().numpy()
              for language, texts in TEXTS.items()}
    np.testing.assert_allclose(effect.pooled.numpy(), [js_by_hand(pooled["eng"][y], pooled["deu"][y])
                                                       for y in range(layers)], rtol=1e-9)
    assert effect.summary()["ratio"] == pytest.approx(np.nanmean(effect.within) / np.nanmean(effect.across))
    figure = routing.plot_split_effect(min_tokens=2)
    np.testing.assert_allclose(np.asarray(figure.data[0].y, dtype=float), np.nanmean(effect.within.numpy(), 0))


def test_split_effect_refuses_groups_that_are_not_split():
    routing = trace_groups(tiny("qwen3_moe"), mi.RouterRecord())
    with pytest.raises(ValueError, match=r"by_token_kind=True\) or by_position=True"):
        routing.split_effect()


@pytest.mark.parametrize("scheme", ["byte-level", "metaspace"])
def test_the_kind_table_reads_word_initial_pieces_of_bpe_and_sentencepiece_style_vocabularies(scheme):
    """A byte-level BPE (GPT-2's `Ġ`, decoded to a space) and a SentencePiece-style one (`▁`, which a
    lone piece's decoding drops): word-initial pieces are `space`, digits and punctuation kept
    apart whether or not a space leads them, word-internal pieces `other`."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from moe_interp.runtime._token_kinds import token_kind_table

    bpe = Tokenizer(models.BPE())
    if scheme == "byte-level":
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>"], initial_alphabet=alphabet)
    bpe.train_from_iterator(["the cats sat, 42 times; the cats ran 42 laps!"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>")
    names, table = token_kind_table(SimpleNamespace(tokenizer=tokenizer))
    kind = {piece: names[table[i]] for piece, i in tokenizer.get_vocab().items()}
    lead = "Ġ" if scheme == "byte-level" else "▁"
    assert kind["<s>"] == "special"
    assert kind[f"{lead}the"] == kind[f"{lead}cats"] == "space"
    assert kind[f"{lead}42"] == "digit" and kind[","] == kind[";"] == "punct"
    inner = [piece for piece in kind if piece.isalpha() and not piece.startswith(lead) and len(piece) > 1]
    assert inner and all(kind[piece] == "other" for piece in inner)
