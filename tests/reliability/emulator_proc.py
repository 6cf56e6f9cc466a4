"""The Dodo emulator in its own process, so it outlives the agent processes a test kills.

    python -m tests.reliability.emulator_proc '{"keys": ["k"], "reject_event_ids": "^poison-"}'

The argument is an `EmulatorConfig` as JSON. The child prints its base URL on one line, then serves
until its stdin closes. Faults, keys and the clock are set through the admin API (`/_emulator/...`).
"""

from __future__ import annotations

import sys

import orjson

from agent.emulator import EmulatorConfig, EmulatorServer


def main() -> None:
    settings = orjson.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    server = EmulatorServer(EmulatorConfig(**settings), log_level="error").start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed our stdin (or died)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
