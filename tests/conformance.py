"""The conformance matrix (issue 23): every reader of routing x MoE types x situations.

Each cell runs moe_interp and, in the same run or a plain one, an oracle that shares no code
with the package: torch hooks on each MoE block's experts (what every token was really sent
to, and with which weight where the experts take the weights as an argument; the rows each
expert computed where a container runs one module per expert), transformers' own router-logits
declaration (`_can_record_outputs["router_logits"]`) for the logits, and HF's own generation of
each prompt alone for generated counts. A cell is

- `exact`: the reader's value equals the oracle's (torch.equal; counts, indices, weights);
- `refused`: the reader raised a typed error naming why (e.g. `RouterAccessError` on a
  hash-routed layer's scores);
- `no oracle`: nothing independent can say the value here (weights a container applies after
  its experts ran; routers transformers declares no logits for);
- `n/a`: the situation does not exist for the model or reader (capacity on a router without
  one, attribution of an encoder-decoder);
- `FAIL`: a value that differs, or an untyped crash. The test fails on any.

Readers: RouterRecord counts and gate mass; the router view's logits, scores (their top-k is
the chosen set), indices and weights, and a write of the logits; the reroute and drop edits;
attribution's counts. Situations: one invoke (left padding), several invokes of different
lengths, right padding, generation with and without the cache (one row ending early at an EOS),
capacity reached (Switch, NLLB-MoE), `remote="local"`, and a plain trace of the same model
running in another thread.

Run `python tests/conformance.py` for the fast subset, `--full` for every buildable MoE type
of the installed transformers (`MI_CONFORMANCE=full python -m pytest tests/test_conformance.py`
does the same under pytest).
"""

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections import Counter

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import nnsight  # noqa: E402

import moe_interp as mi  # noqa: E402
from conftest import _expert_children, _experts_modules, _received, _rows_to_tokens  # noqa: E402
from test_hold_every_arch import _nonzero_weight_effect  # noqa: E402

READERS = ("record.count", "record.gate_mass", "view.logits", "view.scores", "view.indices", "view.weights",
           "view.write", "edit.reroute", "edit.drop", "attribution.count")
SCENARIOS = ("one_invoke", "invokes", "right_padding", "generate_cache", "generate_nocache", "capacity",
             "remote_local", "thread")
# One model per way of reading routing: the experts' arguments (qwen3_moe; deepseek_v3 with a
# selection bias; gpt_oss ranking logits), a router's output (longcat_flash), JetMoe's sorted
# gates, Llama-4's dense scores, hash-routed layers (deepseek_v4), a dispatch mask with
# capacity (switch_transformers) and dense scores with capacity (nllb-moe).
FAST_TYPES = ("qwen3_moe", "deepseek_v3", "gpt_oss", "longcat_flash", "jetmoe", "llama4_text", "deepseek_v4",
              "switch_transformers", "nllb-moe")
SEQ2SEQ = ("switch_transformers", "nllb-moe")
CAPACITY = {"switch_transformers": dict(expert_capacity=2), "nllb-moe": dict(moe_eval_capacity_token_fraction=0.25)}
# types whose router hands a skip expert's slot (no compute) to its experts as expert 0 with weight 0 (ZAYA):
# the oracle counts a slot of weight exactly 0 as the skip expert, the last column
WEIGHTLESS_SKIP = ("zaya",)
# types whose declared `router_logits` (`_can_record_outputs`) are the softmax of the router's logits
SOFTMAX_DECLARED = ("gemma4_text", "gemma4")
PROMPTS = ["Hello there, how are you?", "Bonjour", "Guten Morgen, liebe Welt"]
TARGETS = ["Hallo, wie geht es dir?", "Hi", "Good morning, dear world"]
NEW_TOKENS = 4
VIEW = ("logits", "scores", "indices", "weights")


class Cell(tuple):
    """`(model_type, scenario, reader, verdict, detail)`."""

    def __new__(cls, model_type, scenario, reader, verdict, detail=""):
        return tuple.__new__(cls, (model_type, scenario, reader, verdict, str(detail)[:300]))


# ------------------------------------------------------------------------------------- oracle
class Oracle:
    """What each MoE block's experts really received, per forward of the model, per token.

    `forwards` is a list (one per call of the model's own forward; an encoder run before the
    first one by `generate` opens its own) of `{"kwargs": the call's tensors, "blocks": {block
    path: (routed [T, E] counts, weights [T, E] or None)}}`, tokens flattened `batch * seq`,
    padding included. Independent of moe_interp: blocks found by name (conftest), read from
    their own call arguments."""

    def __init__(self, hf, num_experts):
        self.hf, self.E, self.forwards = hf, num_experts, []

    def _forward(self):
        if not self.forwards:
            self.forwards.append({"kwargs": {}, "blocks": {}})
        return self.forwards[-1]

    def _add(self, block, routed, weights):
        blocks = self._forward()["blocks"]
        routed = _width(routed, self.E)
        weights = None if weights is None else _width(weights, self.E)
        if block in blocks:  # a block called twice in one forward (an encoder run inside generate)
            old_routed, old_weights = blocks[block]
            if old_routed.shape == routed.shape:
                routed = routed + old_routed
                weights = None if weights is None or old_weights is None else weights + old_weights
        blocks[block] = (routed, weights)

    @contextlib.contextmanager
    def watch(self):
        hf, handles, tokens = self.hf, [], {}

        def start(module, args, kwargs):
            record = {"kwargs": {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)},
                      "blocks": {}}
            if args and isinstance(args[0], torch.Tensor):
                record["kwargs"].setdefault("input_ids", args[0].detach().clone())
            current = self.forwards[-1] if self.forwards else None
            if current is not None and not current["kwargs"]:  # the encoder ran first (generate)
                current["kwargs"] = record["kwargs"]
            else:
                self.forwards.append(record)

        def keep(block):
            def pre(module, args, kwargs):
                hidden = args[0] if args else next(iter(kwargs.values()))
                tokens[block] = hidden.detach().reshape(-1, hidden.shape[-1])
            return pre

        def experts(block):
            def pre(module, args, kwargs):
                num = tokens[block].shape[0]
                values = list(args) + list(kwargs.values())
                sizes = next((v for v in values if isinstance(v, (list, tuple))), None)
                if sizes is not None:  # JetMoe: rows grouped by expert, each a copy of its token's state
                    owner = _rows_to_tokens(values[0].detach().reshape(-1, values[0].shape[-1]), tokens[block])
                    expert = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))
                    routed = torch.zeros(num, len(sizes), dtype=torch.long).index_put_(
                        (owner, expert), torch.ones_like(owner), accumulate=True)
                    self._add(block, routed, None)
                    return
                routed = _received(args, kwargs, num, tokens[block])
                index = next((v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
                weights = None
                if index is not None:
                    given = [v for v in values[1:] if isinstance(v, torch.Tensor) and v.is_floating_point()
                             and v.shape == index.shape]
                    if given and getattr(self.hf.config, "model_type", None) in WEIGHTLESS_SKIP:
                        # a slot handed over with weight 0 is the skip expert, the column past the experts
                        index = torch.where(given[0] == 0, self.E - 1, index.long())
                        routed = _received((index,), {}, num, tokens[block])
                    if given:
                        slots = index.reshape(num, -1).long()
                        weights = torch.zeros(num, max(int(slots.max()) + 1, 1), dtype=torch.float64)
                        weights.scatter_add_(1, slots, given[0].detach().reshape(num, -1).to(torch.float64))
                self._add(block, routed, weights)
            return pre

        def child(block, expert, width):
            def pre(module, args, kwargs):
                rows = (args[0] if args else next(iter(kwargs.values()))).detach()
                owner = _rows_to_tokens(rows.reshape(-1, rows.shape[-1]), tokens[block])
                routed = torch.zeros(tokens[block].shape[0], width, dtype=torch.long)
                routed[owner, expert] += 1
                self._add(block, routed, None)
            return pre

        def router_output(block):  # LongCat-Flash (5.25): its experts get dummies for zero-computation slots
            def hook(module, args, output):
                num = tokens[block].shape[0]
                slots = output[2].reshape(num, -1).long()
                routed = torch.zeros(num, int(slots.max()) + 1, dtype=torch.long).scatter_add_(
                    1, slots, torch.ones_like(slots))
                weights = torch.zeros(num, routed.shape[1], dtype=torch.float64).scatter_add_(
                    1, slots, output[1].detach().reshape(num, -1).to(torch.float64))
                self._add(block, routed, weights)
            return hook

        handles.append(hf.register_forward_pre_hook(start, with_kwargs=True))
        for _, block, module in _experts_modules(hf):
            handles.append(hf.get_submodule(block).register_forward_pre_hook(keep(block), with_kwargs=True))
            if getattr(hf.get_submodule(block), "zero_expert_num", 0):
                handles.append(hf.get_submodule(block).router.register_forward_hook(router_output(block)))
                continue
            children = _expert_children(module)
            if children:
                handles.append(module.register_forward_pre_hook(keep(block), with_kwargs=True))
                for expert, sub in children:
                    handles.append(sub.register_forward_pre_hook(child(block, expert, len(children)),
                                                                 with_kwargs=True))
                # a container called with no token for an expert still ran: zero rows, nothing to add
                continue
            handles.append(module.register_forward_pre_hook(experts(block), with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _width(table, width):
    """`table` with exactly `width` columns: padded, or cut where the oracle saw a sentinel
    column past the routed experts (a "no expert" slot)."""
    if table.shape[1] < width:
        return torch.nn.functional.pad(table, (0, width - table.shape[1]))
    return table[:, :width]


def router_logits(hf):
    """`{module path: [logits per call]}` from transformers' own declaration of where router
    logits are (`_can_record_outputs["router_logits"]`: a class and an output index), or None."""
    found = None
    for module in hf.modules():
        recorders = getattr(module, "_can_record_outputs", None) or {}
        if "router_logits" in recorders:
            found = recorders["router_logits"]
            break
    if found is None:
        return None
    target = getattr(found, "target_class", found)
    index = getattr(found, "index", 0) or 0
    if not isinstance(target, type):
        return None
    return target, index


# --------------------------------------------------------------------------------- the model
def build(model_type, **overrides):
    """A tiny model of `model_type` as the survey builds it (router tables redrawn)."""
    from test_arch import SURVEY_OVERRIDES, _choose_skip_experts, _randomise_token_tables

    options = {**SURVEY_OVERRIDES.get(model_type, {}), **overrides}
    padding = "right" if model_type in SEQ2SEQ else "left"
    model = mi.zoo.tiny_model(model_type, padding_side=padding, **options)
    _randomise_token_tables(model._module, getattr(model._module.config.get_text_config(), "vocab_size", 0))
    _choose_skip_experts(model._module)
    return model


def encode(model, prompts=PROMPTS, side=None, targets=TARGETS):
    tok = model.tokenizer
    old = tok.padding_side
    tok.padding_side = side or old
    try:
        enc = dict(tok(list(prompts), return_tensors="pt", padding=True))
        if getattr(model._module.config, "is_encoder_decoder", False):
            dec = tok(list(targets[:len(prompts)]), return_tensors="pt", padding=True)
            enc.update(decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"])
        return enc
    finally:
        tok.padding_side = old


def _block_of(entry):
    """The oracle's name of a `model.moe` entry's block (its module path without the root)."""
    return entry.block.path.split(".", 1)[1]


def _mask_key(block, kwargs):
    """The keyword of `block`'s padding mask in a forward called with `kwargs` (its stack's)."""
    decoder = ".decoder." in f".{block}." and "decoder_attention_mask" in kwargs
    return "decoder_attention_mask" if decoder else "attention_mask"


def _mask_of(block, kwargs):
    """The padding mask (flattened) of `block`'s tokens in a forward called with `kwargs`."""
    key = _mask_key(block, kwargs)
    mask = kwargs.get(key)
    if mask is None:
        ids = kwargs.get("decoder_input_ids" if key.startswith("decoder") else "input_ids")
        return torch.ones(ids.numel(), dtype=torch.bool)
    return mask.reshape(-1).bool()


def _seq_of(block, kwargs):
    return kwargs[_mask_key(block, kwargs)].shape[-1]


def _refusal(entry, name):
    """The typed refusal reading `router.<name>` of `entry` raises before any trace, or None."""
    try:
        getattr(entry.router, name)
    except mi.RouterAccessError as error:
        return error
    except Exception:  # noqa: BLE001 - outside a trace a readable value raises nnsight's own error
        return None
    return None


# --------------------------------------------------------------------------------- running
def _read_view(model, saved, refused):
    """Inside a trace or invoke: every readable view value of every MoE layer, in model order."""
    for position, entry in enumerate(model.moe):
        for name in VIEW:
            if (position, name) not in refused:
                saved.append(((position, name), getattr(entry.router, name).save()))


def _stats_parts(model, tr):
    """`[(block, [groups, E] counts, [groups, E] mass)]` per MoE layer from a trace's routing."""
    spec = mi.describe(model)
    several = len(set(spec.stacks or ())) > 1
    parts = list(tr.routing_by_stack.values()) if several else [tr.routing]
    out = {}
    for part in parts:
        for j, layer in enumerate(part.layers):
            block = spec.routers[spec.moe_layers.index(layer)].rsplit(".", 1)[0]
            out[block] = (part.count[:, j], part.gate_mass[:, j])
    return out


def run_trace(model, enc, oracle, remote=None, invokes=False):
    """One `mi.trace` with RouterRecord, reading the view at every layer, watched by the oracle.
    Returns (tr, {group: {(position, name): value}}, group rows [(start, size)])."""
    refused = {(p, n): _refusal(e, n) for p, e in enumerate(model.moe) for n in VIEW}
    refused = {k: v for k, v in refused.items() if v is not None}
    # no cache, as the survey runs them (some hybrid models' tiny caches fail in HF's own forward)
    extra = {"remote": remote, "use_cache": False} if remote else {"use_cache": False}
    with oracle.watch():
        if not invokes:
            with mi.trace(model, enc, mi.RouterRecord(), **extra) as tr:
                saved = nnsight.save([])
                _read_view(model, saved, refused)
            groups = {0: dict(saved)}
            rows = [(0, enc["input_ids"].shape[0])]
        else:
            one = [{k: v[i:i + 1] for k, v in enc.items()} for i in range(enc["input_ids"].shape[0])]
            with mi.trace(model, mi.RouterRecord(), **extra) as tr:
                with tr.invoke(**_trim(one[0])):
                    first = nnsight.save([])
                    _read_view(model, first, refused)
                with tr.invoke(**_trim(one[1])):
                    second = nnsight.save([])
                    _read_view(model, second, refused)
                with tr.invoke(**_trim(one[2])):
                    third = nnsight.save([])
                    _read_view(model, third, refused)
            groups = {0: dict(first), 1: dict(second), 2: dict(third)}
            rows = [(0, 1), (1, 1), (2, 1)]
    return tr, groups, rows, refused


def _trim(row):
    """One row of an encoding without its padding columns (an invoke of its own length)."""
    keep = row["attention_mask"][0].bool()
    out = {"input_ids": row["input_ids"][:, keep], "attention_mask": row["attention_mask"][:, keep]}
    if "decoder_input_ids" in row:
        keep = row["decoder_attention_mask"][0].bool()
        out.update(decoder_input_ids=row["decoder_input_ids"][:, keep],
                   decoder_attention_mask=row["decoder_attention_mask"][:, keep])
    return out


# ---------------------------------------------------------------------------------- checking
def _multi_hot(indices, width):
    """`[T, K]` indices (-1: no expert) as `[T, width]` counts."""
    indices = indices.long().reshape(indices.shape[0], -1)
    valid = (indices >= 0) & (indices < width)
    out = torch.zeros(indices.shape[0], width + 1, dtype=torch.long)
    out.scatter_add_(1, torch.where(valid, indices, width), torch.ones_like(indices))
    return out[:, :width]


def _weights_table(indices, weights, width):
    indices = indices.long().reshape(indices.shape[0], -1)
    valid = (indices >= 0) & (indices < width)
    out = torch.zeros(indices.shape[0], width + 1, dtype=torch.float64)
    out.scatter_add_(1, torch.where(valid, indices, width), weights.detach().reshape(indices.shape).to(torch.float64))
    return out[:, :width]


def check_trace(model_type, scenario, model, tr, groups, rows, refused, oracle, logits_seen=None):
    """The cells of one trace: counts, gate mass and the view against the oracle's forward."""
    cells = []
    E = mi.describe(model).num_experts
    forward = oracle.forwards[-1] if len(oracle.forwards) == 1 or scenario != "thread" else oracle.forwards[0]
    kwargs, blocks = forward["kwargs"], forward["blocks"]
    parts = _stats_parts(model, tr)
    entries = list(model.moe)

    # RouterRecord: counts per group over real tokens, gate mass where the experts take weights
    count_bad, mass_bad, mass_none = [], [], False
    for block, (count, mass) in parts.items():
        if block not in blocks:
            count_bad.append(f"{block}: the oracle saw no experts call")
            continue
        routed, weights = blocks[block]
        real = _mask_of(block, kwargs)
        seq = _seq_of(block, kwargs)
        for g, (start, size) in enumerate(rows):
            span = slice(start * seq, (start + size) * seq)
            want = routed[span][real[span]].sum(0)
            if not torch.equal(count[g].long(), want):
                count_bad.append(f"{block} group {g}: recorded {count[g].tolist()} received {want.tolist()}")
            if weights is None:
                mass_none = True
            elif not torch.equal(mass[g].to(torch.float64), weights[span][real[span]].sum(0)):
                diff = (mass[g].to(torch.float64) - weights[span][real[span]].sum(0)).abs().max().item()
                mass_bad.append(f"{block} group {g}: max diff {diff:.3g}")
    cells.append(Cell(model_type, scenario, "record.count", "FAIL" if count_bad else "exact", "; ".join(count_bad)))
    cells.append(Cell(model_type, scenario, "record.gate_mass", "FAIL" if mass_bad else
                      ("no oracle" if mass_none else "exact"),
                      "; ".join(mass_bad) or ("weights applied after the experts ran" if mass_none else "")))

    # the view, per invoke: its rows of the oracle's forward
    for name in VIEW:
        bad, refusals, no_oracle, checked = [], [], [], 0
        for position, entry in enumerate(entries):
            block = _block_of(entry)
            if (position, name) in refused:
                refusals.append(f"layer {entry.layer}: {type(refused[(position, name)]).__name__}")
                continue
            if block not in blocks:
                bad.append(f"{block}: not run")
                continue
            routed, weights = blocks[block]
            seq = _seq_of(block, kwargs)
            real_all = _mask_of(block, kwargs)
            for g, (start, size) in enumerate(rows):
                value = groups[g].get((position, name))
                span = slice(start * seq, (start + size) * seq)
                if value is None:
                    bad.append(f"layer {entry.layer} group {g}: no value")
                    continue
                # real tokens only: a padding token's state may be all zero, and Llama-4's experts then
                # get zero rows the oracle cannot tell from "not chosen"
                real = real_all[span]
                if value.shape[0] != real.shape[0]:
                    bad.append(f"layer {entry.layer} group {g}: {value.shape[0]} tokens, the invoke has {real.shape[0]}")
                    continue
                value = value[real]
                routed_g = routed[span][real]
                weights_g = None if weights is None else weights[span][real]
                if name == "indices":
                    got = _multi_hot(value, E)
                    if not torch.equal(got, routed_g):
                        rows_bad = (got != routed_g).any(-1).nonzero().flatten().tolist()
                        bad.append(f"layer {entry.layer} group {g}: tokens {rows_bad[:6]} differ")
                    checked += 1
                elif name == "weights":
                    if weights_g is None:
                        no_oracle.append(entry.layer)
                        continue
                    idx = groups[g].get((position, "indices"))
                    if idx is None:
                        no_oracle.append(entry.layer)
                        continue
                    idx = idx[real]
                    got = _weights_table(idx, value, E)
                    if not torch.equal(got, weights_g):
                        bad.append(f"layer {entry.layer} group {g}: max diff "
                                   f"{(got - weights_g).abs().max().item():.3g}")
                    checked += 1
                elif name == "scores":
                    # what the top-k ranks: its top-k is the chosen set, on tokens that got all k experts
                    k = min(int(routed_g.sum(-1).max().item()), E)
                    full = routed_g.sum(-1) == k
                    if value.shape[-1] < E or k == 0:
                        bad.append(f"layer {entry.layer}: scores of shape {tuple(value.shape)}")
                        continue
                    top = _multi_hot(torch.topk(value[:, :E].float(), k, dim=-1).indices, E)
                    differ = ((top != (routed_g > 0).long()).any(-1) & full).nonzero().flatten().tolist()
                    if differ:
                        bad.append(f"layer {entry.layer} group {g}: top-{k} of scores is not the chosen set "
                                   f"at tokens {differ[:6]}")
                    checked += 1
                elif name == "logits":
                    seen = None if logits_seen is None else logits_seen.get(block)
                    if seen is None:
                        no_oracle.append(entry.layer)
                        continue
                    declared = seen[span][real][:, :E]
                    # Gemma 4 declares its router's softmax as "router_logits": the logits' softmax is compared
                    if not torch.equal(value[:, :E], declared.to(value.dtype)) and not (
                            model_type in SOFTMAX_DECLARED
                            and torch.equal(torch.softmax(value[:, :E], -1, dtype=torch.float32), declared)):
                        bad.append(f"layer {entry.layer} group {g}: logits differ from the declared router logits")
                    checked += 1
        verdict = "FAIL" if bad else ("exact" if checked else ("refused" if refusals else "no oracle"))
        detail = "; ".join(bad) or (f"refused at {', '.join(refusals)}" if refusals else "")
        if not bad and checked and (refusals or no_oracle):
            detail = "; ".join(filter(None, [f"refused at {', '.join(refusals)}" if refusals else "",
                                             f"no oracle at layers {no_oracle}" if no_oracle else ""]))
        cells.append(Cell(model_type, scenario, f"view.{name}", verdict, detail))
    return cells


def _logits_hooks(model):
    """A context that collects `{block: [T, E] logits}` at the router class transformers declares."""
    declared = router_logits(model._module)
    seen = {}

    @contextlib.contextmanager
    def watch():
        handles = []
        if declared is not None:
            target, index = declared
            for path, module in model._module.named_modules():
                if isinstance(module, target):
                    block = path.rsplit(".", 1)[0]

                    def hook(module, args, output, block=block):
                        value = output[index] if isinstance(output, (tuple, list)) else output
                        seen[block] = value.detach().reshape(-1, value.shape[-1]).clone()
                    handles.append(module.register_forward_hook(hook))
        try:
            yield seen
        finally:
            for h in handles:
                h.remove()
    return watch


def scenario_trace(model_type, scenario):
    """one_invoke, invokes, right_padding, remote_local, capacity."""
    overrides = CAPACITY.get(model_type, {}) if scenario == "capacity" else {}
    if scenario == "capacity" and not overrides:
        return [Cell(model_type, scenario, r, "n/a", "no expert capacity") for r in READERS]
    model = build(model_type, **overrides)
    if scenario == "remote_local":  # a request needs a model loaded from a directory (or a hub id)
        directory = tempfile.mkdtemp()
        try:  # the model itself must survive the round trip through nnsight alone, without moe_interp
            model._module.save_pretrained(directory)
            model.tokenizer.save_pretrained(directory)
            reloaded = nnsight.TransformersModel(directory, dispatch=True, task="text-generation",
                                                 dtype=model._module.dtype)
            with reloaded.trace(encode(model), use_cache=False):
                pass
        except Exception as error:  # noqa: BLE001
            return [Cell(model_type, scenario, r, "n/a", f"the tiny model does not survive save_pretrained/"
                         f"from_pretrained: {type(error).__name__}: {error}") for r in READERS]
        model = mi.load(directory, dtype=model._module.dtype)
    enc = encode(model, side="right" if scenario == "right_padding" else None)
    oracle = Oracle(model._module, mi.describe(model).num_experts)
    logits_watch = _logits_hooks(model)
    with logits_watch() as logits_seen:
        tr, groups, rows, refused = run_trace(model, enc, oracle, remote="local" if scenario == "remote_local" else None,
                                              invokes=scenario == "invokes")
    cells = check_trace(model_type, scenario, model, tr, groups, rows, refused, oracle, logits_seen)
    if scenario in ("one_invoke", "invokes", "capacity"):
        cells += check_edits(model_type, scenario, model, enc)
    else:
        cells += [Cell(model_type, scenario, r, "n/a", "checked in one_invoke")
                  for r in ("view.write", "edit.reroute", "edit.drop")]
    cells.append(check_attribution(model_type, scenario, model, enc) if scenario == "one_invoke" else
                 Cell(model_type, scenario, "attribution.count", "n/a", "attribution runs one batch per call"))
    return cells


def check_edits(model_type, scenario, model, enc):
    """view.write (a boost of what top-k ranks makes every token use the expert), reroute, drop."""
    cells = []
    E = mi.describe(model).num_experts
    target = E - 1
    entries = list(model.moe)
    learned = [p for p, e in enumerate(entries) if e.router.kind != "hash"]
    extra = {"use_cache": False}
    # a write of the scores top-k ranks: every token of every learned layer gets expert `target` (a
    # write of the logits need not: DeepSeek-V3 adds a selection bias and ranks groups after them)
    oracle = Oracle(model._module, E)
    try:
        with oracle.watch():
            with model.trace(enc, **extra):
                for position in learned:
                    model.moe[position].router.scores[:, target] = 1e4  # what top-k ranks (a `+=` cannot
                    # lift DeepSeek-V3's group mask: its masked scores are -inf)
        bad = []
        blocks = oracle.forwards[-1]["blocks"]
        for position in learned:
            routed, _ = blocks[_block_of(entries[position])]
            routed = routed[_mask_of(_block_of(entries[position]), oracle.forwards[-1]["kwargs"])]  # real tokens
            if scenario == "capacity":  # a full expert drops the rest: each token has it or nothing
                ok = bool(((routed[:, target] > 0) | (routed.sum(-1) == 0)).all())
            else:
                ok = bool((routed[:, target] > 0).all())
            if not ok:
                bad.append(f"layer {entries[position].layer}: {(routed[:, target] == 0).sum().item()} tokens "
                           f"without expert {target}")
        hashed = [entries[p].layer for p in range(len(entries)) if p not in learned]
        verdict = "FAIL" if bad else ("exact" if learned else "refused")
        cells.append(Cell(model_type, scenario, "view.write", verdict,
                          "; ".join(bad) or (f"hash layers {hashed} refuse scores writes" if hashed else "")))
    except mi.RouterAccessError as error:
        cells.append(Cell(model_type, scenario, "view.write", "refused", error))
    except Exception as error:  # noqa: BLE001
        cells.append(Cell(model_type, scenario, "view.write", "FAIL", f"{type(error).__name__}: {error}"))
    # edits: the layer's most used expert, in every learned layer
    base = Oracle(model._module, E)
    with base.watch(), torch.no_grad():
        model._module(**enc, **extra)
    chosen = {}
    for position in learned:
        routed, _ = base.forwards[-1]["blocks"][_block_of(entries[position])]
        chosen[entries[position].layer] = [int(routed.sum(0).argmax())]
    modules = {block: module for _, block, module in _experts_modules(model._module)}
    for mode in ("reroute", "drop"):
        oracle = Oracle(model._module, E)
        calls = {}

        def keep(block):
            def hook(module, args, kwargs, out):
                calls.setdefault(block, (args, kwargs, out))
            return hook

        handles = [module.register_forward_hook(keep(block), with_kwargs=True) for block, module in modules.items()]
        try:
            with oracle.watch():
                with mi.trace(model, enc, mi.ExpertAblate(chosen, mode=mode), **extra):
                    pass
            bad, unchecked = [], []
            blocks = oracle.forwards[-1]["blocks"]
            for position in learned:
                entry = entries[position]
                routed, weights = blocks[_block_of(entry)]
                expert = chosen[entry.layer][0]
                real = _mask_of(_block_of(entry), oracle.forwards[-1]["kwargs"])
                if mode == "reroute":
                    used = int(routed[real][:, expert].sum())
                    if used:
                        bad.append(f"layer {entry.layer}: expert {expert} still received {used} tokens")
                elif int(routed[:, expert].sum()) == 0:
                    pass  # a dispatch mask or dense scores: the dropped expert computed nothing
                elif _takes_weights(calls.get(_block_of(entry))):
                    # nnsight swaps an experts' input inside its forward, after torch's pre-hooks: the
                    # oracle is their output, equal to the same call with the expert's weights at 0
                    try:
                        effect = _nonzero_weight_effect(modules[_block_of(entry)], *calls[_block_of(entry)], [expert])
                    except AssertionError:  # its experts module was not handed the expert at all
                        effect = {}
                    if effect:
                        bad.append(f"layer {entry.layer}: expert {expert} still weighted ({effect})")
                else:
                    unchecked.append(entry.layer)  # weights applied after the experts: no oracle here
            verdict = "FAIL" if bad else ("no oracle" if unchecked and len(unchecked) == len(learned) else "exact")
            cells.append(Cell(model_type, scenario, f"edit.{mode}", verdict if learned else "refused",
                              "; ".join(bad) or (f"no weight oracle at layers {unchecked}" if unchecked else "")))
        except mi.RouterAccessError as error:
            cells.append(Cell(model_type, scenario, f"edit.{mode}", "refused", error))
        except Exception as error:  # noqa: BLE001
            typed = type(error).__module__.startswith("moe_interp") and "Error" in type(error).__name__
            cells.append(Cell(model_type, scenario, f"edit.{mode}", "refused" if typed else "FAIL",
                              f"{type(error).__name__}: {error}"))
        finally:
            for handle in handles:
                handle.remove()
    return cells


def _takes_weights(call):
    """Whether an experts call was passed `[T, K]` indices and their weights as arguments."""
    if call is None:
        return False
    values = list(call[0])
    index = next((v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point()), None)
    return index is not None and any(isinstance(v, torch.Tensor) and v.is_floating_point() and v.shape == index.shape
                                     for v in values)


def check_attribution(model_type, scenario, model, enc):
    if getattr(model._module.config, "is_encoder_decoder", False):
        try:
            mi.expert_attribution(model, {"eng": PROMPTS}, progress=False)
        except Exception as error:  # noqa: BLE001
            typed = type(error).__module__.startswith("moe_interp") or isinstance(error, (ValueError, TypeError))
            return Cell(model_type, scenario, "attribution.count", "refused" if typed else "FAIL",
                        f"{type(error).__name__}: {error}")
        return Cell(model_type, scenario, "attribution.count", "n/a", "ran on an encoder-decoder (not checked)")
    E = mi.describe(model).num_experts
    oracle = Oracle(model._module, E)
    plain = dict(model.tokenizer(list(PROMPTS), return_tensors="pt", padding=True))
    with oracle.watch():  # a plain nnsight trace: its position ids for left padding are attribution's too
        with model.trace(plain, use_cache=False):
            pass
    try:
        result = mi.expert_attribution(model, {"eng": PROMPTS}, progress=False, batch_size=len(PROMPTS))
    except Exception as error:  # noqa: BLE001
        typed = type(error).__module__.startswith("moe_interp")
        return Cell(model_type, scenario, "attribution.count", "refused" if typed else "FAIL",
                    f"{type(error).__name__}: {error}")
    real = plain["attention_mask"].reshape(-1).bool()
    bad = []
    for j, entry in enumerate(model.moe):
        routed, _ = oracle.forwards[-1]["blocks"][_block_of(entry)]
        if not torch.equal(result.count[0, j].long(), routed[real].sum(0)):
            bad.append(f"layer {entry.layer}: {result.count[0, j].tolist()} vs {routed[real].sum(0).tolist()}")
    return Cell(model_type, scenario, "attribution.count", "FAIL" if bad else "exact", "; ".join(bad))


def scenario_thread(model_type):
    """mi.trace with the view while a plain trace of the same model runs in another thread."""
    model = build(model_type)
    enc = encode(model)
    oracle = Oracle(model._module, mi.describe(model).num_experts)
    extra = {"use_cache": False}
    with oracle.watch():  # a plain nnsight trace (HF's own forward may differ in the last bits)
        with model.trace(enc, **extra):
            pass
    other_enc = encode(model, ["ok", "Ja, gerne, sehr gerne"], targets=["ja", "Yes, gladly"])
    stop, errors = threading.Event(), []

    def plain():
        while not stop.is_set():
            try:
                with model.trace(other_enc, **extra):
                    model.moe[0].router.logits.save()
            except Exception as error:  # noqa: BLE001
                errors.append(error)

    other = threading.Thread(target=plain)
    other.start()
    try:
        cells = []
        for _ in range(3):
            refused = {(p, n): _refusal(e, n) for p, e in enumerate(model.moe) for n in VIEW}
            refused = {k: v for k, v in refused.items() if v is not None}
            with mi.trace(model, enc, mi.RouterRecord(), **extra) as tr:
                saved = nnsight.save([])
                _read_view(model, saved, refused)
            cells = check_trace(model_type, "thread", model, tr, {0: dict(saved)}, [(0, enc["input_ids"].shape[0])],
                                refused, oracle)
            if any(c[3] == "FAIL" for c in cells):
                break
    finally:
        stop.set()
        other.join()
    if errors:
        cells.append(Cell(model_type, "thread", "record.count", "FAIL", f"the plain trace failed: {errors[0]!r}"))
    cells = [c if c[2] != "view.logits" or c[3] != "no oracle" else Cell(*c[:3], "n/a", "checked in one_invoke")
             for c in cells]
    cells += [Cell(model_type, "thread", r, "n/a", "checked in one_invoke")
              for r in ("view.write", "edit.reroute", "edit.drop", "attribution.count")]
    return cells


def scenario_generate(model_type, use_cache):
    """mi.generate's counts against the experts' own calls in the same generation: each row's
    tokens counted once, at the forward that first feeds them, until the row has been fed an
    EOS (generating it alone would have stopped there); one row ends early."""
    scenario = "generate_cache" if use_cache else "generate_nocache"
    model = build(model_type)
    hf, tok = model._module, model.tokenizer
    E = mi.describe(model).num_experts
    if getattr(hf.config, "is_encoder_decoder", False):
        return [Cell(model_type, scenario, r, "n/a", "encoder-decoder generation: tests/test_seq2seq.py and "
                     "tests/test_generate.py count both stacks by hand") for r in READERS]
    pad = tok.pad_token_id
    base = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad)
    # an EOS that ends row 0 after its second new token and no other row before the end
    enc = dict(tok(list(PROMPTS), return_tensors="pt", padding=True))
    try:
        with torch.no_grad():
            out = hf.generate(**enc, **base, eos_token_id=None, use_cache=use_cache)
    except Exception as error:  # noqa: BLE001 - the model itself, without moe_interp
        return [Cell(model_type, scenario, r, "n/a", f"HF's own generate fails on the tiny model: "
                     f"{type(error).__name__}: {error}") for r in READERS]
    new = out[:, -NEW_TOKENS:]
    eos = int(new[0, 1])
    early = not any(eos in new[i, :-1].tolist() for i in range(1, new.shape[0])) and eos != int(new[0, 0])
    eos = eos if early else None
    oracle = Oracle(hf, E)
    cells = []
    try:
        with oracle.watch():
            with mi.generate(model, list(PROMPTS), mi.RouterRecord(), **base, eos_token_id=eos,
                             use_cache=use_cache) as gen:
                pass
        want, seen_length, fed = {}, 0, []
        prompt = enc["input_ids"].shape[1]
        for forward in oracle.forwards:
            ids, mask = forward["kwargs"]["input_ids"], forward["kwargs"]["attention_mask"]
            seq, length = ids.shape[1], mask.shape[1]  # this forward's columns; the sequence so far
            fresh = torch.arange(length - seq, length) >= seen_length  # columns fed for the first time
            seen_length = length
            if seq == length:  # no cache: the whole sequence again
                generated = ids[:, prompt:]
            else:  # cached: the new column is the last generated token
                fed.append(ids)
                generated = torch.cat(fed, 1)
            done = (generated == eos).any(-1) if eos is not None else torch.zeros(ids.shape[0], dtype=torch.bool)
            count_it = (mask[:, -seq:] > 0) & fresh[None, :] & ~done[:, None]
            for block, (routed, _) in forward["blocks"].items():
                want[block] = want.get(block, 0) + routed[count_it.reshape(-1)].sum(0)
        bad = []
        for block, (count, _) in _stats_parts(model, gen).items():
            if not torch.equal(count.sum(0).long(), want.get(block, torch.zeros(E, dtype=torch.long))):
                bad.append(f"{block}: recorded {count.sum(0).tolist()} received {want.get(block).tolist()}")
        cells.append(Cell(model_type, scenario, "record.count", "FAIL" if bad else "exact",
                          "; ".join(bad) or ("row 0 ends early" if eos is not None else "no row ends early")))
    except Exception as error:  # noqa: BLE001
        cells.append(Cell(model_type, scenario, "record.count", "FAIL", f"{type(error).__name__}: {error}"))
    cells += [Cell(model_type, scenario, r, "n/a", "generation: counts checked; per-forward values as in a trace")
              for r in READERS if r != "record.count"]
    return cells


def cells_of(model_type, scenarios=SCENARIOS):
    try:
        build(model_type)
    except mi.UnsupportedModelError as error:
        return [Cell(model_type, "*", "*", "refused", f"UnsupportedModelError: {error}")]
    except Exception as error:  # noqa: BLE001 - the survey's "tiny config fails": not a moe_interp verdict
        return [Cell(model_type, "*", "*", "n/a", f"tiny config fails: {type(error).__name__}: {error}")]
    out = []
    for scenario in scenarios:
        try:
            if scenario.startswith("generate"):
                out += scenario_generate(model_type, scenario == "generate_cache")
            elif scenario == "thread":
                out += scenario_thread(model_type)
            else:
                out += scenario_trace(model_type, scenario)
        except (mi.RouterAccessError, mi.UnsupportedModelError) as error:  # typed, naming the fix
            out.append(Cell(model_type, scenario, "*", "refused", f"{type(error).__name__}: {error}"))
        except Exception as error:  # noqa: BLE001
            out.append(Cell(model_type, scenario, "*", "FAIL", f"{type(error).__name__}: {error}"))
    return out


def full_types():
    """Every MoE causal LM and encoder-decoder the installed transformers builds tiny (the survey's)."""
    from test_arch import _all_moe_types, _kind

    return [t for t in _all_moe_types() if _kind(t) in ("causal LM", "encoder-decoder")]


def summary(cells):
    return Counter(c[3] for c in cells)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every buildable MoE type (slow)")
    parser.add_argument("--types", help="comma-separated model types")
    parser.add_argument("--failing", action="store_true", help="also print every cell that is not exact")
    parser.add_argument("--write", action="store_true",
                        help="write docs/conformance.md and the README's counts (with --full)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    types = args.types.split(",") if args.types else (full_types() if args.full else FAST_TYPES)
    cells = []
    for model_type in types:
        mine = cells_of(model_type)
        cells += mine
        counts = summary(mine)
        print(f"{model_type:24s} " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
        for cell in mine:
            if cell[3] == "FAIL" or (args.failing and cell[3] != "exact"):
                print("   ", " | ".join(cell[1:]), flush=True)
    counts = summary(cells)
    print("\n" + totals_line(len(types), counts))
    if args.write:
        write(cells, types, full=args.full and not args.types)
    return 1 if counts.get("FAIL") else 0


VERDICTS = ("exact", "refused", "no oracle", "n/a", "FAIL")
README_START, README_END = "<!-- conformance: generated by python tests/conformance.py --full --write -->", \
    "<!-- end of conformance -->"


def totals_line(num_types, counts):
    return (f"{num_types} MoE types x {len(SCENARIOS)} situations x {len(READERS)} readers: "
            + ", ".join(f"{counts.get(k, 0)} {k}" for k in VERDICTS))


def _not_exact(cells):
    """Markdown: every refused, unverifiable or failing cell, then the n/a cells counted by reason."""
    lines = ["", "## Cells that are refused, without an oracle, or failing", "",
             "| type | situation | reader | verdict | why |", "|---|---|---|---|---|"]
    reasons = Counter()
    for cell in cells:
        why = cell[4].replace("|", "/").replace("\n", " ")
        if cell[3] == "n/a":
            reasons[re.sub(r": \w+(Error|Exception)\b.*", " (the error differs per type)", why) or "-"] += 1
        elif cell[3] != "exact":
            lines.append(f"| `{cell[0]}` | {cell[1]} | {cell[2]} | {cell[3]} | {why} |")
    lines += ["", "## n/a cells, by reason", "", "| reason | cells |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()]
    return lines


def write(cells, types, full):
    """docs/conformance.md (every type's counts and every cell that is not exact) and the README's
    counts between its markers."""
    import transformers

    root = os.path.dirname(HERE)
    counts = summary(cells)
    scope = "every buildable MoE causal LM and encoder-decoder type" if full else "the types " + ", ".join(types)
    head = (f"Recorded on transformers {transformers.__version__}, nnsight {nnsight.__version__}, torch "
            f"{torch.__version__.split('+')[0]}: {scope}. {totals_line(len(types), counts)}.")
    lines = ["# Conformance matrix", "",
             "Every reader of routing x MoE type x situation, each cell against an oracle that shares no code",
             "with moe_interp (`tests/conformance.py`, whose docstring defines the readers, situations and",
             "verdicts). Written by `python tests/conformance.py --full --write`; `tests/test_conformance.py`",
             "runs the fast subset in the test suite (`MI_CONFORMANCE=full` for all of it).", "", head, "",
             "| type | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    for model_type in types:
        mine = summary(c for c in cells if c[0] == model_type)
        lines.append(f"| `{model_type}` | " + " | ".join(str(mine.get(k, 0)) for k in VERDICTS) + " |")
    lines += _not_exact(cells)
    with open(os.path.join(root, "docs", "conformance.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    readme = os.path.join(root, "README.md")
    text = open(readme).read()
    if README_START in text and full:
        before, rest = text.split(README_START, 1)
        after = rest.split(README_END, 1)[1]
        text = before + README_START + "\n" + head + " Per type and cell: [docs/conformance.md](docs/conformance.md).\n" \
            + README_END + after
        with open(readme, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
