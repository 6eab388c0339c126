"""The checks `mi.trace`, `mi.generate`, `tr.invoke` and `mi.profile` make on inputs before
any forward: what a model can run as given (texts, rows with tokens, ids in its
vocabulary, sequences within its positions, images its processor made for it); and the
batching of several invokes that carry images (`batch_media`), which nnsight refuses; and the
padding of token-id rows into one batch (`pad_rows`, what `mi.profile` runs).

The checks run client side only; `batch_media` runs where the model is (a remote request
ships it by value), so it uses torch and typing only."""

from typing import Any, Optional

import torch

__all__ = ["batch_media", "carries_media", "check_inputs", "check_media", "check_tokens", "max_positions", "pad_rows"]

_INPUT_HELP = ("inputs must be a string, a list of strings, a token-id tensor [batch, seq], or a tokenizer "
               "output (dict / BatchEncoding with input_ids and attention_mask)")


def check_inputs(inputs: Any) -> None:
    """Refuse inputs that are not texts, token ids or a tokenizer output, and empty texts.

    ```python
    >>> from moe_interp.runtime._inputs import check_inputs
    >>> check_inputs(["Hello", "Hi"])
    >>> check_inputs(["Hello", ""])
    Traceback (most recent call last):
    ValueError: text 1 is empty (''): it has no tokens to route. Drop empty texts first

    ```
    """
    if isinstance(inputs, str) or isinstance(inputs, torch.Tensor):
        if isinstance(inputs, torch.Tensor) and (inputs.dtype.is_floating_point or inputs.ndim not in (1, 2)):
            raise TypeError(f"{_INPUT_HELP}; got a {inputs.dtype} tensor of shape {tuple(inputs.shape)}")
    elif isinstance(inputs, (list, tuple)) and not inputs:
        raise ValueError("an empty list of texts has nothing to route: pass at least one non-empty text")
    elif isinstance(inputs, (list, tuple)) and all(isinstance(x, str) for x in inputs):
        pass
    elif not (hasattr(inputs, "keys") and "input_ids" in inputs):
        raise TypeError(f"{_INPUT_HELP}; got {type(inputs).__name__}")
    texts = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, (list, tuple)) else []
    empty = [i for i, text in enumerate(texts) if not text]
    if empty:
        raise ValueError(f"text {empty[0]} is empty (''): it has no tokens to route. Drop empty texts first")


def pad_rows(tokenizer: Any, rows: list) -> dict[str, torch.Tensor]:
    """`{"input_ids", "attention_mask"}` of token-id `rows` padded to the longest, as
    `tokenizer.pad({"input_ids": rows}, return_tensors="pt")` gives them (its pad token, its
    `padding_side`), built with one tensor op per batch instead of one per row. A tokenizer
    without a pad token, or with a padding side other than "left" / "right", goes to
    `tokenizer.pad` itself (its error names the fix).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._inputs import pad_rows
    >>> tokenizer = mi.zoo.tiny_model("qwen3_moe").tokenizer
    >>> tokenizer.pad_token_id, tokenizer.padding_side
    (0, 'left')
    >>> batch = pad_rows(tokenizer, [[5, 6, 7], [8]])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])

    ```
    """
    pad, side = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "padding_side", None)
    if pad is None or side not in ("left", "right") or not rows:
        padded = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
    lengths = torch.tensor([len(row) for row in rows])
    width = int(lengths.max())
    columns = torch.arange(width)
    real = columns >= width - lengths[:, None] if side == "left" else columns < lengths[:, None]
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    ids[real] = torch.tensor([token for row in rows for token in row], dtype=torch.long)  # row-major: in row order
    return {"input_ids": ids, "attention_mask": real.long()}


def max_positions(model: Any) -> Optional[int]:
    """The longest input `model` takes (`max_position_embeddings` or its family's name for it).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._inputs import max_positions
    >>> max_positions(mi.zoo.tiny_model("qwen3_moe", max_position_embeddings=16))
    16

    ```
    """
    config = getattr(getattr(model, "_module", None), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _token_ids(model: Any, inputs: Any, kwargs: dict) -> tuple:
    """`(input_ids [B, S], attention_mask or None)` as the model will get them (texts tokenized
    with the tokenizer options nnsight passes on: `truncation`, `max_length`, `add_special_tokens`)."""
    if isinstance(inputs, torch.Tensor):
        return inputs if inputs.ndim == 2 else inputs[None], None
    if hasattr(inputs, "keys"):
        ids, mask = torch.as_tensor(inputs["input_ids"]), inputs.get("attention_mask")
        ids = ids if ids.ndim == 2 else ids[None]
        return ids, None if mask is None else torch.as_tensor(mask).reshape(ids.shape)
    options = {k: kwargs[k] for k in ("truncation", "max_length", "add_special_tokens") if k in kwargs}
    if not options.get("truncation"):
        options.pop("max_length", None)  # without truncation it only names the generation length
    if getattr(model, "tokenizer", None) is None:
        return None, None  # nnsight will say it cannot tokenize
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt", **options)  # callers hold the model's lock
    return encoded["input_ids"], encoded["attention_mask"]


def check_tokens(model: Any, inputs: Any, kwargs: dict, generating: bool) -> None:
    """Refuse, before any forward, inputs the model cannot run as given: rows without a real
    token, token ids outside its vocabulary, sequences longer than its positions, images it
    cannot take (`check_media`). Texts are tokenized here: callers hold the model's lock
    (`_shipping.model_lock`; see `_shipping.tokenize` for why).

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._inputs import check_tokens
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> check_tokens(model, torch.tensor([[5, 6]]), {}, generating=False)
    >>> check_tokens(model, torch.tensor([[5, 100000]]), {}, generating=False)
    Traceback (most recent call last):
    ValueError: token id 100000 is outside this model's vocabulary (ids 0-258): encode the text with this model's tokenizer (model.tokenizer)

    ```
    """
    check_media(model, inputs, kwargs)
    ids, mask = _token_ids(model, inputs, kwargs)
    if ids is None:
        return
    lengths = [ids.shape[-1]] * ids.shape[0] if mask is None else (mask > 0).sum(-1).tolist()
    if not lengths or 0 in lengths:
        row = lengths.index(0) if 0 in lengths else 0
        raise ValueError(f"input row {row} has no tokens (an empty sequence, or an attention_mask of zeros): "
                         "nothing to route. Drop empty rows first")
    module = getattr(model, "_module", None)
    try:
        embeddings = module.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a Hugging Face model, or one without token embeddings
        embeddings = None
    vocab = getattr(embeddings, "num_embeddings", None)
    low, high = (int(v) for v in torch.aminmax(ids))
    if vocab is not None and (low < 0 or high >= vocab):
        raise ValueError(f"token id {low if low < 0 else high} is outside this model's vocabulary (ids 0-{vocab - 1}): "
                         "encode the text with this model's tokenizer (model.tokenizer)")
    limit = max_positions(model)
    if limit is None:
        return
    length = max(lengths)
    new = kwargs.get("max_new_tokens", getattr(getattr(module, "generation_config", None), "max_new_tokens", None))
    if generating and new and length + new > limit:
        raise ValueError(f"a prompt of {length} tokens plus max_new_tokens={new} runs past this model's "
                         f"{limit} positions (max_position_embeddings): lower max_new_tokens to {limit - length} "
                         f"or shorten the prompt (truncation=True, max_length=...)")
    if length > limit:
        raise ValueError(f"an input of {length} tokens is longer than this model's {limit} positions "
                         f"(max_position_embeddings), and would run past them silently: shorten it, or pass "
                         f"truncation=True, max_length={limit - (new or 0) if generating else limit} (mi.trace, "
                         "mi.generate, mi.profile and tr.invoke take them) to keep the first tokens")


# An invoke written in a processor's terms names these (`tr.invoke("A cat", images=[image])`).
_PROCESSOR_MEDIA = ("images", "image", "videos", "video", "audio", "audios")
# The text fields of an encoding, which nnsight batches itself; any other tensor (`pixel_values`,
# `image_grid_thw`, `mm_token_type_ids`, ...) makes nnsight pass the encoding to the model whole,
# alone, and refuse to batch it with another invoke.
_TEXT_FIELDS = frozenset({"input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids",
                          "special_tokens_mask", "global_attention_mask", "labels", "start_positions", "end_positions",
                          "next_sentence_label", "decoder_input_ids", "decoder_inputs_embeds", "decoder_attention_mask",
                          "decoder_position_ids"})
# What a row's per-token field is padded with (input ids: the tokenizer's pad token; others 0).
_PAD = {"attention_mask": 0, "labels": -100}
# `(modality, grid field, features field)`: Qwen-VL's processors give each image (video) a grid
# `[t, h, w]` of patches, `t * h * w` rows of features and `t * h * w / merge**2` placeholder tokens.
_GRIDS = (("image", "image_grid_thw", "pixel_values"), ("video", "video_grid_thw", "pixel_values_videos"))


def carries_media(inputs: tuple, kwargs: dict) -> bool:
    """Whether an invoke (`tr.invoke(*inputs, **kwargs)`) carries more than text: written in a
    processor's terms (`images=`, `videos=`, `audio=`), or an encoding with a tensor beyond the
    text fields (`pixel_values`, `image_grid_thw`, `mm_token_type_ids`, ...).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._inputs import carries_media
    >>> carries_media(({"input_ids": torch.tensor([[5, 6]])},), {}), carries_media(("A cat",), {})
    (False, False)
    >>> carries_media(({"input_ids": torch.tensor([[5, 6]]), "pixel_values": torch.zeros(4, 8)},), {})
    True
    >>> carries_media(("A cat",), {"images": ["an image"]})
    True

    ```
    """
    if any(key in kwargs for key in _PROCESSOR_MEDIA):
        return True
    data = inputs[0] if inputs else None
    fields = {**dict(data), **kwargs} if hasattr(data, "keys") else kwargs
    return any(isinstance(value, torch.Tensor) and key not in _TEXT_FIELDS for key, value in fields.items())


def _per_token(key: str, value: torch.Tensor, ids: torch.Tensor) -> bool:
    """Whether an encoding's tensor holds one value per token (padded with its row), not per
    image (concatenated): an integer `[rows, seq]` field named `*_ids`, `*_mask` or `labels`."""
    named = key == "labels" or key.endswith("_ids") or key.endswith("_mask")
    return named and not value.is_floating_point() and value.shape == ids.shape


def check_media(model: Any, inputs: Any, kwargs: dict) -> None:
    """Refuse, before any forward, images a model cannot take as given: a processor's terms
    (`images=`) on a model wrapped without its processor, images for a model that names no
    image placeholder token, and an encoding whose placeholder tokens do not match its images
    (`image_grid_thw`: `t * h * w / merge**2` tokens and `t * h * w` feature rows each).

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._inputs import check_media
    >>> check_media(mi.zoo.tiny_model("qwen3_moe"), "A cat", {"images": ["an image"]})
    Traceback (most recent call last):
    ValueError: `images=` is for a model's processor, and this model was wrapped without one: wrap it with its processor, mi.wrap(hf_model, processor), or pass the processor's output, tr.invoke(processor([text], [image]))
    >>> model = mi.zoo.tiny_model("qwen3_vl_moe")     # 4 patches merged 2x2: one image token (id 151655)
    >>> check_media(model, {"input_ids": torch.tensor([[5, 151655]]), "image_grid_thw": torch.tensor([[1, 2, 2]]),
    ...                     "pixel_values": torch.zeros(4, 1536)}, {})
    >>> check_media(model, {"input_ids": torch.tensor([[5, 6]]), "image_grid_thw": torch.tensor([[1, 2, 2]]),
    ...                     "pixel_values": torch.zeros(4, 1536)}, {})
    Traceback (most recent call last):
    ValueError: this input holds 0 image placeholder tokens (ids [151655]) where its image_grid_thw [[1, 2, 2]] makes 1 image features: encode each text with its images in one processor call, model.processor([text], [image]), one placeholder in the text per image

    ```
    """
    named = [key for key in _PROCESSOR_MEDIA if key in kwargs]
    if named and getattr(model, "processor", None) is None:
        raise ValueError(f"`{named[0]}=` is for a model's processor, and this model was wrapped without one: wrap it "
                         "with its processor, mi.wrap(hf_model, processor), or pass the processor's output, "
                         "tr.invoke(processor([text], [image]))")
    if not hasattr(inputs, "keys") or "input_ids" not in inputs:
        return
    fields = {**dict(inputs), **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}}
    ids = torch.as_tensor(fields["input_ids"])
    media = [key for key, value in fields.items() if isinstance(value, torch.Tensor) and key not in _TEXT_FIELDS
             and not _per_token(key, value, ids)]
    config = getattr(getattr(model, "_module", None), "config", None)
    if not media or config is None:
        return
    from moe_interp.runtime._token_kinds import modality_ids

    kinds = dict(modality_ids(config))
    if not kinds:
        raise ValueError(f"this {config.model_type} model takes text only (its config names no image, video or audio "
                         f"placeholder token), and the input carries {', '.join(f'`{k}`' for k in media)}: pass the "
                         "texts alone, or use a multimodal model with its processor")
    mask = fields.get("attention_mask")
    real = ids if mask is None else ids[torch.as_tensor(mask).reshape(ids.shape).bool()]
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    for kind, grid_key, features_key in _GRIDS:
        if grid_key not in fields or kind not in kinds or not merge:
            continue
        grid = torch.as_tensor(fields[grid_key]).reshape(-1, 3)
        patches = int(grid.prod(-1).sum())
        found, expected = int(torch.isin(real, kinds[kind]).sum()), patches // merge**2
        if found != expected:
            raise ValueError(f"this input holds {found} {kind} placeholder tokens (ids {kinds[kind].tolist()}) where "
                             f"its {grid_key} {grid.tolist()} makes {expected} {kind} features: encode each text with "
                             f"its {kind}s in one processor call, model.processor([text], [{kind}]), one placeholder "
                             f"in the text per {kind}")
        features = fields.get(features_key)
        if isinstance(features, torch.Tensor) and features.shape[0] != patches:
            raise ValueError(f"this input's {features_key} has {features.shape[0]} rows where its {grid_key} "
                             f"{grid.tolist()} makes {patches} patches: pass the {features_key} and {grid_key} of "
                             "one processor call together")


def _as_encoding(model: Any, inputs: tuple, kwargs: dict) -> tuple[dict, dict]:
    """One invoke as `(tensors, other arguments)`: its processor's output for a processor's
    terms, its tokenizer's for texts (padded, with `truncation` / `add_special_tokens`), an
    encoding's or token ids' as they are."""
    data, rest = (inputs[0] if inputs else None), dict(kwargs)
    if any(key in rest for key in _PROCESSOR_MEDIA):
        call = {key: rest.pop(key) for key in list(rest) if key in _PROCESSOR_MEDIA or key == "text"}
        if data is not None:
            call["text"] = data
        fields = dict(model.processor(**call, return_tensors="pt"))
    elif hasattr(data, "keys") or (data is None and "input_ids" in rest):
        fields, rest = {**dict(data or {}), **rest}, {}
    elif isinstance(data, torch.Tensor) or (isinstance(data, (list, tuple)) and data and not isinstance(data[0], str)):
        fields = {"input_ids": torch.as_tensor(data)}
    else:
        options = {key: rest.pop(key) for key in ("truncation", "add_special_tokens") if key in rest}
        if options.get("truncation") and "max_length" in rest:
            options["max_length"] = rest.pop("max_length")
        texts = [data] if isinstance(data, str) else list(data)
        fields = dict(model.tokenizer(texts, padding=True, return_tensors="pt", **options))
    for key in ("input_ids", "attention_mask"):
        if key in fields and not isinstance(fields[key], torch.Tensor):
            fields[key] = torch.as_tensor(fields[key])
    tensors = {key: value for key, value in fields.items() if isinstance(value, torch.Tensor)}
    rest.update({key: value for key, value in fields.items() if not isinstance(value, torch.Tensor)})
    return tensors, rest


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # values that do not compare (arrays): only the same object is the same
        return False


def batch_media(model: Any, invokes: list) -> tuple[tuple, dict]:
    """The one model call (`(args, kwargs)`) of several invokes (`(inputs, kwargs)` each), one
    or more carrying images, which nnsight passes to the model whole and alone (and so refuses
    to batch).

    Rows keep invoke order, so each invoke keeps the batch rows nnsight gave it. A row's
    per-token fields (integer `[rows, seq]` fields: `input_ids`, `attention_mask`,
    `mm_token_type_ids`, ...) lose the row's own padding and are padded to the widest row
    on the tokenizer's padding side (input ids with its pad token, `labels` with -100,
    the rest with 0); a row without a field another row has gets 0 there (text, for
    `mm_token_type_ids`) and a mask of ones. Per-image tensors (`pixel_values`,
    `image_grid_thw`, ...) are concatenated in invoke order: the order in which the model
    hands image features to the placeholder tokens, row after row. No `position_ids` are
    made: the model counts its own from the mask (Qwen-VL's rope from `input_ids`,
    `image_grid_thw` and the mask, as for each row alone). Other arguments must agree.

    ```python
    >>> import moe_interp as mi, torch
    >>> from moe_interp.runtime._inputs import batch_media
    >>> model = mi.zoo.tiny_model("qwen3_moe")                     # pads on the left, with id 0
    >>> one = {"input_ids": torch.tensor([[5, 6, 7]]), "pixel_values": torch.ones(2, 4)}
    >>> two = {"input_ids": torch.tensor([[8, 0], [9, 9]]), "attention_mask": torch.tensor([[1, 0], [1, 1]]),
    ...        "pixel_values": torch.zeros(3, 4)}
    >>> _, batch = batch_media(model, [((one,), {}), ((two,), {})])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["pixel_values"][:, 0].tolist()
    ([[5, 6, 7], [0, 0, 8], [0, 9, 9]], [[1, 1, 1], [0, 0, 1], [0, 1, 1]], [1.0, 1.0, 0.0, 0.0, 0.0])

    ```
    """
    tokenizer = getattr(model, "tokenizer", None)
    left = (getattr(tokenizer, "padding_side", None) or "right") == "left"
    rows: list = []
    media: dict = {}
    forward: dict = {}
    kinds: dict = {}
    for number, (inputs, kwargs) in enumerate(invokes):
        tensors, rest = _as_encoding(model, inputs, kwargs)
        for key, value in rest.items():
            if key in forward and not _same(forward[key], value):
                raise ValueError(f"invoke {number} passes {key}={value!r} where an earlier invoke passed "
                                 f"{forward[key]!r}: batched into one forward they share it; pass it once, to mi.trace")
            forward[key] = value
        ids = tensors.get("input_ids")
        if ids is None:
            raise ValueError(f"invoke {number} has no input_ids: invokes that carry images batch by their token ids "
                             f"(inputs_embeds cannot be padded); pass the processor's output")
        if "position_ids" in tensors:
            raise ValueError(f"invoke {number} passes position_ids: batched with other invokes, its rows are padded "
                             "again and the model counts positions from the mask; leave position_ids out, or trace "
                             "this invoke alone")
        tensors = {key: value[None] if value.ndim == 1 and key in ("input_ids", "attention_mask") else value
                   for key, value in tensors.items()}
        ids = tensors["input_ids"]
        mask = tensors.setdefault("attention_mask", torch.ones_like(ids))
        if mask.shape != ids.shape:
            raise ValueError(f"invoke {number}'s attention_mask has shape {tuple(mask.shape)}, its input_ids "
                             f"{tuple(ids.shape)}: pass them as one tokenizer or processor made them")
        token = [key for key, value in tensors.items() if _per_token(key, value, ids)]
        for key in tensors:
            kind = "per token" if key in token else "per image"
            if kinds.setdefault(key, kind) != kind:
                raise ValueError(f"`{key}` is {kind} in invoke {number} and not in an earlier one: pass it as one "
                                 "processor makes it")
        for row in range(ids.shape[0]):
            real = torch.nonzero(mask[row]).flatten()
            if not len(real):
                raise ValueError(f"invoke {number}'s row {row} has no tokens (an attention_mask of zeros): drop it")
            start, end = int(real[0]), int(real[-1]) + 1
            rows.append({key: tensors[key][row:row + 1, start:end] for key in token})
        for key in tensors:
            if key not in token:
                media.setdefault(key, []).append(tensors[key])
    width = max(row["input_ids"].shape[1] for row in rows)
    batch: dict = {}
    for key in dict.fromkeys(key for row in rows for key in row):
        like = next(row[key] for row in rows if key in row)
        fill = getattr(tokenizer, "pad_token_id", None) if key == "input_ids" else _PAD.get(key, 0)
        if fill is None and any(row["input_ids"].shape[1] < width for row in rows):
            raise ValueError("rows of different lengths need a pad token to batch: set model.tokenizer.pad_token")
        parts = []
        for row in rows:
            length = row["input_ids"].shape[1]
            value = row.get(key)
            if value is None:
                value = torch.full((1, length), 1 if key == "attention_mask" else 0, dtype=like.dtype)
            space = (width - length, 0) if left else (0, width - length)
            parts.append(torch.nn.functional.pad(value, space, value=fill or 0))
        batch[key] = torch.cat(parts)
    for key, values in media.items():
        shapes = [tuple(value.shape[1:]) for value in values]
        if len(set(shapes)) > 1:
            raise ValueError(f"`{key}` has rows of shapes {shapes} in different invokes, which do not concatenate: "
                             "make them with one processor, at one setting, or trace these invokes apart")
        batch[key] = torch.cat(values)
    return (), {**batch, **forward}
