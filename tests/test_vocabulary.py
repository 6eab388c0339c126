"""Vocabulary specialization (`mi.experiments.vocabulary`, `mi.analysis.Vocabulary`): every
quantity against a computation written here from per-token routing that plain torch hooks read off
a tiny model's experts modules (no package code), each text run alone, while the package routes
padded batches; and the specialization share against a hand count."""

import collections
import re

import pytest
import torch

import moe_interp as mi

CORPUS = {  # lengths differ within each language: every batch is padded
    "eng": ["The cat sat on the mat.", "Hi", "All human beings are born free and equal.", "the theme"],
    "fra": ["Bonjour", "Tous les êtres humains naissent libres.", "Le chat", "été"],
}
K = 2  # tiny_model's top-k


@pytest.fixture(scope="module")
def model():
    return mi.zoo.tiny_model("qwen3_moe", padding_side="left", num_experts=16)


def routed_alone(model, text=None, ids=None):
    """`(token ids [T], experts [layer, T, k])` of `text` (or of `ids`) run alone through the plain
    HF model: each MoE layer's experts module is called with `(hidden, top_k_index, weights)`, and
    a forward pre-hook keeps the indices. Experts modules found by name, in layer order."""
    hf = model._module
    found = [(int(re.search(r"layers\.(\d+)\.", n).group(1)), m) for n, m in hf.named_modules()
             if n.endswith("mlp.experts")]
    seen = {}
    handles = [module.register_forward_pre_hook(lambda m, args, layer=layer: seen.__setitem__(layer, args[1].clone()))
               for layer, module in sorted(found, key=lambda x: x[0])]
    ids = torch.tensor([model.tokenizer(text)["input_ids"] if ids is None else ids])
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return ids[0].tolist(), torch.stack([seen[layer] for layer in sorted(seen)])


def oracle(model, corpus, window=None):
    """`counts[(lang, layer, token, expert)]` (every top-k slot once) and `occ[(lang, token)]`."""
    counts, occ = collections.Counter(), collections.Counter()
    for lang, texts in corpus.items():
        for text in texts:
            all_ids = model.tokenizer(text)["input_ids"]
            for start in range(0, len(all_ids), window or len(all_ids)):
                ids, experts = routed_alone(model, ids=all_ids[start : start + (window or len(all_ids))])
                for t, token in enumerate(ids):
                    occ[lang, token] += 1
                    for layer in range(experts.shape[0]):
                        for e in experts[layer, t].tolist():
                            counts[lang, layer, token, e] += 1
    return counts, occ


@pytest.fixture(scope="module")
def hooks(model):
    return oracle(model, CORPUS)


@pytest.fixture(scope="module")
def vocab(model):
    return mi.experiments.vocabulary(model, CORPUS, batch_size=3, progress=False)


def by_language(counts, occ, lang):
    """The oracle of one language, or of all (lang None) summed."""
    c, o = collections.Counter(), collections.Counter()
    for (l, layer, token, e), n in counts.items():
        if lang is None or l == lang:
            c[layer, token, e] += n
    for (l, token), n in occ.items():
        if lang is None or l == lang:
            o[token] += n
    return c, o


def test_the_counts_equal_the_hooks_per_language_layer_token_and_expert(vocab, hooks):
    counts, occ = hooks
    assert vocab.languages == ("eng", "fra") and vocab.layers == (0, 1, 2, 3) and vocab.top_k == K
    assert vocab.token_ids.tolist() == sorted({token for _, token in occ})
    for lang in ("eng", "fra", None):
        c, o = by_language(counts, occ, lang)
        for layer in range(4):
            dense = torch.zeros(len(vocab.token_ids), 16, dtype=torch.long)
            for (ly, token, e), n in c.items():
                if ly == layer:
                    dense[vocab.token_ids.tolist().index(token), e] = n
            assert torch.equal(vocab.matrix(layer, lang), dense)
        occurrences = vocab.occurrences.sum(0) if lang is None else vocab.occurrences[vocab.languages.index(lang)]
        assert occurrences.tolist() == [o[t] for t in vocab.token_ids.tolist()]
    assert sum(occ.values()) == sum(len(t.encode()) for texts in CORPUS.values() for t in texts)  # byte tokens


def test_top_tokens_are_the_hooks_most_frequent_tokens_of_each_expert(vocab, hooks, model):
    counts, occ = hooks
    for lang in ("eng", None):
        c, o = by_language(counts, occ, lang)
        for layer in range(4):
            for e in range(16):
                column = {token: n for (ly, token, ex), n in c.items() if ly == layer and ex == e}
                load = sum(column.values())
                want = sorted(column.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
                got = vocab.top_tokens(layer, e, n=4, language=lang)
                assert got.token_id.tolist() == [t for t, _ in want]
                assert got["count"].tolist() == [n for _, n in want]
                assert got.load_share.tolist() == pytest.approx([n / load for _, n in want], rel=1e-15)
                assert got.token_share.tolist() == pytest.approx([n / o[t] for t, n in want], rel=1e-15)


def test_pieces_are_the_decoded_text_or_the_escaped_byte(vocab, model):
    """The byte tokenizer gives one id per UTF-8 byte: 'é' is two ids, each a byte of no character."""
    pieces = dict(zip(vocab.token_ids.tolist(), vocab.pieces))
    for char in "été Tous":
        ids = model.tokenizer(char)["input_ids"]
        raw = char.encode()
        assert len(ids) == len(raw)
        want = [char] if len(raw) == 1 else [f"\\x{b:02x}" for b in raw]
        assert [pieces[i] for i in ids] == want


def test_specialization_is_the_share_of_the_load_of_each_experts_top_n_tokens(vocab, hooks):
    counts, occ = hooks
    for lang in ("fra", None):
        c, _ = by_language(counts, occ, lang)
        for n in (1, 3):
            got = vocab.specialization(n, language=lang)
            for layer in range(4):
                for e in range(16):
                    column = sorted((m for (ly, _, ex), m in c.items() if ly == layer and ex == e), reverse=True)
                    if column:
                        assert got[layer, e].item() == pytest.approx(sum(column[:n]) / sum(column), rel=1e-15)
                    else:
                        assert torch.isnan(got[layer, e])


def test_olmoe_vocabulary_specialization_equals_its_definition_on_the_hooks(vocab, hooks):
    """OLMoE's `print_avg` (run_moe_analysis.py, `do_token_analysis_layers_experts`) written out:
    per token, every top-k expert of every occurrence in one list; the most frequent expert's count
    over `len(list) // k` occurrences; the layer's mean over tokens, an expert's over the tokens it
    is the most frequent expert of (ties: the lower index here)."""
    counts, occ = hooks
    for lang in ("eng", None):
        c, o = by_language(counts, occ, lang)
        per_layer = vocab.vocabulary_specialization(lang)
        per_expert = vocab.vocabulary_specialization(lang, by_expert=True)
        token_spec = vocab.token_specialization(lang)
        for layer in range(4):
            id_to_exp = collections.defaultdict(list)
            for (ly, token, e), n in sorted(c.items()):
                if ly == layer:
                    id_to_exp[token].extend([e] * n)
            probs, favourite_probs = [], collections.defaultdict(list)
            for token, exp_ids in id_to_exp.items():
                tally = collections.Counter(exp_ids)
                best = max(tally.values())
                favourite = min(e for e, n in tally.items() if n == best)
                assert len(exp_ids) // K == o[token]
                p = best / (len(exp_ids) // K)
                probs.append(p)
                favourite_probs[favourite].append(p)
                assert token_spec[layer, vocab.token_ids.tolist().index(token)].item() == pytest.approx(p, rel=1e-15)
            assert per_layer[layer].item() == pytest.approx(sum(probs) / len(probs), rel=1e-12)
            for e in range(16):
                if favourite_probs[e]:
                    assert per_expert[layer, e].item() == pytest.approx(
                        sum(favourite_probs[e]) / len(favourite_probs[e]), rel=1e-12)
                else:
                    assert torch.isnan(per_expert[layer, e])


def test_token_experts_lists_where_one_token_goes(vocab, hooks):
    counts, occ = hooks
    token = max((t for _, t in occ), key=lambda t: sum(n for (_, tt), n in occ.items() if tt == t))  # the commonest
    got = vocab.token_experts(token)
    c, o = by_language(counts, occ, None)
    want = sorted(((ly, e, n) for (ly, t, e), n in c.items() if t == token), key=lambda r: (r[0], -r[2], r[1]))
    assert list(zip(got.layer, got.expert, got["count"])) == want
    assert got.share.tolist() == pytest.approx([n / o[token] for _, _, n in want], rel=1e-15)
    assert got.groupby("layer").share.sum().tolist() == pytest.approx([K] * 4)  # top-2: two slots a token
    piece = vocab.pieces[vocab.token_ids.tolist().index(token)]
    assert vocab.token_experts(piece).equals(got)


def test_the_load_equals_a_profile_of_the_same_texts(vocab, model):
    p = mi.profile(model, CORPUS, batch_size=2, progress=False)
    for lang in CORPUS:
        assert torch.equal(vocab.load(lang), p.count[p.language_index(lang)])
    assert vocab.occurrences.sum(1).tolist() == p.tokens.tolist()


def test_the_batch_size_right_padding_and_a_remote_run_change_nothing(vocab, model):
    right = mi.zoo.tiny_model("qwen3_moe", padding_side="right", num_experts=16)
    for other in (mi.experiments.vocabulary(model, CORPUS, batch_size=1, progress=False),
                  mi.experiments.vocabulary(right, CORPUS, batch_size=8, progress=False),
                  mi.experiments.vocabulary(model, CORPUS, batch_size=4, progress=False, remote="local")):
        assert torch.equal(other.token_ids, vocab.token_ids) and other.pieces == vocab.pieces
        assert torch.equal(other.occurrences, vocab.occurrences)
        assert torch.equal(other.entries, vocab.entries) and torch.equal(other.entry_count, vocab.entry_count)


def test_long_texts_are_counted_in_windows_as_run_alone():
    small = mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=16, num_experts=16)
    corpus = {"eng": ["x" * 20 + "The end of a long text.", "short"], "deu": ["Guten Morgen, liebe Welt"]}
    counts, occ = oracle(small, corpus, window=16)
    v = mi.experiments.vocabulary(small, corpus, batch_size=2, progress=False)
    for layer in range(4):
        for lang in corpus:
            c, _ = by_language(counts, occ, lang)
            assert {(int(v.token_ids[t]), e): int(v.matrix(layer, lang)[t, e])
                    for t, e in v.matrix(layer, lang).nonzero().tolist()} == {
                (t, e): n for (ly, t, e), n in c.items() if ly == layer}
    with pytest.raises(ValueError, match="long_texts=\"window\""):
        mi.experiments.vocabulary(small, corpus, long_texts="error", progress=False)
    truncated = mi.experiments.vocabulary(small, corpus, long_texts="truncate", progress=False)
    assert truncated.occurrences.sum(1).tolist() == [16 + 5, 16]


def test_excluded_tokens_are_not_counted(model):
    space = model.tokenizer(" ")["input_ids"][0]
    v = mi.experiments.vocabulary(model, CORPUS, exclude_tokens=[space], progress=False)
    assert space not in v.token_ids.tolist()
    counts, occ = oracle(model, CORPUS)
    assert int(v.occurrences.sum()) == sum(n for (_, t), n in occ.items() if t != space)
    assert int(v.load().sum()) == sum(n for (_, _, t, _), n in counts.items() if t != space)


def test_the_specialization_share_equals_a_hand_count():
    # one layer, 3 experts, top-1; tokens a=10, b=11, c=12 in two languages
    #   expert 0: a a a b (en), a (de)        -> load 5, top-1 share 4/5, top-2 5/5
    #   expert 1: c (en), b c c (de)          -> load 4, top-1 share 3/4 (c), top-2 4/4
    #   expert 2: never chosen
    ids = torch.tensor([10, 10, 10, 11, 12, 10, 11, 12, 12])
    experts = torch.tensor([0, 0, 0, 0, 1, 0, 1, 1, 1])[:, None, None]
    language = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    v = mi.analysis.Vocabulary.from_records(ids, experts, language, languages=("en", "de"), layers=(7,),
                                            num_experts=3, pieces={10: "a", 11: "b", 12: "c"})
    share = v.specialization(1)
    assert share[0, :2].tolist() == [4 / 5, 3 / 4] and torch.isnan(share[0, 2])
    assert v.specialization(2)[0, :2].tolist() == [1.0, 1.0]
    assert v.specialization(1, language="en")[0, :2].tolist() == [3 / 4, 1.0]   # en: a a a b; c
    assert v.specialization(1, language="de")[0, :2].tolist() == [1.0, 2 / 3]   # de: a; b c c
    assert v.corpus_share(1) == 4 / 9 and v.corpus_share(1, "de") == 2 / 4
    # OLMoE's: a 4/4 to expert 0, b 1 of 2 (a tie: expert 0), c 3/3 to expert 1
    assert v.token_specialization()[0].tolist() == [1.0, 0.5, 1.0]
    assert v.vocabulary_specialization().tolist() == [pytest.approx(2.5 / 3)]
    assert v.vocabulary_specialization(by_expert=True)[0, :2].tolist() == [0.75, 1.0]
    assert v.top_tokens(7, 1).piece.tolist() == ["c", "b"]
    table = v.to_pandas()
    assert int(table["count"].sum()) == 9 and set(table.language) == {"en", "de"}
    assert "expert 0 (0.80: 'a')" in v.summary(n=1)


def test_merge_adds_counts_and_refuses_other_layers():
    a = mi.analysis.Vocabulary.from_records(torch.tensor([1, 2]), torch.tensor([[[0]], [[1]]]), num_experts=2)
    b = mi.analysis.Vocabulary.from_records(torch.tensor([2, 3]), torch.tensor([[[1]], [[1]]]), num_experts=2)
    both = a.merge(b)
    assert both.token_ids.tolist() == [1, 2, 3] and both.matrix(0).tolist() == [[1, 0], [0, 2], [0, 1]]
    other = mi.analysis.Vocabulary.from_records(torch.tensor([1]), torch.tensor([[[0]]]), layers=(4,), num_experts=2)
    with pytest.raises(ValueError, match="same languages, layers"):
        a.merge(other)


def test_bad_input_is_refused_early_naming_the_fix(vocab, model):
    with pytest.raises(TypeError, match="non-empty mapping"):
        mi.experiments.vocabulary(model, ["text"], progress=False)
    with pytest.raises(ValueError, match="empty text"):
        mi.experiments.vocabulary(model, {"eng": ["ok", ""]}, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        mi.experiments.vocabulary(model, CORPUS, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="long_texts must be one of"):
        mi.experiments.vocabulary(model, CORPUS, long_texts="cut", progress=False)
    with pytest.raises(ValueError, match="stacks"):
        mi.experiments.vocabulary(mi.zoo.tiny_model("switch_transformers"), {"eng": ["Hello"]}, progress=False)
    with pytest.raises(ValueError, match=r"layer 9 is not one of .*\[0, 1, 2, 3\]"):
        vocab.top_tokens(9, 0)
    with pytest.raises(ValueError, match=r"expert \(of 16\) must be an integer in \[0, 15\]"):
        vocab.top_tokens(0, 16)
    with pytest.raises(KeyError, match="its languages"):
        vocab.specialization(3, language="deu")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        vocab.specialization(0)
    with pytest.raises(ValueError, match="by must be"):
        vocab.top_tokens(0, 0, by="load")
    with pytest.raises(KeyError, match="never occurred"):
        vocab.token_experts(258)
    with pytest.raises(KeyError, match="names no token ids"):
        vocab.token_experts("zz")
    with pytest.raises(ValueError, match="drop padding"):
        mi.analysis.Vocabulary.from_records(torch.tensor([-1]), torch.tensor([[[0]]]), num_experts=2)
    with pytest.raises(ValueError, match="num_experts is 2"):
        mi.analysis.Vocabulary.from_records(torch.tensor([1]), torch.tensor([[[2]]]), num_experts=2)


def test_the_figure_draws_the_top_n_share_and_olmoes_specialization(vocab):
    fig = mi.plots.vocabulary_specialization(vocab, n=3)
    heat, share = fig.data[0], vocab.specialization(3)
    assert torch.equal(torch.tensor(heat.z).nan_to_num(-1), share.nan_to_num(-1))
    layer, expert = (int(i) for i in (~share.isnan()).nonzero()[0])
    assert heat.customdata[layer][expert] == " ".join(repr(p) for p in vocab.top_tokens(layer, expert, 3).piece)
    assert [t.name for t in fig.data[1:]] == ["all languages", "eng", "fra", "spread evenly"]
    assert list(fig.data[2].y) == pytest.approx(vocab.vocabulary_specialization("eng").tolist())
    assert fig.data[-1].y == (K / 16, K / 16)


def test_an_ablation_applies_while_routing(vocab, model):
    busiest = int(vocab.load()[1].argmax())
    ablated = mi.experiments.vocabulary(model, CORPUS, mi.ExpertAblate({1: [busiest]}), mi.RouterRecord(),
                                        batch_size=3, progress=False)
    assert int(ablated.load()[1, busiest]) == 0 and torch.equal(ablated.load()[0], vocab.load()[0])
    assert torch.equal(ablated.occurrences, vocab.occurrences)
    assert ablated.meta["interventions"] == [repr(mi.ExpertAblate({1: [busiest]}))]  # the recorder given is dropped
