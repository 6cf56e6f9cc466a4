"""`dodo-outbox bench` never ends in a traceback: a load round where no request succeeded, a missing peer
package and a broken benchmark group are each reported in the table and the JSON.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from agent.bench import http, loadgen, pgcluster, postgres, runner, wrk
from agent.bench.common import NO_DATA, NO_POSTGRES, NOT_INSTALLED, Context, Row
from agent.cli import cli

pytestmark = pytest.mark.timeout(240)
BENCH_ARGS = ["bench", "--quick", "--json", "--scale", "0.05", "--only", "enqueue", "--only", "drain"]


def _refused_url() -> str:
    """A loopback URL nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_load_round_against_a_refusing_server_reports_nothing_succeeded() -> None:
    report = loadgen.run_load(_refused_url(), connections=2, events=1, duration=0.3, prefix="r", warmup=0.1)
    assert report["ok"] == 0 and report["events"] == 0
    assert any("ConnectionRefusedError" in error for error in report["errors"]), report


def test_http_rounds_where_no_request_succeeds_are_rows_without_a_figure_or_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _refused_url()
    real_run_http_load = wrk.run_http_load

    def against_a_refusing_server(url: str, **kwargs: Any) -> dict[str, Any]:
        # The real load generator (wrk when installed, else the built-in child), every connection refused.
        return real_run_http_load(refused, **kwargs)

    monkeypatch.setattr(http, "run_http_load", against_a_refusing_server)
    rows = http.run(Context(tmp_path, quick=True, scale=0.05, progress=lambda text: None))

    assert [row.name for row in rows] == [
        "http.single.bare",
        "http.single.p99",
        "http.single.no_store",
        "http.single.per_request",
        "http.batch",
        "cpu.http.single",
        "cpu.http.batch",
    ]
    for row in rows:
        assert row.ours is None and row.missing == NO_DATA
        assert row.passed is None and row.ratio is None
        assert "no request succeeded in 1 round(s)" in row.note, row.note
        assert "ConnectionRefusedError" in row.note or "Connection refused" in row.note, row.note
    document = runner.results_document(rows, True, 0.05, ["http"], {}, 1.0, tmp_path)
    parsed = json.loads(json.dumps(document))  # what --json prints: null, not a crash
    assert [row["ours"] for row in parsed["results"]] == [None] * len(rows)
    assert {row["missing"] for row in parsed["results"]} == {NO_DATA}
    console = Console(width=250, record=True, color_system=None)
    runner.render_table(document, console)
    text = console.export_text()
    assert text.count(NO_DATA) >= len(rows)
    assert "pass" not in text and "miss" not in text


def test_a_missing_figure_is_neither_pass_nor_miss() -> None:
    row = Row("x", "x", None, "events/s", "base", 100.0, "ratio_min", 0.5, missing=NO_DATA)
    assert row.passed is None and row.ratio is None
    peer = Row("y", "y", 90.0, "events/s", "peer", None, "ratio_min", 0.5, missing=NOT_INSTALLED)
    assert peer.passed is None and peer.ratio is None
    assert Row("z", "z", 90.0, "events/s", "base", 100.0, "ratio_min", 0.5).passed is True


def _bench_without(modules: list[str], args: list[str]) -> dict[str, dict[str, Any]]:
    """`dodo-outbox ARGS` in a child where `modules` cannot be imported, as if not installed; its rows
    by name. It must exit 0 without a traceback."""
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    script = (
        f"import sys; {blocked}from agent.cli import main; sys.argv = ['dodo-outbox', *sys.argv[1:]]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=200, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)["results"]}


def test_without_persist_queue_the_peer_rows_say_not_installed(tmp_path: Path) -> None:
    # A plain `pip install dodo-outbox` has no persist-queue (it comes with the `bench` extra): the
    # import is blocked in the child, as if the package were absent.
    rows = _bench_without(["persistqueue"], [*BENCH_ARGS, "--dir", str(tmp_path)])
    peers = {"enqueue.single.peer", "drain.peer", "drain.peer.batched"}
    for name in peers:
        assert rows[name]["missing"] == NOT_INSTALLED, rows[name]
        assert rows[name]["baseline"] is None and rows[name]["passed"] is None
        assert "pip install 'dodo-outbox[bench]'" in rows[name]["note"]
        assert rows[name]["ours"] > 0  # our side is still measured
    for name in set(rows) - peers:
        assert not rows[name]["missing"], rows[name]


def test_a_broken_group_is_reported_the_others_still_run_and_bench_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: Context) -> list[Row]:
        raise RuntimeError("the emulator did not start")

    def fine(ctx: Context) -> list[Row]:
        return [Row("fine.row", "a fine path", 1.0, "ms")]

    monkeypatch.setitem(runner.GROUPS, "latency", broken)
    monkeypatch.setitem(runner.GROUPS, "scale", fine)
    result = CliRunner().invoke(
        cli, ["bench", "--only", "latency", "--only", "scale", "--json", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, RuntimeError)
    document = json.loads(result.stdout)
    assert document["failures"] == {"latency": "RuntimeError: the emulator did not start"}
    assert [row["name"] for row in document["results"]] == ["fine.row"]
    assert "the latency benchmark failed: RuntimeError: the emulator did not start" in result.stderr


def test_without_wrk_the_built_in_generator_measures_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrk, "wrk_path", lambda: None)
    report = wrk.run_http_load(_refused_url(), connections=2, events=1, duration=0.3, prefix="r")
    assert report["generator"] == "built-in" and report["ok"] == 0
    assert any("ConnectionRefusedError" in error for error in report["errors"]), report


@pytest.mark.skipif(wrk.wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_sends_a_fresh_event_id_in_every_event_and_each_200_is_stored(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from agent.outbox import Outbox

    with ExitStack() as stack:
        outbox = Outbox(tmp_path / "outbox.db")
        url = http._serve(stack, outbox)
        report = wrk.run_http_load(url, connections=4, events=3, duration=1, prefix="u")
        stored = sum(outbox.store.counts().values())
    assert report["generator"] == "wrk" and report["ok"] > 0, report
    assert report["statuses"] == {"200": report["ok"]}
    # A repeated id would be a duplicate (200, not stored twice): fewer rows than acknowledged events.
    # Requests still in flight when wrk stopped may be stored too.
    assert stored >= report["events"] == 3 * report["ok"]


# The postgres group: no server, no psycopg, no peers, a bad --postgres. Never a traceback.

PG_ROWS = [
    "pg.producer.alone",
    "pg.producer.ours",
    "pg.producer.pgmq",
    "pg.producer.procrastinate",
    "pg.producer.cost.pgmq",
    "pg.producer.cost.procrastinate",
    "pg.drain",
    "pg.drain.pgmq",
    "fleet.drain.1",
    "fleet.drain.2",
    "fleet.drain.4",
    "fleet.drain.scaling",
    "fleet.duplicates",
    "fleet.budget.window",
    "fleet.budget.excess",
    "fleet.budget.429",
]


def _assert_unmeasured(document: dict[str, Any], missing: str, says: str) -> None:
    rows = document["results"]
    assert [row["name"] for row in rows] == PG_ROWS
    for row in rows:
        assert row["missing"] == missing, row
        assert row["ours"] is None and row["baseline"] is None, row
        assert row["passed"] is None and row["ratio"] is None, row
        assert says in row["note"], row


def test_without_postgresql_every_postgres_row_says_why_and_bench_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_initdb() -> Any:
        raise pgcluster.Unavailable("PostgreSQL is not installed (no pg_config --bindir with initdb)")

    monkeypatch.setattr(postgres, "Cluster", no_initdb)
    result = CliRunner().invoke(cli, ["bench", "--only", "postgres", "--json", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["failures"] == {}
    _assert_unmeasured(document, NO_POSTGRES, "PostgreSQL is not installed")
    assert "pass --postgres URL" in document["results"][0]["note"]
    console = Console(width=250, record=True, color_system=None)
    runner.render_table(document, console)
    text = console.export_text()
    assert text.count(NO_POSTGRES) >= len(PG_ROWS)
    table = [line for line in text.splitlines() if "│" in line]
    assert len(table) == len(PG_ROWS)  # one line per row (the header has other borders)
    assert not any(" pass " in line or " miss " in line for line in table)


def test_without_psycopg_the_postgres_rows_say_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    rows = postgres.run(Context(tmp_path, quick=True, scale=0.05, progress=lambda text: None))
    document = runner.results_document(rows, True, 0.05, ["postgres"], {}, 1.0, tmp_path)
    _assert_unmeasured(json.loads(json.dumps(document)), NOT_INSTALLED, "pip install 'dodo-outbox[postgres]'")


def test_a_bad_postgres_option_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "--postgres", "mysql://u:secret@h/db", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a PostgreSQL URL" in result.output and "secret" not in result.output


def test_an_unreachable_postgres_is_a_failed_group_naming_it_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://bench:s3cret@127.0.0.1:1/bench?connect_timeout=2"
    result = CliRunner().invoke(
        cli, ["bench", "--only", "postgres", "--postgres", url, "--json", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["failures"]["postgres"]
    assert error.startswith("RuntimeError: cannot connect to --postgres postgresql://bench:***@127.0.0.1:1/")
    assert "s3cret" not in result.output and "s3cret" not in result.stderr


def test_without_pgmq_and_procrastinate_their_rows_say_not_installed_ours_are_measured(
    tmp_path: Path, postgres_url: str
) -> None:
    # A plain `pip install 'dodo-outbox[postgres]'` has neither (they come with the `bench` extra):
    # the imports are blocked in the child, as if the packages were absent. It runs on --postgres.
    args = ["bench", "--quick", "--json", "--scale", "0.05", "--only", "postgres", "--postgres", postgres_url]
    rows = _bench_without(["pgmq", "procrastinate"], [*args, "--dir", str(tmp_path)])
    assert list(rows) == PG_ROWS
    peers = {
        "pg.producer.pgmq",
        "pg.producer.procrastinate",
        "pg.producer.cost.pgmq",
        "pg.producer.cost.procrastinate",
        "pg.drain.pgmq",
        "fleet.drain.1",
        "fleet.drain.2",
        "fleet.drain.4",
        "fleet.duplicates",
    }
    for name in peers:
        assert rows[name]["missing"] == NOT_INSTALLED, rows[name]
        assert None in (rows[name]["ours"], rows[name]["baseline"]) and rows[name]["passed"] is None
        assert "pip install 'dodo-outbox[bench]'" in rows[name]["note"]
    for name in ("pg.producer.alone", "pg.producer.ours", "pg.drain", "fleet.drain.scaling"):
        assert not rows[name]["missing"] and rows[name]["ours"] > 0, rows[name]
    for name in ("fleet.drain.1", "fleet.drain.2", "fleet.drain.4"):
        assert rows[name]["ours"] > 0 and rows[name]["extra"]["duplicates"] == 0, rows[name]
    for name in ("fleet.budget.window", "fleet.budget.excess", "fleet.budget.429"):
        assert not rows[name]["missing"] and rows[name]["ours"] is not None, rows[name]
    # Everything the run created on the server is gone again.
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dodo\\_bench\\_%' OR nspname = 'pgmq'"
        ).fetchall()
    assert left == []
