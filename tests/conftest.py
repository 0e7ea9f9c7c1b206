"""Shared fixtures: tiny inputs built in a temp dir, and a CLI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"

# The "hardneg" fixture of the shared cases: euclidean gap 5.
HARDNEG_X = np.array([[0.0], [1.0], [3.0], [10.0]], dtype=np.float32)
HARDNEG_Y = np.array([0, 0, 1, 1], dtype=np.int64)


@dataclass
class Result:
    """What one CLI invocation produced."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli():
    """Run ``distgap`` in-process with a pinned terminal width."""
    from distgap_cli.cli import app

    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})

    def invoke(*args: str, input: bytes | str | None = None) -> Result:
        out = runner.invoke(app, [str(a) for a in args], input=input)
        if out.exception and not isinstance(out.exception, SystemExit):
            raise out.exception
        return Result(out.exit_code, out.stdout, out.stderr)

    return invoke


def write_parquet(path: Path, embeddings, labels, *, emb_type=None, **kw) -> Path:
    """A Parquet file with ``embedding`` and ``label`` columns."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb_type is None:
        emb_type = pa.list_(pa.float32())
    column = pa.array([list(map(float, row)) for row in emb], type=emb_type)
    table = pa.table({"embedding": column, "label": pa.array(labels)})
    pq.write_table(table, path, **kw)
    return path


def write_npy_pair(
    folder: Path, embeddings, labels, stem: str = "data"
) -> tuple[Path, Path]:
    """``stem.embeddings.npy`` and ``stem.labels.npy``."""
    emb_path = folder / f"{stem}.embeddings.npy"
    lab_path = folder / f"{stem}.labels.npy"
    np.save(emb_path, np.asarray(embeddings))
    np.save(lab_path, np.asarray(labels))
    return emb_path, lab_path


@pytest.fixture
def hardneg(tmp_path: Path) -> Path:
    """The shared cases' "hardneg" batch as Parquet (euclidean gap 5)."""
    return write_parquet(tmp_path / "hardneg.parquet", HARDNEG_X, HARDNEG_Y)
