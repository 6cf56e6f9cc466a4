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


def read_records(stream: IO[bytes], *, ndjson: bool = False) -> Iterator[Record | ParseProblem]:
    """Yield each event of the input, or a ParseProblem for each part that cannot be read.

    `ndjson=True` reads the input as NDJSON without sniffing its shape (the caller knows it, e.g. from
    a `.ndjson` suffix): a first line that is broken then costs that line only, not the whole file.

    Bytes that are not UTF-8 are kept as lone surrogates (surrogateescape): outside a JSON string they
    make that record invalid JSON, inside one the event's validation refuses the field. They are never
    replaced by U+FFFD, which would store a silently altered event (a Latin-1 `cus_é` as `cus_�`).
    """
    head = stream.read(CHUNK)
    if head.startswith(_UTF16_32_BOMS):
        yield ParseProblem(1, "the input is UTF-16 or UTF-32 (it starts with a byte-order mark); write UTF-8")
        return
    text, tail = _decode(head)
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped and not tail and not stream.read(1):
        yield ParseProblem(1, "the input is empty; expected JSON events")
        return
    offset_line = 1 + text[: len(text) - len(stripped)].count("\n")
    if ndjson:
        yield from _ndjson(stripped, tail, stream, offset_line)
        return
    if stripped.startswith("["):
        yield from _array(stripped[1:], tail, stream, offset_line)
        return
    # An object: a single event, a Dodo body, or the first line of NDJSON. The first line may be
    # longer than the first chunk (a big event): read on to its end, else a valid NDJSON file would
    # be taken for one malformed document and every line of it refused.
    if "\n" not in stripped:
        stripped, tail = _read_first_line(stripped, tail, stream)
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


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def _read_first_line(text: str, tail: bytes, stream: IO[bytes]) -> tuple[str, bytes]:
    """`text` extended chunk by chunk until it holds a newline, the input ends, or it passes
    MAX_ELEMENT_CHARS (then the NDJSON reader reports the line as too long)."""
    parts, size = [text], len(text)
    while size <= MAX_ELEMENT_CHARS and (chunk := stream.read(CHUNK)):
        more, tail = _decode(chunk, tail)
        parts.append(more)
        size += len(more)
        if "\n" in more:
            break
    return "".join(parts), tail


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` start a UTF-8 character that the next chunk completes."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last lead (or ASCII) byte
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


def _decode(data: bytes, tail: bytes = b"") -> tuple[str, bytes]:
    """Decode UTF-8, keeping an incomplete trailing character for the next chunk.

    Invalid bytes become lone surrogates (surrogateescape), never U+FFFD: see `read_records`.
    (Before: errors="replace" stored events whose ids or values had been silently altered.)
    """
    data = tail + data
    cut = _incomplete_tail(data)
    return data[: len(data) - cut].decode("utf-8", "surrogateescape"), data[len(data) - cut :]


def _is_body(value: dict[str, Any]) -> bool:
    return set(value) == {"events"}


def _ndjson(text: str, tail: bytes, stream: IO[bytes], line: int) -> Iterator[Record | ParseProblem]:
    """One record per line. Only the new chunk is split (re-splitting a growing buffer was quadratic
    in the length of a line), and a line over MAX_ELEMENT_CHARS is reported and skipped to its end
    instead of being held in memory whole (a file with one endless line could exhaust it)."""
    pending: list[str] = []  # the pieces of the unfinished current line
    size = 0
    skipping = False  # inside a line that is too long: drop it up to its newline
    while True:
        *complete, last = text.split("\n")
        for piece in complete:
            if skipping:
                skipping = False
            else:
                pending.append(piece)
                yield from _ndjson_line("".join(pending), line)
            pending, size = [], 0
            line += 1
        if not skipping:
            pending.append(last)
            size += len(last)
            if size > MAX_ELEMENT_CHARS:
                yield ParseProblem(
                    line,
                    f"a line longer than {MAX_ELEMENT_CHARS >> 20} Mi characters cannot be an event; "
                    "skipped to its end",
                )
                pending, size, skipping = [], 0, True
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        text, tail = _decode(chunk, tail)
    rest = "".join(pending) + tail.decode("utf-8", "surrogateescape")
    if not skipping and rest.strip():
        yield from _ndjson_line(rest, line)


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
