"""``distgap inspect``: what an input holds, without evaluating it.

One pass over the input with the checks ``eval`` makes for the chosen
distances, invalid rows counted instead of fatal: rows, dimension, classes and
their sizes, invalid rows by reason, vector norms, and a rough estimate of how
long ``eval`` would take.
TensorFlow is not imported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distgap_cli.backend import worker_count
from distgap_cli.distances import Distance
from distgap_cli.reading import Reader

SCHEMA = "distgap.inspect/1"

# Rough costs fitted to bench/run.py on a 2-core x86-64 machine (CPU, NumPy):
# start-up (a GPU adds TensorFlow's import, seconds), and core-seconds per row
# of one distance: a fixed part, a part per value of the row, and a part per
# Gram product term (batch size x dimension). Cosine, end to end: 1M x 128 at
# batch 256 1.15-1.4 s, at batch 1024 2.6-2.9 s; 100k x 768 at batch 256
# 0.6 s; a 4-row input 0.25-0.3 s.
# manhattan has no product to lean on: it costs a part per absolute difference
# (batch size x dimension) instead, 0.65-0.72 ns of a core each (1M x 128 at
# batch 256: 23.6 CPU seconds, at 1024: 90; 100k x 768 at 256: 12.7).
_STARTUP_SECONDS = 0.25
_PER_ROW = 0.8e-6
_PER_VALUE = 0.5e-9
_PER_PRODUCT_TERM = 3e-11
_PER_DIFFERENCE = 0.7e-9


def estimate_seconds(
    rows: int, dim: int, batch_size: int, distances: list[Distance], cores: int
) -> float:
    """A rough wall-time estimate for ``distgap eval`` in batch mode on ``cores``
    CPU cores (one NumPy thread each)."""
    terms = batch_size * dim  # product terms, or absolute differences, a row
    per_row = sum(
        _PER_ROW
        + _PER_VALUE * dim
        + (_PER_DIFFERENCE if d is Distance.MANHATTAN else _PER_PRODUCT_TERM) * terms
        for d in distances
    )
    return _STARTUP_SECONDS + rows * per_row / max(cores, 1)


def inspect_input(
    reader: Reader, batch_size: int, distances: list[Distance]
) -> dict[str, Any]:
    """Read everything ``reader`` yields and describe it."""
    labels: list[np.ndarray] = []
    norm_min, norm_max, norm_sum, unit = math.inf, 0.0, 0.0, 0
    rows = 0
    for block in reader.blocks():
        labels.append(block.labels)
        norms = np.linalg.norm(block.embeddings.astype(np.float64), axis=1)
        if len(norms):
            norm_min = min(norm_min, float(norms.min()))
            norm_max = max(norm_max, float(norms.max()))
            norm_sum += float(norms.sum())
            unit += int((np.abs(norms - 1.0) <= 1e-3).sum())
        rows += len(norms)

    cores = worker_count()
    ids, sizes = np.unique(np.concatenate(labels) if labels else [], return_counts=True)
    dim = reader.dim or 0
    return {
        "schema": SCHEMA,
        "files": list(reader.files_read),
        "rows_read": reader.rows_read,
        "rows_valid": rows,
        "invalid": dict(sorted(reader.dropped.items())),
        "dimension": dim,
        "value_type": reader.value_type,
        "labels": reader.label_map.to_json(),
        "classes": len(ids),
        "class_sizes": {
            "min": int(sizes.min()) if len(sizes) else None,
            "median": float(np.median(sizes)) if len(sizes) else None,
            "max": int(sizes.max()) if len(sizes) else None,
            "singletons": int((sizes == 1).sum()),
        },
        "norms": {
            "min": norm_min if rows else None,
            "mean": norm_sum / rows if rows else None,
            "max": norm_max if rows else None,
            "unit_length_share": unit / rows if rows else None,
        },
        "estimate": {
            "batch_size": batch_size,
            "distances": len(distances),
            "cpu_cores": cores,
            "eval_seconds": estimate_seconds(rows, dim, batch_size, distances, cores),
        },
    }
