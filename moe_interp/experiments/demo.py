"""The offline demo: the paper's pipeline on the bundled demo model, with its controls (random-init
twins, a byte n-gram baseline, random expert sets) and intervals next to every number, written as
one HTML report (`moe-interp demo`). `choose_threads` and `set_threads`, the torch thread policy every
`moe-interp` command runs with (`moe_interp.core._threads`), are importable from here too.

Selection and evaluation never share texts: experts are chosen on a profile of the UDHR train
split (minus its last paragraphs), the steering scale on those last paragraphs (dev), and every
reported number is measured on the held-out split."""

import dataclasses
import html
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moe_interp.experiments import report
from moe_interp.experiments import _claims
from moe_interp.analysis import co_activation_rate, family_evidence, layer_evidence, ngram_baselines
from moe_interp.datasets import udhr
from moe_interp.core.languages import info, script
from moe_interp.experiments._ablation import VERDICT_RULES
from moe_interp.core._checks import check_int
from moe_interp.core._threads import choose_threads, set_threads
from moe_interp.experiments import ablation_grid, steering_eval
from moe_interp.experiments._profile import profile
from moe_interp.runtime._interventions import RouterRecord
from moe_interp.models.zoo import DEMO_HUB, DEMO_LANGUAGES, DEMO_MODEL_DIR, demo_model, training_seed

__all__ = ["DemoEvidence", "DemoResult", "choose_threads", "demo_corpus", "demo_evidence", "run_demo", "seed_records",
           "set_threads"]

MAX_BYTES = 256  # the demo model was trained on 256-byte windows
DEV_PARAGRAPHS = 3  # last paragraphs of each language's train split: the steering scale is chosen on them
TWINS = 3  # random-init twins: one twin cannot show how much a statistic varies across initialisations
# Languages of different families whose exclusive experts are ablated (each also evaluated);
# and languages steered toward the hub's shared experts (the paper steers toward English).
ABLATE = ("eng", "deu", "fin", "tur", "swh", "ind")
# One close relative per ablated language's family, evaluated too: an effect on a relative as large
# as on the target is family-level, not language-specific (eng and deu are each other's relative).
RELATIVES = ("nld", "ekk", "azj", "zul", "jav")
CONTROLS = 20  # usage-matched random expert sets per ablation cell: fewer than 19 can never pass the rank test
STEER = ("deu", "nld", "swe", "fra")
SCALES = (0.0, 0.25, 1.0, 4.0)
# `moe-interp demo` (run_demo) measures every claim and control of the model card with lighter
# settings: experts chosen on 16 train pieces per language (of ~55), 100 bootstrap resamples and 500
# label permutations (the card: all pieces, 200 and 1000); its wall time: benchmarks/RESULTS.md.
DEMO_PICK_PIECES = 16
DEMO_RESAMPLES = 100


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
    >>> from moe_interp.experiments.demo import demo_corpus
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


def _triple(value: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in value[:3]]


def _family_record(ev: Any, script: str | None = None) -> dict:
    """The plain numbers of one `FamilyEvidence` that its claims are worded from
    (`_claims.family_claim`): per statistic the trained model, each twin and the strongest
    byte n-gram baseline (named), the paired differences, and the label-permutation p-values."""
    twins = [m for m in ev.models if m.startswith("twin")]
    out = {"languages": len(ev.languages), "families": len(set(ev.families)), "layers": list(ev.layers),
           "level": ev.level, "unit": ev.unit, "resamples": int(len(ev.samples)), "script": script}
    p = ev.table().set_index(["statistic", "model"]).p_value
    for statistic in ev.statistics:
        strongest = ev.strongest_baseline(statistic)
        controls = [*twins, *([strongest] if strongest else [])]
        out[statistic] = {"trained": _triple(ev.interval("trained", statistic)),
                          **{m: _triple(ev.interval(m, statistic)) for m in controls},
                          "difference": {m: _triple(ev.difference(m, statistic)) for m in controls},
                          "p_value": float(p[(statistic, "trained")]),
                          "p_value_controls": {m: float(p[(statistic, m)]) for m in twins},
                          "baselines": {b: _triple(ev.interval(b, statistic)) for b in ev.baselines}}
    return out


def _layers_record(ev: Any) -> dict:
    """Per MoE layer, per model and statistic: `[estimate, low, high]` (`LayerEvidence`); the
    paired differences trained - twin per layer (`difference`); and per model the paired
    contrasts the shape rule reads (`contrasts`: first layer - lowest interior layer, last
    layer - lowest interior layer, last - first, each over the same resampled languages)."""
    from moe_interp.analysis import interval

    out: dict[str, Any] = {"layers": list(ev.layers), "level": ev.level, "unit": ev.unit, "difference": {},
                           "contrasts": {}}
    for s, statistic in enumerate(ev.statistics):
        out[statistic] = {m: [_triple(ev.interval(m, layer, statistic)) for layer in ev.layers] for m in ev.models}
        out["difference"][statistic] = {m: [_triple(ev.difference(m, layer, statistic)) for layer in ev.layers]
                                        for m in ev.models[1:]}
        out["contrasts"][statistic] = {}
        for m, model in enumerate(ev.models):
            values, samples = ev.estimate[m, :, s], ev.samples[:, m, :, s]
            dip = 1 + int(np.argmin(values[1:-1])) if len(values) > 2 else 0

            def contrast(a: int, b: int) -> list[float]:
                estimate = float(values[a] - values[b])
                return _triple((estimate, *interval(estimate, samples[:, a] - samples[:, b], ev.level)))

            out["contrasts"][statistic][model] = {"dip": int(ev.layers[dip]), "first_minus_dip": contrast(0, dip),
                                                  "last_minus_dip": contrast(-1, dip),
                                                  "last_minus_first": contrast(-1, 0)}
    return out


def _health_record(healths: Mapping[str, Any]) -> dict:
    """Expert load and health of each model over all held-out texts (`Health`, scope "all"):
    per MoE layer the experts never chosen, the load's coefficient of variation and max / mean
    (`[estimate, low, high]`, intervals over texts); their means over the layers with intervals,
    and the trained model's paired difference from each twin (the same resampled texts)."""
    from moe_interp.analysis import interval

    first = healths["trained"]
    out: dict[str, Any] = {"layers": list(first.layers), "experts": first.num_experts, "top_k": first.top_k,
                           "languages": len(first.scopes) - 1, "tokens": int(first.tokens[-1]), "level": None,
                           "resamples": 0, "models": {}}
    means = {}
    for name, h in healths.items():
        model: dict[str, Any] = {"dead": h.dead_count[-1].tolist(),
                                 "dead_experts": {str(l): list(e) for l, e in h.dead_experts().items()}}
        for statistic in ("cv", "max_over_mean"):
            values, ci = getattr(h, statistic)[-1].numpy(), getattr(h, f"{statistic}_interval")
            samples = None if ci is None else ci.samples[:, -1].numpy()
            level = 0.95 if ci is None else ci.level
            model[statistic] = [_triple((v, *(interval(v, samples[:, i], level) if samples is not None
                                              else (float("nan"),) * 2))) for i, v in enumerate(values)]
            mean = float(np.nanmean(values))
            mean_samples = None if samples is None else np.nanmean(samples, axis=1)
            means[name, statistic] = (mean, mean_samples)
            model[f"{statistic}_mean"] = _triple((mean, *(interval(mean, mean_samples, level)
                                                          if mean_samples is not None else (float("nan"),) * 2)))
            if ci is not None:
                out["level"], out["resamples"] = ci.level, len(ci.samples)
        out["models"][name] = model
    for name in healths:
        if name != "trained":
            out["models"][name]["difference"] = {}
            for statistic in ("cv", "max_over_mean"):
                (a, sa), (b, sb) = means["trained", statistic], means[name, statistic]
                paired = interval(a - b, sa - sb, out["level"]) if sa is not None and sb is not None else (
                    float("nan"),) * 2
                out["models"][name]["difference"][statistic] = _triple((a - b, *paired))
    return out


def _co_activation_record(stats: Mapping[str, Any]) -> dict | None:
    """Co-activation of each model over all held-out texts (`RouterRecord(co_activation=True)`),
    per MoE layer: `top_partner`, of the tokens routed to an expert the share also routed to its
    most frequent partner, weighted by the experts' loads (1 / (top_k - 1) at most; an even
    router over E experts gives about `(top_k - 1) / (E - 1)`); `pair`, the strongest pair by
    OLMoE's rate (`[i, j, share of i's tokens also routed to j]`, among experts with at least 1%
    of the layer's load). None when a model has no co-activation or routes one expert a token."""
    first = stats["trained"]
    if any(s.co_activation is None for s in stats.values()) or first.top_k < 2:
        return None
    experts = first.num_experts
    out: dict[str, Any] = {"layers": list(first.layers), "experts": experts, "top_k": first.top_k,
                           "even": (first.top_k - 1) / (experts - 1), "models": {}}
    for name, s in stats.items():
        rate = co_activation_rate(s, pooled=True)[0].nan_to_num(0.0)   # [layer, E, E], the groups pooled
        load = s.count.sum(0).double()                                 # [layer, E]: tokens routed to each expert
        top = ((rate.amax(-1) * load).sum(-1) / load.sum(-1)).tolist()
        rate = torch.where((load >= 0.01 * load.sum(-1, keepdim=True))[..., None], rate, torch.zeros_like(rate))
        strongest = []
        for i in range(len(s.layers)):
            flat = int(rate[i].argmax())
            strongest.append([flat // experts, flat % experts, round(float(rate[i].flatten()[flat]), 6)])
        out["models"][name] = {"top_partner": [round(v, 6) for v in top], "pair": strongest}
    return out


def _layer_text(layers: Sequence[int]) -> str:
    """`[1, 2, 3, 4, 6]` -> `"layers 1-4 and 6"`: runs of consecutive layers joined."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return ("layer " if len(layers) == 1 else "layers ") + joined


def _count_text(n: int) -> str:
    return "none" if n == 0 else f"{n}"


def _health_finding(record: Mapping[str, Any]) -> str:
    """One line from `_health_record`'s numbers: experts never chosen in the trained model and
    its twins, and the load's coefficient of variation against twin 1 (paired interval).

    ```python
    >>> from moe_interp.experiments.demo import _health_finding
    >>> rec = {"layers": [0, 1, 2, 3, 4], "experts": 32, "top_k": 2, "languages": 55, "tokens": 165000,
    ...        "level": 0.95, "resamples": 100, "models": {
    ...        "trained": {"dead": [0, 3, 2, 1, 1], "dead_experts": {}, "cv_mean": [1.2, 1.1, 1.3]},
    ...        "twin 1": {"dead": [0, 0, 0, 0, 0], "dead_experts": {}, "cv_mean": [0.5, 0.45, 0.55],
    ...                   "difference": {"cv": [0.7, 0.6, 0.8]}}}}
    >>> print(_health_finding(rec))
    7 experts never chosen in layers 1-4 of the trained model over 165,000 held-out tokens, none in twin 1; load cv over the experts (mean of MoE layers 0-4) 1.20 [1.10, 1.30] against 0.50 [0.45, 0.55] in twin 1: the trained model's load is more uneven (difference +0.70 [+0.60, +0.80])

    ```
    """
    models = record["models"]
    trained, twins = models["trained"], [m for m in models if m != "trained"]
    dead = sum(trained["dead"])
    where = [layer for layer, d in zip(record["layers"], trained["dead"]) if d]
    line = (f"{dead} expert{'s' if dead != 1 else ''} never chosen in {_layer_text(where)} of the trained model"
            if dead else "every expert of the trained model chosen") + \
        f" over {record['tokens']:,} held-out tokens"
    twin_dead = [sum(models[t]["dead"]) for t in twins]
    if twins:
        if not any(twin_dead):
            line += f", none in {twins[0] if len(twins) == 1 else f'its {len(twins)} random-init twins'}"
        else:
            line += ", " + ", ".join(f"{_count_text(d)} in {t}" for t, d in zip(twins, twin_dead))
        twin = models[twins[0]]
        cv, other, diff = trained["cv_mean"], twin["cv_mean"], twin["difference"]["cv"]
        span = f"{record['layers'][0]}-{record['layers'][-1]}"
        line += (f"; load cv over the experts (mean of MoE layers {span}) {cv[0]:.2f} [{cv[1]:.2f}, {cv[2]:.2f}] "
                 f"against {other[0]:.2f} [{other[1]:.2f}, {other[2]:.2f}] in {twins[0]}: ")
        if diff[1] > 0:
            line += "the trained model's load is more uneven"
        elif diff[2] < 0:
            line += "the trained model's load is more even"
        else:
            line += "no difference in evenness"
        line += f" (difference {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}])"
    return line


def _co_activation_finding(record: Mapping[str, Any]) -> str:
    """One line from `_co_activation_record`'s numbers: the share of an expert's tokens that also
    go to its most frequent partner, per layer, in the trained model against every twin.

    ```python
    >>> from moe_interp.experiments.demo import _co_activation_finding
    >>> rec = {"layers": [0, 1, 2], "experts": 32, "top_k": 2, "even": 1 / 31, "models": {
    ...        "trained": {"top_partner": [0.58, 0.47, 0.30], "pair": []},
    ...        "twin 1": {"top_partner": [0.32, 0.25, 0.31], "pair": []}}}
    >>> print(_co_activation_finding(rec))
    co-activation: of the tokens routed to an expert, 0.30-0.58 also go to its most frequent partner in the trained model (per MoE layer, load-weighted), 0.25-0.32 in twin 1 (an even top-2 router over 32 experts: about 0.03); above twin 1 in 2 of 3 layers

    ```
    """
    models = record["models"]
    twins = [m for m in models if m != "trained"]
    trained = models["trained"]["top_partner"]

    def span(values: Sequence[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}"

    others = [v for t in twins for v in models[t]["top_partner"]]
    above = sum(all(v > models[t]["top_partner"][i] for t in twins) for i, v in enumerate(trained))
    who = twins[0] if len(twins) == 1 else f"its {len(twins)} random-init twins"
    return (f"co-activation: of the tokens routed to an expert, {span(trained)} also go to its most frequent partner "
            f"in the trained model (per MoE layer, load-weighted), {span(others)} in {who} (an even "
            f"top-{record['top_k']} router over {record['experts']} experts: about {record['even']:.2f}); above "
            f"{'every twin' if len(twins) > 1 else who} in {above} of {len(trained)} layers")


@dataclasses.dataclass
class DemoEvidence:
    """Everything the demo measured, with its controls (see `demo_evidence`).

    **Fields:** `family` (`{"all": FamilyEvidence, "Latn": FamilyEvidence}`: middle-band
    family structure of the trained model against `TWINS` random-init twins and exact byte
    n-gram baselines, held-out texts, intervals over languages), `layers` (`LayerEvidence`:
    the same per MoE layer), `ablation` (`AblationResult`, experts chosen on the train split,
    or None), `steering` (`SteeringResult`, or None), `stats` (the trained model's held-out
    `RoutingStats`, with co-activation), `twin_stats` (the first twin's), `seconds` (wall time
    per step), `languages`, `twins` (every twin's held-out `RoutingStats`, by name) and
    `health` (`{"trained" | twin name: Health}`: expert load and health on the held-out texts,
    intervals over texts).

    `record()` gives the plain numbers (what `eval.json` keeps); `claims()` the claims worded
    from them by the rules of `moe_interp.experiments._claims`; `rows()` / `markdown()` the same as a table
    (the README's table is this output). `demo_evidence` makes one (`run_demo` writes its report).

    ```python
    >>> import dataclasses
    >>> from moe_interp.experiments.demo import DemoEvidence
    >>> [field.name for field in dataclasses.fields(DemoEvidence)]
    ['languages', 'family', 'ablation', 'steering', 'stats', 'twin_stats', 'seconds', 'layers', 'twins', 'health']

    ```
    """

    languages: tuple[str, ...]
    family: dict
    ablation: Any
    steering: Any
    stats: Any
    twin_stats: Any
    seconds: dict
    layers: Any = None
    twins: dict | None = None
    health: dict | None = None

    def record(self) -> dict:
        """The measurement as plain numbers (JSON-ready): what `_claims` words and `eval.json` keeps.

        ```python
        >>> from moe_interp.experiments.demo import DemoEvidence
        >>> sorted(DemoEvidence(("eng",), {}, None, None, None, None, {}).record())
        ['ablation', 'co_activation', 'family', 'format', 'health', 'layers', 'seconds', 'steering']

        ```
        """
        out: dict[str, Any] = {"format": _claims.FORMAT, "seconds": dict(self.seconds),
                               "family": {subset: _family_record(ev, None if subset == "all" else subset)
                                          for subset, ev in self.family.items()},
                               "layers": _layers_record(self.layers) if self.layers is not None else None,
                               "ablation": None, "steering": None,
                               "health": _health_record(self.health) if self.health else None,
                               "co_activation": None}
        if self.stats is not None and self.twins:
            out["co_activation"] = _co_activation_record({"trained": self.stats, **self.twins})
        if self.ablation is not None:
            table = self.ablation.verdicts()
            table["layers"] = table["layers"].map(list)
            out["ablation"] = {"exclusive_among": self.ablation.exclusive_among(), "controls": self.ablation.controls,
                               "rows": json.loads(table.to_json(orient="records"))}
        if self.steering is not None:
            dose = self.steering.dose_response()
            keep = ["scale", "steered_layers", "changed", "mass_moved", "gain", "gain_low", "gain_high", "verdict"]
            out["steering"] = {"languages": list(self.steering.table.language), "scale": self.steering.scale,
                               "dev_scores": {str(k): v for k, v in self.steering.dev_scores.items()},
                               "dose_response": json.loads(dose[keep].to_json(orient="records"))}
        return out

    def claims(self) -> list[dict]:
        """Every claim, worded by the rules of `moe_interp.experiments._claims` from `record()`."""
        return _claims.claims(self.record())

    def rows(self) -> list[list[str]]:
        """One table of every claim: `[claim, trained / effect, controls, verdict]`."""
        return [[c["claim"], c["trained"], c["controls"], c["verdict"]] for c in self.claims()]

    def markdown(self) -> str:
        """The claims as a Markdown table (what the README shows).

        ```python
        >>> from moe_interp.experiments.demo import DemoEvidence
        >>> print(DemoEvidence(("eng",), {}, None, None, None, None, {}).markdown())
        | claim (held-out texts, 95% intervals) | trained model | controls | verdict |
        |---|---|---|---|

        ```
        """
        return report.markdown_table(["claim (held-out texts, 95% intervals)", "trained model", "controls", "verdict"],
                                     self.rows())


def demo_evidence(path: str | os.PathLike | None = None, languages: Sequence[str] | None = None,
                  quick: bool = False, twins: int = TWINS, resamples: int = 200, permutations: int = 1000,
                  pick_pieces: int | None = None, controls: int = CONTROLS, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> DemoEvidence:
    """Measure the demo's claims on the demo model (or the one trained into `path`).

    Family structure (middle band, held-out texts): `family_evidence` against `twins`
    random-init twins (the training seed, then seed + 1000, + 2000, ...) and exact byte
    n-gram baselines (n = 1, 2, 3; the strongest per statistic), over all languages and
    within Latin script, intervals over languages; per layer: `layer_evidence`. Ablation:
    each of `ABLATE`'s exclusive experts (exclusive among every profiled language, chosen on
    the train split) rerouted per equal-width band, evaluated on `ABLATE` and `RELATIVES`
    (so each target has a same-family comparator), with `controls` usage-matched random sets
    (`AblationResult.verdicts`). Steering: `STEER` toward experts they share with the hub
    (chosen on the train split), the scale chosen on dev paragraphs, the dose-response over
    `SCALES` on held-out texts (`SteeringResult.dose_response`).
    Load and health (`RoutingStats.health`, intervals over texts) of the trained model and of
    every twin, and co-activation (the held-out profiles record `RouterRecord(co_activation=True)`),
    both on the held-out texts: `record()["health"]` and `["co_activation"]`.

    The defaults are the model card's full settings. `pick_pieces`: choose experts on that
    many train pieces per language (evenly spaced; None: all, ~55), `controls`: random
    expert sets per ablation cell (20 or more: fewer can never pass the random-set rule),
    `resamples`/`permutations`: of the family statistics (x10 bootstrap resamples for
    ablation and steering intervals). `run_demo` lightens them.

    ```python
    >>> from moe_interp.experiments.demo import demo_evidence
    >>> ev = demo_evidence(languages=["eng", "deu", "nld", "fin", "ekk", "hun"], quick=True, twins=1,
    ...                    resamples=20, permutations=20, progress=False)
    >>> list(ev.family), ev.family["all"].models[:2]      # every language is Latin: no separate Latin row
    (['all'], ('trained', 'twin 1'))
    >>> ev.markdown().splitlines()[0]
    '| claim (held-out texts, 95% intervals) | trained model | controls | verdict |'
    >>> sorted(ev.health), tuple(ev.stats.co_activation.shape)   # [language, layer, expert, expert]
    (['trained', 'twin 1'], (6, 8, 32, 32))

    ```
    """
    import time

    say = log or (lambda line: None)
    if languages is not None:
        languages = list(languages)
        if not languages:
            raise ValueError("languages is empty; pass ISO 639-3 codes such as ['eng', 'deu'], or None for the demo "
                             f"model's {len(DEMO_LANGUAGES)} languages")
    twins = check_int("twins (random-init twins to compare with)", twins, 1)
    languages = list(DEMO_LANGUAGES) if languages is None else languages
    splits = _splits(languages, quick, pick_pieces)
    heldout = splits["heldout"]
    seconds, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    trained = demo_model(path=path)
    seed = training_seed(DEMO_MODEL_DIR if path is None else Path(path))
    say(f"profiling the trained model on {len(heldout)} languages ({sum(map(len, heldout.values()))} held-out "
        f"pieces of <= {MAX_BYTES} bytes) and on the train split (choosing experts)")
    pairs = RouterRecord(co_activation=True)  # which experts a token chose together: [language, layer, E, E]
    stats = profile(trained, heldout, pairs, batch_size=16, progress=progress)
    picked = profile(trained, splits["pick"], batch_size=16, progress=progress)
    lap("profile trained")
    twin_stats = {}
    for i in range(twins):
        say(f"profiling random-init twin {i + 1}/{twins} (seed {seed + 1000 * i}) on the held-out texts")
        twin_stats[f"twin {i + 1}"] = profile(demo_model(trained=False, path=path, seed=seed + 1000 * i), heldout,
                                              pairs, batch_size=16, progress=progress)
    lap("profile twins")
    say(f"expert load and health of the trained model and its twins: {resamples} resamples of the texts")
    healths = {name: s.health(resamples=resamples) for name, s in {"trained": stats, **twin_stats}.items()}
    lap("health")
    say(f"family structure, middle band and per layer: {resamples} resamples of the languages, {permutations} label "
        "permutations; exact byte 1-, 2- and 3-gram baselines")
    families = _families(languages)
    baselines = ngram_baselines(heldout)
    family = {}
    latin = _latin(heldout)
    for subset, langs in (("all", languages), ("Latn", latin if len(latin) < len(languages) else [])):
        if len(set(families[l] for l in langs)) >= 2:  # a subset of one family has no family structure
            family[subset] = family_evidence(stats.select(langs), families=families, layers="middle",
                                             twins=twin_stats, baseline=baselines, resamples=resamples,
                                             permutations=permutations)
    by_layer = None
    if len(set(families.values())) >= 2:
        by_layer = layer_evidence(stats, families=families, twins=twin_stats, resamples=resamples)
    lap("family evidence")
    targets = [l for l in ABLATE if l in heldout][: 3 if quick else len(ABLATE)]
    evaluated = list(dict.fromkeys([*targets, *(l for l in RELATIVES if l in heldout)]))
    ablation = None
    if len(targets) >= 2 and len({families[l] for l in evaluated}) >= 2:
        say(f"ablation: exclusive experts of {', '.join(targets)} (chosen on the train split) rerouted per band, "
            f"{controls} usage-matched random sets each; bits/byte on held-out texts of {', '.join(evaluated)}")
        ablation = ablation_grid(trained, picked, heldout, evaluated, targets, controls=controls,
                                 resamples=resamples * 10, progress=progress)
    lap("ablation")
    steer = [l for l in STEER if l in heldout and l != DEMO_HUB][: 2 if quick else len(STEER)]
    steering = None
    if DEMO_HUB in heldout and steer:
        say(f"steering {', '.join(steer)} toward experts shared with {DEMO_HUB}: scale chosen on dev paragraphs, "
            "dose-response on held-out texts")
        steering = steering_eval(trained, picked, splits["dev"], heldout, steer, target=DEMO_HUB,
                                 scales=SCALES[:3] if quick else SCALES, resamples=resamples * 10, progress=progress)
    lap("steering")
    return DemoEvidence(tuple(languages), family, ablation, steering, stats, twin_stats["twin 1"], seconds, by_layer,
                        twin_stats, healths)


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


def _family_figures(record: Mapping[str, Any], subset: str) -> list:
    """One forest plot per family statistic: the trained model, each twin and each byte
    n-gram baseline, with their intervals."""
    from moe_interp.analysis import plots

    out = []
    where = f"{record['languages']} languages" + (", Latin script" if subset == "Latn" else "") + \
        f", MoE layers {record['layers'][0]}-{record['layers'][-1]}"
    for statistic, axis, reference in (("ari", "adjusted Rand index (0 = chance, 1 = the families)", 0.0),
                                       ("between_within", "between / within-family JS (1 = families do not group)",
                                        1.0)):
        stat = record[statistic]
        rows = [("trained", *stat["trained"], "trained")]
        rows += [(m, *v, "control") for m, v in stat.items() if m.startswith("twin")]
        rows += [(b, *v, "baseline") for b, v in stat["baselines"].items()]
        out.append(plots.forest_plot(rows, title=f"{_claims.STATISTIC_NAMES[statistic]}, {where} "
                                                 f"({round(100 * record['level'])}% intervals over languages)",
                                     x_title=axis, reference=reference))
    return out


def _ablation_figures(record: Mapping[str, Any]) -> list:
    """One forest plot per band: per ablated language its own effect, the same-family and
    other-family effects (intervals) and the spread of the random usage-matched sets."""
    from moe_interp.analysis import plots

    figures = []
    for band in dict.fromkeys(r["band"] for r in record["rows"]):
        rows = []
        for r in (r for r in record["rows"] if r["band"] == band):
            lang = r["language"]
            rows.append((f"{lang}: own", r["own"], r["own_low"], r["own_high"], "trained"))
            if r.get("same_family_languages"):
                rows.append((f"{lang}: same family", r["same_family"], r["same_family_low"], r["same_family_high"],
                             "same family"))
            rows.append((f"{lang}: other families", r["other_family"], r["other_family_low"], r["other_family_high"],
                         "other families"))
            rows.append((f"{lang}: {r['controls']} random sets", r["random"], min(r["random_low"], r["random"]),
                         max(r["random_high"], r["random"]), "control"))
        layers = next(r["layers"] for r in record["rows"] if r["band"] == band)
        figures.append(plots.forest_plot(rows, title=f"Ablating exclusive experts, {band} ({_claims._span(layers)})",
                                         x_title="change in held-out bits/byte (positive = worse)", reference=0.0))
    return figures


def seed_records(directory: str | os.PathLike = DEMO_MODEL_DIR) -> dict[int, dict]:
    """`{seed: record}` of the shipped model's `eval.json` and its other seeds'
    (`seeds/s<seed>/eval.json`), those measured in the current format only.

    ```python
    >>> from moe_interp.experiments.demo import seed_records
    >>> all(isinstance(seed, int) for seed in seed_records())
    True

    ```
    """
    directory = Path(directory)
    out = {}
    for path in [directory / "eval.json", *sorted(directory.glob("seeds/s*/eval.json"))]:
        record = json.loads(path.read_text())
        if record.get("format") == _claims.FORMAT:
            training = json.loads((path.parent / "training.json").read_text())
            out[int(training["seed"])] = record
    return out


def run_demo(out: str | os.PathLike = "report.html", languages: Sequence[str] | None = None,
             quick: bool = False, progress: bool = True, threads: int | str | None = None,
             log: Callable[[str], None] | None = None, resamples: int = DEMO_RESAMPLES,
             pick_pieces: int | None = DEMO_PICK_PIECES) -> DemoResult:
    """Measure the demo's claims (`demo_evidence`) and write them as an HTML report.

    `languages` defaults to the demo model's 55 training languages (`zoo.DEMO_LANGUAGES`:
    six families, English as hub). Unknown codes raise `KeyError` naming close matches
    (`"en"` -> `"eng"`). `threads`: torch threads, `"auto"` for `choose_threads()`, None to
    leave torch's setting. `log` receives one line per step; the findings (one line per claim:
    what, the estimate, the verdict, by the rules of `moe_interp.experiments._claims`) are in the result. Lighter than the
    model card's measurement: `resamples` bootstrap resamples of the family statistics (x5
    label permutations, x10 resamples for ablation and steering intervals), experts chosen on
    `pick_pieces` train pieces per language (None: all). The report also shows the model
    card's measurement across training seeds (the bundled `eval.json` files), and the expert load
    and health and co-activation of the trained model beside its first twin, each with one finding
    worded from the numbers (`record()["health"]`, `["co_activation"]`).

    ```python
    >>> from moe_interp.experiments.demo import run_demo
    >>> result = run_demo("report.html", languages=["eng", "deu", "nld", "fin", "ekk", "hun"], quick=True,
    ...                   progress=False, resamples=20)
    >>> result.path.name, len(result.findings) > 4
    ('report.html', True)

    ```
    """
    say = log or (lambda line: None)
    if threads is not None:
        count, why = set_threads(None if threads == "auto" else int(threads))
        say(f"{count} torch threads ({why})")
    ev = demo_evidence(languages=languages, quick=quick, resamples=resamples, permutations=5 * resamples,
                       pick_pieces=pick_pieces, progress=progress, log=say)
    record = ev.record()
    claims = _claims.claims(record)
    findings = [c["short"] for c in claims]  # one line each; the report gives each claim's full sentence
    twins = len([m for m in ev.family["all"].models if m.startswith("twin")]) if "all" in ev.family else TWINS
    pct = 95

    def said(kind: str) -> str:
        return "".join(f"<p>{html.escape(c['sentence'])}</p>" for c in claims if c["claim"].startswith(kind))

    parts = [
        "<p>The paper's pipeline (arXiv 2601.14050) on a tiny multilingual Qwen3-MoE trained on UDHR texts of "
        f"{len(DEMO_LANGUAGES)} languages in six families, English as hub. Every number comes with its controls: "
        f"{twins} random-init twins (same architecture, untrained: structure they show too comes from the input "
        "bytes and scripts, not from learning), exact byte 1-, 2- and 3-gram baselines through the same clustering "
        "(what spelling alone gives; the strongest is the bar), usage-matched random expert sets for ablations, and "
        "how far routing moved for steering. Experts are chosen on the train split "
        f"({min(6, pick_pieces or 6) if quick else pick_pieces or 'all'} pieces of each language), the steering "
        f"scale on held-back train paragraphs, and everything is reported on the held-out split with {pct}% "
        "percentile bootstrap intervals: over languages (each with its texts) for family claims, over texts for a "
        f"language's own effects ({resamples} resamples, {5 * resamples} label permutations; the model card "
        "measures the same with all train pieces, 200 and 1000). Every sentence is worded by a rule from its "
        "numbers (<code>moe_interp.experiments._claims</code>).</p>",
    ]
    for subset, title in (("all", "Does routing follow language families? (middle band)"),
                          ("Latn", "Within Latin script (middle band)")):
        if subset in record["family"]:
            fam = record["family"][subset]
            parts += [f"<h2>{html.escape(title)}</h2>",
                      "".join(f"<p>{html.escape(_claims.family_claim(fam, s)['sentence'])}</p>"
                              for s in _claims.STATISTIC_NAMES),
                      *_family_figures(fam, subset)]
    if ev.layers is not None:
        parts += ["<h2>Layer by layer (all MoE layers)</h2>", said("mean JS divergence"),
                  said("between/within-family JS per"),
                  ev.layers.figure("mean_divergence"), ev.layers.figure("between_within")]
    if record["ablation"] is not None:
        parts += ["<h2>Ablating language-exclusive experts, per band</h2>",
                  f"<p>{html.escape(ev.ablation.summary().splitlines()[0])} Verdict rules: "
                  + html.escape("; ".join(f'"{v}": {rule}' for v, rule in VERDICT_RULES)) + ".</p>",
                  said("ablating"), *_ablation_figures(record["ablation"])]
    if ev.steering is not None:
        parts += [f"<h2>Steering toward experts shared with {DEMO_HUB} (dose-response)</h2>",
                  "".join(f"<p>{html.escape(line)}</p>" for line in ev.steering.findings()), ev.steering.plot()]
    if record["health"] is not None:
        from moe_interp.analysis import plots

        line = _health_finding(record["health"])
        findings.append(line)
        rec = record["health"]
        parts += ["<h2>Expert load and health: the trained model beside its random-init twin</h2>",
                  (f"<p>{html.escape(line[0].upper() + line[1:])}. Load per expert over all {rec['languages']} "
                   f"languages' held-out texts against the even share; cv: the load's coefficient of variation over "
                   f"the {rec['experts']} experts of a layer (0 when even), with {round(100 * (rec['level'] or 0.95))}%"
                   f" intervals over texts ({rec['resamples']} resamples, the same texts for both models: the "
                   "difference is paired). Twins: the same architecture untrained, on the same texts.</p>"),
                  plots.load_health(ev.health["trained"], ev.health["twin 1"], names=["trained", "twin 1"])]
    if record["co_activation"] is not None:
        from moe_interp.analysis import plots

        rec = record["co_activation"]
        line = _co_activation_finding(rec)
        findings.append(line)
        middle = len(rec["layers"]) // 2  # the heatmap's default layer
        strongest = "; ".join(f"{name}: experts {i} and {j}, {100 * r:.0f}% of expert {i}'s tokens"
                              for name, (i, j, r) in ((n, m["pair"][middle]) for n, m in rec["models"].items()
                                                      if n in ("trained", "twin 1")))
        parts += ["<h2>Co-activation: which experts a token chooses together</h2>",
                  (f"<p>{html.escape(line[0].upper() + line[1:])}. Counted in the trace for every held-out token "
                   f"(<code>RouterRecord(co_activation=True)</code>); the heatmap shows OLMoE's rate in MoE layer "
                   f"{rec['layers'][middle]}: row i, column j, the share of the tokens routed to expert i also "
                   f"routed to j. Strongest pair there (experts with at least 1% of the load): "
                   f"{html.escape(strongest)}. No interval: the counts are not kept per text; the twins are the "
                   "control.</p>"),
                  plots.co_activation_heatmap(ev.stats, other=ev.twin_stats, names=["trained", "twin 1"])]
    seeds = seed_records()
    if len(seeds) > 1:
        from moe_interp.experiments._steering import dose_response_seeds_figure

        parts += ["<h2>Across training seeds (the model card's measurement)</h2>",
                  "<p>The same recipe trained from other seeds, measured with the model card's settings (bundled "
                  "<code>eval.json</code> files). Claims about the recipe are judged here, with the seed as the unit."
                  "</p>", report.table(_claims.seed_header(seeds), _claims.seed_claims(seeds))]
        if all(r.get("steering") for r in seeds.values()):
            parts.append(dose_response_seeds_figure({s: r["steering"] for s, r in seeds.items()}))
    families = _families(ev.languages)
    parts = parts[:1] + [report.findings(findings)] + parts[1:]
    parts += [report.routing_summary(ev.stats, "Trained demo model (descriptive)", families=families, layers="middle"),
              *report.routing_figures(ev.stats),
              report.routing_summary(ev.twin_stats, "Random-init twin 1 (descriptive)", families=families,
                                     layers="middle"),
              report.routing_figures(ev.twin_stats)[0]]
    path = report.write_report(out, "moe_interp demo: multilingual routing of a tiny MoE, with its controls", parts)
    return DemoResult(path, findings, ev)
