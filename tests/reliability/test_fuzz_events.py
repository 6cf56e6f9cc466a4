"""Property tests of event validation (Hypothesis): nothing valid is refused, nothing invalid is stored,
every refusal names its field.

"Valid" is defined here from the contract (docs/dodo-ingest-contract.md) by construction, not by
calling the code under test; "invalid" is a valid event with one known defect at a known path. The
emulator's independent reading of the contract is the second opinion: what the agent accepts, Dodo
accepts (as sent: late events without their timestamp).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.emulator import contract
from agent.errors import InvalidEventError
from agent.events import check_event, validate_many
from agent.outbox import Outbox
from agent.timestamps import parse_timestamp, strip_timestamp

NOW = time.time()
FIELDS = ("event_id", "customer_id", "event_name")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any Unicode text but lone surrogates (not text: they cannot be encoded as UTF-8 or sent as JSON).
chars = st.characters(exclude_categories=["Cs"])


def _no_spaces_around(text: str) -> bool:
    return bool(text) and text.strip() == text


ids = st.text(chars, min_size=1, max_size=255).filter(_no_spaces_around)
keys = st.text(chars, min_size=1, max_size=100)
values = st.one_of(
    st.text(chars, max_size=500),
    st.integers(-(2**63), 2**64 - 1),  # i64 and u64, as Dodo's JSON parser keeps them
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
metadata = st.dictionaries(keys, values, max_size=50)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
# From 2 hours ago (late: the agent accepts it, the late-event policy applies) to 4 minutes ahead.
moments = st.floats(-7200, 240).map(lambda ago: datetime.fromtimestamp(NOW + ago, UTC))


@st.composite
def timestamps(draw: st.DrawFn) -> object:
    moment = draw(moments).astimezone(draw(offsets))
    if not draw(st.booleans()):
        moment = moment.replace(microsecond=0)
    style = draw(st.sampled_from(["offset", "z", "naive", "datetime", "space"]))
    if style == "datetime":
        return moment
    utc = moment.astimezone(UTC)
    if style == "z":
        return utc.replace(tzinfo=None).isoformat() + "Z"
    if style == "naive":  # read as UTC, as the official SDK sends naive datetimes
        return utc.replace(tzinfo=None).isoformat()
    if style == "space":
        return moment.isoformat(sep=" ")
    return moment.isoformat()


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {name: draw(ids) for name in FIELDS}
    if draw(st.booleans()):
        event["metadata"] = draw(metadata)
    elif draw(st.booleans()):
        event["metadata"] = None  # an explicit null means none
    if draw(st.booleans()):
        event["timestamp"] = draw(timestamps())
    elif draw(st.booleans()):
        event["timestamp"] = None
    return event


def expected_instant(value: object) -> float:
    moment = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@SETTINGS
@given(valid_events())
def test_nothing_valid_is_refused(raw: dict[str, Any]) -> None:
    event, problems = check_event(raw, NOW)
    assert problems == [] and event is not None
    document = orjson.loads(event.payload)
    for name in FIELDS:
        assert document[name] == raw[name]
    assert document.get("metadata") == (raw.get("metadata") or None)
    given_ts = raw.get("timestamp")
    instant = NOW if given_ts is None else expected_instant(given_ts)
    assert math.isclose(parse_timestamp(document["timestamp"]).timestamp(), instant, abs_tol=1e-6)
    assert event.stamped is (given_ts is None)
    # The canonical payload is what is sent: the timestamp is its last member.
    assert orjson.loads(strip_timestamp(event.payload)) == {
        k: v for k, v in document.items() if k != "timestamp"
    }


@SETTINGS
@given(valid_events())
def test_what_the_agent_accepts_dodo_accepts(raw: dict[str, Any]) -> None:
    event, _ = check_event(raw, NOW)
    assert event is not None
    # As the delivery engine sends it: a late event goes without its timestamp (restamp policy).
    payload = strip_timestamp(event.payload) if event.late else event.payload
    body = b'{"events":[' + payload.encode() + b"]}"
    accepted = contract.validate_events(
        contract.parse_body(body),
        now=datetime.fromtimestamp(NOW, UTC),
        window_seconds=3600,
        future_seconds=300,
    )
    assert [e.event_id for e in accepted] == [raw["event_id"]]


# -- invalid events: one defect each, at a known path -------------------------------------------------

long_ids = st.text(chars, min_size=256, max_size=400).filter(_no_spaces_around)
spaces = st.sampled_from([" ", "\t", "\n", "\u3000", "\u00a0"])
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
not_strings = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def defects(draw: st.DrawFn) -> tuple[str, dict[str, Any] | object]:
    """(the path a refusal must name, an event with exactly that defect)."""
    event = draw(valid_events())
    name = draw(st.sampled_from(FIELDS))
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "null",
                "type",
                "empty",
                "blank",
                "spaced",
                "long",
                "surrogate",
                "unknown_field",
                "meta_type",
                "meta_count",
                "meta_key_long",
                "ts_too_old",
                "meta_value_long",
                "meta_value_type",
                "meta_int_range",
                "meta_float",
                "meta_surrogate_key",
                "meta_surrogate_value",
                "ts_garbage",
                "ts_date_only",
                "ts_type",
                "ts_future",
                "not_object",
            ]
        )
    )
    meta = dict(event.get("metadata") or {})
    key = draw(keys)
    if kind == "missing":
        del event[name]
        return f"event.{name}", event
    if kind == "null":
        event[name] = None
        return f"event.{name}", event
    if kind == "type":
        event[name] = draw(not_strings)
        return f"event.{name}", event
    if kind == "empty":
        event[name] = ""
        return f"event.{name}", event
    if kind == "blank":
        event[name] = draw(spaces) * draw(st.integers(1, 3))
        return f"event.{name}", event
    if kind == "spaced":
        event[name] = draw(spaces) + event[name] if draw(st.booleans()) else event[name] + draw(spaces)
        return f"event.{name}", event
    if kind == "long":
        event[name] = draw(long_ids)
        return f"event.{name}", event
    if kind == "surrogate":
        text = event[name]
        at = draw(st.integers(0, len(text)))
        event[name] = text[:at] + draw(surrogates) + text[at:]
        return f"event.{name}", event
    if kind == "unknown_field":
        extra = draw(
            st.text(chars, min_size=1, max_size=20).filter(
                lambda k: k not in {*FIELDS, "timestamp", "metadata"}
            )
        )
        event[extra] = draw(values)
        return f"event.{extra}", event
    if kind == "meta_type":
        event["metadata"] = draw(st.one_of(st.lists(values, max_size=3), st.text(max_size=5), st.integers()))
        return "event.metadata", event
    if kind == "meta_count":
        count = draw(st.integers(51, 70))
        event["metadata"] = {f"k{i}": i for i in range(count)}
        return "event.metadata", event
    if kind == "meta_key_long":
        key = draw(st.text(chars, min_size=101, max_size=150))
        meta[key] = 1
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "ts_too_old":  # past [intake] max_event_age (24 h): refused, not billed today
        ago = draw(st.floats(86401, 10 * 365 * 86400))
        event["timestamp"] = datetime.fromtimestamp(NOW - ago, UTC).isoformat()
        return "event.timestamp", event
    if kind == "meta_value_long":
        meta[key] = draw(st.text(chars, min_size=501, max_size=600))
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "meta_value_type":
        meta[key] = draw(
            st.one_of(
                st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(keys, values, max_size=2)
            )
        )
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "meta_int_range":
        meta[key] = draw(st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1)))
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "meta_float":
        meta[key] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "meta_surrogate_key":
        bad = key + draw(surrogates)
        meta[bad] = 1
        event["metadata"] = meta
        return "event.metadata", event
    if kind == "meta_surrogate_value":
        meta[key] = draw(st.text(chars, max_size=10)) + draw(surrogates)
        event["metadata"] = meta
        return f"event.metadata.{key}", event
    if kind == "ts_garbage":
        garbage = draw(st.text(chars, min_size=1, max_size=30))
        assume(_not_a_datetime(garbage))
        event["timestamp"] = garbage
        return "event.timestamp", event
    if kind == "ts_date_only":
        event["timestamp"] = datetime.fromtimestamp(NOW, UTC).date().isoformat()
        return "event.timestamp", event
    if kind == "ts_type":
        event["timestamp"] = draw(not_strings)
        return "event.timestamp", event
    if kind == "ts_future":
        ahead = draw(st.floats(301, 10 * 365 * 86400))
        event["timestamp"] = datetime.fromtimestamp(NOW + ahead, UTC).isoformat()
        return "event.timestamp", event
    return "event", draw(st.one_of(st.none(), not_strings, st.text(max_size=5)))


def _not_a_datetime(text: str) -> bool:
    try:
        parse_timestamp(text)
    except ValueError:
        return True
    return False


def _names(path: str, problem_path: str) -> bool:
    """Whether a problem at `problem_path` names the field at `path`."""
    return problem_path == path or problem_path.startswith(path + ".") or problem_path.startswith(path + "[")


@SETTINGS
@given(defects())
def test_every_refusal_names_its_field(case: tuple[str, object]) -> None:
    path, raw = case
    event, problems = check_event(raw, NOW)  # raises nothing, whatever the input
    assert event is None, f"accepted an event with a defect at {path}"
    assert problems, "refused without saying why"
    assert any(_names(path, p.path) for p in problems), (path, problems)
    assert all(p.message for p in problems)


@SETTINGS
@given(
    st.lists(
        st.one_of(valid_events().map(lambda e: (True, e)), defects().map(lambda d: (False, d[1]))),
        min_size=1,
        max_size=8,
    )
)
def test_a_batch_names_every_bad_event_by_index_and_no_good_one(items: list[tuple[bool, object]]) -> None:
    raws = [raw for _, raw in items]
    bad = {i for i, (good, _) in enumerate(items) if not good}
    try:
        events = validate_many(raws, NOW)
    except InvalidEventError as exc:
        named = {int(p.path.split("[", 1)[1].split("]", 1)[0]) for p in exc.problems}
        assert named == bad
    else:
        assert not bad and len(events) == len(raws)


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outbox]:
    # The events are drawn around NOW; validating them against the moving wall clock made a timestamp
    # drawn 301 s ahead acceptable a second later (an "invalid" event stored, one run in three).
    with Outbox(Path(tmp_path_factory.mktemp("fuzz")) / "outbox.db", clock=lambda: NOW) as box:
        yield box


def _rows(box: Outbox) -> int:
    return sum(box.store.counts().values())


@SETTINGS
@given(
    good=st.lists(valid_events(), max_size=5),
    bad=defects(),
    at=st.integers(0, 5),
    single=st.booleans(),
)
def test_nothing_invalid_is_stored(
    outbox: Outbox, good: list[dict[str, Any]], bad: tuple[str, object], at: int, single: bool
) -> None:
    before = _rows(outbox)
    if single:
        with pytest.raises(InvalidEventError):
            outbox.enqueue(bad[1])  # type: ignore[arg-type]
    else:
        batch: list[Any] = list(good)
        batch.insert(min(at, len(batch)), bad[1])
        with pytest.raises(InvalidEventError):
            outbox.enqueue_many(batch)
    assert _rows(outbox) == before, "a refused call stored something"


@SETTINGS
@given(st.lists(valid_events(), min_size=1, max_size=5, unique_by=lambda e: e["event_id"]))
def test_valid_batches_are_stored_whole(outbox: Outbox, events: list[dict[str, Any]]) -> None:
    # Fresh ids (a prior example may have stored the same ones with other content).
    for event in events:
        event["event_id"] = f"{event['event_id'][:200]}#{time.monotonic_ns()}"
    before = _rows(outbox)
    result = outbox.enqueue_many(events)
    assert sorted(result.new) == sorted(e["event_id"] for e in events)
    assert _rows(outbox) == before + len(events)


# -- regressions found by the properties above -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"event_id": "a\ud800", "customer_id": "c", "event_name": "n"}, "event[0].event_id"),
        (
            {"event_id": "a", "customer_id": "c", "event_name": "n", "metadata": {"k": "\udfff"}},
            "event[0].metadata.k",
        ),
        (
            {"event_id": "a", "customer_id": "c", "event_name": "n", "metadata": {"k\udc80": 1}},
            "event[0].metadata[",
        ),
    ],
)
def test_regression_a_lone_surrogate_is_refused_naming_its_field(
    outbox: Outbox, raw: dict[str, Any], path: str
) -> None:
    # Was: orjson's TypeError ("surrogates not allowed") escaped from Outbox.enqueue.
    before = _rows(outbox)
    with pytest.raises(InvalidEventError) as refused:
        outbox.enqueue(raw)
    assert any(p.path.startswith(path) and "Unicode" in p.message for p in refused.value.problems)
    assert _rows(outbox) == before
