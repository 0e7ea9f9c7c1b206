"""Faults a new user ran into, each pinned by a test."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import (
    HARDNEG_X,
    HARDNEG_Y,
    ROOT,
    SAMPLE_DATA,
    write_npy_pair,
    write_parquet,
)


def _command():
    exe = ROOT / ".venv" / "bin" / "distgap"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]


@pytest.mark.parametrize(
    "name",
    ["cosine", "euclidean", "squared_euclidean", "snr", "inner_product", "manhattan"],
)
def test_values_too_large_for_float32_are_refused(cli, tmp_path, name):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 64)) * 1e18).astype(np.float32)
    emb, _ = write_npy_pair(tmp_path, x, [0, 0, 1, 1, 2, 2, 3, 3])
    out = cli("eval", emb, "-d", name)
    assert out.exit_code == 2 and out.stdout == ""
    assert "row 0" in out.stderr and "rescale" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_large_accepted_values_keep_cosine_right(cli, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 256)).astype(np.float32)
    y = [0, 0, 1, 1, 2, 2, 3, 3]
    small, _ = write_npy_pair(tmp_path, x, y, stem="small")
    big, _ = write_npy_pair(tmp_path, x * np.float32(1e14), y, stem="big")
    gaps = [
        json.loads(cli("eval", p, "-d", "cosine", "-d", "snr", "-f", "json").stdout)
        for p in (small, big)
    ]
    for a, b in zip(gaps[0]["results"], gaps[1]["results"], strict=True):
        assert b["gap"]["mean"] == pytest.approx(a["gap"]["mean"], rel=1e-4)


def test_directory_with_a_readme_reads_only_the_data(cli, tmp_path):
    folder = tmp_path / "shards"
    (folder / "part=1").mkdir(parents=True)
    write_parquet(folder / "a.parquet", HARDNEG_X, HARDNEG_Y)
    write_parquet(folder / "part=1" / "part-00000", HARDNEG_X, HARDNEG_Y)
    (folder / "README.md").write_text("# my shards\n")
    (folder / "schema.json").write_text("{}")
    (folder / "notes").write_text("plain text without a suffix")
    out = cli("eval", folder, "-d", "l2", "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert len(json.loads(out.stdout)["input"]["files"]) == 2


def test_usage_errors_are_one_line():
    for args in (
        ["eval", "x", "--no-such-flag"],
        ["eval"],
        ["evl"],
        ["eval", "x", "-b", "1"],
    ):
        out = subprocess.run(
            [*_command(), *args], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2, args
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, out.stderr)


def test_table_into_a_closed_pipe_exits_141():
    producer = subprocess.Popen(
        [*_command(), "eval", str(SAMPLE_DATA / "digits_trained.parquet"), "-d", "all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    producer.stdout.close()
    stderr = producer.stderr.read()
    assert producer.wait(timeout=300) == 141
    assert b"Traceback" not in stderr


@pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="needs the /dev/full device, whose writes fail with ENOSPC",
)
def test_full_disk_is_a_clean_error():
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [
                *_command(),
                "eval",
                str(SAMPLE_DATA / "digits_trained.parquet"),
                "-f",
                "json",
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert out.returncode == 2
    assert "No space left" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_single_class_input_says_so(cli, tmp_path):
    path = write_parquet(tmp_path / "one.parquet", HARDNEG_X, [3, 3, 3, 3])
    out = cli("eval", path, "-d", "l2", "--shuffle")
    assert out.exit_code == 2 and "single class" in out.stderr
    assert "--shuffle" not in out.stderr


def test_bad_npy_labels_name_the_labels_file(cli, tmp_path):
    emb, labels = write_npy_pair(tmp_path, HARDNEG_X, np.array([0.0, 0.5, 1.0, 1.0]))
    out = cli("eval", emb, "-d", "l2", "--labels", labels)
    assert out.exit_code == 2
    assert str(labels) in out.stderr and "row 1" in out.stderr


def test_hive_key_is_found_as_the_only_label_candidate(cli, tmp_path):
    for digit in (0, 1):
        folder = tmp_path / "hive" / f"digit={digit}"
        folder.mkdir(parents=True)
        x = HARDNEG_X[:2] if digit == 0 else HARDNEG_X[2:]
        write_parquet(folder / "part.parquet", x, [9, 9])
        # Drop the label column: the folder name is the only label.
        import pyarrow.parquet as pq

        table = pq.read_table(folder / "part.parquet").drop(["label"])
        pq.write_table(table, folder / "part.parquet")
    out = cli("eval", tmp_path / "hive", "-d", "l2", "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["gap"]["mean"] == pytest.approx(5.0)


def test_stdin_twice_and_overwriting_an_input(cli, tmp_path):
    assert "only once" in cli("eval", "-", "-").stderr
    path = write_parquet(tmp_path / "in.parquet", HARDNEG_X, HARDNEG_Y)
    before = path.read_bytes()
    out = cli("eval", path, "-d", "l2", "-f", "json", "-o", path)
    assert out.exit_code == 2 and "one of the inputs" in out.stderr
    assert path.read_bytes() == before


def test_failed_output_keeps_the_previous_report(cli, tmp_path):
    target = tmp_path / "report.json"
    target.write_text("previous report")
    out = cli("eval", tmp_path / "missing.parquet", "-o", target)
    assert out.exit_code == 2
    assert target.read_text() == "previous report"


def test_output_through_a_link_replaces_the_file_it_points_to(cli, hardneg, tmp_path):
    (tmp_path / "reports").mkdir()
    real = tmp_path / "reports" / "report.json"
    real.write_text("previous")
    real.chmod(0o640)
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    assert cli("eval", hardneg, "-d", "l2", "-f", "json", "-o", link).exit_code == 0
    assert link.is_symlink()
    assert json.loads(real.read_text())["schema"] == "distgap.eval/1"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # kept, not a private 0600


def test_new_output_file_gets_the_usual_permissions(cli, hardneg, tmp_path):
    target = tmp_path / "report.json"
    assert cli("eval", hardneg, "-d", "l2", "-f", "json", "-o", target).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def _drained_pipe(pipe):
    """A named pipe at ``pipe``, and a started thread that reads all of it into
    the list it returns beside it."""
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.append(pipe.read_bytes()), daemon=True
    )
    reader.start()
    return pipe, received, reader


def test_output_to_a_named_pipe_writes_through_it(cli, hardneg, tmp_path):
    pipe, received, reader = _drained_pipe(tmp_path / "report.pipe")
    out = cli("eval", hardneg, "-d", "l2", "-f", "json", "-o", pipe)
    reader.join(timeout=30)
    assert out.exit_code == 0
    assert stat.S_ISFIFO(pipe.stat().st_mode)  # still a pipe, not replaced by a file
    assert json.loads(received[0])["schema"] == "distgap.eval/1"


def test_output_into_a_missing_folder_says_to_create_it(cli, hardneg, tmp_path):
    out = cli("eval", hardneg, "-d", "l2", "-o", tmp_path / "no" / "report.json")
    assert out.exit_code == 2
    assert "create the folder first" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_separation_gates_leave_similarities_out_and_say_so(cli):
    # inner_product's "hardest" pairs are its easiest (TF Similarity's literal
    # reading), so its violation rate is 1.0 on well separated embeddings: a
    # gate on it would fail every build.
    trained = SAMPLE_DATA / "digits_trained.parquet"
    gates = ["--min-margin", "0", "--max-violation-rate", "0.05"]
    out = cli("eval", trained, "-d", "ip", "-d", "cosine", *gates, "-f", "json")
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    assert {g["distance"] for g in doc["gates"]} == {"cosine"}
    assert len(doc["gates"]) == 2 and all(g["passed"] for g in doc["gates"])
    ip = next(r for r in doc["results"] if r["distance"] == "inner_product")
    assert ip["violation_rate"] > 0.9  # what the gate would have failed on
    assert "--min-margin and --max-violation-rate do not gate inner_product" in (
        " ".join(out.stderr.split())
    )


def test_separation_gates_on_a_similarity_alone_are_refused(cli):
    trained = SAMPLE_DATA / "digits_trained.parquet"
    out = cli("eval", trained, "-d", "ip", "--min-gap", "0.1")
    assert out.exit_code == 2 and out.stdout == ""
    assert "--min-gap cannot gate inner_product" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_column_options_on_bare_npy_inputs_are_noted(cli, tmp_path):
    np.save(tmp_path / "x.npy", np.asarray(HARDNEG_X, np.float32))
    np.save(tmp_path / "y.npy", np.asarray(HARDNEG_Y))
    args = ("--labels", tmp_path / "y.npy", "--embedding-column", "nope")
    out = cli("eval", tmp_path / "x.npy", *args, "-d", "l2", "-f", "json")
    assert out.exit_code == 0
    assert "--embedding-column ignored: .npy files hold one array" in out.stderr
    inspected = cli("inspect", tmp_path / "x.npy", *args)
    assert inspected.exit_code == 0 and "--embedding-column ignored" in inspected.stderr


@pytest.mark.parametrize("prefix", ["f", ""])  # "": columns named 0, 1, ...
def test_embedding_column_and_prefix_together_are_refused(cli, hardneg, prefix):
    both = ("--embedding-column", "embedding", "--embedding-prefix", prefix)
    for command in ("eval", "inspect"):
        out = cli(command, hardneg, *both)
        assert out.exit_code == 2 and "give one of them" in out.stderr


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"schema": "distgap.eval/1", "results": 3}, "'results' is not a list"),
        ({"schema": "distgap.eval/1", "results": [7]}, "results[0] is not an object"),
        (
            {"schema": "distgap.eval/1", "settings": [], "results": []},
            "'settings' is not an object",
        ),
        (
            {
                "schema": "distgap.eval/1",
                "results": [{"distance": "euclidean", "gap": {"mean": "big"}}],
            },
            "results[0].gap.mean is 'big', not a number",
        ),
        ({"schema": "other/2", "results": []}, "it has schema 'other/2'"),
        ({"results": []}, "it has no 'schema' field"),
    ],
)
def test_an_edited_baseline_is_refused_in_one_line(
    cli, hardneg, tmp_path, doc, message
):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(doc))
    for out in (
        cli("eval", hardneg, "-d", "l2", "--baseline", baseline),
        cli("compare", baseline, baseline),
    ):
        assert out.exit_code == 2, out.stderr
        assert message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_one_path_for_two_outputs_is_refused(cli, hardneg, tmp_path):
    same = tmp_path / "out.json"
    out = cli("eval", hardneg, "-d", "l2", "--per-row", same, "-o", same)
    assert out.exit_code == 2 and "given for two outputs" in out.stderr
    assert not same.exists()


def test_per_row_goes_through_a_pipe(cli, hardneg, tmp_path):
    pipe, received, reader = _drained_pipe(tmp_path / "rows.pipe")
    out = cli("eval", hardneg, "-d", "l2", "--per-row", pipe, "-f", "json")
    reader.join(timeout=30)
    assert out.exit_code == 0, out.stderr
    rows = pq.read_table(pa.BufferReader(received[0]))
    assert rows.num_rows == 4 and rows.column("hardest_pos").to_pylist()[0] == 1.0


def test_a_read_only_report_is_not_replaced(cli, hardneg, tmp_path, monkeypatch):
    from distgap_cli import cli as cli_module

    target = tmp_path / "report.json"
    target.write_text("kept")
    # As root every file is writable; pretend it is not, as for anyone else.
    monkeypatch.setattr(cli_module, "_writable", lambda path: False)
    out = cli("eval", hardneg, "-d", "l2", "-o", target)
    assert out.exit_code == 2 and "it is read-only" in out.stderr
    assert target.read_text() == "kept"


def test_distances_only_the_baseline_holds_are_named(cli, hardneg, tmp_path):
    wide, narrow = tmp_path / "wide.json", tmp_path / "narrow.json"
    wide.write_text(cli("eval", hardneg, "-d", "l2", "-d", "l1", "-f", "json").stdout)
    narrow.write_text(cli("eval", hardneg, "-d", "l2", "-f", "json").stdout)
    out = cli("compare", wide, narrow, "--max-drop", "5%")
    assert out.exit_code == 0
    assert "the baseline also holds manhattan, which this report does not" in (
        out.stderr
    )
    gated = cli("eval", hardneg, "-d", "l2", "--baseline", wide, "-f", "json")
    assert "the baseline also holds manhattan" in gated.stderr
    assert cli("compare", wide, narrow, "-q").stderr == ""


def test_exact_reports_with_other_anchors_are_compared_with_a_warning(cli, tmp_path):
    x, y = np.tile(HARDNEG_X, (3, 1)), np.tile(HARDNEG_Y, 3)
    path = write_parquet(tmp_path / "h.parquet", x + np.arange(12)[:, None] * 0.01, y)
    whole, sampled = tmp_path / "whole.json", tmp_path / "sampled.json"
    exact = ("eval", path, "-d", "l2", "--mode", "exact", "-f", "json")
    whole.write_text(cli(*exact).stdout)
    sampled.write_text(cli(*exact, "--anchors", "5", "--seed", "1").stdout)
    out = cli("compare", whole, sampled)
    assert "the baseline used anchors all rows and this report 5" in out.stderr


def test_a_balanced_run_is_not_told_to_use_the_balanced_sampler(cli, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(5), 30), np.arange(100, 150)])
    x = rng.normal(size=(len(labels), 8)).astype(np.float32)
    path = write_parquet(tmp_path / "singletons.parquet", x, labels)
    balanced = ("--sampler", "balanced", "--classes-per-batch", "8")
    out = cli("eval", path, *balanced, "--examples-per-class", "4", "-f", "json")
    assert out.exit_code == 0
    said = " ".join(out.stderr.split())
    assert "leave out classes of one row, or raise --classes-per-batch" in said
    # --examples-per-class is at least 2 already: raising it cannot help.
    assert "raise --examples-per-class" not in said
    assert "try --sampler balanced" not in said
    plain = cli("eval", path, "-b", "32", "-f", "json")
    assert "try --shuffle" in plain.stderr


def test_a_line_break_in_a_label_keeps_the_markdown_table_whole(cli, tmp_path):
    labels = ["new\nline", "new\nline", "plain|pipe", "plain|pipe"]
    path = write_parquet(tmp_path / "h.parquet", HARDNEG_X, labels)
    md = cli("eval", path, "-d", "l2", "--per-class", "-f", "markdown").stdout
    rows = [line for line in md.splitlines() if line.startswith("| new")]
    assert rows and all(line.endswith("|") for line in rows)
    assert "new<br>line" in rows[0] and "plain\\|pipe" in md


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_control_characters_in_labels_are_shown_as_escapes(cli, tmp_path, fmt):
    # A label's escape sequence would colour or move the terminal, and a
    # NO_COLOR report must hold no escape bytes.
    labels = ["a\x1b[31mred", "a\x1b[31mred", "tab\tdel\x7f", "tab\tdel\x7f"]
    path = write_parquet(tmp_path / "h.parquet", HARDNEG_X, labels)
    out = cli("eval", path, "-d", "l2", "--per-class", "-f", fmt)
    assert out.exit_code == 0
    assert not any(c in out.stdout for c in "\x1b\t\x7f")
    assert "a\\x1b" in out.stdout and "tab\\tdel\\x7f" in out.stdout


def test_a_line_break_in_a_file_name_keeps_the_error_on_one_line(cli, tmp_path):
    path = tmp_path / "two\nlines.parquet"
    path.write_bytes(b"not parquet")
    out = cli("eval", path)
    assert out.exit_code == 2
    assert out.stderr.count("\n") == 1 and "two\\nlines.parquet" in out.stderr


@pytest.mark.parametrize("gate", ["--min-gap", "--min-margin"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_gates_take_finite_numbers_only(cli, hardneg, gate, value):
    out = cli("eval", hardneg, "-d", "l2", gate, value)
    assert out.exit_code == 2 and out.stdout == ""
    assert f"{gate} takes a finite number" in out.stderr


def test_csv_says_it_leaves_the_baseline_comparisons_out(cli, hardneg, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(cli("eval", hardneg, "-d", "l2", "-f", "json").stdout)
    out = cli("eval", hardneg, "-d", "l2", "-f", "csv", "--baseline", base)
    assert out.exit_code == 0 and "no baseline comparisons" in out.stderr


def test_gates_appear_in_table_and_markdown(cli, hardneg):
    md = cli("eval", hardneg, "-d", "l2", "--min-margin", "0", "-f", "markdown")
    assert md.exit_code == 1
    assert "gate --min-margin on euclidean: margin.mean -5.000000" in md.stdout
    assert "FAILED" in md.stdout


def test_reports_of_different_modes_are_not_compared(cli, hardneg, tmp_path):
    batch, whole = tmp_path / "batch.json", tmp_path / "exact.json"
    batch.write_text(cli("eval", hardneg, "-d", "l2", "-f", "json").stdout)
    whole.write_text(
        cli("eval", hardneg, "-d", "l2", "--mode", "exact", "-f", "json").stdout
    )
    out = cli("compare", batch, whole)
    assert out.exit_code == 2 and "same --mode" in out.stderr
    gated = cli("eval", hardneg, "-d", "l2", "--baseline", whole, "--max-drop", "0")
    assert gated.exit_code == 2 and "not comparable" in gated.stderr
    other_batch = cli("eval", hardneg, "-d", "l2", "-b", "3", "--baseline", batch)
    assert "batch_size" in other_batch.stderr


def test_breakdowns_in_every_format_that_can_hold_them(cli, hardneg):
    args = ("eval", hardneg, "-d", "l2", "--per-class", "--per-file")
    lines = [json.loads(x) for x in cli(*args, "-f", "jsonl").stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["result", "file", "class", "class"]
    assert {x["label"] for x in lines if x["kind"] == "class"} == {0, 1}
    md = cli(*args, "-f", "markdown").stdout
    assert "**per class, euclidean (worst first)**" in md and "**per file**" in md
    csv = cli(*args, "-f", "csv")
    assert csv.exit_code == 2 and "--per-row" in csv.stderr


def test_more_anchors_than_rows_is_no_sample(cli, hardneg):
    out = cli(
        "eval", hardneg, "-d", "l2", "--mode", "exact", "--anchors", "100", "-f", "json"
    )
    doc = json.loads(out.stdout)
    assert doc["settings"]["anchors"] is None and doc["results"][0]["anchors"] == 4
    assert "--anchors 100 is not fewer than the 4 rows" in out.stderr


def _stream(x, y) -> bytes:
    """An Arrow IPC stream of one record batch, with its end-of-stream marker."""
    column = pa.array(np.asarray(x).tolist(), pa.list_(pa.float32()))
    batch = pa.record_batch([column, pa.array(y)], names=["embedding", "label"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    return data


def _eval_stream(cli, tmp_path, data, through, *args):
    if through == "file":
        path = tmp_path / "x.arrows"
        path.write_bytes(data)
        return cli("eval", path, *args)
    return cli("eval", "-", *args, input=data)


@pytest.mark.parametrize("through", ["file", "stdin"])
@pytest.mark.parametrize("end", ["marker", "cut", "marker and more"])
def test_a_stream_cut_between_batches_is_evaluated_with_a_warning(
    cli, tmp_path, through, end
):
    # A writer that dies between two record batches leaves a readable stream
    # without Arrow's end-of-stream marker: its rows are evaluated, and the
    # user is told the stream may have been cut short. Bytes after the marker
    # are not read, and say nothing.
    data = _stream(HARDNEG_X, HARDNEG_Y)
    data = {"marker": data, "cut": data[:-8], "marker and more": data + bytes(8)}
    out = _eval_stream(cli, tmp_path, data[end], through, "-d", "l2", "-f", "json")
    assert out.exit_code == 0
    assert json.loads(out.stdout)["results"][0]["gap"]["mean"] == pytest.approx(5.0)
    assert ("end-of-stream marker" in out.stderr) is (end == "cut")


@pytest.mark.parametrize("through", ["file", "stdin"])
def test_a_cut_stream_is_named_when_it_leaves_no_gap(cli, tmp_path, through):
    # The first batch of one class came, the writer died before the next.
    data = _stream(HARDNEG_X[:2], HARDNEG_Y[:2])[:-8]
    out = _eval_stream(cli, tmp_path, data, through, "-d", "l2", "-q")
    assert out.exit_code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "single class" in lines[0]
    assert "(note: " in lines[0] and "end-of-stream marker" in lines[0]
    if through == "file":
        inspected = cli("inspect", tmp_path / "x.arrows")
        assert "end-of-stream marker" in inspected.stderr


def test_names_in_a_compared_report_cannot_break_its_output(cli, hardneg, tmp_path):
    report = json.loads(cli("eval", hardneg, "-d", "l2", "-f", "json").stdout)
    report["results"][0]["distance"] = "eu\x1bclid|ean [bold]B[/bold]"
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(report))
    markdown = cli("compare", saved, saved, "-f", "markdown").stdout
    assert "\x1b" not in markdown
    assert "| eu\\x1bclid\\|ean \\[bold\\]B\\[/bold\\] | gap |" in markdown
    # A name too wide for the table: one "statistic: value" line per figure.
    report["results"][0]["distance"] += " x" * 60
    saved.write_text(json.dumps(report))
    lines = cli("compare", saved, saved).stdout
    assert "\x1b" not in lines and "distance: eu\\x1bclid|ean [bold]B[/bold]" in lines
