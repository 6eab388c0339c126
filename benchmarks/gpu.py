"""GPU benchmark: `python benchmarks/gpu.py` (a few minutes on one H100) writes
benchmarks/RESULTS_GPU.md with the card's name. `--smoke` runs every section on a tiny config on
the CPU, prints the report and writes no file (unless `--out` is given): it checks the script.

Sections, in one run, with the device named in the output:

1. Split across devices: routing counts of a model whose second half of decoder layers (and
   final norm, lm_head) sits on another device, against the same model unsplit, for
   `RouterRecord`, a `LayerRouteSteer` and an `ExpertAblate` (reroute), plus the HF
   `output_router_logits` + top-k oracle; and where `compile_plan(..., on_device=True)` (the
   tracer's path, `runtime._compile.place`) put each layer's plan tensors. Two splits:
   `device_map` through accelerate's `dispatch_model` (what `from_pretrained(device_map=...)`
   does; on a GPU run its "cpu" half is offloaded: weights on the host, executed on the GPU,
   routers on the meta device between forwards), and torch pre-hooks that really run the second
   half on the CPU. float64 (a small OLMoE-shaped model, 4 layers): CPU and GPU kernels round
   differently, and in bf16 a near-tie in a router would flip. On `--smoke` both halves are
   on the CPU: it shows the split code path (hooks, per-router placement) runs and the counts
   agree; it cannot show a cross-device copy or a plan tensor left on the wrong device.
2. Per experts implementation (default `grouped_mm,eager`), on a random-init model of
   OLMoE-1B-7B's configuration (hidden 2048, 16 layers, 64 experts top-8, expert intermediate
   1024, vocab 50304, 16 heads; about 6.9B parameters, 14 GB in bf16), batch 16 x 512, bf16,
   `torch.no_grad()`: exactness (`RouterRecord` counts against HF's `output_router_logits` plus
   top-k), host syncs per call, paired ratios against a plain forward (as `benchmarks/run.py`:
   each variant right after its own plain forward, order shuffled per repetition,
   CUDA-synchronised timings, the median per-pair ratio), and `RouterRecord`,
   `RouterRecord(per_token=True)`, `LayerRouteSteer` and `ExpertAblate` paired against a plain
   nnsight trace (target <= 1.05x each). For the first implementation also `mi.profile`
   tokens/s against a plain forward over the same padded batches (target >= 0.9).
3. bf16 autocast on CUDA: the same model in float32 under `torch.autocast("cuda",
   torch.bfloat16)`, exactness and the ratios against a plain nnsight trace (skipped on the CPU,
   and the output says so).
4. `mi.profile` on the bundled demo model: tokens/s on the device, and the device's profile
   against the host CPU's.

Options: `--reps N` (default 10), `--batch B`, `--seq S`, `--experts-implementation A,B`,
`--out PATH`, `--smoke`.
"""

import argparse
import contextlib
import datetime
import gc
import os
import random
import statistics
import sys
import tempfile
import time

import torch

from run import code_version, moe_interp_variants, paired_ratios  # benchmarks/ is on sys.path when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
AGAINST_TRACE = ("RouterRecord()", "RouterRecord(per_token=True)", "LayerRouteSteer", "ExpertAblate")


def olmoe_model(experts_implementation, device="cuda", smoke=False, dtype=torch.bfloat16, **override):
    from transformers import AutoConfig, AutoModelForCausalLM

    import moe_interp as mi

    values = dict(hidden_size=2048, num_hidden_layers=16, num_experts=64, num_experts_per_tok=8,
                  intermediate_size=1024, vocab_size=50304, num_attention_heads=16, num_key_value_heads=16,
                  max_position_embeddings=4096, norm_topk_prob=False, pad_token_id=1, eos_token_id=50279)
    if smoke:
        values.update(hidden_size=64, intermediate_size=32, num_hidden_layers=2, vocab_size=512, eos_token_id=2)
    values.update(override)
    config = AutoConfig.for_model("olmoe", **values)
    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    with torch.device(device):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs).eval()
    with torch.no_grad():  # routers: spread the routing as a trained model would (from_config may zero them)
        for layer in hf.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.02)
    return mi.wrap(hf, mi.zoo.byte_tokenizer()), config


def synchronize(device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def count_syncs(fn, device):
    """How many times one call of `fn` makes the host wait for the GPU (None on the CPU)."""
    if device != "cuda":
        return None
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def hf_counts(hf, enc, k, experts):
    """The oracle: HF's own `output_router_logits`, softmax, top-k, counted on the host."""
    out = hf(**enc, output_router_logits=True)
    real = enc["attention_mask"].reshape(-1).bool().cpu()
    counts = []
    for logits in out.router_logits:
        index = torch.topk(logits.float().softmax(-1), k, dim=-1).indices.cpu()
        counts.append(torch.bincount(index[real].reshape(-1), minlength=experts))
    return torch.stack(counts)


# ---------------------------------------------------------------------------------- 1. split

def _moved(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def split_by_hooks(hf, device_map):
    """Each block of `device_map` moved to its device, with a forward pre-hook that moves the
    block's inputs there: the second half really runs on its own device. Returns the hooks'
    handles and a list that grows by one per hook call (evidence that the path ran)."""
    handles, calls = [], []

    def hook(module, args, kwargs, where):
        calls.append(where)
        return _moved(args, where), _moved(kwargs, where)

    for name, where in device_map.items():
        block = hf.get_submodule(name)
        block.to(where)
        handles.append(block.register_forward_pre_hook(
            lambda module, args, kwargs, where=where: hook(module, args, kwargs, where), with_kwargs=True))
    return handles, calls


def placement(model, interventions):
    """Where the tracer's compile (`on_device=True`: `runtime._compile.place`) puts each layer's
    plan tensors, against its router's device: `(summary, ok)`."""
    import moe_interp as mi
    from moe_interp.runtime._compile import compile_plan

    plan = compile_plan(mi.describe(model), interventions, model, on_device=True)
    hf, seen, ok = model._module, {}, True
    for entry in plan.layers:
        router = next(iter(hf.get_submodule(entry.router).parameters())).device
        payloads = [edit.payload for _, at in entry.edits for edit in at if isinstance(edit.payload, torch.Tensor)]
        payloads += [entry.rerouted] if entry.rerouted is not None else []
        where = sorted({str(p.device) for p in payloads})
        if router.type != "meta":
            ok &= where == [str(router)]
        seen.setdefault((str(router), ", ".join(where)), []).append(entry.layer)
    summary = "; ".join(f"layers {', '.join(map(str, layers))}: router on {router}, plan tensors on {where}"
                        + (" (left for the kernels to move)" if router == "meta" else "")
                        for (router, where), layers in seen.items())
    return summary, ok


def split_check(args, device):
    """Counts of the unsplit model against the same model split two ways (see the docstring)."""
    import moe_interp as mi

    other = "cpu"
    model, config = olmoe_model("eager", device, args.smoke, dtype=torch.float64,
                                **({} if args.smoke else {"num_hidden_layers": 4, "vocab_size": 4096}))
    hf, spec = model._module, mi.describe(model)
    layers = list(spec.moe_layers)
    half = len(hf.model.layers) // 2
    ids = torch.randint(3, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    enc["attention_mask"][1, :9] = 0  # a padded row: padding must not be counted on either side
    enc = {k: v.to(device) for k, v in enc.items()}
    steer = mi.LayerRouteSteer({l: {0: 1.0, 5: 0.5, 9: -0.5} for l in layers}, scale=0.5)
    ablate = mi.ExpertAblate({l: [0, 1] for l in layers})
    runs = {"RouterRecord()": [], "LayerRouteSteer + RouterRecord()": [steer],
            "ExpertAblate (reroute) + RouterRecord()": [ablate]}

    def counts():
        out = {"HF output_router_logits + top-k (oracle)": hf_counts(hf, enc, spec.top_k, spec.num_experts)}
        for name, interventions in runs.items():
            with mi.trace(model, enc, *interventions, mi.RouterRecord()) as tr:
                pass
            out[name] = torch.as_tensor(tr.routing.count[0]).cpu()
        return out

    second = [f"model.layers.{i}" for i in range(half, len(hf.model.layers))] + ["model.norm", "lm_head"]
    device_map = {"model.embed_tokens": device, "model.rotary_emb": device,
                  **{f"model.layers.{i}": device for i in range(half)}, **{name: other for name in second}}
    with torch.no_grad():
        unsplit = counts()
        splits = {}
        handles, calls = split_by_hooks(hf, device_map)
        where, ok = placement(model, [steer, ablate])
        result = counts()
        hooked = f"pre-hooks: the second half runs on {other} ({len(calls)} hook calls in {len(result)} forwards)"
        splits[hooked] = (result, where, ok)
        for handle in handles:
            handle.remove()
        hf.to(device)
        try:
            import accelerate
        except ImportError:
            accelerate = None
        if accelerate is not None:
            # on the CPU, the second half goes to "disk": offloaded as the "cpu" half is on a GPU
            # (weights loaded per forward, routers on the meta device between forwards)
            offloaded = other if device != other else "disk"
            offload_map = {name: offloaded if name in second else where for name, where in device_map.items()}
            for name in second:  # from_pretrained leaves an offloaded block's weights on the host
                hf.get_submodule(name).to("cpu")
            with tempfile.TemporaryDirectory() as folder:
                accelerate.dispatch_model(hf, device_map=offload_map, main_device=device, force_hooks=True,
                                          offload_dir=folder)
                where, ok = placement(model, [steer, ablate])
                label = (f"`device_map` (accelerate {accelerate.__version__} dispatch_model; the second half "
                         f"offloaded to {offloaded!r}, executed on {device!r})")
                splits[label] = (counts(), where, ok)
    equal = True
    lines = ["## Split across devices", "",
             f"OLMoE-shaped model ({len(hf.model.layers)} layers, {spec.num_experts} experts top-{spec.top_k}, "
             f"hidden {config.hidden_size}), float64, eager experts, batch {tuple(ids.shape)} with a padded row; "
             f"layers {half}- (and the final norm, lm_head) on {other!r}, the rest on {device!r}. "
             "Counts per (layer, expert) against the unsplit model on " f"{device!r}.", ""]
    if device == other:
        lines += ["CPU smoke: both halves are on the CPU. This shows the split code path runs (hooks moving "
                  "each block's inputs, the tracer's per-router placement of plan tensors) and the counts "
                  "agree; it cannot show a copy across devices or a plan tensor left on the wrong device.", ""]
    if accelerate is None:
        lines += ["`device_map` split skipped: accelerate is not installed here (only the pre-hook split ran).", ""]
    lines += ["| split | run | counts differing from unsplit |", "|---|---|---|"]
    for label, (result, where, ok) in splits.items():
        for name, value in result.items():
            differ = int((value != unsplit[name]).sum())
            equal &= differ == 0
            lines.append(f"| {label} | {name} | {differ} of {value.numel()} |")
    oracle = "HF output_router_logits + top-k (oracle)"
    exact = all(int((splits[s][0]["RouterRecord()"] != splits[s][0][oracle]).sum()) == 0 for s in splits)
    exact &= int((unsplit["RouterRecord()"] != unsplit[oracle]).sum()) == 0
    lines += ["", "- RouterRecord equals the oracle on every model (split and unsplit): "
              f"**{'yes' if exact else 'NO'}**"]
    for label, (result, where, ok) in splits.items():
        lines.append(f"- plan placement, {label}: {where}: **{'each on its router' if ok else 'NOT on its router'}**")
    placed = all(ok for _, _, ok in splits.values())
    lines += ["", f"Split vs unsplit counts: **{'equal' if equal and exact and placed else 'DIFFER'}** "
              f"(RouterRecord, steer, reroute ablation, oracle; plan placement)", ""]
    return lines


# ---------------------------------------------------------------------------------- 2. timings

def against_trace(variants, reps, sync, label):
    """Paired ratios of the `AGAINST_TRACE` variants against the plain nnsight trace."""
    trace = next(name for name in variants if name.startswith("nnsight trace"))
    chosen = {name: fn for name, fn in variants.items() if name.startswith(AGAINST_TRACE)}
    ratios, _ = paired_ratios(variants[trace], chosen, reps, sync=sync, label=label)
    lines = ["Against a plain nnsight trace of the same batch (target <= 1.05x each):", "",
             "| variant | median ratio vs nnsight trace | min - max | target met |", "|---|---|---|---|"]
    for name, values in ratios.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f}x | {min(values):.3f} - {max(values):.3f} | "
                     f"{'yes' if median <= 1.05 else 'no'} |")
    return lines + [""]


def measure(implementation, args, device, autocast=False):
    """One experts implementation: exactness, host syncs, paired timings against a plain
    forward and against a plain nnsight trace. With `autocast`, a float32 model under bf16
    autocast. Returns (lines, model)."""
    import moe_interp as mi

    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    model, config = olmoe_model(implementation, device, args.smoke, dtype=torch.float32 if autocast else torch.bfloat16)
    hf = model._module
    spec = mi.describe(model)
    layers = list(spec.moe_layers)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    k, experts = spec.top_k, spec.num_experts
    context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def wrapped(fn):
        def run():
            with context():
                return fn()
        return run

    variants = {"HF output_router_logits=True + aggregation": lambda: hf_counts(hf, enc, k, experts),
                **moe_interp_variants(model, enc, layers)}
    variants = {name: wrapped(fn) for name, fn in variants.items()}
    plain = wrapped(lambda: hf(**enc).logits)
    sync = synchronize(device)
    reps = max(2, args.reps // 2) if autocast else args.reps
    label = f"{implementation}{', autocast' if autocast else ''}"
    with torch.no_grad():
        oracle = variants["HF output_router_logits=True + aggregation"]()
        ours = torch.as_tensor(variants["RouterRecord()"]().count[0]).to(oracle.dtype)  # group 0: the batch
        mismatched = int((ours != oracle).sum())
        print(f"[{label}] exactness: {mismatched} of {oracle.numel()} (layer, expert) counts differ", flush=True)
        syncs = {name: count_syncs(fn, device) for name, fn in {"plain forward": plain, **variants}.items()}
        ratios, plain_times = paired_ratios(plain, variants, reps, sync=sync, label=label)
        direct = against_trace(variants, reps, sync, label + ", vs trace")

    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else 0) / 2**30
    title = getattr(hf.config, "_experts_implementation", implementation)
    kind = ", float32 weights under bf16 autocast" if autocast else ", bf16"
    lines = [f"## experts implementation {title!r}{kind}",
             "", f"- {sum(p.numel() for p in hf.parameters()) / 1e9:.2f}B parameters; median plain forward "
             f"{statistics.median(plain_times) * 1000:.1f} ms "
             f"({args.batch * args.seq / statistics.median(plain_times):,.0f} tokens/s); peak memory {peak:.1f} GiB; "
             f"{reps} repetitions",
             f"- exactness: RouterRecord counts vs HF `output_router_logits` + top-k: "
             f"**{mismatched} of {oracle.numel()}** (layer, expert) counts differ "
             f"({int(oracle.sum()):,} routed token-slots)",
             f"- host syncs: times one call waited for the GPU (`torch.cuda.set_sync_debug_mode`; None on the CPU); "
             f"the plain forward itself makes {syncs['plain forward']}", "",
             "| variant | median ratio vs plain forward | min - max | host syncs |", "|---|---|---|---|"]
    for variant, values in ratios.items():
        lines.append(f"| {variant} | {statistics.median(values):.3f}x | {min(values):.3f} - {max(values):.3f} "
                     f"| {syncs[variant]} |")
    return lines + [""] + direct, model


def autocast_section(implementation, args, device):
    if device != "cuda":
        return ["## bf16 autocast on CUDA", "",
                f"Skipped: this run is on the {device.upper()}; bf16 autocast is measured on CUDA only.", ""]
    lines, model = measure(implementation, args, device, autocast=True)
    del model
    return ["## bf16 autocast on CUDA", ""] + lines


def corpus_batches(model, corpus, batch_size):
    """The padded batches `mi.profile` runs for `corpus` (texts shorter than the model's
    positions): each text tokenized once, rows longest first, `tokenizer.pad` per batch."""
    tokenizer = model.tokenizer
    rows = [ids for texts in corpus.values() for ids in tokenizer(list(texts))["input_ids"]]
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r]), r))
    return [tokenizer.pad({"input_ids": [rows[r] for r in order[start : start + batch_size]]}, return_tensors="pt")
            for start in range(0, len(order), batch_size)]


def profile_throughput(model, args, device):
    """`mi.profile` tokens/s against a plain forward over the same padded batches, paired."""
    import moe_interp as mi

    rng = random.Random(2)
    words = "the of and to in is that for it as with was on be by this are from der die und den von zu".split()
    texts_per_language = 4 if args.smoke else 64
    corpus = {}
    for lang in ("aaa", "bbb"):
        corpus[lang] = []
        for _ in range(texts_per_language):
            text = ""
            target = rng.randint(args.seq // 2, args.seq - 2)  # bytes: one token each, plus a BOS
            while len(text) < target:
                text += rng.choice(words) + " "
            corpus[lang].append(text[:target])
    batches = corpus_batches(model, corpus, args.batch)
    hf, sync = model._module, synchronize(device)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def plain():
        for b in batches:
            hf(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        sync()

    def profiled():
        stats = mi.profile(model, corpus, batch_size=args.batch, progress=False)
        sync()
        return stats

    with torch.no_grad():
        stats = profiled()  # warm-up, and the token check
        plain()
        ratios, plain_s, profile_s = [], [], []
        for _ in range(1 if args.smoke else 3):
            for name in random.Random(_).sample(["plain", "profile"], 2):
                start = time.perf_counter()
                plain() if name == "plain" else profiled()
                (plain_s if name == "plain" else profile_s).append(time.perf_counter() - start)
            ratios.append(plain_s[-1] / profile_s[-1])
    same = int(stats.tokens.sum()) == tokens
    ratio = statistics.median(ratios)
    return ["### `mi.profile` throughput", "",
            f"Synthetic corpus: 2 languages x {texts_per_language} texts of {args.seq // 2}-{args.seq - 2} bytes, "
            f"batch {args.batch}: {len(batches)} padded batches, {tokens:,} real tokens "
            f"(profile counted {int(stats.tokens.sum()):,}: {'the same' if same else 'DIFFERENT'}). "
            f"{len(ratios)} paired repetitions, order shuffled; the plain forward includes moving each batch "
            "to the device, as the profile does.", "",
            f"- plain forward: {tokens / statistics.median(plain_s):,.0f} tokens/s; `mi.profile`: "
            f"{tokens / statistics.median(profile_s):,.0f} tokens/s",
            f"- `mi.profile` / plain forward tokens/s: **{ratio:.3f}** (min {min(ratios):.3f}; target >= 0.9: "
            f"{'met' if ratio >= 0.9 else 'not met'})", ""]


# ---------------------------------------------------------------------------------- 4. demo model

def demo_profile(args, device):
    """`mi.profile` on the bundled demo model: tokens/s on the GPU, and the GPU profile against
    the same profile on the host CPU (float32 both; a near-tie in a router can flip under other
    kernels, so the check reports how many counts differ and the largest JS divergence)."""
    import numpy as np

    import moe_interp as mi
    from moe_interp.experiments.demo import demo_corpus

    every = list(mi.datasets.udhr_languages())
    languages = every[:: max(1, len(every) // args.demo_languages)][: args.demo_languages]  # spread over the list
    corpus = demo_corpus(languages, split="heldout")
    results = {}
    for where in ([device, "cpu"] if device != "cpu" else ["cpu"]):
        model = mi.zoo.demo_model()
        model._module.to(where)
        mi.profile(model, {k: v[:4] for k, v in list(corpus.items())[:4]}, batch_size=args.demo_batch,
                   progress=False)  # warm-up
        if where == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = mi.profile(model, corpus, batch_size=args.demo_batch, progress=False)
        results[where] = (stats, time.perf_counter() - start)
        print(f"[demo] {where}: {int(stats.tokens.sum())} tokens in {results[where][1]:.1f} s", flush=True)
    stats, seconds = results[device]
    tokens = int(stats.tokens.sum())
    lines = ["## `mi.profile` on the demo model", "",
             f"Trained demo model (float32), UDHR held-out split of {len(corpus)} languages cut to 256-byte "
             f"pieces ({sum(map(len, corpus.values()))} texts), batch {args.demo_batch}.", "",
             f"- {device}: {tokens:,} tokens in {seconds:.1f} s = **{tokens / seconds:,.0f} tokens/s**"]
    if device != "cpu":
        from scipy.spatial.distance import jensenshannon

        host, host_s = results["cpu"]
        a, b = np.asarray(stats.count, dtype=np.float64), np.asarray(host.count, dtype=np.float64)
        differ = int((a != b).sum())
        js = max(float(jensenshannon(a[i].reshape(-1), b[i].reshape(-1)) ** 2) for i in range(a.shape[0]))
        lines += [f"- host CPU ({os.cpu_count()} cores): {tokens / host_s:,.0f} tokens/s",
                  f"- GPU vs CPU profile: {differ} of {a.size} (language, layer, expert) counts differ "
                  f"(total {int(np.abs(a - b).sum() / 2)} of {int(a.sum()):,} routed token-slots moved); "
                  f"largest per-language JS divergence {js:.2e}"]
    return lines + [""]


# ---------------------------------------------------------------------------------- main

def section(name, fn, *args):
    """One section's lines; a failure becomes a FAILED line, so the later sections still run."""
    print(f"--- {name} ...", flush=True)
    try:
        return fn(*args)
    except Exception as error:  # a scarce device run should still report what finished
        import traceback
        traceback.print_exc()
        return [f"## {name}", "", f"FAILED: {type(error).__name__}: {error}", ""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 10; --smoke: 2)")
    parser.add_argument("--batch", type=int, default=None, help="default 16 (--smoke: 4)")
    parser.add_argument("--seq", type=int, default=None, help="default 512 (--smoke: 32)")
    parser.add_argument("--experts-implementation", default="grouped_mm,eager",
                        help="comma-separated transformers experts implementations, one section each")
    parser.add_argument("--out", default=None, help="default benchmarks/RESULTS_GPU.md; --smoke writes no file "
                                                    "unless this is given")
    parser.add_argument("--demo-languages", type=int, default=None, help="languages for the demo-model profile "
                                                                         "(default 96; --smoke: 4)")
    parser.add_argument("--demo-batch", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="cuda (default); --smoke runs on the cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU: checks the script runs")
    args = parser.parse_args()
    defaults = dict(reps=2, batch=4, seq=32, demo_languages=4) if args.smoke else \
        dict(reps=10, batch=16, seq=512, demo_languages=96)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = "cpu" if args.smoke else args.device
    if not args.smoke and device != "cuda":
        sys.exit("benchmarks/gpu.py measures CUDA (--device cuda); --smoke is the CPU check of the script")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    out = args.out or (None if args.smoke else os.path.join(HERE, "RESULTS_GPU.md"))
    import warnings
    warnings.filterwarnings("ignore")
    import nnsight
    import transformers

    started = time.perf_counter()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU smoke run (tiny config, not a benchmark)"
    lines = ["# GPU benchmark", "", f"Written by `python benchmarks/gpu.py` on **{name}**.", "",
             f"- device: {device} ({name})",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"nnsight {nnsight.__version__}, transformers {transformers.__version__}; code {code_version()}",
             "- model: random-init OLMoE-1B-7B configuration (hidden 2048, 16 layers, 64 experts top-8), bf16, "
             "`torch.no_grad()`" + ("; --smoke: hidden 64, 2 layers, vocab 512" if args.smoke else ""),
             f"- batch {args.batch} x {args.seq}; {args.reps} repetitions; in each, every variant runs right "
             "after its own plain HF forward (or plain nnsight trace), in shuffled order, CUDA-synchronised",
             "- every moe_interp variant includes moving its results to the host (`tr.routing`), as the HF "
             "variant includes its `.cpu()`",
             "", "Targets (not asserted): RouterRecord, per-token, steering and ablation <= 1.05x a plain nnsight "
             "trace; `mi.profile` >= 0.9 of a plain forward's tokens/s.", ""]

    def write():  # after each section: a timeout keeps what finished
        if out:
            with open(out, "w") as f:
                f.write("\n".join(lines) + "\n")

    lines += section("Split across devices", split_check, args, device)
    gc.collect()
    torch.cuda.empty_cache() if device == "cuda" else None
    write()
    implementations = [i.strip() or None for i in args.experts_implementation.split(",")]
    for position, implementation in enumerate(implementations):
        def timed(implementation=implementation, first=position == 0):
            body, model = measure(implementation, args, device)
            if first:
                body += profile_throughput(model, args, device)
            return body
        lines += section(f"experts implementation {implementation!r}", timed)
        gc.collect()  # the section's model is unreachable now: give its memory back before the next
        torch.cuda.empty_cache() if device == "cuda" else None
        write()
    lines += section("bf16 autocast on CUDA", autocast_section, implementations[0], args, device)
    gc.collect()
    torch.cuda.empty_cache() if device == "cuda" else None
    write()
    lines += section("`mi.profile` on the demo model", demo_profile, args, device)
    lines += [f"Total wall time {time.perf_counter() - started:.0f} s."]
    write()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
