"""Self-contained HTML reports: text, tables and plotly figures, openable offline.

plotly.js (4.8 MB) and the figures' data are stored gzip-compressed and unpacked by the
browser (`DecompressionStream`: Chrome/Edge 80+, Firefox 113+, Safari 16.4+), so a report of
312 languages stays under 3 MB; `compress=False` writes plain inline scripts instead.
Figures of many languages are redrawn to stay readable (no per-cell numbers, one legend
entry for the per-language curves, a horizontal dendrogram as tall as its leaves need).
"""

import base64
import gzip
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["findings", "markdown_table", "page", "routing_figures", "routing_summary", "table", "write_report"]

MANY = 40  # languages from which figures are redrawn for legibility

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
          "table{border-collapse:collapse;margin:.5em 0;max-width:100%}td,th{border:1px solid #ccc;"
          "padding:.25em .6em;text-align:right;overflow-wrap:anywhere}td:first-child,th:first-child{text-align:left}"
          "th{background:#f4f4f4}pre{background:#f8f8f8;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}"
          "p,li{overflow-wrap:anywhere}.findings{background:#f5f3ff;border-left:4px solid #673ab7;padding:.4em 1.2em}"
          ".figure{width:100%;margin:1em 0}")

# Unpacks every <script type="application/gzip+base64"> and draws the figures once plotly.js is in.
_LOADER = """<script>
(async () => {
  const unpack = async (node) => {
    const bytes = Uint8Array.from(atob(node.textContent.trim()), (c) => c.charCodeAt(0));
    return await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  };
  if (typeof DecompressionStream === "undefined") {
    document.body.insertAdjacentHTML("afterbegin", "<p><b>This browser cannot unpack the figures "
      + "(no DecompressionStream): open the report in a current browser.</b></p>");
    return;
  }
  (0, eval)(await unpack(document.getElementById("plotly-js")));
  for (const div of document.querySelectorAll("div[data-figure]")) {
    const figure = JSON.parse(await unpack(document.getElementById(div.dataset.figure)));
    await Plotly.newPlot(div, figure.data, figure.layout, {responsive: true, displaylogo: false});
  }
})();
</script>"""


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table, every cell escaped.

    ```python
    >>> from moe_interp.experiments import report
    >>> report.table(["a"], [[1]])
    '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>'

    ```
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (for READMEs and model cards); `|` inside a cell is escaped.

    ```python
    >>> from moe_interp.experiments import report
    >>> print(report.markdown_table(["claim", "value"], [["a|b", 1]]))
    | claim | value |
    |---|---|
    | a\\|b | 1 |

    ```
    """
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def findings(lines: Sequence[str], title: str = "Key findings") -> str:
    """A highlighted list of one-sentence findings (HTML), for the top of a report.

    ```python
    >>> from moe_interp.experiments import report
    >>> report.findings(["family ARI 0.29 [0.25, 0.31]"])
    '<div class="findings"><h2>Key findings</h2><ul><li>family ARI 0.29 [0.25, 0.31]</li></ul></div>'

    ```
    """
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<div class="findings"><h2>{html.escape(title)}</h2><ul>{items}</ul></div>'


def _packed(identifier: str, text: str) -> str:
    data = base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")
    return f'<script type="application/gzip+base64" id="{identifier}">{data}</script>'


def _plain(value: Any) -> Any:
    """JSON-ready figure data: arrays as lists with floats rounded to 4 significant digits
    (what hovers show), which gzip packs far tighter than plotly's base64 binary arrays."""
    import numpy as np

    if isinstance(value, dict) and "bdata" in value and "dtype" in value:  # plotly's typed array
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return _plain(array.reshape([int(d) for d in str(shape).split(",")]) if shape else array)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            rounded = np.vectorize(lambda x: float(f"{x:.4g}"), otypes=[object])(value) if value.size else value
            return [_plain(v) for v in rounded.tolist()] if rounded.ndim else rounded.item()
        return value.tolist()
    if isinstance(value, float):
        return value if value != value or value in (float("inf"), float("-inf")) else float(f"{value:.4g}")
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def _figure_json(figure: Any) -> str:
    from plotly.utils import PlotlyJSONEncoder

    return json.dumps(_plain(figure.to_plotly_json()), cls=PlotlyJSONEncoder, separators=(",", ":"))


def page(title: str, parts: Sequence[Any], compress: bool = True) -> str:
    """One HTML document from HTML strings and plotly figures (plotly.js inlined once).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments import report
    >>> profile = mi.datasets.reference_stats().select(["en", "de", "sw"])    # the paper's MGSM counts
    >>> html_text = report.page("Routing", ["<p>hello</p>", profile.plot_layer_profile()])
    >>> html_text.startswith("<!DOCTYPE html>"), html_text.count('data-figure="figure-')
    (True, 1)

    ```
    """
    body, scripts, first = [], [], True
    for part in parts:
        if isinstance(part, str):
            body.append(part)
        elif not compress:
            body.append(part.to_html(full_html=False, include_plotlyjs=first, default_height="520px",
                                     config={"responsive": True, "displaylogo": False}))
            first = False
        else:
            n = len(scripts)
            height = part.layout.height or 520
            body.append(f'<div class="figure plotly-graph-div" data-figure="figure-{n}" style="height:{height}px"></div>')
            scripts.append(_packed(f"figure-{n}", _figure_json(part)))
    if scripts:
        from plotly.offline import get_plotlyjs

        scripts = [_packed("plotly-js", get_plotlyjs()), *scripts, _LOADER]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n" + "\n".join(scripts) + "\n</body></html>\n")


def _reference(stats: Any) -> str:
    """The language others are compared with: English if profiled (the paper's hub), else the first."""
    return next((l for l in ("eng", "en") if l in stats.languages), stats.languages[0])


def routing_summary(stats: Any, label: str = "", families: Mapping[str, str] | None = None,
                    layers: Any = None) -> str:
    """The findings about one `RoutingStats` in a few sentences and tables (HTML).
    `families`: `{language: family}` for languages `moe_interp.core.languages` does not know;
    `layers`: the layers the family agreement uses (default all; the table says which).

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments import report
    >>> profile = mi.datasets.reference_stats().select(["en", "de", "fr", "sw"])
    >>> html_text = report.routing_summary(profile, "Qwen3-30B-A3B on MGSM")
    >>> "<h2>Qwen3-30B-A3B on MGSM</h2>" in html_text, html_text.count("<table>")
    (True, 2)

    ```
    """
    bands = stats.layer_profile().bands()
    rows = [[band] + [f"{values[key]:.3f}" for key in ("mean_divergence", "shared_fraction", "entropy")]
            + [f"{values['exclusive']:.1f}"] for band, values in bands.items()]
    parts = [f"<h2>{html.escape(label or 'Routing')}</h2>",
             f"<p>{len(stats.languages)} languages, MoE layers {stats.layers[0]}-{stats.layers[-1]}, "
             f"{stats.num_experts} experts (top-{stats.top_k}), {int(stats.tokens.sum()):,} tokens.</p>",
             table(["band", "mean JS between languages", "shared fraction", "mean entropy", "exclusive experts / layer"],
                   rows)]
    try:
        agreement = stats.family_agreement(families=families, layers=layers)
    except (KeyError, ValueError) as error:  # languages outside the table, or one family only
        parts.append(f"<p>Family agreement not computed: {html.escape(str(error))}</p>")
        return "\n".join(parts)
    rows = [["all scripts", len(agreement.languages), agreement.n_families, f"{agreement.ari:.3f}",
             f"{agreement.within:.4f}", f"{agreement.between:.4f}", _inverse(agreement.ratio)]]
    latin = agreement.by_script.get("Latn")
    if latin is not None:
        rows.append(["Latin script only (one script)", len(latin.languages), latin.n_families, f"{latin.ari:.3f}",
                     f"{latin.within:.4f}", f"{latin.between:.4f}", _inverse(latin.ratio)])
    used = [stats.layers[i] for i in stats.layer_positions(layers)]
    where = f"MoE layers {used[0]}-{used[-1]}" if used == list(range(used[0], used[-1] + 1)) else f"MoE layers {used}"
    parts += [f"<p>Languages clustered on routing divergence ({where}), the tree cut at as many clusters as there "
              "are families: the adjusted Rand index compares clusters with families (0 = chance, 1 = the same). "
              "Descriptive: no intervals or controls here.</p>",
              table(["languages", "n", "families", "ARI", "mean JS within families", "between families",
                     "between / within"], rows)]
    return "\n".join(parts)


def _inverse(ratio: float) -> str:
    return f"{1 / ratio:.2f}" if ratio else "n/a"


def routing_figures(stats: Any, reference: str | None = None) -> list:
    """The standard figures of one `RoutingStats`; redrawn for legibility past `MANY` languages.

    `reference` (default English when profiled) is the language the shared-expert bars compare with.

    ```python
    >>> import moe_interp as mi
    >>> from moe_interp.experiments import report
    >>> figures = report.routing_figures(mi.datasets.reference_stats().select(["en", "de", "fr", "sw"]))
    >>> [f.layout.title.text.split(" ")[0] for f in figures][:2]
    ['Jensen-Shannon', 'Languages']

    ```
    """
    from moe_interp.analysis import plots

    many = len(stats.languages) > MANY
    if many:  # one language-level panel, in leaf order so that clusters show as blocks
        from scipy.cluster.hierarchy import leaves_list

        from moe_interp.analysis import cluster

        clustering = cluster(stats)
        order = [clustering.languages[i] for i in leaves_list(clustering.linkage)]
        heat = plots.divergence_heatmap(stats.select(order), layers="middle")
    else:
        heat = plots.divergence_heatmap(stats, bands=True)
    figures = [heat, plots.dendrogram(stats), plots.layer_profile(stats),
               plots.expert_counts(stats, reference=reference or _reference(stats)), plots.routing_heatmap(stats)]
    if many:
        _legible(figures, len(stats.languages))
        prof = stats.layer_profile()
        figures.insert(3, plots.language_layer_heatmap(
            prof.exclusive, stats.languages, prof.layers, families=_known_families(stats.languages),
            title=f"Language-exclusive experts per MoE layer (k={prof.k}, share > {prof.threshold})",
            colorbar="exclusive experts (count)"))
    return figures


def _known_families(languages: Sequence[str]) -> dict[str, str] | None:
    """`{language: family}` when `moe_interp.core.languages` knows every language, else None (no grouping)."""
    from moe_interp.core.languages import info

    try:
        return {l: info(l).family for l in languages}
    except KeyError:
        return None


def _legible(figures: list, n: int) -> None:
    """Edit the standard figures of `n` (many) languages in place so each reads at 1100 px."""
    heat, tree, profile, counts, _ = figures
    heat.update_traces(texttemplate=None, xgap=0, ygap=0)
    heat.update_xaxes(showticklabels=False, title_text=f"language ({n}, in dendrogram order; hover for names)")
    heat.update_yaxes(showticklabels=False, title_text="language")
    heat.update_layout(height=900, title_text=heat.layout.title.text + " (languages in dendrogram order)")
    _horizontal(tree, n)
    for trace in profile.data:  # one line per language crosses into a tangle: the heatmap after it shows them
        if trace.name and trace.name.startswith("exclusive: "):
            trace.update(visible=False, showlegend=False)
    profile.add_annotation(text=f"exclusive experts of the {n} languages: see the language x layer heatmap below",
                           xref="paper", yref="paper", x=0.5, y=0.2, showarrow=False)
    profile.update_layout(legend={"orientation": "h", "y": -0.12})
    counts.update_traces(text=None, textposition=None)
    counts.update_xaxes(showticklabels=False, title_text=f"language ({n}; hover for names)")


def _horizontal(tree: Any, n: int) -> None:
    """A vertical dendrogram turned on its side: one row of 14 px per leaf, names readable."""
    layout = tree.layout
    ticks, labels, span = layout.xaxis.tickvals, layout.xaxis.ticktext, layout.xaxis.range
    height_title = layout.yaxis.title.text
    for trace in tree.data:
        trace.update(x=trace.y, y=trace.x)
        if trace.mode == "markers+text":
            trace.update(textposition="middle right", marker={"size": 6}, textfont={"size": 10}, cliponaxis=False)
    tree.update_layout(height=max(600, 14 * n + 150), margin={"r": 80}, legend={"title": {"text": "family"}},
                       xaxis={"title": {"text": height_title}, "autorange": "reversed", "tickvals": None,
                              "ticktext": None, "range": None},
                       yaxis={"title": {"text": "language"}, "tickvals": ticks, "ticktext": labels, "range": span,
                              "showticklabels": False})


def write_report(path: str | os.PathLike, title: str, parts: Sequence[Any], compress: bool = True) -> Path:
    """Write `page(title, parts)` to `path` and return it.

    ```python
    >>> import tempfile
    >>> from moe_interp.experiments import report
    >>> path = report.write_report(f"{tempfile.mkdtemp()}/report.html", "Routing", ["<p>hello</p>"])
    >>> path.name, "<p>hello</p>" in path.read_text()
    ('report.html', True)

    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, parts, compress), encoding="utf-8")
    return path
