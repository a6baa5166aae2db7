"""User-facing errors: one line that names the problem and the fix, exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, corrupt artifact).

    The message is printed as one line by the CLI wrapper in ``fnet_tf.core.cli``; it should say
    what is wrong and what to do about it.
    """

    exit_code = 2


def first_line(error, limit=160):
    """The first line of an exception's message (its type's name if empty), for quoting a
    library's error inside a one-line UserError."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
