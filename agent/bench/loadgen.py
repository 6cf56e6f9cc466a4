"""An HTTP load generator for the intake benchmarks. It runs in its OWN process, never the server's.

`python -m agent.bench.loadgen --url http://127.0.0.1:8790 --connections 64 --events 1 ...` keeps
`connections` keep-alive HTTP/1.1 connections busy with `POST /events/ingest`, each request carrying
`events` fresh events (unique event_ids), for `warmup + duration` seconds, and prints one JSON object:
`{"requests", "ok", "events", "seconds", "statuses", "errors", "latency_ms": {"p50", "p99"}}`, where
the requests that complete inside the measured window (after the warm-up) count, whenever they were
sent: in steady state that is the throughput, and a request slower than the window still counts once
it ends inside it. A round where none succeeded reports `ok` 0 (the caller says so); it never fails.

It speaks HTTP/1.1 over asyncio streams directly rather than through httpx: an async httpx client
spends ~5x more CPU per request, which would make the load generator, not the server, the limit
(the two share the machine's two cores). `run_load` is the parent's side (spawns and parses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent.bench.common import now_timestamp, percentile

_EVENT = (
    '{"event_id":"%s-%d-%d","customer_id":"cus_%d","event_name":"llm.tokens","timestamp":"%s",'
    '"metadata":{"model":"gpt-4o-mini","input_tokens":%d,"output_tokens":%d}}'
)


@dataclass
class _Stats:
    warm_at: float
    stop_at: float
    ok: int = 0
    events: int = 0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def _body(prefix: str, conn: int, seq: int, count: int, stamp: str) -> bytes:
    events = ",".join(
        _EVENT % (prefix, conn, seq + i, (seq + i) % 977, stamp, 1000 + i % 300, 200 + i % 50)
        for i in range(count)
    )
    return b'{"events":[' + events.encode() + b"]}"


async def _worker(index: int, host: str, port: int, args: argparse.Namespace, stats: _Stats) -> None:
    loop = asyncio.get_running_loop()
    auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
    head = (
        f"POST /events/ingest HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{auth}"
    ).encode()
    stamp = now_timestamp()
    seq = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while loop.time() < stats.stop_at:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:  # refused or unreachable: noted, retried until the window ends
                _note(stats, exc)
                await asyncio.sleep(0.05)
                continue
        assert reader is not None
        body = _body(args.prefix, index, seq, args.events, stamp)
        seq += args.events
        started = loop.time()
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            status, close = await _read_response(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError) as exc:
            _note(stats, exc)
            writer.close()
            writer = None
            continue
        finished = loop.time()
        if close:
            writer.close()
            writer = None
        if stats.warm_at <= finished <= stats.stop_at:
            stats.requests += 1
            stats.statuses[str(status)] = stats.statuses.get(str(status), 0) + 1
            stats.latencies.append((finished - started) * 1000)
            if status == 200:
                stats.ok += 1
                stats.events += args.events
    if writer is not None:
        writer.close()


def _note(stats: _Stats, exc: BaseException) -> None:
    """Keep the first few errors for the report (the count of failures is `requests - ok`)."""
    if len(stats.errors) < 5:
        stats.errors.append(f"{type(exc).__name__}: {exc}")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the server closes the connection."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    close = False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    now = loop.time()
    stats = _Stats(warm_at=now + args.warmup, stop_at=now + args.warmup + args.duration)
    await asyncio.gather(*(_worker(i, host, port, args, stats) for i in range(args.connections)))
    return {
        "requests": stats.requests,
        "ok": stats.ok,
        "events": stats.events,
        "seconds": args.duration,
        "statuses": stats.statuses,
        "errors": stats.errors,
        "latency_ms": {"p50": percentile(stats.latencies, 50), "p99": percentile(stats.latencies, 99)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=1, help="events per request")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--prefix", default="lg", help="event_id prefix; make it unique per run")
    parser.add_argument("--token", default="")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_main(args))), flush=True)


def run_load(
    url: str, *, connections: int, events: int, duration: float, prefix: str, warmup: float = 0.5
) -> dict[str, Any]:
    """Run the load generator in a child process against `url`; return its JSON report.

    Never raises for a failed round: when the child fails (or prints no report) the report has
    `ok` 0 and the reason in `errors`, so the caller reports "no request succeeded" instead of
    ending the benchmark. Only requests that complete inside the window count, so on a busy
    machine a round of slow requests can have `ok` 0 too.
    """
    command = [
        sys.executable,
        "-m",
        "agent.bench.loadgen",
        "--url",
        url,
        "--connections",
        str(connections),
        "--events",
        str(events),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--prefix",
        prefix,
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=warmup + duration + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        report = failed_report(duration, f"the load generator did not finish in {exc.timeout:.0f} s")
    else:
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = done.stderr.strip()[-2000:] or "no output"
            report = failed_report(duration, f"the load generator failed (exit {done.returncode}): {tail}")
    report["wall_seconds"] = time.monotonic() - started
    return report


def failed_report(duration: float, error: str) -> dict[str, Any]:
    """The report of a round whose load generator produced none: nothing succeeded, and why."""
    return {
        "requests": 0,
        "ok": 0,
        "events": 0,
        "seconds": duration,
        "statuses": {},
        "errors": [error],
        "latency_ms": {"p50": 0.0, "p99": 0.0},
    }


if __name__ == "__main__":
    main()
