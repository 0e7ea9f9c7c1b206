"""Every way a report is shown: a rich table, CSV, Markdown, JSON.

All rich rendering lives here. Renderers take the plain report document built by
:mod:`distgap_cli.report` and return text or print to a console they are given.
Numbers are right-aligned with a fixed precision and are never cut short: a
column that does not fit wraps rather than ending in an ellipsis.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from distgap_cli.report import to_json

SIMILARITY_NOTE = (
    "inner_product is a similarity (larger is closer): taken literally as "
    "TensorFlow Similarity does, its 'hardest' positive and negative are the "
    "easiest pairs."
)


def _number(value: Any, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _batches(entry: dict[str, Any]) -> str:
    b = entry["batches"]
    return f"{b['used']} / {b['total']}"


def _skipped(entry: dict[str, Any]) -> str:
    s = entry["batches"]["skipped"]
    return f"{s['no_negative_pair']} / {s['no_positive_pair']}"


def _stat(*path: str, digits: int = 6) -> Callable[[dict[str, Any]], str]:
    def read(entry: dict[str, Any]) -> str:
        value: Any = entry
        for key in path:
            value = value[key]
        return _number(value, digits)

    return read


# (label, how to read it from a result entry, column name in CSV)
ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("rows", _stat("rows")),
    ("batches used / total", _batches),
    ("skipped: one class / no pos pair", _skipped),
    ("gap, last batch (TF Similarity)", _stat("last_gap")),
    ("gap mean", _stat("gap", "mean")),
    ("gap std", _stat("gap", "std")),
    ("gap min", _stat("gap", "min")),
    ("gap max", _stat("gap", "max")),
    ("margin mean", _stat("margin", "mean")),
    ("margin std", _stat("margin", "std")),
    ("margin min", _stat("margin", "min")),
    ("margin max", _stat("margin", "max")),
    ("max_pos mean", _stat("max_pos", "mean")),
    ("max_pos max", _stat("max_pos", "max")),
    ("min_neg mean", _stat("min_neg", "mean")),
    ("min_neg min", _stat("min_neg", "min")),
    ("mean hardest positive", _stat("mean_hardest_pos")),
    ("mean hardest negative", _stat("mean_hardest_neg")),
    ("violation rate", _stat("violation_rate", digits=4)),
]

CSV_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("distance", ("distance",)),
    ("rows", ("rows",)),
    ("batches_total", ("batches", "total")),
    ("batches_used", ("batches", "used")),
    ("skipped_no_negative_pair", ("batches", "skipped", "no_negative_pair")),
    ("skipped_no_positive_pair", ("batches", "skipped", "no_positive_pair")),
    ("last_gap", ("last_gap",)),
    *[
        (f"{group}_{stat}", (group, stat))
        for group in ("gap", "margin", "max_pos", "min_neg")
        for stat in ("mean", "std", "min", "max")
    ],
    ("mean_hardest_pos", ("mean_hardest_pos",)),
    ("mean_hardest_neg", ("mean_hardest_neg",)),
    ("violation_rate", ("violation_rate",)),
]


def _title(doc: dict[str, Any]) -> str:
    settings = doc["settings"]
    return f"distance gap, batches of {settings['batch_size']} ({settings['order']})"


def _caption(doc: dict[str, Any]) -> list[str]:
    inp = doc["input"]
    files = inp["files"]
    shown = files[0] if len(files) == 1 else f"{len(files)} files"
    lines = [
        f"{shown}: {inp['rows']} rows, dimension {inp['dimension']}, "
        f"{inp['classes']} classes, on {doc['device']}"
    ]
    if inp["dropped"]:
        parts = ", ".join(f"{n} {why}" for why, n in inp["dropped"].items())
        lines.append(f"dropped {sum(inp['dropped'].values())} invalid rows: {parts}")
    if any(r["similarity"] for r in doc["results"]):
        lines.append(SIMILARITY_NOTE)
    return lines


def table(doc: dict[str, Any], console: Console) -> None:
    """Print the report: one row per statistic, one column per distance.

    When the table would not fit the console, each distance is printed as a list
    of ``statistic: value`` lines instead, so that no number is ever cut short.
    """
    results = doc["results"]
    grid = Table(box=box.HEAVY_HEAD)
    grid.add_column("statistic", no_wrap=True)
    for entry in results:
        grid.add_column(escape(entry["distance"]), justify="right", no_wrap=True)
    for label, read in ROWS:
        grid.add_row(label, *(read(e) for e in results))

    console.print(escape(_title(doc)), soft_wrap=True)
    unbounded = console.options.update_width(1 << 20)
    if Measurement.get(console, unbounded, grid).maximum <= console.width:
        console.print(grid)
    else:
        for entry in results:
            console.print(f"{escape(entry['distance'])}:", soft_wrap=True)
            for label, read in ROWS:
                console.print(f"  {label}: {read(entry)}", soft_wrap=True)
    for line in _caption(doc):
        console.print(escape(line), soft_wrap=True)


def markdown(doc: dict[str, Any]) -> str:
    """The report as a GitHub-flavoured Markdown table, for CI job summaries."""
    names = [e["distance"] for e in doc["results"]]
    out = [
        f"**{_title(doc)}**",
        "",
        "| statistic | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for label, read in ROWS:
        out.append(f"| {label} | " + " | ".join(read(e) for e in doc["results"]) + " |")
    out.append("")
    out.extend(f"_{line}_" for line in _caption(doc))
    return "\n".join(out) + "\n"


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def csv_text(doc: dict[str, Any]) -> str:
    """The report as CSV: a header, then one line per distance."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in CSV_FIELDS])
    for entry in doc["results"]:
        row = []
        for _, path in CSV_FIELDS:
            value: Any = entry
            for key in path:
                value = value[key]
            row.append(_csv_value(value))
        writer.writerow(row)
    return buffer.getvalue()


def text(doc: dict[str, Any], fmt: str, width: int | None = None) -> str:
    """The report in ``fmt`` as plain text (a table is rendered without colour)."""
    if fmt == "json":
        return to_json(doc)
    if fmt == "csv":
        return csv_text(doc)
    if fmt == "markdown":
        return markdown(doc)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 100, no_color=True, highlight=False)
    table(doc, console)
    return buffer.getvalue()
