"""Verify the OIDC token Pub/Sub puts on each push request (google-auth).

Google signs the token; its certificates are fetched from Google (cached) or,
for tests and air-gapped set-ups, read from ``PUBSUB_PUSH_CERTS_FILE`` (JSON
``{"kid": "<PEM certificate>"}``, the format Google publishes).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from google.auth import exceptions as google_exceptions
from google.auth import jwt

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CERTS_TTL_SECONDS = 3600

_lock = threading.Lock()
_cache: dict[str, Any] = {"certs": None, "at": 0.0}


class PushAuthError(Exception):
    """Reject a push request whose token is missing or invalid."""


def _certs() -> dict[str, str]:
    if settings.PUBSUB_PUSH_CERTS_FILE:
        return json.loads(Path(settings.PUBSUB_PUSH_CERTS_FILE).read_text())
    with _lock:
        if (
            _cache["certs"] is None
            or time.monotonic() - _cache["at"] > CERTS_TTL_SECONDS
        ):
            try:
                response = httpx.get(GOOGLE_CERTS_URL, timeout=5.0)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise PushAuthError(f"cannot fetch Google certificates: {exc}") from exc
            _cache.update(certs=response.json(), at=time.monotonic())
        return _cache["certs"]


def push_token_verify(*, authorization: str) -> dict[str, Any]:
    """Return the claims of a valid push token; raise PushAuthError otherwise.

    Checks the signature, expiry, audience (PUBSUB_PUSH_AUDIENCE), issuer
    and, when PUBSUB_PUSH_SERVICE_ACCOUNT is set, the verified sender email.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise PushAuthError("missing bearer token")
    try:
        claims = jwt.decode(
            token.strip(),
            certs=_certs(),
            audience=settings.PUBSUB_PUSH_AUDIENCE,
            clock_skew_in_seconds=10,
        )
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        raise PushAuthError(f"invalid token: {exc}") from exc
    if claims.get("iss") not in ISSUERS:
        raise PushAuthError(f"invalid token: issuer {claims.get('iss')!r}")
    account = settings.PUBSUB_PUSH_SERVICE_ACCOUNT
    if account and (claims.get("email") != account or not claims.get("email_verified")):
        raise PushAuthError("invalid token: not the configured service account")
    return claims
