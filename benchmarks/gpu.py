"""GPU benchmark: `python benchmarks/gpu.py` (about 2-4 minutes on one H100) writes
benchmarks/RESULTS_GPU.md with the card's name.

The same ratios as `benchmarks/run.py` on a random-init model of OLMoE-1B-7B's configuration
(hidden 2048, 16 layers, 64 experts top-8, expert intermediate 1024, vocab 50304, 16 heads;
about 6.9B parameters, 14 GB in bf16), batch 16 x 512, bf16, `torch.no_grad()`. Paired,
interleaved runs: each variant runs right after its own plain forward, order shuffled per
repetition, CUDA-synchronised timings; the median per-pair ratio is reported. Target (not
asserted): RouterRecord and steering <= 1.05x a plain forward.

One section per experts implementation (default `grouped_mm,eager`: transformers' fused default on
CUDA, and its per-expert Python loop). Each section also checks exactness on the GPU: the
`RouterRecord` counts must equal the counts from HF's `output_router_logits` plus top-k.

Options: `--reps N` (default 10), `--batch B`, `--seq S`, `--experts-implementation A,B`,
`--out PATH`, `--smoke` (tiny config on the CPU, checks that the script runs).
"""

import argparse
import datetime
import gc
import os
import statistics
import sys
import time

import torch

from run import code_version, moe_interp_variants, paired_ratios  # benchmarks/ is on sys.path when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))


def olmoe_model(experts_implementation, device="cuda", smoke=False):
    from transformers import AutoConfig, AutoModelForCausalLM

    import moe_interp as mi

    values = dict(hidden_size=2048, num_hidden_layers=16, num_experts=64, num_experts_per_tok=8,
                  intermediate_size=1024, vocab_size=50304, num_attention_heads=16, num_key_value_heads=16,
                  max_position_embeddings=4096, norm_topk_prob=False, pad_token_id=1, eos_token_id=50279)
    if smoke:
        values.update(hidden_size=64, intermediate_size=32, num_hidden_layers=2, vocab_size=512)
    config = AutoConfig.for_model("olmoe", **values)
    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    with torch.device(device):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, **kwargs).eval()
    with torch.no_grad():  # routers: spread the routing as a trained model would (from_config may zero them)
        for layer in hf.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.02)
    return mi.wrap(hf, mi.zoo.byte_tokenizer()), config


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


def measure(implementation, args, device):
    """One experts implementation: the exactness check, then the paired timings. Returns lines."""
    import moe_interp as mi

    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    model, config = olmoe_model(implementation, device, args.smoke)
    hf = model._module
    spec = mi.describe(model)
    layers = list(spec.moe_layers)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    k, experts = spec.top_k, spec.num_experts

    def plain():
        return hf(**enc).logits

    def hf_router_logits():
        out = hf(**enc, output_router_logits=True)
        real = enc["attention_mask"].reshape(-1).bool()
        counts = []
        for logits in out.router_logits:
            weights, index = torch.topk(logits.float().softmax(-1), k, dim=-1)
            counts.append(torch.bincount(index[real].reshape(-1), minlength=experts))
        return torch.stack(counts).cpu()  # host-side result, as a user would read it

    variants = {
        "HF output_router_logits=True + aggregation": hf_router_logits,
        **moe_interp_variants(model, enc, layers),
    }
    with torch.no_grad():
        oracle = hf_router_logits()
        recorded = variants["RouterRecord()"]()
        ours = torch.as_tensor(recorded.count[0]).to(oracle.dtype)  # group 0: the whole batch
        mismatched = int((ours != oracle).sum())
        print(f"[{implementation}] exactness: {mismatched} of {oracle.numel()} (layer, expert) counts differ",
              flush=True)

        syncs = {name: count_syncs(fn, device) for name, fn in {"plain forward": plain, **variants}.items()}

        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        ratios, plain_times = paired_ratios(plain, variants, args.reps, sync=sync, label=implementation)

    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else 0) / 2**30
    lines = [f"## experts implementation {getattr(hf.config, '_experts_implementation', implementation)!r}", "",
             f"- {sum(p.numel() for p in hf.parameters()) / 1e9:.2f}B parameters; median plain forward "
             f"{statistics.median(plain_times) * 1000:.1f} ms "
             f"({args.batch * args.seq / statistics.median(plain_times):,.0f} tokens/s); peak memory {peak:.1f} GiB",
             f"- exactness: RouterRecord counts vs HF `output_router_logits` + top-k: "
             f"**{mismatched} of {oracle.numel()}** (layer, expert) counts differ "
             f"({int(oracle.sum()):,} routed token-slots)", "",
             f"- host syncs: times one call waited for the GPU (`torch.cuda.set_sync_debug_mode`); the plain "
             f"forward itself makes {syncs['plain forward']}", "",
             "| variant | median ratio | min - max | host syncs |", "|---|---|---|---|"]
    for variant, values in ratios.items():
        lines.append(f"| {variant} | {statistics.median(values):.3f}x | {min(values):.3f} - {max(values):.3f} "
                     f"| {syncs[variant]} |")
    return lines + [""]


def demo_profile(args, device):
    """`mi.profile` on the bundled demo model: tokens/s on the GPU, and the GPU profile against
    the same profile on the host CPU (float32 both; a near-tie in a router can flip under other
    kernels, so the check reports how many counts differ and the largest JS divergence)."""
    import numpy as np
    from scipy.spatial.distance import jensenshannon

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
        host, host_s = results["cpu"]
        a, b = np.asarray(stats.count, dtype=np.float64), np.asarray(host.count, dtype=np.float64)
        differ = int((a != b).sum())
        js = max(float(jensenshannon(a[i].reshape(-1), b[i].reshape(-1)) ** 2) for i in range(a.shape[0]))
        lines += [f"- host CPU ({os.cpu_count()} cores): {tokens / host_s:,.0f} tokens/s",
                  f"- GPU vs CPU profile: {differ} of {a.size} (language, layer, expert) counts differ "
                  f"(total {int(np.abs(a - b).sum() / 2)} of {int(a.sum()):,} routed token-slots moved); "
                  f"largest per-language JS divergence {js:.2e}"]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--experts-implementation", default="grouped_mm,eager",
                        help="comma-separated transformers experts implementations, one section each")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS_GPU.md"))
    parser.add_argument("--demo-languages", type=int, default=96, help="languages for the demo-model profile")
    parser.add_argument("--demo-batch", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU: checks the script runs")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    import warnings
    warnings.filterwarnings("ignore")
    import nnsight
    import transformers

    started = time.perf_counter()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU smoke run (tiny config, not a benchmark)"
    lines = ["# GPU benchmark", "", f"Written by `python benchmarks/gpu.py` on **{name}**.", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"nnsight {nnsight.__version__}, transformers {transformers.__version__}; code {code_version()}",
             "- model: random-init OLMoE-1B-7B configuration (hidden 2048, 16 layers, 64 experts top-8), bf16, "
             "`torch.no_grad()`",
             f"- batch {args.batch} x {args.seq}; {args.reps} repetitions; in each, every variant runs right "
             "after its own plain HF forward, in shuffled order, CUDA-synchronised; ratio = variant / paired plain",
             "- every moe_interp variant includes moving its results to the host (`tr.routing`), as the HF "
             "variant includes its `.cpu()`",
             "", "Target (not asserted): RouterRecord and steering <= 1.05x a plain forward.", ""]
    for implementation in args.experts_implementation.split(","):
        lines += measure(implementation.strip() or None, args, device)
        gc.collect()  # the section's model is unreachable now: give its memory back before the next
        torch.cuda.empty_cache() if device == "cuda" else None
        with open(args.out, "w") as f:  # written after each section: a timeout keeps what finished
            f.write("\n".join(lines) + "\n")
    lines += demo_profile(args, device)
    lines += [f"Total wall time {time.perf_counter() - started:.0f} s."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
