"""Let `kill` unwind a bake like Ctrl-C does.

Python's default SIGTERM action ends the process at once, without running `finally` blocks: vLLM's
engine-core and worker processes were left behind (one kept spinning at ~70% of a core and held
3.5 GB), and the bake's temporary directory stayed on disk. Inside `exit_on_sigterm()` a SIGTERM
raises SystemExit instead, so samplers are closed and temporary output removed on the way out.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextmanager
def exit_on_sigterm():
    """SIGTERM raises SystemExit(143) for the duration of the block. Only in the main thread (where
    Python delivers signals), and only when SIGTERM has its default action: a handler the caller
    installed, or an enclosing `exit_on_sigterm`, is left alone."""
    own = (threading.current_thread() is threading.main_thread()
           and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if own:
        signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
