"""The app's settings, read from the environment.

IMAGEGEN_DB           the app's SQLite database (default imagegen.db); the agent's [outbox] path
IMAGEGEN_USAGE        "library" (Outbox.enqueue in the app's transaction, default) or "sdk"
IMAGEGEN_AGENT_URL    the agent's local endpoint, for sdk mode (default http://127.0.0.1:8790)
IMAGEGEN_AGENT_TOKEN  the agent's [intake.http] token, if it has one (sdk mode)
IMAGEGEN_CUSTOMERS    API keys and their Dodo customers, "key=cus_id,key2=cus_id2"
                      (default: demo_key_alice=cus_alice,demo_key_bob=cus_bob)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEMO_CUSTOMERS = "demo_key_alice=cus_alice,demo_key_bob=cus_bob"


@dataclass(frozen=True)
class Settings:
    db: str = "imagegen.db"
    usage: str = "library"
    agent_url: str = "http://127.0.0.1:8790"
    agent_token: str = "local"
    customers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Raises ValueError naming the variable at fault."""
        mode = environ.get("IMAGEGEN_USAGE", "library")
        if mode not in ("library", "sdk"):
            raise ValueError(f"IMAGEGEN_USAGE={mode!r}: use 'library' or 'sdk'")
        pairs = [p.strip() for p in environ.get("IMAGEGEN_CUSTOMERS", DEMO_CUSTOMERS).split(",") if p.strip()]
        if not all(p.count("=") == 1 and p[0] != "=" and p[-1] != "=" for p in pairs):
            raise ValueError("IMAGEGEN_CUSTOMERS: write API_KEY=CUSTOMER_ID pairs separated by commas")
        return cls(
            db=environ.get("IMAGEGEN_DB", cls.db),
            usage=mode,
            agent_url=environ.get("IMAGEGEN_AGENT_URL", cls.agent_url),
            agent_token=environ.get("IMAGEGEN_AGENT_TOKEN", cls.agent_token),
            customers=dict(p.split("=") for p in pairs),
        )
