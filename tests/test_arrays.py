"""The NumPy namespace's own operations against obvious loops."""

from __future__ import annotations

import numpy as np
import pytest

from distgap_cli import arrays
from distgap_cli.arrays import NUMPY as xp


def _pairs_by_loop(a_labels, c_labels):
    """(k, anchor, candidate) of every same-label pair."""
    return {
        (k, i, j)
        for k in range(a_labels.shape[0])
        for i in range(a_labels.shape[1])
        for j in range(c_labels.shape[1])
        if a_labels[k, i] == c_labels[k, j]
    }


@pytest.mark.parametrize("classes", [1, 3, 40])
def test_class_pairs_list_every_same_label_pair_once(monkeypatch, classes):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    rng = np.random.default_rng(classes)
    a_labels = np.sort(rng.integers(0, classes, (3, 17)), axis=1)
    c_labels = np.sort(rng.integers(0, classes, (3, 23)), axis=1)
    a_ids, c_ids = np.arange(5, 22), np.arange(23)
    pairs = xp.class_pairs(a_labels, c_labels, a_ids, c_ids)

    k_of, rest = np.divmod(pairs.flat, 17 * 23)
    i_of, j_of = np.divmod(rest, 23)
    got = list(zip(k_of.tolist(), i_of.tolist(), j_of.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == _pairs_by_loop(a_labels, c_labels)
    np.testing.assert_array_equal(pairs.column, j_of)
    # Grouped by anchor, in candidate order, with the right sizes.
    assert np.all(np.diff(k_of * 17 + i_of) >= 0)
    np.testing.assert_array_equal(pairs.sizes, np.bincount(k_of * 17 + i_of, None, 51))
    np.testing.assert_array_equal(pairs.itself, a_ids[i_of] == c_ids[j_of])


def test_class_pairs_decline_unsorted_labels_and_many_pairs(monkeypatch):
    sorted_labels = np.array([[0, 0, 1, 2]])
    assert (
        xp.class_pairs(sorted_labels[:, ::-1], sorted_labels, *[np.arange(4)] * 2)
        is None
    )
    # 6 same-class pairs of 16: above an eighth, masks do better.
    assert xp.class_pairs(sorted_labels, sorted_labels, *[np.arange(4)] * 2) is None
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 0.5)
    assert xp.class_pairs(sorted_labels, sorted_labels, *[np.arange(4)] * 2) is not None


@pytest.mark.parametrize("pick", ["argmax", "argmin"])
def test_pick_among_is_a_masked_argmax_without_the_anchor(monkeypatch, pick):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    rng = np.random.default_rng(1)
    labels = np.sort(rng.integers(0, 6, (4, 30)), axis=1)
    ids = np.arange(30)
    # Few distinct values, so that ties happen and must go to the first.
    scores = rng.integers(0, 4, (4, 30, 30)).astype(np.float32)
    pairs = xp.class_pairs(labels, labels, ids, ids)
    fill = -np.inf if pick == "argmax" else np.inf
    index, best = xp.pick_among(scores, pairs, fill, pick)

    for k in range(4):
        for i in range(30):
            others = [j for j in range(30) if labels[k, j] == labels[k, i] and j != i]
            if not others:
                assert best[k, i] == fill and index[k, i] == 0
                continue
            values = scores[k, i, others]
            at = int(np.argmax(values) if pick == "argmax" else np.argmin(values))
            assert (index[k, i], best[k, i]) == (others[at], values[at])


@pytest.mark.parametrize("pick", ["argmax", "argmin"])
def test_pick_among_takes_the_first_nan_as_argmax_does(monkeypatch, pick):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    labels = np.array([[0, 0, 0, 1, 1, 2, 2, 2]])
    ids = np.arange(8)
    scores = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    scores[0, 0, 2] = scores[0, 7, 5] = scores[0, 7, 6] = np.nan
    pairs = xp.class_pairs(labels, labels, ids, ids)
    fill = -np.inf if pick == "argmax" else np.inf
    index, best = xp.pick_among(scores, pairs, fill, pick)
    assert index[0, 0] == 2 and np.isnan(best[0, 0])
    assert index[0, 7] == 5 and np.isnan(best[0, 7])
    assert index[0, 3] == 4 and best[0, 3] == scores[0, 3, 4]


def test_class_pairs_of_labels_too_far_apart_to_lift(monkeypatch):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    big = 6 * 10**18
    # One batch (as exact mode's tiles): no lift is needed, the pairs are listed.
    one = np.array([[-big, -big, big, big]])
    pairs = xp.class_pairs(one, one, *[np.arange(4)] * 2)
    assert pairs is not None and pairs.flat.tolist() == [0, 1, 4, 5, 10, 11, 14, 15]
    # Several batches whose lifts would overflow int64: left to the masks.
    two = np.array([[-big, -big, big, big], [-big, 0, 0, big]])
    assert xp.class_pairs(two, two, *[np.arange(4)] * 2) is None


def test_fill_pairs_and_exclude_self_write_only_their_pairs(monkeypatch):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    labels = np.array([[0, 0, 1, 2, 2, 2]])
    ids = np.arange(6)
    filled = xp.fill_pairs(
        np.zeros((1, 6, 6)), xp.class_pairs(labels, labels, ids, ids), 1
    )
    np.testing.assert_array_equal(filled[0], labels == labels.T)

    scores = xp.exclude_self(
        np.zeros((1, 3, 5)), np.array([7, 2, -1]), np.array([2, 9, 7, 4, 0]), 1
    )
    np.testing.assert_array_equal(np.argwhere(scores[0]), [[0, 2], [1, 0]])


def test_sorting_by_label_and_back_restores_every_row():
    rng = np.random.default_rng(2)
    labels = rng.integers(-5, 300, (3, 50))
    order, codes = xp.sort_by_label(labels)
    ordered = np.take_along_axis(labels, order, axis=1)
    assert np.all(np.diff(ordered, axis=1) >= 0)
    # Codes number the classes of each batch 0, 1, ... in label order.
    for k in range(3):
        np.testing.assert_array_equal(
            codes[k], np.unique(ordered[k], return_inverse=True)[1]
        )
    values = rng.normal(size=(3, 50))
    moved = xp.permute_rows(values, order)
    positions = rng.integers(0, 50, (3, 50))
    (back,), (mapped,) = xp.unpermute(order, [moved], [positions])
    np.testing.assert_array_equal(back, values)
    # A position among the sorted rows names the same row among the original.
    want = xp.unpermute(order, [np.take_along_axis(order, positions, axis=1)], [])[0][0]
    np.testing.assert_array_equal(mapped, want)


def test_label_overlap_reads_ranges():
    assert xp.label_overlap(np.array([1, 2]), np.array([3, 4])) == "disjoint"
    assert xp.label_overlap(np.array([5, 5]), np.array([5])) == "same"
    assert xp.label_overlap(np.array([1, 3]), np.array([2, 2])) == "mixed"


@pytest.mark.parametrize(
    ("limit", "calls_wanted"),
    # An anchor at a time; five anchors; three batches; everything at once.
    [(1, 35), (40, 10), (200, 2), (1 << 30, 1)],
)
def test_in_slices_gives_the_whole_call_at_every_slicing(
    monkeypatch, limit, calls_wanted
):
    monkeypatch.setattr(arrays, "_MEASURE_VALUES", limit)
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 7, 4)).astype(np.float32)
    c = rng.normal(size=(5, 9, 4)).astype(np.float32)
    index = rng.integers(0, 9, (5, 7, 2))
    calls = []

    def measure(a, c, index):
        calls.append(a.shape[0] * a.shape[1] * index.shape[-1] * a.shape[-1])
        return xp.squared_norm(xp.differences(a, c, index))

    got = xp.in_slices(measure, a, c, index)
    want = np.sum(
        (np.take_along_axis(c[:, None], index[..., None], 2) - a[:, :, None]) ** 2, -1
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (5, 7, 2) and got.dtype == np.float32
    # Every call but a single anchor's stays within the limit.
    assert all(size <= max(limit, 2 * 4) for size in calls)
    assert len(calls) == calls_wanted


@pytest.mark.parametrize("classes", [1, 3, 40])
def test_class_pairs_down_list_each_candidates_pairs_in_the_same_layout(
    monkeypatch, classes
):
    monkeypatch.setattr(arrays, "_PAIR_SHARE", 1.0)
    rng = np.random.default_rng(classes)
    a_labels = np.sort(rng.integers(0, classes, (3, 17)), axis=1)
    c_labels = np.sort(rng.integers(0, classes, (3, 23)), axis=1)
    a_ids, c_ids = np.arange(5, 22), np.arange(23)
    down = xp.class_pairs(a_labels, c_labels, a_ids, c_ids, down=True)

    # Positions in the [3, 17, 23] scores, grouped by candidate, anchors in order.
    k_of, rest = np.divmod(down.flat, 17 * 23)
    i_of, j_of = np.divmod(rest, 23)
    got = list(zip(k_of.tolist(), i_of.tolist(), j_of.tolist(), strict=True))
    assert set(got) == _pairs_by_loop(a_labels, c_labels) and len(got) == len(set(got))
    np.testing.assert_array_equal(down.column, i_of)
    assert np.all(np.diff(k_of * 23 + j_of) >= 0)
    np.testing.assert_array_equal(down.sizes, np.bincount(k_of * 23 + j_of, None, 69))
    np.testing.assert_array_equal(down.itself, a_ids[i_of] == c_ids[j_of])
    # Searched down the columns, they pick as a masked search along axis -2.
    scores = rng.normal(size=(3, 17, 23)).astype(np.float32)
    index, best = xp.pick_among(scores, down, -np.inf, "argmax", (3, 23))
    same = (a_labels[:, :, None] == c_labels[:, None, :]) & (
        a_ids[:, None] != c_ids[None, :]
    )
    masked = np.where(same, scores, -np.inf)
    found = same.any(axis=1)
    np.testing.assert_array_equal(index[found], masked.argmax(axis=1)[found])
    np.testing.assert_array_equal(best, np.where(found, masked.max(axis=1), -np.inf))


@pytest.mark.parametrize("pick", ["argmax", "argmin"])
@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
def test_pick_columns_is_a_search_along_axis_minus_two(pick, rows):
    rng = np.random.default_rng(rows)
    scores = rng.integers(0, 5, (2, rows, 37)).astype(np.float32)  # many ties
    scores[1, rows // 2, 3] = np.nan  # the first NaN wins, as with np.argmax
    scores[0, rows - 1, 5] = np.nan
    index, best = xp.pick_columns(scores, pick)
    want = getattr(np, pick)(scores, axis=-2)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(
        best, np.take_along_axis(scores, want[:, None], 1)[:, 0]
    )
    assert index.dtype == np.int32 and index.shape == (2, 37)
