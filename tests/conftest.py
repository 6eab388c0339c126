import contextlib
import os
import re

import pytest
import torch

import moe_interp as mi


# The families the core issue names; each builds from a tiny config (moe_interp.models.zoo).
NAMED_ARCHITECTURES = (
    "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe", "flex_olmo", "deepseek_v2", "deepseek_v3",
    "glm4_moe", "gpt_oss", "granitemoe", "granitemoeshared", "phimoe", "llama4_text", "dbrx", "ernie4_5_moe",
    "hunyuan_v1_moe", "minimax",
)
PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt", "ok"]


_SHARED: dict = {}  # (arch, padding side) -> (model, its content key when built): shared by every test


def tiny(arch: str, padding_side: str = "left"):
    """The tiny `arch` model every test of this process shares (built once). A test that changes
    it (weights, config, tokenizer) must restore it: `_shared_models_are_unchanged` checks."""
    if (arch, padding_side) not in _SHARED:
        from moe_interp.core._fingerprint import model_parts
        model = mi.zoo.tiny_model(arch, padding_side=padding_side)
        _SHARED[arch, padding_side] = (model, model_parts(model))
    return _SHARED[arch, padding_side][0]


def _changed_shared_models() -> dict:
    from moe_interp.core._fingerprint import differing, model_parts
    changed = {key: differing(parts, model_parts(model)) for key, (model, parts) in _SHARED.items()}
    return {key: parts for key, parts in changed.items() if parts}


@pytest.fixture(scope="session", autouse=True)
def _shared_models_are_unchanged():
    """After the session (or after every test file with `MI_SHARED_GUARD=file`, to find which
    one): every shared tiny model still has the content key it was built with. A leaked change
    makes later tests read another model, and a checkpoint or Experiment cell keyed by it
    resume as another model's (how a remote trace's `_persistent_id` on the tokenizer showed)."""
    yield
    changed = _changed_shared_models()
    assert not changed, (f"shared tiny models changed during the tests: {changed}; rerun with "
                         "MI_SHARED_GUARD=file to find the test file that leaves them changed")


@pytest.fixture(scope="module", autouse=True)
def _shared_models_are_unchanged_per_file(request):
    yield
    if os.environ.get("MI_SHARED_GUARD") == "file":
        changed = _changed_shared_models()
        _SHARED.clear()  # one report per file: the next file builds its own
        assert not changed, f"{request.node.name} left shared tiny models changed: {changed}"


def by_layer_hooks(model, text, suffix, take, pre=False):
    """Per MoE layer (model order), what `take` returns from every module whose name ends with
    `suffix` during a plain HF forward of `text` (alone, no padding): `take(args, kwargs)` of a
    pre-hook (`pre=True`) or `take(args, output)` of a forward hook. Plain torch hooks, no
    package code; every hook removed whatever happens."""
    hf, seen = model._module, {}

    def keep(name):
        if pre:
            return lambda module, args, kwargs: seen.__setitem__(name, take(args, kwargs))
        return lambda module, args, output: seen.__setitem__(name, take(args, output))

    handles = [module.register_forward_pre_hook(keep(name), with_kwargs=True) if pre
               else module.register_forward_hook(keep(name)) for name, module in hf.named_modules()
               if name.endswith(suffix)]
    try:
        with torch.no_grad():
            hf(**model.tokenizer(text, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return [seen[name] for name in sorted(seen, key=lambda n: int(n.split(".")[2]))]


def load_script(path, name):
    """A benchmark script (not a package module) imported from its file, as module `name`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hooked_batches(monkeypatch, hooks=True):
    """Patch `mi.profile`'s hooked reader (`experiments._profile.hooked_reader`) to record, per
    local batch, whether torch hooks read it (True) or a trace ran (False); `hooks=False` makes
    every batch a trace. Returns the list it appends to; `monkeypatch.undo()` restores it."""
    import moe_interp.experiments._profile as profile_module
    from moe_interp.runtime._hooks import hooked_reader

    served = []

    def reader(*args, **kwargs):
        real = hooked_reader(*args, **kwargs) if hooks else None
        if real is None:  # this batch runs a trace; the profile prepares a reader again for the next
            served.append(False)
            return None

        def read(batch):
            run = real(batch)
            served.append(run is not None)
            return run
        return read

    monkeypatch.setattr(profile_module, "hooked_reader", reader)
    return served


def encode(model, prompts=PROMPTS, padding_side=None):
    tok = model.tokenizer
    if padding_side is not None:
        tok.padding_side = padding_side
    try:
        return tok(list(prompts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"


def oracle_routing(model, enc):
    """Per MoE layer: `[layers, E]` counts of the experts the experts modules really received,
    non-pad tokens only, from a plain HF forward (no nnsight), and that forward's output.

    Read by `experts_received` (torch hooks, experts found without moe_interp); `mi.describe`
    only gives the width `E`.
    """
    num_experts = mi.describe(model).num_experts
    with experts_received(model, enc["attention_mask"]) as seen, torch.no_grad():
        out = getattr(model, "_module", model)(**enc)
    counts = torch.stack([torch.nn.functional.pad(seen[layer], (0, num_experts - len(seen[layer])))
                          for layer in sorted(seen)])
    return counts, out


@pytest.fixture(params=NAMED_ARCHITECTURES)
def arch(request):
    return request.param


# ---------------------------------------------------------------------------------- experts oracle
# What each experts module really received, found and read without moe_interp: experts modules
# are found by name, their routing read from their own call arguments by plain torch hooks.
_LAYER = re.compile(r"^(.*?)\.(\d+)\.")
_EXPERT_CHILD = re.compile(r"^expert_?\d+$")


def _is_experts(path: str, module: torch.nn.Module) -> bool:
    name = path.rsplit(".", 1)[-1]
    if "shared" in name.lower() or "attention" in path:  # shared experts are not routed; JetMoe's MoA
        return False
    return "Experts" in type(module).__name__ or name == "experts"


def _experts_modules(hf: torch.nn.Module) -> list:
    """(layer, block path, experts module) of every routed-experts module: the outermost when
    they nest, the first of a block when it has several (JetMoe's input and output linears
    receive the same rows). `layer` is the layer index when every experts module sits in one
    stack of layers; in a model with several (an encoder and a decoder), it is the layer's
    path, e.g. `"model.decoder.layers.3"`, so that equal indices of two stacks stay apart."""
    found, blocks = [], set()
    for path, module in hf.named_modules():
        block = path.rsplit(".", 1)[0]
        if (_is_experts(path, module) and block not in blocks
                and not any(path.startswith(p + ".") for _, _, _, p, _ in found)):
            match = _LAYER.search(path + ".")
            if match:
                found.append((match[1], int(match[2]), block, path, module))
                blocks.add(block)
    several = len({stack for stack, *_ in found}) > 1
    return [(f"{stack}.{index}" if several else index, block, module) for stack, index, block, _, module in found]


def _expert_children(module: torch.nn.Module) -> list:
    """`[(expert index, submodule)]` of an experts container that calls one submodule per
    expert (NLLB-MoE's and Switch's `expert_<i>`), else `[]`."""
    return [(int(re.sub(r"\D", "", name)), child) for name, child in module.named_children()
            if _EXPERT_CHILD.match(name)]


def _rows_to_tokens(rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The token each of `rows` is a copy of (exact equality), each token used at most once:
    tokens with equal states (the same prefix in two rows) take the rows in turn."""
    match = (rows[:, None, :] == tokens[None, :, :]).all(-1)  # [rows, tokens]
    assert bool(match.any(1).all()), "an experts row matches no token"
    owner, used = [], set()
    for candidates in match:
        free = [int(t) for t in candidates.nonzero().flatten() if int(t) not in used]
        owner.append(free[0] if free else int(candidates.nonzero()[0]))
        used.add(owner[-1])
    return torch.tensor(owner, dtype=torch.long)


def _received(args: tuple, kwargs: dict, num_tokens: int, tokens: torch.Tensor | None) -> torch.Tensor:
    """`[T, E]` counts of what one experts call received, from its own arguments.

    - an integer tensor argument: the experts each token is sent to (`[T, K]` indices);
    - a list of per-expert row counts (JetMoe's parallel experts): the rows are copies of the
      block's token states (`tokens`), matched back to their token by exact equality;
    - one float tensor of `E * T` rows (Llama-4): token t's copy for expert e is row e*T + t,
      all zero unless the router chose e.
    """
    values = list(args) + list(kwargs.values())
    index = next((v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
    if index is not None:
        index = index.reshape(num_tokens, -1).long()
        out = torch.zeros(index.shape[0], int(index.max()) + 1, dtype=torch.long)
        return out.scatter_add_(1, index, torch.ones_like(index))
    rows = values[0]
    sizes = next((v for v in values if isinstance(v, (list, tuple))), None)
    if sizes is not None:
        match = (rows[:, None, :] == tokens[None, :, :]).all(-1)  # [rows, tokens]
        assert bool((match.sum(1) >= 1).all()), "an experts row matches no token"
        owner = match.float().argmax(1)
        expert = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        out = torch.zeros(tokens.shape[0], len(sizes), dtype=torch.long)
        return out.index_put_((owner, expert), torch.ones_like(owner), accumulate=True)
    return (rows.reshape(-1, num_tokens, rows.shape[-1]) != 0).any(-1).T.long()


@contextlib.contextmanager
def experts_received(model, attention_mask):
    """Count what every routed-experts module receives during the forward(s) run in the block.

    Yields a dict that, after the block, maps each layer (see `_experts_modules`) to `[E]`
    counts over the non-padding tokens, summed over the layer's calls. `attention_mask` marks
    them, flattened as the experts see tokens: one mask, or for a model with several stacks a
    dict `{stack path prefix: mask}` (e.g. `{"model.encoder": mask, "model.decoder":
    decoder_mask}`). An experts container that runs one submodule per expert (NLLB-MoE,
    Switch) is read at those submodules: the rows each one really computed, matched back to
    their token. Independent of moe_interp: no `mi.describe`, plain torch hooks.

    ```python
    with experts_received(model, enc["attention_mask"]) as seen:
        model._module(**enc)
    seen[0]              # tensor([3, 0, 5, ...])
    ```
    """
    hf = getattr(model, "_module", model)
    masks = attention_mask if isinstance(attention_mask, dict) else {"": attention_mask}
    seen: dict = {}
    block_tokens: dict = {}
    handles = []

    def real_of(block):
        prefix = max((p for p in masks if block.startswith(p)), key=len)
        return masks[prefix].reshape(-1).bool()

    def add(layer, counts):
        old = seen.get(layer)
        if old is not None:
            width = max(old.shape[0], counts.shape[0])
            counts = torch.nn.functional.pad(counts, (0, width - counts.shape[0]))
            counts = counts + torch.nn.functional.pad(old, (0, width - old.shape[0]))
        seen[layer] = counts

    def record(layer, block):
        def pre(module, args, kwargs):
            real = real_of(block)
            counts = _received(args, kwargs, real.shape[0], block_tokens.get(block))
            if counts.shape[0] != real.shape[0]:
                raise AssertionError(f"layer {layer}: experts saw {counts.shape[0]} tokens, the batch has "
                                     f"{real.shape[0]}")
            add(layer, counts[real].sum(0))
        return pre

    def record_child(layer, block, expert):
        def pre(module, args, kwargs):
            real = real_of(block)
            rows = (args[0] if args else next(iter(kwargs.values()))).detach()
            owner = _rows_to_tokens(rows.reshape(-1, rows.shape[-1]), block_tokens[block])
            counts = torch.zeros(expert + 1, dtype=torch.long)
            counts[expert] = int(real[owner].sum())
            add(layer, counts)
        return pre

    def keep_block_input(block):
        def pre(module, args, kwargs):
            hidden = args[0] if args else next(iter(kwargs.values()))
            block_tokens[block] = hidden.detach().reshape(-1, hidden.shape[-1])
        return pre

    def record_router(layer, block):
        def hook(module, args, output):  # (logits, weights, indices over routed + zero-computation experts)
            real = real_of(block)
            index = output[2].reshape(real.shape[0], -1).long()
            counts = torch.zeros(index.shape[0], int(index.max()) + 1, dtype=torch.long)
            add(layer, counts.scatter_add_(1, index, torch.ones_like(index))[real].sum(0))
        return hook

    for layer, block, module in _experts_modules(hf):
        if getattr(hf.get_submodule(block), "zero_expert_num", 0):
            # LongCat-Flash from transformers 5.25: the block sends a zero-computation (identity)
            # expert's slot to a routed expert with weight 0, so the experts' arguments do not say
            # what was chosen; its router's output does (up to 5.24 the experts got it as it was)
            handles.append(hf.get_submodule(block).router.register_forward_hook(record_router(layer, block)))
            continue
        children = _expert_children(module)
        if children:  # the container's hidden states are the tokens its experts' rows copy
            handles.append(module.register_forward_pre_hook(keep_block_input(block), with_kwargs=True))
            handles.append(module.register_forward_pre_hook(
                lambda *_, layer=layer, n=len(children): add(layer, torch.zeros(n, dtype=torch.long))))
            for expert, child in children:
                handles.append(child.register_forward_pre_hook(record_child(layer, block, expert), with_kwargs=True))
            continue
        handles.append(hf.get_submodule(block).register_forward_pre_hook(keep_block_input(block), with_kwargs=True))
        handles.append(module.register_forward_pre_hook(record(layer, block), with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
