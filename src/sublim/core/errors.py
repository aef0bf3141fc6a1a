"""The one exception type users see: a one-line message saying what, where and how to fix."""


class SublimError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""
