"""Per-anchor results, and what is built from them: per-class tables, per-row files.

Both modes produce a :class:`PerAnchor` for each distance: batch mode from each
anchor's hardest pairs within its batch, exact mode from its hardest pairs in the
whole dataset (which also gives precision@1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distgap_cli.errors import UsageError
from distgap_cli.reading import LabelMap


@dataclass
class PerAnchor:
    """One entry per anchor (global row, file, label) and its hardest pairs."""

    rows: np.ndarray
    files: np.ndarray
    labels: np.ndarray
    hardest_pos: np.ndarray
    hardest_neg: np.ndarray
    nearest_neg_row: np.ndarray  # global row, -1 where none
    nearest_neg_label: np.ndarray  # label id, meaningless where the row is -1
    hit: np.ndarray | None = None  # nearest neighbour shares the label (exact)

    @staticmethod
    def concat(parts: list[PerAnchor]) -> PerAnchor:
        """Join the parts in order."""

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        hits = [p.hit for p in parts]
        return PerAnchor(
            rows=joined("rows"),
            files=joined("files"),
            labels=joined("labels"),
            hardest_pos=joined("hardest_pos"),
            hardest_neg=joined("hardest_neg"),
            nearest_neg_row=joined("nearest_neg_row"),
            nearest_neg_label=joined("nearest_neg_label"),
            hit=None if any(h is None for h in hits) else joined("hit"),
        )


def per_class(anchors: PerAnchor, labels: LabelMap, top: int | None) -> list[dict]:
    """Each class's size, hardest distances, violation rate, precision@1 and most
    confused neighbour, worst first (highest violation rate, then lowest mean
    margin)."""
    ids, inverse, sizes = np.unique(
        anchors.labels, return_inverse=True, return_counts=True
    )
    has_pos = ~np.isnan(anchors.hardest_pos)
    has_neg = ~np.isnan(anchors.hardest_neg)
    both = has_pos & has_neg
    count = len(ids)

    def grouped_mean(values: np.ndarray, present: np.ndarray) -> np.ndarray:
        total = np.bincount(inverse, np.where(present, values, 0.0), count)
        n = np.bincount(inverse, present.astype(float), count)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / n

    mean_pos = grouped_mean(anchors.hardest_pos, has_pos)
    mean_neg = grouped_mean(anchors.hardest_neg, has_neg)
    violated = both & (anchors.hardest_neg < anchors.hardest_pos)
    violation = grouped_mean(violated.astype(float), both)
    margin = grouped_mean(anchors.hardest_neg - anchors.hardest_pos, both)
    precision = (
        grouped_mean(anchors.hit.astype(float), np.ones(len(inverse), bool))
        if anchors.hit is not None
        else None
    )
    confused = _most_confused(inverse, anchors, count)

    classes = []
    for i, label_id in enumerate(ids):
        row: dict[str, Any] = {
            "label": labels.value(int(label_id)),
            "size": int(sizes[i]),
            "mean_hardest_pos": float(mean_pos[i]),
            "mean_hardest_neg": float(mean_neg[i]),
            "mean_margin": float(margin[i]),
            "violation_rate": float(violation[i]),
        }
        if precision is not None:
            row["precision_at_1"] = float(precision[i])
        target, share = confused[i]
        row["most_confused_with"] = None if target is None else labels.value(target)
        row["most_confused_share"] = share
        classes.append(row)

    def badness(row: dict) -> tuple[float, float]:
        rate, margin_ = row["violation_rate"], row["mean_margin"]
        return (
            -(rate if not math.isnan(rate) else -1.0),
            margin_ if not math.isnan(margin_) else math.inf,
        )

    classes.sort(key=badness)
    return classes[:top] if top else classes


def _most_confused(
    inverse: np.ndarray, anchors: PerAnchor, count: int
) -> list[tuple[int | None, float]]:
    """For each class, the class its hardest negatives most often belong to."""
    present = anchors.nearest_neg_row >= 0
    out: list[tuple[int | None, float]] = [(None, math.nan)] * count
    if not present.any():
        return out
    pairs = np.stack([inverse[present], anchors.nearest_neg_label[present]], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    totals = np.bincount(inverse[present], minlength=count)
    # Largest count per class; ties go to the smallest label id.
    order = np.lexsort((uniq[:, 1], -counts, uniq[:, 0]))
    seen: set[int] = set()
    for j in order:
        cls = int(uniq[j, 0])
        if cls not in seen:
            seen.add(cls)
            out[cls] = (int(uniq[j, 1]), float(counts[j] / totals[cls]))
    return out


def write_per_row(
    path: str,
    tables: dict[str, PerAnchor],
    files: list[str],
    labels: LabelMap,
) -> None:
    """Write every anchor's figures as Parquet, one row per anchor and distance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for distance, anchors in tables.items():
        n = len(anchors.rows)
        label_values: Any = (
            pa.array([labels.name(int(i)) for i in anchors.labels], pa.string())
            if labels.kind == "string"
            else pa.array(anchors.labels, pa.int64())
        )
        part = {
            "distance": pa.array([distance] * n, pa.string()),
            "row": pa.array(anchors.rows, pa.int64()),
            "file": pa.DictionaryArray.from_arrays(
                pa.array(anchors.files, pa.int32()), pa.array(files, pa.string())
            ),
            "label": label_values,
            "hardest_pos": pa.array(
                anchors.hardest_pos, pa.float64(), from_pandas=True
            ),
            "hardest_neg": pa.array(
                anchors.hardest_neg, pa.float64(), from_pandas=True
            ),
            "margin": pa.array(
                anchors.hardest_neg - anchors.hardest_pos,
                pa.float64(),
                from_pandas=True,
            ),
            "nearest_negative_row": pa.array(
                np.where(anchors.nearest_neg_row >= 0, anchors.nearest_neg_row, 0),
                pa.int64(),
                mask=anchors.nearest_neg_row < 0,
            ),
        }
        if anchors.hit is not None:
            part["nearest_neighbour_same_label"] = pa.array(anchors.hit, pa.bool_())
        parts.append(pa.table(part))
    table = pa.concat_tables(parts, promote_options="default")
    # Made in memory and written as bytes, so that a pipe or /dev/stdout takes
    # it as well as a file does (Parquet's file writer asks for its position).
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    try:
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
    except OSError as exc:
        raise UsageError(
            f"cannot write --per-row {path}: {exc.strerror or exc}"
        ) from None
