"""The one base class for mistakes an operator makes and can fix: the CLI prints them as one line.

An `OperatorError` is raised for what the person running asr-stream controls (a config value, a
model that was never prepared, an unknown engine build, an unreadable audio file, a port already
taken). Its message is one line that says what is wrong and, where there is one, the command that
fixes it. `asr-stream` prints it on stderr and exits 2; a traceback appears only with `--debug`.
Everything else (a bug, a dying broker) keeps its traceback: hiding those would hide defects.

This module sits below every stage so that any of them can raise it (tests/test_layering.py).
"""

from __future__ import annotations


class OperatorError(Exception):
    """A mistake in how asr-stream was configured or called; `str(error)` is the one-line message."""
