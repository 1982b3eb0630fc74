"""Expected failures: each ends a command with one line naming the file or key, and exit code 2."""


class ExpectedError(Exception):
    """A failure the user can fix from its message (bad config, bad data, unusable checkpoint, stopped run)."""


class ConfigError(ExpectedError, ValueError):
    """One-line configuration error."""


class DataError(ExpectedError, ValueError):
    """Bad input data; the message is one line naming the file, item or key."""


def first_line(err, with_type=False, limit=None):
    """The first non-empty line of an exception's message (its type name when the message is empty)."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0][:limit] if limit else lines[0]
    return f"{type(err).__name__}: {line}" if with_type else line


def error_line(err):
    """One line for an expected failure; an OS error (full disk, read-only or missing path) names its file."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return first_line(err)
