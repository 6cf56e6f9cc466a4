"""Reading events from files: every format, line numbers, streaming, and bad input that never crashes."""

from __future__ import annotations

import io
import json

from agent.intake.records import ParseProblem, Record, read_records


def read(data: bytes) -> list[Record | ParseProblem]:
    return list(read_records(io.BytesIO(data)))


def values(data: bytes) -> list[object]:
    return [r.value for r in read(data) if isinstance(r, Record)]


def problems(data: bytes) -> list[tuple[int, str]]:
    return [(r.line, r.message) for r in read(data) if isinstance(r, ParseProblem)]


def test_single_object_body_array_and_ndjson() -> None:
    assert values(b'{"a": 1}') == [{"a": 1}]
    assert values(b'{"events": [{"a": 1}, {"b": 2}]}') == [{"a": 1}, {"b": 2}]
    assert values(b'[{"a": 1},\n {"b": 2}]') == [{"a": 1}, {"b": 2}]
    assert values(b'{"a": 1}\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
    assert values(b'\xef\xbb\xbf{"a": 1}') == [{"a": 1}]  # a UTF-8 byte-order mark


def test_line_numbers() -> None:
    records = read(b'{"a": 1}\n\n{"b": 2}\nbroken\n{"c": 3}')
    assert [(r.line, type(r).__name__) for r in records] == [
        (1, "Record"),
        (3, "Record"),
        (4, "ParseProblem"),
        (5, "Record"),
    ]
    array = read(b'[\n{"a": 1},\n{"b":\n 2},\n{"c": 3}\n]')
    assert [r.line for r in array] == [2, 3, 5]


def test_large_array_is_streamed_across_chunks() -> None:
    items = ",\n".join(json.dumps({"event_id": f"e{i}", "pad": "x" * 50}) for i in range(5000))
    data = ("[" + items + "]").encode()
    got = values(data)
    assert len(got) == 5000 and got[-1] == {"event_id": "e4999", "pad": "x" * 50}


def test_bad_inputs_are_problems() -> None:
    assert problems(b"") == [(1, "the input is empty; expected JSON events")]
    assert "not closed" in problems(b'[{"a": 1},')[0][1]
    assert "after the closing" in problems(b'[{"a": 1}] junk')[0][1]
    assert "expected a JSON object" in problems(b'"just a string"')[0][1]
    assert '"events" must be a JSON array' in problems(b'{"events": 5}')[0][1]
    assert problems(b"\x00\x01\x02garbage")


def test_deep_nesting_is_a_problem_and_ndjson_goes_on() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    records = read(deep + b'\n{"ok": 1}\n')
    assert isinstance(records[0], ParseProblem) and "nested too deeply" in records[0].message
    assert isinstance(records[-1], Record) and records[-1].value == {"ok": 1}


def test_invalid_utf8_in_the_middle_names_its_line() -> None:
    found = read(b'{"a": 1}\n{"b": "\xff\xfe"}\n{"c": 3}\n')
    # Replaced bytes keep the line readable; nothing after it is lost.
    assert [r.line for r in found] == [1, 2, 3]
    assert isinstance(found[-1], Record) and found[-1].value == {"c": 3}
