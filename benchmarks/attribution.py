"""Expert attribution on the demo model: agreement with real single-expert drops, and cost.

    python benchmarks/attribution.py [--out benchmarks/ATTRIBUTION.md] [--cells 128]

Three languages of the bundled UDHR held-out split (texts cut to the model's 256-byte
windows). Measures, in one process on one torch thread:

- cost: `mi.expert_attribution` against `mi.profile` over the same corpus (median of 3
  alternating repetitions) and against real drop ablations of every expert (`validate`
  over all 128 cells: its wall time is that cost, measured, not extrapolated);
- agreement: Spearman rank correlation of estimated and real single-expert drop effects
  per language and band, with 95% bootstrap intervals over cells;
- frequency: are the most-used experts the ones a language depends on? Rank correlation of
  routing frequency with the real effects (and with the estimates), and the real effect of
  dropping each language's top experts chosen by attribution, by frequency, or at random;
- where the linear estimate fails: the cells with the largest errors, and the loss along the
  path from the model to the drop for the worst of them.

Writes a Markdown report (default `benchmarks/ATTRIBUTION.md`).
"""

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import moe_interp as mi
from moe_interp.attribution import rank_correlation
from moe_interp.demo import demo_corpus

LANGUAGES = ("eng", "swh", "cmn")
TOP = 8  # experts per language in the top-k comparison (of 8 layers x 16 experts)


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "moe_interp"], cwd=root, capture_output=True,
                               text=True).stdout
        return sha.strip() + (" (with uncommitted changes in moe_interp/)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _interval(rho: float, low: float, high: float) -> str:
    return "n/a (< 3 cells)" if np.isnan(rho) else f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]"


def _scaled(model, texts: list, layer: int, expert: int, factor: float) -> float:
    """Mean bits per byte of `texts` with `expert`'s routing weight at `layer` times `factor`
    (a torch hook on the demo model's experts module, which receives (hidden, indices, weights))."""
    experts = model._module.get_submodule(f"model.layers.{layer}.mlp.experts")
    hook = experts.register_forward_pre_hook(
        lambda module, args: (args[0], args[1], torch.where(args[1] == expert, args[2] * factor, args[2])))
    try:
        rows = mi.evaluate.text_nll(model, texts, batch_size=16)
    finally:
        hook.remove()
    return sum(r["bits_per_byte"] for r in rows) / len(rows)


def _top_by(values: torch.Tensor, layers: tuple, n: int) -> mi.ExpertSet:
    order = torch.argsort(values.reshape(-1), descending=True, stable=True)[:n].tolist()
    picked: dict = {}
    for flat in order:
        picked.setdefault(layers[flat // values.shape[-1]], []).append(flat % values.shape[-1])
    return mi.ExpertSet(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ATTRIBUTION.md"))
    parser.add_argument("--cells", type=int, default=128, help="cells to ablate for real (128 = every expert)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = mi.zoo.demo_model()
    corpus = demo_corpus(list(LANGUAGES), split="heldout")
    texts = sum(len(v) for v in corpus.values())
    small = {lang: v[:2] for lang, v in corpus.items()}
    mi.profile(model, small, progress=False)  # first traces check the model once: not part of the timing
    mi.expert_attribution(model, small, progress=False)

    times = {"profile": [], "attribution": []}
    for _ in range(3):
        stats, seconds = _timed(lambda: mi.profile(model, corpus, batch_size=16, progress=False))
        times["profile"].append(seconds)
        attr, seconds = _timed(lambda: mi.expert_attribution(model, corpus, batch_size=16, progress=False))
        times["attribution"].append(seconds)
    profile_s, attribution_s = (statistics.median(times[k]) for k in ("profile", "attribution"))
    assert torch.equal(stats.count, attr.count), "attribution and profile disagree on the routing counts"

    total = len(attr.layers) * attr.num_experts
    check = attr.validate(model, corpus, n=args.cells, progress=True)
    per_cell = check.seconds / (len(check.cells) + 1)  # the baseline is one more condition
    every_s = check.seconds if len(check.cells) == total else per_cell * (total + 1)
    table = check.agreement()
    frame = check.to_pandas()
    used = frame[frame["count"] > 0].copy()
    freq = attr.frequency()
    used["frequency"] = [float(freq[attr.language_index(r.language), attr.layers.index(r.layer), r.expert])
                         for r in used.itertuples()]

    lines = [
        "# Expert attribution on the demo model", "",
        f"Written by `python benchmarks/attribution.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (1 torch thread), torch {torch.__version__}, commit {_commit()}, "
        f"{time.strftime('%Y-%m-%d')}.", "",
        f"Corpus: UDHR held-out split of {', '.join(LANGUAGES)}, cut into <= 256-byte pieces ({texts} texts, "
        f"{int(attr.tokens.sum())} tokens). Metric: mean bits per byte over texts (as `mi.Experiment` reports). "
        f"Mode: drop (the expert's routing weight set to 0 for the tokens that chose it, no renormalisation).", "",
        "## Cost", "",
        "| what | wall time | ratio |", "|---|---|---|",
        f"| `mi.profile` (batch 16) | {profile_s:.2f} s | 1.00x |",
        f"| `mi.expert_attribution` (batch 16) | {attribution_s:.2f} s | {attribution_s / profile_s:.2f}x profile |",
        f"| real drop ablation of every expert ({total} cells + baseline, `validate`, batch 16) | {every_s:.0f} s"
        f"{'' if len(check.cells) == total else ' (extrapolated)'} | {every_s / attribution_s:.0f}x attribution |",
        "", f"Repetitions (s): profile {', '.join(f'{t:.2f}' for t in times['profile'])}; attribution "
        f"{', '.join(f'{t:.2f}' for t in times['attribution'])}. Target: attribution <= 3x profile.", "",
        "## Agreement with real single-expert drops", "",
        f"{len(check.cells)} (layer, expert) cells ablated for real on every language; cells a language never routed "
        "to (both effects exactly 0) are left out. Spearman rank correlation of estimated and real Δ bits/byte, "
        "95% percentile bootstrap over cells (1000 resamples). Bands as `MoESpec.band`: "
        f"{', '.join(f'{b} {list(v)}' for b, v in attr.meta['bands'].items())}.", "",
        "| language | band | cells | Spearman [95% CI] |", "|---|---|---|---|",
        *[f"| {r.language} | {r.band} | {int(r.cells)} | {_interval(r.spearman, r.low, r.high)} |"
          for r in table.itertuples()], "",
    ]
    wrong_sign = used[(used.real.abs() > 1e-3)]
    wrong_sign = wrong_sign[np.sign(wrong_sign.real) != np.sign(wrong_sign.estimate)]
    worst = used.assign(error=(used.estimate - used.real).abs()).sort_values("error", ascending=False).head(6)
    big = used[used.real.abs() > 1e-2]
    ratio = (big.estimate / big.real).median() if len(big) else float("nan")
    lines += [
        "### Where the linear estimate fails", "",
        f"Cells with a real effect above 0.01 bits/byte: {len(big)}; their median estimate/real ratio is "
        f"{ratio:.2f}. Cells with |real| > 0.001 whose estimate has the wrong sign: {len(wrong_sign)} of "
        f"{int((used.real.abs() > 1e-3).sum())}. The largest errors:", "",
        "| language | layer | expert | band | frequency | estimate | real |", "|---|---|---|---|---|---|---|",
        *[f"| {r.language} | {r.layer} | {r.expert} | {r.band} | {r.frequency:.3f} | {r.estimate:+.4f} | "
          f"{r.real:+.4f} |" for r in worst.itertuples()], "",
    ]
    cell = worst.iloc[0]
    steps = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    path = [_scaled(model, corpus[cell.language], int(cell.layer), int(cell.expert), 1 - s) for s in steps]
    assert abs(path[-1] - path[0] - cell.real) < 1e-3, "the hook's drop disagrees with ExpertAblate's"
    lines += [
        f"Along the path for the worst cell ({cell.language}, layer {cell.layer}, expert {cell.expert}): its routing "
        "weight scaled by (1 - s), Δ bits/byte against s = 0 (s = 1 is the drop; the estimate is the slope at 0 "
        "times 1):", "",
        "| s | " + " | ".join(f"{s:g}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|",
        "| Δ bits/byte | " + " | ".join(f"{v - path[0]:+.4f}" for v in path) + " |", "",
    ]

    versus = attr.versus_frequency()
    lines += [
        "## Are the most-used experts the ones a language depends on?", "",
        "Spearman rank correlation over the used cells of each language, 95% bootstrap intervals: routing frequency "
        "against the real drop effect, the attribution estimate against the same real effect, and frequency "
        f"against the estimate over all {total} cells (`versus_frequency`; `top_overlap`: share of the top "
        f"{max(1, total // 10)} cells by estimate that are also top by frequency).", "",
        "| language | frequency vs real | estimate vs real | frequency vs estimate (all cells) | top overlap |",
        "|---|---|---|---|---|",
    ]
    for lang in LANGUAGES:
        part = used[used.language == lang]
        row = versus[versus.language == lang].iloc[0]
        lines.append(f"| {lang} | {_interval(*rank_correlation(part.frequency, part.real))} | "
                     f"{_interval(*rank_correlation(part.estimate, part.real))} | "
                     f"{_interval(row.spearman, row.low, row.high)} | {row.top_overlap:.2f} |")

    rng = np.random.default_rng(0)
    grid = {"baseline": [], f"random {TOP}": [mi.ExpertAblate(_top_by(torch.tensor(rng.random((len(attr.layers),
                                                                                                attr.num_experts))),
                                                                       attr.layers, TOP), mode="drop")]}
    for lang in LANGUAGES:
        i = attr.language_index(lang)
        grid[f"{lang}: top {TOP} by attribution"] = [mi.ExpertAblate(attr.top(lang, TOP), mode="drop")]
        grid[f"{lang}: top {TOP} by frequency"] = [mi.ExpertAblate(_top_by(freq[i], attr.layers, TOP), mode="drop")]
    result = mi.Experiment(model, corpus, grid, batch_size=16, progress=False).run()
    mean = result.groupby(["condition", "language"]).bits_per_byte.mean()
    lines += [
        "", f"Real effect (Δ bits/byte, drop) of ablating {TOP} experts chosen per language, evaluated on every "
        "language: a choice that captures what a language depends on hurts that language most.", "",
        "| ablated | " + " | ".join(LANGUAGES) + " |", "|---" * (len(LANGUAGES) + 1) + "|",
        *[f"| {cond} | " + " | ".join(f"{mean[(cond, l)] - mean[('baseline', l)]:+.3f}" for l in LANGUAGES) + " |"
          for cond in grid if cond != "baseline"], "",
    ]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
