"""The only code of `moe_interp` that runs inside a trace.

Everything here executes in nnsight's worker while the model runs: locally, or on an NDIF
server that imports only whitelisted modules (torch, math, typing, collections, ...). So
this module imports nothing else, defines pure functions on tensors, and takes every
decision that can be taken earlier (validation, expert sets, strengths) as a compiled
`plan` built outside the trace by `interventions.compile_plan`.

A plan is plain data: `{"layers": [entry, ...], "record": bool, "per_token": bool,
"num_experts": int, "top_k": int}`. An entry names one MoE layer's sites (module paths and
`.source` op names) and its edits, each `(kind, payload, scale)`:

- `"relative"`: `z + scale * s * |z|` with `s` a dense `[E]` strength vector (the paper);
- `"additive"`: `z + scale * s`;
- `"reroute"`: `z[:, mask] = -1e9` before selection (the expert cannot be chosen);
- `"drop"`: the selected expert's weight set to 0 after selection (no renormalisation).
"""

from typing import Any

import torch

NEG_LOGIT = -1e9  # the paper's value; clamped to the dtype's range for half precision


def resolve(root: Any, path: str) -> Any:
    """The envoy at a dotted module path (`"model.layers.3.mlp.gate"`) under `root`."""
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. Local runs get their plan placed beforehand (a no-op here); on a
    server the copy is queued without waiting, so the model never stalls for it."""
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=torch.device(device).type != "cpu")  # a copy to the host must wait


def edit_scores(z: torch.Tensor, edits: list) -> torch.Tensor:
    """Apply logit-stage edits in order to router scores `z[T, E]`; returns a new tensor.

    A router may make more logits than it routes (Inkling: the routed experts, then a
    shared-expert column): the payloads cover the routed experts, the columns after them
    are left as they are.
    """
    for kind, payload, scale in edits:
        payload = on(payload, z.device)
        extra = z.shape[-1] - payload.shape[-1]
        if extra < 0:
            raise ValueError(f"router scores have {z.shape[-1]} columns but the intervention covers "
                             f"{payload.shape[-1]} experts: register an adapter naming the site of the routed scores")
        if extra:
            payload = torch.cat([payload, payload.new_zeros(extra)])
        if kind == "relative":
            z = z + scale * payload.to(z.dtype) * z.abs()
        elif kind == "additive":
            z = z + scale * payload.to(z.dtype)
        elif kind == "reroute":
            z = torch.where(payload, max(NEG_LOGIT, torch.finfo(z.dtype).min), z)  # fewer ops than masked_fill
        else:
            raise ValueError(f"unknown score edit {kind!r}")
    return z


def drop_weights(indices: torch.Tensor, weights: torch.Tensor, edits: list) -> torch.Tensor:
    """Zero the weights of dropped experts among the selected `indices[T, K]`."""
    for _, mask, _ in edits:
        weights = weights.masked_fill(on(mask, indices.device)[indices], 0)
    return weights


def _replace(value: Any, index: Any, new: torch.Tensor) -> Any:
    if index is None:
        return new
    items = list(value)
    items[index] = new
    return tuple(items)


def _edit_site(router: Any, site: str, edits: list) -> None:
    """Edit the scores at `site`: the router's `output` (or `output[i]`), or a `.source` op
    (`"F_linear_0"`), its argument or result (`"torch_topk_0.input"`, `"scores_0.output"`),
    ops inside a helper method joined by dots (`"self_get_topk_indices_0.torch_topk_0.input"`)."""
    if site.startswith("output"):
        index = int(site[7:-1]) if site != "output" else None
        out = router.output
        scores = out if index is None else out[index]
        router.output = _replace(out, index, edit_scores(scores, edits))
        return
    parts = site.split(".")
    end = parts.pop() if parts[-1] in ("input", "output") and len(parts) > 1 else "output"
    op = getattr(router.source, parts[0])
    for part in parts[1:]:
        op = getattr(op.source, part)
    setattr(op, end, edit_scores(getattr(op, end), edits))


def _sites(entry: dict) -> dict:
    """The entry's sites for this forward: some routers run other ops with grad off (a
    CUDA-only branch), so the plan names both and the grad mode of the forward decides."""
    other = entry.get("no_grad")
    return entry if other is None or torch.is_grad_enabled() else other


def _readout(root: Any, router: Any, entry: dict, top_k: int) -> tuple:
    """(indices[T, K], weights[T, K]) the experts really receive, after `drop` edits."""
    kind = entry["readout"]
    drops = entry["drop"]
    if kind == "experts":
        experts = resolve(root, entry["experts"])
        args, kwargs = experts.inputs
        indices, weights = args[1], args[2]
        if drops:
            weights = drop_weights(indices, weights, drops)
            experts.inputs = (_replace(args, 2, weights), kwargs)
        return indices, weights
    if kind == "topk":
        indices = getattr(router.source, entry["topk_op"]).output[1]
        gates = getattr(router.source, entry["weights_op"])
        weights = gates.output
        if drops:
            weights = drop_weights(indices, weights, drops)
            gates.output = weights
        return indices, weights
    out = router.output
    if kind == "router":
        indices, weights = out[entry["indices_index"]], out[entry["weights_index"]]
        if drops:
            weights = drop_weights(indices, weights, drops)
            router.output = _replace(out, entry["weights_index"], weights)
        return indices, weights
    # dense [T, E] scores, non-selected experts at 0
    scores = out[entry["scores_index"]]
    weights, indices = torch.topk(scores, top_k, dim=-1)
    if drops:
        mask = on(drops[0][1], scores.device)
        for _, more, _ in drops[1:]:
            mask = mask | on(more, scores.device)
        router.output = _replace(out, entry["scores_index"], scores.masked_fill(mask, 0))
        weights = drop_weights(indices, weights, drops)
    return indices, weights


def token_groups(inputs: Any, rows: list, num_tokens: int) -> tuple:
    """Per-token group id (`-1` for padding) and position among the row's real tokens.

    `rows` is `[(start, size), ...]` per group, in batch order. Tokens are flattened
    `batch * seq` as the router sees them; the current tokens are the last `seq`
    columns of the attention mask (a decoding step sees one new token per row).
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
    if position is not None and position.shape[-1] == seq:
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


def drop_finished(inputs: Any, group: torch.Tensor, row: torch.Tensor, store: dict, eos: list) -> torch.Tensor:
    """`group` with the tokens of finished generation rows marked as padding (`-1`).

    A batch generation keeps feeding a row that has produced an end-of-sequence token (the
    EOS itself, then padding) until every row has ended; alone, that row would have stopped
    there. A row counts as finished from the first forward whose input holds an EOS among
    its generated tokens (`eos`: the ids), so the counts equal generating each prompt alone.
    State lives in `store` (the prompt length, a per-row flag): no host waits.
    """
    args, kwargs = inputs
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if ids is None or ids.ndim != 2:
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
                 device: Any) -> dict:
    """One forward's routing totals, filled layer by layer with four GPU ops each and no waits.

    Built once per forward from the per-token group ids (`-1` padding): `base[t]` is token
    t's offset `group * E` in a `[layers, (groups + 1) * E]` buffer whose last group is a
    spare that collects the padding, so one layer's bins are `base + indices`: no masking,
    and shapes that never depend on the data. A dict, like the plan and the store.
    """
    device = torch.device(device)
    group = on(group, device)
    width = (num_groups + 1) * num_experts
    return {"base": (torch.where(group >= 0, group, num_groups) * num_experts)[:, None],
            "ones": torch.ones(group.shape[0] * top_k, dtype=torch.long, device=device),
            "count": torch.zeros(num_layers, width, dtype=torch.long, device=device),
            "mass": torch.zeros(num_layers, width, dtype=torch.float64, device=device),
            "shape": (num_layers, num_groups + 1, num_experts)}


def totals_add(totals: dict, layer: int, indices: torch.Tensor, weights: torch.Tensor) -> None:
    """Add one layer's routing, `indices[T, K]` with their `weights[T, K]`, to `totals`."""
    base = totals["base"]
    if indices.ndim != 2 or indices.shape[0] != base.shape[0]:
        raise ValueError(f"router readout gave indices of shape {tuple(indices.shape)}; expected "
                         f"[tokens={base.shape[0]}, top_k]: register an adapter whose readout matches this router")
    bins = (base + on(indices, base.device)).reshape(-1)
    totals["count"][layer].scatter_add_(0, bins, totals["ones"])
    totals["mass"][layer].scatter_add_(0, bins, on(weights.detach(), base.device).reshape(-1).to(torch.float64))


def totals_fold(totals: dict, store: dict) -> None:
    """Add a forward's totals (spare group dropped) to `store`'s `[groups, layers, E]` tables."""
    shape = totals["shape"]
    groups = shape[1] - 1
    store["count"] += totals["count"].view(shape)[:, :groups].transpose(0, 1)
    store["gate_mass"] += totals["mass"].view(shape)[:, :groups].transpose(0, 1)


def forward_step(root: Any, plan: dict, store: dict, rows: list) -> None:
    """Everything this plan does during one forward of the model, in execution order."""
    record = plan["record"]
    verify = plan.get("verify", False) and store["forwards"] == 0  # arch.ExpertsCheck: first forward only
    num_experts, top_k = plan["num_experts"], plan["top_k"]
    inputs = root.inputs if record else None
    group = totals = None
    per_token = [] if plan["per_token"] else None
    held = []
    for position, entry in enumerate(plan["layers"]):
        router = resolve(root, entry["router"])
        sites = _sites(entry)
        if entry["logits_edits"] and not sites["logits"].startswith("output"):
            _edit_site(router, sites["logits"], entry["logits_edits"])
        if entry["choice_edits"]:
            _edit_site(router, entry["choice"], entry["choice_edits"])
        if entry["select_edits"] and sites["select"]:
            _edit_site(router, sites["select"], entry["select_edits"])
        if entry["logits_edits"] and sites["logits"].startswith("output"):
            _edit_site(router, sites["logits"], entry["logits_edits"])
        if not (record or entry["drop"] or verify or entry["rerouted"] is not None):
            continue
        indices, weights = _readout(root, router, entry, top_k)
        if entry["rerouted"] is not None:
            # the safety net: tokens that still received an ablated expert (0 when the
            # reroute held); read on the host once, after the trace (interventions.check_held)
            chosen = indices if indices.dtype == torch.long else indices.long()
            held.append(torch.count_nonzero(torch.take(on(entry["rerouted"], indices.device), chosen)))
        if verify:
            store.setdefault("verify", []).append((entry["layer"], indices))
        if not record:
            continue
        if group is None:
            group, token_position, token_row = token_groups(inputs, rows, indices.shape[0])
            if plan.get("eos"):
                group = drop_finished(inputs, group, token_row, store, plan["eos"])
            if "count" not in store:
                shape = (len(rows), len(plan["layers"]), num_experts)
                store["count"] = torch.zeros(shape, dtype=torch.long, device=indices.device)
                store["gate_mass"] = torch.zeros(shape, dtype=torch.float64, device=indices.device)
                store["tokens"] = torch.zeros(len(rows), dtype=torch.long, device=indices.device)
            store["tokens"] += on(tally(group, len(rows)), store["tokens"].device)
            totals = totals_start(group, len(plan["layers"]), len(rows), num_experts, indices.shape[1],
                                  store["count"].device)
        totals_add(totals, position, indices, weights)
        if per_token is not None:
            per_token.append((indices.to(torch.int16), weights.detach().to(torch.float16)))
    if totals is not None:
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
    """
    keys = chunks[0].keys()
    table = {key: torch.cat([chunk[key].detach().cpu() for chunk in chunks]) for key in keys}
    real = table["group"] >= 0
    return {key: value[real] for key, value in table.items()}


def run(root: Any, plan: dict, store: dict, steps: Any, row_groups: Any, stop: tuple) -> None:
    """The worker body: one `forward_step` per model forward in `steps`.

    A generation's open-ended `steps` ends when the model stops producing forwards:
    the interleaver then throws one of `stop` into the request that was never served.
    """
    try:
        for _ in steps:
            forward_step(root, plan, store, row_groups())
    except stop:
        if store["forwards"] == 0:
            raise


def keep_result(root: Any, tracer: Any, store: dict) -> None:
    """The second worker: the prompt length at the first forward, then the model's return value."""
    args, kwargs = root.inputs
    ids = kwargs.get("input_ids")
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
    per-group token totals: its size does not depend on how many tokens were routed.
    `per_token` and the model output (`result`), when present, are the exceptions.
    """
    out = {k: _to_host(v) for k, v in store.items() if k not in ("result", "per_token")}
    out["per_token"] = [compact(store["per_token"])] if store.get("per_token") else []
    if "result" in store:
        out["result"] = _to_host(store["result"]) if isinstance(store["result"], torch.Tensor) else store["result"]
    count = out.get("count")
    if count is not None and (count.numel() == 0 or int(count.max()) <= 2147483647):
        out["count"] = count.to(torch.int32)
    return out


def profile_batch(store: dict, languages: torch.Tensor, acc: dict) -> None:
    """Fold one profiling batch (one stats group per text) into a session's running result.

    Per text: `count[layers, experts]` (int16 when it fits, else int32) and its token
    total; gate mass is summed per language (`languages[i]` indexes `acc["gate_mass"]`),
    so the per-text float tables never travel. `acc` is built by `profile_start`.
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


def profile_start(num_languages: int) -> dict:
    """The empty running result of a profiling session (see `profile_batch`)."""
    return {"languages": num_languages, "item_count": [], "item_tokens": [], "gate_mass": None}


def profile_finish(acc: dict) -> dict:
    """What a profiling session sends back: one int16/int32 count table per text, in order."""
    counts = acc["item_count"]
    wide = any(c.dtype == torch.int32 for c in counts)
    return {"item_count": torch.cat([c.to(torch.int32) if wide else c for c in counts]),
            "item_tokens": torch.cat(acc["item_tokens"]),
            "gate_mass": acc["gate_mass"].cpu()}
