"""Log set-up: JSON lines, console output, levels, stdlib routing and redaction of credentials."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._state["handler"] = None
    logs._secrets.clear()
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_is_one_object_per_line_with_event_level_timestamp() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out)
    log = logs.get_logger("agent.delivery.worker")
    log.info("batch_delivered", count=3, note="line one\nline two")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("batch_failed")
    first, second = lines(out)
    assert first["event"] == "batch_delivered"
    assert first["level"] == "info"
    assert first["count"] == 3
    assert first["logger"] == "dodo_outbox.delivery.worker"  # a module name under agent. reads dodo_outbox.
    assert first["note"] == "line one\nline two"
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert second["level"] == "error"
    assert "RuntimeError: boom" in second["exception"]


def test_get_logger_without_a_name_has_no_logger_key() -> None:
    out = io.StringIO()
    logs.configure("json", stream=out)
    logs.get_logger().info("started")
    assert "logger" not in lines(out)[0]


def test_redaction_of_keys_and_inline_credentials() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out)
    log = logs.get_logger()
    log.info(
        "request_sent",
        api_key="sk_live_abcdef123456",
        headers={"Authorization": "Bearer abc.def", "Content-Type": "application/json", "X-Api-Key": "k"},
        note="sent with Authorization: Bearer xyz123 then api_key=sk_test_999 and password: hunter2",
        body='{"token": "t0ps3cret", "tokens": 150}',
        access_token="tok",
        tokens=150,
        token_count=7,
        items=[{"password": "p"}, "Bearer qqq"],
    )
    (line,) = lines(out)
    raw = out.getvalue()
    for secret in ("sk_live_abcdef123456", "abc.def", "xyz123", "sk_test_999", "hunter2", "t0ps3cret", "qqq"):
        assert secret not in raw
    assert line["api_key"] == logs.REDACTED
    assert line["access_token"] == logs.REDACTED
    assert line["headers"] == {
        "Authorization": logs.REDACTED,
        "Content-Type": "application/json",
        "X-Api-Key": logs.REDACTED,
    }
    assert line["note"] == (
        "sent with Authorization: [REDACTED] then api_key=[REDACTED] and password: [REDACTED]"
    )
    assert line["body"] == '{"token": "[REDACTED]", "tokens": 150}'
    # Metering fields that merely contain "token" stay readable.
    assert (line["tokens"], line["token_count"]) == (150, 7)
    assert line["items"] == [{"password": logs.REDACTED}, "Bearer [REDACTED]"]


def test_redaction_reaches_exceptions_objects_and_registered_secrets() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out)
    logs.add_secret("dodo_key_0123456789")
    logs.add_secret("short")  # ignored: too short to mask safely
    log = logs.get_logger()
    try:
        raise ValueError("bad header Authorization: Bearer leaked-in-traceback")
    except ValueError as exc:
        log.exception("send_failed", error=exc, hint="key dodo_key_0123456789 was rejected")
    (line,) = lines(out)
    assert "leaked-in-traceback" not in out.getvalue()
    assert "dodo_key_0123456789" not in out.getvalue()
    assert line["hint"] == "key [REDACTED] was rejected"
    assert "Authorization: [REDACTED]" in line["exception"]
    assert "Authorization: [REDACTED]" in line["error"]
    logs.get_logger().info("a short story")
    assert lines(out)[-1]["event"] == "a short story"


def test_set_level_filters_and_reaches_loggers_made_before_it() -> None:
    out = io.StringIO()
    log = logs.get_logger("agent.early")  # made before configure, as module-level loggers are
    logs.configure("json", "info", out)
    log.debug("hidden_debug")
    log.info("shown_info")
    logs.set_level("debug")
    log.debug("shown_debug")
    logs.set_level("ERROR")
    log.warning("hidden_warning")
    log.error("shown_error")
    assert [line["event"] for line in lines(out)] == ["shown_info", "shown_debug", "shown_error"]


@pytest.mark.parametrize("bad", ["verbose", "", "warn ing"])
def test_invalid_level_names_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error, critical"):
        logs.configure("json", bad, io.StringIO())
    with pytest.raises(ValueError, match="debug, info, warning, error, critical"):
        logs.set_level(bad)


def test_invalid_format_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="auto, json, console"):
        logs.configure("yaml", "info", io.StringIO())


def test_stdlib_logging_goes_through_the_same_output_at_warning() -> None:
    out = io.StringIO()
    logs.configure("json", "debug", out)
    logging.getLogger("httpx").info("HTTP Request: POST https://test.dodopayments.com/events/ingest")
    logging.getLogger("apscheduler.scheduler").warning("job %s missed by %ss", "drain", 3)
    (line,) = lines(out)
    assert line["event"] == "job drain missed by 3s"
    assert line["level"] == "warning"
    assert line["logger"] == "apscheduler.scheduler"
    assert "timestamp" in line


def test_stdlib_level_can_be_lowered_and_records_are_redacted() -> None:
    out = io.StringIO()
    logs.configure("json", "info", out, stdlib_level="info")
    logging.getLogger("httpx").info("retrying with api_key=%s", "sk_live_zzz")
    (line,) = lines(out)
    assert line["event"] == "retrying with api_key=[REDACTED]"
    logs.configure("json", "info", out)  # reconfiguring replaces the handler, no duplicate lines
    logging.getLogger("uvicorn.error").error("once")
    assert [x["event"] for x in lines(out)].count("once") == 1


def test_console_format() -> None:
    out = io.StringIO()
    logs.configure("console", "info", out)
    logs.get_logger("agent.cli").info("outbox_opened", path="/var/lib/dodo-outbox/outbox.db", api_key="k")
    text = out.getvalue()
    assert "outbox_opened" in text
    assert "path=/var/lib/dodo-outbox/outbox.db" in text
    assert "api_key=[REDACTED]" in text
    assert "\x1b[" not in text  # no colours off a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_auto_picks_json_off_a_terminal_and_console_on_one() -> None:
    out = io.StringIO()
    logs.configure("auto", "info", out)
    logs.get_logger().info("piped")
    assert lines(out)[0]["event"] == "piped"

    leader, follower = os.openpty()
    with open(follower, "w", closefd=True) as tty:
        logs.configure("auto", "info", tty)
        logs.get_logger().info("on_a_terminal")
        written = os.read(leader, 4096).decode()
    os.close(leader)
    assert "on_a_terminal" in written
    assert not written.lstrip().startswith("{")


def test_journald_priority_prefix_only_when_journal_stream_is_ours(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w") as stream:
        st = os.fstat(stream.fileno())
        logs.configure("json", "info", stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        logs.get_logger().info("ok")
        logs.get_logger().error("bad")
        logs.configure("json", "info", stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        logs.get_logger().info("plain")
    first, second, third = (tmp_path / "journal").read_text().splitlines()
    assert first.startswith("<6>{") and json.loads(first[3:])["event"] == "ok"
    assert second.startswith("<3>{")
    assert json.loads(third)["event"] == "plain"


def test_concurrent_structlog_and_stdlib_lines_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with open(path, "w") as stream:
        logs.configure("json", "info", stream)

        def native(n: int) -> None:
            for i in range(300):
                logs.get_logger("agent.t").info("native_event", thread=n, i=i, pad="x" * 200)

        def stdlib(n: int) -> None:
            for i in range(300):
                logging.getLogger("httpx").warning("stdlib %s %s %s", n, i, "y" * 200)

        threads = [threading.Thread(target=f, args=(n,)) for n in range(3) for f in (native, stdlib)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    parsed = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(parsed) == 6 * 300
