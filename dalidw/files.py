"""Files written whole or not at all: what is written to a temporary file beside the target
replaces it by a rename, so a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def replaced(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path``, with its extension, to write to: it replaces ``path``
    when the block ends without an error, and is removed otherwise.

    Raises:
        OSError: the folder of ``path`` does not exist or cannot be written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", suffix=os.path.splitext(path)[1],
                                         dir=folder)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
