"""Fuzz the drop directory: truncated JSON, binary junk, empty files, enormous lines, wrong encodings
(UTF-16, UTF-32, Latin-1), NUL bytes, odd file types and names.

Whatever is dropped: a scan never raises and never stops early; every file leaves new/ (done/ when all
of it is good, rejected/ with an errors file otherwise); every good event is stored, nothing else is;
every problem is an errors-file line naming the line (and the field, for an invalid event).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import DropdirSettings
from agent.intake.dropdir import DropDir
from agent.intake.records import ParseProblem, Record, read_records
from agent.outbox import Outbox
from tests.builders import sqlite_of

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
_ids = itertools.count()


@dataclass
class Spool:
    root: Path
    dropdir: DropDir
    outbox: Outbox

    def drop(self, name: str, data: bytes, age: float = 0.0) -> Path:
        """Write a file the way producers do: into tmp/, then renamed into new/."""
        staged = self.root / "tmp" / name
        staged.write_bytes(data)
        target = self.root / "new" / name
        os.rename(staged, target)
        if age:
            os.utime(target, (time.time() - age, time.time() - age))
        return target

    def stored(self) -> set[str]:
        with sqlite_of(self.outbox.store).read() as conn:
            return {row[0] for row in conn.execute("SELECT event_id FROM dodo_outbox_events")}

    def errors(self, name: str) -> list[dict[str, Any]]:
        path = self.root / "rejected" / f"{name}.errors.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def where(self, name: str) -> str:
        for sub in ("new", "done", "rejected"):
            if os.path.lexists(self.root / sub / name):
                return sub
        return "gone"


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spool]:
    root = Path(tmp_path_factory.mktemp("drop"))
    with Outbox(root / "outbox.db") as outbox:
        settings_ = DropdirSettings(enabled=True, path=str(root / "spool"))
        yield Spool(root / "spool", DropDir(outbox, settings_), outbox)


def good_event(rng: random.Random | None = None) -> dict[str, Any]:
    n = next(_ids)
    # Fixed width: Hypothesis replays draw the same sizes whatever the counter says.
    event: dict[str, Any] = {"event_id": f"good-{n:09d}", "customer_id": "cus_1", "event_name": "api.call"}
    if rng is None or rng.random() < 0.5:
        event["metadata"] = {"tokens": 42, "note": "caf\u00e9 \u2603 \U0001f600"}
    return event


# -- NDJSON lines of every kind -------------------------------------------------------------------------


def _not_blank(raw: bytes) -> bool:
    """A line the reader does not skip as blank (it strips Unicode whitespace, e.g. \x1c too), and no
    byte-order mark: a file that starts with one is refused whole as UTF-16/32, or the mark dropped."""
    boms = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
    return (
        b"\n" not in raw and not raw.startswith(boms) and raw.decode("utf-8", "surrogateescape").strip() != ""
    )


@st.composite
def lines(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(kind, the line's bytes without its newline, the good event id it carries)."""
    kind = draw(
        st.sampled_from(["good", "good", "good", "invalid", "junk", "truncated", "blank", "nul", "latin1"])
    )
    if kind == "good":
        event = good_event()
        return kind, orjson.dumps(event), event["event_id"]
    if kind == "invalid":
        event = good_event()
        event[draw(st.sampled_from(["customer_id", "event_name"]))] = draw(
            st.sampled_from(["", 5, None, " x"])
        )
        return kind, orjson.dumps(event), None
    if kind == "junk":
        junk = draw(st.binary(min_size=1, max_size=80).filter(_not_blank))
        return kind, junk, None
    if kind == "truncated":
        raw = orjson.dumps(good_event())
        return kind, raw[: draw(st.integers(1, len(raw) - 1))], None
    if kind == "blank":
        return kind, draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"   \t "])), None
    if kind == "nul":
        return kind, b"\x00" * draw(st.integers(1, 20)), None
    event = good_event()
    event["metadata"] = {"city": "K\u00f8benhavn"}
    return kind, json.dumps(event, ensure_ascii=False).encode("latin-1"), None


@SETTINGS
@given(st.lists(lines(), min_size=1, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_ndjson_good_lines_are_stored_and_every_bad_line_is_reported(
    spool: Spool, items: list[tuple[str, bytes, str | None]], newline: bytes, final_newline: bool
) -> None:
    data = newline.join(raw for _, raw, _ in items) + (newline if final_newline else b"")
    name = f"f{next(_ids)}.ndjson"
    before = spool.stored()
    spool.drop(name, data)
    report = spool.dropdir.scan()
    assert [f.name for f in report.files] == [name] and report.stopped == ""
    good = {event_id for _, _, event_id in items if event_id}
    bad_lines = {n for n, (kind, raw, _) in enumerate(items, 1) if kind not in ("good", "blank")}
    assert spool.stored() - before == good, "good lines must be stored, bad ones not"
    if not good and not bad_lines:  # only blank lines: an empty input
        assert spool.where(name) == "rejected"
        return
    assert spool.where(name) == ("rejected" if bad_lines else "done")
    errors = spool.errors(name)
    assert {e["line"] for e in errors} == bad_lines
    for entry in errors:
        assert entry["code"] in ("invalid_json", "invalid_event") and entry["message"]
        # An "invalid" line breaks a known field. (Junk may parse as JSON that is no object, e.g. `0`:
        # refused as a whole line, with no field to name.)
        if entry["code"] == "invalid_event" and items[entry["line"] - 1][0] == "invalid":
            assert entry["field"] in ("customer_id", "event_name")


@SETTINGS
@given(st.binary(max_size=2000), st.sampled_from([".json", ".ndjson", ".jsonl", ".txt", ""]))
def test_any_bytes_never_crash_a_scan_and_always_leave_new(spool: Spool, data: bytes, suffix: str) -> None:
    name = f"junk{next(_ids)}{suffix}"
    spool.drop(name, data)
    report = spool.dropdir.scan()
    assert [f.outcome for f in report.files] in (["done"], ["rejected"])
    assert spool.where(name) == report.files[0].outcome


@SETTINGS
@given(st.binary(max_size=3000), st.booleans())
def test_read_records_only_yields_records_and_problems(data: bytes, ndjson: bool) -> None:
    import io

    for item in read_records(io.BytesIO(data), ndjson=ndjson):
        assert isinstance(item, Record | ParseProblem)
        assert item.line >= 1


@SETTINGS
@given(st.lists(st.one_of(st.just("good"), st.just("bad")), min_size=1, max_size=10), st.integers(0, 200))
def test_a_json_array_stores_good_elements_up_to_a_truncation(
    spool: Spool, kinds: list[str], cut: int
) -> None:
    events = [good_event() for _ in kinds]
    for event, kind in zip(events, kinds, strict=True):
        if kind == "bad":
            event["metadata"] = {"k": None}
    data = orjson.dumps(events, option=orjson.OPT_INDENT_2)
    truncated = cut > 0 and cut < len(data)
    if truncated:
        data = data[: len(data) - cut]
    name = f"arr{next(_ids)}.json"
    before = spool.stored()
    spool.drop(name, data)
    spool.dropdir.scan()
    stored = spool.stored() - before
    good = [e["event_id"] for e, k in zip(events, kinds, strict=True) if k == "good"]
    if not truncated:
        assert stored == set(good)
    else:
        # Every good element that survived whole is stored; nothing else.
        assert stored <= set(good)
        assert spool.where(name) == "rejected"
    if stored != set(good) or "bad" in kinds:
        assert spool.where(name) == "rejected" and spool.errors(name)


# -- named cases -------------------------------------------------------------------------------------


def _ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_wrong_encodings_are_refused_with_a_reason(spool: Spool) -> None:
    event = good_event()
    text = json.dumps(event) + "\n"
    cases = {
        "utf16le.ndjson": text.encode("utf-16"),
        "utf16be.ndjson": b"\xfe\xff" + text.encode("utf-16-be"),
        "utf32.ndjson": text.encode("utf-32"),
        "utf16-nobom.ndjson": text.encode("utf-16-le"),
    }
    for name, data in cases.items():
        spool.drop(name, data)
    spool.dropdir.scan()
    for name in cases:
        assert spool.where(name) == "rejected", name
        assert spool.errors(name), name
    assert event["event_id"] not in spool.stored()
    assert "UTF-8" in spool.errors("utf16le.ndjson")[0]["message"]


def test_latin1_events_are_refused_not_stored_altered(spool: Spool) -> None:
    # Was: the bytes were replaced by U+FFFD and the event stored with a different customer_id.
    good = good_event()
    bad = good_event()
    bad["customer_id"] = "cus_J\u00fcrgen"
    bad["metadata"] = {"city": "Zurich"}
    data = json.dumps(bad, ensure_ascii=False).encode("latin-1") + b"\n" + orjson.dumps(good) + b"\n"
    spool.drop("latin1.ndjson", data)
    spool.dropdir.scan()
    stored = spool.stored()
    assert good["event_id"] in stored and bad["event_id"] not in stored
    (entry,) = spool.errors("latin1.ndjson")
    assert (entry["line"], entry["field"], entry["event_id"]) == (1, "customer_id", bad["event_id"])
    assert "UTF-8" in entry["message"]
    with sqlite_of(spool.outbox.store).read() as conn:
        assert (
            conn.execute("SELECT count(*) FROM dodo_outbox_events WHERE payload LIKE '%\ufffd%'").fetchone()[
                0
            ]
            == 0
        )


def test_a_utf8_bom_and_crlf_are_fine(spool: Spool) -> None:
    events = [good_event(), good_event()]
    data = "\ufeff".encode() + b"".join(orjson.dumps(e) + b"\r\n" for e in events)
    spool.drop("bom.ndjson", data)
    spool.dropdir.scan()
    assert spool.where("bom.ndjson") == "done"
    assert {e["event_id"] for e in events} <= spool.stored()


def test_nul_bytes_between_and_inside_lines(spool: Spool) -> None:
    a, b, c = good_event(), good_event(), good_event()
    data = (
        orjson.dumps(a)
        + b"\n\x00\x00\x00\n"
        + orjson.dumps(b)[:-1]
        + b"\x00}\n"
        + orjson.dumps(c)
        + b"\n\x00"
    )
    spool.drop("nul.ndjson", data)
    spool.dropdir.scan()
    stored = spool.stored()
    assert a["event_id"] in stored and c["event_id"] in stored and b["event_id"] not in stored
    assert {e["line"] for e in spool.errors("nul.ndjson")} == {2, 3, 5}


def test_empty_and_blank_files_are_rejected(spool: Spool) -> None:
    for name, data in (("empty.json", b""), ("empty.ndjson", b""), ("blank.ndjson", b" \n\n\t\r\n")):
        spool.drop(name, data)
    spool.dropdir.scan()
    for name in ("empty.json", "empty.ndjson", "blank.ndjson"):
        assert spool.where(name) == "rejected"
        assert "empty" in spool.errors(name)[0]["message"]


def test_an_enormous_line_is_skipped_and_the_rest_stored(spool: Spool) -> None:
    first, last = good_event(), good_event()
    huge = (
        b'{"event_id":"huge","customer_id":"c","event_name":"n","metadata":{"k":"' + b"x" * (6 << 20) + b'"}}'
    )
    endless = b"y" * (5 << 20)  # no newline at all, up to the end of the file
    spool.drop(
        "huge.ndjson", orjson.dumps(first) + b"\n" + huge + b"\n" + orjson.dumps(last) + b"\n" + endless
    )
    started = time.monotonic()
    spool.dropdir.scan()
    assert time.monotonic() - started < 60
    stored = spool.stored()
    assert first["event_id"] in stored and last["event_id"] in stored and "huge" not in stored
    errors = spool.errors("huge.ndjson")
    assert [e["line"] for e in errors] == [2, 4]
    assert "longer than" in errors[0]["message"]


def test_a_first_line_longer_than_a_read_chunk(spool: Spool) -> None:
    # Was: with no newline in the first 64 KiB the file was taken for one JSON document: all refused.
    big = good_event()
    big["metadata"] = {f"k{i}": "v" * 490 for i in range(50)}  # ~26 KB, escaped to > 64 KiB below
    big["metadata"]["k0"] = "\u2603" * 400
    raw = json.dumps(big).encode()  # ensure_ascii: each snowman is 6 bytes
    raw = raw[:-1] + b"," + b'"pad":"' + b"\\u0041" * 8000 + b'"' + b"}"  # an unknown field: invalid
    other = good_event()
    spool.drop("firstlong.jsonl", raw + b"\n" + orjson.dumps(other) + b"\n")
    spool.dropdir.scan()
    assert other["event_id"] in spool.stored()
    assert [e["line"] for e in spool.errors("firstlong.jsonl")] == [1]


def test_a_broken_first_line_costs_only_that_line(spool: Spool) -> None:
    good = [good_event(), good_event()]
    spool.drop("brokenfirst.ndjson", b'{"event_id": "trunc\n' + _ndjson(*good))
    spool.dropdir.scan()
    assert {e["event_id"] for e in good} <= spool.stored()
    assert [e["line"] for e in spool.errors("brokenfirst.ndjson")] == [1]


def test_deep_nesting_and_huge_numbers(spool: Spool) -> None:
    good = good_event()
    data = (
        b"[" * 100_000
        + b"\n"
        + b'{"event_id":"deep","customer_id":"c","event_name":"n","metadata":{"k":'
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}}\n"
        + b'{"event_id":"bigint","customer_id":"c","event_name":"n","metadata":{"k":'
        + b"9" * 4000
        + b"}}\n"
        + b'{"event_id":"inf","customer_id":"c","event_name":"n","metadata":{"k":Infinity}}\n'
        + orjson.dumps(good)
        + b"\n"
    )
    spool.drop("deep.ndjson", data)
    report = spool.dropdir.scan()
    assert report.files[0].outcome == "rejected"
    stored = spool.stored()
    assert good["event_id"] in stored and not {"deep", "bigint", "inf"} & stored
    assert [e["line"] for e in spool.errors("deep.ndjson")] == [1, 2, 3, 4]


def test_odd_files_are_rejected_and_never_block_the_scan(spool: Spool) -> None:
    good = good_event()
    new = spool.root / "new"
    os.mkfifo(new / "fifo.ndjson")  # opening a FIFO must not wait for a writer
    os.symlink("/etc/passwd", new / "link.ndjson")
    (new / "dir.ndjson").mkdir()
    spool.drop("notes.txt", _ndjson(good_event()))
    bad_name = os.fsdecode(b"bad-\xff\xfe-name.ndjson")
    spool.drop(bad_name, _ndjson(good_event()))
    spool.drop("lone.ndjson", b'{"event_id":"s\\ud800","customer_id":"c","event_name":"n"}\n', age=3600)
    spool.drop("after.ndjson", _ndjson(good))
    report = spool.dropdir.scan()
    assert report.stopped == ""
    outcomes = {f.name: f.outcome for f in report.files}
    assert outcomes["after.ndjson"] == "done" and good["event_id"] in spool.stored()
    for name in ("fifo.ndjson", "link.ndjson", "dir.ndjson", "notes.txt", "lone.ndjson"):
        assert outcomes[name] == "rejected", (name, outcomes)
    assert outcomes[bad_name] == "done"
    assert spool.errors("notes.txt")[0]["code"] == "unsupported_suffix"
    assert spool.errors("link.ndjson")[0]["code"] == "not_a_file"
    # Was: the surrogate id crashed the errors file (TypeError out of scan), leaving the file in new/
    # where, oldest first, it blocked every later file at every scan.
    (entry,) = spool.errors("lone.ndjson")
    assert entry["field"] == "event_id" and entry["event_id"] == "s\ud800"
    assert not any((spool.root / "new").iterdir())
