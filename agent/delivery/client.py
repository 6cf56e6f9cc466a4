"""The Dodo client: send one request body to ``POST {base}/events/ingest`` and say what came back.

One :class:`DodoClient` holds one ``httpx.Client`` (keep-alive connection reuse; thread-safe, so every
sender thread shares it). It never raises for what the network or Dodo does: every outcome, timeouts
and refused connections included, is a :class:`SendResult`; deciding what the outcome means is
``agent.delivery.backoff``'s job and acting on it ``agent.delivery.settle``'s.

The request body is spliced from the stored canonical JSON of each event (:func:`build_body`), never
decoded and re-encoded: the bytes Dodo receives are the bytes the outbox stored.

The API key is an argument of :meth:`DodoClient.send`, not state of the client, so no repr of the client
can show it; it is scrubbed from every error text the client produces.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import httpx
import orjson

from agent import __version__
from agent.config import Settings
from agent.store.records import RESPONSE_EXCERPT_CHARS

INGEST_PATH = "/events/ingest"
USER_AGENT = f"dodo-outbox/{__version__}"
BODY_PREFIX = b'{"events":['
BODY_SUFFIX = b"]}"
BODY_OVERHEAD = len(BODY_PREFIX) + len(BODY_SUFFIX)
"""Bytes a request body adds around the comma-joined events."""

# Response headers a sender needs (retry hints and rate-limit state); names in lower case.
KEPT_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-should-retry",
)


def build_body(payloads: Sequence[str]) -> bytes:
    """The request body ``{"events":[p1,p2,...]}`` from canonical event JSON texts, spliced as is.

    The result equals ``orjson.dumps({"events": [orjson.loads(p) for p in payloads]})`` for canonical
    payloads, without decoding any of them.
    """
    return b"%b%b%b" % (BODY_PREFIX, ",".join(payloads).encode(), BODY_SUFFIX)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one request got.

    ``status`` is the HTTP status, or None when no response came (timeout, refused or dropped
    connection; ``error`` then says which). ``text`` is an excerpt of the response body (or the error).
    ``headers`` holds the lower-cased :data:`KEPT_HEADERS` present. ``ingested_count`` is Dodo's count
    for a 2xx whose body carries it, else None. ``duration`` is in seconds.
    """

    status: int | None
    text: str
    duration: float
    headers: Mapping[str, str] = field(default_factory=dict)
    ingested_count: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class DodoClient:
    """A keep-alive HTTP client for Dodo's ingest endpoint. Thread-safe; close it when done.

    ``base_url`` is e.g. ``https://test.dodopayments.com`` (no trailing path). ``transport`` replaces
    the network for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = 30.0,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + INGEST_PATH
        self.timeout_seconds = timeout_seconds
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            transport=transport,
            # Dodo answers directly; a redirect would carry the key to wherever it points.
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> DodoClient:
        """A client for ``[dodo]`` and ``[delivery] timeout_seconds`` / ``max_in_flight``."""
        return cls(
            settings.dodo.url,
            timeout_seconds=settings.delivery.timeout_seconds,
            max_connections=max(2, settings.delivery.max_in_flight),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"DodoClient({self.url!r}, timeout_seconds={self.timeout_seconds})"

    def send(self, body: bytes, api_key: str) -> SendResult:
        """POST ``body`` with ``Authorization: Bearer <api_key>``; never raises for network trouble.

        Returns a SendResult with ``status=None`` for a timeout or a connection error. The key appears
        in no field of the result.
        """
        started = time.perf_counter()
        try:
            response = self._http.post(self.url, content=body, headers={"Authorization": f"Bearer {api_key}"})
        except httpx.TimeoutException as exc:
            return self._failure(f"timeout after {self.timeout_seconds:g} s ({type(exc).__name__})", started)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            # ValueError/UnicodeEncodeError: a key with characters a header cannot carry. The message
            # of such errors may quote the header value, so it is scrubbed.
            return self._failure(_scrub(f"{type(exc).__name__}: {exc}", api_key), started)
        duration = time.perf_counter() - started
        status = response.status_code
        content = response.content
        ingested: int | None = None
        if 200 <= status < 300:
            ingested = _ingested_count(content)
        text = content[: RESPONSE_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:RESPONSE_EXCERPT_CHARS]
        kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        return SendResult(status, _scrub(text, api_key), duration, kept, ingested)

    def _failure(self, message: str, started: float) -> SendResult:
        return SendResult(None, message, time.perf_counter() - started, error=message)

    def close(self) -> None:
        """Close the connections. Safe to call twice."""
        self._http.close()

    def __enter__(self) -> DodoClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _ingested_count(content: bytes) -> int | None:
    """``ingested_count`` of a 2xx body, or None when the body does not carry a whole number."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    value = document.get("ingested_count") if isinstance(document, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _scrub(text: str, api_key: str) -> str:
    # A key shorter than 4 characters would blank out ordinary words; such a key is refused anyway.
    return text.replace(api_key, "***") if len(api_key) >= 4 else text
