"""Accumulation across batches: exact, and mergeable across processes."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from distgap_cli.accumulate import GapAccumulator, Moments
from distgap_cli.distances import Distance
from distgap_cli.engine import BatchEvaluator


def _stats(batches, distance=Distance.EUCLIDEAN):
    """Per-batch statistics of each (labels, embeddings) batch, one call each."""
    evaluator = BatchEvaluator([distance], "cpu")
    out = []
    for y, x in batches:
        stats = evaluator(y[None], x[None], np.ones((1, len(y)), bool))[distance]
        out.append(stats)
    return out


def _random_batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 4, 16), (rng.normal(size=(16, 6)) * 3).astype(np.float32))
        for _ in range(count)
    ]


def test_moments_are_exact():
    values = [0.1, 0.2, 0.3, 1e-12, 1e12, -1e12]
    moments = Moments()
    for v in values:
        moments.add(v)
    assert moments.mean() == pytest.approx(math.fsum(values) / 6, abs=0)
    assert moments.std() == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert (moments.low, moments.high, moments.last) == (-1e12, 1e12, -1e12)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_values_are_refused_not_crashed_on(value):
    from distgap_cli.errors import NumericalError

    with pytest.raises(NumericalError, match="too large for float32"):
        Moments().add(value)


def test_merging_two_halves_equals_the_whole_bit_for_bit():
    stats = _stats(_random_batches(9))
    whole = GapAccumulator()
    for s in stats:
        whole.add_batches(s)
    first, second = GapAccumulator(), GapAccumulator()
    for s in stats[:4]:
        first.add_batches(s)
    for s in stats[4:]:
        second.add_batches(s)

    # Ship the second half through JSON, as another process would.
    second = GapAccumulator.from_state(json.loads(json.dumps(second.to_state())))
    first.merge(second)
    assert first.to_state() == whole.to_state()
    assert json.dumps(first.summary()) == json.dumps(whole.summary())


def test_summary_against_plain_numpy():
    batches = _random_batches(6, seed=3)
    stats = _stats(batches)
    acc = GapAccumulator()
    for s in stats:
        acc.add_batches(s)
    gaps = np.array([s["gap"][0] for s in stats], np.float64)
    summary = acc.summary()
    assert summary["gap"]["mean"] == pytest.approx(gaps.mean(), rel=1e-12)
    assert summary["gap"]["std"] == pytest.approx(gaps.std(), rel=1e-9)
    assert summary["last_gap"] == gaps[-1]
    assert summary["rows"] == 6 * 16
    violations = sum(int(s["violations"][0]) for s in stats)
    both = sum(int(s["anchors_with_both"][0]) for s in stats)
    assert summary["violation_rate"] == violations / both


def test_skipped_batches_are_counted_by_reason():
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    stats = _stats([(np.zeros(4, np.int64), x), (np.arange(4), x)])
    acc = GapAccumulator()
    for s in stats:
        acc.add_batches(s)
    summary = acc.summary()
    assert summary["batches"] == {
        "total": 2,
        "used": 0,
        "skipped": {"no_positive_pair": 1, "no_negative_pair": 1},
    }
    assert math.isnan(summary["gap"]["mean"])
    assert summary["anchors"]["with_positive"] == 4
