"""The drop directory: producers that cannot speak HTTP write files, the agent stores their events.

Layout under `[intake.dropdir] path` (created group-shared, mode 2770, where permissions allow):

    tmp/        producers write here ...
    new/        ... and rename into here when the file is complete (atomic on one filesystem)
    done/       files whose every event is committed to the outbox (removed after done_retention_hours)
    rejected/   files with problems, each next to `<name>.errors.jsonl`: one JSON line per problem,
                `{"line", "event_id", "code", "field", "message"}`. Good events of such a file ARE stored.

Formats (by suffix): `.json` (an event, an array of events, or a Dodo body `{"events": [...]}`),
`.ndjson` / `.jsonl` (one event per line). Arrays and NDJSON are streamed: any size works.

Crash safety: a file moves to done/ only after all its events are committed. If the agent dies
mid-file, the file is still in new/ and is read again; enqueue is idempotent on event_id, so the events
committed the first time count as duplicates, not twice. Back-pressure: when the outbox is full
(OutboxFullError) the file stays in new/, untouched, and is retried on a later scan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import watchfiles

from agent.config import DropdirSettings
from agent.errors import EventConflictError, OutboxError, OutboxFullError
from agent.events import Event
from agent.intake.body import safe_check
from agent.intake.records import ParseProblem, Record, read_records
from agent.intake.spool import ErrorsFile, field_of, open_regular
from agent.logs import get_logger
from agent.ops import metrics
from agent.outbox import Outbox

log = get_logger(__name__)

SUFFIXES = (".json", ".ndjson", ".jsonl")
CHUNK_EVENTS = 1000
"""Events per outbox call: one commit each, and bounded memory for files of any size."""
DIR_MODE = 0o2770
"""Group-shared: producers in the agent's group write; setgid keeps new files in that group."""


@dataclass
class FileResult:
    """What happened to one file. `outcome`: done, rejected, deferred (outbox full: left in new/),
    failed (outbox or disk error: left in new/), interrupted (stop was set: left in new/), or gone
    (another process took it)."""

    name: str
    outcome: str = "done"
    records: int = 0
    new: int = 0
    duplicates: int = 0
    problems: int = 0
    message: str = ""


@dataclass
class ScanReport:
    """One pass over new/, oldest file first. `stopped` says why it ended early ('' if it did not)."""

    files: list[FileResult] = field(default_factory=list)
    stopped: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def new_events(self) -> int:
        return sum(f.new for f in self.files)


class DropDir:
    """The spool directory of `settings.path`. Thread-safe: scans never overlap.

    Raises OSError from the constructor when the directories cannot be created.
    """

    def __init__(
        self, outbox: Outbox, settings: DropdirSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.clock = clock
        self.root = Path(settings.path)
        self.tmp, self.new = self.root / "tmp", self.root / "new"
        self.done, self.rejected = self.root / "done", self.root / "rejected"
        for directory in (self.root, self.tmp, self.new, self.done, self.rejected):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):  # e.g. a directory owned by someone else
                    os.chmod(directory, DIR_MODE)
        self._lock = threading.Lock()

    def pending(self) -> list[Path]:
        """Files waiting in new/, oldest first (hidden files are ignored: producers' work in progress)."""
        found: list[tuple[float, str, Path]] = []
        with os.scandir(self.new) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, Path(entry.path)))
        return [path for _, _, path in sorted(found)]

    def scan(self, stop: threading.Event | None = None) -> ScanReport:
        """Process every file in new/, oldest first. Stops early when the outbox is full or failing, or
        `stop` is set (checked between chunks); the remaining files wait in new/ for the next scan.
        Never raises for a bad file."""
        report = ScanReport()
        with self._lock:
            for path in self.pending():
                result = self.process(path, stop)
                report.files.append(result)
                if result.outcome in ("deferred", "failed", "interrupted"):
                    report.stopped = result.message
                    break
        return report

    def process(self, path: Path, stop: threading.Event | None = None) -> FileResult:
        """Store one file's events, then move it to done/ or rejected/ (see the module docstring)."""
        result = FileResult(path.name)
        errors = ErrorsFile(self.rejected / f".{path.name}.errors.jsonl.partial")
        try:
            if path.suffix.lower() not in SUFFIXES:
                errors.add(
                    None,
                    None,
                    "unsupported_suffix",
                    None,
                    f"{path.suffix or 'no suffix'} is not read; name files .json, .ndjson or .jsonl",
                )
            else:
                with open_regular(path) as stream:
                    self._ingest(stream, result, errors, stop, ndjson=path.suffix.lower() != ".json")
        except FileNotFoundError:
            errors.finish(None)
            result.outcome = "gone"
            return result
        except _Interrupted:
            errors.finish(None)
            result.outcome, result.message = "interrupted", "stopping; the file is read again next time"
            return result
        except OSError as exc:
            if exc.errno == errno.ELOOP or isinstance(exc, IsADirectoryError):
                errors.add(None, None, "not_a_file", None, "symlinks and special files are not read")
            else:
                errors.finish(None)
                return self._failed(result, f"cannot read {path.name}: {exc}")
        except OutboxFullError as exc:
            errors.finish(None)
            result.outcome, result.message = "deferred", str(exc)
            log.warning("intake_refused_full", source="dropdir", file=path.name, reason=str(exc))
            metrics.record_refused("dropdir", metrics.refusal_reason(exc))
            return result
        except OutboxError as exc:
            errors.finish(None)
            return self._failed(result, str(exc))
        result.problems = errors.count
        result.outcome = "rejected" if errors.count else "done"
        target = self._free_name(self.rejected if errors.count else self.done, path.name)
        try:
            errors.finish(target.with_name(target.name + ".errors.jsonl"))
            os.replace(path, target)
        except FileNotFoundError:
            result.outcome = "gone"
            return result
        if errors.count:
            log.warning(
                "file_rejected",
                file=path.name,
                problems=errors.count,
                records=result.records,
                new=result.new,
                errors_file=f"{target.name}.errors.jsonl",
            )
        else:
            now = self.clock()
            with contextlib.suppress(OSError):  # retention counts from ingestion, not from writing
                os.utime(target, (now, now))
            log.info(
                "file_ingested",
                file=path.name,
                records=result.records,
                new=result.new,
                duplicates=result.duplicates,
            )
        return result

    def _failed(self, result: FileResult, message: str) -> FileResult:
        result.outcome, result.message = "failed", message
        log.error("file_failed", file=result.name, error=message)
        return result

    @staticmethod
    def _free_name(directory: Path, name: str) -> Path:
        """`directory/name`, or `stem.N.suffix` when a file of that name is already there.

        Only the data file counts: an errors file without its data file is left by a crash between the
        two renames, and is replaced by the same file's new errors file."""
        target = directory / name
        stem, suffix = os.path.splitext(name)
        n = 0
        while os.path.lexists(target):
            n += 1
            target = directory / f"{stem}.{n}{suffix}"
        return target

    def _records(self, stream: IO[bytes], errors: ErrorsFile, ndjson: bool) -> Iterator[Record]:
        """The file's records; unreadable parts go to the errors file.

        `.ndjson` / `.jsonl` files are read as NDJSON, as documented, not sniffed: sniffing took an
        NDJSON file whose first line was broken for one malformed document and refused every line."""
        line = 1
        try:
            for item in read_records(stream, ndjson=ndjson):
                if isinstance(item, ParseProblem):
                    errors.add(item.line, None, "invalid_json", None, item.message)
                    metrics.record_rejected("dropdir", "malformed")
                else:
                    line = item.line
                    yield item
        except (RecursionError, ValueError) as exc:  # e.g. nesting too deep for the JSON parser
            errors.add(line, None, "unreadable", None, f"cannot read past this point: {type(exc).__name__}")

    def _ingest(
        self,
        stream: IO[bytes],
        result: FileResult,
        errors: ErrorsFile,
        stop: threading.Event | None,
        ndjson: bool = False,
    ) -> None:
        # Repeats inside a chunk are settled by the outbox call (duplicate, retimed duplicate, or both
        # events of a clash refused), each refusal mapped back to its line by _store.
        chunk: list[tuple[int, Event]] = []
        now = self.clock()
        # A chunk larger than max_events would never fit, even in an empty outbox.
        size = min(CHUNK_EVENTS, self.outbox.max_events or CHUNK_EVENTS)
        for record in self._records(stream, errors, ndjson):
            result.records += 1
            event, problems = safe_check(record.value, now, "event", self.outbox.max_event_age)
            event_id = record.value.get("event_id") if isinstance(record.value, dict) else None
            shown_id = event_id if isinstance(event_id, str) else None
            for problem in problems:
                errors.add(record.line, shown_id, "invalid_event", field_of(problem.path), problem.message)
            if event is None:
                metrics.record_rejected("dropdir", "invalid")
                continue
            chunk.append((record.line, event))
            if len(chunk) >= size:
                if stop is not None and stop.is_set():
                    raise _Interrupted  # what is committed stays; the rest is read again next time
                self._store(chunk, result, errors)
                chunk, now = [], self.clock()
        self._store(chunk, result, errors)

    def _store(self, chunk: list[tuple[int, Event]], result: FileResult, errors: ErrorsFile) -> None:
        """Commit a chunk; an event_id stored with other content is reported and the rest stored."""
        while chunk:
            try:
                stored = self.outbox.enqueue_validated([e for _, e in chunk], source="dropdir")
            except EventConflictError as exc:
                conflicts = exc.located([e.event_id for _, e in chunk])
                refused = {c.index for c in conflicts}
                for conflict in conflicts:
                    line, event = chunk[conflict.index]
                    other = None if conflict.other is None else f"line {chunk[conflict.other][0]}"
                    errors.add(line, event.event_id, "event_conflict", "event_id", conflict.reason(other))
                    metrics.record_rejected("dropdir", "conflict")
                chunk = [item for i, item in enumerate(chunk) if i not in refused]
                continue
            result.new += len(stored.new)
            result.duplicates += len(stored.duplicates)
            for retimed in stored.retimed:
                earlier = None if retimed.earlier is None else f"line {chunk[retimed.earlier][0]}"
                note = retimed.note(f"line {chunk[retimed.index][0]}.timestamp", earlier)
                log.info("dropdir_retimed_duplicate", file=result.name, note=str(note))
            return

    def prune_done(self, now: float | None = None) -> int:
        """Delete done/ files ingested more than `done_retention_hours` ago. Returns how many."""
        cutoff = (self.clock() if now is None else now) - self.settings.done_retention_hours * 3600
        removed = 0
        with os.scandir(self.done) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if (
                        entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff
                    ):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def watch(self, stop: threading.Event, *, prune_interval_seconds: float = 3600.0) -> None:
        """Scan at start, on every file arriving in new/ (inotify via watchfiles, within ~0.2 s), and every
        `scan_interval_seconds` (the fallback, and the retry of deferred files); prune done/ now and then.
        Returns when `stop` is set. Never raises for a bad file or a failing scan: it logs and goes on."""
        interval = self.settings.scan_interval_seconds
        last_prune = float("-inf")
        while not stop.is_set():
            try:
                self._safe(lambda: self.scan(stop))
                for changes in watchfiles.watch(
                    self.new,
                    watch_filter=None,
                    debounce=200,
                    step=50,
                    stop_event=stop,
                    rust_timeout=max(50, int(interval * 1000)),
                    yield_on_timeout=True,
                    recursive=False,
                    raise_interrupt=False,
                ):
                    # Our own moves out of new/ show as deletions: no need to scan for those.
                    if not changes or any(change != watchfiles.Change.deleted for change, _ in changes):
                        self._safe(lambda: self.scan(stop))
                    if time.monotonic() - last_prune >= prune_interval_seconds:
                        last_prune = time.monotonic()
                        self._safe(self.prune_done)
            except Exception as exc:  # inotify unavailable, new/ removed, ...: fall back to polling
                log.warning("dropdir_watch_failed", error=repr(exc), fallback_seconds=interval)
                stop.wait(interval)

    def _safe(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # keep the watcher alive; the next scan retries
            log.error("dropdir_scan_failed", error=repr(exc), exc_info=exc)


class _Interrupted(Exception):
    """Stop was set mid-file."""
