"""The data package's error and warning types (shared by every module of ``jaxlm.data``)."""

from jaxlm.errors import UserError


class DataError(UserError):
    """Bad input data or data settings; the message is one line saying what and how to fix it."""


class DataWarning(UserWarning):
    """Data that is suboptimal, or was repaired and counted; training goes on."""
