"""What the demo's measurements support, worded by rules.

Every sentence and verdict the demo prints, the rows of its HTML report, the README's claims
table and the model card come from here, from a *record*: the plain numbers one measurement
keeps (`demo.DemoEvidence.record()`, stored as `eval.json` next to the demo model). A sentence
is never typed: each kind of claim has one rule that turns its numbers into words, so the same
rule words the shipped model, a random-init twin, another seed or a user's model.

Rules (each function's docstring has the details):

- family structure (`family_claim`): "above every control" when the trained model's paired
  difference from each random-init twin and from the strongest byte n-gram baseline has an
  interval above 0; otherwise it names the controls it does not clear. The label-permutation
  p-value is reported as what it shows: that the tree groups same-family languages more than
  chance, which the twins may pass too.
- depth profile (`shape`): "U-shaped", "rises with depth", "falls with depth" or "flat within
  its intervals", from the first layer, the lowest interior layer and the last layer.
- across seeds (`seed_claims`): a claim about the training recipe counts the seeds in which it
  holds and tests the trained models against the twins with an exact rank test.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FORMAT", "ablation_claims", "cell", "claims", "family_claim", "layer_claims", "readme_block", "seed_claims",
           "seed_header", "shape", "steering_claims"]

FORMAT = "moe_interp.demo-eval/2"  # /2: language-level intervals, exact n-gram baselines, per-band ablation verdicts
STATISTIC_NAMES = {"ari": "family ARI", "between_within": "between/within-family JS"}
LAYER_NAMES = {"mean_divergence": "mean JS divergence between languages", "between_within": "between/within-family JS"}


def cell(value: Sequence[Any], digits: int = 3, sign: bool = False) -> str:
    """`estimate [low, high]` of an `(estimate, low, high, ...)` triple; `n/a` without an estimate.

    ```python
    >>> from moe_interp.experiments._claims import cell
    >>> cell((0.25, 0.2, 0.3)), cell((0.01, -0.02, 0.04), 2, sign=True), cell((float("nan"), 0, 0))
    ('0.250 [0.200, 0.300]', '+0.01 [-0.02, +0.04]', 'n/a')

    ```
    """
    v, lo, hi = (float("nan") if x is None else float(x) for x in value[:3])
    if math.isnan(v):
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(v) if math.isnan(lo) else f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def family_claim(record: Mapping[str, Any], statistic: str) -> dict:
    """The verdict and sentence of one family statistic of one language set.

    `record`: `{"languages": n, "families": n, "layers": [first, last], "level": 0.95,
    "unit": "...", statistic: {"trained": [est, low, high], "<control>": [...], "difference":
    {"<control>": [est, low, high]}, "p_value": p, "p_value_controls": {"<control>": p}}}`
    (`DemoEvidence.record()` writes it). Rule: "above every control" when every difference
    interval lies above 0; else "not above <controls>", naming the worst difference.

    ```python
    >>> from moe_interp.experiments._claims import family_claim
    >>> rec = {"languages": 55, "families": 6, "layers": [2, 5], "level": 0.95, "unit": "languages, then texts",
    ...        "ari": {"trained": [0.25, 0.1, 0.4], "twin 1": [0.0, -0.1, 0.1], "baseline": [0.1, 0.0, 0.2],
    ...                "difference": {"twin 1": [0.25, 0.05, 0.45], "baseline": [0.15, -0.05, 0.35]},
    ...                "p_value": 0.001, "p_value_controls": {"twin 1": 0.4}}}
    >>> c = family_claim(rec, "ari")
    >>> c["verdict"]
    'not above baseline'
    >>> print(c["sentence"])
    family ARI (55 languages, 6 families, MoE layers 2-5): 0.250 [0.100, 0.400]; trained - baseline +0.150 [-0.050, +0.350] does not exclude 0, so it is not above baseline. Label permutation p = 0.001: the routing tree groups same-family languages more than chance (structure exists; by itself this does not show that training made it).

    ```
    """
    stat = record[statistic]
    differences = stat["difference"]
    below = [m for m, d in differences.items() if not d[1] > 0]
    worst = min(differences, key=lambda m: differences[m][1]) if differences else None
    where = f"{record['languages']} languages, {record['families']} families, MoE layers " \
            f"{record['layers'][0]}-{record['layers'][-1]}" + \
        (", Latin script" if record.get("script") == "Latn" else "")
    head = f"{STATISTIC_NAMES[statistic]} ({where}): {cell(stat['trained'])}"
    if not differences:
        verdict, middle = "no control measured", "no control was measured"
    elif not below:
        verdict = "above every control"
        middle = f"above every control (smallest difference: trained - {worst} {cell(differences[worst], sign=True)})"
    else:
        verdict = f"not above {', '.join(below)}"
        middle = f"trained - {worst} {cell(differences[worst], sign=True)} does not exclude 0, so it is {verdict}" \
            if differences[worst][1] <= 0 <= differences[worst][2] else \
            f"trained - {worst} {cell(differences[worst], sign=True)}: it is {verdict}"
    p = stat.get("p_value")
    tail = ""
    if p is not None:
        passing = [m for m, q in stat.get("p_value_controls", {}).items() if q < 1 - record.get("level", 0.95)]
        shows = ("the routing tree groups same-family languages more than chance (structure exists; by itself this "
                 "does not show that training made it)") if p < 1 - record.get("level", 0.95) else \
            "the routing tree does not group same-family languages more than chance"
        tail = f" Label permutation p = {p:.3g}: {shows}" + (
            f"; {', '.join(passing)} pass{'es' * (len(passing) == 1)} this test too" if passing else "") + "."
    return {"claim": f"{STATISTIC_NAMES[statistic]}, {where}", "trained": cell(stat["trained"]),
            "short": f"{STATISTIC_NAMES[statistic]}, {where}: {cell(stat['trained'])}, {verdict}",
            "controls": "; ".join(f"{m}{' (strongest baseline)' * (m in stat.get('baselines', {}))} {cell(stat[m])}"
                                  for m in differences),
            "verdict": verdict, "sentence": f"{head}; {middle}.{tail}"}


def shape(values: Sequence[Sequence[float]], layers: Sequence[int], contrasts: Mapping[str, Any] | None = None) -> str:
    """The shape of a statistic over depth, by rule, from `(estimate, low, high)` per layer and,
    when given, the paired `contrasts` (`{"dip": layer, "first_minus_dip": [est, low, high],
    "last_minus_dip": [...], "last_minus_first": [...]}`, intervals over the same resampled
    languages; without them, the layers' own intervals are compared, which is conservative):
    "U-shaped" when the first and the last layer both lie above the lowest interior layer;
    "rises with depth" when the last lies above the first; "falls with depth" when the first
    lies above the last; otherwise "flat within its intervals". The sentence names the layers.

    ```python
    >>> from moe_interp.experiments._claims import shape
    >>> shape([(0.26, 0.25, 0.27), (0.15, 0.14, 0.16), (0.22, 0.21, 0.23)], [0, 2, 7])
    'U-shaped: 0.260 at layer 0, lowest 0.150 at layer 2, 0.220 at layer 7'
    >>> shape([(0.1, 0.09, 0.11), (0.15, 0.14, 0.16), (0.2, 0.19, 0.21)], [0, 1, 2])
    'rises with depth: 0.100 at layer 0, 0.200 at layer 2'
    >>> overlapping = [(0.26, 0.19, 0.34), (0.15, 0.12, 0.17), (0.22, 0.16, 0.29)]
    >>> shape(overlapping, [0, 2, 7]).split(":")[0]
    'flat within its intervals'
    >>> paired = {"dip": 2, "first_minus_dip": [0.11, 0.05, 0.17], "last_minus_dip": [0.07, 0.02, 0.12],
    ...           "last_minus_first": [-0.04, -0.1, 0.02]}
    >>> shape(overlapping, [0, 2, 7], paired).split(":")[0]
    'U-shaped'

    ```
    """
    if len(values) < 2:
        return "one layer: no shape"
    first, last = values[0], values[-1]
    low_i = min(range(1, len(values) - 1), key=lambda i: values[i][0]) if len(values) > 2 else None
    if contrasts is not None:
        low_i = list(layers).index(contrasts["dip"]) if len(values) > 2 else None
        above = {k: contrasts[k][1] > 0 for k in ("first_minus_dip", "last_minus_dip")}
        rises, falls = contrasts["last_minus_first"][1] > 0, contrasts["last_minus_first"][2] < 0
    else:
        dip = values[low_i] if low_i is not None else None
        above = {"first_minus_dip": dip is not None and first[1] > dip[2],
                 "last_minus_dip": dip is not None and last[1] > dip[2]}
        rises, falls = last[1] > first[2], first[1] > last[2]
    ends = f"{first[0]:.3f} at layer {layers[0]}, {last[0]:.3f} at layer {layers[-1]}"
    if low_i is not None and above["first_minus_dip"] and above["last_minus_dip"]:
        return (f"U-shaped: {first[0]:.3f} at layer {layers[0]}, lowest {values[low_i][0]:.3f} at layer "
                f"{layers[low_i]}, {last[0]:.3f} at layer {layers[-1]}")
    if rises:
        return f"rises with depth: {ends}"
    if falls:
        return f"falls with depth: {ends}"
    dip = f", lowest {values[low_i][0]:.3f} at layer {layers[low_i]}" if low_i is not None else ""
    return f"flat within its intervals: {ends}{dip}"


def _span(layers: Sequence[int]) -> str:
    layers = list(layers)
    if not layers:
        return "no layers"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"


def layer_claims(record: Mapping[str, Any] | None) -> list[dict]:
    """Per layer statistic: the shape over depth (`shape`) of the trained model and of each
    twin, and in how many layers the trained model lies above every twin (paired intervals are
    not kept per layer in the record, so "above" compares intervals: trained low > twin high).

    ```python
    >>> from moe_interp.experiments._claims import layer_claims
    >>> rec = {"layers": [0, 1, 2], "level": 0.95, "unit": "language",
    ...        "mean_divergence": {"trained": [[0.26, 0.2, 0.3], [0.15, 0.12, 0.17], [0.22, 0.19, 0.25]],
    ...                            "twin 1": [[0.2, 0.18, 0.22], [0.3, 0.28, 0.33], [0.42, 0.38, 0.47]]}}
    >>> c = layer_claims(rec)[0]
    >>> c["verdict"]
    'trained: U-shaped; twins: rises with depth'

    ```
    """
    if not record:
        return []
    out = []
    layers = record["layers"]
    for statistic, name in LAYER_NAMES.items():
        if statistic not in record:
            continue
        models = record[statistic]
        twins = [m for m in models if m != "trained"]
        contrasts = (record.get("contrasts") or {}).get(statistic, {})
        shapes = {m: shape(models[m], layers, contrasts.get(m)) for m in models}
        kinds = {m: shapes[m].split(":")[0] for m in models}
        twin_kinds = sorted({kinds[m] for m in twins})
        paired = (record.get("difference") or {}).get(statistic)
        if paired:  # trained - twin, paired over the same resampled languages
            above = [layer for i, layer in enumerate(layers) if all(paired[m][i][1] > 0 for m in twins)]
        else:  # the intervals alone (conservative)
            above = [layer for i, layer in enumerate(layers)
                     if all(models["trained"][i][1] > models[m][i][2] for m in twins)] if twins else []
        out.append({"claim": f"{name} per MoE layer ({_span(layers)}, intervals over languages)",
                    "trained": shapes["trained"],
                    "controls": "; ".join(f"{m}: {shapes[m]}" for m in twins),
                    "verdict": f"trained: {kinds['trained']}; twins: {', '.join(twin_kinds) or 'none'}",
                    "sentence": f"{name[0].upper() + name[1:]} per MoE layer: trained model {shapes['trained']}; "
                                + "; ".join(f"{m} {shapes[m]}" for m in twins)
                                + (f". The trained model lies above every twin in {len(above)} of {len(layers)} layers "
                                   f"({', '.join(map(str, above)) or 'none'}; "
                                   f"{'paired differences' if paired else 'intervals compared'})." if twins else ".")})
    return out


def ablation_claims(record: Mapping[str, Any] | None) -> list[dict]:
    """One claim per ablated language: its verdict in each band (the rules of
    `moe_interp.experiments.ablation_verdict`), with the band's own effect next to the
    same-family, other-family and random-set effects of the band where the own effect is
    largest.

    ```python
    >>> from moe_interp.experiments._claims import ablation_claims
    >>> row = dict(language="deu", family="Indo-European", band="middle-third", layers=[3, 4], pairs=5, texts=12,
    ...            own=0.11, own_low=0.09, own_high=0.13, same_family=0.12, same_family_low=0.1,
    ...            same_family_high=0.14, same_family_languages="eng, nld", other_family=0.02, other_family_low=0.01,
    ...            other_family_high=0.03, random=0.01, random_low=0.0, random_high=0.03, random_p=0.048,
    ...            controls=20, verdict="family-level")
    >>> c = ablation_claims({"exclusive_among": "exclusive among the 55 profiled languages", "rows": [row]})[0]
    >>> c["verdict"]
    'middle-third: family-level'
    >>> print(c["sentence"])
    Ablating deu's exclusive experts (exclusive among the 55 profiled languages), middle-third (layers 3-4): family-level: own +0.1100 [+0.0900, +0.1300] bits/byte, same family (eng, nld) +0.1200 [+0.1000, +0.1400], other families +0.0200 [+0.0100, +0.0300], 20 random sets +0.0100 (draws +0.0000 to +0.0300, rank p = 0.048).

    ```
    """
    if not record:
        return []
    by_language: dict[str, list] = {}
    for row in record["rows"]:
        by_language.setdefault(row["language"], []).append(row)
    out = []
    for language, rows in by_language.items():
        sentences = []
        for r in rows:
            if not r["pairs"]:
                sentences.append(f"{r['band']} ({_span(r['layers'])}): {r['verdict']} (no exclusive expert)")
                continue
            same = (f"same family ({r['same_family_languages']}) "
                    f"{cell((r['same_family'], r['same_family_low'], r['same_family_high']), 4, True)}"
                    if r.get("same_family_languages") else "no same-family language evaluated")
            sentences.append(
                f"{r['band']} ({_span(r['layers'])}): {r['verdict']}: own "
                f"{cell((r['own'], r['own_low'], r['own_high']), 4, True)} bits/byte, {same}, other families "
                f"{cell((r['other_family'], r['other_family_low'], r['other_family_high']), 4, True)}, "
                f"{r['controls']} random sets {r['random']:+.4f} (draws {r['random_low']:+.4f} to "
                f"{r['random_high']:+.4f}, rank p = {r['random_p']:.3g})")
        top = max(rows, key=lambda r: (r["pairs"] > 0, r["own"]))
        pairs = ", ".join(f"{r['band']} {r['pairs']}" for r in rows)
        other = cell((top["other_family"], top["other_family_low"], top["other_family_high"]), 4, True)
        out.append({"claim": f"ablating {language}'s exclusive experts ({pairs} (layer, expert) pairs)",
                    "trained": "; ".join(f"{r['band']} own {cell((r['own'], r['own_low'], r['own_high']), 4, True)}"
                                         if r["pairs"] else f"{r['band']}: nothing ablated" for r in rows),
                    "controls": "n/a: nothing ablated" if not top["pairs"] else f"{top['band']}: same family "
                                + (cell((top['same_family'], top['same_family_low'], top['same_family_high']), 4, True)
                                   if top.get("same_family_languages") else "n/a")
                                + f", other families {other}"
                                + f", random sets {top['random']:+.4f} ({top['random_low']:+.4f} to "
                                  f"{top['random_high']:+.4f})",
                    "verdict": "; ".join(f"{r['band']}: {r['verdict']}" for r in rows),
                    "sentence": f"Ablating {language}'s exclusive experts ({record.get('exclusive_among', '')}), "
                                + "; ".join(sentences) + "."})
    return out


def steering_claims(record: Mapping[str, Any] | None) -> list[dict]:
    """One claim per steering scale (routing moved on the steered layers, the outcome with its
    interval, the verdict), and the dose-response in sentences
    (`moe_interp.experiments.dose_response_findings`)."""
    if not record:
        return []
    from moe_interp.experiments._steering import dose_response_findings

    dose = record["dose_response"]
    langs = ", ".join(record["languages"])
    findings = " ".join(dose_response_findings(dose, chosen=record["scale"],
                                               dev_scores={float(k): v for k, v in record["dev_scores"].items()}))
    out = []
    for r in dose:
        chosen = " (chosen on dev)" if r["scale"] == record["scale"] else ""
        layers = f", mean over the steered layers {r['steered_layers']}" if r.get("steered_layers") else ""
        out.append({"claim": f"steering {langs} toward hub-shared experts, scale {r['scale']:g}{chosen}",
                    "trained": f"gain {cell((r['gain'], r['gain_low'], r['gain_high']), 4, True)} bits/byte",
                    "controls": f"top-k sets changed {100 * r['changed']:.1f}%, gate mass "
                                f"{r['mass_moved']:+.3f}{layers}",
                    "verdict": r["verdict"], "sentence": findings,
                    "short": f"steering {langs}, scale {r['scale']:g}{chosen}: gain "
                             f"{cell((r['gain'], r['gain_low'], r['gain_high']), 4, True)} bits/byte, "
                             f"{100 * r['changed']:.1f}% of top-k sets changed: {r['verdict']}"})
    return out


def claims(record: Mapping[str, Any]) -> list[dict]:
    """Every claim of one measurement record, in the order the demo prints them: family
    structure (all languages, then Latin script), the depth profile, ablations, steering.
    Each: `claim` (what, where, units), `trained`, `controls`, `verdict`, `sentence`, `short`
    (one line for a list of key findings)."""
    out = []
    for subset in ("all", "Latn"):
        fam = (record.get("family") or {}).get(subset)
        if fam:
            out += [family_claim(fam, statistic) for statistic in STATISTIC_NAMES if statistic in fam]
    out += layer_claims(record.get("layers")) + ablation_claims(record.get("ablation")) + \
        steering_claims(record.get("steering"))
    for c in out:
        c.setdefault("short", f"{c['claim']}: {c['verdict']}")
    return out


def seed_claims(records: Mapping[Any, Mapping[str, Any]], level: float = 0.95) -> list[list[str]]:
    """The recipe's claims across training seeds, side by side: one row per claim, one column
    per seed (its estimate and verdict), and a last column at the seed level: for the family
    statistics an exact rank test of the trained models against every twin of every seed
    (`moe_interp.analysis.seed_test`; with 3 trained seeds and 9 twins the smallest p-value is
    1/220), for the others the number of seeds in which the verdict holds.

    Returns the rows `[claim, seed..., across seeds]`; `seed_header(records)` names the columns.
    """
    from moe_interp.analysis import seed_test

    seeds = sorted(records)
    rows = []
    for subset in ("all", "Latn"):
        for statistic, name in STATISTIC_NAMES.items():
            fams = {s: (records[s].get("family") or {}).get(subset) for s in seeds}
            if not all(f and statistic in f for f in fams.values()):
                continue
            first = fams[seeds[0]]
            where = f"{name}, {first['languages']} languages" + (", Latin script" if subset == "Latn" else "") + \
                f", MoE layers {first['layers'][0]}-{first['layers'][-1]}"
            verdicts = [family_claim(fams[s], statistic)["verdict"] for s in seeds]
            cells = [f"{cell(fams[s][statistic]['trained'])}: {v}" for s, v in zip(seeds, verdicts)]
            trained = [fams[s][statistic]["trained"][0] for s in seeds]
            twins = [v[0] for s in seeds for m, v in fams[s][statistic].items() if m.startswith("twin")]
            held = verdicts.count("above every control")
            if twins:
                test = seed_test(trained, twins, level=level)
                across = (f"above every control in {held} of {len(seeds)} seeds; trained - twins "
                          f"{test.difference:+.3f} [{test.low:+.3f}, {test.high:+.3f}] over seeds, exact rank test "
                          f"p = {test.p_value:.3g} ({len(trained)} trained vs {len(twins)} twins; smallest possible "
                          f"{test.min_p:.3g})")
            else:
                across = f"above every control in {held} of {len(seeds)} seeds"
            rows.append([where, *cells, across])
    layer_rows = {s: layer_claims(records[s].get("layers")) for s in seeds}
    if all(layer_rows.values()):
        for i, c in enumerate(layer_rows[seeds[0]]):
            verdicts = [layer_rows[s][i]["verdict"] for s in seeds]
            kinds = [v.split(";")[0].removeprefix("trained: ") for v in verdicts]
            top = max(set(kinds), key=kinds.count)
            rows.append([c["claim"], *verdicts, f"trained {top} in {kinds.count(top)} of {len(seeds)} seeds"])
    abl = {s: (records[s].get("ablation") or {}).get("rows", []) for s in seeds}
    bands = list(dict.fromkeys(r["band"] for s in seeds for r in abl[s]))
    for band in bands:
        counts = []
        for s in seeds:
            verdicts = [r["verdict"] for r in abl[s] if r["band"] == band]
            tally = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
            counts.append(", ".join(f"{n} {v}" for v, n in tally.items()) or "n/a")
        specific = [sum(r["verdict"] == "language-specific" for r in abl[s] if r["band"] == band) for s in seeds]
        languages = len([r for r in abl[seeds[0]] if r["band"] == band])
        rows.append([f"ablation verdicts, {band} (of {languages} languages)", *counts,
                     f"language-specific: {', '.join(map(str, specific))} per seed"])
    steer = {s: records[s].get("steering") for s in seeds}
    if all(steer.values()):
        from moe_interp.experiments._steering import dose_response_across, dose_response_across_findings, dose_response_findings

        table = dose_response_across({s: steer[s] for s in seeds})
        for scale in sorted({float(r["scale"]) for s in seeds for r in steer[s]["dose_response"]}):
            if scale == 0:
                continue
            cells = []
            for s in seeds:
                r = next(r for r in steer[s]["dose_response"] if float(r["scale"]) == scale)
                cells.append(f"gain {cell((r['gain'], r['gain_low'], r['gain_high']), 4, True)}; sets changed "
                             f"{100 * r['changed']:.1f}%")
            part = table[table.scale == scale].iloc[0]
            rows.append([f"steering toward hub-shared experts, scale {scale:g}", *cells,
                         f"improved in {int(part.seeds_improved)}, worsened in {int(part.seeds_worsened)} of "
                         f"{int(part.n_seeds)} seeds"])
        cells = []
        for s in seeds:
            routing = dose_response_findings(steer[s]["dose_response"])[0]
            moved = "routing moved monotonically" if routing.startswith("Routing moved monotonically") else \
                routing.split(" (")[0].lower()
            cells.append(f"{moved}; the dev split chose scale {float(steer[s]['scale']):g}")
        rows.append(["steering, in words", *cells, " ".join(dose_response_across_findings(table))])
    return rows


def seed_header(records: Mapping[Any, Any]) -> list[str]:
    """The column names of `seed_claims`."""
    return ["claim (held-out texts, 95% intervals)", *[f"seed {s}" for s in sorted(records)], "across seeds"]


README_START = ("<!-- claims: generated by python scripts/train_demo_model.py --readme, from the model card's "
                "eval.json files -->")
README_END = "<!-- end of claims -->"


def readme_block(records: Mapping[Any, Mapping[str, Any]]) -> str:
    """The README's claims block: the recipe's claims across the training seeds side by side
    (`seed_claims`), between the markers the test of the README checks.

    ```python
    >>> from moe_interp.experiments._claims import readme_block
    >>> readme_block({}).splitlines()[1]
    'No training seed measured in the current format: run python scripts/train_demo_model.py --eval-only.'

    ```
    """
    from moe_interp.experiments.report import markdown_table

    if not records:
        body = "No training seed measured in the current format: run python scripts/train_demo_model.py --eval-only."
    else:
        seeds = sorted(records)
        body = (f"Measured on {len(seeds)} training seeds of the demo recipe ({', '.join(map(str, seeds))}; seed "
                f"{seeds[0]} ships), held-out texts, 95% percentile intervals. Each cell is worded by the rules of "
                "`moe_interp.experiments._claims` from the numbers in the seeds' `eval.json`; the model card has every claim "
                "of each seed with its controls.\n\n" + markdown_table(seed_header(records), seed_claims(records)))
    return f"{README_START}\n{body}\n{README_END}"
