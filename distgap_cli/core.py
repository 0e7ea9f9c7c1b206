"""The distance-gap core: pairwise distances, hardest pairs, per-batch summaries.

Every function works on a stack of batches so that one call can cover several
batches: labels ``[K, B]``, embeddings ``[K, B, d]`` and a boolean ``mask`` ``[K, B]``
marking the rows that take part (padding rows, and rows with sample weight 0, are
masked out as anchors and as candidates). A single batch is a stack of one.

The Keras metrics, batch mode and exact mode all call these functions; nothing
else in distgap computes a distance. The inputs decide the library
(:mod:`distgap_cli.arrays`): NumPy arrays are computed with NumPy, TensorFlow
tensors with TensorFlow, by the same code.

Accuracy. Distances with a Gram form (cosine, euclidean, squared euclidean, snr)
are first computed through matrix products, which are fast but cancel badly for
near-duplicate rows far from the origin. Two guards keep them right: the rows are
centred on the batch mean where the distance allows it (translation changes
nothing for euclidean and snr), and the four pairs each anchor keeps (hardest and
easiest positive and negative) are recomputed from direct differences. Squared
values are clamped at zero, so no NaN or negative distance can come out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from distgap_cli.arrays import namespace
from distgap_cli.distances import Distance

_INF = float("inf")
_NAN = float("nan")


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


def _masked_mean(xp: Any, x: Any, mask: Any) -> Any:
    """Mean over the rows of each batch that ``mask`` keeps, ``[K, 1, d]``."""
    weights = xp.as_float(mask)[..., None]
    count = xp.maximum(xp.sum(weights, axis=1, keepdims=True), 1.0)
    return xp.sum(x * weights, axis=1, keepdims=True) / count


def _squared_distances(xp: Any, z: Any) -> Any:
    """``|z_i - z_j|^2`` through the Gram matrix, clamped at zero."""
    sq = xp.squared_norm(z)
    gram = xp.matmul_t(z, z)
    return xp.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0)


def _gram_rows(xp: Any, distance: Distance, x: Any, mask: Any) -> Any:
    """The rows whose Gram matrix :func:`pairwise` works from."""
    if distance is Distance.COSINE:
        return xp.l2_normalize(x)
    if distance in (Distance.EUCLIDEAN, Distance.SQUARED_EUCLIDEAN):
        return x - _masked_mean(xp, x, mask)
    if distance is Distance.SNR:
        return _row_centred(xp, x)
    return x


def _row_centred(xp: Any, x: Any) -> Any:
    """Each row minus its mean, its first value taken out first.

    For rows far from zero against their spread (values near 3e4 that vary by
    1e-2) the float32 mean is off by about its rounding, as much as the spread;
    the first value's subtraction is exact there and leaves small numbers whose
    mean is accurate. snr reads nothing but these differences.
    """
    shifted = x - x[..., :1]
    return shifted - xp.mean(shifted, keepdims=True)


def pairwise(distance: Distance, x: Any, mask: Any) -> Any:
    """The ``[K, B, B]`` distance matrix of each batch (row i is the anchor)."""
    xp = namespace(x)
    z = _gram_rows(xp, distance, x, mask)
    if distance is Distance.COSINE:
        return xp.clip(1.0 - xp.matmul_t(z, z), 0.0, 2.0)
    if distance is Distance.EUCLIDEAN:
        return xp.sqrt(_squared_distances(xp, z))
    if distance is Distance.SQUARED_EUCLIDEAN:
        return _squared_distances(xp, z)
    if distance is Distance.MANHATTAN:
        return xp.manhattan(x, x)
    if distance is Distance.INNER_PRODUCT:
        return xp.matmul_t(x, x)
    # snr: var(e_i - e_j) / var(e_i) = |c_i - c_j|^2 / |c_i|^2 for centred rows c;
    # the numerator is translation invariant, so centre c on the batch too.
    numerator = _squared_distances(xp, z - _masked_mean(xp, z, mask))
    signal = xp.squared_norm(z)
    return numerator / signal[:, :, None]


def _direct(xp: Any, distance: Distance, anchors: Any, diff: Any) -> Any:
    """Distances from ``anchors`` ``[K, B, 1, d]`` given the differences ``diff``
    ``[K, B, m, d]`` between their partners and them."""
    if distance is Distance.COSINE:
        return xp.minimum(0.5 * xp.squared_norm(diff), 2.0)
    if distance is Distance.EUCLIDEAN:
        return xp.sqrt(xp.squared_norm(diff))
    if distance is Distance.SQUARED_EUCLIDEAN:
        return xp.squared_norm(diff)
    # snr (variance is shift-free: anchors are shifted as _row_centred does)
    return xp.var(diff) / xp.var(anchors - anchors[..., :1])


def _needs_refinement(distance: Distance) -> bool:
    return distance not in (Distance.MANHATTAN, Distance.INNER_PRODUCT)


def _prepared(xp: Any, distance: Distance, x: Any, own: bool = False) -> Any:
    """The rows :func:`_scores` and :func:`_measured` take: unit rows for
    cosine (normalised once here, not once per anchor slice), else ``x``.
    ``own``: ``x`` is the caller's temporary, which may be normalised in place."""
    if distance is not Distance.COSINE:
        return x
    return xp.l2_normalize(x, in_place=own)


def prepared_rows(distance: Distance, x: Any) -> Any:
    """``x`` as :func:`cross_extremes` works on it (float32; unit rows for
    cosine), for a caller that passes the same candidates many times."""
    xp = namespace(x)
    return _prepared(xp, distance, xp.float32(x))


def _scores(
    xp: Any, distance: Distance, a: Any, c: Any, c_mask: Any
) -> tuple[Any, float]:
    """A ``[K, A, C]`` matrix ordered like the distances along each anchor's row,
    and the direction of that order: 1.0 where a larger score means a larger
    distance, -1.0 where it means a smaller one.

    ``a`` and ``c`` are :func:`_prepared` rows.

    Cheaper than :func:`pairwise`: terms constant along a row (the anchor's own
    norm, the snr denominator), factors and monotone maps (square root,
    ``1 - x``) are left out, because only which candidate is hardest matters
    here; the values of the picked pairs are measured directly afterwards.
    Anchors and candidates are shifted by the same vector (the candidates'
    mean) where translation changes nothing, which keeps the Gram form from
    cancelling. When ``a is c`` the products are a Gram matrix, which the
    namespace may compute faster.
    """
    if distance is Distance.MANHATTAN:
        return xp.manhattan(a, c), 1.0
    if distance is Distance.INNER_PRODUCT:
        return xp.matmul_t(a, c), 1.0
    alone = a is c  # every row is an anchor: the products form a Gram matrix
    if distance is Distance.COSINE:
        # 1 - a.c on unit rows: the product itself, in reverse order.
        return (xp.gram(c) if alone else xp.matmul_t(a, c)), -1.0
    if distance is Distance.SNR:
        c = _row_centred(xp, c)
        a = c if alone else _row_centred(xp, a)
    shift = _masked_mean(xp, c, c_mask)
    zc = c - shift
    # |a - c|^2 = |a|^2 - 2 (a.c - |c|^2 / 2), and |a|^2 is constant along a row.
    offset = -0.5 * xp.squared_norm(zc)[:, None, :]
    if alone:
        return xp.gram(zc, 1.0, offset), -1.0
    return xp.matmul_t(a - shift, zc, offset), -1.0


# Stands for "every candidate is excluded" in :func:`_search`.
_EVERY = object()


def _search(
    xp: Any,
    scores: Any,
    excluded: Any,
    fill: float,
    pick: str,
    own: Callable[[Any, float], Any] | None = None,
    in_place: bool = False,
) -> tuple[Any, Any]:
    """One pick (``"argmax"`` or ``"argmin"``) along each anchor's row of ``scores``.

    Candidates where ``excluded`` holds (a mask; None for none, :data:`_EVERY`
    for all) and, through ``own(scores, fill)``, the anchor itself are first
    set to ``fill``, the value that loses the search. ``scores`` is copied
    before being written unless ``in_place``. Returns the picks and their
    scores, ``[K, A]`` each; a score equal to ``fill`` means no candidate.
    """
    if excluded is _EVERY:
        return xp.nothing(scores, fill)
    scores = _filled(xp, scores, excluded, fill, own, in_place)
    index = getattr(xp, pick)(scores)
    return index, xp.take_last(scores, index[..., None])[..., 0]


def _filled(
    xp: Any,
    scores: Any,
    excluded: Any,
    fill: float,
    own: Callable[[Any, float], Any] | None,
    in_place: bool,
) -> Any:
    """``scores`` with ``fill`` where ``excluded`` holds and, through ``own``,
    at each anchor itself (see :func:`_search`)."""
    if excluded is not None or own is not None:
        scores = scores if in_place else xp.copy(scores)
    if excluded is not None:
        scores = xp.masked_fill(scores, excluded, fill)
    if own is not None:
        scores = own(scores, fill)
    return scores


def _search_both(
    xp: Any,
    scores: Any,
    excluded: Any,
    fill: float,
    pick: str,
    own: Callable[[Any, float], Any] | None = None,
    in_place: bool = False,
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """:func:`_search` along the rows and down the columns of the same filled
    scores: the picks of the rows' anchors among the columns, ``[K, A]``, and
    of the columns' anchors among the rows, ``[K, C]``. Scores, exclusions and
    fills must be symmetric (a pair is excluded as a pair, either way)."""
    if excluded is _EVERY:
        return xp.nothing(scores, fill), xp.nothing(xp.swap_last(scores), fill)
    scores = _filled(xp, scores, excluded, fill, own, in_place)
    return _search(xp, scores, None, fill, pick), xp.pick_columns(scores, pick)


def _directions(sign: float) -> tuple[float, float, str, str]:
    """For scores of direction ``sign``: the fills that lose a search for the
    farthest and for the nearest candidate, and the names of those searches."""
    if sign > 0:
        return -_INF, _INF, "argmax", "argmin"
    return _INF, -_INF, "argmin", "argmax"


def _either(mask: Any, absent: Any) -> Any:
    return mask if absent is None else mask | absent


def _measured(
    xp: Any, distance: Distance, a: Any, c: Any, picks: Any, ranking: Any
) -> Any:
    """Distances from each anchor of ``a`` ``[K, A, d]`` to the candidates of
    ``c`` ``[K, C, d]`` (both :func:`_prepared`) at ``picks`` ``[K, A, m]``, from
    direct differences."""
    if not _needs_refinement(distance):
        return xp.take_last(ranking, picks)

    def measure(a: Any, c: Any, picks: Any) -> Any:
        return _direct(xp, distance, a[:, :, None, :], xp.differences(a, c, picks))

    return xp.in_slices(measure, a, c, picks)


def _hardest_only(
    xp: Any, distance: Distance, labels: Any, x: Any, mask: Any
) -> AnchorStats:
    """The hardest positive and negative of every anchor, in as few passes over
    the ``[K, B, B]`` matrix as possible (the command line's hot path).

    Where the namespace sorts batches by label (NumPy), the rows are computed
    in that order and the results put back in the batch's own. Anchors are
    taken a slice at a time where the namespace asks for it (NumPy on large
    batches), so that the ``[K, A, B]`` temporaries stay small.
    """
    b = xp.size(labels, 1)
    order, codes = xp.sort_by_label(labels)
    if order is not None:
        x, mask = xp.permute_rows(x, order), xp.permute_rows(mask, order)
    x = _prepared(xp, distance, x, own=order is not None)  # permuted: a copy
    step = xp.anchor_rows(labels.shape[0], b, x.shape[-1])
    if step is None or step >= b:
        picks, values, has_pos, has_neg = _hardest_of(xp, distance, codes, x, mask)
    else:
        parts = [
            _hardest_of(xp, distance, codes, x, mask, start, start + step)
            for start in range(0, b, step)
        ]
        joined = (xp.concat(p) for p in zip(*parts, strict=True))
        picks, values, has_pos, has_neg = joined
    per_anchor = [values[..., 0], values[..., 1], has_pos, has_neg]
    picked = [picks[..., 0], picks[..., 1]]
    if order is not None:
        per_anchor, picked = xp.unpermute(order, per_anchor, picked)
    hp, hn, has_pos, has_neg = per_anchor
    return AnchorStats(
        hardest_pos=xp.where(has_pos, hp, _NAN),
        hardest_neg=xp.where(has_neg, hn, _NAN),
        easiest_pos=None,
        easiest_neg=None,
        mean_pos=None,
        mean_neg=None,
        has_pos=has_pos,
        has_neg=has_neg,
        hardest_pos_index=xp.where(has_pos, picked[0], -1),
        hardest_neg_index=xp.where(has_neg, picked[1], -1),
    )


def _hardest_of(
    xp: Any,
    distance: Distance,
    labels: Any,
    x: Any,
    mask: Any,
    start: Any = 0,
    stop: Any = None,
) -> tuple[Any, Any, Any, Any]:
    """Picks ``[K, A, 2]`` (hardest positive, hardest negative) of the anchors
    ``start:stop`` of each batch (all of them by default), their measured
    values, and whether each anchor has a positive / a negative."""
    anchors = x if stop is None else x[:, start:stop]
    scores, sign = _scores(xp, distance, anchors, x, mask)
    far_fill, near_fill, farthest, nearest = _directions(sign)

    # Candidates that are absent (padding, weight 0) or the anchor itself lose.
    # Where the namespace lists the same-class pairs (NumPy, few per anchor),
    # the positives are searched in the list and filled out of the negatives'
    # search; otherwise masks over every pair do both.
    every = xp.known_all(mask)
    pairs = None
    if every:
        ids = xp.positions(xp.size(labels, 1))
        pairs = xp.class_pairs(labels[:, start:stop], labels, ids[start:stop], ids)
    if pairs is not None:
        pos_index, pos_score = xp.pick_among(scores, pairs, far_fill, farthest)
        scores = xp.fill_pairs(scores, pairs, near_fill)
        neg_index, neg_score = _search(xp, scores, None, near_fill, nearest)
    else:
        same = xp.equal(labels[:, start:stop, None], labels[:, None, :])
        if every:  # two passes over [K, A, B] saved
            not_neg, not_pos = same, ~same
        else:
            present = mask[:, None, :]
            not_neg, not_pos = same | ~present, ~(same & present)

        def itself(s: Any, fill: float) -> Any:
            return xp.set_diagonal(s, fill, offset=start)

        neg_index, neg_score = _search(xp, scores, not_neg, near_fill, nearest)
        pos_index, pos_score = _search(
            xp, scores, not_pos, far_fill, farthest, itself, in_place=True
        )
    picks = xp.stack([pos_index, neg_index])
    if _needs_refinement(distance):
        values = _measured(xp, distance, anchors, x, picks, None)
    else:  # the scores are the distances themselves
        values = xp.stack([pos_score, neg_score])
    found_pos, found_neg = pos_score != far_fill, neg_score != near_fill
    present_anchors = mask[:, start:stop]
    return picks, values, present_anchors & found_pos, present_anchors & found_neg


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
        An :class:`AnchorStats` of ``[K, B]`` arrays (or tensors, as ``x`` is).
    """
    xp = namespace(x)
    x = xp.float32(x)
    if not xp.known_all(mask):
        # Rows that take no part reach no figure, whatever they hold: a NaN in a
        # row of sample weight 0 would otherwise spread through the batch mean
        # that centres the Gram form.
        x = xp.where(mask[..., None], x, 0.0)
    if not full:
        return _hardest_only(xp, distance, labels, x, mask)
    matrix = pairwise(distance, x, mask)

    # Masks: a pair needs both rows present; a positive pair needs two rows.
    present = mask[:, :, None] & mask[:, None, :]
    same = xp.equal(labels[:, :, None], labels[:, None, :])
    not_self = ~xp.eye(xp.size(labels, 1))[None]
    pos = same & not_self & present
    neg = ~same & present
    has_pos = xp.any(pos)
    has_neg = xp.any(neg)

    # Each anchor's extreme pairs, picked on the matrix, then measured directly.
    picks = [
        xp.argmax(xp.where(pos, matrix, -_INF)),
        xp.argmin(xp.where(neg, matrix, _INF)),
        xp.argmin(xp.where(pos, matrix, _INF)),
        xp.argmax(xp.where(neg, matrix, -_INF)),
    ]
    rows = _prepared(xp, distance, x)
    values = _measured(xp, distance, rows, rows, xp.stack(picks), matrix)

    # Anchors without a positive (or negative) get NaN, never a fallback number.
    n_pos = xp.sum(xp.as_float(pos))
    n_neg = xp.sum(xp.as_float(neg))
    sum_pos = xp.sum(xp.where(pos, matrix, 0.0))
    sum_neg = xp.sum(xp.where(neg, matrix, 0.0))
    return AnchorStats(
        hardest_pos=xp.where(has_pos, values[..., 0], _NAN),
        hardest_neg=xp.where(has_neg, values[..., 1], _NAN),
        easiest_pos=xp.where(has_pos, values[..., 2], _NAN),
        easiest_neg=xp.where(has_neg, values[..., 3], _NAN),
        mean_pos=xp.where(has_pos, sum_pos / xp.maximum(n_pos, 1.0), _NAN),
        mean_neg=xp.where(has_neg, sum_neg / xp.maximum(n_neg, 1.0), _NAN),
        has_pos=has_pos,
        has_neg=has_neg,
        hardest_pos_index=xp.where(has_pos, picks[0], -1),
        hardest_neg_index=xp.where(has_neg, picks[1], -1),
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
    prepared: Any = None,
) -> CrossStats:
    """Hardest and nearest positive and negative of anchors among candidates.

    The whole-dataset (exact) mode calls this on tiles of anchors ``a`` ``[A, d]``
    against tiles of candidates ``c`` ``[C, d]``; a candidate with the anchor's
    own id is the anchor itself and is left out, as are candidates outside
    ``c_mask``. Indices point into ``c``. Three searches pick the pairs: for a
    distance the nearest negative is the hardest one, for a similarity the
    nearest positive is the hardest one. Tiles whose labels are sorted (exact
    mode walks rows in label order) cost the NumPy namespace one pass over the
    scores where they hold no positive, and few more where they hold a run of
    one class.

    Whether an anchor has a positive or a negative comes from the picked
    scores: a pick still at the fill value means no candidate of that kind.
    ``prepared``, if given, is :func:`prepared_rows` of ``c``, made once for
    many anchor tiles.
    """
    xp = namespace(a)
    a = _prepared(xp, distance, xp.float32(a))
    c = prepared_rows(distance, c) if prepared is None else prepared
    scores, sign = _scores(xp, distance, a[None], c[None], c_mask[None])

    # Which candidates are positives and negatives. Where the namespace can
    # tell from the labels' ranges that a tile holds one kind only (NumPy, on
    # rows sorted by label), the other kind's search and the mask are skipped;
    # where it lists the same-class pairs, the positives are searched in the
    # list and filled out of the negatives' searches.
    absent = None if xp.known_all(c_mask) else ~c_mask[None, None, :]
    overlap = xp.label_overlap(a_labels, c_labels)
    pairs = None
    if overlap == "mixed" and absent is None:
        pairs = xp.class_pairs(a_labels[None], c_labels[None], a_ids, c_ids)
    if pairs is not None:
        found = _cross_listed(xp, distance, scores, pairs, sign)
    else:
        found = _masked_searches(
            xp,
            distance,
            scores,
            sign,
            overlap,
            (a_labels, c_labels, a_ids, c_ids),
            absent,
            _search,
        )
    return _cross_stats(xp, distance, a, c, found, sign)


def _masked_searches(
    xp: Any,
    distance: Distance,
    scores: Any,
    sign: float,
    overlap: str,
    rows: tuple[Any, Any, Any, Any],
    absent: Any,
    search: Callable[..., Any],
) -> tuple[Any, Any, Any]:
    """The three searches of :func:`cross_extremes` through masks (hardest
    positive, hardest negative, nearest of the other kind), each made by
    ``search`` (:func:`_search`, or :func:`_search_both` for both ways).
    ``rows`` are the anchors' and candidates' labels and ids; ``overlap`` is how
    their labels relate; ``absent`` masks out candidates (None for none)."""
    a_labels, c_labels, a_ids, c_ids = rows
    far_fill, near_fill, farthest, nearest = _directions(sign)
    if overlap == "disjoint":
        not_pos, not_neg = _EVERY, absent
    elif overlap == "same":
        not_pos, not_neg = absent, _EVERY
    else:
        same = xp.equal(a_labels[:, None], c_labels[None, :])[None]
        not_pos, not_neg = _either(~same, absent), _either(same, absent)

    def itself(s: Any, fill: float) -> Any:
        return xp.exclude_self(s, a_ids, c_ids, fill)

    hardest_pos = search(xp, scores, not_pos, far_fill, farthest, itself)
    if distance.is_similarity:  # the nearest negative: the most similar one
        third = search(xp, scores, not_neg, far_fill, farthest)
    else:  # the nearest positive
        third = search(xp, scores, not_pos, near_fill, nearest, itself)
    hardest_neg = search(xp, scores, not_neg, near_fill, nearest, in_place=True)
    return hardest_pos, hardest_neg, third


def _dot_partners(xp: Any) -> Callable[[Any, Any, Any], Any]:
    """Inner products of anchors ``[K, A, d]`` with their picked partners of
    ``c`` ``[K, C, d]`` at ``[K, A, m]``, one dot product a pair."""

    def dot(a: Any, c: Any, picks: Any) -> Any:
        return xp.dot_last(a[:, :, None, :], xp.partners(c, picks))

    return dot


def _cross_stats(
    xp: Any,
    distance: Distance,
    a: Any,
    c: Any,
    found: tuple[tuple[Any, Any], ...],
    sign: float,
) -> CrossStats:
    """The :class:`CrossStats` of anchors ``a`` among candidates ``c`` (both
    :func:`_prepared`, ``[A, d]`` and ``[C, d]``) from the picks and scores of
    the three searches (hardest positive, hardest negative, nearest of the
    other kind), ``[1, A]`` each; the picked pairs are measured directly."""
    far_fill, near_fill, _, _ = _directions(sign)
    picks = xp.stack([index for index, _ in found])
    has_pos = found[0][1] != far_fill
    has_neg = found[1][1] != near_fill
    if _needs_refinement(distance):
        values = _measured(xp, distance, a[None], c[None], picks, None)[0]
    elif distance is Distance.INNER_PRODUCT:
        # Tiles' products of other shapes round differently: the picks' are
        # taken again, the same way for every pair, so that identical rows
        # (duplicates under two labels) tie exactly.
        values = xp.in_slices(_dot_partners(xp), a[None], c[None], picks)[0]
    else:  # the scores are the distances themselves
        values = xp.stack([score for _, score in found])[0]
    has_pos, has_neg, picks = has_pos[0], has_neg[0], picks[0]
    max_pos = xp.where(has_pos, values[:, 0], -_INF)
    min_neg = xp.where(has_neg, values[:, 1], _INF)
    if distance.is_similarity:
        nearest_pos = max_pos
        nearest_neg = xp.where(has_neg, values[:, 2], -_INF)
        nearest_neg_index = xp.where(has_neg, picks[:, 2], -1)
    else:
        nearest_pos = xp.where(has_pos, values[:, 2], _INF)
        nearest_neg = min_neg
        nearest_neg_index = xp.where(has_neg, picks[:, 1], -1)
    return CrossStats(
        max_pos=max_pos,
        min_neg=min_neg,
        nearest_pos=nearest_pos,
        nearest_neg=nearest_neg,
        nearest_neg_index=nearest_neg_index,
    )


def _cross_listed(
    xp: Any, distance: Distance, scores: Any, pairs: Any, sign: float
) -> tuple[tuple[Any, Any], ...]:
    """:func:`cross_extremes`' three searches with the same-class pairs given
    as lists: (hardest positive, hardest negative, nearest of the other kind),
    each picks and scores."""
    far_fill, near_fill, farthest, nearest = _directions(sign)
    hardest_pos = xp.pick_among(scores, pairs, far_fill, farthest)
    if distance.is_similarity:  # the nearest negative: the most similar one
        filled = xp.fill_pairs(scores, pairs, far_fill)
        third = _search(xp, filled, None, far_fill, farthest)
    else:  # the nearest positive
        third = xp.pick_among(scores, pairs, near_fill, nearest)
    scores = xp.fill_pairs(scores, pairs, near_fill)
    hardest_neg = _search(xp, scores, None, near_fill, nearest)
    return hardest_pos, hardest_neg, third


def _mutual_scores(xp: Any, distance: Distance, a: Any, c: Any) -> tuple[Any, float]:
    """Like :func:`_scores` (``a`` and ``c`` :func:`_prepared`, ``[1, n, d]``),
    but ordered like the distances down each column as well as along each
    row: where :func:`_scores` leaves out each anchor's own constant term,
    here both rows' terms are in (``-|a - c|^2 / 2`` for the Gram forms), at
    one more pass over the scores."""
    if distance not in (Distance.EUCLIDEAN, Distance.SQUARED_EUCLIDEAN, Distance.SNR):
        return _scores(xp, distance, a, c, None)  # symmetric already
    if distance is Distance.SNR:
        a, c = _row_centred(xp, a), _row_centred(xp, c)
    shift = xp.mean(c, axis=1, keepdims=True)
    za, zc = a - shift, c - shift
    scores = xp.matmul_t(za, zc, -0.5 * xp.squared_norm(zc)[:, None, :])
    return xp.shift(scores, -0.5 * xp.squared_norm(za)[:, :, None]), -1.0


def mutual_extremes(
    distance: Distance,
    a: Any,
    a_labels: Any,
    a_ids: Any,
    c: Any,
    c_labels: Any,
    c_ids: Any,
) -> tuple[CrossStats, CrossStats]:
    """:func:`cross_extremes` both ways from one product: the anchors ``a``
    among the candidates ``c``, and the anchors ``c`` among the candidates
    ``a``. NumPy arrays only: :func:`prepared_rows`, all present (no mask),
    labels sorted, as exact mode walks them.

    Exact mode on NumPy calls this on each pair of tiles of the whole
    dataset once, rather than :func:`cross_extremes` on both orders of the
    pair: half the products, for one search down the columns of each matrix
    it fills (see ``NumpyOps.pick_columns``).
    """
    xp = namespace(a)
    scores, sign = _mutual_scores(xp, distance, a[None], c[None])
    overlap = xp.label_overlap(a_labels, c_labels)
    across = down = None
    if overlap == "mixed":
        across = xp.class_pairs(a_labels[None], c_labels[None], a_ids, c_ids)
        down = xp.class_pairs(a_labels[None], c_labels[None], a_ids, c_ids, True)
    if across is not None and down is not None:
        found = _mutual_listed(xp, distance, scores, across, down, sign)
    else:
        both = _masked_searches(
            xp,
            distance,
            scores,
            sign,
            overlap,
            (a_labels, c_labels, a_ids, c_ids),
            None,
            _search_both,
        )
        found = tuple(f[0] for f in both), tuple(f[1] for f in both)
    return (
        _cross_stats(xp, distance, a, c, found[0], sign),
        _cross_stats(xp, distance, c, a, found[1], sign),
    )


def _mutual_listed(
    xp: Any,
    distance: Distance,
    scores: Any,
    across: Any,
    down: Any,
    sign: float,
) -> tuple[tuple[tuple[Any, Any], ...], tuple[tuple[Any, Any], ...]]:
    """:func:`mutual_extremes`' searches with the same-class pairs listed by
    row (``across``) and by column (``down``): for the rows' anchors and for
    the columns' anchors, the picks and scores of the hardest positive, the
    hardest negative and the nearest of the other kind."""
    far_fill, near_fill, farthest, nearest = _directions(sign)
    columns = xp.swap_last(scores).shape[:-1]
    pos = (
        xp.pick_among(scores, across, far_fill, farthest),
        xp.pick_among(scores, down, far_fill, farthest, columns),
    )
    if distance.is_similarity:  # the nearest negative: the most similar one
        filled = xp.fill_pairs(xp.copy(scores), across, far_fill)
        third = _search_both(xp, filled, None, far_fill, farthest)
    else:  # the nearest positive
        third = (
            xp.pick_among(scores, across, near_fill, nearest),
            xp.pick_among(scores, down, near_fill, nearest, columns),
        )
    scores = xp.fill_pairs(scores, across, near_fill)
    neg = _search_both(xp, scores, None, near_fill, nearest)
    return (pos[0], neg[0], third[0]), (pos[1], neg[1], third[1])


def batch_stats(anchors: AnchorStats, mask: Any) -> BatchStats:
    """Summarise each batch: max_pos, min_neg, gap, margin and anchor counts."""
    hp, hn = anchors.hardest_pos, anchors.hardest_neg
    xp = namespace(hp)
    has_pos_pair = xp.any(anchors.has_pos)
    has_neg_pair = xp.any(anchors.has_neg)
    usable = has_pos_pair & has_neg_pair

    max_pos = xp.max(xp.where(anchors.has_pos, hp, -_INF))
    min_neg = xp.min(xp.where(anchors.has_neg, hn, _INF))
    margin = xp.where(usable, min_neg - max_pos, _NAN)
    both = anchors.has_pos & anchors.has_neg
    return BatchStats(
        max_pos=xp.where(has_pos_pair, max_pos, _NAN),
        min_neg=xp.where(has_neg_pair, min_neg, _NAN),
        gap=xp.abs(margin),
        margin=margin,
        has_pos_pair=has_pos_pair,
        has_neg_pair=has_neg_pair,
        anchors=xp.count(mask),
        anchors_with_pos=xp.count(anchors.has_pos),
        anchors_with_neg=xp.count(anchors.has_neg),
        anchors_with_both=xp.count(both),
        violations=xp.count(both & (hn < hp)),
        sum_hardest_pos=xp.total64(xp.where(anchors.has_pos, hp, 0.0)),
        sum_hardest_neg=xp.total64(xp.where(anchors.has_neg, hn, 0.0)),
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
    xp = namespace(values)
    valid = xp.any(present)
    if how in ("mean", "avg"):
        count = xp.sum(xp.as_float(present))
        total = xp.sum(xp.where(present, values, 0.0))
        value = total / xp.maximum(count, 1.0)
    elif how == "max":
        value = xp.max(xp.where(present, values, -_INF))
    elif how == "min":
        value = xp.min(xp.where(present, values, _INF))
    else:
        value = xp.sum(xp.where(present, values, 0.0))
    return xp.where(valid, value, _NAN), valid


def invalid_rows(distance: Distance, x: Any, mask: Any) -> Any:
    """``[K, B]`` booleans: rows the distance is undefined for (zero vector, zero
    variance) or that hold a non-finite value."""
    xp = namespace(x)
    bad = ~xp.all(xp.is_finite(x))
    if distance.needs_direction:
        bad |= xp.all(xp.equal(x, 0.0))
    if distance.needs_variance:
        bad |= xp.equal(xp.max(x), xp.min(x))
    return bad & mask
