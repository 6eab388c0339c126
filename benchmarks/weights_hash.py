"""What keying a resumable result by its model costs: `python benchmarks/weights_hash.py`.

Times the weights' content key both ways (`model_parts(model, weights="full")`: XXH3-128 of
every byte; `"sampled"`: a strided sample of 4096 elements per tensor), the tokenizer's key,
and one plain forward over a typical batch (16 rows of 256 tokens, `mi.profile`'s default
batch size over the demo corpus's 256-byte pieces), on the tiny test model and the bundled
demo model; then the full hash's throughput on a 512 MiB tensor (one thread and every
thread) and what that means for a 7B model's bytes. Writes the "Weights hash" section of
benchmarks/RESULTS.md (between its markers; the rest of the file is kept).
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch

import moe_interp as mi
from moe_interp.core._fingerprint import model_parts, tokenizer_fingerprint

HERE = Path(__file__).resolve().parent
START, END = "<!-- weights hash: written by benchmarks/weights_hash.py -->", "<!-- end weights hash -->"


def _median_s(call, reps: int) -> float:
    call()  # warm
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _threads(n: int, call) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return call()
    finally:
        torch.set_num_threads(before)


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    from moe_interp.experiments.demo import demo_corpus

    pieces = [t for texts in demo_corpus(["eng", "deu", "fra", "rus"], split="train").values() for t in texts][:16]
    cores = torch.get_num_threads()
    load_start = os.getloadavg()
    rows = []
    for label, model in (("tiny qwen3_moe (mi.zoo.tiny_model)", mi.zoo.tiny_model("qwen3_moe")),
                         ("demo model (mi.zoo.demo_model)", mi.zoo.demo_model())):
        hf, tok = model._module, model.tokenizer
        batch = tok(pieces, return_tensors="pt", padding=True)

        def forward():
            with torch.no_grad():
                hf(**batch)
        rows.append({
            "model": label, "bytes": _nbytes(hf), "tokens": int(batch["attention_mask"].sum()),
            "shape": tuple(batch["input_ids"].shape),
            "full_1": _threads(1, lambda: _median_s(lambda: model_parts(model, "full"), args.reps)),
            "full_n": _median_s(lambda: model_parts(model, "full"), args.reps),
            "sampled": _median_s(lambda: model_parts(model, "sampled"), args.reps),
            "tokenizer": _median_s(lambda: tokenizer_fingerprint(tok), args.reps),
            "forward": _median_s(forward, args.reps)})
    big = torch.nn.Module()
    big.register_buffer("w", torch.randint(0, 255, (512 << 20,), dtype=torch.uint8))
    rate_1 = (512 << 20) / _threads(1, lambda: _median_s(lambda: model_parts(big, "full"), 3))
    rate_n = (512 << 20) / _median_s(lambda: model_parts(big, "full"), 3)
    sampled_big = _median_s(lambda: model_parts(big, "sampled"), 3)
    load_end = os.getloadavg()

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    lines = [START, "## Weights hash: what a content key costs", "",
             f"`python benchmarks/weights_hash.py` (code {_commit()}, {datetime.datetime.now():%Y-%m-%d %H:%M}; "
             f"{cpu}, {os.cpu_count()} cores, {cores} torch threads, torch {torch.__version__}; load average "
             f"{' '.join(f'{v:.2f}' for v in load_start)} at start, {' '.join(f'{v:.2f}' for v in load_end)} at end: "
             "a shared machine, medians of "
             f"{args.reps}). `model_parts` keys a `mi.profile` checkpoint and each `Experiment` run: the weights "
             "by every byte (`full`, the default: XXH3-128 of each 64 MiB piece, in `torch.get_num_threads()` threads, "
             "the digests combined by sha256) or "
             "by a strided sample of 4096 elements per tensor (`sampled`); the time includes the config and the "
             "tokenizer's key (the tokenizer alone in its own column: its definition plus a behavioural probe). "
             "Forward: one plain HF forward, `torch.no_grad()`, over 16 of the demo corpus's 256-byte pieces.", "",
             f"| model | weights | full key, 1 thread |{f' full key, {cores} threads |' if cores > 1 else ''} "
             "sampled key | tokenizer key | one forward (batch) | full key / forward |",
             "|---|---|---|" + ("---|" if cores > 1 else "") + "---|---|---|---|"]
    for r in rows:
        many = f" {ms(r['full_n'])} |" if cores > 1 else ""
        lines.append(f"| {r['model']} | {r['bytes'] / 2**20:.1f} MiB | {ms(r['full_1'])} |{many} {ms(r['sampled'])} | "
                     f"{ms(r['tokenizer'])} | {ms(r['forward'])} ({r['shape'][0]} x {r['shape'][1]}, {r['tokens']} "
                     f"tokens) | {r['full_n'] / r['forward']:.2f}x |")
    seven = 7e9 * 2  # a 7B-parameter model in bf16
    threads = (f"**{rate_n / 1e9:.2f} GB/s** with {cores} threads" if cores > 1 else
               "only 1 torch thread in this run (OMP_NUM_THREADS=1 on a shared machine; pieces hash in parallel "
               "with more)")
    lines += ["", f"Full hash throughput on a 512 MiB tensor: **{rate_1 / 1e9:.2f} GB/s** with 1 thread, {threads} "
              f"(the sampled key of the same tensor: {ms(sampled_big)}). At {rate_1 / 1e9:.2f} GB/s a 7B-parameter "
              f"model in bf16 (14 GB) takes **{seven / rate_1:.1f} s** on one core (an estimate from this rate: not "
              "measured here, nor the copy of GPU-resident weights to the host, in 64 MiB pieces; the key hashed "
              "by sha256 before, at 1.1 GB/s here).", "",
              "Where it becomes expensive (estimates from these rates): the full key is one pass over the weights' "
              "bytes. On a CPU that is well under one forward over a batch (measured above: "
              f"{min(r['full_1'] / r['forward'] for r in rows):.2f}-{max(r['full_1'] / r['forward'] for r in rows):.2f}x; "
              "a 7B dense model's forward over 4096 tokens is ~57 TFLOP, minutes on a CPU, against "
              f"~{seven / rate_1:.1f} s of hashing). On a GPU the same forward takes ~0.1-0.3 s, so the key of a 7B "
              f"model costs ~{seven / rate_1 / 0.3:.0f}-{seven / rate_1 / 0.1:.0f} such forwards on one core: noise "
              "against a `mi.profile` of thousands of batches, more against an `Experiment` of a few short texts "
              "per cell (`steering_eval` keys one `Experiment` per language and scale, `ablation_grid` one per "
              "target, each with the full hash), and it grows with the model's bytes (a 47B Mixtral, 94 GB: "
              f"~{94e9 / rate_1:.0f} s on one core). `mi.profile(..., weights_hash=\"sampled\")` and "
              "`Experiment(..., weights_hash=\"sampled\")` read a fixed 4096 elements per tensor instead, blind "
              "to an edit that touches none of them, e.g. one row of an embedding with more than 4096 rows "
              "(tests/test_fingerprint.py makes such an edit).", END]
    section = "\n".join(lines)
    text = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: section, text, flags=re.S) if START in text \
        else text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
