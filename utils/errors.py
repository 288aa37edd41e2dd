"""Errors meant for people: shown as plain lines, without a traceback, by the entry points."""
from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix (bad data, bad flag, missing file).

    Entry points print ``str(err)`` (one or more lines saying file, problem and remedy) and exit with
    ``exit_code``; ``--verbose`` adds the traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
