"""The offline demo: the paper's pipeline on the bundled demo model, its random twin and the
bundled UDHR corpus, written as one HTML report (`moe-interp demo`); and the choice of torch
threads the `moe-interp` commands make."""

import dataclasses
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .datasets import udhr, udhr_languages
from .experiment import _paired_bootstrap, ablation_grid, steering_eval
from .profiling import profile
from .zoo import demo_model

__all__ = ["DemoResult", "choose_threads", "run_demo", "set_threads"]

MAX_BYTES = 256  # the demo model was trained on 256-byte windows
BOOTSTRAP = 20  # replicates of the family-agreement intervals (resampled held-out texts): rough, ~2 s each


def choose_threads() -> tuple[int, str]:
    """A torch thread count for this machine now, and why.

    `TORCH_NUM_THREADS` or `OMP_NUM_THREADS` when set; else the CPUs this process may run on
    (affinity and cgroup quota) minus the 1-minute load average, rounded, at least 1. More
    threads than idle cores makes torch's parallel kernels wait on each other: one profile
    took 1490 s with 2 threads on a busy 2-core machine and 120-290 s with 1.

    ```python
    >>> from moe_interp.demo import choose_threads
    >>> choose_threads()                      # with OMP_NUM_THREADS=1 set
    (1, 'OMP_NUM_THREADS=1')
    ```
    """
    for name in ("TORCH_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value), f"{name}={value}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = min(cpus, _cgroup_cpus() or cpus)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cpus, round(cpus - load)))
    return threads, f"{cpus} CPUs, load average {load:.1f}; choose with --threads N or TORCH_NUM_THREADS"


def _cgroup_cpus() -> int | None:
    """CPUs allowed by a cgroup v2 quota (`cpu.max`), rounded up; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def set_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's thread count: `threads`, or `choose_threads()` when None. Returns (count, why).

    ```python
    >>> from moe_interp.demo import set_threads
    >>> set_threads(2)
    (2, 'asked for')
    ```
    """
    import torch

    why = "asked for"
    if threads is None:
        threads, why = choose_threads()
    torch.set_num_threads(threads)
    return threads, why


def _pieces(corpus: dict, max_bytes: int = MAX_BYTES) -> dict:
    """Cut every text into pieces of at most `max_bytes` UTF-8 bytes, at character boundaries."""
    out = {}
    for lang, texts in corpus.items():
        pieces = []
        for text in texts:
            piece = ""
            for char in text:
                if len((piece + char).encode()) > max_bytes:
                    pieces.append(piece)
                    piece = ""
                piece += char
            if piece:
                pieces.append(piece)
        out[lang] = pieces
    return out


def _agreement(stats: Any) -> np.ndarray:
    """[ARI within Latin script, between/within-family JS within Latin script, ARI over all scripts]."""
    try:
        agreement = stats.family_agreement()
    except (KeyError, ValueError):  # languages outside the table, or one family only
        return np.full(3, np.nan)
    latin = agreement.by_script.get("Latn")
    if latin is None:
        return np.array([np.nan, np.nan, agreement.ari])
    return np.array([latin.ari, 1 / latin.ratio if latin.ratio else np.nan, agreement.ari])


def _with_interval(stats: Any, replicates: int) -> list[tuple[float, float, float]]:
    """`_agreement` with estimate +- 1.96 bootstrap standard errors over resampled held-out texts.

    Not percentile intervals: a resample repeats texts, which shifts ARI and the JS ratio
    (seen: the twin's ARI 0.260 with a percentile interval of [0.087, 0.217]); the spread of
    the replicates is still a fair measure of the uncertainty.
    """
    import torch

    estimate = _agreement(stats)
    if replicates < 2 or stats.item_count is None:
        return [(float(v), float("nan"), float("nan")) for v in estimate]
    ci = stats.bootstrap(lambda s: torch.as_tensor(_agreement(s)), n=replicates, seed=0)
    spread = 1.96 * np.nanstd(ci.samples.numpy(), axis=0, ddof=1)
    return [(float(v), float(v - d), float(v + d)) for v, d in zip(estimate, spread)]


def _cell(value: tuple[float, float, float], digits: int = 3) -> str:
    v, lo, hi = value
    if np.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if np.isnan(lo) else f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def ablation_rows(ablation: Any, samples: int = 2000) -> list[list[str]]:
    """Per evaluation language that is also a target: (layer, expert) pairs ablated, mean
    change in bits/byte when its own exclusive experts are ablated, when other targets' are,
    the difference with a paired bootstrap 95% interval over its held-out texts, what its
    experts' ablation does to the other evaluated languages, and a verdict."""
    frame = ablation.frame
    spread = ablation.specificity()
    rows = []
    for seed, lang in enumerate(ablation.eval_languages):
        mine = frame[frame.language == lang].pivot_table(index="item", columns="condition", values="bits_per_byte")
        own = [f"ablate:{t}:{b}" for t, b in ablation.conditions if t == lang]
        other = [f"ablate:{t}:{b}" for t, b in ablation.conditions if t != lang]
        if not own or not other:
            continue
        base = mine["baseline"].to_numpy()
        own_delta = mine[own].to_numpy().mean(1) - base
        other_delta = mine[other].to_numpy().mean(1) - base
        low, high, p = _paired_bootstrap(own_delta - other_delta, samples, seed)
        pairs = sum(n for (t, _), n in ablation.experts.items() if t == lang)
        others = spread[lang][1] if lang in spread else float("nan")
        if not pairs:
            verdict = "nothing ablated: no exclusive experts at this k"
        elif low > 0:
            verdict = ("language-specific" if own_delta.mean() > others
                       else "own experts hurt more, but they hurt other languages as much")
        else:
            verdict = "other languages' experts hurt more" if high < 0 else "no clear difference"
        rows.append([lang, str(pairs), f"{own_delta.mean():+.3f}", f"{other_delta.mean():+.3f}",
                     f"{(own_delta - other_delta).mean():+.3f} [{low:+.3f}, {high:+.3f}]", f"{others:+.3f}", verdict])
    return rows


def steering_rows(steering: Any) -> list[list[str]]:
    """Per steered language: gain in bits/byte with its 95% interval, p-value, steered pairs."""
    return [[row.language, f"{row.gain:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]", f"{row.p_value:.3f}",
             str(row.pairs)] for row in steering.table.itertuples()]


@dataclasses.dataclass
class DemoResult:
    """What `run_demo` wrote (`path`) and found (`findings`: one sentence each, with intervals).

    ```python
    >>> result = run_demo("report.html", languages=["eng", "deu", "fra", "spa"], quick=True)
    >>> print(result)                       # the findings, then where the report is
    ```
    """

    path: Path
    findings: list[str]

    def __str__(self) -> str:
        return "\n".join([*self.findings, f"report: {self.path}"])


def run_demo(out: str | os.PathLike = "report.html", languages: Sequence[str] | None = None,
             quick: bool = False, progress: bool = True, threads: int | str | None = None,
             log: Callable[[str], None] | None = None, bootstrap: int = BOOTSTRAP) -> DemoResult:
    """Profile the demo model and its random-init twin, analyse, ablate, steer; write a report.

    `languages` defaults to every language of the bundled corpus (312): family structure
    needs many languages per family. Unknown codes raise `KeyError` naming close matches
    (`"en"` -> `"eng"`). `threads`: torch threads, `"auto"` for `choose_threads()`, None to
    leave torch's setting. `log` receives one line per step (which model each progress bar
    belongs to); the findings are in the result. `bootstrap`: replicates of the family-agreement intervals.

    ```python
    >>> from moe_interp.demo import run_demo
    >>> result = run_demo("report.html", languages=["eng", "deu", "fra", "spa"], quick=True, log=print)
    >>> result.path
    PosixPath('report.html')
    ```
    """
    say = log or (lambda line: None)
    if threads is not None:
        count, why = set_threads(None if threads == "auto" else int(threads))
        say(f"{count} torch threads ({why})")
    if languages is not None:
        languages = list(languages)
        if not languages:
            raise ValueError("languages is empty; pass ISO 639-3 codes such as ['eng', 'deu'], or None for all "
                             f"{len(udhr_languages())} bundled languages")
    heldout = _pieces(udhr(languages, split="heldout"))  # unknown codes: KeyError with close matches
    dev = _pieces(udhr(languages, split="train"))
    if quick:
        heldout = {k: v[:4] for k, v in heldout.items()}
        dev = {k: v[-4:] for k, v in dev.items()}
    n = len(heldout)
    trained, twin = demo_model(), demo_model(trained=False)
    say(f"[1/5] profiling the trained demo model on {n} languages ({sum(map(len, heldout.values()))} held-out "
        f"pieces of <= {MAX_BYTES} bytes)")
    stats = profile(trained, heldout, batch_size=16, progress=progress)
    say("[2/5] profiling its random-init twin (same architecture and seed, untrained) on the same texts")
    twin_stats = profile(twin, heldout, batch_size=16, progress=progress)
    replicates = 0 if quick else bootstrap
    say(f"[3/5] family agreement of both, with {replicates} bootstrap replicates over texts")
    family, twin_family = _with_interval(stats, replicates), _with_interval(twin_stats, replicates)

    labels = ["family ARI within Latin script", "between/within-family JS within Latin script",
              "family ARI, all scripts"]
    findings = [f"{label}: trained {_cell(a)}, random-init twin {_cell(b)}"
                for label, a, b in zip(labels, family, twin_family)]
    parts = [
        "<p>The paper's pipeline (arXiv 2601.14050) on a tiny multilingual Qwen3-MoE trained on the bundled "
        "UDHR corpus, next to its random-init twin (same architecture and seed, untrained): any structure the "
        "twin shows too comes from the input bytes (scripts), not from learning. Intervals resample the "
        "held-out texts: family agreement +- 1.96 bootstrap standard errors (20 replicates), ablation and steering "
        "paired bootstrap 95% intervals.</p>",
        "<h2>Does routing follow language families?</h2>",
        report.table(["", "trained", "random-init twin"],
                     [[label, _cell(a), _cell(b)] for label, a, b in zip(labels, family, twin_family)]),
    ]

    evals = [l for l in ("eng", "deu", "fra", "spa", "fin", "hun", "tur", "ind") if l in heldout][: 4 if quick else 8]
    targets = [l for l in ("eng", "deu", "fin", "tur") if l in heldout][: 2 if quick else 4]
    if len(evals) >= 2 and targets:
        say(f"[4/5] layer-band ablation: exclusive experts of {', '.join(targets)} rerouted in each band, "
            f"bits/byte on {', '.join(evals)} (trained model)")
        # The paper keeps each language's top 15 of 128 experts; of the demo model's 16, the top 4
        # (more than the scaled default of 2, so that the bands differ in what they remove).
        ablation = ablation_grid(trained, stats, heldout, evals, targets, k=4, progress=progress)
        rows = ablation_rows(ablation)
        findings += [f"ablation, {r[0]} ({r[1]} pairs): own exclusive experts {r[2]} bits/byte, other languages' "
                     f"{r[3]}, difference {r[4]}; its experts cost the other languages {r[5]}: {r[6]}" for r in rows]
        parts += ["<h2>Layer-band ablation of language-exclusive experts</h2>",
                  "<p>Change in bits/byte (higher = worse) of each language when its own exclusive experts are "
                  "rerouted, averaged over the early, middle and late bands, against ablating the other target "
                  "languages' experts (paired bootstrap 95% interval over held-out texts), and what ablating its "
                  "experts does to the other evaluated languages: language-specific experts hurt their own "
                  "language more than the others.</p>",
                  report.table(["language", "(layer, expert) pairs ablated", "own experts ablated",
                                "others' experts ablated", "own - others [95% CI]", "its experts, other languages",
                                "verdict"], rows),
                  ablation.plot_ablation()]
    else:
        say("[4/5] layer-band ablation skipped (needs two of eng, deu, fra, spa, fin, hun, tur, ind)")
    steer_langs = [l for l in ("deu", "fra", "spa", "nld") if l in heldout and l != "eng"][: 2 if quick else 4]
    if "eng" in heldout and steer_langs:
        say(f"[5/5] steering {', '.join(steer_langs)} toward experts shared with eng: scale chosen on the train "
            "split, gains on the held-out split (trained model)")
        steering = steering_eval(trained, stats, dev, heldout, steer_langs, target="eng",
                                 scales=(0.0, 0.1, 0.5) if quick else (0.0, 0.05, 0.2, 0.5), k=8,
                                 progress=progress)
        rows = steering_rows(steering)
        findings += [f"steering toward eng (scale {steering.scale}, chosen on train): {r[0]} gains {r[1]} "
                     f"bits/byte, p = {r[2]}" for r in rows]
        parts += ["<h2>Routing-guided steering toward English-shared experts</h2>",
                  f"<p>Scale {steering.scale} chosen on the train split only (mean train bits/byte per scale: "
                  + html.escape(", ".join(f"{s}: {v:.4f}" for s, v in steering.dev_scores.items()))
                  + "). Gain = baseline - steered bits/byte on held-out texts (positive = better).</p>",
                  report.table(["language", "gain [95% CI]", "p", "steered (layer, expert) pairs"], rows),
                  steering.plot()]
    else:
        say("[5/5] steering skipped (needs eng and one of deu, fra, spa, nld)")

    parts = parts[:1] + [report.findings(findings)] + parts[1:]
    parts += [report.routing_summary(stats, "Trained demo model"), *report.routing_figures(stats),
              report.routing_summary(twin_stats, "Random-init twin"), report.routing_figures(twin_stats)[0]]
    return DemoResult(report.write_report(out, "moe_interp demo: multilingual routing of a tiny MoE", parts), findings)
