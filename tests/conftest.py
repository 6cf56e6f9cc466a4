"""Shared fixtures: real SQLite files in tmp_path, a real Dodo emulator on 127.0.0.1.

- `store`: a Store at tmp_path/outbox.db; `outbox`: an Outbox at tmp_path/o.db (closed afterwards);
- `fake`: an emulator without rate limits accepting the test module's `KEY` (default tests.builders.KEY);
- `worker`: a Worker on `store` delivering to `fake` with tests.builders.make_settings (closed afterwards).
The builders behind them (events, settings, workers) are in tests/builders.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from hypothesis import settings

from agent.bench.pgcluster import REQUIRE_ENV, URL_ENV, Cluster, Unavailable
from agent.delivery.worker import Worker
from agent.emulator import EmulatorServer
from agent.outbox import Outbox
from agent.store import Store
from tests import builders, ops_helpers

if TYPE_CHECKING:  # imported as a plugin below; importing it here first would skip its assert rewriting
    from tests.emulator_fixture import FakeDodoFactory

pytest_plugins = ["tests.emulator_fixture"] if importlib.util.find_spec("tests.emulator_fixture") else []

# CI is a landing gate: the same examples on every run (set before the test modules build their
# settings, which inherit it). Local runs keep drawing new examples, which is how the properties
# find bugs; `hypothesis` prints the @reproduce_failure blob of anything it finds.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Undo what a test's CLI command did to logging (`logs.configure` is process-wide).

    A command run in-process (CliRunner) leaves e.g. a warning-level filter behind, and a later test
    in the same worker that captures an info line (`delivery_resumed`) then sees nothing: such a test
    passed alone and failed after whichever test xdist happened to run before it.
    """
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this test process: DODO_OUTBOX_TEST_POSTGRES_URL, or a throwaway
    cluster (one per xdist worker). Skips where there is none, fails instead under REQUIRE_ENV."""
    given = os.environ.get(URL_ENV)
    if given:
        yield given
        return
    cluster = _throwaway_cluster()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this test alone (`.url`, `.restart("immediate")`, `.crash()`, `.start()`),
    for a test that crashes or restarts it: never the session's `postgres_url`, which the other tests
    of the same worker share. Skips (or fails under REQUIRE_ENV) where PostgreSQL is missing."""
    cluster = _throwaway_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _throwaway_cluster() -> Cluster:
    """A new cluster (the caller stops it), or skip / fail the test saying why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'dodo-outbox[postgres]')")
    try:
        return Cluster()
    except Unavailable as exc:
        _unavailable(str(exc))
        raise  # not reached: _unavailable skips or fails the test


def _unavailable(reason: str) -> Any:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{REQUIRE_ENV} is set but PostgreSQL tests cannot run: {reason}")
    pytest.skip(f"no PostgreSQL for the tests: {reason} (or set {URL_ENV})")


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name on the test server, dropped (with everything in it) after the test."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:16]
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "outbox.db") as s:
        yield s


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "o.db") as box:
        yield box


@pytest.fixture
def fake(request: pytest.FixtureRequest, fake_dodo_factory: FakeDodoFactory) -> EmulatorServer:
    return fake_dodo_factory(keys={getattr(request.module, "KEY", builders.KEY)}, rate_limit=False)


@pytest.fixture
def worker(store: Store, fake: EmulatorServer) -> Iterator[Worker]:
    made = builders.make_worker(store, builders.make_settings(fake.url))
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _ops_now(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tests.ops_helpers.NOW` is the wall clock at the start of each test, not at import.

    The operations tests build rows around NOW and then run commands that read the real clock
    (`status --window 5m`, `dlq replay --restamp`): with NOW fixed at import, they failed once the
    suite had been running longer than their margin (an 8-minute run on a busy machine).
    """
    now = time.time()
    if getattr(request.module, "NOW", None) is ops_helpers.NOW:  # the module imported it by name
        monkeypatch.setattr(request.module, "NOW", now)
    monkeypatch.setattr(ops_helpers, "NOW", now)
