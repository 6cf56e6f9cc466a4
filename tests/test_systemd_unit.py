"""The hardened unit: its contract keys, a clean `systemd-analyze verify`, a low exposure score, and
the sysusers/tmpfiles companions producing the spool layout the unit expects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "dodo-outbox.service"
SYSUSERS = ROOT / "systemd" / "dodo-outbox.sysusers.conf"
TMPFILES = ROOT / "systemd" / "dodo-outbox.tmpfiles.conf"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}; keys may repeat (systemd appends or resets)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in parse_unit(UNIT.read_text())["Service"]:
        values.setdefault(key, []).append(value)
    return values


def one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"{key}= missing from [Service]"
    assert len(service[key]) == 1, f"{key}= set more than once: {service[key]}"
    return service[key][0]


CONTRACT = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/opt/dodo-outbox/venv/bin/dodo-outbox run --config /etc/dodo-outbox/agent.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "2",
    "TimeoutStopSec": "30",
    "StateDirectory": "dodo-outbox",
    "LoadCredential": "dodo_api_key:/etc/dodo-outbox/api_key",
    "ReadWritePaths": "/var/spool/dodo-outbox",
    "User": "dodo-outbox",
    "Group": "dodo-outbox",
    "SupplementaryGroups": "dodo-producers",
}

SANDBOX = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}


@pytest.mark.parametrize(("key", "expected"), sorted({**CONTRACT, **SANDBOX}.items()))
def test_service_key(service: dict[str, list[str]], key: str, expected: str) -> None:
    assert one(service, key) == expected


def test_config_path_in_the_environment(service: dict[str, list[str]]) -> None:
    assert "DODO_OUTBOX_CONFIG=/etc/dodo-outbox/agent.toml" in service["Environment"]
    # The key travels as a credential, never as an environment variable.
    assert not any("API_KEY" in env.upper() for env in service["Environment"])


def test_system_call_filter(service: dict[str, list[str]]) -> None:
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_umask_keeps_files_from_the_world(service: dict[str, list[str]]) -> None:
    assert int(one(service, "UMask"), 8) & 0o007 == 0o007


def test_left_out_on_purpose(service: dict[str, list[str]]) -> None:
    # A fixed user shares the spool with producers; an IP allow list would block reaching Dodo.
    for key in ("DynamicUser", "IPAddressDeny", "IPAddressAllow"):
        assert key not in service


def test_unit_matches_the_code() -> None:
    from agent.config import CREDENTIAL_NAME

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "/venv/bin/dodo-outbox " in CONTRACT["ExecStart"] and "dodo-outbox" in scripts
    assert CONTRACT["LoadCredential"].split(":")[0] == CREDENTIAL_NAME


def test_every_group_of_settings_says_why() -> None:
    """Each block of settings (lines between blank lines) carries a comment."""
    block_has_comment, in_service = False, False
    for number, raw in enumerate(UNIT.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            in_service, block_has_comment = line == "[Service]", False
        elif not line:
            block_has_comment = False
        elif line.startswith("#"):
            block_has_comment = True
        elif in_service:
            assert block_has_comment, f"line {number} ({line}) is in a block without a comment"


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart (not installed here) and any other Exec*= binary this host lacks
    (/bin/kill in a slim image) pointed at `true`, so verify checks the unit, not the host."""
    true = shutil.which("true") or "/bin/true"

    def swap(match: re.Match[str]) -> str:
        keep = match[1] != "ExecStart" and os.access(match[2], os.X_OK)
        return match[0] if keep else f"{match[1]}={true}"

    text, count = re.subn(r"(?m)^(Exec\w+)=(\S+)", swap, UNIT.read_text())
    assert count >= 2
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert ANALYZE is not None
    copy = _runnable_copy(tmp_path)
    result = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values; it reports them, naming the unit.
    complaints = [x for x in (result.stdout + result.stderr).splitlines() if "dodo-outbox" in x]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    assert ANALYZE is not None
    copy = _runnable_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    if "offline" in output and ("unrecognized" in output or "Unknown" in output):
        pytest.skip("this systemd-analyze has no --offline (needs systemd >= 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    assert float(match[1]) <= MAX_EXPOSURE, output


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by other users needs root")
def test_sysusers_and_tmpfiles_build_the_spool(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for tool, conf in (("systemd-sysusers", SYSUSERS), ("systemd-tmpfiles", TMPFILES)):
        args = [tool, f"--root={tmp_path}", *(["--create"] if tool == "systemd-tmpfiles" else []), str(conf)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    passwd = {x.split(":")[0]: x.split(":") for x in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {
        x.split(":")[0]: int(x.split(":")[2]) for x in (tmp_path / "etc/group").read_text().splitlines()
    }
    uid = int(passwd["dodo-outbox"][2])
    assert passwd["dodo-outbox"][6].endswith("nologin")
    spool = tmp_path / "var/spool/dodo-outbox"
    expected = {".": 0o2750, "tmp": 0o2770, "new": 0o2770, "done": 0o2750, "rejected": 0o2770}
    for name, mode in expected.items():
        st = (spool / name).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, groups["dodo-producers"]), name


MDWE_PROBE = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, refuse W+X
    sys.exit(77)
import asyncio, sqlite3, ssl
import apscheduler, httpx, orjson, prometheus_client, starlette, structlog, uvicorn, watchfiles
db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
db.execute("insert into t values (?)", (orjson.dumps({"a": 1}).decode(),))
ssl.create_default_context()
asyncio.run(asyncio.sleep(0))
"""


def test_python_stack_runs_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes is safe: the interpreter and our compiled wheels never ask for W+X."""
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert result.returncode == 0, result.stderr
