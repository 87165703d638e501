"""Bearer API keys -> tenant. Keys are stored as sha256 hashes (see `create_api_key`).

A checked key is remembered in-process for `auth_cache_ttl_s` seconds (keyed by its hash, never the key), so a
busy client costs no database read per request; a revoked key stops working within that time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import anyio
from fastapi import Request

from api.errors import ProblemError
from core.db.access.tenants import authenticate, hash_key

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="realign"'}
_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str


class PrincipalCache:
    """key hash -> (principal, expiry). Only successful lookups are cached."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= _MAX_CACHED_KEYS:
                self._entries.clear()
            self._entries[key_hash] = (principal, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise ProblemError(401, "missing Authorization header; send 'Authorization: Bearer <api key>' "
                                "(create one with `realign keys create --tenant NAME`)",
                           slug="unauthenticated", headers=_CHALLENGE)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(401, "Authorization header must be 'Bearer <api key>'", slug="unauthenticated",
                           headers=_CHALLENGE)
    return token.strip()


async def require_principal(request: Request) -> Principal:
    """FastAPI dependency: the tenant behind the request's API key, or a 401 problem."""
    token = bearer_token(request)
    cache: PrincipalCache = request.app.state.principal_cache
    key_hash = hash_key(token)
    principal = cache.get(key_hash)
    if principal is not None:
        return principal

    def lookup() -> Principal | None:
        with request.app.state.sessions() as session:
            tenant = authenticate(session, key=token)
            return None if tenant is None else Principal(tenant_id=tenant.id, tenant_name=tenant.name)

    principal = await anyio.to_thread.run_sync(lookup)
    if principal is None:
        raise ProblemError(401, "invalid or revoked API key", slug="unauthenticated", headers=_CHALLENGE)
    cache.put(key_hash, principal)
    return principal
