"""Writing files so that a failure (disk full, permission, kill) never leaves half a file.

Every write goes to a temporary file beside the target and is renamed over it only when
complete; a failure removes the temporary file and re-raises.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: the exit code of every CLI for an environment error (disk full, unwritable or read-only
#: destination, permissions): distinct from 2, a problem with the user's own input or flags
ENVIRONMENT_EXIT = 3


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def describe(e: OSError) -> str:
    """One line for an environment OSError: what failed and where."""
    where = f": {e.filename}" if e.filename else ""
    return " ".join(f"{e.strerror or e}{where}".split())
