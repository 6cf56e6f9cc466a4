"""The agents working on the outbox, as `status` shows them: who, where, when last seen, their share.

Every agent heartbeats a row in the outbox (agent/delivery/heartbeat.py) every BEAT_SECONDS while it
runs, and once more when it stops. An agent not seen for GONE_SECONDS is shown as `gone` (killed, its
host lost, or cut off from the outbox); rows not seen for FORGET_SECONDS (FORGET_STOPPED_SECONDS once
stopped) are deleted by the running agents, so the list does not grow with every restart.

Public contract (`status --json` key `agents`; add keys, never rename): a list, the longest-running
first, of `agent_id`, `host`, `pid`, `state` (`active`, `stopped`, `gone`), `started_at` and
`last_seen` (epoch seconds), `last_seen_seconds_ago`, `claimed` and `delivered` (events, over the
agent's life), and `delivered_share` (its part of the listed agents' deliveries, 0..1; None before
any).
"""

from __future__ import annotations

from typing import Any

from agent.store import OutboxStore
from agent.timestamps import US, from_us

STATES = ("active", "stopped", "gone")
BEAT_SECONDS = 5.0
"""How often a running agent records that it is alive (and its counts since the last beat)."""
GONE_SECONDS = 60.0
"""An agent not seen for this long is shown as gone: twelve missed beats, well past a slow tick."""
FORGET_SECONDS = 3600.0
"""Agents not seen for an hour are deleted from the registry: a gone agent is shown (and alerted on)
that long."""
FORGET_STOPPED_SECONDS = 600.0
"""Agents that stopped cleanly are deleted ten minutes after (a `drain --once` from cron every minute
leaves ten rows, not a day's worth)."""


def agents_document(store: OutboxStore, gone_after: float = GONE_SECONDS) -> list[dict[str, Any]]:
    """The registry as JSON-ready rows (see the module's contract)."""
    rows = store.agents()
    total = sum(row.delivered for row in rows)
    out: list[dict[str, Any]] = []
    for row in rows:
        ago = row.seen_ago_us / US
        state = "stopped" if row.stopped else "gone" if ago > gone_after else "active"
        out.append(
            {
                "agent_id": row.agent_id,
                "host": row.host,
                "pid": row.pid,
                "state": state,
                "started_at": round(from_us(row.started_us), 3),
                "last_seen": round(from_us(row.last_seen_us), 3),
                "last_seen_seconds_ago": round(ago, 3),
                "claimed": row.claimed,
                "delivered": row.delivered,
                "delivered_share": round(row.delivered / total, 4) if total else None,
            }
        )
    return out


def agents_by_state(store: OutboxStore) -> dict[str, int]:
    """How many agents are `active`, `stopped` and `gone` (the `dodo_outbox_agents` gauge)."""
    counts = dict.fromkeys(STATES, 0)
    for agent in agents_document(store):
        counts[agent["state"]] += 1
    return counts
