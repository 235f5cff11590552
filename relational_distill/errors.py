"""The one exception type for mistakes a user can fix (missing folder, corrupt file, mismatched cache).

The CLI prints its message as a single line and exits with code 2; everything else is a bug and keeps
its traceback; benchmarks/ scripts do the same through :func:`run_script`.
"""
import sys


class UserError(Exception):
    """A problem with the user's input. The message names the file and says what to do."""


def print_user_error(err: UserError) -> None:
    """Print ``err`` as one line ``error: ...`` on stderr, also when it was raised in a DataLoader worker: torch
    re-raises it in the main process with the worker's traceback in the message, whose last line is the original
    error."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    print(f"error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)


def run_script(main) -> None:
    """Run a script's ``main`` (the benchmarks/ scripts) the way the CLI runs a command: a :class:`UserError` is one
    line on stderr and exit code 2, everything else keeps its traceback."""
    try:
        main()
    except UserError as err:
        print_user_error(err)
        raise SystemExit(2) from None
