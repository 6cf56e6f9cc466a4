"""A fake Dodo Payments ingestion API, for offline use and for every test of the project.

It speaks Dodo's contract (docs/dodo-ingest-contract.md) over real HTTP: ``POST /events/ingest``
with its auth, limits, window, duplicate and idempotency rules, rate limit and error bodies; the
read-back endpoints ``GET /events/{id}``, ``GET /events`` and ``GET /meters``; plus fault injection
(errors, outages, latency, timeouts, dropped connections, lost acknowledgements) from Python or from an
admin API under ``/_emulator/``.

    with EmulatorServer(EmulatorConfig(keys={"k"})) as fake:
        httpx.post(f"{fake.url}/events/ingest", headers={"Authorization": "Bearer k"}, json=...)
        fake.set_faults(script=[503, "drop", 200])

Modules: ``config`` (settings), ``contract`` (request validation), ``faults`` (the fault plan),
``ratelimit`` (token buckets), ``state`` (all of it behind one lock), ``app`` (ASGI), ``server`` (running it).
"""

from agent.emulator.config import EmulatorConfig
from agent.emulator.server import EmulatorServer, serve
from agent.emulator.state import EmulatorState

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorState", "serve"]
