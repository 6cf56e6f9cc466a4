"""The fleet under one rate budget: 3 agent processes drain a backlog with a small `requests_per_minute`
and `burst`, and the emulator's request log says whether together they kept to it.

The emulator (its own process) plays an account a little above the budget (one request more at once,
one more per second, 60 more per minute), so a fleet that keeps to its budget gets no
429; three agents that each paced themselves to it would send three times as much. From the arrival
times (`at`, the emulator's clock) of every request, 429s included:

- the worst window of the budget's length (60 s) against what the budget allows in it
  (`burst + rate x window`). `--quick` runs the budget at 5x the rate and scales the window down with
  it (12 s), so the window allows as many requests as a minute of the full run;
- the worst excess over any window (the most requests beyond `burst + rate x its length`; <= 0: every
  window kept to the budget);
- the 429s.
"""

from __future__ import annotations

from agent.bench import pg_baselines
from agent.bench.common import Context, Row
from agent.bench.drain import fill
from agent.bench.emulator_proc import emulator_admin, running_emulator
from agent.bench.fleet_child import Drainers
from agent.store import open_store
from agent.store.records import StoreOptions

AGENTS = 3
BURST = 5
PER_MINUTE = 120.0
QUICK_PER_MINUTE = 600.0
WINDOW = 60.0
EVENTS_PER_REQUEST = 10


def settings(quick: bool) -> tuple[float, float]:
    """(requests per minute, window seconds) of a run (--quick or not)."""
    per_minute = QUICK_PER_MINUTE if quick else PER_MINUTE
    return per_minute, WINDOW * PER_MINUTE / per_minute


def run(ctx: Context, drainers: Drainers, url: str) -> list[Row]:
    per_minute, _ = settings(ctx.quick)
    # About 20 s of requests at the budget's rate in a full run, 2.5 s in --quick.
    requests = ctx.size(BURST + int(PER_MINUTE / 3), BURST + int(QUICK_PER_MINUTE / 24), minimum=BURST * 2)
    n = requests * EVENTS_PER_REQUEST
    ctx.progress(
        f"postgres: fleet budget, {AGENTS} agents, {per_minute:g}/min burst {BURST}, {requests} requests"
    )
    account = _account(per_minute)
    schema = pg_baselines.new_name("dodo_bench_budget")
    try:
        with open_store(url, StoreOptions(schema=schema)) as store:
            fill(store, n, "fb")
        setup = {
            "kind": "agent",
            "url": url,
            "schema": schema,
            "requests_per_minute": per_minute,
            "burst": BURST,
            "batch_max_events": EVENTS_PER_REQUEST,
            "until_empty": True,
        }
        with running_emulator(rate_limit=account) as emulator:
            answers, seconds = drainers.round([{**setup, "emulator": emulator}] * AGENTS)
            log = emulator_admin(emulator, "GET", "log")["items"]
            stored = emulator_admin(emulator, "GET", "stats")["events_stored"]
    finally:
        pg_baselines.drop_schemas(url, [schema])
    delivered = sum(int(a["delivered"]) for a in answers)
    if stored != n:
        raise RuntimeError(
            f"the budget fleet delivered {delivered} of {n} events (the emulator stored {stored})"
        )
    arrivals = [float(entry["at"]) for entry in log]
    refused = sum(1 for entry in log if entry["outcome"] == "429")
    return rows(ctx.quick, arrivals, refused, seconds)


def _account(per_minute: float) -> tuple[float, float]:
    """The emulator's limit: (requests at once, refilled per second), requests per minute."""
    return max(BURST + 1.0, per_minute / 60.0 + 1.0), per_minute + 60.0


def worst_window(arrivals: list[float], seconds: float) -> int:
    """The most arrivals in any window [t, t + seconds)."""
    times = sorted(arrivals)
    worst, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= seconds:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


def worst_excess(arrivals: list[float], per_minute: float, burst: int) -> float:
    """The most requests any window [a_i, a_j] held beyond what the budget allows in it
    (burst + rate x its length); <= 0 when every window kept to the budget."""
    rate = per_minute / 60.0
    times = sorted(arrivals)
    worst = float("-inf")
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - (burst + rate * (times[j] - start)))
    return worst


def rows(quick: bool, arrivals: list[float] | None, refused: int | None, seconds: float | None) -> list[Row]:
    """The budget rows; with `arrivals` None (not measured) every figure is None."""
    per_minute, window = settings(quick)
    at_once, account_minute = _account(per_minute)
    allowed = BURST + per_minute / 60.0 * window
    budget = f"{AGENTS} agents, {per_minute:g}/min burst {BURST}"
    scaled = ""
    if quick:
        scaled = f" (--quick: the budget at {per_minute:g}/min, the window scaled to {window:g} s)"
    span = "" if not arrivals or seconds is None else f"; {len(arrivals)} requests over {seconds:.1f} s"
    return [
        Row(
            "fleet.budget.window",
            f"fleet under one budget: worst {window:g} s window",
            None if arrivals is None else float(worst_window(arrivals, window)),
            "requests",
            f"the budget: burst + rate x {window:g} s",
            allowed,
            note=f"{budget}, from the emulator's request log{scaled}{span}",
        ),
        Row(
            "fleet.budget.excess",
            "  same, worst excess over any window",
            None if not arrivals else worst_excess(arrivals, per_minute, BURST),
            "requests",
            note="requests beyond burst + rate x the window's length, over every window; <= 0 kept to it "
            "(a request may arrive a little before one that took its slot earlier)",
        ),
        Row(
            "fleet.budget.429",
            "  same, 429s from the account",
            None if refused is None else float(refused),
            "requests",
            note=f"the emulator plays an account of {at_once:g} at once and per second, "
            f"{account_minute:g}/min",
        ),
    ]
