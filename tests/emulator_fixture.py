"""Pytest fixtures for a real fake Dodo on 127.0.0.1. Registered from tests/conftest.py with
``pytest_plugins = ["tests.emulator_fixture"]``.

- ``fake_dodo``: a running :class:`EmulatorServer` with the default config (key ``test_key``).
- ``fake_dodo_factory``: ``fake_dodo_factory(**config_kwargs)`` starts one more with an
  ``EmulatorConfig(**config_kwargs)``; every server it started is stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.emulator import EmulatorConfig, EmulatorServer

FakeDodoFactory = Callable[..., EmulatorServer]


@pytest.fixture
def fake_dodo_factory() -> Iterator[FakeDodoFactory]:
    servers: list[EmulatorServer] = []

    def start(**config: Any) -> EmulatorServer:
        server = EmulatorServer(EmulatorConfig(**config)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_dodo(fake_dodo_factory: FakeDodoFactory) -> EmulatorServer:
    return fake_dodo_factory()
