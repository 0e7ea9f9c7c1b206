"""Named exceptions; only the command line turns them into a message and exit code."""

from __future__ import annotations


class DistgapError(Exception):
    """Base class of the errors distgap reports to a user."""

    exit_code = 2


class UsageError(DistgapError):
    """A flag or argument that cannot work, whatever the input."""


class InputError(DistgapError):
    """Input that distgap cannot evaluate, located as precisely as known.

    Args:
        problem: what is wrong, in the user's terms.
        file: the input file, or ``"<stdin>"``.
        row: the row's index (0-based) in ``file``.
        input_row: the row's index over all inputs in read order, where
            several files are read.
        column: the column or array the problem is in.
        fix: how to fix it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        row: int | None = None,
        input_row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.row = row
        self.input_row = input_row
        self.column = column
        self.fix = fix
        super().__init__(self.message())

    def message(self) -> str:
        """One line: where, what, and how to fix it."""
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            after = self.input_row not in (None, self.row)
            where.append(
                f"row {self.row} (row {self.input_row} of all inputs)"
                if after
                else f"row {self.row}"
            )
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = (": ".join([", ".join(where), self.problem])) if where else self.problem
        if self.fix:
            text += f"; {self.fix}"
        return text


class NoResultError(DistgapError):
    """The input was read but no batch had a gap (every batch was degenerate)."""


class DeviceError(DistgapError):
    """The requested device is not available."""


class NumericalError(DistgapError):
    """A computation left the range of its number type."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, ``docker stop``, ``timeout``): handled as
    Ctrl-C is, so temporary files are removed on the way out, with the exit
    code a shell gives a process ended by it (143)."""
