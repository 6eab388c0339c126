"""Tiny MoE models for tests, docs and the offline demo: built from configs, no downloads."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from moe_interp.core._checks import as_index

__all__ = ["byte_tokenizer", "demo_config", "demo_model", "model_class", "tiny_config", "tiny_model",
           "TINY_ARCHITECTURES"]

_SPECIALS = ("<pad>", "<s>", "</s>")
VOCAB_SIZE = 256 + len(_SPECIALS)

_SMALL = dict(
    hidden_size=32, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=32,
    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=8, vocab_size=VOCAB_SIZE,
    max_position_embeddings=256, num_experts=8, num_local_experts=8, n_routed_experts=8,
    num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_shared_experts=1, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False,
)
# Per-architecture departures from _SMALL (nested configs, different names).
_OVERRIDES: dict[str, dict] = {
    "dbrx": dict(d_model=32, n_heads=4, n_layers=4, max_seq_len=256,
                 attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                 ffn_config={"ffn_hidden_size": 32, "moe_num_experts": 8, "moe_top_k": 2}),
    "llama4_text": dict(interleave_moe_layer_step=1, intermediate_size_mlp=64, num_local_experts=8,
                        num_experts_per_tok=1, attention_chunk_size=64),
    "mixtral": dict(sliding_window=None),
    # its config asks for head_dim a multiple of 16 (NVFP4 keys) and at most as many indexer heads as
    # query heads per key head; 4 layers are all sliding-window ones, layer 0 dense
    "kolibri1_1": dict(head_dim=16, num_key_value_heads=1, index_num_heads=2, mlp_only_layers=[0],
                       mlp_only_intermediate_size=64),
    # 4 zero-computation (identity) experts beside the 8 routed, not the default 256: a tiny batch
    # then chooses both kinds (with 256 nearly every choice was a zero-computation expert)
    "longcat_flash": dict(zero_expert_num=4),
    "gpt_oss": dict(layer_types=None, sliding_window=16, num_local_experts=8),
    "granitemoeshared": dict(shared_intermediate_size=32),
    "qwen2_moe": dict(decoder_sparse_step=1, mlp_only_layers=[0]),
    "qwen3_moe": dict(decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True),
    # encoder-decoder: 4 + 4 layers, every second one sparse (dense layers stay in the picture)
    "nllb-moe": dict(d_model=32, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_sparse_step=2,
                     decoder_sparse_step=2, expert_capacity=64, moe_token_dropout=0.0, decoder_start_token_id=2),
    # M-RoPE sections (height, width, time) summing to head_dim / 2
    "ernie4_5_vl_moe_text": dict(moe_intermediate_size=[32, 32],
                                 rope_parameters={"rope_type": "default", "rope_theta": 500000.0,
                                                  "mrope_section": [1, 1, 2]}),
    # transformers' defaults leave the per-layer lists unset (None), which its modeling indexes
    "lfm2_moe": dict(num_dense_layers=1, layer_types=["conv", "full_attention", "conv", "full_attention"]),
    "deepseek_ocr2_text": dict(mlp_layer_types=["dense", "sparse", "sparse", "sparse"]),
    # the MoE block is off by default; full-attention layers have a larger head (per_layer_config,
    # a heterogeneous config, as the real models' 512 against 256)
    "gemma4_text": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                        per_layer_config={1: {"head_dim": 16}, 3: {"head_dim": 16}}, sliding_window=16,
                        hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB_SIZE),
    # builds and runs (transformers' forward); moe_interp refuses it (a block-diffusion model: arch._spec)
    "diffusion_gemma_text": dict(num_experts=8, top_k_experts=2, moe_intermediate_size=32,
                                 layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                              "full_attention"],
                                 per_layer_config={1: {"head_dim": 16}, 3: {"head_dim": 16}}, sliding_window=16),
    "diffusion_gemma": dict(canvas_length=8, boi_token_id=250, eoi_token_id=251, image_token_id=252),
    # two indexed-attention (DSA) layers, then two sliding-window ones with their own MLA sizes
    "dots3_note_text": dict(mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
                            layer_types=["indexed_attention", "indexed_attention", "sliding_attention",
                                         "sliding_attention"],
                            per_layer_config={i: dict(num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=8)
                                              for i in (2, 3)},
                            head_dim=16, index_topk=8, index_head_dim=8, index_n_heads=2, sliding_window=16,
                            shared_experts_intermediate_size=32),
    # the M-RoPE sections (temporal, height, width) sum to the rotary half-width; GLM-4.5V's text head 16
    "glm4v_moe_text": dict(num_attention_heads=2, num_key_value_heads=2,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}),
    "hy_v4_vl_text": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
    # DSA layers without RoPE (qk_rope_head_dim 0, as its validation asks); the indexer keeps 8 keys of pools of 2
    "glm5_next_text": dict(qk_rope_head_dim=0, mlp_layer_types=["dense", "sparse", "sparse", "sparse"], index_topk=8,
                           index_kpool=2, index_head_dim=8, index_n_heads=2, linear_head_dim=8, linear_num_heads=4),
    # Mamba-2 and attention layers alternating
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_state=16, mamba_chunk_size=16, shared_intermediate_size=32,
                             layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"]),
    # head_dim is the query/key head (nope + rope): the rotary width is read from it
    "mistral4": dict(head_dim=16),
    # transformers' thinker reads vision_start_token_id, which its config does not define
    "qwen3_omni_moe_thinker": dict(vision_start_token_id=251),
    # the talker reads spatial_merge_size and its MoE shared_expert_intermediate_size, which their configs
    # do not define (released config.json files carry them)
    "Qwen3OmniMoeTalkerConfig": dict(spatial_merge_size=2),  # its model_type is ''
    "Qwen3OmniMoeCode2WavConfig": dict(decoder_dim=16, codebook_size=64),  # the speech decoder, not an LM
    "qwen3_omni_moe_talker_code_predictor": dict(vocab_size=64),
    "qwen3_omni_moe_talker_text": dict(shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                       moe_intermediate_size=32),
    # three GatedDeltaNet layers and one with the QSA indexer (its fields are all unset by default)
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=8,
                           indexer_compress_ratio=2, linear_key_head_dim=8, linear_value_head_dim=8,
                           linear_num_key_heads=2, linear_num_value_heads=4, hc_lowrank=8),
    # Step3p7's language model builds its sliding-window mask whatever its layer types: a window is needed
    "step3p5": dict(sliding_window=16, share_expert_dim=32, num_sliding_attention_heads=4,
                    layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
                    mlp_layer_types=["dense", "sparse", "sparse", "sparse"]),
    "zaya": dict(num_experts_per_tok=1, router_hidden_size=16),  # its validation allows top-1 only
    # the experts work in a space of their own (a projection to moe_hidden_size before them)
    "muse_spark_text": dict(moe_hidden_size=32),
    "muse_spark": dict(out_hidden_size=32, projector_hidden_size=32),
    "inkling_vision": dict(n_layers=1),
    "dots3_note_vision_encoder": dict(adapter_in_dim=32, adapter_out_dim=32),
    "dots3_note_audio_encoder": dict(adapter_input_size=32, adapter_out_dim=32),
    "switch_transformers": dict(d_model=32, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=4, num_heads=4,
                                num_sparse_encoder_layers=2, num_sparse_decoder_layers=2, expert_capacity=64,
                                router_jitter_noise=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=2),
}
# Sub-configs that are not the language model (vision and audio towers): as small as they go.
_TOWER = dict(depth=1, num_hidden_layers=1, num_layers=1, encoder_layers=1, hidden_size=32, d_model=32,
              intermediate_size=64, encoder_ffn_dim=64, num_heads=4, num_attention_heads=4,
              encoder_attention_heads=4, num_key_value_heads=4, head_dim=8, out_hidden_size=32, output_dim=32,
              projection_dim=32, text_hidden_size=32, deepstack_visual_indexes=[], num_position_embeddings=64,
              image_size=32,
              patch_size=8, max_source_positions=64, num_mel_bins=16, downsample_hidden_size=8)
TINY_ARCHITECTURES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "gpt_oss", "deepseek_v3", "granitemoe")


def byte_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + `<pad>`, `<s>`, `</s>`), built offline.

    ```python
    >>> import moe_interp as mi
    >>> tok = mi.zoo.byte_tokenizer()
    >>> tok("hé").input_ids, tok.decode(tok("hé").input_ids)
    ([107, 198, 172], 'hé')

    ```
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    for char in _byte_chars():  # token id = 3 + byte value
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side=padding_side)


def _byte_chars() -> list[str]:
    """The printable stand-in ByteLevel uses for each byte 0..255 (printable bytes map to
    themselves, the others to code points from 256 up, in byte order)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _check_model_type(model_type: str) -> None:
    """`ValueError` naming close matches (not the whole list) for a type transformers does not know."""
    import difflib

    from transformers import CONFIG_MAPPING

    known = list(CONFIG_MAPPING.keys())
    if model_type not in known:
        close = difflib.get_close_matches(str(model_type), known, n=5, cutoff=0.6)
        raise ValueError(f"unknown model type {model_type!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                         + f" ({len(known)} model types are known to this transformers; MoE types that are tested: "
                         f"{', '.join(TINY_ARCHITECTURES)}, and docs/conformance.md lists every one)")


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """A tiny config (hidden 32, 4 layers, 8 experts, top-2) of a transformers MoE type.

    `overrides` are config attributes (a dict for a sub-config, e.g. `text_config={"vocab_size":
    300}`, changes only those of its attributes). The number of routed experts is one setting whatever
    the family calls it: `num_experts`, `num_local_experts`, `n_routed_experts` and
    `moe_num_experts` (also inside nested configs such as DBRX's `ffn_config`) all set every
    one of those the config has; a type that has none raises `ValueError`.

    ```python
    >>> import moe_interp as mi
    >>> config = mi.zoo.tiny_config("olmoe", num_hidden_layers=2)
    >>> config.num_hidden_layers, config.num_experts, config.num_experts_per_tok
    (2, 8, 2)
    >>> mi.zoo.tiny_config("mixtral", num_experts=16).num_local_experts
    16

    ```
    """
    _check_model_type(model_type)
    base = AutoConfig.for_model(model_type)
    values = _small(base)
    experts = {name: overrides.pop(name) for name in _EXPERT_COUNT_NAMES if name in overrides}
    # a dict for a sub-config (text_config={...}) changes those attributes of its tiny values
    values.update({k: {**values[k], **v} if isinstance(v, dict) and isinstance(values.get(k), dict) else v
                   for k, v in overrides.items()})
    if experts:
        _set_expert_count(model_type, base, values, experts)
    return AutoConfig.for_model(model_type, **values)


def _small(config: Any, text: Any = None) -> dict:
    """Tiny values for `config`'s own attributes; for a composite config (a multimodal model),
    the language model's sub-config tiny the same way (also where it sits inside another
    sub-config: Qwen3-Omni's thinker) and every other tower (vision, audio) cut to one small layer."""
    values = {k: v for k, v in _SMALL.items() if _has(config, k)}
    values.update(_override(config))
    subs = getattr(config, "sub_configs", None) or {}
    text = text if text is not None else config.get_text_config() if subs else None
    if text is None or text is config:  # parts of one model (DBRX's attn_config): _OVERRIDES sets them
        return values
    for name in subs:
        sub = getattr(config, name, None)
        if sub is None or not hasattr(sub, "to_dict") or name in values:
            continue
        small = _small(sub) if sub is text else _small(sub, text) if _holds(sub, text) else _tower(sub)
        values[name] = {**_per_layer_cut(sub, small), **small}
    return values


def _holds(config: Any, target: Any) -> bool:
    """Whether the sub-config `target` is nested (at any depth) in `config`."""
    subs = [getattr(config, name, None) for name in getattr(config, "sub_configs", None) or {}]
    return any(sub is target or (sub is not None and _holds(sub, target)) for sub in subs)


def _override(config: Any) -> dict:
    """`_OVERRIDES` for `config`, by its model type or, for a sub-config without one (Qwen3-Omni's
    talker: `model_type` ''), by its class name."""
    return _OVERRIDES.get(config.model_type) or _OVERRIDES.get(type(config).__name__, {})


def _has(config: Any, name: str) -> bool:
    """Whether `config` has the attribute `name`; a heterogeneous config (Gemma 4's per-layer
    `head_dim`) has it even where reading it globally raises."""
    try:
        return hasattr(config, name)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError: set per layer
        return True


def _tower(config: Any) -> dict:
    """Tiny values for a tower (vision, audio) sub-config: `_TOWER`'s, its own `_OVERRIDES`, and
    the same for the towers nested in it (DeepSeek-OCR-2's SAM and Qwen2 encoders)."""
    values = {k: v for k, v in _TOWER.items() if _has(config, k)}
    values.update(_override(config))
    for name in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict") and name not in values:
            small = _tower(sub)
            values[name] = {**_per_layer_cut(sub, small), **small}
    return values


def _per_layer_cut(config: Any, small: dict) -> dict:
    """`config` as a dict, its per-layer lists (`layer_types`, ...) and `per_layer_config` cut to the
    tiny layer count."""
    values = config.to_dict()
    for key in ("num_hidden_layers", "depth", "num_layers"):
        old, new = values.get(key), small.get(key)
        if isinstance(old, int) and isinstance(new, int) and new < old:
            for name, value in values.items():
                if isinstance(value, list) and len(value) == old:
                    values[name] = value[:new]
            if isinstance(values.get("per_layer_config"), dict):  # a heterogeneous config's layers
                values["per_layer_config"] = {k: v for k, v in values["per_layer_config"].items() if int(k) < new}
    return values


# What families call their number of routed experts (aliases of one another in some configs,
# e.g. OLMoE maps num_local_experts to num_experts: setting only one let the other win).
_EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _set_expert_count(model_type: str, base: Any, values: dict, given: dict) -> None:
    counts = set(given.values())
    if len(counts) != 1:
        raise ValueError(f"conflicting expert counts {given}: give one, e.g. num_experts=16")
    (count,) = counts
    nested = [key for key, value in values.items() if isinstance(value, dict)
              and any(name in value for name in _EXPERT_COUNT_NAMES)]
    names = [name for name in _EXPERT_COUNT_NAMES if _has(base, name)]
    if not names and not nested:
        raise ValueError(f"{type(base).__name__} ({model_type}) has none of {list(_EXPERT_COUNT_NAMES)}; "
                         "pass the attribute its config uses for the number of experts (see its sub-configs, "
                         "e.g. text_config)")
    values.update({name: count for name in names})
    for key in nested:  # a copy: _OVERRIDES' dicts stay as they are
        values[key] = {**values[key], **{name: count for name in _EXPERT_COUNT_NAMES if name in values[key]}}


_HEADS = ("CAUSAL_LM", "SEQ_TO_SEQ_CAUSAL_LM", "IMAGE_TEXT_TO_TEXT", "MULTIMODAL_LM", "TEXT_TO_WAVEFORM",
          "TOKEN_CLASSIFICATION", "")


def model_class(model_type: str) -> Any:
    """The transformers class `tiny_model` builds for `model_type`: its causal LM, else its
    sequence-to-sequence LM, else its image-text-to-text model, ..., else its base model.

    ```python
    >>> import moe_interp as mi
    >>> mi.zoo.model_class("nllb-moe").__name__, mi.zoo.model_class("qwen3_vl_moe").__name__
    ('NllbMoeForConditionalGeneration', 'Qwen3VLMoeForConditionalGeneration')

    ```
    """
    import transformers
    from transformers.models.auto import modeling_auto

    _check_model_type(model_type)
    config = AutoConfig.for_model(model_type)
    composite = getattr(config, "sub_configs", None) and config.get_text_config() is not config
    # a composite config (a multimodal model) builds its multimodal class; its causal-LM
    # mapping, where there is one, expects the language model's own config
    for head in (sorted(_HEADS, key=lambda h: h not in ("IMAGE_TEXT_TO_TEXT", "MULTIMODAL_LM")) if composite
                 else _HEADS):
        names = getattr(modeling_auto, f"MODEL_FOR_{head}_MAPPING_NAMES" if head else "MODEL_MAPPING_NAMES")
        if model_type in names:
            name = names[model_type]
            return getattr(transformers, name[0] if isinstance(name, (list, tuple)) else name)
    raise ValueError(f"transformers has no model class for {model_type!r}: it is a sub-config of another type")


def tiny_model(model_type: str = "qwen3_moe", seed: int = 0, padding_side: str = "left",
               router_std: float = 0.5, tokenizer: Any = None, **overrides: Any) -> Any:
    """A wrapped random tiny MoE model with a byte tokenizer; routers re-drawn so tokens differ.

    `tokenizer`: what `mi.wrap` gets instead of the byte tokenizer (e.g. a multimodal
    model's processor; `padding_side` is then its own).

    `from_config` zero-initialises several routers (every token would route alike); their
    parameters (weights, biases, DeepSeek-V3's correction bias) are redrawn from
    `normal(0, router_std)`.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("mixtral")
    >>> mi.describe(model).moe_layers
    (0, 1, 2, 3)

    ```
    """
    from moe_interp.arch._spec import describe
    from moe_interp.arch._stacks import repair_nllb_moe
    from moe_interp.models._loading import wrap

    torch.manual_seed(seed)
    hf = model_class(model_type)._from_config(tiny_config(model_type, **overrides)).eval()
    repair_nllb_moe(hf)  # transformers 5's NLLB-MoE experts ignore the router (see arch._stacks)
    spec = describe(hf)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for path in spec.routers:
            for param in hf.get_submodule(path).parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * router_std)
            for name, buffer in hf.get_submodule(path).named_buffers():
                if "bias" in name:
                    buffer.copy_(torch.randn(buffer.shape, generator=generator) * router_std)
            block = hf.get_submodule(path.rsplit(".", 1)[0]) if "." in path else None
            for name, buffer in block.named_buffers(recurse=False) if block is not None else ():
                if "bias" in name and buffer.is_floating_point():  # a selection bias the block passes its
                    buffer.copy_(torch.randn(buffer.shape, generator=generator) * router_std)  # router (LFM2-MoE)
    return wrap(hf, byte_tokenizer(padding_side) if tokenizer is None else tokenizer)


# ------------------------------------------------------------------------------------ demo model
DEMO_SEED = 0
DEMO_EXPERTS_IMPLEMENTATION = "grouped_mm"  # same maths as "eager"; "batched_mm" is far slower on CPU
BYTE_OFFSET = len(_SPECIALS)  # byte_tokenizer: token id = BYTE_OFFSET + byte value
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "demo_model"
# The demo corpus, designed for the questions the demo asks: six families of 7 or more
# languages, most in Latin script (Indo-European and Turkic also in Cyrillic, so a family spans
# scripts), plus English as the hub that holds a large share of training text.
DEMO_HUB = "eng"
DEMO_FAMILIES = {
    "Indo-European": ("eng", "deu", "nld", "swe", "fra", "spa", "ita", "por", "pol", "ces", "hrv",
                      "rus", "ukr", "bul"),
    "Niger-Congo": ("swh", "zul", "xho", "sna", "nya", "kin", "lin", "tsn", "ibo"),
    "Austronesian": ("ind", "jav", "sun", "tgl", "ceb", "ilo", "plt", "haw", "smo"),
    "Uralic": ("fin", "ekk", "hun", "sme", "smn", "krl", "vep"),
    "Turkic": ("tur", "azj", "uzn", "tuk", "crh", "gag", "kaz", "tat", "sah"),
    "Mayan": ("cak", "quc", "tzh", "tzo", "yua", "kek", "toj"),
}
DEMO_LANGUAGES = tuple(sorted(lang for langs in DEMO_FAMILIES.values() for lang in langs))

_DEMO = dict(
    hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=VOCAB_SIZE, max_position_embeddings=1024,
    num_experts=32, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
    tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)


def demo_config(**overrides: Any) -> Any:
    """The demo model's `Qwen3MoeConfig` (hidden 128, 8 MoE layers, 32 experts, top-2, bytes).

    ```python
    >>> import moe_interp as mi
    >>> config = mi.zoo.demo_config()
    >>> config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size
    (32, 2, 64)

    ```
    """
    return AutoConfig.for_model("qwen3_moe", **{**_DEMO, **overrides})


def training_seed(directory: Any) -> int:
    """The seed the model in `directory` (a `Path`) was trained from (its twin's seed); DEMO_SEED if unrecorded.

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> from moe_interp.models.zoo import DEMO_MODEL_DIR, training_seed
    >>> training_seed(DEMO_MODEL_DIR), training_seed(Path(tempfile.mkdtemp()))
    (0, 0)

    ```
    """
    import json

    info = directory / "training.json"
    return int(json.loads(info.read_text()).get("seed", DEMO_SEED)) if info.is_file() else DEMO_SEED


def _checksum(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a model's float32 state dict, in name order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def demo_model(trained: bool = True, path: Any = None, padding_side: str = "left", seed: int | None = None) -> Any:
    """The bundled demo MoE (offline), or its random-init twin, wrapped for `moe_interp`.

    A `Qwen3MoeForCausalLM` over bytes (hidden 128, 8 MoE layers of 32 experts, top-2,
    ~6.75 M parameters) trained by `scripts/train_demo_model.py` on the UDHR train split of
    `DEMO_LANGUAGES` (55 languages in six families, English as hub); see
    `moe_interp/data/demo_model/MODEL_CARD.md` for data, training log, held-out bits/byte and
    every claim with its controls. Weights are stored in bfloat16 and loaded as float32.

    `trained=False` gives the **random-init twin**: the same config built with
    `AutoModelForCausalLM.from_config` under the same seed the training run started from, so
    every weight (routers included) is exactly the trained model's starting point; nothing is
    redrawn (unlike `tiny_model`). It is the baseline every claim about the demo model is made
    against: structure that the twin's routing also shows (e.g. script separation, which byte
    statistics alone produce) is not learned. The global torch RNG state is left untouched.

    `seed` (with `trained=False` only) builds another random-init twin from the same config
    under that seed: several twins show how much a statistic varies across initialisations,
    which one twin cannot. `None` is the training run's own seed (`training.json`).

    A fresh model is built on every call (nothing is cached), so interventions or edits on one
    never leak into another.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.demo_model()
    >>> mi.describe(model).moe_layers, mi.describe(model).num_experts
    ((0, 1, 2, 3, 4, 5, 6, 7), 32)
    >>> twin = mi.zoo.demo_model(trained=False)          # the baseline
    >>> with mi.trace(model, mi.RouterRecord()) as tr:
    ...     with tr.invoke(["All human beings are born free"], group="eng"): pass
    ...     with tr.invoke(["Tous les êtres humains naissent libres"], group="fra"): pass
    >>> tr.routing.groups
    ('eng', 'fra')
    >>> other = mi.zoo.demo_model(trained=False, seed=1)   # a second twin, another init
    >>> bool((other._module.lm_head.weight != twin._module.lm_head.weight).any())
    True

    ```
    """
    from moe_interp.models._loading import wrap

    directory = DEMO_MODEL_DIR if path is None else Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no demo model at {directory}: run `python scripts/train_demo_model.py` "
                                "(or pass path= to a directory it wrote)")
    index = None if seed is None else as_index(seed)
    if seed is not None and (trained or index is None or index < 0):
        raise ValueError(f"seed={seed!r}: a seed picks a random-init twin; pass trained=False and an integer >= 0 "
                         "(the trained weights have no seed to choose)")
    if trained:
        hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True,
                                                  experts_implementation=DEMO_EXPERTS_IMPLEMENTATION)
    else:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training_seed(directory) if index is None else index)
            hf = AutoModelForCausalLM.from_config(config, experts_implementation=DEMO_EXPERTS_IMPLEMENTATION,
                                                  dtype=torch.float32)
    return wrap(hf.eval(), byte_tokenizer(padding_side))
