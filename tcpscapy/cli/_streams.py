"""Closed standard streams (`<&-`, `>&-`, `2>&-`): Python starts with sys.stdin/stdout/stderr
None, and the next file or socket opened takes the free descriptor 0, 1 or 2, where a stray
write (a child's stderr, say) would land in it. Each closed one is put back on /dev/null."""

from __future__ import annotations

import os
import sys

NAMES = ("stdin", "stdout", "stderr")


def reopen_closed() -> list[str]:
    """Reopen on /dev/null every standard stream that was closed; return their names.

    The descriptor is taken back first (os.open returns the lowest free number), then
    the sys attribute is made a usable text stream over it.
    """
    closed = [name for name in NAMES if getattr(sys, name) is None]
    for fd, name in enumerate(NAMES):
        if name not in closed:
            continue
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if got != fd:  # a lower one was free too and is reopened in its own turn
                os.dup2(got, fd)
                os.close(got)
        stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115
        setattr(sys, name, stream)
    return closed
