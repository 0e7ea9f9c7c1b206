"""The result of a run as one plain document, and the CI gates read from it.

The document is what ``--format json`` prints and what every other format is
rendered from. Its layout is versioned by ``schema``; see the README for the
fields. The same input and options give byte-identical JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distgap_cli import __version__
from distgap_cli.accumulate import BATCH_FIELDS
from distgap_cli.errors import InputError, UsageError

if TYPE_CHECKING:
    from distgap_cli.engine import EvalResult
    from distgap_cli.reading import Reader

SCHEMA = "distgap.eval/1"
COMPARE_SCHEMA = "distgap.compare/1"


@dataclass(frozen=True)
class Gate:
    """A CI gate: a flag, the statistic it reads, and which way it must hold."""

    flag: str
    statistic: tuple[str, ...]
    at_least: bool


# Batch mode reports gap and margin as {mean, std, min, max}: gates read the mean.
# Exact mode reports single values, which gates read directly.
GATES = {
    "min_gap": Gate("--min-gap", ("gap",), True),
    "min_margin": Gate("--min-margin", ("margin",), True),
    "max_violation_rate": Gate("--max-violation-rate", ("violation_rate",), False),
    "min_precision_at_1": Gate("--min-precision-at-1", ("precision_at_1",), True),
}
# Gates on the hardest pairs. A similarity's "hardest" pairs are, taken literally
# as TensorFlow Similarity takes them, its easiest ones, so these gates skip it.
SEPARATION_GATES = ("min_gap", "min_margin", "max_violation_rate")


def ungated_similarities(
    gates: dict[str, float | None], distances: list[Any]
) -> tuple[list[str], list[str]]:
    """The separation gates set, and the similarities among ``distances`` they
    skip."""
    flags = [GATES[k].flag for k in SEPARATION_GATES if gates.get(k) is not None]
    skipped = [d.value for d in distances if d.is_similarity] if flags else []
    return flags, skipped


def build(
    result: EvalResult, reader: Reader, gates: dict[str, float | None]
) -> dict[str, Any]:
    """The report document of a batch-mode run."""
    settings = result.settings
    results = [_entry(d, acc.summary()) for d, acc in result.accumulators.items()]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "distgap_version": __version__,
        "input": _input_summary(reader, result.dimension, result.classes),
        "settings": {
            "mode": "batch",
            "batch_size": settings.batch_size,
            "sampler": settings.sampler,
            "seed": None if settings.sampler == "sequential" else settings.seed,
            "classes_per_batch": settings.classes_per_batch,
            "examples_per_class": settings.examples_per_class,
            "limit": reader.options.limit,
            "on_invalid": reader.options.on_invalid,
            "distances": [d.value for d in settings.distances],
        },
        "device": result.device,
        "batch_health": result.health,
        "results": results,
    }
    if result.per_file:
        doc["per_file"] = _per_file(
            reader,
            {
                owner: {d: acc.summary() for d, acc in states.items()}
                for owner, states in result.per_file.items()
            },
        )
    doc["gates"] = check_gates(doc, gates)
    return doc


def _entry(distance: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """One ``results[]`` entry: the distance, whether it is a similarity, figures."""
    return {"distance": distance.value, "similarity": distance.is_similarity, **summary}


def _per_file(
    reader: Reader, per_file: dict[int, dict[Any, dict[str, Any]]]
) -> list[dict[str, Any]]:
    return [
        {
            "file": reader.sources[owner].name,
            "results": [_entry(d, summary) for d, summary in states.items()],
        }
        for owner, states in sorted(per_file.items())
    ]


def build_exact(
    result: Any, reader: Reader, gates: dict[str, float | None]
) -> dict[str, Any]:
    """The report document of an exact-mode run."""
    settings = result.settings
    sampled = settings.anchors is not None and settings.anchors < result.rows
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "distgap_version": __version__,
        "input": _input_summary(reader, result.dimension, result.classes),
        "settings": {
            "mode": "exact",
            # Sampling only happens when fewer anchors than rows were asked for.
            "anchors": settings.anchors if sampled else None,
            "seed": settings.seed if sampled else None,
            "limit": reader.options.limit,
            "on_invalid": reader.options.on_invalid,
            "distances": [d.value for d in settings.distances],
        },
        "device": result.device,
        "results": [_entry(d, summary) for d, summary in result.results.items()],
    }
    if result.per_file:
        doc["per_file"] = _per_file(reader, result.per_file)
    doc["gates"] = check_gates(doc, gates)
    return doc


def _input_summary(
    reader: Reader, dimension: int | None, classes: int
) -> dict[str, Any]:
    return {
        "files": list(reader.files_read),
        "rows_read": reader.rows_read,
        "rows": reader.rows_kept,
        "dropped": dict(sorted(reader.dropped.items())),
        "dimension": dimension,
        "classes": classes,
        "labels": reader.label_map.to_json(),
    }


def add_per_class(
    doc: dict[str, Any], anchors: dict[Any, Any], reader: Reader, top: int | None
) -> None:
    """Attach the per-class breakdown of every distance, worst classes first."""
    from distgap_cli.breakdown import per_class

    doc["per_class"] = {
        d.value: per_class(a, reader.label_map, top) for d, a in anchors.items()
    }


def _read(entry: dict[str, Any], path: tuple[str, ...]) -> tuple[str, float]:
    """The statistic's name as reported, and its value (a mean where it has one)."""
    value: Any = entry
    for key in path:
        value = value[key]
    name = ".".join(path)
    if isinstance(value, dict):
        value, name = value["mean"], name + ".mean"
    return name, math.nan if value is None else float(value)


def check_gates(doc: dict[str, Any], gates: dict[str, float | None]) -> list[dict]:
    """Apply every set gate to every distance; a NaN measurement fails."""
    checked = []
    for key, required in gates.items():
        if required is None:
            continue
        gate = GATES[key]
        for entry in doc["results"]:
            if key in SEPARATION_GATES and entry["similarity"]:
                continue
            statistic, measured = _read(entry, gate.statistic)
            if math.isnan(measured):
                passed = False
            elif gate.at_least:
                passed = measured >= required
            else:
                passed = measured <= required
            checked.append(
                {
                    "gate": key,
                    "distance": entry["distance"],
                    "statistic": statistic,
                    "required": required,
                    "measured": measured,
                    "passed": passed,
                }
            )
    return checked


def failed_gates(doc: dict[str, Any]) -> list[str]:
    """One line per failed gate, for stderr."""
    lines = []
    for g in doc["gates"]:
        if not g["passed"]:
            gate = GATES[g["gate"]]
            relation = "at least" if gate.at_least else "at most"
            lines.append(
                f"gate failed: {gate.flag} on {g['distance']}: "
                f"{g['statistic']} is {g['measured']:.6g}, required {relation} "
                f"{g['required']:.6g}"
            )
    return lines


def _clean(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def to_json(doc: dict[str, Any]) -> str:
    """The document as JSON text, NaN written as null."""
    return json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n"


# Per-batch records --------------------------------------------------------------


def batch_records(
    first_index: int, stack: Any, stats: dict[Any, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One JSON-ready record per batch and distance, as ``--per-batch`` streams them."""
    records = []
    for i in range(stack.real):
        for distance, values in stats.items():
            record: dict[str, Any] = {
                "kind": "batch",
                "batch": first_index + i,
                "distance": distance.value,
                "rows": int(stack.sizes[i]),
                "first_row": int(stack.first_rows[i]),
                "has_gap": bool(
                    values["has_pos_pair"][i] and values["has_neg_pair"][i]
                ),
            }
            for name in BATCH_FIELDS:
                record[name] = float(values[name][i])
            record["violations"] = int(values["violations"][i])
            record["anchors_with_both"] = int(values["anchors_with_both"][i])
            records.append(record)
    return records


def json_line(record: dict[str, Any]) -> str:
    """One compact JSON line, NaN written as null."""
    return json.dumps(_clean(record), allow_nan=False, separators=(",", ":")) + "\n"


def result_lines(doc: dict[str, Any]) -> str:
    """``--format jsonl``: one object per distance (``kind: "result"``) with its
    gates and baseline comparisons, then one per file and distance (``"file"``)
    and one per class and distance (``"class"``) when those breakdowns were asked
    for."""
    lines = []
    for entry in doc["results"]:
        name = entry["distance"]
        record = {"kind": "result", "schema": doc["schema"], **entry}
        record["gates"] = [g for g in doc["gates"] if g["distance"] == name]
        if "baseline" in doc:
            record["baseline"] = [
                c for c in doc["baseline"]["comparisons"] if c["distance"] == name
            ]
        lines.append(json_line(record))
    for part in doc.get("per_file", []):
        for entry in part["results"]:
            lines.append(json_line({"kind": "file", "file": part["file"], **entry}))
    for name, classes in doc.get("per_class", {}).items():
        for entry in classes:
            lines.append(json_line({"kind": "class", "distance": name, **entry}))
    return "".join(lines)


# Comparing with a baseline ------------------------------------------------------


@dataclass(frozen=True)
class Compared:
    """A statistic compared between runs, and which direction is better: None
    for the gap, shown beside the others but neither judged nor gated."""

    name: str
    path: tuple[str, ...]
    higher_is_better: bool | None


# The gap is |min_neg - max_pos|, as TensorFlow Similarity takes it: it grows as
# classes separate and as they overlap more (raw pixels have a larger gap than a
# trained model), so no direction of it is better; the margin, its signed form,
# is judged in its place.
COMPARED = (
    Compared("gap", ("gap",), None),
    Compared("margin", ("margin",), True),
    Compared("violation_rate", ("violation_rate",), False),
    Compared("precision_at_1", ("precision_at_1",), True),
)
UNJUDGED = frozenset(s.name for s in COMPARED if s.higher_is_better is None)


def parse_drop(text: str) -> tuple[float, bool]:
    """``0.05`` (absolute) or ``5%`` (relative to the baseline) as (value, relative).

    Raises:
        UsageError: for anything else, or a negative value.
    """
    raw = text.strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"--max-drop {text!r}: expected a number such as 0.05, or a percentage "
            "such as 5%"
        )
    return (value / 100.0 if relative else value), relative


def _lookup(entry: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """A compared statistic (its mean where it has one): None where the report
    has no such field (precision@1 in batch mode), NaN where it holds null."""
    value: Any = entry
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, dict):
        value = value.get("mean")
    if value is None:
        return math.nan
    return float(value)


def _shown_name(entry: dict[str, Any], stat: Compared) -> str:
    """The statistic as a user finds it in the report: ``margin.mean`` in batch
    mode, ``margin`` in exact mode."""
    name = ".".join(stat.path)
    return name + ".mean" if isinstance(entry.get(stat.path[0]), dict) else name


def _pairs(
    current: dict[str, Any], baseline: dict[str, Any]
) -> list[tuple[dict[str, Any], Compared, float, float]]:
    """Every statistic both reports have a field for, in each distance both hold:
    (current entry, statistic, current value, baseline value); null is NaN."""
    theirs = {e["distance"]: e for e in baseline.get("results", [])}
    pairs = []
    for entry in current["results"]:
        old = theirs.get(entry["distance"])
        if old is None:
            continue
        for stat in COMPARED:
            new_value = _lookup(entry, stat.path)
            old_value = _lookup(old, stat.path)
            if new_value is not None and old_value is not None:
                pairs.append((entry, stat, new_value, old_value))
    return pairs


def compare(
    current: dict[str, Any],
    baseline: dict[str, Any],
    max_drop: tuple[float, bool] | None,
) -> dict[str, Any]:
    """Compare two reports, distance by distance, statistic by statistic.

    A statistic is *worse by* how far it moved in the bad direction. With
    ``max_drop``, a comparison fails when it is worse by more than the allowed
    drop (absolute, or relative to the baseline's magnitude). A statistic either
    report has no value for (null) is *not compared*: it is listed with
    ``change`` null and, as any gate that reads null, fails ``max_drop``. The
    gap is listed with its change but ``better`` and ``passed`` null: no
    direction of it is better (see :data:`COMPARED`).
    """
    comparisons = []
    for entry, stat, new_value, old_value in _pairs(current, baseline):
        compared = not (math.isnan(new_value) or math.isnan(old_value))
        change = new_value - old_value
        worse_by = -change if stat.higher_is_better else change
        allowed = None
        passed = None
        if max_drop is not None and stat.higher_is_better is not None:
            amount, relative = max_drop
            allowed = amount * abs(old_value) if relative else amount
            passed = compared and worse_by <= allowed + 1e-12
        comparisons.append(
            {
                "distance": entry["distance"],
                "statistic": stat.name,
                "baseline": old_value,
                "current": new_value,
                "change": change,
                "better": (
                    None
                    if not compared or change == 0 or stat.higher_is_better is None
                    else (change > 0) == stat.higher_is_better
                ),
                "allowed_drop": allowed,
                "passed": passed,
            }
        )
    return {"comparisons": comparisons}


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _without_value(new_value: Any, old_value: Any) -> str | None:
    """Which report has no value (null) for a statistic, or None if both do."""
    if _is_null(old_value) and _is_null(new_value):
        return "neither the baseline nor this report has a value"
    if _is_null(old_value):
        return "the baseline has no value"
    if _is_null(new_value):
        return "this report has no value"
    return None


def comparable(current: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Check that two reports measure the same thing; warnings for lesser drift.

    Raises:
        UsageError: when one is a batch-mode and the other an exact-mode report.
    """
    mine, theirs = current.get("settings", {}), baseline.get("settings", {})
    if mine.get("mode") != theirs.get("mode"):
        raise UsageError(
            f"the baseline is a report of --mode {theirs.get('mode')} and this one "
            f"of --mode {mine.get('mode')}: their figures are not comparable; "
            "compare reports made with the same --mode"
        )
    warnings = []
    settings: tuple[str, ...]
    if mine.get("mode") == "exact":
        settings, depend = ("anchors", "seed"), "sampled anchors give other figures"
    else:
        settings = ("batch_size", "sampler", "classes_per_batch", "examples_per_class")
        depend = "per-batch figures depend on it"

    def shown(key: str, value: Any) -> Any:
        return "all rows" if key == "anchors" and value is None else value

    for key in settings:
        if mine.get(key) != theirs.get(key):
            warnings.append(
                f"the baseline used {key} {shown(key, theirs.get(key))} and this "
                f"report {shown(key, mine.get(key))}: {depend}"
            )
    ours = {e.get("distance") for e in current.get("results", [])}
    dropped = [
        str(e.get("distance"))
        for e in baseline.get("results", [])
        if e.get("distance") not in ours
    ]
    if dropped:
        warnings.append(
            f"the baseline also holds {', '.join(dropped)}, which this report does "
            "not: not compared"
        )
    for entry, stat, new_value, old_value in _pairs(current, baseline):
        who = _without_value(new_value, old_value)
        if who and stat.name not in UNJUDGED:
            warnings.append(
                f"not compared: {who} for {entry['distance']} "
                f"{_shown_name(entry, stat)} (null); --max-drop fails on it, as "
                "any gate that reads null"
            )
    return warnings


def failed_comparisons(section: dict[str, Any], flag: str = "--max-drop") -> list[str]:
    """One stderr line per comparison that dropped more than allowed."""
    lines = []
    for c in section["comparisons"]:
        who = _without_value(c["current"], c["baseline"])
        if c["passed"] is False and who:
            lines.append(
                f"gate failed: {flag} on {c['distance']}: {c['statistic']} not "
                f"compared: {who} for it (null), and a gate that reads null fails"
            )
        elif c["passed"] is False:
            lines.append(
                f"gate failed: {flag} on {c['distance']}: {c['statistic']} is "
                f"{c['current']:.6g}, baseline {c['baseline']:.6g}, worse by "
                f"{abs(c['change']):.6g}, allowed {c['allowed_drop']:.6g}"
            )
    return lines


# How to make a report a comparison can read.
_REMAKE = "`distgap eval ... -f json -o FILE`"


def load_report(path: str) -> dict[str, Any]:
    """Read a saved JSON report.

    Raises:
        InputError: when the file is missing, not JSON, not a distgap report, a
            report of a schema version this distgap does not read, or not
            complete.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"is not JSON ({exc})",
            file=path,
            fix="pass a report saved with distgap eval --format json",
        ) from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not str(schema).startswith("distgap.eval/"):
        found = "has no 'schema' field" if schema is None else f"has schema {schema!r}"
        raise InputError(
            f"is not a distgap report: it {found}, where a report has 'distgap.eval/N'",
            file=path,
            fix="pass a report saved with distgap eval --format json",
        )
    if schema != SCHEMA:
        raise InputError(
            f"is a report of schema {schema!r}, which this distgap "
            f"({__version__}) does not read: it reads {SCHEMA!r} only",
            file=path,
            fix=f"re-create it with this distgap: {_REMAKE}, or use the distgap "
            "that wrote it",
        )
    problem = _shape_problem(doc)
    if problem:
        raise InputError(
            f"is not a distgap report as saved: {problem}",
            file=path,
            fix="pass a report saved with distgap eval --format json, unedited",
        )
    missing = _missing_key(doc)
    if missing:
        raise InputError(
            f"is not a complete distgap eval report: {missing}",
            file=path,
            fix=f"re-create it with {_REMAKE}",
        )
    return doc


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _shape_problem(doc: dict[str, Any]) -> str | None:
    """What makes a document with a report's schema unusable as one: the parts
    comparisons and gates read must have the types distgap writes."""
    if not isinstance(doc.get("settings", {}), dict):
        return "'settings' is not an object"
    results = doc.get("results", [])
    if not isinstance(results, list):
        return "'results' is not a list"
    for i, entry in enumerate(results):
        if not isinstance(entry, dict) or not isinstance(entry.get("distance"), str):
            return f"results[{i}] is not an object with a 'distance' name"
        for stat in COMPARED:
            name = ".".join(stat.path)
            value = entry.get(stat.path[0])
            if isinstance(value, dict):
                value, name = value.get("mean"), name + ".mean"
            if not _is_number(value):
                return f"results[{i}].{name} is {value!r}, not a number"
    mode = doc.get("settings", {}).get("mode", "batch")
    if mode not in ("batch", "exact"):
        return f"settings.mode is {mode!r}, not 'batch' or 'exact'"
    return None


def _missing_key(doc: dict[str, Any]) -> str | None:
    """The first field a comparison reads that the report lacks. A null value
    is not missing: a genuine report holds null where a figure is undefined."""
    for key in ("results", "settings"):
        if key not in doc:
            return f"it has no {key!r}"
    if "mode" not in doc["settings"]:
        return "it has no 'settings.mode'"
    exact = doc["settings"]["mode"] == "exact"
    # Batch mode has no precision@1; exact mode has every compared statistic.
    needed = [s for s in COMPARED if exact or s.name != "precision_at_1"]
    for i, entry in enumerate(doc["results"]):
        for stat in needed:
            key = stat.path[0]
            if key not in entry:
                return f"results[{i}] ({entry['distance']}) has no {key!r}"
            if isinstance(entry[key], dict) and "mean" not in entry[key]:
                return f"results[{i}].{key} ({entry['distance']}) has no 'mean'"
    return None
