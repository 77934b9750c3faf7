"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with what the user asked for (bad suite, missing file, no GPU, ...)."""
