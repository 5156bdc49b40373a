"""Errors that the command line reports as one line, without a traceback."""

import click


class CmbscatError(click.ClickException):
    """Bad input or an unusable file: printed as ``Error: <message>``, exit status 1.

    Library code raises it where a user's choice is at fault (a parameter out of
    range, a file of the wrong kind), so that the CLI can report it in one line
    while Python callers still get an exception they can catch.
    """
