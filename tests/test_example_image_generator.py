"""examples/image-generator end to end, as its README runs it: the emulator (`fake-dodo --meters
meters.json`), the agent (`run --config agent.toml`) and the app (uvicorn) as real processes on 127.0.0.1.

Each mode makes generations for two customers, retries one request with the same X-Request-ID, and
checks that Dodo (the emulator) holds exactly one `image.generated` event per distinct request, for the
right customer, and token events summing to the tokens the app reported. Library mode also SIGKILLs the
agent mid-run: the app keeps serving and its events wait in the app's database until the agent is back.
SDK mode shows the other side: with the agent down a request fails and stores nothing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from agent.templates import derive_event_id
from tests.reliability.helpers import ROOT, AgentProcess, child_env, free_port, wait_until

pytest.importorskip("dodopayments")

EXAMPLE = ROOT / "examples" / "image-generator"
KEY = "test_key"
CUSTOMERS = {"demo_key_alice": "cus_alice", "demo_key_bob": "cus_bob"}
DEADLINE = 60.0


@dataclass
class Stack:
    """The three processes of the example's README, and what the app answered so far."""

    tmp: Path
    mode: str
    emulator_url: str = ""
    app_url: str = ""
    agent: AgentProcess | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)
    billed: dict[str, tuple[str, int]] = field(default_factory=dict)  # request id -> customer, tokens
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def db(self) -> Path:
        return self.tmp / "imagegen.db"

    def agent_env(self) -> dict[str, str]:
        # The example's agent.toml as shipped, moved to free ports and a temporary database.
        return {
            "DODO_PAYMENTS_API_KEY": KEY,
            "DODO_OUTBOX_DODO_BASE_URL": self.emulator_url,
            "DODO_OUTBOX_OUTBOX_PATH": str(self.db),
        }

    def spawn(self, name: str, args: list[str], env: dict[str, str], ready: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.logs.append(log)
        proc = subprocess.Popen(args, cwd=EXAMPLE, env=child_env(**env), stdout=log, stderr=log)
        self.procs.append(proc)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                return self.http.get(ready, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, DEADLINE, f"{name} to answer {ready}", poll=0.1)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def start(self) -> Stack:
        port = free_port()
        self.emulator_url = f"http://127.0.0.1:{port}"
        fake = [sys.executable, "-m", "agent", "fake-dodo", "--port", str(port), "--key", KEY]
        self.spawn("fake-dodo", [*fake, "--meters", "meters.json"], {}, f"{self.emulator_url}/meters")
        agent_port = free_port()
        env = self.agent_env() | {"DODO_OUTBOX_INTAKE_HTTP_LISTEN": f"127.0.0.1:{agent_port}"}
        self.agent = AgentProcess(EXAMPLE / "agent.toml", self.tmp / "agent.log", agent_port, env)
        self.agent.start(DEADLINE)
        app_port = free_port()
        self.app_url = f"http://127.0.0.1:{app_port}"
        app_env = {"IMAGEGEN_DB": str(self.db), "IMAGEGEN_USAGE": self.mode}
        app_env["IMAGEGEN_AGENT_URL"] = self.agent.url
        uvicorn = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(app_port)]
        self.spawn("app", [*uvicorn, "--log-level", "warning"], app_env, f"{self.app_url}/healthz")
        return self

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.ensure_stopped()
        for proc in reversed(self.procs):
            proc.terminate()  # by its own pid
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self.logs:
            log.close()
        self.http.close()

    def generate(self, api_key: str, request_id: str, prompt: str) -> httpx.Response:
        headers = {"X-API-Key": api_key, "X-Request-ID": request_id}
        body = {"prompt": prompt, "resolution": "64x64"}
        response = self.http.post(f"{self.app_url}/generate", headers=headers, json=body)
        if response.status_code == 200 and response.headers["X-Replayed"] == "false":
            self.billed[request_id] = (CUSTOMERS[api_key], int(response.headers["X-Tokens"]))
        return response

    def generate_ok(self, count: int, start: int = 0) -> list[httpx.Response]:
        """Requests req-{start}... alternately for alice and bob; each must answer a new PNG."""
        responses = []
        for i in range(start, start + count):
            response = self.generate(list(CUSTOMERS)[i % 2], f"req-{i}", f"a lighthouse at dusk, take {i}")
            assert response.status_code == 200, response.text
            assert response.headers["X-Replayed"] == "false"
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
            responses.append(response)
        return responses

    def retry(self, request: int) -> httpx.Response:
        """The client sends request `request` of generate_ok again, with the same X-Request-ID."""
        key = list(CUSTOMERS)[request % 2]
        response = self.generate(key, f"req-{request}", f"a lighthouse at dusk, take {request}")
        assert (response.status_code, response.headers["X-Replayed"]) == (200, "true"), response.text
        return response

    def assert_bad_requests_refused(self) -> None:
        """Each bad request gets a clear error and bills nothing (assert_billed_once counts 200s only)."""
        url = f"{self.app_url}/generate"
        alice = {"X-API-Key": "demo_key_alice"}
        cases: list[tuple[dict[str, str], Any, int, str]] = [
            ({}, {"prompt": "x"}, 401, "X-API-Key"),
            ({"X-API-Key": "stolen"}, {"prompt": "x"}, 401, "X-API-Key"),
            (alice, b"{not json", 400, "JSON"),
            (alice, {"resolution": "64x64"}, 400, "prompt"),
            (alice, {"prompt": "x", "resolution": ["64x64"]}, 400, "resolution"),
            (alice | {"X-Request-ID": "req-0"}, {"prompt": "another prompt"}, 409, "req-0"),
        ]
        for headers, body, status, named in cases:
            if isinstance(body, bytes):
                response = self.http.post(url, headers=headers, content=body)
            else:
                response = self.http.post(url, headers=headers, json=body)
            assert response.status_code == status, (body, response.text)
            assert named in response.json()["error"]

    def outbox_rows(self, *states: str) -> int:
        """Rows of the outbox (the app's database) in these states."""
        marks = ",".join("?" * len(states))
        sql = f"SELECT count(*) FROM dodo_outbox_events WHERE state IN ({marks})"
        with closing(sqlite3.connect(self.db)) as conn:
            return int(conn.execute(sql, states).fetchone()[0])

    def wait_delivered(self) -> None:
        """Until Dodo holds both events of every billed request and the agent has settled them all."""
        expected = 2 * len(self.billed)

        def settled() -> bool:
            return len(self.dodo_events()) >= expected and self.outbox_rows("delivered") == expected

        wait_until(settled, DEADLINE, f"{expected} events delivered and settled")

    def dodo_events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get(f"{self.emulator_url}/_emulator/events").json()["items"]
        return items

    def dodo_outbox(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A README command, run from the example folder like the README does."""
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", "agent.toml"],
            cwd=EXAMPLE,
            env=child_env(**self.agent_env()),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )

    def assert_billed_once(self) -> None:
        """Dodo holds one image and one token event per distinct request, nothing else."""
        events = self.dodo_events()
        images = [e for e in events if e["event_name"] == "image.generated"]
        tokens = [e for e in events if e["event_name"] == "llm.chat_completion"]
        assert len(images) == len(tokens) == len(self.billed) == len(events) // 2
        expected = {derive_event_id("img", "image.generated", c, rid) for rid, (c, _) in self.billed.items()}
        assert {e["event_id"] for e in images} == expected
        assert Counter(e["customer_id"] for e in images) == Counter(c for c, _ in self.billed.values())
        assert {e["metadata"]["resolution"] for e in images} == {"64x64"}
        by_customer: Counter[str] = Counter()
        for event in tokens:
            by_customer[event["customer_id"]] += event["metadata"]["totalTokens"]
        reported: Counter[str] = Counter()
        for customer, spent in self.billed.values():
            reported[customer] += spent
        assert by_customer == reported

    def assert_readme_commands_pass(self) -> None:
        status = self.dodo_outbox("status", "--json")
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        assert (document["pending"], document["dead"]) == (0, 0)
        assert document["delivered"] == 2 * len(self.billed)
        for command in (["meters", "check"], ["verify"]):
            result = self.dodo_outbox(*command)
            assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        # The local preview agrees with what the app billed: images counted and tokens summed per customer.
        preview = self.dodo_outbox("meters", "preview", "--json")
        assert preview.returncode == 0, preview.stderr
        meters = {m["event_name"]: m["customers"] for m in json.loads(preview.stdout)["meters"]}
        images: Counter[str] = Counter(c for c, _ in self.billed.values())
        tokens: Counter[str] = Counter()
        for customer, spent in self.billed.values():
            tokens[customer] += spent
        assert {c: v["value"] for c, v in meters["image.generated"].items()} == dict(images)
        assert {c: v["value"] for c, v in meters["llm.chat_completion"].items()} == dict(tokens)


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def start(mode: str) -> Stack:
        stack = Stack(tmp_path, mode)
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()


def test_library_mode_bills_once_and_loses_nothing_while_the_agent_is_killed(stack_factory: Any) -> None:
    stack: Stack = stack_factory("library")
    first = stack.generate_ok(3)
    again = stack.retry(1)
    assert (again.content, again.headers["X-Tokens"]) == (first[1].content, first[1].headers["X-Tokens"])
    stack.assert_bad_requests_refused()
    stack.wait_delivered()

    assert stack.agent is not None
    stack.agent.kill()  # SIGKILL: no clean shutdown
    stack.generate_ok(4, start=3)  # the app does not need the agent to serve and record usage
    stack.retry(4)
    assert stack.outbox_rows("pending") == 8  # both events of each request wait in the app's database
    assert len(stack.dodo_events()) == 6

    stack.agent.start(DEADLINE)
    stack.wait_delivered()
    stack.assert_billed_once()
    stack.assert_readme_commands_pass()


def test_sdk_mode_bills_once_and_needs_the_agent_up(stack_factory: Any) -> None:
    stack: Stack = stack_factory("sdk")
    stack.generate_ok(4)
    stack.retry(2)
    stack.wait_delivered()

    assert stack.agent is not None
    stack.agent.stop()
    down = stack.generate("demo_key_bob", "req-9", "a harbour in fog")
    assert down.status_code == 503, down.text
    assert "retry with the same X-Request-ID" in down.json()["error"]
    with closing(sqlite3.connect(stack.db)) as conn:  # nothing of the failed request was stored
        assert conn.execute("SELECT count(*) FROM generations WHERE request_id = 'req-9'").fetchone()[0] == 0

    stack.agent.start(DEADLINE)
    retried = stack.generate("demo_key_bob", "req-9", "a harbour in fog")
    assert (retried.status_code, retried.headers["X-Replayed"]) == (200, "false"), retried.text
    stack.wait_delivered()
    stack.assert_billed_once()
    stack.assert_readme_commands_pass()
