"""Absurd timestamps are refused, not restamped and billed today: `[intake] max_event_age` (issue 11),
applied by the validator and by every intake (library, HTTP, drop directory, CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent import InvalidEventError, Outbox, config
from agent.config import DropdirSettings, HttpIntakeSettings
from agent.errors import ConfigError
from agent.events import DODO_WINDOW_SECONDS, check_event
from agent.intake.dropdir import DropDir
from agent.intake.http import create_app
from agent.intake.server import HttpServer
from agent.store import Store


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def event(event_id: str, timestamp: str) -> dict[str, object]:
    return {"event_id": event_id, "customer_id": "cus_1", "event_name": "api.call", "timestamp": timestamp}


NOW = 1_795_000_000.0


@pytest.mark.parametrize(
    ("timestamp", "age"), [("0004-01-01T00:00:00Z", "days old"), (iso(NOW - 3 * 86400), "3 days old")]
)
def test_events_older_than_max_event_age_are_refused_naming_field_age_and_key(
    timestamp: str, age: str
) -> None:
    found, problems = check_event(event("e1", timestamp), NOW, "event")
    assert found is None
    [problem] = problems
    assert problem.path == "event.timestamp"
    assert age in problem.message and timestamp in problem.message
    assert "[intake] max_event_age" in problem.message


def test_between_dodos_window_and_max_event_age_the_event_is_accepted_and_late() -> None:
    found, problems = check_event(event("e1", iso(NOW - 5 * 3600)), NOW, "event")
    assert problems == [] and found is not None and found.late
    refused, problems = check_event(event("e1", iso(NOW - 5 * 3600)), NOW, "event", max_age=4 * 3600)
    assert refused is None and "5.0 h old" in problems[0].message
    # Within Dodo's window an event is never refused for its age, whatever the limit.
    fresh, _ = check_event(event("e1", iso(NOW - 600)), NOW, "event", max_age=60)
    assert fresh is not None and not fresh.late and DODO_WINDOW_SECONDS > 600


def test_the_key_takes_seconds_or_a_duration(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[intake]\nmax_event_age = "2d"\n[intake.http]\nlisten = "127.0.0.1:0"\n')
    settings = config.load(path, environ={})
    assert settings.intake.max_event_age == 2 * 86400 and settings.intake_http.listen == "127.0.0.1:0"
    assert (
        config.load(None, environ={"DODO_OUTBOX_INTAKE_MAX_EVENT_AGE": "3600"}).intake.max_event_age == 3600
    )
    path.write_text("[intake]\nmax_event_age = 'soon'\n")
    with pytest.raises(ConfigError, match=r"\[intake\] max_event_age = 'soon' is not a duration"):
        config.load(path, environ={})


def test_the_library_refuses_it(tmp_path: Path) -> None:
    old = iso(time.time() - 2 * 86400)
    with Outbox(tmp_path / "o.db") as outbox:
        with pytest.raises(InvalidEventError, match="max_event_age"):
            outbox.enqueue(event("e1", old))
        with pytest.raises(InvalidEventError, match="max_event_age"):
            outbox.enqueue_many([event("e2", old)])
        assert outbox.enqueue(event("e3", iso(time.time() - 2 * 3600))).late == ["e3"]
    with Outbox(tmp_path / "o.db", max_event_age=3 * 86400) as roomy:
        assert roomy.enqueue(event("e1", old)).new == ["e1"]


def test_http_answers_400_naming_the_index(tmp_path: Path) -> None:
    import threading

    outbox = Outbox(tmp_path / "o.db")
    app = create_app(
        outbox,
        HttpIntakeSettings(listen="127.0.0.1:0"),
        status=dict,
        readiness=dict,
        shutting_down=threading.Event(),
    )
    server = HttpServer(app, "127.0.0.1:0").start()
    try:
        body = {"events": [event("ok", iso(time.time())), event("old", "0004-01-01T00:00:00Z")]}
        response = httpx.post(f"{server.url}/events/ingest", json=body, timeout=30)
        assert response.status_code == 400
        [problem] = response.json()["problems"]
        assert problem["path"] == "events[1].timestamp" and "max_event_age" in problem["message"]
        assert Store(outbox.path).get("ok") is None
    finally:
        server.stop()
        outbox.close()


def test_the_drop_directory_refuses_it_by_line(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        spool = DropDir(outbox, DropdirSettings(path=str(tmp_path / "spool")))
        lines = [event("ok", iso(time.time())), event("old", iso(time.time() - 2 * 86400))]
        (spool.tmp / "a.ndjson").write_text("".join(json.dumps(e) + "\n" for e in lines))
        os.rename(spool.tmp / "a.ndjson", spool.new / "a.ndjson")
        result = spool.scan().files[0]
        assert result.outcome == "rejected" and result.new == 1
        [error] = [json.loads(x) for x in (spool.rejected / "a.ndjson.errors.jsonl").read_text().splitlines()]
        assert (error["line"], error["field"]) == (2, "timestamp") and "max_event_age" in error["message"]


def test_the_cli_refuses_it_and_follows_the_config(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    text = json.dumps(event("old", iso(time.time() - 2 * 86400))) + "\n"
    run = [sys.executable, "-m", "agent", "enqueue", "--outbox", str(db), "--create"]
    proc = subprocess.run(run, input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "line 1.timestamp:" in proc.stderr and "max_event_age" in proc.stderr
    conf = tmp_path / "agent.toml"
    conf.write_text('[intake]\nmax_event_age = "3d"\n')
    proc = subprocess.run(
        [*run, "--config", str(conf)], input=text, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
