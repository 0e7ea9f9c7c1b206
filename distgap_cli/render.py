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
import re
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from distgap_cli.report import GATES, UNJUDGED, json_line, result_lines, to_json

SIMILARITY_NOTE = (
    "inner_product is a similarity (larger is closer): taken literally as "
    "TensorFlow Similarity does, its 'hardest' positive and negative are the "
    "easiest pairs."
)


# C0 and C1 control characters, DEL, and the Unicode line and paragraph breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def visible(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``,
    ``\\n``), as Python writes them in a string literal.

    Labels and file names are the user's strings and may hold anything: an
    escape sequence would colour or move the terminal (and put escape bytes in
    output meant to have none), a line break would split a table row or a
    one-line error message.
    """
    return _CONTROL.sub(
        lambda m: m.group().encode("unicode_escape").decode("ascii"), text
    )


def markup(text: str) -> str:
    """``text`` as rich prints it literally: control characters escaped
    (:func:`visible`) and rich's markup brackets escaped."""
    return escape(visible(text))


def _number(value: Any, digits: int = 6) -> str:
    """Fixed decimals; scientific notation where they would hide the value
    (below 1e-4, where 0.000000 would show for a real, tiny distance) or
    stretch the column (1e9 and up)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if value != 0 and math.isfinite(value) and not 1e-4 <= abs(value) < 1e9:
        return f"{value:.{digits - 2}e}"
    return f"{value:.{digits}f}"


def _batches(entry: dict[str, Any]) -> str:
    b = entry["batches"]
    return f"{b['used']} / {b['total']}"


def _skipped(entry: dict[str, Any]) -> str:
    s = entry["batches"]["skipped"]
    return f"{s['no_positive_pair']} / {s['no_negative_pair']}"


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
    ("skipped: no pos / no neg pair", _skipped),
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

EXACT_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("anchors", _stat("anchors")),
    ("anchors without a positive", _stat("anchors_without_positive")),
    ("max_pos", _stat("max_pos")),
    ("min_neg", _stat("min_neg")),
    ("gap", _stat("gap")),
    ("margin", _stat("margin")),
    ("violation rate", _stat("violation_rate", digits=4)),
    ("precision@1", _stat("precision_at_1", digits=4)),
    ("mean hardest positive", _stat("mean_hardest_pos")),
    ("mean hardest negative", _stat("mean_hardest_neg")),
    *[
        (f"row margin p{q}", _stat("margin_percentiles", f"p{q}"))
        for q in (1, 5, 50, 95, 99)
    ],
]

_COMPARED_ROWS = {
    "gap mean": "gap",
    "margin mean": "margin",
    "gap": "gap",
    "margin": "margin",
    "violation rate": "violation_rate",
    "precision@1": "precision_at_1",
}


def _rows(doc: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The table's rows; with a baseline, its value and the change follow each
    compared statistic."""
    base = EXACT_ROWS if doc["settings"]["mode"] == "exact" else ROWS
    if "baseline" not in doc:
        return base
    found = {(c["distance"], c["statistic"]): c for c in doc["baseline"]["comparisons"]}

    def beside(statistic: str, key: str) -> Callable[[dict[str, Any]], str]:
        def read(entry: dict[str, Any]) -> str:
            c = found.get((entry["distance"], statistic))
            if c is None:
                return "n/a"
            if key == "change":
                mark = "" if c["passed"] is not False else " FAIL"
                return _change(c["change"]) + mark
            return _number(c["baseline"])

        return read

    rows = []
    for label, read in base:
        rows.append((label, read))
        statistic = _COMPARED_ROWS.get(label)
        if statistic:
            rows.append(("  baseline", beside(statistic, "baseline")))
            rows.append(("  change", beside(statistic, "change")))
    return rows


def _title(doc: dict[str, Any]) -> str:
    settings = doc["settings"]
    if settings["mode"] == "exact":
        anchors = settings["anchors"]
        who = "every row" if anchors is None else f"{anchors} sampled rows"
        return f"distance gap over the whole dataset, {who} against every row"
    return f"distance gap, batches of {settings['batch_size']} ({settings['sampler']})"


def _caption(doc: dict[str, Any]) -> list[str]:
    inp = doc["input"]
    files = inp["files"]
    shown = files[0] if len(files) == 1 else f"{len(files)} files"
    lines = [
        f"{shown}: {inp['rows']} rows, dimension {inp['dimension'] or 'per file'}, "
        f"{inp['classes']} classes, on {doc['device']}"
    ]
    if inp["dropped"]:
        parts = ", ".join(f"{n} {why}" for why, n in inp["dropped"].items())
        lines.append(f"dropped {sum(inp['dropped'].values())} invalid row(s): {parts}")
    if any(r["similarity"] for r in doc["results"]):
        lines.append(SIMILARITY_NOTE)
    for g in doc.get("gates", []):
        gate = GATES[g["gate"]]
        relation = "at least" if gate.at_least else "at most"
        verdict = "passed" if g["passed"] else "FAILED"
        lines.append(
            f"gate {gate.flag} on {g['distance']}: {g['statistic']} "
            f"{_number(g['measured'])}, required {relation} {g['required']:g}: "
            f"{verdict}"
        )
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
        grid.add_column(markup(entry["distance"]), justify="right", no_wrap=True)
    rows = _rows(doc)
    for label, read in rows:
        grid.add_row(label, *(read(e) for e in results))

    console.print(markup(_title(doc)), soft_wrap=True)
    unbounded = console.options.update_width(1 << 20)
    if Measurement.get(console, unbounded, grid).maximum <= console.width:
        console.print(grid)
    else:
        for entry in results:
            console.print(f"{markup(entry['distance'])}:", soft_wrap=True)
            for label, read in rows:
                console.print(f"  {label.strip()}: {read(entry)}", soft_wrap=True)
    for line in _caption(doc):
        console.print(markup(line), soft_wrap=True)
    if "per_file" in doc:
        _breakdown(console, "per file", _per_file_rows(doc))
    for name, classes in doc.get("per_class", {}).items():
        _breakdown(
            console, f"per class, {name} (worst first)", _per_class_rows(classes)
        )


def _per_file_rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    exact = doc["settings"]["mode"] == "exact"
    rows = []
    for part in doc["per_file"]:
        for entry in part["results"]:
            row = {"file": part["file"], "distance": entry["distance"]}
            if exact:
                row.update(
                    gap=_number(entry["gap"]),
                    margin=_number(entry["margin"]),
                    precision_at_1=_number(entry["precision_at_1"], 4),
                )
            else:
                row.update(
                    batches=_batches(entry),
                    gap_mean=_number(entry["gap"]["mean"]),
                    margin_mean=_number(entry["margin"]["mean"]),
                )
            row["violation_rate"] = _number(entry["violation_rate"], 4)
            rows.append(row)
    return rows


def _per_class_rows(classes: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for c in classes:
        row = {
            "class": str(c["label"]),
            "size": str(c["size"]),
            "hardest pos": _number(c["mean_hardest_pos"]),
            "hardest neg": _number(c["mean_hardest_neg"]),
            "violation rate": _number(c["violation_rate"], 4),
        }
        if "precision_at_1" in c:
            row["precision@1"] = _number(c["precision_at_1"], 4)
        confused = c["most_confused_with"]
        row["most confused with"] = (
            "n/a"
            if confused is None
            else f"{confused} ({c['most_confused_share']:.0%})"
        )
        rows.append(row)
    return rows


def _breakdown(console: Console, title: str, rows: list[dict[str, str]]) -> None:
    """A table with one row per item; one line per item if it would not fit."""
    if not rows:
        return
    columns = list(rows[0])
    grid = Table(box=box.HEAVY_HEAD)
    for i, name in enumerate(columns):
        grid.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for row in rows:
        grid.add_row(*(markup(row[c]) for c in columns))
    console.print()
    console.print(markup(title), soft_wrap=True)
    unbounded = console.options.update_width(1 << 20)
    if Measurement.get(console, unbounded, grid).maximum <= console.width:
        console.print(grid)
    else:
        for row in rows:
            text = ", ".join(f"{k}: {v}" for k, v in row.items())
            console.print(markup(text), soft_wrap=True)


def markdown(doc: dict[str, Any]) -> str:
    """The report as a GitHub-flavoured Markdown table, for CI job summaries."""
    names = [e["distance"] for e in doc["results"]]
    out = [
        f"**{_md_escape(_title(doc))}**",
        "",
        "| statistic | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for label, read in _rows(doc):
        cells = " | ".join(read(e) for e in doc["results"])
        # Markdown drops a cell's leading spaces: mark the baseline's rows
        # under their statistic another way.
        shown = f"↳ {label.strip()}" if label.startswith(" ") else label
        out.append(f"| {shown} | {cells} |")
    out.append("")
    out.extend(f"_{_md_escape(line)}_" for line in _caption(doc))
    if "per_file" in doc:
        out += ["", "**per file**", "", *_md_table(_per_file_rows(doc))]
    for name, classes in doc.get("per_class", {}).items():
        title = f"**per class, {name} (worst first)**"
        out += ["", title, "", *_md_table(_per_class_rows(classes))]
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    """Escape the characters Markdown would read as markup or table syntax; a
    line break (a string label may hold one) would end the table row, so it
    becomes ``<br>``; other control characters are written as escapes."""
    for char in "\\`*_|[]<>":
        text = text.replace(char, "\\" + char)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "<br>".join(visible(line) for line in lines)


def _md_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "| "
        + " | ".join("---" if i < 2 else "---:" for i in range(len(columns)))
        + " |",
    ]
    lines += ["| " + " | ".join(_md_escape(r[c]) for c in columns) + " |" for r in rows]
    return lines


def _csv_value(value: Any) -> str:
    """A cell as JSON spells it (full precision, true/false), empty for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _flatten(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "_"))
        else:
            flat[name] = value
    return flat


def csv_text(doc: dict[str, Any]) -> str:
    """The report as CSV: a header, then one line per distance (nested fields
    joined with ``_``, e.g. ``gap_mean``)."""
    rows = [_flatten(entry) for entry in doc["results"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow([_csv_value(v) for v in row.values()])
    return buffer.getvalue()


def text(doc: dict[str, Any], fmt: str) -> str:
    """The report in a machine format: json, jsonl, csv or markdown."""
    writers = {"json": to_json, "jsonl": result_lines, "csv": csv_text}
    return writers.get(fmt, markdown)(doc)


# distgap compare -------------------------------------------------------------

_COMPARE_COLUMNS = ("distance", "statistic", "baseline", "current", "change", "better")


def _change(value: float | None) -> str:
    """A signed change; "not compared" where a report had no value (null)."""
    if value is None or math.isnan(value):
        return "not compared"
    return f"{'+' if value >= 0 else ''}{value:.6f}"


def _comparison_cells(c: dict[str, Any], gated: bool) -> list[str]:
    """One comparison's cells; with ``gated``, a gate cell ends every row
    ("n/a" for the gap, which is never gated)."""
    change = _change(c["change"])
    better = {True: "yes", False: "no", None: "same"}[c["better"]]
    cells = [
        c["distance"],
        c["statistic"],
        _number(c["baseline"]),
        _number(c["current"]),
        change,
        "n/a" if change == "not compared" or c["statistic"] in UNJUDGED else better,
    ]
    if gated:
        cells.append({True: "pass", False: "FAIL", None: "n/a"}[c["passed"]])
    return cells


def comparison_table(doc: dict[str, Any], console: Console) -> None:
    """Print two reports' statistics side by side."""
    gated = any(c["passed"] is not None for c in doc["comparisons"])
    columns = [*_COMPARE_COLUMNS, "gate"] if gated else list(_COMPARE_COLUMNS)
    grid = Table(box=box.HEAVY_HEAD)
    for i, name in enumerate(columns):
        grid.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for c in doc["comparisons"]:
        grid.add_row(*(markup(cell) for cell in _comparison_cells(c, gated)))
    console.print(
        markup(f"{doc['baseline']} (baseline) against {doc['current']}"),
        soft_wrap=True,
    )
    unbounded = console.options.update_width(1 << 20)
    if Measurement.get(console, unbounded, grid).maximum <= console.width:
        console.print(grid)
    else:
        for c in doc["comparisons"]:
            pairs = zip(columns, _comparison_cells(c, gated), strict=True)
            text = ", ".join(f"{k}: {v}" for k, v in pairs)
            console.print(markup(text), soft_wrap=True)


def comparison_text(doc: dict[str, Any], fmt: str) -> str:
    """A comparison as JSON, JSON lines, CSV or Markdown."""
    if fmt == "json":
        return to_json(doc)
    if fmt == "jsonl":
        return "".join(
            json_line({"kind": "comparison", **c}) for c in doc["comparisons"]
        )
    gated = any(c["passed"] is not None for c in doc["comparisons"])
    columns = [*_COMPARE_COLUMNS, "gate"] if gated else list(_COMPARE_COLUMNS)
    if fmt == "csv":
        # Values as JSON has them, not rounded for reading.
        keys = ["baseline", "current", "change", "better"]
        keys += ["passed"] if gated else []
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for c in doc["comparisons"]:
            writer.writerow(
                [c["distance"], c["statistic"], *(_csv_value(c[k]) for k in keys)]
            )
        return buffer.getvalue()
    rows = [_comparison_cells(c, gated) for c in doc["comparisons"]]
    out = [
        "| " + " | ".join(columns) + " |",
        "| "
        + " | ".join("---" if i < 2 else "---:" for i in range(len(columns)))
        + " |",
    ]
    out += ["| " + " | ".join(_md_escape(cell) for cell in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


# distgap inspect -------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def inspection_table(doc: dict[str, Any], console: Console) -> None:
    """Print what ``distgap inspect`` found, one line per fact."""
    sizes, norms = doc["class_sizes"], doc["norms"]
    files = doc["files"]
    lines = [
        ("input", files[0] if len(files) == 1 else f"{len(files)} files"),
        ("rows", f"{doc['rows_valid']} valid of {doc['rows_read']} read"),
        ("dimension", f"{doc['dimension']} ({doc['value_type']})"),
        ("labels", doc["labels"]["kind"]),
        ("classes", str(doc["classes"])),
        # One figure per line: a narrow terminal then never wraps one apart
        # from its name, and each greps on its own.
        ("class size min", str(sizes["min"])),
        ("class size median", _number(sizes["median"], 1)),
        ("class size max", str(sizes["max"])),
        ("classes of one row", str(sizes["singletons"])),
        ("norm min", _number(norms["min"])),
        ("norm mean", _number(norms["mean"])),
        ("norm max", _number(norms["max"])),
        ("unit length", f"{_number(norms['unit_length_share'], 4)} of rows"),
    ]
    for reason, count in doc["invalid"].items():
        lines.append((f"invalid: {reason}", str(count)))
    estimate = doc["estimate"]
    lines.append(
        (
            "eval estimate",
            f"about {_seconds(estimate['eval_seconds'])} s for {estimate['distances']} "
            f"distance(s) at batch size {estimate['batch_size']} on "
            f"{estimate['cpu_cores']} CPU core(s)",
        )
    )
    grid = Table(box=box.HEAVY_HEAD, show_header=False)
    grid.add_column("fact", no_wrap=True)
    grid.add_column("value", overflow="fold")
    for key, value in lines:
        grid.add_row(markup(key), markup(value))
    console.print(grid)
