"""The one exception type for mistakes a user can fix (missing folder, corrupt file, mismatched cache).

The CLI prints its message as a single line and exits with code 2; everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input. The message names the file and says what to do."""
