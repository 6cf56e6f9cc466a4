"""What `run` refuses before it starts, checked without starting anything (also for `config check`).

One function, `check_settings`, used by both `dodo-outbox run` (agent/service.py) and
`dodo-outbox config check`, so a configuration that passes the check is one the agent starts with.
Checks that need the running system (a port already in use, another agent on the same outbox) stay
where they happen: binding the socket and taking the lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import Settings
from agent.errors import ConfigError
from agent.intake.server import check_listen

DROPDIR_PARTS = ("tmp", "new", "done", "rejected")


def check_settings(settings: Settings) -> None:
    """Raise ConfigError naming the key for anything `run` would refuse. Creates and binds nothing."""
    http = settings.intake_http
    if http.enabled:
        check_listen(http.listen, http.token)
    if not settings.on_postgres:
        check_location("[outbox] path", settings.outbox_path, directory=False)
    dropdir = settings.intake_dropdir
    if dropdir.enabled:
        root = Path(dropdir.path)
        check_location("[intake.dropdir] path", root, directory=True)
        for part in DROPDIR_PARTS:
            if (root / part).exists() and not (root / part).is_dir():
                raise ConfigError(
                    f"[intake.dropdir] path = {dropdir.path!r}: {root / part} is a file, where the drop "
                    f"directory needs its {part}/ folder; move the file away"
                )


def check_location(key: str, path: Path, *, directory: bool) -> None:
    """`path` is (or can be created as) a file, or a directory when `directory`. Raises ConfigError."""
    want = "a directory" if directory else "a file"
    if path.exists():
        if path.is_dir() != directory:
            raise ConfigError(f"{key} = {str(path)!r} is not {want}; point {key} at {want}")
        if not os.access(path, os.W_OK | (os.X_OK if directory else os.R_OK)):
            raise ConfigError(f"{key} = {str(path)!r}: this user may not write it; fix its owner or mode")
        return
    # It will be created: the nearest existing parent must be a directory this user may write.
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key} = {str(path)!r} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key} = {str(path)!r} cannot be created: this user may not write {parent}; "
            "create it with the right owner or choose another path"
        )
