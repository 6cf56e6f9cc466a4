"""Shared fixtures: real SQLite files in tmp_path, a real Dodo emulator on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

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
