"""The Keras metrics: TF Similarity's API, distgap's accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distgap_cli import (
    DistanceGapMetric,
    DistanceMetric,
    avg_neg,
    dist_gap,
    max_pos,
    min_neg,
    sum_pos,
)
from distgap_cli import metrics as metrics_module

from .conftest import HARDNEG_X, HARDNEG_Y

keras = metrics_module.keras
SECOND_X = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
SECOND_Y = np.array([0, 0, 1, 1])


def value(metric):
    return float(metric.result())


# Shared case C13: nothing carries over a reset.
def test_c13_reset_state_forgets():
    metric = DistanceGapMetric("euclidean")
    metric.update_state(HARDNEG_Y, HARDNEG_X)
    assert value(metric) == pytest.approx(5.0)
    metric.reset_state()
    assert math.isnan(value(metric))
    metric.update_state(SECOND_Y, SECOND_X)
    assert value(metric) == pytest.approx(8.0)


@pytest.mark.parametrize(
    "reduction, expected", [("mean", 6.5), ("last", 8.0), ("min", 5.0), ("max", 8.0)]
)
def test_reductions_over_batches(reduction, expected):
    metric = DistanceGapMetric("l2", reduction=reduction)
    metric.update_state(HARDNEG_Y, HARDNEG_X)
    metric.update_state(SECOND_Y, SECOND_X)
    assert value(metric) == pytest.approx(expected)


def test_degenerate_batches_are_skipped_not_counted():
    metric = DistanceGapMetric("euclidean")
    metric.update_state(HARDNEG_Y, HARDNEG_X)
    metric.update_state(np.zeros(4, int), SECOND_X)  # no negative pair
    metric.update_state(np.arange(4), SECOND_X)  # no positive pair
    assert value(metric) == pytest.approx(5.0)
    last = DistanceGapMetric("euclidean", reduction="last")
    last.update_state(np.zeros(4, int), SECOND_X)
    assert math.isnan(value(last))


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_label_shapes_and_dtypes(shape, dtype):
    metric = DistanceGapMetric("euclidean")
    metric.update_state(HARDNEG_Y.astype(dtype).reshape(shape), HARDNEG_X)
    assert value(metric) == pytest.approx(5.0)


def test_float_labels_are_compared_by_value():
    # As TensorFlow Similarity compares labels: 0.1 and 0.9 are two classes
    # (cast to integers they were one, and the batch had no negative pair).
    as_floats = DistanceGapMetric("euclidean")
    as_floats.update_state(np.array([0.1, 0.1, 0.9, 0.9], np.float32), HARDNEG_X)
    assert value(as_floats) == pytest.approx(5.0)
    # -0.0 and 0.0 are one class, eagerly and in a compiled step as fit runs
    # it (where an added zero, optimised away, did not join them).
    for dtype in (np.float16, np.float32, np.float64):
        labels = np.array([0.0, -0.0, 2.5, 2.5], dtype)
        signed_zero = DistanceGapMetric("euclidean")
        signed_zero.update_state(labels, HARDNEG_X)
        assert value(signed_zero) == pytest.approx(5.0)
        compiled = DistanceGapMetric("euclidean")
        metrics_module.tf.function(compiled.update_state)(labels, HARDNEG_X)
        assert value(compiled) == pytest.approx(5.0)


def test_an_empty_batch_changes_nothing():
    metric = DistanceGapMetric("cosine", reduction="max")
    metric.update_state(np.zeros(0, int), np.zeros((0, 2), np.float32))
    assert math.isnan(value(metric))
    metric.update_state(HARDNEG_Y, HARDNEG_X + 1)
    before = value(metric)
    metric.update_state(np.zeros(0, int), np.zeros((0, 2), np.float32))
    assert value(metric) == before


def test_labels_must_be_one_per_row():
    with pytest.raises(ValueError, match="one label per row"):
        DistanceGapMetric("euclidean").update_state(np.zeros((4, 2), int), HARDNEG_X)


def test_string_labels_and_wrong_shapes_are_value_errors():
    x = np.asarray(HARDNEG_X, np.float32)
    metric = DistanceGapMetric("euclidean")
    with pytest.raises(ValueError, match="integer class ids"):
        metric.update_state(np.array(["a", "a", "b", "b"]), x)
    with pytest.raises(ValueError, match=r"shape \(B, d\)"):
        metric.update_state(HARDNEG_Y, x[None])


def test_boolean_sample_weight_is_a_mask():
    x = np.concatenate([HARDNEG_X, [[2.5]]]).astype(np.float32)
    y = np.concatenate([HARDNEG_Y, [0]])
    metric = DistanceGapMetric("euclidean")
    metric.update_state(y, x, sample_weight=np.array([True] * 4 + [False]))
    assert value(metric) == pytest.approx(5.0)


def test_sample_weight_zero_leaves_rows_out():
    x = np.concatenate([HARDNEG_X, [[2.5]]]).astype(np.float32)
    y = np.concatenate([HARDNEG_Y, [0]])
    metric = DistanceGapMetric("euclidean")
    metric.update_state(y, x, sample_weight=np.array([1, 1, 1, 1, 0.0]))
    assert value(metric) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "distance", ["euclidean", "squared_euclidean", "snr", "cosine", "manhattan"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_value_in_a_row_of_weight_zero_changes_nothing(distance, bad):
    # Padding rows are masked with weight 0; whatever they hold must not reach
    # the figures (through the batch mean of the Gram form, it once did).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    weights = np.ones(16, np.float32)
    weights[3] = 0
    clean = DistanceGapMetric(distance)
    clean.update_state(y, x, sample_weight=weights)
    x[3, 0] = bad
    dirty = DistanceGapMetric(distance)
    dirty.update_state(y, x, sample_weight=weights)
    assert value(dirty) == value(clean)


@pytest.mark.parametrize(
    "factory, name, expected",
    [
        (max_pos, "max_pos", 7.0),
        (min_neg, "min_neg", 2.0),
        (avg_neg, "avg_neg", (3 + 2 + 2 + 9) / 4),
        (sum_pos, "sum_pos", 1 + 1 + 7 + 7),
        (dist_gap, "dist_gap", 5.0),
    ],
)
def test_alias_factories(factory, name, expected):
    metric = factory("euclidean")
    assert metric.name == name
    metric.update_state(HARDNEG_Y, HARDNEG_X)
    assert value(metric) == pytest.approx(expected)


def test_distance_metric_mining_strategies():
    easy_pos = DistanceMetric(
        "euclidean", aggregate="min", positive_mining_strategy="easy"
    )
    assert easy_pos.name == "min_pos"
    easy_pos.update_state(HARDNEG_Y, HARDNEG_X)
    assert value(easy_pos) == pytest.approx(1.0)
    easy_neg = DistanceMetric(
        "euclidean", aggregate="max", anchor="negative", negative_mining_strategy="easy"
    )
    easy_neg.update_state(HARDNEG_Y, HARDNEG_X)
    assert value(easy_neg) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "kwargs, listed",
    [
        ({"distance": "hamming"}, "cosine"),
        ({"distance": "cosine", "aggregate": "median"}, "mean, avg, max, min, sum"),
        ({"distance": "cosine", "anchor": "both"}, "positive, negative"),
        ({"distance": "cosine", "reduction": "first"}, "mean, last, min, max"),
        ({"distance": "cosine", "negative_mining_strategy": "semi-hard"}, "hard, easy"),
    ],
)
def test_invalid_arguments_list_valid_values(kwargs, listed):
    with pytest.raises(ValueError, match=listed):
        DistanceMetric(**kwargs)


def test_config_round_trip_and_serialisation():
    metric = DistanceMetric(
        "l1", aggregate="max", anchor="negative", name="far", reduction="last"
    )
    clone = DistanceMetric.from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(DistanceGapMetric("sql2"))
    )
    assert isinstance(revived, DistanceGapMetric)
    assert revived.distance.value == "squared_euclidean"


def test_invalid_rows_poison_the_batch():
    metric = DistanceGapMetric("cosine")
    metric.update_state([0, 0, 1, 1], np.array([[0, 0], [1, 0], [0, 1], [0, 2]], "f4"))
    assert math.isnan(value(metric))


def test_one_trace_for_every_batch_size():
    metric = DistanceGapMetric("manhattan")
    rng = np.random.default_rng(0)
    for n in (4, 7, 12, 33):
        metric.update_state(rng.integers(0, 3, n), rng.normal(size=(n, 5)))
    compiled = metrics_module.batch_value(metric.distance, ("gap",))
    assert compiled.experimental_get_tracing_count() == 1


def test_compile_fit_and_evaluate():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        optimizer="sgd",
        loss=lambda y_true, y_pred: keras.ops.mean(y_pred**2),
        metrics=[DistanceGapMetric("cosine"), max_pos("cosine")],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 4, 64)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(history.history["dist_gap"]) == 2
    assert all(np.isfinite(history.history["dist_gap"]))
    scores = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)

    # One batch covering everything: the metric equals the core on that batch.
    check = DistanceGapMetric("cosine")
    check.update_state(y, model.predict(x, verbose=0))
    assert scores["dist_gap"] == pytest.approx(value(check), rel=1e-5)


# Two replicas on the CPU need TensorFlow configured before it starts: a process
# of its own. Each replica evaluates its half of every batch.
_TWO_REPLICAS = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
two = [tf.config.LogicalDeviceConfiguration()] * 2
tf.config.set_logical_device_configuration(cpu, two)
import keras
from distgap_cli import DistanceGapMetric
rng = np.random.default_rng(0)
x = rng.normal(size=(400, 8)).astype("float32")
y = rng.integers(0, 5, 400)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(
        loss=lambda t, p: keras.ops.mean(p) * 0.0,
        metrics=[DistanceGapMetric("l2", name=r, reduction=r) for r in sys.argv[1:]],
    )
scores = model.evaluate(x, y, batch_size=100, verbose=0, return_dict=True)
print(json.dumps({"scores": scores, "embeddings": model.predict(x, verbose=0).tolist(),
                  "labels": y.tolist()}))
"""


@pytest.mark.slow
def test_reductions_across_two_replicas():
    import json
    import subprocess
    import sys

    from .reference import batch_gaps

    reductions = ["mean", "last", "min", "max"]
    out = subprocess.run(
        [sys.executable, "-c", _TWO_REPLICAS, *reductions],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    x, y = np.array(got["embeddings"]), np.array(got["labels"])
    halves = batch_gaps("euclidean", y, x, 50)  # each replica's half of a batch
    expected = {
        "mean": np.mean(halves),
        "last": np.mean(halves[-2:]),  # the two halves of the last batch
        "min": min(halves),
        "max": max(halves),
    }
    for reduction in reductions:
        assert got["scores"][reduction] == pytest.approx(expected[reduction], rel=1e-5)
