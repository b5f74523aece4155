"""Errors that carry a message meant for a person: the CLI prints them without a traceback."""


class MemflowError(Exception):
    """Base class: something the user can act on (bad input, missing file, wrong weights)."""

    exit_code = 1


class CheckpointError(MemflowError):
    """A weight file is missing, unreadable, truncated or does not fit the model."""


class InputError(MemflowError):
    """A timeline or option is invalid. Exit code 2, like a usage error."""

    exit_code = 2


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 switch frame`, `2 switch frames`, `0 items`: a count and its noun, for every message built from a count
    (irregular plurals given: `counted(n, "was", "were")`-style words are the caller's)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
