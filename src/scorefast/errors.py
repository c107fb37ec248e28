"""The one exception type for bad input: the CLI prints its message as one line and exits with 2."""


class UserError(ValueError):
    """Something the user gave is wrong (a file, a flag, a value); the message names it."""
