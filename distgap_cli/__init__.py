"""distgap: how well do saved embeddings separate their classes?

The command line lives in :mod:`distgap_cli.cli`; the Keras metrics
(:class:`DistanceGapMetric`, :class:`DistanceMetric` and TensorFlow Similarity's
alias factories) are importable from here and load TensorFlow on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_METRICS = (
    "DistanceGapMetric",
    "DistanceMetric",
    "dist_gap",
    "max_pos",
    "max_neg",
    "avg_pos",
    "avg_neg",
    "min_pos",
    "min_neg",
    "sum_pos",
    "sum_neg",
)

__all__ = ["__version__", *_METRICS]


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        from distgap_cli import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'distgap_cli' has no attribute {name!r}")
