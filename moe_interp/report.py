"""Self-contained HTML reports: text, tables and plotly figures, openable offline."""

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["table", "page", "routing_summary", "routing_figures", "write_report"]

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:right}th{background:#f4f4f4}pre{background:#f8f8f8;padding:.6em}")


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table, every cell escaped.

    ```python
    >>> mi.report.table(["a"], [[1]])
    '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>'
    ```
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, parts: Sequence[Any]) -> str:
    """One HTML document from HTML strings and plotly figures (plotly.js inlined once).

    ```python
    >>> html_text = mi.report.page("Routing", ["<p>hello</p>", profile.plot_layer_profile()])
    ```
    """
    body, first = [], True
    for part in parts:
        if isinstance(part, str):
            body.append(part)
        else:
            body.append(part.to_html(full_html=False, include_plotlyjs=first, default_height="520px"))
            first = False
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _k(stats: Any) -> int:
    """The paper's top-k of 15, capped for models with fewer experts (its 15 of 128)."""
    return min(15, stats.num_experts)


def routing_summary(stats: Any, label: str = "") -> str:
    """The findings about one `RoutingStats` in a few sentences and tables (HTML)."""
    bands = stats.layer_profile(k=_k(stats)).bands()
    rows = [[band] + [f"{values[key]:.3f}" for key in ("mean_divergence", "shared_fraction", "entropy")]
            + [f"{values['exclusive']:.1f}"] for band, values in bands.items()]
    parts = [f"<h2>{html.escape(label or 'Routing')}</h2>",
             f"<p>{html.escape(repr(stats))}</p>",
             table(["band", "mean JS between languages", "shared fraction", "mean entropy", "exclusive experts / layer"],
                   rows)]
    try:
        agreement = stats.family_agreement()
    except (KeyError, ValueError) as error:  # languages outside the table, or one family only
        parts.append(f"<p>Family agreement not computed: {html.escape(str(error))}</p>")
        return "\n".join(parts)
    text = (f"Clustering languages on routing divergence, cut at {agreement.n_families} families: adjusted Rand "
            f"index {agreement.ari:.3f}; mean JS within families {agreement.within:.4f} vs between "
            f"{agreement.between:.4f} (between/within {1 / agreement.ratio if agreement.ratio else float('nan'):.2f}).")
    latin = agreement.by_script.get("Latn")
    if latin is not None:
        text += (f" Within Latin script only ({len(latin.languages)} languages), where script cannot explain it: "
                 f"ARI {latin.ari:.3f}, between/within {1 / latin.ratio if latin.ratio else float('nan'):.2f}.")
    parts.append(f"<p>{html.escape(text)}</p>")
    return "\n".join(parts)


def routing_figures(stats: Any) -> list:
    """The standard figures of one `RoutingStats`."""
    from . import plots

    k = _k(stats)
    return [plots.divergence_heatmap(stats, bands=True), plots.dendrogram(stats), plots.layer_profile(stats, k=k),
            plots.expert_counts(stats, k=k, shared_k=min(20, stats.num_experts)), plots.routing_heatmap(stats)]


def write_report(path: str | os.PathLike, title: str, parts: Sequence[Any]) -> Path:
    """Write `page(title, parts)` to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, parts), encoding="utf-8")
    return path
