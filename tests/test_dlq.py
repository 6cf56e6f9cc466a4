"""The dead-letter queue: list, show, replay (ids / reason / all, restamp, dry run), export, purge,
through the store, the CLI and the HTTP routes (behind the intake token)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import httpx
import orjson
import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import HttpIntakeSettings, OutboxSettings, Settings
from agent.events import validate_many
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.ops import status as status_module
from agent.ops.routes import ops_routes
from agent.outbox import Outbox
from agent.store import DeadFilter, Store
from agent.store.rules import restamped_payload
from tests.ops_helpers import NOW, add_dead, add_delivered, add_pending, state_of, us

TOKEN = "ops-token-5678"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An outbox with 3 old rejected, 1 recent too_large, 1 delivered and 1 pending event."""
    path = tmp_path / "outbox.db"
    with Store(path) as store:
        add_dead(store, ["a1", "a2", "a3"], now=NOW - 7200, reason="rejected")
        add_dead(store, ["b1"], now=NOW - 60, reason="too_large", status=413, response="too big")
        add_delivered(store, ["d1"], now=NOW - 7200)
        add_pending(store, ["p1"], now=NOW)
    return path


def cli_run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


class HasEventId(Protocol):
    @property
    def event_id(self) -> str: ...


def ids(records: Sequence[HasEventId]) -> list[str]:
    return [r.event_id for r in records]


def test_list_filters_and_pages(db: Path) -> None:
    with Store(db) as store:
        assert ids(store.dead_rows(DeadFilter(all=True))) == ["a1", "a2", "a3", "b1"]
        assert ids(store.dead_rows(DeadFilter(reason="too_large"))) == ["b1"]
        assert ids(store.dead_rows(DeadFilter(all=True, since_us=us(NOW - 3600)))) == ["b1"]
        first = store.dead_rows(DeadFilter(all=True), limit=3)
        rest = store.dead_rows(DeadFilter(all=True), limit=3, after_id=first[-1].id)
        assert ids(first) + ids(rest) == ["a1", "a2", "a3", "b1"]
        assert store.dead_rows(DeadFilter()) == []  # an empty filter selects nothing
        assert store.top_dead_reasons() == [("rejected", 3), ("too_large", 1)]
    code, out, _ = cli_run("dlq", "list", "--outbox", str(db), "--reason", "rejected", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [r["event_id"] for r in listed] == ["a1", "a2", "a3"]
    assert listed[0]["reason"] == "rejected" and listed[0]["http_status"] == 400
    code, out, _ = cli_run("dlq", "list", "--outbox", str(db), "--since", "1h", "--json")
    assert [r["event_id"] for r in json.loads(out)] == ["b1"]
    code, out, err = cli_run("dlq", "list", "--outbox", str(db), "--limit", "2")
    assert code == 0 and "a1" in out and "rejected" in out and "2 of 4 shown" in err


def test_show_a_dead_event_and_refuse_others(db: Path) -> None:
    code, out, _ = cli_run("dlq", "show", "b1", "--outbox", str(db), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "dead" and shown["http_status"] == 413
    assert shown["response"] == "too big" and shown["attempts"] == 1 and shown["event"]["event_id"] == "b1"
    code, out, _ = cli_run("dlq", "show", "b1", "--outbox", str(db))
    assert code == 0 and "too_large" in out and "too big" in out
    code, _, err = cli_run("dlq", "show", "p1", "--outbox", str(db))
    assert code == 1 and "pending, not dead-lettered" in err


def test_replay_by_id_moves_exactly_those_and_resets_them(db: Path) -> None:
    code, out, err = cli_run("dlq", "replay", "a2", "b1", "d1", "--outbox", str(db), "--json")
    assert code == 1  # d1 is not dead: said so, and not moved
    assert json.loads(out)["replayed"] == 2 and "1 of the event_ids are not dead-lettered" in err
    with Store(db) as store:
        assert [state_of(store, i) for i in ("a1", "a2", "a3", "b1", "d1", "p1")] == [
            "dead",
            "pending",
            "dead",
            "pending",
            "delivered",
            "pending",
        ]
        record = store.get("a2")
        assert record is not None
        assert (record.attempts, record.next_attempt_at_us, record.reason, record.settled_at_us) == (
            0,
            0,
            None,
            None,
        )
        assert record.last_error is not None and "was: rejected (HTTP 400)" in record.last_error
        assert not record.restamped


def test_replay_by_reason_and_all_in_chunks(db: Path) -> None:
    with Store(db) as store:
        steps = list(store.replay(DeadFilter(reason="rejected"), now_us=us(NOW), chunk=2))
        assert [s.moved for s in steps] == [2, 1]
        assert store.counts()["dead"] == 1
        assert sum(s.moved for s in store.replay(DeadFilter(reason="rejected"), now_us=us(NOW))) == 0
    code, out, _ = cli_run("dlq", "replay", "--all", "--outbox", str(db), "--json")
    assert code == 0 and json.loads(out)["replayed"] == 1
    with Store(db) as store:
        assert store.counts() == {"pending": 5, "inflight": 0, "delivered": 1, "dead": 0}


def test_replay_needs_exactly_one_selection(db: Path) -> None:
    assert cli_run("dlq", "replay", "--outbox", str(db))[0] == 2
    assert cli_run("dlq", "replay", "--all", "--reason", "x", "--outbox", str(db))[0] == 2


def test_dry_run_moves_nothing(db: Path) -> None:
    before = sqlite3.connect(db).execute("SELECT * FROM dodo_outbox_events ORDER BY id").fetchall()
    code, out, _ = cli_run("dlq", "replay", "--all", "--restamp", "--dry-run", "--outbox", str(db), "--json")
    assert code == 0
    assert json.loads(out) == {
        "dry_run": True,
        "matched": 4,
        "replayed": 0,
        "restamped": 0,
        "would_restamp": 3,
    }
    code, _, err = cli_run("dlq", "replay", "--reason", "rejected", "--dry-run", "--outbox", str(db))
    assert "3 dead-lettered events would be replayed" in err and "nothing changed" in err
    after = sqlite3.connect(db).execute("SELECT * FROM dodo_outbox_events ORDER BY id").fetchall()
    assert before == after


def test_restamp_gives_late_events_the_replay_time_and_keeps_them_the_same_event(db: Path) -> None:
    before = time.time()
    code, out, _ = cli_run("dlq", "replay", "--all", "--restamp", "--outbox", str(db), "--json")
    after = time.time()
    assert code == 0 and json.loads(out)["restamped"] == 3  # a1..a3 are 2 h old; b1 is fresh
    with Store(db) as store:
        late, fresh = store.get("a1"), store.get("b1")
        assert late is not None and fresh is not None
        # The replay time (not the suite's import time NOW, which a busy machine leaves minutes behind).
        assert late.restamped and late.stamped and before - 1 < late.ts_us / 1e6 < after + 1
        assert late.payload.endswith(f'"timestamp":"{late.event["timestamp"]}"}}')  # still canonical
        assert late.last_error is not None and "original timestamp" in late.last_error
        assert not fresh.restamped and abs(fresh.ts_us / 1e6 - (NOW - 60)) < 1
    # The original event sent again is a duplicate of the restamped row, not a conflict.
    with Outbox(db) as outbox:
        again = outbox.enqueue({"event_id": "a1", "customer_id": "cus_1", "event_name": "api.call"})
        assert again.duplicates == ["a1"]


def test_restamped_payload_replaces_only_the_timestamp() -> None:
    payload = (
        '{"customer_id":"c","event_id":"e","event_name":"n","metadata":{"k":1},'
        '"timestamp":"2020-01-01T00:00:00Z"}'
    )
    fresh = orjson.loads(restamped_payload(payload, us(1_800_000_000)))
    assert fresh == {**orjson.loads(payload), "timestamp": "2027-01-15T08:00:00Z"}


def test_export_ndjson_and_records(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "dead.ndjson"
    code, _, err = cli_run("dlq", "export", "--output", str(target), "--outbox", str(db))
    assert code == 0
    lines = target.read_text().splitlines()
    assert [orjson.loads(line)["event_id"] for line in lines] == ["a1", "a2", "a3", "b1"]
    assert "exported 4" in err and "new event_id" in err and "dlq replay" in err
    with Store(db) as store:
        record = store.get("a1")
        assert record is not None and lines[0] == record.payload  # exactly as stored: ready to enqueue
    code, out, _ = cli_run(
        "dlq", "export", "--format", "records", "--reason", "too_large", "--outbox", str(db)
    )
    [only] = [json.loads(line) for line in out.splitlines()]
    assert only["event_id"] == "b1" and only["reason"] == "too_large" and only["response"] == "too big"


def test_purge_deletes_exactly_the_old_dead_rows(db: Path) -> None:
    with Store(db) as store:
        assert store.purge_dead(us(NOW - 3600), chunk=2) == 3
        assert store.counts() == {"pending": 1, "inflight": 0, "delivered": 1, "dead": 1}
        assert store.get("d1") is not None  # as old, but delivered: not the dead-letter queue's to delete


def test_purge_asks_first_and_honours_reason(db: Path) -> None:
    code, _, err = cli_run("dlq", "purge", "--older-than", "30m", "--outbox", str(db), input="n\n")
    assert code == 1 and "Delete 3 dead-lettered events" in err
    with Store(db) as store:
        assert store.counts()["dead"] == 4
    code, _, err = cli_run(
        "dlq", "purge", "--older-than", "1m", "--reason", "too_large", "--yes", "--outbox", str(db)
    )
    assert code == 0 and "deleted 0" not in err
    with Store(db) as store:
        assert ids(store.dead_rows(DeadFilter(all=True))) == ["a1", "a2", "a3"]
    code, _, err = cli_run("dlq", "purge", "--older-than", "1h30m", "--outbox", str(db), input="y\n")
    assert code == 0 and "deleted 3" in err
    assert cli_run("dlq", "purge", "--older-than", "soon", "--outbox", str(db))[0] == 2


# -- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
def http(db: Path) -> Iterator[httpx.Client]:
    settings = Settings(
        outbox=OutboxSettings(path=str(db)), intake_http=HttpIntakeSettings(listen="127.0.0.1:0", token=TOKEN)
    )
    outbox = Outbox(db)
    app = create_app(
        outbox,
        settings.intake_http,
        status=lambda: status_module.build(outbox.store),
        readiness=dict,
        extra_routes=ops_routes(outbox.store, settings),
        shutting_down=threading.Event(),
    )
    server = HttpServer(app, "127.0.0.1:0", token=TOKEN).start()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as client:
        yield client
    server.stop(5.0)
    outbox.close()


def test_http_dlq_needs_the_token(http: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/dlq"),
        ("GET", "/v1/dlq/a1"),
        ("POST", "/v1/dlq/replay"),
        ("POST", "/v1/dlq/purge"),
    ):
        answer = http.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert answer.status_code == 401, path
        assert answer.json()["code"] == "UNAUTHORIZED"
    assert http.get("/metrics", headers={"Authorization": ""}).status_code == 200  # scrapers need no token


def test_http_dlq_list_show_replay_purge(http: httpx.Client) -> None:
    page = http.get("/v1/dlq", params={"limit": 3}).json()
    assert [e["event_id"] for e in page["events"]] == ["a1", "a2", "a3"] and page["total"] == 4
    rest = http.get("/v1/dlq", params={"after": page["next_after"]}).json()
    assert [e["event_id"] for e in rest["events"]] == ["b1"] and rest["next_after"] is None
    assert http.get("/v1/dlq", params={"reason": "too_large"}).json()["total"] == 1
    assert http.get("/v1/dlq", params={"since": "yesterday"}).status_code == 400
    assert http.get("/v1/dlq/b1").json()["response"] == "too big"
    assert http.get("/v1/dlq/p1").status_code == 404

    assert http.post("/v1/dlq/replay", json={"all": True, "reason": "x"}).status_code == 400
    dry = http.post("/v1/dlq/replay", json={"reason": "rejected", "restamp": True, "dry_run": True}).json()
    assert dry == {"matched": 3, "replayed": 0, "restamped": 0, "dry_run": True, "would_restamp": 3}
    done = http.post("/v1/dlq/replay", json={"event_ids": ["a1", "a1", "p1"], "restamp": True}).json()
    assert done == {"matched": 1, "replayed": 1, "restamped": 1, "dry_run": False}

    assert http.post("/v1/dlq/purge", json={}).status_code == 400
    assert http.post("/v1/dlq/purge", json={"older_than": "1h", "dry_run": True}).json()["matched"] == 2
    assert http.post("/v1/dlq/purge", json={"older_than": 3600}).json() == {
        "matched": 2,
        "purged": 2,
        "dry_run": False,
    }
    assert http.get("/v1/dlq").json()["total"] == 1


def test_restamp_keeps_the_original_timestamp_after_delivery(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    original = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 7200))
    raw = {"event_id": "x1", "customer_id": "cus_1", "event_name": "api.call", "timestamp": original}
    with Store(db) as store:
        [stored] = store.insert_groups([(validate_many([raw], NOW), "cli")], us(NOW - 7000))
        assert not isinstance(stored, Exception)
        [claimed] = store.claim(
            now_us=us(NOW - 7000), limit=10, max_bytes=1 << 20, lease_us=us(60), owner="w"
        )
        store.mark_dead(
            [claimed.id], owner="w", now_us=us(NOW - 7000), reason="rejected", http_status=400, response="no"
        )
    code, _, _ = cli_run("dlq", "replay", "--all", "--restamp", "--outbox", str(db))
    assert code == 0
    with Store(db) as store:
        [claimed] = store.claim(now_us=us(NOW + 1), limit=10, max_bytes=1 << 20, lease_us=us(60), owner="w")
        assert store.mark_delivered([claimed.id], owner="w", now_us=us(NOW + 1)) == 1  # clears last_error
    code, out, _ = cli_run("events", "show", "x1", "--json", "--outbox", str(db))
    document = json.loads(out)
    assert document["state"] == "delivered" and document["last_error"] is None
    assert document["restamped"] is True
    assert document["original_timestamp"] == original.replace("Z", ".000Z")
    assert document["timestamp"] != document["original_timestamp"]
    # The producer gave a timestamp: it was not stamped at enqueue, whatever the replay did.
    assert document["timestamp_stamped_at_enqueue"] is False
    code, out, _ = cli_run("events", "show", "x1", "--outbox", str(db))
    assert f"original_timestamp {original.replace('Z', '.000Z')}" in " ".join(out.split())
    # The original event sent again is a duplicate of the restamped row (no conflict, no retimed note).
    with Outbox(db) as outbox:
        again = outbox.enqueue(raw)
        assert again.duplicates == ["x1"] and again.retimed == []
