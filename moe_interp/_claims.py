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

__all__ = ["cell", "family_claim", "shape"]

STATISTIC_NAMES = {"ari": "family ARI", "between_within": "between/within-family JS"}


def cell(value: Sequence[float], digits: int = 3, sign: bool = False) -> str:
    """`estimate [low, high]` of an `(estimate, low, high, ...)` triple; `n/a` without an estimate.

    ```python
    >>> from moe_interp._claims import cell
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
    >>> from moe_interp._claims import family_claim
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
            f"{record['layers'][0]}-{record['layers'][-1]}" + (", Latin script" if record.get("script") == "Latn" else "")
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
            "controls": "; ".join(f"{m} {cell(v)}" for m, v in stat.items()
                                  if m not in ("trained", "difference", "p_value", "p_value_controls")),
            "verdict": verdict, "sentence": f"{head}; {middle}.{tail}"}


def shape(values: Sequence[Sequence[float]], layers: Sequence[int]) -> str:
    """The shape of a statistic over depth, from `(estimate, low, high)` per layer, by rule:
    "U-shaped" when the first and the last layer both lie above the lowest interior layer
    (their intervals do not overlap its interval); "rises with depth" when the last layer lies
    above the first; "falls with depth" when the first lies above the last; otherwise "flat
    within its intervals". The sentence names the layers and values.

    ```python
    >>> from moe_interp._claims import shape
    >>> shape([(0.26, 0.25, 0.27), (0.15, 0.14, 0.16), (0.22, 0.21, 0.23)], [0, 2, 7])
    'U-shaped: 0.260 at layer 0, lowest 0.150 at layer 2, 0.220 at layer 7'
    >>> shape([(0.1, 0.09, 0.11), (0.15, 0.14, 0.16), (0.2, 0.19, 0.21)], [0, 1, 2])
    'rises with depth: 0.100 at layer 0, 0.200 at layer 2'

    ```
    """
    if len(values) < 2:
        return "one layer: no shape"
    first, last = values[0], values[-1]
    interior = range(1, len(values) - 1)
    low_i = min(interior, key=lambda i: values[i][0]) if len(values) > 2 else None
    ends = f"{first[0]:.3f} at layer {layers[0]}, {last[0]:.3f} at layer {layers[-1]}"
    if low_i is not None:
        dip = values[low_i]
        if first[1] > dip[2] and last[1] > dip[2]:
            return (f"U-shaped: {first[0]:.3f} at layer {layers[0]}, lowest {dip[0]:.3f} at layer {layers[low_i]}, "
                    f"{last[0]:.3f} at layer {layers[-1]}")
    if last[1] > first[2]:
        return f"rises with depth: {ends}"
    if first[1] > last[2]:
        return f"falls with depth: {ends}"
    return f"flat within its intervals: {ends}"
