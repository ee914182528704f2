"""Start-up of the ``ntkit`` command (private): Ctrl-C while the package loads.

Importing ntkit loads torch, which takes seconds; a Ctrl-C then would print a long
traceback of the import machinery. For the ``ntkit`` command only, SIGINT during the import
ends the process with status 130 and one line; :func:`ntkit.cli.main` restores Python's
handler (KeyboardInterrupt) for the run itself, where the CLI reports it in one line too.
"""

from __future__ import annotations

import os
import signal
import sys


def _exit_quietly(signum, frame) -> None:  # pragma: no cover - runs in a subprocess
    sys.stderr.write("ntkit: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def quiet_interrupt() -> None:
    """Until :func:`restore_interrupt`, SIGINT exits with status 130 and one line."""
    try:
        signal.signal(signal.SIGINT, _exit_quietly)
    except ValueError:  # pragma: no cover - not the main thread
        pass


def restore_interrupt() -> None:
    """Back to Python's default SIGINT handler (raises KeyboardInterrupt)."""
    try:
        if signal.getsignal(signal.SIGINT) is _exit_quietly:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass
