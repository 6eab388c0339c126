"""The paper's ablation design on the demo model: timing, and the verdicts with their evidence.

    python benchmarks/ablation_grid.py [--out benchmarks/ABLATION.md]

8 evaluation languages x 4 target languages x (baseline + early/middle/late bands) on the
bundled UDHR held-out split (texts cut to the model's 256-byte windows), each target's
exclusive experts chosen from the trained model's profile of the TRAIN split (never the texts
it is scored on), each cell also against 3 random expert sets of the same size in the same
layers. Writes a Markdown page with the bits-per-byte deltas, the per-language verdicts with
their bootstrap intervals and controls, and the wall time on this machine.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import moe_interp as mi
from moe_interp.demo import demo_corpus

EVAL = ("eng", "deu", "fra", "spa", "fin", "hun", "tur", "ind")
TARGETS = ("eng", "deu", "fin", "tur")
K = 4  # the paper keeps 15 of 128 experts per language: the same fraction of the demo model's 32


def _cell(row: object, name: str) -> str:
    return f"{getattr(row, name):+.4f} [{getattr(row, name + '_low'):+.4f}, {getattr(row, name + '_high'):+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ABLATION.md"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine stays fast)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = mi.zoo.demo_model()
    train = demo_corpus(list(EVAL), split="train")
    heldout = demo_corpus(list(EVAL), split="heldout")
    profile = mi.profile(model, train, progress=False)
    result = mi.ablation_grid(model, profile, heldout, EVAL, TARGETS, k=K, controls=3, progress=False)
    verdicts = result.verdicts()
    wall = time.perf_counter() - started
    spec = mi.describe(model)
    header = "| evaluated \\ ablated | " + " | ".join(f"{t}/{b}" for t, b in result.conditions) + " |"
    rule = "|---" * (len(result.conditions) + 1) + "|"
    rows = [f"| {lang} (base {result.baseline[lang]:.3f}) | " + " | ".join(f"{d:+.3f}" for d in result.delta[i]) + " |"
            for i, lang in enumerate(result.eval_languages)]
    table = ["| ablated | pairs | own | other languages | random sets | own - others | own - random | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r.language} | {r.pairs} | {_cell(r, 'own')} | {_cell(r, 'others')} | {_cell(r, 'control')} | "
              f"{_cell(r, 'own_minus_others')} | {_cell(r, 'own_minus_control')} | {r.verdict} |"
              for r in verdicts.itertuples()]
    specific = list(verdicts[verdicts.verdict == "language-specific"].language)
    finding = (f"Language-specific by the intervals (own effect above 0, above the other languages' and above random "
               f"same-size sets'): {len(specific)} of {len(verdicts)} ablated languages "
               f"({', '.join(specific) or 'none'}).")
    sizes = ", ".join(f"{t}/{b}: {n}" for (t, b), n in result.experts.items())
    text = "\n".join([
        "# Ablation grid on the demo model", "",
        f"Written by `python benchmarks/ablation_grid.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; model: {spec.num_experts} experts top-{spec.top_k}, "
        f"{len(spec.moe_layers)} MoE layers.", "",
        f"Grid: {len(EVAL)} evaluation languages x {len(TARGETS)} target languages x (baseline + 3 bands), plus 3 "
        f"random control sets per non-empty cell on the target's own texts; experts chosen on "
        f"{sum(len(v) for v in train.values())} train pieces, scored on {sum(len(v) for v in heldout.values())} "
        f"held-out pieces. Wall time including profiling: {wall:.0f} s.", "",
        f"Cells: change in mean bits/byte when the target's exclusive experts (k={K}, threshold 0.4, among the 8 "
        "languages) are rerouted in that band; positive = worse.", "",
        header, rule, *rows, "",
        f"Exclusive experts per (target, band): {sizes}.", "",
        "## Verdicts", "",
        "Per ablated language, mean over texts and bands, 95% percentile bootstrap intervals over texts (own and "
        "random sets paired on the same texts):", "",
        *table, "", finding, ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
