"""The errors a user can cause, and how the command line reports them.

Every expected failure (a bad config, data file, checkpoint or environment) is an `EveError`
whose message names the file, line/sample or key and, where there is one, the fix. The CLI
(`eve_ms.cli.main`) prints it as one line on stderr and exits with `exit_code`: 2 for usage and
config errors (the command line or a yaml asks for something impossible or missing), 1 for
runtime ones (the data, a checkpoint or training turned out unusable). A traceback is printed
only with `--debug` or EVE_MS_DEBUG=1.
"""
from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class EveError(Exception):
    """An expected failure; its message is what the user reads."""

    exit_code = EXIT_RUNTIME


class UsageError(EveError):
    """The command line or a config asks for something missing or impossible."""

    exit_code = EXIT_USAGE


def exit_code_of(err: BaseException) -> int | None:
    """The exit status for an expected error, None for a bug (whose traceback must stay visible)."""
    if isinstance(err, EveError):
        return err.exit_code
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE  # a path the user gave that is not there
    if isinstance(err, (OSError, UnicodeError)):
        return EXIT_RUNTIME  # permissions, full disk, undecodable files: named by the message
    return None


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with '; ')."""
    text = str(err)
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__
