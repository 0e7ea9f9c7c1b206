"""``distgap eval`` end to end: formats, gates, exit codes, the sample data."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import typer

from distgap_cli import render
from distgap_cli.errors import Terminated

from .conftest import HARDNEG_X, HARDNEG_Y, ROOT, SAMPLE_DATA, write_parquet

TRAINED = SAMPLE_DATA / "digits_trained.parquet"
PIXELS = SAMPLE_DATA / "digits_pixels.parquet"
GOLDEN = ROOT / "tests" / "golden"


def as_json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_json_report_of_one_batch(cli, hardneg):
    doc = as_json(cli("eval", hardneg, "-d", "euclidean", "-d", "l1", "-f", "json"))
    assert doc["schema"] == "distgap.eval/1"
    assert [r["distance"] for r in doc["results"]] == ["euclidean", "manhattan"]
    euclid = doc["results"][0]
    assert euclid["last_gap"] == pytest.approx(5.0)
    assert euclid["gap"]["mean"] == pytest.approx(5.0)
    assert euclid["margin"]["mean"] == pytest.approx(-5.0)
    assert euclid["max_pos"]["max"] == pytest.approx(7.0)
    assert euclid["min_neg"]["min"] == pytest.approx(2.0)
    assert euclid["violation_rate"] == pytest.approx(0.25)
    assert doc["input"]["rows"] == 4 and doc["input"]["classes"] == 2
    assert doc["device"] == "/CPU:0"
    assert doc["gates"] == []


def test_json_is_byte_identical_across_runs(cli, hardneg):
    args = ("eval", hardneg, "-d", "all", "-f", "json", "--shuffle", "--seed", "3")
    assert cli(*args).stdout == cli(*args).stdout


# Shared case C2, as a stream.
def test_c2_degenerate_batch_is_skipped_and_counted(cli, tmp_path):
    x = np.concatenate([HARDNEG_X, [[0.0], [1.0], [2.0], [3.0]]])
    y = np.concatenate([HARDNEG_Y, [0, 0, 0, 0]])
    path = write_parquet(tmp_path / "stream.parquet", x, y)
    out = cli("eval", path, "-d", "euclidean", "-b", "4", "-f", "json")
    doc = as_json(out)
    result = doc["results"][0]
    assert result["batches"] == {
        "total": 2,
        "used": 1,
        "skipped": {"no_positive_pair": 0, "no_negative_pair": 1},
    }
    assert result["gap"]["mean"] == pytest.approx(5.0)
    assert result["last_gap"] == pytest.approx(5.0)
    assert "1 of 2 batches were skipped" in out.stderr
    assert "--shuffle" in out.stderr


@pytest.mark.parametrize(
    "labels, batch, says",
    [
        ([0, 0, 1, 1], "2", ["none of the 2 batch(es)", "--shuffle", "--batch-size"]),
        ([0, 1, 2, 3, 0, 1, 2, 3], "4", ["no batch had two rows", "--batch-size"]),
        ([0, 1, 2, 3], "4", ["each of the 4 classes has a single row"]),
        ([0, 0, 0, 0], "4", ["single class", "at least two classes"]),
    ],
)
def test_c2_every_batch_degenerate_is_an_error(cli, tmp_path, labels, batch, says):
    x = [[0.5, 0], [1, 0], [0, 1], [1, 1], [2, 0], [0, 2], [2, 1], [1, 2]]
    path = write_parquet(tmp_path / "degenerate.parquet", x[: len(labels)], labels)
    out = cli("eval", path, "-b", batch)
    assert out.exit_code == 2
    assert out.stdout == ""
    assert "no gap" in out.stderr
    for text in says:
        assert text in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_sorted_input_warns_and_shuffle_fixes_it(cli):
    out = cli("eval", TRAINED, "-b", "32", "-f", "json")
    assert "warning" not in out.stderr
    order = np.argsort(
        np.load(SAMPLE_DATA / "digits_trained.labels.npy"), kind="stable"
    )
    # Sorting the rows by label makes most batches single-class.
    import pyarrow.parquet as pq

    table = pq.read_table(TRAINED).take(order)
    sorted_path = SAMPLE_DATA.parent / "tests" / "_sorted.parquet"
    try:
        pq.write_table(table, sorted_path)
        warned = cli("eval", sorted_path, "-b", "32", "-f", "json")
        assert warned.exit_code == 0
        assert "batches were skipped" in warned.stderr
        assert "sorted by label; try --shuffle" in warned.stderr
        shuffled = as_json(
            cli("eval", sorted_path, "-b", "32", "-f", "json", "--shuffle")
        )
        assert shuffled["results"][0]["batches"]["used"] == math.ceil(1797 / 32)
        assert cli("eval", sorted_path, "-b", "32", "-q").stderr == ""
    finally:
        sorted_path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "gate, value, code",
    [
        ("--min-gap", "4.9", 0),
        ("--min-gap", "5.1", 1),
        ("--min-margin", "-5", 0),
        ("--min-margin", "0", 1),
        ("--max-violation-rate", "0.25", 0),
        ("--max-violation-rate", "0.2", 1),
    ],
)
def test_gates(cli, hardneg, gate, value, code):
    out = cli("eval", hardneg, "-d", "euclidean", gate, value, "-f", "json")
    assert out.exit_code == code
    doc = json.loads(out.stdout)
    assert doc["gates"][0]["passed"] is (code == 0)
    if code:
        assert f"gate failed: {gate} on euclidean" in out.stderr
        assert value in out.stderr
    else:
        assert out.stderr == ""


# Shared case C12 as a gate: the gap passes, the margin catches the overlap.
def test_c12_margin_gate_catches_overlap(cli, tmp_path):
    rows = np.array(
        [[0.5, 1, 0.5], [0.2, 0.8, 0.4], [0.66, 0.5, 0.34], [0.77, 0.9, 0.92]]
    )
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    path = write_parquet(tmp_path / "c12.parquet", rows, [1, 1, 2, 2])
    assert cli("eval", path, "--min-gap", "0.003").exit_code == 0
    failed = cli("eval", path, "--min-gap", "0.003", "--min-margin", "0")
    assert failed.exit_code == 1
    assert "--min-margin on cosine: margin.mean is -0.00322" in failed.stderr


def test_skip_hint_does_not_suggest_the_sampler_already_in_use(cli, tmp_path):
    # 100 classes of 10 rows in batches of 8: most batches have no positive pair.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 10)
    path = write_parquet(tmp_path / "x.parquet", rng.normal(size=(1000, 4)), labels)
    plain = cli("eval", path, "-b", "8", "-d", "l2", "-f", "json")
    assert "the input looks sorted by label; try --shuffle" in plain.stderr
    shuffled = cli("eval", path, "-b", "8", "-d", "l2", "-f", "json", "--shuffle")
    assert shuffled.exit_code == 0, shuffled.stderr
    assert "try --sampler balanced or a larger --batch-size" in shuffled.stderr
    assert "try --shuffle" not in shuffled.stderr


def test_csv_and_markdown(cli, hardneg):
    out = cli("eval", hardneg, "-d", "euclidean", "-d", "l1", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["distance"] for r in rows] == ["euclidean", "manhattan"]
    assert float(rows[0]["gap_mean"]) == pytest.approx(5.0)
    md = cli("eval", hardneg, "-d", "euclidean", "-f", "markdown").stdout
    assert "\n| statistic | euclidean |\n" in md
    assert "| gap mean | 5.000000 |" in md


def test_output_file(cli, hardneg, tmp_path):
    target = tmp_path / "report.json"
    out = cli("eval", hardneg, "-d", "l2", "-f", "json", "-o", target)
    assert out.exit_code == 0 and out.stdout == ""
    assert json.loads(target.read_text())["schema"] == "distgap.eval/1"


def test_output_format_follows_the_file_suffix_unless_given(cli, hardneg, tmp_path):
    report = tmp_path / "report.json"
    assert cli("eval", hardneg, "-d", "l2", "-o", report).exit_code == 0
    assert json.loads(report.read_text())["schema"] == "distgap.eval/1"
    table = tmp_path / "table.csv"
    cli("eval", hardneg, "-d", "l2", "-o", table)
    assert table.read_text().startswith("distance,")
    lines = tmp_path / "batches.jsonl"
    cli("eval", hardneg, "-d", "l2", "--per-batch", "-o", lines)
    assert all(json.loads(line) for line in lines.read_text().splitlines())
    # --per-batch streams JSON lines: a file named otherwise is refused.
    refused = cli("eval", hardneg, "--per-batch", "-o", tmp_path / "batches.json")
    assert refused.exit_code == 2 and "name the file .jsonl" in refused.stderr
    assert not (tmp_path / "batches.json").exists()
    given = tmp_path / "given.json"
    cli("eval", hardneg, "-d", "l2", "-f", "table", "-o", given)
    assert "gap mean" in given.read_text() and not given.read_text().startswith("{")
    plain = tmp_path / "report.txt"
    cli("eval", hardneg, "-d", "l2", "-o", plain)
    assert "gap mean" in plain.read_text()

    compared = tmp_path / "compare.md"
    out = cli("compare", report, report, "-o", compared)
    assert out.exit_code == 0, out.stderr
    assert compared.read_text().startswith("| distance | statistic |")
    described = tmp_path / "inspect.json"
    assert cli("inspect", hardneg, "-o", described).exit_code == 0
    assert json.loads(described.read_text())["schema"] == "distgap.inspect/1"


# Shared case C11: tables in CI logs.
def test_c11_no_number_cut_short_and_no_escapes(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)) * 123.456789
    path = write_parquet(tmp_path / "wide.parquet", x, rng.integers(0, 4, 64))
    doc = as_json(cli("eval", path, "-d", "all", "-f", "json"))
    for width in ("40", "80", "200"):
        from typer.testing import CliRunner

        from distgap_cli.cli import app

        env = {"COLUMNS": width, "NO_COLOR": "1"}
        out = CliRunner(env=env).invoke(app, ["eval", str(path), "-d", "all"])
        assert out.exit_code == 0
        assert "…" not in out.stdout and "..." not in out.stdout
        assert "\x1b" not in out.stdout
        cells = set(re.split(r"[\s│┃|:]+", out.stdout))
        for result in doc["results"]:
            for key in ("mean", "min"):
                text = f"{result['gap'][key]:.6f}"
                assert text in cells, (width, text)
        caption = " ".join(out.stdout.split())
        assert "larger is closer): taken literally as TensorFlow" in caption
    for fmt in ("json", "csv", "markdown"):
        text = cli("eval", path, "-d", "all", "-f", fmt).stdout
        assert "\x1b" not in text
        assert not set("┏━┃│└─") & set(text)


def test_inner_product_is_labelled_a_similarity(cli, hardneg):
    out = cli("eval", hardneg, "-d", "ip")
    text = " ".join(out.stdout.split())
    assert "inner_product is a similarity" in text
    assert "easiest pairs" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "hamming"], "unknown distance 'hamming'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "gpu:7"], "TensorFlow sees"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, hardneg, args, message):
    out = (
        cli("eval", hardneg, "-d", "l2", *args)
        if args[0] != "-d"
        else cli("eval", hardneg, *args)
    )
    assert out.exit_code == 2
    assert out.stdout == ""
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_a_seed_nothing_uses_is_a_warning(cli, hardneg, mode):
    # CI templates pass the same --seed to every run; it must not break one.
    out = cli("eval", hardneg, "-d", "l2", "--mode", mode, "--seed", "0")
    assert out.exit_code == 0
    assert "--seed has no effect here" in out.stderr
    quiet = cli("eval", hardneg, "-d", "l2", "--mode", mode, "--seed", "0", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_gpu_request_without_gpu(cli, hardneg):
    from distgap_cli.backend import tensorflow

    if tensorflow().config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    out = cli("eval", hardneg, "-d", "l2", "--device", "gpu")
    assert out.exit_code == 2 and "no GPU" in out.stderr


@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_tensorflow_path_matches_numpy_through_the_command(cli, mode, monkeypatch):
    # A GPU run is the core on TensorFlow; on the CPU the command uses NumPy.
    # Forcing TensorFlow on the CPU checks the GPU's code path end to end on
    # every machine, to the tolerance the README gives for --device gpu.
    from distgap_cli import backend, engine, exact

    # NumPy's exact mode in pairs of tiles (1,797 rows: four tiles), TensorFlow's
    # in anchor tiles by candidate tiles.
    monkeypatch.setattr(exact, "MUTUAL_TILE", 450)
    args = ("eval", PIXELS, "-d", "all", "-f", "json", "--mode", mode)
    on_numpy = as_json(cli(*args, "--device", "cpu"))
    runner = backend.runner

    def on_tensorflow_runner(fn, device, split, size, signature=None, library=""):
        return runner(fn, device, split, size, signature, library="tensorflow")

    monkeypatch.setattr(backend, "runner", on_tensorflow_runner)
    monkeypatch.setattr(engine, "runner", on_tensorflow_runner)
    on_tensorflow = as_json(cli(*args, "--device", "cpu"))
    _close(on_numpy, on_tensorflow, rel=1e-4, abs_=1e-5, shares=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_gpu_matches_cpu(cli, mode):
    from distgap_cli.backend import tensorflow

    if not tensorflow().config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow")
    args = ("eval", PIXELS, "-d", "all", "-f", "json", "--mode", mode)
    cpu = as_json(cli(*args, "--device", "cpu"))
    gpu = as_json(cli(*args, "--device", "gpu"))
    assert cpu["device"] == "/CPU:0" and gpu["device"] == "/GPU:0"
    # The README's promise for --device gpu: every figure within 1e-4 relative
    # (1e-5 absolute) of the CPU's, counts equal, shares of anchors within one
    # in a thousand (a near-tie may fall the other way).
    _close(cpu, gpu, rel=1e-4, abs_=1e-5, shares=1e-3, skip=(".device",))


def _close(a, b, path="", rel=1e-5, abs_=1e-6, shares=None, skip=()):
    """Two reports agree: numbers within ``rel``/``abs_`` (shares of anchors
    within ``shares`` absolute, if given), everything else equal; paths in
    ``skip`` are not compared."""
    if path in skip:
        return
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", rel, abs_, shares, skip)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]", rel, abs_, shares, skip)
    elif isinstance(a, float):
        is_share = any(n in path for n in ("violation_rate", "precision", "anchors_w"))
        if shares is not None and is_share:
            assert b == pytest.approx(a, abs=shares), path
        else:
            assert b == pytest.approx(a, rel=rel, abs=abs_), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", ["digits_pixels", "digits_trained"])
def test_golden_json_of_the_sample_data(cli, name, monkeypatch):
    monkeypatch.chdir(ROOT)
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    got = as_json(cli("eval", f"sample_data/{name}.parquet", "-d", "all", "-f", "json"))
    _close(golden, got)


@pytest.mark.parametrize("name", ["digits_pixels", "digits_trained"])
def test_golden_json_agrees_with_an_independent_reference(name):
    """The golden files are the tool's output; check them against float64 numpy."""
    from .reference import batch_gaps

    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    x = np.load(SAMPLE_DATA / f"{name}.embeddings.npy")
    y = np.load(SAMPLE_DATA / f"{name}.labels.npy")
    for result in golden["results"]:
        gaps = np.array(batch_gaps(result["distance"], y, x, 256))
        used = gaps[~np.isnan(gaps)]
        assert result["batches"]["used"] == len(used)
        assert result["gap"]["mean"] == pytest.approx(used.mean(), rel=1e-5)
        assert result["gap"]["max"] == pytest.approx(used.max(), rel=1e-5)
        assert result["last_gap"] == pytest.approx(used[-1], rel=1e-5, abs=1e-7)


def test_npy_sample_data_gives_the_parquet_result(cli):
    from_parquet = as_json(cli("eval", TRAINED, "-d", "all", "-f", "json"))
    from_npy = as_json(
        cli(
            "eval",
            SAMPLE_DATA / "digits_trained.embeddings.npy",
            "-d",
            "all",
            "-f",
            "json",
        )
    )
    assert from_npy["results"] == from_parquet["results"]


def test_trained_embeddings_separate_better_than_pixels(cli):
    pixels = as_json(cli("eval", PIXELS, "-f", "json"))["results"][0]
    trained = as_json(cli("eval", TRAINED, "-f", "json"))["results"][0]
    assert trained["margin"]["mean"] > 0 > pixels["margin"]["mean"]
    assert trained["violation_rate"] < pixels["violation_rate"]


def _readme_example():
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example: (.+?) -->\n```text\n(.*?)```", text, re.S)
    assert match, "README.md has no marked example"
    return match.group(1).split(), match.group(2)


def test_readme_example_output_is_what_the_sample_data_gives(monkeypatch):
    monkeypatch.chdir(ROOT)
    from typer.testing import CliRunner

    from distgap_cli.cli import app

    args, shown = _readme_example()
    assert args[0] == "distgap"
    out = CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1"}).invoke(app, args[1:])
    assert out.exit_code == 0
    printed = "\n".join(line.rstrip() for line in out.stdout.splitlines())
    assert printed + "\n" == shown


def _options_in_help(cli, *command):
    text = cli(*command, "--help").stdout
    return set(re.findall(r"--[a-z][a-z0-9-]+", text))


def test_readme_options_exist_in_help(cli):
    readme = (ROOT / "README.md").read_text()
    # Commands shown in code, including YAML lines folded with ">".
    text = re.sub(r">\n\s+", " ", readme).replace("\n        --", " --")
    shown = re.findall(r"distgap (eval|compare|inspect)( [^\n`]*)", text)
    assert {name for name, _ in shown} == {"eval", "compare", "inspect"}
    for name, command in shown:
        known = _options_in_help(cli, name) | _options_in_help(cli) | {"--no-shuffle"}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", command):
            assert option in known, (option, name, command)


@pytest.mark.slow
def test_installed_command_in_a_subprocess(tmp_path):
    exe = ROOT / ".venv" / "bin" / "distgap"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distgap_cli"]
    env = {**os.environ, "NO_COLOR": "1"}
    out = subprocess.run(
        [*command, "eval", str(TRAINED), "-f", "json", "--min-margin", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["distance"] == "cosine"
    assert out.stderr == ""

    bad = subprocess.run(
        [*command, "eval", str(tmp_path / "missing.parquet")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert "missing.parquet" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_help_and_input_errors_do_not_import_tensorflow(tmp_path):
    probe = (
        "import sys\n"
        "from distgap_cli.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "print('TF', 'tensorflow' in sys.modules, code, file=sys.stderr)\n"
    )
    for args in (["--help"], ["eval", "--help"], ["eval", str(tmp_path / "nope.npy")]):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "TF False" in out.stderr, (args, out.stderr)


@pytest.mark.slow
def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "distgap_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith("distgap ")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.5, "0.500000"),
        (0.0, "0.000000"),
        (-0.0032204, "-0.003220"),
        (3.2204e-08, "3.2204e-08"),  # fixed decimals would print 0.000000
        (2.5e9, "2.5000e+09"),
        (7, "7"),
        (None, "n/a"),
        (float("nan"), "n/a"),
    ],
)
def test_table_numbers_never_hide_a_tiny_value(value, shown):
    assert render._number(value) == shown


@pytest.mark.parametrize(
    ("signal", "code", "said"),
    [
        (Terminated, 143, "terminated (SIGTERM)"),
        (KeyboardInterrupt, 130, "interrupted"),
    ],
)
def test_a_signal_the_parser_caught_keeps_its_exit_code(
    monkeypatch, capsys, signal, code, said
):
    # Ctrl-C or SIGTERM while the parser still runs reaches distgap as Abort.
    from distgap_cli import cli as command_line

    def parser(**kwargs):
        raise typer.Abort() from signal()

    monkeypatch.setattr(command_line, "app", parser)
    assert command_line._run() == code
    assert said in capsys.readouterr().err
