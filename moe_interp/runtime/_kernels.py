"""The only code of `moe_interp` that runs inside a trace.

Everything here executes in nnsight's worker while the model runs: locally, or on an NDIF
server that imports only whitelisted modules (torch, math, typing, collections, ...). So
this module imports nothing else but the package's other in-trace modules (`_reader`,
`_edits`: shipped by value with it), defines pure functions on tensors, and takes every
decision that can be taken earlier (validation, expert sets, strengths) as a compiled
`plan` built outside the trace by `runtime._compile.compile_plan`.

A plan is a `_plan.Plan`: plain typed data (`NamedTuple`s, read here by attribute only, so
this module imports none of them). Each `LayerPlan` names one MoE layer's module paths, its
router sites (`arch._sites.RouterSites`: where the logits, the ranked scores and the used
routing live, the sites the router view reads too) and its edits per site, each an
`Edit(kind, payload, scale)` whose kind carries its transformation (`runtime._edits`: the
kinds, the sites and their order). The kernels apply them site by site, in the order the
forward reaches the sites: `edit_scores` at the score sites, `edit_weights` on the routing
the experts receive.

The routing the experts used is read in one place, `_reader.routing` (per readout kind: where the
indices and weights live, and which slots reached no expert: index -1, weight 0), and
written by `set_weights` / `set_indices`. RouterRecord, the drop edit (`set_weights` of a
masked copy), the router view's `indices` / `weights` and `mi.expert_attribution`
(`set_weights` of `weights + probe`) all go through them.
"""

from typing import Any, Sequence

import torch

from moe_interp.runtime._edits import SCORE_SITES, router_field
from moe_interp.runtime._reader import location, on, pick, read, resolve, rewrite_weights, routing, write


def edit_scores(z: torch.Tensor, edits: Sequence) -> torch.Tensor:
    """Apply score edits in order to router scores `z[T, E]` (each `Edit`'s kind applies
    itself: `runtime._edits`); returns a new tensor.

    A router may make more logits than it routes (Inkling: the routed experts, then a
    shared-expert column): the payloads cover the routed experts, the columns after them
    are left as they are.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.runtime._kernels import edit_scores
    >>> z = torch.tensor([[1.0, -2.0, 0.5]])
    >>> edit_scores(z, [Edit("additive", torch.tensor([0.0, 0.0, 2.0]), 1.0)])   # 0.5 + 2
    tensor([[ 1.0000, -2.0000,  2.5000]])
    >>> steer = Edit("relative", torch.tensor([0.0, 1.0, 0.0]), 0.5)              # -2 + 0.5 * 1 * |-2|
    >>> edit_scores(z, [steer, Edit("reroute", torch.tensor([True, False, False]), 1.0)])
    tensor([[-1.0000e+09, -1.0000e+00,  5.0000e-01]])

    ```
    """
    for kind, payload, scale in edits:  # Edit values unpack as (kind, payload, scale)
        payload = on(payload, z.device)
        extra = z.shape[-1] - payload.shape[-1]
        if extra < 0:
            raise ValueError(f"router scores have {z.shape[-1]} columns but the intervention covers "
                             f"{payload.shape[-1]} experts: register an adapter naming the site of the routed scores")
        if extra:
            payload = torch.cat([payload, payload.new_zeros(extra)])
        z = kind.apply(z, payload, scale)
    return z


def edit_weights(indices: torch.Tensor, weights: torch.Tensor, edits: Sequence) -> torch.Tensor:
    """Apply weight edits in order to the `weights[T, K]` of the selected `indices[T, K]`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._plan import Edit
    >>> from moe_interp.runtime._kernels import edit_weights
    >>> indices, weights = torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    >>> edit_weights(indices, weights, [Edit("drop", torch.tensor([False, False, True]), 1.0)])
    tensor([[0.6000, 0.0000],
            [0.7000, 0.0000]])

    ```
    """
    for kind, payload, scale in edits:
        weights = kind.apply(indices, weights, on(payload, indices.device), scale)
    return weights


def _edit_site(router: Any, experts: Any, site: Any, edits: Any) -> torch.Tensor:
    """Apply score `edits` at `site`; returns the edited value."""
    envoy = location(router, experts, site)
    raw = read(envoy, site)
    new = edit_scores(pick(raw, site), edits)
    write(envoy, site, raw, new)
    return new


def _sites(entry: Any) -> Any:
    """The entry's sites for this forward: some routers run other ops with grad off (a
    CUDA-only branch), so the plan names both and the grad mode of the forward decides."""
    return entry.sites if entry.no_grad is None or torch.is_grad_enabled() else entry.no_grad


def score_edits(entry: Any, sites: Any) -> list:
    """`(site, edits)` of a `LayerPlan`'s score edits, each site an `arch._sites.Site` of
    `sites`, in the order the forward reaches them: the sites inside the router's forward
    first, in `_edits.SITES` order (logits, scores, select), then those at its output. A
    site the router does not have (no select site of its own) is left out.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> from moe_interp.runtime._kernels import score_edits
    >>> entry = compile_plan(mi.describe(mi.zoo.tiny_model("qwen3_moe")), [mi.ExpertAblate({1: [3]})]).layers[0]
    >>> [(site.ops, [edit.kind for edit in edits]) for site, edits in score_edits(entry, entry.sites)]
    [(('router_logits_0',), [Reroute()]), (('torch_topk_0',), [Reroute()])]

    ```
    """
    located = []
    for name, edits in entry.edits:
        site = getattr(sites, router_field(name)) if name in SCORE_SITES else None
        if site is not None:
            located.append((site, edits))
    return [pair for pair in located if pair[0].ops] + [pair for pair in located if not pair[0].ops]


def _used(router: Any, experts: Any, sites: Any, edits: Any, top_k: int) -> tuple:
    """(indices[T, K], weights[T, K]) the experts really receive, after the weight `edits`."""
    if not edits:
        return routing(router, experts, sites, top_k)
    return rewrite_weights(router, experts, sites, top_k, lambda indices, weights: edit_weights(indices, weights, edits))


def token_groups(inputs: Any, rows: list, num_tokens: int) -> tuple:
    """Per-token group id (`-1` for padding) and position among the row's real tokens.

    `rows` is `[(start, size), ...]` per group, in batch order. Tokens are flattened
    `batch * seq` as the router sees them; the current tokens are the last `seq`
    columns of the attention mask (a cached decoding step sees one new token per row).
    The position is the text position, the token's index among its row's real tokens
    (each image or video placeholder token counts one): 2-D `position_ids` when given,
    never a multimodal model's rope ids (`[3, batch, seq]`), else from the mask.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import token_groups
    >>> ids, mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    >>> group, position, row = token_groups(((ids,), {"attention_mask": mask}), [(0, 1), (1, 1)], 6)
    >>> group, position                    # row 0's left pad is -1; one group per row here
    (tensor([-1,  0,  0,  1,  1,  1]), tensor([-1,  0,  1,  0,  1,  2]))
    >>> row
    tensor([0, 0, 0, 1, 1, 1])

    ```
    """
    args, kwargs = inputs
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    embeds = kwargs.get("inputs_embeds")
    batch = mask.shape[0] if mask is not None else (ids.shape[0] if ids is not None else embeds.shape[0])
    seq = num_tokens // batch
    device = mask.device if mask is not None else (ids.device if ids is not None else embeds.device)
    row_group = torch.full((batch,), -1, dtype=torch.long, device=device)
    for g, (start, size) in enumerate(rows):
        row_group[start : start + size] = g
    real = torch.ones(batch, seq, dtype=torch.bool, device=device) if mask is None else mask[:, -seq:] > 0
    position = kwargs.get("position_ids")
    # multimodal rope ids ([3 or 4, batch, seq], Qwen-VL's M-RoPE) are not positions among
    # the real tokens: the text position (from the mask) is kept instead
    if position is not None and position.ndim <= 2 and position.shape[-1] == seq:
        position = position.to(device).expand(batch, seq)
    elif mask is not None:
        position = mask.long().cumsum(-1)[:, -seq:] - 1
    elif kwargs.get("cache_position") is not None:
        position = kwargs["cache_position"][-seq:].to(device).expand(batch, seq)
    else:
        position = torch.arange(seq, device=device).expand(batch, seq)
    group = torch.where(real, row_group[:, None].expand(batch, seq), -1)
    row = torch.arange(batch, device=device)[:, None].expand(batch, seq)
    return group.reshape(-1), position.reshape(-1), row.reshape(-1)


def token_kinds(inputs: Any, group: torch.Tensor, exclude: Any, modalities: Sequence, position: Any = None,
                kinds: Any = None, positions: Sequence = ()) -> torch.Tensor:
    """`group` (from `token_groups`) with the tokens whose id is in `exclude` marked as
    padding (`-1`) and each group split in turn: with `modalities` (`(name, ids)` each), every
    group `g` into `g * (1 + M) + m` (`m = 0` text, `m = i + 1` for a token id in
    `modalities[i]`); with `kinds` (`(names, table)`: `_token_kinds.token_kind_table`), into
    `g * len(names) + table[id]`, kind 0 (`"first"`) for the tokens at `position` 0; with
    `positions` (the first position of each bucket), into `g * len(positions) + bucket`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import token_kinds
    >>> inputs = ((), {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]])})
    >>> group = torch.tensor([-1, 0, 0, 1, 1, 1])
    >>> token_kinds(inputs, group, torch.tensor([6]), ())                     # id 6 left out
    tensor([-1,  0, -1,  1,  1,  1])
    >>> token_kinds(inputs, group, None, [("image", torch.tensor([8, 9]))])   # g * 2 + (1 for image)
    tensor([-1,  0,  0,  2,  3,  3])
    >>> position = torch.tensor([-1, 0, 1, 0, 1, 2])
    >>> token_kinds(inputs, group, None, (), position, positions=(0, 2))      # g * 2 + (1 from position 2)
    tensor([-1,  0,  0,  2,  2,  3])
    >>> table = torch.tensor([0, 0, 0, 0, 0, 2, 1, 2, 1, 1], dtype=torch.int8)
    >>> token_kinds(inputs, group, None, (), position, kinds=(("first", "a", "b"), table))
    tensor([-1,  0,  1,  3,  4,  4])

    ```
    """
    if exclude is None and not modalities and kinds is None and not positions:
        return group
    if exclude is not None or modalities or kinds is not None:
        args, kwargs = inputs
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise ValueError("RouterRecord(exclude_tokens=..., by_modality=True, by_token_kind=True) tells tokens "
                             "apart by their ids: call the model with input_ids (not inputs_embeds)")
        ids = ids[:, ids.shape[1] - group.shape[0] // ids.shape[0]:].reshape(-1).to(group.device)
    if exclude is not None:
        group = torch.where(torch.isin(ids, on(exclude, group.device)), -1, group)
    if modalities:
        kind = torch.zeros_like(group)
        for m, (_, members) in enumerate(modalities):
            kind = torch.where(torch.isin(ids, on(members, group.device)), m + 1, kind)
        group = torch.where(group >= 0, group * (len(modalities) + 1) + kind, -1)
    if kinds is not None:
        names, table = kinds
        kind = torch.where(position == 0, 0, on(table, group.device)[ids].long())
        group = torch.where(group >= 0, group * len(names) + kind, -1)
    if positions:
        starts = torch.tensor(list(positions), dtype=position.dtype, device=position.device)
        bucket = torch.bucketize(position, starts, right=True) - 1
        group = torch.where(group >= 0, group * len(positions) + bucket, -1)
    return group


def splits(plan: Any) -> int:
    """How many groups `token_kinds` splits each trace group into under `plan`.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> from moe_interp.runtime._kernels import splits
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> splits(compile_plan(mi.describe(model), [mi.RouterRecord(by_token_kind=True, by_position=(0, 4))], model))
    12

    ```
    """
    return ((1 + len(plan.modalities)) * (len(plan.kinds[0]) if plan.kinds is not None else 1)
            * (len(plan.positions) or 1))


def drop_finished(inputs: Any, group: torch.Tensor, row: torch.Tensor, store: dict, eos: Sequence,
                  key: Any = None) -> torch.Tensor:
    """`group` with the tokens a generation counted before, and those of finished rows,
    marked as padding (`-1`).

    Each token counts once, at the forward that first feeds it. With a cache, a step feeds
    only the new tokens; without one (`use_cache=False`), every step feeds the whole sequence
    again, and only its columns past the length fed so far are new. That length is the
    attention mask's width (the whole sequence, cache or not); without a mask, a forward
    longer than the length fed so far is taken to re-feed it. State per stack (`key`, as in
    `forward_step`) in `store["fed"]`.

    A batch generation keeps feeding a row that has produced an end-of-sequence token (the
    EOS itself, then padding) until every row has ended; alone, that row would have stopped
    there. A row counts as finished from the first forward whose input holds an EOS among
    its generated tokens (`eos`: the ids; none, no row ends), so the counts equal generating
    each prompt alone. State lives in `store` (the prompt length, a per-row flag): no host waits.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import drop_finished
    >>> store, group, row = {"forwards": 0}, torch.tensor([0, 1]), torch.tensor([0, 1])
    >>> drop_finished(((torch.tensor([[5], [5]]),), {}), group, row, store, eos=(2,))  # the prompt
    tensor([0, 1])
    >>> store["forwards"] = 1
    >>> drop_finished(((torch.tensor([[2], [8]]),), {}), group, row, store, eos=(2,))  # row 0: EOS
    tensor([-1,  1])
    >>> store = {"forwards": 1, "fed": {None: 2}}          # no cache: [prompt, prompt, new] per row
    >>> mask = torch.ones(2, 3, dtype=torch.long)
    >>> drop_finished(((), {"attention_mask": mask}), torch.tensor([0, 0, 0, 1, 1, 1]),
    ...               torch.tensor([0, 0, 0, 1, 1, 1]), store, eos=())
    tensor([-1, -1,  0, -1, -1,  1])

    ```
    """
    args, kwargs = inputs
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    mask = kwargs.get("attention_mask")
    first = mask if mask is not None else (ids if ids is not None else kwargs.get("inputs_embeds"))
    if first is not None:
        batch = first.shape[0]
        seq = group.shape[0] // batch
        fed = store.setdefault("fed", {})
        before = fed.get(key, 0)
        length = mask.shape[-1] if mask is not None and mask.ndim == 2 else (seq if seq > before else before + seq)
        refed = min(max(before + seq - length, 0), seq)  # shapes only: no host waits
        fed[key] = length
        if refed:
            group = torch.cat([group.new_full((batch, refed), -1), group.view(batch, seq)[:, refed:]], 1).reshape(-1)
    if not eos or ids is None or ids.ndim != 2:
        return group
    if store["forwards"] == 0:  # the prompt: never finishes a row
        store["prompt_length"] = ids.shape[1]
        store["finished"] = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        return group
    prompt = store["prompt_length"]
    generated = ids[:, prompt:] if ids.shape[1] > prompt else ids  # a cached step sees only new tokens
    hit = generated == eos[0]
    for more in eos[1:]:
        hit = hit | (generated == more)
    finished = store["finished"] = store["finished"] | hit.any(-1)
    return torch.where(on(finished, group.device)[row], -1, group)


def tally(bins: torch.Tensor, size: int, weights: Any = None) -> torch.Tensor:
    """`bincount(bins[bins >= 0], weights, minlength=size)` (float64 with weights) that never
    waits for the GPU.

    Boolean indexing and `bincount` both read the data to size their output, which on a GPU
    blocks the host until every queued kernel has run; once per layer that starves the GPU.
    Here negative bins (padding) fall into one spare slot past the end, and the shapes
    depend on `size` alone.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import tally
    >>> tally(torch.tensor([2, -1, 0, 2]), 4)
    tensor([1, 0, 2, 0])
    >>> tally(torch.tensor([2, -1, 0, 2]), 4, torch.tensor([0.5, 9.0, 1.0, 0.25]))   # -1's 9.0 dropped
    tensor([1.0000, 0.0000, 0.7500, 0.0000], dtype=torch.float64)

    ```
    """
    bins = bins.reshape(-1)
    bins = torch.where(bins >= 0, bins, size)
    if weights is None:
        out = torch.zeros(size + 1, dtype=torch.long, device=bins.device)
        values = torch.ones_like(bins)
    else:
        out = torch.zeros(size + 1, dtype=torch.float64, device=bins.device)
        values = weights.reshape(-1).to(torch.float64)
    return out.scatter_add_(0, bins, values)[:size]


def totals_start(group: torch.Tensor, num_layers: int, num_groups: int, num_experts: int, top_k: int,
                 device: Any, co_activation: bool = False, entropy: bool = False) -> dict:
    """One forward's routing totals, filled layer by layer with four GPU ops each and no waits.

    Built once per forward from the per-token group ids (`-1` padding): `base[t]` is token
    t's offset `group * E` in a `[layers, (groups + 1) * E]` buffer whose last group is a
    spare that collects the padding, so one layer's bins are `base + indices`: no masking,
    and shapes that never depend on the data. A dict, like the plan and the store.
    With `co_activation`, a `[layers, (groups + 1) * E * (E + 1)]` buffer counts the pairs of
    experts chosen for the same token too (`totals_add`); with `entropy`, a `[layers, groups + 1]`
    one sums each token's routing entropy (`totals_entropy`).

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_start
    >>> totals = totals_start(torch.tensor([0, 1, -1]), num_layers=2, num_groups=2, num_experts=3,
    ...                       top_k=2, device="cpu", co_activation=True)
    >>> totals["base"].flatten().tolist(), totals["count"].shape   # padding at the spare group 2
    ([0, 3, 6], torch.Size([2, 9]))
    >>> totals["co"].shape
    torch.Size([2, 36])

    ```
    """
    device = torch.device(device)
    group = on(group, device)
    width = (num_groups + 1) * num_experts
    totals = {"base": (torch.where(group >= 0, group, num_groups) * num_experts)[:, None],
              "ones": torch.ones(group.shape[0] * top_k, dtype=torch.long, device=device),
              "count": torch.zeros(num_layers, width, dtype=torch.long, device=device),
              "mass": torch.zeros(num_layers, width, dtype=torch.float64, device=device),
              "shape": (num_layers, num_groups + 1, num_experts)}
    if co_activation:
        totals["co"] = torch.zeros(num_layers, width * (num_experts + 1), dtype=torch.long, device=device)
        totals["co_ones"] = torch.ones(group.shape[0] * top_k * top_k, dtype=torch.long, device=device)
        totals["one"] = torch.ones((), dtype=torch.long, device=device)
    if entropy:
        totals["entropy"] = torch.zeros(num_layers, num_groups + 1, dtype=torch.float64, device=device)
        totals["row"] = torch.where(group >= 0, group, num_groups)
    return totals


def totals_add(totals: dict, layer: int, indices: torch.Tensor, weights: torch.Tensor) -> None:
    """Add one layer's routing, `indices[T, K]` with their `weights[T, K]`, to `totals`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_add, totals_start
    >>> totals = totals_start(torch.tensor([0, -1]), num_layers=1, num_groups=1, num_experts=3,
    ...                       top_k=2, device="cpu")
    >>> totals_add(totals, 0, torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    >>> totals["count"][0].tolist()        # group 0's experts 0-2, then the padding token's
    [1, 0, 1, 0, 1, 1]

    ```

    With `co_activation` (`totals_start`), each token's `K * K` pairs of slots `(a, b)` fall in
    bin `row * (E + 1) + 1 + indices[b]`, `row` slot a's count bin: a table of `E + 1` columns
    per count bin whose column 0 takes the pairs with a "no expert" (-1) slot b, and whose
    spare group takes padding and the pairs of a "no expert" slot a. One scatter per layer,
    no masking (`totals_fold` keeps groups `< G`, columns `>= 1`).

    ```python
    >>> totals = totals_start(torch.tensor([0, -1]), num_layers=1, num_groups=1, num_experts=3,
    ...                       top_k=2, device="cpu", co_activation=True)
    >>> totals_add(totals, 0, torch.tensor([[0, 2], [1, 2]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    >>> totals["co"][0, :12].view(3, 4)[:, 1:].tolist()      # group 0: experts 0 and 2 together once
    [[1, 0, 1], [0, 0, 0], [1, 0, 1]]

    ```
    """
    base = totals["base"]
    if indices.ndim != 2 or indices.shape[0] != base.shape[0]:
        raise ValueError(f"router readout gave indices of shape {tuple(indices.shape)}; expected "
                         f"[tokens={base.shape[0]}, top_k]: register an adapter whose readout matches this router")
    indices = on(indices, base.device)
    spare = (totals["shape"][1] - 1) * totals["shape"][2]  # the padding group: "no expert" (-1) slots go there
    bins = torch.where(indices >= 0, base + indices, spare).reshape(-1)
    totals["count"][layer].scatter_add_(0, bins, totals["ones"])
    totals["mass"][layer].scatter_add_(0, bins, on(weights.detach(), base.device).reshape(-1).to(torch.float64))
    if "co" in totals:  # four ops: rows, two views, their sum; then the scatter
        tokens, k = indices.shape
        rows = torch.add(totals["one"], bins, alpha=totals["shape"][2] + 1).view(tokens, k, 1)
        totals["co"][layer].scatter_add_(0, (rows + indices.view(tokens, 1, k)).view(-1), totals["co_ones"])


def token_entropy(logits: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Each token's routing entropy in nats, `-sum_e p_e log p_e` with `p = softmax(logits)`
    over the first `num_experts` columns (a router may make more logits than it routes), in
    float64; a `-inf` logit is an expert of probability 0 and adds nothing.

    ```python
    >>> import math, torch
    >>> from moe_interp.runtime._kernels import token_entropy
    >>> h = token_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, float("-inf"), 0.0, 5.0]]), 3)
    >>> abs(float(h[0]) - math.log(3)) < 1e-12, abs(float(h[1]) - math.log(2)) < 1e-12
    (True, True)

    ```
    """
    z = logits.detach().reshape(-1, logits.shape[-1])[:, :num_experts].to(torch.float64)
    return torch.special.entr(torch.softmax(z, dim=-1)).sum(dim=-1)


def totals_entropy(totals: dict, layer: int, logits: torch.Tensor) -> None:
    """Add each token's `token_entropy` of `logits` (`[tokens, >= E]`, batch * seq as the
    router sees them) to its group's bin of `layer`: one scatter, padding to the spare group.

    ```python
    >>> import math, torch
    >>> from moe_interp.runtime._kernels import totals_entropy, totals_start
    >>> totals = totals_start(torch.tensor([0, 0, -1]), num_layers=1, num_groups=1, num_experts=2,
    ...                       top_k=1, device="cpu", entropy=True)
    >>> totals_entropy(totals, 0, torch.zeros(3, 2))     # two tokens of group 0, one padding
    >>> [round(float(h) / math.log(2), 6) for h in totals["entropy"][0]]
    [2.0, 1.0]

    ```
    """
    row = totals["row"]
    h = token_entropy(on(logits, row.device), totals["shape"][2])
    if h.shape[0] != row.shape[0]:
        raise ValueError(f"router logits have {h.shape[0]} token rows where the layer routed {row.shape[0]} tokens: "
                         "RouterRecord(entropy=True) needs one row of logits per routed token")
    totals["entropy"][layer].scatter_add_(0, row, h)


def totals_fold(totals: dict, store: dict) -> None:
    """Add a forward's totals (spare group dropped) to `store`'s `[groups, layers, E]` tables.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import totals_add, totals_fold, totals_start
    >>> totals = totals_start(torch.tensor([0, 0, -1]), num_layers=1, num_groups=1, num_experts=3,
    ...                       top_k=2, device="cpu")
    >>> totals_add(totals, 0, torch.tensor([[0, 2], [2, 1], [0, 1]]),
    ...            torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]]))
    >>> store = {"count": torch.zeros(1, 1, 3, dtype=torch.long),
    ...          "gate_mass": torch.zeros(1, 1, 3, dtype=torch.float64)}
    >>> totals_fold(totals, store)         # the padding token (row 3) is not counted
    >>> store["count"].tolist(), store["gate_mass"].tolist()
    ([[[1, 1, 2]]], [[[0.75, 0.5, 0.75]]])

    ```
    """
    shape = totals["shape"]
    groups = shape[1] - 1
    store["count"] += totals["count"].view(shape)[:, :groups].transpose(0, 1)
    store["gate_mass"] += totals["mass"].view(shape)[:, :groups].transpose(0, 1)
    if "co" in totals:
        table = totals["co"].view(shape + (shape[2] + 1,))
        store["co_activation"] += table[:, :groups, :, 1:].transpose(0, 1)
    if "entropy" in totals:
        store["entropy"] += totals["entropy"][:, :groups].transpose(0, 1)


def forward_step(root: Any, plan: Any, store: dict, rows: list) -> None:
    """Everything this plan does during one forward of the model, in execution order."""
    record = plan.record
    verify = plan.verify and store["forwards"] == 0  # arch.ExpertsCheck: first forward only
    num_experts, top_k = plan.num_experts, plan.top_k
    # A model with several stacks (an encoder and a decoder) routes each stack's own tokens:
    # they are read from the inputs of the module holding the stack, before its first router.
    stacked = any(entry.tokens_from for entry in plan.layers)
    inputs = {None: root.inputs} if record and not stacked else {}
    tallies: dict = {}
    group = None
    per_token = [] if plan.per_token else None
    held = []
    for position, entry in enumerate(plan.layers):
        if entry.once and store["forwards"] > 0:  # an encoder: generate runs it before the first step only
            continue
        if record and entry.tokens_from not in inputs:
            inputs[entry.tokens_from] = resolve(root, entry.tokens_from).inputs
        router = resolve(root, entry.router)
        experts = resolve(root, entry.experts) if entry.experts else None
        sites = _sites(entry)
        located = score_edits(entry, sites)
        # RouterRecord(entropy=True) reads the logits the router goes on with: edited where an
        # edit is at their site, else read before any later site's edit (nnsight's order)
        logits = None
        entropy = record and plan.entropy
        if entropy and all(site != sites.logits for site, _ in located):
            logits = pick(read(location(router, experts, sites.logits), sites.logits), sites.logits)
        for site, edits in located:
            new = _edit_site(router, experts, site, edits)
            if entropy and site == sites.logits:
                logits = new
        weight_edits = entry.at("weights")
        if not (record or weight_edits or verify or entry.rerouted is not None):
            continue
        indices, weights = _used(router, experts, sites, weight_edits, top_k)
        if entry.rerouted is not None:
            # the safety net: tokens that still received an ablated expert (0 when the
            # reroute held); read on the host once, after the trace (runtime._shipping.check_held)
            chosen = indices if indices.dtype == torch.long else indices.long()
            held.append(torch.count_nonzero(torch.take(on(entry.rerouted, indices.device), chosen)))
        if verify:
            store.setdefault("verify", []).append((entry.layer, indices))
        if not record:
            continue
        key = entry.tokens_from
        if key not in tallies:
            source = inputs[key]
            group, token_position, token_row = token_groups(source, rows, indices.shape[0])
            group = token_kinds(source, group, plan.exclude, plan.modalities, token_position, plan.kinds,
                                plan.positions)
            if plan.generating and not entry.once:
                group = drop_finished(source, group, token_row, store, plan.eos, key)
            groups = len(rows) * splits(plan)
            if "count" not in store:
                shape = (groups, len(plan.layers), num_experts)
                store["count"] = torch.zeros(shape, dtype=torch.long, device=indices.device)
                store["gate_mass"] = torch.zeros(shape, dtype=torch.float64, device=indices.device)
                store["tokens"] = torch.zeros(groups, dtype=torch.long, device=indices.device)
                if plan.co_activation:
                    store["co_activation"] = torch.zeros(shape + (num_experts,), dtype=torch.long,
                                                         device=indices.device)
                if plan.entropy:
                    store["entropy"] = torch.zeros(groups, len(plan.layers), dtype=torch.float64,
                                                   device=indices.device)
            counted = store["tokens"] if key is None else store.setdefault("stack_tokens", {}).setdefault(
                key, torch.zeros_like(store["tokens"]))
            counted += on(tally(group, groups), counted.device)
            tallies[key] = totals_start(group, len(plan.layers), groups, num_experts, indices.shape[1],
                                        store["count"].device, plan.co_activation, plan.entropy)
        totals_add(tallies[key], position, indices, weights)
        if logits is not None:
            totals_entropy(tallies[key], position, logits)
        if per_token is not None:
            per_token.append((indices.to(torch.int16), weights.detach().to(torch.float16)))
    for totals in tallies.values():
        totals_fold(totals, store)
    if held:
        used = torch.stack([on(h, held[0].device) for h in held])
        store["rerouted_used"] = used if "rerouted_used" not in store else store["rerouted_used"] + used
    if per_token:
        # Padding rows stay until `compact` (after the forward): dropping them here would make
        # the host wait for the GPU before the last layer and the head are even launched.
        device = per_token[0][0].device
        store["per_token"].append({
            "indices": torch.stack([on(i, device) for i, _ in per_token], 1),
            "weights": torch.stack([on(w, device) for _, w in per_token], 1),
            "group": group.to(torch.int16),
            "row": token_row.to(torch.int32),
            "position": token_position.to(torch.int32),
        })
    store["forwards"] += 1


def compact(chunks: list) -> dict:
    """The per-token records of all forwards as one table on the host, padding dropped.

    `chunks` are `store["per_token"]`: one dict per forward, rows in token order, padding
    marked by `group == -1`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import compact
    >>> table = compact([{"group": torch.tensor([0, -1]), "indices": torch.tensor([[1, 2], [0, 0]])},
    ...                  {"group": torch.tensor([1]), "indices": torch.tensor([[2, 0]])}])
    >>> table["group"].tolist(), table["indices"].tolist()
    ([0, 1], [[1, 2], [2, 0]])

    ```
    """
    keys = chunks[0].keys()
    table = {key: torch.cat([chunk[key].detach().cpu() for chunk in chunks]) for key in keys}
    real = table["group"] >= 0
    return {key: value[real] for key, value in table.items()}


def run(root: Any, plan: Any, store: dict, steps: Any, row_groups: Any, stop: tuple) -> None:
    """The worker body: one `forward_step` per model forward in `steps`.

    A generation's open-ended `steps` ends when the model stops producing forwards:
    the interleaver then throws one of `stop` into the request that was never served.
    """
    # A plan whose only work is the first forward's check must stop asking for steps: its
    # body would otherwise request nothing and spin through an open-ended generation.
    every_forward = plan.record or any(entry.edits or entry.rerouted is not None for entry in plan.layers)
    try:
        for _ in steps:
            forward_step(root, plan, store, row_groups())
            if not every_forward:
                break
    except stop:
        if store["forwards"] == 0:
            raise


def keep_result(root: Any, tracer: Any, store: dict) -> None:
    """The second worker: the prompt length at the first forward, then the model's return value."""
    args, kwargs = root.inputs
    # an encoder-decoder's output continues its decoder's input, not the source
    ids = kwargs.get("decoder_input_ids", kwargs.get("input_ids"))
    if ids is None:
        ids = args[0] if args else kwargs.get("inputs_embeds")
    store["input_length"] = ids.shape[1]
    store["result"] = tracer.result


def _to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_host(v) for v in value]
    return value


def pack(store: dict) -> dict:
    """What a remote run sends back: the store on the CPU, `count` as int32 when it fits.

    With `RouterRecord()` that is `[groups, layers, experts]` counts and gate mass plus
    per-group token totals (and `[groups, layers, experts, experts]` pair counts with
    `co_activation=True`, int32 too): its size does not depend on how many tokens were routed.
    `per_token` and the model output (`result`), when present, are the exceptions.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import pack
    >>> out = pack({"count": torch.tensor([[[1, 3]]]), "tokens": torch.tensor([2]), "forwards": 1})
    >>> out["count"].dtype, out["per_token"], out["forwards"]
    (torch.int32, [], 1)

    ```
    """
    out = {k: _to_host(v) for k, v in store.items() if k not in ("result", "per_token")}
    out["per_token"] = [compact(store["per_token"])] if store.get("per_token") else []
    if "result" in store:
        out["result"] = _to_host(store["result"]) if isinstance(store["result"], torch.Tensor) else store["result"]
    for name in ("count", "co_activation"):
        count = out.get(name)
        if count is not None and (count.numel() == 0 or int(count.max()) <= 2147483647):
            out[name] = count.to(torch.int32)
    return out


def profile_batch(store: dict, languages: torch.Tensor, acc: dict) -> None:
    """Fold one profiling batch (one stats group per text) into a session's running result.

    Per text: `count[layers, experts]` (int16 when it fits, else int32) and its token
    total; gate mass is summed per language (`languages[i]` indexes `acc["gate_mass"]`),
    so the per-text float tables never travel, and so are the pair counts of
    `RouterRecord(co_activation=True)` (`acc["co_activation"]`, `[languages, layers, E, E]`)
    and the per-token entropy sums of `RouterRecord(entropy=True)` (`acc["entropy"]`,
    `[languages, layers]`). `acc` is built by `profile_start`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import profile_batch, profile_finish, profile_start
    >>> acc = profile_start(2)                                   # two languages
    >>> store = {"count": torch.tensor([[[1, 3]], [[2, 0]]]), "tokens": torch.tensor([2, 1]),
    ...          "gate_mass": torch.tensor([[[0.5, 1.5]], [[1.0, 0.0]]], dtype=torch.float64)}
    >>> profile_batch(store, torch.tensor([1, 0]), acc)           # text 0 is language 1, text 1 language 0
    >>> acc["item_count"][0].dtype, acc["gate_mass"].tolist()
    (torch.int16, [[[1.0, 0.0]], [[0.5, 1.5]]])

    ```
    """
    count = store["count"]
    small = count.numel() == 0 or int(count.max()) <= 32767
    acc["item_count"].append(count.to(torch.int16 if small else torch.int32).cpu())
    acc["item_tokens"].append(store["tokens"].to(torch.int32).cpu())
    mass = store["gate_mass"]
    if acc["gate_mass"] is None:
        acc["gate_mass"] = torch.zeros((acc["languages"],) + tuple(mass.shape[1:]), dtype=torch.float64,
                                       device=mass.device)
    acc["gate_mass"].index_add_(0, languages.to(mass.device), mass)
    pairs = store.get("co_activation")
    if pairs is not None:  # RouterRecord(co_activation=True): summed per language, as gate mass
        if acc.get("co_activation") is None:
            acc["co_activation"] = torch.zeros((acc["languages"],) + tuple(pairs.shape[1:]), dtype=torch.long,
                                               device=pairs.device)
        acc["co_activation"].index_add_(0, languages.to(pairs.device), pairs)
    nats = store.get("entropy")
    if nats is not None:  # RouterRecord(entropy=True): per-token entropies' sums, per language too
        if acc.get("entropy") is None:
            acc["entropy"] = torch.zeros((acc["languages"],) + tuple(nats.shape[1:]), dtype=torch.float64,
                                         device=nats.device)
        acc["entropy"].index_add_(0, languages.to(nats.device), nats.to(torch.float64))


def profile_start(num_languages: int) -> dict:
    """The empty running result of a profiling session (see `profile_batch`).

    ```python
    >>> from moe_interp.runtime._kernels import profile_start
    >>> profile_start(3)
    {'languages': 3, 'item_count': [], 'item_tokens': [], 'gate_mass': None}

    ```
    """
    return {"languages": num_languages, "item_count": [], "item_tokens": [], "gate_mass": None}


def profile_finish(acc: dict) -> dict:
    """What a profiling session sends back: one int16/int32 count table per text, in order.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._kernels import profile_batch, profile_finish, profile_start
    >>> acc = profile_start(1)
    >>> for counts in ([[[1, 3]]], [[[40000, 0]]]):              # the second needs int32
    ...     profile_batch({"count": torch.tensor(counts), "tokens": torch.tensor([2]),
    ...                    "gate_mass": torch.zeros(1, 1, 2, dtype=torch.float64)}, torch.tensor([0]), acc)
    >>> out = profile_finish(acc)
    >>> out["item_count"].dtype, out["item_count"].flatten().tolist(), out["item_tokens"].tolist()
    (torch.int32, [1, 3, 40000, 0], [2, 2])

    ```
    """
    counts = acc["item_count"]
    wide = any(c.dtype == torch.int32 for c in counts)
    out = {"item_count": torch.cat([c.to(torch.int32) if wide else c for c in counts]),
           "item_tokens": torch.cat(acc["item_tokens"]),
           "gate_mass": acc["gate_mass"].cpu()}
    pairs = acc.get("co_activation")
    if pairs is not None:  # per language [layers, E, E]: int16 / int32 when they fit
        top = int(pairs.max()) if pairs.numel() else 0
        out["co_activation"] = pairs.to(torch.int16 if top <= 32767 else torch.int32 if top <= 2147483647
                                        else torch.long).cpu()
    if acc.get("entropy") is not None:  # per language [layers], float64
        out["entropy"] = acc["entropy"].cpu()
    return out
