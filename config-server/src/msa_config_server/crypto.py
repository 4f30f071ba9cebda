"""Symmetric encryption of config values: ``{cipher}...`` in the repository, plaintext to the client.

Spring derives an AES key from ``encrypt.key`` with PBKDF2 and a salt (``encrypt.salt``, default ``deadbeef``).
We do the same derivation but encrypt with AES-GCM instead of Spring's AES-CBC: GCM authenticates, so a value
encrypted under another key, or corrupted, is always *detected* (→ ``invalid.<key>``) instead of decrypting to
garbage. The price: ciphertext is not interchangeable with a real Spring Config Server's.

Ciphertext = hex(nonce[12] ‖ AES-GCM(ciphertext ‖ tag)) — hex like Spring's; base64 is accepted on input too.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

__all__ = ["CIPHER_PREFIX", "INVALID_VALUE", "DecryptionError", "TextEncryptor", "decrypt_source",
           "decrypt_environment"]

CIPHER_PREFIX = "{cipher}"
INVALID_VALUE = "<n/a>"  # what Spring puts under invalid.<key>: "not applicable", never the ciphertext
_NONCE = 12
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_KDF_ITERATIONS = 100_000  # paid once per server start, not per value: the derived key is kept


class DecryptionError(Exception):
    """Wrong key, or not a ciphertext we made. Deliberately says nothing about the value."""


def _salt_bytes(salt: str) -> bytes:
    return bytes.fromhex(salt) if _HEX_RE.match(salt) else salt.encode()  # Spring reads the salt as hex


def _decode(text: str) -> bytes:
    if _HEX_RE.match(text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)  # tolerate base64 whose padding was lost in a YAML file or URL
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


class TextEncryptor:
    def __init__(self, key: str, salt: str = "deadbeef") -> None:
        if not key:
            raise ValueError("an encryption key must not be empty")
        kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_salt_bytes(salt), iterations=_KDF_ITERATIONS)
        self._aead = AESGCM(kdf.derive(key.encode()))

    def __repr__(self) -> str:  # never let the key reach a log line through a repr
        return "TextEncryptor(<key hidden>)"

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(_NONCE)  # fresh per value: the same secret encrypts differently every time
        return (nonce + self._aead.encrypt(nonce, plaintext.encode(), None)).hex()

    def decrypt(self, ciphertext: str) -> str:
        text = ciphertext.strip().removeprefix(CIPHER_PREFIX)
        try:
            data = _decode(text)
            if len(data) <= _NONCE:
                raise DecryptionError("ciphertext too short")
            return self._aead.decrypt(data[:_NONCE], data[_NONCE:], None).decode()
        except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise DecryptionError("cannot decrypt: wrong key or not a ciphertext") from exc


def decrypt_source(source: Mapping[str, Any], encryptor: TextEncryptor | None) -> dict[str, Any]:
    """Spring's EnvironmentEncryptor for one property source: ``{cipher}`` values are replaced by their
    plaintext; one that cannot be decrypted (or no key is configured) is *removed* and ``invalid.<key>: <n/a>``
    added, so a ciphertext is never handed out where a password is expected."""
    result: dict[str, Any] = {}
    invalid: list[str] = []
    for key, value in source.items():
        if not (isinstance(value, str) and value.startswith(CIPHER_PREFIX)):
            result[key] = value
            continue
        try:
            if encryptor is None:
                raise DecryptionError("no encryption key configured")
            result[key] = encryptor.decrypt(value)
        except DecryptionError:
            invalid.append(key)
    for key in invalid:
        result[f"invalid.{key}"] = INVALID_VALUE
    return result


def decrypt_environment(environment: Mapping[str, Any], encryptor: TextEncryptor | None) -> dict[str, Any]:
    sources = [{"name": s["name"], "source": decrypt_source(s["source"], encryptor)}
               for s in environment["propertySources"]]
    return {**environment, "propertySources": sources}
