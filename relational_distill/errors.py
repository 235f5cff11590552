"""The one exception type for mistakes a user can fix (missing folder, corrupt file, mismatched cache).

The CLI prints its message as a single line and exits with code 2; everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input. The message names the file and says what to do."""


def user_message(err: UserError) -> str:
    """The one-line message of ``err``, also when it was raised in a DataLoader worker: torch re-raises it in the
    main process with the worker's traceback in the message, whose last line is the original error."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(err).__name__
