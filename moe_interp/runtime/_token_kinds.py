"""Which tokens `RouterRecord` counts, and as what: ids it leaves out (`exclude_tokens`, e.g.
NLLB's language codes), in a multimodal model the modality of each token (`by_modality=True`:
the image/video/audio placeholder ids of the model's config), and the kind of each token
(`by_token_kind=True`: `TOKEN_KINDS`, every vocabulary id classified once from its decoded
piece by `token_kind_table`).

Resolved when a trace opens, from the model's tokenizer (or processor) and config, into the
plan's `exclude`, `modalities` and `kinds` (`_plan.Plan`) by the compiler; `_kernels.token_kinds` applies them
to each forward's tokens, read from the input ids of the module that holds each stack.
"""

import re
import unicodedata
import weakref
from typing import Any, Iterable

import torch


__all__ = ["MODALITIES", "TOKEN_KINDS", "modality_ids", "piece_kind", "resolve_token_kinds", "special_ids",
           "token_kind_table"]

# The kinds of token `RouterRecord(by_token_kind=True)` tells apart; "first" is the first token of
# a text (by position, whatever its id), the others come from the id (`piece_kind`).
TOKEN_KINDS = ("first", "special", "punct", "digit", "space", "other")
_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> (size, names, table)

MODALITIES = ("image", "video", "audio")
_PLACEHOLDER = re.compile(r"^(?P<kind>image|video|audio)_token_(id|index)$")


def special_ids(model: Any) -> tuple[int, ...]:
    """The special token ids of `model`'s tokenizer (a processor's tokenizer too): padding,
    start/end of sequence and, for NLLB, its 200+ language codes.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._token_kinds import special_ids
    >>> special_ids(mi.zoo.tiny_model("nllb-moe"))
    (0, 1, 2)

    ```
    """
    tokenizer = getattr(model, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
    if tokenizer is None or not hasattr(tokenizer, "all_special_ids"):
        raise ValueError("RouterRecord(exclude_tokens='special') reads the special ids from the model's tokenizer, "
                         "and this model has none: mi.wrap(hf_model, tokenizer), or pass the ids, "
                         "exclude_tokens=[...]")
    return tuple(sorted({int(i) for i in tokenizer.all_special_ids}))


def modality_ids(config: Any) -> tuple[tuple[str, torch.Tensor], ...]:
    """`(modality, ids)` of each non-text modality a multimodal config names a placeholder
    token for (`image_token_id`, `video_token_index`, ..., its sub-configs included), in the
    order of `MODALITIES`; `()` for a text-only model.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._token_kinds import modality_ids
    >>> [(name, ids.tolist()) for name, ids in modality_ids(mi.zoo.tiny_config("qwen3_vl_moe"))]
    [('image', [151655]), ('video', [151656])]
    >>> modality_ids(mi.zoo.tiny_config("qwen3_moe"))
    ()

    ```
    """
    found: dict[str, set] = {}

    def visit(values: dict) -> None:
        for key, value in values.items():
            match = _PLACEHOLDER.match(key) if isinstance(key, str) else None
            if match and isinstance(value, int) and not isinstance(value, bool):
                found.setdefault(match["kind"], set()).add(value)
            elif isinstance(value, dict):
                visit(value)

    visit(config.to_dict())
    return tuple((kind, torch.tensor(sorted(found[kind]), dtype=torch.long)) for kind in MODALITIES if kind in found)


def piece_kind(piece: str, text: str, special: bool = False) -> str:
    """The kind (`TOKEN_KINDS`, but `"first"`) of a vocabulary entry: `piece` as the vocabulary
    spells it, `text` what it decodes to alone. `"special"` for the tokenizer's special tokens;
    `"punct"` when its characters (whitespace aside) are all punctuation or symbols; `"digit"`
    when all decimal digits; `"space"` when it is whitespace, or starts with whitespace (a
    word-initial piece: a decoded leading space, or SentencePiece's `"▁"`); else `"other"`
    (a word-internal piece, a partial UTF-8 byte).

    ```python
    >>> from moe_interp.runtime._token_kinds import piece_kind
    >>> [piece_kind(p, t) for p, t in [("Ġthe", " the"), ("▁the", "the"), ("ing", "ing"), ("Ġ42", " 42"),
    ...                                (",", ","), ("Ġ", " "), ("Ã", "\ufffd")]]
    ['space', 'space', 'other', 'digit', 'punct', 'space', 'other']
    >>> piece_kind("<s>", "<s>", special=True)
    'special'

    ```
    """
    if special:
        return "special"
    core = text.replace("\u2581", " ").strip()
    if not core:
        return "space" if text or piece.startswith("\u2581") else "other"
    if all(unicodedata.category(c)[0] in "PS" and c != "\ufffd" for c in core):
        return "punct"
    if all(unicodedata.category(c) == "Nd" for c in core):
        return "digit"
    return "space" if text[:1].isspace() or piece.startswith("\u2581") else "other"


def token_kind_table(model: Any) -> tuple[tuple[str, ...], torch.Tensor]:
    """`(TOKEN_KINDS, table)`: `table[id]` (int8) is the position in `TOKEN_KINDS` of every
    token id of `model`'s vocabulary (`piece_kind` of its decoded piece; ids past the
    tokenizer's, up to the model's vocabulary size, are `"other"`). Made once per tokenizer.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._token_kinds import TOKEN_KINDS, token_kind_table
    >>> model = mi.zoo.tiny_model("qwen3_moe")                  # a byte-level tokenizer
    >>> names, table = token_kind_table(model)
    >>> ids = model.tokenizer("Hi 42!")["input_ids"]
    >>> [names[k] for k in table[ids].tolist()]                 # "first" is given by position, in the trace
    ['other', 'other', 'space', 'digit', 'digit', 'punct']
    >>> names[table[model.tokenizer.pad_token_id]]
    'special'

    ```
    """
    tokenizer = getattr(model, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise ValueError("RouterRecord(by_token_kind=True) classifies tokens by their text, read from the model's "
                         "tokenizer, and this model has none: mi.wrap(hf_model, tokenizer)")
    module = getattr(model, "_module", model)
    size = max(len(tokenizer), int(getattr(getattr(module, "config", None), "vocab_size", 0) or 0))
    embeddings = getattr(module, "get_input_embeddings", lambda: None)()
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        size = max(size, int(embeddings.weight.shape[0]))
    kept = _TABLES.get(tokenizer)
    if kept is not None and kept[0] == (len(tokenizer), size):
        return kept[1], kept[2]
    known = list(range(len(tokenizer)))
    pieces = tokenizer.convert_ids_to_tokens(known)
    texts = tokenizer.batch_decode([[i] for i in known], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    position = {kind: k for k, kind in enumerate(TOKEN_KINDS)}
    kinds = [position[piece_kind(str(piece or ""), text, i in special)] for i, piece, text in zip(known, pieces, texts)]
    table = torch.tensor(kinds + [position["other"]] * (size - len(kinds)), dtype=torch.int8)
    try:
        _TABLES[tokenizer] = ((len(tokenizer), size), TOKEN_KINDS, table)
    except TypeError:  # not weakly referable: made again next time
        pass
    return TOKEN_KINDS, table


def resolve_token_kinds(recordings: Iterable[Any], model: Any) -> tuple[torch.Tensor | None, tuple]:
    """`(exclude, modalities)` of a plan whose recorders asked for `recordings`
    (`_plan.Recording`s): the union of their `exclude_tokens` (`"special"`:
    `special_ids(model)`) as a long tensor (None: none), and the config's modalities if any
    asks `by_modality`. (`kinds`, for `by_token_kind`, is `token_kind_table`'s.)

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._token_kinds import resolve_token_kinds
    >>> model = mi.zoo.tiny_model("nllb-moe")
    >>> records = [mi.RouterRecord(exclude_tokens="special"), mi.RouterRecord(exclude_tokens=[7])]
    >>> exclude, modalities = resolve_token_kinds([r.recording() for r in records], model)
    >>> exclude.tolist(), modalities
    ([0, 1, 2, 7], ())

    ```
    """
    recordings = list(recordings)
    exclude: set = set()
    for recording in recordings:
        exclude |= set(special_ids(model) if recording.exclude_tokens == "special" else recording.exclude_tokens)
    modalities = ()
    if any(recording.by_modality for recording in recordings):
        config = getattr(getattr(model, "_module", model), "config", None)
        modalities = modality_ids(config) if config is not None else ()
        if not modalities:
            raise ValueError(f"RouterRecord(by_modality=True): this model's config ({type(config).__name__}) names no "
                             f"placeholder token for {', '.join(MODALITIES)} (e.g. image_token_id), so all its "
                             "tokens are text; record without by_modality")
    return (torch.tensor(sorted(exclude), dtype=torch.long) if exclude else None), modalities
