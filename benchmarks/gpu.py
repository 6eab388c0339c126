"""GPU benchmark: `python benchmarks/gpu.py` (about 2-4 minutes on one H100) writes
benchmarks/RESULTS_GPU.md with the card's name.

The same ratios as `benchmarks/run.py` on a random-init model of OLMoE-1B-7B's configuration
(hidden 2048, 16 layers, 64 experts top-8, expert intermediate 1024, vocab 50304, 16 heads;
about 6.9B parameters, 14 GB in bf16), batch 16 x 512, bf16, `torch.no_grad()`. Paired,
interleaved runs: each variant runs right after its own plain forward, order shuffled per
repetition, CUDA-synchronised timings; the median per-pair ratio is reported. Target (not
asserted): RouterRecord and steering <= 1.05x a plain forward.

Options: `--reps N` (default 10), `--batch B`, `--seq S`, `--experts-implementation NAME`.
"""

import argparse
import datetime
import os
import random
import statistics
import sys
import time

import torch

from run import moe_interp_variants  # benchmarks/ is on sys.path when run as a script

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--experts-implementation", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS_GPU.md"))
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU: checks the script runs")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
    import warnings
    warnings.filterwarnings("ignore")
    import nnsight
    import transformers

    import moe_interp as mi

    started = time.perf_counter()
    model, config = olmoe_model(args.experts_implementation, device, args.smoke)
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

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    ratios = {name: [] for name in variants}
    plain_times = []
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(2):
            plain()
            for fn in variants.values():
                fn()
        for _ in range(args.reps):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                base = timed(plain)
                plain_times.append(base)
                ratios[name].append(timed(variants[name]) / base)

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU smoke run (tiny config, not a benchmark)"
    lines = ["# GPU benchmark", "", f"Written by `python benchmarks/gpu.py` on **{name}**.", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}), nnsight {nnsight.__version__}, "
             f"transformers {transformers.__version__}",
             f"- model: random-init OLMoE-1B-7B configuration, bf16, "
             f"{sum(p.numel() for p in hf.parameters()) / 1e9:.2f}B parameters, experts implementation "
             f"{getattr(hf.config, '_experts_implementation', None)!r}",
             f"- batch {args.batch} x {args.seq}, {args.reps} paired repetitions, median plain forward "
             f"{statistics.median(plain_times) * 1000:.1f} ms, peak memory "
             f"{(torch.cuda.max_memory_allocated() if device == 'cuda' else 0) / 2**30:.1f} GiB",
             "", "Target (not asserted): RouterRecord and steering <= 1.05x.", "",
             "| variant | median ratio | min - max |", "|---|---|---|"]
    for variant, values in ratios.items():
        lines.append(f"| {variant} | {statistics.median(values):.3f}x | {min(values):.3f} - {max(values):.3f} |")
    lines += ["", f"Total wall time {time.perf_counter() - started:.0f} s."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
