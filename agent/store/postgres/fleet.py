"""The fleet's shared state on PostgreSQL: the slots (GCRA) and the agents' registry.

Every agent on the outbox takes its requests to Dodo from one slot row (`dodo_requests`) and the
pause's probe from another (`pause_probe`); agent/store/rules.py states the GCRA rules, and the
statements here are those rules in SQL, timed by the database clock (`clock_timestamp()`), never a
host's, so agents on hosts with skewed clocks share one budget. A slot is taken by one guarded UPDATE:
under READ COMMITTED a concurrent taker waits for the row lock and re-checks the guard against the row
as the other left it, so two agents can never take the same slot.
"""

from __future__ import annotations

from typing import Any

from agent.store.records import AgentRow
from agent.store.rules import MIN_SLOT_WAIT_US, halved, held_tat, slot_interval_us

NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
"""The database clock in microseconds since the epoch."""

# The interval between slots, from the row's (latest) slowed rate: rules.slot_interval_us in SQL.
_T = (
    "(CASE WHEN %(pm)s::float8 <= 0 THEN 0::float8 "
    "ELSE 60000000.0 / least(%(pm)s::float8, coalesce({x}.rate, %(pm)s::float8)) END)"
)
_TX = _T.format(x="x")
_TS = _T.format(x="s")

_TAKE = f"""
WITH n AS (SELECT {NOW_US} AS now),
granted AS (
    UPDATE {{sl}} x
       SET tat = (greatest(x.tat, n.now) + {_TX})::bigint,
           rate = CASE WHEN x.rate IS NULL OR x.rate + %(rec)s::float8 >= %(pm)s::float8 THEN NULL
                       ELSE x.rate + %(rec)s::float8 END
      FROM n
     WHERE x.name = %(name)s AND greatest(x.tat, n.now) + {_TX} - n.now <= %(burst)s * {_TX}
 RETURNING 0::bigint AS wait
)
SELECT wait FROM granted
UNION ALL
SELECT greatest(%(min)s, s.tat - (%(burst)s - 1) * {_TS} - n.now)::bigint
  FROM {{sl}} s, n
 WHERE s.name = %(name)s AND NOT EXISTS (SELECT 1 FROM granted)
"""
# The refused branch reads the statement's snapshot: when another agent took the slot meanwhile its
# wait comes out short, and the caller only asks again sooner. Never a slot too many.


def take_slot(db: Any, name: str, *, per_minute: float, burst: int, recovery: float) -> int:
    params = {"name": name, "pm": per_minute, "burst": burst, "rec": recovery, "min": MIN_SLOT_WAIT_US}
    with db.write() as conn:
        row = conn.execute(db.q(_TAKE), params).fetchone()
        if row is None:  # the first take of this budget: create its row (at rest), then take
            conn.execute(db.q("INSERT INTO {sl} (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"), (name,))
            row = conn.execute(db.q(_TAKE), params).fetchone()
    return MIN_SLOT_WAIT_US if row is None else int(row[0])


def hold_slot(db: Any, name: str, *, delay_us: int, per_minute: float, burst: int, slow_down: bool) -> None:
    # Row-locked first (FOR UPDATE), so the rules in Python apply to the row as it is now; the hold is
    # rare (a 429, a pause), so its second round trip costs nothing that matters.
    with db.write() as conn:
        conn.execute(db.q("INSERT INTO {sl} (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"), (name,))
        tat, rate, now = conn.execute(
            db.q(f"SELECT tat, rate, {NOW_US} FROM {{sl}} WHERE name = %s FOR UPDATE"), (name,)
        ).fetchone()
        rate = halved(rate, per_minute) if slow_down else rate
        interval = slot_interval_us(per_minute, rate)
        conn.execute(
            db.q("UPDATE {sl} SET tat = %s, rate = %s WHERE name = %s"),
            (held_tat(int(tat), int(now), delay_us, interval, burst), rate, name),
        )


def reset_slot(db: Any, name: str) -> None:
    with db.write() as conn:
        conn.execute(db.q("UPDATE {sl} SET tat = 0 WHERE name = %s"), (name,))


def slot_rate(db: Any, name: str) -> float | None:
    with db.read() as conn:
        row = conn.execute(db.q("SELECT rate FROM {sl} WHERE name = %s"), (name,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


_BEAT = f"""
INSERT INTO {{ag}} AS a (agent_id, host, pid, started_at, last_seen, claimed, delivered, stopped)
VALUES (%s, %s, %s, {NOW_US}, {NOW_US}, %s, %s, %s)
ON CONFLICT (agent_id) DO UPDATE SET
    last_seen = excluded.last_seen,
    claimed = a.claimed + excluded.claimed,
    delivered = a.delivered + excluded.delivered,
    stopped = excluded.stopped
"""


def heartbeat(
    db: Any, agent_id: str, *, host: str, pid: int, claimed: int, delivered: int, stopped: bool
) -> None:
    with db.write() as conn:
        conn.execute(db.q(_BEAT), (agent_id, host, pid, claimed, delivered, stopped))


def agents(db: Any) -> list[AgentRow]:
    with db.read() as conn:
        rows = conn.execute(
            db.q(
                "SELECT agent_id, host, pid, started_at, last_seen, "
                f"{NOW_US} - last_seen, claimed, delivered, stopped "
                "FROM {ag} ORDER BY started_at, agent_id"
            )
        ).fetchall()
    return [
        AgentRow(str(a), str(h), int(p), int(s), int(seen), max(0, int(ago)), int(c), int(d), bool(st))
        for a, h, p, s, seen, ago, c, d, st in rows
    ]


def forget_agents(db: Any, unseen_for_us: int, stopped_unseen_for_us: int | None) -> int:
    stopped = unseen_for_us if stopped_unseen_for_us is None else stopped_unseen_for_us
    with db.write() as conn:
        cur = conn.execute(
            db.q(
                f"DELETE FROM {{ag}} WHERE last_seen < {NOW_US} - %s "
                f"OR (stopped AND last_seen < {NOW_US} - %s)"
            ),
            (unseen_for_us, stopped),
        )
        return int(cur.rowcount)
