"""Which tokens `RouterRecord` counts, and as what: ids it leaves out (`exclude_tokens`, e.g.
NLLB's language codes) and, in a multimodal model, the modality of each token
(`by_modality=True`: the image/video/audio placeholder ids of the model's config).

Resolved when a trace opens, from the model's tokenizer (or processor) and config, into the
plan's `exclude` and `modalities` (`_plan.Plan`) by the compiler; `_kernels.token_kinds` applies them to each
forward's tokens, read from the input ids of the module that holds each stack.
"""

import re
from typing import Any, Iterable

import torch


__all__ = ["MODALITIES", "modality_ids", "resolve_token_kinds", "special_ids"]

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


def resolve_token_kinds(recordings: Iterable[Any], model: Any) -> tuple[torch.Tensor | None, tuple]:
    """`(exclude, modalities)` of a plan whose recorders asked for `recordings`
    (`_plan.Recording`s): the union of their `exclude_tokens` (`"special"`:
    `special_ids(model)`) as a long tensor (None: none), and the config's modalities if any
    asks `by_modality`.

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
