"""Verifying bearer tokens against the user service's published keys (JWKS), fetched through discovery: the gateway
verifies every request's token with it, the console an operator's.

The gateway holds no secret: keys are public halves, cached by `kid`, refetched when a token names an unknown one
(key rotation) and every `max_age_s` (key removal). What an attacker can try, and what stops it:

- `alg: none`, or HS256 signed with the public key as the HMAC secret (algorithm confusion): only RS256 is
  accepted, decided here from configuration, never from the token's own header;
- a key of their own: only keys from the JWKS verify, and only RSA signature keys are taken from it;
- an expired or not-yet-valid token, a token from another issuer, one without `sub`/`exp`: refused by claims;
- a forged `kid` sprayed to make us refetch the JWKS: at most one fetch per `min_refetch_s`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt

ISSUER = "msa-sandbox/user"
ALGORITHMS = ["RS256"]
MAX_TOKEN_BYTES = 8192


class InvalidToken(Exception):
    pass


class JwksVerifier:
    def __init__(self, http: httpx.AsyncClient, jwks_url: str = "http://user/.well-known/jwks.json", *,
                 min_refetch_s: float = 1.0, max_age_s: float = 300.0, leeway_s: float = 5.0,
                 cache_size: int = 10_000) -> None:
        self.http, self.jwks_url = http, jwks_url
        self.min_refetch_s, self.max_age_s, self.leeway_s = min_refetch_s, max_age_s, leeway_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()
        # Verified tokens: an RSA verify per request is the gateway's single largest CPU cost on authenticated
        # routes. Entries die with the token's `exp` and whenever the key set changes.
        self._verified: dict[str, dict[str, Any]] = {}
        self.cache_size = cache_size

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self.min_refetch_s:
                return  # a token naming an unknown kid must not turn into a JWKS request per request
            r = await self.http.get(self.jwks_url)
            r.raise_for_status()
            # Only a successful fetch counts: while the user service is down every kid miss asks again (and the
            # breaker makes that cheap), so the caller hears 503, not "unknown key".
            self._fetched_at = time.monotonic()
            keys = {}
            for jwk in r.json().get("keys", []):
                if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
                    continue
                keys[str(jwk.get("kid", ""))] = jwt.PyJWK(jwk, algorithm="RS256").key
            if keys.keys() != self._keys.keys():
                self._verified.clear()
            self._keys = keys

    async def verify(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None and cached["exp"] > time.time():
            return cached
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken(f"algorithm {header.get('alg')!r} not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token names no key (kid)")
        if kid not in self._keys or time.monotonic() - self._fetched_at > self.max_age_s:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("token signed with an unknown key")
        try:
            claims = jwt.decode(token, key, algorithms=ALGORITHMS, issuer=ISSUER, leeway=self.leeway_s,
                                options={"require": ["exp", "sub", "iss"]})
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("roles", []), list):
            raise InvalidToken("malformed claims")
        if len(self._verified) >= self.cache_size:
            self._verified.clear()  # crude, bounded; a full cache is rare and refills at once
        self._verified[token] = claims
        return claims
