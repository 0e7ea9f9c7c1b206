"""CI gates against a baseline, compare, inspect, JSON lines and pipes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distgap_cli import report

from .conftest import HARDNEG_X, HARDNEG_Y, ROOT, SAMPLE_DATA, write_parquet

TRAINED = SAMPLE_DATA / "digits_trained.parquet"
PIXELS = SAMPLE_DATA / "digits_pixels.parquet"
SCHEMA_KEYS = ROOT / "tests" / "golden" / "schema_keys.json"


@pytest.fixture
def saved(cli, tmp_path):
    """JSON reports of the pixels and of the trained embeddings."""
    paths = {}
    for name, source in (("pixels", PIXELS), ("trained", TRAINED)):
        out = cli("eval", source, "-f", "json")
        assert out.exit_code == 0
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(out.stdout)
    return paths


def test_jsonl_has_one_object_per_distance(cli, hardneg):
    out = cli("eval", hardneg, "-d", "l2", "-d", "l1", "-f", "jsonl", "--min-gap", "1")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["distance"] for r in lines] == ["euclidean", "manhattan"]
    assert all(r["kind"] == "result" and r["schema"] == report.SCHEMA for r in lines)
    assert lines[0]["gap"]["mean"] == pytest.approx(5.0)
    assert lines[1]["gates"][0]["distance"] == "manhattan"


def test_per_batch_streams_batches_then_results(cli, tmp_path):
    x = np.concatenate([HARDNEG_X, [[0.0], [1.0], [2.0], [3.0]]])
    y = np.concatenate([HARDNEG_Y, [0, 0, 0, 0]])
    path = write_parquet(tmp_path / "two.parquet", x, y)
    out = cli("eval", path, "-d", "euclidean", "-b", "4", "--per-batch")
    assert out.exit_code == 0
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    batches = [r for r in lines if r["kind"] == "batch"]
    assert [(b["batch"], b["first_row"], b["rows"]) for b in batches] == [
        (0, 0, 4),
        (1, 4, 4),
    ]
    assert batches[0]["gap"] == pytest.approx(5.0) and batches[0]["has_gap"]
    assert not batches[1]["has_gap"] and batches[1]["gap"] is None
    assert lines[-1]["kind"] == "result"
    usage = cli("eval", path, "--per-batch", "-f", "table")
    assert usage.exit_code == 2 and "--format jsonl" in usage.stderr


def test_baseline_gate_passes_and_fails(cli, saved):
    same = cli("eval", TRAINED, "--baseline", saved["trained"], "--max-drop", "0")
    assert same.exit_code == 0, same.stderr
    assert "baseline" in same.stdout and "change" in same.stdout
    md = cli("eval", TRAINED, "--baseline", saved["trained"], "-f", "markdown")
    lines = md.stdout.splitlines()
    at = lines.index("| margin mean | 0.116054 |")
    assert lines[at + 1 : at + 3] == [
        "| ↳ baseline | 0.116054 |",
        "| ↳ change | +0.000000 |",
    ]

    worse = cli(
        "eval", PIXELS, "--baseline", saved["trained"], "--max-drop", "5%", "-f", "json"
    )
    assert worse.exit_code == 1
    doc = json.loads(worse.stdout)
    comparisons = doc["baseline"]["comparisons"]
    failed = {c["statistic"] for c in comparisons if c["passed"] is False}
    assert failed == {"margin", "violation_rate"}
    # The pixels' gap is larger than the trained model's: never called better.
    (gap,) = [c for c in comparisons if c["statistic"] == "gap"]
    assert gap["change"] > 0 and gap["better"] is None and gap["passed"] is None
    assert "gate failed: --max-drop on cosine: margin is -0.427935" in worse.stderr


def test_baseline_without_the_distances_asked_for_is_refused(cli, saved):
    # The saved baseline holds cosine only: a manhattan run has nothing to compare.
    out = cli("eval", TRAINED, "-d", "l1", "--baseline", saved["trained"])
    assert out.exit_code == 2 and out.stdout == ""
    assert "none of the distances asked for (manhattan)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_distances_missing_from_the_baseline_are_named(cli, saved):
    out = cli(
        "eval",
        TRAINED,
        *("-d", "cosine", "-d", "l1", "-f", "json"),
        *("--baseline", saved["trained"], "--max-drop", "0"),
    )
    assert out.exit_code == 0, out.stderr
    assert "manhattan not in the baseline" in out.stderr
    comparisons = json.loads(out.stdout)["baseline"]["comparisons"]
    assert {c["distance"] for c in comparisons} == {"cosine"}


def test_a_drop_gate_with_nothing_to_compare_fails(cli, saved, tmp_path):
    empty = json.loads(Path(saved["trained"]).read_text())
    for entry in empty["results"]:
        for key in ("gap", "margin"):
            entry[key] = {k: None for k in entry[key]}
        entry["violation_rate"] = None
    hollow = tmp_path / "hollow.json"
    hollow.write_text(json.dumps(empty))
    out = cli("eval", TRAINED, "--baseline", hollow, "--max-drop", "0")
    # A gate that reads null fails: each figure is named, none passes unchecked.
    assert out.exit_code == 1
    for name in ("margin", "violation_rate"):
        assert f"gate failed: --max-drop on cosine: {name} not compared" in out.stderr
    assert "on cosine: gap" not in out.stderr  # the gap is never gated


def _edited(path, tmp_path, edit, name="edited.json"):
    """A copy of the saved report at ``path``, changed by ``edit``."""
    doc = json.loads(Path(path).read_text())
    edit(doc)
    target = tmp_path / name
    target.write_text(json.dumps(doc))
    return target


def _null_margin(doc):
    doc["results"][0]["margin"]["mean"] = None


def test_a_null_in_the_baseline_is_said_and_shown_not_compared(cli, saved, tmp_path):
    baseline = _edited(saved["trained"], tmp_path, _null_margin)
    said = "not compared: the baseline has no value for cosine margin.mean"
    out = cli("eval", TRAINED, "--baseline", baseline, "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert said in out.stderr
    comparisons = json.loads(out.stdout)["baseline"]["comparisons"]
    margin = next(c for c in comparisons if c["statistic"] == "margin")
    assert margin["baseline"] is None and margin["change"] is None
    assert margin["current"] is not None and margin["passed"] is None
    assert [c["statistic"] for c in comparisons] == ["gap", "margin", "violation_rate"]

    for args in (
        ("eval", TRAINED, "--baseline", baseline),
        ("compare", baseline, saved["trained"]),
    ):
        table = cli(*args)
        assert table.exit_code == 0 and said in table.stderr
        assert "not compared" in table.stdout
        gated = cli(*args, "--max-drop", "1%")
        assert gated.exit_code == 1
        assert "gate failed: --max-drop on cosine: margin not compared" in (
            gated.stderr
        )
        assert "not compared" in gated.stdout and "FAIL" in gated.stdout
        assert cli(*args, "-q").stderr == ""

    for fmt in ("json", "jsonl", "csv", "markdown"):
        out = cli("compare", baseline, saved["trained"], "-f", fmt, "-q")
        assert out.exit_code == 0 and "margin" in out.stdout, fmt
    doc = json.loads(cli("compare", baseline, saved["trained"], "-f", "json").stdout)
    margin = next(c for c in doc["comparisons"] if c["statistic"] == "margin")
    assert margin["baseline"] is None and margin["change"] is None
    assert margin["better"] is None


def test_a_genuine_null_loads_and_compares_what_it_can(cli, tmp_path):
    # One sampled anchor, of a class of one row: gap, margin and violation rate
    # are undefined (null) in a genuine report; precision@1 is not.
    x = np.array([[0.0], [1.0], [3.0], [10.0], [20.0]], np.float32)
    path = write_parquet(tmp_path / "single.parquet", x, [0, 0, 1, 1, 2])
    report_file = tmp_path / "sampled.json"
    made = cli(
        *("eval", path, "-d", "l2", "--mode", "exact", "--anchors", "1"),
        *("--seed", "0", "-f", "json", "-o", report_file),
    )
    assert made.exit_code == 0, made.stderr
    entry = json.loads(report_file.read_text())["results"][0]
    assert entry["margin"] is None and entry["precision_at_1"] is not None
    out = cli("compare", report_file, report_file, "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert "neither the baseline nor this report has a value" in out.stderr
    changes = {
        c["statistic"]: c["change"] for c in json.loads(out.stdout)["comparisons"]
    }
    assert changes == {
        "gap": None,
        "margin": None,
        "violation_rate": None,
        "precision_at_1": 0.0,
    }


def test_a_report_of_another_schema_version_is_refused(cli, saved, tmp_path):
    def future(doc):
        doc["schema"] = "distgap.eval/9"

    newer = _edited(saved["trained"], tmp_path, future, "newer.json")
    for out in (
        cli("compare", newer, saved["trained"]),
        cli("compare", saved["trained"], newer),
        cli("eval", TRAINED, "--baseline", newer, "--max-drop", "1%"),
    ):
        assert out.exit_code == 2 and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr
        assert "newer.json" in lines[0] and "'distgap.eval/9'" in lines[0]
        assert f"reads {report.SCHEMA!r} only" in lines[0]


@pytest.mark.parametrize(
    "edit, missing",
    [
        (lambda doc: doc.clear() or doc.update(schema=report.SCHEMA), "'results'"),
        (lambda doc: doc.pop("settings"), "'settings'"),
        (lambda doc: doc["settings"].pop("mode"), "'settings.mode'"),
        (lambda doc: doc["results"][0].pop("margin"), "results[0] (cosine)"),
        (lambda doc: doc["results"][0]["gap"].pop("mean"), "results[0].gap"),
    ],
)
def test_an_incomplete_report_is_refused(cli, saved, tmp_path, edit, missing):
    partial = _edited(saved["trained"], tmp_path, edit, "partial.json")
    for out in (
        cli("compare", partial, saved["trained"]),
        cli("eval", TRAINED, "--baseline", partial),
    ):
        assert out.exit_code == 2 and out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert "partial.json: is not a complete distgap eval report" in lines[0]
        assert missing in lines[0]
        assert "distgap eval ... -f json -o FILE" in lines[0]


def test_compare_csv_keeps_full_precision(cli, saved):
    out = cli("compare", saved["pixels"], saved["trained"], "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    as_json = cli("compare", saved["pixels"], saved["trained"], "-f", "json")
    doc = json.loads(as_json.stdout)
    for row, c in zip(rows, doc["comparisons"], strict=True):
        assert float(row["current"]) == c["current"]
        assert row["better"] in ("true", "false", "")


def test_relative_and_absolute_drops():
    base = {"results": [{"distance": "cosine", "margin": {"mean": 0.5}}]}
    new = {"results": [{"distance": "cosine", "margin": {"mean": 0.46}}]}
    rel = report.compare(new, base, report.parse_drop("10%"))["comparisons"][0]
    assert rel["allowed_drop"] == pytest.approx(0.05) and rel["passed"]
    tight = report.compare(new, base, report.parse_drop("0.01"))["comparisons"][0]
    assert tight["passed"] is False and tight["better"] is False


def test_the_gap_is_shown_but_neither_judged_nor_gated():
    # |min_neg - max_pos| grows as classes separate and as they overlap more.
    base = {"results": [{"distance": "cosine", "gap": {"mean": 0.5}}]}
    new = {"results": [{"distance": "cosine", "gap": {"mean": 0.1}}]}
    (gap,) = report.compare(new, base, report.parse_drop("0"))["comparisons"]
    assert gap["change"] == pytest.approx(-0.4)
    assert gap["better"] is None and gap["passed"] is None
    assert gap["allowed_drop"] is None
    with pytest.raises(report.UsageError):
        report.parse_drop("-1")
    with pytest.raises(report.UsageError):
        report.parse_drop("five")


def test_max_drop_needs_a_baseline(cli, hardneg):
    out = cli("eval", hardneg, "-d", "l2", "--max-drop", "0.1")
    assert out.exit_code == 2 and "--baseline" in out.stderr


def test_baseline_that_is_not_a_report(cli, hardneg, tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    out = cli("eval", hardneg, "-d", "l2", "--baseline", bogus)
    assert out.exit_code == 2 and "not a distgap report" in out.stderr
    assert out.stdout == ""


def test_compare_reports_of_no_shared_distance_is_refused(cli, saved, tmp_path):
    other = _edited(
        saved["trained"],
        tmp_path,
        lambda doc: [e.update(distance="manhattan") for e in doc["results"]],
    )
    out = cli("compare", saved["trained"], other, "--max-drop", "0")
    assert out.exit_code == 2 and out.stdout == ""
    assert "share no distance" in out.stderr


def test_compare_command(cli, saved):
    out = cli("compare", saved["pixels"], saved["trained"], "-f", "json")
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    margin = next(c for c in doc["comparisons"] if c["statistic"] == "margin")
    assert margin["better"] is True and margin["passed"] is None
    gated = cli("compare", saved["trained"], saved["pixels"], "--max-drop", "0.1")
    assert gated.exit_code == 1
    assert "FAIL" in gated.stdout and "gate failed" in gated.stderr
    md = cli("compare", saved["pixels"], saved["trained"], "-f", "markdown").stdout
    assert md.startswith("| distance | statistic | baseline |")


@pytest.mark.parametrize("width", ["40", "200"])
def test_a_gated_comparison_has_a_gate_cell_on_every_row(saved, width):
    # The gap is never gated: its row still has the gate column ("n/a"), in a
    # table, in the narrow form of a table, and in Markdown.
    from typer.testing import CliRunner

    from distgap_cli.cli import app

    runner = CliRunner(env={"COLUMNS": width, "NO_COLOR": "1"})
    args = ["compare", str(saved["trained"]), str(saved["trained"]), "--max-drop", "0"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "gap" in out.stdout and "Traceback" not in out.output
    md = runner.invoke(app, [*args, "-f", "markdown"]).stdout.splitlines()
    assert len({line.count("|") for line in md}) == 1
    (gap,) = [line for line in md if "| gap |" in line]
    assert gap.rstrip(" |").endswith("n/a")


def test_inspect(cli, tmp_path):
    x = np.array([[0, 0], [0.6, 0.8], [1, 0], [np.nan, 1], [3, 4]], np.float32)
    path = write_parquet(tmp_path / "mixed.parquet", x, [0, 0, 1, 1, 2])
    out = cli("inspect", path, "-f", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["rows_read"] == 5 and doc["rows_valid"] == 3
    assert doc["invalid"] == {"NaN or infinite value": 1, "all-zero vector (cosine)": 1}
    assert doc["dimension"] == 2 and doc["value_type"] == "float32"
    assert doc["classes"] == 3 and doc["class_sizes"]["singletons"] == 3
    assert doc["norms"]["unit_length_share"] == pytest.approx(2 / 3)
    assert doc["estimate"]["eval_seconds"] > 0 and doc["estimate"]["cpu_cores"] >= 1
    # Checked as eval checks them for the distances given: an all-zero row is
    # invalid for cosine only, a constant row for snr only.
    x = np.array([[0, 0], [1, 1], [1, 2], [2, 1], [3, 5], [1, 3], [4, 1]], np.float32)
    path = write_parquet(tmp_path / "shapes.parquet", x, [0, 0, 0, 1, 1, 0, 1])
    for distances, valid in (
        ((), 6),
        (("-d", "euclidean"), 7),
        (("-d", "snr"), 5),  # [0, 0] is constant too
        (("-d", "cosine", "-d", "snr"), 5),
    ):
        doc = json.loads(cli("inspect", path, *distances, "-f", "json").stdout)
        assert doc["rows_valid"] == valid, distances
        evaluated = cli("eval", path, *distances, "--on-invalid", "skip", "-f", "json")
        assert json.loads(evaluated.stdout)["input"]["rows"] == valid, distances
    table = cli("inspect", SAMPLE_DATA / "digits_pixels.parquet")
    assert "1797 valid of 1797 read" in table.stdout
    lines = [" ".join(line.strip("│ ").split()) for line in table.stdout.splitlines()]
    for figure in (
        "class size min │ 174",
        "class size median │ 180.5",
        "class size max │ 183",
    ):
        assert figure in lines


def test_inspect_estimates_manhattan_at_its_own_cost():
    # manhattan makes b x d absolute differences a row where the others make
    # products: 13.5 s for 1M x 128 at batch 256 on 2 cores, cosine 1.4 s.
    from distgap_cli.distances import Distance
    from distgap_cli.inspection import _STARTUP_SECONDS, estimate_seconds

    def estimate(*distances):
        return estimate_seconds(1_000_000, 128, 256, list(distances), 2)

    cosine, manhattan = estimate(Distance.COSINE), estimate(Distance.MANHATTAN)
    assert 1.0 < cosine < 2.5 and 9 < manhattan < 18
    both = estimate(Distance.COSINE, Distance.MANHATTAN)
    assert both == pytest.approx(cosine + manhattan - _STARTUP_SECONDS)


def _key_paths(value, prefix=""):
    """Every key path of a JSON document; list items share one path."""
    if isinstance(value, dict):
        paths = set()
        for key, item in value.items():
            if key == "ids":
                paths.add(f"{prefix}.{key}")
                continue
            paths |= _key_paths(item, f"{prefix}.{key}")
        return paths
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _key_paths(value[0], f"{prefix}[]")
    return {prefix}


def test_json_schema_changes_need_a_version_bump(cli, saved):
    doc = json.loads(
        cli(
            "eval",
            TRAINED,
            "-f",
            "json",
            "--min-gap",
            "0",
            "--baseline",
            saved["pixels"],
        ).stdout
    )
    versions = json.loads(SCHEMA_KEYS.read_text())["versions"]
    keys = sorted(_key_paths(doc))
    assert doc["schema"] == report.SCHEMA
    assert report.SCHEMA in versions, (
        f"{report.SCHEMA} has no recorded field list: add one to {SCHEMA_KEYS.name}"
    )
    assert keys == versions[report.SCHEMA], (
        "the JSON report's fields changed: bump report.SCHEMA, document the new "
        "version in the README and record its fields as a new entry in "
        f"{SCHEMA_KEYS.name} (earlier versions' entries stay as they are)"
    )


def _run(args, **kw):
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    return subprocess.run([*command, *args], capture_output=True, timeout=300, **kw)


@pytest.mark.slow
def test_closed_pipe_ends_quietly(tmp_path):
    rng = np.random.default_rng(0)
    path = write_parquet(
        tmp_path / "many.parquet",
        rng.normal(size=(20000, 4)),
        rng.integers(0, 50, 20000),
    )
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    producer = subprocess.Popen(
        [*command, "eval", str(path), "-b", "4", "--per-batch", "-d", "all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = producer.stdout.readline()
    producer.stdout.close()
    stderr = producer.stderr.read().decode()
    code = producer.wait(timeout=300)
    assert json.loads(first)["kind"] == "batch"
    assert code not in (0, 1), code
    assert "Traceback" not in stderr and stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_a_report_to_a_closed_stdout_ends_quietly(fmt):
    # The reader of stdout is gone before the report is written.
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    child = subprocess.Popen(
        [*command, "eval", str(SAMPLE_DATA / "digits_trained.parquet"), "-f", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(timeout=300) == 141
    assert stderr == b""


def _started_without(stream: int, *args: str) -> subprocess.CompletedProcess:
    """``distgap eval`` on the sample data, started with fd ``stream`` closed."""
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    trained = str(SAMPLE_DATA / "digits_trained.parquet")
    return subprocess.run(
        [*command, "eval", trained, *args],
        stdout=None if stream == 1 else subprocess.PIPE,
        stderr=None if stream == 2 else subprocess.PIPE,
        preexec_fn=lambda: os.close(stream),
        timeout=300,
    )


@pytest.mark.slow
def test_started_without_stdout(tmp_path):
    # `distgap eval ... >&-`: the report cannot be written, one line says so.
    out = _started_without(1, "-f", "json")
    assert out.returncode == 2
    assert out.stderr.decode().strip() == (
        "error: cannot write the report: standard output is closed"
    )
    # With --output the report does not need stdout at all.
    report = tmp_path / "report.json"
    out = _started_without(1, "-f", "json", "-o", str(report))
    assert out.returncode == 0 and out.stderr == b""
    assert json.loads(report.read_text())["schema"] == "distgap.eval/1"


@pytest.mark.slow
def test_help_to_a_closed_stdout_is_one_line():
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    out = subprocess.run(
        [*command, "--help"],
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=60,
    )
    assert out.returncode == 2
    assert (
        out.stderr.decode().strip() == "error: cannot write: standard output is closed"
    )


@pytest.mark.slow
def test_output_to_dev_stdout_appends_where_the_shell_appends(tmp_path):
    # `distgap eval ... -o /dev/stdout >> log` must not truncate the log.
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    log = tmp_path / "log"
    log.write_text("earlier line\n")
    with log.open("a") as appended:
        subprocess.run(
            [*command, "eval", str(TRAINED), "-f", "json", "-o", "/dev/stdout"],
            stdout=appended,
            check=True,
            timeout=300,
        )
    first, rest = log.read_text().split("\n", 1)
    assert first == "earlier line"
    assert json.loads(rest)["schema"] == "distgap.eval/1"


@pytest.mark.slow
def test_started_without_stderr_keeps_the_exit_codes():
    out = _started_without(2, "-f", "json")
    assert out.returncode == 0 and json.loads(out.stdout)["results"]
    assert _started_without(2, "-f", "json", "--min-margin", "1").returncode == 1


@pytest.mark.slow
def test_interrupt_exits_130_without_traceback(tmp_path):
    # About a minute of manhattan work on two cores, interrupted after six seconds.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 64)).astype(np.float32)
    path = tmp_path / "slow.embeddings.npy"
    np.save(path, x)
    np.save(tmp_path / "slow.labels.npy", rng.integers(0, 100, len(x)))
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    child = subprocess.Popen(
        [*command, "eval", str(path), "-b", "4096", "-d", "manhattan"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(6)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert b"Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code, said",
    [(signal.SIGTERM, 143, b"terminated"), (signal.SIGINT, 130, b"interrupted")],
)
def test_a_stopped_run_removes_its_temporary_files(tmp_path, signum, code, said):
    # Standard input is spooled to a temporary file and --shuffle spills the
    # rows to another; a CI job cancelled (SIGTERM) or Ctrl-C must remove both.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60_000, 64)).astype(np.float32)
    data = write_parquet(tmp_path / "slow.parquet", x, rng.integers(0, 100, len(x)))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    args = ["eval", "-", "--shuffle", "-b", "4096", "-d", "manhattan"]
    with open(data, "rb") as stdin:
        child = subprocess.Popen(
            [*command, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        deadline = time.monotonic() + 60
        while len(list(scratch.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(scratch.iterdir())) == 2  # the spool and the spill
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == code, stderr
    assert said in stderr and b"Traceback" not in stderr
    assert list(scratch.iterdir()) == []


# Writes an Arrow stream of two 4-row batches to stdout, then holds the pipe open.
_SLOW_WRITER = """
import sys, time
import pyarrow as pa
x = pa.array([[0.0], [1.0], [3.0], [10.0]], pa.list_(pa.float32()))
batch = pa.record_batch([x, pa.array([0, 0, 1, 1])], names=["embedding", "label"])
with pa.ipc.new_stream(sys.stdout.buffer, batch.schema) as writer:
    for _ in range(2):
        writer.write_batch(batch)
        sys.stdout.buffer.flush()
    time.sleep(float(sys.argv[1]))
"""


def _behind_slow_writer(args, pause):
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    writer = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(pause)], stdout=subprocess.PIPE
    )
    child = subprocess.Popen(
        [*command, "eval", "-", *args],
        stdin=writer.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer.stdout.close()
    return writer, child


@pytest.mark.slow
def test_a_slow_stream_is_evaluated_as_it_arrives():
    # --per-batch lines come while the writer still holds the pipe open.
    writer, child = _behind_slow_writer(["-b", "4", "--per-batch", "-d", "l2"], 60)
    try:
        first = json.loads(child.stdout.readline())
        assert first["kind"] == "batch" and first["gap"] == pytest.approx(5.0)
        assert writer.poll() is None  # the pipe is still open
    finally:
        writer.kill()
        child.communicate(timeout=120)


@pytest.mark.slow
def test_an_error_does_not_wait_for_a_slow_stream():
    # No GPU here (or not this many): the device error must not wait for the
    # writer, and leaving with the reader still blocked on stdin must not abort.
    writer, child = _behind_slow_writer(["-d", "l2", "--device", "gpu:99"], 60)
    start = time.perf_counter()
    _, stderr = child.communicate(timeout=120)
    elapsed = time.perf_counter() - start
    writer.kill()
    assert child.returncode == 2, stderr
    assert elapsed < 45
    assert b"gpu:99" in stderr and b"Fatal" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_no_color_and_piped_output_hold_no_escapes(hardneg):
    env = {**os.environ, "NO_COLOR": "1"}
    out = _run(["eval", str(hardneg), "-d", "l2", "--min-gap", "9"], env=env)
    assert out.returncode == 1
    assert b"\x1b" not in out.stdout and b"\x1b" not in out.stderr


@pytest.mark.slow
def test_no_color_on_a_terminal_holds_no_escapes(hardneg):
    # rich alone drops the colours under NO_COLOR but keeps bold.
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100", "TERM": "xterm"}
    child = subprocess.Popen(
        [*command, "eval", str(hardneg), "-d", "l2", "--min-gap", "9"],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # the terminal closes with the child
        while chunk := os.read(leader, 65536):
            shown += chunk
    os.close(leader)
    assert child.wait(timeout=300) == 1
    assert b"euclidean" in shown and b"\x1b" not in shown
