"""`dodo-outbox fake-dodo` as a user runs it: a real subprocess on 127.0.0.1, its banner, poison flags,
the example meters file, and the admin API's index (checked against the README's table)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.emulator.admin import ADMIN_ROUTES
from agent.emulator.server import load_meters_file

ROOT = Path(__file__).parent.parent
EXAMPLE_METERS = ROOT / "config" / "meters.example.json"
AUTH = {"Authorization": "Bearer test_key"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeDodo:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DODO_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "fake-dodo", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.banner = threading.Event()
        self.accepted_at_banner: bool | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("fake Dodo on ") and not self.banner.is_set():
                # Checked the moment the banner is read: the port must already accept connections.
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                    self.accepted_at_banner = True
                except OSError:
                    self.accepted_at_banner = False
                self.banner.set()
            self.lines.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(30)


@pytest.fixture
def fake() -> Iterator[FakeDodo]:
    running = FakeDodo(
        "--meters",
        str(EXAMPLE_METERS),
        "--reject-event-ids",
        "bad_1,bad_2",
        "--reject-event-ids",
        "bad_3",
        "--poison-customer",
        "cus_poison",
    )
    try:
        assert running.banner.wait(60), running.lines
        yield running
    finally:
        running.stop()


def ingest(url: str, *events: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/events/ingest", headers=AUTH, json={"events": list(events)}, timeout=30)


def event(event_id: str, customer_id: str = "cus_1") -> dict[str, str]:
    return {"event_id": event_id, "customer_id": customer_id, "event_name": "api.call"}


def test_banner_appears_only_once_the_port_accepts_connections(fake: FakeDodo) -> None:
    assert fake.accepted_at_banner is True, fake.lines
    [banner] = [line for line in fake.lines if line.startswith("fake Dodo on ")]
    assert fake.url in banner and "refusing 3 event_id(s), 1 customer(s)" in banner


def test_poison_flags_refuse_those_events_with_400(fake: FakeDodo) -> None:
    for poison in (event("bad_2"), event("bad_3"), event("ok_2", "cus_poison")):
        answer = ingest(fake.url, event("ok_1"), poison)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "BAD_REQUEST"
        assert "events[1]" in answer.json()["message"]
    assert ingest(fake.url, event("bad_10"), event("ok_1")).json() == {"ingested_count": 2}  # exact ids
    stored = httpx.get(f"{fake.url}/_emulator/events").json()
    assert sorted(e["event_id"] for e in stored["items"]) == ["bad_10", "ok_1"]


def test_example_meters_file_loads_and_is_served(fake: FakeDodo) -> None:
    expected = load_meters_file(EXAMPLE_METERS)
    assert [m["event_name"] for m in expected] == ["api.call", "llm.chat_completion", "storage.usage"]
    served = httpx.get(f"{fake.url}/meters", headers=AUTH).json()["items"]
    assert [(m["id"], m["event_name"], m["aggregation"]) for m in served] == [
        (m["id"], m["event_name"], {"type": m["aggregation"]["type"], "key": m["aggregation"].get("key")})
        for m in expected
    ]


def test_admin_index_lists_every_admin_route_and_the_readme_documents_it(fake: FakeDodo) -> None:
    document = httpx.get(f"{fake.url}/_emulator/").json()
    assert document["routes"] == json.loads(json.dumps(ADMIN_ROUTES))
    for route in document["routes"]:  # every listed route exists with that method
        if route["method"] == "GET":
            assert httpx.get(f"{fake.url}{route['path']}").status_code == 200, route
    answer = httpx.post(f"{fake.url}/_emulator/faults", json=document["routes"][5]["body"])
    assert document["routes"][5]["path"] == "/_emulator/faults" and answer.status_code == 200, answer.text
    httpx.delete(f"{fake.url}/_emulator/faults")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Testing offline with the emulator") :]
    section = section[: section.index("\n## ", 5)]
    rows = set(re.findall(r"^\| `(GET|POST|DELETE)` \| `(/_emulator/[a-z]*)` \|", section, re.M))
    assert rows == {(r["method"], r["path"]) for r in ADMIN_ROUTES}
    for route in ADMIN_ROUTES:
        if route["body"] is not None:
            assert json.dumps(route["body"]) in section, route["path"]
    assert "config/meters.example.json" in section and "--reject-event-ids" in section


def test_a_taken_port_is_a_clean_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DODO_")}
        done = subprocess.run(
            [sys.executable, "-m", "agent", "fake-dodo", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert "fake Dodo on" not in done.stderr
