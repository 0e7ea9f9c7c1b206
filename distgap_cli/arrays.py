"""The array operations the distance-gap core is written in, for two libraries.

The core (:mod:`distgap_cli.core`) is written once against a small namespace of
operations and runs on whichever library its inputs come from: NumPy arrays on
the CPU (the command line, with no TensorFlow start-up), TensorFlow tensors on a
GPU and inside the Keras metrics (eagerly or while a ``tf.function`` traces).
:func:`namespace` picks the namespace from an input. Both namespaces compute the
same formulas in float32; they differ only in rounding (different matrix
product kernels and summation orders).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Elements (not bytes) of the largest broadcast temporary manhattan builds.
_TILE_ELEMENTS = 1 << 23
# Values in the core's [K, A, B] temporaries on NumPy (512k: 2 MB of float32),
# as many as the runner puts in one part: only batches over 724 rows are sliced.
_ANCHOR_PAIRS = 1 << 19
# Batches up to this many rows take their Gram matrix as a symmetric product.
_SYMMETRIC_ROWS = 512
# l2_normalize's floor on the squared norm, TensorFlow's default.
_NORM_EPSILON = 1e-12


class NumpyOps:
    """The core's operations on NumPy arrays."""

    name = "numpy"

    def float32(self, x: Any) -> Any:
        """``x`` as float32 (half precision is computed in float32)."""
        return x if x.dtype == np.float32 else x.astype(np.float32)

    def size(self, x: Any, axis: int) -> int:
        """The length of ``x`` along ``axis``."""
        return int(x.shape[axis])

    def sum(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return np.sum(x, axis=axis, keepdims=keepdims)

    def mean(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return np.mean(x, axis=axis, keepdims=keepdims)

    def var(self, x: Any, axis: int = -1) -> Any:
        return np.var(x, axis=axis)

    def max(self, x: Any, axis: int = -1) -> Any:
        return np.max(x, axis=axis)

    def min(self, x: Any, axis: int = -1) -> Any:
        return np.min(x, axis=axis)

    def any(self, x: Any, axis: int = -1) -> Any:
        return np.any(x, axis=axis)

    def all(self, x: Any, axis: int = -1) -> Any:
        return np.all(x, axis=axis)

    def known_all(self, flags: Any) -> bool:
        """Whether every flag is known to be set (NumPy looks)."""
        return bool(np.all(flags))

    def argmax(self, x: Any) -> Any:
        """Indices of the largest value along the last axis (first of ties)."""
        return np.argmax(x, axis=-1).astype(np.int32)

    def argmin(self, x: Any) -> Any:
        """Indices of the smallest value along the last axis (first of ties)."""
        return np.argmin(x, axis=-1).astype(np.int32)

    def as_float(self, flags: Any) -> Any:
        """Booleans as float32 ones and zeros."""
        return flags.astype(np.float32)

    def count(self, flags: Any) -> Any:
        """How many flags are set along the last axis, as int64."""
        return np.count_nonzero(flags, axis=-1).astype(np.int64)

    def total64(self, x: Any) -> Any:
        """The float64 sum along the last axis."""
        return np.sum(x, axis=-1, dtype=np.float64)

    def matmul_t(self, a: Any, b: Any) -> Any:
        """``a @ b^T`` over the last two axes."""
        return np.matmul(a, np.swapaxes(b, -1, -2))

    def gram(self, z: Any, scale: float, offset: Any = None) -> Any:
        """``offset + scale * z @ z^T`` over the last two axes.

        NumPy hands a product of rows with themselves to the BLAS as a
        symmetric rank-k update, which computes one triangle and copies it to
        the other: 1.6 times as fast as the general product on batches of 256,
        even at 512, 1.3 times slower from 1024 on (the copy), where a copy of
        the rows makes it a general product. Scale and offset are then applied
        in place.
        """
        rows = z if z.shape[-2] <= _SYMMETRIC_ROWS else z.copy()
        out = np.matmul(rows, np.swapaxes(z, -1, -2))
        out *= scale
        if offset is not None:
            out += offset
        return out

    def where(self, condition: Any, x: Any, y: Any) -> Any:
        """``x`` where ``condition`` holds, else ``y``.

        With one side a scalar this fills and copies under a mask, three times
        faster than ``np.where`` broadcasting the scalar (a pass the core makes
        over every ``[K, A, B]`` matrix).
        """
        if np.ndim(x) and np.ndim(y):
            return np.where(condition, x, y)
        shape = np.broadcast_shapes(np.shape(condition), np.shape(x), np.shape(y))
        dtype = np.result_type(x, y)
        if np.ndim(y) == 0:
            out = np.full(shape, y, dtype)
            np.copyto(out, x, where=condition)
        else:
            out = np.full(shape, x, dtype)
            np.copyto(out, y, where=~condition)
        return out

    def maximum(self, x: Any, y: Any) -> Any:
        return np.maximum(x, y)

    def minimum(self, x: Any, y: Any) -> Any:
        return np.minimum(x, y)

    def clip(self, x: Any, low: float, high: float) -> Any:
        return np.clip(x, low, high)

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x)

    def abs(self, x: Any) -> Any:
        return np.abs(x)

    def equal(self, x: Any, y: Any) -> Any:
        return np.equal(x, y)

    def not_equal(self, x: Any, y: Any) -> Any:
        return np.not_equal(x, y)

    def is_finite(self, x: Any) -> Any:
        return np.isfinite(x)

    def eye(self, n: int) -> Any:
        """A boolean identity matrix."""
        return np.eye(n, dtype=bool)

    def anchor_rows(self, stacked: int, batch: int) -> int:
        """How many anchors of each batch the core should take at a time: the
        ``[K, A, B]`` temporaries then hold about ``_ANCHOR_PAIRS`` values, which
        keeps them in cache and off the kernel's page faults."""
        return max(1, _ANCHOR_PAIRS // max(stacked * batch, 1))

    def copy(self, x: Any) -> Any:
        """A copy of ``x`` that may be written in place."""
        return x.copy()

    def masked_fill(self, x: Any, condition: Any, value: float) -> Any:
        """``x`` with ``value`` where ``condition`` holds; ``x`` must be a
        temporary of the caller's, as it is written in place (a third faster
        than filling a fresh array)."""
        np.copyto(x, value, where=condition)
        return x

    def set_diagonal(self, x: Any, value: float, offset: int = 0) -> Any:
        """``x`` ``[K, A, B]`` with ``value`` at ``[:, i, i + offset]``; ``x``
        must be a temporary of the caller's, as it is written in place."""
        rows = np.arange(x.shape[1])
        x[:, rows, rows + offset] = value
        return x

    def concat(self, parts: Any) -> Any:
        """Join along the anchor axis (axis 1)."""
        return np.concatenate(list(parts), axis=1)

    def stack(self, items: list[Any]) -> Any:
        """Stack along a new last axis."""
        return np.stack(items, axis=-1)

    def squared_norm(self, x: Any) -> Any:
        """The sum of squares along the last axis, in one pass (a vector dot
        product, three times as fast as squaring and summing)."""
        return np.linalg.vecdot(x, x)

    def l2_normalize(self, x: Any) -> Any:
        """Rows scaled to unit length (TensorFlow's formula and floor)."""
        squared = self.squared_norm(x)[..., None]
        return x / np.sqrt(np.maximum(squared, _NORM_EPSILON))

    def take_last(self, x: Any, index: Any) -> Any:
        """``x[k, a, index[k, a, j]]``: ``[K, A, C]`` at ``[K, A, m]``."""
        return np.take_along_axis(x, index.astype(np.intp), axis=-1)

    def take_rows(self, rows: Any, index: Any) -> Any:
        """``rows[k, index[k, a, j]]``: ``[K, C, d]`` at ``[K, A, m]``."""
        k, c, d = rows.shape
        # One flat gather is faster than fancy indexing over two axes.
        flat = index.astype(np.intp) + (np.arange(k) * c)[:, None, None]
        return np.take(rows.reshape(k * c, d), flat, axis=0)

    def manhattan(self, a: Any, c: Any) -> Any:
        """Sums of absolute differences ``[K, A, C]``, a few anchors at a time so
        that the broadcast temporary stays under ``_TILE_ELEMENTS`` values."""
        k, n, d = a.shape
        step = max(_TILE_ELEMENTS // max(k * c.shape[1] * d, 1), 1)
        out = np.empty((k, n, c.shape[1]), np.float32)
        for start in range(0, n, step):
            tile = a[:, start : start + step, None, :]
            part = out[:, start : start + step]
            np.sum(np.abs(tile - c[:, None, :, :]), axis=-1, out=part)
        return out


class TensorFlowOps:
    """The core's operations on TensorFlow tensors (eager or while tracing)."""

    name = "tensorflow"

    def __init__(self, tf: Any) -> None:
        self.tf = tf

    def _like(self, value: Any, other: Any) -> Any:
        """A Python scalar as a tensor of ``other``'s dtype; tensors unchanged."""
        if isinstance(value, (bool, int, float)):
            return self.tf.constant(value, other.dtype)
        return value

    def float32(self, x: Any) -> Any:
        return x if x.dtype == self.tf.float32 else self.tf.cast(x, self.tf.float32)

    def size(self, x: Any, axis: int) -> Any:
        return self.tf.shape(x)[axis]

    def sum(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return self.tf.reduce_sum(x, axis=axis, keepdims=keepdims)

    def mean(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return self.tf.reduce_mean(x, axis=axis, keepdims=keepdims)

    def var(self, x: Any, axis: int = -1) -> Any:
        return self.tf.math.reduce_variance(x, axis=axis)

    def max(self, x: Any, axis: int = -1) -> Any:
        return self.tf.reduce_max(x, axis=axis)

    def min(self, x: Any, axis: int = -1) -> Any:
        return self.tf.reduce_min(x, axis=axis)

    def any(self, x: Any, axis: int = -1) -> Any:
        return self.tf.reduce_any(x, axis=axis)

    def all(self, x: Any, axis: int = -1) -> Any:
        return self.tf.reduce_all(x, axis=axis)

    def known_all(self, flags: Any) -> bool:
        """False: a compiled function is traced once for every mask."""
        return False

    def argmax(self, x: Any) -> Any:
        return self.tf.argmax(x, axis=-1, output_type=self.tf.int32)

    def argmin(self, x: Any) -> Any:
        return self.tf.argmin(x, axis=-1, output_type=self.tf.int32)

    def as_float(self, flags: Any) -> Any:
        return self.tf.cast(flags, self.tf.float32)

    def count(self, flags: Any) -> Any:
        return self.tf.reduce_sum(self.tf.cast(flags, self.tf.int64), axis=-1)

    def total64(self, x: Any) -> Any:
        return self.tf.reduce_sum(self.tf.cast(x, self.tf.float64), axis=-1)

    def matmul_t(self, a: Any, b: Any) -> Any:
        return self.tf.linalg.matmul(a, b, transpose_b=True)

    def gram(self, z: Any, scale: float, offset: Any = None) -> Any:
        out = scale * self.tf.linalg.matmul(z, z, transpose_b=True)
        return out if offset is None else offset + out

    def where(self, condition: Any, x: Any, y: Any) -> Any:
        x, y = self._like(x, y), self._like(y, x)
        return self.tf.where(condition, x, y)

    def maximum(self, x: Any, y: Any) -> Any:
        return self.tf.maximum(x, self._like(y, x))

    def minimum(self, x: Any, y: Any) -> Any:
        return self.tf.minimum(x, self._like(y, x))

    def clip(self, x: Any, low: float, high: float) -> Any:
        return self.tf.clip_by_value(x, low, high)

    def sqrt(self, x: Any) -> Any:
        return self.tf.sqrt(x)

    def abs(self, x: Any) -> Any:
        return self.tf.abs(x)

    def equal(self, x: Any, y: Any) -> Any:
        return self.tf.equal(x, y)

    def not_equal(self, x: Any, y: Any) -> Any:
        return self.tf.not_equal(x, y)

    def is_finite(self, x: Any) -> Any:
        return self.tf.math.is_finite(x)

    def eye(self, n: Any) -> Any:
        return self.tf.eye(n, dtype=self.tf.bool)

    def anchor_rows(self, stacked: Any, batch: Any) -> None:
        """All anchors at once: a compiled function fuses and schedules the
        passes itself."""
        return None

    def copy(self, x: Any) -> Any:
        return self.tf.identity(x)

    def masked_fill(self, x: Any, condition: Any, value: float) -> Any:
        return self.tf.where(condition, self.tf.constant(value, x.dtype), x)

    def set_diagonal(self, x: Any, value: float, offset: Any = 0) -> Any:
        fill = self.tf.fill(self.tf.shape(x)[:-1], self.tf.constant(value, x.dtype))
        return self.tf.linalg.set_diag(x, fill, k=offset)

    def concat(self, parts: Any) -> Any:
        return self.tf.concat(list(parts), axis=1)

    def stack(self, items: list[Any]) -> Any:
        return self.tf.stack(items, axis=-1)

    def squared_norm(self, x: Any) -> Any:
        return self.tf.reduce_sum(self.tf.square(x), axis=-1)

    def l2_normalize(self, x: Any) -> Any:
        return self.tf.math.l2_normalize(x, axis=-1, epsilon=_NORM_EPSILON)

    def take_last(self, x: Any, index: Any) -> Any:
        return self.tf.gather(x, index, batch_dims=2)

    def take_rows(self, rows: Any, index: Any) -> Any:
        return self.tf.gather(rows, index, batch_dims=1)

    def manhattan(self, a: Any, c: Any) -> Any:
        tf = self.tf
        shape = tf.shape(a)
        k, n, d = shape[0], shape[1], shape[2]
        per_anchor = tf.maximum(k * tf.shape(c)[1] * d, 1)
        rows = tf.maximum(_TILE_ELEMENTS // per_anchor, 1)
        tiles = (n + rows - 1) // rows
        padded = tf.pad(a, [[0, 0], [0, tiles * rows - n], [0, 0]])
        anchors = tf.transpose(tf.reshape(padded, [k, tiles, rows, d]), [1, 0, 2, 3])

        def one_tile(tile: Any) -> Any:
            diff = tf.abs(tile[:, :, None, :] - c[:, None, :, :])
            return tf.reduce_sum(diff, axis=-1)

        out = tf.map_fn(
            one_tile,
            anchors,
            fn_output_signature=tf.TensorSpec([None, None, None], a.dtype),
            parallel_iterations=1,
        )
        out = tf.reshape(tf.transpose(out, [1, 0, 2, 3]), [k, tiles * rows, -1])
        return out[:, :n, :]


NUMPY = NumpyOps()
_TENSORFLOW: TensorFlowOps | None = None


def tensorflow_ops() -> TensorFlowOps:
    """The TensorFlow namespace (importing TensorFlow the first time)."""
    global _TENSORFLOW
    if _TENSORFLOW is None:
        from distgap_cli.backend import tensorflow

        _TENSORFLOW = TensorFlowOps(tensorflow())
    return _TENSORFLOW


def namespace(x: Any) -> NumpyOps | TensorFlowOps:
    """The namespace for ``x``: NumPy for a NumPy array, else TensorFlow."""
    if isinstance(x, np.ndarray):
        return NUMPY
    return tensorflow_ops()
