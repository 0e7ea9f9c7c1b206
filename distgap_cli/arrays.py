"""The array operations the distance-gap core is written in, for two libraries.

The core (:mod:`distgap_cli.core`) is written once against a small namespace of
operations and runs on whichever library its inputs come from: NumPy arrays on
the CPU (the command line, with no TensorFlow start-up), TensorFlow tensors on a
GPU and inside the Keras metrics (eagerly or while a ``tf.function`` traces).
:func:`namespace` picks the namespace from an input. Both namespaces compute the
same formulas in float32. They differ in rounding (different matrix product
kernels and summation orders) and in one choice: NumPy computes each batch's
rows sorted by label, so among candidates at exactly the same score it picks the
one of the smallest label (then the first in batch order), where TensorFlow picks
the first in batch order. The values are the same; only which row is reported as
a nearest negative can differ between a CPU and a GPU run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

# Elements (not bytes) of the largest broadcast temporary manhattan builds in
# TensorFlow, and of the buffer NumPy takes its differences in.
_TILE_ELEMENTS = 1 << 23
_BUFFER_ELEMENTS = 1 << 18
# Values in the core's [K, A, B] temporaries on NumPy (2M: 8 MB of float32, in
# the L3 cache), as many as a CPU part holds, so that a part's batches are sliced
# only where one batch is larger (from 1,449 rows) or its rows are long (see
# NumpyOps.anchor_rows). Slices give up the symmetric product: at 1M, a part of
# 32 batches of 256 x 128 went as two slices of 128 anchors, 13.2 ms a part on
# one thread against 10.5 ms whole, and a million rows took 1.42 s against
# 1.25 s on 2 cores; a quarter of 1M made slices too thin (batch 1024: 3.0 s
# against 2.7 s).
_ANCHOR_PAIRS = 1 << 21
# Values in the anchors' differences to their picked partners (64 MB).
_DIFFERENCE_VALUES = 1 << 24
# Values in the differences NumPy measures picked pairs from in one call (2 MB,
# near the cache): 10 batches of 256 x 768 at once made 15.7 MB of them and
# took 3.2 ms one thread, a batch at a time 1.7 ms (see NumpyOps.in_slices).
_MEASURE_VALUES = 1 << 19
# Rows a block of NumPy's search down the columns covers (see
# NumpyOps.pick_columns): 2,000 x 2,000 scores took 1.5 ms in blocks of 16,
# 1.8 in blocks of 32 and 1.9 in blocks of 64.
_COLUMN_BLOCK = 16
# Batches up to this many rows take their Gram matrix as a symmetric product.
_SYMMETRIC_ROWS = 512
# l2_normalize's floor on the squared norm, TensorFlow's default.
_NORM_EPSILON = 1e-12
# Arrays smaller than this go to np.where as they are (see NumpyOps.where).
_SMALL = 1 << 16
# Same-class pairs are searched through index lists while they are at most this
# share of all anchor-candidate pairs, and through masks beyond it.
_PAIR_SHARE = 0.125


class ClassPairs(NamedTuple):
    """Same-class anchor-candidate pairs, grouped by anchor (see
    :meth:`NumpyOps.class_pairs`)."""

    flat: Any  # positions in the flattened [K, A, C] scores
    column: Any  # the candidate of each pair
    begins: Any  # where each anchor's pairs begin, [K * A]
    sizes: Any  # how many pairs each anchor has, [K * A]
    itself: Any  # whether the pair is the anchor with itself


def _listed_down(pairs: ClassPairs, rows: int, columns: int) -> ClassPairs:
    """Pairs that :meth:`NumpyOps.class_pairs` listed with the candidates as
    anchors (the columns of ``[K, rows, columns]`` scores as anchors among
    ``rows`` candidates), with their positions moved to those scores' layout."""
    owner = (pairs.flat - pairs.column) // rows  # the column, batch included
    batch, column = np.divmod(owner, columns)
    flat = (batch * rows + pairs.column) * columns + column
    return pairs._replace(flat=flat)


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

    def matmul_t(self, a: Any, b: Any, offset: Any = None) -> Any:
        """``a @ b^T`` over the last two axes, plus ``offset`` (added in place)."""
        out = np.matmul(a, np.swapaxes(b, -1, -2))
        if offset is not None:
            out += offset
        return out

    def nothing(self, scores: Any, fill: float) -> tuple[Any, Any]:
        """Picks and scores of a search that has no candidate: index 0, ``fill``."""
        shape = scores.shape[:-1]
        return np.zeros(shape, np.int32), np.full(shape, fill, scores.dtype)

    def gram(self, z: Any, scale: float = 1.0, offset: Any = None) -> Any:
        """``offset + scale * z @ z^T`` over the last two axes.

        NumPy hands a product of rows with themselves to the BLAS as a
        symmetric rank-k update, which computes one triangle and copies it to
        the other: 1.6 times as fast as the general product on batches of 256,
        even at 512, 1.3 times slower from 1024 on (the copy), where a copy of
        the rows makes it a general product. Scale and offset are then applied
        in place, each a pass over the product (none for the defaults).
        """
        rows = z if z.shape[-2] <= _SYMMETRIC_ROWS else z.copy()
        out = np.matmul(rows, np.swapaxes(z, -1, -2))
        if scale != 1.0:
            out *= scale
        if offset is not None:
            out += offset
        return out

    def sort_by_label(self, labels: Any) -> tuple[Any, Any]:
        """Each batch's rows in label order, and the labels as class codes.

        Returns ``(order, codes)``: ``order`` ``[K, B]`` sorts each batch by
        label (stably, so rows of a class keep their order), ``codes`` are the
        sorted labels renumbered 0, 1, ... within each batch, in an integer
        type just wide enough for the batch size. The class masks of sorted rows are
        blocks along the diagonal, which NumPy's masked passes run through
        about five times as fast as scattered ones, and comparing one-byte
        codes costs a fifth of comparing int64 labels.
        """
        k, b = labels.shape
        order = np.argsort(labels, axis=-1, kind="stable")
        ordered = labels.reshape(-1)[order + np.arange(0, k * b, b)[:, None]]
        # A batch of b rows holds at most b classes, numbered 0 to b - 1.
        dtype = np.int8 if b <= 1 << 7 else np.int16 if b <= 1 << 15 else np.int32
        codes = np.zeros((k, b), dtype)
        np.cumsum(ordered[:, 1:] != ordered[:, :-1], axis=1, out=codes[:, 1:])
        return order, codes

    def permute_rows(self, x: Any, order: Any) -> Any:
        """``x[k, order[k, i]]`` for ``x`` ``[K, B]`` or ``[K, B, d]``."""
        k, b = order.shape
        flat = order + (np.arange(k) * b)[:, None]
        return np.take(x.reshape(k * b, *x.shape[2:]), flat, axis=0)

    def unpermute(
        self, order: Any, values: list[Any], positions: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """Undo :meth:`permute_rows` on ``[K, B]`` per-row ``values`` and
        ``positions`` (indices into the permuted rows, which become indices
        into the rows as they were)."""
        k, b = order.shape
        starts = np.arange(0, k * b, b)[:, None]
        moved = (order + starts).ravel()
        back = np.empty(k * b, np.intp)
        back[moved] = np.arange(k * b)
        restored = [v.reshape(-1)[back].reshape(k, b) for v in values]
        flat_order = order.reshape(-1).astype(np.int32)
        mapped = [
            flat_order[p + starts].reshape(-1)[back].reshape(k, b) for p in positions
        ]
        return restored, mapped

    def label_overlap(self, a_labels: Any, c_labels: Any) -> str:
        """How two sets of labels relate, judged from their ranges:
        ``disjoint`` (no label in both), ``same`` (one label, in both) or
        ``mixed`` (possibly both kinds of pair)."""
        a_low, a_high = a_labels.min(), a_labels.max()
        c_low, c_high = c_labels.min(), c_labels.max()
        if a_high < c_low or c_high < a_low:
            return "disjoint"
        if a_low == a_high == c_low == c_high:
            return "same"
        return "mixed"

    def class_pairs(
        self,
        a_labels: Any,
        c_labels: Any,
        a_ids: Any,
        c_ids: Any,
        down: bool = False,
    ) -> ClassPairs | None:
        """The same-class pairs of anchors and candidates as index lists, or
        None where masks serve better.

        ``a_labels`` ``[K, A]`` and ``c_labels`` ``[K, C]`` must be sorted along
        their last axis (a class is then a run of candidates, found by a
        binary search); ``a_ids`` ``[A]`` and ``c_ids`` ``[C]`` tell an anchor
        from itself among the candidates. Lists make several gathers and
        scatters per pair where masks make a few contiguous passes over every
        anchor-candidate value; they break even near a tenth (cosine, batch
        256 x 128, one thread: lists 5 to 7 % faster with 1 to 7 % of the values
        same-class pairs, 18 % slower at 13 %, 40 % slower at 25 %), so None
        once pairs are more than ``_PAIR_SHARE`` of the values (or the labels
        are not sorted).

        ``down`` lists them by candidate instead (each candidate's same-class
        anchors, for searches down the columns), positions still in the
        ``[K, A, C]`` scores.
        """
        if down:
            pairs = self.class_pairs(c_labels, a_labels, c_ids, a_ids)
            if pairs is None:
                return None
            return _listed_down(pairs, a_labels.shape[1], c_labels.shape[1])
        k, n_a = a_labels.shape
        n_c = c_labels.shape[1]
        if n_a == 0 or n_c == 0:
            return None
        if np.any(a_labels[:, 1:] < a_labels[:, :-1]) or np.any(
            c_labels[:, 1:] < c_labels[:, :-1]
        ):
            return None
        # One sorted array over the batches: batch j's labels lifted past j-1's.
        # Labels spread so widely that the lifts would overflow int64 (hashes
        # as class ids, over several batches) are left to the masks.
        keys, wanted = c_labels.astype(np.int64), a_labels.astype(np.int64)
        if k > 1:
            low = min(int(a_labels[:, 0].min()), int(c_labels[:, 0].min()))
            high = max(int(a_labels[:, -1].max()), int(c_labels[:, -1].max()))
            span = high - low + 1
            if span * k > np.iinfo(np.int64).max // 2:
                return None
            lift = (np.arange(k, dtype=np.int64) * span)[:, None]
            keys, wanted = keys + lift, wanted + lift
        keys, wanted = keys.ravel(), wanted.ravel()
        base = np.repeat(np.arange(k) * n_c, n_a)
        first = np.searchsorted(keys, wanted, "left") - base
        sizes = np.searchsorted(keys, wanted, "right") - base - first
        total = int(sizes.sum())
        if total > _PAIR_SHARE * k * n_a * n_c:
            return None
        begins = np.cumsum(sizes) - sizes
        anchor = np.repeat(np.arange(k * n_a), sizes)
        column = np.arange(total) - np.repeat(begins - first, sizes)
        itself = c_ids[column] == a_ids[anchor % n_a]
        return ClassPairs(anchor * n_c + column, column, begins, sizes, itself)

    def pick_among(
        self,
        scores: Any,
        pairs: ClassPairs,
        fill: float,
        pick: str,
        shape: tuple[int, ...] | None = None,
    ) -> tuple[Any, Any]:
        """The ``argmax`` or ``argmin`` (``pick``) of each anchor's row of
        ``scores`` over its same-class candidates but itself, as
        :meth:`class_pairs` lists them; index 0 and ``fill`` where there is
        none. Ties go to the first candidate, as with ``np.argmax``. ``shape``
        is the picks' (``scores.shape[:-1]`` by default; ``[K, C]`` for pairs
        listed down the columns, :meth:`class_pairs` with ``down``)."""
        shape = scores.shape[:-1] if shape is None else shape
        index = np.zeros(shape, np.int32)
        best = np.full(shape, fill, scores.dtype)
        values = scores.reshape(-1)[pairs.flat]
        values[pairs.itself] = fill
        some = pairs.sizes > 0
        if not some.any():
            return index, best
        begins = pairs.begins[some]
        reduce = np.maximum if pick == "argmax" else np.minimum
        top = reduce.reduceat(values, begins)
        sizes = pairs.sizes[some]
        at_top = values == np.repeat(top, sizes)
        if np.isnan(top).any():  # as np.argmax: the first NaN wins
            at_top |= np.isnan(values)
        slot = np.where(at_top, np.arange(len(values)), len(values))
        first = np.minimum.reduceat(slot, begins)
        index.reshape(-1)[some] = pairs.column[first]
        best.reshape(-1)[some] = top
        return index, best

    def pick_columns(self, scores: Any, pick: str) -> tuple[Any, Any]:
        """The ``argmax`` or ``argmin`` (``pick``) down each column of
        ``scores`` ``[K, A, C]`` and its value, ``[K, C]`` each, as
        ``np.argmax(scores, axis=-2)`` gives them (the first of ties, the first
        NaN), in a fraction of its time: NumPy searches along any axis but the
        last through a transposed copy (25 ms for 2,048 x 2,048, more than
        their product). Here the extremes of blocks of ``_COLUMN_BLOCK`` rows
        come from passes along the rows, and each column's winning block is
        gathered and searched along its length (1.5 ms for 2,000 x 2,000, one
        thread)."""
        k, n, m = scores.shape
        index = np.zeros((k, m), np.int32)
        best = np.empty((k, m), scores.dtype)
        if not (n and m):
            return index, best
        reduce = np.maximum if pick == "argmax" else np.minimum
        search = getattr(np, pick)
        size = _COLUMN_BLOCK
        whole = n // size * size
        columns = np.arange(m)
        for b in range(k):
            s = scores[b]
            tops = reduce.reduce(s[:whole].reshape(-1, size, m), axis=1)
            if whole < n:
                rest = reduce.reduce(s[whole:], axis=0, keepdims=True)
                tops = np.concatenate([tops, rest])
            start = search(tops, axis=0) * size
            rows = np.minimum(start[:, None] + np.arange(size), n - 1)
            # [C, size]: each column's block, gathered as one flat take.
            gathered = np.take(s.reshape(-1), rows * m + columns[:, None])
            within = search(gathered, axis=1)
            index[b] = start + within
            best[b] = gathered[columns, within]
        return index, best

    def swap_last(self, x: Any) -> Any:
        """``x`` with its last two axes swapped (a view)."""
        return np.swapaxes(x, -1, -2)

    def shift(self, x: Any, offset: Any) -> Any:
        """``x + offset``; ``x`` must be a temporary of the caller's, as it is
        written in place."""
        x += offset
        return x

    def fill_pairs(self, scores: Any, pairs: ClassPairs, fill: float) -> Any:
        """``scores`` with ``fill`` at every pair of :meth:`class_pairs`, the
        anchor itself included; written in place."""
        scores.reshape(-1)[pairs.flat] = fill
        return scores

    def exclude_self(self, scores: Any, a_ids: Any, c_ids: Any, fill: float) -> Any:
        """``scores`` ``[..., A, C]`` with ``fill`` where an anchor's id is a
        candidate's; written in place, found by a search over the sorted ids
        rather than a pass comparing every pair."""
        by_id = np.argsort(c_ids, kind="stable")
        found = np.searchsorted(c_ids, a_ids, sorter=by_id)
        found = by_id[np.minimum(found, len(c_ids) - 1)]
        rows = np.flatnonzero(c_ids[found] == a_ids)
        scores[..., rows, found[rows]] = fill
        return scores

    def where(self, condition: Any, x: Any, y: Any) -> Any:
        """``x`` where ``condition`` holds, else ``y``.

        With one side a scalar this fills and copies under a mask, three times
        faster than ``np.where`` broadcasting the scalar (a pass the core makes
        over every ``[K, A, B]`` matrix); small arrays go straight to
        ``np.where``, which takes fewer calls.
        """
        if (np.ndim(x) and np.ndim(y)) or np.size(condition) < _SMALL:
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

    def is_finite(self, x: Any) -> Any:
        return np.isfinite(x)

    def eye(self, n: int) -> Any:
        """A boolean identity matrix."""
        return np.eye(n, dtype=bool)

    def positions(self, n: int) -> Any:
        """0, 1, ..., n - 1."""
        return np.arange(n)

    def anchor_rows(self, stacked: int, batch: int, dim: int = 0) -> int:
        """How many anchors of each batch the core should take at a time: the
        ``[K, A, B]`` temporaries then hold about ``_ANCHOR_PAIRS`` values, which
        keeps them in cache and off the kernel's page faults, and the anchors'
        differences to their two picked partners ``[K, A, 2, d]`` at most
        ``_DIFFERENCE_VALUES`` (at d = 1,000,000, 8 anchors a slice: 64
        batches of 64 rows made 512 MB of differences at once)."""
        by_pairs = _ANCHOR_PAIRS // max(stacked * batch, 1)
        by_rows = _DIFFERENCE_VALUES // max(stacked * 2 * dim, 1)
        return max(1, min(by_pairs, by_rows))

    def in_slices(
        self, fn: Callable[[Any, Any, Any], Any], a: Any, c: Any, index: Any
    ) -> Any:
        """``fn(a, c, index)`` ``[K, A, m]`` for anchors ``a`` ``[K, A, d]``,
        candidates ``c`` ``[K, C, d]`` and picks ``index`` ``[K, A, m]``, called
        on a few batches at a time (or a few anchors, where one batch is too
        many) so that the ``[K, A, m, d]`` partners (or differences) ``fn``
        gathers stay near the cache: at most ``_MEASURE_VALUES`` values. Small
        inputs go whole.
        """
        k, n, d = a.shape
        m = index.shape[-1]
        per_batch = n * m * d
        if k * per_batch <= _MEASURE_VALUES:
            return fn(a, c, index)
        out = None
        if per_batch <= _MEASURE_VALUES:
            step = _MEASURE_VALUES // per_batch
            for k0 in range(0, k, step):
                part = fn(a[k0 : k0 + step], c[k0 : k0 + step], index[k0 : k0 + step])
                if out is None:
                    out = np.empty(index.shape, part.dtype)
                out[k0 : k0 + step] = part
            return out
        step = max(1, _MEASURE_VALUES // max(m * d, 1))
        for k0 in range(k):
            for a0 in range(0, n, step):
                part = fn(
                    a[k0 : k0 + 1, a0 : a0 + step],
                    c[k0 : k0 + 1],
                    index[k0 : k0 + 1, a0 : a0 + step],
                )
                if out is None:
                    out = np.empty(index.shape, part.dtype)
                out[k0 : k0 + 1, a0 : a0 + step] = part
        return out

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

    def dot_last(self, x: Any, y: Any) -> Any:
        """Dot products along the last axis (broadcasting the others)."""
        return np.linalg.vecdot(x, y)

    def partners(self, c: Any, index: Any) -> Any:
        """``c[k, index[k, i, j]]``, ``[K, A, m, d]``, for ``c`` ``[K, C, d]``."""
        k, n_c, d = c.shape
        flat = index.astype(np.intp) + np.arange(0, k * n_c, n_c)[:, None, None]
        return np.take(c.reshape(k * n_c, d), flat, axis=0)

    def l2_normalize(self, x: Any, in_place: bool = False) -> Any:
        """Rows scaled to unit length (TensorFlow's formula and floor); ``x``
        itself is scaled where ``in_place``."""
        squared = self.squared_norm(x)[..., None]
        scale = np.sqrt(np.maximum(squared, _NORM_EPSILON))
        if in_place:
            x /= scale
            return x
        return x / scale

    def take_last(self, x: Any, index: Any) -> Any:
        """``x[k, a, index[k, a, j]]``: ``[K, A, C]`` at ``[K, A, m]``."""
        if not x.flags.c_contiguous:
            return np.take_along_axis(x, index.astype(np.intp), axis=-1)
        k, a, c = x.shape
        # One flat gather: a few calls where take_along_axis makes a dozen.
        starts = np.arange(0, k * a * c, c).reshape(k, a, 1)
        return x.reshape(-1)[starts + index]

    def differences(self, a: Any, c: Any, index: Any) -> Any:
        """``c[k, index[k, i, j]] - a[k, i]``, ``[K, A, m, d]``, for ``a``
        ``[K, A, d]``, ``c`` ``[K, C, d]`` and ``index`` ``[K, A, m]``.

        Gathered and subtracted as ``[K, m, A, d]``, where one subtraction
        runs over whole rows of anchors instead of one row at a time (a fifth
        faster at batch 256, twice at 32), and returned as a view.
        """
        k, n_c, d = c.shape
        flat = (
            np.swapaxes(index, 1, 2).astype(np.intp)
            + np.arange(0, k * n_c, n_c)[:, None, None]
        )
        out = np.take(c.reshape(k * n_c, d), flat, axis=0)
        out -= a[:, None]
        return np.swapaxes(out, 1, 2)

    def manhattan(self, a: Any, c: Any) -> Any:
        """Sums of absolute differences ``[K, A, C]``.

        Differences are taken a tile of anchors and candidates at a time into
        one buffer of at most ``_BUFFER_ELEMENTS`` values (1 MB), made absolute
        and summed in place there. Broadcasting whole rows of anchors instead
        made two fresh temporaries of up to 32 MB per tile, which the kernel
        maps and zeroes on every call: three times slower (batch 256 x 128,
        half of it system time) and gigabytes at a high dimension.
        """
        k, n, d = a.shape
        m = c.shape[1]
        out = np.empty((k, n, m), np.float32)
        if not (k and n and m):
            return out
        c_step = min(m, max(_BUFFER_ELEMENTS // max(d, 1), 1))
        a_step = min(n, max(_BUFFER_ELEMENTS // (c_step * max(d, 1)), 1))
        buffer = np.empty((a_step, c_step, d), np.float32)
        for b in range(k):
            for a0 in range(0, n, a_step):
                anchors = a[b, a0 : a0 + a_step, None, :]
                for c0 in range(0, m, c_step):
                    candidates = c[b, None, c0 : c0 + c_step, :]
                    tile = buffer[: anchors.shape[0], : candidates.shape[1]]
                    np.subtract(anchors, candidates, out=tile)
                    np.abs(tile, out=tile)
                    np.sum(
                        tile, axis=-1, out=out[b, a0 : a0 + a_step, c0 : c0 + c_step]
                    )
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

    def matmul_t(self, a: Any, b: Any, offset: Any = None) -> Any:
        out = self.tf.linalg.matmul(a, b, transpose_b=True)
        return out if offset is None else out + offset

    def nothing(self, scores: Any, fill: float) -> tuple[Any, Any]:
        shape = self.tf.shape(scores)[:-1]
        fills = self.tf.fill(shape, self.tf.constant(fill, scores.dtype))
        return self.tf.zeros(shape, self.tf.int32), fills

    def gram(self, z: Any, scale: float = 1.0, offset: Any = None) -> Any:
        out = self.tf.linalg.matmul(z, z, transpose_b=True)
        if scale != 1.0:
            out = scale * out
        return out if offset is None else offset + out

    def sort_by_label(self, labels: Any) -> tuple[None, Any]:
        """No sorting: a compiled function's masked passes fuse on a GPU."""
        return None, labels

    def label_overlap(self, a_labels: Any, c_labels: Any) -> str:
        """``mixed``: a compiled function cannot look at its inputs."""
        return "mixed"

    def class_pairs(
        self, a_labels: Any, c_labels: Any, a_ids: Any, c_ids: Any, down: bool = False
    ) -> None:
        """None: a compiled function works with masks."""
        return None

    def exclude_self(self, scores: Any, a_ids: Any, c_ids: Any, fill: float) -> Any:
        same = self.tf.equal(a_ids[:, None], c_ids[None, :])
        return self.tf.where(same, self.tf.constant(fill, scores.dtype), scores)

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

    def is_finite(self, x: Any) -> Any:
        return self.tf.math.is_finite(x)

    def eye(self, n: Any) -> Any:
        return self.tf.eye(n, dtype=self.tf.bool)

    def positions(self, n: Any) -> Any:
        return self.tf.range(n)

    def anchor_rows(self, stacked: Any, batch: Any, dim: Any = 0) -> None:
        """All anchors at once: a compiled function fuses and schedules the
        passes itself."""
        return None

    def in_slices(
        self, fn: Callable[[Any, Any, Any], Any], a: Any, c: Any, index: Any
    ) -> Any:
        """``fn(a, c, index)`` in one call: a compiled function schedules the
        passes itself."""
        return fn(a, c, index)

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

    def dot_last(self, x: Any, y: Any) -> Any:
        return self.tf.reduce_sum(x * y, axis=-1)

    def partners(self, c: Any, index: Any) -> Any:
        return self.tf.gather(c, index, batch_dims=1)

    def l2_normalize(self, x: Any, in_place: bool = False) -> Any:
        return self.tf.math.l2_normalize(x, axis=-1, epsilon=_NORM_EPSILON)

    def take_last(self, x: Any, index: Any) -> Any:
        return self.tf.gather(x, index, batch_dims=2)

    def differences(self, a: Any, c: Any, index: Any) -> Any:
        return self.tf.gather(c, index, batch_dims=1) - a[:, :, None, :]

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
