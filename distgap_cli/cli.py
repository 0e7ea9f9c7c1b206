"""The ``distgap`` command line: parse flags, call the library, hand data to render.

Exit codes: 0 success (every gate held), 1 a quality gate failed, 2 a usage or
input error (one line on stderr), 130 interrupted (Ctrl-C), 141 output pipe
closed early, 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import io
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TextIO, cast

import typer
from rich.console import Console

from distgap_cli import __version__, render
from distgap_cli.backend import parse_device
from distgap_cli.distances import Distance, parse_selection
from distgap_cli.errors import DistgapError, NoResultError, Terminated, UsageError

app = typer.Typer(
    name="distgap",
    help="How well do saved embeddings separate their classes? Measures the "
    "distance gap between hardest positives and hardest negatives.",
    epilog="Exit codes: 0 done; 1 a gate failed; 2 bad input, bad usage or no "
    "result; 130 interrupted; 141 output pipe closed; 143 terminated.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_GATE_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141


class Format(enum.StrEnum):
    """Output formats."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    MARKDOWN = "markdown"
    JSONL = "jsonl"


# The format a report written with -o takes from the file's suffix when
# --format is not given.
_SUFFIX_FORMATS = {
    ".json": Format.JSON,
    ".csv": Format.CSV,
    ".md": Format.MARKDOWN,
    ".markdown": Format.MARKDOWN,
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
}


def _format_of(output: Path | None) -> Format | None:
    """The format ``-o FILE``'s suffix names, if any (``report.json``: json)."""
    return _SUFFIX_FORMATS.get(output.suffix.lower()) if output else None


class InspectFormat(enum.StrEnum):
    """Output formats of ``distgap inspect``."""

    TABLE = "table"
    JSON = "json"


class Sampler(enum.StrEnum):
    """How batches are composed."""

    SEQUENTIAL = "sequential"
    SHUFFLE = "shuffle"
    BALANCED = "balanced"


class Mode(enum.StrEnum):
    """Batch-by-batch or whole-dataset evaluation."""

    BATCH = "batch"
    EXACT = "exact"


class OnInvalid(enum.StrEnum):
    """What to do with an invalid row."""

    ERROR = "error"
    SKIP = "skip"


def _color_system() -> Literal["auto"] | None:
    """rich's colour system: none at all under ``NO_COLOR``, whose readers want no
    escape codes (rich itself drops only the colours and keeps bold)."""
    return None if os.environ.get("NO_COLOR") else "auto"


def _err_console() -> Console:
    return Console(
        stderr=True, highlight=False, soft_wrap=True, color_system=_color_system()
    )


def _warn(text: str) -> None:
    """One warning on stderr."""
    _err_console().print(f"[yellow]warning:[/] {render.markup(text)}", emoji=False)


def _stopped(signal: BaseException | None) -> int:
    """Say that Ctrl-C or SIGTERM stopped the run; its exit code (130, 143)."""
    terminated = isinstance(signal, Terminated)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(
            "terminated (SIGTERM)\n" if terminated else "interrupted (Ctrl-C)\n"
        )
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


@contextlib.contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn distgap's own errors into one stderr line and their exit code."""
    try:
        yield
    except DistgapError as exc:
        _err_console().print(
            f"[bold red]error:[/] {render.markup(str(exc))}", emoji=False
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        raise typer.Exit(_stopped(exc)) from None
    except BrokenPipeError:
        # Let the interpreter exit without complaining about the closed pipe.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except OSError as exc:
        # A file that cannot be read or written (a full disk, a closed stdout).
        where = f"{exc.filename}: " if exc.filename else "cannot write the report: "
        _err_console().print(
            f"[bold red]error:[/] {render.markup(where + (exc.strerror or str(exc)))}",
            emoji=False,
        )
        raise typer.Exit(2) from None


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


# Options shared by the commands that read embeddings.
PathsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH",
        help="Parquet, Arrow IPC, .npy or .npz files, directories (searched "
        "recursively), globs, or - for standard input.",
        show_default=False,
    ),
]
EmbeddingColumnOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Column (or .npz array) with the embeddings. [default: auto]",
    ),
]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME", help="Column (or .npz array) with the labels. [default: auto]"
    ),
]
EmbeddingPrefixOpt = Annotated[
    str | None,
    typer.Option(
        metavar="PREFIX",
        help="Read embeddings from scalar columns PREFIX0, PREFIX1, ...",
    ),
]
LabelsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--labels",
        metavar="FILE",
        help="Labels .npy for a .npy embeddings file (one per file, in order).",
        show_default=False,
    ),
]
DistanceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--distance",
        "-d",
        metavar="NAME",
        help="cosine, euclidean, squared_euclidean, manhattan, inner_product, "
        "snr (or an alias such as l2, l1), or all. Repeatable. [default: cosine]",
        show_default=False,
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=2,
        help="Rows per batch. The per-batch gap depends on it: use your training "
        "batch size. [default: 256; C x E with --sampler balanced]",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option(metavar="N", min=1, help="Read only the first N rows.")
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="Write the report to FILE, not stdout."
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")
]
MaxDropOpt = Annotated[
    str | None,
    typer.Option(
        metavar="X",
        help="Gate: fail when the margin, violation rate or precision@1 is worse "
        "than the baseline by more than X (absolute), or X% (relative). The gap "
        "is shown, never gated.",
        show_default=False,
    ),
]


def _read_options(
    chosen: list[Any],
    embedding_column: str | None,
    label_column: str | None,
    embedding_prefix: str | None,
    labels: list[Path] | None,
    on_invalid: str,
    limit: int | None,
) -> Any:
    from distgap_cli.reading import ReadOptions

    return ReadOptions(
        embedding_column=embedding_column,
        label_column=label_column,
        embedding_prefix=embedding_prefix,
        labels=[str(p) for p in labels or []],
        on_invalid=on_invalid,
        need_direction=any(d.needs_direction for d in chosen),
        need_variance=any(d.needs_variance for d in chosen),
        limit=limit,
    )


@app.command("eval")
def eval_command(
    paths: PathsArg,
    distance: DistanceOpt = None,
    batch_size: BatchSizeOpt = None,
    limit: LimitOpt = None,
    sampler: Annotated[
        Sampler | None,
        typer.Option(
            help="sequential: input order; shuffle: a seeded permutation; "
            "balanced: C classes x E rows per batch, like a metric-learning "
            "training sampler. [default: sequential]",
            show_default=False,
        ),
    ] = None,
    shuffle: Annotated[
        bool | None,
        typer.Option(
            "--shuffle/--no-shuffle",
            help="Shorthand for --sampler shuffle (--no-shuffle: sequential).",
            show_default=False,
        ),
    ] = None,
    classes_per_batch: Annotated[
        int | None,
        typer.Option(
            metavar="C",
            min=2,
            help="--sampler balanced: distinct classes per batch (C).",
        ),
    ] = None,
    examples_per_class: Annotated[
        int | None,
        typer.Option(
            metavar="E", min=2, help="--sampler balanced: rows drawn per class (E)."
        ),
    ] = None,
    batches: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="--sampler balanced: how many batches. [default: enough to visit "
            "every row about once]",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Seed of the shuffle and balanced samplers, and of --anchors. "
            "[default: 0]",
            show_default=False,
        ),
    ] = None,
    embedding_column: EmbeddingColumnOpt = None,
    label_column: LabelColumnOpt = None,
    embedding_prefix: EmbeddingPrefixOpt = None,
    labels: LabelsOpt = None,
    on_invalid: Annotated[
        OnInvalid,
        typer.Option(help="Stop at the first invalid row, or skip such rows."),
    ] = OnInvalid.ERROR,
    output_format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format. [default: from -o's suffix (.json, .csv, .md, "
            ".jsonl), else table; jsonl with --per-batch]",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    per_batch: Annotated[
        bool,
        typer.Option(
            "--per-batch",
            help="Stream one JSON line per batch and distance as it is computed, "
            "then one per distance (--format jsonl).",
        ),
    ] = False,
    min_gap: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help="Gate: fail (exit 1) unless the gap (in batch mode its mean over "
            "batches) is at least X. Not applied to inner_product.",
        ),
    ] = None,
    min_margin: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help="Gate: fail unless the margin (in batch mode its mean over batches) "
            "is at least X. Not applied to inner_product.",
        ),
    ] = None,
    max_violation_rate: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            min=0.0,
            max=1.0,
            help="Gate: fail unless the violation rate is at most X (0 to 1). Not "
            "applied to inner_product.",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="A saved JSON report to compare with (see --max-drop)."
        ),
    ] = None,
    max_drop: MaxDropOpt = None,
    mode: Annotated[
        Mode,
        typer.Option(
            help="batch: per-batch figures, as the training metric sees them; "
            "exact: every row against every other row of the dataset."
        ),
    ] = Mode.BATCH,
    anchors: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="--mode exact: use N rows drawn at random (--seed) as anchors "
            "against every row. [default: every row]",
            show_default=False,
        ),
    ] = None,
    memory_limit: Annotated[
        str,
        typer.Option(
            metavar="SIZE",
            help="--mode exact: hold rows in memory up to this size (e.g. 512M, "
            "2G), spill to a temporary file beyond it.",
        ),
    ] = "2G",
    per_class: Annotated[
        bool,
        typer.Option(
            "--per-class",
            help="Add a per-class breakdown, worst classes first.",
        ),
    ] = False,
    top: Annotated[
        int | None,
        typer.Option(
            metavar="K", min=1, help="With --per-class: show the K worst classes."
        ),
    ] = None,
    per_file: Annotated[
        bool,
        typer.Option("--per-file", help="Add one result per input file."),
    ] = False,
    per_row: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write each anchor's figures (row, file, label, hardest positive "
            "and negative, margin, nearest negative's row) to FILE as Parquet.",
        ),
    ] = None,
    min_precision_at_1: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            min=0.0,
            max=1.0,
            help="Gate (--mode exact): fail unless precision@1 is at least X (0 to 1).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            metavar="DEVICE", help="Where to compute: auto, cpu, gpu or gpu:N."
        ),
    ] = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Evaluate the distance gap of saved embeddings, batch by batch or exactly.

    Example: distgap eval embeddings.parquet --distance cosine --min-margin 0
    """
    with _reporting_errors():
        chosen = parse_selection(distance or [])
        parse_device(device)
        named = _format_of(output)
        if per_batch and output_format is None and named not in (None, Format.JSONL):
            raise UsageError(
                f"--per-batch streams JSON lines, but -o {output} names the "
                f"{named} format; name the file .jsonl (or pass -f jsonl)"
            )
        fmt = output_format or (Format.JSONL if per_batch else named or Format.TABLE)
        if per_batch and fmt is not Format.JSONL:
            raise UsageError(
                "--per-batch streams JSON lines; use --format jsonl (its default)"
            )
        exact = mode is Mode.EXACT
        if exact:
            _check_exact_flags(
                sampler, shuffle, batch_size, classes_per_batch, per_batch, batches
            )
            picked, size = Sampler.SEQUENTIAL, 0
        else:
            if anchors is not None or memory_limit != "2G":
                raise UsageError("--anchors and --memory-limit need --mode exact")
            if min_precision_at_1 is not None:
                raise UsageError(
                    "--min-precision-at-1 needs --mode exact (batch mode has no "
                    "precision@1)"
                )
            picked, size = _sampling(
                sampler,
                shuffle,
                batch_size,
                classes_per_batch,
                examples_per_class,
                batches,
            )
            if per_file and picked is not Sampler.SEQUENTIAL:
                raise UsageError("--per-file in batch mode needs --sampler sequential")
        notes: list[str] = []
        if seed is not None and picked is Sampler.SEQUENTIAL and anchors is None:
            # A warning, not an error: CI templates pass one seed to every run.
            notes.append(
                "--seed has no effect here: it seeds --sampler shuffle or balanced, "
                "or --anchors in exact mode"
            )
        if top is not None and not per_class:
            raise UsageError("--top needs --per-class")
        if fmt is Format.CSV and (per_class or per_file):
            raise UsageError(
                "CSV holds one table, one line per distance: for --per-class or "
                "--per-file use --format json, jsonl, markdown or table (or "
                "--per-row FILE)"
            )
        _require_finite(
            ("--min-gap", min_gap),
            ("--min-margin", min_margin),
            ("--max-violation-rate", max_violation_rate),
            ("--min-precision-at-1", min_precision_at_1),
        )
        limit_bytes = _parse_size(memory_limit)
        from distgap_cli import engine, report, sources
        from distgap_cli.reading import Reader

        drop = report.parse_drop(max_drop) if max_drop is not None else None
        if drop is not None and baseline is None:
            raise UsageError("--max-drop needs --baseline FILE to compare with")
        previous = report.load_report(str(baseline)) if baseline else None
        ungated = _baseline_coverage(previous, baseline, chosen)
        gates = {
            "min_gap": min_gap,
            "min_margin": min_margin,
            "max_violation_rate": max_violation_rate,
            "min_precision_at_1": min_precision_at_1,
        }
        notes += _similarity_gates(gates, chosen)
        if fmt is Format.CSV and baseline is not None:
            notes.append(
                "CSV holds one line per distance and no baseline comparisons (the "
                "--max-drop gate still applies); --format json, jsonl, markdown or "
                "table show them"
            )
        wants_anchors = per_class or per_row is not None

        found = sources.discover(paths)
        _refuse_overwriting(found, output, per_row)
        with _opened(output) as out:
            try:
                options = _read_options(
                    chosen,
                    embedding_column,
                    label_column,
                    embedding_prefix,
                    labels,
                    on_invalid.value,
                    limit,
                )
                options.files_apart = per_file and not exact
                reader = Reader(found, options)
                notes += reader.ignored_options()
                err = _err_console()
                result: Any
                if exact:
                    from distgap_cli import exact as exact_mode

                    exact_settings = exact_mode.ExactSettings(
                        distances=chosen,
                        anchors=anchors,
                        seed=seed or 0,
                        memory_limit=limit_bytes,
                        device=device,
                        per_file=per_file,
                    )
                    with _progress(err, quiet, reader) as advance, _noting(reader):
                        result = exact_mode.evaluate_exact(
                            reader, exact_settings, advance
                        )
                    doc = report.build_exact(result, reader, gates)
                else:
                    settings = engine.EvalSettings(
                        distances=chosen,
                        batch_size=size,
                        sampler=picked.value,
                        seed=seed or 0,
                        device=device,
                        classes_per_batch=classes_per_batch,
                        examples_per_class=examples_per_class,
                        batches=batches,
                        per_file=per_file,
                        per_anchor=wants_anchors,
                    )
                    stream = _batch_streamer(out) if per_batch else None
                    with _progress(err, quiet, reader) as advance, _noting(reader):
                        result = engine.evaluate(reader, settings, advance, stream)
                    doc = report.build(result, reader, gates)
            finally:
                sources.release(found)
            if per_class:
                report.add_per_class(doc, result.anchors, reader, top)
            if per_row is not None:
                from distgap_cli.breakdown import write_per_row

                write_per_row(
                    str(per_row),
                    {d.value: a for d, a in result.anchors.items()},
                    [src.name for src in reader.sources],
                    reader.label_map,
                )
            result.warnings[:0] = [*notes, *reader.warnings]
            if previous is not None:
                result.warnings.extend(report.comparable(doc, previous))
                if ungated:
                    result.warnings.append(
                        f"{', '.join(ungated)} not in the baseline {baseline}, so "
                        "it is not compared (nor gated by --max-drop)"
                    )
                doc["baseline"] = {
                    "file": str(baseline),
                    "max_drop": max_drop,
                    **report.compare(doc, previous, drop),
                }

            if not quiet:
                for warning in result.warnings:
                    _warn(warning)
                if reader.dropped:
                    total = sum(reader.dropped.values())
                    err.print(
                        f"dropped {total} invalid row(s): {reader.dropped_reasons()}",
                        markup=False,
                        emoji=False,
                    )
            _emit(doc, fmt, out)
        failures = report.failed_gates(doc)
        if "baseline" in doc:
            failures += report.failed_comparisons(doc["baseline"])
        _fail_on(failures)


def _similarity_gates(
    gates: dict[str, float | None], chosen: list[Distance]
) -> list[str]:
    """Refuse gates on the hardest pairs that would check only similarities,
    and say which similarities they leave out otherwise."""
    from distgap_cli import report

    flags, skipped = report.ungated_similarities(gates, chosen)
    if not skipped:
        return []
    why = (
        "a similarity's hardest pairs are, as in TensorFlow Similarity, its "
        "easiest ones, so its gap, margin and violation rate say nothing about "
        "separation"
    )
    if len(skipped) == len(chosen):
        raise UsageError(
            f"{' and '.join(flags)} cannot gate {', '.join(skipped)}: {why}; gate a "
            "distance instead (-d cosine)"
        )
    verb = "does" if len(flags) == 1 else "do"
    return [f"{' and '.join(flags)} {verb} not gate {', '.join(skipped)}: {why}"]


def _baseline_coverage(
    previous: dict[str, Any] | None, path: Path | None, chosen: list[Distance]
) -> list[str]:
    """The chosen distances a baseline has no results for.

    Raises:
        UsageError: when it has none of them, so a comparison could not happen.
    """
    if previous is None:
        return []
    theirs = sorted({str(e.get("distance")) for e in previous.get("results", [])})
    ours = [d.value for d in chosen]
    missing = [d for d in ours if d not in theirs]
    if len(missing) == len(ours):
        raise UsageError(
            f"--baseline {path} holds {', '.join(theirs) or 'no results'}, none of "
            f"the distances asked for ({', '.join(ours)}); pick them with --distance"
        )
    return missing


def _refuse_overwriting(found: list[Any], *targets: Path | None) -> None:
    """Stop before a report would be written over one of the inputs."""
    inputs = {Path(s.path).resolve() for s in found if s.name != "<stdin>"}
    seen: set[Path] = set()
    for target in targets:
        if target is None:
            continue
        where = target.resolve()
        if where in inputs:
            raise UsageError(
                f"{target} is one of the inputs; write the report somewhere else"
            )
        if where in seen and (where.is_file() or not where.exists()):
            raise UsageError(
                f"{target} is given for two outputs (--output and --per-row); "
                "give each its own file"
            )
        seen.add(where)


def _check_exact_flags(
    sampler: Sampler | None,
    shuffle: bool | None,
    batch_size: int | None,
    classes_per_batch: int | None,
    per_batch: bool,
    batches: int | None,
) -> None:
    """Reject batch-mode flags in exact mode, where there are no batches."""
    given = {
        "--sampler": sampler is not None,
        "--shuffle": bool(shuffle),
        "--batch-size": batch_size is not None,
        "--classes-per-batch": classes_per_batch is not None,
        "--batches": batches is not None,
        "--per-batch": per_batch,
    }
    clash = [flag for flag, on in given.items() if on]
    if clash:
        raise UsageError(f"{', '.join(clash)} has no meaning with --mode exact")


def _parse_size(text: str) -> int:
    """``512M``, ``2G``, ``100000`` (bytes) as a number of bytes."""
    raw = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = scale.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in scale else raw
    try:
        value = float(number)
    except ValueError:
        value = -1
    if not 0 <= value < math.inf:  # NaN and infinity too
        raise UsageError(f"--memory-limit {text!r}: expected a size such as 512M or 2G")
    return int(value * factor)


@app.command("compare")
def compare_command(
    baseline: Annotated[
        Path, typer.Argument(help="The earlier report (distgap eval --format json).")
    ],
    current: Annotated[Path, typer.Argument(help="The later report.")],
    max_drop: MaxDropOpt = None,
    output_format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format. [default: from -o's suffix (.json, .csv, .md, "
            ".jsonl), else table]",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare two saved reports, statistic by statistic, with the same gates.

    Example: distgap compare last-release.json this-build.json --max-drop 5%
    """
    with _reporting_errors():
        from distgap_cli import report

        drop = report.parse_drop(max_drop) if max_drop is not None else None
        old = report.load_report(str(baseline))
        new = report.load_report(str(current))
        warnings = report.comparable(new, old)
        for warning in [] if quiet else warnings:
            _warn(warning)
        doc = {
            "schema": report.COMPARE_SCHEMA,
            "baseline": str(baseline),
            "current": str(current),
            "max_drop": max_drop,
            **report.compare(new, old, drop),
        }
        if not doc["comparisons"]:
            raise UsageError(
                "the two reports share no distance with comparable statistics"
            )
        fmt = output_format or _format_of(output) or Format.TABLE
        with _opened(output) as out:
            if fmt is Format.TABLE:
                render.comparison_table(doc, _console(out))
            else:
                out.write(render.comparison_text(doc, fmt.value))
        _fail_on(report.failed_comparisons(doc))


@app.command("inspect")
def inspect_command(
    paths: PathsArg,
    embedding_column: EmbeddingColumnOpt = None,
    label_column: LabelColumnOpt = None,
    embedding_prefix: EmbeddingPrefixOpt = None,
    labels: LabelsOpt = None,
    distance: DistanceOpt = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            metavar="N",
            min=2,
            help="Rows per batch, for the time estimate of eval.",
        ),
    ] = 256,
    limit: LimitOpt = None,
    output_format: Annotated[
        InspectFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="table or json. [default: json for -o FILE.json, else table]",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Describe an input without evaluating it: rows, classes, invalid rows, norms.

    Rows are checked as eval checks them for the distances given (cosine by
    default): all-zero rows are invalid for cosine only, constant rows for snr
    only.

    Example: distgap inspect shards/ --format json
    """
    with _reporting_errors():
        chosen = parse_selection(distance or [])
        from distgap_cli import inspection, report, sources
        from distgap_cli.reading import Reader

        found = sources.discover(paths)
        try:
            options = _read_options(
                chosen,
                embedding_column,
                label_column,
                embedding_prefix,
                labels,
                "skip",  # invalid rows are counted, not fatal
                limit,
            )
            reader = Reader(found, options)
            for note in [] if quiet else reader.ignored_options():
                _warn(note)
            doc = inspection.inspect_input(reader, batch_size, chosen)
            for warning in [] if quiet else reader.warnings:
                _warn(warning)
        finally:
            sources.release(found)
        with _opened(output) as out:
            as_json = output_format is InspectFormat.JSON or (
                output_format is None and _format_of(output) is Format.JSON
            )
            if as_json:
                out.write(report.to_json(doc))
            else:
                render.inspection_table(doc, _console(out))


def _sampling(
    sampler: Sampler | None,
    shuffle: bool | None,
    batch_size: int | None,
    classes_per_batch: int | None,
    examples_per_class: int | None,
    batches: int | None,
) -> tuple[Sampler, int]:
    """Check the batch-composition flags together; return the sampler and size."""
    if shuffle and sampler not in (None, Sampler.SHUFFLE):
        raise UsageError(f"--shuffle and --sampler {sampler} contradict each other")
    if shuffle is False and sampler is Sampler.SHUFFLE:
        raise UsageError("--no-shuffle and --sampler shuffle contradict each other")
    picked = sampler or (Sampler.SHUFFLE if shuffle else Sampler.SEQUENTIAL)
    balanced_only = {
        "--classes-per-batch": classes_per_batch,
        "--examples-per-class": examples_per_class,
        "--batches": batches,
    }
    if picked is not Sampler.BALANCED:
        given = [flag for flag, value in balanced_only.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} needs --sampler balanced")
        return picked, batch_size or 256
    if classes_per_batch is None or examples_per_class is None:
        raise UsageError(
            "--sampler balanced needs --classes-per-batch C and "
            "--examples-per-class E (the batch size is C x E)"
        )
    size = classes_per_batch * examples_per_class
    if batch_size is not None and batch_size != size:
        raise UsageError(
            f"--batch-size {batch_size} contradicts --classes-per-batch "
            f"{classes_per_batch} x --examples-per-class {examples_per_class} = {size}"
        )
    return picked, size


def _require_finite(*gates: tuple[str, float | None]) -> None:
    """Refuse a gate of NaN or infinity: nothing compares with NaN, and an
    infinite floor or ceiling decides the outcome before any row is read."""
    for flag, value in gates:
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{flag} takes a finite number, not {value}")


@contextlib.contextmanager
def _noting(reader: Any) -> Iterator[None]:
    """Add what the reader noticed about the input to an error that there is
    no result: a stream cut short can be why no batch had a gap."""
    try:
        yield
    except NoResultError as exc:
        if not reader.warnings:
            raise
        raise NoResultError(f"{exc} (note: {'; '.join(reader.warnings)})") from None


def _fail_on(failures: list[str]) -> None:
    """Print failed gates on stderr and exit 1 if there are any."""
    err = _err_console()
    for line in failures:
        err.print(f"[bold red]{render.markup(line)}[/]", emoji=False)
    if failures:
        raise typer.Exit(EXIT_GATE_FAILED)


@contextlib.contextmanager
def _opened(output: Path | None) -> Iterator[TextIO]:
    """The report's destination: stdout, or ``output``.

    An ``output`` that stdout or stderr already writes to (``/dev/stdout``, or
    the file a shell sent stdout to) is written through that stream: reopening
    it would truncate a file opened with ``>>``. Otherwise see
    :func:`_report_file`.
    """
    stream = sys.stdout if output is None else _standard_stream(output)
    if stream is not None:
        yield stream
        stream.flush()
    else:
        with _report_file(cast(Path, output)) as handle:
            yield handle


@contextlib.contextmanager
def _report_file(output: Path) -> Iterator[TextIO]:
    """``output`` opened for the report.

    A regular file (or a new one) is written to a temporary file beside it and
    moved into place only when the command succeeds, so a failed run never
    leaves a truncated report where a good one was; through a symbolic link,
    the file it points to is the one replaced. Anything else that exists (a
    device, a named pipe) is written to directly.
    """
    if output.exists() and not output.is_file():
        try:
            direct = open(output, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise UsageError(
                f"cannot write --output {output}: {exc.strerror}"
            ) from None
        with direct:
            yield cast(TextIO, direct)
        return
    target = Path(os.path.realpath(output))
    if target.exists() and not _writable(target):
        raise UsageError(
            f"cannot write --output {output}: it is read-only; make it writable "
            "or choose another path"
        )
    try:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below)
            "w",
            encoding="utf-8",
            dir=target.parent,
            prefix=f".{target.name}.",
            delete=False,
        )
    except OSError as exc:
        hint = (
            "; create the folder first"
            if not target.parent.is_dir()
            else "; choose a folder you can write to"
        )
        raise UsageError(
            f"cannot write --output {output}: {exc.strerror}{hint}"
        ) from None
    try:
        with handle:
            yield cast(TextIO, handle)
        os.chmod(handle.name, _file_mode(target))
        try:
            os.replace(handle.name, target)
        except OSError as exc:  # named after the report, not the temporary file
            raise OSError(exc.errno, exc.strerror, str(output)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def _standard_stream(output: Path) -> TextIO | None:
    """stdout or stderr when ``output`` is the file one of them already writes
    to (``-o /dev/stdout``, ``/dev/fd/2``, or the file stdout is redirected to)."""
    try:
        target = os.stat(output)
    except OSError:
        return None
    for number, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            if os.path.samestat(target, os.fstat(number)):
                return stream
        except OSError:
            continue
    return None


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (a shell's ``>`` would succeed)."""
    return os.access(path, os.W_OK)


def _file_mode(path: Path) -> int:
    """The permissions a report written to ``path`` gets: those of the file it
    replaces, else what the umask gives a new file (a temporary file starts
    private)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


class _ReportConsole(Console):
    """A console whose closed pipe surfaces as BrokenPipeError (exit 141), where
    rich's default would exit with 1, the code of a failed gate."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def _console(out: TextIO) -> Console:
    if out is sys.stdout:
        return _ReportConsole(highlight=False, color_system=_color_system())
    return _ReportConsole(file=out, width=100, no_color=True, highlight=False)


def _batch_streamer(out: TextIO) -> Callable[..., None]:
    """Write each computed batch as JSON lines, flushed as they come."""
    from distgap_cli import report

    def write(first: int, stack: Any, stats: Any) -> None:
        for record in report.batch_records(first, stack, stats):
            out.write(report.json_line(record))
        out.flush()

    return write


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


def _emit(doc: dict, fmt: Format, out: TextIO) -> None:
    """Write the report; machine formats put nothing else on stdout."""
    if fmt is Format.TABLE:
        render.table(doc, _console(out))
    else:
        out.write(render.text(doc, fmt.value))
    out.flush()


class _ClosedOutput(io.TextIOBase):
    """Standard output when distgap was started without one (``>&-``): writing
    the report there fails like writing to a closed descriptor, which the
    command reports in one line (exit 2)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def _stand_in_for_closed_streams() -> None:
    """Python has None for a standard stream that was closed when it started.
    The closed descriptors are filled with /dev/null, so that no file distgap
    opens takes their number; a report for stdout then fails in one line
    instead of a traceback, and a closed stderr swallows messages but keeps the
    exit codes."""
    for number, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                if null != number:
                    os.dup2(null, number)
                    os.close(null)
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (kept)


def main() -> NoReturn:
    """Console-script entry point: run, flush, and leave at once.

    Leaving skips the interpreter's shutdown, which would wait for TensorFlow's
    teardown (0.7 to 0.85 s after the report is written) and can abort while the
    reader thread is still blocked on a pipe whose writer has not finished.
    Everything distgap writes is complete and closed by the time ``_run``
    returns; temporary files are removed on the way.
    """
    _stand_in_for_closed_streams()
    code = _run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or EXIT_BROKEN_PIPE
    except OSError as exc:
        sys.stderr.write(f"error: cannot write the report: {exc.strerror or exc}\n")
        code = code or 2
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


def _run() -> int:
    """Run the command line; usage errors become one line on stderr."""
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # help or a usage error for a closed stdout or stderr
        with contextlib.suppress(OSError):
            sys.stderr.write(f"error: cannot write: {exc.strerror or exc}\n")
        return 2
    except Exception as exc:
        # The parser's usage errors carry a message and an exit code (2).
        message, code = (
            getattr(exc, "format_message", None),
            getattr(exc, "exit_code", None),
        )
        if type(exc).__name__ == "Abort":
            # Ctrl-C or SIGTERM before distgap's own handling began (the
            # parser turns either into Abort).
            return _stopped(exc.__cause__ or exc.__context__)
        if not callable(message) or not isinstance(code, int):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(str(message()) + "\n")
            return code
        context = getattr(exc, "ctx", None)
        where = getattr(context, "command_path", None) or "distgap"
        text = " ".join(str(message()).split())
        said = render.markup(f"{text} (see '{where} --help')")
        _err_console().print(f"[bold red]error:[/] {said}", emoji=False)
        return code
    return code if isinstance(code, int) else 0
