"""Keras metrics: drop-in replacements for TensorFlow Similarity's training metrics.

:class:`DistanceGapMetric` and :class:`DistanceMetric` take the arguments of their
TensorFlow Similarity namesakes and call the same core as the command line. Two
things differ on purpose:

* ``result()`` is the mean over the batches seen since ``reset_state()``, so the
  number Keras logs for an epoch describes the epoch. Batches without a positive
  or a negative pair have no value and are skipped. ``reduction="last"`` keeps
  TensorFlow Similarity's behaviour (the last batch with a value); ``"min"`` and
  ``"max"`` are there too.
* Anchors without a positive (or negative) are left out of the aggregate instead
  of contributing TensorFlow Similarity's fallback "row minimum" value.

Rows whose ``sample_weight`` is 0 take part neither as anchors nor as candidates.
Labels are compared by value, as TensorFlow Similarity compares them (float
labels too). Under a distribution strategy each replica's share of a batch is a
batch of its own: the reductions run over those shares, the same on every
replica.
A batch holding a NaN or infinite value, an all-zero row (cosine) or a row with
zero variance (snr) gets the value NaN, which then shows in the logs: a training
metric cannot stop the run to name the row, the command line does.
"""

from __future__ import annotations

from typing import Any

from distgap_cli import core
from distgap_cli.backend import keras as _load_keras
from distgap_cli.backend import tensorflow as _load_tensorflow
from distgap_cli.distances import Distance, canonical, valid_names
from distgap_cli.errors import UsageError

tf = _load_tensorflow()
keras = _load_keras()

REDUCTIONS = ("mean", "last", "min", "max")
AGGREGATES = ("mean", "avg", "max", "min", "sum")
ANCHORS = ("positive", "negative")
POSITIVE_MINING = ("hard", "easy", "semi-hard")
NEGATIVE_MINING = ("hard", "easy")

_SIGNATURE = (
    tf.TensorSpec([None, None], tf.int64),
    tf.TensorSpec([None, None, None], tf.float32),
    tf.TensorSpec([None, None], tf.bool),
)
_COMPILED: dict[tuple[Any, ...], Any] = {}


def _check(argument: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"Argument `{argument}` must be one of {', '.join(allowed)}; "
            f"received: {argument}={value!r}"
        )


def _distance(value: Any) -> Distance:
    try:
        return canonical(value)
    except UsageError:
        raise ValueError(
            f"Argument `distance` must be one of {', '.join(valid_names())}; "
            f"received: distance={value!r}"
        ) from None


def batch_value(distance: Distance, statistic: tuple[str, ...]) -> Any:
    """A compiled function ``(labels, x, mask) -> (value [K], valid [K])``.

    ``statistic`` is ``("gap",)`` or ``(anchor, mining, aggregate)``. The function
    has a fixed signature with unknown batch size, so it is traced once.
    """
    key = (distance, statistic)
    if key not in _COMPILED:

        def compute(labels: Any, x: Any, mask: Any) -> tuple[Any, Any]:
            anchors = core.anchor_stats(distance, labels, x, mask)
            if statistic == ("gap",):
                batch = core.batch_stats(anchors, mask)
                value = batch.gap
                valid = batch.has_pos_pair & batch.has_neg_pair
            else:
                anchor, mining, aggregate = statistic
                if anchor == "positive":
                    field = "hardest_pos" if mining == "hard" else "easiest_pos"
                    present = anchors.has_pos
                else:
                    field = "hardest_neg" if mining == "hard" else "easiest_neg"
                    present = anchors.has_neg
                value, valid = core.aggregate_anchors(
                    getattr(anchors, field), present, aggregate
                )
            poisoned = tf.reduce_any(core.invalid_rows(distance, x, mask), axis=-1)
            nan = tf.constant(float("nan"), value.dtype)
            return tf.where(poisoned, nan, value), valid | poisoned

        _COMPILED[key] = tf.function(
            compute, input_signature=_SIGNATURE, autograph=False
        )
    return _COMPILED[key]


def _class_ids(labels: Any) -> Any:
    """``[B]`` labels as int64 ids, equal where the labels are equal. Float
    labels keep their value (0.1 and 0.9 are two classes, as TensorFlow
    Similarity's comparison has them): their bits are the ids, once -0.0 is
    made 0.0 (an explicit choice: TensorFlow's graph optimiser drops an
    added zero). NaN labels, all one bit pattern, make one class."""
    if not labels.dtype.is_floating:
        return tf.cast(labels, tf.int64)
    zero = tf.zeros_like(labels)
    labels = tf.where(tf.equal(labels, zero), zero, labels)
    bits = {2: tf.int16, 4: tf.int32, 8: tf.int64}[labels.dtype.size]
    return tf.cast(tf.bitcast(labels, bits), tf.int64)


def _across_replicas(value: Any, valid: Any) -> tuple[Any, Any, Any, Any]:
    """This step's last, lowest and highest value and whether it had one, the
    same on every replica: under a distribution strategy each replica holds
    one share of the batch, and a replica-local minimum (or maximum) summed
    across replicas, as Keras reads metric variables, would be neither. The
    last value of a step is the mean of its shares' values."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value, value, value, valid
    values = context.all_gather(tf.reshape(value, [1]), axis=0)
    flags = context.all_gather(tf.reshape(tf.cast(valid, tf.float32), [1]), axis=0)
    taken = flags > 0
    # A NaN share (a poisoned batch) must show, not lose to the others.
    poisoned = tf.reduce_any(taken & tf.math.is_nan(values))
    inf = tf.constant(float("inf"))
    count = tf.reduce_sum(flags)
    last = tf.reduce_sum(tf.where(taken, values, 0.0)) / tf.maximum(count, 1.0)
    low = tf.reduce_min(tf.where(taken, values, inf))
    high = tf.reduce_max(tf.where(taken, values, -inf))
    nan = tf.constant(float("nan"))
    last, low, high = (tf.where(poisoned, nan, v) for v in (last, low, high))
    return last, low, high, count > 0


class _BatchReducedMetric(keras.metrics.Metric):  # type: ignore[name-defined,misc]
    """A per-batch statistic reduced over the batches since ``reset_state()``."""

    def __init__(self, distance: Any, reduction: str, name: str, **kwargs: Any):
        _check("reduction", reduction, REDUCTIONS)
        self.distance = _distance(distance)
        self.reduction = reduction
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        # Each replica keeps the same last, lowest and highest value (see
        # update_state): read the first replica's rather than their sum.
        nan = keras.initializers.Constant(float("nan"))
        kept = {"shape": (), "initializer": nan, "aggregation": "only_first_replica"}
        self.last = self.add_variable(name="last", **kept)
        self.low = self.add_variable(name="low", **kept)
        self.high = self.add_variable(name="high", **kept)
        self.seen = self.add_variable(
            shape=(), initializer="zeros", name="seen", aggregation="only_first_replica"
        )

    def _statistic(self) -> tuple[str, ...]:
        raise NotImplementedError

    def update_state(
        self, labels: Any, embeddings: Any, sample_weight: Any = None
    ) -> None:
        """Add one batch: labels ``(B,)`` or ``(B, 1)``, embeddings ``(B, d)``."""
        x = tf.cast(tf.convert_to_tensor(embeddings), tf.float32)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 2 and labels.shape[-1] not in (None, 1):
            raise ValueError(
                "Argument `labels` must hold one label per row, shape (B,) or "
                f"(B, 1); received shape {tuple(labels.shape)}"
            )
        if not (labels.dtype.is_integer or labels.dtype.is_floating):
            raise ValueError(
                "Argument `labels` must hold integer class ids; received dtype "
                f"{labels.dtype.name} (map string labels to integers first)"
            )
        if x.shape.rank is not None and x.shape.rank != 2:
            raise ValueError(
                "Argument `embeddings` must have shape (B, d); received shape "
                f"{tuple(x.shape)}"
            )
        labels = _class_ids(tf.reshape(labels, [-1]))
        if sample_weight is None:
            mask = tf.ones_like(labels, dtype=tf.bool)
        else:
            weights = tf.reshape(tf.convert_to_tensor(sample_weight), [-1])
            if weights.dtype != tf.bool:
                weights = tf.not_equal(weights, tf.zeros_like(weights))
            mask = weights & tf.ones_like(labels, dtype=tf.bool)
        fn = batch_value(self.distance, self._statistic())
        # An empty batch (a replica's share of a short last batch) has no value.
        value, valid = tf.cond(
            tf.size(labels) > 0,
            lambda: tuple(t[0] for t in fn(labels[None], x[None], mask[None])),
            lambda: (tf.constant(float("nan")), tf.constant(False)),
        )
        self.total.assign(self.total + tf.where(valid, value, 0.0))
        self.count.assign(self.count + tf.cast(valid, tf.float32))

        last, low, high, valid = _across_replicas(value, valid)
        first = tf.equal(self.seen, 0.0)
        self.seen.assign(tf.where(valid, 1.0, self.seen))
        self.last.assign(tf.where(valid, last, self.last))
        self.low.assign(
            tf.where(valid, tf.where(first, low, tf.minimum(self.low, low)), self.low)
        )
        self.high.assign(
            tf.where(
                valid, tf.where(first, high, tf.maximum(self.high, high)), self.high
            )
        )

    def result(self) -> Any:
        """The reduced value; NaN before any batch had one."""
        if self.reduction == "last":
            return tf.identity(self.last)
        if self.reduction == "min":
            return tf.identity(self.low)
        if self.reduction == "max":
            return tf.identity(self.high)
        return tf.where(
            self.count > 0, self.total / tf.maximum(self.count, 1.0), float("nan")
        )

    def reset_state(self) -> None:
        """Forget every batch."""
        self.total.assign(0.0)
        self.count.assign(0.0)
        self.seen.assign(0.0)
        for variable in (self.last, self.low, self.high):
            variable.assign(float("nan"))

    def get_config(self) -> dict[str, Any]:
        """Arguments that rebuild this metric."""
        return {
            **super().get_config(),
            "distance": self.distance.value,
            "reduction": self.reduction,
        }


@keras.saving.register_keras_serializable(package="distgap")
class DistanceGapMetric(_BatchReducedMetric):
    """The distance gap ``|min_neg - max_pos|`` of each batch.

    Args:
        distance: a distance name or alias (``cosine``, ``l2``, ...).
        name: the metric's name; ``dist_gap`` by default.
        reduction: how batches combine: ``mean`` (default), ``last`` (TensorFlow
            Similarity's behaviour), ``min`` or ``max``.
        **kwargs: passed to ``keras.metrics.Metric``.

    Example:
        >>> model.compile(loss=..., metrics=[DistanceGapMetric("cosine")])
    """

    def __init__(
        self,
        distance: Any,
        name: str | None = None,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(distance, reduction, name or "dist_gap", **kwargs)

    def _statistic(self) -> tuple[str, ...]:
        return ("gap",)


@keras.saving.register_keras_serializable(package="distgap")
class DistanceMetric(_BatchReducedMetric):
    """An aggregate of each batch's per-anchor positive or negative distances.

    Args:
        distance: a distance name or alias.
        aggregate: ``mean`` (or ``avg``), ``max``, ``min`` or ``sum`` over anchors.
        anchor: ``positive`` or ``negative``: which pair of each anchor to take.
        name: the metric's name; ``{aggregate}_{anchor[:3]}`` by default.
        positive_mining_strategy: ``hard`` (farthest positive) or ``easy``
            (closest); ``semi-hard`` is accepted and means ``easy``, as in
            TensorFlow Similarity.
        negative_mining_strategy: ``hard`` (closest negative) or ``easy``.
        reduction: how batches combine (see :class:`DistanceGapMetric`).
        **kwargs: passed to ``keras.metrics.Metric``.
    """

    def __init__(
        self,
        distance: Any,
        aggregate: str = "mean",
        anchor: str = "positive",
        name: str | None = None,
        positive_mining_strategy: str = "hard",
        negative_mining_strategy: str = "hard",
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        _check("aggregate", aggregate, AGGREGATES)
        _check("anchor", anchor, ANCHORS)
        _check("positive_mining_strategy", positive_mining_strategy, POSITIVE_MINING)
        _check("negative_mining_strategy", negative_mining_strategy, NEGATIVE_MINING)
        self.aggregate = aggregate
        self.anchor = anchor
        self.positive_mining_strategy = positive_mining_strategy
        self.negative_mining_strategy = negative_mining_strategy
        super().__init__(
            distance, reduction, name or f"{aggregate}_{anchor[:3]}", **kwargs
        )

    def _statistic(self) -> tuple[str, ...]:
        if self.anchor == "positive":
            mining = "hard" if self.positive_mining_strategy == "hard" else "easy"
        else:
            mining = self.negative_mining_strategy
        return (self.anchor, mining, self.aggregate)

    def get_config(self) -> dict[str, Any]:
        """Arguments that rebuild this metric."""
        return {
            **super().get_config(),
            "aggregate": self.aggregate,
            "anchor": self.anchor,
            "positive_mining_strategy": self.positive_mining_strategy,
            "negative_mining_strategy": self.negative_mining_strategy,
        }


def dist_gap(distance: Any) -> DistanceGapMetric:
    """TensorFlow Similarity's alias: the distance gap, named ``dist_gap``."""
    return DistanceGapMetric(distance)


def _alias(aggregate: str, anchor: str, name: str) -> Any:
    def make(distance: Any) -> DistanceMetric:
        return DistanceMetric(distance, aggregate=aggregate, anchor=anchor, name=name)

    make.__name__ = name
    make.__doc__ = f"TensorFlow Similarity's alias: {aggregate} {anchor} distance."
    return make


max_pos = _alias("max", "positive", "max_pos")
max_neg = _alias("max", "negative", "max_neg")
avg_pos = _alias("mean", "positive", "avg_pos")
avg_neg = _alias("mean", "negative", "avg_neg")
min_pos = _alias("min", "positive", "min_pos")
min_neg = _alias("min", "negative", "min_neg")
sum_pos = _alias("sum", "positive", "sum_pos")
sum_neg = _alias("sum", "negative", "sum_neg")
