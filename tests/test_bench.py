"""`dodo-outbox bench` completes and reports every path. No thresholds: machines are noisy.

One quick run at a twentieth of the quick sizes (`--scale 0.05`) serves every test of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from agent.bench.common import MAX_RATIO, MIN_RATIO, NO_DATA, NO_POSTGRES, Row
from agent.bench.pgcluster import REQUIRE_ENV
from agent.bench.runner import GROUPS, render_table
from agent.cli import cli
from tests.test_bench_robust import PG_ROWS

# The fixture's run counts against the first test that uses it.
pytestmark = pytest.mark.timeout(240)

EXPECTED = {
    "enqueue.single",
    "enqueue.single.minimal",
    "enqueue.single.peer",
    "enqueue.threads16",
    "enqueue.batch",
    "enqueue.batch.validating",
    "http.single.bare",
    "http.single.p99",
    "http.single.no_store",
    "http.single.per_request",
    "http.batch",
    "cpu.http.single",
    "cpu.http.batch",
    "cpu.drain",
    "drain.bare",
    "drain.peer",
    "drain.peer.batched",
    "latency.p50",
    "latency.p99",
    "scale.enqueue",
    "scale.drain",
    "memory.drain",
    *PG_ROWS,
}
POSTGRES_ROWS = set(PG_ROWS)
COUNTS = {"fleet.duplicates", "fleet.budget.excess", "fleet.budget.429"}
"""Rows whose figure may fairly be 0 (or, for the excess, below 0: every window within the budget)."""


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bench")
    # A real process, as users run it (the command configures logging process-wide).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "bench",
            "--quick",
            "--json",
            "--scale",
            "0.05",
            "--dir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench:" in done.stderr  # progress on stderr, one line per benchmark
    parsed: dict[str, Any] = json.loads(done.stdout)
    # The temporary outbox directory is removed afterwards.
    assert list(workdir.iterdir()) == []
    return parsed


def test_every_path_is_reported_with_a_figure_or_the_reason_it_has_none(document: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in document["results"]}
    assert set(rows) == EXPECTED
    assert document["failures"] == {}
    for name, row in rows.items():
        assert row["target_text"]
        assert row["passed"] in (True, False, None)
        if row["missing"] == NO_POSTGRES:
            # No PostgreSQL here (no initdb): every row of the group says so, none passes or misses.
            assert not os.environ.get(REQUIRE_ENV), f"{name}: {row}"
            assert name in POSTGRES_ROWS and row["ours"] is None and row["passed"] is None
            assert "--postgres URL" in row["note"], row
            continue
        if row["missing"] and name.startswith("pg.producer.cost."):
            # In so short a round a peer's added cost may not rise above the noise: said, not judged.
            assert row["missing"] == NO_DATA and row["baseline"] is not None and row["baseline"] <= 0, row
            assert row["passed"] is None and "noise" in row["note"]
            continue
        if row["missing"]:
            # A busy machine may leave a short load round without one successful request: that is
            # reported (no figure, no verdict, a note saying why), never a pass, a miss or a crash.
            assert row["missing"] == NO_DATA and name.startswith(("http.", "cpu.http.")), f"{name}: {row}"
            assert None in (row["ours"], row["baseline"]) and row["passed"] is None and row["ratio"] is None
            assert "no request succeeded" in row["note"]
            continue
        if name.startswith("pg.producer.cost."):
            # µs each client waits more per transaction; ours may be within noise of nothing.
            assert row["baseline"] > 0 and row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
            continue
        if name in COUNTS:
            assert isinstance(row["ours"], float) and row["passed"] is None, f"{name}: {row}"
            continue
        assert row["ours"] > 0 or name == "latency.p50", f"{name}: {row}"  # 0 ms is a fair p50
        if row["baseline_name"]:
            assert row["baseline"] > 0, f"{name}: {row}"
            assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert document["quick"] is True
    assert document["groups"] == list(GROUPS)
    machine = document["machine"]
    assert machine["nproc"] >= 1 and machine["python"] and machine["cpu"]


def test_the_table_shows_every_path_and_a_verdict(document: dict[str, Any]) -> None:
    console = Console(width=250, record=True, color_system=None)
    render_table(document, console)
    text = console.export_text()
    for row in document["results"]:
        assert row["path"].strip() in text
    assert "pass" in text or "miss" in text


def test_unknown_group_is_refused_with_the_choices(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "--only", "nope", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "enqueue" in result.output


def test_row_verdicts() -> None:
    row = Row("x", "x", 90.0, "events/s", "base", 100.0, MIN_RATIO, 0.85)
    assert row.ratio == pytest.approx(0.9) and row.passed is True
    row.target = 0.95
    assert row.passed is False
    assert Row("y", "y", 1.0, "ms").passed is None
    # "at most 1.2x the peer's": our added cost over pgmq's.
    cost = Row("z", "z", 110.0, "µs/tx", "peer", 100.0, MAX_RATIO, 1.2)
    assert cost.passed is True and cost.target_text() == "<= 1.2x"
    cost.ours = 130.0
    assert cost.passed is False
