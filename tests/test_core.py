"""The distance-gap core against golden values and a float64 double loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distgap_cli import arrays as array_ops
from distgap_cli import core
from distgap_cli.backend import tensorflow
from distgap_cli.distances import Distance, canonical, parse_selection, valid_names
from distgap_cli.errors import UsageError

from .conftest import HARDNEG_X, HARDNEG_Y, ROOT
from .reference import batch as reference_batch
from .reference import distance as reference_distance

tf = tensorflow()
DISTANCES = [d.value for d in Distance]
# The core runs on NumPy arrays (the command line on the CPU) and on TensorFlow
# tensors (the Keras metrics, a GPU); the same tests hold for both.
LIBRARIES = ("numpy", "tensorflow")


def run(name, labels, embeddings, mask=None, library="numpy"):
    """One batch through the core; returns per-anchor and batch results as numpy."""
    x = np.asarray(embeddings, dtype=np.float32)[None]
    y = np.asarray(labels, dtype=np.int64).reshape(1, -1)
    m = np.ones(y.shape, bool) if mask is None else np.asarray(mask, bool)[None]
    if library == "tensorflow":
        y, x, m = tf.constant(y), tf.constant(x), tf.constant(m)
    # NaN stands for "no such pair"; the command's runner quiets NumPy the same way.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        anchors = core.anchor_stats(canonical(name), y, x, m)
        stats = core.batch_stats(anchors, m)
    out = {k: np.asarray(v)[0] for k, v in stats._asdict().items()}
    out.update({k: np.asarray(v)[0] for k, v in anchors._asdict().items()})
    return out


def _reference_cases():
    """Golden batches computed by TensorFlow Similarity 0.17.1 (see the README
    beside the file)."""
    path = ROOT / "tests" / "golden" / "tfsim" / "tfsim_gap_cases.json"
    return json.loads(path.read_text())["cases"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_reference_cases_match_exact_and_tfsim(library):
    cases = _reference_cases()
    assert len(cases) == 60
    for case in cases:
        got = run(case["distance"], case["labels"], case["embeddings"], library=library)
        exact = case["exact"]
        big = case["scale"] == "big" and canonical(case["distance"]) in (
            Distance.EUCLIDEAN,
            Distance.SQUARED_EUCLIDEAN,
        )
        rtol = 1e-4 if big else 1e-5
        mean_pos = got["sum_hardest_pos"] / got["anchors_with_pos"]
        mean_neg = got["sum_hardest_neg"] / got["anchors_with_neg"]
        for key, value in [
            ("max_pos", got["max_pos"]),
            ("min_neg", got["min_neg"]),
            ("gap", got["gap"]),
            ("margin", got["margin"]),
            ("mean_hardest_pos", mean_pos),
            ("mean_hardest_neg", mean_neg),
        ]:
            assert value == pytest.approx(exact[key], rel=rtol, abs=1e-7), (
                case["id"],
                key,
            )
        assert got["anchors_with_pos"] == exact["anchors_with_pos"]
        assert got["anchors_with_neg"] == exact["anchors_with_neg"]
        if case["tfsim_agrees"]:
            # TF Similarity's own float32 Gram form is off by ~1e-7 absolute on
            # tiny squared distances between unit vectors; compare with that slack.
            for key in ("max_pos", "min_neg", "gap"):
                assert got[key] == pytest.approx(
                    case["tfsim_0_17_1"][key], rel=1e-5, abs=1e-6
                ), (case["id"], key)


@pytest.mark.parametrize("name", DISTANCES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_matches_double_loop_on_random_batches(library, name):
    rng = np.random.default_rng(7)
    for trial in range(4):
        n, d = rng.integers(3, 40), rng.integers(2, 20)
        x = rng.normal(size=(n, d)) * (10.0 ** rng.integers(-1, 3))
        x = x.astype(np.float32)
        y = rng.integers(0, max(2, n // 3), size=n)
        want = reference_batch(name, y, x.astype(np.float64))
        got = run(name, y, x, library=library)
        for key in ("max_pos", "min_neg", "gap", "margin"):
            if math.isnan(want[key]):
                assert math.isnan(got[key]), (trial, key)
            else:
                assert got[key] == pytest.approx(want[key], rel=2e-5, abs=1e-5)
        np.testing.assert_allclose(
            got["hardest_pos"], want["hardest_pos"], rtol=2e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            got["hardest_neg"], want["hardest_neg"], rtol=2e-5, atol=1e-5
        )
        # Violations compare two float values; near-ties may fall either way.
        hp, hn = np.array(want["hardest_pos"]), np.array(want["hardest_neg"])
        both = ~np.isnan(hp) & ~np.isnan(hn)
        slack = 1e-5 * np.maximum(np.abs(hp[both]), 1.0)
        strict = int((hn[both] < hp[both] - slack).sum())
        loose = int((hn[both] < hp[both] + slack).sum())
        assert strict <= got["violations"] <= loose


# Shared case C1: the hardest negative is a minimum.
@pytest.mark.parametrize(
    "name, max_pos, min_neg, gap",
    [
        ("euclidean", 7, 2, 5),
        ("squared_euclidean", 49, 4, 45),
        ("manhattan", 7, 2, 5),
    ],
)
@pytest.mark.parametrize("library", LIBRARIES)
def test_c1_hardest_negative_is_minimum(library, name, max_pos, min_neg, gap):
    got = run(name, HARDNEG_Y, HARDNEG_X, library=library)
    assert got["max_pos"] == pytest.approx(max_pos)
    assert got["min_neg"] == pytest.approx(min_neg)
    assert got["gap"] == pytest.approx(gap)
    assert got["margin"] == pytest.approx(-gap)


# Shared case C2: no number for a batch without positives or negatives.
@pytest.mark.parametrize(
    "labels, has_pos, has_neg",
    [([0, 0, 0, 0], True, False), ([0, 1, 2, 3], False, True)],
)
@pytest.mark.parametrize("name", DISTANCES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_c2_degenerate_batches_have_no_gap(library, name, labels, has_pos, has_neg):
    x = [[0.5, 0.1], [1, 0.2], [0.3, 1], [1, 1]]
    got = run(name, labels, x, library=library)
    assert bool(got["has_pos_pair"]) is has_pos
    assert bool(got["has_neg_pair"]) is has_neg
    assert math.isnan(got["gap"]) and math.isnan(got["margin"])
    if not has_pos:
        assert math.isnan(got["max_pos"])
        assert np.isnan(got["hardest_pos"]).all()
    if not has_neg:
        assert math.isnan(got["min_neg"])
        assert np.isnan(got["hardest_neg"]).all()


# Shared case C4: true cosine distance on raw rows.
@pytest.mark.parametrize("library", LIBRARIES)
def test_c4_cosine_on_raw_rows_is_scale_free(library):
    x = np.array([[1, 0], [0.8, 0.6], [0, 0.5], [-0.6, 0.8]])
    got = run("cosine", [0, 0, 1, 1], x, library=library)
    assert got["max_pos"] == pytest.approx(0.2, abs=1e-6)
    assert got["min_neg"] == pytest.approx(0.4, abs=1e-6)
    assert got["gap"] == pytest.approx(0.2, abs=1e-6)
    scaled = x * np.array([[3.0], [0.01], [250.0], [1.0]])
    assert run("cosine", [0, 0, 1, 1], scaled, library=library)["gap"] == pytest.approx(
        0.2, abs=1e-6
    )


# Shared case C5: cancellation in float32 distances.
C5_A = [61.221637725830078125, 71.60662841796875, -65.7512664794921875]
C5_B = [61.221637725830078125, 71.60894012451171875, -65.72847747802734375]


def c5_rows():
    a, b = np.array(C5_A, np.float32), np.array(C5_B, np.float32)
    half = np.array([0, 0, 0.5], np.float32)
    return np.stack([a, b, a + half, b + half, a.copy()]), [0, 0, 1, 1, 0]


@pytest.mark.parametrize(
    "name, max_pos, min_neg, gap",
    [
        ("euclidean", 0.0229060, 0.4772166, 0.4543106),
        ("squared_euclidean", None, None, 0.2272110),
        ("manhattan", None, None, 0.4544220),
    ],
)
@pytest.mark.parametrize("library", LIBRARIES)
def test_c5_no_cancellation(library, name, max_pos, min_neg, gap):
    x, y = c5_rows()
    got = run(name, y, x, library=library)
    assert got["gap"] == pytest.approx(gap, abs=1e-5)
    if max_pos is not None:
        assert got["max_pos"] == pytest.approx(max_pos, abs=1e-5)
        assert got["min_neg"] == pytest.approx(min_neg, abs=1e-5)
    for key in ("hardest_pos", "hardest_neg", "easiest_pos", "mean_pos", "mean_neg"):
        assert np.isfinite(got[key]).all()
        assert (got[key] >= 0).all()


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("library", LIBRARIES)
def test_snr_of_rows_far_from_zero(library, full):
    # Values near 3e4 varying by 1e-2: a float32 row mean is off by about as
    # much as the spread, which once put snr figures 2 % off.
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(64, 16)) * 1e-2 + 3e4).astype(np.float32)
    y = rng.integers(0, 6, 64)
    want = reference_batch("snr", y, x.astype(np.float64))
    args = (y.reshape(1, -1), x[None], np.ones((1, 64), bool))
    if library == "tensorflow":
        args = tuple(tf.constant(a) for a in args)
    with np.errstate(divide="ignore", invalid="ignore"):
        anchors = core.anchor_stats(Distance.SNR, *args, full=full)
    got = core.batch_stats(anchors, args[2])
    assert float(np.asarray(got.max_pos)[0]) == pytest.approx(want["max_pos"], rel=1e-4)
    assert float(np.asarray(got.min_neg)[0]) == pytest.approx(want["min_neg"], rel=1e-4)


def test_pairwise_never_negative_and_self_distance_zero():
    x, _ = c5_rows()
    mask = tf.ones((1, 5), tf.bool)
    for name in ("euclidean", "squared_euclidean", "cosine", "snr", "manhattan"):
        matrix = core.pairwise(canonical(name), tf.constant(x[None]), mask).numpy()[0]
        assert np.isfinite(matrix).all() and (matrix >= 0).all(), name


@pytest.mark.parametrize("library", LIBRARIES)
def test_snr_near_duplicates_are_guarded(library):
    rng = np.random.default_rng(3)
    base = (rng.normal(size=16) * 50 + 300).astype(np.float32)
    x = np.stack([base, base + 1e-3, base + rng.normal(size=16).astype(np.float32)])
    got = run("snr", [0, 0, 1], x, library=library)
    want = reference_batch("snr", [0, 0, 1], x.astype(np.float64))
    assert got["max_pos"] == pytest.approx(want["max_pos"], rel=1e-3, abs=1e-12)
    assert got["min_neg"] == pytest.approx(want["min_neg"], rel=1e-5)


# Shared case C12: the abs() hides overlap.
@pytest.mark.parametrize("library", LIBRARIES)
def test_c12_margin_shows_overlap(library):
    rows = np.array(
        [[0.5, 1, 0.5], [0.2, 0.8, 0.4], [0.66, 0.5, 0.34], [0.77, 0.9, 0.92]]
    )
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    got = run("cosine", [1, 1, 2, 2], rows, library=library)
    assert got["max_pos"] == pytest.approx(0.0532150, abs=1e-6)
    assert got["min_neg"] == pytest.approx(0.0499945, abs=1e-6)
    assert got["gap"] == pytest.approx(0.0032204, abs=1e-6)
    assert got["margin"] == pytest.approx(-0.0032204, abs=1e-6)


@pytest.mark.parametrize("library", LIBRARIES)
def test_mask_leaves_rows_out_as_anchors_and_candidates(library):
    x = np.array([[0.0], [1.0], [3.0], [10.0], [2.5]], np.float32)
    y = [0, 0, 1, 1, 0]
    got = run("euclidean", y, x, mask=[True, True, True, True, False], library=library)
    assert got["gap"] == pytest.approx(5.0)
    assert math.isnan(got["hardest_pos"][4])
    assert got["anchors"] == 4


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("name", DISTANCES)
@pytest.mark.parametrize("sliced", [False, True])
def test_hardest_only_with_rows_left_out_matches_double_loop(
    monkeypatch, library, name, sliced
):
    # The command line's path (full=False), with masked rows placed where they
    # would otherwise be the hardest pairs, whole and a few anchors at a time.
    if sliced:
        monkeypatch.setattr(array_ops, "_ANCHOR_PAIRS", 2 * 24)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 24, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=(2, 24))
    mask = rng.random((2, 24)) > 0.3
    # Left out: far rows in the first batch (they would be the hardest
    # positives), near copies of a kept row in the second (hardest negatives).
    x[0, ~mask[0]] *= 4.0
    x[1, ~mask[1]] = x[1, np.argmax(mask[1])] + 1e-3
    args = (y, x, mask)
    if library == "tensorflow":
        args = tuple(tf.constant(a) for a in args)
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN: no such pair
        anchors = core.anchor_stats(canonical(name), *args, full=False)
    for k in range(2):
        want = reference_batch(name, y[k], x[k].astype(np.float64), mask[k])
        for field in ("hardest_pos", "hardest_neg"):
            got = np.asarray(getattr(anchors, field))[k]
            np.testing.assert_allclose(got, want[field], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("tile", [1, 3, 64, 1 << 18])
def test_manhattan_tiles_match_untiled(monkeypatch, library, tile):
    # 64 values: several anchors a tile; 3 (under one row of 5): candidates
    # tiled too, one anchor a tile; 1: one value a tile.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 37, 5)).astype(np.float32)
    want = np.abs(x[:, :, None, :] - x[:, None, :, :]).sum(-1)
    monkeypatch.setattr(array_ops, "_TILE_ELEMENTS", tile)
    monkeypatch.setattr(array_ops, "_BUFFER_ELEMENTS", tile)
    mask = np.ones((2, 37), bool)
    if library == "tensorflow":
        x, mask = tf.constant(x), tf.constant(mask)
    got = core.pairwise(Distance.MANHATTAN, x, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_manhattan_of_anchors_against_other_candidates():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 4, 6)).astype(np.float32)
    c = rng.normal(size=(3, 9, 6)).astype(np.float32)
    want = np.abs(a[:, :, None, :] - c[:, None, :, :]).sum(-1)
    np.testing.assert_allclose(array_ops.NumpyOps().manhattan(a, c), want, rtol=1e-6)
    empty = array_ops.NumpyOps().manhattan(a[:, :0], c)
    assert empty.shape == (3, 0, 9)


def test_float16_input_is_computed_in_float32():
    x = HARDNEG_X.astype(np.float16)
    anchors = core.anchor_stats(
        Distance.EUCLIDEAN,
        tf.constant(HARDNEG_Y[None]),
        tf.constant(x[None]),
        tf.ones((1, 4), tf.bool),
    )
    assert anchors.hardest_pos.dtype == tf.float32


# Properties.
label_lists = st.lists(st.integers(0, 3), min_size=2, max_size=12)


def _embeddings(n, d=3):
    return arrays(
        np.float32,
        (n, d),
        elements=st.floats(-10, 10, width=32).filter(lambda v: abs(v) > 1e-3),
    )


@settings(max_examples=25, deadline=None)
@given(data=st.data(), labels=label_lists)
def test_renaming_labels_changes_nothing(data, labels):
    x = data.draw(_embeddings(len(labels)))
    renamed = [{0: 7, 1: -3, 2: 100, 3: 5}[v] for v in labels]
    a, b = run("euclidean", labels, x), run("euclidean", renamed, x)
    np.testing.assert_array_equal(a["hardest_pos"], b["hardest_pos"])
    np.testing.assert_array_equal(a["gap"], b["gap"])


@settings(max_examples=25, deadline=None)
@given(data=st.data(), labels=label_lists)
def test_row_order_within_a_batch_changes_nothing(data, labels):
    x = data.draw(_embeddings(len(labels)))
    perm = np.random.default_rng(len(labels)).permutation(len(labels))
    a = run("manhattan", labels, x)
    b = run("manhattan", np.array(labels)[perm], x[perm])
    assert np.allclose(a["gap"], b["gap"], rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(
        a["hardest_neg"][perm], b["hardest_neg"], rtol=1e-5, atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(data=st.data(), labels=label_lists, scale=st.floats(0.01, 100))
def test_cosine_ignores_positive_scaling(data, labels, scale):
    x = data.draw(_embeddings(len(labels)))
    a = run("cosine", labels, x)
    b = run("cosine", labels, x * np.float32(scale))
    assert np.allclose(a["gap"], b["gap"], atol=1e-5, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(), labels=label_lists, name=st.sampled_from(["euclidean", "manhattan"])
)
def test_translation_changes_nothing(data, labels, name):
    x = data.draw(_embeddings(len(labels)))
    shift = np.array([250.0, -75.5, 1000.0], np.float32)
    a = run(name, labels, x)
    b = run(name, labels, x + shift)
    assert np.allclose(a["gap"], b["gap"], rtol=1e-4, atol=2e-3, equal_nan=True)


def test_distance_names_and_aliases():
    assert canonical("L2") is Distance.EUCLIDEAN
    assert canonical("SQL2") is Distance.SQUARED_EUCLIDEAN
    assert canonical("taxicab") is Distance.MANHATTAN
    assert canonical("signal-to-noise-ratio") is Distance.SNR
    assert canonical("InnerProductSimilarity") is Distance.INNER_PRODUCT
    assert canonical("CosineDistance") is Distance.COSINE
    assert parse_selection(["all"]) == list(Distance)
    assert parse_selection(["l2", "euclidean", "cosine"]) == [
        Distance.EUCLIDEAN,
        Distance.COSINE,
    ]
    assert "pythagorean" in valid_names()
    with pytest.raises(UsageError, match="cosine, euclidean"):
        canonical("hamming")


@pytest.mark.parametrize("name", DISTANCES)
@pytest.mark.parametrize("share", [0.0, 1.0], ids=["masks", "pair-lists"])
def test_pair_lists_and_masks_both_match_double_loop(monkeypatch, name, share):
    # NumPy searches the positives through same-class pair lists when they are
    # few and through masks otherwise; force each way on batches of many small
    # classes, a few large ones, and classes of one row.
    monkeypatch.setattr(array_ops, "_PAIR_SHARE", share)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 30, 5)).astype(np.float32)
    y = np.stack([rng.integers(0, 15, 30), rng.integers(0, 3, 30), np.arange(30)])
    y[2, :4] = 7  # one class of four among singletons
    mask = np.ones((3, 30), bool)
    anchors = core.anchor_stats(canonical(name), y, x, mask, full=False)
    for k in range(3):
        want = reference_batch(name, y[k], x[k].astype(np.float64))
        for field in ("hardest_pos", "hardest_neg"):
            got = np.asarray(getattr(anchors, field))[k]
            np.testing.assert_allclose(got, want[field], rtol=2e-5, atol=1e-5)
        # The index names a negative at the hardest negative's distance.
        for i, j in enumerate(anchors.hardest_neg_index[k]):
            if np.isnan(want["hardest_neg"][i]):
                assert j == -1
            else:
                assert y[k, j] != y[k, i]
                value = reference_distance(name, x[k, i], x[k, j])
                assert value == pytest.approx(
                    want["hardest_neg"][i], rel=2e-5, abs=1e-5
                )


@pytest.mark.parametrize("distance", list(Distance))
@pytest.mark.parametrize(
    "kind", ["dense classes", "sparse classes", "disjoint", "one class", "listed"]
)
def test_mutual_extremes_are_cross_extremes_both_ways(monkeypatch, distance, kind):
    rng = np.random.default_rng(7)
    a = (rng.normal(size=(70, 5)) + 3).astype(np.float32)
    c = (rng.normal(size=(50, 5)) + 3).astype(np.float32)
    labels = {
        "dense classes": (rng.integers(0, 6, 70), rng.integers(0, 6, 50)),
        "sparse classes": (rng.integers(0, 60, 70), rng.integers(0, 60, 50)),
        "disjoint": (rng.integers(0, 5, 70), rng.integers(10, 15, 50)),
        "one class": (np.full(70, 3), np.full(50, 3)),
        "listed": (rng.integers(0, 6, 70), rng.integers(0, 6, 50)),
    }[kind]
    if kind == "listed":  # many pairs, searched through the lists anyway
        monkeypatch.setattr(array_ops, "_PAIR_SHARE", 1.0)
    a_labels, c_labels = np.sort(labels[0]), np.sort(labels[1])
    a_ids, c_ids = np.arange(70), np.arange(70, 120)
    across, down = core.mutual_extremes(
        distance,
        core.prepared_rows(distance, a),
        a_labels,
        a_ids,
        core.prepared_rows(distance, c),
        c_labels,
        c_ids,
    )
    for got, want in (
        (
            across,
            core.cross_extremes(
                distance, a, a_labels, a_ids, c, c_labels, c_ids, np.ones(50, bool)
            ),
        ),
        (
            down,
            core.cross_extremes(
                distance, c, c_labels, c_ids, a, a_labels, a_ids, np.ones(70, bool)
            ),
        ),
    ):
        for name in want._fields:
            np.testing.assert_allclose(
                getattr(got, name),
                getattr(want, name),
                rtol=1e-5,
                atol=1e-6,
                err_msg=name,
            )
