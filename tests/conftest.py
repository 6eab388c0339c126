import functools
import warnings

import pytest
import torch

import moe_interp as mi

warnings.filterwarnings("ignore")

# The families the core issue names; each builds from a tiny config (moe_interp.zoo).
NAMED_ARCHITECTURES = (
    "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe", "flex_olmo", "deepseek_v2", "deepseek_v3",
    "glm4_moe", "gpt_oss", "granitemoe", "granitemoeshared", "phimoe", "llama4_text", "dbrx", "ernie4_5_moe",
    "hunyuan_v1_moe", "minimax",
)
PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt", "ok"]


@functools.lru_cache(maxsize=None)
def tiny(arch: str, padding_side: str = "left"):
    return mi.zoo.tiny_model(arch, padding_side=padding_side)


def encode(model, prompts=PROMPTS, padding_side=None):
    tok = model.tokenizer
    if padding_side is not None:
        tok.padding_side = padding_side
    try:
        return tok(list(prompts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"


def oracle_routing(model, enc):
    """Per MoE layer: the expert indices the experts really received, non-pad tokens only.

    Plain torch hooks on the unwrapped HF modules and a plain HF forward: no nnsight.
    Dense-score routers (Llama-4) hand experts no indices, so their router output is read.
    """
    spec = mi.describe(model)
    hf = model._module
    seen, handles = {}, []
    for layer, router, experts in zip(spec.moe_layers, spec.routers, spec.experts):
        if spec.readout == "experts":
            def pre(module, args, kwargs, layer=layer):
                seen[layer] = args[1].detach().clone()
            handles.append(hf.get_submodule(experts).register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(module, args, out, layer=layer):
                scores = out[spec.scores_index]
                seen[layer] = torch.topk(scores, spec.top_k, dim=-1).indices
            handles.append(hf.get_submodule(router).register_forward_hook(post))
    try:
        with torch.no_grad():
            out = hf(**enc)
    finally:
        for h in handles:
            h.remove()
    real = enc["attention_mask"].reshape(-1).bool()
    counts = torch.stack([torch.bincount(seen[l][real].reshape(-1), minlength=spec.num_experts)
                          for l in spec.moe_layers])
    return counts, out


@pytest.fixture(params=NAMED_ARCHITECTURES)
def arch(request):
    return request.param
