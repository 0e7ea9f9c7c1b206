"""The result of a run as one plain document, and the CI gates read from it.

The document is what ``--format json`` prints and what every other format is
rendered from. Its layout is versioned by ``schema``; see the README for the
fields. The same input and options give byte-identical JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from distgap_cli import __version__
from distgap_cli.engine import EvalResult
from distgap_cli.reading import Reader

SCHEMA = "distgap.eval/1"


@dataclass(frozen=True)
class Gate:
    """A CI gate: a flag, the statistic it reads, and which way it must hold."""

    flag: str
    statistic: tuple[str, ...]
    at_least: bool


GATES = {
    "min_gap": Gate("--min-gap", ("gap", "mean"), True),
    "min_margin": Gate("--min-margin", ("margin", "mean"), True),
    "max_violation_rate": Gate("--max-violation-rate", ("violation_rate",), False),
}


def build(
    result: EvalResult, reader: Reader, gates: dict[str, float | None]
) -> dict[str, Any]:
    """The report document of a batch-mode run."""
    settings = result.settings
    results = []
    for distance, acc in result.accumulators.items():
        entry = {"distance": distance.value, "similarity": distance.is_similarity}
        entry.update(acc.summary())
        results.append(entry)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "distgap_version": __version__,
        "input": {
            "files": [s.name for s in reader.sources],
            "rows_read": reader.rows_read,
            "rows": reader.rows_kept,
            "dropped": dict(sorted(reader.dropped.items())),
            "dimension": result.dimension,
            "classes": result.classes,
            "labels": reader.label_map.to_json(),
        },
        "settings": {
            "mode": "batch",
            "batch_size": settings.batch_size,
            "order": "shuffle" if settings.shuffle else "sequential",
            "seed": settings.seed if settings.shuffle else None,
            "limit": reader.options.limit,
            "on_invalid": reader.options.on_invalid,
            "distances": [d.value for d in settings.distances],
        },
        "device": result.device,
        "results": results,
    }
    doc["gates"] = check_gates(doc, gates)
    return doc


def _read(entry: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = entry
    for key in path:
        value = value[key]
    return float(value)


def check_gates(doc: dict[str, Any], gates: dict[str, float | None]) -> list[dict]:
    """Apply every set gate to every distance; a NaN measurement fails."""
    checked = []
    for key, required in gates.items():
        if required is None:
            continue
        gate = GATES[key]
        for entry in doc["results"]:
            measured = _read(entry, gate.statistic)
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
                    "statistic": ".".join(gate.statistic),
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
