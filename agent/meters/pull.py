"""Reading from Dodo: the client, paced GETs within the rate budget, and the meters (GET /meters)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx

from agent import __version__
from agent.config import Settings, read_api_key
from agent.delivery.pacing import TokenBucket
from agent.errors import ConfigError, DeliveryError
from agent.meters.rules import Meter, meter_from_api

PAGE_SIZE = 100
MAX_PAGES = 1000
"""A server that never returns an empty page must not keep the puller going for ever."""


def dodo_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client for Dodo's read endpoints with the bearer key. Raises ConfigError without a key."""
    key, where = read_api_key(settings)
    if key is None:
        raise ConfigError(where)
    headers = {"Authorization": f"Bearer {key}", "User-Agent": f"dodo-outbox/{__version__}"}
    timeout = settings.delivery.timeout_seconds
    return httpx.Client(base_url=settings.dodo.url, headers=headers, timeout=timeout, transport=transport)


def paced_get(
    client: httpx.Client,
    path: str,
    bucket: TokenBucket,
    params: Mapping[str, str | int] | None = None,
    *,
    attempts: int = 5,
    sleep: Callable[[float], object] = time.sleep,
) -> httpx.Response:
    """GET within the rate budget; a 429 pauses the bucket (Retry-After, else 1 s doubling) and retries.

    Raises DeliveryError on a connection error or timeout, and for 401/403 (a key problem that no
    retry fixes). Other statuses are returned.
    """
    for attempt in range(attempts):
        bucket.acquire(time.monotonic, sleep)
        try:
            response = client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"GET {path} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise DeliveryError(
                f"Dodo refused the API key ({response.status_code}) for GET {path}; check [dodo] "
                "api_key_file / DODO_PAYMENTS_API_KEY and that the key may read"
            )
        if response.status_code != 429 or attempt == attempts - 1:
            return response
        try:
            wait = float(response.headers.get("retry-after", ""))
        except ValueError:
            wait = float(2**attempt)
        bucket.slow_down(time.monotonic(), min(max(wait, 0.0), 60.0))
    raise AssertionError("unreachable")


def fetch_meters(client: httpx.Client, bucket: TokenBucket, page_size: int = PAGE_SIZE) -> list[Meter]:
    """Every active meter: pages from 0 until one comes back empty (the SDK's auto-pager skips one).

    Raises DeliveryError for an error status, a body without `items`, or more than MAX_PAGES pages.
    """
    meters: dict[str, Meter] = {}
    for number in range(MAX_PAGES):
        params: dict[str, str | int] = {"page_size": page_size, "page_number": number, "archived": "false"}
        response = paced_get(client, "/meters", bucket, params)
        if response.status_code != 200:
            raise DeliveryError(f"GET /meters answered {response.status_code}: {response.text[:300]}")
        try:
            items = response.json().get("items")
        except (ValueError, AttributeError):
            items = None
        if not isinstance(items, list):
            raise DeliveryError("GET /meters answered without an `items` list")
        if not items:
            return list(meters.values())
        for item in items:
            meter = meter_from_api(item)
            meters[meter.meter_id or f"{number}:{len(meters)}"] = meter
    raise DeliveryError(f"GET /meters still returned meters after {MAX_PAGES} pages; stopped")
