"""Validation reports as files: JSON (machine-readable) and one self-contained HTML page.

The HTML page holds the verdict, the first divergence, the settings, a plot of the
relative error of every compared blob against its layer depth (a PNG drawn with
matplotlib's object API, no global pyplot state, embedded as a data URI) and the
per-layer table. It loads nothing from elsewhere. matplotlib is imported lazily.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.inputs import fmt_shape
from caffe2onnx.validation import ValidationReport

#: errors below this are drawn on the floor of the log-scale plot ("exact")
PLOT_FLOOR = 1e-12
FORMATS = (".json", ".html", ".htm")

# Distinct colours: the Chromium screenshot test looks for them.
PASS_BG = "#d7f5dd"
FAIL_BG = "#f9d0d0"
HEADER_BG = "#1f3b5c"
SERIES_COLOURS = {"pytorch": "#1f77b4", "opencv": "#ff7f0e"}
FAIL_MARKER = "#d62728"


class ReportFormatError(Caffe2OnnxError):
    """A report file name whose format is unknown (exit code 2)."""


def write_report(report: ValidationReport, path: str | os.PathLike[str]) -> None:
    """Write ``report`` as JSON or HTML, chosen by the file's extension."""
    from caffe2onnx.atomic import atomic_output

    suffix = check_report_path(path)
    text = json.dumps(report.to_dict(), indent=2) + "\n" if suffix == ".json" else render_html(report)
    with atomic_output(path) as handle:
        handle.write(text.encode("utf-8"))


def check_report_path(path: str | os.PathLike[str]) -> str:
    """The report format (its extension); refuses unknown ones and missing directories."""
    from caffe2onnx.atomic import check_output_dir

    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ReportFormatError(f"--report {os.fspath(path)}: use a .json or .html file name")
    check_output_dir(path)
    return suffix


def plot_png(report: ValidationReport) -> bytes:
    """Max relative error of every compared blob against its layer depth (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for ref in report.references:
        rows = [r for r in report.rows if r.reference == ref]
        if not rows:
            continue
        xs = [r.depth for r in rows]
        ys = [_plotted(r.max_rel) for r in rows]
        colour = SERIES_COLOURS.get(ref, "#2ca02c")
        axes.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, color=colour, label=f"vs {ref}")
        failed = [(x, y) for x, y, r in zip(xs, ys, rows) if not r.passed]
        if failed:
            axes.scatter(*zip(*failed), s=60, color=FAIL_MARKER, zorder=3, label=f"FAIL vs {ref}")
    depths = sorted({(r.depth, r.layer) for r in report.rows})
    if 0 < len(depths) <= 40:
        axes.set_xticks(
            [d for d, _ in depths], [name for _, name in depths], rotation=60, ha="right", fontsize=8
        )
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.axhline(report.rtol, color="#555555", linestyle="--", linewidth=1, label=f"rtol {report.rtol:g}")
    axes.set_yscale("log")
    values = [_plotted(r.max_rel) for r in report.rows]
    low = min(values, default=PLOT_FLOOR)
    axes.set_ylim(bottom=PLOT_FLOOR / 2 if low <= PLOT_FLOOR else low / 10)
    axes.set_xlabel("layer, by depth (position in the net)")
    axes.set_ylabel("max relative error")
    title = "Error by layer depth" + (f" (errors of 0 drawn at {PLOT_FLOOR:g})" if low <= PLOT_FLOOR else "")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plotted(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        return 1.0
    return max(value, PLOT_FLOOR)


def _num(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def render_html(report: ValidationReport) -> str:
    e = html.escape
    verdict = "PASS" if report.passed else "FAIL"
    several = len(report.references) > 1
    png = base64.b64encode(plot_png(report)).decode("ascii")
    head_cells = ["#", "layer", "type", "blob", "shape", "max abs", "max rel", "cosine"]
    if several:
        head_cells.append("reference")
    head_cells.append("result")
    body = []
    for row in report.rows:
        cells = [str(row.depth), *row.cells(with_reference=several, onnx_label="ONNX: ")]
        css = "pass" if row.passed else "fail"
        body.append(f'<tr class="{css}">' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    settings = [
        ("prototxt", report.prototxt),
        ("caffemodel", report.caffemodel or "(none)"),
        ("ONNX", report.onnx),
        ("reference", " and ".join(report.references)),
        ("tolerance", f"rtol {report.rtol:g}, atol {report.atol:g}"),
        ("seeds", ", ".join(map(str, report.seeds))),
        ("batch", str(report.batch)),
        ("paired by", report.matched_by),
    ]
    for name, info in report.inputs.items():
        settings.append(
            (f"input {name}", f"{fmt_shape(info.get('shape', []))} from {info.get('source', '')}")
        )
    first_lines = [
        f"<li>vs {e(ref)}: layer <b>{e(row.layer)}</b> ({e(row.layer_type)}), blob {e(row.tensor)}, "
        f"max abs {_num(row.max_abs)}, max rel {_num(row.max_rel)}</li>"
        for ref, row in report.first_failures().items()
        if row is not None
    ]
    first = f"<h2>First divergence</h2><ul>{''.join(first_lines)}</ul>" if first_lines else ""
    notes = "".join(f"<li>{e(n)}</li>" for n in [*report.warnings, *report.notes])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>caffe2onnx validation: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
.verdict {{ font-size: 28px; font-weight: bold; padding: 8px 16px; display: inline-block; }}
.verdict.PASS {{ background: {PASS_BG}; }} .verdict.FAIL {{ background: {FAIL_BG}; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th {{ background: {HEADER_BG}; color: #fff; padding: 4px 10px; text-align: left; }}
td {{ padding: 3px 10px; border-bottom: 1px solid #ccc; font-family: monospace; white-space: nowrap; }}
tr.pass td {{ background: {PASS_BG}; }} tr.fail td {{ background: {FAIL_BG}; font-weight: bold; }}
table.settings td {{ background: #f4f4f4; }}
</style></head>
<body>
<h1>caffe2onnx validation</h1>
<div class="verdict {verdict}">{verdict}</div>
<p>{e(report.summary()).replace(chr(10), "<br>")}</p>
{first}
<h2>Error by layer depth</h2>
<img id="plot" alt="max relative error by layer depth" src="data:image/png;base64,{png}">
<h2>Per-layer comparison</h2>
<table id="layers"><thead><tr>{"".join(f"<th>{e(h)}</th>" for h in head_cells)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Settings</h2>
<table class="settings">{"".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in settings)}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
