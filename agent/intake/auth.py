"""The bearer-token check of the local HTTP endpoints: `[intake.http] token`, when set, must be sent
as `Authorization: Bearer <token>` to `/events/ingest`, `/v1/status`, the read-back routes and
`/v1/dlq` (`agent.ops.routes`); a wrong or missing one is a 401 naming the header to send.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from agent.intake.body import Refusal

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dodo-outbox"'}


def require_bearer(request: Request, token: str | None, *, hint: str = "") -> None:
    """Return when no token is configured or `request` carries it; else raise Refusal(401).

    Compared in constant time. `hint` is appended to the message (e.g. how the SDK sends it).
    """
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Refusal(
            401,
            "UNAUTHORIZED",
            f"missing or wrong bearer token: send Authorization: Bearer <[intake.http] token>{hint}",
            headers=CHALLENGE,
        )
