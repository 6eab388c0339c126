"""The paper's ablation design on the demo model: timing, and the verdicts with their evidence.

    python benchmarks/ablation_grid.py [--out benchmarks/ABLATION.md]

8 evaluation languages x 4 target languages x (baseline + 3 equal-width bands) on the bundled
UDHR held-out split (texts cut to the model's 256-byte windows), each target's exclusive
experts (exclusive among every profiled language) chosen from the trained model's profile of
the TRAIN split (never the texts it is scored on), each cell also against 20 usage-matched
random expert sets of the same size in the same layers. Writes a Markdown page with the
bits-per-byte deltas, the per-(language, band) verdicts with their intervals, same-family,
other-family and random-set comparators, and the wall time on this machine.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import moe_interp as mi
from moe_interp.experiments.demo import demo_corpus

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
    result = mi.ablation_grid(model, profile, heldout, EVAL, TARGETS, k=K, progress=False)
    verdicts = result.verdicts()
    wall = time.perf_counter() - started
    spec = mi.describe(model)
    header = "| evaluated \\ ablated | " + " | ".join(f"{t}/{b}" for t, b in result.conditions) + " |"
    rule = "|---" * (len(result.conditions) + 1) + "|"
    rows = [f"| {lang} (base {result.baseline[lang]:.3f}) | " + " | ".join(f"{d:+.3f}" for d in result.delta[i]) + " |"
            for i, lang in enumerate(result.eval_languages)]
    table = ["| ablated | band | pairs | own | same family | other families | own - same family | "
             "own - other families | random sets: mean (spread), p | verdict |", "|---" * 10 + "|"]
    table += [f"| {r.language} | {r.band} | {r.pairs} | {_cell(r, 'own')} | "
              f"{(r.same_family_languages + ' ' + _cell(r, 'same_family')) if r.same_family_languages else 'none'} | "
              f"{r.other_family_languages} {_cell(r, 'other_family')} | "
              f"{_cell(r, 'own_minus_same_family') if r.same_family_languages else '-'} | "
              f"{_cell(r, 'own_minus_other_family')} | {r.random:+.4f} ({r.random_low:+.4f} to {r.random_high:+.4f}), "
              f"p = {r.random_p:.3f} | {r.verdict} |" for r in verdicts.itertuples()]
    counts = verdicts.verdict.value_counts()
    finding = (f"Verdicts over {len(verdicts)} (language, band) cells: "
               + ", ".join(f"{v} {counts.get(v, 0)}" for v in mi.experiments.VERDICTS) + ".")
    sizes = ", ".join(f"{t}/{b}: {n}" for (t, b), n in result.experts.items())
    text = "\n".join([
        "# Ablation grid on the demo model", "",
        f"Written by `python benchmarks/ablation_grid.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; model: {spec.num_experts} experts top-{spec.top_k}, "
        f"{len(spec.moe_layers)} MoE layers.", "",
        f"Grid: {len(EVAL)} evaluation languages x {len(TARGETS)} target languages x (baseline + 3 bands), plus "
        f"{result.controls} usage-matched random control sets per non-empty cell on the target's own texts; experts "
        "chosen on "
        f"{sum(len(v) for v in train.values())} train pieces, scored on {sum(len(v) for v in heldout.values())} "
        f"held-out pieces. Wall time including profiling: {wall:.0f} s.", "",
        f"Cells: change in mean bits/byte when the target's exclusive experts (k={K}, threshold 0.4, "
        f"{result.exclusive_among()}) are rerouted in that band; positive = worse. Bands: "
        + ", ".join(f"{b} (layers {layers[0]}-{layers[-1]})" for b, layers in result.layers.items()) + ".", "",
        header, rule, *rows, "",
        f"Exclusive experts per (target, band): {sizes}.", "",
        "## Verdicts", "",
        "Per ablated language and band; how each column was made and the verdict rules, as "
        "`AblationResult.summary()` states them:", "",
        "\n>\n".join(f"> {line}" for line in result.summary().splitlines()[: -len(verdicts)]), "",
        *table, "", finding, ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
