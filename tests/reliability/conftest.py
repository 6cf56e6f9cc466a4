"""Reliability suites: show a test's summary line on the terminal, without `-s`, with or without xdist.

`report(request, line)` records the line as a user property of the test; run in-process, this
conftest's terminal-summary hook prints it in a "reliability" section. Under xdist the controller does
not load this conftest (it collects nothing), so a worker writes the line to its stderr with capturing
suspended, which xdist passes to the terminal.
"""

from __future__ import annotations

import os
import sys

import pytest

SUMMARY_PROPERTY = "reliability_summary"


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Show `line` on the terminal once the run ends (or, under xdist, at once)."""
    request.node.user_properties.append((SUMMARY_PROPERTY, line))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if os.environ.get("PYTEST_XDIST_WORKER") and capture is not None:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.getoption("dist", "no") != "no":
        return  # under xdist the workers wrote their lines already (see `report`)
    lines: list[str] = []
    for reports in terminalreporter.stats.values():
        for test_report in reports:
            if getattr(test_report, "when", None) != "call":
                continue
            for name, value in getattr(test_report, "user_properties", ()):
                if name.startswith(SUMMARY_PROPERTY):
                    lines.append(str(value))
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
