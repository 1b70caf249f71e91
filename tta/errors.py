"""The one exception type the command-line tools turn into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a missing or corrupt file, an impossible value.

    The CLIs print ``error: <message>`` on one line to stderr and exit with code 2.
    The message must say what is wrong and, where it helps, what to do instead.
    """
