"""Logging set-up: structlog, configured once, for the agent and the libraries under it.

``json`` writes one object per line (journald, shippers); ``console`` is for people; ``auto`` picks
console on a terminal, JSON otherwise. Every line has ``timestamp`` (ISO 8601 UTC), ``level``, ``event``.
Logs go to stderr: stdout belongs to CLI output such as ``--json``. stdlib ``logging`` (uvicorn,
apscheduler, httpx) goes through the same renderer and stream, at WARNING by default; start uvicorn
with ``log_config=None`` so its loggers propagate to the root logger. A redaction processor masks
credentials as defence in depth. Under systemd (``$JOURNAL_STREAM`` names our stream) each line gets
a ``<N>`` syslog priority prefix that journald strips and stores, so ``journalctl -p err`` works.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO, cast

import structlog
from structlog.contextvars import merge_contextvars
from structlog.dev import ConsoleRenderer, plain_traceback
from structlog.processors import JSONRenderer, StackInfoRenderer, TimeStamper, add_log_level, format_exc_info
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = ["REDACTED", "add_secret", "configure", "get_logger", "redact", "set_level"]

REDACTED = "[REDACTED]"
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_FORMATS = ("auto", "json", "console")
_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
# Keys whose value is a credential whatever it looks like ("x-api-key", "access_token", "password").
# Anchored at the end so metering fields such as "tokens" or "token_count" stay readable.
_SECRET_KEY = re.compile(r"(?:^|_)(?:api_?key|authorization|token|password|passwd|secret|cookie)$")
# "api_key=abc", "Authorization: Bearer abc", '"token": "abc"' inside a free-text string.
_INLINE = re.compile(
    r"(?i)\b([\w-]*?(?:api[_-]?key|authorization|token|password|passwd|secret))"
    r"(\s*[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"'&,;]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+")
_secrets: set[str] = set()
_state: dict[str, Any] = {"stdlib_level": _LEVELS["warning"], "handler": None}


def _parse_level(level: str) -> int:
    try:
        return _LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"invalid log level {level!r}: use one of {', '.join(_LEVELS)}") from None


def add_secret(value: str) -> None:
    """Mask every occurrence of ``value`` (the loaded API key) in log lines; under 8 chars is ignored."""
    if len(value) >= 8:
        _secrets.add(value)


def _scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(rf"\1{REDACTED}", _INLINE.sub(rf"\1\2{REDACTED}", text))


def _redact_value(key: str | None, value: Any) -> Any:
    if key is not None and _SECRET_KEY.search(key.lower().replace("-", "_")):
        return REDACTED
    if isinstance(value, str):
        return _scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(None, v) for v in value]
    # Anything else is rendered through repr() by the renderers anyway: scrub that text.
    return _scrub(repr(value))


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask credential-named keys and credential-looking text in every value."""
    return {key: _redact_value(key, value) for key, value in event_dict.items()}


def _is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    # $JOURNAL_STREAM is "<dev>:<inode>" of the journal connection systemd gave us.
    try:
        dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def _with_priority(renderer: Processor) -> Processor:
    def render(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        priority = _SYSLOG_PRIORITY.get(str(event_dict.get("level", "")), 6)
        return f"<{priority}>{cast(str, renderer(logger, method, event_dict))}"

    return render


class _NamedWriteLogger(structlog.WriteLogger):
    # Remembers the name given to get_logger(); _add_logger_name puts it on the line.
    def __init__(self, file: TextIO, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _WriteHandler(logging.Handler):
    # Writes through structlog's WriteLogger: both paths share its per-stream lock and write each
    # line in one call, so stdlib and structlog lines never interleave mid-line.
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._writer = structlog.WriteLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure(
    format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    stdlib_level: str = "warning",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger once at start (calling again replaces it).

    Raises ValueError, naming the valid choices, for an unknown ``format``, ``level`` or ``stdlib_level``."""
    if format not in _FORMATS:
        raise ValueError(f"invalid log format {format!r}: use one of {', '.join(_FORMATS)}")
    level_no, stdlib_no = _parse_level(level), _parse_level(stdlib_level)
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", None) and out.isatty())
    if format == "auto":
        format = "console" if tty else "json"
    # plain_traceback, not rich's: rich shows local variables, and a local may hold the key.
    renderer: Processor = (
        JSONRenderer()
        if format == "json"
        else ConsoleRenderer(colors=tty, exception_formatter=plain_traceback)
    )
    if _is_journal(out, os.environ if environ is None else environ):
        renderer = _with_priority(renderer)

    pre: list[Processor] = [merge_contextvars, add_log_level, TimeStamper(fmt="iso", utc=True)]
    # Exceptions are formatted to text before redaction so tracebacks are scrubbed too.
    post: list[Processor] = [StackInfoRenderer(), format_exc_info, redact, renderer]
    structlog.configure(
        processors=[*pre, _add_logger_name, *post],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *args: _NamedWriteLogger(out, args[0] if args else None),
        # Not cached: a cached logger keeps the level it was first used at, and set_level()
        # must reach loggers created at import time.
        cache_logger_on_first_use=False,
    )

    handler = _WriteHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*pre, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *post],
        )
    )
    root = logging.getLogger()
    if _state["handler"] is not None:
        root.removeHandler(_state["handler"])
    root.addHandler(handler)
    _state.update(stdlib_level=stdlib_no, handler=handler)
    root.setLevel(max(stdlib_no, level_no))


def set_level(level: str) -> None:
    """Change the level at run time (SIGHUP); ValueError for an unknown name. Loggers from
    :func:`get_logger` see it at their next call; one made concrete by ``.bind()`` keeps the level it
    was bound at, so bind per unit of work (a batch, a request), not once per process."""
    level_no = _parse_level(level)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level_no))
    logging.getLogger().setLevel(max(_state["stdlib_level"], level_no))


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; ``name`` is added to every line as ``logger``.

    Call it as ``get_logger(__name__)``, one logger per module: a module name under ``agent.`` is logged
    as ``dodo_outbox.<module>`` (``agent.delivery.worker`` → ``dodo_outbox.delivery.worker``).
    """
    if name is not None and (name == "agent" or name.startswith("agent.")):
        name = "dodo_outbox" + name[len("agent") :]
    # The name travels as a logger-factory argument: "logger" cannot be an initial value.
    args = (name,) if name else ()
    return cast(FilteringBoundLogger, structlog.get_logger(*args))
