"""Shared fixtures: real SQLite files in tmp_path, a real Dodo emulator on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os

from hypothesis import settings

pytest_plugins = ["tests.emulator_fixture"] if importlib.util.find_spec("tests.emulator_fixture") else []

# CI is a landing gate: the same examples on every run (set before the test modules build their
# settings, which inherit it). Local runs keep drawing new examples, which is how the properties
# find bugs; `hypothesis` prints the @reproduce_failure blob of anything it finds.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
