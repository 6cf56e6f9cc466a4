"""What the PostgreSQL reliability tests share: an agent config on a PostgreSQL outbox, HTTP producers
that record what the agent acknowledged, and the outbox's rows read through the store interface (so
the tests hold whatever tables the store keeps them in)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx

from agent.store import OutboxStore, StoreOptions, open_store


@contextmanager
def pg_store(url: str, schema: str) -> Iterator[OutboxStore]:
    store = open_store(url, StoreOptions(schema=schema))
    try:
        yield store
    finally:
        store.close()


def states(url: str, schema: str, ids: Sequence[str]) -> dict[str, str]:
    """The outbox state of each of `ids` that the outbox holds."""
    with pg_store(url, schema) as store:
        return {event_id: row.state for event_id, row in store.rows_by_event_id(list(ids)).items()}


class Producer:
    """`clients` threads POSTing events with fresh event_ids to the agent until `stop()`.

    An event is acknowledged when its request got 200. Every answer is counted by status (`answers`,
    a connection error as its exception's name); `phase` prefixes the ids of what is sent next.
    """

    def __init__(self, url: str, clients: int = 3, per_request: int = 3) -> None:
        self.url = url
        self.clients = clients
        self.per_request = per_request
        self.phase = "a"
        self.acked: set[str] = set()
        self._sent: set[str] = set()
        self.answers: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Producer:
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            seq = 0
            while not self._stop.is_set():
                ids = [f"{self.phase}-{number}-{seq}-{i}" for i in range(self.per_request)]
                seq += 1
                with self.lock:
                    self._sent.update(ids)
                events = [{"event_id": i, "customer_id": "cus_1", "event_name": "api.call"} for i in ids]
                try:
                    answer = str(http.post("/events/ingest", json={"events": events}).status_code)
                except httpx.HTTPError as exc:
                    answer = type(exc).__name__
                with self.lock:
                    self.answers[answer] += 1
                    if answer == "200":
                        self.acked.update(ids)

    def count(self, answer: str = "200") -> int:
        with self.lock:
            return self.answers[answer]

    def sent(self) -> set[str]:
        """Every event_id offered so far, acknowledged or not."""
        with self.lock:
            return set(self._sent)

    def stop(self) -> set[str]:
        """Stop the clients (each finishes its request); returns every acknowledged event_id."""
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        assert not any(t.is_alive() for t in self._threads), "a producer hangs on its request"
        with self.lock:
            return set(self.acked)
