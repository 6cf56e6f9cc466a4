"""HTTP load as a user measures it: `wrk` when installed, the built-in generator (`loadgen`) otherwise.

`run_http_load` returns the report shape of `loadgen.run_load` (`requests`, `ok`, `events`, `seconds`,
`statuses`, `errors`, `latency_ms`) plus `generator` ("wrk" or "built-in"). With wrk, a Lua script
(`SCRIPT`) builds each request: `events` fresh events whose event_id is `<prefix>-<wrk thread>-<counter>`,
so every request stores new events, as an app's would. wrk counts requests completed in the window
and answers of status >= 400 (`ok` is the difference); it has no warm-up and whole seconds only.
Also `bare_app`: the bare ASGI baseline (parses the body, stores nothing).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from agent.bench.common import now_timestamp
from agent.bench.loadgen import failed_report, run_load

WRK_THREADS = 2
BUILT_IN = "built-in"

SCRIPT = r"""
-- args: event_id prefix, events per request, timestamp. `tid` is set per thread by setup().
local prefix, per, stamp = "wrk", 1, ""
local counter = 0
local threads = {}
local EVENT = '{"event_id":"%s-%d-%d","customer_id":"cus_%d","event_name":"llm.tokens",'
  .. '"timestamp":"%s","metadata":{"model":"gpt-4o-mini","input_tokens":%d,"output_tokens":%d}}'
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix, per, stamp = args[1], tonumber(args[2]), args[3]
end

function request()
  local parts = {}
  for i = 1, per do
    counter = counter + 1
    parts[i] = string.format(EVENT, prefix, tid, counter, counter % 977, stamp,
                             1000 + counter % 300, 200 + counter % 50)
  end
  return wrk.format("POST", "/events/ingest", headers,
                    '{"events":[' .. table.concat(parts, ",") .. ']}')
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"status_errors":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,'
    .. '"duration_us":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_http_load(url: str, *, connections: int, events: int, duration: float, prefix: str) -> dict[str, Any]:
    """One load round against `url`: wrk when installed, else the built-in generator. Never raises."""
    binary = wrk_path()
    if binary is None:
        report = run_load(url, connections=connections, events=events, duration=duration, prefix=prefix)
        report["generator"] = BUILT_IN
        return report
    report = _run_wrk(binary, url, connections, events, max(1, math.ceil(duration)), prefix)
    report["generator"] = "wrk"
    return report


def _run_wrk(
    binary: str, url: str, connections: int, events: int, seconds: int, prefix: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dodo-outbox-wrk-") as directory:
        script = Path(directory) / "ingest.lua"
        script.write_text(SCRIPT)
        command = [
            binary,
            f"-t{min(WRK_THREADS, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url.rstrip("/") + "/events/ingest",
            "--",
            prefix,
            str(events),
            now_timestamp(),
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
        except subprocess.TimeoutExpired:
            return failed_report(seconds, f"wrk did not finish in {seconds + 60} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")]
    if not lines:
        tail = (done.stderr.strip() or done.stdout.strip())[-2000:] or "no output"
        return failed_report(seconds, f"wrk failed (exit {done.returncode}): {tail}")
    raw = json.loads(lines[-1][len("WRKJSON ") :])
    measured = raw["duration_us"] / 1e6 or float(seconds)
    ok = raw["requests"] - raw["status_errors"]
    socket_errors = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    return {
        "requests": raw["requests"],
        "ok": ok,
        "events": ok * events,
        "seconds": measured,
        "statuses": {"200": ok, ">=400": raw["status_errors"]} if raw["status_errors"] else {"200": ok},
        "errors": [f"wrk socket errors: {socket_errors}"] if socket_errors else [],
        "latency_ms": {"p50": raw["p50_us"] / 1000, "p99": raw["p99_us"] / 1000},
        "wall_seconds": time.monotonic() - started,
    }


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bare ASGI baseline: read the body, parse it, answer `{"ingested_count": n}`, store nothing."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    count = len(orjson.loads(b"".join(chunks))["events"])
    payload = b'{"ingested_count":%d}' % count
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
