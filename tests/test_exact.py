"""Exact mode, per-class, per-file and per-row breakdowns against brute force."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from distgap_cli import exact
from distgap_cli.distances import Distance

from .conftest import HARDNEG_X, HARDNEG_Y, SAMPLE_DATA, write_parquet
from .reference import matrix

DISTANCES = [d.value for d in Distance]


def brute(name, x, y):
    """Per-row hardest pairs, nearest negative and precision@1 over all rows."""
    d = matrix(name, x)
    n = len(y)
    same = y[:, None] == y[None, :]
    pos = same & ~np.eye(n, dtype=bool)
    neg = ~same
    hp = np.where(pos.any(1), np.where(pos, d, -np.inf).max(1), np.nan)
    hn = np.where(neg.any(1), np.where(neg, d, np.inf).min(1), np.nan)
    if name == "inner_product":
        near_pos = np.where(pos, d, -np.inf).max(1)
        near_neg = np.where(neg, d, -np.inf).max(1)
        hit = pos.any(1) & (~neg.any(1) | (near_pos > near_neg))
        nearest_row = np.where(neg, d, -np.inf).argmax(1)
    else:
        near_pos = np.where(pos, d, np.inf).min(1)
        near_neg = np.where(neg, d, np.inf).min(1)
        hit = pos.any(1) & (~neg.any(1) | (near_pos < near_neg))
        nearest_row = np.where(neg, d, np.inf).argmin(1)
    both = ~np.isnan(hp) & ~np.isnan(hn)
    margins = (hn - hp)[both]
    return {
        "hp": hp,
        "hn": hn,
        "hit": hit,
        "nearest_row": nearest_row,
        "max_pos": np.nanmax(hp),
        "min_neg": np.nanmin(hn),
        "violation_rate": (margins < 0).mean(),
        "precision_at_1": hit.mean(),
        "median_margin": np.percentile(margins, 50),
    }


@pytest.fixture
def blobs(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 90)
    y[0] = 99  # a class with a single member: no positive
    x = (rng.normal(size=(90, 6)) + y[:, None] % 5 + 20).astype(np.float32)
    return write_parquet(tmp_path / "blobs.parquet", x, y), x, y


@pytest.mark.parametrize("limit", ["rows", "values"])
@pytest.mark.parametrize("name", DISTANCES)
def test_exact_matches_brute_force(cli, blobs, monkeypatch, name, limit):
    # Tiles of 16 anchors and 32 candidates, or tiles cut by the dimension:
    # 6-value rows, 60 values a tile, 10 rows.
    path, x, y = blobs
    if limit == "rows":
        monkeypatch.setattr(exact, "ANCHOR_TILE", 16)
        monkeypatch.setattr(exact, "CANDIDATE_TILE", 32)
        monkeypatch.setattr(exact, "MUTUAL_TILE", 22)
    else:
        monkeypatch.setattr(exact, "_TILE_VALUES", 60)
    rows = path.parent / "rows.parquet"
    out = cli(
        "eval", path, "-d", name, "--mode", "exact", "-f", "json", "--per-row", rows
    )
    assert out.exit_code == 0, out.stderr
    got = json.loads(out.stdout)["results"][0]
    want = brute(name, x.astype(np.float64), y)
    for key in ("max_pos", "min_neg", "violation_rate", "precision_at_1"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert got["gap"] == pytest.approx(abs(want["min_neg"] - want["max_pos"]), rel=1e-5)
    assert got["margin_percentiles"]["p50"] == pytest.approx(
        want["median_margin"], rel=1e-4, abs=1e-5
    )
    assert got["anchors_without_positive"] == 1

    table = pq.read_table(rows).to_pydict()
    # Rows without a positive have a null hardest_pos in the file.
    hp = np.array(table["hardest_pos"], dtype=float)
    hn = np.array(table["hardest_neg"], dtype=float)
    np.testing.assert_allclose(hp, want["hp"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hn, want["hn"], rtol=1e-5, atol=1e-6)
    assert table["row"] == list(range(90))
    assert table["nearest_neighbour_same_label"] == list(want["hit"])
    agree = np.array(table["nearest_negative_row"]) == want["nearest_row"]
    assert agree.mean() > 0.97  # ties may pick another row at the same distance


def test_tiles_shrink_with_the_dimension_and_the_data():
    assert exact.tile_rows(128) == (exact.ANCHOR_TILE, exact.CANDIDATE_TILE)
    assert exact.tile_rows(2048) == (1024, 2048)
    assert exact.tile_rows(200_000) == (20, 20)
    assert exact.tile_rows(10_000_000) == (1, 1)
    assert exact.tile_rows(128, rows=90) == (90, 90)
    # A tile holds at most the budget, whatever the dimension.
    for dim in (1, 127, 4097, 65_536, 200_000):
        a, c = exact.tile_rows(dim)
        assert max(a, c) * dim <= max(exact._TILE_VALUES, dim)
        assert exact.mutual_rows(dim) * dim <= max(exact._TILE_VALUES, dim)
    # Square tiles for every row an anchor: never a row of 2^k values.
    assert exact.mutual_rows(128) == exact.MUTUAL_TILE
    assert exact.mutual_rows(4096) == 1008
    assert exact.mutual_rows(128, rows=90) == 90


def test_one_batch_covering_everything_agrees_with_exact(cli, blobs):
    path, _, _ = blobs
    for name in ("cosine", "euclidean", "snr"):
        batch = json.loads(
            cli("eval", path, "-d", name, "-b", "90", "-f", "json").stdout
        )["results"][0]
        whole = json.loads(
            cli("eval", path, "-d", name, "--mode", "exact", "-f", "json").stdout
        )["results"][0]
        assert whole["gap"] == pytest.approx(batch["gap"]["mean"], rel=1e-6)
        assert whole["margin"] == pytest.approx(batch["margin"]["mean"], rel=1e-6)
        assert whole["violation_rate"] == pytest.approx(batch["violation_rate"])
        for key in ("mean_hardest_pos", "mean_hardest_neg"):
            assert whole[key] == pytest.approx(batch[key], rel=1e-6)


def test_sampled_anchors_and_spilling(cli, blobs, monkeypatch):
    path, x, y = blobs
    monkeypatch.setattr(exact, "CANDIDATE_TILE", 32)
    args = ("eval", path, "-d", "l2", "--mode", "exact", "-f", "json")
    out = cli(*args, "--anchors", "20", "--seed", "3", "--memory-limit", "1K")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["settings"]["anchors"] == 20 and doc["settings"]["seed"] == 3
    assert doc["results"][0]["anchors"] == 20
    chosen = exact.choose_anchors(90, 20, 3)
    want = brute("euclidean", x.astype(np.float64), y)
    hit = want["hit"][chosen].mean()
    assert doc["results"][0]["precision_at_1"] == pytest.approx(hit)
    again = cli(*args, "--anchors", "20", "--seed", "3")
    assert again.stdout == out.stdout


def test_precision_gate_and_exact_usage_errors(cli, blobs):
    path, _, _ = blobs
    passed = cli("eval", path, "--mode", "exact", "--min-precision-at-1", "0.1")
    assert passed.exit_code == 0
    failed = cli("eval", path, "--mode", "exact", "--min-precision-at-1", "0.9999")
    assert failed.exit_code == 1
    assert "--min-precision-at-1 on cosine: precision_at_1" in failed.stderr
    for args, message in [
        (["--mode", "exact", "-b", "8"], "--batch-size has no meaning"),
        (["--mode", "exact", "--shuffle"], "--shuffle has no meaning"),
        (["--anchors", "5"], "need --mode exact"),
        (["--min-precision-at-1", "0.5"], "needs --mode exact"),
        (["--top", "3"], "--top needs --per-class"),
        (["--mode", "exact", "--memory-limit", "lots"], "expected a size"),
        (["--mode", "exact", "--memory-limit", "nan"], "expected a size"),
        (["--mode", "exact", "--memory-limit", "infG"], "expected a size"),
    ]:
        out = cli("eval", path, *args)
        assert out.exit_code == 2 and message in out.stderr, args


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 2, 3], "each of the 4 classes has a single row"),
        ([7, 7, 7, 7], "the input holds a single class"),
    ],
)
def test_exact_mode_without_any_gap_says_why(cli, tmp_path, labels, message):
    path = write_parquet(tmp_path / "x.parquet", HARDNEG_X, labels)
    out = cli("eval", path, "--mode", "exact", "-d", "l2")
    assert out.exit_code == 2 and out.stdout == ""
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# Shared case C13, second half: two files, one row each with --per-file.
@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_c13_per_file(cli, tmp_path, mode):
    first = write_parquet(tmp_path / "a.parquet", HARDNEG_X, HARDNEG_Y)
    second_x = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
    if mode == "exact":
        # Exact mode compares rows across the whole input: one dimension.
        second_x = np.array([[100.0], [102.0], [112.0], [114.0]], np.float32)
    second = write_parquet(tmp_path / "b.parquet", second_x, [0, 0, 1, 1])
    out = cli(
        "eval",
        first,
        second,
        "-d",
        "euclidean",
        "--per-file",
        "--mode",
        mode,
        "-f",
        "json",
    )
    assert out.exit_code == 0, out.stderr
    parts = json.loads(out.stdout)["per_file"]
    assert [p["file"] for p in parts] == [str(first), str(second)]
    gaps = [p["results"][0]["gap"] for p in parts]
    if mode == "batch":
        gaps = [g["mean"] for g in gaps]
    assert gaps == [pytest.approx(5.0), pytest.approx(8.0)]


def test_per_class_against_brute_force(cli, blobs):
    path, x, y = blobs
    out = cli("eval", path, "-d", "l2", "--mode", "exact", "--per-class", "-f", "json")
    classes = json.loads(out.stdout)["per_class"]["euclidean"]
    want = brute("euclidean", x.astype(np.float64), y)
    rates = [
        c["violation_rate"]
        for c in classes
        if not math.isnan(c["violation_rate"] or math.nan)
    ]
    assert rates == sorted(rates, reverse=True)
    for c in classes:
        members = y == int(c["label"])
        assert c["size"] == members.sum()
        assert c["precision_at_1"] == pytest.approx(want["hit"][members].mean())
        if members.sum() > 1:
            assert c["mean_hardest_pos"] == pytest.approx(
                np.nanmean(want["hp"][members]), rel=1e-5
            )
        neighbours = y[want["nearest_row"][members]]
        values, counts = np.unique(neighbours, return_counts=True)
        assert int(c["most_confused_with"]) in values[counts == counts.max()]
    top = cli(
        "eval", path, "--mode", "exact", "--per-class", "--top", "2", "-f", "json"
    )
    assert len(json.loads(top.stdout)["per_class"]["cosine"]) == 2


def test_per_class_in_batch_mode_names_string_labels(cli, tmp_path):
    import pyarrow as pa

    x = np.array([[0, 0], [0, 1], [5, 0], [5, 1], [0, 3], [5, 3]], np.float32)
    labels = ["cat", "cat", "dog", "dog", "cat", "dog"]
    path = tmp_path / "named.parquet"
    pq.write_table(
        pa.table(
            {"embedding": pa.array(x.tolist(), pa.list_(pa.float32())), "label": labels}
        ),
        path,
    )
    out = cli("eval", path, "-d", "l2", "--per-class", "-f", "json")
    classes = {c["label"]: c for c in json.loads(out.stdout)["per_class"]["euclidean"]}
    assert set(classes) == {"cat", "dog"}
    assert classes["cat"]["most_confused_with"] == "dog"
    assert classes["cat"]["size"] == 3
    rows = tmp_path / "rows.parquet"
    assert cli("eval", path, "-d", "l2", "--per-row", rows).exit_code == 0
    assert pq.read_table(rows).column("label").to_pylist() == labels


def test_sample_data_exact_figures(cli):
    doc = json.loads(
        cli(
            "eval",
            SAMPLE_DATA / "digits_trained.parquet",
            "--mode",
            "exact",
            "-f",
            "json",
        ).stdout
    )
    result = doc["results"][0]
    assert result["anchors"] == 1797
    assert result["precision_at_1"] == 1.0
    assert 0 < result["violation_rate"] < 0.1


@pytest.mark.parametrize("kept", [0, 1 << 28])  # tiles prepared for each pair, once
@pytest.mark.parametrize("side", [7, 16, 90])
def test_each_pair_of_tiles_once_gives_what_both_orders_give(monkeypatch, side, kept):
    """When every row is an anchor, exact mode on NumPy walks each pair of
    square tiles once and takes both tiles' extremes from one product; the
    tables must be those of the walk over every anchor tile and candidate
    tile, to the last tie."""
    rng = np.random.default_rng(side)
    y = np.concatenate([rng.integers(0, 4, 40), rng.integers(4, 40, 50)])
    x = rng.normal(size=(90, 5)).astype(np.float32) + 10
    x[3] = x[50]  # a duplicate pair: ties between rows
    rows = exact.Rows(x, y, np.arange(90), np.zeros(90, np.int32))
    everyone = np.arange(90)
    monkeypatch.setattr(exact, "ANCHOR_TILE", side)
    monkeypatch.setattr(exact, "CANDIDATE_TILE", side)
    monkeypatch.setattr(exact, "MUTUAL_TILE", side)
    monkeypatch.setattr(exact, "_KEPT_BYTES", kept)
    distances = list(Distance)
    evaluator = exact.ExactEvaluator(distances, "cpu", 5, rows=90)
    assert evaluator.on_numpy and evaluator.mutual_tile == side
    pairs = []
    both = exact.anchor_tables(rows, everyone, everyone, evaluator, pairs.append)
    assert sum(pairs) == 90 * 90
    evaluator.on_numpy = False  # the walk over anchor and candidate tiles
    walked = exact.anchor_tables(rows, everyone, everyone, evaluator)
    for distance in distances:
        for name, value in vars(walked[distance]).items():
            got = getattr(both[distance], name)
            np.testing.assert_array_equal(got, value, err_msg=f"{distance} {name}")


@pytest.mark.parametrize(("n", "side"), [(41, 20), (2001, 2000)])
def test_duplicates_under_two_labels_tie_exactly_in_inner_product(monkeypatch, n, side):
    """inner_product's values are its products; tiles of other shapes round
    them differently (a last tile of one row is a matrix-vector product), so
    they are taken again, the same way for every pair: a row whose duplicate
    sits under another label ties, and a tie is not a hit."""
    monkeypatch.setattr(exact, "MUTUAL_TILE", side)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(n, 64)) + 0.5).astype(np.float32)
    y = np.r_[np.zeros(n // 2, np.int64), np.ones(n - n // 2, np.int64)]
    x[[0, 1, n - 1]] = x[0]  # rows 0 and 1 of class 0, row n - 1 of class 1
    rows = exact.Rows(x, y, np.arange(n), np.zeros(n, np.int32))
    everyone = np.arange(n)
    evaluator = exact.ExactEvaluator([Distance.INNER_PRODUCT], "cpu", 64, rows=n)
    both = exact.anchor_tables(rows, everyone, everyone, evaluator)
    table = both[Distance.INNER_PRODUCT]
    hit = exact.view(Distance.INNER_PRODUCT, table).hit
    assert table.nearest_pos[0] == table.nearest_neg[0]
    assert table.nearest_pos[0] == pytest.approx(float(x[0] @ x[0]), rel=1e-6)
    assert not hit[0] and not hit[1] and not hit[n - 1]
    evaluator.on_numpy = False
    walked = exact.anchor_tables(rows, everyone, everyone, evaluator)
    for name, value in vars(walked[Distance.INNER_PRODUCT]).items():
        np.testing.assert_array_equal(getattr(table, name), value, err_msg=name)
