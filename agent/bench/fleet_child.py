"""One drainer of the fleet benchmark in its own process, so N drainers are N interpreters (N GILs).

`python -m agent.bench.fleet_child` reads one JSON command per line on stdin and answers one JSON line
on stdout. A round is two commands: a setup, answered `{"ready": true}` once everything that is not
timed is done (imports, connections, the Worker), then `"go"`, answered `{"delivered": N, "seconds": S,
"retried": R}` once it has drained. An error is answered `{"error": "..."}`. It exits at EOF.

The setups: `{"kind": "agent", "url", "schema", "emulator", "requests_per_minute", "burst",
"batch_max_events", "until_empty"}`, the real Worker on the PostgreSQL outbox in `schema`
(`drain.bench_settings`: default delivery settings, pacing as given); and `{"kind": "pgmq", "url",
"queue", "emulator"}`, pgmq's read(1000) + POST + delete loop (`pg_baselines.pgmq_drain`).
With `until_empty` the agent drains again until the outbox has nothing pending or in flight (a
retried batch, a batch another agent holds), not only until its first idle tick.

`Drainers` is the parent's side: it starts the children, runs rounds on them, and stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

import orjson

from agent.bench.common import API_KEY

UNTIL_EMPTY_TIMEOUT = 300.0


class _Agent:
    def __init__(self, command: dict[str, Any]) -> None:
        from agent.bench.drain import bench_settings
        from agent.delivery.client import DodoClient
        from agent.delivery.worker import Worker
        from agent.store import open_store
        from agent.store.records import StoreOptions

        self.store = open_store(command["url"], StoreOptions(schema=command["schema"]))
        base = bench_settings(command["emulator"], self.store.location)
        delivery = dataclasses.replace(
            base.delivery,
            requests_per_minute=float(command.get("requests_per_minute", 0.0)),
            burst=int(command.get("burst", base.delivery.burst)),
            batch_max_events=int(command.get("batch_max_events", base.delivery.batch_max_events)),
        )
        settings = dataclasses.replace(base, delivery=delivery)
        self.until_empty = bool(command.get("until_empty", False))
        client = DodoClient.from_settings(settings)
        self.worker = Worker(self.store, settings, client, environ={"DODO_PAYMENTS_API_KEY": API_KEY})

    def run(self) -> dict[str, Any]:
        delivered = retried = 0
        deadline = time.monotonic() + UNTIL_EMPTY_TIMEOUT
        try:
            while True:
                report = self.worker.drain_until_idle()
                delivered, retried = delivered + report.delivered, retried + report.retried
                if report.paused or report.dead:
                    raise RuntimeError(f"the agent's drain did not go cleanly: {report.as_dict()}")
                if not self.until_empty or time.monotonic() > deadline:
                    break
                counts = self.store.counts()
                if counts["pending"] == 0 and counts["inflight"] == 0:
                    break
                time.sleep(0.05)
        finally:
            self.worker.close()
            self.store.close()
        return {"delivered": delivered, "retried": retried}


class _PgmqConsumer:
    def __init__(self, command: dict[str, Any]) -> None:
        from pgmq import PGMQueue
        from psycopg_pool import ConnectionPool

        self.pool: Any = ConnectionPool(command["url"], min_size=1, max_size=1, open=True)
        self.client: Any = PGMQueue(pool=self.pool, init_extension=False)
        self.queue, self.emulator = str(command["queue"]), str(command["emulator"])

    def run(self) -> dict[str, Any]:
        from agent.bench.pg_baselines import pgmq_drain

        try:
            return {"delivered": pgmq_drain(self.client, self.queue, self.emulator), "retried": 0}
        finally:
            self.pool.close()


def _warm_up() -> None:
    """Import what a round needs now, while the parent still sets up, not in the first round's setup."""
    import agent.delivery.worker
    import agent.store.postgres  # noqa: F401

    with contextlib.suppress(ImportError):  # without pgmq its rounds are not run
        import pgmq  # noqa: F401


_ANSWERS: Any = None
"""The stream the answers go to: the process's stdout when it started (see `main`)."""


def _answer(data: dict[str, Any]) -> None:
    _ANSWERS.write(orjson.dumps(data).decode() + "\n")
    _ANSWERS.flush()


def main() -> None:
    """Serve setup / go commands until stdin closes. Only answers go to stdout: anything else a
    library prints (logs, warnings) is sent to stderr."""
    global _ANSWERS
    from agent import logs

    _ANSWERS = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logs.configure("auto", "warning")
    _warm_up()
    drainer: _Agent | _PgmqConsumer | None = None
    for line in sys.stdin:
        try:
            if line.strip() == "go":
                if drainer is None:
                    raise RuntimeError("'go' before a setup")
                started = time.monotonic()
                result = drainer.run()
                drainer = None
                _answer({**result, "seconds": time.monotonic() - started})
                continue
            command = orjson.loads(line)
            drainer = _Agent(command) if command["kind"] == "agent" else _PgmqConsumer(command)
            _answer({"ready": True})
        except Exception as exc:  # answered, so the parent names it instead of waiting
            drainer = None
            _answer({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]})


class Drainers:
    """`count` child processes of `python -m agent.bench.fleet_child`, stopped (by pid) on `close`."""

    def __init__(self, count: int, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.children: list[subprocess.Popen[str]] = []
        self.answers: list[queue.Queue[str]] = []
        for _ in range(count):
            child = subprocess.Popen(
                [sys.executable, "-m", "agent.bench.fleet_child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            answers: queue.Queue[str] = queue.Queue()
            threading.Thread(target=self._read, args=(child, answers), daemon=True).start()
            self.children.append(child)
            self.answers.append(answers)

    @staticmethod
    def _read(child: subprocess.Popen[str], answers: queue.Queue[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            answers.put(line)
        answers.put("")  # EOF: the child is gone

    def _ask(self, index: int, line: str) -> None:
        stdin = self.children[index].stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def _answer(self, index: int) -> dict[str, Any]:
        try:
            line = self.answers[index].get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"a fleet drainer did not answer within {self.timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"a fleet drainer exited (code {self.children[index].wait(10)})")
        answer: dict[str, Any] = orjson.loads(line)
        if "error" in answer:
            raise RuntimeError(f"a fleet drainer failed: {answer['error']}\n{answer.get('trace', '')}")
        return answer

    def round(self, setups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
        """Set up the first len(setups) children (not timed), start them together, wait for all;
        their answers and the seconds from the start to the last one's end."""
        used = range(len(setups))
        for i in used:
            self._ask(i, orjson.dumps(setups[i]).decode())
        for i in used:
            self._answer(i)
        started = time.monotonic()
        for i in used:
            self._ask(i, "go")
        answers = [self._answer(i) for i in used]
        return answers, time.monotonic() - started

    def close(self) -> None:
        for child in self.children:
            if child.stdin is not None:
                child.stdin.close()
        for child in self.children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.terminate()
                child.wait(5)


if __name__ == "__main__":
    main()
