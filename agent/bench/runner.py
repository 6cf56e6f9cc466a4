"""Run the benchmarks and present them: a rich table (path, ours, baseline, ratio, target, pass/miss)
and the raw results as JSON (`results_document`).

Groups run in a fixed order, each in the same process tree, on files under one temporary directory
that is removed afterwards. Progress goes to stderr, one line per benchmark as it starts.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent import __version__
from agent.bench import drain, enqueue, http, latency, postgres, scale
from agent.bench.common import Context, Row

GROUPS: dict[str, Callable[[Context], list[Row]]] = {
    "enqueue": enqueue.run,
    "http": http.run,
    "drain": drain.run,
    "latency": latency.run,
    "scale": scale.run,
    "postgres": postgres.run,
}
"""Every benchmark group, in the order they run. `--only` takes these names."""


def run_benchmarks(
    *,
    quick: bool = False,
    only: Sequence[str] = (),
    directory: Path | None = None,
    scale_factor: float = 1.0,
    progress: Callable[[str], None] | None = None,
    postgres_url: str | None = None,
) -> dict[str, Any]:
    """Run the chosen groups (all when `only` is empty) and return the results document.

    `directory` is where the temporary outbox directory is made (default: the current directory, so
    the figures are those of the disk the user runs from). `postgres_url`: the server of the postgres
    group (None: a throwaway cluster when PostgreSQL is installed). Raises ValueError for an unknown
    group.
    """
    unknown = [name for name in only if name not in GROUPS]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    chosen = [name for name in GROUPS if not only or name in only]
    base = Path(directory) if directory is not None else Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dodo-outbox-bench-", dir=base))
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    context = Context(workdir, quick=quick, scale=scale_factor, progress=say, postgres_url=postgres_url)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    started = time.monotonic()
    failures: dict[str, str] = {}
    try:
        for name in chosen:
            say(f"{name}:")
            group_started = time.monotonic()
            try:
                rows.extend(GROUPS[name](context))
            except Exception as exc:  # one broken group is reported; the others still run
                failures[name] = f"{type(exc).__name__}: {exc}"
                say(f"{name}: failed: {failures[name]}")
            timings[name] = round(time.monotonic() - group_started, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    document = results_document(rows, quick, scale_factor, chosen, timings, time.monotonic() - started, base)
    document["failures"] = failures
    return document


def results_document(
    rows: Sequence[Row],
    quick: bool,
    scale_factor: float,
    groups: Sequence[str],
    timings: dict[str, float],
    seconds: float,
    directory: Path,
) -> dict[str, Any]:
    """The raw results: machine, settings, and every row with its ratio and verdict."""
    return {
        "dodo_outbox": __version__,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "scale": scale_factor,
        "groups": list(groups),
        "seconds": round(seconds, 1),
        "group_seconds": timings,
        "machine": machine(directory),
        "results": [row.as_dict() for row in rows],
    }


def machine(directory: Path) -> dict[str, Any]:
    """What the figures were measured on: CPUs, CPU model, the disk under `directory`, Python."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "disk": _disk(directory),
        "fsync_ms": _fsync_ms(directory),
        "python": platform.python_version(),
        "sqlite": _sqlite_version(),
        "platform": platform.platform(),
    }


def _fsync_ms(directory: Path, writes: int = 200) -> float | None:
    """Median time of a 4 KiB append plus fdatasync in `directory`, in ms: the price of a commit.

    The ratios of the single-event paths depend on it: the cheaper a commit, the more the Python
    around it shows (and the less group commit has to save).
    """
    path = directory / f".dodo-outbox-bench-fsync-{os.getpid()}"
    times: list[float] = []
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"\0" * 4096
            for _ in range(writes):
                started = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                times.append(time.perf_counter() - started)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    except (OSError, AttributeError):  # no fdatasync (macOS) or an unwritable directory
        return None
    times.sort()
    return round(times[len(times) // 2] * 1000, 3)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def _disk(directory: Path) -> str:
    """The block device under `directory` and whether the kernel calls it rotational (Linux only)."""
    try:
        device = os.stat(directory).st_dev
        major, minor = os.major(device), os.minor(device)
        block = Path(f"/sys/dev/block/{major}:{minor}")
        name = block.resolve().name
        parent = block.resolve().parent
        queue = block / "queue" if (block / "queue").exists() else parent / "queue"
        rotational = (queue / "rotational").read_text().strip()
        kind = "rotational" if rotational == "1" else "non-rotational"
        virtual = ", a virtio disk of a VM" if name.startswith("vd") else ""
        return f"{name} ({kind} per the kernel{virtual})"
    except (OSError, ValueError):
        return "unknown"


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" or unit == "MB":
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def render_table(document: dict[str, Any], console: Console) -> None:
    """Print the results as a table, then the machine it ran on and each row's note."""
    title = "dodo-outbox bench" + (" --quick" if document["quick"] else "")
    table = Table(title=title, title_justify="left")
    table.add_column("path")
    table.add_column("ours", justify="right")
    table.add_column("baseline")
    table.add_column("baseline figure", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    table.add_column("")
    verdicts = {True: "[green]pass[/green]", False: "[red]miss[/red]", None: "[dim]report[/dim]"}
    for row in document["results"]:
        verdict = f"[yellow]{escape(row['missing'])}[/yellow]" if row["missing"] else verdicts[row["passed"]]
        table.add_row(
            row["path"],
            _figure(row["ours"], row["unit"]),
            row["baseline_name"] or "-",
            _figure(row["baseline"], row["unit"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
            row["target_text"],
            verdict,
        )
    console.print(table)
    m = document["machine"]
    console.print(
        f"[dim]{m['nproc']} CPUs ({m['cpu']}), disk {m['disk']}, fsync {m['fsync_ms']} ms, "
        f"Python {m['python']}, SQLite {m['sqlite']}; took {document['seconds']:.0f} s[/dim]"
    )
    for row in document["results"]:
        if row["note"]:
            console.print(f"[dim]{row['name']}: {escape(row['note'])}[/dim]")
    for group, error in document.get("failures", {}).items():
        console.print(f"[red]{group}: the benchmark failed, its rows are missing: {escape(error)}[/red]")
