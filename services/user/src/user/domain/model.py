"""Users and their passwords: plain Python, no framework.

Passwords are hashed with scrypt (hashlib, over OpenSSL), a memory-hard function: n=2**14, r=8, p=1 is 16 MiB and
~0.1 s of a core per check here. OWASP's cheat sheet asks for more work at that memory (p=5, ~0.4 s): the sandbox
keeps the lighter cost because every test stack and benchmark logs in many times on 2 cores; the login throttle
(throttle.py) is what stops online guessing. argon2id (`argon2-cffi`) would protect about the same; scrypt needs
no extra native dependency."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from .events import UserRegistered

USERNAME = re.compile(r"^[a-zA-Z0-9_.-]{3,32}$")
MIN_PASSWORD = 8


class InvalidSignUp(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class UsernameTaken(Exception):
    pass


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    _, salt, _digest = stored.split("$")
    return hmac.compare_digest(hash_password(password, salt=bytes.fromhex(salt)), stored)


# What a login for an unknown username is checked against: the same work as a real check, so the answer takes as
# long either way (no probing for usernames by timing). No password matches it: its digest is of random bytes.
UNKNOWN_USER_HASH = f"scrypt${secrets.token_hex(16)}${secrets.token_hex(64)}"


@dataclass
class User:
    id: str
    username: str
    password_hash: str
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.id

    @classmethod
    def sign_up(cls, username: str, password: str) -> "User":
        if not USERNAME.match(username):
            raise InvalidSignUp("username", "3 to 32 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise InvalidSignUp("password", f"at least {MIN_PASSWORD} characters")
        user = cls(str(uuid.uuid4()), username, hash_password(password))
        user.events.append(UserRegistered(user.id, username))
        return user

    def check_password(self, password: str) -> bool:
        return verify_password(password, self.password_hash)
