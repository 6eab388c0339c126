"""The compiled plan: what `runtime._compile.compile_plan` hands `runtime._kernels`, as typed values.

A plan is plain data that travels to where the model runs (an NDIF server too), so its
types are `arch._sites.Record`s (rebuilt on a server from plain-Python methods) holding
tensors, ints and `Site`s (`arch._sites`: the same sites the router view reads).
"""

from typing import Any

from moe_interp.arch._sites import Record
from moe_interp.runtime._edits import EditKind, kind_named

__all__ = ["Edit", "LayerPlan", "Plan", "Recording", "bucket_names"]


class Edit(Record):
    """One edit of router scores or weights: `kind` (an `_edits.EditKind`, which carries the
    transformation; a built-in one may be given by name: `"relative"`, `"additive"`,
    `"reroute"`, `"drop"`), `payload` (a dense `[experts]` strength vector or boolean mask)
    and `scale`.

    ```python
    >>> import torch
    >>> from moe_interp.runtime._plan import Edit
    >>> edit = Edit("additive", torch.tensor([0.0, 2.0]), 0.5)
    >>> edit.kind, edit.kind == "additive"
    (Additive(), True)
    >>> Edit("clamp", torch.tensor([0.0, 2.0]), 0.5)
    Traceback (most recent call last):
    ValueError: no edit kind 'clamp': the built-in kinds are 'relative', 'additive', 'reroute', 'drop'; a new one is an EditKind subclass (see moe_interp.runtime._edits)

    ```
    """

    __slots__ = _fields = ("kind", "payload", "scale")

    def __init__(self, kind: Any, payload: Any, scale: Any) -> None:
        if isinstance(kind, str):
            kind = kind_named(kind)
        elif not isinstance(kind, EditKind):
            raise TypeError(f"an Edit's kind is an EditKind (moe_interp.runtime._edits) or the name of a built-in "
                            f"one, got {kind!r}")
        Record.__init__(self, kind, payload, scale)


class Recording(Record):
    """What a recorder asks a trace to keep (`Intervention.recording()`; `RouterRecord`
    is the built-in recorder): `per_token` (each token's top-k indices and weights besides
    the per-(layer, expert) counts), `exclude_tokens` (ids never counted, or `"special"`:
    the tokenizer's special ids), `by_modality` (split every group by the modality of the
    token), `co_activation` (count the pairs of experts chosen for the same token),
    `by_token_kind` (split every group by the kind of token: `_token_kinds.TOKEN_KINDS`) and
    `by_position` (split every group by position bucket: the buckets' first positions, or
    `()`: no split) and `entropy` (sum each token's routing entropy, nats, per group and layer).

    ```python
    >>> import moe_interp as mi
    >>> mi.RouterRecord(per_token=True).recording()
    Recording(per_token=True, exclude_tokens=(), by_modality=False, co_activation=False, by_token_kind=False, by_position=(), entropy=False)
    >>> mi.ExpertAblate({1: [3]}).recording() is None     # edits routing, records nothing
    True

    ```
    """

    __slots__ = _fields = ("per_token", "exclude_tokens", "by_modality", "co_activation", "by_token_kind",
                           "by_position", "entropy")
    _defaults = {"per_token": False, "exclude_tokens": (), "by_modality": False, "co_activation": False,
                 "by_token_kind": False, "by_position": (), "entropy": False}


class LayerPlan(Record):
    """One MoE layer's part of a plan: `layer` (model layer index), `router` / `experts`
    (module paths), `sites` / `no_grad` (`RouterSites`: where its values live, and with grad
    off where that differs), `edits` (`(site, (Edit, ...))` pairs, sites in `_edits.SITES`
    order, each site's edits in the order they apply; sites without edits are absent; `at`
    gives one site's), and `rerouted` (the reroute mask plus a False for "no expert" (-1)
    indices, for the check that it held; None without a reroute); in a model with several
    stacks (`arch._stacks`), `tokens_from` (the module whose inputs hold this layer's
    tokens; None: the model's own) and `once` (an encoder: `generate` runs it once, before
    the decoder's steps).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> plan = compile_plan(mi.describe(mi.zoo.tiny_model("qwen3_moe")), [mi.ExpertAblate({1: [3]})])
    >>> entry = plan.layers[0]
    >>> entry.layer, [(site, [e.kind.name for e in edits]) for site, edits in entry.edits]
    (1, [('logits', ['reroute']), ('select', ['reroute'])])
    >>> entry.at("weights"), entry.rerouted.tolist()[3]
    ((), True)

    ```
    """

    __slots__ = _fields = ("layer", "router", "experts", "sites", "no_grad", "edits", "rerouted", "tokens_from",
                           "once")
    _defaults = {"edits": (), "tokens_from": None, "once": False}

    def at(self, site: str) -> tuple:
        """The edits at `site` (one of `_edits.SITES`), in order; `()` if none."""
        for name, edits in self.edits:
            if name == site:
                return edits
        return ()


class Plan(Record):
    """A compiled plan: `layers` (`LayerPlan`s, in model order; layers with nothing to do are
    absent), `record` / `per_token` (what `RouterRecord` keeps), `verify` (read every layer's
    routing on the first forward for `arch.ExpertsCheck`), `num_experts`, `top_k`, `eos`
    (the ids that end a generated row, for counting; empty outside `mi.generate`), `generating`
    (`mi.generate`: count each token once, the forward it is first fed; see
    `kernels.drop_finished`), `exclude`
    (a long tensor of token ids `RouterRecord` does not count; None: none),
    `modalities` (`(name, ids)` per non-text modality: with `RouterRecord(by_modality=True)`, each
    group splits into text and these; see `_token_kinds`), `co_activation` (count each pair of
    experts chosen for the same token, `[group, layer, E, E]`), `kinds` (`(names, table)`: with
    `RouterRecord(by_token_kind=True)`, each group splits by the kind of token, `table[id]` the
    kind of a token id, `names[0]` the first token of a text; None: no split) and `positions`
    (the first position of each position bucket, `RouterRecord(by_position=...)`; `()`: no split)
    and `entropy` (sum each token's entropy of `softmax(router logits)`, `[group, layer]`).

    Each group of the trace splits by modality, then kind, then position bucket; `splits()`
    names the parts and `labels(groups)` the split groups, in the order the kernels number them.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.runtime._compile import compile_plan
    >>> plan = compile_plan(mi.describe(mi.zoo.tiny_model("qwen3_moe")), [mi.RouterRecord()])
    >>> len(plan.layers), plan.record, plan.per_token, plan.num_experts, plan.top_k
    (4, True, False, 8, 2)
    >>> plan._replace(positions=(0, 1, 4)).labels(["en"])
    ['en/pos0', 'en/pos1-3', 'en/pos4+']

    ```
    """

    __slots__ = _fields = ("layers", "record", "per_token", "verify", "num_experts", "top_k", "eos", "exclude",
                           "modalities", "generating", "co_activation", "kinds", "positions", "entropy")
    _defaults = {"eos": (), "exclude": None, "modalities": (), "generating": False, "co_activation": False,
                 "kinds": None, "positions": (), "entropy": False}

    def splits(self) -> list:
        """The names of each split of a group, in order: modalities (`"text"` first), token
        kinds, position buckets; `[]` when groups are not split."""
        out = []
        if self.modalities:
            out.append(["text"] + [name for name, _ in self.modalities])
        if self.kinds is not None:
            out.append(list(self.kinds[0]))
        if self.positions:
            out.append(bucket_names(self.positions))
        return out

    def labels(self, groups: list) -> list:
        """`groups` (the invoke labels) with every split applied: `"<group>/<part>/..."`."""
        for names in self.splits():
            groups = [f"{group}/{name}" for group in groups for name in names]
        return list(groups)


def bucket_names(starts: tuple) -> list:
    """The labels of position buckets that start at `starts` (increasing, the first 0): `pos0`
    for one position, `pos1-3` for several, `pos64+` for the last.

    ```python
    >>> from moe_interp.runtime._plan import bucket_names
    >>> bucket_names((0, 1, 4, 16, 64))
    ['pos0', 'pos1-3', 'pos4-15', 'pos16-63', 'pos64+']

    ```
    """
    ends = list(starts[1:]) + [None]
    return [f"pos{a}+" if b is None else (f"pos{a}" if b == a + 1 else f"pos{a}-{b - 1}") for a, b in zip(starts, ends)]
