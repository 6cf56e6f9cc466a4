"""What the fleet tests share: several `run` processes on one PostgreSQL outbox, app producers that
enqueue inside their own psycopg transactions, and reading the emulator's request log against a budget.

Every agent is a real `python -m agent run` (tests.reliability.helpers.AgentProcess) with
`[outbox] url` + `schema` in place of the SQLite `path`; the emulator runs in its own process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.helpers import (
    KEY,
    ROOT,
    AgentProcess,
    child_env,
    free_port,
    pg_sections,
    write_config,
)


@dataclass
class Fleet:
    """`size` agents on one outbox, each with its config, log and HTTP port (for `GET /v1/status`)."""

    agents: list[AgentProcess] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        tmp: Path,
        size: int,
        dodo_url: str,
        url: str,
        schema: str,
        env: Mapping[str, str] | None = None,
        **overrides: Mapping[str, Any],
    ) -> Fleet:
        fleet = cls()
        for n in range(size):
            port = free_port()
            config = write_config(
                tmp / f"agent{n}.toml", pg_sections(tmp, dodo_url, port, url, schema, **overrides)
            )
            environ = {"DODO_PAYMENTS_API_KEY": KEY} if env is None else dict(env)
            fleet.agents.append(AgentProcess(config, tmp / f"agent{n}.log", port, environ))
            fleet.configs.append(config)
        return fleet

    def start(self) -> Fleet:
        for agent in self.agents:
            agent.start()
        return self

    def ensure_stopped(self) -> None:
        for agent in self.agents:
            agent.ensure_stopped()  # SIGKILL: kills a SIGSTOPped agent too

    def tails(self) -> str:
        return "\n".join(f"--- agent{n}\n{a.log_tail(15)}" for n, a in enumerate(self.agents))


# -- the request log against a budget ----------------------------------------------------------------


def worst_window(times: Sequence[float], width: float) -> int:
    """The most requests in any `width`-second window (closed at both ends) of sorted `times`."""
    worst, lo = 0, 0
    for hi, at in enumerate(times):
        while at - times[lo] > width:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


def budget_allows(requests_per_minute: float, burst: int, width: float) -> float:
    """What a GCRA / token-bucket budget lets through in `width` seconds: the burst plus the refill."""
    return burst + requests_per_minute * width / 60.0


def over_budget(
    times: Sequence[float], requests_per_minute: float, burst: int, widths: Iterable[float], slack: int = 1
) -> list[tuple[float, int, float]]:
    """(width, seen, allowed) for every window width the requests overran (`slack` requests of jitter:
    the emulator stamps a request when it answers, a little after the agent took its token)."""
    found = []
    for width in widths:
        seen, allowed = worst_window(times, width), budget_allows(requests_per_minute, burst, width)
        if seen > allowed + slack:
            found.append((width, seen, allowed))
    return found


def request_times(log: Sequence[Mapping[str, Any]]) -> list[float]:
    return sorted(float(entry["at"]) for entry in log)


# -- app producers: the app's own table and the outbox, in one psycopg transaction --------------------

PRODUCER = """
import random, sys, time
from pathlib import Path
import psycopg
from agent.outbox import Outbox

url, schema, app_schema, prefix, ack_path, stop_path, seed, rollback_rate, pause = sys.argv[1:10]
rng = random.Random(int(seed))
stop = Path(stop_path)
outbox = Outbox(url, schema=schema)
n = 0
with open(ack_path, "a") as ack:
    conn = psycopg.connect(url)
    while not stop.exists():
        ids = [f"{prefix}-{n + i:06d}" for i in range(rng.randint(1, 8))]
        n += len(ids)
        events = [{"event_id": i, "customer_id": f"cus_{rng.randint(1, 9)}", "event_name": "api.call",
                   "metadata": {"tokens": rng.randint(1, 900)}} for i in ids]
        verdict = "R"
        try:
            conn.execute(f"INSERT INTO {app_schema}.orders (order_id, events) VALUES (%s, %s)",
                         (ids[0], len(ids)))
            outbox.enqueue_many(events, conn=conn)
            if rng.random() < float(rollback_rate):  # decided after the enqueue: the app changed its mind
                conn.rollback()
            else:
                verdict = "U"  # a commit that raises may or may not have happened
                conn.commit()
                verdict = "C"
        except Exception as exc:
            print("producer:", verdict, type(exc).__name__, exc, file=sys.stderr, flush=True)
            conn.close()
            conn = psycopg.connect(url)
        ack.write(verdict + " " + " ".join(ids) + "\\n")
        ack.flush()
        time.sleep(rng.uniform(0.005, 0.03) * float(pause))
    conn.close()
outbox.close()
"""


def start_producer(
    url: str,
    schema: str,
    app_schema: str,
    prefix: str,
    ack_path: Path,
    stop_path: Path,
    seed: int,
    rollback_rate: float,
    pause: float,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """An app process: each transaction inserts an order row and enqueues its 1-8 events on the same
    connection, then commits or (a share) rolls back; it writes `C|R|U ids...` once that returned."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                PRODUCER,
                url,
                schema,
                app_schema,
                prefix,
                str(ack_path),
                str(stop_path),
                str(seed),
                str(rollback_rate),
                str(pause),
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


@dataclass
class Verdicts:
    committed: set[str] = field(default_factory=set)
    rolled_back: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    transactions: dict[str, int] = field(default_factory=dict)  # C/R/U -> count
    firsts: dict[str, set[str]] = field(default_factory=lambda: {"C": set(), "R": set(), "U": set()})
    """C/R/U -> the first event_id of each transaction: its order's id in the app's table."""


def read_verdicts(paths: Iterable[Path]) -> Verdicts:
    found = Verdicts()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            verdict, *ids = line.split()
            if not ids:
                continue  # a line cut short by the producer being stopped
            target = {"C": found.committed, "R": found.rolled_back, "U": found.unknown}[verdict]
            target.update(ids)
            found.firsts[verdict].add(ids[0])
            found.transactions[verdict] = found.transactions.get(verdict, 0) + 1
    return found


def held_by(url: str, schema: str, pid: int) -> list[str]:
    """The event_ids agent `pid` holds leased right now (its worker's owner is `host:pid:token`).

    Read straight from the table: no store API says which agent holds a row. If the store renames
    `lease_owner`, this is the one line to change."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT event_id FROM {schema}.dodo_outbox_events WHERE state = 'inflight' "
            "AND split_part(lease_owner, ':', 2) = %s",
            (str(pid),),
        ).fetchall()
    return [str(r[0]) for r in rows]
