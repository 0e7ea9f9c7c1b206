"""The ``distgap`` command line: parse flags, call the library, hand data to render.

Exit codes: 0 success (every gate held), 1 a quality gate failed, 2 a usage or
input error (one line on stderr), 130 interrupted, 141 output pipe closed early.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from distgap_cli import __version__, render
from distgap_cli.backend import parse_device
from distgap_cli.distances import parse_selection
from distgap_cli.errors import DistgapError, UsageError

app = typer.Typer(
    name="distgap",
    help="How well do saved embeddings separate their classes? Measures the "
    "distance gap between hardest positives and hardest negatives.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXIT_GATE_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class Format(enum.StrEnum):
    """Output formats."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    MARKDOWN = "markdown"


class OnInvalid(enum.StrEnum):
    """What to do with an invalid row."""

    ERROR = "error"
    SKIP = "skip"


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn distgap's own errors into one stderr line and their exit code."""
    try:
        yield
    except DistgapError as exc:
        _err_console().print(f"[bold red]error:[/] {escape(str(exc))}", emoji=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # Let the interpreter exit without complaining about the closed pipe.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distgap {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """How well do saved embeddings separate their classes?"""


@app.command("eval")
def eval_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Parquet, Arrow IPC, .npy or .npz files, directories (searched "
            "recursively), globs, or - for standard input.",
            show_default=False,
        ),
    ],
    distance: Annotated[
        list[str] | None,
        typer.Option(
            "--distance",
            "-d",
            help="cosine, euclidean, squared_euclidean, manhattan, inner_product, "
            "snr (or an alias such as l2, l1), or all. Repeatable. [default: cosine]",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            min=2,
            help="Rows per batch. The per-batch gap depends on it: use your training "
            "batch size.",
        ),
    ] = 256,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Read only the first N rows.")
    ] = None,
    shuffle: Annotated[
        bool,
        typer.Option(
            "--shuffle/--no-shuffle",
            help="Batch a seeded permutation of the rows instead of input order.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of --shuffle.")] = 0,
    embedding_column: Annotated[
        str | None,
        typer.Option(
            help="Column (or .npz array) with the embeddings. [default: auto]"
        ),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(help="Column (or .npz array) with the labels. [default: auto]"),
    ] = None,
    embedding_prefix: Annotated[
        str | None,
        typer.Option(help="Read embeddings from scalar columns PREFIX0, PREFIX1, ..."),
    ] = None,
    labels: Annotated[
        list[Path] | None,
        typer.Option(
            "--labels",
            help="Labels .npy for a .npy embeddings file (one per file, in order).",
            show_default=False,
        ),
    ] = None,
    on_invalid: Annotated[
        OnInvalid,
        typer.Option(help="Stop at the first invalid row, or skip such rows."),
    ] = OnInvalid.ERROR,
    output_format: Annotated[
        Format, typer.Option("--format", "-f", help="Output format.")
    ] = Format.TABLE,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to FILE, not stdout."),
    ] = None,
    min_gap: Annotated[
        float | None,
        typer.Option(help="Gate: fail (exit 1) unless the mean gap is at least X."),
    ] = None,
    min_margin: Annotated[
        float | None,
        typer.Option(help="Gate: fail unless the mean margin is at least X."),
    ] = None,
    max_violation_rate: Annotated[
        float | None,
        typer.Option(help="Gate: fail unless the violation rate is at most X."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where to compute: auto, cpu, gpu or gpu:N.")
    ] = "auto",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")
    ] = False,
) -> None:
    """Evaluate the distance gap of saved embeddings, batch by batch.

    Example: distgap eval embeddings.parquet --distance cosine --min-margin 0
    """
    with _reporting_errors():
        chosen = parse_selection(distance or [])
        parse_device(device)
        from distgap_cli import engine, report, sources
        from distgap_cli.reading import Reader, ReadOptions

        found = sources.discover(paths)
        try:
            options = ReadOptions(
                embedding_column=embedding_column,
                label_column=label_column,
                embedding_prefix=embedding_prefix,
                labels=[str(p) for p in labels or []],
                on_invalid=on_invalid.value,
                need_direction=any(d.needs_direction for d in chosen),
                need_variance=any(d.needs_variance for d in chosen),
                limit=limit,
            )
            reader = Reader(found, options)
            settings = engine.EvalSettings(
                distances=chosen,
                batch_size=batch_size,
                shuffle=shuffle,
                seed=seed,
                device=device,
            )
            err = _err_console()
            with _progress(err, quiet, reader) as advance:
                result = engine.evaluate(reader, settings, advance)
        finally:
            sources.release(found)
        gates = {
            "min_gap": min_gap,
            "min_margin": min_margin,
            "max_violation_rate": max_violation_rate,
        }
        doc = report.build(result, reader, gates)

        if not quiet:
            for warning in result.warnings:
                err.print(f"[yellow]warning:[/] {escape(warning)}", emoji=False)
            if reader.dropped:
                parts = ", ".join(f"{n} {why}" for why, n in reader.dropped.items())
                total = sum(reader.dropped.values())
                err.print(
                    f"dropped {total} invalid row(s): {parts}",
                    markup=False,
                    emoji=False,
                )
        _emit(doc, output_format, output)
        failures = report.failed_gates(doc)
        for line in failures:
            err.print(f"[bold red]{escape(line)}[/]", emoji=False)
        if failures:
            raise typer.Exit(EXIT_GATE_FAILED)


@contextlib.contextmanager
def _progress(
    err: Console, quiet: bool, reader: Any
) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal; otherwise a no-op."""
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from distgap_cli.reading import estimate_rows

    total = estimate_rows(reader.sources)
    with Progress(
        TextColumn("reading"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("rows", total=total, speed="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, speed=f"{speed:,.0f} rows/s")

        yield advance


def _emit(doc: dict, fmt: Format, output: Path | None) -> None:
    """Write the report to ``output`` or stdout; machine formats alone on stdout."""
    if output is not None:
        try:
            output.write_text(render.text(doc, fmt.value))
        except OSError as exc:
            raise UsageError(
                f"cannot write --output {output}: {exc.strerror}"
            ) from None
        return
    if fmt is Format.TABLE:
        render.table(doc, Console(highlight=False))
    else:
        sys.stdout.write(render.text(doc, fmt.value))
        sys.stdout.flush()


def main() -> None:
    """Console-script entry point."""
    app()
