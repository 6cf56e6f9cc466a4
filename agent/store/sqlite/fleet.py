"""The fleet's shared state on SQLite: the slots (GCRA) and the agents' registry.

The same rules as PostgreSQL's (agent/store/rules.py), applied in Python under the write lock
(BEGIN IMMEDIATE), so every process on this file (`run`, `drain --once`, another `run`) shares one
budget and one probe. The clock is this host's: an SQLite outbox lives on one host.
"""

from __future__ import annotations

import sqlite3
import time

from agent.store.records import AgentRow
from agent.store.rules import gcra_take, halved, held_tat, recovered, slot_interval_us
from agent.store.sqlite.connection import StoreBase
from agent.timestamps import to_us


def _now_us() -> int:
    return to_us(time.time())


def _slot(conn: sqlite3.Connection, name: str) -> tuple[int, float | None]:
    conn.execute("INSERT INTO dodo_outbox_slots (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
    tat, rate = conn.execute("SELECT tat, rate FROM dodo_outbox_slots WHERE name = ?", (name,)).fetchone()
    return int(tat), None if rate is None else float(rate)


def take_slot(db: StoreBase, name: str, *, per_minute: float, burst: int, recovery: float) -> int:
    with db.write() as conn:
        tat, rate = _slot(conn, name)
        now = _now_us()
        new_tat, wait = gcra_take(tat, now, slot_interval_us(per_minute, rate), burst)
        if new_tat is not None:
            conn.execute(
                "UPDATE dodo_outbox_slots SET tat = ?, rate = ? WHERE name = ?",
                (new_tat, recovered(rate, per_minute, recovery), name),
            )
    return wait


def hold_slot(
    db: StoreBase, name: str, *, delay_us: int, per_minute: float, burst: int, slow_down: bool
) -> None:
    with db.write() as conn:
        tat, rate = _slot(conn, name)
        rate = halved(rate, per_minute) if slow_down else rate
        interval = slot_interval_us(per_minute, rate)
        conn.execute(
            "UPDATE dodo_outbox_slots SET tat = ?, rate = ? WHERE name = ?",
            (held_tat(tat, _now_us(), delay_us, interval, burst), rate, name),
        )


def reset_slot(db: StoreBase, name: str) -> None:
    with db.write() as conn:
        conn.execute("UPDATE dodo_outbox_slots SET tat = 0 WHERE name = ?", (name,))


def slot_rate(db: StoreBase, name: str) -> float | None:
    with db.read() as conn:
        row = conn.execute("SELECT rate FROM dodo_outbox_slots WHERE name = ?", (name,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def heartbeat(
    db: StoreBase, agent_id: str, *, host: str, pid: int, claimed: int, delivered: int, stopped: bool
) -> None:
    now = _now_us()
    with db.write() as conn:
        conn.execute(
            "INSERT INTO dodo_outbox_agents "
            "(agent_id, host, pid, started_at, last_seen, claimed, delivered, stopped) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
            "last_seen = excluded.last_seen, claimed = claimed + excluded.claimed, "
            "delivered = delivered + excluded.delivered, stopped = excluded.stopped",
            (agent_id, host, pid, now, now, claimed, delivered, int(stopped)),
        )


def agents(db: StoreBase) -> list[AgentRow]:
    with db.read() as conn:
        rows = conn.execute(
            "SELECT agent_id, host, pid, started_at, last_seen, claimed, delivered, stopped "
            "FROM dodo_outbox_agents ORDER BY started_at, agent_id"
        ).fetchall()
    now = _now_us()
    return [
        AgentRow(str(a), str(h), int(p), int(s), int(seen), max(0, now - int(seen)), int(c), int(d), bool(st))
        for a, h, p, s, seen, c, d, st in rows
    ]


def forget_agents(db: StoreBase, unseen_for_us: int, stopped_unseen_for_us: int | None) -> int:
    stopped = unseen_for_us if stopped_unseen_for_us is None else stopped_unseen_for_us
    now = _now_us()
    with db.write() as conn:
        cur = conn.execute(
            "DELETE FROM dodo_outbox_agents WHERE last_seen < ? OR (stopped = 1 AND last_seen < ?)",
            (now - unseen_for_us, now - stopped),
        )
        return int(cur.rowcount)
