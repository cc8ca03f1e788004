"""The one exception type a user can cause; stage scripts print it without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad parameter, missing file, no network...).

    The message says what went wrong and what to do about it.
    """
