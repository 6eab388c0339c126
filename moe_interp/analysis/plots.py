"""Plotly figures of `RoutingCounts` analyses. Every function returns a `go.Figure` and never shows it.

```python
>>> import moe_interp as mi
>>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
>>> fig = mi.plots.divergence_heatmap(p, layers="middle")     # p: released MGSM counts
>>> import tempfile
>>> fig.write_html(f"{tempfile.mkdtemp()}/divergence.html", include_plotlyjs=True)  # self-contained, offline

```
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram

from moe_interp.core import languages
from moe_interp.core._counts import RoutingCounts
from moe_interp.core._layers import bands as _bands
from moe_interp.analysis import (
    METRICS,
    THRESHOLD,
    Health,
    Vocabulary,
    cluster,
    divergence,
    exclusive_experts,
    health,
    mean_offdiagonal,
    shared_experts,
)
from moe_interp.analysis import layer_profile as _layer_profile
from moe_interp.analysis import SplitEffect, co_activation_rate
from moe_interp.analysis import split_effect as _split_effect
from moe_interp.core._expert_set import PAPER, check_k

__all__ = ["co_activation_heatmap", "comparison", "dendrogram", "divergence_heatmap", "expert_counts", "forest_plot",
           "language_layer_heatmap", "layer_profile", "load_health", "routing_entropy", "routing_heatmap",
           "split_effect",
           "vocabulary_specialization"]

_METRIC_NAMES = {"js": "Jensen-Shannon divergence", "cosine": "cosine distance", "hellinger": "Hellinger distance",
                 "kl_sym": "symmetric KL (bits)"}


def routing_heatmap(stats: RoutingCounts, language: str | None = None, value: str = "frequency") -> go.Figure:
    """Heatmap of how often each expert is used, MoE layer (y) by expert (x), per language.

    With `language=None` there is one trace per language and a menu to switch between
    them (the first is shown). `value`: `"frequency"` (`count / tokens`, rows sum to
    `top_k`) or `"gate_mass"` (routing weight per token).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> fig = mi.plots.routing_heatmap(p, "sw")
    >>> fig.data[0].z.shape, fig.layout.yaxis.title.text
    ((48, 128), 'MoE layer')

    ```
    """
    if value not in ("frequency", "gate_mass"):
        raise ValueError(f"value must be 'frequency' or 'gate_mass', got {value!r}")
    chosen = list(stats.languages) if language is None else [stats.languages[stats.language_index(language)]]
    per_token = stats.frequency() if value == "frequency" else (
        stats.gate_mass.double() / stats.tokens.clamp(min=1).double()[:, None, None])
    zmax = float(per_token[[stats.language_index(l) for l in chosen]].max())
    fig = go.Figure()
    for n, lang in enumerate(chosen):
        fig.add_trace(go.Heatmap(z=per_token[stats.language_index(lang)].numpy(), x=list(range(stats.num_experts)),
                                 y=list(stats.layers), name=lang, visible=n == 0, zmin=0.0, zmax=zmax,
                                 colorscale="Viridis", colorbar={"title": {"text": f"{value} per token"}},
                                 hovertemplate="layer %{y}<br>expert %{x}<br>%{z:.4f}<extra>" + lang + "</extra>"))
    title = f"Routing {value} per token" + (f": {chosen[0]}" if len(chosen) == 1 else "")
    fig.update_layout(title={"text": title}, xaxis_title="expert", yaxis_title="MoE layer")
    # layers and experts are integers: no 0.5 ticks on small models
    fig.update_yaxes(tickformat="d", dtick=1 if len(stats.layers) <= 16 else None)
    fig.update_xaxes(tickformat="d", dtick=1 if stats.num_experts <= 32 else None)
    if len(chosen) > 1:
        buttons = [{"label": lang, "method": "update",
                    "args": [{"visible": [i == n for i in range(len(chosen))]},
                             {"title": {"text": f"Routing {value} per token: {lang}"}}]}
                   for n, lang in enumerate(chosen)]
        fig.update_layout(title={"text": f"Routing {value} per token: {chosen[0]}"},
                          updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15,
                                        "yanchor": "top", "direction": "down"}])
    return fig


def _matrix_trace(matrix: np.ndarray, labels: list[str], zmax: float, metric: str, showscale: bool) -> go.Heatmap:
    return go.Heatmap(z=matrix, x=labels, y=labels, zmin=0.0, zmax=zmax, colorscale="Magma_r", showscale=showscale,
                      colorbar={"title": {"text": metric}},
                      texttemplate="%{z:.3f}", hovertemplate="%{y} vs %{x}: %{z:.4f}<extra></extra>")


def divergence_heatmap(stats: RoutingCounts, metric: str = "js", layers: Any = None, bands: bool = False,
                       scheme: str | Sequence[float] = "paper") -> go.Figure:
    """Language x language divergence, averaged over `layers`, or one panel per band.

    `bands=True` draws early / middle / late panels split by `scheme` (`"paper"`: its
    10/48 and 40/48 edges, as `MoESpec.band`; `"thirds"`: equal thirds, as the reference
    numbers computed from the paper's released counts use; see `mi.analysis.bands`).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> fig = mi.plots.divergence_heatmap(p, layers="middle")
    >>> fig.data[0].z.shape, fig.layout.xaxis.title.text
    ((8, 8), 'language')
    >>> len(mi.plots.divergence_heatmap(p, bands=True).data)
    3

    ```
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    labels = list(stats.languages)
    name = _METRIC_NAMES[metric]
    if not bands:
        per_layer = divergence(stats, metric, layers)
        matrix = per_layer.mean(0).numpy()
        used = [stats.layers[i] for i in stats.layer_positions(layers)]
        zmax = 1.0 if metric != "kl_sym" else float(np.nanmax(matrix))
        fig = go.Figure(_matrix_trace(matrix, labels, zmax, metric, True))
        span = f"layers {used[0]}-{used[-1]}" if used == list(range(used[0], used[-1] + 1)) else f"{len(used)} layers"
        fig.update_layout(title={"text": f"{name}, mean over {span}"}, xaxis_title="language", yaxis_title="language",
                          yaxis_autorange="reversed")
        return fig
    per_layer = divergence(stats, metric)
    parts = _bands(stats.layers, scheme)
    matrices = {b: per_layer[[stats.layer_index(l) for l in members]].mean(0).numpy() for b, members in parts.items()}
    zmax = 1.0 if metric != "kl_sym" else float(max(np.nanmax(m) for m in matrices.values()))
    fig = make_subplots(rows=1, cols=len(parts), horizontal_spacing=0.08,
                        subplot_titles=[f"{b}: layers {m[0]}-{m[-1]}" for b, m in parts.items()])
    for i, (band, matrix) in enumerate(matrices.items(), start=1):
        fig.add_trace(_matrix_trace(matrix, labels, zmax, metric, i == len(parts)), row=1, col=i)
        fig.update_xaxes(title_text="language", row=1, col=i)
        fig.update_yaxes(title_text="language" if i == 1 else None, autorange="reversed", row=1, col=i)
    fig.update_layout(title={"text": f"{name} by layer band"})
    return fig


def _family_colors(families: Sequence[str]) -> dict[str, str]:
    palette = qualitative.D3 + qualitative.Set2 + qualitative.Dark24
    return {family: palette[i % len(palette)] for i, family in enumerate(sorted(set(families)))}


def _family_of(language: str, families: Mapping[str, str] | None) -> str:
    if families is not None and language in families:
        return families[language]
    try:
        return languages.info(language).family
    except KeyError:
        return "unknown"


def dendrogram(stats: RoutingCounts, metric: str = "js", layers: Any = None, method: str = "average",
               families: Mapping[str, str] | None = None) -> go.Figure:
    """Dendrogram of the languages' mean routing divergence; leaves coloured by family.

    Families come from `moe_interp.core.languages` unless `families` maps a label to one.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> fig = mi.plots.dendrogram(p, layers="middle")
    >>> sorted(t.name for t in fig.data if t.mode == "markers+text")
    ['Indo-European', 'Japonic', 'Niger-Congo', 'Sino-Tibetan']

    ```
    """
    if len(stats.languages) < 2:
        raise ValueError("a dendrogram needs at least 2 languages")
    clustering = cluster(stats, metric, layers, method)
    tree = scipy_dendrogram(clustering.linkage, labels=list(clustering.languages), no_plot=True)
    xs, ys = [], []
    for icoord, dcoord in zip(tree["icoord"], tree["dcoord"]):
        xs += list(icoord) + [None]
        ys += list(dcoord) + [None]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#555", "width": 2}, name="tree",
                               showlegend=False, hoverinfo="skip"))
    leaves = tree["ivl"]
    positions = [5 + 10 * i for i in range(len(leaves))]
    family = {leaf: _family_of(leaf, families) for leaf in leaves}
    colors = _family_colors(list(family.values()))
    for fam in sorted(set(family.values())):
        members = [(x, leaf) for x, leaf in zip(positions, leaves) if family[leaf] == fam]
        fig.add_trace(go.Scatter(x=[x for x, _ in members], y=[0.0] * len(members), mode="markers+text",
                                 text=[leaf for _, leaf in members], textposition="bottom center", name=fam,
                                 marker={"color": colors[fam], "size": 14}, textfont={"color": colors[fam]},
                                 hovertemplate="%{text}<extra>" + fam + "</extra>"))
    top = float(np.max(clustering.linkage[:, 2])) if len(clustering.linkage) else 1.0
    fig.update_layout(title={"text": f"Languages clustered by routing ({method} linkage, {metric})"},
                      xaxis={"title": {"text": "language"}, "tickvals": positions, "ticktext": leaves,
                             "range": [0, 10 * len(leaves)]},
                      yaxis={"title": {"text": f"{_METRIC_NAMES[metric]} (merge height)"},
                             "range": [-0.12 * top, 1.05 * top]},
                      legend={"title": {"text": "family"}})
    return fig


def layer_profile(stats: RoutingCounts, metric: str = "js", k: int | None = None, threshold: float = THRESHOLD,
                  scheme: str | Sequence[float] = "paper") -> go.Figure:
    """Per-layer curves: mean divergence, shared fraction and entropy (top), exclusive experts (bottom).

    Dotted vertical lines mark the early / middle / late band edges.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> fig = mi.plots.layer_profile(p)
    >>> [t.name for t in fig.data][:3]
    ['mean divergence (js)', 'shared fraction', 'mean entropy']

    ```
    """
    prof = _layer_profile(stats, metric, k, threshold)
    x = list(prof.layers)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.5, 0.5])
    for name, values in ((f"mean divergence ({metric})", prof.mean_divergence), ("shared fraction", prof.shared_fraction),
                         ("mean entropy", prof.entropy.nanmean(0))):
        fig.add_trace(go.Scatter(x=x, y=values.numpy(), mode="lines+markers", name=name), row=1, col=1)
    palette = qualitative.D3 + qualitative.Dark24
    for i, language in enumerate(stats.languages):
        fig.add_trace(go.Scatter(x=x, y=prof.exclusive[i].numpy(), mode="lines", name=f"exclusive: {language}",
                                 line={"color": palette[i % len(palette)]}), row=2, col=1)
    for members in list(_bands(prof.layers, scheme).values())[1:]:
        for row in (1, 2):
            fig.add_vline(x=members[0] - 0.5, line={"dash": "dot", "color": "grey"}, row=row, col=1)
    fig.update_yaxes(title_text="value (0-1)", row=1, col=1)
    fig.update_yaxes(title_text=f"exclusive experts (k={prof.k}, >{threshold})", row=2, col=1)
    fig.update_xaxes(title_text="MoE layer", row=2, col=1)
    fig.update_xaxes(title_text="MoE layer", row=1, col=1)
    fig.update_layout(title={"text": "Layer profile of routing across languages"}, height=700)
    return fig


def expert_counts(stats: RoutingCounts, reference: str | None = None, k: int | None = None, threshold: float = THRESHOLD,
                  shared_k: int | None = None, shared_threshold: float = 0.7, shared_layers: Any = "middle") -> go.Figure:
    """Bars per language: exclusive experts (among all languages) and experts shared with `reference`.

    Exclusive: the paper's algorithm with `k`, `threshold` over all layers. Shared: the
    steering set of `(reference, language)` with `shared_k`, `shared_threshold` over
    `shared_layers` (default the middle band; `reference` defaults to English, `"en"` or
    `"eng"`, if present). `k` / `shared_k` default to the paper's 15 / 20 of 128 experts
    scaled to this model (`mi.PAPER.scaled_k`).

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats()          # the paper's released MGSM counts
    >>> fig = mi.plots.expert_counts(p)
    >>> dict(zip(fig.data[0].x, fig.data[0].y))["sw"]
    271

    ```
    """
    if reference is None:
        reference = next((l for l in ("en", "eng") if l in stats.languages), stats.languages[0])
    stats.language_index(reference)
    k = check_k(k, stats.num_experts, stats.top_k)
    shared_k = check_k(shared_k, stats.num_experts, stats.top_k, PAPER.steer_k)
    languages = list(stats.languages)
    exclusive = [exclusive_experts(stats, l, k=k, threshold=threshold).size for l in languages]
    layer_list = [stats.layers[i] for i in stats.layer_positions(shared_layers)]
    others = [l for l in languages if l != reference]
    shared = [shared_experts(stats, [reference, l], k=shared_k, threshold=shared_threshold, layers=layer_list).size
              for l in others]
    fig = go.Figure([go.Bar(x=languages, y=exclusive, name="exclusive", text=exclusive, textposition="outside"),
                     go.Bar(x=others, y=shared, name=f"shared with {reference}", text=shared, textposition="outside")])
    fig.update_layout(barmode="group", xaxis_title="language", yaxis_title="(layer, expert) pairs",
                      title={"text": f"Exclusive experts (k={k}, >{threshold}, all layers) and experts shared with "
                                     f"{reference} (k={shared_k}, <{shared_threshold}, layers {layer_list[0]}-"
                                     f"{layer_list[-1]})"})
    return fig


# Colour per kind of row: the claim's own estimate stands out, controls recede.
_KIND_COLORS = {"trained": "#1f77b4", "control": "#7f7f7f", "baseline": "#ff7f0e"}


def _forest_rows(rows: Any) -> list[tuple[str, float, float, float, str]]:
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            try:
                row = [row[key] for key in ("label", "estimate", "low", "high", "kind")]
            except KeyError as missing:
                raise ValueError(f"forest_plot row {i} lacks {missing}: give (label, estimate, low, high, kind) or a "
                                 "mapping with those keys") from None
        if len(row) != 5:
            raise ValueError(f"forest_plot row {i} has {len(row)} fields: give (label, estimate, low, high, kind)")
        label, estimate, low, high, kind = row
        estimate, low, high = float(estimate), float(low), float(high)
        if not all(np.isfinite([estimate, low, high])) or not low <= estimate <= high:
            raise ValueError(f"forest_plot row {i} ({label!r}): need finite low <= estimate <= high, got "
                             f"{estimate} [{low}, {high}]")
        out.append((str(label), estimate, low, high, str(kind)))
    if not out:
        raise ValueError("forest_plot needs at least one row (label, estimate, low, high, kind)")
    labels = [r[0] for r in out]
    repeated = sorted({l for l in labels if labels.count(l) > 1})
    if repeated:
        raise ValueError(f"forest_plot labels must be unique (one row each), repeated: {repeated}")
    return out


def forest_plot(rows: Any, *, title: str, x_title: str, reference: float | int = 0.0,
                reference_label: str | None = None) -> go.Figure:
    """A forest plot: one row per estimate with its interval as a horizontal error bar, a
    colour per kind of row (`"trained"`, `"control"`, `"baseline"`, or any other), top to
    bottom in the order given, and a dotted vertical line at `reference` (0 for a
    difference, 1 for a ratio).

    **Arguments:** `rows`: `(label, estimate, low, high, kind)` tuples, mappings with those
    keys, or a DataFrame with those columns; labels unique. `title`, `x_title` (say the
    units); `reference`, and `reference_label` written beside its line.

    ```python
    >>> import moe_interp as mi
    >>> fig = mi.plots.forest_plot([("trained", 0.25, 0.18, 0.31, "trained"), ("twin 1", 0.05, -0.02, 0.12, "control"),
    ...                             ("byte bigrams", 0.36, 0.30, 0.41, "baseline")],
    ...                            title="Family ARI, middle band", x_title="ARI (0 = chance)")
    >>> [(t.name, list(t.y), list(t.x)) for t in fig.data]
    [('trained', ['trained'], [0.25]), ('control', ['twin 1'], [0.05]), ('baseline', ['byte bigrams'], [0.36])]
    >>> fig.layout.shapes[0].x0, list(fig.layout.yaxis.categoryarray)
    (0.0, ['trained', 'twin 1', 'byte bigrams'])

    ```
    """
    rows = _forest_rows(rows)
    labels = [r[0] for r in rows]
    kinds = list(dict.fromkeys(r[4] for r in rows))
    known = [k for k in _KIND_COLORS if k in kinds]
    kinds = known + [k for k in kinds if k not in known]                   # legend: trained, control, baseline first
    others = [c for c in qualitative.D3 if c.lower() not in _KIND_COLORS.values()]
    colors = {**{k: others[i % len(others)] for i, k in enumerate(k for k in kinds if k not in _KIND_COLORS)},
              **_KIND_COLORS}
    fig = go.Figure()
    for kind in kinds:
        mine = [r for r in rows if r[4] == kind]
        fig.add_trace(go.Scatter(
            x=[r[1] for r in mine], y=[r[0] for r in mine], mode="markers", name=kind,
            marker={"color": colors[kind], "size": 11, "symbol": "diamond" if kind == "trained" else "circle"},
            error_x={"type": "data", "symmetric": False, "array": [r[3] - r[1] for r in mine],
                     "arrayminus": [r[1] - r[2] for r in mine], "color": colors[kind], "thickness": 2, "width": 6},
            customdata=[[r[2], r[3]] for r in mine],
            hovertemplate="%{y}: %{x:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra>" + kind + "</extra>"))
    label = {"annotation_text": reference_label, "annotation_position": "top"} if reference_label else {}
    fig.add_vline(x=float(reference), line={"dash": "dot", "color": "black"}, **label)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels, autorange="reversed",
                     automargin=True, title_text=None)
    fig.update_layout(title={"text": title}, xaxis_title=x_title, legend={"title": {"text": "kind"}},
                      height=max(260, 120 + 34 * len(rows)))
    return fig


def _family_order(languages: Sequence[str], families: Mapping[str, str] | None) -> tuple[list[int], list[str]]:
    """Row order (indices into `languages`) grouped by family, families alphabetical, the
    given order within each; and each row's family (`None`: the given order, no families)."""
    if families is None:
        return list(range(len(languages))), []
    family = [_family_of(l, families) for l in languages]
    order = sorted(range(len(languages)), key=lambda i: (family[i], i))
    return order, [family[i] for i in order]


def language_layer_heatmap(matrix: Any, languages: Sequence[str], layers: Sequence[int], *, title: str,
                           colorbar: str, families: Mapping[str, str] | None = None,
                           text_format: str | None = None) -> go.Figure:
    """A language (rows) x MoE layer (columns) heatmap of one value per cell, e.g. each
    language's exclusive experts per layer (`stats.layer_profile().exclusive`).

    With `families` (`{language: family}`; languages it lacks are looked up in
    `moe_interp.core.languages`) the rows are grouped by family (families alphabetical, the given
    order within each), each group named on the right and separated by a line.

    **Arguments:** `matrix`: `[len(languages), len(layers)]` values (array, tensor or
    nested lists); `title`; `colorbar`: the colour bar's title (say the units);
    `text_format`: a plotly format to print each value in its cell, e.g. `"%{z:d}"`.

    ```python
    >>> import moe_interp as mi
    >>> fig = mi.plots.language_layer_heatmap([[1, 0], [3, 2], [0, 1]], ["deu", "fin", "nld"], [0, 1],
    ...                                       title="Exclusive experts per layer", colorbar="experts",
    ...                                       families={"deu": "Germanic", "nld": "Germanic", "fin": "Uralic"})
    >>> list(fig.data[0].y), fig.data[0].z.tolist()
    (['deu', 'nld', 'fin'], [[1, 0], [0, 1], [3, 2]])
    >>> [a.text for a in fig.layout.annotations]
    ['Germanic', 'Uralic']

    ```
    """
    matrix = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix)
    languages, layers = [str(l) for l in languages], [int(l) for l in layers]
    if matrix.shape != (len(languages), len(layers)):
        raise ValueError(f"matrix has shape {matrix.shape} but {len(languages)} languages x {len(layers)} layers "
                         f"were named: give one row per language and one column per layer")
    order, row_family = _family_order(languages, families)
    rows = [languages[i] for i in order]
    z = matrix[order]
    finite = z[np.isfinite(z)] if np.issubdtype(z.dtype, np.number) else z
    fig = go.Figure(go.Heatmap(
        z=z, x=layers, y=rows, colorscale="Viridis", zmin=0 if finite.size and finite.min() >= 0 else None,
        texttemplate=text_format, colorbar={"title": {"text": colorbar, "side": "top"}, "orientation": "h",
                                            "x": 0.5, "xanchor": "center", "y": 1.0, "yanchor": "bottom",
                                            "len": 0.6, "thickness": 12},
        hovertemplate="%{y}, layer %{x}: %{z}<extra></extra>"))
    longest = 0
    if row_family:
        groups: dict[str, list[int]] = {}
        for position, fam in enumerate(row_family):
            groups.setdefault(fam, []).append(position)
        for n, (fam, positions) in enumerate(groups.items()):
            fig.add_annotation(text=fam, xref="paper", x=1.01, xanchor="left", yref="y",
                               y=(positions[0] + positions[-1]) / 2, showarrow=False, font={"size": 11})
            if n:
                fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=positions[0] - 0.5,
                              y1=positions[0] - 0.5, line={"color": "white", "width": 2})
        longest = max(len(f) for f in groups)
    fig.update_yaxes(type="category", autorange="reversed", title_text="language", automargin=True)
    fig.update_xaxes(title_text="MoE layer", tickformat="d", dtick=1 if len(layers) <= 16 else None)
    fig.update_layout(title={"text": title}, height=max(320, 170 + 16 * len(rows)),
                      margin={"t": 130, "r": 30 + 7 * longest})
    return fig


def _log_load_ratio(h: Health, scope: str) -> np.ndarray:
    """`log2(load / uniform)` per (layer, expert) of `scope`; `nan` where never chosen (crossed
    in the figure, not a colour off the scale) or where nothing was routed."""
    s = h.scopes.index(scope)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log2(h.load[s].double().numpy() / h.uniform[s].numpy()[:, None])
    ratio[~np.isfinite(ratio)] = np.nan
    return ratio


def _health_row(fig: go.Figure, h: Health, row: int, name: str, scope: str, zrange: float, first: bool) -> None:
    """One row of load-and-health panels: load against uniform (layer x expert, dead experts
    crossed), experts never chosen per layer, and cv and max / mean per layer with intervals."""
    s = h.scopes.index(scope)
    load, ratio = h.load[s].double().numpy(), _log_load_ratio(h, scope)
    layers, experts = list(h.layers), list(range(h.num_experts))
    fig.add_trace(go.Heatmap(z=ratio, x=experts, y=layers, customdata=load, zmid=0.0, zmin=-zrange, zmax=zrange,
                             colorscale="RdBu_r", showscale=first, name=name,
                             colorbar={"title": {"text": "log2(load / uniform)"}, "len": 0.45, "y": 1.0,
                                       "yanchor": "top"},
                             hovertemplate="layer %{y}, expert %{x}<br>%{customdata:d} tokens<br>"
                                           "log2(load / uniform) %{z:.2f}<extra>" + name + "</extra>"),
                  row=row, col=1)
    dead_layer, dead_expert = h.dead[s].nonzero(as_tuple=True)
    fig.add_trace(go.Scatter(x=dead_expert.tolist(), y=[layers[i] for i in dead_layer.tolist()], mode="markers",
                             marker={"symbol": "x", "color": "black", "size": 9}, name="never chosen",
                             legendgroup="dead", showlegend=first,
                             hovertemplate="layer %{y}, expert %{x}: never chosen<extra>" + name + "</extra>"),
                  row=row, col=1)
    counts = h.dead_count[s].tolist()
    fig.add_trace(go.Bar(x=counts, y=layers, orientation="h", text=counts, textposition="outside",
                         marker={"color": "black"}, name="experts never chosen", legendgroup="dead bars", cliponaxis=False,
                         showlegend=first, hovertemplate="layer %{y}: %{x} never chosen<extra>" + name + "</extra>"),
                  row=row, col=2)
    for label, values, ci, color in (("cv", h.cv, h.cv_interval, "#1f77b4"),
                                     ("max / mean", h.max_over_mean, h.max_over_mean_interval, "#d62728")):
        estimate = values[s].numpy()
        error = None
        if ci is not None:
            error = {"type": "data", "symmetric": False, "array": (ci.high[s].numpy() - estimate).clip(0),
                     "arrayminus": (estimate - ci.low[s].numpy()).clip(0)}
        fig.add_trace(go.Scatter(x=estimate, y=layers, error_x=error, mode="markers+lines", name=label,
                                 legendgroup=label, showlegend=first, line={"color": color},
                                 hovertemplate="layer %{y}: " + label + " %{x:.3f}<extra>" + name + "</extra>"),
                      row=row, col=3)
    fig.update_yaxes(title_text=f"{name}: MoE layer", row=row, col=1)


def _health_figure(healths: Sequence[Health], names: Sequence[str], scope: str, title: str | None = None,
                   extra: Sequence[str] = ()) -> go.Figure:
    """Rows of load-and-health panels, one per model; `extra`: the titles of the panels of one
    more row below (its first panel one column wide, its second two)."""
    for h in healths:
        if scope not in h.scopes:
            raise KeyError(f"scope {scope!r} is not one of {list(h.scopes)} (a language, or 'all')")
    n = len(healths)
    specs = [[{}, {}, {}] for _ in healths] + ([[{}, {"colspan": 2}, None]] if extra else [])
    heights = [max(260, 22 * len(h.layers)) for h in healths] + ([300] if extra else [])
    fig = make_subplots(rows=len(specs), cols=3, shared_yaxes=True, column_widths=[0.6, 0.15, 0.25],
                        horizontal_spacing=0.03, vertical_spacing=0.1, specs=specs, row_heights=heights,
                        subplot_titles=[t for name in names for t in
                                        (f"{name}: load against uniform", "never chosen", "cv, max / mean")]
                        + list(extra))
    # the colours saturate at 16x above or below uniform, so a nearly idle expert does not wash out the rest
    zrange = min(4.0, max([1.0] + [float(np.nanmax(np.abs(_log_load_ratio(h, scope)), initial=0.0)) for h in healths]))
    for row, (h, name) in enumerate(zip(healths, names), 1):
        _health_row(fig, h, row, name, scope, zrange, row == 1)
        # axis titles on the last model's row only: above, they would run into the next row's panel titles
        fig.update_xaxes(title_text="expert" if row == n else None, tickformat="d",
                         dtick=1 if h.num_experts <= 32 else None, range=[-0.5, h.num_experts - 0.5], row=row, col=1)
        top = max(1, int(h.dead_count.max()))  # room for the bars' numbers, written outside them
        fig.update_xaxes(range=[0, top * 1.25], row=row, col=2)
        for col in (1, 2, 3):
            fig.update_yaxes(tickformat="d", dtick=1 if len(h.layers) <= 16 else None, row=row, col=col)
    fig.update_xaxes(title_text="experts", row=n, col=2)
    fig.update_xaxes(title_text="ratio (uniform: cv 0, max / mean 1)", row=n, col=3)
    dead = ", ".join(f"{name} {int(h.dead_count[h.scopes.index(scope)].sum())}" for h, name in zip(healths, names))
    title = title or f"Expert load per layer ({scope})"
    height = 120 + 60 * len(specs) + sum(heights)
    margin = {"t": 90, "b": 110}  # the legend goes below the last row's axis titles, inside the bottom margin
    fig.update_layout(title={"text": f"{title}; experts never chosen: {dead}"}, height=height, margin=margin,
                      legend={"orientation": "h", "yanchor": "top", "y": -60 / (height - margin["t"] - margin["b"])})
    return fig


def load_health(stats: RoutingCounts | Health, other: RoutingCounts | Health | None = None, scope: str = "all",
                names: Sequence[str] | None = None, resamples: int = 200) -> go.Figure:
    """Expert load at a glance, one row per model: each expert's load against uniform (layer x
    expert, `log2(load / uniform)`, red above, blue below; experts never chosen crossed), how
    many experts each layer never chose, and the load's coefficient of variation and max / mean
    per layer (bootstrap intervals over texts when the stats keep per-item counts).

    **Arguments:** `stats`: a `RoutingStats` (or its `Health`); `other`: a second model on the
    same texts (e.g. the random-init twin), drawn below; `scope`: a language or `"all"`;
    `names`: the rows' labels; `resamples` of the intervals (`mi.analysis.health`).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> count = torch.tensor([[[4, 2, 2, 0], [2, 2, 2, 2]]])
    >>> s = mi.RoutingStats(("en",), (0, 1), 4, 2, count, count / 2.0, torch.tensor([4]))
    >>> fig = mi.plots.load_health(s, names=["trained"])
    >>> fig.layout.title.text
    'Expert load per layer (all); experts never chosen: trained 1'
    >>> [t.name for t in fig.data]
    ['trained', 'never chosen', 'experts never chosen', 'cv', 'max / mean']

    ```
    """
    parts = [stats] if other is None else [stats, other]
    names = list(names) if names is not None else (["model"] if other is None else ["model", "other"])
    if len(names) != len(parts):
        raise ValueError(f"names gives {len(names)} labels for {len(parts)} models: give one per model")
    healths = [p if isinstance(p, Health) else health(p, resamples=resamples) for p in parts]
    return _health_figure(healths, names, scope)


def routing_entropy(stats: RoutingCounts | Health, other: RoutingCounts | Health | None = None, scope: str = "all",
                    names: Sequence[str] | None = None) -> go.Figure:
    """Routing entropy per MoE layer, per token against per language: the mean entropy of each
    token's router distribution (`RoutingStats.token_entropy`, solid) beside the entropy of the
    scope's aggregate load (`RoutingStats.entropy`, dashed), both over `log(num_experts)` (1: every
    expert equally likely). A layer whose load entropy is near 1 while its tokens' is low spreads
    its tokens over all experts, each routed sharply. `other` (e.g. the random-init twin on the
    same texts) drawn in a second colour; `scope`: a language or `"all"`. Needs
    `RouterRecord(entropy=True)` (the per-token part).

    ```python
    >>> import moe_interp as mi, torch
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with torch.no_grad(), mi.trace(model, mi.RouterRecord(entropy=True)) as tr:
    ...     with tr.invoke("The cat sat on the mat.", group="en"):
    ...         pass
    >>> fig = mi.plots.routing_entropy(tr.routing, names=["tiny"])
    >>> [t.name for t in fig.data]
    ['tiny: per token', 'tiny: load']
    >>> mi.plots.routing_entropy(mi.datasets.reference_stats())
    Traceback (most recent call last):
    ValueError: these stats have no per-token routing entropy: record it with mi.RouterRecord(entropy=True) (mi.trace, or among mi.profile's interventions)

    ```
    """
    parts = [stats] if other is None else [stats, other]
    names = list(names) if names is not None else (["model"] if other is None else ["model", "other"])
    if len(names) != len(parts):
        raise ValueError(f"names gives {len(names)} labels for {len(parts)} models: give one per model")
    healths = [p if isinstance(p, Health) else health(p, resamples=0) for p in parts]
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, (h, name) in enumerate(zip(healths, names)):
        if h.token_entropy is None:
            raise ValueError("these stats have no per-token routing entropy: record it with "
                             "mi.RouterRecord(entropy=True) (mi.trace, or among mi.profile's interventions)")
        if scope not in h.scopes:
            raise KeyError(f"scope {scope!r} is not one of {list(h.scopes)} (a language, or 'all')")
        s, x, color = h.scopes.index(scope), list(h.layers), palette[i % len(palette)]
        for label, values, dash in (("per token", h.token_entropy, "solid"), ("load", h.entropy, "dash")):
            fig.add_trace(go.Scatter(x=x, y=values[s].numpy(), mode="lines+markers", name=f"{name}: {label}",
                                     line={"color": color, "dash": dash},
                                     hovertemplate=f"layer %{{x}}: %{{y:.3f}}<extra>{name}: {label}</extra>"))
    fig.update_layout(title=f"Routing entropy per MoE layer ({scope}): each token's against the load's",
                      xaxis={"title": "MoE layer", "tickformat": "d"},
                      yaxis={"title": "entropy / log(experts)", "range": [0, 1.02]})
    return fig


def comparison(result: Any, scope: str = "all") -> go.Figure:
    """Two models on the same texts (`mi.analysis.compare`'s `Comparison`): each model's load
    and health (as `load_health`), then per layer the mean divergence of the experts matched by
    language profile, with its interval, against a random matching and the best matching with
    the languages shuffled (their ranges as bands), and each model's mean divergence between
    languages.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats().select(["en", "de", "sw"], layers=[0, 1])
    >>> fig = mi.plots.comparison(mi.analysis.compare(p, p, names=("a", "b"), permutations=10))
    >>> [t.name for t in fig.data][-5:]
    ['random matching', 'shuffled languages', 'matched experts', 'between languages: a', 'between languages: b']

    ```
    """
    a, b = result.names
    fig = _health_figure(result.health, result.names, scope, title=f"{a} vs {b}: expert load per layer ({scope})",
                         extra=("matched experts: mean divergence of their language profiles",
                                f"mean {result.metric} divergence between languages"))
    row, x = len(result.health) + 1, list(result.layers)
    pct = round(100 * result.level)
    for label, low, high, color in (("random matching", result.random_low, result.random_high, "#7f7f7f"),
                                    ("shuffled languages", result.shuffled_low, result.shuffled_high, "#ff7f0e")):
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(high.numpy()) + list(low.numpy())[::-1], fill="toself",
                                 fillcolor=color, opacity=0.25, line={"width": 0}, name=label,
                                 hoverinfo="skip"), row=row, col=1)
    error = None
    if not bool(result.quality_low.isnan().all()):
        error = {"type": "data", "symmetric": False,
                 "array": (result.quality_high - result.quality).clip(min=0).numpy(),
                 "arrayminus": (result.quality - result.quality_low).clip(min=0).numpy()}
    fig.add_trace(go.Scatter(x=x, y=result.quality.numpy(), error_y=error, mode="lines+markers", name="matched experts",
                             line={"color": "black"},
                             hovertemplate="layer %{x}: %{y:.3f}<extra>matched experts</extra>"), row=row, col=1)
    palette = qualitative.Plotly
    for i, (name, div) in enumerate(zip(result.names, result.divergence)):
        fig.add_trace(go.Scatter(x=x, y=mean_offdiagonal(div).numpy(), mode="lines+markers",
                                 name=f"between languages: {name}", line={"color": palette[i % len(palette)]}),
                      row=row, col=2)
    fig.update_xaxes(title_text="MoE layer", tickformat="d", row=row, col=1)
    fig.update_xaxes(title_text="MoE layer", tickformat="d", row=row, col=2)
    fig.update_yaxes(title_text=f"Jensen-Shannon (bands: {pct}% of the nulls)", rangemode="tozero", row=row, col=1)
    return fig


def vocabulary_specialization(vocab: Vocabulary, n: int = 5, language: str | None = None) -> go.Figure:
    """Which tokens the experts take (`mi.experiments.vocabulary`'s `Vocabulary`): left, the share
    of each expert's load taken by its `n` most frequent tokens (layer x expert; hover: those
    tokens), against the corpus' own top-`n` share in the title; right, OLMoE's vocabulary
    specialization per layer (the mean share of a token's occurrences routed to its most-used
    expert), over all languages and per language, against `top_k / num_experts` (a router that
    spread every token evenly).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> v = mi.analysis.Vocabulary.from_records(torch.tensor([1, 1, 2, 2]), torch.tensor([0, 0, 1, 1])[:, None, None],
    ...                                         num_experts=2, pieces={1: "a", 2: "b"})
    >>> fig = mi.plots.vocabulary_specialization(v, n=1)
    >>> fig.data[0].z.tolist(), [t.name for t in fig.data[1:]]
    ([[1.0, 1.0]], ['all languages', 'spread evenly'])

    ```
    """
    share = vocab.specialization(n, language).numpy()
    layers, experts = list(vocab.layers), list(range(vocab.num_experts))
    tokens = [[" ".join(repr(p) for p in vocab.top_tokens(layer, e, n, language).piece) if not np.isnan(share[i, e])
               else "never chosen" for e in experts] for i, layer in enumerate(layers)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], horizontal_spacing=0.08,
                        subplot_titles=(f"share of each expert's load taken by its {n} most frequent tokens",
                                        "OLMoE's vocabulary specialization per layer"))
    fig.add_trace(go.Heatmap(z=share, x=experts, y=layers, customdata=tokens, zmin=0.0, zmax=1.0, colorscale="Viridis",
                             name="top-n share", colorbar={"title": {"text": f"top-{n} share"}, "x": 0.6},
                             hovertemplate="layer %{y}, expert %{x}<br>top-" + str(n) + " share %{z:.3f}<br>"
                                           "%{customdata}<extra></extra>"), row=1, col=1)
    scopes = [(language or "all languages", language)] + ([(lang, lang) for lang in vocab.languages]
                                                           if language is None and len(vocab.languages) > 1 else [])
    palette = qualitative.Plotly
    for i, (name, scope) in enumerate(scopes):
        fig.add_trace(go.Scatter(x=layers, y=vocab.vocabulary_specialization(scope).numpy(), mode="lines+markers",
                                 name=name, line={"color": "black" if i == 0 else palette[(i - 1) % len(palette)],
                                                  "width": 3 if i == 0 else 1},
                                 hovertemplate="layer %{x}: %{y:.3f}<extra>" + name + "</extra>"), row=1, col=2)
    even = vocab.top_k / vocab.num_experts
    fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[even, even], mode="lines", name="spread evenly",
                             line={"color": "#7f7f7f", "dash": "dash"}, hoverinfo="skip"), row=1, col=2)
    fig.update_xaxes(title_text="expert", tickformat="d", dtick=1 if vocab.num_experts <= 32 else None, row=1, col=1)
    fig.update_yaxes(title_text="MoE layer", tickformat="d", dtick=1 if len(layers) <= 16 else None, row=1, col=1)
    fig.update_xaxes(title_text="MoE layer", tickformat="d", row=1, col=2)
    fig.update_yaxes(title_text="mean share to the most-used expert", range=[0, 1.05], row=1, col=2)
    scope = "all languages" if language is None else language
    fig.update_layout(title={"text": f"Vocabulary specialization ({scope}); the corpus' own {n} most frequent tokens "
                                     f"take {vocab.corpus_share(n, language):.2f} of its tokens"},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def _strongest_experts(rate: np.ndarray, top: int) -> list[int]:
    """OLMoE's choice of experts to show: down the pairs (i, j) by falling rate, each expert the
    first time it appears, until `top` (`run_moe_analysis.py`, `do_correlation_analysis`)."""
    scores = np.where(np.isfinite(rate), rate, -1.0)
    np.fill_diagonal(scores, -1.0)
    order: list[int] = []
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        for expert in divmod(int(flat), rate.shape[0]):
            if expert not in order and len(order) < top:
                order.append(expert)
        if len(order) == top:
            break
    return order


def co_activation_heatmap(stats: RoutingCounts, layer: int | None = None, group: str | None = None,
                          other: RoutingCounts | None = None, names: Sequence[str] | None = None,
                          top: int | None = None) -> go.Figure:
    """OLMoE's co-activation heatmap of one MoE layer: row `i`, column `j`, the % of the tokens
    routed to expert `i` also routed to `j` (`mi.analysis.co_activation_rate`), all groups pooled
    or one `group`; `other` (e.g. the random-init twin on the same texts) in a panel beside it.

    `layer`: a real MoE layer index (default the middle MoE layer); `top`: how many experts (all
    up to 32, else OLMoE's 16: those of the strongest pairs, in that order).

    ```python
    >>> import torch
    >>> import moe_interp as mi
    >>> pairs = torch.tensor([[[[3, 2, 1], [2, 2, 0], [1, 0, 1]]]])   # 3 tokens, top-2: {0,1}, {0,1}, {0,2}
    >>> count = pairs.diagonal(dim1=-2, dim2=-1)
    >>> s = mi.RoutingStats(("en",), (0,), 3, 2, count, count / 2.0, torch.tensor([3]), co_activation=pairs)
    >>> fig = mi.plots.co_activation_heatmap(s, top=2)
    >>> fig.data[0].y, fig.data[0].z.round(1).tolist()     # expert 1's tokens all chose 0 too: first
    (('1', '0'), [[0.0, 100.0], [66.7, 0.0]])

    ```
    """
    panels = [stats] + ([other] if other is not None else [])
    names = list(names) if names is not None else (["this model", "other"] if other is not None else [""])
    layer = stats.layers[len(stats.layers) // 2] if layer is None else layer
    rates = []
    for panel in panels:
        panel.layer_index(layer)  # a layer these stats lack: ValueError naming theirs
        if group is None:
            rate = co_activation_rate(panel, layers=[layer], pooled=True)[0, 0]
        else:
            rate = co_activation_rate(panel, layers=[layer])[panel.language_index(group), 0]
        rates.append(rate.numpy())
    count = top or (stats.num_experts if stats.num_experts <= 32 else 16)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[n for n in names] if other is not None else None,
                        horizontal_spacing=0.12)
    for column, (rate, panel) in enumerate(zip(rates, panels), start=1):
        experts = (list(range(panel.num_experts)) if count >= panel.num_experts
                   else _strongest_experts(rate, count))
        labels = tuple(str(e) for e in experts)
        fig.add_trace(go.Heatmap(z=100 * rate[np.ix_(experts, experts)], x=labels, y=labels, zmin=0, zmax=100,
                                 colorscale="Reds", coloraxis=None, showscale=column == len(panels),
                                 colorbar={"title": "%"},
                                 hovertemplate="expert %{y} with %{x}: %{z:.1f}%<extra></extra>"), 1, column)
        fig.update_xaxes(title_text="also routed to expert", type="category", row=1, col=column)
        fig.update_yaxes(title_text="tokens routed to expert", type="category", autorange="reversed", row=1, col=column)
    where = "all groups" if group is None else group
    fig.update_layout(title=f"Co-activation, MoE layer {layer} ({where}): % of the tokens routed to expert i "
                            "(row) also routed to j (column)")
    return fig


def split_effect(stats: Any, metric: str = "js", layers: Any = None, level: int = -1,
                 min_tokens: int = 10) -> go.Figure:
    """Per MoE layer: the divergence between the parts of a language (token kinds or position
    buckets), between languages on one part, and between languages with their parts pooled
    (`mi.analysis.split_effect`; `stats` may be its `SplitEffect`). A part line at or above the
    language lines: what a token is moves routing as much as its language does.

    ```python
    >>> import moe_interp as mi
    >>> model = mi.zoo.tiny_model("qwen3_moe")
    >>> with mi.trace(model, mi.RouterRecord(by_position=(0, 4))) as tr:
    ...     with tr.invoke(["The cat sat on the mat."] * 2, group="eng"):
    ...         pass
    ...     with tr.invoke(["Die Katze saß auf der Matte."] * 2, group="deu"):
    ...         pass
    >>> fig = mi.plots.split_effect(tr.routing, min_tokens=2)
    >>> [trace.name for trace in fig.data], fig.layout.xaxis.title.text
    (['between the position buckets of a language', 'between languages, one position bucket', 'between languages, position buckets pooled'], 'MoE layer')

    ```
    """
    effect = stats if isinstance(stats, SplitEffect) else _split_effect(stats, metric, layers, level, min_tokens)
    one, many = (("position bucket", "position buckets") if all(p.startswith("pos") for p in effect.parts)
                 else ("kind", "kinds"))
    table = effect.to_pandas()
    fig = go.Figure()
    for column, name, dash in (("within", f"between the {many} of a language", "solid"),
                               ("across", f"between languages, one {one}", "dash"),
                               ("pooled", f"between languages, {many} pooled", "dot")):
        fig.add_trace(go.Scatter(x=table["layer"], y=table[column], name=name, mode="lines+markers",
                                 line={"dash": dash}))
    fig.update_layout(title=f"Routing by {one} within a language against across languages "
                            f"({len(effect.languages)} languages, {len(effect.parts)} {many})",
                      xaxis_title="MoE layer", yaxis_title=_METRIC_NAMES[effect.metric], legend={"orientation": "h"})
    fig.update_xaxes(tickformat="d")
    fig.update_yaxes(rangemode="tozero")
    return fig
