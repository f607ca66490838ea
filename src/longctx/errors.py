"""Errors a user can act on. The CLI prints their message as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user: arguments, specs, paths. The message says what to do."""


class DataMissingError(UsageError):
    """A corpus is not on disk; the message names the command that fetches it."""


class FitError(Exception):
    """A task cannot produce a prompt of the requested length (e.g. gold documents exceed it)."""
