"""The offline demo: the paper's pipeline on the bundled demo model, with its controls (random-init
twins, a byte n-gram baseline, random expert sets) and intervals next to every number, written as
one HTML report (`moe-interp demo`); and the choice of torch threads the `moe-interp` commands make.

Selection and evaluation never share texts: experts are chosen on a profile of the UDHR train
split (minus its last paragraphs), the steering scale on those last paragraphs (dev), and every
reported number is measured on the held-out split."""

import dataclasses
import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .analysis import family_evidence, ngram_stats
from .datasets import udhr
from .languages import info, script
from .experiment import ablation_grid, steering_eval
from .profiling import profile
from .zoo import DEMO_HUB, DEMO_LANGUAGES, DEMO_MODEL_DIR, _training_seed, demo_model

__all__ = ["DemoEvidence", "DemoResult", "choose_threads", "demo_corpus", "demo_evidence", "run_demo", "set_threads"]

MAX_BYTES = 256  # the demo model was trained on 256-byte windows
DEV_PARAGRAPHS = 3  # last paragraphs of each language's train split: the steering scale is chosen on them
TWINS = 3  # random-init twins: one twin cannot show how much a statistic varies across initialisations
# Languages of different families whose exclusive experts are ablated (each also evaluated);
# and languages steered toward the hub's shared experts (the paper steers toward English).
ABLATE = ("eng", "deu", "fin", "tur", "swh", "ind")
STEER = ("deu", "nld", "swe", "fra")
SCALES = (0.0, 0.25, 1.0, 4.0)
# `moe-interp demo` (run_demo) measures every claim and control of the model card with lighter
# settings, to fit ~3 minutes on 2 cores: experts chosen on 16 train pieces per language (of ~55),
# 100 bootstrap resamples and 500 label permutations (the card: all pieces, 200 and 1000).
# Measured on the shipped model: every verdict as the card's, about a fifth less CPU time (123 s vs 155 s).
DEMO_PICK_PIECES = 16
DEMO_REPLICATES = 100


def choose_threads() -> tuple[int, str]:
    """A torch thread count for this machine now, and why.

    `TORCH_NUM_THREADS` or `OMP_NUM_THREADS` when set; else the CPUs this process may run on
    (affinity and cgroup quota) minus the 1-minute load average, rounded, at least 1. More
    threads than idle cores makes torch's parallel kernels wait on each other: one profile
    took 1490 s with 2 threads on a busy 2-core machine and 120-290 s with 1.

    ```python
    >>> import os
    >>> from moe_interp.demo import choose_threads
    >>> os.environ["OMP_NUM_THREADS"] = "1"; os.environ.pop("TORCH_NUM_THREADS", None) and None
    >>> choose_threads()
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


def _pieces(corpus: Mapping[str, Sequence[str]], max_bytes: int = MAX_BYTES) -> dict:
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


def demo_corpus(languages: Sequence[str] | None = None, split: str = "heldout") -> dict[str, list[str]]:
    """UDHR texts as the demo model reads them: `{language: [piece, ...]}`, every paragraph of
    `split` cut into pieces of at most 256 bytes (its training windows) at character boundaries.
    `languages` defaults to the model's training languages (`zoo.DEMO_LANGUAGES`).

    ```python
    >>> from moe_interp.demo import demo_corpus
    >>> corpus = demo_corpus(["eng", "fin"], split="heldout")
    >>> max(len(p.encode()) for texts in corpus.values() for p in texts) <= 256, len(corpus["eng"]) > 12
    (True, True)

    ```
    """
    return _pieces(udhr(list(DEMO_LANGUAGES) if languages is None else languages, split=split))


def _families(languages: Sequence[str]) -> dict[str, str]:
    return {lang: info(lang).family for lang in languages}


def _latin(corpus: Mapping[str, Sequence[str]]) -> list[str]:
    """Languages whose texts are written in Latin script (detected from the texts themselves)."""
    return [lang for lang, texts in corpus.items() if script(list(texts)) == "Latn"]


def _splits(languages: Sequence[str], quick: bool, pick_pieces: int | None = None) -> dict[str, dict[str, list[str]]]:
    """`pick` (train split minus its last paragraphs: choosing experts; its first `pick_pieces`
    pieces per language when given), `dev` (those last paragraphs: choosing the steering scale)
    and `heldout` (reporting), as <= 256-byte pieces."""
    train = udhr(languages, split="train")  # unknown codes: KeyError with close matches
    pick = _pieces({l: t[:-DEV_PARAGRAPHS] for l, t in train.items()})
    if pick_pieces:  # spread over the articles, not the preamble alone
        pick = {l: [v[i * len(v) // n] for i in range(n)] for l, v in pick.items() for n in [min(pick_pieces, len(v))]}
    dev = _pieces({l: t[-DEV_PARAGRAPHS:] for l, t in train.items()})
    heldout = demo_corpus(languages, split="heldout")
    if quick:
        pick, dev, heldout = ({l: v[:n] for l, v in c.items()} for c, n in ((pick, 6), (dev, 2), (heldout, 4)))
    return {"pick": pick, "dev": dev, "heldout": heldout}


def _cell(value: tuple, digits: int = 3, sign: bool = False) -> str:
    """`estimate [low, high]`, or `n/a` when there is no estimate."""
    v, lo, hi = value[:3]
    if v is None or np.isnan(v):
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(v) if np.isnan(lo) else f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


@dataclasses.dataclass
class DemoEvidence:
    """Everything the demo measured, with its controls (see `demo_evidence`).

    **Fields:** `family` (`{"all": FamilyEvidence, "Latn": FamilyEvidence}`: middle-band
    family structure of the trained model against `TWINS` random-init twins and the byte
    bigram baseline, held-out texts), `ablation` (`AblationResult`, experts chosen on the
    train split, or None), `steering` (`SteeringResult`, or None), `stats` (the trained
    model's held-out `RoutingStats`), `twin_stats` (the first twin's), `seconds` (wall time
    per step), `languages`.

    `rows()` gives the claims, each with what was measured and the verdict the intervals
    support; `markdown()` the same as a Markdown table (the README's table is this output).
    """

    languages: tuple[str, ...]
    family: dict
    ablation: Any
    steering: Any
    stats: Any
    twin_stats: Any
    seconds: dict

    def family_rows(self) -> list[list[str]]:
        """Per language set and statistic: trained, each twin, the baseline, and the verdict."""
        rows = []
        names = {"ari": "family ARI", "between_within": "between/within-family JS"}
        for subset, ev in self.family.items():
            where = f"{len(ev.languages)} languages" + (", Latin script" if subset == "Latn" else "")
            twins = [m for m in ev.models if m.startswith("twin")]
            for statistic, name in names.items():
                controls = [*twins, *(["baseline"] if "baseline" in ev.models else [])]
                above = [m for m in controls if ev.difference(m, statistic)[1] > 0]
                worst = min(controls, key=lambda m: ev.difference(m, statistic)[1])
                verdict = ("above every twin and the byte-bigram baseline (difference intervals exclude 0)"
                           if len(above) == len(controls) else
                           f"not above {', '.join(m for m in controls if m not in above)}: trained - {worst} "
                           f"{_cell(ev.difference(worst, statistic), sign=True)}")
                p = float(ev.p_value[0, ev.statistics.index(statistic)])
                rows.append([f"{name}, {where}", f"{_cell(ev.interval('trained', statistic))} (permutation p = "
                             f"{p:.3g})", "; ".join(_cell(ev.interval(t, statistic)) for t in twins),
                             _cell(ev.interval("baseline", statistic)) if "baseline" in ev.models else "n/a",
                             verdict])
        return rows

    def ablation_rows(self) -> list[list[str]]:
        """Per ablated language: own effect, effect on the other languages, random same-size
        sets, the verdict (bits/byte change, positive = worse)."""
        if self.ablation is None:
            return []
        return [[f"ablating {r.language}'s exclusive experts ({r.pairs} pairs)",
                 _cell((r.own, r.own_low, r.own_high), 4, True), _cell((r.others, r.others_low, r.others_high), 4, True),
                 _cell((r.control, r.control_low, r.control_high), 4, True), r.verdict]
                for r in self.ablation.verdicts().itertuples()]

    def steering_rows(self) -> list[list[str]]:
        """Per steering scale: share of top-k sets changed, gate mass moved, gain with interval, verdict."""
        if self.steering is None:
            return []
        chosen = self.steering.scale
        return [[f"scale {r.scale:g}" + (" (chosen on dev)" if r.scale == chosen else ""),
                 f"{100 * r.changed:.1f}%", f"{r.mass_moved:+.3f}",
                 _cell((r.gain, r.gain_low, r.gain_high), 4, True), r.verdict]
                for r in self.steering.dose_response().itertuples()]

    def rows(self) -> list[list[str]]:
        """One table of every claim: `[claim, trained / effect, controls, verdict]`."""
        rows = [[claim, trained, f"twins {twins}; byte-bigram {base}", verdict]
                for claim, trained, twins, base, verdict in self.family_rows()]
        rows += [[claim, f"own {own}", f"other languages {others}; random sets {control}", verdict]
                 for claim, own, others, control, verdict in self.ablation_rows()]
        if self.steering is not None:
            langs = ", ".join(self.steering.table.language)
            rows += [[f"steering {langs} toward {DEMO_HUB}-shared experts, {scale}", f"gain {gain} bits/byte",
                      f"top-k sets changed {changed}, gate mass {mass}", verdict]
                     for scale, changed, mass, gain, verdict in self.steering_rows()]
        return rows

    def markdown(self) -> str:
        """The claims as a Markdown table (what the README shows).

        ```python
        >>> from moe_interp.demo import DemoEvidence
        >>> print(DemoEvidence(("eng",), {}, None, None, None, None, {}).markdown())
        | claim (held-out texts, 95% intervals) | trained model | controls | verdict |
        |---|---|---|---|

        ```
        """
        return report.markdown_table(["claim (held-out texts, 95% intervals)", "trained model", "controls", "verdict"],
                                     self.rows())


def demo_evidence(path: str | os.PathLike | None = None, languages: Sequence[str] | None = None,
                  quick: bool = False, twins: int = TWINS, replicates: int = 200, permutations: int = 1000,
                  pick_pieces: int | None = None, controls: int = 3, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> DemoEvidence:
    """Measure the demo's claims on the demo model (or the one trained into `path`).

    Family structure (middle band, held-out texts): `family_evidence` against `twins`
    random-init twins (the training seed, then seed + 1000, + 2000, ...) and the byte bigram
    baseline, over all languages and within Latin script. Ablation: each of `ABLATE`'s
    exclusive experts (chosen on the train split) rerouted per band, with random same-size
    sets as control (`AblationResult.verdicts`). Steering: `STEER` toward experts they share
    with the hub (chosen on the train split), the scale chosen on dev paragraphs, the
    dose-response over `SCALES` on held-out texts (`SteeringResult.dose_response`).

    The defaults are the model card's full settings. `pick_pieces`: choose experts on that
    many train pieces per language (evenly spaced; None: all, ~55), `controls`: random
    same-size expert sets per ablation, `replicates`/`permutations`: of the family statistics
    (x10 bootstrap resamples for ablation and steering intervals). `run_demo` lightens them.

    ```python
    >>> from moe_interp.demo import demo_evidence
    >>> ev = demo_evidence(languages=["eng", "deu", "nld", "fin", "ekk", "hun"], quick=True, twins=1,
    ...                    replicates=20, permutations=20, progress=False)
    >>> list(ev.family), ev.family["all"].models          # every language is Latin: no separate Latin row
    (['all'], ('trained', 'twin 1', 'baseline'))
    >>> ev.markdown().splitlines()[0]
    '| claim (held-out texts, 95% intervals) | trained model | controls | verdict |'

    ```
    """
    import time

    say = log or (lambda line: None)
    if languages is not None:
        languages = list(languages)
        if not languages:
            raise ValueError("languages is empty; pass ISO 639-3 codes such as ['eng', 'deu'], or None for the demo "
                             f"model's {len(DEMO_LANGUAGES)} languages")
    if isinstance(twins, bool) or not isinstance(twins, int) or twins < 1:
        raise ValueError(f"twins must be an integer >= 1 (random-init twins to compare with), got {twins!r}")
    languages = list(DEMO_LANGUAGES) if languages is None else languages
    splits = _splits(languages, quick, pick_pieces)
    heldout = splits["heldout"]
    seconds, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    trained = demo_model(path=path)
    seed = _training_seed(DEMO_MODEL_DIR if path is None else Path(path))
    say(f"profiling the trained model on {len(heldout)} languages ({sum(map(len, heldout.values()))} held-out "
        f"pieces of <= {MAX_BYTES} bytes) and on the train split (choosing experts)")
    stats = profile(trained, heldout, batch_size=16, progress=progress)
    picked = profile(trained, splits["pick"], batch_size=16, progress=progress)
    lap("profile trained")
    twin_stats = {}
    for i in range(twins):
        say(f"profiling random-init twin {i + 1}/{twins} (seed {seed + 1000 * i}) on the held-out texts")
        twin_stats[f"twin {i + 1}"] = profile(demo_model(trained=False, path=path, seed=seed + 1000 * i), heldout,
                                              batch_size=16, progress=progress)
    lap("profile twins")
    say(f"family structure, middle band: {replicates} paired resamples of the texts, {permutations} label permutations")
    families = _families(languages)
    baseline = ngram_stats(heldout, n=2)
    family = {}
    latin = _latin(heldout)
    for subset, langs in (("all", languages), ("Latn", latin if len(latin) < len(languages) else [])):
        if len(set(families[l] for l in langs)) >= 2:  # a subset of one family has no family structure
            family[subset] = family_evidence(stats.select(langs), families=families, layers="middle",
                                             twins=twin_stats, baseline=baseline, replicates=replicates,
                                             permutations=permutations)
    lap("family evidence")
    targets = [l for l in ABLATE if l in heldout][: 3 if quick else len(ABLATE)]
    ablation = None
    if len(targets) >= 2:
        say(f"ablation: exclusive experts of {', '.join(targets)} (chosen on the train split) rerouted per band, "
            "with random same-size sets; bits/byte on held-out texts")
        ablation = ablation_grid(trained, picked, heldout, targets, targets, controls=min(2, controls) if quick else controls,
                                 replicates=replicates * 10, progress=progress)
    lap("ablation")
    steer = [l for l in STEER if l in heldout and l != DEMO_HUB][: 2 if quick else len(STEER)]
    steering = None
    if DEMO_HUB in heldout and steer:
        say(f"steering {', '.join(steer)} toward experts shared with {DEMO_HUB}: scale chosen on dev paragraphs, "
            "dose-response on held-out texts")
        steering = steering_eval(trained, picked, splits["dev"], heldout, steer, target=DEMO_HUB,
                                 scales=SCALES[:3] if quick else SCALES, samples=replicates * 10, progress=progress)
    lap("steering")
    return DemoEvidence(tuple(languages), family, ablation, steering, stats, twin_stats["twin 1"], seconds)


@dataclasses.dataclass
class DemoResult:
    """What `run_demo` wrote (`path`), found (`findings`: one sentence each, with intervals)
    and measured (`evidence`, a `DemoEvidence`).

    ```python
    >>> from pathlib import Path
    >>> print(DemoResult(Path("report.html"), ["family ARI ..."], None))
    family ARI ...
    report: report.html

    ```
    """

    path: Path
    findings: list[str]
    evidence: Any = None

    def __str__(self) -> str:
        return "\n".join([*self.findings, f"report: {self.path}"])


def run_demo(out: str | os.PathLike = "report.html", languages: Sequence[str] | None = None,
             quick: bool = False, progress: bool = True, threads: int | str | None = None,
             log: Callable[[str], None] | None = None, replicates: int = DEMO_REPLICATES,
             pick_pieces: int | None = DEMO_PICK_PIECES) -> DemoResult:
    """Measure the demo's claims (`demo_evidence`) and write them as an HTML report.

    `languages` defaults to the demo model's 55 training languages (`zoo.DEMO_LANGUAGES`:
    six families, English as hub). Unknown codes raise `KeyError` naming close matches
    (`"en"` -> `"eng"`). `threads`: torch threads, `"auto"` for `choose_threads()`, None to
    leave torch's setting. `log` receives one line per step; the findings (every claim with
    its interval, controls and verdict) are in the result. Lighter than the model card's
    measurement, to fit ~3 minutes on 2 cores: `replicates` bootstrap resamples of the family
    statistics (x5 label permutations, x10 resamples for ablation and steering intervals),
    experts chosen on `pick_pieces` train pieces per language (None: all).

    ```python
    >>> from moe_interp.demo import run_demo
    >>> result = run_demo("report.html", languages=["eng", "deu", "nld", "fin", "ekk", "hun"], quick=True,
    ...                   progress=False, replicates=20)
    >>> result.path.name, len(result.findings) > 4
    ('report.html', True)

    ```
    """
    say = log or (lambda line: None)
    if threads is not None:
        count, why = set_threads(None if threads == "auto" else int(threads))
        say(f"{count} torch threads ({why})")
    ev = demo_evidence(languages=languages, quick=quick, replicates=replicates, permutations=5 * replicates,
                       pick_pieces=pick_pieces, progress=progress, log=say)
    findings = [f"{claim}: {trained}; {controls}: {verdict}" for claim, trained, controls, verdict in ev.rows()]
    twins = len(ev.family["all"].models) - 2 if "all" in ev.family else TWINS
    parts = [
        "<p>The paper's pipeline (arXiv 2601.14050) on a tiny multilingual Qwen3-MoE trained on UDHR texts of "
        f"{len(DEMO_LANGUAGES)} languages in six families, English as hub. Every number comes with its controls: "
        f"{twins} random-init twins (same architecture, untrained: structure they show too comes from the input "
        "bytes and scripts, not from learning), a byte-bigram baseline through the same clustering (what spelling "
        "alone gives), random expert sets of the same size for ablations, and how far routing moved for steering. "
        f"Experts are chosen on the train split ({min(6, pick_pieces or 6) if quick else pick_pieces or 'all'} "
        "pieces of each language), the steering "
        "scale on held-back train paragraphs, and everything is reported on the held-out split, with 95% bootstrap "
        f"intervals over texts ({replicates} resamples, {5 * replicates} label permutations; the model card measures "
        "the same with all train pieces, 200 and 1000).</p>",
        "<h2>Does routing follow language families? (middle band)</h2>",
        report.table(["statistic", "trained", "random-init twins", "byte-bigram baseline", "verdict"],
                     ev.family_rows()),
        "<p>ARI: agreement of an average-linkage clustering of the languages' routing (Jensen-Shannon "
        "divergence) with their families (0 = chance, 1 = identical). Between/within: mean divergence between "
        "languages of different families over that within a family (> 1: families route alike). Intervals: "
        "normal bootstrap intervals over resampled articles (the same ones for every model); p: family labels "
        "permuted; verdict: the trained model's paired differences from each control.</p>",
    ]
    if ev.ablation is not None:
        parts += ["<h2>Ablating language-exclusive experts</h2>",
                  "<p>Change in held-out bits/byte (positive = worse), mean over the early, middle and late bands. "
                  "Language-specific: the language's own effect exceeds both its effect on the other languages "
                  "and that of random same-size expert sets in the same layers, intervals excluding 0.</p>",
                  report.table(["ablation", "own language", "other languages", "random same-size sets", "verdict"],
                               ev.ablation_rows()),
                  ev.ablation.plot_ablation()]
    if ev.steering is not None:
        parts += [f"<h2>Steering toward experts shared with {DEMO_HUB} (dose-response)</h2>",
                  "<p>Per scale on held-out texts: share of tokens whose top-k expert set changed and gate mass "
                  "moved onto the steered experts (middle-band layer means), and the gain in bits/byte (baseline - "
                  "steered, positive = better) with its interval. The scale is chosen on held-back train paragraphs "
                  "only (mean dev bits/byte per scale: "
                  + html.escape(", ".join(f"{s:g}: {v:.4f}" for s, v in ev.steering.dev_scores.items())) + ").</p>",
                  report.table(["scale", "top-k sets changed", "gate mass moved", "gain [95% CI]", "verdict"],
                               ev.steering_rows()),
                  ev.steering.plot()]
    families = _families(ev.languages)
    parts = parts[:1] + [report.findings(findings)] + parts[1:]
    parts += [report.routing_summary(ev.stats, "Trained demo model", families=families),
              *report.routing_figures(ev.stats),
              report.routing_summary(ev.twin_stats, "Random-init twin 1", families=families),
              report.routing_figures(ev.twin_stats)[0]]
    path = report.write_report(out, "moe_interp demo: multilingual routing of a tiny MoE, with its controls", parts)
    return DemoResult(path, findings, ev)
