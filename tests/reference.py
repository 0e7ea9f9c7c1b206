"""A slow, obvious float64 reference for the distance-gap core.

Written for clarity, not speed: direct differences in a double loop, so that the
vectorised TensorFlow code under test is compared with something independent.
"""

from __future__ import annotations

import math

import numpy as np


def distance(name: str, a: np.ndarray, b: np.ndarray) -> float:
    """One distance between two rows, in float64, from direct differences."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if name == "cosine":
        return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    if name == "euclidean":
        return math.sqrt(float(((a - b) ** 2).sum()))
    if name == "squared_euclidean":
        return float(((a - b) ** 2).sum())
    if name == "manhattan":
        return float(np.abs(a - b).sum())
    if name == "inner_product":
        return float(a @ b)
    if name == "snr":
        return float(np.var(a - b) / np.var(a))
    raise ValueError(name)


def batch(name: str, labels, embeddings, mask=None) -> dict:
    """Per-anchor hardest pairs and the batch summary of one batch."""
    labels = list(np.asarray(labels).reshape(-1))
    n = len(labels)
    mask = [True] * n if mask is None else list(mask)
    hp, hn = [math.nan] * n, [math.nan] * n
    for i in range(n):
        if not mask[i]:
            continue
        pos, neg = [], []
        for j in range(n):
            if not mask[j] or i == j:
                continue
            d = distance(name, embeddings[i], embeddings[j])
            (pos if labels[i] == labels[j] else neg).append(d)
        if pos:
            hp[i] = max(pos)
        if neg:
            hn[i] = min(neg)
    with_pos = [v for v in hp if not math.isnan(v)]
    with_neg = [v for v in hn if not math.isnan(v)]
    max_pos = max(with_pos) if with_pos else math.nan
    min_neg = min(with_neg) if with_neg else math.nan
    both = [
        (p, q)
        for p, q in zip(hp, hn, strict=True)
        if not (math.isnan(p) or math.isnan(q))
    ]
    return {
        "hardest_pos": hp,
        "hardest_neg": hn,
        "max_pos": max_pos,
        "min_neg": min_neg,
        "margin": min_neg - max_pos,
        "gap": abs(min_neg - max_pos),
        "mean_hardest_pos": sum(with_pos) / len(with_pos) if with_pos else math.nan,
        "mean_hardest_neg": sum(with_neg) / len(with_neg) if with_neg else math.nan,
        "violations": sum(1 for p, q in both if q < p),
        "anchors_with_both": len(both),
    }


def matrix(name: str, x: np.ndarray) -> np.ndarray:
    """All pairwise distances of one batch in float64, by broadcasting differences.

    Vectorised for speed on whole sample files, but like :func:`distance` it works
    from direct differences, never from a Gram matrix.
    """
    x = np.asarray(x, dtype=np.float64)
    if name == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        diff = unit[:, None, :] - unit[None, :, :]
        return 0.5 * (diff**2).sum(-1)
    if name == "inner_product":
        return x @ x.T
    diff = x[:, None, :] - x[None, :, :]
    if name == "euclidean":
        return np.sqrt((diff**2).sum(-1))
    if name == "squared_euclidean":
        return (diff**2).sum(-1)
    if name == "manhattan":
        return np.abs(diff).sum(-1)
    if name == "snr":
        return diff.var(-1) / x.var(-1)[:, None]
    raise ValueError(name)


def batch_gaps(name: str, labels, x, batch_size: int) -> list[float]:
    """The per-batch gap of every batch of a file in input order (NaN: no gap)."""
    gaps = []
    for start in range(0, len(labels), batch_size):
        y = np.asarray(labels[start : start + batch_size])
        d = matrix(name, x[start : start + batch_size])
        same = y[:, None] == y[None, :]
        pos = same & ~np.eye(len(y), dtype=bool)
        neg = ~same
        if not pos.any() or not neg.any():
            gaps.append(math.nan)
            continue
        gaps.append(abs(d[neg].min() - d[pos].max()))
    return gaps
