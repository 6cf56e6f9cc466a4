"""The API key the worker sends with, and where it came from.

Contract: :class:`ApiKeys` reads the key with :func:`agent.config.read_api_key` (``[dodo] api_key_file``,
systemd's credential, ``DODO_PAYMENTS_API_KEY``) only when asked (:meth:`ApiKeys.load`, or
:meth:`ApiKeys.current` with ``reload``), so a fixed key applies at the next read. A key found is
registered with the log redactor. No repr here shows the key: not of the object, not of the
environment it reads (:class:`_Environ`). Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from agent.config import ApiKey, Settings, read_api_key
from agent.logs import add_secret


class _Environ(Mapping[str, str]):
    """A live view of the environment the key may come from; its repr shows no values (the key)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._values = environ

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<environment: {len(self._values)} variables>"


class ApiKeys:
    """The current API key (None until read, or when none is usable) and its ``source``.

    ``source`` names where the key came from (a file path, ``DODO_PAYMENTS_API_KEY``); when no key is
    usable it is the sentence saying why, which is what a ``no_key`` pause shows.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = _Environ(environ)
        self._key: ApiKey | None = None
        self._source = ""
        self._loaded = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ApiKeys(source={self._source!r})"

    @property
    def source(self) -> str:
        return self._source

    @property
    def loaded(self) -> bool:
        """Whether the key has been read at least once."""
        return self._loaded

    def load(self) -> ApiKey | None:
        """Read the key afresh; None when no key is usable (``source`` then says why)."""
        key, source = read_api_key(self._settings, self._environ)
        if key is not None:
            add_secret(key)  # defence in depth: the log redactor masks it wherever it might show up
        with self._lock:
            self._key, self._source, self._loaded = key, source, True
        return key

    def current(self, reload: bool) -> ApiKey | None:
        """The key as last read, or read afresh when ``reload`` (or never read yet)."""
        return self.load() if reload or not self._loaded else self._key
