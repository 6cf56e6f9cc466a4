"""The fleet on PostgreSQL: 1, 2 and 4 agents draining one outbox, against as many pgmq consumers.

Every drainer is its own process (`fleet_child`: N interpreters, so the GIL is not what is compared).
Ours: N real Workers (default delivery settings, pacing off: `requests_per_minute = 0`) on one fresh
outbox schema per round, filled beforehand (not timed); pgmq: N `read(1000)` + POST + `delete` loops on
one queue (`send_batch`, not timed). Same server, same emulator (its own process, rate limit off, reset
before each round), same events per round, the sides alternating. The figure is the events of the
round over the seconds from the common start to the last drainer's end. Duplicates are the events the
emulator received more than once in the round (its `duplicates_ignored`). Report only: the issue names
no target. The budget rows (`fleet_budget`) run on the same drainers.

The machine's cores bound the scaling: 4 drainers, PostgreSQL and the emulator on 2 cores share them.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.bench import fleet_budget, pg_baselines
from agent.bench.common import NOT_INSTALLED, Context, Row, median, now_timestamp, paired_rounds, raw_event
from agent.bench.drain import fill
from agent.bench.emulator_proc import emulator_admin, running_emulator
from agent.bench.fleet_child import Drainers
from agent.store import open_store
from agent.store.records import StoreOptions

AGENTS = (1, 2, 4)


def run(ctx: Context, url: str, missing: list[str]) -> list[Row]:
    per_round = ctx.size(30_000, 4_000, minimum=1000)
    rounds = ctx.size(2, 1, minimum=1)
    ctx.progress(
        f"postgres: fleet drain, {'/'.join(map(str, AGENTS))} processes per side, "
        f"{rounds} round(s) of {per_round} events"
    )
    pgmq_missing = "pgmq" in missing
    figures: dict[int, dict[str, list[float]]] = {}
    duplicates: dict[int, dict[str, int]] = {}
    drainers = Drainers(max(max(AGENTS), fleet_budget.AGENTS))
    pgmq: pg_baselines.Pgmq | None = None
    try:
        with running_emulator() as emulator:
            if not pgmq_missing:
                pgmq = pg_baselines.Pgmq(url)
            for agents in AGENTS:
                dups = duplicates[agents] = {"ours": 0, "pgmq": 0}
                sides: dict[str, Callable[[int], float]] = {
                    "ours": _ours(drainers, url, emulator, agents, per_round, dups)
                }
                if pgmq is not None:
                    sides["pgmq"] = _pgmq(drainers, pgmq, url, emulator, agents, per_round, dups)
                figures[agents] = paired_rounds(sides, rounds, warmup=0)
        budget = fleet_budget.run(ctx, drainers, url)
    finally:
        try:
            if pgmq is not None:
                pgmq.close()
        finally:
            drainers.close()
    return rows(figures, duplicates, pgmq_missing, per_round) + budget


def _checked(emulator: str, n: int, delivered: int, who: str) -> int:
    """The round's duplicates; raises RuntimeError unless all `n` events reached the emulator."""
    stats = emulator_admin(emulator, "GET", "stats")
    if delivered < n or stats["events_stored"] != n:
        raise RuntimeError(
            f"{who} delivered {delivered} of {n} events; the emulator stored {stats['events_stored']}"
        )
    return int(stats["duplicates_ignored"])


def _ours(
    drainers: Drainers, url: str, emulator: str, agents: int, n: int, dups: dict[str, int]
) -> Callable[[int], float]:
    def one_round(number: int) -> float:
        schema = pg_baselines.new_name("dodo_bench_fleet")
        try:
            with open_store(url, StoreOptions(schema=schema)) as store:
                fill(store, n, f"fl{agents}r{number}")
            emulator_admin(emulator, "POST", "reset")
            setup = {"kind": "agent", "url": url, "schema": schema, "emulator": emulator}
            answers, seconds = drainers.round([setup] * agents)
        finally:
            pg_baselines.drop_schemas(url, [schema])
        delivered = sum(int(a["delivered"]) for a in answers)
        dups["ours"] += _checked(emulator, n, delivered, f"{agents} agent(s)")
        return n / seconds

    return one_round


def _pgmq(
    drainers: Drainers,
    pgmq: pg_baselines.Pgmq,
    url: str,
    emulator: str,
    consumers: int,
    n: int,
    dups: dict[str, int],
) -> Callable[[int], float]:
    def one_round(number: int) -> float:
        queue = pgmq.new_queue()
        stamp = now_timestamp()
        pgmq.fill(queue, [raw_event(f"fq{consumers}r{number}", i, stamp) for i in range(n)])
        emulator_admin(emulator, "POST", "reset")
        setup = {"kind": "pgmq", "url": url, "queue": queue, "emulator": emulator}
        answers, seconds = drainers.round([setup] * consumers)
        delivered = sum(int(a["delivered"]) for a in answers)
        dups["pgmq"] += _checked(emulator, n, delivered, f"{consumers} pgmq consumer(s)")
        return n / seconds

    return one_round


def rows(
    figures: dict[int, dict[str, list[float]]],
    duplicates: dict[int, dict[str, int]],
    pgmq_missing: bool,
    per_round: int,
) -> list[Row]:
    """The drain rows; a figure that was not measured is None, with `missing` and a note saying why."""
    missing = NOT_INSTALLED if pgmq_missing else ""
    peer_note = f"pgmq is not installed, so it was not measured: {pg_baselines.BENCH_EXTRA}"
    result: list[Row] = []
    for agents in AGENTS:
        side = figures.get(agents, {})
        ours = median(side["ours"]) if side.get("ours") else None
        peer = median(side["pgmq"]) if side.get("pgmq") else None
        dups = duplicates.get(agents, {})
        note = (
            f"{agents} process(es) per side, {per_round} events per round; duplicates: "
            f"ours {dups.get('ours', 0)}, pgmq {'-' if pgmq_missing else dups.get('pgmq', 0)}"
        )
        result.append(
            Row(
                f"fleet.drain.{agents}",
                f"PostgreSQL fleet drain, {agents} agent process{'es' if agents > 1 else ''}",
                ours,
                "events/s",
                f"pgmq read(1000)+delete, {agents} consumer{'s' if agents > 1 else ''}",
                None if pgmq_missing else peer,
                note=f"{peer_note}; {note}" if pgmq_missing else note,
                rounds={"ours": side.get("ours", []), "baseline": side.get("pgmq", [])},
                extra={"agents": agents, "duplicates": dups.get("ours"), "pgmq_duplicates": dups.get("pgmq")},
                missing=missing,
            )
        )
    one = result[0].ours
    many = result[-1].ours
    peer_one, peer_many = result[0].baseline, result[-1].baseline
    peer_scaling = "-" if not peer_one or peer_many is None else f"{peer_many / peer_one:.2f}x"
    result.append(
        Row(
            "fleet.drain.scaling",
            f"  fleet drain, {AGENTS[-1]} agents vs 1",
            many,
            "events/s",
            "the same with 1 agent",
            one,
            note=f"pgmq {AGENTS[-1]} consumers vs 1: {peer_scaling}; the machine's cores bound it "
            "(the drainers, PostgreSQL and the emulator share them)",
        )
    )
    total = [sum(d.get(side, 0) for d in duplicates.values()) for side in ("ours", "pgmq")]
    result.append(
        Row(
            "fleet.duplicates",
            "  fleet drain, duplicates at the emulator",
            float(total[0]) if duplicates else None,
            "events",
            "pgmq's, same rounds",
            None if pgmq_missing or not duplicates else float(total[1]),
            note=peer_note if pgmq_missing else "events received more than once, over every fleet round",
            missing=missing,
        )
    )
    return result
