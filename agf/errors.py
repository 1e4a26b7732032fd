"""The one exception type for mistakes a user can fix (bad input, missing store, bad SQL)."""


class AgfError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
