"""The files of the drop directory: opening an input safely, and writing its `<name>.errors.jsonl`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO

import orjson


class ErrorsFile:
    """The errors file of one input, written as problems are found (a bad file of any size fits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._stream: IO[bytes] | None = None

    def add(self, line: int | None, event_id: str | None, code: str, field: str | None, message: str) -> None:
        if self._stream is None:
            self._stream = self.path.open("wb")
        entry = {"line": line, "event_id": event_id, "code": code, "field": field, "message": message}
        try:
            encoded = orjson.dumps(entry)
        except TypeError:
            # An id or field holding bytes that are not UTF-8 (lone surrogates): orjson refuses them, the
            # stdlib writes them as \udcXX escapes. (Before: the TypeError escaped from scan(), the file
            # stayed in new/ and, scanned first every time, blocked every file after it.)
            encoded = json.dumps(entry).encode()
        self._stream.write(encoded + b"\n")
        self.count += 1

    def finish(self, final: Path | None) -> None:
        """Close, then move the file to `final` (durably) or delete it when `final` is None."""
        if self._stream is not None:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            self._stream = None
        if final is None:
            self.path.unlink(missing_ok=True)
        elif self.count:
            os.replace(self.path, final)


def field_of(path: str) -> str | None:
    """`event.metadata.tokens` → `metadata.tokens`; the event itself → None."""
    return path.split(".", 1)[1] if "." in path else None


def open_regular(path: Path) -> IO[bytes]:
    """Open a regular file without following symlinks (a link could point anywhere the agent may read)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it changes nothing for a regular file).
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")
