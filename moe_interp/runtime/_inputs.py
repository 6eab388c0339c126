"""The checks `mi.trace`, `mi.generate`, `tr.invoke` and `mi.profile` make on inputs before
any forward: what a model can run as given (texts, rows with tokens, ids in its
vocabulary, sequences within its positions). Client side only."""

from typing import Any, Optional

import torch

__all__ = ["check_inputs", "check_tokens", "max_positions"]

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
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt", **options)
    return encoded["input_ids"], encoded["attention_mask"]


def check_tokens(model: Any, inputs: Any, kwargs: dict, generating: bool) -> None:
    """Refuse, before any forward, inputs the model cannot run as given: rows without a real
    token, token ids outside its vocabulary, sequences longer than its positions.

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


