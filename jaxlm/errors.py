"""The two kinds of error a user sees, so the CLI can tell them apart.

- :class:`UserError`: the input was wrong (a config key, a file, a value). One line naming it
  and what would be valid; the CLI exits with code 2.
- :class:`TrainingError`: the run cannot go on (e.g. a non-finite loss); exit code 1.
"""


class UserError(ValueError):
    """Bad input from the user; ``str(err)`` is a one-line explanation."""


class TrainingError(RuntimeError):
    """A run that cannot continue; the message says why and what to try."""
