"""The core commands, run as a user runs them (a real subprocess) and through click's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli
from agent.store import Store


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=input, capture_output=True, text=True, timeout=60
    )


def line(i: int, **extra: object) -> str:
    return json.dumps({"event_id": f"e{i}", "customer_id": "cus_1", "event_name": "api.call", **extra})


def test_enqueue_ndjson_from_stdin_reports_each_bad_line(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    text = "\n".join([line(1), line(2, colour="red"), "{oops", line(3, metadata={"n": None}), line(4)]) + "\n"
    proc = run("enqueue", "--outbox", str(db), "--create", input=text)
    assert proc.returncode == 1
    assert "line 2.colour: is not a field Dodo knows" in proc.stderr
    assert "line 3: not valid JSON" in proc.stderr
    assert "line 4.metadata.n: is null" in proc.stderr
    assert "stored 2 new, 0 duplicates already stored, 3 refused" in proc.stderr
    with Store(db) as store:
        assert store.counts()["pending"] == 2


def test_enqueue_all_formats_and_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    runner = CliRunner()
    array = tmp_path / "a.json"
    array.write_text("[" + ",\n".join(line(i) for i in range(3)) + "]")
    body = tmp_path / "b.json"
    body.write_text(json.dumps({"events": [json.loads(line(i)) for i in range(2, 5)]}))
    single = tmp_path / "s.json"
    single.write_text(line(9))
    for path in (array, body, single):
        result = runner.invoke(cli, ["enqueue", str(path), "--outbox", str(db), "--create", "--json"])
        assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["stored"] == 1
    with Store(db) as store:
        assert store.counts()["pending"] == 6


def test_enqueue_conflict_refuses_only_that_event(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    run("enqueue", "--outbox", str(db), "--create", input=line(1, metadata={"n": 1}))
    proc = run("enqueue", "--outbox", str(db), input=line(1, metadata={"n": 2}) + "\n" + line(2))
    assert proc.returncode == 1
    assert "line 1.event_id: 'e1' is already in the outbox" in proc.stderr and "new event_id" in proc.stderr
    with Store(db) as store:
        assert store.get("e2") is not None


def test_enqueue_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("enqueue", str(tmp_path / "nope.json"), "--outbox", str(tmp_path / "o.db"))
    assert proc.returncode == 2
    assert "nope.json" in proc.stderr


def test_status_json_and_events_show(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    run("enqueue", "--outbox", str(db), "--create", input=line(1) + "\n" + line(2))
    proc = run("status", "--outbox", str(db), "--json")
    document = json.loads(proc.stdout)
    for key in ("pending", "inflight", "delivered", "dead", "oldest_pending_age_seconds"):
        assert key in document
    assert document["pending"] == 2
    shown = json.loads(run("events", "show", "e1", "--outbox", str(db), "--json").stdout)
    assert shown["state"] == "pending" and shown["attempts"] == 0 and shown["event"]["event_id"] == "e1"
    missing = run("events", "show", "nope", "--outbox", str(db))
    assert missing.returncode == 1 and "no event with event_id 'nope'" in missing.stderr


def test_status_without_an_outbox_says_what_to_do(tmp_path: Path) -> None:
    proc = run("status", "--outbox", str(tmp_path / "none.db"))
    assert proc.returncode == 2
    assert "no outbox at" in proc.stderr


def test_config_check_redacts_and_fails_on_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[intake.http]\ntoken = 's3cret-token'\n[dodo]\napi_key_file = '%s'\n" % (tmp_path / "k"))
    (tmp_path / "k").write_text("sk_live_secret")
    proc = run("config", "check", "--config", str(good), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-token" not in proc.stdout and "sk_live_secret" not in proc.stdout
    assert json.loads(proc.stdout)["dodo"]["api_key"].startswith("found")
    bad = tmp_path / "bad.toml"
    bad.write_text("[delivery]\nbatch_max_events = 5000\n")
    proc = run("config", "check", "--config", str(bad))
    assert proc.returncode == 2
    assert "[delivery] batch_max_events = 5000 is above the maximum 1000" in proc.stderr


def test_the_outbox_is_readable_with_the_sqlite_utils_cli(tmp_path: Path) -> None:
    """The README tells operators to inspect the outbox with sqlite-utils (a dependency): prove it."""
    db = tmp_path / "o.db"
    run("enqueue", "--outbox", str(db), "--create", input=line(1) + "\n" + line(2))
    cli_path = Path(sys.executable).parent / "sqlite-utils"
    query = "select state, count(*) as n from dodo_outbox_events group by state"
    proc = subprocess.run(
        [str(cli_path), "query", str(db), query], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"state": "pending", "n": 2}]
    proc = subprocess.run(
        [str(cli_path), "rows", str(db), "dodo_outbox_events", "-c", "event_id", "-c", "payload"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = json.loads(proc.stdout)
    assert [r["event_id"] for r in rows] == ["e1", "e2"]
    assert json.loads(rows[0]["payload"])["customer_id"] == "cus_1"  # payloads are plain JSON text


def test_enqueue_two_clashing_lines_are_both_refused_by_line(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    text = "\n".join([line(1, metadata={"n": 1}), line(2), line(1, metadata={"n": 2})]) + "\n"
    proc = run("enqueue", "--outbox", str(db), "--create", "--json", input=text)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert (summary["stored"], summary["refused"]) == (1, 2)
    where = {p["where"]: p["problem"] for p in summary["problems"]}
    assert set(where) == {"line 1.event_id", "line 3.event_id"}
    assert "line 3" in where["line 1.event_id"] and "line 1" in where["line 3.event_id"]
    assert all("already" not in message for message in where.values())
    with Store(db) as store:
        assert store.get("e1") is None and store.get("e2") is not None


def test_enqueue_a_retry_with_another_timestamp_is_a_duplicate_with_a_note(tmp_path: Path) -> None:
    import time

    db = tmp_path / "o.db"
    first = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    second = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    run("enqueue", "--outbox", str(db), "--create", input=line(1, timestamp=first))
    proc = run("enqueue", "--outbox", str(db), input=line(2) + "\n" + line(1, timestamp=second))
    assert proc.returncode == 0, proc.stderr
    assert "stored 1 new, 1 duplicates already stored, 0 refused" in proc.stderr
    assert (
        f"note: line 2.timestamp: same event as the one stored ('e1'); only timestamp differs (stored {first}"
        in proc.stderr
    )
    with Store(db) as store:
        record = store.get("e1")
        assert record is not None and record.event["timestamp"] == first
