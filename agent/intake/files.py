"""Read events from a file or stream: a JSON object, a JSON array, a Dodo body or NDJSON.

Arrays and NDJSON are streamed, element by element, so a file larger than memory is fine. Every record
carries the line it starts on, so problems can be reported as `line 12`. A record that cannot be parsed
is yielded as a `ParseProblem` instead of stopping the read: good records of a partly bad file still
count. No I/O beyond reading the stream it is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

CHUNK = 1 << 16
MAX_DOCUMENT_BYTES = 64 << 20
"""A single JSON object (or Dodo body) is read whole; larger input must be NDJSON or an array."""

_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Record:
    """One event-shaped value read from the input, and the line it starts on (1-based)."""

    line: int
    value: Any


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """Input that is not JSON at `line`, with the reason."""

    line: int
    message: str


def read_records(stream: IO[bytes]) -> Iterator[Record | ParseProblem]:
    """Yield each event of the input, or a ParseProblem for each part that cannot be read."""
    head = stream.read(CHUNK)
    text, tail = _decode(head)
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped and not tail and not stream.read(1):
        yield ParseProblem(1, "the input is empty; expected JSON events")
        return
    offset_line = 1 + text[: len(text) - len(stripped)].count("\n")
    if stripped.startswith("["):
        yield from _array(stripped[1:], tail, stream, offset_line)
        return
    # An object: a single event, a Dodo body, or the first line of NDJSON.
    first_line, _, _rest = stripped.partition("\n")
    try:
        value = json.loads(first_line)
        is_ndjson = isinstance(value, dict) and not _is_body(value)
    except json.JSONDecodeError:
        is_ndjson = False
    except RecursionError:
        is_ndjson = True  # a monster first line; the NDJSON reader reports it and goes on
    if is_ndjson:
        yield from _ndjson(stripped, tail, stream, offset_line)
    else:
        yield from _document(stripped, tail, stream, offset_line)


def _decode(data: bytes, tail: bytes = b"") -> tuple[str, bytes]:
    """Decode UTF-8, keeping an incomplete trailing character for the next chunk."""
    data = tail + data
    for cut in range(0, 4):
        try:
            return data[: len(data) - cut].decode("utf-8"), data[len(data) - cut :]
        except UnicodeDecodeError as exc:
            if exc.start < len(data) - 4:
                # Genuinely invalid bytes in the middle: replace them so the JSON error names the line.
                return data.decode("utf-8", errors="replace"), b""
    return data.decode("utf-8", errors="replace"), b""


def _is_body(value: dict[str, Any]) -> bool:
    return set(value) == {"events"}


def _ndjson(text: str, tail: bytes, stream: IO[bytes], line: int) -> Iterator[Record | ParseProblem]:
    buffer = text
    while True:
        *complete, buffer = buffer.split("\n")
        for raw in complete:
            yield from _ndjson_line(raw, line)
            line += 1
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        more, tail = _decode(chunk, tail)
        buffer += more
    if buffer.strip():
        yield from _ndjson_line(buffer, line)


def _ndjson_line(raw: str, line: int) -> Iterator[Record | ParseProblem]:
    if not raw.strip():
        return
    try:
        yield Record(line, json.loads(raw))
    except json.JSONDecodeError as exc:
        yield ParseProblem(line, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        yield ParseProblem(line, "nested too deeply to be an event")


def _document(text: str, tail: bytes, stream: IO[bytes], line: int) -> Iterator[Record | ParseProblem]:
    parts = [text]
    size = len(text)
    while chunk := stream.read(CHUNK):
        more, tail = _decode(chunk, tail)
        parts.append(more)
        size += len(more)
        if size > MAX_DOCUMENT_BYTES:
            yield ParseProblem(
                line,
                f"a single JSON document over {MAX_DOCUMENT_BYTES >> 20} MiB; write large inputs as "
                "NDJSON (one event per line) or a JSON array",
            )
            return
    whole = "".join(parts)
    try:
        value = json.loads(whole)
    except json.JSONDecodeError as exc:
        yield ParseProblem(line + exc.lineno - 1, f"not valid JSON ({exc.msg} at column {exc.colno})")
        return
    except RecursionError:
        yield ParseProblem(line, "nested too deeply to be an event")
        return
    if isinstance(value, dict) and _is_body(value):
        events = value["events"]
        if not isinstance(events, list):
            yield ParseProblem(line, '"events" must be a JSON array of events')
            return
        for item in events:
            yield Record(line, item)
    elif isinstance(value, dict):
        yield Record(line, value)
    else:
        yield ParseProblem(line, f"expected a JSON object, array or NDJSON, got {type(value).__name__}")


def _array(text: str, tail: bytes, stream: IO[bytes], line: int) -> Iterator[Record | ParseProblem]:
    """Stream the elements of a JSON array with raw_decode, holding about one element at a time."""
    buffer = text
    eof = False
    expect_value = True
    while True:
        stripped = buffer.lstrip()
        line += buffer[: len(buffer) - len(stripped)].count("\n")
        buffer = stripped
        if not buffer or (expect_value and not eof and len(buffer) < MAX_ELEMENT_CHARS and _partial(buffer)):
            if eof:
                if not buffer:
                    yield ParseProblem(line, "the JSON array is not closed with ']' (truncated file?)")
                    return
            else:
                chunk = stream.read(CHUNK)
                if chunk:
                    more, tail = _decode(chunk, tail)
                    buffer += more
                else:
                    eof = True
                continue
        if buffer[0] == "]":
            rest = buffer[1:]
            if rest.strip() or stream.read(1):
                yield ParseProblem(line, "unexpected data after the closing ']'")
            return
        if not expect_value:
            if buffer[0] != ",":
                yield ParseProblem(line, f"expected ',' or ']' in the array, found {buffer[:10]!r}")
                return
            buffer = buffer[1:]
            expect_value = True
            continue
        try:
            value, end = _decoder.raw_decode(buffer)
        except json.JSONDecodeError as exc:
            yield ParseProblem(line + exc.lineno - 1, f"not valid JSON ({exc.msg})")
            return
        except RecursionError:
            yield ParseProblem(line, "nested too deeply to be an event")
            return
        yield Record(line, value)
        line += buffer[:end].count("\n")
        buffer = buffer[end:]
        expect_value = False


MAX_ELEMENT_CHARS = 4 << 20
"""How much of one array element is buffered while waiting for it to complete."""


def _partial(buffer: str) -> bool:
    """Whether the buffer may end inside its first JSON value (so more input is needed first)."""
    try:
        _, end = _decoder.raw_decode(buffer)
    except json.JSONDecodeError:
        return True
    except RecursionError:
        return False
    # A number that runs to the end of the buffer may continue in the next chunk.
    return end == len(buffer)
