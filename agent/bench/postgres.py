"""The PostgreSQL group of `dodo-outbox bench`: producer cost (`pg_producer`), drain (`pg_drain`), and
a fleet of agent processes draining one outbox, with and without a shared budget (`fleet`).

The server is `--postgres URL` (`Context.postgres_url`): the run creates its own schemas there (and
pgmq's, when the server has none) and drops them afterwards. Without a URL, a throwaway cluster is
started (`pgcluster.Cluster`: initdb + pg_ctl on a free port, fsync off) and removed. When neither is
possible (no psycopg, no initdb) every row says why, instead of pass/miss; a peer that is not
installed (pgmq, procrastinate: the `bench` extra) leaves its rows "not installed".
"""

from __future__ import annotations

from agent.bench import fleet, fleet_budget, pg_baselines, pg_drain, pg_producer
from agent.bench.common import NO_POSTGRES, NOT_INSTALLED, Context, Row
from agent.bench.emulator_proc import running_emulator
from agent.bench.pgcluster import Cluster, Unavailable
from agent.store.location import mask_url

POSTGRES_EXTRA = "pip install 'dodo-outbox[postgres]'"


def run(ctx: Context) -> list[Row]:
    try:
        import psycopg  # noqa: F401 (imported only to learn whether it is installed)
    except ImportError:
        return absent_rows(
            NOT_INSTALLED,
            f"psycopg is not installed, so PostgreSQL was not measured: {POSTGRES_EXTRA}",
            ctx.quick,
        )
    missing = pg_baselines.missing_peers()
    if missing:
        ctx.progress(f"postgres: {' and '.join(missing)} not installed; their rows are marked so")
    cluster: Cluster | None = None
    url = ctx.postgres_url
    if url is None:
        try:
            ctx.progress("postgres: starting a throwaway cluster (initdb + pg_ctl)")
            cluster = Cluster()
        except (Unavailable, OSError) as exc:  # OSError: initdb or setpriv could not be run at all
            return absent_rows(
                NO_POSTGRES,
                f"no PostgreSQL to measure: {exc}. Install PostgreSQL or pass --postgres URL",
                ctx.quick,
            )
        url = cluster.url
    else:
        _check_reachable(url)
    try:
        version = _server_version(url)
        rows = pg_producer.run(ctx, url, missing)
        ctx.progress("postgres: starting the emulator")
        with running_emulator() as emulator_url:
            rows += pg_drain.run(ctx, url, emulator_url, missing)
        rows += fleet.run(ctx, url, missing)
    finally:
        if cluster is not None:
            cluster.stop()
    server = "a throwaway cluster, fsync off" if cluster is not None else "the server of --postgres"
    rows[0].note = f"{rows[0].note}; on {server} (PostgreSQL {version})"
    return rows


def absent_rows(missing: str, note: str, quick: bool = False) -> list[Row]:
    """Every row of the group, unmeasured: `missing` stands in the verdict column, `note` says why."""
    rows = pg_producer.rows({"alone": []}, [])
    rows += pg_drain.rows({"ours": []}, pgmq_missing=True)
    rows += fleet.rows({}, {}, pgmq_missing=True, per_round=0)
    rows += fleet_budget.rows(quick, None, None, None)
    for row in rows:
        row.ours = row.baseline = None
        row.rounds = {}
        row.missing = missing
        row.note = note
    return rows


def _server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def _check_reachable(url: str) -> None:
    """Raise RuntimeError naming the server (password masked) when `url` does not connect."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        raise RuntimeError(f"cannot connect to --postgres {mask_url(url)}: {detail}") from None
