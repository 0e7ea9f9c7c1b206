"""The distance-gap core: pairwise distances, hardest pairs, per-batch summaries.

Every function works on a stack of batches so that one call can cover several
batches: labels ``[K, B]``, embeddings ``[K, B, d]`` and a boolean ``mask`` ``[K, B]``
marking the rows that take part (padding rows, and rows with sample weight 0, are
masked out as anchors and as candidates). A single batch is a stack of one.

The Keras metrics, the command line and the accumulators all call these
functions; nothing else in distgap computes a distance.

Accuracy. Distances with a Gram form (cosine, euclidean, squared euclidean, snr)
are first computed through matrix products, which are fast but cancel badly for
near-duplicate rows far from the origin. Two guards keep them right: the rows are
centred on the batch mean where the distance allows it (translation changes
nothing for euclidean and snr), and the four pairs each anchor keeps (hardest and
easiest positive and negative) are recomputed from direct differences. Squared
values are clamped at zero, so no NaN or negative distance can come out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from distgap_cli.backend import tensorflow
from distgap_cli.distances import Distance

tf = tensorflow()

# Elements (not bytes) of the largest broadcast temporary manhattan builds.
_TILE_ELEMENTS = 1 << 23


class AnchorStats(NamedTuple):
    """Per-anchor results, each ``[K, B]``; NaN where the anchor has no such pair."""

    hardest_pos: Any
    hardest_neg: Any
    easiest_pos: Any
    easiest_neg: Any
    mean_pos: Any
    mean_neg: Any
    has_pos: Any
    has_neg: Any
    hardest_pos_index: Any
    hardest_neg_index: Any


class BatchStats(NamedTuple):
    """Per-batch summaries, each ``[K]``.

    ``max_pos``, ``min_neg``, ``gap`` and ``margin`` are NaN in a batch without a
    positive pair (``has_pos_pair`` false) or without a negative pair. Sums are
    float64 over the anchors that have a positive / a negative.
    """

    max_pos: Any
    min_neg: Any
    gap: Any
    margin: Any
    has_pos_pair: Any
    has_neg_pair: Any
    anchors: Any
    anchors_with_pos: Any
    anchors_with_neg: Any
    anchors_with_both: Any
    violations: Any
    sum_hardest_pos: Any
    sum_hardest_neg: Any


def _masked_mean(x: Any, mask: Any) -> Any:
    """Mean over the rows of each batch that ``mask`` keeps, ``[K, 1, d]``."""
    weights = tf.cast(mask, x.dtype)[..., None]
    count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
    return tf.reduce_sum(x * weights, axis=1, keepdims=True) / count


def _squared_distances(z: Any) -> Any:
    """``|z_i - z_j|^2`` through the Gram matrix, clamped at zero."""
    sq = tf.reduce_sum(z * z, axis=-1)
    gram = tf.linalg.matmul(z, z, transpose_b=True)
    return tf.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0)


def _manhattan(a: Any, c: Any) -> Any:
    """Sums of absolute differences ``[K, A, C]``, tiled over anchors so that the
    broadcast temporary stays under ``_TILE_ELEMENTS`` values."""
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


def _gram_rows(distance: Distance, x: Any, mask: Any) -> Any:
    """The rows whose Gram matrix :func:`pairwise` works from."""
    if distance is Distance.COSINE:
        return tf.math.l2_normalize(x, axis=-1)
    if distance in (Distance.EUCLIDEAN, Distance.SQUARED_EUCLIDEAN):
        return x - _masked_mean(x, mask)
    if distance is Distance.SNR:
        return x - tf.reduce_mean(x, axis=-1, keepdims=True)
    return x


def pairwise(distance: Distance, x: Any, mask: Any) -> Any:
    """The ``[K, B, B]`` distance matrix of each batch (row i is the anchor)."""
    z = _gram_rows(distance, x, mask)
    if distance is Distance.COSINE:
        gram = tf.linalg.matmul(z, z, transpose_b=True)
        return tf.clip_by_value(1.0 - gram, 0.0, 2.0)
    if distance is Distance.EUCLIDEAN:
        return tf.sqrt(_squared_distances(z))
    if distance is Distance.SQUARED_EUCLIDEAN:
        return _squared_distances(z)
    if distance is Distance.MANHATTAN:
        return _manhattan(x, x)
    if distance is Distance.INNER_PRODUCT:
        return tf.linalg.matmul(x, x, transpose_b=True)
    # snr: var(e_i - e_j) / var(e_i) = |c_i - c_j|^2 / |c_i|^2 for centred rows c;
    # the numerator is translation invariant, so centre c on the batch too.
    numerator = _squared_distances(z - _masked_mean(z, mask))
    signal = tf.reduce_sum(z * z, axis=-1)
    return numerator / signal[:, :, None]


def _direct(distance: Distance, anchors: Any, partners: Any) -> Any:
    """Distances from ``anchors`` ``[K, B, 1, d]`` to ``partners`` ``[K, B, m, d]``."""
    diff = anchors - partners
    if distance is Distance.COSINE:
        return tf.minimum(0.5 * tf.reduce_sum(diff * diff, axis=-1), 2.0)
    if distance is Distance.EUCLIDEAN:
        return tf.sqrt(tf.reduce_sum(diff * diff, axis=-1))
    if distance is Distance.SQUARED_EUCLIDEAN:
        return tf.reduce_sum(diff * diff, axis=-1)
    # snr
    noise = tf.math.reduce_variance(diff, axis=-1)
    return noise / tf.math.reduce_variance(anchors, axis=-1)


def _needs_refinement(distance: Distance) -> bool:
    return distance not in (Distance.MANHATTAN, Distance.INNER_PRODUCT)


def _ranking(distance: Distance, a: Any, c: Any, c_mask: Any) -> Any:
    """A ``[K, A, C]`` matrix ordered like the distances along each anchor's row.

    Cheaper than :func:`pairwise`: terms constant along a row (the anchor's own
    norm, the snr denominator) and monotone maps (square root, ``1 - x``) are left
    out, because only which candidate is hardest matters here; the values of the
    picked pairs are measured directly afterwards. Anchors and candidates are
    shifted by the same vector (the candidates' mean) where translation changes
    nothing, which keeps the Gram form from cancelling.
    """
    if distance is Distance.MANHATTAN:
        return _manhattan(a, c)
    if distance is Distance.INNER_PRODUCT:
        return tf.linalg.matmul(a, c, transpose_b=True)
    if distance is Distance.COSINE:
        ua = tf.math.l2_normalize(a, axis=-1)
        uc = tf.math.l2_normalize(c, axis=-1)
        # Negating the rows rather than the product saves a pass over [K, A, C].
        return tf.linalg.matmul(-ua, uc, transpose_b=True)
    if distance is Distance.SNR:
        a = a - tf.reduce_mean(a, axis=-1, keepdims=True)
        c = c - tf.reduce_mean(c, axis=-1, keepdims=True)
    shift = _masked_mean(c, c_mask)
    za, zc = a - shift, c - shift
    sq = tf.reduce_sum(zc * zc, axis=-1)
    return sq[:, None, :] - tf.linalg.matmul(2.0 * za, zc, transpose_b=True)


def _measured(distance: Distance, a: Any, c: Any, picks: Any, ranking: Any) -> Any:
    """Distances from each anchor of ``a`` ``[K, A, d]`` to the candidates of
    ``c`` ``[K, C, d]`` at ``picks`` ``[K, A, m]``, from direct differences."""
    if not _needs_refinement(distance):
        return tf.gather(ranking, picks, batch_dims=2)
    if distance is Distance.COSINE:
        a = tf.math.l2_normalize(a, axis=-1)
        c = tf.math.l2_normalize(c, axis=-1)
    partners = tf.gather(c, picks, batch_dims=1)
    return _direct(distance, a[:, :, None, :], partners)


def _hardest_only(distance: Distance, labels: Any, x: Any, mask: Any) -> AnchorStats:
    """The hardest positive and negative of every anchor, in as few passes over
    the ``[K, B, B]`` matrix as possible (the command line's hot path)."""
    ranking = _ranking(distance, x, x, mask)
    inf = tf.constant(float("inf"), ranking.dtype)

    # Candidates that are absent (padding, weight 0) or the anchor itself lose.
    absent = tf.where(mask, 0.0, inf)[:, None, :]
    same = tf.equal(labels[:, :, None], labels[:, None, :])
    pos_scores = tf.where(same, ranking, -inf) - absent
    pos_scores = tf.linalg.set_diag(pos_scores, -inf * tf.ones_like(ranking[:, 0]))
    neg_scores = tf.where(same, inf, ranking) + absent
    hp_idx = tf.argmax(pos_scores, axis=-1, output_type=tf.int32)
    hn_idx = tf.argmin(neg_scores, axis=-1, output_type=tf.int32)
    has_pos = mask & (tf.gather(pos_scores, hp_idx, batch_dims=2) > -inf)
    has_neg = mask & (tf.gather(neg_scores, hn_idx, batch_dims=2) < inf)

    picks = tf.stack([hp_idx, hn_idx], axis=-1)
    values = _measured(distance, x, x, picks, ranking)
    nan = tf.constant(float("nan"), ranking.dtype)
    return AnchorStats(
        hardest_pos=tf.where(has_pos, values[..., 0], nan),
        hardest_neg=tf.where(has_neg, values[..., 1], nan),
        easiest_pos=None,
        easiest_neg=None,
        mean_pos=None,
        mean_neg=None,
        has_pos=has_pos,
        has_neg=has_neg,
        hardest_pos_index=tf.where(has_pos, hp_idx, -1),
        hardest_neg_index=tf.where(has_neg, hn_idx, -1),
    )


def anchor_stats(
    distance: Distance, labels: Any, x: Any, mask: Any, *, full: bool = True
) -> AnchorStats:
    """Hardest (and easiest) positive and negative of every anchor.

    Args:
        distance: which distance.
        labels: ``[K, B]`` integer labels.
        x: ``[K, B, d]`` float embeddings (float16 is computed in float32).
        mask: ``[K, B]`` booleans, true for rows that take part.
        full: also compute the easiest pairs and the mean distances; without
            them the call is faster and those fields are None.

    Returns:
        An :class:`AnchorStats` of ``[K, B]`` tensors.
    """
    if x.dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    if not full:
        return _hardest_only(distance, labels, x, mask)
    matrix = pairwise(distance, x, mask)

    # Masks: a pair needs both rows present; a positive pair needs two rows.
    b = tf.shape(labels)[1]
    present = mask[:, :, None] & mask[:, None, :]
    same = tf.equal(labels[:, :, None], labels[:, None, :])
    not_self = ~tf.eye(b, dtype=tf.bool)[None]
    pos = same & not_self & present
    neg = ~same & present
    has_pos = tf.reduce_any(pos, axis=-1)
    has_neg = tf.reduce_any(neg, axis=-1)

    # Each anchor's extreme pairs, picked on the matrix, then measured directly.
    inf = tf.constant(float("inf"), matrix.dtype)
    picks = [
        tf.argmax(tf.where(pos, matrix, -inf), axis=-1, output_type=tf.int32),
        tf.argmin(tf.where(neg, matrix, inf), axis=-1, output_type=tf.int32),
        tf.argmin(tf.where(pos, matrix, inf), axis=-1, output_type=tf.int32),
        tf.argmax(tf.where(neg, matrix, -inf), axis=-1, output_type=tf.int32),
    ]
    values = _measured(distance, x, x, tf.stack(picks, axis=-1), matrix)

    # Anchors without a positive (or negative) get NaN, never a fallback number.
    nan = tf.constant(float("nan"), matrix.dtype)
    n_pos = tf.reduce_sum(tf.cast(pos, matrix.dtype), axis=-1)
    n_neg = tf.reduce_sum(tf.cast(neg, matrix.dtype), axis=-1)
    sum_pos = tf.reduce_sum(tf.where(pos, matrix, 0.0), axis=-1)
    sum_neg = tf.reduce_sum(tf.where(neg, matrix, 0.0), axis=-1)
    return AnchorStats(
        hardest_pos=tf.where(has_pos, values[..., 0], nan),
        hardest_neg=tf.where(has_neg, values[..., 1], nan),
        easiest_pos=tf.where(has_pos, values[..., 2], nan),
        easiest_neg=tf.where(has_neg, values[..., 3], nan),
        mean_pos=tf.where(has_pos, sum_pos / tf.maximum(n_pos, 1.0), nan),
        mean_neg=tf.where(has_neg, sum_neg / tf.maximum(n_neg, 1.0), nan),
        has_pos=has_pos,
        has_neg=has_neg,
        hardest_pos_index=tf.where(has_pos, picks[0], -1),
        hardest_neg_index=tf.where(has_neg, picks[1], -1),
    )


class CrossStats(NamedTuple):
    """Each anchor's hardest and nearest candidates of its class and of the
    others, ``[A]`` each.

    Hardest means TF Similarity's literal definition for every distance: the
    largest value among positives, the smallest among negatives. Nearest means
    the smallest value, or the largest for a similarity (inner_product). Values
    are measured from direct differences; ``-inf``/``inf`` (and index -1) where
    the anchor has no such candidate among those given.
    """

    max_pos: Any
    min_neg: Any
    nearest_pos: Any
    nearest_neg: Any
    nearest_neg_index: Any


def cross_extremes(
    distance: Distance,
    a: Any,
    a_labels: Any,
    a_ids: Any,
    c: Any,
    c_labels: Any,
    c_ids: Any,
    c_mask: Any,
) -> CrossStats:
    """Hardest and nearest positive and negative of anchors among candidates.

    The whole-dataset (exact) mode calls this on tiles of anchors ``a`` ``[A, d]``
    against tiles of candidates ``c`` ``[C, d]``; a candidate with the anchor's
    own id is the anchor itself and is left out, as are candidates outside
    ``c_mask``. Indices point into ``c``. Three passes pick the pairs: for a
    distance the nearest negative is the hardest one, for a similarity the
    nearest positive is the hardest one.
    """
    if a.dtype in (tf.float16, tf.bfloat16):
        a, c = tf.cast(a, tf.float32), tf.cast(c, tf.float32)
    ranking = _ranking(distance, a[None], c[None], c_mask[None])
    inf = tf.constant(float("inf"), ranking.dtype)
    usable = tf.not_equal(a_ids[:, None], c_ids[None, :]) & c_mask[None, :]
    same = tf.equal(a_labels[:, None], c_labels[None, :])
    pos = (same & usable)[None]
    neg = (~same & usable)[None]
    if distance.is_similarity:
        third = tf.argmax(tf.where(neg, ranking, -inf), -1, output_type=tf.int32)
    else:
        third = tf.argmin(tf.where(pos, ranking, inf), -1, output_type=tf.int32)
    picks = tf.stack(
        [
            tf.argmax(tf.where(pos, ranking, -inf), -1, output_type=tf.int32),
            tf.argmin(tf.where(neg, ranking, inf), -1, output_type=tf.int32),
            third,
        ],
        axis=-1,
    )
    values = _measured(distance, a[None], c[None], picks, ranking)[0]
    picks = picks[0]
    has_pos = tf.reduce_any(pos[0], axis=-1)
    has_neg = tf.reduce_any(neg[0], axis=-1)
    max_pos = tf.where(has_pos, values[:, 0], -inf)
    min_neg = tf.where(has_neg, values[:, 1], inf)
    if distance.is_similarity:
        nearest_pos = max_pos
        nearest_neg = tf.where(has_neg, values[:, 2], -inf)
        nearest_neg_index = tf.where(has_neg, picks[:, 2], -1)
    else:
        nearest_pos = tf.where(has_pos, values[:, 2], inf)
        nearest_neg = min_neg
        nearest_neg_index = tf.where(has_neg, picks[:, 1], -1)
    return CrossStats(
        max_pos=max_pos,
        min_neg=min_neg,
        nearest_pos=nearest_pos,
        nearest_neg=nearest_neg,
        nearest_neg_index=nearest_neg_index,
    )


def batch_stats(anchors: AnchorStats, mask: Any) -> BatchStats:
    """Summarise each batch: max_pos, min_neg, gap, margin and anchor counts."""
    hp, hn = anchors.hardest_pos, anchors.hardest_neg
    inf = tf.constant(float("inf"), hp.dtype)
    nan = tf.constant(float("nan"), hp.dtype)
    has_pos_pair = tf.reduce_any(anchors.has_pos, axis=-1)
    has_neg_pair = tf.reduce_any(anchors.has_neg, axis=-1)
    usable = has_pos_pair & has_neg_pair

    max_pos = tf.reduce_max(tf.where(anchors.has_pos, hp, -inf), axis=-1)
    min_neg = tf.reduce_min(tf.where(anchors.has_neg, hn, inf), axis=-1)
    margin = tf.where(usable, min_neg - max_pos, nan)
    both = anchors.has_pos & anchors.has_neg

    def count(flags: Any) -> Any:
        return tf.reduce_sum(tf.cast(flags, tf.int64), axis=-1)

    def total(values: Any, flags: Any) -> Any:
        wide = tf.cast(tf.where(flags, values, 0.0), tf.float64)
        return tf.reduce_sum(wide, axis=-1)

    return BatchStats(
        max_pos=tf.where(has_pos_pair, max_pos, nan),
        min_neg=tf.where(has_neg_pair, min_neg, nan),
        gap=tf.abs(margin),
        margin=margin,
        has_pos_pair=has_pos_pair,
        has_neg_pair=has_neg_pair,
        anchors=count(mask),
        anchors_with_pos=count(anchors.has_pos),
        anchors_with_neg=count(anchors.has_neg),
        anchors_with_both=count(both),
        violations=count(both & (hn < hp)),
        sum_hardest_pos=total(hp, anchors.has_pos),
        sum_hardest_neg=total(hn, anchors.has_neg),
    )


def aggregate_anchors(values: Any, present: Any, how: str) -> tuple[Any, Any]:
    """Reduce per-anchor ``values`` ``[K, B]`` over the anchors where ``present``.

    Args:
        values: per-anchor distances.
        present: which anchors have the value (e.g. ``has_pos``).
        how: ``mean`` (or ``avg``), ``max``, ``min`` or ``sum``.

    Returns:
        ``(value, valid)``, each ``[K]``; ``value`` is NaN where no anchor counts.
    """
    valid = tf.reduce_any(present, axis=-1)
    inf = tf.constant(float("inf"), values.dtype)
    if how in ("mean", "avg"):
        count = tf.reduce_sum(tf.cast(present, values.dtype), axis=-1)
        total = tf.reduce_sum(tf.where(present, values, 0.0), axis=-1)
        value = total / tf.maximum(count, 1.0)
    elif how == "max":
        value = tf.reduce_max(tf.where(present, values, -inf), axis=-1)
    elif how == "min":
        value = tf.reduce_min(tf.where(present, values, inf), axis=-1)
    else:
        value = tf.reduce_sum(tf.where(present, values, 0.0), axis=-1)
    return tf.where(valid, value, float("nan")), valid


def invalid_rows(distance: Distance, x: Any, mask: Any) -> Any:
    """``[K, B]`` booleans: rows the distance is undefined for (zero vector, zero
    variance) or that hold a non-finite value."""
    bad = ~tf.reduce_all(tf.math.is_finite(x), axis=-1)
    if distance.needs_direction:
        bad |= tf.reduce_all(tf.equal(x, 0.0), axis=-1)
    if distance.needs_variance:
        bad |= tf.equal(tf.reduce_max(x, -1), tf.reduce_min(x, -1))
    return bad & mask
