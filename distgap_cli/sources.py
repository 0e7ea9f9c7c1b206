"""Finding the input files and telling their formats apart.

Paths are expanded (directories recursively, hive-style ``key=value`` folders
included; globs), sorted, and each file's format is read from its first bytes, not
its name. Files found in a directory or through a glob's wildcards are filtered
alike (no hidden or bookkeeping files, nothing but data); a file named in full is
always read. Standard input (``-``) is sniffed the same way.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from distgap_cli.errors import InputError, UsageError

PARQUET = "parquet"
ARROW_FILE = "arrow-file"
ARROW_STREAM = "arrow-stream"
NPY = "npy"
NPZ = "npz"

# What a file's name promises, by suffix.
_SUFFIXES = {
    ".parquet": (PARQUET,),
    ".pq": (PARQUET,),
    ".arrow": (ARROW_FILE, ARROW_STREAM),
    ".feather": (ARROW_FILE,),
    ".ipc": (ARROW_FILE, ARROW_STREAM),
    ".arrows": (ARROW_STREAM,),
    ".npy": (NPY,),
    ".npz": (NPZ,),
}
_FORMAT_NAMES = {
    PARQUET: "Parquet",
    ARROW_FILE: "Arrow IPC file",
    ARROW_STREAM: "Arrow IPC stream",
    NPY: ".npy",
    NPZ: ".npz",
}
# What a file's name promises, in words.
_PROMISES = {
    PARQUET: "a Parquet file",
    ARROW_FILE: "an Arrow IPC file",
    ARROW_STREAM: "an Arrow IPC stream",
    NPY: "a .npy file",
    NPZ: "a .npz file",
}

STDIN = "<stdin>"


@dataclass
class Source:
    """One input file.

    Attributes:
        name: the path as the user gave or as found, ``<stdin>`` for a pipe.
        path: where to read it (a spool file for standard input).
        kind: its format.
        partition: hive-style ``key=value`` folder names above it.
        stream: an open, unseekable stream to read sequentially (Arrow streams on
            standard input), else None.
    """

    name: str
    path: str
    kind: str
    partition: dict[str, str] = field(default_factory=dict)
    stream: BinaryIO | None = None


def sniff(head: bytes) -> str | None:
    """The format whose magic bytes ``head`` starts with, or None."""
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"ARROW1"):
        return ARROW_FILE
    if head.startswith(b"\xff\xff\xff\xff"):
        return ARROW_STREAM
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return NPZ
    return None


def _partition_of(path: str, root: str) -> dict[str, str]:
    rel = os.path.relpath(os.path.dirname(path), root)
    parts = {}
    for piece in rel.split(os.sep):
        key, sep, value = piece.partition("=")
        if sep and key:
            parts[key] = value
    return parts


def _is_skipped(name: str) -> bool:
    """Whether a found file or folder is hidden or bookkeeping (``.crc``,
    ``_SUCCESS``, ``_metadata``, ``_temporary``), never input."""
    return name.startswith((".", "_"))


def _is_data_file(folder: str, name: str) -> bool:
    """Whether a file found in a directory or by a glob is input.

    Hidden and bookkeeping files (``_SUCCESS``, ``_metadata``, ``.crc``) are not.
    Files named as a data format are (a wrong name is reported later); files with
    no suffix are when their first bytes are a data format (Hadoop-style
    ``part-00000``); files with any other suffix (a README, a JSON schema) are not.
    """
    if _is_skipped(name):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix in _SUFFIXES:
        return True
    if suffix:
        return False
    try:
        return sniff(_read_head(os.path.join(folder, name))) is not None
    except InputError:
        return False


def _split(path: str) -> list[str]:
    """The names a path is made of, folders first."""
    if os.altsep:
        path = path.replace(os.altsep, os.sep)
    return path.split(os.sep)


def _is_matched_data_file(path: str, pattern: str) -> bool:
    """Whether a file that glob ``pattern`` matched is input.

    What the pattern's wildcards matched is judged as in a directory walk: no file
    in a hidden or bookkeeping folder, only data files. Names the pattern spells out
    (``out/_temporary/*.parquet``, ``runs/*/vectors.bin``) are taken as given.
    """
    names = _split(pattern)
    spelled = {name for name in names if not glob.has_magic(name)}
    folder, name = os.path.split(path)
    if any(_is_skipped(d) and d not in spelled for d in _split(folder)):
        return False
    return not glob.has_magic(names[-1]) or _is_data_file(folder, name)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _expand_glob(pattern: str) -> list[str]:
    """The data files ``pattern`` matches, sorted."""
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        raise InputError("no file matches this pattern", file=pattern)
    found = [p for p in matches if _is_matched_data_file(p, pattern)]
    if not found:
        shown = ", ".join(matches[:3])
        if len(matches) > 3:
            shown += f" and {len(matches) - 3} more"
        raise InputError(
            f"pattern matches no data files ({_plural(len(matches), 'file')} "
            f"skipped: {shown})",
            file=pattern,
            fix="match Parquet, Arrow, .npy or .npz files (hidden, bookkeeping and "
            "other files are skipped, as in a directory) or name a file explicitly "
            "to read it",
        )
    return found


def _expand(path: str) -> list[tuple[str, dict[str, str]]]:
    if os.path.isdir(path):
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not _is_skipped(d)]
            for name in files:
                if _is_data_file(folder, name):
                    full = os.path.join(folder, name)
                    found.append((full, _partition_of(full, path)))
        if not found:
            raise InputError(
                "directory holds no data files",
                file=path,
                fix="point distgap at Parquet, Arrow, .npy or .npz files",
            )
        return sorted(found)
    if os.path.exists(path):
        return [(path, {})]
    if glob.has_magic(path):
        return [(p, {}) for p in _expand_glob(path)]
    raise InputError("no such file or directory", file=path, fix="check the path")


def _read_head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", file=path) from None


def _check_kind(name: str, head: bytes) -> str:
    if not head:
        raise InputError(
            "file is empty (0 bytes)", file=name, fix="re-export the embeddings"
        )
    kind = sniff(head)
    promised = _SUFFIXES.get(os.path.splitext(name)[1].lower())
    if kind is None:
        what = _PROMISES[promised[0]] if promised else "a known format"
        raise InputError(
            f"not {what}: its first bytes are {head[:8]!r}",
            file=name,
            fix="distgap reads Parquet, Arrow IPC, .npy and .npz files",
        )
    if promised and kind not in promised:
        raise InputError(
            f"named like {_PROMISES[promised[0]]} but holds {_FORMAT_NAMES[kind]} data",
            file=name,
            fix="rename the file or re-export it",
        )
    return kind


def discover(paths: list[str]) -> list[Source]:
    """Expand ``paths`` into sources in read order: each path's files sorted.

    A ``NAME.labels.npy`` found next to ``NAME.embeddings.npy`` (or ``NAME.npy``)
    holds that file's labels and is not read as an input of its own.

    Raises:
        InputError: for a missing path, a directory or glob without data files,
            an empty or unrecognised file, or a file whose content contradicts its
            name.
        UsageError: for a file given twice (directly, or through a directory or
            a glob), or standard input given twice.
    """
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")
    sources: list[Source] = []
    seen: dict[tuple[int, int], str] = {}  # each file (device, inode): its path given
    try:
        for given in paths:
            if given == "-":
                sources.append(_stdin_source())
                continue
            for path, partition in _expand(given):
                found = os.stat(path)  # links, hard or symbolic, are one file
                real = (found.st_dev, found.st_ino)
                if real in seen:
                    through = (
                        ""
                        if seen[real] == given
                        else f" (through {seen[real]!r} and {given!r})"
                    )
                    raise UsageError(
                        f"{path} is given twice{through}: its rows would be read "
                        "twice; pass each file once"
                    )
                seen[real] = given
                kind = _check_kind(path, _read_head(path))
                sources.append(Source(path, path, kind, partition))
    except BaseException:
        release(sources)
        raise
    return _without_paired_labels(sources)


def _without_paired_labels(sources: list[Source]) -> list[Source]:
    """Drop the ``.labels.npy`` files whose embeddings file is among ``sources``."""
    npy = {s.path for s in sources if s.kind == NPY}

    def paired(source: Source) -> bool:
        if source.kind != NPY or not source.path.endswith(".labels.npy"):
            return False
        stem = source.path[: -len(".labels.npy")]
        return f"{stem}.embeddings.npy" in npy or f"{stem}.npy" in npy

    return [s for s in sources if not paired(s)]


class _Replay(io.RawIOBase):
    """A stream that gives back the bytes already read from it, then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            data, self._head = self._head[: len(buffer)], self._head[len(buffer) :]
        else:
            # read1: what the pipe holds now, rather than waiting for a full buffer.
            read = getattr(self._rest, "read1", self._rest.read)
            data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Watched(io.BufferedReader):
    """A buffered stream that remembers the last bytes it handed out
    (``tail``, up to 8): where its reader stopped, whatever the buffer read
    ahead of it. pyarrow reads a Python stream through ``read`` alone."""

    tail = b""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if data:
            self.tail = (self.tail + data[-8:])[-8:]
        return data


def _read_head_of(stream: BinaryIO) -> bytes:
    """Up to 8 bytes, however short the reads of a pipe are."""
    head = b""
    while len(head) < 8:
        chunk = stream.read(8 - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _stdin_source() -> Source:
    """Sniff standard input; spool formats that need seeking to a temporary file."""
    stream = sys.stdin.buffer
    # Read the head rather than peek at it: a pipe may hand over fewer bytes than
    # asked for, and a test runner's stdin cannot peek at all.
    head = _read_head_of(stream)
    if not head:
        raise InputError(
            "standard input is empty",
            file=STDIN,
            fix="pipe a Parquet, Arrow IPC, .npy or .npz file into distgap",
        )
    kind = _check_kind(STDIN, head)
    if kind == ARROW_STREAM:
        replay = _Watched(_Replay(head, stream), 1 << 20)
        return Source(STDIN, STDIN, kind, stream=replay)
    with tempfile.NamedTemporaryFile(prefix="distgap-stdin-", delete=False) as spool:
        try:
            spool.write(head)
            shutil.copyfileobj(stream, spool, 1 << 20)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: leave nothing
            with contextlib.suppress(OSError):
                os.unlink(spool.name)
            raise
    return Source(STDIN, spool.name, kind)


def release(sources: list[Source]) -> None:
    """Delete the spool files made for standard input."""
    for source in sources:
        if source.name == STDIN and source.path != STDIN:
            with contextlib.suppress(OSError):
                os.unlink(source.path)
