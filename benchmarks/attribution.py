"""Expert attribution on the shipped demo model: agreement with real single-expert drops, and cost.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/attribution.py [--out benchmarks/ATTRIBUTION.md] [--texts 6]

`mi.zoo.demo_model()` (8 MoE layers of 32 experts, top-2) on eng, deu and swh: the first
`--texts` pieces of each language's UDHR held-out split (`moe_interp.experiments.demo.demo_corpus`) that
have at least 150 bytes, each cut to at most `--bytes` bytes at a character boundary. One
process, one torch thread. Measures:

- agreement: every one of the 256 (layer, expert) cells dropped for real
  (`ExpertAttribution.validate` over all cells), against the estimates of each estimator
  (first order, and the path estimator with the settings below), per language and band
  (`AttributionCheck.agreement`: Spearman with a 95% percentile bootstrap interval, sign
  agreement and median estimate/real ratio on the cells with a real effect, the verdict);
- cost: each estimator against `mi.profile` over the same corpus, 3 alternating
  repetitions, medians of wall and CPU (process) time, in the same run; and the real
  ablation of every cell (the wall time of `validate` above);
- where the first order fails: the worst cells, and the loss along the drop path of the
  worst one (a torch hook on the experts module, no moe_interp);
- frequency: are the most-used experts the ones a language depends on?

Writes a Markdown report (default `benchmarks/ATTRIBUTION.md`) whose every number and
sentence is generated from this run.
"""

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import moe_interp as mi
from moe_interp.analysis import rank_correlation
from moe_interp.experiments._attribution_results import MIN_CELLS, MIN_EFFECT, MIN_LOW, MIN_SIGN
from moe_interp.experiments.demo import demo_corpus

LANGUAGES = ("eng", "deu", "swh")
TOP = 8  # experts per language in the top-k comparison
# (label, keyword arguments of mi.expert_attribution); the first path entry is the default
ESTIMATORS = (
    ("first order", {"method": "taylor"}),
    ("path, 2 layers a pass, midpoint (default)", {"method": "path"}),
    ("path, 1 layer a pass, midpoint", {"method": "path", "layers_per_pass": 1}),
    ("path, 1 layer a pass, 2 points", {"method": "path", "layers_per_pass": 1, "steps": 2}),
    ("path, all 8 layers in one pass, midpoint", {"method": "path", "layers_per_pass": 8}),
)
OWN_PATH_CELLS = 24  # middle-band cells whose own single-expert path is taken, one pass each


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "moe_interp", "benchmarks/attribution.py"],
                               cwd=root, capture_output=True, text=True).stdout
        files = [line[3:] for line in dirty.splitlines() if line.strip()]
        return sha.strip() + (f" (uncommitted changes in {', '.join(files)})" if files else "")
    except OSError:
        return "unknown"


def _cut(text: str, size: int) -> str:
    out = ""
    for char in text:
        if len((out + char).encode()) > size:
            break
        out += char
    return out


def _interval(rho: float, low: float, high: float) -> str:
    return "n/a" if np.isnan(rho) else f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]"


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


def _own_midpoint(model, texts: list, layer: int, expert: int) -> float:
    """The midpoint estimate along the cell's own drop path: the slope of the mean bits per
    byte of `texts` in the factor of `expert`'s routing weight at `layer` alone, at factor
    1/2 (every other weight as in the model), times -1: `-d/dt L(w_e * (1/2 + t))`. A torch
    hook on the experts module and autograd, no moe_interp; texts one at a time."""
    experts = model._module.get_submodule(f"model.layers.{layer}.mlp.experts")
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def pre(module, args):
        mine = args[1] == expert
        return args[0], args[1], torch.where(mine, args[2] * (0.5 + t).to(args[2].dtype), args[2])
    hook = experts.register_forward_pre_hook(pre)
    total = 0.0
    try:
        with torch.enable_grad():
            for text in texts:
                ids = torch.tensor([model.tokenizer(text)["input_ids"]])
                logits = model._module(input_ids=ids, use_cache=False).logits.double()
                nll = -torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
                first = model.tokenizer.decode([int(ids[0, 0])]).encode()
                bits = nll / np.log(2) / (len(text.encode()) - len(first))
                total += float(torch.autograd.grad(bits, t)[0])
    finally:
        hook.remove()
    return -total / len(texts)


def _top_by(values: torch.Tensor, layers: tuple, n: int) -> mi.ExpertSet:
    order = torch.argsort(values.reshape(-1), descending=True, stable=True)[:n].tolist()
    picked: dict = {}
    for flat in order:
        picked.setdefault(layers[flat // values.shape[-1]], []).append(flat % values.shape[-1])
    return mi.ExpertSet(picked)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ATTRIBUTION.md"))
    parser.add_argument("--texts", type=int, default=6, help="held-out pieces per language")
    parser.add_argument("--bytes", type=int, default=200, help="each piece cut to at most this many bytes")
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions (alternating)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = mi.zoo.demo_model()
    spec = mi.describe(model)
    pieces = demo_corpus(list(LANGUAGES), split="heldout")
    corpus = {lang: [_cut(t, args.bytes) for t in texts if len(t.encode()) >= 150][: args.texts]
              for lang, texts in pieces.items()}
    small = {lang: v[:2] for lang, v in corpus.items()}
    mi.profile(model, small, progress=False)  # first traces check the model once: not part of the timing
    for _, kwargs in ESTIMATORS:
        mi.expert_attribution(model, small, progress=False, **kwargs)

    _log("timing")
    times: dict = {"profile": []} | {label: [] for label, _ in ESTIMATORS}
    attrs: dict = {}
    for rep in range(args.repeats):
        for what in times:
            wall, cpu = time.perf_counter(), time.process_time()
            if what == "profile":
                stats = mi.profile(model, corpus, batch_size=16, progress=False)
            else:
                attrs[what] = mi.expert_attribution(model, corpus, batch_size=16, progress=False,
                                                    **dict(ESTIMATORS)[what])
            times[what].append((time.perf_counter() - wall, time.process_time() - cpu))
        _log(f"timing repetition {rep + 1} of {args.repeats}: " + ", ".join(
            f"{what} {v[-1][0]:.2f} s" for what, v in times.items()))
    median = {what: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for what, v in times.items()}
    default = ESTIMATORS[1][0]
    attr = attrs[default]
    for label, a in attrs.items():
        assert torch.equal(stats.count, a.count), f"{label}: attribution and profile disagree on the routing counts"

    total = len(attr.layers) * attr.num_experts
    _log(f"real drops of all {total} cells (validate)")
    check = attr.validate(model, corpus, n=total, progress=True)
    _log(f"real drops done in {check.seconds:.0f} s")

    def check_of(a) -> mi.attribution.AttributionCheck:
        estimate = torch.tensor([[float(a.effect[a.language_index(lang), a.layers.index(l), e]) for l, e in check.cells]
                                 for lang in check.languages], dtype=torch.float64)
        return dataclasses.replace(check, estimate=estimate)

    checks = {label: check_of(a) for label, a in attrs.items()}
    tables = {label: c.agreement() for label, c in checks.items()}
    bands = ", ".join(f"{b} {list(v)}" for b, v in attr.meta["bands"].items())
    profile_w, profile_c = median["profile"]
    texts = sum(len(v) for v in corpus.values())
    lines = [
        "# Expert attribution on the shipped demo model", "",
        f"Written by `python benchmarks/attribution.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (1 torch thread, nice 5), torch {torch.__version__}, "
        f"commit {_commit()}, {time.strftime('%Y-%m-%d')}. Every number and sentence below is generated by the "
        "script from this run.", "",
        f"Model: `mi.zoo.demo_model()` ({len(spec.moe_layers)} MoE layers of {spec.num_experts} experts, top-"
        f"{spec.top_k}). Corpus: for each of {', '.join(LANGUAGES)}, the first {args.texts} pieces of the UDHR "
        f"held-out split (`demo_corpus`) of at least 150 bytes, cut to at most {args.bytes} bytes ({texts} texts, "
        f"{int(attr.tokens.sum())} tokens). Metric: mean bits per byte over texts (as `mi.Experiment` reports). "
        "Mode: drop (the expert's routing weight set to 0 for the tokens that chose it, no renormalisation). "
        f"Bands (`describe(model).band`): {bands}.", "",
        "## Cost", "",
        f"Medians of {args.repeats} alternating repetitions in this process, batch size 16; CPU is this process's "
        "time (the machine's 2 cores were shared, so wall time also counts waiting). Passes per batch: "
        "forwards / backwards.", "",
        "| what | passes | wall | CPU | wall / profile | CPU / profile |", "|---|---|---|---|---|---|",
        f"| `mi.profile` | 1 / 0 | {profile_w:.2f} s | {profile_c:.2f} s | 1.0x | 1.0x |",
    ]
    for label, _ in ESTIMATORS:
        w, c = median[label]
        passes = attrs[label].meta["passes"]
        lines.append(f"| {label} | {passes['forward']} / {passes['backward']} | {w:.2f} s | {c:.2f} s | "
                     f"{w / profile_w:.1f}x | {c / profile_c:.1f}x |")
    lines += [
        f"| real drop of every expert ({total} cells + baseline, `validate`, batch 16) | {total + 1} / 0 | "
        f"{check.seconds:.0f} s | | {check.seconds / profile_w:.0f}x | |", "",
        "Repetitions (wall, s): " + "; ".join(f"{what} {', '.join(f'{w:.2f}' for w, _ in v)}"
                                             for what, v in times.items()) + ".", "",
    ]

    rule = (f"An effect cell is a used cell whose real effect is at least {MIN_EFFECT:g} bits/byte in size; no "
            f"correlation is reported over fewer than {MIN_CELLS} of them (\"too few cells\"). \"reliable\": the "
            f"interval's lower end >= {MIN_LOW:g} and the sign right on >= {MIN_SIGN:.0%} of the effect cells "
            "(`AttributionCheck.agreement`).")
    lines += [
        "## Agreement with real single-expert drops", "",
        f"All {total} (layer, expert) cells dropped for real on every language; cells a language never routed to "
        "(both effects exactly 0) are left out. Spearman rank correlation of estimated and real Δ bits/byte over "
        "the used cells, 95% percentile bootstrap over cells (1000 resamples); sign: share of the effect cells "
        "whose estimate has the real sign; ratio: median estimate / real over the effect cells. " + rule, "",
        "### Middle band, per language", "",
        "| estimator | " + " | ".join(LANGUAGES) + " | all |", "|---" * (len(LANGUAGES) + 2) + "|",
    ]
    for label, table in tables.items():
        cells = []
        for lang in [*LANGUAGES, "all"]:
            r = table[(table.language == lang) & (table.band == "middle")].iloc[0]
            cells.append(f"{_interval(r.spearman, r.low, r.high)}, sign {r.sign:.2f}, ratio {r.ratio:.2f}: "
                         f"{r.verdict}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, table in tables.items():
        lines += [
            "", f"### {label}", "",
            "| language | band | cells | effect cells | Spearman [95% CI] | sign | ratio | verdict |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {r.language} | {r.band} | {r.cells} | {r.effect_cells} | {_interval(r.spearman, r.low, r.high)} | "
              f"{r.sign:.2f} | {r.ratio:.2f} | {r.verdict} |" for r in table.itertuples()],
        ]
    lines.append("")

    _log("where the first order fails")
    frame = checks["first order"].to_pandas()
    used = frame[frame["count"] > 0].copy()
    path_frame = checks[default].to_pandas()
    used["path"] = path_frame.loc[used.index, "estimate"]
    big = used[used.real.abs() >= MIN_EFFECT]
    wrong = {label: int((np.sign(c.to_pandas().loc[big.index, "estimate"]) != np.sign(big.real)).sum())
             for label, c in checks.items()}
    worst = used.assign(error=(used.estimate - used.real).abs()).sort_values("error", ascending=False).head(6)
    lines += [
        "## Where the first order fails", "",
        f"Cells with a real effect (|real| >= {MIN_EFFECT:g}): {len(big)} (all languages and bands). Estimates of "
        "the wrong sign among them: " + ", ".join(f"{label} {n}" for label, n in wrong.items()) + ". The largest "
        "first-order errors:", "",
        "| language | layer | expert | band | first order | path (default) | real |", "|---|---|---|---|---|---|---|",
        *[f"| {r.language} | {r.layer} | {r.expert} | {r.band} | {r.estimate:+.4f} | {r.path:+.4f} | {r.real:+.4f} |"
          for r in worst.itertuples()], "",
    ]
    cell = worst.iloc[0]
    steps = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    curve = [_scaled(model, corpus[cell.language], int(cell.layer), int(cell.expert), 1 - s) for s in steps]
    assert abs(curve[-1] - curve[0] - cell.real) < 1e-3, "the hook's drop disagrees with ExpertAblate's"
    lines += [
        f"Along the drop path of the worst cell ({cell.language}, layer {cell.layer}, expert {cell.expert}): its "
        "routing weight scaled by (1 - s), Δ bits/byte against s = 0 (s = 1 is the drop; the first-order estimate "
        "is the slope at s = 0, the midpoint estimate the slope at s = 0.5 with the layer's other weights halved "
        "too):", "",
        "| s | " + " | ".join(f"{s:g}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|",
        "| Δ bits/byte | " + " | ".join(f"{v - curve[0]:+.4f}" for v in curve) + " |", "",
    ]

    _log("own paths")
    middle = [row for row in used.itertuples() if row.band == "middle"]
    picks = np.random.default_rng(0).choice(len(middle), size=min(OWN_PATH_CELLS, len(middle)), replace=False)
    rows = [middle[int(k)] for k in sorted(picks)]
    own = [_own_midpoint(model, corpus[r.language], int(r.layer), int(r.expert)) for r in rows]
    per_layer = checks["path, 1 layer a pass, midpoint"].to_pandas()
    compared = {"own path, midpoint": own, "path, 1 layer a pass, midpoint": [per_layer.loc[r.Index, "estimate"]
                                                                              for r in rows],
                default: [path_frame.loc[r.Index, "estimate"] for r in rows], "first order": [r.estimate for r in rows]}
    real_rows = [r.real for r in rows]
    lines += [
        "## Each expert's own path, or its layer's?", "",
        f"A single drop's own path scales one expert's weight; the path estimator scales all of its layer's weights "
        f"together (one pass per layer, not per expert). On {len(rows)} used middle-band cells drawn at random "
        "(seed 0, pooled over languages), the midpoint along each cell's own path (a torch hook and autograd, one "
        "pass per cell) against the estimators, Spearman with the real drops over these cells:", "",
        "| estimate | Spearman [95% CI] | median |estimate - real| |", "|---|---|---|",
        *[f"| {label} | {_interval(*rank_correlation(values, real_rows))} | "
          f"{float(np.median(np.abs(np.array(values) - np.array(real_rows)))):.4f} |" for label, values in compared.items()],
        "",
    ]

    _log("frequency")
    freq = attr.frequency()
    versus = attr.versus_frequency()
    lines += [
        "## Are the most-used experts the ones a language depends on?", "",
        "Spearman rank correlation over the used cells of each language, 95% bootstrap intervals: routing frequency "
        "against the real drop effect, the default estimate against the same real effect, and frequency against "
        f"the estimate over all {total} cells (`versus_frequency`; top overlap: share of the top "
        f"{max(1, total // 10)} cells by estimate that are also top by frequency).", "",
        "| language | frequency vs real | estimate vs real | frequency vs estimate (all cells) | top overlap |",
        "|---|---|---|---|---|",
    ]
    path_used = path_frame[path_frame["count"] > 0].copy()
    path_used["frequency"] = [float(freq[attr.language_index(r.language), attr.layers.index(r.layer), r.expert])
                              for r in path_used.itertuples()]
    for lang in LANGUAGES:
        part = path_used[path_used.language == lang]
        row = versus[versus.language == lang].iloc[0]
        lines.append(f"| {lang} | {_interval(*rank_correlation(part.frequency, part.real))} | "
                     f"{_interval(*rank_correlation(part.estimate, part.real))} | "
                     f"{_interval(row.spearman, row.low, row.high)} | {row.top_overlap:.2f} |")
    rng = np.random.default_rng(0)
    grid = {"baseline": [], f"random {TOP}": [mi.ExpertAblate(_top_by(torch.tensor(rng.random(
        (len(attr.layers), attr.num_experts))), attr.layers, TOP), mode="drop")]}
    for lang in LANGUAGES:
        i = attr.language_index(lang)
        grid[f"{lang}: top {TOP} by estimate"] = [mi.ExpertAblate(attr.top(lang, TOP), mode="drop")]
        grid[f"{lang}: top {TOP} by frequency"] = [mi.ExpertAblate(_top_by(freq[i], attr.layers, TOP), mode="drop")]
    result = mi.Experiment(model, corpus, grid, batch_size=16, progress=False).run()
    mean = result.groupby(["condition", "language"]).bits_per_byte.mean()
    lines += [
        "", f"Real effect (Δ bits/byte, drop) of ablating {TOP} experts chosen per language (by the default estimate, "
        "by routing frequency, or at random), evaluated on every language:", "",
        "| ablated | " + " | ".join(LANGUAGES) + " |", "|---" * (len(LANGUAGES) + 1) + "|",
        *[f"| {cond} | " + " | ".join(f"{mean[(cond, l)] - mean[('baseline', l)]:+.3f}" for l in LANGUAGES) + " |"
          for cond in grid if cond != "baseline"], "",
    ]

    lines += ["## Reading (generated from the numbers above)", ""]
    first, path = tables["first order"], tables[default]
    for lang in [*LANGUAGES, "all"]:
        a = first[(first.language == lang) & (first.band == "middle")].iloc[0]
        b = path[(path.language == lang) & (path.band == "middle")].iloc[0]
        lines.append(f"- Middle band, {lang}: first order {_interval(a.spearman, a.low, a.high)} ({a.verdict}), "
                     f"default path {_interval(b.spearman, b.low, b.high)} ({b.verdict}; sign {b.sign:.2f}, "
                     f"ratio {b.ratio:.2f}).")
    for band in attr.meta["bands"]:
        if band == "middle":
            continue
        verdicts = {label: ", ".join(f"{r.language} {r.verdict}" for r in t[t.band == band].itertuples()
                                     if r.language != "all") for label, t in tables.items()}
        lines.append(f"- {band.capitalize()} band: " + "; ".join(f"{label}: {v}" for label, v in verdicts.items())
                     + ".")
    w_path, _ = median[default]
    lines += [
        f"- Cost: the default path estimate took {w_path / profile_w:.1f}x the wall time of `mi.profile` "
        f"({median[default][1] / profile_c:.1f}x its CPU time); the real drop of every expert took "
        f"{check.seconds / w_path:.0f}x the default estimate.",
        f"- Run time of this script: {(time.perf_counter() - started) / 60:.1f} min.", "",
    ]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
