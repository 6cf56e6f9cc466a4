"""The fleet rows of `dodo-outbox bench` (the postgres group): the drainer processes, the window
arithmetic, and rows that say why when a figure is missing. No timing asserts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from agent.bench import fleet, fleet_budget, runner
from agent.bench.common import API_KEY, NOT_INSTALLED, Context
from agent.bench.drain import fill
from agent.bench.emulator_proc import emulator_admin, running_emulator
from agent.bench.fleet_child import Drainers
from agent.store import StoreOptions, open_store
from tests.test_bench_robust import PG_ROWS

pytestmark = pytest.mark.timeout(240)

FLEET_ROWS = [name for name in PG_ROWS if name.startswith("fleet.")]


def test_the_worst_window_counts_the_arrivals_of_the_busiest_stretch() -> None:
    arrivals = [0.0, 0.1, 0.2, 5.0, 5.5, 5.9, 6.0, 20.0]
    # Windows are [t, t + length): 5.0, 5.5 and 5.9 in one second; 6.0 only in a longer window.
    assert fleet_budget.worst_window(arrivals, 1.0) == 3
    assert fleet_budget.worst_window(arrivals, 1.01) == 4
    assert fleet_budget.worst_window(arrivals, 0.3) == 3  # 0.0, 0.1, 0.2
    assert fleet_budget.worst_window(arrivals, 60.0) == len(arrivals)
    assert fleet_budget.worst_window([], 60.0) == 0


def test_the_worst_excess_is_over_zero_only_when_a_window_broke_the_budget() -> None:
    # 60/min = 1/s, burst 2: two at once then one a second keeps to it, exactly.
    kept = [0.0, 0.0, 1.0, 2.0, 3.0]
    assert fleet_budget.worst_excess(kept, 60.0, 2) <= 0
    # Three agents each pacing alone: three at once is one more than the burst.
    assert fleet_budget.worst_excess([0.0, 0.0, 0.0, 1.0], 60.0, 2) == pytest.approx(1.0)


def test_unmeasured_fleet_rows_are_null_with_the_reason(tmp_path: Path) -> None:
    rows = fleet.rows({}, {}, pgmq_missing=True, per_round=0) + fleet_budget.rows(True, None, None, None)
    assert [row.name for row in rows] == FLEET_ROWS
    document = json.loads(
        json.dumps(runner.results_document(rows, True, 1.0, ["postgres"], {}, 1.0, tmp_path))
    )
    for row in document["results"]:
        assert row["ours"] is None and row["passed"] is None and row["ratio"] is None, row
        assert row["target_text"] == "report"
    by_name = {row["name"]: row for row in document["results"]}
    for name in ("fleet.drain.1", "fleet.drain.2", "fleet.drain.4", "fleet.duplicates"):
        assert by_name[name]["missing"] == NOT_INSTALLED
        assert "pip install 'dodo-outbox[bench]'" in by_name[name]["note"]
    # --quick says that its window is scaled, and to what.
    assert "window scaled to 12 s" in by_name["fleet.budget.window"]["note"]


def test_the_full_run_holds_the_window_at_the_budgets_minute() -> None:
    assert fleet_budget.settings(False) == (120.0, 60.0)
    per_minute, window = fleet_budget.settings(True)
    # The quick window allows as many requests as a minute of the full run.
    assert per_minute / 60 * window == pytest.approx(120.0)
    assert "scaled" not in fleet_budget.rows(False, [0.0, 1.0], 0, 1.0)[0].note


def test_two_agent_processes_drain_one_outbox_together_and_nothing_is_lost_or_repeated(
    postgres_url: str, pg_schema: str
) -> None:
    n = 3000
    with open_store(postgres_url, StoreOptions(schema=pg_schema)) as store:
        fill(store, n, "fleet-test")
    drainers = Drainers(2)
    try:
        with running_emulator() as emulator:
            setup = {"kind": "agent", "url": postgres_url, "schema": pg_schema, "emulator": emulator}
            answers, seconds = drainers.round([setup, setup])
            stats = emulator_admin(emulator, "GET", "stats")
    finally:
        drainers.close()
    assert sum(a["delivered"] for a in answers) == n and seconds > 0
    assert stats["events_stored"] == n and stats["duplicates_ignored"] == 0
    with open_store(postgres_url, StoreOptions(schema=pg_schema)) as store:
        assert store.counts()["delivered"] == n


def test_a_drainer_that_fails_is_named_at_once_not_waited_for() -> None:
    drainers = Drainers(1, timeout=60)
    started = time.monotonic()
    try:
        setup = {"kind": "agent", "url": "postgresql://u@127.0.0.1:1/db?connect_timeout=2", "schema": "s"}
        with pytest.raises(RuntimeError, match=r"a fleet drainer failed: .*127\.0\.0\.1"):
            drainers.round([{**setup, "emulator": "http://127.0.0.1:1"}])
    finally:
        drainers.close()
    assert time.monotonic() - started < 50  # answered, not the parent's timeout


def test_the_benchmark_emulator_plays_an_accounts_rate_limit_when_asked() -> None:
    body: dict[str, list[object]] = {"events": []}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with running_emulator(rate_limit=(1.0, 60.0)) as emulator:
        statuses = [
            httpx.post(f"{emulator}/events/ingest", json=body, headers=headers).status_code for _ in range(3)
        ]
        log = emulator_admin(emulator, "GET", "log")["items"]
    assert 429 in statuses
    assert [entry["outcome"] for entry in log] == [str(s) for s in statuses]
    assert all(isinstance(entry["at"], float) for entry in log)


def test_a_fleet_run_without_pgmq_measures_ours_and_marks_pgmq(postgres_url: str, tmp_path: Path) -> None:
    ctx = Context(tmp_path, quick=True, scale=0.05, progress=lambda text: None)
    rows = {row.name: row for row in fleet.run(ctx, postgres_url, ["pgmq"])}
    assert list(rows) == FLEET_ROWS
    for agents in (1, 2, 4):
        row = rows[f"fleet.drain.{agents}"]
        assert row.ours is not None and row.ours > 0 and row.baseline is None
        assert row.missing == NOT_INSTALLED and row.extra["duplicates"] == 0
    assert rows["fleet.duplicates"].ours == 0.0 and rows["fleet.duplicates"].baseline is None
    window = rows["fleet.budget.window"]
    assert window.ours is not None and window.baseline == pytest.approx(125.0)
    assert rows["fleet.budget.429"].ours is not None and not rows["fleet.budget.429"].missing
