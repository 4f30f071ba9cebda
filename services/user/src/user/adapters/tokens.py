"""Signing tokens with an RSA key whose public half is published as a JWKS, so verifiers never hold a secret."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "msa-sandbox/user"


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # first writer wins when several instances start at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


class TokenIssuer:
    def __init__(self, key_path: Path, ttl_s: int) -> None:
        self.key = _load_or_create_key(key_path)
        self.ttl_s = ttl_s
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.kid = jwt.utils.base64url_encode(
            jwt.utils.bytes_from_int(self.key.public_key().public_numbers().n)[:12]).decode()
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def issue(self, user_id: str, username: str, roles: list[str]) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "name": username, "roles": roles, "iss": ISSUER, "iat": now,
                  "exp": now + self.ttl_s}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
