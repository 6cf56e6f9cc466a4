"""Shared fixtures: real SQLite files in tmp_path, a real Dodo emulator on 127.0.0.1."""

from __future__ import annotations

import importlib.util

pytest_plugins = ["tests.emulator_fixture"] if importlib.util.find_spec("tests.emulator_fixture") else []
